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
}

/// `[database]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Path of the SQLite file.
    pub path: PathBuf,
    /// Durability of commits; lower it only knowingly.
    pub synchronous: Synchronous,
    /// How long a write waits for the database lock, in milliseconds.
    pub busy_timeout_ms: u64,
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
            },
            database: DatabaseConfig {
                path: PathBuf::from("./ghostkey.db"),
                synchronous: Synchronous::Full,
                busy_timeout_ms: 5000,
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

        let f = toml("mode = \"production\"\nservice_id = \"gk.example.org\"\n");
        let e = Config::load_from(Some(f.path()), no_env()).unwrap_err().0;
        assert!(e.contains("keys.data_key_file"), "{e}");

        let f = toml(
            "mode = \"production\"\nservice_id = \"gk.example.org\"\n[keys]\ndata_key_file = \"/etc/ghostkey/data.key\"\n",
        );
        Config::load_from(Some(f.path()), no_env()).unwrap();
    }

    #[test]
    fn the_example_configuration_is_valid_and_documents_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/ghostkey.example.toml");
        let c = Config::load_from(Some(&path), no_env()).unwrap();
        assert_eq!(c.mode, Mode::Production);
        let text = std::fs::read_to_string(&path).unwrap();
        let defaults = figment::value::Value::serialize(Config::default()).unwrap();
        let mut keys = vec!["data_key".to_owned()];
        if let Some(dict) = defaults.as_dict() {
            for (k, v) in dict {
                keys.push(k.clone());
                if let Some(inner) = v.as_dict() {
                    keys.extend(inner.keys().cloned());
                }
            }
        }
        for key in keys {
            assert!(
                text.contains(&format!("{key} =")) || text.contains(&format!("[{key}]")),
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
