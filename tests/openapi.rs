//! The OpenAPI document: generated from the code, served, committed; the committed copy
//! may not drift, and it describes every route the server registers.

mod common;

#[test]
fn the_committed_document_is_the_generated_one() {
    let generated = ghostkey::http::openapi::document();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    let committed = std::fs::read_to_string(path).unwrap();
    assert!(
        committed.trim_end() == generated.trim_end(),
        "docs/openapi.json is stale: run `cargo run -- openapi > docs/openapi.json`"
    );
}

#[test]
fn every_registered_route_is_documented_with_its_methods() {
    let doc: serde_json::Value =
        serde_json::from_str(&ghostkey::http::openapi::document()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let routes =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/http/mod.rs")).unwrap();
    // `web::resource("/x")` then its `.route(web::get()...)` lines, under `/v1` or at the top.
    let mut current: Option<String> = None;
    let mut checked = 0;
    for line in routes.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("web::resource(\"") {
            let path = rest.split('"').next().unwrap();
            let full = if path.starts_with("/healthz") || path.starts_with("/readyz") {
                path.to_owned()
            } else {
                format!("/v1{path}")
            };
            current = Some(full);
        }
        for method in ["get", "post", "put", "delete"] {
            if line.contains(&format!("web::{method}()")) {
                let path = current.clone().unwrap();
                if path == "/v1/openapi.json" {
                    continue;
                }
                assert!(
                    doc["paths"][&path][method].is_object(),
                    "{method} {path} is not in the OpenAPI document"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 17, "only {checked} routes found");
    for name in [
        "EnrollRequest",
        "Problem",
        "RecoveryResponse",
        "ChainResponse",
    ] {
        assert!(doc["components"]["schemas"][name].is_object(), "{name}");
    }
}

#[tokio::test]
async fn the_server_serves_the_document() {
    let server = common::TestServer::start();
    let served = reqwest::get(format!("{}/v1/openapi.json", server.base_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(served, ghostkey::http::openapi::document());
}
