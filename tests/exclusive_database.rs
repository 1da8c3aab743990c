//! One server per SQLite database, and no restore under a running server: restoring
//! would roll back spent assertions, used codes and locks while the server goes on
//! answering. Both are refused with a message that says what to do, and change nothing.

mod common;

use std::process::{Command, Output};
use std::sync::Arc;

use common::TestServer;
use ghostkey_client::proto::assertion::Purpose;

fn ghostkey(db: &std::path::Path) -> Command {
    common::ghostkey_on(db)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn users(db: &std::path::Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT user_id FROM users ORDER BY user_id")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[tokio::test]
async fn restore_is_refused_while_a_server_runs_on_the_database_and_allowed_once_stopped() {
    let server = TestServer::start();
    let app = server.register_app("Health");
    common::enrol(&server, &app, "before-backup").await;
    let db = server.db_path();
    let backup = server.dir.path().join("backup.db");
    let out = ghostkey(&db).arg("backup").arg(&backup).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // A user enrolled after the backup: a restore would take them away.
    common::enrol(&server, &app, "after-backup").await;

    let out = ghostkey(&db)
        .arg("restore")
        .arg(&backup)
        .arg("--yes")
        .output()
        .unwrap();
    assert!(!out.status.success(), "a restore ran under a live server");
    let err = stderr(&out);
    assert!(
        err.contains("a server (or another restore) is running on the database")
            && err.contains("stop it first"),
        "{err}"
    );
    assert_eq!(users(&db), ["after-backup", "before-backup"]);
    // The server was not disturbed.
    let client = server.client();
    client
        .erase_user(&app.assertion("after-backup", Purpose::Manage))
        .await
        .unwrap();

    // Stopped, the same restore goes through.
    let dir = Arc::clone(&server.dir);
    drop(server);
    let out = ghostkey(&db)
        .arg("restore")
        .arg(&backup)
        .arg("--yes")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(users(&db), ["before-backup"]);
    drop(dir);
}

#[tokio::test]
async fn a_second_server_on_the_same_database_refuses_to_start() {
    let server = TestServer::start();
    let app = server.register_app("Health");
    common::enrol(&server, &app, "alice-7").await;
    let mut config = server.config.clone();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    let second = std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            ghostkey::server::start(&config)
                .map(|running| running.addr)
                .map_err(|e| e.to_string())
        })
    })
    .join()
    .unwrap();
    let err = second.expect_err("a second server started on the same SQLite database");
    assert!(
        err.contains("already uses the database") && err.contains("PostgreSQL"),
        "{err}"
    );
    // The first one still serves.
    server
        .client()
        .erase_user(&app.assertion("alice-7", Purpose::Manage))
        .await
        .unwrap();
    // And its lock goes with it: a restart on the same database starts.
    let restarted = server.restart(|_| {});
    restarted.register_app("After restart");
}
