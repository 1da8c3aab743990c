//! Several nodes, one database: three real `ghostkey serve` processes on one PostgreSQL
//! database, with no single writer between them, and the races that only exist then.
//!
//! Every test starts its own cluster: a fresh database on the shared test PostgreSQL
//! (`tests/common/postgres.rs`; a missing PostgreSQL fails the test, it never skips), its
//! schema created by `ghostkey db migrate`, one data key file (`ghostkey keys generate`)
//! shared by every node, and three `ghostkey serve` processes configured through
//! `GHOSTKEY_*` variables alone (`tests/common/nodes.rs`), their SMS going to one webhook gateway (wiremock) and their
//! outbox workers and audit linkers all running. Apps are registered and their policies set
//! through the admin code path on the same database. Each attack is fired all at once, its
//! requests spread round-robin over the three nodes, and its outcome is checked exactly,
//! on the answers and in the database:
//!
//! 1. 50 right codes for one recovery (SMS), and the same TOTP code 50 times over five
//!    recoveries of one authenticator: exactly one release of the sealed virtual device
//!    (which opens to the enrolled device), `code_already_used` for every other answer, and
//!    exactly one `recovery_released` audit event each.
//! 2. 200 wrong guesses over five recovery challenges (three by SMS, two by TOTP) of one
//!    user: no challenge counts more than its cap, exactly `user_lock_threshold` guesses are
//!    checked (the challenges' attempts, the user's failure count and failure rows, the
//!    audit agree), the user is locked at exactly that count, and nothing is released.
//! 3. One assertion (one `jti`) sent 20 times, to a read (`GET /v1/methods`) and to a write
//!    (`POST /v1/recoveries`): exactly one success, `assertion_replayed` for the rest, and
//!    the write happened once (one recovery, one code, one unit of the daily start limit).
//! 4. 10 appends built on one chain head, five times over: exactly one lands each time, the
//!    rest are `chain_fork`, and every node serves the same chain.
//! 5. Release racing cancel, 50 times through the release endpoint (after a waiting period)
//!    and 30 times through a verified code (no waiting period): never both, always one, and
//!    the stored states and audit events match the answers.
//! 6. Parallel removals of a user's last two confirmed methods (each with its own valid
//!    proof), for eight users: exactly one removal succeeds, the other is `last_method`, and
//!    one confirmed method remains.
//! 7. Limits at max − 1 with 50 parallel requests: the per-address request limit, and the
//!    app's daily send budget (25 users asking for 50 codes): exactly one passes.
//!
//! At the end of every test the audit events queued by all the nodes are linked, the chain
//! verifies (`ghostkey audit verify`), and no node logged an error. The nodes run at the
//! isolation level the other PostgreSQL tests use (`GHOSTKEY_TEST_PG_ISOLATION`, read
//! committed by default).

mod common;
#[path = "common/nodes.rs"]
mod nodes;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::sms_gateway;
use ghostkey::domain::policy::PolicyChange;
use ghostkey::store::Store;
use ghostkey_client::chain::add_device;
use ghostkey_client::proto::api::{
    ChallengePurpose, MethodKind, MethodState, Proof, RecoveryResponse, RecoveryState,
};
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::proto::b64;
use ghostkey_client::proto::chain::{verify_chain, ChainState};
use ghostkey_client::{Client, ClientError, DeviceKeys, Enrolled, UserSecret, VirtualDevice};
use nodes::{answer_name, codes_to, phone, unix_now, App, Node};
use rand::Rng;
use wiremock::MockServer;

/// Nodes per cluster.
const NODES: usize = 3;

/// Clusters running at once, whatever `--test-threads` says: each is three servers under a
/// load of hundreds of requests, and more of them than the machine runs would stall
/// requests past the servers' timeouts (408 on a request head that took too long).
static CLUSTERS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

// ---------------------------------------------------------------------------------------
// The cluster: one database, one data key, three `ghostkey serve` processes.
// ---------------------------------------------------------------------------------------

struct Cluster {
    nodes: Vec<Node>,
    /// The SMS gateway every node sends to.
    gateway: MockServer,
    /// The same database, as the admin commands open it.
    store: Arc<dyn Store>,
    /// The database's name on the shared test cluster.
    database: String,
    url: String,
    key_file: PathBuf,
    dir: tempfile::TempDir,
    /// Round-robin over the nodes for the requests of the setup.
    next: AtomicUsize,
    _turn: tokio::sync::SemaphorePermit<'static>,
}

impl Cluster {
    async fn start() -> Arc<Cluster> {
        let turn = CLUSTERS.acquire().await.unwrap();
        let gateway = sms_gateway::accepting().await;
        let dir = tempfile::tempdir().unwrap();
        let url = common::postgres::shared().new_database();
        let database = nodes::database_name(&url);
        let key_file = nodes::prepare(dir.path(), &url);
        let mut spawned = Vec::new();
        for i in 0..NODES {
            let log = dir.path().join(format!("node-{i}.log"));
            let child = nodes::spawn(dir.path(), &url, &key_file, &gateway, &log);
            spawned.push((child, log));
        }
        let mut booted = Vec::new();
        for (child, log) in spawned {
            booted.push(nodes::wait_listening(child, log).await);
        }
        let store = nodes::admin_store(&url);
        Arc::new(Cluster {
            nodes: booted,
            gateway,
            store,
            database,
            url,
            key_file,
            dir,
            next: AtomicUsize::new(0),
            _turn: turn,
        })
    }

    /// The client of node `i % NODES`.
    fn node(&self, i: usize) -> Client {
        self.nodes[i % NODES].client.clone()
    }

    /// The next node, round-robin.
    fn next(&self) -> Client {
        self.node(self.next.fetch_add(1, Ordering::Relaxed))
    }

    fn register_app(&self, name: &str) -> App {
        App::register(self.store.as_ref(), name)
    }

    fn set_policy(&self, app: &App, change: PolicyChange) {
        app.set_policy(self.store.as_ref(), change);
    }

    /// One integer, read straight from the database.
    fn query_i64(&self, sql: &str) -> i64 {
        let text =
            common::postgres::shared().psql(&self.database, &format!("SELECT ({sql})::bigint"));
        text.parse()
            .unwrap_or_else(|_| panic!("`{sql}` gave `{text}`"))
    }

    /// Audit events of `kind`, linked or still queued, read in one statement (one snapshot:
    /// an event being linked meanwhile is counted once).
    fn audit_count(&self, kind: &str, app: &App) -> i64 {
        self.query_i64(&format!(
            "SELECT (SELECT count(*) FROM audit_events WHERE kind = '{kind}' AND app_id = '{app}') \
             + (SELECT count(*) FROM audit_pending WHERE kind = '{kind}' AND app_id = '{app}')",
            app = app.id
        ))
    }

    /// The end of every test: the nodes link every queued audit event, the whole chain
    /// verifies, and no node logged an error.
    async fn finish(&self) {
        common::wait_until(
            "the nodes to link every queued audit event",
            Duration::from_secs(20),
            || (self.query_i64("SELECT count(*) FROM audit_pending") == 0).then_some(()),
        )
        .await;
        nodes::run(
            nodes::ghostkey(self.dir.path(), &self.url)
                .env("GHOSTKEY_KEYS__DATA_KEY_FILE", &self.key_file)
                .args(["audit", "verify"]),
            "audit verify",
        );
        for (i, node) in self.nodes.iter().enumerate() {
            let text = std::fs::read_to_string(&node.log).unwrap();
            let errors: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("\"level\":\"ERROR\"") || l.contains("panicked"))
                .collect();
            assert!(errors.is_empty(), "node {i} logged errors: {errors:#?}");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (i, node) in self.nodes.iter_mut().enumerate() {
            let _ = node.child.kill();
            let _ = node.child.wait();
            if std::thread::panicking() {
                let text = std::fs::read_to_string(&node.log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!(
                    "--- node {i}, last lines of its log ---\n{}",
                    lines[lines.len().saturating_sub(30)..].join("\n")
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Apps, users, codes.
// ---------------------------------------------------------------------------------------

fn unix_now_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Sleeps, if need be, into the next `window`-second window (aligned on the epoch, as the
/// rate windows and TOTP steps are), so that at least `margin` seconds of the window are
/// left for what follows.
async fn leave_room_in_window(window: i64, margin: f64) {
    let into = unix_now_f64().rem_euclid(window as f64);
    let left = window as f64 - into;
    if left < margin {
        tokio::time::sleep(Duration::from_secs_f64(left + 0.2)).await;
    }
}

/// A policy under which the limits that are not the subject of a test stay out of its way
/// (every request of the tests comes from 127.0.0.1).
fn open_policy(change: PolicyChange) -> PolicyChange {
    PolicyChange {
        requests_per_address_per_minute: Some(100_000),
        code_checks_per_app_per_minute: Some(1_000_000),
        sends_per_destination_per_hour: Some(100),
        sends_per_destination_per_day: Some(1000),
        recovery_starts_per_user_per_day: Some(20),
        ..change
    }
}

/// Fires every future at once (each on its own task) and returns their outputs in order.
async fn all_at_once<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// How many answers of each name.
fn tally<'a, T: 'a>(
    results: impl IntoIterator<Item = &'a Result<T, ClientError>>,
) -> BTreeMap<String, usize> {
    let mut t = BTreeMap::new();
    for r in results {
        *t.entry(answer_name(r)).or_insert(0) += 1;
    }
    t
}

fn expected(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| ((*k).to_owned(), *n))
        .collect()
}

/// Waits for the one code message to `to` that is not among `before`; its code.
async fn new_code(gateway: &MockServer, to: &str, before: &BTreeMap<i64, String>) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = codes_to(gateway, to).await;
        let fresh: Vec<(&i64, &String)> = now
            .iter()
            .filter(|(id, _)| !before.contains_key(id))
            .collect();
        match fresh.len() {
            0 => {}
            1 => return fresh[0].1.clone(),
            _ => panic!("expected one new code message to {to}, got {fresh:?}"),
        }
        assert!(Instant::now() < deadline, "no new code message to {to}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn enrol(c: &Cluster, app: &App, user: &str) -> (UserSecret, Enrolled) {
    let secret = UserSecret::generate();
    let enrolled = ghostkey_client::enroll(
        &c.next(),
        &app.assertion(user, Purpose::Enroll),
        &secret,
        &app.id,
        user,
        &app.key,
    )
    .await
    .unwrap();
    (secret, enrolled)
}

/// A proof through the confirmed SMS method `method` (at `number`), opened with `purpose`.
async fn sms_proof(
    c: &Cluster,
    app: &App,
    user: &str,
    (method, number): (&str, &str),
    purpose: Purpose,
) -> Proof {
    let before = codes_to(&c.gateway, number).await;
    let challenge = c
        .next()
        .start_challenge(
            &app.assertion(user, purpose),
            method,
            ChallengePurpose::Proof,
        )
        .await
        .unwrap();
    Proof {
        challenge_id: challenge.id,
        code: Some(new_code(&c.gateway, number, &before).await),
        webauthn: None,
    }
}

/// Adds the phone `number` to `user` and confirms it with the code sent there: the first
/// method with an `enroll` assertion, a later one with a `manage` assertion and a proof
/// through `through` (a confirmed SMS method and its number). The method's id.
async fn add_phone(
    c: &Cluster,
    app: &App,
    user: &str,
    number: &str,
    through: Option<(&str, &str)>,
) -> String {
    let (purpose, proof) = match through {
        None => (Purpose::Enroll, None),
        Some(by) => (
            Purpose::Manage,
            Some(sms_proof(c, app, user, by, Purpose::Manage).await),
        ),
    };
    let before = codes_to(&c.gateway, number).await;
    let added = c
        .next()
        .add_method(
            &app.assertion(user, purpose),
            MethodKind::Sms,
            Some(number),
            proof,
        )
        .await
        .unwrap();
    let code = new_code(&c.gateway, number, &before).await;
    c.next().answer(&added.challenge.id, &code).await.unwrap();
    added.method.id
}

/// Adds an authenticator app to `user` with a proof through their phone, and confirms it
/// with the code of the previous 30-second step, so that the current step's code is
/// still free for a recovery. The method's id and the authenticator.
async fn add_totp(
    c: &Cluster,
    app: &App,
    user: &str,
    through: (&str, &str),
) -> (String, totp_rs::Totp) {
    let proof = sms_proof(c, app, user, through, Purpose::Manage).await;
    let added = c
        .next()
        .add_method(
            &app.assertion(user, Purpose::Manage),
            MethodKind::Totp,
            None,
            Some(proof),
        )
        .await
        .unwrap();
    let authenticator = totp_rs::Totp::from_url(&added.totp.unwrap().otpauth_uri).unwrap();
    // The previous step stays acceptable until the current one ends: leave it time.
    leave_room_in_window(30, 6.0).await;
    let previous = authenticator.generate((unix_now() - 30) as u64).to_string();
    c.next()
        .answer(&added.challenge.id, &previous)
        .await
        .unwrap();
    (added.method.id, authenticator)
}

/// The sealed virtual device of a release, opened with the user secret.
fn opened(answer: &RecoveryResponse, secret: &UserSecret, app: &App, user: &str) -> VirtualDevice {
    assert_eq!(answer.state, RecoveryState::Released);
    let blob = b64::decode(answer.sealed_virtual_device.as_deref().unwrap()).unwrap();
    VirtualDevice::open(&blob, secret, &app.id, user, 1).unwrap()
}

fn pinned(app: &App) -> impl Fn(&str) -> Option<[u8; 32]> + '_ {
    move |kid| (kid == app.key.kid()).then(|| app.key.public_key())
}

async fn chain_state(client: &Client, app: &App, user: &str) -> ChainState {
    let blocks = client
        .chain(&app.assertion(user, Purpose::Manage), user)
        .await
        .unwrap();
    verify_chain(&blocks, &pinned(app)).unwrap()
}

// ---------------------------------------------------------------------------------------
// 1. Right codes: one release.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_parallel_right_codes_on_three_nodes_release_exactly_once() {
    let started_at = Instant::now();
    let c = Cluster::start().await;
    let app = c.register_app("Health");
    c.set_policy(&app, open_policy(PolicyChange::default()));

    // By SMS: one recovery, its code sent 50 times at once.
    let (secret, enrolled) = enrol(&c, &app, "by-sms").await;
    let number = phone(1);
    let method = add_phone(&c, &app, "by-sms", &number, None).await;
    let before = codes_to(&c.gateway, &number).await;
    let recovery = c
        .next()
        .start_recovery(&app.assertion("by-sms", Purpose::Recover), &method)
        .await
        .unwrap();
    let code = new_code(&c.gateway, &number, &before).await;
    let results = all_at_once((0..50).map(|i| {
        let (client, id, code) = (c.node(i), recovery.id.clone(), code.clone());
        async move { client.verify_recovery(&id, &code).await }
    }))
    .await;
    // What was stored first, then what was answered.
    assert_eq!(
        c.query_i64(&format!(
            "SELECT count(*) FROM recoveries WHERE challenge_id = '{}' AND state = 'released'",
            recovery.id
        )),
        1
    );
    assert_eq!(c.audit_count("recovery_released", &app), 1);
    assert_eq!(
        tally(&results),
        expected(&[("ok", 1), ("code_already_used", 49)])
    );
    let released = results.iter().find_map(|r| r.as_ref().ok()).unwrap();
    assert_eq!(
        opened(released, &secret, &app, "by-sms"),
        enrolled.virtual_device
    );

    // By TOTP: five recoveries on one authenticator, the current code sent 50 times over
    // them. A step is used once per method: one release in all.
    let (secret, enrolled) = enrol(&c, &app, "by-totp").await;
    let number = phone(2);
    let sms = add_phone(&c, &app, "by-totp", &number, None).await;
    let (totp, authenticator) = add_totp(&c, &app, "by-totp", (&sms, &number)).await;
    let mut recoveries = Vec::new();
    for _ in 0..5 {
        let r = c
            .next()
            .start_recovery(&app.assertion("by-totp", Purpose::Recover), &totp)
            .await
            .unwrap();
        recoveries.push(r.id);
    }
    let code = authenticator.generate(unix_now() as u64).to_string();
    let results = all_at_once((0..50).map(|i| {
        let (client, id, code) = (c.node(i), recoveries[i % 5].clone(), code.clone());
        async move { client.verify_recovery(&id, &code).await }
    }))
    .await;
    assert_eq!(
        c.query_i64(
            "SELECT count(*) FROM recoveries WHERE user_id = 'by-totp' AND state = 'released'"
        ),
        1
    );
    assert_eq!(
        c.query_i64(
            "SELECT count(*) FROM recoveries WHERE user_id = 'by-totp' AND state = 'started'"
        ),
        4
    );
    assert_eq!(c.audit_count("recovery_released", &app), 2);
    assert_eq!(
        tally(&results),
        expected(&[("ok", 1), ("code_already_used", 49)])
    );
    let released = results.iter().find_map(|r| r.as_ref().ok()).unwrap();
    assert_eq!(
        opened(released, &secret, &app, "by-totp"),
        enrolled.virtual_device
    );
    c.finish().await;
    eprintln!(
        "right codes: 2 x 50 parallel answers on {NODES} nodes, one release each; {:.1} s",
        started_at.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------
// 2. Wrong guesses: exactly the cap, then the lock.
// ---------------------------------------------------------------------------------------

#[derive(Clone)]
enum Target {
    /// A recovery by SMS; the codes never to guess (every code the phone received).
    Sms(String, Arc<BTreeSet<String>>),
    /// A recovery by TOTP, and the authenticator (its codes near now are never guessed).
    Totp(String, Arc<totp_rs::Totp>),
}

impl Target {
    fn id(&self) -> &str {
        match self {
            Target::Sms(id, _) | Target::Totp(id, _) => id,
        }
    }

    fn wrong_guess(&self) -> String {
        let mut rng = rand::thread_rng();
        match self {
            Target::Sms(_, sent) => loop {
                let g = format!("{:08}", rng.gen_range(0..100_000_000u32));
                if !sent.contains(&g) {
                    return g;
                }
            },
            Target::Totp(_, authenticator) => {
                let now = unix_now();
                let near: BTreeSet<String> = (-4..=4)
                    .map(|k| authenticator.generate((now + 30 * k) as u64).to_string())
                    .collect();
                loop {
                    let g = format!("{:06}", rng.gen_range(0..1_000_000u32));
                    if !near.contains(&g) {
                        return g;
                    }
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_parallel_wrong_guesses_on_three_nodes_stop_exactly_at_the_lock() {
    const THRESHOLD: i64 = 10;
    let started_at = Instant::now();
    let c = Cluster::start().await;
    let app = c.register_app("Health");
    c.set_policy(
        &app,
        open_policy(PolicyChange {
            user_backoff_base_secs: Some(0),
            user_lock_threshold: Some(THRESHOLD as u32),
            // Above the lock threshold: the lock, not the daily budget, is what stops them.
            user_failures_per_day: Some(20),
            ..Default::default()
        }),
    );
    enrol(&c, &app, "victim").await;
    let number = phone(1);
    let sms = add_phone(&c, &app, "victim", &number, None).await;
    let (totp, authenticator) = add_totp(&c, &app, "victim", (&sms, &number)).await;
    let authenticator = Arc::new(authenticator);

    // Five challenges of 3 attempts: 15 attempts in all against a lock at 10.
    let mut opened = Vec::new();
    for _ in 0..3 {
        let before = codes_to(&c.gateway, &number).await;
        let r = c
            .next()
            .start_recovery(&app.assertion("victim", Purpose::Recover), &sms)
            .await
            .unwrap();
        opened.push((r.id, new_code(&c.gateway, &number, &before).await));
    }
    let sent: Arc<BTreeSet<String>> =
        Arc::new(codes_to(&c.gateway, &number).await.into_values().collect());
    let right: BTreeMap<String, String> = opened.iter().cloned().collect();
    let mut targets: Vec<Target> = opened
        .into_iter()
        .map(|(id, _)| Target::Sms(id, Arc::clone(&sent)))
        .collect();
    for _ in 0..2 {
        let r = c
            .next()
            .start_recovery(&app.assertion("victim", Purpose::Recover), &totp)
            .await
            .unwrap();
        targets.push(Target::Totp(r.id, Arc::clone(&authenticator)));
    }
    let failures = || {
        c.query_i64(
            "SELECT coalesce((SELECT failures FROM user_guards WHERE user_id = 'victim'), 0)",
        )
    };
    assert_eq!(failures(), 0);
    assert_eq!(
        c.query_i64("SELECT coalesce(sum(attempts), 0) FROM challenges"),
        0
    );

    let results = all_at_once((0..200).map(|i| {
        let target = targets[i % targets.len()].clone();
        let (client, guess) = (c.node(i), target.wrong_guess());
        async move { client.verify_recovery(target.id(), &guess).await }
    }))
    .await;
    let t = tally(&results);
    eprintln!("wrong guesses answered: {t:?}");

    let ids: Vec<String> = targets.iter().map(|t| format!("'{}'", t.id())).collect();
    let ids = ids.join(",");
    assert_eq!(
        c.query_i64(&format!(
            "SELECT count(*) FROM challenges WHERE id IN ({ids}) AND attempts > max_attempts"
        )),
        0,
        "a challenge counted more wrong answers than its cap"
    );
    assert_eq!(
        c.query_i64(&format!(
            "SELECT max(max_attempts) FROM challenges WHERE id IN ({ids})"
        )),
        3
    );
    assert_eq!(
        c.query_i64(&format!(
            "SELECT sum(attempts) FROM challenges WHERE id IN ({ids})"
        )),
        THRESHOLD,
        "checked guesses"
    );
    assert_eq!(failures(), THRESHOLD, "the user's failure count");
    assert_eq!(
        c.query_i64("SELECT count(*) FROM user_failures WHERE user_id = 'victim'"),
        THRESHOLD,
        "the user's failure rows"
    );
    assert_eq!(
        c.query_i64(
            "SELECT count(*) FROM user_guards WHERE user_id = 'victim' AND locked_at IS NOT NULL"
        ),
        1,
        "the user is locked"
    );
    assert_eq!(
        c.query_i64(&format!(
            "SELECT (SELECT count(*) FROM audit_events WHERE kind = 'code_refused' \
             AND app_id = '{app}' AND detail::jsonb->>'outcome' IN ('Wrong', 'WrongAndLocked')) \
             + (SELECT count(*) FROM audit_pending WHERE kind = 'code_refused' \
             AND app_id = '{app}' AND detail::jsonb->>'outcome' IN ('Wrong', 'WrongAndLocked'))",
            app = app.id
        )),
        THRESHOLD,
        "audited wrong guesses"
    );
    assert_eq!(c.audit_count("user_locked", &app), 1);
    assert_eq!(
        c.query_i64("SELECT count(*) FROM recoveries WHERE state <> 'started'"),
        0,
        "a recovery was released, scheduled or cancelled"
    );
    assert_eq!(c.audit_count("recovery_released", &app), 0);
    // The answers: every checked guess but the one that locked answers invalid_code; the
    // rest were refused unchecked (the user locked, or the challenge dead).
    assert_eq!(
        t.get("invalid_code").copied().unwrap_or(0),
        THRESHOLD as usize - 1,
        "{t:?}"
    );
    assert!(
        t.keys()
            .all(|k| ["invalid_code", "locked", "too_many_attempts"].contains(&k.as_str())),
        "unexpected answers: {t:?}"
    );
    // Locked: even the right codes are refused unchecked.
    for target in &targets {
        let code = match target {
            Target::Sms(id, _) => right[id].clone(),
            Target::Totp(..) => authenticator.generate(unix_now() as u64).to_string(),
        };
        let err = c
            .next()
            .verify_recovery(target.id(), &code)
            .await
            .unwrap_err();
        assert_eq!(answer_name::<()>(&Err(err)), "locked");
    }
    assert_eq!(failures(), THRESHOLD);
    c.finish().await;
    eprintln!(
        "wrong guesses: 200 on 5 challenges over {NODES} nodes: {t:?}; {:.1} s",
        started_at.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------
// 3. One jti, used once.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_assertion_sent_twenty_times_to_three_nodes_is_accepted_once() {
    let c = Cluster::start().await;
    let app = c.register_app("Health");
    c.set_policy(&app, open_policy(PolicyChange::default()));
    enrol(&c, &app, "u").await;
    let number = phone(1);
    let method = add_phone(&c, &app, "u", &number, None).await;

    // A read.
    let jtis = c.query_i64("SELECT count(*) FROM assertion_jtis");
    let token = app.assertion("u", Purpose::Manage);
    let results = all_at_once((0..20).map(|i| {
        let (client, token) = (c.node(i), token.clone());
        async move { client.list_methods(&token).await }
    }))
    .await;
    assert_eq!(
        tally(&results),
        expected(&[("ok", 1), ("assertion_replayed", 19)])
    );
    assert_eq!(c.query_i64("SELECT count(*) FROM assertion_jtis"), jtis + 1);

    // A write: one recovery started, one code sent, one unit of the daily start limit.
    let before = codes_to(&c.gateway, &number).await;
    let token = app.assertion("u", Purpose::Recover);
    let results = all_at_once((0..20).map(|i| {
        let (client, token, method) = (c.node(i), token.clone(), method.clone());
        async move { client.start_recovery(&token, &method).await }
    }))
    .await;
    assert_eq!(
        tally(&results),
        expected(&[("ok", 1), ("assertion_replayed", 19)])
    );
    assert_eq!(c.query_i64("SELECT count(*) FROM assertion_jtis"), jtis + 2);
    assert_eq!(c.query_i64("SELECT count(*) FROM recoveries"), 1);
    assert_eq!(
        c.query_i64(
            "SELECT coalesce(sum(count), 0) FROM rate_counters WHERE scope = 'user-recovery-day'"
        ),
        1
    );
    assert_eq!(c.audit_count("recovery_started", &app), 1);
    let code = new_code(&c.gateway, &number, &before).await;
    assert_eq!(
        c.query_i64("SELECT count(*) FROM outbox WHERE kind = 'code'"),
        2,
        "the confirmation code and one recovery code"
    );
    // And that one recovery works.
    let started = results.iter().find_map(|r| r.as_ref().ok()).unwrap();
    let answer = c.next().verify_recovery(&started.id, &code).await.unwrap();
    assert_eq!(answer.state, RecoveryState::Released);
    c.finish().await;
}

// ---------------------------------------------------------------------------------------
// 4. Appends on one head: one lands.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_parallel_appends_on_one_head_across_three_nodes_land_exactly_once() {
    let c = Cluster::start().await;
    let app = c.register_app("Health");
    c.set_policy(&app, open_policy(PolicyChange::default()));
    let (_, u) = enrol(&c, &app, "u").await;
    let u = Arc::new(u);
    for round in 0..5 {
        let head = chain_state(&c.next(), &app, "u").await;
        assert_eq!(head.len, round + 1);
        let results = all_at_once((0..10).map(|i| {
            let block = add_device(
                &head,
                u.virtual_device.keys(),
                &DeviceKeys::generate(),
                &u.user_keys,
            )
            .unwrap();
            let (client, token) = (c.node(i + round), app.assertion("u", Purpose::Manage));
            async move { client.append_block(&token, &block.encode()).await }
        }))
        .await;
        assert_eq!(
            tally(&results),
            expected(&[("ok", 1), ("chain_fork", 9)]),
            "round {round}"
        );
        assert_eq!(
            c.query_i64("SELECT count(*) FROM chain_blocks") as usize,
            round + 2
        );
    }
    // Every node serves the same chain of six blocks.
    let mut heads = BTreeSet::new();
    for i in 0..NODES {
        let blocks = c
            .node(i)
            .chain(&app.assertion("u", Purpose::Manage), "u")
            .await
            .unwrap();
        let state = verify_chain(&blocks, &pinned(&app)).unwrap();
        assert_eq!(state.len, 6);
        heads.insert(blocks.last().unwrap().clone());
    }
    assert_eq!(heads.len(), 1, "the nodes serve different chains");
    c.finish().await;
}

// ---------------------------------------------------------------------------------------
// 5. Release racing cancel.
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// `POST /v1/recoveries/{id}/release` (waiting period over) or `.../verify` with the
    /// right code (no waiting period): releases.
    Release,
    /// `POST /v1/recoveries/{id}/cancel` with a `manage` assertion.
    Cancel,
}

/// One race: a recovery, and the answers to its release and to its cancel.
struct Race {
    user: String,
    release: Result<RecoveryResponse, ClientError>,
    cancel: Result<RecoveryResponse, ClientError>,
}

/// Checks each race: exactly one of the two succeeded, the other was refused with the
/// documented error; a release opens to the user's device. Returns (released, cancelled).
fn judge(
    races: &[Race],
    release_loses_with: &[&str],
    devices: &BTreeMap<String, (UserSecret, VirtualDevice)>,
    app: &App,
) -> (usize, usize) {
    let (mut released, mut cancelled) = (0, 0);
    for (i, race) in races.iter().enumerate() {
        match (&race.release, &race.cancel) {
            (Ok(answer), Err(_)) => {
                assert_eq!(
                    answer_name(&race.cancel),
                    "already_released",
                    "race {i}: the release won, the cancel must say so"
                );
                let (secret, device) = &devices[&race.user];
                assert_eq!(&opened(answer, secret, app, &race.user), device);
                released += 1;
            }
            (Err(_), Ok(answer)) => {
                assert_eq!(answer.state, RecoveryState::Cancelled, "race {i}");
                let lost = answer_name(&race.release);
                assert!(
                    release_loses_with.contains(&lost.as_str()),
                    "race {i}: the cancel won, the release answered {lost}"
                );
                cancelled += 1;
            }
            (Ok(r), Ok(c)) => panic!(
                "race {i}: BOTH the release ({:?}) and the cancel ({:?}) succeeded",
                r.state, c.state
            ),
            (Err(_), Err(_)) => panic!(
                "race {i}: neither succeeded: release {}, cancel {}",
                answer_name(&race.release),
                answer_name(&race.cancel)
            ),
        }
    }
    (released, cancelled)
}

/// Sends each recovery's release and cancel at once, all recoveries together, the two of
/// a race on two different nodes, which goes first alternating. The release is the
/// release endpoint, or with `verify` the recovery's right code.
async fn race_all(
    c: &Arc<Cluster>,
    app: &App,
    recoveries: &[(String, String, String)],
    verify: bool,
) -> Vec<Race> {
    let mut jobs = Vec::new();
    for (i, (user, id, code)) in recoveries.iter().enumerate() {
        let order = if i % 2 == 0 {
            [Action::Release, Action::Cancel]
        } else {
            [Action::Cancel, Action::Release]
        };
        for (k, action) in order.into_iter().enumerate() {
            let client = c.node(i + k);
            let (id, code) = (id.clone(), code.clone());
            let token = match action {
                Action::Release => app.assertion(user, Purpose::Recover),
                Action::Cancel => app.assertion(user, Purpose::Manage),
            };
            jobs.push(async move {
                let result = match action {
                    Action::Release if verify => client.verify_recovery(&id, &code).await,
                    Action::Release => client.release_recovery(&token, &id).await,
                    Action::Cancel => client.cancel_recovery(&token, &id, None).await,
                };
                (i, action, result)
            });
        }
    }
    let mut answers: Vec<(Option<_>, Option<_>)> =
        (0..recoveries.len()).map(|_| (None, None)).collect();
    for (i, action, result) in all_at_once(jobs).await {
        match action {
            Action::Release => answers[i].0 = Some(result),
            Action::Cancel => answers[i].1 = Some(result),
        }
    }
    answers
        .into_iter()
        .zip(recoveries)
        .map(|((release, cancel), (user, _, _))| Race {
            user: user.clone(),
            release: release.unwrap(),
            cancel: cancel.unwrap(),
        })
        .collect()
}

/// Enrols `users` users of `app`, each with a phone, and starts `rounds` recoveries for
/// each (one after the other: a code message does not name its recovery); with
/// `verify_now`, each is verified at once (it then waits out the app's waiting period).
/// Returns each user's secret and device, the recoveries as (user, id, code), and the
/// latest `available_at` of the verified ones.
async fn open_recoveries(
    c: &Arc<Cluster>,
    app: &App,
    prefix: &str,
    users: u32,
    rounds: usize,
    verify_now: bool,
) -> (
    BTreeMap<String, (UserSecret, VirtualDevice)>,
    Vec<(String, String, String)>,
    i64,
) {
    let per_user = all_at_once((0..users).map(|u| {
        let (c, app) = (Arc::clone(c), app.clone());
        let user = format!("{prefix}{u}");
        let number = phone(u + if verify_now { 100 } else { 200 });
        async move {
            let (secret, enrolled) = enrol(&c, &app, &user).await;
            let method = add_phone(&c, &app, &user, &number, None).await;
            let mut opened = Vec::new();
            let mut latest = 0;
            for _ in 0..rounds {
                let before = codes_to(&c.gateway, &number).await;
                let r = c
                    .next()
                    .start_recovery(&app.assertion(&user, Purpose::Recover), &method)
                    .await
                    .unwrap();
                let code = new_code(&c.gateway, &number, &before).await;
                if verify_now {
                    let answer = c.next().verify_recovery(&r.id, &code).await.unwrap();
                    assert_eq!(answer.state, RecoveryState::Waiting);
                    latest = latest.max(answer.available_at.unwrap());
                }
                opened.push((user.clone(), r.id, code));
            }
            (user, secret, enrolled.virtual_device, opened, latest)
        }
    }))
    .await;
    let mut devices = BTreeMap::new();
    let mut recoveries = Vec::new();
    let mut latest = 0;
    for (user, secret, device, opened, at) in per_user {
        devices.insert(user, (secret, device));
        recoveries.extend(opened);
        latest = latest.max(at);
    }
    (devices, recoveries, latest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn release_racing_cancel_on_three_nodes_never_both_succeed() {
    let started_at = Instant::now();
    let c = Cluster::start().await;

    // The release endpoint against the cancel, once the waiting period is over: 5 users,
    // 10 waiting recoveries each.
    let waiting = c.register_app("Waiting");
    c.set_policy(
        &waiting,
        open_policy(PolicyChange {
            waiting_period_secs: Some(1),
            ..Default::default()
        }),
    );
    let (devices, recoveries, available_at) = open_recoveries(&c, &waiting, "w", 5, 10, true).await;
    assert_eq!(recoveries.len(), 50);
    while unix_now_f64() < available_at as f64 + 1.0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let races = race_all(&c, &waiting, &recoveries, false).await;
    let (released, cancelled) = judge(&races, &["recovery_cancelled"], &devices, &waiting);
    let in_state = |app: &App, state: &str| {
        c.query_i64(&format!(
            "SELECT count(*) FROM recoveries WHERE app_id = '{}' AND state = '{state}'",
            app.id
        )) as usize
    };
    assert_eq!(in_state(&waiting, "released"), released);
    assert_eq!(in_state(&waiting, "cancelled"), cancelled);
    assert_eq!(
        c.audit_count("recovery_released", &waiting) as usize,
        released
    );
    assert_eq!(
        c.audit_count("recovery_cancelled", &waiting) as usize,
        cancelled
    );
    eprintln!("release endpoint vs cancel: {released} released, {cancelled} cancelled");

    // A right code (released at once) against the cancel of a started recovery: 5 users,
    // 6 recoveries each.
    let immediate = c.register_app("Immediate");
    c.set_policy(&immediate, open_policy(PolicyChange::default()));
    let (devices, recoveries, _) = open_recoveries(&c, &immediate, "i", 5, 6, false).await;
    let races = race_all(&c, &immediate, &recoveries, true).await;
    // A code sent to a cancelled recovery answers recovery_cancelled (PROTOCOL.md 6.4);
    // its challenge died with it (too_many_attempts, as tests/recovery.rs accepts too).
    let (released_now, cancelled_now) = judge(
        &races,
        &["recovery_cancelled", "too_many_attempts"],
        &devices,
        &immediate,
    );
    assert_eq!(in_state(&immediate, "released"), released_now);
    assert_eq!(in_state(&immediate, "cancelled"), cancelled_now);
    assert_eq!(
        c.audit_count("recovery_released", &immediate) as usize,
        released_now
    );
    assert_eq!(
        c.audit_count("recovery_cancelled", &immediate) as usize,
        cancelled_now
    );
    assert_eq!(
        c.query_i64(
            "SELECT count(*) FROM recoveries WHERE released_at IS NOT NULL AND cancelled_at IS NOT NULL"
        ),
        0
    );
    c.finish().await;
    eprintln!(
        "verified code vs cancel: {released_now} released, {cancelled_now} cancelled; {:.1} s",
        started_at.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------
// 6. The last two methods.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_removals_of_the_last_two_methods_on_three_nodes_leave_exactly_one() {
    const USERS: u32 = 8;
    let c = Cluster::start().await;
    let app = c.register_app("Health");
    c.set_policy(&app, open_policy(PolicyChange::default()));
    // Each user: two confirmed phones and a proof through each. Even users remove each
    // method with a proof through itself, odd users with a proof through the other one.
    let users = all_at_once((0..USERS).map(|u| {
        let (c, app) = (Arc::clone(&c), app.clone());
        async move {
            let user = format!("u{u}");
            let (na, nb) = (phone(2 * u + 1), phone(2 * u + 2));
            enrol(&c, &app, &user).await;
            let a = add_phone(&c, &app, &user, &na, None).await;
            let b = add_phone(&c, &app, &user, &nb, Some((&a, &na))).await;
            let proof_a = sms_proof(&c, &app, &user, (&a, &na), Purpose::Manage).await;
            let proof_b = sms_proof(&c, &app, &user, (&b, &nb), Purpose::Manage).await;
            let (for_a, for_b) = if u % 2 == 0 {
                (proof_a, proof_b)
            } else {
                (proof_b, proof_a)
            };
            (user, [(a, for_a), (b, for_b)])
        }
    }))
    .await;
    for (user, _) in &users {
        assert_eq!(
            c.query_i64(&format!(
                "SELECT count(*) FROM methods WHERE user_id = '{user}' AND state = 'confirmed'"
            )),
            2
        );
    }
    let mut jobs = Vec::new();
    for (u, (user, removals)) in users.iter().enumerate() {
        for (k, (method, proof)) in removals.iter().enumerate() {
            let client = c.node(u + k);
            let token = app.assertion(user, Purpose::Manage);
            let (method, proof) = (method.clone(), proof.clone());
            jobs.push(async move { (u, k, client.remove_method(&token, &method, proof).await) });
        }
    }
    let mut answers: Vec<[Option<Result<(), ClientError>>; 2]> =
        (0..users.len()).map(|_| [None, None]).collect();
    for (u, k, result) in all_at_once(jobs).await {
        answers[u][k] = Some(result);
    }
    for ((user, removals), [first, second]) in users.iter().zip(answers) {
        let (first, second) = (first.unwrap(), second.unwrap());
        let t = tally([&first, &second]);
        assert_eq!(
            t,
            expected(&[("ok", 1), ("last_method", 1)]),
            "user {user}: the removals of their last two methods answered {t:?}"
        );
        let kept = if first.is_ok() {
            &removals[1].0
        } else {
            &removals[0].0
        };
        let list = c
            .next()
            .list_methods(&app.assertion(user, Purpose::Manage))
            .await
            .unwrap();
        assert_eq!(list.methods.len(), 1, "user {user}");
        assert_eq!(&list.methods[0].id, kept);
        assert_eq!(list.methods[0].state, MethodState::Confirmed);
    }
    assert_eq!(
        c.query_i64("SELECT count(*) FROM methods WHERE state = 'confirmed'"),
        i64::from(USERS)
    );
    c.finish().await;
}

// ---------------------------------------------------------------------------------------
// 7. Limits at max − 1.
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_address_limit_at_max_minus_one_lets_exactly_one_of_fifty_through_three_nodes() {
    let c = Cluster::start().await;
    let app = c.register_app("Limited");
    enrol(&c, &app, "u").await;
    // Everything below must fall in one minute window.
    leave_room_in_window(60, 20.0).await;
    let now = unix_now();
    let window = now - now.rem_euclid(60);
    let spent_in = |window: i64| {
        c.query_i64(&format!(
            "SELECT coalesce(sum(count), 0) FROM rate_counters \
             WHERE scope = 'addr-minute' AND window_start = {window}"
        ))
    };
    let spent = spent_in(window);
    let max = spent + 1;
    c.set_policy(
        &app,
        PolicyChange {
            requests_per_address_per_minute: Some(max as u32),
            ..Default::default()
        },
    );
    let results = all_at_once((0..50).map(|i| {
        let (client, token) = (c.node(i), app.assertion("u", Purpose::Manage));
        async move { client.list_methods(&token).await }
    }))
    .await;
    assert!(
        unix_now() < window + 60,
        "the requests ran past the minute window: the test proves nothing"
    );
    assert_eq!(
        tally(&results),
        expected(&[("ok", 1), ("address_rate_limited", 49)])
    );
    for r in &results {
        if let Err(ClientError::Api { problem, .. }) = r {
            assert!(problem.retry_after.is_some_and(|s| s <= 60), "{problem:?}");
        }
    }
    assert_eq!(spent_in(window), max, "units spent in the window");
    c.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_send_budget_at_max_minus_one_sends_exactly_one_of_fifty_codes_through_three_nodes() {
    const USERS: u32 = 25;
    let c = Cluster::start().await;
    let app = c.register_app("Budget");
    c.set_policy(&app, open_policy(PolicyChange::default()));
    let users = all_at_once((0..USERS).map(|u| {
        let (c, app) = (Arc::clone(&c), app.clone());
        async move {
            let (user, number) = (format!("u{u}"), phone(u + 1));
            enrol(&c, &app, &user).await;
            let method = add_phone(&c, &app, &user, &number, None).await;
            (user, method)
        }
    }))
    .await;
    // The whole attack in one UTC day.
    leave_room_in_window(86_400, 60.0).await;
    let now = unix_now();
    let day = now - now.rem_euclid(86_400);
    let spent = || {
        c.query_i64(&format!(
            "SELECT coalesce(sum(count), 0) FROM rate_counters WHERE scope = 'app-day' \
             AND subject = convert_to('{}', 'UTF8') AND window_start = {day}",
            app.id
        ))
    };
    let before = spent();
    assert!(
        before >= i64::from(USERS),
        "the confirmations spent the budget"
    );
    let codes = c.query_i64("SELECT count(*) FROM outbox WHERE kind = 'code'");
    c.set_policy(
        &app,
        PolicyChange {
            app_daily_send_budget: Some(before as u32 + 1),
            ..Default::default()
        },
    );
    // 50 proof challenges, two per user, each sending a code.
    let results = all_at_once((0..50).map(|i| {
        let (user, method) = users[i % users.len()].clone();
        let (client, token) = (c.node(i), app.assertion(&user, Purpose::Manage));
        async move {
            client
                .start_challenge(&token, &method, ChallengePurpose::Proof)
                .await
        }
    }))
    .await;
    assert_eq!(
        tally(&results),
        expected(&[("ok", 1), ("app_send_budget_exhausted", 49)])
    );
    assert_eq!(spent(), before + 1, "units of the app's daily budget");
    assert_eq!(
        c.query_i64("SELECT count(*) FROM outbox WHERE kind = 'code'"),
        codes + 1,
        "codes queued"
    );
    assert_eq!(
        c.query_i64("SELECT count(*) FROM challenges WHERE purpose = 'proof'"),
        1,
        "proof challenges opened"
    );
    c.finish().await;
}
