//! SIGTERM during requests: the server stops accepting, finishes what it accepted, and
//! every acknowledged write is in the database.

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
    let out = ghostkey(&[
        "app",
        "policy",
        "set",
        &app_id,
        "--requests-per-address-per-minute",
        "100000",
    ])
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut server = ghostkey(&["serve"]).stderr(Stdio::null()).spawn().unwrap();
    let client = Client::new(&format!("http://127.0.0.1:{port}")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.health().await.is_err() {
        assert!(Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Load: WORKERS clients each enrol one user after another until the server refuses
    // them at the door. The signal goes once LOADED_BEFORE_SIGNAL enrolments were
    // acknowledged, with every client in the middle of its next one.
    const WORKERS: usize = 8;
    const LOADED_BEFORE_SIGNAL: usize = 10;
    const MAX_PER_WORKER: usize = 500;
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..WORKERS)
        .map(|w| {
            let client = client.clone();
            let (app_id, key) = (app_id.clone(), key.clone());
            let (acknowledged, in_flight) = (Arc::clone(&acknowledged), Arc::clone(&in_flight));
            tokio::spawn(async move {
                for n in 0..MAX_PER_WORKER {
                    let user = format!("user-{w}-{n}");
                    let assertion = key
                        .mint(
                            &AssertionRequest {
                                app_id: &app_id,
                                user_id: &user,
                                audience: "ghostkey-dev",
                                purpose: Purpose::Enroll,
                            },
                            ghostkey_client::kit::unix_now(),
                            120,
                        )
                        .unwrap();
                    in_flight.fetch_add(1, Ordering::SeqCst);
                    let result = ghostkey_client::enroll(
                        &client,
                        &assertion,
                        &UserSecret::generate(),
                        &app_id,
                        &user,
                        &key,
                    )
                    .await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    match result {
                        Ok(e) => acknowledged.lock().unwrap().push(e.answer.user_id),
                        // After SIGTERM new connections are refused; never a server error.
                        Err(ghostkey_client::ClientError::Transport(_)) => return Ok(n),
                        Err(e) => {
                            return Err(format!("{user} got an error answer during shutdown: {e}"))
                        }
                    }
                }
                Err(format!(
                    "client {w} was never refused: the load ended before the signal"
                ))
            })
        })
        .collect();
    let loaded = common::wait_until(
        "enrolments to be acknowledged before the signal",
        Duration::from_secs(30),
        || {
            let n = acknowledged.lock().unwrap().len();
            (n >= LOADED_BEFORE_SIGNAL).then_some(n)
        },
    )
    .await;
    let busy_at_signal = in_flight.load(Ordering::SeqCst);
    let signalled = Instant::now();
    Command::new("kill")
        .arg("-TERM")
        .arg(server.id().to_string())
        .status()
        .unwrap();

    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            panic!("{e}");
        }
    }
    let status = tokio::task::spawn_blocking(move || server.wait().unwrap())
        .await
        .unwrap();
    let stopped_in = signalled.elapsed();
    assert!(status.success(), "{status:?}");
    assert!(
        busy_at_signal > 0,
        "no enrolment was in flight at the signal: nothing was tested"
    );
    let acknowledged = acknowledged.lock().unwrap().clone();
    eprintln!(
        "{loaded} enrolments acknowledged before SIGTERM, {} in all, {busy_at_signal} in \
         flight at the signal; every client then refused at the door; the server exited in \
         {:.2} s",
        acknowledged.len(),
        stopped_in.as_secs_f64()
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
