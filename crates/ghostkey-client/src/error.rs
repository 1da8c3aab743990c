//! The error type of the client, shared by the core (no I/O) and the HTTP client.

use ghostkey_proto::{ErrorCode, Problem};

use crate::sealed::SealError;

/// What went wrong with a call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Ghostkey refused the request with a problem document. `code` is `None` only for a
    /// code newer than this library; `problem.code` still holds it.
    #[error("ghostkey refused the request: {} ({})", problem.code, problem.title)]
    Api {
        /// The typed code.
        code: Option<ErrorCode>,
        /// The whole problem document.
        problem: Box<Problem>,
        /// Seconds to wait before trying again, from the `Retry-After` header (the same
        /// value as `problem.retry_after` when Ghostkey sets both).
        retry_after: Option<u64>,
    },
    /// The request did not reach Ghostkey or the answer did not arrive. Only with the
    /// `http` feature: the core does no I/O.
    #[cfg(feature = "http")]
    #[error("transport: {0}")]
    Transport(#[from] reqwest::Error),
    /// Ghostkey answered something that is not part of the protocol.
    #[error("unexpected answer (HTTP {status}): {detail}")]
    Unexpected {
        /// The HTTP status.
        status: u16,
        /// What was wrong with it.
        detail: String,
    },
    /// A sealed virtual device could not be made or opened.
    #[error(transparent)]
    Format(#[from] SealError),
    /// The base URL is unusable.
    #[error("bad base URL: {0}")]
    BadUrl(String),
    /// A chain Ghostkey served does not verify from the app's pinned keys.
    #[error("the device chain does not verify: {0}")]
    Chain(#[from] ghostkey_proto::chain::ChainError),
    /// A chain operation on this device failed.
    #[error(transparent)]
    ChainUse(#[from] crate::chain::ChainUseError),
}

impl ClientError {
    /// The stable error code, if Ghostkey answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => *code,
            _ => None,
        }
    }
}
