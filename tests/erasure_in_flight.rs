//! An erasure in the middle of things: a code message still queued (its provider down) is
//! never sent afterwards, one already on its way is not retried, and a recovery waiting
//! out its period is never released. Only the farewell notice reaches the user.

mod common;

use std::time::Duration;

use common::{sms_gateway, TestApp, TestServer};
use ghostkey::domain::policy::PolicyChange;
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::proto::ErrorCode;
use ghostkey_client::recovery::{Recovered, RecoveryDriver};
use ghostkey_client::UserSecret;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// Makes the gateway answer every message with `status`, after `delay`.
async fn gateway_answers(gateway: &MockServer, status: u16, delay: Duration) {
    gateway.reset().await;
    Mock::given(method("POST"))
        .and(path("/sms"))
        .respond_with(ResponseTemplate::new(status).set_delay(delay))
        .mount(gateway)
        .await;
}

/// Waits (at most 20 s) until `sql` counts `expected`.
async fn wait_for_count(server: &TestServer, what: &str, sql: &str, expected: i64) {
    common::wait_until(what, Duration::from_secs(20), || {
        (server.query_i64(sql) == expected).then_some(())
    })
    .await;
}

/// The bodies of the messages the gateway received since its last reset.
async fn bodies(gateway: &MockServer) -> Vec<String> {
    sms_gateway::received(gateway)
        .await
        .iter()
        .map(|m| m["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn is_code(body: &str) -> bool {
    body.contains("verification code")
}

fn is_farewell(body: &str) -> bool {
    body.contains("were erased")
}

async fn world() -> (TestServer, TestApp, MockServer, UserSecret, String) {
    let gateway = sms_gateway::accepting().await;
    let server = TestServer::start_with(|c| sms_gateway::configure(c, &gateway));
    let app = server.register_app("Health");
    let (secret, _, phone) = common::enrol_with_sms(&server, &app, &gateway, "u").await;
    // Every notice of the enrolment is out before the scenario starts.
    wait_for_count(
        &server,
        "messages still pending",
        "SELECT count(*) FROM outbox WHERE state = 'pending'",
        0,
    )
    .await;
    (server, app, gateway, secret, phone)
}

#[tokio::test]
async fn a_code_queued_behind_a_provider_outage_is_never_sent_once_the_user_is_erased() {
    let (server, app, gateway, secret, phone) = world().await;
    gateway_answers(&gateway, 503, Duration::ZERO).await;
    let client = server.client();
    let driver = RecoveryDriver::new(&client, &secret, &app.id, "u");
    driver
        .start(&app.assertion("u", Purpose::Recover), &phone)
        .await
        .unwrap();
    // The code is queued and being retried: the gateway refused it at least once.
    sms_gateway::wait_for(&gateway, 1).await;
    assert!(bodies(&gateway).await.iter().all(|b| is_code(b)));
    assert_eq!(
        server.query_i64("SELECT count(*) FROM outbox WHERE kind = 'code' AND state = 'pending'"),
        1
    );

    client
        .erase_user(&app.assertion("u", Purpose::Manage))
        .await
        .unwrap();
    assert_eq!(
        server.query_i64("SELECT count(*) FROM outbox WHERE kind = 'code'"),
        0,
        "the queued code outlived the erasure"
    );

    // The provider comes back: the farewell goes out, and nothing else ever does.
    gateway_answers(&gateway, 200, Duration::ZERO).await;
    wait_for_count(
        &server,
        "messages still pending",
        "SELECT count(*) FROM outbox WHERE state = 'pending'",
        0,
    )
    .await;
    let sent = bodies(&gateway).await;
    assert_eq!(
        sent.iter().filter(|b| is_farewell(b)).count(),
        1,
        "{sent:?}"
    );
    assert!(
        !sent.iter().any(|b| is_code(b)),
        "a code went out after the erasure: {sent:?}"
    );
    assert_eq!(server.count("recoveries"), 0);
}

#[tokio::test]
async fn a_code_being_sent_during_the_erasure_is_not_retried() {
    let (server, app, gateway, secret, phone) = world().await;
    // The provider takes its time, then refuses: the worker would retry.
    gateway_answers(&gateway, 503, Duration::from_millis(1500)).await;
    let client = server.client();
    let driver = RecoveryDriver::new(&client, &secret, &app.id, "u");
    driver
        .start(&app.assertion("u", Purpose::Recover), &phone)
        .await
        .unwrap();
    // The worker has claimed the code and is sending it (its lease is taken, no attempt
    // finished yet).
    wait_for_count(
        &server,
        "code messages in flight",
        "SELECT count(*) FROM outbox WHERE kind = 'code' AND leased_until > 0 AND attempts = 0",
        1,
    )
    .await;
    client
        .erase_user(&app.assertion("u", Purpose::Manage))
        .await
        .unwrap();
    // The attempt in flight ends (refused); then the provider is healthy again.
    sms_gateway::wait_for(&gateway, 1).await;
    gateway_answers(&gateway, 200, Duration::ZERO).await;
    wait_for_count(
        &server,
        "messages still pending",
        "SELECT count(*) FROM outbox WHERE state = 'pending'",
        0,
    )
    .await;
    let sent = bodies(&gateway).await;
    assert_eq!(
        sent.iter().filter(|b| is_farewell(b)).count(),
        1,
        "{sent:?}"
    );
    assert!(
        !sent.iter().any(|b| is_code(b)),
        "the code was retried after the erasure: {sent:?}"
    );
    assert_eq!(
        server.count("outbox"),
        server.query_i64("SELECT count(*) FROM outbox WHERE method_id IS NULL")
    );
}

#[tokio::test]
async fn a_recovery_waiting_out_its_period_is_never_released_once_the_user_is_erased() {
    let (server, app, gateway, secret, phone) = world().await;
    server.set_policy(
        &app,
        PolicyChange {
            waiting_period_secs: Some(3_600),
            ..Default::default()
        },
    );
    let client = server.client();
    let driver = RecoveryDriver::new(&client, &secret, &app.id, "u");
    let sent = sms_gateway::received(&gateway).await.len();
    let started = driver
        .start(&app.assertion("u", Purpose::Recover), &phone)
        .await
        .unwrap();
    let code = sms_gateway::next_code(&gateway, sent).await;
    let Recovered::Waiting { .. } = driver.submit_code(&started.id, &code).await.unwrap() else {
        panic!("the waiting period applies");
    };
    client
        .erase_user(&app.assertion("u", Purpose::Manage))
        .await
        .unwrap();
    server.clock.advance(3_601);
    let err = driver
        .release(&app.assertion("u", Purpose::Recover), &started.id)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            Some(ErrorCode::NotEnrolled) | Some(ErrorCode::RecoveryNotFound)
        ),
        "{err}"
    );
    assert_eq!(server.count("recoveries"), 0);
    assert_eq!(server.count("users"), 0);
}
