//! The `ghostkey` binary: zero-configuration development start, production refusals and
//! the app registry commands.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ghostkey_client::proto::api::MethodKind;
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::AppSigningKey;

fn ghostkey(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ghostkey"));
    cmd.current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("GHOSTKEY_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn serve_with_no_configuration_runs_a_development_instance() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Nothing configured but the port, so the test does not collide with a real 8080.
    let child = ghostkey(dir.path())
        .arg("serve")
        .env("GHOSTKEY_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = ghostkey_client::Client::new(&format!("http://127.0.0.1:{port}")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let health = loop {
        match client.health().await {
            Ok(h) => break h,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("server did not come up: {e}"),
        }
    };
    assert_eq!(health.status, "ok");
    assert_eq!(client.ready().await.unwrap().status, "ok");
    assert!(dir.path().join("ghostkey.db").is_file());
    let key = dir.path().join("ghostkey.db.data-key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let key_before = std::fs::read(&key).unwrap();

    // Something encrypted under that key: an app, a user and a phone number.
    let app_key = AppSigningKey::generate("k1");
    let out = run(ghostkey(dir.path()).args([
        "app",
        "add",
        "--name",
        "Health",
        "--key-id",
        "k1",
        "--public-key",
        &app_key.public_key_b64(),
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let app_id = text(&out.stdout).trim().to_owned();
    let assertion = |purpose| {
        app_key
            .mint(
                &ghostkey_client::kit::AssertionRequest {
                    app_id: &app_id,
                    user_id: "u",
                    audience: ghostkey::config::DEV_SERVICE_ID,
                    purpose,
                },
                ghostkey_client::kit::unix_now(),
                120,
            )
            .unwrap()
    };
    ghostkey_client::enroll(
        &client,
        &assertion(Purpose::Enroll),
        &ghostkey_client::UserSecret::generate(),
        &app_id,
        "u",
        &app_key,
    )
    .await
    .unwrap();
    client
        .add_method(
            &assertion(Purpose::Enroll),
            MethodKind::Sms,
            Some("+33 6 12 34 56 78"),
            None,
        )
        .await
        .unwrap();

    // SIGTERM: a graceful stop.
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let log = text(&out.stderr);
    assert!(log.contains("DEVELOPMENT SETUP"), "{log}");
    assert!(
        log.contains("generated a new development data key"),
        "{log}"
    );
    assert!(
        !log.contains(std::str::from_utf8(&key_before).unwrap().trim()),
        "the data key was logged"
    );

    // A second start of the server reuses the key: it decrypts the stored phone number to
    // show it masked (a new key would fail to, and answer 500).
    let port = free_port();
    let child = ghostkey(dir.path())
        .arg("serve")
        .env("GHOSTKEY_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = ghostkey_client::Client::new(&format!("http://127.0.0.1:{port}")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.health().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the second start did not come up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let methods = client
        .list_methods(&assertion(Purpose::Manage))
        .await
        .unwrap();
    assert_eq!(methods.methods.len(), 1);
    assert_eq!(methods.methods[0].masked.as_deref(), Some("+33 6******78"));
    assert_eq!(std::fs::read(&key).unwrap(), key_before);
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    assert!(
        !text(&out.stderr).contains("generated a new development data key"),
        "the second start made a new key"
    );
}

#[test]
fn production_refuses_development_defaults_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(ghostkey(dir.path())
        .arg("serve")
        .env("GHOSTKEY_MODE", "production"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("service_id"),
        "{}",
        text(&out.stderr)
    );

    let out = run(ghostkey(dir.path())
        .arg("serve")
        .env("GHOSTKEY_MODE", "production")
        .env("GHOSTKEY_SERVICE_ID", "gk.example.org"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("keys.data_key_file"),
        "{}",
        text(&out.stderr)
    );

    let out = run(ghostkey(dir.path())
        .arg("serve")
        .env("GHOSTKEY_SERVER__LISTEN", "nowhere"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("server.listen"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !dir.path().join("ghostkey.db").exists(),
        "a refused start created a database"
    );
}

#[test]
fn app_registry_commands() {
    let dir = tempfile::tempdir().unwrap();
    let key = AppSigningKey::generate("k1");

    let out = run(ghostkey(dir.path()).args([
        "app",
        "add",
        "--name",
        "Health",
        "--key-id",
        "k1",
        "--public-key",
        &key.public_key_b64(),
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let app_id = text(&out.stdout).trim().to_owned();
    assert!(app_id.starts_with("app_"), "{app_id}");

    let out = run(ghostkey(dir.path()).args(["app", "list"]));
    assert!(text(&out.stdout).contains(&app_id));

    // A PEM key from a file, as openssl writes it.
    let second = AppSigningKey::generate("k2");
    let pem = {
        use ed25519_dalek::pkcs8::EncodePublicKey;
        let pk: [u8; 32] =
            ghostkey_client::proto::b64::decode_array(&second.public_key_b64()).unwrap();
        ed25519_dalek::VerifyingKey::from_bytes(&pk)
            .unwrap()
            .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .unwrap()
    };
    std::fs::write(dir.path().join("k2.pem"), pem).unwrap();
    let out = run(ghostkey(dir.path()).args([
        "app",
        "key",
        "add",
        &app_id,
        "--key-id",
        "k2",
        "--public-key-file",
        "k2.pem",
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = run(ghostkey(dir.path()).args(["app", "key", "revoke", &app_id, "k1"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(ghostkey(dir.path()).args(["app", "key", "revoke", &app_id, "k1"]));
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("already revoked"));

    let out = run(ghostkey(dir.path()).args([
        "app",
        "policy",
        "set",
        &app_id,
        "--waiting-period-secs",
        "3600",
        "--allowed-methods",
        "totp,email",
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = run(ghostkey(dir.path()).args(["app", "show", &app_id, "--json"]));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["policy"]["waiting_period_secs"], 3600);
    assert_eq!(
        shown["policy"]["allowed_methods"],
        serde_json::json!(["totp", "email"])
    );
    assert_eq!(shown["policy"]["code_digits"], 8);
    assert_eq!(shown["keys"][0]["kid"], "k1");
    assert!(shown["keys"][0]["revoked_at"].is_i64());
    assert!(shown["keys"][1]["revoked_at"].is_null());
    // Recent activity from the audit log: added, key added, key revoked, policy set.
    assert_eq!(shown["users"], 0);
    assert_eq!(shown["events_last_24h"], 4);
    assert!(shown["last_activity"].is_i64());

    // Clear errors, and nothing changed.
    let pk = key.public_key_b64();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["app", "show", "app_nope"], "no app with id `app_nope`"),
        (
            vec![
                "app",
                "key",
                "add",
                "app_nope",
                "--key-id",
                "k",
                "--public-key",
                &pk,
            ],
            "no app with id",
        ),
        (
            vec![
                "app",
                "key",
                "add",
                &app_id,
                "--key-id",
                "k3",
                "--public-key",
                "AAAA",
            ],
            "32 bytes",
        ),
        (
            vec![
                "app",
                "key",
                "add",
                &app_id,
                "--key-id",
                "k2",
                "--public-key",
                &pk,
            ],
            "already has a key `k2`",
        ),
        (
            vec![
                "app",
                "key",
                "add",
                &app_id,
                "--key-id",
                "bad id",
                "--public-key",
                &pk,
            ],
            "key id must be",
        ),
        (
            vec!["app", "key", "revoke", &app_id, "k9"],
            "has no key `k9`",
        ),
        (
            vec!["app", "policy", "set", &app_id, "--code-digits", "4"],
            "code_digits must be between 6 and 10",
        ),
        (
            vec![
                "app",
                "policy",
                "set",
                &app_id,
                "--allowed-methods",
                "pigeon",
            ],
            "unknown method `pigeon`",
        ),
        (
            vec![
                "app",
                "add",
                "--name",
                "X",
                "--key-id",
                "k1",
                "--public-key",
                "!!",
            ],
            "neither base64url nor PEM",
        ),
    ];
    for (args, expected) in cases {
        let out = run(ghostkey(dir.path()).args(&args));
        assert!(!out.status.success(), "{args:?}");
        assert!(
            text(&out.stderr).contains(expected),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    let out = run(ghostkey(dir.path()).args(["app", "show", &app_id, "--json"]));
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again, shown);
    let out = run(ghostkey(dir.path()).args(["app", "list", "--json"]));
    let apps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(apps.as_array().unwrap().len(), 1);
}

#[test]
fn a_base64url_key_starting_with_a_dash_is_read_as_the_value() {
    let dir = tempfile::tempdir().unwrap();
    // Find a key whose base64url form starts with '-' (about 1 in 64).
    let key = (0..10_000)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..4].copy_from_slice(&(i as u32).to_le_bytes());
            AppSigningKey::from_seed("k1", &seed)
        })
        .find(|k| k.public_key_b64().starts_with('-'))
        .unwrap();
    let out = run(ghostkey(dir.path()).args([
        "app",
        "add",
        "--name",
        "Dash",
        "--key-id",
        "k1",
        "--public-key",
        &key.public_key_b64(),
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Issue 18 (data key problems): a deleted development key was silently regenerated and
/// every request touching the stored values answered 500. Now the server refuses to start
/// and says which key is missing and what to do.
#[tokio::test]
async fn a_store_written_under_another_data_key_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = ghostkey(dir.path())
        .arg("serve")
        .env("GHOSTKEY_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = ghostkey_client::Client::new(&format!("http://127.0.0.1:{port}")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.health().await.is_err() {
        assert!(Instant::now() < deadline, "the server did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let app_key = AppSigningKey::generate("k1");
    let out = run(ghostkey(dir.path()).args([
        "app",
        "add",
        "--name",
        "Health",
        "--key-id",
        "k1",
        "--public-key",
        &app_key.public_key_b64(),
    ]));
    let app_id = text(&out.stdout).trim().to_owned();
    let assertion = || {
        app_key
            .mint(
                &ghostkey_client::kit::AssertionRequest {
                    app_id: &app_id,
                    user_id: "u",
                    audience: ghostkey::config::DEV_SERVICE_ID,
                    purpose: Purpose::Enroll,
                },
                ghostkey_client::kit::unix_now(),
                120,
            )
            .unwrap()
    };
    ghostkey_client::enroll(
        &client,
        &assertion(),
        &ghostkey_client::UserSecret::generate(),
        &app_id,
        "u",
        &app_key,
    )
    .await
    .unwrap();
    client
        .add_method(
            &assertion(),
            MethodKind::Sms,
            Some("+33 6 12 34 56 78"),
            None,
        )
        .await
        .unwrap();
    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());

    std::fs::remove_file(dir.path().join("ghostkey.db.data-key")).unwrap();
    let out = run(ghostkey(dir.path()).arg("serve").env(
        "GHOSTKEY_SERVER__LISTEN",
        format!("127.0.0.1:{}", free_port()),
    ));
    assert!(!out.status.success(), "it served with the wrong key");
    let err = text(&out.stderr);
    assert!(err.contains("does not have"), "{err}");
    assert!(err.contains("deleted or moved"), "{err}");
    assert!(err.contains("keys.data_key_file"), "{err}");
}
