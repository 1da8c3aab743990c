//! SMS through the webhook and Twilio adapters, and the outbox: messages written while the
//! provider is down are delivered when it comes back, across a restart, exactly once.

mod common;

use std::time::Duration;

use common::{enrol, find_code, sms_gateway, wait_outbox_settled, SettledOutbox, TestServer};
use ghostkey::delivery::webhook::signature_header;
use ghostkey_client::proto::api::MethodKind;
use ghostkey_client::proto::assertion::Purpose;
use wiremock::matchers::{header_exists, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test]
async fn sms_through_the_signed_webhook_confirms_a_phone() {
    let gateway = sms_gateway::accepting().await;
    let server = TestServer::start_with(|c| sms_gateway::configure(c, &gateway));
    let app = server.register_app("Health");
    enrol(&server, &app, "u").await;
    let added = server
        .client()
        .add_method(
            &app.assertion("u", Purpose::Enroll),
            MethodKind::Sms,
            Some("+33 6 12 34 56 78"),
            None,
        )
        .await
        .unwrap();
    sms_gateway::wait_for(&gateway, 1).await;
    let request = &gateway.received_requests().await.unwrap()[0];
    // The signature covers the exact body, and a receiver can recompute it.
    let sig = request
        .headers
        .get("ghostkey-signature")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let t: i64 = sig
        .split(',')
        .next()
        .unwrap()
        .trim_start_matches("t=")
        .parse()
        .unwrap();
    assert_eq!(
        sig,
        signature_header(sms_gateway::SECRET.as_bytes(), t, &request.body)
    );
    assert!(request.headers.get("idempotency-key").is_some());
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["to"], "+33612345678");
    assert_eq!(body["channel"], "sms");
    let code = find_code(body["body"].as_str().unwrap(), 8).unwrap();
    server
        .client()
        .answer(&added.challenge.id, &code)
        .await
        .unwrap();
}

#[tokio::test]
async fn sms_through_twilio_confirms_a_phone() {
    let twilio = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/2010-04-01/Accounts/AC0123456789/Messages.json"))
        .and(header_exists("authorization"))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(serde_json::json!({"sid": "SM1", "status": "queued"})),
        )
        .mount(&twilio)
        .await;
    let server = TestServer::start_with(|c| {
        c.sms.provider = ghostkey::config::SmsProvider::Twilio;
        c.sms.twilio.base_url = twilio.uri();
        c.sms.twilio.account_sid = "AC0123456789".into();
        c.sms.twilio.auth_token = Some(secrecy::SecretString::from("token".to_owned()));
        c.sms.twilio.from = Some("+15005550006".into());
    });
    let app = server.register_app("Health");
    enrol(&server, &app, "u").await;
    let added = server
        .client()
        .add_method(
            &app.assertion("u", Purpose::Enroll),
            MethodKind::Sms,
            Some("+1 415 555 2671"),
            None,
        )
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let form = loop {
        if let Some(r) = twilio.received_requests().await.unwrap().first() {
            break String::from_utf8(r.body.clone()).unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "twilio got nothing");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(form.contains("To=%2B14155552671"), "{form}");
    let code = find_code(&form, 8).unwrap();
    server
        .client()
        .answer(&added.challenge.id, &code)
        .await
        .unwrap();
}

async fn failing_gateway(status: u16) -> MockServer {
    let gateway = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/sms"))
        .respond_with(ResponseTemplate::new(status))
        .mount(&gateway)
        .await;
    gateway
}

#[tokio::test]
async fn messages_queued_during_an_outage_are_delivered_once_it_ends() {
    // Down for the first three attempts (503, 500, 429), then up.
    let gateway = MockServer::start().await;
    for status in [503, 500, 429] {
        Mock::given(method("POST"))
            .and(path("/sms"))
            .respond_with(ResponseTemplate::new(status))
            .up_to_n_times(1)
            .with_priority(1)
            .mount(&gateway)
            .await;
    }
    Mock::given(method("POST"))
        .and(path("/sms"))
        .respond_with(ResponseTemplate::new(200))
        .with_priority(2)
        .mount(&gateway)
        .await;
    let server = TestServer::start_with(|c| {
        sms_gateway::configure(c, &gateway);
        c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    });
    let app = server.register_app("Health");
    enrol(&server, &app, "u").await;
    let added = server
        .client()
        .add_method(
            &app.assertion("u", Purpose::Enroll),
            MethodKind::Sms,
            Some("+33 6 12 34 56 78"),
            None,
        )
        .await
        .unwrap();
    let messages = sms_gateway::wait_for(&gateway, 4).await;
    // The same message each time, then nothing more once delivered: the outbox settles
    // with the one message sent after four attempts, and the gateway saw exactly those.
    assert!(messages
        .iter()
        .all(|m| m["id"] == messages[0]["id"] && m["body"] == messages[0]["body"]));
    assert_eq!(
        wait_outbox_settled(&server, 0, Duration::from_secs(20)).await,
        SettledOutbox {
            sent: 1,
            failed: 0,
            attempts: 4
        }
    );
    assert_eq!(sms_gateway::received(&gateway).await.len(), 4);
    assert_eq!(
        server.query_i64("SELECT count(*) FROM outbox WHERE state = 'sent' AND attempts = 4"),
        1
    );
    assert_eq!(
        server.query_i64("SELECT length(body) FROM outbox"),
        0,
        "the body is wiped once sent"
    );
    let code = find_code(messages[3]["body"].as_str().unwrap(), 8).unwrap();
    server
        .client()
        .answer(&added.challenge.id, &code)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_permanent_refusal_is_recorded_and_not_retried() {
    let gateway = failing_gateway(422).await;
    let server = TestServer::start_with(|c| {
        sms_gateway::configure(c, &gateway);
        c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    });
    let app = server.register_app("Health");
    enrol(&server, &app, "u").await;
    add_phone(&server, &app, "u").await;
    sms_gateway::wait_for(&gateway, 1).await;
    // Settled with the message failed after its one attempt: nothing left to retry.
    assert_eq!(
        wait_outbox_settled(&server, 0, Duration::from_secs(20)).await,
        SettledOutbox {
            sent: 0,
            failed: 1,
            attempts: 1
        }
    );
    assert_eq!(sms_gateway::received(&gateway).await.len(), 1);
    assert_eq!(
        server.query_i64("SELECT count(*) FROM outbox WHERE state = 'failed'"),
        1
    );
    let error = server.query_text("SELECT last_error FROM outbox");
    assert!(!error.contains("612345678"), "{error}");
}

#[tokio::test]
async fn queued_messages_survive_a_restart_and_are_delivered_exactly_once() {
    let down = failing_gateway(503).await;
    let server = TestServer::start_with(|c| {
        sms_gateway::configure(c, &down);
        // A send that the restart interrupts (the test server's stop does not wait for the
        // worker) goes again once its lease ends: twice the longest send timeout, at least
        // 5 s.
        c.email.timeout_ms = c.sms.timeout_ms;
    });
    let app = server.register_app("Health");
    let mut challenges = Vec::new();
    for user in ["a", "b", "c"] {
        enrol(&server, &app, user).await;
        challenges.push(add_phone(&server, &app, user).await);
    }
    sms_gateway::wait_for(&down, 3).await;
    assert_eq!(
        server.query_i64("SELECT count(*) FROM outbox WHERE state = 'pending'"),
        3
    );

    // Ghostkey restarts while the provider is still down, and the provider comes back.
    let up = sms_gateway::accepting().await;
    let server = server.restart(|c| {
        sms_gateway::configure(c, &up);
        c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    });
    let messages = sms_gateway::wait_for(&up, 3).await;
    // Settled (nothing was finished before the restart): all three sent, and the gateway
    // that is up saw each once.
    let settled = wait_outbox_settled(&server, 0, Duration::from_secs(20)).await;
    assert_eq!((settled.sent, settled.failed), (3, 0));
    assert_eq!(
        sms_gateway::received(&up).await.len(),
        3,
        "each message exactly once"
    );
    let mut ids: Vec<i64> = messages.iter().map(|m| m["id"].as_i64().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 3);
    assert_eq!(
        server.query_i64("SELECT count(*) FROM outbox WHERE state = 'sent'"),
        3
    );
    // Every code still confirms its method. After retries the delivery order may differ
    // from the order of the requests; the outbox id (the idempotency key) says which is which.
    let mut messages = messages;
    messages.sort_by_key(|m| m["id"].as_i64());
    for (message, challenge) in messages.iter().zip(&challenges) {
        let code = find_code(message["body"].as_str().unwrap(), 8).unwrap();
        server.client().answer(challenge, &code).await.unwrap();
    }
}

/// Adds a phone for `user` (its code message goes to the gateway); its challenge id.
async fn add_phone(server: &TestServer, app: &common::TestApp, user: &str) -> String {
    server
        .client()
        .add_method(
            &app.assertion(user, Purpose::Enroll),
            MethodKind::Sms,
            Some("+33 6 12 34 56 78"),
            None,
        )
        .await
        .unwrap()
        .challenge
        .id
}

// Sent and failed messages used to stay in the outbox for good (bodies wiped, rows kept):
// it grew without bound and every `/metrics` scrape counted all of it. Maintenance now
// forgets a message a week after it finished, and nothing sooner.
#[tokio::test]
async fn finished_messages_are_forgotten_a_week_after_they_finished_and_not_sooner() {
    let gateway = sms_gateway::accepting().await;
    let server = TestServer::start_with(|c| {
        sms_gateway::configure(c, &gateway);
        c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    });
    let app = server.register_app("Health");
    enrol(&server, &app, "u1").await;
    add_phone(&server, &app, "u1").await;
    sms_gateway::wait_for(&gateway, 1).await;
    wait_outbox_settled(&server, 0, Duration::from_secs(20)).await;
    let finished_at = server.query_i64("SELECT max(finished_at) FROM outbox");
    let week = ghostkey::store::FINISHED_MESSAGE_RETENTION_SECS;

    // Half a minute before the week is over: kept (maintenance runs, and by hand here).
    server.clock.advance(finished_at + week - 30 - server.now());
    server.maintain();
    assert_eq!(server.count("outbox"), 1);
    // A new message, finished now, and the first one's week over.
    enrol(&server, &app, "u2").await;
    add_phone(&server, &app, "u2").await;
    sms_gateway::wait_for(&gateway, 2).await;
    server.clock.advance(31);
    common::wait_until(
        "the first message forgotten",
        Duration::from_secs(20),
        || {
            server.maintain();
            (server.count("outbox") == 1).then_some(())
        },
    )
    .await;
    assert!(
        server.query_i64("SELECT min(created_at) FROM outbox") > finished_at,
        "the new message is kept"
    );
}
