//! Errors as they cross into JavaScript: a plain object `{ code, message, status?,
//! retryAfter?, problem? }` that the TypeScript layer turns into a `GhostkeyError`.
//!
//! `code` is Ghostkey's stable problem code for an answer from the server, or one of the
//! local codes below. No message ever holds a secret: the Rust error types print none.

use ghostkey_client::chain::ChainUseError;
use ghostkey_client::envelope::EnvelopeError;
use ghostkey_client::kit::KitError;
use ghostkey_client::proto::chain::ChainError;
use ghostkey_client::sealed::SealError;
use ghostkey_client::ClientError;
use js_sys::{Object, Reflect};
use wasm_bindgen::JsValue;

/// A failure on its way to JavaScript.
#[derive(Debug)]
pub struct Failure {
    code: String,
    message: String,
    status: Option<u16>,
    retry_after: Option<u64>,
    /// The problem document, as JSON text.
    problem: Option<String>,
}

impl Failure {
    /// A local failure.
    pub fn local(code: &str, message: impl Into<String>) -> Failure {
        Failure {
            code: code.to_owned(),
            message: message.into(),
            status: None,
            retry_after: None,
            problem: None,
        }
    }

    /// Its stable code.
    pub fn code(&self) -> &str {
        &self.code
    }
}

/// What every exported function returns on failure.
pub type Result<T> = std::result::Result<T, Failure>;

impl From<Failure> for JsValue {
    fn from(f: Failure) -> JsValue {
        let o = Object::new();
        let set = |k: &str, v: JsValue| {
            // Setting a property on a fresh plain object cannot fail.
            let _ = Reflect::set(&o, &JsValue::from_str(k), &v);
        };
        set("code", JsValue::from_str(&f.code));
        set("message", JsValue::from_str(&f.message));
        if let Some(status) = f.status {
            set("status", JsValue::from(status));
        }
        if let Some(seconds) = f.retry_after {
            set("retryAfter", JsValue::from(seconds as f64));
        }
        if let Some(problem) = f.problem {
            set(
                "problem",
                js_sys::JSON::parse(&problem).unwrap_or(JsValue::UNDEFINED),
            );
        }
        o.into()
    }
}

impl From<SealError> for Failure {
    fn from(e: SealError) -> Failure {
        let code = match e {
            SealError::Decrypt => "wrong_secret",
            SealError::WrongBinding(_) => "wrong_binding",
            SealError::RolledBack { .. } => "rolled_back",
            SealError::Format(_) | SealError::Layout(_) | SealError::IdLength => "bad_format",
        };
        Failure::local(code, e.to_string())
    }
}

impl From<ChainError> for Failure {
    fn from(e: ChainError) -> Failure {
        Failure::local(
            "chain_invalid",
            format!("block {}: {} ({})", e.index, e.fault.as_str(), e.fault),
        )
    }
}

impl From<ChainUseError> for Failure {
    fn from(e: ChainUseError) -> Failure {
        let code = match e {
            ChainUseError::NotADevice => "not_a_device",
            ChainUseError::UserKey => "user_key",
            ChainUseError::Endorse(_) => "endorse_refused",
            ChainUseError::Seal => "unexpected",
        };
        Failure::local(code, e.to_string())
    }
}

impl From<EnvelopeError> for Failure {
    fn from(e: EnvelopeError) -> Failure {
        let code = match e {
            EnvelopeError::Malformed | EnvelopeError::Build => "bad_format",
            EnvelopeError::NotARecipient => "not_a_recipient",
            EnvelopeError::UnknownAuthor => "unknown_author",
            EnvelopeError::BadSignature => "bad_signature",
            EnvelopeError::Decrypt => "decrypt",
        };
        Failure::local(code, e.to_string())
    }
}

impl From<KitError> for Failure {
    fn from(e: KitError) -> Failure {
        let code = match e {
            KitError::BadKey => "bad_format",
            // The kit refuses to endorse anything but a root for its app, user and key.
            KitError::Sign(_) => "endorse_refused",
        };
        Failure::local(code, e.to_string())
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        match e {
            ClientError::Api {
                problem,
                retry_after,
                ..
            } => Failure {
                code: problem.code.clone(),
                message: format!(
                    "{}: {}{}",
                    problem.code,
                    problem.title,
                    problem
                        .detail
                        .as_deref()
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default()
                ),
                status: Some(problem.status),
                retry_after: retry_after.or(problem.retry_after),
                problem: serde_json::to_string(&problem).ok(),
            },
            ClientError::Transport(e) => Failure::local("transport", format!("transport: {e}")),
            ClientError::Unexpected { status, detail } => Failure {
                status: (status != 0).then_some(status),
                ..Failure::local("unexpected", detail)
            },
            ClientError::BadUrl(m) => Failure::local("bad_url", m),
            ClientError::Format(e) => e.into(),
            ClientError::Chain(e) => e.into(),
            ClientError::ChainUse(e) => e.into(),
        }
    }
}
