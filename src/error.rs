//! The error every request path returns.
//!
//! It keeps what the caller is told (a stable [`ErrorCode`] and a detail free of secrets
//! and personal values) apart from the cause, which only reaches the server log.

use ghostkey_proto::ErrorCode;

/// A failed request: a public code and detail, and for server-side failures a private cause.
#[derive(Debug)]
pub struct Error {
    /// The stable code returned to the caller.
    pub code: ErrorCode,
    /// Shown to the caller; must never contain a secret or a personal value.
    pub detail: Option<String>,
    /// Logged, never shown.
    pub cause: Option<String>,
    /// For limits: seconds until trying again makes sense.
    pub retry_after: Option<u64>,
    /// For `release_pending`: when the release becomes available.
    pub available_at: Option<i64>,
}

impl Error {
    /// An error the caller caused, with no detail beyond the code's title.
    pub fn new(code: ErrorCode) -> Error {
        Error {
            code,
            detail: None,
            cause: None,
            retry_after: None,
            available_at: None,
        }
    }

    /// A limit was hit: try again in `seconds`.
    pub fn retry_after(code: ErrorCode, seconds: i64) -> Error {
        Error {
            retry_after: Some(u64::try_from(seconds.max(1)).unwrap_or(1)),
            ..Error::new(code)
        }
    }

    /// The release waits until `available_at`.
    pub fn release_pending(available_at: i64, now: i64) -> Error {
        Error {
            available_at: Some(available_at),
            ..Error::retry_after(ErrorCode::ReleasePending, available_at - now)
        }
    }

    /// An error the caller caused, with a detail shown to them.
    pub fn with_detail(code: ErrorCode, detail: impl Into<String>) -> Error {
        Error {
            code,
            detail: Some(detail.into()),
            cause: None,
            retry_after: None,
            available_at: None,
        }
    }

    /// A server-side failure: the caller sees `internal`, the log sees the cause.
    pub fn internal(cause: impl std::fmt::Display) -> Error {
        Error {
            code: ErrorCode::Internal,
            detail: None,
            cause: Some(cause.to_string()),
            retry_after: None,
            available_at: None,
        }
    }
}

impl From<ErrorCode> for Error {
    fn from(code: ErrorCode) -> Error {
        Error::new(code)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.detail {
            Some(d) => write!(f, "{}: {}", self.code, d),
            None => write!(f, "{}", self.code),
        }
    }
}

impl std::error::Error for Error {}
