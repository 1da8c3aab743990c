//! A real Ghostkey server on 127.0.0.1:0 over a real SQLite file, for integration tests.
#![allow(dead_code)]

pub mod postgres;
pub mod smtp_server;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ghostkey::clock::{Clock, SystemClock, UnixTime};
use ghostkey::config::Config;
use ghostkey::domain::policy::PolicyChange;
use ghostkey::store::Store;
use ghostkey_client::kit::AssertionRequest;
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::{AppSigningKey, Client};

pub const SERVICE_ID: &str = "ghostkey-test";

/// The system clock plus an offset that tests advance, shared with the server.
///
/// A test whose result depends on where it starts in a day, an hour or a minute starts
/// its clock at a fixed instant ([`TestClock::starting_at`]) or aligns it first. To show
/// that no other test depends on the time of day, run the suite with
/// `TEST_CLOCK_START=HH:MM:SS` (for example `23:59:59`): every default test
/// clock then starts at that time of the current UTC day.
#[derive(Debug)]
pub struct TestClock {
    offset: AtomicI64,
}

impl Default for TestClock {
    fn default() -> TestClock {
        match std::env::var("TEST_CLOCK_START") {
            Ok(start) if !start.is_empty() => {
                let secs_of_day = parse_time_of_day(&start)
                    .unwrap_or_else(|| panic!("TEST_CLOCK_START must be HH:MM:SS, got {start:?}"));
                TestClock::starting_at(start_of_utc_day(SystemClock.now()) + secs_of_day)
            }
            _ => TestClock {
                offset: AtomicI64::new(0),
            },
        }
    }
}

impl TestClock {
    /// A clock that reads `instant` now and then runs with the wall clock.
    pub fn starting_at(instant: UnixTime) -> TestClock {
        TestClock {
            offset: AtomicI64::new(instant - SystemClock.now()),
        }
    }

    pub fn advance(&self, secs: i64) {
        self.offset.fetch_add(secs, Ordering::SeqCst);
    }

    /// Moves the clock forward to the next instant `at` seconds into a `window`-second
    /// window (epoch-aligned, as the rate windows are), leaving at least one second of
    /// margin, so that what follows runs inside one window.
    pub fn align(&self, window: i64, at: i64) {
        let now = self.now();
        let mut target = now - now.rem_euclid(window) + at;
        while target <= now {
            target += window;
        }
        self.advance(target - now);
    }
}

/// Midnight UTC of the day containing `t`.
pub fn start_of_utc_day(t: UnixTime) -> UnixTime {
    t - t.rem_euclid(86_400)
}

/// One hour after the last UTC midnight: a start for tests that move the clock by hours
/// and must stay in one UTC day whenever they run.
pub fn one_am_today() -> UnixTime {
    start_of_utc_day(SystemClock.now()) + 3600
}

fn parse_time_of_day(s: &str) -> Option<i64> {
    let mut parts = s.split(':').map(|p| p.parse::<i64>().ok());
    let (h, m, sec) = (parts.next()??, parts.next()??, parts.next()??);
    if parts.next().is_some() || !(0..24).contains(&h) || !(0..60).contains(&m) {
        return None;
    }
    (0..60).contains(&sec).then_some(h * 3600 + m * 60 + sec)
}

impl Clock for TestClock {
    fn now(&self) -> UnixTime {
        SystemClock.now() + self.offset.load(Ordering::SeqCst)
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    /// Where `/metrics` is served, when `metrics.listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    pub base_url: String,
    pub config: Config,
    pub clock: Arc<TestClock>,
    pub dir: Arc<tempfile::TempDir>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The configuration every test server starts from: fast delivery retries.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut config = Config {
        service_id: SERVICE_ID.into(),
        ..Config::default()
    };
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.workers = 2;
    config.database.path = dir.join("ghostkey.db");
    config.delivery.poll_interval_ms = 50;
    config.delivery.retry_base_ms = 100;
    config.delivery.retry_max_ms = 1000;
    if on_postgres() {
        config.database.url = Some(secrecy::SecretString::from(postgres::migrated_database()));
        config.database.isolation = postgres::isolation();
    }
    config
}

/// Whether this run's test servers use PostgreSQL (`GHOSTKEY_TEST_DATABASE=postgres`, set by
/// `scripts/test-all.sh` for its PostgreSQL pass) rather than a SQLite file.
pub fn on_postgres() -> bool {
    std::env::var("GHOSTKEY_TEST_DATABASE").as_deref() == Ok("postgres")
}

impl TestServer {
    pub fn start() -> TestServer {
        TestServer::start_with(|_| {})
    }

    /// Starts a server in a fresh directory after `adjust` changed the configuration.
    pub fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::start_with_clock(TestClock::default(), adjust)
    }

    /// Starts a server whose clock reads `instant` now.
    pub fn start_at(instant: UnixTime, adjust: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::start_with_clock(TestClock::starting_at(instant), adjust)
    }

    fn start_with_clock(clock: TestClock, adjust: impl FnOnce(&mut Config)) -> TestServer {
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let mut config = test_config(dir.path());
        adjust(&mut config);
        TestServer::launch(config, dir, Arc::new(clock))
    }

    /// Stops this server and starts another on the same database, key and clock, with
    /// `adjust` applied to the configuration.
    pub fn restart(mut self, adjust: impl FnOnce(&mut Config)) -> TestServer {
        let mut config = self.config.clone();
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        adjust(&mut config);
        let dir = Arc::clone(&self.dir);
        let clock = Arc::clone(&self.clock);
        self.shutdown();
        TestServer::launch(config, dir, clock)
    }

    /// Starts a server on the database a stopped test server left (its configuration and
    /// directory), with a clock that reads `instant` now.
    pub fn relaunch(
        mut config: Config,
        dir: Arc<tempfile::TempDir>,
        instant: UnixTime,
    ) -> TestServer {
        config.server.listen = "127.0.0.1:0".parse().unwrap();
        TestServer::launch(config, dir, Arc::new(TestClock::starting_at(instant)))
    }

    fn launch(config: Config, dir: Arc<tempfile::TempDir>, clock: Arc<TestClock>) -> TestServer {
        config.validate().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server_config = config.clone();
        let server_clock: Arc<dyn Clock> = clock.clone();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let running =
                    ghostkey::server::start_with_clock(&server_config, server_clock).unwrap();
                tx.send((running.addr, running.metrics_addr)).unwrap();
                let handle = running.server.handle();
                actix_web::rt::spawn(async move {
                    let _ = stop_rx.await;
                    handle.stop(false).await;
                });
                running.server.await.unwrap();
                // As `ghostkey serve` does: the message being sent is finished and
                // recorded, so a restart never sends it again.
                running
                    .worker
                    .shutdown(ghostkey::server::worker_grace(&server_config))
                    .await;
            });
        });
        let (addr, metrics_addr) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        TestServer {
            addr,
            metrics_addr,
            base_url: format!("http://{addr}"),
            config,
            clock,
            dir,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            // A panic in the server's thread fails the test (unless it is failing already).
            if t.join().is_err() && !std::thread::panicking() {
                panic!("the test server's thread panicked");
            }
        }
    }

    pub fn now(&self) -> UnixTime {
        self.clock.now()
    }

    pub fn db_path(&self) -> PathBuf {
        self.config.database.path.clone()
    }

    /// The same database the server uses, as the admin commands open it.
    pub fn store(&self) -> Arc<dyn Store> {
        ghostkey::server::open_store(&self.config).unwrap()
    }

    pub fn client(&self) -> Client {
        Client::new(&self.base_url).unwrap()
    }

    /// Registers an app through the admin code path; returns its id and signing key.
    pub fn register_app(&self, name: &str) -> TestApp {
        let key = AppSigningKey::generate("k1");
        let id = ghostkey::admin::add_app(
            &*self.store(),
            name,
            key.kid(),
            &key.public_key_b64(),
            self.now(),
        )
        .unwrap();
        TestApp {
            id,
            key,
            clock: Arc::clone(&self.clock),
        }
    }

    /// Changes an app's policy through the admin code path.
    pub fn set_policy(&self, app: &TestApp, change: PolicyChange) {
        ghostkey::admin::set_policy(&*self.store(), &app.id, &change, self.now()).unwrap();
    }

    /// The `ghostkey` binary on this server's database.
    pub fn cli(&self) -> std::process::Command {
        ghostkey_for(&self.config)
    }

    /// Runs what a node's background maintenance does within a second: on PostgreSQL, links
    /// the audit events committed so far and purges expired rows (SQLite does both inline);
    /// on both, forgets messages finished a week ago. Raw reads run it first, so they see
    /// what a second later shows.
    pub fn maintain(&self) {
        self.store().maintain(self.now()).unwrap();
    }

    /// Raw row counts, read straight from the database (SQLite file or PostgreSQL).
    pub fn count(&self, table: &str) -> i64 {
        self.query_i64(&format!("SELECT count(*) FROM {table}"))
    }

    /// One integer, read straight from the database with SQL both backends understand.
    pub fn query_i64(&self, sql: &str) -> i64 {
        if self.config.database.is_postgres() {
            self.maintain();
            let text = self.psql(&format!("SELECT ({sql})::bigint"));
            return text
                .parse()
                .unwrap_or_else(|_| panic!("`{sql}` gave `{text}`"));
        }
        let conn = rusqlite::Connection::open(self.db_path()).unwrap();
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// A column of integers, read straight from the database.
    pub fn query_i64s(&self, sql: &str) -> Vec<i64> {
        if self.config.database.is_postgres() {
            self.maintain();
            return self
                .psql(sql)
                .lines()
                .map(|l| l.parse().unwrap_or_else(|_| panic!("`{sql}` gave `{l}`")))
                .collect();
        }
        let conn = rusqlite::Connection::open(self.db_path()).unwrap();
        let mut stmt = conn.prepare(sql).unwrap();
        let rows = stmt.query_map([], |r| r.get(0)).unwrap();
        rows.map(Result::unwrap).collect()
    }

    /// One text value, read straight from the database.
    pub fn query_text(&self, sql: &str) -> String {
        if self.config.database.is_postgres() {
            self.maintain();
            return self.psql(sql);
        }
        let conn = rusqlite::Connection::open(self.db_path()).unwrap();
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// Runs a statement straight on the database (to tamper with it, as an attacker with
    /// write access would).
    pub fn execute(&self, sql: &str) {
        if self.config.database.is_postgres() {
            self.maintain();
            self.psql(sql);
            return;
        }
        let conn = rusqlite::Connection::open(self.db_path()).unwrap();
        conn.execute(sql, []).unwrap();
    }

    /// One blob, read straight from the database.
    pub fn query_blob(&self, sql: &str) -> Vec<u8> {
        if self.config.database.is_postgres() {
            self.maintain();
            let text = self.psql(&format!("SELECT encode(({sql}), 'hex')"));
            return hex::decode(text).unwrap();
        }
        let conn = rusqlite::Connection::open(self.db_path()).unwrap();
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// Runs SQL on this server's PostgreSQL database.
    pub fn psql(&self, sql: &str) -> String {
        use secrecy::ExposeSecret;
        let url = self
            .config
            .database
            .url
            .as_ref()
            .unwrap()
            .expose_secret()
            .to_owned();
        let database = url
            .rsplit('/')
            .next()
            .unwrap()
            .split('?')
            .next()
            .unwrap()
            .to_owned();
        postgres::shared().psql(&database, sql)
    }

    /// Every byte of the database at rest: the SQLite file and its write-ahead log, or for
    /// PostgreSQL (after a checkpoint) every file of the database's directory and the
    /// cluster's write-ahead log.
    pub fn raw_database(&self) -> Vec<u8> {
        if self.config.database.is_postgres() {
            self.maintain();
            self.psql("CHECKPOINT");
            let oid = self.psql("SELECT oid FROM pg_database WHERE datname = current_database()");
            let data = &postgres::shared().data_dir;
            let mut bytes = Vec::new();
            for dir in [data.join("base").join(oid), data.join("pg_wal")] {
                for entry in std::fs::read_dir(dir).unwrap() {
                    let path = entry.unwrap().path();
                    if path.is_file() {
                        bytes.extend(std::fs::read(path).unwrap());
                    }
                }
            }
            return bytes;
        }
        let mut bytes = std::fs::read(self.db_path()).unwrap();
        let mut wal = self.db_path().into_os_string();
        wal.push("-wal");
        bytes.extend(std::fs::read(wal).unwrap_or_default());
        bytes
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub struct TestApp {
    pub id: String,
    pub key: AppSigningKey,
    clock: Arc<TestClock>,
}

impl TestApp {
    /// The same clock, for building a variant of this app in a test.
    pub fn clone_for_test(&self) -> TestApp {
        TestApp {
            id: self.id.clone(),
            key: self.key.clone(),
            clock: Arc::clone(&self.clock),
        }
    }

    /// The time on the server's clock, for claims built by hand.
    pub fn now(&self) -> UnixTime {
        self.clock.now()
    }

    pub fn assertion(&self, user_id: &str, purpose: Purpose) -> String {
        self.key
            .mint(
                &AssertionRequest {
                    app_id: &self.id,
                    user_id,
                    audience: SERVICE_ID,
                    purpose,
                },
                self.clock.now(),
                120,
            )
            .unwrap()
    }
}

pub fn now() -> i64 {
    SystemClock.now()
}

/// The first run of `digits` consecutive digits in `text` (the code in a message).
pub fn find_code(text: &str, digits: usize) -> Option<String> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() {
            let start = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            if i - start == digits {
                return Some(text[start..i].to_owned());
            }
        } else {
            i += 1;
        }
    }
    None
}

/// Webhook SMS gateway stand-in: a wiremock server answering like an operator's gateway.
pub mod sms_gateway {
    use std::time::Duration;

    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    pub const SECRET: &str = "webhook-test-secret";

    /// A gateway that accepts every message.
    pub async fn accepting() -> MockServer {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/sms"))
            .respond_with(ResponseTemplate::new(200))
            .mount(&server)
            .await;
        server
    }

    /// Points a configuration at `gateway`.
    pub fn configure(config: &mut ghostkey::config::Config, gateway: &MockServer) {
        config.sms.provider = ghostkey::config::SmsProvider::Webhook;
        config.sms.webhook.url = format!("{}/sms", gateway.uri());
        config.sms.webhook.secret = Some(secrecy::SecretString::from(SECRET.to_owned()));
        config.sms.timeout_ms = 2000;
    }

    /// The JSON bodies of the messages the gateway received (all attempts, in order).
    pub async fn received(gateway: &MockServer) -> Vec<serde_json::Value> {
        gateway
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter_map(|r| serde_json::from_slice(&r.body).ok())
            .collect()
    }

    /// Waits until the gateway has received `n` messages.
    pub async fn wait_for(gateway: &MockServer, n: usize) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let got = received(gateway).await;
            if got.len() >= n {
                return got;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "gateway got {} of {n} messages",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The code in the first code message the gateway receives after its first `after`
    /// messages (notices carry no code).
    pub async fn next_code(gateway: &MockServer, after: usize) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let got = received(gateway).await;
            for m in got.iter().skip(after) {
                let body = m["body"].as_str().unwrap_or_default();
                if body.contains("verification code") {
                    if let Some(code) = super::find_code(body, 8) {
                        return code;
                    }
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no code message after {after}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The code in the `n`-th message (0-based).
    pub async fn code(gateway: &MockServer, n: usize) -> String {
        let messages = wait_for(gateway, n + 1).await;
        let body = messages[n]["body"].as_str().unwrap_or_default().to_owned();
        super::find_code(&body, 8).unwrap_or_else(|| panic!("no code in message {n}"))
    }
}

/// Enrols `user` of `app`; returns the user secret.
pub async fn enrol(server: &TestServer, app: &TestApp, user: &str) -> ghostkey_client::UserSecret {
    let secret = ghostkey_client::UserSecret::generate();
    ghostkey_client::enroll(
        &server.client(),
        &app.assertion(user, Purpose::Enroll),
        &secret,
        &app.id,
        user,
        &app.key,
    )
    .await
    .unwrap();
    secret
}

/// Enrols `user` and confirms a TOTP method with the current step's code; the method's id
/// and the authenticator.
pub async fn enrol_with_totp(
    server: &TestServer,
    app: &TestApp,
    user: &str,
) -> (String, totp_rs::Totp) {
    enrol(server, app, user).await;
    let client = server.client();
    let added = client
        .add_method(
            &app.assertion(user, Purpose::Enroll),
            ghostkey_client::proto::api::MethodKind::Totp,
            None,
            None,
        )
        .await
        .unwrap();
    let authenticator = totp_rs::Totp::from_url(&added.totp.unwrap().otpauth_uri).unwrap();
    client
        .answer(
            &added.challenge.id,
            &authenticator.generate(server.now() as u64).to_string(),
        )
        .await
        .unwrap();
    (added.method.id, authenticator)
}

/// A complete, valid enrolment body for `user` of `app`, built as a client would (for
/// tests that send hand-made requests).
pub fn enrol_body(app: &TestApp, user: &str) -> serde_json::Value {
    let prepared = ghostkey_client::prepare_enrolment(&app.id, user, app.key.kid()).unwrap();
    let root = app.key.endorse_root(&prepared.root, &app.id, user).unwrap();
    serde_json::json!({
        "sealed_virtual_device": ghostkey_client::proto::b64::encode(
            prepared.virtual_device.seal(&ghostkey_client::UserSecret::generate()).unwrap()
        ),
        "virtual_device": prepared.virtual_device.keys().public(),
        "root_block": ghostkey_client::proto::b64::encode(root.encode()),
    })
}

/// Lifts `user`'s lock as the app provider can: a `manage` assertion and the user's own
/// proof through their confirmed SMS method `method_id` (its code read from `gateway`).
pub async fn unlock_with_sms_proof(
    server: &TestServer,
    app: &TestApp,
    user: &str,
    method_id: &str,
    gateway: &wiremock::MockServer,
) -> Result<ghostkey_client::proto::api::UnlockResponse, ghostkey_client::ClientError> {
    let client = server.client();
    let before = sms_gateway::received(gateway).await.len();
    let proof = client
        .start_challenge(
            &app.assertion(user, Purpose::Manage),
            method_id,
            ghostkey_client::proto::api::ChallengePurpose::Proof,
        )
        .await?;
    let code = sms_gateway::next_code(gateway, before).await;
    client
        .unlock(
            &app.assertion(user, Purpose::Manage),
            Some(ghostkey_client::proto::api::Proof {
                challenge_id: proof.id,
                code: Some(code),
                webauthn: None,
            }),
        )
        .await
}

/// Polls `check` (every 25 ms, letting the runtime run in between) until it returns
/// `Some`, and returns that; fails the test, saying what it waited for, once `within` has
/// passed. Tests wait on what they can observe (the store, a fake provider's records,
/// `/metrics`), never for a fixed time standing in for it.
pub async fn wait_until<T>(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(found) = check() {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waited {within:?} for {what}, in vain"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The `/metrics` text of a server started with `metrics.listen` set (a plain HTTP/1.0
/// GET, so that it can be called from a [`wait_until`] check).
pub fn metrics_text(server: &TestServer) -> String {
    use std::io::{Read, Write};
    let addr = server
        .metrics_addr
        .expect("the server was started with metrics.listen set");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer: {response:?}"));
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{head}"
    );
    body.to_owned()
}

/// The value of `series` (its name and labels exactly as rendered, such as
/// `ghostkey_outbox_depth`) in a `/metrics` text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// The sum of every series of counter `name` whose labels contain `labels` (such as
/// `result="sent"`; empty: all of them).
pub fn metric_sum(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            series.contains(labels).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// What the outbox looked like once settled: see [`wait_outbox_settled`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettledOutbox {
    /// Rows in each state.
    pub sent: i64,
    pub failed: i64,
    /// Attempts recorded over all rows (each send the worker made and recorded, success or
    /// not).
    pub attempts: i64,
}

/// Waits until the outbox has settled: no message is pending, the worker reports an empty
/// outbox (`ghostkey_outbox_depth 0`, counted when `/metrics` is read),
/// and it counted (`ghostkey_messages_total`, results `sent` and `failed`) as many
/// finished messages as the store holds, less `finished_before` finished by an earlier
/// run (the counters start at zero with each run). The worker counts a message just
/// before it records it, so a send under way cannot be missed; a message sent a second
/// time after that would have to be a new send of a message the store says is finished.
/// Needs `metrics.listen`.
pub async fn wait_outbox_settled(
    server: &TestServer,
    finished_before: i64,
    within: Duration,
) -> SettledOutbox {
    let mut last = String::new();
    let settled = tokio::time::timeout(within, async {
        loop {
            let count = |state: &str| {
                server.query_i64(&format!(
                    "SELECT count(*) FROM outbox WHERE state = '{state}'"
                ))
            };
            let (pending, sent, failed) = (count("pending"), count("sent"), count("failed"));
            let text = metrics_text(server);
            let depth = metric(&text, "ghostkey_outbox_depth");
            let counted = metric_sum(&text, "ghostkey_messages_total", "result=\"sent\"")
                + metric_sum(&text, "ghostkey_messages_total", "result=\"failed\"");
            last = format!(
                "pending {pending}, sent {sent}, failed {failed} ({finished_before} finished \
                 before a restart), depth {depth:?}, counted finished {counted}"
            );
            if pending == 0
                && depth == Some(0.0)
                && counted == (sent + failed - finished_before) as f64
            {
                return SettledOutbox {
                    sent,
                    failed,
                    attempts: server.query_i64("SELECT coalesce(sum(attempts), 0) FROM outbox"),
                };
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await;
    settled.unwrap_or_else(|_| panic!("the outbox did not settle within {within:?}: {last}"))
}

/// The `ghostkey` binary on the database at `db`, with none of the caller's `GHOSTKEY_*`
/// variables (the binary reads them as configuration).
/// The `ghostkey` binary on the database `config` names: its SQLite file, or its
/// PostgreSQL URL.
pub fn ghostkey_for(config: &Config) -> std::process::Command {
    let mut cmd = ghostkey_on(&config.database.path);
    if let Some(url) = &config.database.url {
        use secrecy::ExposeSecret;
        cmd.env("GHOSTKEY_DATABASE__URL", url.expose_secret());
    }
    cmd
}

pub fn ghostkey_on(db: &std::path::Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ghostkey"));
    for (k, _) in std::env::vars() {
        if k.starts_with("GHOSTKEY_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("GHOSTKEY_DATABASE__PATH", db);
    cmd
}

/// Enrols `user` with a confirmed phone (its code read from `gateway`); the user secret,
/// the virtual device and the method id.
pub async fn enrol_with_sms(
    server: &TestServer,
    app: &TestApp,
    gateway: &wiremock::MockServer,
    user: &str,
) -> (
    ghostkey_client::UserSecret,
    ghostkey_client::VirtualDevice,
    String,
) {
    let client = server.client();
    let secret = ghostkey_client::UserSecret::generate();
    let enrolled = ghostkey_client::enroll(
        &client,
        &app.assertion(user, Purpose::Enroll),
        &secret,
        &app.id,
        user,
        &app.key,
    )
    .await
    .unwrap();
    let before = sms_gateway::received(gateway).await.len();
    let added = client
        .add_method(
            &app.assertion(user, Purpose::Enroll),
            ghostkey_client::proto::api::MethodKind::Sms,
            Some("+33 6 12 34 56 78"),
            None,
        )
        .await
        .unwrap();
    let code = sms_gateway::code(gateway, before).await;
    client.answer(&added.challenge.id, &code).await.unwrap();
    (secret, enrolled.virtual_device, added.method.id)
}

/// The cancel code in a notice: `XXXX-XXXX-XXXX-XXXX-XXXX`, after the word "code".
pub fn cancel_code_in(text: &str) -> Option<String> {
    let words: Vec<&str> = text
        .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',')
        .collect();
    let i = words.iter().position(|w| *w == "code")?;
    let code = words.get(i + 1)?.trim_end_matches('.');
    (code.len() == 24 && code.matches('-').count() == 4).then(|| code.to_owned())
}
