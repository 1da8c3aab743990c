//! The `ghostkey` binary: `serve` and the operator commands.
#![forbid(unsafe_code)]

mod client_cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ghostkey::admin::{self, AppReport};
use ghostkey::clock::{Clock, SystemClock};
use ghostkey::config::{Config, LogFormat};
use ghostkey::domain::policy::{MethodKind, PolicyChange};

#[derive(Parser)]
#[command(
    name = "ghostkey",
    version,
    about = "Recovery service for E2EE virtual devices"
)]
struct Cli {
    /// TOML configuration file (environment variables GHOSTKEY_* override it).
    #[arg(long, global = true, env = "GHOSTKEY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service.
    Serve,
    /// Manage registered apps (app providers).
    #[command(subcommand)]
    App(AppCommand),
    /// Act on one user of an app.
    #[command(subcommand)]
    User(UserCommand),
    /// Server data keys: generate a new one, rotate onto it.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The audit log: verify its hash chain, or export it.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The service's time floor: it never runs earlier than this (see OPERATIONS.md).
    #[command(subcommand)]
    Clock(ClockCommand),
    /// The database's schema: create or upgrade it (PostgreSQL).
    #[command(subcommand)]
    Db(DbCommand),
    /// Write a consistent copy of the database to PATH while the server runs (SQLite; for
    /// PostgreSQL use pg_dump or pg_basebackup, see OPERATIONS.md).
    Backup {
        /// Where to write the copy (must not exist). Keep it apart from the data key.
        path: PathBuf,
    },
    /// Replace the database's content with a backup (stop the server first).
    Restore {
        /// The backup to restore.
        path: PathBuf,
        /// Confirm: the current content is replaced.
        #[arg(long)]
        yes: bool,
    },
    /// Print the OpenAPI 3.1 document of the API (also served at /v1/openapi.json).
    Openapi,
    /// Play the whole story (enrol, share a document, lose the device, recover, read it
    /// again) against an in-process Ghostkey.
    Demo,
    /// A command-line client: enrol and recover against a running Ghostkey, with an app
    /// key file standing in for the app provider.
    #[command(subcommand)]
    Client(client_cli::ClientCommand),
}

#[derive(Subcommand)]
enum DbCommand {
    /// Create the schema in an empty PostgreSQL database, or upgrade an older one (one
    /// transaction). SQLite needs nothing: `serve` creates and upgrades its file.
    Migrate,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Write a new data key (mode 0600) to PATH and print its id.
    Generate {
        /// Where to write it (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Re-encrypt every value under a retired key with the current one, in batches, while
    /// the server runs; report what still needs each retired key.
    Rotate {
        /// Rows per batch.
        #[arg(long, default_value_t = 500)]
        batch: usize,
    },
}

#[derive(Subcommand)]
enum ClockCommand {
    /// Print the recorded floor and this machine's time.
    Show,
    /// Set the floor to this machine's time, after the clock had jumped ahead (the server
    /// stopped; audited). Assertions used shortly before the jump could be replayed once.
    Reset {
        /// Confirm.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute the hash chain; report the first broken link, or events deleted from its
    /// end. Prints the head to note off-host.
    Verify {
        /// A head printed by an earlier `audit verify` (SEQ:HASH), noted off-host: the log
        /// must still pass through it. Repeatable.
        #[arg(long = "anchor", value_name = "SEQ:HASH", value_parser = parse_audit_anchor)]
        anchors: Vec<ghostkey::domain::audit::AuditHead>,
    },
    /// Write every event as JSON lines to standard output.
    Export,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Show a user: state, methods (masked), lock, open recoveries, chain length.
    Show {
        /// The app id.
        app_id: String,
        /// The user id.
        user_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete every row of a user (right to erasure).
    Erase {
        /// The app id.
        app_id: String,
        /// The user id.
        user_id: String,
        /// Confirm: erasure cannot be undone.
        #[arg(long)]
        yes: bool,
    },
    /// Lift a user's lock after too many failed codes (and clear their failure count).
    Unlock {
        /// The app id.
        app_id: String,
        /// The user id (the assertions' `sub`).
        user_id: String,
    },
}

#[derive(Subcommand)]
enum AppCommand {
    /// Register an app with its first Ed25519 key; prints the new app id.
    Add {
        /// A name for operators.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// List apps.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one app: policy and keys.
    Show {
        /// The app id.
        app_id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Manage an app's assertion keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Manage an app's policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Manage the web origins allowed to call the API for an app from a browser (CORS).
    #[command(subcommand)]
    Origins(OriginsCommand),
    /// Manage the WebAuthn relying party of an app's passkey methods.
    #[command(subcommand)]
    Passkey(PasskeyCommand),
}

#[derive(Subcommand)]
enum PasskeyCommand {
    /// Set the relying-party id of the app's passkeys: a domain name (no scheme, port or
    /// path) that its allowed origins share, such as `example.org` for
    /// https://health.example.org. Passkeys are made and used only from the allowed
    /// origins whose host is that domain or a subdomain of it. Passkeys registered under
    /// one RP id do not work under another: set it once.
    Set {
        /// The app id.
        app_id: String,
        /// The RP id.
        #[arg(long)]
        rp_id: String,
    },
    /// Remove the relying-party id: the app's passkey methods can no longer be checked.
    Clear {
        /// The app id.
        app_id: String,
    },
}

#[derive(Subcommand)]
enum OriginsCommand {
    /// Allow a web origin: exactly scheme://host[:port], https (http only for localhost,
    /// 127.0.0.1 or [::1]). Adding an allowed origin again changes nothing.
    Add {
        /// The app id.
        app_id: String,
        /// The origin, such as https://health.example.org.
        origin: String,
    },
    /// Stop allowing a web origin.
    Remove {
        /// The app id.
        app_id: String,
        /// The origin.
        origin: String,
    },
    /// List the allowed origins, one per line.
    List {
        /// The app id.
        app_id: String,
        /// Print JSON: {"app_id": ..., "allowed_origins": [...]}.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct KeyArgs {
    /// The key id, as the app provider puts it in the JWT header `kid`.
    #[arg(long)]
    key_id: String,
    /// The Ed25519 public key: 32 bytes in base64url, or a PEM public key. (A base64url key
    /// may start with `-`; it is still read as the value.)
    #[arg(
        long,
        required_unless_present = "public_key_file",
        conflicts_with = "public_key_file",
        allow_hyphen_values = true
    )]
    public_key: Option<String>,
    /// A file holding the public key (PEM, as `openssl pkey -pubout` writes, or base64url).
    #[arg(long)]
    public_key_file: Option<PathBuf>,
}

impl KeyArgs {
    fn text(&self) -> Result<String, String> {
        match (&self.public_key, &self.public_key_file) {
            (Some(k), _) => Ok(k.clone()),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display())),
            (None, None) => Err("give --public-key or --public-key-file".into()),
        }
    }
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Add a key to an app.
    Add {
        /// The app id.
        app_id: String,
        #[command(flatten)]
        key: KeyArgs,
    },
    /// Revoke a key: assertions it signed are refused from now on.
    Revoke {
        /// The app id.
        app_id: String,
        /// The key id.
        key_id: String,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Change policy values; values not given keep their current setting.
    Set(PolicySetArgs),
}

#[derive(Args)]
struct PolicySetArgs {
    /// The app id.
    app_id: String,
    /// Allowed methods, comma-separated: totp,sms,email,passphrase,passkey (passphrase and
    /// passkey are off by default; a passkey also needs `ghostkey app passkey set`).
    #[arg(long, value_delimiter = ',')]
    allowed_methods: Option<Vec<String>>,
    /// Digits of SMS and e-mail codes (6-10; default 8).
    #[arg(long)]
    code_digits: Option<u32>,
    /// Digits of TOTP codes (6-8; default 6).
    #[arg(long)]
    totp_digits: Option<u32>,
    /// Lifetime of SMS and e-mail codes, and of TOTP challenges, in seconds (60-3600;
    /// default 600).
    #[arg(long)]
    code_lifetime_secs: Option<i64>,
    /// Wrong answers per challenge before it dies (1-10; default 3).
    #[arg(long)]
    max_attempts_per_challenge: Option<u32>,
    /// Failures per user before the user is locked (1-100; default 10).
    #[arg(long)]
    user_lock_threshold: Option<u32>,
    /// First back-off after a failure, doubled each time, in seconds (0-600; default 2).
    #[arg(long)]
    user_backoff_base_secs: Option<i64>,
    /// Failed checks per user in any 24 hours, every challenge kind together; nothing the
    /// app does resets it (1-20; default 10).
    #[arg(long)]
    user_failures_per_day: Option<u32>,
    /// Recoveries a user may start per UTC day (1-20; default 5).
    #[arg(long)]
    recovery_starts_per_user_per_day: Option<u32>,
    /// Codes per destination per hour (1-100; default 5).
    #[arg(long)]
    sends_per_destination_per_hour: Option<u32>,
    /// Codes per destination per day (1-1000; default 10).
    #[arg(long)]
    sends_per_destination_per_day: Option<u32>,
    /// Messages per day for the whole app (default 10000).
    #[arg(long)]
    app_daily_send_budget: Option<u32>,
    /// Requests per client address per minute (default 60).
    #[arg(long)]
    requests_per_address_per_minute: Option<u32>,
    /// Code checks per minute for the whole app on the endpoints that need no assertion
    /// (answer, recovery verify), every address together (1-1000000; default 600).
    #[arg(long)]
    code_checks_per_app_per_minute: Option<u32>,
    /// Delay between a correct recovery code and the release, in seconds (default 0).
    #[arg(long)]
    waiting_period_secs: Option<i64>,
}

impl PolicySetArgs {
    fn change(&self) -> Result<PolicyChange, String> {
        let allowed_methods = match &self.allowed_methods {
            None => None,
            Some(names) => Some(
                names
                    .iter()
                    .map(|n| {
                        MethodKind::parse(n.trim()).ok_or_else(|| {
                            format!("unknown method `{n}` (expected totp, sms, email, passphrase or passkey)")
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(PolicyChange {
            allowed_methods,
            code_digits: self.code_digits,
            totp_digits: self.totp_digits,
            code_lifetime_secs: self.code_lifetime_secs,
            max_attempts_per_challenge: self.max_attempts_per_challenge,
            user_lock_threshold: self.user_lock_threshold,
            user_backoff_base_secs: self.user_backoff_base_secs,
            user_failures_per_day: self.user_failures_per_day,
            recovery_starts_per_user_per_day: self.recovery_starts_per_user_per_day,
            sends_per_destination_per_hour: self.sends_per_destination_per_hour,
            sends_per_destination_per_day: self.sends_per_destination_per_day,
            app_daily_send_budget: self.app_daily_send_budget,
            requests_per_address_per_minute: self.requests_per_address_per_minute,
            code_checks_per_app_per_minute: self.code_checks_per_app_per_minute,
            waiting_period_secs: self.waiting_period_secs,
            passkey_rp_id: None,
        })
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Whatever the level asked for: the PostgreSQL client logs every statement with its
    // parameters (user ids, MACs, sealed blobs) at `debug`.
    let filter = match "tokio_postgres=info".parse() {
        Ok(cap) => filter.add_directive(cap),
        Err(_) => filter,
    };
    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn print_app(app: &AppReport) {
    println!("{}  {}", app.id, app.name);
    println!("  created_at: {}", app.created_at);
    println!("  keys:");
    for k in &app.keys {
        let state = match k.revoked_at {
            Some(t) => format!("revoked at {t}"),
            None => "active".to_owned(),
        };
        println!("    {}  {}  ({state})", k.kid, k.public_key);
    }
    if app.allowed_origins.is_empty() {
        println!("  allowed_origins: none (no browser page may call the API for this app)");
    } else {
        println!("  allowed_origins:");
        for origin in &app.allowed_origins {
            println!("    {origin}");
        }
    }
    print_policy(&app.policy);
}

fn print_policy(p: &ghostkey::domain::policy::AppPolicy) {
    let methods: Vec<&str> = p.allowed_methods.iter().map(|m| m.as_str()).collect();
    println!("  policy:");
    println!("    allowed_methods: {}", methods.join(","));
    println!(
        "    passkey_rp_id: {}",
        p.passkey_rp_id.as_deref().unwrap_or("none")
    );
    println!("    code_digits: {}", p.code_digits);
    println!("    totp_digits: {}", p.totp_digits);
    println!("    code_lifetime_secs: {}", p.code_lifetime_secs);
    println!(
        "    max_attempts_per_challenge: {}",
        p.max_attempts_per_challenge
    );
    println!("    user_lock_threshold: {}", p.user_lock_threshold);
    println!("    user_backoff_base_secs: {}", p.user_backoff_base_secs);
    println!("    user_failures_per_day: {}", p.user_failures_per_day);
    println!(
        "    recovery_starts_per_user_per_day: {}",
        p.recovery_starts_per_user_per_day
    );
    println!(
        "    sends_per_destination_per_hour: {}",
        p.sends_per_destination_per_hour
    );
    println!(
        "    sends_per_destination_per_day: {}",
        p.sends_per_destination_per_day
    );
    println!("    app_daily_send_budget: {}", p.app_daily_send_budget);
    println!(
        "    requests_per_address_per_minute: {}",
        p.requests_per_address_per_minute
    );
    println!(
        "    code_checks_per_app_per_minute: {}",
        p.code_checks_per_app_per_minute
    );
    println!("    waiting_period_secs: {}", p.waiting_period_secs);
}

/// The time operator commands act at: the system clock, never earlier than the time floor
/// the server keeps to (a clock stepped back must not make them judge expiry or windows
/// differently from the server).
fn service_now(store: &dyn ghostkey::store::Store) -> Result<ghostkey::clock::UnixTime, String> {
    let floor = store
        .time_floor()
        .map_err(|e| format!("cannot read the database: {e}"))?;
    Ok(SystemClock.now().max(floor))
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, String> {
    serde_json::to_string_pretty(value).map_err(|e| e.to_string())
}

fn run_app_command(config: &Config, command: AppCommand) -> Result<(), String> {
    let store = ghostkey::server::open_store(config)?;
    let now = service_now(store.as_ref())?;
    match command {
        AppCommand::Add { name, key } => {
            let id = admin::add_app(store.as_ref(), &name, &key.key_id, &key.text()?, now)
                .map_err(|e| e.0)?;
            eprintln!(
                "registered app `{}` with key `{}`; its app id (the assertions' `iss`):",
                name.trim(),
                key.key_id
            );
            println!("{id}");
        }
        AppCommand::List { json } => {
            let apps = admin::list_apps(store.as_ref(), now).map_err(|e| e.0)?;
            if json {
                println!("{}", to_json(&apps)?);
            } else if apps.is_empty() {
                eprintln!("no apps registered (see `ghostkey app add --help`)");
            } else {
                for app in &apps {
                    let active = app.keys.iter().filter(|k| k.revoked_at.is_none()).count();
                    let last = app
                        .last_activity
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "never".into());
                    println!(
                        "{}  {}  ({} active key(s), {} user(s), {} event(s) in 24 h, last activity {last})",
                        app.id, app.name, active, app.users, app.events_last_24h
                    );
                }
            }
        }
        AppCommand::Show { app_id, json } => {
            let app = admin::show_app(store.as_ref(), &app_id, now).map_err(|e| e.0)?;
            if json {
                println!("{}", to_json(&app)?);
            } else {
                print_app(&app);
            }
        }
        AppCommand::Key(KeyCommand::Add { app_id, key }) => {
            admin::add_key(store.as_ref(), &app_id, &key.key_id, &key.text()?, now)
                .map_err(|e| e.0)?;
            eprintln!("added key `{}` to app `{app_id}`", key.key_id);
        }
        AppCommand::Key(KeyCommand::Revoke { app_id, key_id }) => {
            let left = admin::revoke_key(store.as_ref(), &app_id, &key_id, now).map_err(|e| e.0)?;
            eprintln!("revoked key `{key_id}` of app `{app_id}`");
            if left == 0 {
                eprintln!("WARNING: app `{app_id}` has no active key left; its assertions are all refused until a key is added");
            }
        }
        AppCommand::Origins(OriginsCommand::Add { app_id, origin }) => {
            let (origin, added) =
                admin::add_origin(store.as_ref(), &app_id, &origin, now).map_err(|e| e.0)?;
            if added {
                eprintln!("app `{app_id}` now allows origin `{origin}`");
            } else {
                eprintln!("app `{app_id}` already allows origin `{origin}`; nothing changed");
            }
        }
        AppCommand::Origins(OriginsCommand::Remove { app_id, origin }) => {
            let origin =
                admin::remove_origin(store.as_ref(), &app_id, &origin, now).map_err(|e| e.0)?;
            eprintln!("app `{app_id}` no longer allows origin `{origin}`");
        }
        AppCommand::Origins(OriginsCommand::List { app_id, json }) => {
            let origins = admin::list_origins(store.as_ref(), &app_id).map_err(|e| e.0)?;
            if json {
                println!(
                    "{}",
                    to_json(&serde_json::json!({ "app_id": app_id, "allowed_origins": origins }))?
                );
            } else if origins.is_empty() {
                eprintln!(
                    "app `{app_id}` allows no origin: no browser page may call the API for it \
                     (see `ghostkey app origins add --help`)"
                );
            } else {
                for origin in &origins {
                    println!("{origin}");
                }
            }
        }
        AppCommand::Passkey(PasskeyCommand::Set { app_id, rp_id }) => {
            let (rp_id, fitting) =
                admin::set_passkey_rp_id(store.as_ref(), &app_id, Some(&rp_id), now)
                    .map_err(|e| e.0)?;
            eprintln!(
                "app `{app_id}`: passkeys use the relying-party id `{}`",
                rp_id.unwrap_or_default()
            );
            if fitting.is_empty() {
                eprintln!(
                    "WARNING: none of the app's allowed origins is that domain or a subdomain of it: \
                     no passkey can be made or used until one is (`ghostkey app origins add`)"
                );
            } else {
                eprintln!("  made and used from: {}", fitting.join(", "));
            }
        }
        AppCommand::Passkey(PasskeyCommand::Clear { app_id }) => {
            admin::set_passkey_rp_id(store.as_ref(), &app_id, None, now).map_err(|e| e.0)?;
            eprintln!("app `{app_id}` has no passkey relying party: its passkey methods cannot be checked");
        }
        AppCommand::Policy(PolicyCommand::Set(args)) => {
            let change = args.change()?;
            let policy =
                admin::set_policy(store.as_ref(), &args.app_id, &change, now).map_err(|e| e.0)?;
            eprintln!("policy of app `{}` updated:", args.app_id);
            print_policy(&policy);
        }
    }
    Ok(())
}

fn run_user_command(config: &Config, command: UserCommand) -> Result<(), String> {
    let store = ghostkey::server::open_store(config)?;
    match command {
        UserCommand::Show {
            app_id,
            user_id,
            json,
        } => {
            let (data_key, _) = ghostkey::keys::DataKey::load(config)?;
            let keys = ghostkey::keys::ServerKeys::derive(&data_key);
            let report =
                admin::show_user(store.as_ref(), &keys, &app_id, &user_id).map_err(|e| e.0)?;
            if json {
                println!("{}", to_json(&report)?);
            } else {
                println!(
                    "user {} of app {}: {:?}, enrolled at {}",
                    report.user_id, report.app_id, report.state, report.enrolled_at
                );
                for m in &report.methods {
                    println!(
                        "  method {}  {}  {}  {:?}",
                        m.id,
                        m.kind.as_str(),
                        m.masked.as_deref().unwrap_or("authenticator app"),
                        m.state
                    );
                }
                match report.locked_at {
                    Some(t) => println!(
                        "  LOCKED since {t} ({} failures); `ghostkey user unlock` lifts it",
                        report.failures
                    ),
                    None => println!(
                        "  not locked ({} failures since the last success)",
                        report.failures
                    ),
                }
                for (id, state, at) in &report.open_recoveries {
                    println!(
                        "  open recovery {id}: {state}{}",
                        at.map(|t| format!(", release at {t}")).unwrap_or_default()
                    );
                }
                println!(
                    "  {} release(s); device chain of {} block(s)",
                    report.releases, report.chain_blocks
                );
            }
        }
        UserCommand::Erase {
            app_id,
            user_id,
            yes,
        } => {
            if !yes {
                return Err("erasure cannot be undone: add --yes to confirm".into());
            }
            let (data_key, _) = ghostkey::keys::DataKey::load(config)?;
            let keys = ghostkey::keys::ServerKeys::derive(&data_key);
            admin::erase_user(
                store.as_ref(),
                &keys,
                &app_id,
                &user_id,
                service_now(store.as_ref())?,
            )
            .map_err(|e| e.0)?;
            eprintln!("user `{user_id}` of app `{app_id}` erased");
        }
        UserCommand::Unlock { app_id, user_id } => {
            let (data_key, _) = ghostkey::keys::DataKey::load(config)?;
            let keys = ghostkey::keys::ServerKeys::derive(&data_key);
            let was_locked = admin::unlock_user(
                store.as_ref(),
                &keys,
                &app_id,
                &user_id,
                service_now(store.as_ref())?,
            )
            .map_err(|e| e.0)?;
            if was_locked {
                eprintln!("user unlocked; their failure count and failure budget are cleared");
            } else {
                eprintln!(
                    "the user was not locked; their failure count and failure budget are cleared"
                );
            }
        }
    }
    Ok(())
}

fn rotate(config: &Config, batch: usize) -> Result<(), String> {
    let (keys, _) = ghostkey::keys::load_server_keys(config)?;
    if keys.retired_ids().is_empty() {
        return Err(
            "no retired key is configured (`keys.retired_key_files`): nothing to rotate from"
                .into(),
        );
    }
    let store = ghostkey::server::open_store(config)?;
    let report = admin::rotate_keys(store.as_ref(), &keys, batch, service_now(store.as_ref())?)
        .map_err(|e| e.0)?;
    eprintln!(
        "re-encrypted {} method(s) and {} queued message(s) under key {}",
        report.methods, report.messages, report.current
    );
    for (id, methods, messages, challenges) in &report.retired {
        if methods + messages + challenges == 0 {
            eprintln!("key {id}: nothing left under it; remove it from `keys.retired_key_files` and restart");
        } else {
            eprintln!(
                "key {id}: still needed by {methods} method(s), {messages} queued message(s), \
                 {challenges} live code(s) (a challenge's code expires within its lifetime, a cancel \
                 code when its recovery is released or ends; run again later; a passphrase method \
                 stays under the key it was set with until the user replaces it)"
            );
        }
    }
    println!("{}", to_json(&report)?);
    Ok(())
}

/// Backup and restore copy a SQLite file; PostgreSQL has its own tools for that.
const POSTGRES_BACKUP: &str = "the database is PostgreSQL (database.url): back it up with \
    PostgreSQL's own tools, `pg_dump` for a logical copy or `pg_basebackup` with WAL archiving for \
    point-in-time recovery, and restore with `pg_restore` or by replaying the base backup \
    (docs/OPERATIONS.md, \"Running several nodes\")";

fn db_command(config: &Config, command: DbCommand) -> Result<(), String> {
    match command {
        DbCommand::Migrate => {
            if !config.database.is_postgres() {
                eprintln!(
                    "the database is SQLite ({}): `ghostkey serve` creates and upgrades it; nothing to do",
                    config.database.path.display()
                );
                return Ok(());
            }
            let options = ghostkey::server::postgres_options(config)?;
            let (from, to) = ghostkey::store::postgres::migrate(&options)
                .map_err(|e| format!("migration failed (nothing was changed): {e}"))?;
            match from {
                None => eprintln!("created the Ghostkey schema, version {to}"),
                Some(v) if v == to => {
                    eprintln!("the schema is already at version {to}; nothing to do")
                }
                Some(v) => eprintln!("upgraded the schema from version {v} to {to}"),
            }
            Ok(())
        }
    }
}

fn backup(config: &Config, path: &std::path::Path) -> Result<(), String> {
    if config.database.is_postgres() {
        return Err(POSTGRES_BACKUP.to_owned());
    }
    let store = ghostkey::server::open_sqlite(config)?;
    let bytes = store.backup_to(path).map_err(|e| e.to_string())?;
    eprintln!(
        "wrote a consistent copy of {} to {} ({bytes} bytes, integrity checked). \
         The data key is not in it: keep the key's own copy somewhere else.",
        config.database.path.display(),
        path.display()
    );
    Ok(())
}

fn restore(config: &Config, path: &std::path::Path, yes: bool) -> Result<(), String> {
    if config.database.is_postgres() {
        return Err(POSTGRES_BACKUP.to_owned());
    }
    if !yes {
        return Err(format!(
            "this replaces the content of {} with {}: stop the server, then add --yes",
            config.database.path.display(),
            path.display()
        ));
    }
    // Refused while a server runs on the database (and keeps a server from starting
    // until the restore is done).
    let _lock = ghostkey::store::DatabaseLock::acquire(
        &config.database.path,
        ghostkey::store::LockHolder::Restore,
    )?;
    let store = ghostkey::server::open_sqlite(config)?;
    store.restore_from(path).map_err(|e| e.to_string())?;
    eprintln!(
        "restored {} into {}",
        path.display(),
        config.database.path.display()
    );
    Ok(())
}

fn clock_command(config: &Config, cmd: ClockCommand) -> Result<(), String> {
    use ghostkey::clock::Clock;
    let now = ghostkey::clock::SystemClock.now();
    match cmd {
        ClockCommand::Show => {
            let store = ghostkey::server::open_store(config)?;
            let floor = store.time_floor().map_err(|e| e.to_string())?;
            println!("floor {floor}\nsystem {now}");
            if floor > now {
                eprintln!(
                    "the floor is {} s ahead of this machine's clock: the server keeps the \
                     floor's time until the clock catches up",
                    floor - now
                );
            }
            Ok(())
        }
        ClockCommand::Reset { yes } => {
            if !yes {
                return Err(
                    "this sets the time floor back to this machine's clock; a used assertion \
                     purged from the replay cache while the clock was ahead could be accepted \
                     again until it expires: check the clock first, stop the server, then add --yes"
                        .to_owned(),
                );
            }
            // SQLite: refused while a server runs on the file. PostgreSQL has no such lock:
            // the operator stops every node first (OPERATIONS.md).
            let _lock = if config.database.is_postgres() {
                None
            } else {
                Some(ghostkey::store::DatabaseLock::acquire(
                    &config.database.path,
                    ghostkey::store::LockHolder::Maintenance,
                )?)
            };
            let store = ghostkey::server::open_store(config)?;
            let from = store.reset_time_floor(now).map_err(|e| e.to_string())?;
            eprintln!("time floor set from {from} to {now}");
            Ok(())
        }
    }
}

fn parse_audit_anchor(text: &str) -> Result<ghostkey::domain::audit::AuditHead, String> {
    ghostkey::domain::audit::AuditHead::parse(text)
}

fn serve(config: Config) -> Result<(), String> {
    actix_web::rt::System::new().block_on(async move {
        let running = ghostkey::server::start(&config)?;
        let served = running
            .server
            .await
            .map_err(|e| format!("server failed: {e}"));
        // The HTTP side has stopped (SIGTERM/SIGINT): let the outbox worker finish and
        // record the message it is sending, or the restart would send it again.
        running
            .worker
            .shutdown(ghostkey::server::worker_grace(&config))
            .await;
        served
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ghostkey: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Command::Serve => {
            init_logging(&config);
            serve(config)
        }
        Command::App(cmd) => run_app_command(&config, cmd),
        Command::User(cmd) => run_user_command(&config, cmd),
        Command::Backup { path } => backup(&config, &path),
        Command::Db(cmd) => db_command(&config, cmd),
        Command::Keys(KeysCommand::Generate { out }) => {
            let key = ghostkey::keys::DataKey::generate();
            ghostkey::keys::write_key_file(&out, &key)
                .map_err(|e| format!("cannot write {}: {e}", out.display()))
                .map(|()| {
                    eprintln!(
                        "wrote {}. To rotate: make it `keys.data_key_file`, move the old file to \
                         `keys.retired_key_files`, restart the server, then run `ghostkey keys rotate`.",
                        out.display()
                    );
                    println!("{}", key.id());
                })
        }
        Command::Keys(KeysCommand::Rotate { batch }) => rotate(&config, batch.max(1)),
        Command::Audit(cmd) => ghostkey::server::open_store(&config).and_then(|store| match cmd {
            AuditCommand::Verify { anchors } => admin::verify_audit(store.as_ref(), &anchors)
                .map_err(|e| e.0)
                .map(|found| {
                    eprintln!(
                        "audit log intact: {} events, every link verified, the recorded head and {} anchor(s) reached",
                        found.events,
                        anchors.len()
                    );
                    if found.unlinked > 0 {
                        let age = found
                            .oldest_unlinked_at
                            .map_or(0, |at| (SystemClock.now() - at).max(0));
                        eprintln!(
                            "{} audit event(s) committed but not yet linked into the chain (the \
                             oldest {age} s old): a running node links them within seconds; they \
                             are verified once linked",
                            found.unlinked
                        );
                    }
                    // On standard output alone: the value to note off-host and pass to
                    // `--anchor` later.
                    println!("{}", found.head.to_text());
                }),
            AuditCommand::Export => admin::export_audit(store.as_ref(), &mut std::io::stdout())
                .map_err(|e| e.0)
                .map(|_| ()),
        }),
        Command::Restore { path, yes } => restore(&config, &path, yes),
        Command::Clock(cmd) => clock_command(&config, cmd),
        Command::Openapi => {
            println!("{}", ghostkey::http::openapi::document());
            Ok(())
        }
        Command::Demo => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))
            .and_then(|rt| {
                rt.block_on(async {
                    let outcome = ghostkey::demo::run(&mut std::io::stdout()).await?;
                    println!("(the story took {} ms)", outcome.elapsed.as_millis());
                    Ok(())
                })
            }),
        Command::Client(cmd) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime: {e}"))
            .and_then(|rt| rt.block_on(client_cli::run(cmd))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ghostkey: {e}");
            ExitCode::FAILURE
        }
    }
}
