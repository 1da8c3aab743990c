//! SIGTERM during requests: the server stops accepting, finishes what it accepted, and
//! every acknowledged write is in the database.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ghostkey_client::kit::AssertionRequest;
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::{AppSigningKey, Client, UserSecret};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_requests_loses_none_of_them() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ghostkey = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ghostkey"));
        for (k, _) in std::env::vars() {
            if k.starts_with("GHOSTKEY_") {
                cmd.env_remove(k);
            }
        }
        cmd.current_dir(dir.path())
            .args(args)
            .env("GHOSTKEY_SERVER__LISTEN", format!("127.0.0.1:{port}"));
        cmd
    };
    let key = AppSigningKey::generate("k1");
    let out = ghostkey(&[
        "app",
        "add",
        "--name",
        "Load",
        "--key-id",
        "k1",
        "--public-key",
        &key.public_key_b64(),
    ])
    .output()
    .unwrap();
    assert!(out.status.success());
    let app_id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    ghostkey(&[
        "app",
        "policy",
        "set",
        &app_id,
        "--requests-per-address-per-minute",
        "100000",
    ])
    .output()
    .unwrap();

    let mut server = ghostkey(&["serve"]).stderr(Stdio::null()).spawn().unwrap();
    let client = Client::new(&format!("http://127.0.0.1:{port}")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.health().await.is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let now = ghostkey_client::kit::unix_now();
    let tasks: Vec<_> = (0..80)
        .map(|i| {
            let client = client.clone();
            let user = format!("user-{i}");
            let assertion = key
                .mint(
                    &AssertionRequest {
                        app_id: &app_id,
                        user_id: &user,
                        audience: "ghostkey-dev",
                        purpose: Purpose::Enroll,
                    },
                    now,
                    120,
                )
                .unwrap();
            let (app_id, key) = (app_id.clone(), key.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(i * 3)).await;
                ghostkey_client::enroll(
                    &client,
                    &assertion,
                    &UserSecret::generate(),
                    &app_id,
                    &user,
                    &key,
                )
                .await
                .map(|e| e.answer.user_id)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(60)).await;
    Command::new("kill")
        .arg("-TERM")
        .arg(server.id().to_string())
        .status()
        .unwrap();

    let mut acknowledged = Vec::new();
    let mut refused_at_the_door = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(user) => acknowledged.push(user),
            // After SIGTERM new connections are refused; never a server error.
            Err(ghostkey_client::ClientError::Transport(_)) => refused_at_the_door += 1,
            Err(e) => panic!("a request got an error answer during shutdown: {e}"),
        }
    }
    let status = tokio::task::spawn_blocking(move || server.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        !acknowledged.is_empty(),
        "the load started too late to test anything"
    );
    assert!(
        refused_at_the_door > 0,
        "the load ended before the signal: nothing was in flight"
    );

    let conn = rusqlite::Connection::open(dir.path().join("ghostkey.db")).unwrap();
    for user in &acknowledged {
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM users WHERE user_id = ?1",
                [user],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1, "acknowledged enrolment of {user} is missing");
    }
    let total: i64 = conn
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .unwrap();
    assert!(total as usize >= acknowledged.len());
}
