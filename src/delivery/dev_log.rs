//! A development stand-in that writes each message, code included, to the log.
//!
//! It exists so that a developer running Ghostkey locally can read the one-time code
//! without an SMS or SMTP account. It deliberately logs the destination and the body,
//! which is why [`Sender::is_development`] is true and production refuses it.

use async_trait::async_trait;
use secrecy::ExposeSecret;

use super::{Outgoing, SendError, Sender};

/// Logs messages instead of sending them. Development only.
#[derive(Debug, Clone, Copy)]
pub struct DevLogSender {
    channel: &'static str,
}

impl DevLogSender {
    /// A stand-in for `channel` (`sms` or `email`), named in each log line.
    pub fn new(channel: &'static str) -> DevLogSender {
        DevLogSender { channel }
    }
}

#[async_trait]
impl Sender for DevLogSender {
    fn name(&self) -> &'static str {
        "dev-log"
    }

    async fn send(&self, message: &Outgoing) -> Result<(), SendError> {
        // Warn level, so that the line shows with the default filter and nobody mistakes
        // this for a real delivery.
        tracing::warn!(
            outbox_id = message.id,
            channel = self.channel,
            to = message.to.expose_secret(),
            subject = %message.subject,
            body = message.body.expose_secret(),
            "dev-log delivery (development only: not sent)"
        );
        Ok(())
    }

    fn is_development(&self) -> bool {
        true
    }
}
