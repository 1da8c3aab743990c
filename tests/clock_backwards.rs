//! The system clock stepping backwards (a bad NTP answer, a hand-set clock, a restored VM
//! snapshot) brings nothing forgotten back to life: a used assertion whose `jti` was
//! purged from the replay cache stays refused, even across a restart, and a rate window
//! already left behind does not open again with a fresh budget.

mod common;

use common::{enrol, TestServer};
use ghostkey::domain::policy::PolicyChange;
use ghostkey_client::proto::assertion::Purpose;

const DAY: i64 = 86_400;

/// `GET /v1/methods` with `token`: the status and the error code, if any.
async fn list_methods(server: &TestServer, token: &str) -> (u16, String) {
    let res = reqwest::Client::new()
        .get(format!("{}/v1/methods", server.base_url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body: serde_json::Value = res.json().await.unwrap();
    (status, body["code"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn a_used_assertion_purged_from_the_replay_cache_stays_refused_after_the_clock_steps_back() {
    let server = TestServer::start();
    let app = server.register_app("Health");
    enrol(&server, &app, "alice-7").await;
    let token = app.assertion("alice-7", Purpose::Manage);
    assert_eq!(list_methods(&server, &token).await.0, 200);
    assert_eq!(
        list_methods(&server, &token).await,
        (401, "assertion_replayed".to_owned())
    );

    // A day later, another request purges the expired `jti`s, this one among them.
    server.clock.advance(DAY);
    let fresh = app.assertion("alice-7", Purpose::Manage);
    assert_eq!(list_methods(&server, &fresh).await.0, 200);
    let remembered = server.query_i64(&format!(
        "SELECT count(*) FROM assertion_jtis WHERE expires_at < {}",
        server.now()
    ));
    assert_eq!(remembered, 0, "the old jti was purged");

    // The server restarts, and the machine's clock is set back by the day: the token is
    // inside its validity again by that clock, and its jti is forgotten.
    let server = server.restart(|_| {});
    server.clock.advance(-DAY);
    let (status, code) = list_methods(&server, &token).await;
    assert_eq!(
        (status, code.as_str()),
        (401, "assertion_expired"),
        "a used assertion was accepted again after the clock stepped back"
    );
    // The service did not go back in time: a token minted by the stepped-back clock is as
    // old to it as the day it lost.
    let minted_in_the_past = app.assertion("alice-7", Purpose::Manage);
    assert_eq!(
        list_methods(&server, &minted_in_the_past).await.1,
        "assertion_expired"
    );
    // Once the clock has caught up, everything works again.
    server.clock.advance(DAY + 1);
    let now_fresh = app.assertion("alice-7", Purpose::Manage);
    assert_eq!(list_methods(&server, &now_fresh).await.0, 200);
}

#[tokio::test]
async fn a_rate_window_left_behind_does_not_open_again_when_the_clock_steps_back() {
    const PER_MINUTE: usize = 4;
    let server = TestServer::start_with(|c| c.assertions.max_lifetime_secs = 3_600);
    let app = server.register_app("Health");
    server.set_policy(
        &app,
        PolicyChange {
            requests_per_address_per_minute: Some(PER_MINUTE as u32),
            ..Default::default()
        },
    );
    enrol(&server, &app, "alice-7").await;
    // Fill one minute window, not the enrolment's (an enrolment at second 0 of a minute
    // would otherwise share it with second 1).
    server.clock.advance(60);
    server.clock.align(60, 1);
    let mut first_window = Vec::new();
    for _ in 0..PER_MINUTE + 1 {
        let token = app.assertion("alice-7", Purpose::Manage);
        first_window.push(list_methods(&server, &token).await.0);
    }
    assert_eq!(first_window, [200, 200, 200, 200, 429]);

    // Ten minutes later one request (its write purges the old window's counter)...
    server.clock.advance(600);
    let token = app.assertion("alice-7", Purpose::Manage);
    assert_eq!(list_methods(&server, &token).await.0, 200);
    // ...then the clock steps back into the first window. The service stays in the
    // window it was in: three requests left there, not a fresh four.
    server.clock.advance(-600);
    let mut after_step_back = Vec::new();
    for _ in 0..PER_MINUTE {
        // Minted by the stepped-back clock too, valid for long enough that the service
        // accepts them whichever time it runs on: only the window decides.
        let token = app
            .key
            .mint(
                &ghostkey_client::kit::AssertionRequest {
                    app_id: &app.id,
                    user_id: "alice-7",
                    audience: common::SERVICE_ID,
                    purpose: Purpose::Manage,
                },
                server.now(),
                1_800,
            )
            .unwrap();
        after_step_back.push(list_methods(&server, &token).await.0);
    }
    assert_eq!(
        after_step_back,
        [200, 200, 200, 429],
        "a window left behind opened again after the clock stepped back"
    );
}

fn ghostkey(db: &std::path::Path, args: &[&str]) -> std::process::Output {
    common::ghostkey_on(db).args(args).output().unwrap()
}

#[tokio::test]
async fn after_a_jump_ahead_the_operator_resets_the_floor_with_the_server_stopped() {
    // `ghostkey clock reset` runs as a process of its own, on the system clock: the
    // server's clock is the system clock too, whatever TEST_CLOCK_START says.
    let server = TestServer::start_at(common::now(), |_| {});
    let app = server.register_app("Health");
    // The clock jumps a year ahead, long enough for one audited write.
    server.clock.advance(365 * DAY);
    enrol(&server, &app, "alice-7").await;
    server.clock.advance(-365 * DAY);
    // Back to the right time, the server stays a year ahead, across a restart: fresh
    // assertions look expired.
    let server = server.restart(|_| {});
    let token = app.assertion("alice-7", Purpose::Manage);
    assert_eq!(list_methods(&server, &token).await.1, "assertion_expired");

    // `show` says so; `reset` needs --yes and the server stopped.
    let db = server.db_path();
    let out = ghostkey(&db, &["clock", "show"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ahead of this machine's clock"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ghostkey(&db, &["clock", "reset"]);
    assert!(!out.status.success(), "reset without --yes");
    let out = ghostkey(&db, &["clock", "reset", "--yes"]);
    assert!(!out.status.success(), "reset under a running server");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stop it first"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = std::sync::Arc::clone(&server.dir);
    let config = server.config.clone();
    drop(server);
    let out = ghostkey(&db, &["clock", "reset", "--yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Audited, and the log still verifies.
    let out = ghostkey(&db, &["audit", "export"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("clock_floor_reset"));
    assert!(ghostkey(&db, &["audit", "verify"]).status.success());

    // Started again, it runs on the right time.
    let server = TestServer::relaunch(config, dir, common::now());
    let token = app.assertion("alice-7", Purpose::Manage);
    assert_eq!(list_methods(&server, &token).await.0, 200);
}
