//! Key rotation: `ghostkey keys rotate` moves every at-rest secret onto the new data key
//! in batches while the server runs; codes hashed before the rotation still check; the
//! old key is reported retirable once nothing needs it, and everything works without it.

mod common;

use std::process::Command;

use common::{sms_gateway, TestServer};
use ghostkey_client::proto::api::MethodKind;
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::recovery::{Recovered, RecoveryDriver};
use ghostkey_client::UserSecret;
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

fn ghostkey(server: &TestServer, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ghostkey"));
    for (k, _) in std::env::vars() {
        if k.starts_with("GHOSTKEY_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("GHOSTKEY_DATABASE__PATH", server.db_path());
    if let Some(url) = &server.config.database.url {
        use secrecy::ExposeSecret;
        cmd.env("GHOSTKEY_DATABASE__URL", url.expose_secret());
    }
    if let Some(current) = &server.config.keys.data_key_file {
        cmd.env("GHOSTKEY_KEYS__DATA_KEY_FILE", current);
    }
    let retired: Vec<String> = server
        .config
        .keys
        .retired_key_files
        .iter()
        .map(|p| format!("\"{}\"", p.display()))
        .collect();
    cmd.env(
        "GHOSTKEY_KEYS__RETIRED_KEY_FILES",
        format!("[{}]", retired.join(",")),
    );
    cmd.args(args).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_moves_every_secret_and_the_old_key_can_go() {
    let up = sms_gateway::accepting().await;
    // `ghostkey keys rotate` runs as a process of its own and judges which codes are still
    // live by the system clock: the server's clock is the system clock too, whatever
    // TEST_CLOCK_START says.
    let server = TestServer::start_at(common::now(), |c| sms_gateway::configure(c, &up));
    let app = server.register_app("Health");
    let client = server.client();
    let old_key = server.config.dev_data_key_path();

    // u1: a confirmed phone; u2: a confirmed authenticator; u3: a phone whose code is
    // still open (hashed with the old key's pepper).
    let s1 = common::enrol(&server, &app, "u1").await;
    let phone1 = client
        .add_method(
            &app.assertion("u1", Purpose::Enroll),
            MethodKind::Sms,
            Some("+33 6 12 34 56 78"),
            None,
        )
        .await
        .unwrap();
    client
        .answer(&phone1.challenge.id, &sms_gateway::code(&up, 0).await)
        .await
        .unwrap();
    let s2 = common::enrol(&server, &app, "u2").await;
    let totp = client
        .add_method(
            &app.assertion("u2", Purpose::Enroll),
            MethodKind::Totp,
            None,
            None,
        )
        .await
        .unwrap();
    let authenticator =
        totp_rs::Totp::from_url(totp.totp.as_ref().unwrap().otpauth_uri.as_str()).unwrap();
    client
        .answer(
            &totp.challenge.id,
            &authenticator.generate(server.now() as u64).to_string(),
        )
        .await
        .unwrap();
    common::enrol(&server, &app, "u3").await;
    let phone3 = client
        .add_method(
            &app.assertion("u3", Purpose::Enroll),
            MethodKind::Sms,
            Some("+33 6 12 34 56 79"),
            None,
        )
        .await
        .unwrap();
    let open_code = sms_gateway::code(&up, 1).await;

    // A message queued under the old key while the provider is down.
    let down = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&down)
        .await;
    let server = server.restart(|c| sms_gateway::configure(c, &down));
    let recovery1 = server
        .client()
        .start_recovery(&app.assertion("u1", Purpose::Recover), &phone1.method.id)
        .await
        .unwrap();

    // A new key becomes current; the old one is retired; the server restarts on both.
    let new_key = server.dir.path().join("new.key");
    let out = ghostkey(
        &server,
        &["keys", "generate", "--out", new_key.to_str().unwrap()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new_id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let server = server.restart(|c| {
        c.keys.data_key_file = Some(new_key.clone());
        c.keys.retired_key_files = vec![old_key.clone()];
    });
    let client = server.client();

    // Rotate while enrolments keep coming.
    let load = {
        let client = client.clone();
        let app = app.clone_for_test();
        tokio::spawn(async move {
            for i in 0..20 {
                let user = format!("load-{i}");
                let token = app.assertion(&user, Purpose::Enroll);
                ghostkey_client::enroll(
                    &client,
                    &token,
                    &UserSecret::generate(),
                    &app.id,
                    &user,
                    &app.key,
                )
                .await
                .unwrap();
                client
                    .add_method(
                        &app.assertion(&user, Purpose::Enroll),
                        MethodKind::Totp,
                        None,
                        None,
                    )
                    .await
                    .unwrap();
            }
        })
    };
    let out = ghostkey(&server, &["keys", "rotate", "--batch", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    load.await.unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["current"], new_id.as_str());
    assert!(report["methods"].as_u64().unwrap() >= 3);
    assert!(report["messages"].as_u64().unwrap() >= 1);
    // Two live codes still need the old key's pepper: u3's confirmation and u1's recovery.
    assert_eq!(report["retired"][0][1], 0);
    assert_eq!(report["retired"][0][2], 0);
    assert_eq!(report["retired"][0][3], 2);
    let old_id = report["retired"][0][0].as_str().unwrap().to_owned();
    assert_eq!(
        server.query_i64(&format!(
            "SELECT count(*) FROM methods WHERE key_id = '{old_id}'"
        )),
        0
    );
    assert_eq!(
        server.query_i64(&format!(
            "SELECT count(*) FROM outbox WHERE key_id = '{old_id}' AND length(body) > 0"
        )),
        0
    );

    // Codes hashed before the rotation still check: u3's confirmation, and u1's recovery
    // once the provider is back and the (re-encrypted) message goes out.
    client
        .answer(&phone3.challenge.id, &open_code)
        .await
        .unwrap();
    let up2 = sms_gateway::accepting().await;
    let server = server.restart(|c| sms_gateway::configure(c, &up2));
    let client = server.client();
    let code = sms_gateway::next_code(&up2, 0).await;
    let answer = client.verify_recovery(&recovery1.id, &code).await.unwrap();
    assert!(answer.sealed_virtual_device.is_some());
    let out = ghostkey(&server, &["keys", "rotate"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.contains("nothing left under it"), "{stderr}");

    // Without the old key at all, every method still works.
    let server = server.restart(|c| c.keys.retired_key_files.clear());
    let client = server.client();
    let driver = RecoveryDriver::new(&client, &s2, &app.id, "u2");
    server.clock.advance(30);
    let started = driver
        .start(&app.assertion("u2", Purpose::Recover), &totp.method.id)
        .await
        .unwrap();
    let code = authenticator.generate(server.now() as u64).to_string();
    assert!(matches!(
        driver.submit_code(&started.id, &code).await.unwrap(),
        Recovered::Released(_)
    ));
    let driver = RecoveryDriver::new(&client, &s1, &app.id, "u1");
    let seen = sms_gateway::received(&up2).await.len();
    let started = driver
        .start(&app.assertion("u1", Purpose::Recover), &phone1.method.id)
        .await
        .unwrap();
    let code = sms_gateway::next_code(&up2, seen).await;
    assert!(matches!(
        driver.submit_code(&started.id, &code).await.unwrap(),
        Recovered::Released(_)
    ));
}

/// A passphrase method's hash was made with the old key's pepper, which a rotation cannot
/// redo (Ghostkey has no verifier at rest): `keys rotate` leaves it under that key and
/// keeps counting it, and with the old key retired the passphrase still checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passphrase_method_stays_under_the_key_that_peppered_it() {
    use ghostkey_client::passphrase;
    use secrecy::{ExposeSecret, SecretString};
    let server = TestServer::start_at(common::now(), |_| {});
    let app = server.register_app("Notes");
    server.set_policy(
        &app,
        ghostkey::domain::policy::PolicyChange {
            allowed_methods: Some(vec![MethodKind::Passphrase]),
            ..Default::default()
        },
    );
    let old_key = server.config.dev_data_key_path();
    let client = server.client();
    common::enrol(&server, &app, "u1").await;
    let typed = SecretString::from("lanterns drift over seven quiet harbours".to_owned());
    let added = client
        .add_passphrase(
            &app.assertion("u1", Purpose::Enroll),
            passphrase::setup(&typed, &app.id, "u1").unwrap(),
            None,
        )
        .await
        .unwrap();
    let verifier = passphrase::derive_verifier(&typed, &app.id, "u1", 1).unwrap();
    client
        .answer(&added.challenge.id, verifier.expose_secret())
        .await
        .unwrap();

    let new_key = server.dir.path().join("new.key");
    let out = ghostkey(
        &server,
        &["keys", "generate", "--out", new_key.to_str().unwrap()],
    );
    assert!(out.status.success());
    let server = server.restart(|c| {
        c.keys.data_key_file = Some(new_key.clone());
        c.keys.retired_key_files = vec![old_key.clone()];
    });
    let out = ghostkey(&server, &["keys", "rotate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["methods"], 0,
        "the passphrase method was not re-encrypted"
    );
    assert_eq!(report["retired"][0][1], 1, "it still needs the old key");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("nothing left under it"), "{stderr}");

    let client = server.client();
    let recovery = client
        .start_recovery(&app.assertion("u1", Purpose::Recover), &added.method.id)
        .await
        .unwrap();
    let released = client
        .verify_recovery(&recovery.id, verifier.expose_secret())
        .await
        .unwrap();
    assert!(released.sealed_virtual_device.is_some());
}

/// A rotation while a recovery waits: the cancel codes its user holds were made under the
/// old key, and Ghostkey keeps only their MACs. `keys rotate` must count them as needing
/// the old key, and the user's code must still cancel after the rotation (issue 17: before,
/// cancel codes had no key id, a rotation voided them and nothing said so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_recoverys_cancel_code_survives_a_rotation() {
    let gateway = sms_gateway::accepting().await;
    let server = TestServer::start_at(common::now(), |c| sms_gateway::configure(c, &gateway));
    let app = server.register_app("Health");
    server.set_policy(
        &app,
        ghostkey::domain::policy::PolicyChange {
            waiting_period_secs: Some(86_400),
            ..Default::default()
        },
    );
    let old_key = server.config.dev_data_key_path();
    let client = server.client();
    // The user: a phone A, then a phone B added with a proof through A.
    let (_, _, phone_a) = common::enrol_with_sms(&server, &app, &gateway, "u1").await;
    let before = sms_gateway::received(&gateway).await.len();
    let proof = client
        .start_challenge(
            &app.assertion("u1", Purpose::Manage),
            &phone_a,
            ghostkey_client::proto::api::ChallengePurpose::Proof,
        )
        .await
        .unwrap();
    let proof_code = sms_gateway::next_code(&gateway, before).await;
    let before = sms_gateway::received(&gateway).await.len();
    let phone_b = client
        .add_method(
            &app.assertion("u1", Purpose::Manage),
            MethodKind::Sms,
            Some("+33 6 99 88 77 66"),
            Some(ghostkey_client::proto::api::Proof::with_code(
                proof.id, proof_code,
            )),
        )
        .await
        .unwrap();
    let code = sms_gateway::next_code(&gateway, before).await;
    client.answer(&phone_b.challenge.id, &code).await.unwrap();

    // The provider recovers through phone A; the release waits a day and phone B is told,
    // with a cancel code, under the old key.
    let before = sms_gateway::received(&gateway).await.len();
    let started = client
        .start_recovery(&app.assertion("u1", Purpose::Recover), &phone_a)
        .await
        .unwrap();
    let code = sms_gateway::next_code(&gateway, before).await;
    client.verify_recovery(&started.id, &code).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let cancel_codes = loop {
        let codes: Vec<String> = sms_gateway::received(&gateway)
            .await
            .iter()
            .skip(before)
            .filter_map(|m| common::cancel_code_in(m["body"].as_str().unwrap_or_default()))
            .collect();
        if codes.len() >= 3 || std::time::Instant::now() > deadline {
            break codes;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    };
    // The start's notice (to B) and the waiting notice (to A and B: one code for both).
    assert_eq!(cancel_codes.len(), 3, "{cancel_codes:?}");

    // A new key; the old one retired; everything re-encrypted that can be.
    let new_key = server.dir.path().join("new.key");
    let out = ghostkey(
        &server,
        &["keys", "generate", "--out", new_key.to_str().unwrap()],
    );
    assert!(out.status.success());
    let server = server.restart(|c| {
        c.keys.data_key_file = Some(new_key.clone());
        c.keys.retired_key_files = vec![old_key.clone()];
    });
    let out = ghostkey(&server, &["keys", "rotate"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["retired"][0][1], 0, "every method re-encrypted");
    assert_eq!(
        report["retired"][0][3], 2,
        "the two cancel codes of the waiting recovery still need the old key"
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("nothing left under it"), "{stderr}");
    assert!(stderr.contains("live code(s)"), "{stderr}");

    // What a server start checks before it serves: the old key is still in use, so a
    // server without it refuses to start rather than void the user's code.
    let old_id = report["retired"][0][0].as_str().unwrap();
    let store = ghostkey::server::open_store(&server.config).unwrap();
    let in_use = store.key_ids_in_use(common::now()).unwrap();
    assert!(in_use.iter().any(|k| k == old_id), "{in_use:?}");
    drop(store);

    // With it, the user's code from the waiting notice still cancels, typed sloppily.
    let typed = cancel_codes[2].to_lowercase().replace('-', " ");
    let cancelled = server
        .client()
        .cancel_recovery_with_code(&typed)
        .await
        .unwrap();
    assert_eq!(cancelled.recovery_id, started.id);
    assert_eq!(
        cancelled.state,
        ghostkey_client::proto::api::RecoveryState::Cancelled
    );
    // Spent: the same code again, or the start's code, cancels nothing more.
    for replayed in [&cancel_codes[2], &cancel_codes[0]] {
        let err = server
            .client()
            .cancel_recovery_with_code(replayed)
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(ghostkey_client::proto::ErrorCode::InvalidCode)
        );
    }
    // Nothing else needs the old key now.
    let out = ghostkey(&server, &["keys", "rotate"]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(stderr.contains("nothing left under it"), "{stderr}");
}
