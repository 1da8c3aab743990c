//! Configuration: a TOML file, then `GHOSTKEY_*` environment variables on top.
//!
//! Nested keys use a double underscore in the environment: `server.listen` is
//! `GHOSTKEY_SERVER__LISTEN`. Any secret `x` may instead be given as `x_file`
//! (`GHOSTKEY_KEYS__DATA_KEY_FILE`), a path whose content is the secret.
//! With nothing configured at all, `ghostkey serve` runs a development instance;
//! `mode = "production"` refuses to start on those development defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// The service id used when none is configured; refused in production.
pub const DEV_SERVICE_ID: &str = "ghostkey-dev";

/// Development or production.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Works out of the box; refuses nothing, warns loudly.
    Development,
    /// Refuses development defaults.
    Production,
}

/// SQLite's `synchronous` setting. `full` makes every acknowledged write durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// Every commit is on disk before it is acknowledged (the default).
    Full,
    /// Commits survive a crash of the process, but the last ones may be lost on power loss.
    Normal,
    /// `full`, and the directory is synced too.
    Extra,
}

impl Synchronous {
    /// The PRAGMA value.
    pub fn as_pragma(self) -> &'static str {
        match self {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
            Synchronous::Extra => "EXTRA",
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The whole configuration, as read. See `deploy/ghostkey.example.toml` for every key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `development` (default) or `production`.
    pub mode: Mode,
    /// This deployment's id: the `aud` every assertion must carry.
    pub service_id: String,
    /// HTTP listener.
    pub server: ServerConfig,
    /// The SQLite store.
    pub database: DatabaseConfig,
    /// The server data key.
    pub keys: KeysConfig,
    /// Limits on app-provider assertions.
    pub assertions: AssertionConfig,
    /// Logging.
    pub log: LogConfig,
    /// SMS delivery.
    pub sms: SmsConfig,
    /// E-mail delivery.
    pub email: EmailConfig,
    /// The outbox worker.
    pub delivery: DeliveryConfig,
    /// Prometheus metrics.
    pub metrics: MetricsConfig,
}

/// `[metrics]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Where to serve `GET /metrics`, apart from the API (keep it private); unset: off.
    pub listen: Option<SocketAddr>,
}

/// Which SMS adapter sends codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SmsProvider {
    /// Writes messages, codes included, to the log. Development only.
    DevLog,
    /// The Twilio Messages API.
    Twilio,
    /// A JSON POST signed with HMAC-SHA256, for an operator's own gateway.
    Webhook,
}

/// `[sms]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsConfig {
    /// `dev-log` (default, refused in production), `twilio` or `webhook`.
    pub provider: SmsProvider,
    /// How long one send may take, in milliseconds.
    pub timeout_ms: u64,
    /// `[sms.twilio]`
    pub twilio: TwilioConfig,
    /// `[sms.webhook]`
    pub webhook: WebhookConfig,
}

/// `[sms.twilio]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioConfig {
    /// API base URL; change it only for tests or a regional endpoint.
    pub base_url: String,
    /// Account SID (`AC...`).
    pub account_sid: String,
    /// Auth token (secret); or `auth_token_file`.
    #[serde(default, skip_serializing)]
    pub auth_token: Option<secrecy::SecretString>,
    /// A file holding the auth token.
    pub auth_token_file: Option<PathBuf>,
    /// Sender: a phone number in E.164, or an alphanumeric sender id.
    pub from: Option<String>,
    /// Or a Messaging Service SID (`MG...`) instead of `from`.
    pub messaging_service_sid: Option<String>,
}

/// `[sms.webhook]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST messages.
    pub url: String,
    /// The HMAC-SHA256 signing secret (secret); or `secret_file`.
    #[serde(default, skip_serializing)]
    pub secret: Option<secrecy::SecretString>,
    /// A file holding the signing secret.
    pub secret_file: Option<PathBuf>,
}

/// How e-mail is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EmailProvider {
    /// Writes messages, codes included, to the log. Development only.
    DevLog,
    /// SMTP.
    Smtp,
}

/// SMTP transport security.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SmtpTls {
    /// No TLS at all: only for a relay on the same host or in tests.
    None,
    /// Plain connection upgraded with STARTTLS (port 587); refused if the server cannot.
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// `[email]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// `dev-log` (default, refused in production) or `smtp`.
    pub provider: EmailProvider,
    /// SMTP server host name.
    pub smtp_host: String,
    /// SMTP port.
    pub smtp_port: u16,
    /// `none`, `starttls` or `tls`.
    pub smtp_tls: SmtpTls,
    /// A PEM file of certificate authorities trusted for the SMTP server besides the
    /// built-in public roots (a relay with a private CA). Only with `starttls` or `tls`.
    #[serde(default)]
    pub smtp_ca_file: Option<PathBuf>,
    /// SMTP user name, if the server needs authentication.
    pub smtp_username: Option<String>,
    /// SMTP password (secret); or `smtp_password_file`.
    #[serde(default, skip_serializing)]
    pub smtp_password: Option<secrecy::SecretString>,
    /// A file holding the SMTP password.
    pub smtp_password_file: Option<PathBuf>,
    /// The sender, such as `Ghostkey <no-reply@example.org>`.
    pub from: String,
    /// Subject of code messages.
    pub subject: String,
    /// How long one send may take, in milliseconds.
    pub timeout_ms: u64,
}

/// `[delivery]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// How often the worker looks for due messages when nothing wakes it, in milliseconds.
    pub poll_interval_ms: u64,
    /// First retry delay after a transient failure, doubled each time, in milliseconds.
    pub retry_base_ms: u64,
    /// Longest retry delay, in milliseconds.
    pub retry_max_ms: u64,
    /// Attempts before a message is recorded as failed for good.
    pub max_attempts: u32,
}

/// `[server]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// Largest accepted request body, in bytes.
    pub body_limit_bytes: usize,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// Argon2id computations at once (passphrase checks, and codes stored before schema
    /// version 7); 0 means one per core.
    /// Each holds 19 MiB while it runs.
    pub argon2_concurrency: usize,
    /// Requests that may wait for an Argon2id slot, all together; past it a check is
    /// answered 503 `unavailable` with `Retry-After` (load shedding). 0 means 32 per slot.
    pub argon2_waiting: usize,
    /// Requests from client addresses answered 429 within their `Retry-After` (at most a
    /// minute) that may wait, all together, in the line that serves them one at a time.
    /// Past it, a request from an address over its own limit is answered 503 `unavailable`
    /// at once, and one refused by another limit goes ahead unslowed. 0: no line.
    #[serde(default = "default_refused_clients_waiting")]
    pub refused_clients_waiting: usize,
    /// Reverse proxies whose `X-Forwarded-For` is believed (addresses or CIDR ranges).
    /// The header from anyone else is ignored.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// TLS termination in Ghostkey itself; without it, run behind a TLS-terminating proxy.
    pub tls: Option<TlsConfig>,
}

/// `[server.tls]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain (leaf first).
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// `[database]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Path of the SQLite file (when no `url` is set).
    pub path: PathBuf,
    /// Durability of commits; lower it only knowingly (SQLite).
    pub synchronous: Synchronous,
    /// How long a write waits for the database lock, in milliseconds (SQLite); with
    /// PostgreSQL, how long a write keeps re-running after serialisation failures,
    /// deadlocks or a busy user lock before it is answered `unavailable`.
    pub busy_timeout_ms: u64,
    /// A `postgres://` URL: selects the PostgreSQL backend (several nodes on one
    /// database). Secret when it holds a password; or `url_file`.
    #[serde(default, skip_serializing)]
    pub url: Option<secrecy::SecretString>,
    /// A file holding the PostgreSQL URL.
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// PEM file of the authorities that sign the PostgreSQL server's certificate (TLS with
    /// `sslmode=require`); unset: the public web roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Most PostgreSQL connections one node opens.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Isolation level of PostgreSQL write transactions: `read_committed` (default) or
    /// `serializable`.
    #[serde(default)]
    pub isolation: crate::store::postgres::Isolation,
    /// Whether each PostgreSQL connection prepares its statements once and reuses them
    /// (default `true`); `false` behind a pooler in transaction mode that does not track
    /// prepared statements (PgBouncer before 1.21, or with `max_prepared_statements = 0`).
    #[serde(default = "default_true")]
    pub prepared_statements: bool,
}

fn default_true() -> bool {
    true
}

fn default_refused_clients_waiting() -> usize {
    crate::http::refused_clients::MAX_WAITING
}

fn default_max_connections() -> usize {
    16
}

impl DatabaseConfig {
    /// Whether the PostgreSQL backend is selected.
    pub fn is_postgres(&self) -> bool {
        self.url.is_some() || self.url_file.is_some()
    }
}

/// `[keys]`
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// The server data key, 32 bytes in base64url. Prefer `data_key_file`.
    #[serde(default, skip_serializing)]
    pub data_key: Option<secrecy::SecretString>,
    /// A file holding the server data key (base64url, 32 bytes).
    pub data_key_file: Option<PathBuf>,
    /// Files of earlier data keys, still read (never written) until `ghostkey keys
    /// rotate` has moved every value off them.
    #[serde(default)]
    pub retired_key_files: Vec<PathBuf>,
}

/// `[assertions]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssertionConfig {
    /// Largest accepted `exp - iat`, in seconds.
    pub max_lifetime_secs: i64,
    /// How far in the future `iat` may be, in seconds, to absorb clock skew.
    pub max_clock_skew_secs: i64,
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `ghostkey=debug,info`; `RUST_LOG` overrides it.
    pub level: String,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            mode: Mode::Development,
            service_id: DEV_SERVICE_ID.to_owned(),
            server: ServerConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
                body_limit_bytes: 64 * 1024,
                workers: 0,
                argon2_concurrency: 0,
                argon2_waiting: 0,
                refused_clients_waiting: default_refused_clients_waiting(),
                trusted_proxies: Vec::new(),
                tls: None,
            },
            database: DatabaseConfig {
                path: PathBuf::from("./ghostkey.db"),
                synchronous: Synchronous::Full,
                busy_timeout_ms: 5000,
                url: None,
                url_file: None,
                ca_file: None,
                max_connections: default_max_connections(),
                prepared_statements: true,
                isolation: crate::store::postgres::Isolation::default(),
            },
            keys: KeysConfig::default(),
            assertions: AssertionConfig {
                max_lifetime_secs: ghostkey_proto::assertion::DEFAULT_MAX_LIFETIME_SECS,
                max_clock_skew_secs: 30,
            },
            log: LogConfig {
                format: LogFormat::Text,
                level: "info".to_owned(),
            },
            sms: SmsConfig {
                provider: SmsProvider::DevLog,
                timeout_ms: 10_000,
                twilio: TwilioConfig {
                    base_url: "https://api.twilio.com".to_owned(),
                    ..TwilioConfig::default()
                },
                webhook: WebhookConfig::default(),
            },
            email: EmailConfig {
                provider: EmailProvider::DevLog,
                smtp_host: "localhost".to_owned(),
                smtp_port: 587,
                smtp_tls: SmtpTls::Starttls,
                smtp_ca_file: None,
                smtp_username: None,
                smtp_password: None,
                smtp_password_file: None,
                from: "Ghostkey <no-reply@localhost>".to_owned(),
                subject: "Your verification code".to_owned(),
                timeout_ms: 10_000,
            },
            metrics: MetricsConfig::default(),
            delivery: DeliveryConfig {
                poll_interval_ms: 1000,
                retry_base_ms: 2000,
                retry_max_ms: 15 * 60 * 1000,
                max_attempts: 12,
            },
        }
    }
}

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

fn bad(key: &str, why: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("`{key}` {why}"))
}

/// One figment error as `key: problem (where the value came from)`.
fn describe(e: figment::Error) -> String {
    let key = e.path.join(".").to_lowercase();
    let origin = match &e.metadata {
        Some(m) if m.name.contains("environment") => {
            format!(
                " (from environment variable GHOSTKEY_{})",
                e.path.join("__").to_uppercase()
            )
        }
        Some(m) => match &m.source {
            Some(source) => format!(" (from {source})"),
            None => String::new(),
        },
        None => String::new(),
    };
    if key.is_empty() {
        format!("{}{origin}", e.kind)
    } else {
        format!("`{key}`: {}{origin}", e.kind)
    }
}

fn check_url(key: &str, url: &str) -> Result<(), ConfigError> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(()),
        _ => Err(bad(key, "must be an http or https URL")),
    }
}

/// Checks that a secret is given inline or as a file, not both; returns whether it is.
fn secret_source(
    key: &str,
    inline: &Option<secrecy::SecretString>,
    file: &Option<PathBuf>,
    required: bool,
) -> Result<bool, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(bad(
            key,
            format!("and `{key}_file` are both set; give only one"),
        )),
        (None, None) if required => Err(bad(key, format!("(or `{key}_file`) must be set"))),
        (None, None) => Ok(false),
        _ => Ok(true),
    }
}

/// Reads a secret given inline or as `<key>_file` (content trimmed of surrounding
/// whitespace). `None` when neither is set.
pub fn resolve_secret(
    key: &str,
    inline: &Option<secrecy::SecretString>,
    file: &Option<PathBuf>,
) -> Result<Option<secrecy::SecretString>, ConfigError> {
    use secrecy::ExposeSecret;
    match (inline, file) {
        (Some(s), None) => Ok(Some(s.clone())),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                bad(
                    &format!("{key}_file"),
                    format!("{}: cannot be read: {e}", path.display()),
                )
            })?;
            let text = secrecy::SecretString::from(text);
            let trimmed = text.expose_secret().trim();
            if trimmed.is_empty() {
                return Err(bad(
                    &format!("{key}_file"),
                    format!("{} is empty", path.display()),
                ));
            }
            Ok(Some(secrecy::SecretString::from(trimmed.to_owned())))
        }
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(bad(
            key,
            format!("and `{key}_file` are both set; give only one"),
        )),
    }
}

impl Config {
    /// Reads the defaults, then `file` (if given), then the `GHOSTKEY_*` environment.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_from(
            file,
            Env::prefixed("GHOSTKEY_").split("__").ignore(&["config"]),
        )
    }

    /// As [`Config::load`], with the environment provider given (for tests).
    pub fn load_from(file: Option<&Path>, env: Env) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "configuration file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        let config: Config = figment
            .merge(env)
            .extract()
            .map_err(|e| ConfigError(e.into_iter().map(describe).collect::<Vec<_>>().join("; ")))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and, in production, refuses development defaults.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !ghostkey_proto::assertion::is_valid_identifier(&self.service_id, 1, 128) {
            return Err(bad(
                "service_id",
                "must be 1 to 128 printable ASCII characters without spaces",
            ));
        }
        if !(1024..=1024 * 1024).contains(&self.server.body_limit_bytes) {
            return Err(bad(
                "server.body_limit_bytes",
                "must be between 1024 and 1048576",
            ));
        }
        if self.server.workers > 256 {
            return Err(bad(
                "server.workers",
                "must be at most 256 (0 = one per core)",
            ));
        }
        if !(1..=3600).contains(&self.assertions.max_lifetime_secs) {
            return Err(bad(
                "assertions.max_lifetime_secs",
                "must be between 1 and 3600",
            ));
        }
        if !(0..=300).contains(&self.assertions.max_clock_skew_secs) {
            return Err(bad(
                "assertions.max_clock_skew_secs",
                "must be between 0 and 300",
            ));
        }
        if self.keys.data_key.is_some() && self.keys.data_key_file.is_some() {
            return Err(bad(
                "keys.data_key",
                "and `keys.data_key_file` are both set; give only one",
            ));
        }
        if self.database.path.as_os_str().is_empty() {
            return Err(bad("database.path", "must not be empty"));
        }
        secret_source(
            "database.url",
            &self.database.url,
            &self.database.url_file,
            false,
        )?;
        if !(1..=1000).contains(&self.database.max_connections) {
            return Err(bad(
                "database.max_connections",
                "must be between 1 and 1000",
            ));
        }
        self.validate_delivery()?;
        if self.mode == Mode::Production {
            if self.service_id == DEV_SERVICE_ID {
                return Err(bad(
                    "service_id",
                    "is the development default; production needs this deployment's own id",
                ));
            }
            if self.keys.data_key.is_none() && self.keys.data_key_file.is_none() {
                return Err(bad(
                    "keys.data_key_file",
                    "is not set; production refuses a generated development data key",
                ));
            }
            if self.sms.provider == SmsProvider::DevLog {
                return Err(bad(
                    "sms.provider",
                    "is `dev-log`, which writes codes to the log; production needs `twilio` or `webhook`",
                ));
            }
            if self.email.provider == EmailProvider::DevLog {
                return Err(bad(
                    "email.provider",
                    "is `dev-log`, which writes codes to the log; production needs `smtp`",
                ));
            }
        }
        Ok(())
    }

    fn validate_delivery(&self) -> Result<(), ConfigError> {
        if !(100..=120_000).contains(&self.sms.timeout_ms) {
            return Err(bad("sms.timeout_ms", "must be between 100 and 120000"));
        }
        if !(100..=120_000).contains(&self.email.timeout_ms) {
            return Err(bad("email.timeout_ms", "must be between 100 and 120000"));
        }
        if !(10..=60_000).contains(&self.delivery.poll_interval_ms) {
            return Err(bad(
                "delivery.poll_interval_ms",
                "must be between 10 and 60000",
            ));
        }
        if self.delivery.retry_base_ms == 0
            || self.delivery.retry_max_ms < self.delivery.retry_base_ms
        {
            return Err(bad(
                "delivery.retry_max_ms",
                "must be at least `delivery.retry_base_ms`, which must be positive",
            ));
        }
        if !(1..=100).contains(&self.delivery.max_attempts) {
            return Err(bad("delivery.max_attempts", "must be between 1 and 100"));
        }
        match self.sms.provider {
            SmsProvider::DevLog => {}
            SmsProvider::Twilio => {
                let t = &self.sms.twilio;
                check_url("sms.twilio.base_url", &t.base_url)?;
                if !t.account_sid.starts_with("AC") {
                    return Err(bad(
                        "sms.twilio.account_sid",
                        "must be set to the account SID (AC...)",
                    ));
                }
                secret_source(
                    "sms.twilio.auth_token",
                    &t.auth_token,
                    &t.auth_token_file,
                    true,
                )?;
                if t.from.is_some() == t.messaging_service_sid.is_some() {
                    return Err(bad(
                        "sms.twilio.from",
                        "or `sms.twilio.messaging_service_sid` must be set, and not both",
                    ));
                }
            }
            SmsProvider::Webhook => {
                let w = &self.sms.webhook;
                check_url("sms.webhook.url", &w.url)?;
                secret_source("sms.webhook.secret", &w.secret, &w.secret_file, true)?;
            }
        }
        if self.email.provider == EmailProvider::Smtp {
            let e = &self.email;
            if e.smtp_host.trim().is_empty() {
                return Err(bad("email.smtp_host", "must be set"));
            }
            if e.from.parse::<lettre::message::Mailbox>().is_err() {
                return Err(bad(
                    "email.from",
                    "must be an address such as `Ghostkey <no-reply@example.org>`",
                ));
            }
            let has_password = secret_source(
                "email.smtp_password",
                &e.smtp_password,
                &e.smtp_password_file,
                false,
            )?;
            if has_password != e.smtp_username.is_some() {
                return Err(bad(
                    "email.smtp_username",
                    "and `email.smtp_password` go together",
                ));
            }
            if e.smtp_tls == SmtpTls::None && e.smtp_ca_file.is_some() {
                return Err(bad(
                    "email.smtp_ca_file",
                    "is set but `email.smtp_tls` is `none`: nothing would be checked against it",
                ));
            }
            if self.mode == Mode::Production
                && e.smtp_tls == SmtpTls::None
                && e.smtp_username.is_some()
            {
                return Err(bad(
                    "email.smtp_tls",
                    "is `none` with a password: production refuses to send it in clear",
                ));
            }
        }
        Ok(())
    }

    /// Where the development data key lives when none is configured: beside the database.
    pub fn dev_data_key_path(&self) -> PathBuf {
        let mut name = self
            .database
            .path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(".data-key");
        self.database.path.with_file_name(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn no_env() -> Env {
        Env::prefixed("GHOSTKEY_TEST_UNUSED_PREFIX_")
    }

    fn toml(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn nothing_configured_is_a_working_development_setup() {
        let c = Config::load_from(None, no_env()).unwrap();
        assert_eq!(c.mode, Mode::Development);
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.database.path, PathBuf::from("./ghostkey.db"));
        assert_eq!(c.database.synchronous, Synchronous::Full);
        assert_eq!(
            c.dev_data_key_path(),
            PathBuf::from("./ghostkey.db.data-key")
        );
    }

    #[test]
    fn bad_keys_are_named() {
        let f = toml("[server]\nlisten = \"not an address\"\n");
        let e = Config::load_from(Some(f.path()), no_env()).unwrap_err().0;
        assert!(e.contains("server.listen"), "{e}");

        let f = toml("[server]\nlisten_typo = \"127.0.0.1:1\"\n");
        let e = Config::load_from(Some(f.path()), no_env()).unwrap_err().0;
        assert!(e.contains("listen_typo"), "{e}");

        let f = toml("[assertions]\nmax_lifetime_secs = 99999\n");
        let e = Config::load_from(Some(f.path()), no_env()).unwrap_err().0;
        assert!(e.contains("assertions.max_lifetime_secs"), "{e}");

        let e = Config::load_from(Some(Path::new("/nonexistent/ghostkey.toml")), no_env())
            .unwrap_err()
            .0;
        assert!(e.contains("does not exist"), "{e}");
    }

    #[test]
    fn production_refuses_development_defaults() {
        let f = toml("mode = \"production\"\n");
        let e = Config::load_from(Some(f.path()), no_env()).unwrap_err().0;
        assert!(e.contains("service_id"), "{e}");

        let base = "mode = \"production\"\nservice_id = \"gk.example.org\"\n";
        let f = toml(base);
        let e = Config::load_from(Some(f.path()), no_env()).unwrap_err().0;
        assert!(e.contains("keys.data_key_file"), "{e}");

        let keys = "[keys]\ndata_key_file = \"/etc/ghostkey/data.key\"\n";
        let f = toml(&format!("{base}{keys}"));
        let e = Config::load_from(Some(f.path()), no_env()).unwrap_err().0;
        assert!(e.contains("sms.provider") && e.contains("dev-log"), "{e}");

        let sms = "[sms]\nprovider = \"webhook\"\n[sms.webhook]\nurl = \"https://sms.example.org/send\"\nsecret_file = \"/etc/ghostkey/webhook\"\n";
        let f = toml(&format!("{base}{sms}{keys}"));
        let e = Config::load_from(Some(f.path()), no_env()).unwrap_err().0;
        assert!(e.contains("email.provider"), "{e}");

        let email = "[email]\nprovider = \"smtp\"\nsmtp_host = \"smtp.example.org\"\nfrom = \"Ghostkey <no-reply@example.org>\"\n";
        let f = toml(&format!("{base}{sms}{email}{keys}"));
        Config::load_from(Some(f.path()), no_env()).unwrap();
    }

    #[test]
    fn delivery_settings_are_checked_and_name_the_key() {
        for (text, key) in [
            ("[sms]\nprovider = \"twilio\"\n", "sms.twilio"),
            (
                "[sms]\nprovider = \"webhook\"\n[sms.webhook]\nurl = \"ftp://x\"\n",
                "sms.webhook.url",
            ),
            (
                "[sms]\nprovider = \"webhook\"\n[sms.webhook]\nurl = \"https://x\"\n",
                "sms.webhook.secret",
            ),
            (
                "[email]\nprovider = \"smtp\"\nfrom = \"not an address\"\n",
                "email.from",
            ),
            (
                "[email]\nprovider = \"smtp\"\nsmtp_username = \"u\"\n",
                "email.smtp_username",
            ),
            ("[sms]\nprovider = \"carrier-pigeon\"\n", "sms.provider"),
            ("[delivery]\nmax_attempts = 0\n", "delivery.max_attempts"),
            (
                "[server]\ntrusted_proxies = [\"not a network\"]\n",
                "server.trusted_proxies",
            ),
        ] {
            let f = toml(text);
            let e = Config::load_from(Some(f.path()), no_env()).unwrap_err().0;
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn secrets_come_from_files_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\n").unwrap();
        let got = resolve_secret("sms.webhook.secret", &None, &Some(path.clone()))
            .unwrap()
            .unwrap();
        use secrecy::ExposeSecret;
        assert_eq!(got.expose_secret(), "s3cret");
        let e = resolve_secret(
            "sms.webhook.secret",
            &None,
            &Some(dir.path().join("missing")),
        )
        .unwrap_err()
        .0;
        assert!(e.contains("sms.webhook.secret_file"), "{e}");
    }

    #[test]
    fn the_example_configuration_is_valid_and_documents_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/ghostkey.example.toml");
        let c = Config::load_from(Some(&path), no_env()).unwrap();
        assert_eq!(c.mode, Mode::Production);
        let text = std::fs::read_to_string(&path).unwrap();
        let defaults = figment::value::Value::serialize(Config::default()).unwrap();
        let mut keys = vec![
            "data_key".to_owned(),
            "data_key_file".to_owned(),
            "auth_token".to_owned(),
            "secret".to_owned(),
            "smtp_password".to_owned(),
        ];
        fn walk(value: &figment::value::Value, prefix: &str, keys: &mut Vec<String>) {
            if let Some(dict) = value.as_dict() {
                for (k, v) in dict {
                    keys.push(k.clone());
                    walk(v, &format!("{prefix}{k}."), keys);
                }
            }
        }
        walk(&defaults, "", &mut keys);
        for key in keys {
            assert!(
                text.contains(&format!("{key} ="))
                    || text.contains(&format!("[{key}]"))
                    || text.contains(&format!(".{key}]")),
                "{key} is not documented"
            );
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own large error
    fn environment_overrides_the_file() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("g.toml", "service_id = \"from-file\"\n")?;
            jail.set_env("GHOSTKEY_SERVICE_ID", "from-env");
            jail.set_env("GHOSTKEY_SERVER__LISTEN", "127.0.0.1:9999");
            jail.set_env("GHOSTKEY_CONFIG", "ignored.toml");
            let c = Config::load(Some(Path::new("g.toml"))).map_err(|e| e.0)?;
            assert_eq!(c.service_id, "from-env");
            assert_eq!(c.server.listen.port(), 9999);
            Ok(())
        });
    }
}
