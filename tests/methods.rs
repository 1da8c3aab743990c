//! Verification methods end to end: TOTP, e-mail over real SMTP, SMS through the webhook
//! and Twilio adapters; proofs, notices, removal; nothing in clear in the database.

mod common;

use std::time::Duration;

use common::smtp_server::SmtpServer;
use common::{enrol, find_code, sms_gateway, TestServer};
use ghostkey_client::proto::api::{
    ChallengePurpose, EnrollmentState, MethodKind, MethodState, Proof,
};
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::proto::ErrorCode;

fn smtp_config(config: &mut ghostkey::config::Config, smtp: &SmtpServer) {
    config.email.provider = ghostkey::config::EmailProvider::Smtp;
    config.email.smtp_host = "127.0.0.1".into();
    config.email.smtp_port = smtp.port();
    config.email.smtp_tls = ghostkey::config::SmtpTls::None;
    config.email.from = "Ghostkey <no-reply@ghostkey.test>".into();
    config.email.timeout_ms = 2000;
}

fn totp_code(uri: &str, at: i64) -> String {
    let totp = totp_rs::Totp::from_url(uri).unwrap();
    totp.generate(at as u64).to_string()
}

#[tokio::test]
async fn totp_confirms_the_enrolment_and_each_step_is_used_once() {
    let smtp = SmtpServer::start().await;
    let server = TestServer::start_with(|c| smtp_config(c, &smtp));
    let app = server.register_app("Health");
    let client = server.client();
    enrol(&server, &app, "doctor-1").await;

    let added = client
        .add_method(
            &app.assertion("doctor-1", Purpose::Enroll),
            MethodKind::Totp,
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!(added.method.state, MethodState::Pending);
    assert_eq!(added.challenge.kind, MethodKind::Totp);
    let totp = added.totp.expect("provisioning data");
    assert!(totp.otpauth_uri.starts_with("otpauth://totp/"));
    assert!(
        totp.otpauth_uri.contains("algorithm=SHA1") || !totp.otpauth_uri.contains("algorithm=")
    );
    assert!(totp.qr_png_base64.len() > 200);

    // A wrong code is counted.
    let right = totp_code(&totp.otpauth_uri, server.now());
    let wrong = if right == "000000" {
        "111111"
    } else {
        "000000"
    };
    let err = client.answer(&added.challenge.id, wrong).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidCode));
    assert_eq!(server.query_i64("SELECT attempts FROM challenges"), 1);
    // Failures back off (2 s by default): let the time pass.
    server.clock.advance(2);

    // The right code confirms the method and completes the enrolment.
    let answer = client.answer(&added.challenge.id, &right).await.unwrap();
    assert_eq!(answer.method.state, MethodState::Confirmed);
    assert_eq!(answer.enrollment_state, EnrollmentState::Active);
    assert_eq!(
        server.query_i64("SELECT count(*) FROM users WHERE state = 'active'"),
        1
    );
    // The same answer again: the challenge is used.
    let err = client
        .answer(&added.challenge.id, &right)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::CodeAlreadyUsed));

    // The same step again, as a proof for a new method: refused, nothing added.
    let proof = client
        .start_challenge(
            &app.assertion("doctor-1", Purpose::Manage),
            &added.method.id,
            ChallengePurpose::Proof,
        )
        .await
        .unwrap();
    let err = client
        .add_method(
            &app.assertion("doctor-1", Purpose::Manage),
            MethodKind::Email,
            Some("doctor@example.org"),
            Some(Proof {
                challenge_id: proof.id.clone(),
                code: Some(right.clone()),
                webauthn: None,
            }),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::CodeAlreadyUsed));
    assert_eq!(server.count("methods"), 1);
    // The previous step's code is older than the used one: refused too.
    let previous = totp_code(&totp.otpauth_uri, server.now() - 30);
    let err = client
        .add_method(
            &app.assertion("doctor-1", Purpose::Manage),
            MethodKind::Email,
            Some("doctor@example.org"),
            Some(Proof {
                challenge_id: proof.id.clone(),
                code: Some(previous),
                webauthn: None,
            }),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            Some(ErrorCode::CodeAlreadyUsed) | Some(ErrorCode::InvalidCode)
        ),
        "{err}"
    );

    // In the next step, a fresh code proves the user and the e-mail method is added.
    server.clock.advance(30);
    let fresh = totp_code(&totp.otpauth_uri, server.now());
    let email = client
        .add_method(
            &app.assertion("doctor-1", Purpose::Manage),
            MethodKind::Email,
            Some("Doctor@Example.org"),
            Some(Proof {
                challenge_id: proof.id,
                code: Some(fresh),
                webauthn: None,
            }),
        )
        .await
        .unwrap();
    assert_eq!(email.method.masked.as_deref(), Some("D***@e***.org"));
    let mails = smtp.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(mails[0].to, vec!["Doctor@example.org".to_owned()]);
    let code = find_code(&mails[0].data, 8).expect("a code in the mail");
    client.answer(&email.challenge.id, &code).await.unwrap();
}

#[tokio::test]
async fn email_codes_travel_over_real_smtp_and_changes_are_notified() {
    let smtp = SmtpServer::start().await;
    let gateway = sms_gateway::accepting().await;
    let server = TestServer::start_with(|c| {
        smtp_config(c, &smtp);
        sms_gateway::configure(c, &gateway);
    });
    let app = server.register_app("Health");
    let client = server.client();
    enrol(&server, &app, "patient-1").await;

    let added = client
        .add_method(
            &app.assertion("patient-1", Purpose::Enroll),
            MethodKind::Email,
            Some("jane.doe@example.org"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(added.challenge.masked.as_deref(), Some("j***@e***.org"));
    let mails = smtp.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(mails[0].to, vec!["jane.doe@example.org".to_owned()]);
    assert!(
        mails[0].data.contains("Subject: Your verification code"),
        "{}",
        mails[0].data
    );
    let code = find_code(&mails[0].data, 8).expect("an 8-digit code");
    let answer = client.answer(&added.challenge.id, &code).await.unwrap();
    assert_eq!(answer.enrollment_state, EnrollmentState::Active);

    // A second method needs a manage assertion and a proof.
    let err = client
        .add_method(
            &app.assertion("patient-1", Purpose::Manage),
            MethodKind::Sms,
            Some("+33 6 12 34 56 78"),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ProofRequired));
    let err = client
        .add_method(
            &app.assertion("patient-1", Purpose::Enroll),
            MethodKind::Sms,
            Some("+33 6 12 34 56 78"),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AssertionWrongPurpose));

    let proof = client
        .start_challenge(
            &app.assertion("patient-1", Purpose::Manage),
            &added.method.id,
            ChallengePurpose::Proof,
        )
        .await
        .unwrap();
    let mails = smtp.wait_for(2, Duration::from_secs(20)).await;
    let proof_code = find_code(&mails[1].data, 8).unwrap();
    // A proof challenge is spent inside the request it authorises, not on its own.
    let err = client.answer(&proof.id, &proof_code).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidProof));
    let sms = client
        .add_method(
            &app.assertion("patient-1", Purpose::Manage),
            MethodKind::Sms,
            Some("+33 6 12 34 56 78"),
            Some(Proof {
                challenge_id: proof.id.clone(),
                code: Some(proof_code.clone()),
                webauthn: None,
            }),
        )
        .await
        .unwrap();
    assert_eq!(sms.method.masked.as_deref(), Some("+33 6******78"));
    // The proof is spent.
    let err = client
        .add_method(
            &app.assertion("patient-1", Purpose::Manage),
            MethodKind::Totp,
            None,
            Some(Proof {
                challenge_id: proof.id,
                code: Some(proof_code),
                webauthn: None,
            }),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::CodeAlreadyUsed));

    // Confirming the SMS method notifies the e-mail method (and not the phone).
    let sms_code = sms_gateway::code(&gateway, 0).await;
    client.answer(&sms.challenge.id, &sms_code).await.unwrap();
    let mails = smtp.wait_for(3, Duration::from_secs(20)).await;
    assert!(mails[2].data.contains("was added"), "{}", mails[2].data);
    assert!(mails[2].data.contains("+33 6******78"), "{}", mails[2].data);
    assert!(!mails[2].data.contains("612345678"));
    assert_eq!(sms_gateway::received(&gateway).await.len(), 1);

    let list = client
        .list_methods(&app.assertion("patient-1", Purpose::Manage))
        .await
        .unwrap();
    assert_eq!(list.methods.len(), 2);
    assert!(list
        .methods
        .iter()
        .all(|m| m.state == MethodState::Confirmed));

    // Removing the e-mail method with a proof by SMS notifies the phone.
    let proof = client
        .start_challenge(
            &app.assertion("patient-1", Purpose::Manage),
            &sms.method.id,
            ChallengePurpose::Proof,
        )
        .await
        .unwrap();
    let code = sms_gateway::code(&gateway, 1).await;
    client
        .remove_method(
            &app.assertion("patient-1", Purpose::Manage),
            &added.method.id,
            Proof {
                challenge_id: proof.id,
                code: Some(code),
                webauthn: None,
            },
        )
        .await
        .unwrap();
    let messages = sms_gateway::wait_for(&gateway, 3).await;
    assert!(messages[2]["body"]
        .as_str()
        .unwrap()
        .contains("was removed"));
    // The last confirmed method cannot go.
    let proof = client
        .start_challenge(
            &app.assertion("patient-1", Purpose::Manage),
            &sms.method.id,
            ChallengePurpose::Proof,
        )
        .await
        .unwrap();
    let code = sms_gateway::code(&gateway, 3).await;
    let err = client
        .remove_method(
            &app.assertion("patient-1", Purpose::Manage),
            &sms.method.id,
            Proof {
                challenge_id: proof.id,
                code: Some(code),
                webauthn: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::LastMethod));
    assert_eq!(server.count("methods"), 1);
}

#[tokio::test]
async fn bad_destinations_and_kinds_are_refused_and_change_nothing() {
    let server = TestServer::start();
    let app = server.register_app("Health");
    let client = server.client();
    enrol(&server, &app, "u").await;
    let token = app.assertion("u", Purpose::Enroll);
    let cases: Vec<(MethodKind, Option<&str>, ErrorCode)> = vec![
        (
            MethodKind::Sms,
            Some("0612345678"),
            ErrorCode::InvalidPhoneNumber,
        ),
        (
            MethodKind::Sms,
            Some("+33 1"),
            ErrorCode::InvalidPhoneNumber,
        ),
        (
            MethodKind::Email,
            Some("not-an-address"),
            ErrorCode::InvalidEmailAddress,
        ),
        (MethodKind::Sms, None, ErrorCode::InvalidField),
        (
            MethodKind::Totp,
            Some("+33612345678"),
            ErrorCode::InvalidField,
        ),
    ];
    for (kind, destination, code) in cases {
        let err = client
            .add_method(&token, kind, destination, None)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(code), "{kind:?} {destination:?}");
        // Neither the personal value nor anything else is echoed back.
        if let ghostkey_client::ClientError::Api { problem, .. } = &err {
            let text = serde_json::to_string(problem).unwrap();
            assert!(
                !text.contains("612345678") && !text.contains("not-an-address"),
                "{text}"
            );
        }
    }
    // The same assertion was never spent, and nothing was stored.
    assert_eq!(server.count("methods"), 0);
    assert_eq!(server.count("outbox"), 0);
    client
        .add_method(&token, MethodKind::Totp, None, None)
        .await
        .unwrap();

    // A kind the app does not allow.
    server.set_policy(
        &app,
        ghostkey::domain::policy::PolicyChange {
            allowed_methods: Some(vec![MethodKind::Totp]),
            ..Default::default()
        },
    );
    let err = client
        .add_method(
            &app.assertion("u", Purpose::Enroll),
            MethodKind::Email,
            Some("a@example.org"),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::MethodKindNotAllowed));
    // A user who is not enrolled.
    let err = client
        .add_method(
            &app.assertion("nobody", Purpose::Enroll),
            MethodKind::Totp,
            None,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotEnrolled));
}
