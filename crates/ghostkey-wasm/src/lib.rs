#![forbid(unsafe_code)]
use wasm_bindgen::prelude::*;

#[wasm_bindgen]
pub fn version() -> String { env!("CARGO_PKG_VERSION").to_string() }

#[wasm_bindgen]
pub async fn health(url: String) -> Result<String, JsValue> {
    let c = ghostkey_client::Client::new(&url).map_err(|e| JsValue::from_str(&e.to_string()))?;
    let h = c.health().await.map_err(|e| JsValue::from_str(&e.to_string()))?;
    Ok(format!("{h:?}"))
}
