//! Passphrase methods over HTTP (docs/PROTOCOL.md §5.6), hostile cases first: wrong
//! verifiers counted and capped like codes, malformed verifiers refused with nothing
//! changed, the passphrase and its verifier nowhere in the database file or its WAL, the
//! Argon2 pool shedding a burst with 503 and Retry-After, and the whole enrol → recover.

mod common;

use std::time::Duration;

use common::{enrol, TestApp, TestServer};
use ghostkey::domain::policy::PolicyChange;
use ghostkey_client::passphrase;
use ghostkey_client::proto::api::{
    ChallengePurpose, EnrollmentState, MethodKind, MethodState, PassphraseParams, Proof,
};
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::proto::ErrorCode;
use secrecy::{ExposeSecret, SecretString};

const PASSPHRASE: &str = "violet anchors drift past seven lanterns";
const OTHER: &str = "a wholly different passphrase, also long";

fn allow_passphrase(server: &TestServer, app: &TestApp) {
    server.set_policy(
        app,
        PolicyChange {
            allowed_methods: Some(vec![MethodKind::Totp, MethodKind::Passphrase]),
            ..PolicyChange::default()
        },
    );
}

fn verifier(app: &TestApp, user: &str, text: &str) -> SecretString {
    passphrase::derive_verifier(&SecretString::from(text.to_owned()), &app.id, user, 1).unwrap()
}

/// Enrols `user` with a confirmed passphrase method; returns the method id.
async fn enrol_with_passphrase(server: &TestServer, app: &TestApp, user: &str) -> String {
    enrol(server, app, user).await;
    let client = server.client();
    let setup =
        passphrase::setup(&SecretString::from(PASSPHRASE.to_owned()), &app.id, user).unwrap();
    let added = client
        .add_passphrase(&app.assertion(user, Purpose::Enroll), setup, None)
        .await
        .unwrap();
    assert_eq!(added.method.kind, MethodKind::Passphrase);
    assert_eq!(added.method.masked, None);
    assert_eq!(added.challenge.passphrase, Some(PassphraseParams::V1));
    let answer = passphrase::answer(
        &SecretString::from(PASSPHRASE.to_owned()),
        &app.id,
        user,
        added.challenge.passphrase.as_ref(),
    )
    .unwrap();
    let confirmed = client
        .answer(&added.challenge.id, answer.expose_secret())
        .await
        .unwrap();
    assert_eq!(confirmed.method.state, MethodState::Confirmed);
    assert_eq!(confirmed.enrollment_state, EnrollmentState::Active);
    added.method.id
}

#[tokio::test]
async fn the_passphrase_kind_is_refused_unless_the_app_allows_it() {
    let server = TestServer::start();
    let app = server.register_app("Health");
    enrol(&server, &app, "u1").await;
    let setup =
        passphrase::setup(&SecretString::from(PASSPHRASE.to_owned()), &app.id, "u1").unwrap();
    let err = server
        .client()
        .add_passphrase(&app.assertion("u1", Purpose::Enroll), setup, None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::MethodKindNotAllowed));
    assert_eq!(server.count("methods"), 0);
}

#[tokio::test]
async fn malformed_verifiers_and_answers_of_the_wrong_shape_change_nothing() {
    let server = TestServer::start();
    let app = server.register_app("Health");
    allow_passphrase(&server, &app);
    enrol(&server, &app, "u1").await;
    let http = reqwest::Client::new();
    let good = verifier(&app, "u1", PASSPHRASE);
    let bodies = [
        // Not base64url, too short, too long, padded, unknown version, missing, beside a
        // destination, on another kind.
        serde_json::json!({"kind": "passphrase", "passphrase": {"version": 1, "verifier": "correct horse battery staple correct horse"}}),
        serde_json::json!({"kind": "passphrase", "passphrase": {"version": 1, "verifier": ghostkey_client::proto::b64::encode([1u8; 31])}}),
        serde_json::json!({"kind": "passphrase", "passphrase": {"version": 1, "verifier": ghostkey_client::proto::b64::encode([1u8; 33])}}),
        serde_json::json!({"kind": "passphrase", "passphrase": {"version": 1, "verifier": format!("{}=", good.expose_secret())}}),
        serde_json::json!({"kind": "passphrase", "passphrase": {"version": 2, "verifier": good.expose_secret()}}),
        serde_json::json!({"kind": "passphrase"}),
        serde_json::json!({"kind": "passphrase", "destination": "x@example.org", "passphrase": {"version": 1, "verifier": good.expose_secret()}}),
        serde_json::json!({"kind": "totp", "passphrase": {"version": 1, "verifier": good.expose_secret()}}),
    ];
    for body in bodies {
        let res = http
            .post(format!("{}/v1/methods", server.base_url))
            .bearer_auth(app.assertion("u1", Purpose::Enroll))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 422, "{body}");
        let problem: serde_json::Value = res.json().await.unwrap();
        assert_eq!(problem["code"], "invalid_field", "{body}");
        // The refusal names no part of the value.
        assert!(!problem.to_string().contains(&good.expose_secret()[..20]));
        assert_eq!(server.count("methods"), 0, "{body}");
        assert_eq!(server.count("challenges"), 0, "{body}");
    }

    // A pending passphrase method: digits are not an answer to it, and a verifier is not
    // an answer to a code; neither counts.
    let client = server.client();
    let setup =
        passphrase::setup(&SecretString::from(PASSPHRASE.to_owned()), &app.id, "u1").unwrap();
    let added = client
        .add_passphrase(&app.assertion("u1", Purpose::Enroll), setup, None)
        .await
        .unwrap();
    let err = client
        .answer(&added.challenge.id, "12345678")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidField));
    assert_eq!(server.query_i64("SELECT attempts FROM challenges"), 0);
    assert_eq!(server.count("user_failures"), 0);
}

#[tokio::test]
async fn wrong_passphrases_are_counted_capped_and_backed_off_like_codes() {
    let server = TestServer::start();
    let app = server.register_app("Health");
    allow_passphrase(&server, &app);
    let method = enrol_with_passphrase(&server, &app, "u1").await;
    let client = server.client();

    let recovery = client
        .start_recovery(&app.assertion("u1", Purpose::Recover), &method)
        .await
        .unwrap();
    assert_eq!(recovery.kind, MethodKind::Passphrase);
    assert_eq!(recovery.passphrase, Some(PassphraseParams::V1));
    let wrong = verifier(&app, "u1", OTHER);
    let err = client
        .verify_recovery(&recovery.id, wrong.expose_secret())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidCode));
    // At once again: the user backs off (2 s after the first failure), nothing checked.
    let err = client
        .verify_recovery(&recovery.id, wrong.expose_secret())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::UserBackoff));
    server.clock.advance(2);
    let err = client
        .verify_recovery(&recovery.id, wrong.expose_secret())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidCode));
    server.clock.advance(4);
    let err = client
        .verify_recovery(&recovery.id, wrong.expose_secret())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidCode));
    // Three wrong answers: the challenge is dead, even for the right passphrase.
    server.clock.advance(8);
    let right = verifier(&app, "u1", PASSPHRASE);
    let err = client
        .verify_recovery(&recovery.id, right.expose_secret())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TooManyAttempts));
    assert_eq!(server.count("user_failures"), 3);

    // A new recovery with the right passphrase releases the sealed virtual device.
    let recovery = client
        .start_recovery(&app.assertion("u1", Purpose::Recover), &method)
        .await
        .unwrap();
    let released = client
        .verify_recovery(&recovery.id, right.expose_secret())
        .await
        .unwrap();
    assert!(released.sealed_virtual_device.is_some());
}

#[tokio::test]
async fn a_passphrase_proves_a_change_and_is_replaced_by_adding_a_new_one_and_removing_the_old() {
    let server = TestServer::start();
    let app = server.register_app("Health");
    allow_passphrase(&server, &app);
    let old = enrol_with_passphrase(&server, &app, "u1").await;
    let client = server.client();
    let proof_for = |id: String, v: &SecretString| Proof {
        challenge_id: id,
        code: Some(v.expose_secret().to_owned()),
        webauthn: None,
    };
    let right = verifier(&app, "u1", PASSPHRASE);

    // New passphrase, proven by the old one.
    let proof = client
        .start_challenge(
            &app.assertion("u1", Purpose::Manage),
            &old,
            ChallengePurpose::Proof,
        )
        .await
        .unwrap();
    assert_eq!(proof.passphrase, Some(PassphraseParams::V1));
    let setup = passphrase::setup(&SecretString::from(OTHER.to_owned()), &app.id, "u1").unwrap();
    let added = client
        .add_passphrase(
            &app.assertion("u1", Purpose::Manage),
            setup,
            Some(proof_for(proof.id, &right)),
        )
        .await
        .unwrap();
    let new_right = verifier(&app, "u1", OTHER);
    client
        .answer(&added.challenge.id, new_right.expose_secret())
        .await
        .unwrap();

    // The old one removed, proven by the new one.
    let proof = client
        .start_challenge(
            &app.assertion("u1", Purpose::Manage),
            &added.method.id,
            ChallengePurpose::Proof,
        )
        .await
        .unwrap();
    client
        .remove_method(
            &app.assertion("u1", Purpose::Manage),
            &old,
            proof_for(proof.id, &new_right),
        )
        .await
        .unwrap();
    let methods = client
        .list_methods(&app.assertion("u1", Purpose::Manage))
        .await
        .unwrap();
    assert_eq!(methods.methods.len(), 1);
    assert_eq!(methods.methods[0].id, added.method.id);
}

#[tokio::test]
async fn neither_the_passphrase_nor_its_verifier_is_in_the_database_or_its_wal() {
    let server = TestServer::start();
    let app = server.register_app("Health");
    allow_passphrase(&server, &app);
    let method = enrol_with_passphrase(&server, &app, "u1").await;
    let client = server.client();
    let recovery = client
        .start_recovery(&app.assertion("u1", Purpose::Recover), &method)
        .await
        .unwrap();
    client
        .verify_recovery(
            &recovery.id,
            verifier(&app, "u1", PASSPHRASE).expose_secret(),
        )
        .await
        .unwrap();
    let raw = server.raw_database();
    let v = verifier(&app, "u1", PASSPHRASE);
    let v_bytes = ghostkey_client::proto::b64::decode(v.expose_secret()).unwrap();
    for needle in [
        PASSPHRASE.as_bytes(),
        &PASSPHRASE.as_bytes()[..12],
        v.expose_secret().as_bytes(),
        &v_bytes[..],
        &v_bytes[..12],
    ] {
        assert!(
            !raw.windows(needle.len()).any(|w| w == needle),
            "found a secret in the database"
        );
    }
    // The method secret is sealed: not even the Argon2 hash is in clear.
    let secret = server.query_blob("SELECT secret FROM methods");
    assert!(secret.len() > 24 + 16 + 1 + 16 + 32);
}

#[tokio::test]
async fn a_burst_of_checks_is_shed_with_503_and_retry_after_and_none_is_accepted_wrongly() {
    let server = TestServer::start_with(|c| {
        c.server.argon2_concurrency = 1;
        c.server.argon2_waiting = 1;
        c.server.workers = 4;
        c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    });
    let app = server.register_app("Health");
    allow_passphrase(&server, &app);
    let method = enrol_with_passphrase(&server, &app, "u1").await;

    // Twenty checks at once against challenges that do not exist: each costs one Argon2
    // computation (the same as a real check) and touches no user.
    let wrong = verifier(&app, "u1", OTHER);
    let mut tasks = Vec::new();
    for i in 0..20 {
        let client = server.client();
        let code = wrong.expose_secret().to_owned();
        tasks.push(tokio::spawn(async move {
            client.verify_recovery(&format!("ch_burst{i}"), &code).await
        }));
    }
    let (mut shed, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => panic!("a wrong check was accepted"),
            Err(e) if e.code() == Some(ErrorCode::Unavailable) => {
                match &e {
                    ghostkey_client::ClientError::Api { retry_after, .. } => {
                        assert!(retry_after.is_some_and(|s| s >= 1), "{e:?}")
                    }
                    other => panic!("{other:?}"),
                }
                shed += 1;
            }
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::InvalidCode), "{e:?}");
                refused += 1;
            }
        }
    }
    assert!(shed > 0, "nothing was shed ({refused} refused)");
    assert!(refused > 0, "everything was shed");
    assert!(
        common::metrics_text(&server).contains("ghostkey_shed_total"),
        "sheds are counted"
    );

    // Afterwards the right passphrase goes through.
    let client = server.client();
    let recovery = client
        .start_recovery(&app.assertion("u1", Purpose::Recover), &method)
        .await
        .unwrap();
    let released = client
        .verify_recovery(
            &recovery.id,
            verifier(&app, "u1", PASSPHRASE).expose_secret(),
        )
        .await
        .unwrap();
    assert!(released.sealed_virtual_device.is_some());
}

/// `ghostkey serve` as its own process at log level `trace`: after a passphrase enrolment,
/// a malformed verifier, a wrong one and a recovery, its whole log holds neither the
/// passphrase nor the verifier (nor a prefix of either).
#[tokio::test]
async fn neither_the_passphrase_nor_its_verifier_is_in_the_servers_log() {
    use ghostkey_client::kit::{unix_now, AssertionRequest};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ghostkey.db");
    let ghostkey = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ghostkey"));
        for (k, _) in std::env::vars() {
            if k.starts_with("GHOSTKEY_") || k == "RUST_LOG" {
                cmd.env_remove(k);
            }
        }
        cmd.current_dir(dir.path())
            .env("GHOSTKEY_DATABASE__PATH", &db)
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
    let out = ghostkey()
        .args(["app", "policy", "set", &app_id, "--allowed-methods"])
        .arg("totp,passphrase")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

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
    let assertion = |purpose| {
        key.mint(
            &AssertionRequest {
                app_id: &app_id,
                user_id: "u1",
                audience: "ghostkey-dev",
                purpose,
            },
            unix_now(),
            120,
        )
        .unwrap()
    };
    let typed = SecretString::from(PASSPHRASE.to_owned());
    let v = passphrase::derive_verifier(&typed, &app_id, "u1", 1).unwrap();
    let run = async {
        ghostkey_client::enroll(
            &client,
            &assertion(Purpose::Enroll),
            &ghostkey_client::UserSecret::generate(),
            &app_id,
            "u1",
            &key,
        )
        .await
        .unwrap();
        // Malformed: the verifier with a character too many.
        let mut bad = passphrase::setup(&typed, &app_id, "u1").unwrap();
        bad.verifier.push('A');
        let err = client
            .add_passphrase(&assertion(Purpose::Enroll), bad, None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidField));
        let added = client
            .add_passphrase(
                &assertion(Purpose::Enroll),
                passphrase::setup(&typed, &app_id, "u1").unwrap(),
                None,
            )
            .await
            .unwrap();
        client
            .answer(&added.challenge.id, v.expose_secret())
            .await
            .unwrap();
        let recovery = client
            .start_recovery(&assertion(Purpose::Recover), &added.method.id)
            .await
            .unwrap();
        let wrong =
            passphrase::derive_verifier(&SecretString::from(OTHER.to_owned()), &app_id, "u1", 1)
                .unwrap();
        let err = client
            .verify_recovery(&recovery.id, wrong.expose_secret())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidCode));
    };
    run.await;
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    let log = std::fs::read(&log_path).unwrap();
    assert!(log.len() > 200, "the server logged its requests");
    for needle in [
        PASSPHRASE.as_bytes(),
        &PASSPHRASE.as_bytes()[..10],
        v.expose_secret().as_bytes(),
        &v.expose_secret().as_bytes()[..12],
    ] {
        assert!(
            !log.windows(needle.len()).any(|w| w == needle),
            "a secret is in the server's log"
        );
    }
}

// A burst of passphrase checks used to leave one 19 MiB Argon2id buffer per slot held for
// good (on a 16-core host, 304 MiB after a single busy minute). A buffer is now given back
// once no hash has started for a second.
#[tokio::test]
async fn argon2_memory_is_given_back_once_no_hash_has_started_for_a_second() {
    let server = TestServer::start_with(|c| {
        c.server.argon2_concurrency = 2;
        c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    });
    let app = server.register_app("Health");
    allow_passphrase(&server, &app);
    enrol_with_passphrase(&server, &app, "u1").await;
    let held = || {
        common::metric(
            &common::metrics_text(&server),
            "ghostkey_argon2_memory_bytes",
        )
        .expect("the gauge is always exported")
    };
    // Checks against ids that name nothing: one Argon2id hash each, no user touched. The
    // gauge is read right after each, well within the second that keeps the buffer.
    let wrong = verifier(&app, "u1", OTHER);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut i = 0;
    let during = loop {
        i += 1;
        let err = server
            .client()
            .verify_recovery(&format!("ch_idle{i}"), wrong.expose_secret())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidCode), "{err:?}");
        let bytes = held();
        if bytes > 0.0 {
            break bytes;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no buffer was ever seen held"
        );
    };
    let buffer = 19.0 * 1024.0 * 1024.0;
    assert!(during >= buffer && during <= 2.0 * buffer, "{during}");
    common::wait_until("the buffers given back", Duration::from_secs(20), || {
        (held() == 0.0).then_some(())
    })
    .await;
}
