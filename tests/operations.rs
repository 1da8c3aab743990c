//! Operator commands: a backup taken under load restores and serves a recovery; a user
//! is shown (masked) and erased from the command line.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{sms_gateway, TestServer};
use ghostkey_client::proto::api::MethodKind;
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::recovery::{Recovered, RecoveryDriver};
use ghostkey_client::UserSecret;

fn ghostkey(db: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ghostkey"));
    for (k, _) in std::env::vars() {
        if k.starts_with("GHOSTKEY_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("GHOSTKEY_DATABASE__PATH", db);
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_taken_under_load_restores_and_serves_a_recovery() {
    let gateway = sms_gateway::accepting().await;
    let server = TestServer::start_with(|c| sms_gateway::configure(c, &gateway));
    let app = server.register_app("Health");
    // All the load comes from one address: lift that limit for this test.
    server.set_policy(
        &app,
        ghostkey::domain::policy::PolicyChange {
            requests_per_address_per_minute: Some(10_000),
            ..Default::default()
        },
    );
    let client = server.client();
    let secret = UserSecret::generate();
    let enrolled = ghostkey_client::enroll(
        &client,
        &app.assertion("u", Purpose::Enroll),
        &secret,
        &app.id,
        "u",
        &app.key,
    )
    .await
    .unwrap();
    let added = client
        .add_method(
            &app.assertion("u", Purpose::Enroll),
            MethodKind::Sms,
            Some("+33 6 12 34 56 78"),
            None,
        )
        .await
        .unwrap();
    client
        .answer(&added.challenge.id, &sms_gateway::code(&gateway, 0).await)
        .await
        .unwrap();

    // Load: enrolments keep coming until the backup is done and the load was seen going
    // on after it.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let load = {
        let client = client.clone();
        let app = app.clone_for_test();
        let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
        tokio::spawn(async move {
            let mut failures = Vec::new();
            for i in 0..2000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let user = format!("load-{i}");
                match ghostkey_client::enroll(
                    &client,
                    &app.assertion(&user, Purpose::Enroll),
                    &UserSecret::generate(),
                    &app.id,
                    &user,
                    &app.key,
                )
                .await
                {
                    Ok(_) => {
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => failures.push(format!("enrolment {i} failed: {e}")),
                }
            }
            failures
        })
    };
    const BEFORE: i64 = 5;
    common::wait_until(
        "the load to be under way before the backup",
        Duration::from_secs(30),
        || {
            (server.query_i64("SELECT count(*) FROM users WHERE user_id LIKE 'load-%'") >= BEFORE)
                .then_some(())
        },
    )
    .await;
    let backup = server.dir.path().join("backup.db");
    let out = ghostkey(&server.db_path())
        .arg("backup")
        .arg(&backup)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let at_backup_end = done.load(Ordering::SeqCst);
    common::wait_until(
        "an enrolment acknowledged after the backup",
        Duration::from_secs(30),
        || (done.load(Ordering::SeqCst) > at_backup_end).then_some(()),
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    let failures = load.await.unwrap();
    assert!(
        failures.is_empty(),
        "the server kept serving during the backup: {failures:?}"
    );
    let loaded = done.load(Ordering::SeqCst) as i64;
    // A second backup to the same path is refused.
    let out = ghostkey(&server.db_path())
        .arg("backup")
        .arg(&backup)
        .output()
        .unwrap();
    assert!(!out.status.success());

    // Restore into a fresh place, with the data key the operator kept separately.
    let restored = tempfile::tempdir().unwrap();
    let db = restored.path().join("ghostkey.db");
    let out = ghostkey(&db).arg("restore").arg(&backup).output().unwrap();
    assert!(!out.status.success(), "restore needs --yes");
    let out = ghostkey(&db)
        .arg("restore")
        .arg(&backup)
        .arg("--yes")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::copy(
        server.config.dev_data_key_path(),
        restored.path().join("ghostkey.db.data-key"),
    )
    .unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
    // The backup overlapped the load: it holds the load's users enrolled before it
    // started, and not those acknowledged after it ended.
    let in_backup: i64 = conn
        .query_row(
            "SELECT count(*) FROM users WHERE user_id LIKE 'load-%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        (BEFORE..loaded).contains(&in_backup),
        "{in_backup} of the load's {loaded} users are in the backup (at least {BEFORE} were \
         enrolled before it started)"
    );
    eprintln!("backup under load: {in_backup} of the load's {loaded} enrolments in it");
    drop(conn);
    // The restored audit log verifies.
    let out = ghostkey(&db).args(["audit", "verify"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let gateway2 = sms_gateway::accepting().await;
    let restored_server = server.restart(|c| {
        c.database.path = db.clone();
        sms_gateway::configure(c, &gateway2);
    });
    let client = restored_server.client();
    let driver = RecoveryDriver::new(&client, &secret, &app.id, "u");
    let started = driver
        .start(&app.assertion("u", Purpose::Recover), &added.method.id)
        .await
        .unwrap();
    let code = sms_gateway::code(&gateway2, 0).await;
    let Recovered::Released(vd) = driver.submit_code(&started.id, &code).await.unwrap() else {
        panic!("released")
    };
    assert_eq!(*vd, enrolled.virtual_device);
}

#[tokio::test]
async fn operators_see_users_masked_and_can_erase_them() {
    let gateway = sms_gateway::accepting().await;
    let server = TestServer::start_with(|c| sms_gateway::configure(c, &gateway));
    let app = server.register_app("Health");
    let client = server.client();
    common::enrol(&server, &app, "u").await;
    let added = client
        .add_method(
            &app.assertion("u", Purpose::Enroll),
            MethodKind::Sms,
            Some("+33 6 12 34 56 78"),
            None,
        )
        .await
        .unwrap();
    client
        .answer(&added.challenge.id, &sms_gateway::code(&gateway, 0).await)
        .await
        .unwrap();

    let out = ghostkey(&server.db_path())
        .args(["user", "show", &app.id, "u", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("612345678"), "{text}");
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["state"], "active");
    assert_eq!(report["methods"][0]["masked"], "+33 6******78");
    assert_eq!(report["chain_blocks"], 1);

    let out = ghostkey(&server.db_path())
        .args(["user", "erase", &app.id, "u"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "erasure needs --yes");
    let out = ghostkey(&server.db_path())
        .args(["user", "erase", &app.id, "u", "--yes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(server.count("users"), 0);
    assert_eq!(server.count("methods"), 0);
    assert_eq!(server.count("chain_blocks"), 0);
    let out = ghostkey(&server.db_path())
        .args(["user", "show", &app.id, "u"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("no enrolled user"));
}
