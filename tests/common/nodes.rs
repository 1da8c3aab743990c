//! Real `ghostkey serve` nodes on one PostgreSQL database, for the multi-node tests
//! (`tests/multi_node.rs`, `tests/multi_node_faults.rs`, which include this file with
//! `#[path = "common/nodes.rs"] mod nodes;` beside their `mod common;`).
//!
//! A node is configured through `GHOSTKEY_*` variables alone: the shared data key file,
//! the database's URL, a port of its own choosing (`127.0.0.1:0`, read back from its
//! `listening` log line), its SMS going to a webhook gateway (wiremock), its outbox worker
//! and audit linker running.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ghostkey::domain::policy::PolicyChange;
use ghostkey::store::Store;
use ghostkey_client::kit::AssertionRequest;
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::{AppSigningKey, Client, ClientError};
use wiremock::MockServer;

use crate::common::{self, find_code, sms_gateway};

/// A running node.
pub struct Node {
    pub child: Child,
    pub client: Client,
    /// Its log (JSON lines, on its standard error).
    pub log: PathBuf,
}

fn isolation_name() -> &'static str {
    match common::postgres::isolation() {
        ghostkey::store::postgres::Isolation::ReadCommitted => "read_committed",
        ghostkey::store::postgres::Isolation::Serializable => "serializable",
    }
}

/// The `ghostkey` binary on the database at `url`, with none of the caller's `GHOSTKEY_*`
/// variables (the binary reads them as configuration) nor `RUST_LOG`.
pub fn ghostkey(dir: &Path, url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ghostkey"));
    for (k, _) in std::env::vars() {
        if k.starts_with("GHOSTKEY_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(dir)
        .stdin(Stdio::null())
        .env("GHOSTKEY_SERVICE_ID", common::SERVICE_ID)
        .env("GHOSTKEY_DATABASE__URL", url)
        .env("GHOSTKEY_DATABASE__ISOLATION", isolation_name())
        // Not used with PostgreSQL; kept inside the test's directory all the same.
        .env("GHOSTKEY_DATABASE__PATH", dir.join("unused.db"));
    cmd
}

/// Runs `cmd`, which must succeed; its standard output.
pub fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "`ghostkey {what}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A data key file in `dir` (`ghostkey keys generate`) and the schema on the database at
/// `url` (`ghostkey db migrate`); the key file's path.
pub fn prepare(dir: &Path, url: &str) -> PathBuf {
    let key_file = dir.join("data.key");
    run(
        ghostkey(dir, url)
            .args(["keys", "generate", "--out"])
            .arg(&key_file),
        "keys generate",
    );
    run(
        ghostkey(dir, url)
            .env("GHOSTKEY_KEYS__DATA_KEY_FILE", &key_file)
            .args(["db", "migrate"]),
        "db migrate",
    );
    key_file
}

/// The database at `url`, as the admin commands open it.
pub fn admin_store(url: &str) -> Arc<dyn Store> {
    let mut config = ghostkey::config::Config {
        service_id: common::SERVICE_ID.into(),
        ..ghostkey::config::Config::default()
    };
    config.database.url = Some(secrecy::SecretString::from(url.to_owned()));
    config.database.isolation = common::postgres::isolation();
    config.database.max_connections = 2;
    ghostkey::server::open_store(&config).unwrap()
}

/// The database's name in its URL.
pub fn database_name(url: &str) -> String {
    url.rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_owned()
}

/// Starts a `ghostkey serve` node logging to `log`; [`wait_listening`] waits for it.
pub fn spawn(dir: &Path, url: &str, key_file: &Path, gateway: &MockServer, log: &Path) -> Child {
    spawn_with(dir, url, key_file, gateway, log, &[])
}

/// [`spawn`], with settings of its own (`GHOSTKEY_...` variables) over the common ones.
pub fn spawn_with(
    dir: &Path,
    url: &str,
    key_file: &Path,
    gateway: &MockServer,
    log: &Path,
    settings: &[(&str, String)],
) -> Child {
    let child = ghostkey(dir, url)
        .arg("serve")
        .env("GHOSTKEY_KEYS__DATA_KEY_FILE", key_file)
        .env("GHOSTKEY_SERVER__LISTEN", "127.0.0.1:0")
        .env("GHOSTKEY_SERVER__WORKERS", "2")
        // Eight connections per node, three nodes: 24 transactions at once per test,
        // and every test of a file at once stays under the test cluster's 300.
        .env("GHOSTKEY_DATABASE__MAX_CONNECTIONS", "8")
        // Hundreds of parallel writes about one user queue for that user's lock; under
        // SERIALIZABLE a queued write re-runs until this bound (then `unavailable`),
        // so it is set long enough for the whole queue of an attack to drain on this
        // small machine, as it does under READ COMMITTED, where writers wait in line.
        .env("GHOSTKEY_DATABASE__BUSY_TIMEOUT_MS", "60000")
        .env("GHOSTKEY_LOG__FORMAT", "json")
        .env("GHOSTKEY_LOG__LEVEL", "info")
        .env("GHOSTKEY_SMS__PROVIDER", "webhook")
        .env(
            "GHOSTKEY_SMS__WEBHOOK__URL",
            format!("{}/sms", gateway.uri()),
        )
        .env("GHOSTKEY_SMS__WEBHOOK__SECRET", sms_gateway::SECRET)
        // Two seconds a send: a claimed message's lease is then five seconds.
        .env("GHOSTKEY_SMS__TIMEOUT_MS", "2000")
        .env("GHOSTKEY_DELIVERY__POLL_INTERVAL_MS", "50")
        .env("GHOSTKEY_DELIVERY__RETRY_BASE_MS", "100")
        .env("GHOSTKEY_DELIVERY__RETRY_MAX_MS", "1000")
        .envs(settings.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    // Should this test process die without killing the node, the node goes too.
    let _ = Command::new("sh")
        .args([
            "-c",
            &format!(
                "while kill -0 {test} 2>/dev/null && kill -0 {node} 2>/dev/null; do sleep 0.5; done; \
                 kill -9 {node} 2>/dev/null",
                test = std::process::id(),
                node = child.id()
            ),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    child
}

/// Waits for the node's `listening` log line (it binds port 0), then for `/healthz`.
pub async fn wait_listening(mut child: Child, log: PathBuf) -> Node {
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let found = text.lines().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["fields"]["message"] == "listening")
                .then(|| v["fields"]["addr"].as_str().map(str::to_owned))?
        });
        if let Some(addr) = found {
            break addr;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("a node exited ({status}) before listening: {text}");
        }
        assert!(Instant::now() < deadline, "a node did not start: {text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Idle connections are dropped before the server's 5-second keep-alive can close
    // them under a request being sent.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_idle_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let client = Client::with_http(&format!("http://{addr}"), http).unwrap();
    while client.ready().await.is_err() {
        assert!(Instant::now() < deadline, "node {addr} is not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Node { child, client, log }
}

/// An app registered through the admin code path, and its signing key.
#[derive(Clone)]
pub struct App {
    pub id: String,
    pub key: AppSigningKey,
}

impl App {
    pub fn register(store: &dyn Store, name: &str) -> App {
        let key = AppSigningKey::generate("k1");
        let id =
            ghostkey::admin::add_app(store, name, key.kid(), &key.public_key_b64(), unix_now())
                .unwrap();
        App { id, key }
    }

    pub fn set_policy(&self, store: &dyn Store, change: PolicyChange) {
        ghostkey::admin::set_policy(store, &self.id, &change, unix_now()).unwrap();
    }

    /// A fresh assertion (its own `jti`) for `user`, valid two minutes.
    pub fn assertion(&self, user: &str, purpose: Purpose) -> String {
        self.key
            .mint(
                &AssertionRequest {
                    app_id: &self.id,
                    user_id: user,
                    audience: common::SERVICE_ID,
                    purpose,
                },
                unix_now(),
                120,
            )
            .unwrap()
    }
}

pub fn unix_now() -> i64 {
    ghostkey_client::kit::unix_now()
}

/// A French mobile number in E.164, as the gateway sees it.
pub fn phone(n: u32) -> String {
    format!("+33612{n:06}")
}

/// The name of an answer: `ok`, or the error code.
pub fn answer_name<T>(r: &Result<T, ClientError>) -> String {
    match r {
        Ok(_) => "ok".to_owned(),
        Err(ClientError::Api { problem, .. }) => problem.code.clone(),
        Err(e) => format!("not an API answer: {e}"),
    }
}

/// The code messages the gateway received for `to`, by outbox id (a message delivered
/// twice counts once).
pub async fn codes_to(gateway: &MockServer, to: &str) -> BTreeMap<i64, String> {
    let mut codes = BTreeMap::new();
    for m in sms_gateway::received(gateway).await {
        if m["to"] != to {
            continue;
        }
        let body = m["body"].as_str().unwrap_or_default();
        if !body.contains("verification code") {
            continue;
        }
        if let (Some(id), Some(code)) = (m["id"].as_i64(), find_code(body, 8)) {
            codes.insert(id, code);
        }
    }
    codes
}
