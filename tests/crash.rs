//! Crash test: the real `ghostkey` binary, on a real SQLite file with `synchronous =
//! "full"`, serves enrolment and recovery load from many concurrent clients and is killed
//! with SIGKILL at random moments, then started again on the same files.
//!
//! After every kill, with the server down: `PRAGMA integrity_check` answers `ok`,
//! `ghostkey audit verify` passes, every enrolment, method confirmation and release that
//! got a success answer is in the database, and no recovery was released twice (one
//! `recovery_released` event and one successful answer with the sealed blob per recovery
//! at most). After every restart the server is ready and serves the device chain of every
//! acknowledged enrolment, which verifies from the app's key.
//!
//! The fast version kills 5 times; `GHOSTKEY_CRASH_ROUNDS=50 cargo test --release --test
//! crash -- --nocapture` runs the long one (docs/FAULTS.md).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ghostkey_client::kit::{unix_now, AssertionRequest};
use ghostkey_client::proto::api::{MethodKind, RecoveryResponse, RecoveryState};
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::proto::{b64, ErrorCode};
use ghostkey_client::{AppSigningKey, Client, ClientError, UserSecret, VirtualDevice};
use rand::Rng;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const SERVICE_ID: &str = "ghostkey-crash";
/// Concurrent client tasks.
const CLIENTS: usize = 16;

fn rounds() -> usize {
    std::env::var("GHOSTKEY_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

/// The `ghostkey` binary with the test's configuration and none of the caller's
/// `GHOSTKEY_*` variables (such as `GHOSTKEY_CRASH_ROUNDS`).
fn ghostkey(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ghostkey"));
    for (k, _) in std::env::vars() {
        if k.starts_with("GHOSTKEY_") {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(dir)
        .arg("--config")
        .arg(dir.join("ghostkey.toml"));
    cmd
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        cmd,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The SMS gateway: accepts every message and files its code under the destination and
/// the outbox id (the message's `id`), counting deliveries.
#[derive(Clone, Default)]
struct Inbox(Arc<Mutex<CodesByPhone>>);

/// Per destination: (outbox id, code) of every code message, in arrival order.
type CodesByPhone = HashMap<String, Vec<(i64, String)>>;

impl wiremock::Respond for Inbox {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        if let Ok(m) = serde_json::from_slice::<serde_json::Value>(&request.body) {
            let body = m["body"].as_str().unwrap_or_default();
            if let (Some(to), Some(id), Some(code)) = (
                m["to"].as_str(),
                m["id"].as_i64(),
                common::find_code(body, 8).filter(|_| body.contains("verification code")),
            ) {
                self.0
                    .lock()
                    .unwrap()
                    .entry(to.to_owned())
                    .or_default()
                    .push((id, code));
            }
        }
        ResponseTemplate::new(200)
    }
}

impl Inbox {
    fn code(&self, to: &str, outbox_id: i64) -> Option<String> {
        self.0
            .lock()
            .unwrap()
            .get(to)?
            .iter()
            .find(|(id, _)| *id == outbox_id)
            .map(|(_, code)| code.clone())
    }
}

struct App {
    id: String,
    key: AppSigningKey,
    waiting: bool,
}

impl App {
    fn assertion(&self, user: &str, purpose: Purpose) -> String {
        self.key
            .mint(
                &AssertionRequest {
                    app_id: &self.id,
                    user_id: user,
                    audience: SERVICE_ID,
                    purpose,
                },
                unix_now(),
                120,
            )
            .unwrap()
    }
}

/// What the clients were told, and what surprised them.
#[derive(Default, Clone)]
struct Ledger {
    /// (app, user) of every enrolment answered with success.
    enrolled: Vec<(String, String)>,
    /// Methods whose confirmation was answered with success.
    confirmed: Vec<String>,
    /// Successful answers carrying the sealed blob, per recovery id.
    blobs: HashMap<String, usize>,
    /// Requests whose answer never came (the server died under them) and were sent again.
    interrupted: u64,
    /// Of those, requests the server had carried out before it died: the retry found the
    /// enrolment made, the code used or the recovery released.
    lost_answers: u64,
    /// Users whose flow ended early (an answer lost at the wrong step, a limit).
    abandoned: u64,
    /// Replays of a release (the same code again, or a second release) refused.
    replays_refused: u64,
    /// Answers that should never happen: server errors, unexpected refusals.
    surprises: Vec<String>,
}

struct Shared {
    client: Client,
    db: PathBuf,
    inbox: Inbox,
    apps: Vec<App>,
    ledger: Mutex<Ledger>,
    stop: AtomicBool,
    next_user: AtomicU64,
}

impl Shared {
    fn note(&self, f: impl FnOnce(&mut Ledger)) {
        f(&mut self.ledger.lock().unwrap());
    }

    fn surprise(&self, what: String) {
        self.note(|l| l.surprises.push(what));
    }
}

/// Sends a request until an answer arrives: while the server is down (or was killed under
/// the request), waits and sends it again. Returns the answer and whether an earlier
/// attempt may have been carried out without its answer reaching us.
async fn until_answered<T, F, Fut>(shared: &Shared, mut send: F) -> (Result<T, ClientError>, bool)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut interrupted = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match send().await {
            Err(ClientError::Transport(_)) if Instant::now() < deadline => {
                if !interrupted {
                    shared.note(|l| l.interrupted += 1);
                }
                interrupted = true;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return (other, interrupted),
        }
    }
}

fn is(result: &ClientError, code: ErrorCode) -> bool {
    result.code() == Some(code)
}

/// A TOTP code for the step `offset` steps from now, away from a step boundary so that
/// it is still the same step when the server checks it.
async fn totp_code(authenticator: &totp_rs::Totp, offset: i64) -> String {
    loop {
        let now = unix_now();
        if now % 30 < 27 {
            return authenticator
                .generate((now + offset * 30) as u64)
                .to_string();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The newest code message queued for `method_id` (read from the database, as the
/// request that queued it was acknowledged), once the gateway has it.
async fn sms_code(shared: &Shared, method_id: &str, phone: &str) -> Option<String> {
    let outbox_id: i64 = {
        let conn = rusqlite::Connection::open(&shared.db).ok()?;
        conn.busy_timeout(Duration::from_secs(10)).ok()?;
        conn.query_row(
            "SELECT max(id) FROM outbox WHERE method_id = ?1 AND kind = 'code'",
            [method_id],
            |r| r.get::<_, Option<i64>>(0),
        )
        .ok()??
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Some(code) = shared.inbox.code(phone, outbox_id) {
            return Some(code);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    None
}

/// Records a successful recovery answer; checks the blob opens for this user.
fn released(
    shared: &Shared,
    answer: &RecoveryResponse,
    secret: &UserSecret,
    app: &App,
    user: &str,
) {
    let Some(blob) = &answer.sealed_virtual_device else {
        // Every caller got a `released` answer: one without the blob is a lost release.
        return shared.surprise(format!(
            "{user}: a released answer ({:?}) carries no sealed virtual device",
            answer.state
        ));
    };
    let bytes = b64::decode(blob).unwrap();
    if let Err(e) = VirtualDevice::open(&bytes, secret, &app.id, user, 1) {
        shared.surprise(format!("{user}: the released blob does not open: {e}"));
    }
    shared.note(|l| *l.blobs.entry(answer.recovery_id.clone()).or_default() += 1);
}

/// One user's life: enrol, add a TOTP or SMS method and confirm it, start a recovery,
/// verify its code and get the sealed virtual device (at once, or through a release after
/// the app's waiting period), then replay the code and the release.
async fn user_flow(shared: &Shared, n: u64) {
    let app = &shared.apps[(n % 2) as usize];
    let sms = n % 3 == 2;
    let user = format!("user-{n}");
    let phone = format!("+336{:08}", 10_000_000 + n);
    let client = &shared.client;
    let secret = UserSecret::generate();

    let (enrolled, _) = until_answered(shared, || async {
        let assertion = app.assertion(&user, Purpose::Enroll);
        ghostkey_client::enroll(client, &assertion, &secret, &app.id, &user, &app.key).await
    })
    .await;
    match enrolled {
        Ok(_) => shared.note(|l| l.enrolled.push((app.id.clone(), user.clone()))),
        // The first attempt was carried out; its answer was lost.
        Err(e) if is(&e, ErrorCode::AlreadyEnrolled) => shared.note(|l| l.lost_answers += 1),
        Err(e) => return shared.surprise(format!("{user} enrol: {e}")),
    }

    let (kind, destination) = if sms {
        (MethodKind::Sms, Some(phone.as_str()))
    } else {
        (MethodKind::Totp, None)
    };
    let (added, _) = until_answered(shared, || async {
        let assertion = app.assertion(&user, Purpose::Enroll);
        client.add_method(&assertion, kind, destination, None).await
    })
    .await;
    let added = match added {
        Ok(a) => a,
        Err(e) => return shared.surprise(format!("{user} add method: {e}")),
    };
    let authenticator = added
        .totp
        .as_ref()
        .map(|t| totp_rs::Totp::from_url(&t.otpauth_uri).unwrap());
    let code = match &authenticator {
        // The previous step, so that the recovery can use the current one.
        Some(_) => None,
        None => match sms_code(shared, &added.method.id, &phone).await {
            Some(c) => Some(c),
            None => return shared.surprise(format!("{user}: no confirmation code arrived")),
        },
    };
    let (answered, interrupted) = until_answered(shared, || async {
        let code = match (&authenticator, &code) {
            (Some(a), _) => totp_code(a, -1).await,
            (None, Some(c)) => c.clone(),
            (None, None) => unreachable!(),
        };
        client.answer(&added.challenge.id, &code).await
    })
    .await;
    match answered {
        Ok(_) => shared.note(|l| l.confirmed.push(added.method.id.clone())),
        Err(e) if interrupted && is(&e, ErrorCode::CodeAlreadyUsed) => {
            shared.note(|l| l.lost_answers += 1)
        }
        Err(e) => return shared.surprise(format!("{user} confirm: {e}")),
    }

    let (started, _) = until_answered(shared, || async {
        let assertion = app.assertion(&user, Purpose::Recover);
        client.start_recovery(&assertion, &added.method.id).await
    })
    .await;
    let started = match started {
        Ok(s) => s,
        Err(e) if is(&e, ErrorCode::DestinationRateLimited) => {
            return shared.note(|l| l.abandoned += 1)
        }
        Err(e) => return shared.surprise(format!("{user} start recovery: {e}")),
    };
    let code = match &authenticator {
        Some(_) => None,
        None => match sms_code(shared, &added.method.id, &phone).await {
            Some(c) => Some(c),
            None => return shared.surprise(format!("{user}: no recovery code arrived")),
        },
    };
    let last_code = Mutex::new(String::new());
    let (verified, interrupted) = until_answered(shared, || async {
        let sent = match (&authenticator, &code) {
            (Some(a), _) => totp_code(a, 0).await,
            (None, Some(c)) => c.clone(),
            (None, None) => unreachable!(),
        };
        *last_code.lock().unwrap() = sent.clone();
        client.verify_recovery(&started.id, &sent).await
    })
    .await;
    let last_code = last_code.into_inner().unwrap();
    let waiting = match verified {
        Ok(answer) if answer.state == RecoveryState::Released && !app.waiting => {
            released(shared, &answer, &secret, app, &user);
            false
        }
        Ok(answer) if answer.state == RecoveryState::Waiting && app.waiting => {
            let wait = answer.available_at.unwrap_or(0) - unix_now();
            tokio::time::sleep(Duration::from_millis(wait.max(0) as u64 * 1000 + 200)).await;
            true
        }
        // Verified before the crash, answer lost: the release (if any) is still to come.
        Err(e) if interrupted && is(&e, ErrorCode::CodeAlreadyUsed) => {
            shared.note(|l| l.lost_answers += 1);
            tokio::time::sleep(Duration::from_millis(1200)).await;
            true
        }
        Ok(answer) => return shared.surprise(format!("{user} verify answered {:?}", answer.state)),
        Err(e) => return shared.surprise(format!("{user} verify: {e}")),
    };
    if waiting {
        let (release, interrupted) = until_answered(shared, || async {
            let assertion = app.assertion(&user, Purpose::Recover);
            client.release_recovery(&assertion, &started.id).await
        })
        .await;
        match release {
            Ok(answer) => released(shared, &answer, &secret, app, &user),
            // Released before the crash (by the verification or by this release).
            Err(e) if interrupted && is(&e, ErrorCode::AlreadyReleased) => {
                return shared.note(|l| {
                    l.lost_answers += 1;
                    l.abandoned += 1
                })
            }
            Err(e) if !app.waiting && is(&e, ErrorCode::AlreadyReleased) => {
                return shared.note(|l| l.abandoned += 1)
            }
            Err(e) => return shared.surprise(format!("{user} release: {e}")),
        }
    }

    // A client that sends again what already succeeded gets no second blob.
    let (again, _) =
        until_answered(shared, || client.verify_recovery(&started.id, &last_code)).await;
    match again {
        Err(e) if is(&e, ErrorCode::CodeAlreadyUsed) => shared.note(|l| l.replays_refused += 1),
        Ok(answer) => {
            released(shared, &answer, &secret, app, &user);
            shared.surprise(format!("{user}: the code was accepted twice"));
        }
        Err(e) => shared.surprise(format!("{user} replayed verify: {e}")),
    }
    let (again, _) = until_answered(shared, || async {
        let assertion = app.assertion(&user, Purpose::Recover);
        client.release_recovery(&assertion, &started.id).await
    })
    .await;
    match again {
        Err(e) if is(&e, ErrorCode::AlreadyReleased) => shared.note(|l| l.replays_refused += 1),
        Ok(answer) => {
            released(shared, &answer, &secret, app, &user);
            shared.surprise(format!("{user}: released twice"));
        }
        Err(e) => shared.surprise(format!("{user} second release: {e}")),
    }
}

struct Daemon {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    starts: usize,
}

impl Daemon {
    async fn start(&mut self, client: &Client) {
        self.starts += 1;
        let log =
            std::fs::File::create(self.dir.join(format!("serve-{}.log", self.starts))).unwrap();
        let child = ghostkey(&self.dir)
            .arg("serve")
            .env(
                "GHOSTKEY_SERVER__LISTEN",
                format!("127.0.0.1:{}", self.port),
            )
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while client.ready().await.is_err() {
            assert!(Instant::now() < deadline, "the server did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: no drain, no shutdown hook, nothing flushed by the process.
    async fn kill(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        assert!(!status.success());
    }

    /// SIGTERM: the graceful stop, at the end.
    async fn stop(&mut self) {
        let mut child = self.child.take().unwrap();
        Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .unwrap();
        let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap();
        assert!(status.success(), "{status:?}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The checks on the files while no server runs. Returns (users, released recoveries).
fn check_database(dir: &Path, db: &Path, ledger: &Ledger, when: &str) -> (i64, i64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok", "{when}: integrity_check");

    for (app, user) in &ledger.enrolled {
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM users WHERE app_id = ?1 AND user_id = ?2",
                [app, user],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            n, 1,
            "{when}: the acknowledged enrolment of {user} is missing"
        );
    }
    for method in &ledger.confirmed {
        let state: String = conn
            .query_row("SELECT state FROM methods WHERE id = ?1", [method], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(state, "confirmed", "{when}: acknowledged confirmation lost");
    }
    for (recovery, answers) in &ledger.blobs {
        assert_eq!(
            *answers, 1,
            "{when}: {recovery} answered the blob {answers} times"
        );
        let state: String = conn
            .query_row(
                "SELECT state FROM recoveries WHERE challenge_id = ?1",
                [recovery],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            state, "released",
            "{when}: acknowledged release of {recovery} lost"
        );
    }
    // Server side: one release event per recovery, and exactly the released recoveries.
    let twice: i64 = conn
        .query_row(
            "SELECT count(*) FROM (SELECT json_extract(detail, '$.recovery') AS r FROM audit_events \
             WHERE kind = 'recovery_released' GROUP BY r HAVING count(*) > 1)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(twice, 0, "{when}: a recovery was released twice");
    let events: i64 = conn
        .query_row(
            "SELECT count(*) FROM audit_events WHERE kind = 'recovery_released'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let released: i64 = conn
        .query_row(
            "SELECT count(*) FROM recoveries WHERE state = 'released'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        events, released,
        "{when}: release events and released recoveries"
    );
    let users: i64 = conn
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .unwrap();
    drop(conn);

    let out = ghostkey(dir).args(["audit", "verify"]).output().unwrap();
    assert!(
        out.status.success(),
        "{when}: audit verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (users, released)
}

/// Over HTTP: each acknowledged enrolment's chain is served and verifies from the app's key.
async fn check_chains(shared: &Shared, enrolled: &[(String, String)]) {
    for (app_id, user) in enrolled {
        let app = shared.apps.iter().find(|a| &a.id == app_id).unwrap();
        let blocks = shared
            .client
            .chain(&app.assertion(user, Purpose::Enroll), user)
            .await
            .unwrap_or_else(|e| panic!("chain of {user}: {e}"));
        let pinned = app.key.public_key();
        let kid = app.key.kid().to_owned();
        let chain = ghostkey_client::proto::chain::verify_chain(&blocks, &move |k: &str| {
            (k == kid).then_some(pinned)
        })
        .unwrap_or_else(|e| panic!("chain of {user} does not verify: {e}"));
        assert_eq!(&chain.user_id, user);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_loses_no_acknowledged_write_and_releases_nothing_twice() {
    let started_at = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let gateway = MockServer::start().await;
    let inbox = Inbox::default();
    Mock::given(method("POST"))
        .and(path("/sms"))
        .respond_with(inbox.clone())
        .mount(&gateway)
        .await;
    let db = dir.path().join("ghostkey.db");
    std::fs::write(
        dir.path().join("ghostkey.toml"),
        format!(
            r#"mode = "development"
service_id = "{SERVICE_ID}"

[server]
workers = 2

[database]
path = "{db}"
synchronous = "full"

[log]
level = "warn"

[sms]
provider = "webhook"
timeout_ms = 2000

[sms.webhook]
url = "{gateway}/sms"
secret = "{secret}"

[delivery]
poll_interval_ms = 50
retry_base_ms = 100
retry_max_ms = 1000
"#,
            db = db.display(),
            gateway = gateway.uri(),
            secret = common::sms_gateway::SECRET,
        ),
    )
    .unwrap();

    // Two apps registered with the CLI: one releases at once, one after a 1-second wait.
    let mut apps = Vec::new();
    for (name, waiting) in [("Instant", false), ("Waiting", true)] {
        let key = AppSigningKey::generate("k1");
        let id = run_ok(ghostkey(dir.path()).args([
            "app",
            "add",
            "--name",
            name,
            "--key-id",
            "k1",
            "--public-key",
            &key.public_key_b64(),
        ]));
        run_ok(ghostkey(dir.path()).args([
            "app",
            "policy",
            "set",
            &id,
            "--requests-per-address-per-minute",
            "100000",
            "--sends-per-destination-per-hour",
            "100",
            "--sends-per-destination-per-day",
            "1000",
            "--waiting-period-secs",
            if waiting { "1" } else { "0" },
        ]));
        apps.push(App { id, key, waiting });
    }

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let shared = Arc::new(Shared {
        client: Client::new(&format!("http://127.0.0.1:{port}")).unwrap(),
        db: db.clone(),
        inbox,
        apps,
        ledger: Mutex::new(Ledger::default()),
        stop: AtomicBool::new(false),
        next_user: AtomicU64::new(0),
    });
    let mut daemon = Daemon {
        dir: dir.path().to_owned(),
        port,
        child: None,
        starts: 0,
    };
    daemon.start(&shared.client).await;

    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                while !shared.stop.load(Ordering::SeqCst) {
                    let n = shared.next_user.fetch_add(1, Ordering::SeqCst);
                    user_flow(&shared, n).await;
                }
            })
        })
        .collect();

    let rounds = rounds();
    let mut checked_chains = 0;
    for round in 1..=rounds {
        let load = rand::thread_rng().gen_range(300..1500);
        tokio::time::sleep(Duration::from_millis(load)).await;
        daemon.kill().await;
        let ledger = shared.ledger.lock().unwrap().clone();
        let (users, released) =
            check_database(dir.path(), &db, &ledger, &format!("after kill {round}"));
        let enrolled = ledger.enrolled;
        eprintln!(
            "kill {round}/{rounds} after {load} ms of load: {users} users and {released} \
             released recoveries on disk, {} enrolments acknowledged",
            enrolled.len()
        );
        daemon.start(&shared.client).await;
        check_chains(&shared, &enrolled[checked_chains..]).await;
        checked_chains = enrolled.len();
    }

    shared.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .expect("a client task hung")
            .unwrap();
    }
    let enrolled = shared.ledger.lock().unwrap().enrolled.clone();
    check_chains(&shared, &enrolled[checked_chains..]).await;
    daemon.stop().await;
    let ledger = shared.ledger.lock().unwrap().clone();
    let (users, released) = check_database(dir.path(), &db, &ledger, "at the end");

    let blobs: usize = ledger.blobs.values().sum();
    eprintln!(
        "{rounds} kills survived in {:.1} s: {} users started, {} enrolments acknowledged \
         ({users} on disk), {} confirmations acknowledged, {blobs} sealed blobs received for \
         {} recoveries ({released} released on disk), {} replays refused, {} requests \
         interrupted and sent again ({} of them carried out before the kill, answer lost), {} \
         flows cut short",
        started_at.elapsed().as_secs_f64(),
        shared.next_user.load(Ordering::SeqCst),
        ledger.enrolled.len(),
        ledger.confirmed.len(),
        ledger.blobs.len(),
        ledger.replays_refused,
        ledger.interrupted,
        ledger.lost_answers,
        ledger.abandoned,
    );
    assert!(
        ledger.surprises.is_empty(),
        "unexpected answers: {:#?}",
        ledger.surprises
    );
    assert!(
        ledger.interrupted > 0,
        "no kill landed on a request in flight"
    );
    assert!(!ledger.enrolled.is_empty() && !ledger.blobs.is_empty());
}
