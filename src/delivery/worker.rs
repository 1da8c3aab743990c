//! The outbox worker: takes due messages one at a time, decrypts them just before sending,
//! sends them through the channel's adapter and records the result. Transient failures
//! are retried with exponential backoff; permanent ones, and messages out of attempts,
//! are recorded as failed. Everything lives in the store, so a restart resumes where the
//! last run stopped. A message is leased while it is being sent: a crash mid-send
//! re-sends it once the lease ends (at least once, exactly once when nothing crashes).

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use tokio::sync::Notify;

use super::{Outgoing, SendError, Sender};
use crate::clock::{Clock, UnixTime};
use crate::config::DeliveryConfig;
use crate::domain::policy::MethodKind;
use crate::error::Error;
use crate::keys::ServerKeys;
use crate::store::{ClaimedMessage, MessageKind, SendResult, Store};

/// The subject lines of e-mails.
#[derive(Debug, Clone)]
pub struct Subjects {
    /// For one-time codes.
    pub code: String,
    /// For security notices.
    pub notice: String,
}

/// Sends what the outbox holds.
pub struct Worker {
    /// The store.
    pub store: Arc<dyn Store>,
    /// The keys that decrypt destinations and bodies.
    pub keys: Arc<ServerKeys>,
    /// The SMS adapter.
    pub sms: Arc<dyn Sender>,
    /// The e-mail adapter.
    pub email: Arc<dyn Sender>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Poll interval, retry policy.
    pub config: DeliveryConfig,
    /// E-mail subjects.
    pub subjects: Subjects,
    /// Woken when a request queues a message.
    pub wake: Arc<Notify>,
    /// How long a claimed message stays leased (longer than any send can take).
    pub lease: Duration,
    /// Where sends are counted (the outbox depth is read when `/metrics` is).
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// The delay before retry number `attempt` (1-based): `base * 2^(attempt-1)`, capped, or
/// the provider's own `Retry-After` when that is longer.
pub fn retry_delay(
    config: &DeliveryConfig,
    attempt: u32,
    provider_hint: Option<Duration>,
) -> Duration {
    let doublings = attempt.saturating_sub(1).min(30);
    let ms = config
        .retry_base_ms
        .saturating_mul(1u64 << doublings)
        .min(config.retry_max_ms);
    let ours = Duration::from_millis(ms);
    provider_hint.map_or(ours, |hint| hint.max(ours))
}

impl Worker {
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || crate::store::as_store_thread(|| f(store.as_ref())))
            .await
            .map_err(|e| Error::internal(format!("blocking task failed: {e}")))?
    }

    /// Runs until `stop` turns true; a message being sent when it does is finished and
    /// recorded first (graceful shutdown).
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let poll = Duration::from_millis(self.config.poll_interval_ms);
        while !*stop.borrow() {
            match self.drain(&stop).await {
                Ok(_) => {}
                Err(e) => tracing::error!(cause = ?e.cause, code = %e.code, "outbox worker error"),
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                _ = stop.changed() => {}
            }
        }
        tracing::info!("outbox worker stopped");
    }

    /// Sends every due message until none is left or `stop` turns true; returns how many
    /// it handled.
    pub async fn drain(&self, stop: &tokio::sync::watch::Receiver<bool>) -> Result<usize, Error> {
        let mut handled = 0;
        while !*stop.borrow() {
            let now = self.clock.now();
            let lease = i64::try_from(self.lease.as_secs()).unwrap_or(60).max(1);
            let Some(message) = self
                .blocking(move |store| Ok(store.claim_message(now, lease)?))
                .await?
            else {
                // Nothing to count here: `GET /metrics` reads the outbox's depth fresh at
                // each scrape, and a count after every pass would be a read per request
                // under load (a request that queues a message wakes the worker).
                return Ok(handled);
            };
            let id = message.id;
            let leased_until = message.leased_until;
            let channel = message.channel.as_str();
            let result = self.send(message).await;
            let outcome = match &result {
                SendResult::Sent => "sent",
                SendResult::Retry { .. } => "retry",
                SendResult::Failed { .. } => "failed",
            };
            self.metrics.inc(
                "ghostkey_messages_total",
                &[("channel", channel), ("result", outcome)],
            );
            let finished_at = self.clock.now();
            let applied = self
                .blocking(move |store| {
                    Ok(store.finish_message(id, leased_until, &result, finished_at)?)
                })
                .await?;
            if !applied {
                // The send took longer than the lease: another worker (perhaps on another
                // node) claimed the message meanwhile and its result is the one kept.
                tracing::warn!(
                    message_id = id,
                    "a send outlasted its lease: its result was not recorded (the message may be sent twice)"
                );
                self.metrics
                    .inc("ghostkey_outbox_stale_finishes_total", &[]);
            }
            handled += 1;
        }
        Ok(handled)
    }

    async fn send(&self, message: ClaimedMessage) -> SendResult {
        let (sender, subject) = match message.channel {
            MethodKind::Sms => (&self.sms, String::new()),
            MethodKind::Email => (
                &self.email,
                match message.kind {
                    MessageKind::Code => self.subjects.code.clone(),
                    MessageKind::Notice => self.subjects.notice.clone(),
                },
            ),
            MethodKind::Totp | MethodKind::Passphrase | MethodKind::Passkey => {
                return SendResult::Failed {
                    error: "a TOTP, passphrase or passkey method has no destination".into(),
                }
            }
        };
        let outgoing = match self.decrypt(&message, subject) {
            Ok(o) => o,
            Err(error) => {
                tracing::error!(outbox_id = message.id, %error, "cannot decrypt a queued message");
                return SendResult::Failed { error };
            }
        };
        let attempt = message.attempts + 1;
        let channel = message.channel.as_str();
        let kind = message.kind.as_str();
        match sender.send(&outgoing).await {
            Ok(()) => {
                tracing::info!(
                    outbox_id = message.id,
                    channel,
                    kind,
                    attempt,
                    adapter = sender.name(),
                    "message sent"
                );
                SendResult::Sent
            }
            Err(SendError::Permanent { reason }) => {
                tracing::warn!(outbox_id = message.id, channel, kind, attempt, %reason, "message failed for good");
                SendResult::Failed { error: reason }
            }
            Err(SendError::Transient {
                reason,
                retry_after,
            }) => {
                if attempt >= self.config.max_attempts {
                    tracing::warn!(outbox_id = message.id, channel, kind, attempt, %reason, "message out of attempts");
                    return SendResult::Failed {
                        error: format!("out of attempts; last: {reason}"),
                    };
                }
                let delay = retry_delay(&self.config, attempt, retry_after);
                // Whole seconds, at least one, so a drain never retries the same message at once.
                let secs = i64::try_from(delay.as_millis().div_ceil(1000))
                    .unwrap_or(i64::MAX / 2)
                    .max(1);
                let at: UnixTime = self.clock.now() + secs;
                tracing::info!(
                    outbox_id = message.id, channel, kind, attempt, %reason,
                    retry_in_ms = delay.as_millis() as u64, "message will be retried"
                );
                SendResult::Retry { at, error: reason }
            }
        }
    }

    fn decrypt(&self, message: &ClaimedMessage, subject: String) -> Result<Outgoing, String> {
        let to = self
            .keys
            .open(&message.destination_key_id, &message.destination)
            .map_err(|e| e.to_string())?;
        let body = self
            .keys
            .open(&message.body_key_id, &message.body)
            .map_err(|e| e.to_string())?;
        let text =
            |bytes: &[u8]| String::from_utf8(bytes.to_vec()).map_err(|_| "not UTF-8".to_owned());
        let mut body = text(&body)?;
        if message.events > 1 {
            // Coalesced: the first event's text stands for all of them.
            body.push_str(&format!(
                " (This notice stands for {} such events in the last hour.)",
                message.events
            ));
        }
        Ok(Outgoing {
            id: message.id,
            to: SecretString::from(text(&to)?),
            subject,
            body: SecretString::from(body),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_the_cap_or_the_provider_hint() {
        let config = DeliveryConfig {
            poll_interval_ms: 100,
            retry_base_ms: 1000,
            retry_max_ms: 5000,
            max_attempts: 5,
        };
        let delays: Vec<u64> = (1..=5)
            .map(|a| retry_delay(&config, a, None).as_millis() as u64)
            .collect();
        assert_eq!(delays, vec![1000, 2000, 4000, 5000, 5000]);
        assert_eq!(
            retry_delay(&config, 1, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
        assert_eq!(
            retry_delay(&config, 3, Some(Duration::from_secs(1))),
            Duration::from_secs(4)
        );
    }
}
