//! Time keeps counting while the server is down: a code that expired during the downtime
//! is refused after the restart (and a live one still works), and a waiting period that
//! spans restarts ends when it said it would, not earlier and not later.

mod common;

use common::{sms_gateway, TestServer};
use ghostkey::domain::policy::PolicyChange;
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::proto::ErrorCode;
use ghostkey_client::recovery::{Recovered, RecoveryDriver};
use ghostkey_client::ClientError;

fn code_of(result: Result<impl std::fmt::Debug, ClientError>) -> Option<ErrorCode> {
    result.expect_err("expected a refusal").code()
}

#[tokio::test]
async fn a_code_that_expired_while_the_server_was_down_is_refused_and_a_live_one_works() {
    let gateway = sms_gateway::accepting().await;
    let server = TestServer::start_with(|c| sms_gateway::configure(c, &gateway));
    let app = server.register_app("Health");
    let lifetime = ghostkey::domain::policy::AppPolicy::default().code_lifetime_secs;
    let (secret, device, phone) = common::enrol_with_sms(&server, &app, &gateway, "u").await;
    let client = server.client();
    let driver = RecoveryDriver::new(&client, &secret, &app.id, "u");
    let sent = sms_gateway::received(&gateway).await.len();
    let started = driver
        .start(&app.assertion("u", Purpose::Recover), &phone)
        .await
        .unwrap();
    let code = sms_gateway::code(&gateway, sent).await;

    // Down for longer than the code lives.
    server.clock.advance(lifetime + 1);
    let server = server.restart(|_| {});
    let client = server.client();
    let driver = RecoveryDriver::new(&client, &secret, &app.id, "u");
    assert_eq!(
        code_of(driver.submit_code(&started.id, &code).await),
        Some(ErrorCode::CodeExpired)
    );
    assert_eq!(
        server.query_i64("SELECT count(*) FROM recoveries WHERE state = 'released'"),
        0
    );

    // A recovery started before another restart, answered after it within the code's
    // life: the code survived the restart and releases.
    let sent = sms_gateway::received(&gateway).await.len();
    let started = driver
        .start(&app.assertion("u", Purpose::Recover), &phone)
        .await
        .unwrap();
    let code = sms_gateway::code(&gateway, sent).await;
    server.clock.advance(lifetime / 2);
    let server = server.restart(|_| {});
    let client = server.client();
    let driver = RecoveryDriver::new(&client, &secret, &app.id, "u");
    let Recovered::Released(recovered) = driver.submit_code(&started.id, &code).await.unwrap()
    else {
        panic!("no waiting period: the release is immediate");
    };
    assert_eq!(*recovered, device);
}

#[tokio::test]
async fn a_waiting_period_that_spans_restarts_ends_when_it_said() {
    const WAIT: i64 = 3_600;
    let gateway = sms_gateway::accepting().await;
    let server = TestServer::start_with(|c| sms_gateway::configure(c, &gateway));
    let app = server.register_app("Health");
    server.set_policy(
        &app,
        PolicyChange {
            waiting_period_secs: Some(WAIT),
            ..Default::default()
        },
    );
    let (secret, device, phone) = common::enrol_with_sms(&server, &app, &gateway, "u").await;
    let client = server.client();
    let driver = RecoveryDriver::new(&client, &secret, &app.id, "u");
    let sent = sms_gateway::received(&gateway).await.len();
    let started = driver
        .start(&app.assertion("u", Purpose::Recover), &phone)
        .await
        .unwrap();
    let code = sms_gateway::code(&gateway, sent).await;
    let Recovered::Waiting { available_at } = driver.submit_code(&started.id, &code).await.unwrap()
    else {
        panic!("the waiting period applies");
    };
    assert!(available_at >= server.now() + WAIT - 1);

    // Restarted at once, then again half-way: still pending, with the same end.
    let mut server = server;
    for advance in [0, WAIT / 2] {
        server.clock.advance(advance);
        server = server.restart(|_| {});
        let client = server.client();
        let driver = RecoveryDriver::new(&client, &secret, &app.id, "u");
        let err = driver
            .release(&app.assertion("u", Purpose::Recover), &started.id)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::ReleasePending));
        let ClientError::Api { problem, .. } = &err else {
            panic!("{err}")
        };
        assert_eq!(problem.available_at, Some(available_at), "the end moved");
    }

    // Down across the end: released at the first request after it.
    server.clock.advance(available_at - server.now() + 1);
    let server = server.restart(|_| {});
    let client = server.client();
    let driver = RecoveryDriver::new(&client, &secret, &app.id, "u");
    let released = driver
        .release(&app.assertion("u", Purpose::Recover), &started.id)
        .await
        .unwrap();
    assert_eq!(released, device);
}
