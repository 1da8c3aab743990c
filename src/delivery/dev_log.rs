//! A development stand-in that writes each message, code included, to the log, and keeps
//! the newest ones in memory for `GET /dev/messages`.
//!
//! It exists so that a developer running Ghostkey locally can read the one-time code
//! without an SMS or SMTP account (and a demo web page can read it from
//! `GET /dev/messages`). It deliberately logs and keeps the destination and the body,
//! which is why [`Sender::is_development`] is true and production refuses it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use secrecy::ExposeSecret;
use serde::Serialize;

use super::{Outgoing, SendError, Sender};
use crate::clock::{Clock, UnixTime};

/// Messages the development view keeps: the newest, the oldest dropped first.
pub const DEV_MESSAGES_KEPT: usize = 1_000;

/// One message a development sender "sent".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DevMessage {
    /// `sms` or `email`.
    pub channel: &'static str,
    /// The destination as the server normalised it (E.164 number or e-mail address).
    pub to: String,
    /// The text, code included.
    pub body: String,
    /// When it was handed to the sender.
    pub sent_at: UnixTime,
}

/// The newest [`DEV_MESSAGES_KEPT`] messages of the development senders, shared with the
/// HTTP view. Development only: it holds codes and destinations in clear.
#[derive(Clone)]
pub struct DevMessages {
    kept: Arc<Mutex<VecDeque<DevMessage>>>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for DevMessages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevMessages").finish_non_exhaustive()
    }
}

impl DevMessages {
    /// An empty view whose messages are timed by `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> DevMessages {
        DevMessages {
            kept: Arc::new(Mutex::new(VecDeque::new())),
            clock,
        }
    }

    /// Keeps a message, dropping the oldest beyond the bound.
    pub fn record(&self, channel: &'static str, to: &str, body: &str) -> Result<(), SendError> {
        let message = DevMessage {
            channel,
            to: to.to_owned(),
            body: body.to_owned(),
            sent_at: self.clock.now(),
        };
        let mut kept = self
            .kept
            .lock()
            .map_err(|_| SendError::transient("development message view lock poisoned"))?;
        while kept.len() >= DEV_MESSAGES_KEPT {
            kept.pop_front();
        }
        kept.push_back(message);
        Ok(())
    }

    /// The kept messages, oldest first, only those to `to` when it is given.
    pub fn messages(&self, to: Option<&str>) -> Vec<DevMessage> {
        match self.kept.lock() {
            Ok(kept) => kept
                .iter()
                .filter(|m| to.is_none_or(|to| m.to == to))
                .cloned()
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// Logs messages instead of sending them (and keeps them for the development view).
/// Development only.
#[derive(Debug, Clone)]
pub struct DevLogSender {
    channel: &'static str,
    view: Option<DevMessages>,
}

impl DevLogSender {
    /// A stand-in for `channel` (`sms` or `email`), named in each log line.
    pub fn new(channel: &'static str) -> DevLogSender {
        DevLogSender {
            channel,
            view: None,
        }
    }

    /// The same, also keeping each message in `view`.
    pub fn keeping(channel: &'static str, view: DevMessages) -> DevLogSender {
        DevLogSender {
            channel,
            view: Some(view),
        }
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
        if let Some(view) = &self.view {
            view.record(
                self.channel,
                message.to.expose_secret(),
                message.body.expose_secret(),
            )?;
        }
        Ok(())
    }

    fn is_development(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(UnixTime);
    impl Clock for Fixed {
        fn now(&self) -> UnixTime {
            self.0
        }
    }

    #[test]
    fn the_view_keeps_the_newest_thousand_in_order_and_filters_by_destination() {
        let view = DevMessages::new(Arc::new(Fixed(42)));
        for i in 0..(DEV_MESSAGES_KEPT + 5) {
            let to = if i % 2 == 0 {
                "+33612345678"
            } else {
                "a@example.org"
            };
            view.record("sms", to, &format!("message {i}")).unwrap();
        }
        let all = view.messages(None);
        assert_eq!(all.len(), DEV_MESSAGES_KEPT);
        assert_eq!(all[0].body, "message 5", "the five oldest are dropped");
        assert_eq!(
            all[DEV_MESSAGES_KEPT - 1].body,
            format!("message {}", DEV_MESSAGES_KEPT + 4)
        );
        assert!(all.iter().all(|m| m.sent_at == 42));
        let phone = view.messages(Some("+33612345678"));
        assert_eq!(phone.len(), DEV_MESSAGES_KEPT / 2);
        assert!(phone.iter().all(|m| m.to == "+33612345678"));
        assert!(
            view.messages(Some("+3361234567")).is_empty(),
            "exact match only"
        );
    }
}
