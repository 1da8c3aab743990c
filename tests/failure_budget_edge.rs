//! The failure budget at the edge of its day, with answers committed out of clock order.
//!
//! Each request reads the service's clock when it starts, checks the code (Argon2, in a
//! bounded queue), then settles in a transaction: two concurrent requests, or two nodes
//! whose clocks differ by a second, can commit in the other order than their clock reads.
//! The store forgets a user's failures once they are out of the 24-hour window; if it
//! forgot them as soon as the *committing* request's window left them behind, a request
//! that read the clock a second earlier, whose window still holds them, would find room
//! in a budget that its own 24 hours had spent. Found by the property test
//! (`tests/properties.rs`) with the back-off off; reproduced here on the real store, with
//! the clock reads passed to it as the service passes them.

mod common;

use common::{enrol, TestServer};
use ghostkey::domain::challenge::{Outcome, Verdict, FAILURE_WINDOW_SECS};
use ghostkey::domain::policy::PolicyChange;
use ghostkey::store::{AnswerNotices, MessageKind, NewMessage};
use ghostkey_client::proto::api::{ChallengePurpose, MethodKind};
use ghostkey_client::proto::assertion::Purpose;

const DAY: i64 = FAILURE_WINDOW_SECS;

#[tokio::test]
async fn no_24_hours_hold_more_failures_than_the_budget_when_answers_commit_out_of_clock_order() {
    let server = TestServer::start();
    let app = server.register_app("Health");
    server.set_policy(
        &app,
        PolicyChange {
            user_failures_per_day: Some(3),
            user_backoff_base_secs: Some(0),
            user_lock_threshold: Some(100),
            max_attempts_per_challenge: Some(10),
            code_lifetime_secs: Some(3600),
            ..Default::default()
        },
    );
    enrol(&server, &app, "alice").await;
    let client = server.client();
    let added = client
        .add_method(
            &app.assertion("alice", Purpose::Enroll),
            MethodKind::Totp,
            None,
            None,
        )
        .await
        .unwrap();
    let store = server.store();
    // Nothing here is sent: no answer is right and none reaches the lock threshold.
    let unused = NewMessage {
        kind: MessageKind::Notice,
        key_id: "unused".into(),
        body: Vec::new(),
        notice_kind: None,
    };
    let notices = AnswerNotices {
        added: &unused,
        locked: &unused,
        cloned: &unused,
        pending_removed: &unused,
    };
    let wrong = |challenge: &str, now: i64| {
        store
            .answer_challenge(challenge, Verdict::Wrong, None, &notices, now)
            .unwrap()
            .settlement
            .outcome
    };

    // The whole budget, spent in one second.
    let f = server.now();
    for _ in 0..3 {
        assert_eq!(wrong(&added.challenge.id, f), Outcome::Wrong);
    }
    assert_eq!(
        wrong(&added.challenge.id, f),
        Outcome::BudgetSpent(f + DAY),
        "the budget holds three"
    );

    // A day later, a new challenge; one request reads the clock at f + DAY - 1 (its 24
    // hours still hold the three failures), another at f + DAY (its 24 hours no longer
    // do) and commits first.
    server.clock.advance(DAY);
    let later = client
        .start_challenge(
            &app.assertion("alice", Purpose::Enroll),
            &added.method.id,
            ChallengePurpose::Confirm,
        )
        .await
        .unwrap();
    assert_eq!(wrong(&later.id, f + DAY), Outcome::Wrong);
    let outcome = wrong(&later.id, f + DAY - 1);
    assert!(
        matches!(outcome, Outcome::BudgetSpent(_)),
        "a fourth failure checked in the 24 hours ending at f + DAY - 1: {outcome:?}"
    );
}
