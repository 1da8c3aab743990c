//! Delivery of one-time codes and notices by SMS and e-mail.
//!
//! Messages are never sent from a request: a request writes them to the outbox in the
//! same transaction as what caused them, and the [`worker`] sends them, retrying
//! transient failures with backoff. This module defines what a channel adapter is; each
//! adapter lives in its own file.

// The adapters (being written): uncomment as each file lands.
pub mod dev_inbox;
pub mod dev_log;
pub mod setup;
pub mod smtp;
pub mod twilio;
pub mod webhook;
pub mod worker;

use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;

/// One message, decrypted from the outbox just before sending.
pub struct Outgoing {
    /// The outbox row id: adapters may pass it on as an idempotency key.
    pub id: i64,
    /// E.164 phone number or e-mail address (personal: never log it).
    pub to: SecretString,
    /// E-mail subject; ignored by SMS adapters.
    pub subject: String,
    /// The text (may hold a one-time code: never log it).
    pub body: SecretString,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why a send failed. The text is for the operator's log and the outbox row, so it must
/// never contain the destination or the body: provider error codes and statuses only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Worth retrying later (timeouts, 429, 5xx, connection failures, SMTP 4xx).
    #[error("transient: {reason}")]
    Transient {
        /// What happened.
        reason: String,
        /// The provider's `Retry-After`, if it gave one.
        retry_after: Option<Duration>,
    },
    /// Will never succeed for this message (invalid number, rejected address, SMTP 5xx).
    #[error("permanent: {reason}")]
    Permanent {
        /// What happened.
        reason: String,
    },
}

impl SendError {
    /// A transient failure without a provider hint.
    pub fn transient(reason: impl Into<String>) -> SendError {
        SendError::Transient {
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// A permanent failure.
    pub fn permanent(reason: impl Into<String>) -> SendError {
        SendError::Permanent {
            reason: reason.into(),
        }
    }
}

/// A channel adapter: sends one message, or says why not.
#[async_trait]
pub trait Sender: Send + Sync + 'static {
    /// A short name for logs and metrics (`twilio`, `webhook`, `smtp`, `dev-log`).
    fn name(&self) -> &'static str;
    /// Sends `message`; must give up within its configured timeout.
    async fn send(&self, message: &Outgoing) -> Result<(), SendError>;
    /// Whether this adapter is a development stand-in, refused in production.
    fn is_development(&self) -> bool {
        false
    }
}
