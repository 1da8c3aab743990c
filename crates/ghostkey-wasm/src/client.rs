//! The `/v1` API client over the host's `fetch` (reqwest's WebAssembly backend).
//!
//! Each method returns a Promise of the answer's JSON text (or of nothing), which the
//! TypeScript layer parses into its typed results. Arguments are plain strings and bytes:
//! the TypeScript layer does the sealing and chain work synchronously around these calls,
//! so no secret object has to live across an `await`. A passphrase verifier is the
//! exception that proves the rule: it comes in as a [`Verifier`] (or inside a
//! [`ProofInput`]), and the request takes its own copy, wiped once sent, before the
//! Promise is returned.

use std::future::Future;

use ghostkey_client::proto::api::{ChallengePurpose, DevicePublicKeys, MethodKind, Proof};
use js_sys::{Array, Promise, Uint8Array};
use secrecy::ExposeSecret;
use serde::Serialize;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::error::{Failure, Result};
use crate::passphrase::Verifier;

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

/// A proof on its way into a request: a `proof` challenge's id and its answer (a code, a
/// passphrase verifier or a passkey's assertion). Made for one call, which consumes it.
#[wasm_bindgen]
pub struct ProofInput(Proof);

#[wasm_bindgen]
impl ProofInput {
    /// From `{ challenge_id, code }` or `{ challenge_id, webauthn }` (exactly one of the
    /// two answers) as JSON text.
    #[wasm_bindgen(js_name = fromJson)]
    pub fn from_json(text: &str) -> Result<ProofInput> {
        let proof: Proof = serde_json::from_str(text).map_err(|_| {
            Failure::local(
                "bad_format",
                "a proof is { challenge_id, code } or { challenge_id, webauthn }",
            )
        })?;
        if proof.code.is_some() == proof.webauthn.is_some() {
            return Err(Failure::local(
                "bad_format",
                "a proof has exactly one of code and webauthn",
            ));
        }
        Ok(ProofInput(proof))
    }

    /// A proof answered with a passphrase verifier (derived from the proof challenge's
    /// parameters).
    #[wasm_bindgen(js_name = withVerifier)]
    pub fn with_verifier(challenge_id: String, verifier: &Verifier) -> ProofInput {
        ProofInput(Proof::with_code(
            challenge_id,
            verifier.secret.expose_secret().to_owned(),
        ))
    }
}

fn rejected(f: Failure) -> Promise {
    Promise::reject(&f.into())
}

fn webauthn_json(text: &str) -> Result<serde_json::Value> {
    match serde_json::from_str(text) {
        Ok(value @ serde_json::Value::Object(_)) => Ok(value),
        _ => Err(Failure::local(
            "bad_format",
            "a WebAuthn response is a JSON object (PublicKeyCredential JSON)",
        )),
    }
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

    /// `POST /v1/methods`; `kind` is `sms`, `email` or `totp` (passphrases and passkeys
    /// have their own calls).
    #[wasm_bindgen(js_name = addMethod)]
    pub fn add_method(
        &self,
        assertion: String,
        kind: &str,
        destination: Option<String>,
        proof: Option<ProofInput>,
    ) -> Promise {
        let kind = match MethodKind::parse(kind) {
            Some(k @ (MethodKind::Sms | MethodKind::Email | MethodKind::Totp)) => k,
            Some(MethodKind::Passphrase | MethodKind::Passkey) => {
                return rejected(Failure::local(
                    "bad_format",
                    "passphrase and passkey methods are added with addPassphrase and addPasskey",
                ))
            }
            None => return rejected(Failure::local("bad_format", "kind is sms, email or totp")),
        };
        let proof = proof.map(|p| p.0);
        let c = self.0.clone();
        json(async move {
            c.add_method(&assertion, kind, destination.as_deref(), proof)
                .await
        })
    }

    /// `POST /v1/methods` for a passphrase method, with its verifier.
    #[wasm_bindgen(js_name = addPassphrase)]
    pub fn add_passphrase(
        &self,
        assertion: String,
        verifier: &Verifier,
        proof: Option<ProofInput>,
    ) -> Promise {
        let setup = verifier.setup();
        let proof = proof.map(|p| p.0);
        let c = self.0.clone();
        json(async move { c.add_passphrase(&assertion, setup, proof).await })
    }

    /// `POST /v1/methods` for a passkey method, with the name the user gives it.
    #[wasm_bindgen(js_name = addPasskey)]
    pub fn add_passkey(
        &self,
        assertion: String,
        name: Option<String>,
        proof: Option<ProofInput>,
    ) -> Promise {
        let proof = proof.map(|p| p.0);
        let c = self.0.clone();
        json(async move { c.add_passkey(&assertion, name.as_deref(), proof).await })
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
        proof: ProofInput,
    ) -> Promise {
        let c = self.0.clone();
        unit(async move { c.remove_method(&assertion, &method_id, proof.0).await })
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

    /// `POST /v1/challenges/{id}/answer` with a passphrase verifier as the code.
    #[wasm_bindgen(js_name = answerVerifier)]
    pub fn answer_verifier(&self, challenge_id: String, verifier: &Verifier) -> Promise {
        let code = verifier.copy();
        let c = self.0.clone();
        json(async move { c.answer(&challenge_id, code.expose_secret()).await })
    }

    /// `POST /v1/challenges/{id}/answer` with a passkey's new credential
    /// (`RegisterPublicKeyCredential` JSON text) as `webauthn`.
    #[wasm_bindgen(js_name = answerWebauthn)]
    pub fn answer_webauthn(&self, challenge_id: String, credential_json: &str) -> Promise {
        let credential = match webauthn_json(credential_json) {
            Ok(v) => v,
            Err(f) => return rejected(f),
        };
        let c = self.0.clone();
        json(async move { c.answer_webauthn(&challenge_id, credential).await })
    }

    /// `POST /v1/users/unlock`.
    pub fn unlock(&self, assertion: String, proof: Option<ProofInput>) -> Promise {
        let proof = proof.map(|p| p.0);
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

    /// `POST /v1/recoveries/{id}/verify` with a passphrase verifier as the code.
    #[wasm_bindgen(js_name = verifyRecoveryVerifier)]
    pub fn verify_recovery_verifier(&self, recovery_id: String, verifier: &Verifier) -> Promise {
        let code = verifier.copy();
        let c = self.0.clone();
        json(async move { c.verify_recovery(&recovery_id, code.expose_secret()).await })
    }

    /// `POST /v1/recoveries/{id}/verify` with a passkey's assertion (`PublicKeyCredential`
    /// JSON text) as `webauthn`.
    #[wasm_bindgen(js_name = verifyRecoveryWebauthn)]
    pub fn verify_recovery_webauthn(&self, recovery_id: String, assertion_json: &str) -> Promise {
        let assertion = match webauthn_json(assertion_json) {
            Ok(v) => v,
            Err(f) => return rejected(f),
        };
        let c = self.0.clone();
        json(async move { c.verify_recovery_webauthn(&recovery_id, assertion).await })
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
        proof: Option<ProofInput>,
    ) -> Promise {
        let proof = proof.map(|p| p.0);
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
        proof: ProofInput,
    ) -> Promise {
        let c = self.0.clone();
        unit(async move { c.replace_virtual_device(&assertion, &sealed, proof.0).await })
    }

    /// `POST /v1/users/erase`.
    #[wasm_bindgen(js_name = eraseUser)]
    pub fn erase_user(&self, assertion: String) -> Promise {
        let c = self.0.clone();
        unit(async move { c.erase_user(&assertion).await })
    }
}
