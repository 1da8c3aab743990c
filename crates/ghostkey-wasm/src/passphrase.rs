//! Passphrase methods (docs/PROTOCOL.md §5.6), through `ghostkey_client::passphrase`: the
//! strength check and the verifier derivation (Argon2id of the NFC passphrase) run here,
//! in WebAssembly, with the same code as the native client.
//!
//! The passphrase and the verifier stay in WebAssembly memory as `SecretString`s, wiped
//! when JavaScript calls `free()` (or the FinalizationRegistry collects the object). The
//! verifier leaves only inside a request ([`crate::client`] takes a [`Verifier`], not a
//! string) or through an explicit `exportBase64()`.

use ghostkey_client::passphrase::{self, PassphraseError, MIN_BITS, MIN_CHARS};
use ghostkey_client::proto::api::{PassphraseParams, PassphraseSetup};
use js_sys::JsString;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use wasm_bindgen::prelude::*;

use crate::error::{Failure, Result};

impl From<PassphraseError> for Failure {
    fn from(e: PassphraseError) -> Failure {
        let code = match e {
            PassphraseError::TooShort { .. } => "passphrase_too_short",
            PassphraseError::TooWeak { .. } => "passphrase_too_weak",
            PassphraseError::UnknownVersion(_) => "passphrase_unknown_version",
            PassphraseError::ParamsMismatch(_) => "passphrase_params_refused",
            PassphraseError::NotPassphrase => "wrong_method_kind",
            PassphraseError::Derive(_) => "unexpected",
        };
        // The error types print no passphrase: only lengths, estimates and versions.
        Failure::local(code, e.to_string())
    }
}

/// A passphrase the user typed.
#[wasm_bindgen]
pub struct Passphrase(SecretString);

/// What [`Passphrase::strength`] reports (serialised to JSON for the TypeScript layer).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Strength {
    ok: bool,
    bits: u32,
    min_bits: u32,
    min_chars: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

#[wasm_bindgen]
impl Passphrase {
    /// Takes the text (JavaScript's copy of it is out of reach here).
    #[wasm_bindgen(js_name = fromString)]
    pub fn from_string(text: String) -> Passphrase {
        Passphrase(SecretString::from(text))
    }

    /// The minimum strength of a new passphrase (docs/PROTOCOL.md §5.6): throws
    /// `passphrase_too_short` or `passphrase_too_weak`.
    #[wasm_bindgen(js_name = checkStrength)]
    pub fn check_strength(&self) -> Result<()> {
        Ok(passphrase::check_strength(&self.0)?)
    }

    /// `{ ok, bits, minBits, minChars, code?, message? }` as JSON: the check and the
    /// estimate, for a strength meter.
    pub fn strength(&self) -> Result<String> {
        let (code, message) = match passphrase::check_strength(&self.0) {
            Ok(()) => (None, None),
            Err(e) => {
                let message = e.to_string();
                (Some(Failure::from(e).code().to_owned()), Some(message))
            }
        };
        let report = Strength {
            ok: code.is_none(),
            bits: passphrase::estimate_bits(self.0.expose_secret()),
            min_bits: MIN_BITS,
            min_chars: MIN_CHARS,
            code,
            message,
        };
        serde_json::to_string(&report).map_err(|e| Failure::local("unexpected", e.to_string()))
    }

    /// What adding a passphrase method sends: the strength check, then the verifier with
    /// the newest parameter version. Throws `passphrase_too_short` or
    /// `passphrase_too_weak` before deriving anything.
    pub fn setup(&self, app_id: &str, user_id: &str) -> Result<Verifier> {
        let PassphraseSetup { version, verifier } = passphrase::setup(&self.0, app_id, user_id)?;
        Ok(Verifier {
            version,
            secret: SecretString::from(verifier),
        })
    }

    /// The verifier with the parameters of `version` (no strength check).
    #[wasm_bindgen(js_name = deriveVerifier)]
    pub fn derive_verifier(&self, app_id: &str, user_id: &str, version: u32) -> Result<Verifier> {
        Ok(Verifier {
            version,
            secret: passphrase::derive_verifier(&self.0, app_id, user_id, version)?,
        })
    }

    /// The answer to a passphrase challenge: `params_json` is the challenge's
    /// `passphrase` member as JSON (`null` or absent when it has none). The parameters are
    /// checked against this client's own table (`passphrase_unknown_version`,
    /// `passphrase_params_refused`; `wrong_method_kind` without any).
    pub fn answer(
        &self,
        app_id: &str,
        user_id: &str,
        params_json: Option<String>,
    ) -> Result<Verifier> {
        let shown: Option<PassphraseParams> = match params_json.as_deref() {
            None => None,
            Some(text) => serde_json::from_str(text).map_err(|_| {
                Failure::local(
                    "passphrase_params_refused",
                    "the challenge's passphrase parameters are not {version, memory_kib, iterations, parallelism}",
                )
            })?,
        };
        let secret = passphrase::answer(&self.0, app_id, user_id, shown.as_ref())?;
        let version = shown.map(|p| p.version).unwrap_or_default();
        Ok(Verifier { version, secret })
    }
}

/// A passphrase verifier: what Ghostkey receives where a code goes. Password-equivalent
/// for the user's passphrase method: never printed.
#[wasm_bindgen]
pub struct Verifier {
    version: u32,
    pub(crate) secret: SecretString,
}

#[wasm_bindgen]
impl Verifier {
    /// The parameter version it was derived with.
    #[wasm_bindgen(getter)]
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The verifier as base64url (43 characters), on explicit request only.
    #[wasm_bindgen(js_name = exportBase64)]
    pub fn export_base64(&self) -> JsString {
        JsString::from(self.secret.expose_secret())
    }
}

impl Verifier {
    /// What `POST /v1/methods` carries for it.
    pub(crate) fn setup(&self) -> PassphraseSetup {
        PassphraseSetup {
            version: self.version,
            verifier: self.secret.expose_secret().to_owned(),
        }
    }

    /// An owned copy, wiped on drop, for a request in flight.
    pub(crate) fn copy(&self) -> SecretString {
        SecretString::from(self.secret.expose_secret().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The §11.5 vector (docs/PROTOCOL.md): NFD input, the NFC spelling gives the same.
    const APP: &str = "app_8c2f1e9a4b7d3c6e0f5a1b2d";
    const USER: &str = "u-7f3a9c";
    const VERIFIER: &str = "mqUQbGykPsyzep8IGUPcnYW-9_SKQdrOmJ5x6m9a_7A";

    #[test]
    fn the_vector_derives_through_the_bindings_and_answers_check_the_table() {
        let nfd =
            Passphrase::from_string("cre\u{300}me bru\u{302}le\u{301}e a\u{300} minuit".into());
        let v = nfd.derive_verifier(APP, USER, 1).unwrap();
        assert_eq!(v.secret.expose_secret(), VERIFIER);
        assert_eq!(v.version(), 1);
        let params = r#"{"version":1,"memory_kib":19456,"iterations":2,"parallelism":1}"#;
        let a = nfd.answer(APP, USER, Some(params.into())).unwrap();
        assert_eq!(a.secret.expose_secret(), VERIFIER);
        let cheap = r#"{"version":1,"memory_kib":8,"iterations":1,"parallelism":1}"#;
        assert_eq!(
            nfd.answer(APP, USER, Some(cheap.into()))
                .err()
                .unwrap()
                .code(),
            "passphrase_params_refused"
        );
        let v2 = r#"{"version":2,"memory_kib":19456,"iterations":2,"parallelism":1}"#;
        assert_eq!(
            nfd.answer(APP, USER, Some(v2.into())).err().unwrap().code(),
            "passphrase_unknown_version"
        );
        assert_eq!(
            nfd.answer(APP, USER, None).err().unwrap().code(),
            "wrong_method_kind"
        );
    }

    #[test]
    fn weak_passphrases_are_refused_before_any_derivation() {
        let short = Passphrase::from_string("Tr0ub4dor&3".into());
        assert_eq!(
            short.setup(APP, USER).err().unwrap().code(),
            "passphrase_too_short"
        );
        let weak = Passphrase::from_string("abcabcabcabcabc".into());
        assert_eq!(
            weak.check_strength().err().unwrap().code(),
            "passphrase_too_weak"
        );
        let report = weak.strength().unwrap();
        assert!(report.contains(r#""ok":false"#), "{report}");
        assert!(!report.contains("abcabc"), "{report}");
        let good = Passphrase::from_string("correct horse battery staple".into());
        assert!(good.strength().unwrap().contains(r#""ok":true"#));
    }
}
