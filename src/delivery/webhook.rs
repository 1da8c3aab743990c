//! SMS through an operator's own gateway: a signed JSON POST.
//!
//! # Request
//!
//! ```text
//! POST <sms.webhook.url>
//! Content-Type: application/json
//! Idempotency-Key: <outbox id>
//! Ghostkey-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>
//!
//! {"id": 42, "channel": "sms", "to": "+41790000000", "body": "Your code is 123456"}
//! ```
//!
//! `v1` is the lowercase hex HMAC-SHA256, keyed with the shared secret, of the decimal
//! timestamp `t`, a `.`, and the exact bytes of the request body. A receiver must:
//! 1. recompute the HMAC over the *raw* body as received (not over re-serialised JSON)
//!    and compare it in constant time;
//! 2. reject a `t` older than 5 minutes (or too far in the future), so that a captured
//!    request cannot be replayed later;
//! 3. treat `Idempotency-Key` as the message id: a retry after a timeout sends the same
//!    message again, and must not text the user twice.
//!
//! [`signature_header`] is the one definition of this format.
//!
//! # Answers
//!
//! 2xx means sent. 408, 429 (honouring `Retry-After`), 5xx, timeouts and connection
//! failures are retried. 401 and 403 are retried too: they mean a wrong secret or a
//! gateway misconfiguration, which the operator can fix, and the messages must not be
//! lost meanwhile. Any other 4xx fails the message for good.

use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, CONTENT_TYPE, RETRY_AFTER};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{Outgoing, SendError, Sender};
use crate::clock::{Clock, SystemClock};

type HmacSha256 = Hmac<Sha256>;

/// SHA-256's block size, the length HMAC pads (or hashes) its key to.
const SHA256_BLOCK: usize = 64;

/// The `Ghostkey-Signature` value for `body` sent at `timestamp`:
/// `t=<timestamp>,v1=<lowercase hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn signature_header(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mut mac = <HmacSha256 as hmac::digest::KeyInit>::new(&hmac_block_key(secret).into());
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

/// The key as HMAC uses it (RFC 2104): hashed first if longer than a block, then padded
/// with zeros. Deriving it here lets the MAC be built without a fallible constructor.
fn hmac_block_key(secret: &[u8]) -> [u8; SHA256_BLOCK] {
    let mut block = [0u8; SHA256_BLOCK];
    if secret.len() > SHA256_BLOCK {
        let digest = Sha256::digest(secret);
        block[..digest.len()].copy_from_slice(&digest);
    } else {
        block[..secret.len()].copy_from_slice(secret);
    }
    block
}

/// Sends SMS by POSTing signed JSON to the operator's gateway. Holds the signing secret,
/// so it has no `Debug`.
pub struct WebhookSender {
    client: reqwest::Client,
    url: reqwest::Url,
    secret: SecretString,
}

#[derive(Serialize)]
struct Payload<'a> {
    id: i64,
    channel: &'static str,
    to: &'a str,
    body: &'a str,
}

impl WebhookSender {
    /// A sender to `url`, signing with `secret`, giving up on a request after `timeout`.
    pub fn new(
        url: &str,
        secret: SecretString,
        timeout: Duration,
    ) -> Result<WebhookSender, String> {
        let url = match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => u,
            _ => return Err("`sms.webhook.url` must be an http or https URL".to_owned()),
        };
        if secret.expose_secret().is_empty() {
            return Err("`sms.webhook.secret` must not be empty".to_owned());
        }
        Ok(WebhookSender {
            client: http_client(timeout)?,
            url,
            secret,
        })
    }
}

#[async_trait]
impl Sender for WebhookSender {
    fn name(&self) -> &'static str {
        "webhook"
    }

    async fn send(&self, message: &Outgoing) -> Result<(), SendError> {
        let body = serde_json::to_vec(&Payload {
            id: message.id,
            channel: "sms",
            to: message.to.expose_secret(),
            body: message.body.expose_secret(),
        })
        .map_err(|_| SendError::permanent("webhook: cannot encode the message"))?;
        let signature = signature_header(
            self.secret.expose_secret().as_bytes(),
            SystemClock.now(),
            &body,
        );
        let response = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", message.id.to_string())
            .header("Ghostkey-Signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| request_error("webhook", e))?;
        let status = response.status();
        if status.is_success() {
            tracing::debug!(outbox_id = message.id, "webhook accepted the message");
            return Ok(());
        }
        let retry_after = retry_after(response.headers());
        Err(classify_status("webhook", status, retry_after))
    }
}

/// What a non-2xx status means, for the webhook. The reason holds the status only:
/// a gateway's error text may echo the number.
fn classify_status(provider: &str, status: StatusCode, retry_after: Option<Duration>) -> SendError {
    let code = status.as_u16();
    match code {
        401 | 403 => SendError::Transient {
            reason: format!(
                "{provider} refused the request (HTTP {code}): check `sms.webhook.secret` and the gateway"
            ),
            retry_after,
        },
        408 | 429 | 500..=599 => SendError::Transient {
            reason: format!("{provider} answered HTTP {code}"),
            retry_after,
        },
        400..=499 => SendError::permanent(format!("{provider} rejected the message (HTTP {code})")),
        // 1xx/3xx: redirects are not followed, so this is a wrong URL the operator can fix.
        _ => SendError::Transient {
            reason: format!("{provider} answered unexpected HTTP {code}: check the URL"),
            retry_after,
        },
    }
}

/// The HTTP client for one adapter: a whole-request timeout, and no redirects (a
/// redirect would carry the message, and perhaps credentials, somewhere unconfigured).
pub(super) fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("ghostkey/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot create the HTTP client: {e}"))
}

/// A request that got no answer: always worth retrying. The URL is left out of the
/// reason (a webhook URL may carry a token).
pub(super) fn request_error(provider: &str, e: reqwest::Error) -> SendError {
    if e.is_timeout() {
        return SendError::transient(format!("{provider} timed out"));
    }
    let what = if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    // reqwest's own text is generic ("error sending request"); the causes under it (an
    // I/O or TLS error) say what went wrong, and name no URL.
    let mut causes = String::new();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        causes.push_str(": ");
        causes.push_str(&cause.to_string());
        source = cause.source();
    }
    SendError::transient(format!("{provider} {what}{causes}"))
}

/// A `Retry-After` given in seconds (the HTTP-date form is ignored: providers use seconds).
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}
