//! The PostgreSQL backend's own behaviour, on a real cluster the test starts: its schema
//! and migrations, the version check a node makes at start, the durability check, the
//! outbox lease token between two nodes, and the audit chainer. (The behaviour both
//! backends share is proven by running the integration suite against each:
//! `scripts/test-all.sh`; the races between nodes are in `multi_node.rs`.)

mod common;

use std::process::Command;

use common::postgres::{self, shared};
use ghostkey::store::postgres::{migrate, PgStore};
use ghostkey::store::{SendResult, Store};

fn database_name(url: &str) -> String {
    url.rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_owned()
}

/// The schema as `pg_dump` prints it, without comments and settings.
fn dump_schema(url: &str) -> String {
    let cluster = shared();
    let out = Command::new(cluster.bin_dir.join("pg_dump"))
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &cluster.port.to_string(),
            "-U",
            "postgres",
        ])
        .args(["--schema-only", "--no-owner", "--no-privileges"])
        .arg(database_name(url))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("--") && !l.starts_with("SET ") && !l.trim().is_empty())
        .filter(|l| !l.starts_with("SELECT pg_catalog.set_config"))
        // pg_dump 15.14+ brackets its output with a random key.
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_fresh_migration_gives_exactly_the_canonical_schema() {
    let migrated = postgres::migrated_database();
    let canonical = shared().new_database();
    shared().psql(
        &database_name(&canonical),
        ghostkey::store::postgres::SCHEMA_SQL,
    );
    assert_eq!(dump_schema(&migrated), dump_schema(&canonical));
    // And the same rows in the one-row tables.
    for table in ["ghostkey_schema", "audit_head", "clock_floor"] {
        let sql = format!("SELECT * FROM {table}");
        assert_eq!(
            shared().psql(&database_name(&migrated), &sql),
            shared().psql(&database_name(&canonical), &sql),
            "{table}"
        );
    }
}

#[test]
fn migrate_twice_changes_nothing_and_nodes_refuse_an_unknown_schema() {
    let url = shared().new_database();
    let options = postgres::options(&url);

    // No schema yet: a node refuses to serve and says which command to run.
    let refused = PgStore::open(&options).unwrap_err().to_string();
    assert!(refused.contains("ghostkey db migrate"), "{refused}");

    assert_eq!(
        migrate(&options).unwrap(),
        (None, ghostkey::store::postgres::SCHEMA_VERSION)
    );
    let schema = dump_schema(&url);
    assert_eq!(
        migrate(&options).unwrap(),
        (
            Some(ghostkey::store::postgres::SCHEMA_VERSION),
            ghostkey::store::postgres::SCHEMA_VERSION
        )
    );
    assert_eq!(dump_schema(&url), schema);
    PgStore::open(&options).unwrap().ping().unwrap();

    // A schema newer than this build: refused, by the node and by migrate.
    shared().psql(
        &database_name(&url),
        "UPDATE ghostkey_schema SET version = version + 1",
    );
    let newer = PgStore::open(&options).unwrap_err().to_string();
    assert!(newer.contains("newer"), "{newer}");
    let newer = migrate(&options).unwrap_err().to_string();
    assert!(newer.contains("newer"), "{newer}");
}

#[test]
fn the_migrate_command_and_backup_on_postgres() {
    let url = shared().new_database();
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ghostkey"));
        // Only this test's settings (the test run's own GHOSTKEY_TEST_... variables are
        // not configuration).
        for (k, _) in std::env::vars() {
            if k.starts_with("GHOSTKEY_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(args)
            .current_dir(dir.path())
            .env("GHOSTKEY_DATABASE__URL", &url)
            .output()
            .unwrap()
    };
    let out = run(&["db", "migrate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("created the Ghostkey schema"));
    let out = run(&["db", "migrate"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already at version"));

    // Admin commands work against PostgreSQL.
    let key = ghostkey_client::AppSigningKey::generate("k1");
    let out = run(&[
        "app",
        "add",
        "--name",
        "Clinic",
        "--key-id",
        "k1",
        "--public-key",
        &key.public_key_b64(),
    ]);
    let added = String::from_utf8_lossy(&out.stderr).to_string();
    if out.status.success() {
        let out = run(&["app", "list"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("Clinic"));
    } else {
        panic!("app add failed: {added}");
    }

    // Backup and restore point to PostgreSQL's own tools.
    let out = run(&["backup", "copy.db"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pg_dump"));
    let out = run(&["restore", "copy.db", "--yes"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pg_basebackup"));

    // The audit log verifies, once the pending events are linked.
    let store = PgStore::open(&postgres::options(&url)).unwrap();
    assert!(
        store.audit_unlinked().unwrap().0 >= 1,
        "the app's creation is queued"
    );
    store.maintain(common::now()).unwrap();
    assert_eq!(store.audit_unlinked().unwrap().0, 0);
    let out = run(&["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_database_without_durable_commits_is_reported() {
    let url = postgres::migrated_database();
    let store = PgStore::open(&postgres::options(&url)).unwrap();
    assert!(store.durability_warnings().unwrap().is_empty());
    shared().psql(
        &database_name(&url),
        &format!(
            "ALTER DATABASE {} SET synchronous_commit = off",
            database_name(&url)
        ),
    );
    // New connections see the setting.
    let store = PgStore::open(&postgres::options(&url)).unwrap();
    let warnings = store.durability_warnings().unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("synchronous_commit"), "{warnings:?}");
}

#[test]
fn a_stale_finish_from_a_node_whose_lease_ran_out_is_refused() {
    let url = postgres::migrated_database();
    // A queued farewell notice (it carries its own destination), as an erasure leaves.
    shared().psql(
        &database_name(&url),
        "INSERT INTO outbox (app_id, kind, key_id, body, state, next_attempt_at, created_at, \
         channel, destination_key_id, destination) \
         VALUES ('app', 'notice', 'k', '\\x01', 'pending', 0, 0, 'sms', 'k', '\\x02')",
    );
    let node_a = PgStore::open(&postgres::options(&url)).unwrap();
    let node_b = PgStore::open(&postgres::options(&url)).unwrap();
    let now = common::now();
    let first = node_a.claim_message(now, 30).unwrap().unwrap();
    // Leased: nobody else gets it meanwhile.
    assert_eq!(node_b.claim_message(now + 29, 30).unwrap(), None);
    // Node A's lease runs out; node B claims the same message.
    let later = now + 31;
    let second = node_b.claim_message(later, 30).unwrap().unwrap();
    assert_eq!(second.id, first.id);
    assert!(second.leased_until > first.leased_until);
    // Node A's late result is refused and changes nothing; node B's is recorded.
    let sent = SendResult::Sent;
    assert!(!node_a
        .finish_message(first.id, first.leased_until, &sent, later + 1)
        .unwrap());
    assert_eq!(node_a.outbox_counts().unwrap().pending, 1);
    assert!(node_b
        .finish_message(second.id, second.leased_until, &sent, later + 1)
        .unwrap());
    let counts = node_a.outbox_counts().unwrap();
    assert_eq!((counts.pending, counts.sent), (0, 1));
    assert_eq!(node_a.claim_message(later + 100, 30).unwrap(), None);
}

#[test]
fn tls_to_postgresql_verifies_the_servers_certificate() {
    // A cluster of its own that accepts TLS connections only.
    let parent = tempfile::tempdir().unwrap();
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let (crt, key) = (
        parent.path().join("server.crt"),
        parent.path().join("server.key"),
    );
    std::fs::write(&crt, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let cluster = postgres::PgCluster::start_in(
        parent.path(),
        &format!(
            "ssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'",
            crt.display(),
            key.display()
        ),
    );
    std::fs::write(
        cluster.data_dir.join("pg_hba.conf"),
        "hostssl all all 127.0.0.1/32 trust\n",
    )
    .unwrap();
    let out = cluster
        .command("pg_ctl")
        .args(["-D", cluster.data_dir.to_str().unwrap(), "reload"])
        .output()
        .unwrap();
    assert!(out.status.success());
    std::thread::sleep(std::time::Duration::from_millis(500));
    let url = |mode: &str| {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode={mode}",
            cluster.port
        )
    };
    let with_ca =
        |mode: &str, ca: Option<std::path::PathBuf>| ghostkey::store::postgres::PgOptions {
            ca_file: ca,
            ..postgres::options(&url(mode))
        };

    // With the authority that signed it: TLS, verified, and the schema created over it.
    let options = with_ca("require", Some(crt.clone()));
    migrate(&options).unwrap();
    PgStore::open(&options).unwrap().ping().unwrap();

    // Without it (the public web roots): the certificate is not trusted; no connection.
    let refused = PgStore::open(&with_ca("require", None))
        .unwrap_err()
        .to_string();
    assert!(refused.contains("UnknownIssuer"), "{refused}");

    // In clear: the server accepts TLS only.
    let refused = PgStore::open(&with_ca("disable", None))
        .unwrap_err()
        .to_string();
    assert!(refused.contains("no encryption"), "{refused}");

    // Another authority than the one that signed the server's certificate: refused.
    let other = rcgen::generate_simple_self_signed(vec!["db.example".to_owned()]).unwrap();
    let other_crt = parent.path().join("other.crt");
    std::fs::write(&other_crt, other.cert.pem()).unwrap();
    let refused = PgStore::open(&with_ca("require", Some(other_crt)))
        .unwrap_err()
        .to_string();
    assert!(refused.contains("invalid peer certificate"), "{refused}");
    cluster.pg_ctl_stop("fast");
}

/// PgBouncer in transaction mode, between a node and PostgreSQL: fewer server connections
/// than the node's, so consecutive transactions of one node connection run on different
/// server connections (nothing may live in the session).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_works_through_pgbouncer_in_transaction_mode() {
    let direct = postgres::migrated_database();
    let database = database_name(&direct);
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ini = dir.path().join("pgbouncer.ini");
    std::fs::write(
        &ini,
        format!(
            "[databases]\n* = host=127.0.0.1 port={pg}\n\n[pgbouncer]\nlisten_addr = 127.0.0.1\n\
             listen_port = {port}\nunix_socket_dir =\nauth_type = trust\nauth_file = {users}\n\
             pool_mode = transaction\ndefault_pool_size = 3\nmax_client_conn = 200\n\
             logfile = {log}\npidfile = {pid}\n",
            pg = shared().port,
            users = dir.path().join("users.txt").display(),
            log = dir.path().join("pgbouncer.log").display(),
            pid = dir.path().join("pgbouncer.pid").display(),
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("users.txt"), "\"postgres\" \"\"\n").unwrap();
    let binary = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .expect("PgBouncer is not installed: `bash scripts/test-all.sh` installs it (Debian package `pgbouncer`)");
    // PgBouncer refuses to run as root.
    let root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    let mut command = if root {
        Command::new("chown")
            .args(["-R", "postgres:", dir.path().to_str().unwrap()])
            .status()
            .unwrap();
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", binary]);
        c
    } else {
        Command::new(binary)
    };
    command
        .arg(&ini)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    /// Stops PgBouncer (itself, by its pid file: `runuser` does not pass the signal on),
    /// also when the test fails.
    struct Bouncer(std::process::Child, std::path::PathBuf);
    impl Drop for Bouncer {
        fn drop(&mut self) {
            if let Ok(pid) = std::fs::read_to_string(&self.1) {
                let _ = Command::new("kill").arg(pid.trim()).status();
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _bouncer = Bouncer(command.spawn().unwrap(), dir.path().join("pgbouncer.pid"));
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let through = format!("postgres://postgres@127.0.0.1:{port}/{database}?sslmode=disable");
    let server = common::TestServer::start_with(|config| {
        config.database.url = Some(secrecy::SecretString::from(through.clone()));
        config.database.max_connections = 12;
        // PgBouncer 1.18 does not carry a connection's prepared statements over to the
        // next transaction's server connection: the setting OPERATIONS.md gives for it.
        config.database.prepared_statements = false;
    });
    let app = server.register_app("Clinic");
    // Many transactions at once from the node's 12 connections over PgBouncer's 3.
    let enrolments: Vec<_> = (0..40)
        .map(|i| {
            let (server, app) = (&server, &app);
            async move { common::enrol(server, app, &format!("user-{i}")).await }
        })
        .collect();
    futures_util::future::join_all(enrolments).await;
    assert_eq!(server.query_i64("SELECT count(*) FROM users"), 40);
    // Refusals too: an enrolled user again.
    let again = ghostkey_client::enroll(
        &server.client(),
        &app.assertion("user-1", ghostkey_client::proto::assertion::Purpose::Enroll),
        &ghostkey_client::UserSecret::generate(),
        &app.id,
        "user-1",
        &app.key,
    )
    .await
    .unwrap_err();
    assert_eq!(
        again.code(),
        Some(ghostkey_client::proto::ErrorCode::AlreadyEnrolled),
        "{again}"
    );
    let log = std::fs::read_to_string(dir.path().join("pgbouncer.log")).unwrap_or_default();
    drop(server);
    assert!(
        !log.contains("prepared statement") && !log.contains("ERROR"),
        "{log}"
    );
}

/// A store call made from inside an async task that has spent Tokio's cooperative budget
/// (as a server worker or a test may do after many awaits in one poll) must still finish.
/// It once spun forever: the wait for a new connection polled a Tokio `JoinHandle`, which
/// with no budget left answers "not ready" and wakes itself at once, and nothing ever gave
/// the budget back because the wait never returned to the scheduler.
#[test]
fn a_store_call_from_a_task_with_no_cooperative_budget_left_finishes() {
    let url = postgres::migrated_database();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            // Spend the task's budget without yielding: each ready receive costs one unit.
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            for i in 0..1_000 {
                tx.send(i).unwrap();
            }
            let mut received = 0;
            while futures_util::FutureExt::now_or_never(rx.recv()).is_some() {
                received += 1;
            }
            assert!(received < 1_000, "the budget should have run out");
            // Opening the store makes new connections; then a read.
            let store = PgStore::open(&postgres::options(&url)).unwrap();
            let counts = store.outbox_counts().unwrap();
            // The read's COMMIT, whose answer nobody waits for, was sent all the same
            // (written from this thread, still with no budget).
            let states = ghostkey_sessions(&database_name(&url));
            assert!(
                !states.is_empty() && states.iter().all(|s| s == "idle"),
                "ghostkey's sessions: {states:?}"
            );
            done_tx.send(counts.pending).unwrap();
        });
    });
    let pending = done_rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the store call did not finish within 60 s");
    assert_eq!(pending, 0);
}

/// The states of ghostkey's sessions on `database`, once every one is `idle` or after 10 s
/// (they end their work asynchronously: a read's COMMIT, a refusal's ROLLBACK, a
/// termination).
fn ghostkey_sessions(database: &str) -> Vec<String> {
    let query = format!(
        "SELECT coalesce(string_agg(state, ',' ORDER BY state), '') FROM pg_stat_activity \
         WHERE datname = '{database}' AND application_name = 'ghostkey'"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let listed = shared().psql("postgres", &query);
        let states: Vec<String> = listed
            .trim()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if states.iter().all(|s| s == "idle") || std::time::Instant::now() > deadline {
            return states;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// No thread drives an idle connection's socket (the waiting thread does, see
/// `store/postgres/conn.rs`): the COMMIT that ends a read and the ROLLBACK that ends a
/// refused write, whose answers nobody waits for, must still reach the server before the
/// connection goes back to the pool, or it would sit "idle in transaction", holding its
/// snapshot and its row locks, until its next use.
#[test]
fn connections_go_back_to_the_pool_outside_any_transaction() {
    let url = postgres::migrated_database();
    let database = database_name(&url);
    let store = PgStore::open(&postgres::options(&url)).unwrap();
    let now = common::now();
    // Two connections at once, so that the pool holds two.
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                for _ in 0..20 {
                    store.outbox_counts().unwrap();
                }
            });
        }
    });
    assert_eq!(store.outbox_counts().unwrap().pending, 0);
    // A write refused after its first statement: rolled back.
    assert!(store.revoke_app_key("no-such-app", "k1", now).is_err());
    let states = ghostkey_sessions(&database);
    assert!(
        !states.is_empty() && states.iter().all(|s| s == "idle"),
        "ghostkey's sessions: {states:?}"
    );
    // The same from a thread of a blocking pool, where the wait runs in place.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let store = std::sync::Arc::new(store);
    let pooled = std::sync::Arc::clone(&store);
    runtime
        .block_on(runtime.spawn_blocking(move || {
            ghostkey::store::as_store_thread(|| {
                pooled.outbox_counts().unwrap();
                assert!(pooled.revoke_app_key("no-such-app", "k1", now).is_err());
            })
        }))
        .unwrap();
    let states = ghostkey_sessions(&database);
    assert!(
        !states.is_empty() && states.iter().all(|s| s == "idle"),
        "ghostkey's sessions: {states:?}"
    );
}

/// A pooled connection the server closed while it was idle (a restart, a failover, an
/// operator's `pg_terminate_backend`) is noticed when it is next lent, and replaced: the
/// next call succeeds.
#[test]
fn a_connection_closed_by_the_server_while_idle_is_replaced() {
    let url = postgres::migrated_database();
    let database = database_name(&url);
    let store = PgStore::open(&postgres::options(&url)).unwrap();
    assert_eq!(store.outbox_counts().unwrap().pending, 0);
    assert_eq!(ghostkey_sessions(&database), ["idle"]);
    shared().psql(
        "postgres",
        &format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{database}' AND application_name = 'ghostkey'"
        ),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !ghostkey_sessions(&database).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the sessions did not end"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    for _ in 0..3 {
        assert_eq!(store.outbox_counts().unwrap().pending, 0);
    }
    assert_eq!(ghostkey_sessions(&database), ["idle"]);
}

/// Lists come out in the same order as on SQLite, whose text comparison is byte by byte,
/// whatever the database's collation: here ICU's root locale, which puts `a` before `B`
/// where bytes put `B` (0x42) first.
#[test]
fn lists_are_ordered_byte_by_byte_whatever_the_database_collation() {
    let name = format!("gk_icu_{}", std::process::id());
    shared().psql(
        "postgres",
        &format!(
            "CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C' \
             LOCALE_PROVIDER icu ICU_LOCALE 'und'"
        ),
    );
    let url = shared().url(&name);
    migrate(&postgres::options(&url)).unwrap();
    // The collation really orders the other way, so the test can tell.
    assert_eq!(
        shared().psql(
            &name,
            "SELECT string_agg(x, ',' ORDER BY x) FROM (VALUES ('B'), ('a')) v(x)"
        ),
        "a,B"
    );
    let store = PgStore::open(&postgres::options(&url)).unwrap();
    let now = common::now();
    let app = |id: &str| ghostkey::domain::app::App {
        id: id.into(),
        name: id.into(),
        created_at: now,
        policy: Default::default(),
    };
    let key = |kid: &str| ghostkey::domain::app::AppKey {
        kid: kid.into(),
        public_key: [7; 32],
        created_at: now,
        revoked_at: None,
    };
    store.create_app(&app("app_a"), &key("a1")).unwrap();
    store.create_app(&app("app_B"), &key("B1")).unwrap();
    store.add_app_key("app_a", &key("Z2")).unwrap();
    store
        .add_app_origin("app_a", "https://b.example", now)
        .unwrap();
    store
        .add_app_origin("app_a", "https://C.example", now)
        .unwrap();
    let ids: Vec<String> = store
        .list_apps()
        .unwrap()
        .into_iter()
        .map(|a| a.id)
        .collect();
    assert_eq!(ids, ["app_B", "app_a"]);
    let kids: Vec<String> = store
        .app_keys("app_a")
        .unwrap()
        .into_iter()
        .map(|k| k.kid)
        .collect();
    assert_eq!(kids, ["Z2", "a1"]);
    assert_eq!(
        store.app_origins("app_a").unwrap(),
        ["https://C.example", "https://b.example"]
    );
}

/// The server opens its store from async code (inside the actix system): a database that
/// is down must give the clear "cannot connect" error, not a panic from dropping the
/// connection's runtime on an async thread.
#[test]
fn opening_a_store_from_async_code_with_the_database_down_is_an_error_not_a_panic() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // A port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("postgres://postgres@127.0.0.1:{port}/nothing?sslmode=disable");
        match PgStore::open(&postgres::options(&url)) {
            Err(ghostkey::store::StoreError::Unavailable(cause)) => {
                assert!(cause.contains("cannot connect"), "{cause}")
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    });
}

/// A node on its own fresh PostgreSQL database, with user "u" enrolled and a confirmed
/// TOTP method; the app and the method's id.
async fn node_with_a_totp_user() -> (common::TestServer, common::TestApp, String) {
    let url = postgres::migrated_database();
    let server = common::TestServer::start_with(|c| {
        c.database.url = Some(secrecy::SecretString::from(url));
    });
    let app = server.register_app("Health");
    let (method, _) = common::enrol_with_totp(&server, &app, "u").await;
    (server, app, method)
}

/// Writes whose results nothing reads are queued and sent with a transaction's next
/// statement or its `COMMIT` (`Tx::exec_later`). PostgreSQL answers the `COMMIT` of a
/// transaction that a failed statement aborted with a plain `ROLLBACK`, no error: a queued
/// failure left unread would be a false success with nothing stored. Here the audit events
/// of an enrolment and of a recovery's start (queued, sent with the `COMMIT`) are refused
/// by a trigger: each request must fail, store nothing, and leave its assertion unspent.
#[tokio::test]
async fn a_queued_write_that_fails_fails_its_whole_transaction() {
    use ghostkey_client::proto::assertion::Purpose;
    let (server, app, method) = node_with_a_totp_user().await;
    server.psql(
        "CREATE FUNCTION refuse_events() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.kind IN ('enrolled', 'recovery_started') THEN \
         RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$; \
         CREATE TRIGGER refuse_events BEFORE INSERT ON audit_pending \
         FOR EACH ROW EXECUTE FUNCTION refuse_events()",
    );
    let client = server.client();
    // An enrolment: its last statements (the root block, the event) travel with the COMMIT.
    let body = common::enrol_body(&app, "v");
    let enrol_assertion = app.assertion("v", Purpose::Enroll);
    let http = reqwest::Client::new();
    let enrol = || {
        http.post(format!("{}/v1/enrollments", server.base_url))
            .bearer_auth(&enrol_assertion)
            .json(&body)
            .send()
    };
    let res = enrol().await.unwrap();
    assert_eq!(res.status(), 500);
    assert_eq!(
        server.query_i64("SELECT count(*) FROM users WHERE user_id = 'v'"),
        0
    );
    assert_eq!(
        server.query_i64("SELECT count(*) FROM chain_blocks WHERE user_id = 'v'"),
        0
    );
    let assertion = app.assertion("u", Purpose::Recover);
    let err = client
        .start_recovery(&assertion, &method)
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(ghostkey_client::proto::ErrorCode::Internal),
        "{err}"
    );
    assert_eq!(server.count("recoveries"), 0);
    assert_eq!(
        server.query_i64("SELECT count(*) FROM challenges WHERE purpose = 'recover'"),
        0
    );
    // The same assertions work once the trigger is gone: their `jti`s were not kept either.
    server.psql("DROP TRIGGER refuse_events ON audit_pending");
    assert_eq!(enrol().await.unwrap().status(), 201);
    assert_eq!(
        server.query_i64("SELECT count(*) FROM users WHERE user_id = 'v'"),
        1
    );
    client.start_recovery(&assertion, &method).await.unwrap();
    assert_eq!(server.count("recoveries"), 1);
    assert_eq!(
        server.query_i64("SELECT count(*) FROM audit_events WHERE kind = 'recovery_started'"),
        1
    );
}

/// A serialisation failure met by a queued write is the transaction's, like any other:
/// the whole transaction is re-run (not answered `unavailable`), and what it stores is
/// stored once.
#[tokio::test]
async fn a_serialisation_failure_of_a_queued_write_reruns_the_transaction() {
    use ghostkey_client::proto::assertion::Purpose;
    let (server, app, method) = node_with_a_totp_user().await;
    // A sequence is not rolled back with the transaction: only the first try fails.
    server.psql(
        "CREATE SEQUENCE queued_tries; \
         CREATE FUNCTION fail_first_try() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.kind = 'recovery_started' AND nextval('queued_tries') = 1 THEN \
         RAISE EXCEPTION 'could not serialize access' USING ERRCODE = '40001'; END IF; \
         RETURN NEW; END $$; \
         CREATE TRIGGER fail_first_try BEFORE INSERT ON audit_pending \
         FOR EACH ROW EXECUTE FUNCTION fail_first_try()",
    );
    server
        .client()
        .start_recovery(&app.assertion("u", Purpose::Recover), &method)
        .await
        .unwrap();
    assert_eq!(server.query_i64("SELECT last_value FROM queued_tries"), 2);
    assert_eq!(server.count("recoveries"), 1);
    assert_eq!(
        server.query_i64("SELECT count(*) FROM audit_events WHERE kind = 'recovery_started'"),
        1
    );
}

/// tokio-postgres logs every statement with its parameters at `debug` (through the `log`
/// crate, which the server's subscriber forwards): user ids, MACs, sealed blobs. A node
/// run at `trace` must still log none of them.
#[tokio::test]
async fn statement_parameters_never_reach_the_log_even_at_trace() {
    use ghostkey_client::kit::{unix_now, AssertionRequest};
    use ghostkey_client::proto::assertion::Purpose;
    use std::process::Stdio;
    let url = postgres::migrated_database();
    let dir = tempfile::tempdir().unwrap();
    let ghostkey = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ghostkey"));
        for (k, _) in std::env::vars() {
            if k.starts_with("GHOSTKEY_") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        cmd.current_dir(dir.path())
            .env("GHOSTKEY_DATABASE__URL", &url)
            .env("GHOSTKEY_LOG__LEVEL", "trace");
        cmd
    };
    let key = ghostkey_client::AppSigningKey::generate("k1");
    let out = ghostkey()
        .args(["app", "add", "--name", "Notes", "--key-id", "k1"])
        .args(["--public-key", &key.public_key_b64()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let app_id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log_path = dir.path().join("serve.log");
    let mut child = ghostkey()
        .arg("serve")
        .env("GHOSTKEY_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let client = ghostkey_client::Client::new(&format!("http://127.0.0.1:{port}")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while client.ready().await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not come up"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let user = "patient-4711-dupont";
    let assertion = key
        .mint(
            &AssertionRequest {
                app_id: &app_id,
                user_id: user,
                audience: "ghostkey-dev",
                purpose: Purpose::Enroll,
            },
            unix_now(),
            120,
        )
        .unwrap();
    let enrolled = ghostkey_client::enroll(
        &client,
        &assertion,
        &ghostkey_client::UserSecret::generate(),
        &app_id,
        user,
        &key,
    )
    .await;
    let _ = child.kill();
    let _ = child.wait();
    enrolled.unwrap();
    let log = std::fs::read_to_string(&log_path).unwrap();
    // The log is at trace (so the test can tell), and holds no statement's parameters.
    assert!(log.contains("TRACE"), "{log}");
    assert!(
        !log.contains(user),
        "a user id reached the log: {}",
        log.lines()
            .filter(|l| l.contains(user))
            .take(5)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        !log.contains("with parameters"),
        "statement parameters reached the log"
    );
}
