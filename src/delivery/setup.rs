//! Builds the configured adapter for each channel at start-up.

use std::sync::Arc;
use std::time::Duration;

use super::dev_log::DevLogSender;
use super::smtp::SmtpSender;
use super::twilio::TwilioSender;
use super::webhook::WebhookSender;
use super::Sender;
use crate::config::{resolve_secret, Config, EmailProvider, SmsProvider};

/// One adapter per channel.
#[derive(Clone)]
pub struct Senders {
    /// Sends SMS.
    pub sms: Arc<dyn Sender>,
    /// Sends e-mail.
    pub email: Arc<dyn Sender>,
}

/// The adapters `config` asks for, with their secrets read. Errors name the config key.
/// Whether a development adapter is acceptable is [`Config::validate`]'s business.
pub fn from_config(config: &Config) -> Result<Senders, String> {
    let sms: Arc<dyn Sender> = match config.sms.provider {
        SmsProvider::DevLog => Arc::new(DevLogSender::new("sms")),
        SmsProvider::Twilio => {
            let t = &config.sms.twilio;
            let token =
                required_secret("sms.twilio.auth_token", &t.auth_token, &t.auth_token_file)?;
            Arc::new(TwilioSender::new(
                t,
                token,
                Duration::from_millis(config.sms.timeout_ms),
            )?)
        }
        SmsProvider::Webhook => {
            let w = &config.sms.webhook;
            let secret = required_secret("sms.webhook.secret", &w.secret, &w.secret_file)?;
            Arc::new(WebhookSender::new(
                &w.url,
                secret,
                Duration::from_millis(config.sms.timeout_ms),
            )?)
        }
    };
    let email: Arc<dyn Sender> = match config.email.provider {
        EmailProvider::DevLog => Arc::new(DevLogSender::new("email")),
        EmailProvider::Smtp => {
            let e = &config.email;
            let password = resolve_secret(
                "email.smtp_password",
                &e.smtp_password,
                &e.smtp_password_file,
            )
            .map_err(|err| err.to_string())?;
            Arc::new(SmtpSender::new(e, password)?)
        }
    };
    Ok(Senders { sms, email })
}

fn required_secret(
    key: &str,
    inline: &Option<secrecy::SecretString>,
    file: &Option<std::path::PathBuf>,
) -> Result<secrecy::SecretString, String> {
    resolve_secret(key, inline, file)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("configuration: `{key}` (or `{key}_file`) must be set"))
}
