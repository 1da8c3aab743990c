//! The raw database file holds no TOTP seed, phone number, e-mail address or code in
//! clear, and no user secret.

mod common;

use std::time::Duration;

use common::smtp_server::SmtpServer;
use common::{enrol, find_code, sms_gateway, TestServer};
use ghostkey_client::proto::api::MethodKind;
use ghostkey_client::proto::assertion::Purpose;

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn the_database_file_holds_no_secret_or_personal_value_in_clear() {
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
    let client = server.client();
    let secret = enrol(&server, &app, "patient-42").await;

    let phone = "+33612345678";
    let email = "jane.doe@example.org";
    let sms = client
        .add_method(
            &app.assertion("patient-42", Purpose::Enroll),
            MethodKind::Sms,
            Some(phone),
            None,
        )
        .await
        .unwrap();
    let sms_code = sms_gateway::code(&gateway, 0).await;
    client.answer(&sms.challenge.id, &sms_code).await.unwrap();
    // The other methods come with a proof through the phone; both stay pending, so one
    // e-mail code stays in the outbox and the challenges.
    let proof = || async {
        let before = sms_gateway::received(&gateway).await.len();
        let challenge = client
            .start_challenge(
                &app.assertion("patient-42", Purpose::Manage),
                &sms.method.id,
                ghostkey_client::proto::api::ChallengePurpose::Proof,
            )
            .await
            .unwrap();
        Some(ghostkey_client::proto::api::Proof {
            challenge_id: challenge.id,
            code: Some(sms_gateway::next_code(&gateway, before).await),
            webauthn: None,
        })
    };
    let mail = client
        .add_method(
            &app.assertion("patient-42", Purpose::Manage),
            MethodKind::Email,
            Some(email),
            proof().await,
        )
        .await
        .unwrap();
    let totp = client
        .add_method(
            &app.assertion("patient-42", Purpose::Manage),
            MethodKind::Totp,
            None,
            proof().await,
        )
        .await
        .unwrap();
    let mails = smtp.wait_for(1, Duration::from_secs(20)).await;
    let mail_code = find_code(&mails[0].data, 8).unwrap();
    let uri = totp.totp.unwrap().otpauth_uri;
    let seed_b32 = uri
        .split("secret=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_owned();
    let seed = totp_rs::Secret::try_from_base32(&seed_b32)
        .unwrap()
        .as_bytes()
        .to_vec();

    let raw = server.raw_database();
    let checks: Vec<(&str, Vec<u8>)> = vec![
        ("phone number", phone.as_bytes().to_vec()),
        ("national phone number", b"612345678".to_vec()),
        ("e-mail address", email.as_bytes().to_vec()),
        ("e-mail local part", b"jane.doe".to_vec()),
        ("sms code", sms_code.as_bytes().to_vec()),
        ("e-mail code", mail_code.as_bytes().to_vec()),
        ("totp seed (base32)", seed_b32.as_bytes().to_vec()),
        ("totp seed (raw)", seed.to_vec()),
        ("user secret", secret.expose().to_vec()),
    ];
    for (what, value) in checks {
        assert!(
            !contains(&raw, &value),
            "the {what} is in the database file in clear"
        );
    }
    // The encrypted values are there, with their key id, and rate limits only see HMACs.
    assert_eq!(
        server.query_i64("SELECT count(*) FROM methods WHERE length(secret) > 40"),
        3
    );
    assert_eq!(
        server.query_i64("SELECT count(DISTINCT key_id) FROM methods"),
        1
    );
    assert_eq!(
        server.query_i64("SELECT count(*) FROM methods WHERE destination_mac IS NOT NULL"),
        2
    );
    assert!(server.query_i64("SELECT count(*) FROM rate_counters") > 0);
    // The pending e-mail challenge keeps only a hash.
    assert_eq!(
        server.query_i64(&format!(
            "SELECT length(code_hash) FROM challenges WHERE id = '{}'",
            mail.challenge.id
        )),
        32
    );
}
