//! The `/v1` API client over the host's `fetch` (reqwest's WebAssembly backend).
//!
//! Each method returns a Promise of the answer's JSON text (or of nothing), which the
//! TypeScript layer parses into its typed results. Arguments are plain strings and bytes:
//! the TypeScript layer does the sealing and chain work synchronously around these calls,
//! so no secret object has to live across an `await`.

use std::future::Future;

use ghostkey_client::proto::api::{ChallengePurpose, DevicePublicKeys, MethodKind, Proof};
use js_sys::{Array, Promise, Uint8Array};
use serde::Serialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::error::{Failure, Result};

/// A Ghostkey API client.
#[wasm_bindgen]
pub struct Client(ghostkey_client::Client);

/// Runs `f` as a Promise of the JSON text of its result.
fn json<T, F>(f: F) -> Promise
where
    T: Serialize,
    F: Future<Output = std::result::Result<T, ghostkey_client::ClientError>> + 'static,
{
    future_to_promise(async move {
        let value = f.await.map_err(Failure::from)?;
        let text = serde_json::to_string(&value)
            .map_err(|e| Failure::local("unexpected", e.to_string()))?;
        Ok(JsValue::from_str(&text))
    })
}

/// Runs `f` as a Promise of `undefined`.
fn unit<F>(f: F) -> Promise
where
    F: Future<Output = std::result::Result<(), ghostkey_client::ClientError>> + 'static,
{
    future_to_promise(async move {
        f.await.map_err(Failure::from)?;
        Ok(JsValue::UNDEFINED)
    })
}

fn required_proof(text: &str) -> Result<Proof> {
    serde_json::from_str(text)
        .map_err(|_| Failure::local("bad_format", "a proof is { challenge_id, code }"))
}

fn proof(text: Option<String>) -> Result<Option<Proof>> {
    text.as_deref().map(required_proof).transpose()
}

fn rejected(f: Failure) -> Promise {
    Promise::reject(&f.into())
}

#[wasm_bindgen]
impl Client {
    /// A client for the Ghostkey at `base_url`.
    #[wasm_bindgen(constructor)]
    pub fn new(base_url: &str) -> Result<Client> {
        Ok(Client(ghostkey_client::Client::new(base_url)?))
    }

    /// `GET /healthz`.
    pub fn health(&self) -> Promise {
        let c = self.0.clone();
        json(async move { c.health().await })
    }

    /// `POST /v1/enrollments`.
    pub fn enroll(
        &self,
        assertion: String,
        sealed: Vec<u8>,
        signing_key: String,
        encryption_key: String,
        root: Vec<u8>,
    ) -> Promise {
        let c = self.0.clone();
        json(async move {
            let keys = DevicePublicKeys {
                signing_key,
                encryption_key,
            };
            c.enroll(&assertion, &sealed, &keys, &root).await
        })
    }

    /// `POST /v1/methods`; `kind` is `sms`, `email` or `totp`; `proof_json` an optional
    /// `{ challenge_id, code }`.
    #[wasm_bindgen(js_name = addMethod)]
    pub fn add_method(
        &self,
        assertion: String,
        kind: &str,
        destination: Option<String>,
        proof_json: Option<String>,
    ) -> Promise {
        let Some(kind) = MethodKind::parse(kind) else {
            return rejected(Failure::local("bad_format", "kind is sms, email or totp"));
        };
        let proof = match proof(proof_json) {
            Ok(p) => p,
            Err(f) => return rejected(f),
        };
        let c = self.0.clone();
        json(async move {
            c.add_method(&assertion, kind, destination.as_deref(), proof)
                .await
        })
    }

    /// `GET /v1/methods`.
    #[wasm_bindgen(js_name = listMethods)]
    pub fn list_methods(&self, assertion: String) -> Promise {
        let c = self.0.clone();
        json(async move { c.list_methods(&assertion).await })
    }

    /// `POST /v1/methods/{id}/remove`.
    #[wasm_bindgen(js_name = removeMethod)]
    pub fn remove_method(
        &self,
        assertion: String,
        method_id: String,
        proof_json: String,
    ) -> Promise {
        let proof = match required_proof(&proof_json) {
            Ok(p) => p,
            Err(f) => return rejected(f),
        };
        let c = self.0.clone();
        unit(async move { c.remove_method(&assertion, &method_id, proof).await })
    }

    /// `POST /v1/challenges`; `purpose` is `confirm` or `proof`.
    #[wasm_bindgen(js_name = startChallenge)]
    pub fn start_challenge(&self, assertion: String, method_id: String, purpose: &str) -> Promise {
        let purpose = match purpose {
            "confirm" => ChallengePurpose::Confirm,
            "proof" => ChallengePurpose::Proof,
            _ => return rejected(Failure::local("bad_format", "purpose is confirm or proof")),
        };
        let c = self.0.clone();
        json(async move { c.start_challenge(&assertion, &method_id, purpose).await })
    }

    /// `POST /v1/challenges/{id}/answer`.
    pub fn answer(&self, challenge_id: String, code: String) -> Promise {
        let c = self.0.clone();
        json(async move { c.answer(&challenge_id, &code).await })
    }

    /// `POST /v1/users/unlock`.
    pub fn unlock(&self, assertion: String, proof_json: Option<String>) -> Promise {
        let proof = match proof(proof_json) {
            Ok(p) => p,
            Err(f) => return rejected(f),
        };
        let c = self.0.clone();
        json(async move { c.unlock(&assertion, proof).await })
    }

    /// `POST /v1/recoveries`.
    #[wasm_bindgen(js_name = startRecovery)]
    pub fn start_recovery(&self, assertion: String, method_id: String) -> Promise {
        let c = self.0.clone();
        json(async move { c.start_recovery(&assertion, &method_id).await })
    }

    /// `POST /v1/recoveries/{id}/verify`.
    #[wasm_bindgen(js_name = verifyRecovery)]
    pub fn verify_recovery(&self, recovery_id: String, code: String) -> Promise {
        let c = self.0.clone();
        json(async move { c.verify_recovery(&recovery_id, &code).await })
    }

    /// `POST /v1/recoveries/{id}/release`.
    #[wasm_bindgen(js_name = releaseRecovery)]
    pub fn release_recovery(&self, assertion: String, recovery_id: String) -> Promise {
        let c = self.0.clone();
        json(async move { c.release_recovery(&assertion, &recovery_id).await })
    }

    /// `POST /v1/recoveries/{id}/cancel`.
    #[wasm_bindgen(js_name = cancelRecovery)]
    pub fn cancel_recovery(
        &self,
        assertion: String,
        recovery_id: String,
        proof_json: Option<String>,
    ) -> Promise {
        let proof = match proof(proof_json) {
            Ok(p) => p,
            Err(f) => return rejected(f),
        };
        let c = self.0.clone();
        json(async move { c.cancel_recovery(&assertion, &recovery_id, proof).await })
    }

    /// `POST /v1/recoveries/cancel`.
    #[wasm_bindgen(js_name = cancelRecoveryWithCode)]
    pub fn cancel_recovery_with_code(&self, cancel_code: String) -> Promise {
        let c = self.0.clone();
        json(async move { c.cancel_recovery_with_code(&cancel_code).await })
    }

    /// `GET /v1/chains/{user_id}`: an array of Uint8Array.
    pub fn chain(&self, assertion: String, user_id: String) -> Promise {
        let c = self.0.clone();
        future_to_promise(async move {
            let blocks = c.chain(&assertion, &user_id).await.map_err(Failure::from)?;
            let out = Array::new();
            for block in blocks {
                out.push(&Uint8Array::from(block.as_slice()));
            }
            Ok(out.into())
        })
    }

    /// `POST /v1/chain/blocks`.
    #[wasm_bindgen(js_name = appendBlock)]
    pub fn append_block(&self, assertion: String, block: Vec<u8>) -> Promise {
        let c = self.0.clone();
        unit(async move { c.append_block(&assertion, &block).await })
    }

    /// `POST /v1/virtual-device/replace`.
    #[wasm_bindgen(js_name = replaceVirtualDevice)]
    pub fn replace_virtual_device(
        &self,
        assertion: String,
        sealed: Vec<u8>,
        proof_json: String,
    ) -> Promise {
        let proof = match required_proof(&proof_json) {
            Ok(p) => p,
            Err(f) => return rejected(f),
        };
        let c = self.0.clone();
        unit(async move { c.replace_virtual_device(&assertion, &sealed, proof).await })
    }

    /// `POST /v1/users/erase`.
    #[wasm_bindgen(js_name = eraseUser)]
    pub fn erase_user(&self, assertion: String) -> Promise {
        let c = self.0.clone();
        unit(async move { c.erase_user(&assertion).await })
    }
}
