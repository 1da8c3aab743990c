//! Brute force under concurrency: many clients guess one user's codes in parallel, on
//! several challenges in a row, recovery challenges (`verify`), proof challenges (spent in
//! a cancel request) and a method's confirmation challenge (`answer`). Whatever the
//! interleaving, no more wrong guesses are evaluated than the documented caps (3 per
//! challenge; back-off 2 s doubling between failures; lock at the 10th failure), nothing
//! is released or cancelled, and the user ends locked, even against their own right
//! codes. (tests/limits.rs and tests/recovery.rs cover parallel guesses on one challenge.)

mod common;

use common::{enrol, sms_gateway, TestApp, TestServer};
use ghostkey::domain::challenge::{backoff_secs, MAX_BACKOFF_SECS};
use ghostkey::domain::policy::{AppPolicy, PolicyChange};
use ghostkey_client::proto::api::{ChallengePurpose, MethodKind, Proof, RecoveryState};
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::proto::ErrorCode;
use ghostkey_client::{Client, ClientError};
use rand::Rng;
use wiremock::MockServer;

const PHONE: &str = "+33 6 12 34 56 78";

/// The attacker is not slowed by the request and sending limits: only the code limits
/// stand in the way.
fn unthrottled(change: PolicyChange) -> PolicyChange {
    PolicyChange {
        requests_per_address_per_minute: Some(100_000),
        sends_per_destination_per_hour: Some(100),
        sends_per_destination_per_day: Some(1000),
        recovery_starts_per_user_per_day: Some(20),
        ..change
    }
}

async fn setup(change: PolicyChange) -> (TestServer, TestApp, MockServer, String) {
    let gateway = sms_gateway::accepting().await;
    let server = TestServer::start_with(|c| sms_gateway::configure(c, &gateway));
    let app = server.register_app("Health");
    server.set_policy(&app, unthrottled(change));
    enrol(&server, &app, "victim").await;
    let added = server
        .client()
        .add_method(
            &app.assertion("victim", Purpose::Enroll),
            MethodKind::Sms,
            Some(PHONE),
            None,
        )
        .await
        .unwrap();
    let code = sms_gateway::code(&gateway, 0).await;
    server
        .client()
        .answer(&added.challenge.id, &code)
        .await
        .unwrap();
    (server, app, gateway, added.method.id)
}

/// Every code the gateway delivered so far.
async fn delivered_codes(gateway: &MockServer) -> Vec<String> {
    sms_gateway::received(gateway)
        .await
        .iter()
        .filter_map(|m| common::find_code(m["body"].as_str()?, 8))
        .collect()
}

/// A random 8-digit guess that is none of the codes actually sent.
fn guess(sent: &[String]) -> String {
    loop {
        let g = format!("{:08}", rand::thread_rng().gen_range(0..100_000_000u32));
        if !sent.contains(&g) {
            return g;
        }
    }
}

/// A target: how a guess reaches a challenge.
#[derive(Clone)]
enum Target {
    /// `POST /v1/recoveries/{id}/verify`.
    Recovery(String),
    /// A cancel request of `recovery` with a `recover` assertion and a proof on `proof`.
    Proof { proof: String, recovery: String },
    /// `POST /v1/challenges/{id}/answer`.
    Confirm(String),
}

async fn send_guess(
    client: &Client,
    app: &TestApp,
    target: &Target,
    code: &str,
) -> Result<(), ClientError> {
    let answered = match target {
        Target::Recovery(id) => client.verify_recovery(id, code).await.map(|r| r.state),
        Target::Proof { proof, recovery } => client
            .cancel_recovery(
                &app.assertion("victim", Purpose::Recover),
                recovery,
                Some(Proof {
                    challenge_id: proof.clone(),
                    code: Some(code.to_owned()),
                    webauthn: None,
                }),
            )
            .await
            .map(|r| r.state),
        Target::Confirm(id) => client
            .answer(id, code)
            .await
            .map(|_| RecoveryState::Started),
    };
    match answered {
        Ok(state) => panic!("a wrong guess succeeded: {state:?}"),
        Err(e) => Err(e),
    }
}

/// How the guesses were answered.
#[derive(Debug, Default)]
struct Tally {
    made: usize,
    /// `invalid_code`: evaluated and wrong.
    invalid: usize,
    /// `user_backoff`: not evaluated.
    backoff: usize,
    /// `locked`: not evaluated, or the wrong guess that locked the user.
    locked: usize,
    /// `too_many_attempts`: the challenge was dead.
    dead: usize,
    /// `unavailable` (503, `Retry-After`): shed before any work, the line for Argon2 full.
    shed: usize,
    /// The longest `Retry-After` of a back-off answer.
    max_retry_after: u64,
    /// The same, in the last volley.
    volley_retry_after: u64,
}

impl Tally {
    fn add(&mut self, result: Result<(), ClientError>) {
        self.made += 1;
        let err = result.unwrap_err();
        match err.code() {
            Some(ErrorCode::InvalidCode) => self.invalid += 1,
            Some(ErrorCode::Locked) => self.locked += 1,
            Some(ErrorCode::TooManyAttempts) => self.dead += 1,
            Some(ErrorCode::Unavailable) => {
                let ClientError::Api { problem, .. } = &err else {
                    unreachable!()
                };
                assert!(
                    problem.retry_after.is_some(),
                    "a shed answer without Retry-After"
                );
                self.shed += 1;
            }
            Some(ErrorCode::UserBackoff) => {
                self.backoff += 1;
                let ClientError::Api { problem, .. } = &err else {
                    unreachable!()
                };
                let retry_after = problem.retry_after.expect("user_backoff has a retry_after");
                assert!(
                    retry_after <= MAX_BACKOFF_SECS as u64,
                    "user_backoff with a Retry-After of {retry_after} s"
                );
                self.max_retry_after = self.max_retry_after.max(retry_after);
                self.volley_retry_after = self.volley_retry_after.max(retry_after);
            }
            _ => panic!("unexpected answer to a guess: {err}"),
        }
    }
}

/// Fires `per_target` guesses at each target, all at once.
async fn volley(
    server: &TestServer,
    app: &TestApp,
    targets: &[Target],
    per_target: usize,
    sent: &[String],
    tally: &mut Tally,
) {
    tally.volley_retry_after = 0;
    // One client's connection pool: every guess in flight has a connection of its own.
    let shared = server.client();
    let mut tasks = Vec::new();
    for _ in 0..per_target {
        for target in targets {
            let client = shared.clone();
            let app = app.clone_for_test();
            let (target, code) = (target.clone(), guess(sent));
            tasks.push(tokio::spawn(async move {
                send_guess(&client, &app, &target, &code).await
            }));
        }
    }
    for t in tasks {
        tally.add(t.await.unwrap());
    }
}

/// Server side: the wrong guesses that were evaluated (counted against the user), in
/// order, with the time of each.
fn evaluated(server: &TestServer) -> Vec<i64> {
    let outcome = if server.config.database.is_postgres() {
        "detail::json->>'outcome'"
    } else {
        "json_extract(detail, '$.outcome')"
    };
    server.query_i64s(&format!(
        "SELECT at FROM audit_events WHERE kind = 'code_refused' \
         AND {outcome} IN ('Wrong', 'WrongAndLocked') ORDER BY seq"
    ))
}

/// What the attack achieved on the server.
fn assert_nothing_gained(server: &TestServer, policy: &AppPolicy, victims_own: i64) {
    let max_attempts = policy.max_attempts_per_challenge as i64;
    assert_eq!(
        server.query_i64(&format!(
            "SELECT count(*) FROM challenges WHERE attempts > {max_attempts}"
        )),
        0,
        "a challenge counted more wrong answers than its cap"
    );
    assert_eq!(
        server.query_i64("SELECT sum(attempts) FROM challenges"),
        evaluated(server).len() as i64,
        "attempts and audit events disagree"
    );
    assert_eq!(
        server.query_i64("SELECT count(*) FROM recoveries WHERE state <> 'started'"),
        0,
        "a recovery was released, scheduled or cancelled"
    );
    assert_eq!(
        server.query_i64("SELECT count(*) FROM challenges WHERE state = 'used'"),
        victims_own,
        "only the victim's own codes were ever accepted"
    );
    assert_eq!(
        server.query_i64(
            "SELECT count(*) FROM user_guards WHERE user_id = 'victim' AND locked_at IS NOT NULL"
        ),
        1,
        "the user is locked"
    );
    assert_eq!(
        server.query_i64("SELECT count(*) FROM audit_events WHERE kind = 'user_locked'"),
        1
    );
}

/// Once locked, even the right codes (every code the victim received) are refused
/// unevaluated on every target.
async fn right_codes_are_refused(
    server: &TestServer,
    app: &TestApp,
    gateway: &MockServer,
    targets: &[Target],
) {
    let before = evaluated(server).len();
    let client = server.client();
    for code in delivered_codes(gateway).await {
        for target in targets {
            let err = send_guess(&client, app, target, &code).await.unwrap_err();
            assert_eq!(err.code(), Some(ErrorCode::Locked), "{err}");
        }
    }
    assert_eq!(evaluated(server).len(), before);
}

// Several client threads: a single-threaded test runtime under load could leave
// connections idle past the server's request-head timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_patient_attacker_waiting_out_every_back_off_is_locked_after_ten_guesses() {
    let started_at = std::time::Instant::now();
    let policy = AppPolicy::default();
    let (server, app, gateway, phone) = setup(PolicyChange::default()).await;
    let client = server.client();
    let mut tally = Tally::default();
    let mut targets = Vec::new();
    let mut rounds = 0;
    // Each round: a new recovery and a new proof challenge (the victim gets both codes),
    // 15 parallel guesses on each, then the attacker waits out the back-off it was told.
    loop {
        rounds += 1;
        assert!(rounds <= 30, "the user never got locked");
        let recovery = match client
            .start_recovery(&app.assertion("victim", Purpose::Recover), &phone)
            .await
        {
            Ok(r) => r.id,
            Err(e) if e.code() == Some(ErrorCode::Locked) => break,
            Err(e) => panic!("{e}"),
        };
        let proof = client
            .start_challenge(
                &app.assertion("victim", Purpose::Recover),
                &phone,
                ChallengePurpose::Proof,
            )
            .await
            .unwrap()
            .id;
        let sent = sms_gateway::wait_for(&gateway, 1 + 2 * rounds).await.len();
        assert_eq!(sent, 1 + 2 * rounds);
        let codes = delivered_codes(&gateway).await;
        let round = [
            Target::Recovery(recovery.clone()),
            Target::Proof {
                proof,
                recovery: recovery.clone(),
            },
        ];
        volley(&server, &app, &round, 15, &codes, &mut tally).await;
        targets.extend(round);
        // A patient attacker waits as long as it is told to.
        server.clock.advance(tally.volley_retry_after.max(1) as i64);
    }

    let times = evaluated(&server);
    assert_eq!(
        times.len(),
        policy.user_lock_threshold as usize,
        "wrong guesses evaluated"
    );
    // No guess was evaluated inside a back-off window.
    for (k, pair) in times.windows(2).enumerate() {
        let due = backoff_secs(policy.user_backoff_base_secs, k as u32 + 1);
        assert!(
            pair[1] - pair[0] >= due,
            "failure {} came {} s after the previous one, inside its {due} s back-off",
            k + 2,
            pair[1] - pair[0]
        );
    }
    assert_nothing_gained(&server, &policy, 1);
    right_codes_are_refused(&server, &app, &gateway, &targets[targets.len() - 2..]).await;
    eprintln!(
        "patient attacker: {} rounds, {} challenges, {} guesses made, {} evaluated \
         ({} invalid_code, then locked), {} answered user_backoff, {} locked, {} \
         too_many_attempts, longest wait {} s; {:.1} s",
        rounds,
        targets.len(),
        tally.made,
        times.len(),
        tally.invalid,
        tally.backoff,
        tally.locked,
        tally.dead,
        tally.max_retry_after,
        started_at.elapsed().as_secs_f64()
    );

    // The app provider alone cannot lift the lock: it takes the user's own proof, and the
    // attacker's ten failures spent the user's budget for 24 hours, so even that waits.
    let err = client
        .unlock(&app.assertion("victim", Purpose::Manage), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ProofRequired));
    let err = common::unlock_with_sms_proof(&server, &app, "victim", &phone, &gateway)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::FailureBudgetExhausted), "{err}");
    server.clock.advance(86_400);
    assert!(
        common::unlock_with_sms_proof(&server, &app, "victim", &phone, &gateway)
            .await
            .unwrap()
            .was_locked
    );
    let before = sms_gateway::received(&gateway).await.len();
    let recovery = client
        .start_recovery(&app.assertion("victim", Purpose::Recover), &phone)
        .await
        .unwrap();
    let code = sms_gateway::next_code(&gateway, before).await;
    let answer = client.verify_recovery(&recovery.id, &code).await.unwrap();
    assert_eq!(answer.state, RecoveryState::Released);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_back_off_parallel_guesses_on_nine_challenges_stop_at_the_lock() {
    let started_at = std::time::Instant::now();
    let change = PolicyChange {
        user_backoff_base_secs: Some(0),
        ..Default::default()
    };
    let policy = AppPolicy::default().apply(&change).unwrap();
    let (server, app, gateway, phone) = setup(change).await;
    let client = server.client();

    // The victim adds a second phone (with a proof through the first): its confirmation
    // challenge is open too.
    let proof = client
        .start_challenge(
            &app.assertion("victim", Purpose::Manage),
            &phone,
            ChallengePurpose::Proof,
        )
        .await
        .unwrap();
    let code = sms_gateway::code(&gateway, 1).await;
    let second = client
        .add_method(
            &app.assertion("victim", Purpose::Manage),
            MethodKind::Sms,
            Some("+33 6 12 34 56 79"),
            Some(Proof {
                challenge_id: proof.id,
                code: Some(code),
                webauthn: None,
            }),
        )
        .await
        .unwrap();
    let mut targets = vec![Target::Confirm(second.challenge.id)];
    // The attacker opens four recoveries and four proof challenges: nine challenges of 3
    // attempts each, 27 in all, against a lock at 10.
    for _ in 0..4 {
        let recovery = client
            .start_recovery(&app.assertion("victim", Purpose::Recover), &phone)
            .await
            .unwrap()
            .id;
        let proof = client
            .start_challenge(
                &app.assertion("victim", Purpose::Recover),
                &phone,
                ChallengePurpose::Proof,
            )
            .await
            .unwrap()
            .id;
        targets.push(Target::Recovery(recovery.clone()));
        targets.push(Target::Proof { proof, recovery });
    }
    // The first confirmation, the proof, the second phone's confirmation, and 8 codes.
    sms_gateway::wait_for(&gateway, 11).await;
    let codes = delivered_codes(&gateway).await;
    let mut tally = Tally::default();
    volley(&server, &app, &targets, 30, &codes, &mut tally).await;

    let times = evaluated(&server);
    assert_eq!(
        times.len(),
        policy.user_lock_threshold as usize,
        "wrong guesses evaluated"
    );
    // Every evaluated guess but the one that locked answered invalid_code.
    assert_eq!(tally.invalid, times.len() - 1);
    assert_eq!(tally.backoff, 0);
    assert_nothing_gained(&server, &policy, 2);
    assert_eq!(
        server.query_i64("SELECT count(*) FROM methods WHERE state = 'pending'"),
        1,
        "the second phone stays unconfirmed"
    );
    // One target of each kind: the confirmation, a recovery and a proof.
    right_codes_are_refused(&server, &app, &gateway, &targets[..3]).await;
    let err = client
        .start_recovery(&app.assertion("victim", Purpose::Recover), &phone)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Locked));
    eprintln!(
        "no back-off: {} challenges, {} parallel guesses made, {} evaluated ({} \
         invalid_code, then locked), {} locked, {} too_many_attempts, {} shed (503); {:.1} s",
        targets.len(),
        tally.made,
        times.len(),
        tally.invalid,
        tally.locked,
        tally.dead,
        tally.shed,
        started_at.elapsed().as_secs_f64()
    );
}
