//! Recovery end to end: both factors or nothing, the waiting period, cancellation,
//! concurrency, replacement and erasure. Real server, real SQLite file, real SMTP and a
//! local SMS gateway, driven by the client library.

mod common;

use std::time::Duration;

use common::smtp_server::SmtpServer;
use common::{find_code, sms_gateway, TestApp, TestServer};
use ghostkey::domain::policy::PolicyChange;
use ghostkey_client::proto::api::{ChallengePurpose, MethodKind, Proof, RecoveryState};
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::proto::{b64, ErrorCode};
use ghostkey_client::recovery::{Recovered, RecoveryDriver};
use ghostkey_client::sealed::SealError;
use ghostkey_client::{ClientError, UserSecret, VirtualDevice};
use wiremock::MockServer;

struct World {
    server: TestServer,
    app: TestApp,
    gateway: MockServer,
    smtp: SmtpServer,
}

async fn world(change: PolicyChange) -> World {
    let smtp = SmtpServer::start().await;
    let gateway = sms_gateway::accepting().await;
    let server = TestServer::start_with(|c| {
        sms_gateway::configure(c, &gateway);
        c.email.provider = ghostkey::config::EmailProvider::Smtp;
        c.email.smtp_host = "127.0.0.1".into();
        c.email.smtp_port = smtp.port();
        c.email.smtp_tls = ghostkey::config::SmtpTls::None;
        c.email.from = "Ghostkey <no-reply@ghostkey.test>".into();
    });
    let app = server.register_app("Health");
    server.set_policy(&app, change);
    World {
        server,
        app,
        gateway,
        smtp,
    }
}

/// Device 1: enrols the user with a confirmed phone; returns the secret, the virtual
/// device and the phone method's id.
async fn enrol_with_phone(
    w: &World,
    user: &str,
    phone: &str,
) -> (UserSecret, VirtualDevice, String) {
    let client = w.server.client();
    let secret = UserSecret::generate();
    let enrolled = ghostkey_client::enroll(
        &client,
        &w.app.assertion(user, Purpose::Enroll),
        &secret,
        &w.app.id,
        user,
        &w.app.key,
    )
    .await
    .unwrap();
    let before = sms_gateway::received(&w.gateway).await.len();
    let added = client
        .add_method(
            &w.app.assertion(user, Purpose::Enroll),
            MethodKind::Sms,
            Some(phone),
            None,
        )
        .await
        .unwrap();
    let code = sms_gateway::code(&w.gateway, before).await;
    client.answer(&added.challenge.id, &code).await.unwrap();
    (secret, enrolled.virtual_device, added.method.id)
}

fn code_of(err: &ClientError) -> Option<ErrorCode> {
    err.code()
}

#[tokio::test]
async fn the_whole_story_with_an_sms_code_through_the_webhook() {
    let w = world(PolicyChange::default()).await;
    let (secret, device, _) = enrol_with_phone(&w, "doctor-7", "+33 6 12 34 56 78").await;
    let secret_bytes = *secret.expose();
    drop(secret); // device 1 is lost; the app provider still holds the secret

    // A new device: a fresh client, the user secret and assertions from the app provider.
    let client = w.server.client();
    let secret = UserSecret::from_bytes(secret_bytes);
    let driver = RecoveryDriver::new(&client, &secret, &w.app.id, "doctor-7");
    let methods = driver
        .methods(&w.app.assertion("doctor-7", Purpose::Recover))
        .await
        .unwrap();
    assert_eq!(methods.methods.len(), 1);
    assert_eq!(methods.methods[0].masked.as_deref(), Some("+33 6******78"));
    let started = driver
        .start(
            &w.app.assertion("doctor-7", Purpose::Recover),
            &methods.methods[0].id,
        )
        .await
        .unwrap();
    assert_eq!(started.masked.as_deref(), Some("+33 6******78"));
    let code = sms_gateway::code(&w.gateway, 1).await;
    let Recovered::Released(recovered) = driver.submit_code(&started.id, &code).await.unwrap()
    else {
        panic!("no waiting period: the release is immediate");
    };
    assert_eq!(*recovered, device);
    assert_eq!(
        recovered.keys().signing_public(),
        device.keys().signing_public()
    );
    assert_eq!(
        w.server
            .query_i64("SELECT count(*) FROM recoveries WHERE state = 'released'"),
        1
    );
    // The code is spent.
    let err = driver.submit_code(&started.id, &code).await.unwrap_err();
    assert_eq!(code_of(&err), Some(ErrorCode::CodeAlreadyUsed));
}

#[tokio::test]
async fn the_whole_story_with_an_email_code_over_smtp_and_with_totp() {
    let w = world(PolicyChange::default()).await;
    let client = w.server.client();
    let secret = UserSecret::generate();
    let enrolled = ghostkey_client::enroll(
        &client,
        &w.app.assertion("p", Purpose::Enroll),
        &secret,
        &w.app.id,
        "p",
        &w.app.key,
    )
    .await
    .unwrap();
    let email = client
        .add_method(
            &w.app.assertion("p", Purpose::Enroll),
            MethodKind::Email,
            Some("p@example.org"),
            None,
        )
        .await
        .unwrap();
    let mails = w.smtp.wait_for(1, Duration::from_secs(20)).await;
    client
        .answer(&email.challenge.id, &find_code(&mails[0].data, 8).unwrap())
        .await
        .unwrap();

    // Add TOTP with a proof by e-mail.
    let proof = client
        .start_challenge(
            &w.app.assertion("p", Purpose::Manage),
            &email.method.id,
            ChallengePurpose::Proof,
        )
        .await
        .unwrap();
    let mails = w.smtp.wait_for(2, Duration::from_secs(20)).await;
    let totp = client
        .add_method(
            &w.app.assertion("p", Purpose::Manage),
            MethodKind::Totp,
            None,
            Some(Proof {
                challenge_id: proof.id,
                code: Some(find_code(&mails[1].data, 8).unwrap()),
                webauthn: None,
            }),
        )
        .await
        .unwrap();
    let uri = totp.totp.unwrap().otpauth_uri;
    let authenticator = totp_rs::Totp::from_url(&uri).unwrap();
    client
        .answer(
            &totp.challenge.id,
            &authenticator.generate(w.server.now() as u64).to_string(),
        )
        .await
        .unwrap();

    // Recover by e-mail.
    let driver = RecoveryDriver::new(&client, &secret, &w.app.id, "p");
    let started = driver
        .start(&w.app.assertion("p", Purpose::Recover), &email.method.id)
        .await
        .unwrap();
    let mails = w.smtp.wait_for(4, Duration::from_secs(20)).await;
    let code_mail = mails
        .iter()
        .rev()
        .find(|m| m.data.contains("verification code"))
        .unwrap();
    let Recovered::Released(by_mail) = driver
        .submit_code(&started.id, &find_code(&code_mail.data, 8).unwrap())
        .await
        .unwrap()
    else {
        panic!("released")
    };
    assert_eq!(*by_mail, enrolled.virtual_device);

    // Recover with the authenticator app, in a later step.
    w.server.clock.advance(60);
    let started = driver
        .start(&w.app.assertion("p", Purpose::Recover), &totp.method.id)
        .await
        .unwrap();
    assert_eq!(started.kind, MethodKind::Totp);
    let code = authenticator.generate(w.server.now() as u64).to_string();
    let Recovered::Released(by_totp) = driver.submit_code(&started.id, &code).await.unwrap() else {
        panic!("released")
    };
    assert_eq!(*by_totp, enrolled.virtual_device);
}

#[tokio::test]
async fn ghostkey_alone_cannot_open_the_blob() {
    let w = world(PolicyChange::default()).await;
    let (secret, _, _) = enrol_with_phone(&w, "u", "+33 6 12 34 56 78").await;
    // Everything the operator has: the database and the data key file.
    let blob = w
        .server
        .query_blob("SELECT sealed_virtual_device FROM users");
    let data_key = std::fs::read_to_string(w.server.config.dev_data_key_path()).unwrap();
    let candidates = [
        UserSecret::from_b64(&data_key).unwrap(),
        UserSecret::from_bytes([0; 32]),
        UserSecret::generate(),
    ];
    for candidate in &candidates {
        assert_eq!(
            VirtualDevice::open(&blob, candidate, &w.app.id, "u", 1),
            Err(SealError::Decrypt)
        );
    }
    assert!(!w
        .server
        .raw_database()
        .windows(32)
        .any(|x| x == secret.expose()));
    assert!(VirtualDevice::open(&blob, &secret, &w.app.id, "u", 1).is_ok());
}

#[tokio::test]
async fn the_app_provider_alone_cannot_recover() {
    let w = world(PolicyChange {
        user_backoff_base_secs: Some(0),
        ..Default::default()
    })
    .await;
    let (_, _, phone_a) = enrol_with_phone(&w, "a", "+33 6 12 34 56 78").await;
    let (_, _, phone_b) = enrol_with_phone(&w, "b", "+33 6 12 34 56 79").await;
    let client = w.server.client();

    // A valid recover assertion and no code: nothing to release.
    let started_a = client
        .start_recovery(&w.app.assertion("a", Purpose::Recover), &phone_a)
        .await
        .unwrap();
    let err = client
        .release_recovery(&w.app.assertion("a", Purpose::Recover), &started_a.id)
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), Some(ErrorCode::RecoveryNotVerified));
    // A wrong code.
    let err = client
        .verify_recovery(&started_a.id, "00000000")
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), Some(ErrorCode::InvalidCode));
    // B's code on A's recovery.
    let started_b = client
        .start_recovery(&w.app.assertion("b", Purpose::Recover), &phone_b)
        .await
        .unwrap();
    // Messages so far: a's and b's confirmation codes, a's recovery code, b's.
    let code_b = sms_gateway::code(&w.gateway, 3).await;
    let err = client
        .verify_recovery(&started_a.id, &code_b)
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), Some(ErrorCode::InvalidCode));
    // A's assertion cannot release B's recovery, nor learn that it exists.
    let err = client
        .release_recovery(&w.app.assertion("a", Purpose::Recover), &started_b.id)
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), Some(ErrorCode::RecoveryNotFound));
    // Other purposes cannot start a recovery.
    for purpose in [Purpose::Enroll, Purpose::Manage] {
        let err = client
            .start_recovery(&w.app.assertion("a", purpose), &phone_a)
            .await
            .unwrap_err();
        assert_eq!(code_of(&err), Some(ErrorCode::AssertionWrongPurpose));
    }
    assert_eq!(
        w.server
            .query_i64("SELECT count(*) FROM recoveries WHERE state = 'released'"),
        0
    );
    // A confirm-code endpoint does not answer a recovery either.
    let err = client.answer(&started_b.id, &code_b).await.unwrap_err();
    assert_eq!(code_of(&err), Some(ErrorCode::WrongChallenge));
    // The right code releases B's, once.
    let answer = client
        .verify_recovery(&started_b.id, &code_b)
        .await
        .unwrap();
    assert_eq!(answer.state, RecoveryState::Released);
}

#[tokio::test]
async fn wrong_codes_kill_the_recovery_and_the_lock_yields_only_to_manage() {
    let w = world(PolicyChange {
        user_backoff_base_secs: Some(0),
        user_lock_threshold: Some(5),
        ..Default::default()
    })
    .await;
    let (_, _, phone) = enrol_with_phone(&w, "u", "+33 6 12 34 56 78").await;
    let client = w.server.client();
    let started = client
        .start_recovery(&w.app.assertion("u", Purpose::Recover), &phone)
        .await
        .unwrap();
    let code = sms_gateway::code(&w.gateway, 1).await;
    for _ in 0..3 {
        let err = client
            .verify_recovery(&started.id, "00000000")
            .await
            .unwrap_err();
        assert_eq!(code_of(&err), Some(ErrorCode::InvalidCode));
    }
    let err = client
        .verify_recovery(&started.id, &code)
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), Some(ErrorCode::TooManyAttempts));

    // Two more failures on a new recovery reach the cap of 5: locked.
    let started = client
        .start_recovery(&w.app.assertion("u", Purpose::Recover), &phone)
        .await
        .unwrap();
    let code = sms_gateway::code(&w.gateway, 2).await;
    let err = client
        .verify_recovery(&started.id, "00000000")
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), Some(ErrorCode::InvalidCode));
    let err = client
        .verify_recovery(&started.id, "00000000")
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), Some(ErrorCode::Locked));
    let err = client
        .verify_recovery(&started.id, &code)
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), Some(ErrorCode::Locked));
    let err = client
        .start_recovery(&w.app.assertion("u", Purpose::Recover), &phone)
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), Some(ErrorCode::Locked));
    // A recover assertion cannot lift it; manage alone neither; manage with the user's
    // proof can.
    let err = client
        .unlock(&w.app.assertion("u", Purpose::Recover), None)
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), Some(ErrorCode::AssertionWrongPurpose));
    let err = client
        .unlock(&w.app.assertion("u", Purpose::Manage), None)
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), Some(ErrorCode::ProofRequired));
    assert!(
        common::unlock_with_sms_proof(&w.server, &w.app, "u", &phone, &w.gateway)
            .await
            .unwrap()
            .was_locked
    );
    let answer = client.verify_recovery(&started.id, &code).await.unwrap();
    assert_eq!(answer.state, RecoveryState::Released);
}

#[tokio::test]
async fn the_waiting_period_delays_the_release_and_a_cancelled_recovery_never_releases() {
    let w = world(PolicyChange {
        waiting_period_secs: Some(86_400),
        ..Default::default()
    })
    .await;
    let (secret, device, phone) = enrol_with_phone(&w, "u", "+33 6 12 34 56 78").await;
    // A second method, to see the notices reach every method.
    let client = w.server.client();
    let proof = client
        .start_challenge(
            &w.app.assertion("u", Purpose::Manage),
            &phone,
            ChallengePurpose::Proof,
        )
        .await
        .unwrap();
    let email = client
        .add_method(
            &w.app.assertion("u", Purpose::Manage),
            MethodKind::Email,
            Some("u@example.org"),
            Some(Proof {
                challenge_id: proof.id,
                code: Some(sms_gateway::code(&w.gateway, 1).await),
                webauthn: None,
            }),
        )
        .await
        .unwrap();
    let mails = w.smtp.wait_for(1, Duration::from_secs(20)).await;
    client
        .answer(&email.challenge.id, &find_code(&mails[0].data, 8).unwrap())
        .await
        .unwrap();
    let sms_before = sms_gateway::wait_for(&w.gateway, 3).await.len(); // + "e-mail added" notice

    let driver = RecoveryDriver::new(&client, &secret, &w.app.id, "u");
    let started = driver
        .start(&w.app.assertion("u", Purpose::Recover), &phone)
        .await
        .unwrap();
    // The e-mail method hears of the start; the phone gets the code.
    let mails = w.smtp.wait_for(2, Duration::from_secs(20)).await;
    assert!(
        mails[1]
            .data
            .contains("recovery of your account was started"),
        "{}",
        mails[1].data
    );
    let code = sms_gateway::code(&w.gateway, sms_before).await;
    let t0 = w.server.now();
    let Recovered::Waiting { available_at } = driver.submit_code(&started.id, &code).await.unwrap()
    else {
        panic!("the waiting period applies")
    };
    assert!((t0 + 86_400..=t0 + 86_402).contains(&available_at));
    // Every method is told, with the way to cancel.
    let mails = w.smtp.wait_for(3, Duration::from_secs(20)).await;
    assert!(mails[2].data.contains("cancel"), "{}", mails[2].data);
    let sms = sms_gateway::wait_for(&w.gateway, sms_before + 2).await;
    assert!(sms[sms_before + 1]["body"]
        .as_str()
        .unwrap()
        .contains("cancel"));

    // Too early: release_pending with the time, and nothing changes.
    w.server.clock.advance(3600);
    let err = driver
        .release(&w.app.assertion("u", Purpose::Recover), &started.id)
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), Some(ErrorCode::ReleasePending));
    let ClientError::Api { problem, .. } = &err else {
        panic!()
    };
    assert_eq!(problem.available_at, Some(available_at));
    assert!(problem.retry_after.unwrap() > 80_000);
    // After the period, the release happens, once.
    w.server.clock.advance(86_400);
    let released = driver
        .release(&w.app.assertion("u", Purpose::Recover), &started.id)
        .await
        .unwrap();
    assert_eq!(released, device);
    let err = driver
        .release(&w.app.assertion("u", Purpose::Recover), &started.id)
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), Some(ErrorCode::AlreadyReleased));

    // A second recovery, cancelled by the app provider: never released.
    let seen = sms_gateway::received(&w.gateway).await.len();
    let started = driver
        .start(&w.app.assertion("u", Purpose::Recover), &phone)
        .await
        .unwrap();
    let code = sms_gateway::next_code(&w.gateway, seen).await;
    assert!(matches!(
        driver.submit_code(&started.id, &code).await.unwrap(),
        Recovered::Waiting { .. }
    ));
    let cancelled = client
        .cancel_recovery(&w.app.assertion("u", Purpose::Manage), &started.id, None)
        .await
        .unwrap();
    assert_eq!(cancelled.state, RecoveryState::Cancelled);
    w.server.clock.advance(2 * 86_400);
    let err = driver
        .release(&w.app.assertion("u", Purpose::Recover), &started.id)
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), Some(ErrorCode::RecoveryCancelled));

    // A third, cancelled by the user with a proof through the e-mail method.
    let seen = sms_gateway::received(&w.gateway).await.len();
    let started = driver
        .start(&w.app.assertion("u", Purpose::Recover), &phone)
        .await
        .unwrap();
    let late = sms_gateway::next_code(&w.gateway, seen).await;
    let err = client
        .cancel_recovery(&w.app.assertion("u", Purpose::Recover), &started.id, None)
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), Some(ErrorCode::ProofRequired));
    let n = w.smtp.messages().len();
    let proof = client
        .start_challenge(
            &w.app.assertion("u", Purpose::Recover),
            &email.method.id,
            ChallengePurpose::Proof,
        )
        .await
        .unwrap();
    // The e-mail method also hears of the recovery start: pick the code message.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let proof_code = loop {
        let code = w.smtp.messages().iter().skip(n).find_map(|m| {
            m.data
                .contains("verification code")
                .then(|| find_code(&m.data, 8))
                .flatten()
        });
        if let Some(code) = code {
            break code;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no proof code by e-mail"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    client
        .cancel_recovery(
            &w.app.assertion("u", Purpose::Recover),
            &started.id,
            Some(Proof {
                challenge_id: proof.id,
                code: Some(proof_code),
                webauthn: None,
            }),
        )
        .await
        .unwrap();
    // Its code, typed late, releases nothing.
    let err = client
        .verify_recovery(&started.id, &late)
        .await
        .unwrap_err();
    assert!(
        matches!(
            code_of(&err),
            Some(ErrorCode::TooManyAttempts) | Some(ErrorCode::RecoveryCancelled)
        ),
        "{err}"
    );
    assert_eq!(
        w.server
            .query_i64("SELECT count(*) FROM recoveries WHERE state = 'released'"),
        1
    );
}

// Several client threads: a single-threaded test runtime under load could leave
// connections idle past the server's request-head timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_simultaneous_right_codes_release_exactly_once() {
    let w = world(PolicyChange {
        requests_per_address_per_minute: Some(10_000),
        ..Default::default()
    })
    .await;
    let (secret, device, phone) = enrol_with_phone(&w, "u", "+33 6 12 34 56 78").await;
    let client = w.server.client();
    let started = client
        .start_recovery(&w.app.assertion("u", Purpose::Recover), &phone)
        .await
        .unwrap();
    let code = sms_gateway::code(&w.gateway, 1).await;
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let client = client.clone();
            let (id, code) = (started.id.clone(), code.clone());
            tokio::spawn(async move { client.verify_recovery(&id, &code).await })
        })
        .collect();
    let mut released = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(answer) => released.push(answer),
            Err(e) => assert_eq!(code_of(&e), Some(ErrorCode::CodeAlreadyUsed), "{e}"),
        }
    }
    assert_eq!(released.len(), 1);
    let blob = b64::decode(released[0].sealed_virtual_device.as_deref().unwrap()).unwrap();
    assert_eq!(
        VirtualDevice::open(&blob, &secret, &w.app.id, "u", 1).unwrap(),
        device
    );
    assert_eq!(
        w.server
            .query_i64("SELECT count(*) FROM recoveries WHERE state = 'released'"),
        1
    );
}

// Several client threads: a single-threaded test runtime under load could leave
// connections idle past the server's request-head timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_simultaneous_wrong_guesses_count_at_most_the_cap_and_release_nothing() {
    let w = world(PolicyChange {
        user_backoff_base_secs: Some(0),
        user_lock_threshold: Some(100),
        requests_per_address_per_minute: Some(10_000),
        ..Default::default()
    })
    .await;
    let (_, _, phone) = enrol_with_phone(&w, "u", "+33 6 12 34 56 78").await;
    let client = w.server.client();
    let started = client
        .start_recovery(&w.app.assertion("u", Purpose::Recover), &phone)
        .await
        .unwrap();
    let code = sms_gateway::code(&w.gateway, 1).await;
    let tasks: Vec<_> = (0..200u32)
        .map(|i| {
            let client = client.clone();
            let id = started.id.clone();
            let mut guess = format!("{:08}", i * 104_729 % 100_000_000);
            if guess == code {
                guess = "99999999".into();
            }
            tokio::spawn(async move { client.verify_recovery(&id, &guess).await })
        })
        .collect();
    let mut shed = 0;
    for t in tasks {
        let err = t.await.unwrap().unwrap_err();
        match code_of(&err) {
            Some(ErrorCode::InvalidCode) | Some(ErrorCode::TooManyAttempts) => {}
            // Turned away before any work: the line for Argon2 was full.
            Some(ErrorCode::Unavailable) => {
                let ghostkey_client::ClientError::Api { problem, .. } = &err else {
                    unreachable!()
                };
                assert!(problem.retry_after.is_some(), "{err}");
                shed += 1;
            }
            _ => panic!("unexpected answer: {err}"),
        }
    }
    assert!(shed < 200, "every guess was shed");
    assert_eq!(
        w.server.query_i64(&format!(
            "SELECT attempts FROM challenges WHERE id = '{}'",
            started.id
        )),
        3
    );
    assert_eq!(
        w.server
            .query_i64("SELECT count(*) FROM recoveries WHERE state = 'released'"),
        0
    );
    let err = client
        .verify_recovery(&started.id, &code)
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), Some(ErrorCode::TooManyAttempts));
}

#[tokio::test]
async fn replacing_the_sealed_virtual_device_after_a_secret_rotation() {
    let w = world(PolicyChange::default()).await;
    let (old_secret, device, phone) = enrol_with_phone(&w, "u", "+33 6 12 34 56 78").await;
    let client = w.server.client();
    // The app provider rotates the user secret; the user's device re-seals version 2.
    let new_secret = UserSecret::generate();
    let v2 = VirtualDevice::from_keys(&w.app.id, "u", 2, device.keys().clone());
    let sealed = v2.seal(&new_secret).unwrap();
    // Without a proof, or with a wrong one: refused, nothing changes.
    let proof = client
        .start_challenge(
            &w.app.assertion("u", Purpose::Manage),
            &phone,
            ChallengePurpose::Proof,
        )
        .await
        .unwrap();
    let code = sms_gateway::code(&w.gateway, 1).await;
    let err = client
        .replace_virtual_device(
            &w.app.assertion("u", Purpose::Manage),
            &sealed,
            Proof {
                challenge_id: proof.id.clone(),
                code: Some("00000000".into()),
                webauthn: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), Some(ErrorCode::InvalidCode));
    w.server.clock.advance(2);
    let err = client
        .replace_virtual_device(
            &w.app.assertion("u", Purpose::Recover),
            &sealed,
            Proof {
                challenge_id: proof.id.clone(),
                code: Some(code.clone()),
                webauthn: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), Some(ErrorCode::AssertionWrongPurpose));
    client
        .replace_virtual_device(
            &w.app.assertion("u", Purpose::Manage),
            &sealed,
            Proof {
                challenge_id: proof.id,
                code: Some(code),
                webauthn: None,
            },
        )
        .await
        .unwrap();

    // A later recovery returns version 2: the new secret opens it, the old one does not.
    let seen = sms_gateway::received(&w.gateway).await.len();
    let started = client
        .start_recovery(&w.app.assertion("u", Purpose::Recover), &phone)
        .await
        .unwrap();
    let code = sms_gateway::next_code(&w.gateway, seen).await;
    let answer = client.verify_recovery(&started.id, &code).await.unwrap();
    let blob = b64::decode(answer.sealed_virtual_device.as_deref().unwrap()).unwrap();
    let opened = VirtualDevice::open(&blob, &new_secret, &w.app.id, "u", 2).unwrap();
    assert_eq!(opened.version(), 2);
    assert_eq!(opened.keys(), device.keys());
    assert_eq!(
        VirtualDevice::open(&blob, &old_secret, &w.app.id, "u", 1),
        Err(SealError::Decrypt)
    );
}

#[tokio::test]
async fn erasure_deletes_every_row_of_the_user_and_nothing_else() {
    let w = world(PolicyChange::default()).await;
    let (_, _, phone) = enrol_with_phone(&w, "gone", "+33 6 12 34 56 78").await;
    enrol_with_phone(&w, "kept", "+33 6 12 34 56 79").await;
    let client = w.server.client();
    client
        .start_recovery(&w.app.assertion("gone", Purpose::Recover), &phone)
        .await
        .unwrap();
    let err = client
        .verify_recovery("ch_nothing", "12345678")
        .await
        .unwrap_err();
    // An unknown id answers as a wrong code does (PROTOCOL.md 6.4).
    assert_eq!(code_of(&err), Some(ErrorCode::InvalidCode), "{err}");

    let err = client
        .erase_user(&w.app.assertion("gone", Purpose::Recover))
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), Some(ErrorCode::AssertionWrongPurpose));
    client
        .erase_user(&w.app.assertion("gone", Purpose::Manage))
        .await
        .unwrap();

    for table in [
        "users",
        "methods",
        "challenges",
        "recoveries",
        "user_guards",
    ] {
        let left = w.server.query_i64(&format!(
            "SELECT count(*) FROM {table} WHERE user_id = 'gone'"
        ));
        assert_eq!(left, 0, "{table} still holds rows of the erased user");
    }
    // Nothing queued for the erased user's methods but the farewell, which carries its own
    // (encrypted) destination until it is sent.
    assert_eq!(
        w.server.query_i64(
            "SELECT count(*) FROM outbox WHERE method_id IS NOT NULL AND method_id NOT IN (SELECT id FROM methods)"
        ),
        0
    );
    let farewell = {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let got = sms_gateway::received(&w.gateway).await;
            if let Some(m) = got.iter().find(|m| {
                m["body"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("were erased")
            }) {
                break m.clone();
            }
            assert!(std::time::Instant::now() < deadline, "no farewell notice");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    };
    assert_eq!(farewell["to"], "+33612345678");
    // Once sent, its copy of the destination is wiped.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while w
        .server
        .query_i64("SELECT count(*) FROM outbox WHERE destination IS NOT NULL")
        > 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the farewell's destination stays"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // The other user is untouched.
    assert_eq!(
        w.server
            .query_i64("SELECT count(*) FROM users WHERE user_id = 'kept'"),
        1
    );
    assert_eq!(
        w.server
            .query_i64("SELECT count(*) FROM methods WHERE user_id = 'kept'"),
        1
    );
    // The erased user is gone for every purpose.
    let err = client
        .start_recovery(&w.app.assertion("gone", Purpose::Recover), &phone)
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), Some(ErrorCode::NotEnrolled));
    let err = client
        .erase_user(&w.app.assertion("gone", Purpose::Manage))
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), Some(ErrorCode::NotEnrolled));
}
