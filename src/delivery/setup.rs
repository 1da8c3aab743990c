//! Builds the configured adapter for each channel at start-up.

use std::sync::Arc;
use std::time::Duration;

use super::dev_log::{DevLogSender, DevMessages};
use super::smtp::SmtpSender;
use super::twilio::TwilioSender;
use super::webhook::WebhookSender;
use super::Sender;
use crate::clock::{Clock, SystemClock};
use crate::config::{resolve_secret, Config, EmailProvider, Mode, SmsProvider};

/// One adapter per channel.
#[derive(Clone)]
pub struct Senders {
    /// Sends SMS.
    pub sms: Arc<dyn Sender>,
    /// Sends e-mail.
    pub email: Arc<dyn Sender>,
    /// In development mode, what the `dev-log` senders "sent", for `GET /dev/messages`
    /// (`None` in production, and when no channel uses `dev-log`).
    pub dev_messages: Option<DevMessages>,
}

/// The adapters `config` asks for, with their secrets read. Errors name the config key.
/// Whether a development adapter is acceptable is [`Config::validate`]'s business.
pub fn from_config(config: &Config) -> Result<Senders, String> {
    from_config_with_clock(config, Arc::new(SystemClock))
}

/// As [`from_config`], the development message view timed by `clock`.
pub fn from_config_with_clock(config: &Config, clock: Arc<dyn Clock>) -> Result<Senders, String> {
    let uses_dev_log = config.sms.provider == SmsProvider::DevLog
        || config.email.provider == EmailProvider::DevLog;
    // Only ever in development: the view holds codes and destinations in clear.
    let view = (config.mode == Mode::Development && uses_dev_log).then(|| DevMessages::new(clock));
    let dev_log = |channel: &'static str| -> Arc<dyn Sender> {
        match &view {
            Some(view) => Arc::new(DevLogSender::keeping(channel, view.clone())),
            None => Arc::new(DevLogSender::new(channel)),
        }
    };
    let sms: Arc<dyn Sender> = match config.sms.provider {
        SmsProvider::DevLog => dev_log("sms"),
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
        EmailProvider::DevLog => dev_log("email"),
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
    Ok(Senders {
        sms,
        email,
        dev_messages: view,
    })
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
