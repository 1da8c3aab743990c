//! SMS through the Twilio Messages API.
//!
//! `POST {base_url}/2010-04-01/Accounts/{account_sid}/Messages.json`, form-encoded, with
//! HTTP Basic authentication (account SID, auth token). 2xx means Twilio accepted the
//! message. Failures are classified for the outbox worker:
//! - timeouts, connection failures, 408, 429 (honouring `Retry-After`) and 5xx: retried;
//! - 401 and 403: retried, because they mean wrong credentials or a suspended account,
//!   which the operator can fix, and the messages must not be lost meanwhile;
//! - any other 4xx (such as error 21211, an invalid `To` number): failed for good.
//!
//! Twilio's error `message` can echo the phone number, so only its numeric `code` is
//! kept.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};

use super::webhook::{http_client, request_error, retry_after};
use super::{Outgoing, SendError, Sender};
use crate::config::TwilioConfig;

/// The largest error body read for its `code`: Twilio's are a few hundred bytes.
const MAX_ERROR_BODY: usize = 16 * 1024;

/// Who the message is from: a number or sender id, or a Messaging Service.
enum Origin {
    From(String),
    MessagingService(String),
}

/// Sends SMS through Twilio. Holds the auth token, so it has no `Debug`.
pub struct TwilioSender {
    client: reqwest::Client,
    url: reqwest::Url,
    account_sid: String,
    auth_token: SecretString,
    origin: Origin,
}

impl TwilioSender {
    /// A sender for the account in `cfg`, giving up on a request after `timeout`.
    pub fn new(
        cfg: &TwilioConfig,
        auth_token: SecretString,
        timeout: Duration,
    ) -> Result<TwilioSender, String> {
        let sid = cfg.account_sid.trim();
        // The SID goes into the URL path: letters and digits only.
        if !sid.starts_with("AC") || !sid.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err("`sms.twilio.account_sid` must be the account SID (AC...)".to_owned());
        }
        let base = match reqwest::Url::parse(&cfg.base_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => u,
            _ => return Err("`sms.twilio.base_url` must be an http or https URL".to_owned()),
        };
        let url = reqwest::Url::parse(&format!(
            "{}/2010-04-01/Accounts/{sid}/Messages.json",
            base.as_str().trim_end_matches('/')
        ))
        .map_err(|_| "`sms.twilio.base_url` must be an http or https URL".to_owned())?;
        if auth_token.expose_secret().is_empty() {
            return Err("`sms.twilio.auth_token` must not be empty".to_owned());
        }
        let non_empty = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let origin = match (non_empty(&cfg.from), non_empty(&cfg.messaging_service_sid)) {
            (Some(from), None) => Origin::From(from),
            (None, Some(service)) => Origin::MessagingService(service),
            _ => return Err(
                "`sms.twilio.from` or `sms.twilio.messaging_service_sid` must be set, and not both"
                    .to_owned(),
            ),
        };
        Ok(TwilioSender {
            client: http_client(timeout)?,
            url,
            account_sid: sid.to_owned(),
            auth_token,
            origin,
        })
    }
}

#[async_trait]
impl Sender for TwilioSender {
    fn name(&self) -> &'static str {
        "twilio"
    }

    async fn send(&self, message: &Outgoing) -> Result<(), SendError> {
        let origin = match &self.origin {
            Origin::From(from) => ("From", from.as_str()),
            Origin::MessagingService(sid) => ("MessagingServiceSid", sid.as_str()),
        };
        let form = [
            ("To", message.to.expose_secret()),
            ("Body", message.body.expose_secret()),
            origin,
        ];
        let response = self
            .client
            .post(self.url.clone())
            .basic_auth(&self.account_sid, Some(self.auth_token.expose_secret()))
            .form(&form)
            .send()
            .await
            .map_err(|e| request_error("twilio", e))?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        // The body is read only for Twilio's numeric code; a failure to read it is no
        // reason to change how the status is classified.
        let code = read_error_code(response).await;
        if status.is_success() {
            tracing::debug!(outbox_id = message.id, "twilio accepted the message");
            return Ok(());
        }
        Err(classify(status, code, retry_after))
    }
}

/// Twilio's numeric error `code` from a JSON body, if there is one. Nothing else is kept.
async fn read_error_code(mut response: reqwest::Response) -> Option<u64> {
    if response.status().is_success() {
        return None;
    }
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        if body.len() + chunk.len() > MAX_ERROR_BODY {
            return None;
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice::<serde_json::Value>(&body)
        .ok()?
        .get("code")?
        .as_u64()
}

/// What a non-2xx answer means.
fn classify(status: StatusCode, code: Option<u64>, retry_after: Option<Duration>) -> SendError {
    let http = status.as_u16();
    let what = match code {
        Some(code) => format!("twilio error {code} (HTTP {http})"),
        None => format!("twilio HTTP {http}"),
    };
    match http {
        401 | 403 => SendError::Transient {
            reason: format!(
                "{what}: credentials refused; check `sms.twilio.account_sid` and `sms.twilio.auth_token`"
            ),
            retry_after,
        },
        408 | 429 | 500..=599 => SendError::Transient {
            reason: what,
            retry_after,
        },
        400..=499 => SendError::permanent(what),
        // 1xx/3xx: redirects are not followed, so this is a wrong base URL.
        _ => SendError::Transient {
            reason: format!("{what}: unexpected; check `sms.twilio.base_url`"),
            retry_after,
        },
    }
}
