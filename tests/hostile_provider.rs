//! The app provider turned hostile: it mints any assertion for any user, knows every user
//! secret and drives its own clients. Each test replays an attack through the HTTP API of
//! a real server with the default policy; none may yield a sealed virtual device without a
//! factor the user confirmed, and each leaves its notices on the user's methods.

mod common;

use common::{enrol, sms_gateway, TestApp, TestServer};
use ghostkey::domain::policy::{AppPolicy, PolicyChange};
use ghostkey_client::proto::api::{ChallengePurpose, MethodKind, Proof};
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::proto::ErrorCode;
use ghostkey_client::{Client, ClientError};
use wiremock::MockServer;

const PHONE: &str = "+33 6 12 34 56 78";

async fn setup() -> (TestServer, TestApp, MockServer) {
    let gateway = sms_gateway::accepting().await;
    let server = TestServer::start_with(|c| sms_gateway::configure(c, &gateway));
    let app = server.register_app("Health");
    // The attacker has as many addresses as it likes: the per-address limit is no defence
    // here, so it is out of the way.
    server.set_policy(
        &app,
        PolicyChange {
            requests_per_address_per_minute: Some(100_000),
            ..Default::default()
        },
    );
    (server, app, gateway)
}

/// An authenticator app holding a TOTP method's seed.
struct Authenticator(totp_rs::Totp);

impl Authenticator {
    fn code(&self, server: &TestServer) -> String {
        self.0.generate(server.now() as u64).to_string()
    }

    /// A code that is neither the current step's nor the previous one's.
    fn wrong_code(&self, server: &TestServer) -> String {
        let now = server.now();
        let valid = [
            self.code(server),
            self.0.generate((now - 30) as u64).to_string(),
        ];
        (0..)
            .map(|n| format!("{:06}", n * 111_111 % 1_000_000))
            .find(|c| !valid.contains(c))
            .unwrap()
    }
}

/// Enrols `user` with a confirmed TOTP method (the user's authenticator app); returns the
/// method id and the authenticator.
async fn enrol_with_totp(
    server: &TestServer,
    app: &TestApp,
    user: &str,
) -> (String, Authenticator) {
    enrol(server, app, user).await;
    enrol_with_totp_method(server, app, user).await
}

/// Adds and confirms a TOTP method for an enrolled, still pending user.
async fn enrol_with_totp_method(
    server: &TestServer,
    app: &TestApp,
    user: &str,
) -> (String, Authenticator) {
    let client = server.client();
    let added = client
        .add_method(
            &app.assertion(user, Purpose::Enroll),
            MethodKind::Totp,
            None,
            None,
        )
        .await
        .unwrap();
    let authenticator =
        Authenticator(totp_rs::Totp::from_url(&added.totp.unwrap().otpauth_uri).unwrap());
    client
        .answer(&added.challenge.id, &authenticator.code(server))
        .await
        .unwrap();
    (added.method.id, authenticator)
}

/// Adds and confirms the user's phone with a proof through their authenticator app.
async fn add_phone_with_totp_proof(
    server: &TestServer,
    app: &TestApp,
    gateway: &MockServer,
    user: &str,
    totp_method: &str,
    authenticator: &Authenticator,
) -> String {
    let client = server.client();
    // A later TOTP step than the one that confirmed the authenticator.
    server.clock.advance(30);
    let proof = client
        .start_challenge(
            &app.assertion(user, Purpose::Manage),
            totp_method,
            ChallengePurpose::Proof,
        )
        .await
        .unwrap();
    let before = sms_gateway::received(gateway).await.len();
    let added = client
        .add_method(
            &app.assertion(user, Purpose::Manage),
            MethodKind::Sms,
            Some(PHONE),
            Some(Proof {
                challenge_id: proof.id,
                code: Some(authenticator.code(server)),
                webauthn: None,
            }),
        )
        .await
        .unwrap();
    let code = sms_gateway::next_code(gateway, before).await;
    client.answer(&added.challenge.id, &code).await.unwrap();
    added.method.id
}

/// Wrong codes that Ghostkey actually checked for the user: the audit log's refused
/// answers that counted (wrong, or wrong and locking).
fn checked_wrong_guesses(server: &TestServer) -> i64 {
    server.query_i64(
        "SELECT count(*) FROM audit_events WHERE kind = 'code_refused' \
         AND (detail LIKE '%\"outcome\":\"Wrong\"%' OR detail LIKE '%\"outcome\":\"WrongAndLocked\"%')",
    )
}

fn releases(server: &TestServer) -> i64 {
    server.query_i64("SELECT count(*) FROM recoveries WHERE state = 'released'")
}

fn retry_after(err: &ClientError) -> i64 {
    match err {
        ClientError::Api { problem, .. } => problem.retry_after.unwrap_or(1) as i64,
        _ => 1,
    }
}

/// Bodies of the SMS messages the user's phone received after the first `after`.
async fn texts_after(gateway: &MockServer, after: usize) -> Vec<String> {
    sms_gateway::received(gateway)
        .await
        .iter()
        .skip(after)
        .filter_map(|m| m["body"].as_str().map(str::to_owned))
        .collect()
}

async fn wait_for_text(gateway: &MockServer, after: usize, needle: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Some(t) = texts_after(gateway, after)
            .await
            .into_iter()
            .find(|t| t.contains(needle))
        {
            return t;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no message containing {needle:?}: {:?}",
            texts_after(gateway, after).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}

/// The provider guesses a TOTP-only user's code for a whole day, as fast as it is
/// answered: new recoveries, every back-off waited out, the lock lifted with `manage`
/// assertions and with guessed proofs. Attack 1: `unlock` used to reset every counter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlocking_never_resets_the_guess_budget_of_a_totp_only_user() {
    let (server, app, _gateway) = setup().await;
    let (totp, authenticator) = enrol_with_totp(&server, &app, "victim").await;
    let client = server.client();
    let policy = AppPolicy::default();
    let day_ends = server.now() + 86_400 - 60;
    let mut recovery: Option<String> = None;
    let mut requests = 0;
    let mut unlock_refusals = Vec::new();
    while server.now() < day_ends && requests < 400 {
        requests += 1;
        let id = match &recovery {
            Some(id) => id.clone(),
            None => match client
                .start_recovery(&app.assertion("victim", Purpose::Recover), &totp)
                .await
            {
                Ok(r) => {
                    recovery = Some(r.id.clone());
                    r.id
                }
                Err(e) if e.code() == Some(ErrorCode::Locked) => {
                    let refusals =
                        try_to_unlock(&server, &app, &client, &totp, &authenticator).await;
                    let spent = refusals.contains(&ErrorCode::FailureBudgetExhausted);
                    unlock_refusals.push(refusals);
                    if spent {
                        // Even a right proof would now wait for the oldest failure to age
                        // out: the day is over for this attacker.
                        break;
                    }
                    continue;
                }
                Err(e) => {
                    assert_eq!(e.code(), Some(ErrorCode::RecoveryRateLimited), "{e}");
                    break;
                }
            },
        };
        let err = client
            .verify_recovery(&id, &authenticator.wrong_code(&server))
            .await
            .unwrap_err();
        match err.code() {
            Some(ErrorCode::InvalidCode) => {}
            Some(ErrorCode::TooManyAttempts) => recovery = None,
            Some(ErrorCode::UserBackoff) => server.clock.advance(retry_after(&err)),
            Some(ErrorCode::Locked) => {
                unlock_refusals
                    .push(try_to_unlock(&server, &app, &client, &totp, &authenticator).await);
            }
            Some(ErrorCode::FailureBudgetExhausted) => {
                // Waiting it out means waiting for the day to end.
                assert!(server.now() + retry_after(&err) >= day_ends - 3600, "{err}");
                break;
            }
            other => panic!("unexpected {other:?}: {err}"),
        }
    }
    let guesses = checked_wrong_guesses(&server);
    eprintln!(
        "hostile provider, one day: {requests} requests, {guesses} guesses checked, unlock refusals {unlock_refusals:?}"
    );
    assert!(
        guesses <= i64::from(policy.user_failures_per_day),
        "{guesses} wrong guesses checked in one day"
    );
    assert!(
        !unlock_refusals.is_empty(),
        "the attacker never met the lock"
    );
    assert_eq!(releases(&server), 0);
}

/// What the provider does when it meets the lock: unlock with its `manage` assertion
/// alone, then with a proof challenge answered by a guess. Returns the refusal codes.
async fn try_to_unlock(
    server: &TestServer,
    app: &TestApp,
    client: &Client,
    totp: &str,
    authenticator: &Authenticator,
) -> Vec<ErrorCode> {
    let mut refusals = Vec::new();
    let err = client
        .unlock(&app.assertion("victim", Purpose::Manage), None)
        .await
        .expect_err("manage alone lifted the lock");
    refusals.push(err.code().unwrap());
    let proof = client
        .start_challenge(
            &app.assertion("victim", Purpose::Manage),
            totp,
            ChallengePurpose::Proof,
        )
        .await
        .unwrap();
    let err = client
        .unlock(
            &app.assertion("victim", Purpose::Manage),
            Some(Proof {
                challenge_id: proof.id,
                code: Some(authenticator.wrong_code(server)),
                webauthn: None,
            }),
        )
        .await
        .expect_err("a wrong proof lifted the lock");
    refusals.push(err.code().unwrap());
    if err.code() == Some(ErrorCode::UserBackoff) {
        server.clock.advance(retry_after(&err));
    }
    refusals
}

/// Locks and unlocks are told to every confirmed method; only the user's own proof (or an
/// operator) lifts a lock, and a success does not give the attacker a fresh budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_and_unlocks_are_notified_and_need_the_users_proof() {
    let (server, app, gateway) = setup().await;
    let (totp, authenticator) = enrol_with_totp(&server, &app, "victim").await;
    let phone =
        add_phone_with_totp_proof(&server, &app, &gateway, "victim", &totp, &authenticator).await;
    let client = server.client();
    let before = sms_gateway::received(&gateway).await.len();
    // Ten wrong TOTP answers (waiting out the back-off) lock the user.
    let mut locked = false;
    for _ in 0..40 {
        let recovery = match client
            .start_recovery(&app.assertion("victim", Purpose::Recover), &totp)
            .await
        {
            Ok(r) => r.id,
            Err(e) => {
                assert_eq!(e.code(), Some(ErrorCode::Locked), "{e}");
                locked = true;
                break;
            }
        };
        loop {
            let err = client
                .verify_recovery(&recovery, &authenticator.wrong_code(&server))
                .await
                .unwrap_err();
            match err.code() {
                Some(ErrorCode::InvalidCode) => {}
                Some(ErrorCode::UserBackoff) => server.clock.advance(retry_after(&err)),
                Some(ErrorCode::TooManyAttempts) => break,
                Some(ErrorCode::Locked) => {
                    locked = true;
                    break;
                }
                other => panic!("unexpected {other:?}: {err}"),
            }
        }
        if locked {
            break;
        }
    }
    assert!(locked);
    let notice = wait_for_text(&gateway, before, "locked").await;
    assert!(notice.contains("Health security notice"), "{notice}");
    // The provider's manage assertion alone does nothing.
    let err = client
        .unlock(&app.assertion("victim", Purpose::Manage), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ProofRequired));
    // Ten failures spent the day's budget: even the user's own proof waits it out.
    let err = common::unlock_with_sms_proof(&server, &app, "victim", &phone, &gateway)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::FailureBudgetExhausted));
    // Until the first failure is 24 hours old (the back-offs waited out took minutes).
    assert!(
        (86_400 - 3600..=86_400).contains(&retry_after(&err)),
        "{err}"
    );
    server.clock.advance(retry_after(&err));
    let before = sms_gateway::received(&gateway).await.len();
    assert!(
        common::unlock_with_sms_proof(&server, &app, "victim", &phone, &gateway)
            .await
            .unwrap()
            .was_locked
    );
    let notice = wait_for_text(&gateway, before, "unlocked").await;
    assert!(notice.contains("with a verification code"), "{notice}");

    // The operator's unlock is notified too.
    let before = sms_gateway::received(&gateway).await.len();
    let out = server
        .cli()
        .args(["user", "unlock", &app.id, "victim"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // One notice of a kind an hour per destination: this one goes an hour after the last.
    server.clock.advance(3600);
    let notice = wait_for_text(&gateway, before, "operator").await;
    assert!(notice.contains("unlocked"), "{notice}");
    assert_eq!(releases(&server), 0);
}

/// Attack 2: while the user is still pending, the provider adds its own TOTP method; the
/// user confirms their phone; later the provider confirms its planted method with a
/// `manage` assertion and recovers with it.
#[tokio::test]
async fn a_method_planted_during_enrolment_dies_when_the_user_confirms_theirs() {
    let (server, app, gateway) = setup().await;
    let client = server.client();
    enrol(&server, &app, "victim").await;
    // The provider plants its authenticator while the user enrols.
    let planted = client
        .add_method(
            &app.assertion("victim", Purpose::Enroll),
            MethodKind::Totp,
            None,
            None,
        )
        .await
        .unwrap();
    let planted_app =
        Authenticator(totp_rs::Totp::from_url(&planted.totp.unwrap().otpauth_uri).unwrap());
    // The user adds and confirms their phone.
    let phone = client
        .add_method(
            &app.assertion("victim", Purpose::Enroll),
            MethodKind::Sms,
            Some(PHONE),
            None,
        )
        .await
        .unwrap();
    client
        .answer(&phone.challenge.id, &sms_gateway::code(&gateway, 0).await)
        .await
        .unwrap();
    let notice = wait_for_text(&gateway, 1, "were").await;
    assert!(notice.contains("removed"), "{notice}");
    server.clock.advance(60);

    // Every path to confirming the planted method is closed.
    let err = client
        .answer(&planted.challenge.id, &planted_app.code(&server))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidCode));
    let err = client
        .start_challenge(
            &app.assertion("victim", Purpose::Manage),
            &planted.method.id,
            ChallengePurpose::Confirm,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::MethodNotFound));
    let err = client
        .start_recovery(
            &app.assertion("victim", Purpose::Recover),
            &planted.method.id,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::MethodNotFound));
    // A new TOTP method needs a proof through the phone, which the provider cannot give.
    let err = client
        .add_method(
            &app.assertion("victim", Purpose::Manage),
            MethodKind::Totp,
            None,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ProofRequired));
    let err = client
        .add_method(
            &app.assertion("victim", Purpose::Enroll),
            MethodKind::Totp,
            None,
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AssertionWrongPurpose));
    assert_eq!(
        server.query_i64("SELECT count(*) FROM methods WHERE state = 'pending'"),
        0
    );
    assert_eq!(server.count("methods"), 1);
    assert_eq!(releases(&server), 0);
}

/// However many `recover` assertions the provider mints, a user sees a handful of
/// recovery starts a day.
#[tokio::test]
async fn recovery_starts_are_limited_per_user_per_day() {
    let (server, app, _gateway) = setup().await;
    // All the starts below in one UTC day.
    server.clock.align(86_400, 3600);
    let (totp, _) = enrol_with_totp(&server, &app, "victim").await;
    let client = server.client();
    let policy = AppPolicy::default();
    for _ in 0..policy.recovery_starts_per_user_per_day {
        client
            .start_recovery(&app.assertion("victim", Purpose::Recover), &totp)
            .await
            .unwrap();
    }
    let err = client
        .start_recovery(&app.assertion("victim", Purpose::Recover), &totp)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::RecoveryRateLimited));
    assert!((1..=86_400).contains(&retry_after(&err)));
    assert_eq!(
        server.count("recoveries"),
        i64::from(policy.recovery_starts_per_user_per_day)
    );
    // Another user of the app has their own count.
    let (other, _) = enrol_with_totp(&server, &app, "other").await;
    client
        .start_recovery(&app.assertion("other", Purpose::Recover), &other)
        .await
        .unwrap();
}

/// Attack 5: the rate-limit key lower-cased the domain only, so case variants and `+tags`
/// of one mailbox each had their own budget (ten spellings put 50 codes in one mailbox).
#[tokio::test]
async fn spellings_of_one_mailbox_share_its_send_budget() {
    let smtp = common::smtp_server::SmtpServer::start().await;
    let server = TestServer::start_with(|c| {
        c.email.provider = ghostkey::config::EmailProvider::Smtp;
        c.email.smtp_host = "127.0.0.1".into();
        c.email.smtp_port = smtp.port();
        c.email.smtp_tls = ghostkey::config::SmtpTls::None;
        c.email.from = "Ghostkey <no-reply@ghostkey.test>".into();
    });
    let app = server.register_app("Health");
    server.set_policy(
        &app,
        PolicyChange {
            requests_per_address_per_minute: Some(100_000),
            ..Default::default()
        },
    );
    // Every send below in one clock hour.
    server.clock.align(3600, 1);
    let client = server.client();
    let spellings = [
        "jo@example.org",
        "Jo@example.org",
        "JO@example.org",
        "jO@Example.ORG",
        "jo+a@example.org",
        "jo+b@example.org",
        "Jo+c@example.org",
        "JO+D@EXAMPLE.ORG",
        "jo+e@example.org",
        "jo+f@example.org",
    ];
    let mut sent = 0;
    for (i, address) in spellings.iter().enumerate() {
        let user = format!("user-{i}");
        enrol(&server, &app, &user).await;
        match client
            .add_method(
                &app.assertion(&user, Purpose::Enroll),
                MethodKind::Email,
                Some(address),
                None,
            )
            .await
        {
            Ok(_) => sent += 1,
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::DestinationRateLimited), "{e}"),
        }
    }
    let policy = AppPolicy::default();
    assert_eq!(sent, policy.sends_per_destination_per_hour);
    // Delivery keeps the address as it was given.
    let mails = smtp
        .wait_for(sent as usize, std::time::Duration::from_secs(20))
        .await;
    let recipients: Vec<&str> = mails
        .iter()
        .flat_map(|m| m.to.iter().map(String::as_str))
        .collect();
    assert!(recipients.contains(&"Jo@example.org"), "{recipients:?}");
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Attack 8: after an erasure answered 204, the WAL and the free pages still held the user
/// id, the sealed blob and the chain; a backup taken afterwards held them too. Same for
/// the old blob after a replacement.
#[tokio::test]
async fn erasure_and_replacement_leave_nothing_in_the_file_its_wal_or_a_later_backup() {
    let (server, app, _gateway) = setup().await;
    let user = "erase-me-7f3a9c21";
    let secret = enrol(&server, &app, user).await;
    let (totp, authenticator) = enrol_with_totp_method(&server, &app, user).await;
    let row = |column: &str| -> Vec<u8> {
        let conn = rusqlite::Connection::open(server.db_path()).unwrap();
        conn.query_row(
            &format!("SELECT {column} FROM users WHERE user_id = ?1"),
            [user],
            |r| r.get(0),
        )
        .unwrap()
    };
    let old_blob = row("sealed_virtual_device");
    let chain: Vec<Vec<u8>> = {
        let conn = rusqlite::Connection::open(server.db_path()).unwrap();
        let mut stmt = conn
            .prepare("SELECT block FROM chain_blocks WHERE user_id = ?1")
            .unwrap();
        let blocks = stmt
            .query_map([user], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        blocks
    };
    assert!(!chain.is_empty());
    let method_secret: Vec<u8> =
        server.query_blob(&format!("SELECT secret FROM methods WHERE id = '{totp}'"));

    // Replace the sealed virtual device: the old blob goes from the file and the WAL.
    let client = server.client();
    server.clock.advance(30);
    let proof = client
        .start_challenge(
            &app.assertion(user, Purpose::Manage),
            &totp,
            ChallengePurpose::Proof,
        )
        .await
        .unwrap();
    let prepared = ghostkey_client::prepare_enrolment(&app.id, user, app.key.kid()).unwrap();
    let new_blob = prepared.virtual_device.seal(&secret).unwrap();
    client
        .replace_virtual_device(
            &app.assertion(user, Purpose::Manage),
            &new_blob,
            Proof {
                challenge_id: proof.id,
                code: Some(authenticator.code(&server)),
                webauthn: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(row("sealed_virtual_device"), new_blob);
    assert!(
        !contains(&server.raw_database(), &old_blob),
        "the old blob is still in the file"
    );

    client
        .erase_user(&app.assertion(user, Purpose::Manage))
        .await
        .unwrap();
    let backup = server.dir.path().join("after-erase.db");
    ghostkey::server::open_sqlite(&server.config)
        .unwrap()
        .backup_to(&backup)
        .unwrap();
    let raw = server.raw_database();
    let copy = std::fs::read(&backup).unwrap();
    let mut secrets: Vec<(&str, Vec<u8>)> = vec![
        ("user id", user.as_bytes().to_vec()),
        ("old sealed blob", old_blob.clone()),
        ("new sealed blob", new_blob.clone()),
        ("TOTP seed (encrypted)", method_secret.clone()),
    ];
    for (i, block) in chain.iter().enumerate() {
        secrets.push((
            if i == 0 { "root block" } else { "chain block" },
            block.clone(),
        ));
    }
    for (what, bytes) in &secrets {
        assert!(
            !contains(&raw, bytes),
            "the {what} is in the database or its WAL"
        );
        assert!(
            !contains(&copy, bytes),
            "the {what} is in a backup taken after the erasure"
        );
    }
}

/// Attack 3: cancelling needed an assertion from the provider (`manage`, or `recover` and
/// a proof), so the waiting period did not protect the user from the provider. Now every
/// notice about a started or waiting recovery carries a cancel code that stops it alone.
#[tokio::test]
async fn the_user_cancels_the_providers_recovery_with_the_notice_code_alone() {
    let smtp = common::smtp_server::SmtpServer::start().await;
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
    server.set_policy(
        &app,
        PolicyChange {
            waiting_period_secs: Some(86_400),
            ..Default::default()
        },
    );
    let client = server.client();
    // The user: a phone, then their own mailbox added with a proof through the phone.
    enrol(&server, &app, "victim").await;
    let phone = client
        .add_method(
            &app.assertion("victim", Purpose::Enroll),
            MethodKind::Sms,
            Some(PHONE),
            None,
        )
        .await
        .unwrap();
    client
        .answer(&phone.challenge.id, &sms_gateway::code(&gateway, 0).await)
        .await
        .unwrap();
    let before = sms_gateway::received(&gateway).await.len();
    let proof = client
        .start_challenge(
            &app.assertion("victim", Purpose::Manage),
            &phone.method.id,
            ChallengePurpose::Proof,
        )
        .await
        .unwrap();
    let mail = client
        .add_method(
            &app.assertion("victim", Purpose::Manage),
            MethodKind::Email,
            Some("victim@example.org"),
            Some(Proof {
                challenge_id: proof.id,
                code: Some(sms_gateway::next_code(&gateway, before).await),
                webauthn: None,
            }),
        )
        .await
        .unwrap();
    let mails = smtp.wait_for(1, std::time::Duration::from_secs(20)).await;
    client
        .answer(
            &mail.challenge.id,
            &common::find_code(&mails[0].data, 8).unwrap(),
        )
        .await
        .unwrap();

    // The provider has taken over the phone line (a SIM swap): it starts a recovery, reads
    // the code and verifies it. The release waits a day.
    let before = sms_gateway::received(&gateway).await.len();
    let started = client
        .start_recovery(&app.assertion("victim", Purpose::Recover), &phone.method.id)
        .await
        .unwrap();
    let code = sms_gateway::next_code(&gateway, before).await;
    let waiting = client.verify_recovery(&started.id, &code).await.unwrap();
    assert_eq!(
        waiting.state,
        ghostkey_client::proto::api::RecoveryState::Waiting
    );

    // The mailbox got both notices, each with its cancel code; the phone in use got none
    // with the start's code.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let codes = loop {
        let codes: Vec<String> = smtp
            .messages()
            .iter()
            .filter_map(|m| common::cancel_code_in(&m.data.replace("\r\n", " ")))
            .collect();
        if codes.len() >= 2 || std::time::Instant::now() > deadline {
            break codes;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    };
    assert_eq!(codes.len(), 2, "{:?}", smtp.messages());
    assert_ne!(codes[0], codes[1]);
    let texts = texts_after(&gateway, before).await;
    assert!(!texts.iter().any(|t| t.contains(&codes[0])), "{texts:?}");

    // Wrong codes: refused like any guess, and counted against the address.
    // The address units of the current minute window: those below all fall in it.
    server.clock.align(60, 1);
    let units = || {
        let window = server.now() - server.now().rem_euclid(60);
        server.query_i64(&format!(
            "SELECT COALESCE(SUM(count), 0) FROM rate_counters \
             WHERE scope = 'addr-minute' AND window_start = {window}"
        ))
    };
    let spent = units();
    let err = client
        .cancel_recovery_with_code("ABCD-EFGH-JKMN-PQRS-TVWX")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidCode));
    assert_eq!(units(), spent + 1);
    let err = client
        .cancel_recovery_with_code("not a code")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidField));

    // The user cancels with the code alone, typed sloppily: no assertion at all.
    let sloppy = codes[1].to_lowercase().replace('-', " ");
    let cancelled = client.cancel_recovery_with_code(&sloppy).await.unwrap();
    assert_eq!(cancelled.recovery_id, started.id);
    assert_eq!(
        cancelled.state,
        ghostkey_client::proto::api::RecoveryState::Cancelled
    );
    // Spent: the other code of the same recovery no longer answers either.
    let err = client
        .cancel_recovery_with_code(&codes[0])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidCode));
    // A day later the provider's release is refused.
    server.clock.advance(86_400);
    let err = client
        .release_recovery(&app.assertion("victim", Purpose::Recover), &started.id)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::RecoveryCancelled));
    assert_eq!(releases(&server), 0);
    // Every method is told it was cancelled.
    wait_for_text(&gateway, before, "was cancelled").await;
}

/// Attack 4: security notices bypassed every send limit (30 TOTP recovery starts sent 30
/// SMS to one phone after its code limit was spent). Now notices of a kind are coalesced
/// per destination, at most one an hour saying how many events it stands for, and count
/// against the send budgets; the cancel code of the first stops every open recovery.
#[tokio::test]
async fn notices_are_coalesced_per_destination_and_the_first_code_stops_them_all() {
    let (server, app, gateway) = setup().await;
    server.set_policy(
        &app,
        PolicyChange {
            recovery_starts_per_user_per_day: Some(20),
            ..Default::default()
        },
    );
    // Every send below in one clock hour, then the next.
    server.clock.align(3600, 1);
    let (totp, authenticator) = enrol_with_totp(&server, &app, "victim").await;
    add_phone_with_totp_proof(&server, &app, &gateway, "victim", &totp, &authenticator).await;
    let client = server.client();
    let before = sms_gateway::received(&gateway).await.len();
    let started_texts = |texts: Vec<String>| -> Vec<String> {
        texts
            .into_iter()
            .filter(|t| t.contains("recovery of your account was started"))
            .collect()
    };
    for _ in 0..20 {
        client
            .start_recovery(&app.assertion("victim", Purpose::Recover), &totp)
            .await
            .unwrap();
    }
    let first = wait_for_text(&gateway, before, "was started").await;
    // Give the worker time to send anything else it would (it polls every 50 ms).
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let texts = started_texts(texts_after(&gateway, before).await);
    assert_eq!(texts.len(), 1, "{texts:?}");
    // Two notices for twenty events: the one sent (which the first starts may have joined
    // before it went) and the one waiting for the next hour.
    assert_eq!(
        server.query_i64("SELECT count(*) FROM outbox WHERE notice_kind = 'recovery_started'"),
        2
    );
    assert_eq!(
        server.query_i64("SELECT sum(events) FROM outbox WHERE notice_kind = 'recovery_started'"),
        20
    );
    let waiting = server.query_i64(
        "SELECT events FROM outbox WHERE notice_kind = 'recovery_started' AND state = 'pending'",
    );
    assert!(waiting > 1, "{waiting}");
    // An hour later the waiting one goes, saying what it stands for.
    server.clock.advance(3600);
    let later = wait_for_text(&gateway, before, &format!("stands for {waiting} such")).await;
    assert!(later.contains("was started"), "{later}");
    assert_eq!(started_texts(texts_after(&gateway, before).await).len(), 2);

    // The first notice's cancel code stops every open recovery.
    let code = common::cancel_code_in(&first).expect("a cancel code in the notice");
    client.cancel_recovery_with_code(&code).await.unwrap();
    assert_eq!(
        server.query_i64("SELECT count(*) FROM recoveries WHERE state = 'cancelled'"),
        20
    );
    assert_eq!(
        server.query_i64("SELECT count(*) FROM recoveries WHERE state <> 'cancelled'"),
        0
    );
}

/// `n` wrong codes to recovery `id`, each from its own address (203.0.113.i, believed
/// through `X-Forwarded-For` from the trusted loopback proxy); the error code of each answer.
async fn wrong_codes_from_many_addresses(
    server: &TestServer,
    id: &str,
    authenticator: &Authenticator,
    n: usize,
) -> Vec<String> {
    let http = reqwest::Client::new();
    let url = format!("{}/v1/recoveries/{id}/verify", server.base_url);
    let mut codes = Vec::new();
    for i in 0..n {
        let res = http
            .post(&url)
            .header("x-forwarded-for", format!("203.0.113.{i}"))
            .json(&serde_json::json!({ "code": authenticator.wrong_code(server) }))
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = res.json().await.unwrap();
        codes.push(body["code"].as_str().unwrap_or_default().to_owned());
    }
    codes
}

/// Attack 9: limits per address let an attacker with many addresses check codes without
/// end. The unauthenticated endpoints have an app-wide ceiling, every address together.
#[tokio::test]
async fn many_addresses_share_the_apps_ceiling_on_unauthenticated_checks() {
    let server = TestServer::start_with(|c| {
        c.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    });
    let app = server.register_app("Health");
    server.set_policy(
        &app,
        PolicyChange {
            requests_per_address_per_minute: Some(100_000),
            code_checks_per_app_per_minute: Some(5),
            max_attempts_per_challenge: Some(10),
            user_backoff_base_secs: Some(0),
            ..Default::default()
        },
    );
    server.clock.align(60, 1);
    let (totp, authenticator) = enrol_with_totp(&server, &app, "victim").await;
    let started = server
        .client()
        .start_recovery(&app.assertion("victim", Purpose::Recover), &totp)
        .await
        .unwrap();
    // The enrolment's answer spent one check of this minute.
    let codes = wrong_codes_from_many_addresses(&server, &started.id, &authenticator, 10).await;
    let limited = codes.iter().filter(|c| *c == "app_rate_limited").count();
    let checked = codes.iter().filter(|c| *c == "invalid_code").count();
    assert_eq!((checked, limited), (4, 6), "{codes:?}");
    // The refused ones changed nothing: four wrong answers counted.
    assert_eq!(
        server.query_i64(&format!(
            "SELECT attempts FROM challenges WHERE id = '{}'",
            started.id
        )),
        4
    );
}

/// A proof opened under one purpose authorised an action of another (a proof started with a
/// `recover` assertion authorised a `manage` method add), and codes did not say what they
/// authorise. Now each message names its action, and a proof serves only its purpose.
#[tokio::test]
async fn a_proof_serves_only_the_purpose_it_was_opened_for_and_its_message_says_which() {
    let (server, app, gateway) = setup().await;
    let client = server.client();
    enrol(&server, &app, "victim").await;
    let phone = client
        .add_method(
            &app.assertion("victim", Purpose::Enroll),
            MethodKind::Sms,
            Some(PHONE),
            None,
        )
        .await
        .unwrap();
    let confirm_text = wait_for_text(&gateway, 0, "verification code").await;
    assert!(
        confirm_text.contains("to confirm this as a way to recover"),
        "{confirm_text}"
    );
    client
        .answer(&phone.challenge.id, &sms_gateway::code(&gateway, 0).await)
        .await
        .unwrap();

    // A proof opened with a `recover` assertion (what cancelling by proof uses).
    let before = sms_gateway::received(&gateway).await.len();
    let proof = client
        .start_challenge(
            &app.assertion("victim", Purpose::Recover),
            &phone.method.id,
            ChallengePurpose::Proof,
        )
        .await
        .unwrap();
    let text = wait_for_text(&gateway, before, "verification code").await;
    assert!(text.contains("to stop a recovery"), "{text}");
    let code = sms_gateway::next_code(&gateway, before).await;
    // ... cannot authorise a method change, even with its right code.
    let err = client
        .add_method(
            &app.assertion("victim", Purpose::Manage),
            MethodKind::Totp,
            None,
            Some(Proof {
                challenge_id: proof.id.clone(),
                code: Some(code.clone()),
                webauthn: None,
            }),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidProof));
    assert_eq!(server.count("methods"), 1);

    // A proof opened with `manage` says it approves a change, and does.
    let before = sms_gateway::received(&gateway).await.len();
    let proof = client
        .start_challenge(
            &app.assertion("victim", Purpose::Manage),
            &phone.method.id,
            ChallengePurpose::Proof,
        )
        .await
        .unwrap();
    let text = wait_for_text(&gateway, before, "verification code").await;
    assert!(text.contains("to approve a change"), "{text}");
    client
        .add_method(
            &app.assertion("victim", Purpose::Manage),
            MethodKind::Totp,
            None,
            Some(Proof {
                challenge_id: proof.id,
                code: Some(sms_gateway::next_code(&gateway, before).await),
                webauthn: None,
            }),
        )
        .await
        .unwrap();

    // A recovery's code says it recovers the account.
    let before = sms_gateway::received(&gateway).await.len();
    client
        .start_recovery(&app.assertion("victim", Purpose::Recover), &phone.method.id)
        .await
        .unwrap();
    let text = wait_for_text(&gateway, before, "verification code").await;
    assert!(
        text.contains("to recover your account on a new device"),
        "{text}"
    );
}

/// The provider knows a passphrase of its own choosing and wants it on an active user's
/// account to recover with it: without a proof through the user's confirmed method, every
/// path is closed, and a passphrase challenge it opened on a method of its own does not
/// exist to open.
#[tokio::test]
async fn the_provider_cannot_add_a_passphrase_it_knows_to_an_active_user() {
    use ghostkey_client::passphrase;
    use secrecy::SecretString;
    let (server, app, gateway) = setup().await;
    server.set_policy(
        &app,
        PolicyChange {
            allowed_methods: Some(vec![
                MethodKind::Totp,
                MethodKind::Sms,
                MethodKind::Email,
                MethodKind::Passphrase,
            ]),
            ..Default::default()
        },
    );
    let (_, _, sms_method) = common::enrol_with_sms(&server, &app, &gateway, "u1").await;
    let client = server.client();
    let known = SecretString::from("the provider's own passphrase".to_owned());
    let setup = || passphrase::setup(&known, &app.id, "u1").unwrap();
    let methods_before = server.count("methods");

    // An enrol assertion after the user is active: wrong purpose.
    let err = client
        .add_passphrase(&app.assertion("u1", Purpose::Enroll), setup(), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AssertionWrongPurpose));
    // A manage assertion without proof.
    let err = client
        .add_passphrase(&app.assertion("u1", Purpose::Manage), setup(), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::ProofRequired));
    // A proof challenge on the user's SMS method, answered with a guess (the provider does
    // not see the code sent to the phone), or with the verifier of its passphrase.
    let proof = client
        .start_challenge(
            &app.assertion("u1", Purpose::Manage),
            &sms_method,
            ChallengePurpose::Proof,
        )
        .await
        .unwrap();
    let err = client
        .add_passphrase(
            &app.assertion("u1", Purpose::Manage),
            setup(),
            Some(Proof {
                challenge_id: proof.id.clone(),
                code: Some("00000000".into()),
                webauthn: None,
            }),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            Some(ErrorCode::InvalidProof | ErrorCode::InvalidCode)
        ),
        "{err:?}"
    );
    let err = client
        .add_passphrase(
            &app.assertion("u1", Purpose::Manage),
            setup(),
            Some(Proof {
                challenge_id: proof.id,
                code: Some(
                    passphrase::derive_verifier(&known, &app.id, "u1", 1)
                        .map(|v| secrecy::ExposeSecret::expose_secret(&v).to_owned())
                        .unwrap(),
                ),
                webauthn: None,
            }),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            Some(
                ErrorCode::InvalidField
                    | ErrorCode::InvalidProof
                    | ErrorCode::UserBackoff
                    | ErrorCode::TooManyAttempts
            )
        ),
        "{err:?}"
    );
    assert_eq!(server.count("methods"), methods_before, "nothing was added");
    assert_eq!(
        server.query_i64("SELECT count(*) FROM methods WHERE kind = 'passphrase'"),
        0
    );
}

/// Attack 10: the app-wide ceiling on unauthenticated checks counted every answer, even
/// those refused before any check (a dead or used challenge, a user in back-off, locked, or
/// out of failure budget). One user (or anyone holding one challenge id) answering their
/// own spent recovery from a dozen addresses kept the ceiling full, and every other user
/// of the app was refused `app_rate_limited` on every code: no one could recover. Now only
/// answers that are checked spend the app's ceiling; the others spend their address's unit
/// and are refused as before.
#[tokio::test]
async fn answers_refused_before_any_check_do_not_spend_the_apps_ceiling() {
    let server = TestServer::start_with(|c| {
        c.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    });
    let app = server.register_app("Health");
    server.set_policy(
        &app,
        PolicyChange {
            code_checks_per_app_per_minute: Some(6),
            user_backoff_base_secs: Some(600),
            ..Default::default()
        },
    );
    server.clock.align(60, 1);
    // Two users; each confirmation spends a check of this minute (2 of 6).
    let (mallory_totp, mallory) = enrol_with_totp(&server, &app, "mallory").await;
    let (alice_totp, alice) = enrol_with_totp(&server, &app, "alice").await;
    let spent = server
        .client()
        .start_recovery(&app.assertion("mallory", Purpose::Recover), &mallory_totp)
        .await
        .unwrap();
    let answers = wrong_codes_from_many_addresses(&server, &spent.id, &mallory, 30).await;
    // The first is checked (3 of 6); the back-off refuses the rest before any check.
    assert_eq!(answers[0], "invalid_code", "{answers:?}");
    assert!(
        answers[1..].iter().all(|a| a == "user_backoff"),
        "{answers:?}"
    );
    // Nothing was checked after the first: one attempt on mallory's challenge.
    assert_eq!(
        server.query_i64(&format!(
            "SELECT attempts FROM challenges WHERE id = '{}'",
            spent.id
        )),
        1
    );
    // Alice still recovers in the same minute.
    server.clock.advance(30);
    let started = server
        .client()
        .start_recovery(&app.assertion("alice", Purpose::Recover), &alice_totp)
        .await
        .unwrap();
    let released = server
        .client()
        .verify_recovery(&started.id, &alice.code(&server))
        .await
        .unwrap();
    assert!(released.sealed_virtual_device.is_some());
}
