//! Failover to a synchronous standby: three real `ghostkey serve` nodes on a PostgreSQL
//! primary that streams its WAL to a synchronous standby (`synchronous_standby_names =
//! 'standby1'`, `synchronous_commit = on`: a commit is answered once the standby has it
//! on disk). The nodes' `database.url` names both servers,
//! `postgres://…@127.0.0.1:<primary>,127.0.0.1:<standby>/<db>?…&target_session_attrs=read-write`,
//! so that a new connection goes to whichever of them accepts writes.
//!
//! Under load (enrolments, first methods, their confirmations, recoveries and their
//! releases, spread over the nodes), the primary is crashed (`pg_ctl -m immediate stop`),
//! and a moment later the standby is promoted (`pg_ctl promote`), as an operator or a
//! failover manager would. The nodes are not restarted. Then: the nodes serve again, every
//! write that got a success answer, before or after the failover, is on the promoted
//! standby, no recovery is released twice, a request that failed failed as an outage does
//! (no answer, or `unavailable`), and once the nodes have linked every queued audit event
//! the chain verifies (`ghostkey audit verify`). The window of unavailability (from the
//! crash to the first successful write after it) is printed.

mod common;
#[path = "common/nodes.rs"]
mod nodes;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::postgres::PgCluster;
use common::sms_gateway;
use ghostkey::domain::policy::PolicyChange;
use ghostkey_client::proto::api::{MethodKind, RecoveryState};
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::{Client, ClientError, UserSecret};
use nodes::{answer_name, codes_to, phone, App, Node};
use rand::Rng;
use wiremock::MockServer;

const NODES: usize = 3;
const WORKERS: u32 = 10;
/// Load before the crash, the time the standby is left unpromoted (a failover manager's
/// detection), load after the promotion.
const LOAD_BEFORE: Duration = Duration::from_secs(6);
const DETECTION: Duration = Duration::from_secs(2);
const LOAD_AFTER: Duration = Duration::from_secs(8);

// ---------------------------------------------------------------------------------------
// The nodes.
// ---------------------------------------------------------------------------------------

struct Cluster {
    nodes: Vec<Node>,
    gateway: MockServer,
    url: String,
    key_file: PathBuf,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn node(&self, i: usize) -> Client {
        self.nodes[i % NODES].client.clone()
    }

    fn pick(&self) -> Client {
        self.node(rand::thread_rng().gen_range(0..NODES))
    }

    fn logs(&self) -> Vec<(String, String)> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(n, node)| {
                (
                    format!("node-{n}.log"),
                    std::fs::read_to_string(&node.log).unwrap_or_default(),
                )
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
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

/// The one code message to `to` not among `before`, within `within`.
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

// ---------------------------------------------------------------------------------------
// The load.
// ---------------------------------------------------------------------------------------

/// What got a success answer, and when.
#[derive(Default)]
struct Acked {
    enrolled: Vec<String>,
    /// (user, method id)
    methods_added: Vec<(String, String)>,
    methods_confirmed: Vec<String>,
    recoveries_started: Vec<String>,
    /// Each success answer of a release, by recovery (two would be a double release).
    released: BTreeMap<String, usize>,
    /// Every successful write: when it was sent, when it was answered.
    successes: Vec<(Instant, Instant)>,
    /// Requests that failed, by answer.
    failed: BTreeMap<String, usize>,
}

impl Acked {
    fn fail<T>(&mut self, step: &str, r: &Result<T, ClientError>) {
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

/// One user's life, each step (each a write) on a random node; stops at the first step
/// that fails.
async fn one_user(c: &Cluster, app: &App, user: &str, number: &str, acked: &Mutex<Acked>) {
    let sent = Instant::now();
    let r = ghostkey_client::enroll(
        &c.pick(),
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
    {
        let mut a = acked.lock().unwrap();
        a.enrolled.push(user.to_owned());
        a.successes.push((sent, Instant::now()));
    }

    let before = codes_to(&c.gateway, number).await;
    let sent = Instant::now();
    let r = c
        .pick()
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
    {
        let mut a = acked.lock().unwrap();
        a.methods_added.push((user.to_owned(), method.clone()));
        a.successes.push((sent, Instant::now()));
    }
    let Some(code) = new_code(&c.gateway, number, &before, Duration::from_secs(30)).await else {
        *acked
            .lock()
            .unwrap()
            .failed
            .entry("confirmation code never came".into())
            .or_insert(0) += 1;
        return;
    };
    let sent = Instant::now();
    let r = c.pick().answer(&added.challenge.id, &code).await;
    if r.is_err() {
        return acked.lock().unwrap().fail("confirm", &r);
    }
    {
        let mut a = acked.lock().unwrap();
        a.methods_confirmed.push(method.clone());
        a.successes.push((sent, Instant::now()));
    }

    let before = codes_to(&c.gateway, number).await;
    let sent = Instant::now();
    let r = c
        .pick()
        .start_recovery(&app.assertion(user, Purpose::Recover), &method)
        .await;
    let recovery = match r {
        Ok(r) => r,
        Err(_) => return acked.lock().unwrap().fail("start recovery", &r),
    };
    {
        let mut a = acked.lock().unwrap();
        a.recoveries_started.push(recovery.id.clone());
        a.successes.push((sent, Instant::now()));
    }
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
        let sent = Instant::now();
        let r = c.pick().verify_recovery(&recovery.id, &code).await;
        match &r {
            Ok(answer) => {
                assert_eq!(answer.state, RecoveryState::Released, "{user}");
                {
                    let mut a = acked.lock().unwrap();
                    *a.released.entry(recovery.id.clone()).or_insert(0) += 1;
                    a.successes.push((sent, Instant::now()));
                }
                // And once more: the code is spent.
                let again = c.pick().verify_recovery(&recovery.id, &code).await;
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
            Err(ClientError::Api { problem, .. }) if problem.code == "unavailable" => {
                // An outage: the release may or may not have been made; ask again.
                acked.lock().unwrap().fail("verify recovery", &r);
                tokio::time::sleep(Duration::from_millis(300)).await;
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

// ---------------------------------------------------------------------------------------
// The test.
// ---------------------------------------------------------------------------------------

fn wait_for_port(port: u16) {
    for _ in 0..50 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("nothing listens on port {port}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_to_a_synchronous_standby_loses_no_acknowledged_write() {
    let started_at = Instant::now();
    let secs = || started_at.elapsed().as_secs_f64();
    let parent = tempfile::tempdir().unwrap().keep();

    // The primary: a commit is answered once `standby1` has flushed it.
    let primary: &'static PgCluster = Box::leak(Box::new(PgCluster::start_in(
        &parent,
        "wal_level = replica\nmax_wal_senders = 5\n\
         synchronous_standby_names = 'standby1'\nsynchronous_commit = on",
    )));
    wait_for_port(primary.port);
    // The standby copies the primary's `postgresql.conf`, `synchronous_standby_names =
    // 'standby1'` included. That setting means nothing to a standby, but once promoted it
    // would make every commit on the new primary wait forever for a `standby1` that no
    // longer exists (the old primary is gone): the nodes would hang, not fail over. An
    // operator promoting a standby clears it (or names a new standby); here it is cleared
    // in advance in the standby's `postgresql.auto.conf`, where it takes effect only at
    // promotion. The cost, as with any single synchronous standby: after the failover the
    // new primary commits alone until a new standby is attached.
    let standby: &'static PgCluster = Box::leak(Box::new(primary.start_standby_in(
        &parent,
        "standby1",
        "synchronous_standby_names = ''",
    )));
    wait_for_port(standby.port);
    common::wait_until(
        "the standby to stream synchronously",
        Duration::from_secs(30),
        || {
            (primary.psql(
                "postgres",
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'standby1'",
            ) == "sync")
                .then_some(())
        },
    )
    .await;

    // The database, the schema, the nodes: their URL names both servers.
    let database = nodes::database_name(&primary.new_database());
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/{database}\
         ?sslmode=disable&target_session_attrs=read-write",
        primary.port, standby.port
    );
    let gateway = sms_gateway::accepting().await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = nodes::prepare(dir.path(), &url);
    let app = {
        let store = nodes::admin_store(&url);
        let app = App::register(store.as_ref(), "Failover");
        app.set_policy(store.as_ref(), open_policy());
        app
    };
    let spawned: Vec<_> = (0..NODES)
        .map(|n| {
            let log = dir.path().join(format!("node-{n}.log"));
            (
                nodes::spawn(dir.path(), &url, &key_file, &gateway, &log),
                log,
            )
        })
        .collect();
    let mut started = Vec::new();
    for (child, log) in spawned {
        started.push(nodes::wait_listening(child, log).await);
    }
    let c = Arc::new(Cluster {
        nodes: started,
        gateway,
        url,
        key_file,
        dir,
    });
    let node_pids: Vec<u32> = c.nodes.iter().map(|n| n.child.id()).collect();
    eprintln!(
        "{:.1} s: primary, synchronous standby and {NODES} nodes up",
        secs()
    );

    // The load.
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
                // The database away answers at once: no busy loop meanwhile.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }));
    }

    // The failover: the primary crashes, and after the time a failover manager takes to
    // notice, the standby is promoted. The nodes stay as they are.
    tokio::time::sleep(LOAD_BEFORE).await;
    let before_crash = acked.lock().unwrap().successes.len();
    assert!(before_crash > 0, "no write succeeded before the crash");
    let crashed_at = Instant::now();
    primary.pg_ctl_stop("immediate");
    // The primary is gone once pg_ctl returns; a write sent while it was stopping may
    // still have been committed there (and so acknowledged).
    let stopped_at = Instant::now();
    eprintln!(
        "{:.1} s: primary stopped -m immediate ({before_crash} writes acknowledged)",
        secs()
    );
    tokio::time::sleep(DETECTION).await;
    let promote_at = Instant::now();
    standby.promote();
    let promoted_at = Instant::now();
    eprintln!(
        "{:.1} s: standby promoted (pg_ctl promote took {} ms)",
        secs(),
        (promoted_at - promote_at).as_millis()
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", primary.port)).is_err(),
        "the old primary still listens"
    );
    assert_eq!(standby.psql("postgres", "SELECT pg_is_in_recovery()"), "f");
    tokio::time::sleep(LOAD_AFTER).await;
    stop.store(true, Ordering::SeqCst);
    for t in load {
        t.await.unwrap();
    }
    eprintln!("{:.1} s: load stopped", secs());

    // The nodes were not restarted, and none died.
    let mut alive = Vec::new();
    for node in &c.nodes {
        alive.push(node.child.id());
    }
    assert_eq!(alive, node_pids);
    for (i, node) in c.nodes.iter().enumerate() {
        assert!(node.client.ready().await.is_ok(), "node {i} is not ready");
    }

    // The window: from the crash to the first write sent after it that succeeded.
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    // The first success among the writes sent from `from` on.
    let first_answered_sent_from = |from: Instant| {
        acked
            .successes
            .iter()
            .filter(|(sent, _)| *sent >= from)
            .map(|(_, answered)| *answered)
            .min()
            .expect("no write succeeded after the failover")
    };
    let first_after = first_answered_sent_from(crashed_at);
    let first_with_no_primary = first_answered_sent_from(stopped_at);
    let after_promotion = acked
        .successes
        .iter()
        .filter(|(sent, _)| *sent >= crashed_at)
        .count();
    assert!(
        first_with_no_primary > promote_at,
        "a write succeeded with no primary ({} ms after the crash, before the promotion)",
        (first_with_no_primary - stopped_at).as_millis()
    );
    let window = first_after - crashed_at;
    // Signed: the first write may be answered before `pg_ctl promote -w` returns (it
    // polls for the end of the promotion).
    let ms_since = |t: Instant| -> i128 {
        if first_after >= t {
            (first_after - t).as_millis() as i128
        } else {
            -((t - first_after).as_millis() as i128)
        }
    };
    eprintln!(
        "unavailable for {} ms: from the crash to the first successful write after it; \
         of which {} ms the standby was left unpromoted (a failover manager's delay); that \
         write answered {} ms after `pg_ctl promote` was run, {} ms after it returned \
         (it took {} ms); {after_promotion} writes succeeded after the crash",
        window.as_millis(),
        DETECTION.as_millis(),
        ms_since(promote_at),
        ms_since(promoted_at),
        (promoted_at - promote_at).as_millis(),
    );
    assert!(
        window < Duration::from_secs(30),
        "the nodes took {window:?} to write again after the crash"
    );

    // Everything settled on the new primary: the nodes link the queued audit events.
    let query_i64 = |sql: &str| -> i64 {
        let text = standby.psql(&database, &format!("SELECT ({sql})::bigint"));
        text.parse()
            .unwrap_or_else(|_| panic!("`{sql}` gave `{text}`"))
    };
    common::wait_until(
        "the nodes to link every queued audit event",
        Duration::from_secs(30),
        || (query_i64("SELECT count(*) FROM audit_pending") == 0).then_some(()),
    )
    .await;
    nodes::run(
        nodes::ghostkey(c.dir.path(), &c.url)
            .env("GHOSTKEY_KEYS__DATA_KEY_FILE", &c.key_file)
            .args(["audit", "verify"]),
        "audit verify",
    );

    // Every acknowledged write, before and after the failover, is on the new primary.
    let in_db = |sql: &str| -> BTreeSet<String> {
        standby
            .psql(&database, sql)
            .lines()
            .map(str::to_owned)
            .collect()
    };
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
            "acknowledged {what} lost in the failover: {missing:?} ({} acknowledged)",
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
    assert_eq!(
        query_i64(&format!(
            "SELECT count(*) FROM audit_events WHERE kind = 'recovery_released' AND app_id = '{}'",
            app.id
        )),
        released.len() as i64,
        "recovery_released audit events"
    );
    // A failure is the database away (no answer, or `unavailable`), or a code re-sent
    // after an outage that the first sending had spent: never a wrong answer.
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
        "valid requests refused in the failover: {wrong:?} (all failures: {:?})",
        acked.failed
    );
    let panics: Vec<String> = c
        .logs()
        .into_iter()
        .filter(|(_, t)| t.contains("panicked"))
        .map(|(n, _)| n)
        .collect();
    assert!(panics.is_empty(), "nodes panicked: {panics:?}");
    eprintln!(
        "acknowledged: {} enrolments, {} methods added, {} confirmed, {} recoveries started, \
         {} released; failed requests: {:?}; {:.1} s in all",
        acked.enrolled.len(),
        acked.methods_added.len(),
        acked.methods_confirmed.len(),
        acked.recoveries_started.len(),
        acked.released.len(),
        acked.failed,
        secs()
    );
    drop(c);
    standby.pg_ctl_stop("fast");
    let _ = std::fs::remove_dir_all(&parent);
}
