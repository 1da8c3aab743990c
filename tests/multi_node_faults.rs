//! Several nodes, one database, under faults: three real `ghostkey serve` processes on one
//! PostgreSQL database, each with its outbox worker, their SMS going to one webhook gateway
//! (wiremock).
//!
//! 1. A thousand code messages queued over the three nodes (proof challenges of 20 users,
//!    50 each) are each delivered exactly once: every message reaches the gateway, and no
//!    `Idempotency-Key` (the outbox id, `src/delivery/webhook.rs`) arrives twice; nothing
//!    crashes, so a second delivery could only be two workers sending one message under
//!    overlapping leases.
//! 2. Under load (enrolments, first methods, their confirmations, recoveries and their
//!    releases, spread over the nodes), nodes are killed (SIGKILL) at random and restarted,
//!    and once PostgreSQL itself is stopped with `pg_ctl -m immediate` (a crash, on a
//!    cluster of the test's own) and started again. Every write that got a success answer
//!    is then found in the database, no recovery is released twice (in the answers or in
//!    the audit), every queued message reached the gateway (a message claimed by a killed
//!    node may arrive twice: its lease ends and another node sends it again), a request
//!    that failed failed as an outage does (no answer, or `unavailable`), never with a
//!    wrong answer, and once the nodes have linked every queued audit event the chain
//!    verifies (`ghostkey audit verify`).
//!
//! 3. A node frozen (SIGSTOP) in the middle of a send, past its lease: another node sends
//!    the message again only once the lease has ended, with the same `Idempotency-Key`.
//!    The frozen node, thawed while the other is still sending, finds its result refused
//!    (a stale finish: its lease token is no longer the message's), and the message ends
//!    as the second node recorded it.
//!
//! The nodes are started as `tests/multi_node.rs` starts them (`tests/common/nodes.rs`);
//! here a node can be killed and replaced while requests are under way.

mod common;
#[path = "common/nodes.rs"]
mod nodes;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::postgres::PgCluster;
use common::sms_gateway;
use ghostkey::domain::policy::PolicyChange;
use ghostkey::store::Store;
use ghostkey_client::proto::api::{ChallengePurpose, MethodKind, RecoveryState};
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::{Client, ClientError, UserSecret};
use nodes::{answer_name, codes_to, phone, App, Node};
use rand::Rng;
use wiremock::MockServer;

const NODES: usize = 3;

// ---------------------------------------------------------------------------------------
// The cluster.
// ---------------------------------------------------------------------------------------

struct Cluster {
    /// The nodes; a killed node's slot keeps its dead client until it is replaced.
    nodes: Mutex<Vec<Node>>,
    gateway: MockServer,
    store: Arc<dyn Store>,
    pg: &'static PgCluster,
    database: String,
    url: String,
    key_file: PathBuf,
    dir: tempfile::TempDir,
    next: AtomicUsize,
    spawned: AtomicUsize,
}

impl Cluster {
    async fn start(pg: &'static PgCluster) -> Arc<Cluster> {
        let gateway = sms_gateway::accepting().await;
        let dir = tempfile::tempdir().unwrap();
        let url = pg.new_database();
        let database = nodes::database_name(&url);
        let key_file = nodes::prepare(dir.path(), &url);
        let store = nodes::admin_store(&url);
        let c = Arc::new(Cluster {
            nodes: Mutex::new(Vec::new()),
            gateway,
            store,
            pg,
            database,
            url,
            key_file,
            dir,
            next: AtomicUsize::new(0),
            spawned: AtomicUsize::new(0),
        });
        let spawned: Vec<_> = (0..NODES).map(|_| c.spawn_node()).collect();
        for (child, log) in spawned {
            let node = nodes::wait_listening(child, log).await;
            c.nodes.lock().unwrap().push(node);
        }
        c
    }

    fn spawn_node(&self) -> (Child, PathBuf) {
        let n = self.spawned.fetch_add(1, Ordering::SeqCst);
        let log = self.dir.path().join(format!("node-{n}.log"));
        let child = nodes::spawn(
            self.dir.path(),
            &self.url,
            &self.key_file,
            &self.gateway,
            &log,
        );
        (child, log)
    }

    /// The client of node `i % NODES` (perhaps of a node just killed).
    fn node(&self, i: usize) -> Client {
        self.nodes.lock().unwrap()[i % NODES].client.clone()
    }

    fn next(&self) -> Client {
        self.node(self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// SIGKILLs node `i`.
    fn kill(&self, i: usize) {
        let mut nodes = self.nodes.lock().unwrap();
        let _ = nodes[i].child.kill();
        let _ = nodes[i].child.wait();
    }

    /// Starts a new node in slot `i` (whose node was killed).
    async fn replace(&self, i: usize) {
        let (child, log) = self.spawn_node();
        let node = nodes::wait_listening(child, log).await;
        self.nodes.lock().unwrap()[i] = node;
    }

    fn register_app(&self, name: &str) -> App {
        App::register(self.store.as_ref(), name)
    }

    fn set_policy(&self, app: &App, change: PolicyChange) {
        app.set_policy(self.store.as_ref(), change);
    }

    fn query_i64(&self, sql: &str) -> i64 {
        let text = self
            .pg
            .psql(&self.database, &format!("SELECT ({sql})::bigint"));
        text.parse()
            .unwrap_or_else(|_| panic!("`{sql}` gave `{text}`"))
    }

    fn query_texts(&self, sql: &str) -> Vec<String> {
        self.pg
            .psql(&self.database, sql)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Every node's log, all the nodes that ever ran.
    fn logs(&self) -> Vec<(String, String)> {
        (0..self.spawned.load(Ordering::SeqCst))
            .map(|n| {
                let name = format!("node-{n}.log");
                let text = std::fs::read_to_string(self.dir.path().join(&name)).unwrap_or_default();
                (name, text)
            })
            .collect()
    }

    /// Waits for the nodes to link every queued audit event, then verifies the chain.
    async fn audit_verified(&self, within: Duration) {
        common::wait_until("the nodes to link every queued audit event", within, || {
            (self.query_i64("SELECT count(*) FROM audit_pending") == 0).then_some(())
        })
        .await;
        nodes::run(
            nodes::ghostkey(self.dir.path(), &self.url)
                .env("GHOSTKEY_KEYS__DATA_KEY_FILE", &self.key_file)
                .args(["audit", "verify"]),
            "audit verify",
        );
    }

    /// Waits until no message is pending in the outbox.
    async fn outbox_settled(&self, within: Duration) {
        common::wait_until("the outbox to settle", within, || {
            (self.query_i64("SELECT count(*) FROM outbox WHERE state = 'pending'") == 0)
                .then_some(())
        })
        .await;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.get_mut().unwrap().iter_mut() {
            let _ = node.child.kill();
            let _ = node.child.wait();
        }
        if std::thread::panicking() {
            for (name, text) in self.logs() {
                let lines: Vec<&str> = text.lines().collect();
                eprintln!(
                    "--- {name}, last lines ---\n{}",
                    lines[lines.len().saturating_sub(15)..].join("\n")
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Apps, users, codes.
// ---------------------------------------------------------------------------------------

/// Every limit but the ones below out of the way (every request comes from 127.0.0.1).
fn open_policy() -> PolicyChange {
    PolicyChange {
        requests_per_address_per_minute: Some(100_000),
        code_checks_per_app_per_minute: Some(1_000_000),
        sends_per_destination_per_hour: Some(100),
        sends_per_destination_per_day: Some(1000),
        app_daily_send_budget: Some(10_000_000),
        recovery_starts_per_user_per_day: Some(20),
        waiting_period_secs: Some(0),
        ..Default::default()
    }
}

/// The one code message to `to` not among `before`, within `within`; `None` when none came
/// (or several did, which the callers' one-message-per-step flows rule out).
async fn new_code(
    gateway: &MockServer,
    to: &str,
    before: &BTreeMap<i64, String>,
    within: Duration,
) -> Option<String> {
    let deadline = Instant::now() + within;
    loop {
        let now = codes_to(gateway, to).await;
        let fresh: Vec<&String> = now
            .iter()
            .filter(|(id, _)| !before.contains_key(id))
            .map(|(_, c)| c)
            .collect();
        if fresh.len() == 1 {
            return Some(fresh[0].clone());
        }
        assert!(fresh.len() < 2, "several new code messages to {to}");
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Enrols `user` and adds and confirms the phone `number`; the method's id.
async fn enrol_with_phone(c: &Cluster, app: &App, user: &str, number: &str) -> String {
    ghostkey_client::enroll(
        &c.next(),
        &app.assertion(user, Purpose::Enroll),
        &UserSecret::generate(),
        &app.id,
        user,
        &app.key,
    )
    .await
    .unwrap();
    let before = codes_to(&c.gateway, number).await;
    let added = c
        .next()
        .add_method(
            &app.assertion(user, Purpose::Enroll),
            MethodKind::Sms,
            Some(number),
            None,
        )
        .await
        .unwrap();
    // Generous: a loaded CI machine runs other test binaries (and their clusters) at once.
    let code = new_code(&c.gateway, number, &before, Duration::from_secs(60))
        .await
        .expect("no confirmation code");
    c.next().answer(&added.challenge.id, &code).await.unwrap();
    added.method.id
}

// ---------------------------------------------------------------------------------------
// 1. A thousand messages, a worker on every node: each delivered once.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_messages_with_a_worker_on_every_node_are_each_delivered_once() {
    const USERS: u32 = 20;
    const PER_USER: usize = 50; // under the destination's 100 sends an hour
    const MESSAGES: usize = USERS as usize * PER_USER;
    let started_at = Instant::now();
    let c = Cluster::start(common::postgres::shared()).await;
    let app = c.register_app("Bulk");
    c.set_policy(&app, open_policy());
    let mut setup = Vec::new();
    for u in 0..USERS {
        let (c, app) = (Arc::clone(&c), app.clone());
        setup.push(tokio::spawn(async move {
            let user = format!("u{u}");
            let method = enrol_with_phone(&c, &app, &user, &phone(u + 1)).await;
            (user, method)
        }));
    }
    let mut users = Vec::new();
    for t in setup {
        users.push(t.await.unwrap());
    }
    let before = c.query_i64("SELECT count(*) FROM outbox");
    let setup_secs = started_at.elapsed().as_secs_f64();

    // 1,000 proof challenges, round-robin over the nodes, 48 at a time.
    let queued_at = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(48));
    let mut jobs = Vec::new();
    for i in 0..MESSAGES {
        let (user, method) = users[i % users.len()].clone();
        let (client, token) = (c.node(i), app.assertion(&user, Purpose::Manage));
        let gate = Arc::clone(&gate);
        jobs.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            client
                .start_challenge(&token, &method, ChallengePurpose::Proof)
                .await
        }));
    }
    let mut failures = BTreeMap::new();
    for j in jobs {
        let r = j.await.unwrap();
        if r.is_err() {
            *failures.entry(answer_name(&r)).or_insert(0) += 1;
        }
    }
    assert!(failures.is_empty(), "challenges refused: {failures:?}");
    let queue_secs = queued_at.elapsed().as_secs_f64();
    assert_eq!(
        c.query_i64("SELECT count(*) FROM outbox") - before,
        MESSAGES as i64,
        "messages queued"
    );

    c.outbox_settled(Duration::from_secs(60)).await;
    let settled_secs = queued_at.elapsed().as_secs_f64();
    assert_eq!(
        c.query_i64("SELECT count(*) FROM outbox WHERE state <> 'sent'"),
        0,
        "every message sent"
    );
    let sent: BTreeSet<String> = c
        .query_texts("SELECT id FROM outbox ORDER BY id")
        .into_iter()
        .collect();
    assert_eq!(sent.len(), MESSAGES + before as usize);

    // What the gateway received: each key once, and the keys are exactly the outbox ids.
    let requests = c.gateway.received_requests().await.unwrap();
    let mut keys: BTreeMap<String, usize> = BTreeMap::new();
    for r in &requests {
        let key = r
            .headers
            .get("idempotency-key")
            .expect("a webhook request without Idempotency-Key")
            .to_str()
            .unwrap()
            .to_owned();
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["id"].to_string(), key, "the key is the message id");
        *keys.entry(key).or_insert(0) += 1;
    }
    let twice: Vec<_> = keys.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} messages delivered more than once: {twice:?}",
        twice.len()
    );
    let received: BTreeSet<String> = keys.keys().cloned().collect();
    assert_eq!(
        received, sent,
        "the gateway got exactly the outbox's messages"
    );
    assert_eq!(
        c.query_i64("SELECT coalesce(sum(attempts), 0) FROM outbox"),
        sent.len() as i64,
        "one attempt each"
    );
    // No send outlasted its lease, no node logged an error; which node sent what.
    let mut by_log = Vec::new();
    for (name, text) in c.logs() {
        let bad: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.contains("outlasted its lease")
                    || l.contains("\"level\":\"ERROR\"")
                    || l.contains("panicked")
            })
            .collect();
        assert!(bad.is_empty(), "{name}: {bad:#?}");
        by_log.push(text.matches("\"message sent\"").count());
    }
    c.audit_verified(Duration::from_secs(30)).await;
    eprintln!(
        "{MESSAGES} messages: setup {setup_secs:.1} s, queued in {queue_secs:.1} s, all sent \
         {settled_secs:.1} s after the first was queued; sent per node {by_log:?}; \
         {:.1} s in all",
        started_at.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------
// 2. Crashes under load.
// ---------------------------------------------------------------------------------------

/// What got a success answer.
#[derive(Default)]
struct Acked {
    enrolled: Vec<String>,
    /// (user, method id)
    methods_added: Vec<(String, String)>,
    methods_confirmed: Vec<String>,
    recoveries_started: Vec<String>,
    /// Each success answer of a release, by recovery (two would be a double release).
    released: BTreeMap<String, usize>,
    /// Requests that failed, by answer.
    failed: BTreeMap<String, usize>,
}

impl Acked {
    fn fail<T>(&mut self, step: &str, r: &Result<T, ClientError>) {
        // An API answer other than `unavailable` with its detail, for the report.
        let name = match r {
            Err(ClientError::Api { problem, .. }) if problem.code != "unavailable" => {
                format!("{} ({:?})", problem.code, problem.detail)
            }
            Err(ClientError::Api { .. }) | Ok(_) => answer_name(r),
            Err(_) => "transport error".to_owned(),
        };
        *self.failed.entry(format!("{step}: {name}")).or_insert(0) += 1;
    }
}

/// One user's life, each step on a random node; stops at the first step that fails.
async fn one_user(c: &Cluster, app: &App, user: &str, number: &str, acked: &Mutex<Acked>) {
    let pick = || c.node(rand::thread_rng().gen_range(0..NODES));
    let r = ghostkey_client::enroll(
        &pick(),
        &app.assertion(user, Purpose::Enroll),
        &UserSecret::generate(),
        &app.id,
        user,
        &app.key,
    )
    .await;
    if r.is_err() {
        return acked.lock().unwrap().fail("enrol", &r);
    }
    acked.lock().unwrap().enrolled.push(user.to_owned());

    let before = codes_to(&c.gateway, number).await;
    let r = pick()
        .add_method(
            &app.assertion(user, Purpose::Enroll),
            MethodKind::Sms,
            Some(number),
            None,
        )
        .await;
    let added = match r {
        Ok(a) => a,
        Err(_) => return acked.lock().unwrap().fail("add method", &r),
    };
    let method = added.method.id.clone();
    acked
        .lock()
        .unwrap()
        .methods_added
        .push((user.to_owned(), method.clone()));
    // A message claimed by a killed node goes again once its 5-second lease ends.
    let Some(code) = new_code(&c.gateway, number, &before, Duration::from_secs(30)).await else {
        *acked
            .lock()
            .unwrap()
            .failed
            .entry("confirmation code never came".into())
            .or_insert(0) += 1;
        return;
    };
    let r = pick().answer(&added.challenge.id, &code).await;
    if r.is_err() {
        return acked.lock().unwrap().fail("confirm", &r);
    }
    acked.lock().unwrap().methods_confirmed.push(method.clone());

    let before = codes_to(&c.gateway, number).await;
    let r = pick()
        .start_recovery(&app.assertion(user, Purpose::Recover), &method)
        .await;
    let recovery = match r {
        Ok(r) => r,
        Err(_) => return acked.lock().unwrap().fail("start recovery", &r),
    };
    acked
        .lock()
        .unwrap()
        .recoveries_started
        .push(recovery.id.clone());
    let Some(code) = new_code(&c.gateway, number, &before, Duration::from_secs(30)).await else {
        *acked
            .lock()
            .unwrap()
            .failed
            .entry("recovery code never came".into())
            .or_insert(0) += 1;
        return;
    };
    // The right code, sent again after a failure that was not an answer (the first may
    // have been applied): at most one success, ever.
    for _ in 0..3 {
        let r = pick().verify_recovery(&recovery.id, &code).await;
        match &r {
            Ok(answer) => {
                assert_eq!(answer.state, RecoveryState::Released, "{user}");
                *acked
                    .lock()
                    .unwrap()
                    .released
                    .entry(recovery.id.clone())
                    .or_insert(0) += 1;
                // And once more: the code is spent.
                let again = pick().verify_recovery(&recovery.id, &code).await;
                if again.is_ok() {
                    *acked
                        .lock()
                        .unwrap()
                        .released
                        .entry(recovery.id.clone())
                        .or_insert(0) += 1;
                }
                return;
            }
            Err(ClientError::Api { .. }) => {
                acked.lock().unwrap().fail("verify recovery", &r);
                return;
            }
            Err(_) => {
                acked.lock().unwrap().fail("verify recovery", &r);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crashes_under_load_lose_no_acknowledged_write() {
    const LOAD_FOR: Duration = Duration::from_secs(24);
    const WORKERS: u32 = 12;
    let started_at = Instant::now();
    // A cluster of the test's own: it is crashed once.
    let parent = tempfile::tempdir().unwrap().keep();
    let pg: &'static PgCluster = Box::leak(Box::new(PgCluster::start_in(&parent, "")));
    for _ in 0..50 {
        if std::net::TcpStream::connect(("127.0.0.1", pg.port)).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let c = Cluster::start(pg).await;
    let app = c.register_app("Crashy");
    c.set_policy(&app, open_policy());

    let acked = Arc::new(Mutex::new(Acked::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for w in 0..WORKERS {
        let (c, app, acked, stop) = (
            Arc::clone(&c),
            app.clone(),
            Arc::clone(&acked),
            Arc::clone(&stop),
        );
        load.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                let user = format!("w{w}-{n}");
                one_user(&c, &app, &user, &phone(w * 10_000 + n), &acked).await;
                n += 1;
                // A node or the database down answers at once: no busy loop meanwhile.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }

    // The faults: a node killed and restarted every 2 to 4 seconds, and once, at about a
    // third of the run, PostgreSQL crashed and started again.
    let mut kills = 0;
    let mut pg_crashed = false;
    let load_started = Instant::now();
    while load_started.elapsed() < LOAD_FOR {
        let wait = rand::thread_rng().gen_range(2000..4000);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        if !pg_crashed && load_started.elapsed() > LOAD_FOR / 3 {
            pg_crashed = true;
            eprintln!(
                "{:.1} s: PostgreSQL stopped -m immediate",
                started_at.elapsed().as_secs_f64()
            );
            pg.pg_ctl_stop("immediate");
            tokio::time::sleep(Duration::from_millis(1500)).await;
            pg.pg_ctl_start();
            eprintln!(
                "{:.1} s: PostgreSQL started",
                started_at.elapsed().as_secs_f64()
            );
            continue;
        }
        let victim = rand::thread_rng().gen_range(0..NODES);
        c.kill(victim);
        kills += 1;
        // Sometimes at once, sometimes after a moment of two nodes.
        if rand::thread_rng().gen_bool(0.5) {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        c.replace(victim).await;
    }
    assert!(pg_crashed);
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.await.unwrap();
    }
    let load_secs = started_at.elapsed().as_secs_f64();

    // Every node alive, everything settled.
    c.outbox_settled(Duration::from_secs(60)).await;
    c.audit_verified(Duration::from_secs(60)).await;

    let acked = std::mem::take(&mut *acked.lock().unwrap());
    let in_db = |sql: &str| -> BTreeSet<String> { c.query_texts(sql).into_iter().collect() };
    let users = in_db(&format!(
        "SELECT user_id FROM users WHERE app_id = '{}'",
        app.id
    ));
    let methods = in_db("SELECT id FROM methods");
    let confirmed = in_db("SELECT id FROM methods WHERE state = 'confirmed'");
    let recoveries = in_db("SELECT challenge_id FROM recoveries");
    let released = in_db("SELECT challenge_id FROM recoveries WHERE state = 'released'");
    let lost = |what: &str, acked: Vec<&String>, found: &BTreeSet<String>| {
        let missing: Vec<&&String> = acked.iter().filter(|x| !found.contains(**x)).collect();
        assert!(
            missing.is_empty(),
            "acknowledged {what} lost: {missing:?} ({} acknowledged)",
            acked.len()
        );
    };
    lost("enrolments", acked.enrolled.iter().collect(), &users);
    lost(
        "method additions",
        acked.methods_added.iter().map(|(_, m)| m).collect(),
        &methods,
    );
    lost(
        "method confirmations",
        acked.methods_confirmed.iter().collect(),
        &confirmed,
    );
    lost(
        "recovery starts",
        acked.recoveries_started.iter().collect(),
        &recoveries,
    );
    lost("releases", acked.released.keys().collect(), &released);
    let twice: Vec<_> = acked.released.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "recoveries released twice: {twice:?}");
    // The audit: one `recovery_released` event per released recovery, none twice.
    assert_eq!(
        c.query_i64(&format!(
            "SELECT count(*) FROM audit_events WHERE kind = 'recovery_released' AND app_id = '{}'",
            app.id
        )),
        released.len() as i64,
        "recovery_released audit events"
    );
    assert_eq!(
        c.query_i64("SELECT count(*) FROM recoveries WHERE released_at IS NOT NULL"),
        released.len() as i64
    );
    // A failure is a node or the database away (no answer, or `unavailable`), or a code
    // re-sent after no answer that the first sending had spent: never a wrong answer to a
    // valid request.
    let wrong: Vec<_> = acked
        .failed
        .iter()
        .filter(|(what, _)| {
            !what.ends_with(": transport error")
                && !what.ends_with(": unavailable")
                && !what.starts_with("verify recovery: code_already_used")
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "valid requests refused under faults: {wrong:?} (all failures: {:?})",
        acked.failed
    );
    // Every queued message went out, at least once: a message claimed by a killed node
    // goes again when its lease ends, so a second delivery is allowed here (counted).
    assert_eq!(
        c.query_i64("SELECT count(*) FROM outbox WHERE state <> 'sent'"),
        0,
        "messages not sent"
    );
    let mut deliveries: BTreeMap<String, usize> = BTreeMap::new();
    for r in c.gateway.received_requests().await.unwrap() {
        let key = r.headers.get("idempotency-key").unwrap().to_str().unwrap();
        *deliveries.entry(key.to_owned()).or_insert(0) += 1;
    }
    let queued = in_db("SELECT id FROM outbox");
    let received: BTreeSet<String> = deliveries.keys().cloned().collect();
    assert_eq!(
        received, queued,
        "the gateway got exactly the outbox's messages"
    );
    let again = deliveries.values().filter(|n| **n > 1).count();
    let panics: Vec<String> = c
        .logs()
        .into_iter()
        .filter(|(_, t)| t.contains("panicked"))
        .map(|(n, _)| n)
        .collect();
    assert!(panics.is_empty(), "nodes panicked: {panics:?}");
    eprintln!(
        "{kills} node kills and one PostgreSQL crash; acknowledged: {} enrolments, {} methods \
         added, {} confirmed, {} recoveries started, {} released; failed requests: {:?}; \
         {} messages, {again} delivered more than once; load {load_secs:.1} s, {:.1} s in all",
        acked.enrolled.len(),
        acked.methods_added.len(),
        acked.methods_confirmed.len(),
        acked.recoveries_started.len(),
        acked.released.len(),
        acked.failed,
        queued.len(),
        started_at.elapsed().as_secs_f64()
    );
    c.nodes.lock().unwrap().iter_mut().for_each(|n| {
        let _ = n.child.kill();
        let _ = n.child.wait();
    });
    pg.pg_ctl_stop("fast");
    let _ = std::fs::remove_dir_all(&parent);
}

// ---------------------------------------------------------------------------------------
// 3. A node frozen mid-send.
// ---------------------------------------------------------------------------------------

/// Sends a signal to a process (`STOP`, `CONT`).
fn signal(child: &Child, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name}");
}

/// The requests the gateway received on `route`.
async fn requests_on(gateway: &MockServer, route: &str) -> Vec<wiremock::Request> {
    gateway
        .received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.url.path() == route)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_frozen_mid_send_is_overtaken_only_after_its_lease_and_its_late_result_is_refused() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, ResponseTemplate};

    let pg = common::postgres::shared();
    let dir = tempfile::tempdir().unwrap();
    let url = pg.new_database();
    let database = nodes::database_name(&url);
    let key_file = nodes::prepare(dir.path(), &url);
    let store = nodes::admin_store(&url);
    // Each node sends to a route of its own, so the gateway tells who sent what. Answers
    // come after 1.5 s (within the 2 s send timeout): long enough to freeze node A while
    // it waits, and to thaw it while node B waits. Once the set-up is done, node A's are
    // refusals for good: had its late result been recorded, the message would end
    // `failed`.
    let gateway = MockServer::start().await;
    let a_log = dir.path().join("node-a.log");
    let b_log = dir.path().join("node-b.log");
    let node = |log: &std::path::Path, route: &str| {
        nodes::spawn_with(
            dir.path(),
            &url,
            &key_file,
            &gateway,
            log,
            &[(
                "GHOSTKEY_SMS__WEBHOOK__URL",
                format!("{}{route}", gateway.uri()),
            )],
        )
    };
    Mock::given(method("POST"))
        .and(path("/sms/b"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_millis(1500)))
        .mount(&gateway)
        .await;
    let setup_answers = Mock::given(method("POST"))
        .and(path("/sms/a"))
        .respond_with(ResponseTemplate::new(200))
        .mount_as_scoped(&gateway)
        .await;
    let mut a = nodes::wait_listening(node(&a_log, "/sms/a"), a_log.clone()).await;
    let app = App::register(store.as_ref(), "Clinic");
    app.set_policy(store.as_ref(), open_policy());
    let number = phone(1);
    // Set-up through node A alone: enrolment, a phone, its confirmation.
    ghostkey_client::enroll(
        &a.client,
        &app.assertion("patient", Purpose::Enroll),
        &UserSecret::generate(),
        &app.id,
        "patient",
        &app.key,
    )
    .await
    .unwrap();
    let added = a
        .client
        .add_method(
            &app.assertion("patient", Purpose::Enroll),
            MethodKind::Sms,
            Some(&number),
            None,
        )
        .await
        .unwrap();
    let code = new_code(&gateway, &number, &BTreeMap::new(), Duration::from_secs(60))
        .await
        .expect("no confirmation code");
    a.client.answer(&added.challenge.id, &code).await.unwrap();
    drop(setup_answers);
    Mock::given(method("POST"))
        .and(path("/sms/a"))
        .respond_with(ResponseTemplate::new(400).set_delay(Duration::from_millis(1500)))
        .mount(&gateway)
        .await;

    // A recovery's code message: node A claims it and sends it; it is frozen while it
    // waits for the gateway's answer.
    let sent_before = requests_on(&gateway, "/sms/a").await.len();
    let queued_at = Instant::now();
    a.client
        .start_recovery(
            &app.assertion("patient", Purpose::Recover),
            &added.method.id,
        )
        .await
        .unwrap();
    requests_past(&gateway, "/sms/a", sent_before, "node A to send the code").await;
    signal(&a.child, "STOP");
    let frozen_at = Instant::now();
    let message_id: i64 = pg
        .psql(&database, "SELECT max(id) FROM outbox")
        .parse()
        .unwrap();
    assert_eq!(
        pg.psql(
            &database,
            &format!("SELECT state FROM outbox WHERE id = {message_id}")
        ),
        "pending"
    );

    // Node B starts; the message is A's until A's lease (5 s from its claim) ends.
    let mut b = nodes::wait_listening(node(&b_log, "/sms/b"), b_log.clone()).await;
    let lease = Duration::from_secs(5);
    requests_past(&gateway, "/sms/b", 0, "node B to send the message again").await;
    let overtaken_at = Instant::now();
    assert!(
        overtaken_at >= queued_at + lease,
        "node B sent the message {} ms after it was queued, within node A's lease",
        (overtaken_at - queued_at).as_millis()
    );
    // Node A thaws while node B waits for the gateway under its own lease: A's result
    // (the gateway's refusal) comes now, with A's lease token, and must not be recorded.
    assert!(frozen_at.elapsed() > lease);
    signal(&a.child, "CONT");
    common::wait_until(
        "node A to report its late result",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&a_log)
                .unwrap_or_default()
                .contains("a send outlasted its lease")
                .then_some(())
        },
    )
    .await;
    common::wait_until("node B to record the send", Duration::from_secs(30), || {
        (pg.psql(
            &database,
            &format!("SELECT state FROM outbox WHERE id = {message_id}"),
        ) != "pending")
            .then_some(())
    })
    .await;
    assert_eq!(
        pg.psql(
            &database,
            &format!("SELECT state || ' ' || attempts FROM outbox WHERE id = {message_id}")
        ),
        "sent 1",
        "node A's stale result was recorded"
    );
    // The same message, twice, under one idempotency key (the outbox id).
    let keys: Vec<String> = [
        requests_on(&gateway, "/sms/a")
            .await
            .last()
            .cloned()
            .unwrap(),
        requests_on(&gateway, "/sms/b").await[0].clone(),
    ]
    .iter()
    .map(|r| {
        r.headers
            .get("idempotency-key")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    })
    .collect();
    assert_eq!(keys, vec![message_id.to_string(), message_id.to_string()]);
    let _ = a.child.kill();
    let _ = a.child.wait();
    let _ = b.child.kill();
    let _ = b.child.wait();
}

/// Waits (up to 60 s) until the gateway has received more than `count` requests on `route`.
async fn requests_past(gateway: &MockServer, route: &str, count: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while requests_on(gateway, route).await.len() <= count {
        assert!(Instant::now() < deadline, "waited 60 s for {what}, in vain");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
