//! Every abuse limit is hit and answered with its own code; counters live in the store
//! and survive a restart. Codes are read from a local SMS gateway (the webhook adapter).

mod common;

use common::{enrol, enrol_with_totp, sms_gateway, TestApp, TestServer};
use ghostkey::domain::policy::PolicyChange;
use ghostkey_client::proto::api::{AddMethodResponse, MethodKind};
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::proto::ErrorCode;
use ghostkey_client::ClientError;
use wiremock::MockServer;

async fn setup(change: PolicyChange) -> (TestServer, TestApp, MockServer) {
    let gateway = sms_gateway::accepting().await;
    let server = TestServer::start_with(|c| sms_gateway::configure(c, &gateway));
    let app = server.register_app("Health");
    server.set_policy(&app, change);
    (server, app, gateway)
}

async fn add_phone(
    server: &TestServer,
    app: &TestApp,
    user: &str,
    phone: &str,
) -> Result<AddMethodResponse, ClientError> {
    server
        .client()
        .add_method(
            &app.assertion(user, Purpose::Enroll),
            MethodKind::Sms,
            Some(phone),
            None,
        )
        .await
}

fn retry_after(err: &ClientError) -> u64 {
    match err {
        ClientError::Api { problem, .. } => problem.retry_after.expect("a retry_after"),
        other => panic!("not a problem: {other}"),
    }
}

fn wrong(code: &str) -> String {
    code.chars()
        .map(|c| {
            if c == '9' {
                '0'
            } else {
                ((c as u8) + 1) as char
            }
        })
        .collect()
}

#[tokio::test]
async fn three_wrong_codes_kill_the_challenge_even_for_the_right_code() {
    let (server, app, gateway) = setup(PolicyChange {
        user_backoff_base_secs: Some(0),
        ..Default::default()
    })
    .await;
    enrol(&server, &app, "u").await;
    let added = add_phone(&server, &app, "u", "+33 6 12 34 56 78")
        .await
        .unwrap();
    let code = sms_gateway::code(&gateway, 0).await;
    let client = server.client();
    for _ in 0..3 {
        let err = client
            .answer(&added.challenge.id, &wrong(&code))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidCode));
    }
    let err = client.answer(&added.challenge.id, &code).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TooManyAttempts));
    assert_eq!(server.query_i64("SELECT attempts FROM challenges"), 3);
    assert_eq!(
        server.query_i64("SELECT count(*) FROM methods WHERE state = 'pending'"),
        1
    );
    // Junk is refused without costing an attempt.
    let err = client
        .answer(&added.challenge.id, "12ab")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidField));
    // An unknown challenge answers like a wrong code.
    let err = client
        .answer("ch_doesnotexist0000000", &code)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidCode));
}

#[tokio::test]
async fn expired_and_replayed_codes_are_refused() {
    let (server, app, gateway) = setup(PolicyChange::default()).await;
    enrol(&server, &app, "u").await;
    let client = server.client();
    let added = add_phone(&server, &app, "u", "+33 6 12 34 56 78")
        .await
        .unwrap();
    let code = sms_gateway::code(&gateway, 0).await;
    server.clock.advance(600);
    let err = client.answer(&added.challenge.id, &code).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::CodeExpired));
    assert_eq!(server.query_i64("SELECT attempts FROM challenges"), 0);

    // A new code for the pending method; the right code once, then a replay.
    let again = client
        .start_challenge(
            &app.assertion("u", Purpose::Enroll),
            &added.method.id,
            ghostkey_client::proto::api::ChallengePurpose::Confirm,
        )
        .await
        .unwrap();
    let code2 = sms_gateway::code(&gateway, 1).await;
    assert_ne!(code, code2);
    // The old code does not answer the new challenge.
    assert_eq!(
        client.answer(&again.id, &code).await.unwrap_err().code(),
        Some(ErrorCode::InvalidCode)
    );
    server.clock.advance(2);
    client.answer(&again.id, &code2).await.unwrap();
    let err = client.answer(&again.id, &code2).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::CodeAlreadyUsed));
}

#[tokio::test]
async fn failures_back_off_then_lock_until_lifted_or_an_operator_unlocks() {
    let (server, app, gateway) = setup(PolicyChange {
        user_lock_threshold: Some(4),
        max_attempts_per_challenge: Some(10),
        ..Default::default()
    })
    .await;
    enrol(&server, &app, "u").await;
    let client = server.client();
    let added = add_phone(&server, &app, "u", "+33 6 12 34 56 78")
        .await
        .unwrap();
    let code = sms_gateway::code(&gateway, 0).await;
    let bad = wrong(&code);

    // Back-off: 2 s, then 4 s, then 8 s; an answer inside the window is not even checked.
    for (i, delay) in [2i64, 4, 8].iter().enumerate() {
        let err = client.answer(&added.challenge.id, &bad).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::InvalidCode), "failure {i}");
        let err = client.answer(&added.challenge.id, &code).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::UserBackoff));
        // The wall clock may tick between the two answers.
        assert!(
            (*delay as u64 - 1..=*delay as u64).contains(&retry_after(&err)),
            "{}",
            retry_after(&err)
        );
        server.clock.advance(*delay);
    }
    assert_eq!(server.query_i64("SELECT attempts FROM challenges"), 3);
    // The fourth failure locks the user: even the right code is refused, and so are new
    // challenges.
    let err = client.answer(&added.challenge.id, &bad).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Locked));
    // A lock does not wear off with time.
    server.clock.advance(120);
    let err = client.answer(&added.challenge.id, &code).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Locked));
    let err = add_phone(&server, &app, "u", "+33 6 12 34 56 79")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Locked));

    // The user has no confirmed method yet (nothing a guess could reach): a manage
    // assertion lifts the lock without a proof; an enroll assertion cannot.
    let err = client
        .unlock(&app.assertion("u", Purpose::Enroll), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AssertionWrongPurpose));
    assert!(
        client
            .unlock(&app.assertion("u", Purpose::Manage), None)
            .await
            .unwrap()
            .was_locked
    );
    client.answer(&added.challenge.id, &code).await.unwrap();

    // Lock again with a second user, and lift it with the operator command.
    enrol(&server, &app, "v").await;
    let other = add_phone(&server, &app, "v", "+33 6 12 34 56 79")
        .await
        .unwrap();
    let mut answers = Vec::new();
    for _ in 0..4 {
        let err = client
            .answer(&other.challenge.id, "00000000")
            .await
            .unwrap_err();
        answers.push(err.code());
        server.clock.advance(10);
    }
    assert_eq!(
        answers,
        [
            Some(ErrorCode::InvalidCode),
            Some(ErrorCode::InvalidCode),
            Some(ErrorCode::InvalidCode),
            Some(ErrorCode::Locked)
        ],
        "the fourth failure locks the second user"
    );
    assert!(
        server.query_i64(
            "SELECT count(*) FROM user_guards WHERE user_id = 'v' AND locked_at IS NOT NULL"
        ) == 1
    );
    let out = server
        .cli()
        .args(["user", "unlock", &app.id, "v"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("user unlocked"));
    let code_v = sms_gateway::code(&gateway, 1).await;
    client.answer(&other.challenge.id, &code_v).await.unwrap();
}

#[tokio::test]
async fn sends_per_destination_are_limited_per_hour_and_per_day_and_survive_a_restart() {
    let (server, app, gateway) = setup(PolicyChange {
        sends_per_destination_per_hour: Some(2),
        sends_per_destination_per_day: Some(3),
        ..Default::default()
    })
    .await;
    // Start at 01:00 UTC (the next one, from wherever the clock is): the test moves two
    // hours forward and must stay inside one day window and begin one hour window.
    server.clock.align(86_400, 3600);
    let client = server.client();
    enrol(&server, &app, "u").await;
    let added = add_phone(&server, &app, "u", "+33 6 12 34 56 78")
        .await
        .unwrap();
    let resend = |server: &TestServer| {
        let client = server.client();
        let token = app.assertion("u", Purpose::Enroll);
        let method_id = added.method.id.clone();
        async move {
            client
                .start_challenge(
                    &token,
                    &method_id,
                    ghostkey_client::proto::api::ChallengePurpose::Confirm,
                )
                .await
        }
    };
    resend(&server).await.unwrap();
    let err = resend(&server).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::DestinationRateLimited));
    assert!((1..=3600).contains(&retry_after(&err)));
    // Another user with the same number shares the destination's budget: mail bombing and
    // SMS pumping are limited per destination, not per account.
    enrol(&server, &app, "w").await;
    let err = add_phone(&server, &app, "w", "+33612345678")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::DestinationRateLimited));
    // A refused request queued nothing.
    assert_eq!(server.count("outbox"), 2);
    drop(client);

    // The counters are in the store: a restart changes nothing.
    let gateway_again = sms_gateway::accepting().await;
    let server = server.restart(|c| sms_gateway::configure(c, &gateway_again));
    assert_eq!(
        resend(&server).await.unwrap_err().code(),
        Some(ErrorCode::DestinationRateLimited)
    );
    // An hour later, one more (the day allows 3), then the day is spent.
    server.clock.advance(3600);
    resend(&server).await.unwrap();
    server.clock.advance(3600);
    let err = resend(&server).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::DestinationRateLimited));
    assert!(
        retry_after(&err) > 3600,
        "the day window is the one that is full"
    );
    drop(gateway);
}

#[tokio::test]
async fn the_daily_send_budget_of_an_app_is_enforced() {
    let (server, app, _gateway) = setup(PolicyChange {
        app_daily_send_budget: Some(2),
        ..Default::default()
    })
    .await;
    // Every send below must fall in one day window.
    server.clock.align(86_400, 3600);
    for (user, phone) in [("a", "+33 6 12 34 56 01"), ("b", "+33 6 12 34 56 02")] {
        enrol(&server, &app, user).await;
        add_phone(&server, &app, user, phone).await.unwrap();
    }
    enrol(&server, &app, "c").await;
    let err = add_phone(&server, &app, "c", "+33 6 12 34 56 03")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AppSendBudgetExhausted));
    // Another app has its own budget.
    let other = server.register_app("Other");
    enrol(&server, &other, "c").await;
    add_phone(&server, &other, "c", "+33 6 12 34 56 03")
        .await
        .unwrap();
}

#[tokio::test]
async fn requests_per_client_address_are_limited_and_forwarded_for_needs_a_trusted_proxy() {
    let run = |trusted: bool| async move {
        let server = TestServer::start_with(|c| {
            if trusted {
                c.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
            }
        });
        let app = server.register_app("Health");
        server.set_policy(
            &app,
            PolicyChange {
                requests_per_address_per_minute: Some(3),
                ..Default::default()
            },
        );
        // The enrolment and the five requests must fall in one minute window.
        server.clock.align(60, 1);
        enrol(&server, &app, "u").await;
        let http = reqwest::Client::new();
        let url = format!("{}/v1/methods", server.base_url);
        let mut statuses = Vec::new();
        for forwarded in [
            "198.51.100.1",
            "198.51.100.1",
            "198.51.100.1",
            "198.51.100.1",
            "198.51.100.2",
        ] {
            let res = http
                .get(&url)
                .bearer_auth(app.assertion("u", Purpose::Manage))
                .header("x-forwarded-for", forwarded)
                .send()
                .await
                .unwrap();
            let retry = res.headers().get("retry-after").is_some();
            let status = res.status().as_u16();
            let body: serde_json::Value = res.json().await.unwrap();
            if status == 429 {
                assert_eq!(body["code"], "address_rate_limited");
                assert!(retry);
            }
            statuses.push(status);
        }
        statuses
    };
    // Behind a trusted proxy, each forwarded address has its own budget.
    assert_eq!(run(true).await, vec![200, 200, 200, 429, 200]);
    // From an untrusted peer, the header is ignored: the enrolment and these five requests
    // all count for 127.0.0.1, so the third request is the fourth of the minute.
    assert_eq!(run(false).await, vec![200, 200, 429, 429, 429]);
}

// Several client threads: a single-threaded test runtime under load could leave
// connections idle past the server's request-head timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_wrong_guesses_count_at_most_the_attempt_cap() {
    let (server, app, gateway) = setup(PolicyChange {
        user_backoff_base_secs: Some(0),
        user_lock_threshold: Some(100),
        requests_per_address_per_minute: Some(1000),
        ..Default::default()
    })
    .await;
    enrol(&server, &app, "u").await;
    let added = add_phone(&server, &app, "u", "+33 6 12 34 56 78")
        .await
        .unwrap();
    let code = sms_gateway::code(&gateway, 0).await;
    let mut tasks = Vec::new();
    for i in 0..40u32 {
        let client = server.client();
        let id = added.challenge.id.clone();
        let guess = format!("{:08}", (i * 7919) % 100_000_000);
        let guess = if guess == code { wrong(&code) } else { guess };
        tasks.push(tokio::spawn(
            async move { client.answer(&id, &guess).await },
        ));
    }
    for t in tasks {
        let err = t.await.unwrap().unwrap_err();
        assert!(
            matches!(
                err.code(),
                Some(ErrorCode::InvalidCode) | Some(ErrorCode::TooManyAttempts)
            ),
            "{err}"
        );
    }
    assert_eq!(server.query_i64("SELECT attempts FROM challenges"), 3);
    assert_eq!(server.query_i64("SELECT failures FROM user_guards"), 3);
    let err = server
        .client()
        .answer(&added.challenge.id, &code)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TooManyAttempts));
}

// The recovery requests spend their address unit inside the write that records them (one
// transaction, not two): refused requests still spend one, and a full limit changes nothing.
#[tokio::test]
async fn recovery_requests_spend_one_address_unit_each_even_refused_and_a_full_limit_changes_nothing(
) {
    let (server, app, gateway) = setup(PolicyChange {
        user_backoff_base_secs: Some(0),
        ..Default::default()
    })
    .await;
    // Start at the beginning of a minute, so that every unit below lands in one window.
    server.clock.align(60, 1);
    let added = enrol_with_confirmed_phone(&server, &app, &gateway).await;
    let client = server.client();
    let spent = || addr_units(&server);
    let attempts = || server.query_i64("SELECT COALESCE(SUM(attempts), 0) FROM challenges");
    let before = spent();

    // Refused before the write: the unit is still spent, and nothing else changes.
    let err = client
        .start_recovery(
            &app.assertion("u", Purpose::Recover),
            "m_AAAAAAAAAAAAAAAAAAAAAA",
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::MethodNotFound));
    assert_eq!(spent(), before + 1);
    assert_eq!(server.count("recoveries"), 0);

    let started = client
        .start_recovery(&app.assertion("u", Purpose::Recover), &added.method.id)
        .await
        .unwrap();
    assert_eq!(spent(), before + 2);
    let code = sms_gateway::next_code(&gateway, 1).await;

    // A wrong code: one unit and one attempt.
    let err = client
        .verify_recovery(&started.id, &wrong(&code))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidCode));
    assert_eq!(spent(), before + 3);
    assert_eq!(attempts(), 1);

    // An unknown recovery: the same answer, one unit (under no app: nothing names one),
    // no attempt anywhere.
    let mut unknown = started.id.clone();
    let last = if unknown.ends_with('A') { "B" } else { "A" };
    unknown.replace_range(unknown.len() - 1.., last);
    let err = client.verify_recovery(&unknown, &code).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidCode));
    assert_eq!(spent(), before + 4);
    assert_eq!(attempts(), 1);

    // The limit is now full: the right code and a new start are refused, and change
    // nothing (no unit, no attempt, no release, no recovery, no message).
    let full = u32::try_from(spent() - 1).unwrap();
    server.set_policy(
        &app,
        PolicyChange {
            requests_per_address_per_minute: Some(full),
            ..Default::default()
        },
    );
    let messages = server.count("outbox");
    let err = client
        .verify_recovery(&started.id, &code)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AddressRateLimited));
    let err = client
        .start_recovery(&app.assertion("u", Purpose::Recover), &added.method.id)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AddressRateLimited));
    assert_eq!(spent(), i64::from(full) + 1);
    assert_eq!(attempts(), 1);
    assert_eq!(server.count("recoveries"), 1);
    assert_eq!(server.count("outbox"), messages);
    assert_eq!(
        server.query_i64("SELECT COUNT(*) FROM recoveries WHERE state = 'started'"),
        1
    );

    // Room again: the same code releases the sealed virtual device.
    server.set_policy(
        &app,
        PolicyChange {
            requests_per_address_per_minute: Some(full + 1),
            ..Default::default()
        },
    );
    let released = client.verify_recovery(&started.id, &code).await.unwrap();
    assert!(released.sealed_virtual_device.is_some());
    assert_eq!(spent(), i64::from(full) + 2);
}

async fn metric(server: &TestServer, series: &str) -> i64 {
    let addr = server.metrics_addr.expect("metrics listener");
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

/// Enrols user "u" with one confirmed phone (the gateway's first code); returns the method.
async fn enrol_with_confirmed_phone(
    server: &TestServer,
    app: &TestApp,
    gateway: &MockServer,
) -> AddMethodResponse {
    enrol(server, app, "u").await;
    let added = add_phone(server, app, "u", "+33 6 12 34 56 78")
        .await
        .unwrap();
    server
        .client()
        .answer(&added.challenge.id, &sms_gateway::code(gateway, 0).await)
        .await
        .unwrap();
    added
}

/// Sets the address limit so that this address has `room` more requests this minute; the
/// limit.
fn leave_room(server: &TestServer, app: &TestApp, room: u32) -> u32 {
    let cap = u32::try_from(addr_units(server)).unwrap() + room;
    server.set_policy(
        app,
        PolicyChange {
            requests_per_address_per_minute: Some(cap),
            ..Default::default()
        },
    );
    cap
}

fn addr_units(server: &TestServer) -> i64 {
    server
        .query_i64("SELECT COALESCE(SUM(count), 0) FROM rate_counters WHERE scope = 'addr-minute'")
}

/// Sends `n` copies of a wrong `guess` for `recovery_id` at once; answers how many were
/// refused with `address_rate_limited` (every other answer must be a counted wrong code).
async fn parallel_wrong_guesses(
    server: &TestServer,
    recovery_id: &str,
    guess: &str,
    n: u32,
) -> u32 {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let client = server.client();
            let (id, guess) = (recovery_id.to_owned(), guess.to_owned());
            tokio::spawn(async move { client.verify_recovery(&id, &guess).await })
        })
        .collect();
    let mut limited = 0;
    for t in tasks {
        let err = t.await.unwrap().unwrap_err();
        match err.code() {
            Some(ErrorCode::AddressRateLimited) => limited += 1,
            Some(ErrorCode::InvalidCode) | Some(ErrorCode::TooManyAttempts) => {}
            other => panic!("unexpected {other:?}: {err}"),
        }
    }
    limited
}

// A read-only check of the address limit cannot see the requests in flight: the unit of a
// request that will run Argon2id (a passphrase verifier) is spent before the hash, so
// parallel requests from one address get no more hashes than the limit allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_passphrase_guesses_over_the_address_limit_cost_no_argon2_hash() {
    let server = TestServer::start_with(|c| {
        c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
        // Room in the Argon2 pool for every request within the limit: none is shed.
        c.server.argon2_concurrency = 2;
        c.server.argon2_waiting = 32;
    });
    let app = server.register_app("Health");
    server.set_policy(
        &app,
        PolicyChange {
            allowed_methods: Some(vec![MethodKind::Totp, MethodKind::Passphrase]),
            user_backoff_base_secs: Some(0),
            user_lock_threshold: Some(100),
            ..Default::default()
        },
    );
    server.clock.align(60, 1);
    enrol(&server, &app, "u").await;
    let client = server.client();
    let phrase = secrecy::SecretString::from("violet anchors drift past seven lanterns".to_owned());
    let setup = ghostkey_client::passphrase::setup(&phrase, &app.id, "u").unwrap();
    let added = client
        .add_passphrase(&app.assertion("u", Purpose::Enroll), setup, None)
        .await
        .unwrap();
    let answer = ghostkey_client::passphrase::answer(
        &phrase,
        &app.id,
        "u",
        added.challenge.passphrase.as_ref(),
    )
    .unwrap();
    use secrecy::ExposeSecret;
    client
        .answer(&added.challenge.id, answer.expose_secret())
        .await
        .unwrap();
    let started = client
        .start_recovery(&app.assertion("u", Purpose::Recover), &added.method.id)
        .await
        .unwrap();
    let other = secrecy::SecretString::from("a wholly different passphrase, also long".to_owned());
    let wrong_verifier =
        ghostkey_client::passphrase::derive_verifier(&other, &app.id, "u", 1).unwrap();
    let room = 5;
    leave_room(&server, &app, room);
    let hashes = metric(&server, "ghostkey_code_hashes_total").await;
    let limited =
        parallel_wrong_guesses(&server, &started.id, wrong_verifier.expose_secret(), 20).await;
    assert_eq!(limited, 20 - room);
    assert_eq!(
        metric(&server, "ghostkey_code_hashes_total").await - hashes,
        i64::from(room),
        "only the requests within the limit were hashed"
    );
}

// An SMS code under a MAC is checked at once, like a TOTP code, and its unit is spent in
// the verify's own write: parallel wrong codes over the limit are refused there, and the
// cap holds exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_sms_code_guesses_over_the_address_limit_are_refused_by_the_final_write() {
    let gateway = sms_gateway::accepting().await;
    let server = TestServer::start_with(|c| sms_gateway::configure(c, &gateway));
    let app = server.register_app("Health");
    server.set_policy(
        &app,
        PolicyChange {
            user_backoff_base_secs: Some(0),
            user_lock_threshold: Some(100),
            ..Default::default()
        },
    );
    server.clock.align(60, 1);
    let added = enrol_with_confirmed_phone(&server, &app, &gateway).await;
    let client = server.client();
    let started = client
        .start_recovery(&app.assertion("u", Purpose::Recover), &added.method.id)
        .await
        .unwrap();
    let code = sms_gateway::next_code(&gateway, 1).await;
    let room = 5;
    let cap = leave_room(&server, &app, room);
    let limited = parallel_wrong_guesses(&server, &started.id, &wrong(&code), 20).await;
    assert_eq!(limited, 20 - room);
    assert_eq!(addr_units(&server), i64::from(cap));
    // What the write refused counted no attempt: the cap of three was reached by the
    // requests within the limit alone.
    assert_eq!(
        server.query_i64("SELECT attempts FROM challenges WHERE purpose = 'recover'"),
        3
    );
}

// TOTP requests spend their address unit inside their final write; what that write refuses
// keeps the unit and nothing else, and the cap holds there too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn totp_recovery_refusals_in_the_final_write_keep_the_unit_and_nothing_else() {
    let (server, app, _gateway) = setup(PolicyChange {
        user_backoff_base_secs: Some(0),
        user_lock_threshold: Some(100),
        ..Default::default()
    })
    .await;
    server.clock.align(60, 1);
    let (method, authenticator) = enrol_with_totp(&server, &app, "u").await;
    let current = authenticator.generate(server.now() as u64).to_string();
    let client = server.client();

    // A replayed assertion: refused by the write, which keeps the unit only.
    let assertion = app.assertion("u", Purpose::Recover);
    let first = client.start_recovery(&assertion, &method).await.unwrap();
    let (units, jtis) = (addr_units(&server), server.count("assertion_jtis"));
    let err = client
        .start_recovery(&assertion, &method)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AssertionReplayed));
    assert_eq!(addr_units(&server), units + 1);
    assert_eq!(server.count("assertion_jtis"), jtis);
    assert_eq!(server.count("recoveries"), 1);

    // A cancelled recovery: refused by the write, one unit, no attempt.
    client
        .cancel_recovery(&app.assertion("u", Purpose::Manage), &first.id, None)
        .await
        .unwrap();
    let (units, attempts) = (
        addr_units(&server),
        server.query_i64("SELECT SUM(attempts) FROM challenges"),
    );
    let err = client
        .verify_recovery(&first.id, &wrong(&current))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::RecoveryCancelled));
    assert_eq!(addr_units(&server), units + 1);
    assert_eq!(
        server.query_i64("SELECT SUM(attempts) FROM challenges"),
        attempts
    );

    // Parallel wrong codes with room for five: the write holds the cap.
    let second = client
        .start_recovery(&app.assertion("u", Purpose::Recover), &method)
        .await
        .unwrap();
    let room = 5;
    let cap = leave_room(&server, &app, room);
    let limited = parallel_wrong_guesses(&server, &second.id, &wrong(&current), 20).await;
    assert_eq!(limited, 20 - room);
    assert_eq!(addr_units(&server), i64::from(cap));
}

// Attack 9: address limits counted exact addresses, so an IPv6 client with its /64 had
// 2^64 budgets. Addresses of one /64 now share one budget.
#[tokio::test]
async fn ipv6_clients_of_one_64_share_one_address_budget() {
    let server = TestServer::start_with(|c| {
        c.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    });
    let app = server.register_app("Health");
    server.set_policy(
        &app,
        PolicyChange {
            requests_per_address_per_minute: Some(3),
            ..Default::default()
        },
    );
    server.clock.align(60, 1);
    enrol(&server, &app, "u").await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/methods", server.base_url);
    let mut statuses = Vec::new();
    for forwarded in [
        "2001:db8:1:2::1",
        "2001:db8:1:2::2",
        "2001:db8:1:2:aaaa:bbbb:cccc:dddd",
        "2001:db8:1:2::4",
        "2001:db8:1:3::1",
        "::ffff:198.51.100.9",
    ] {
        let res = http
            .get(&url)
            .bearer_auth(app.assertion("u", Purpose::Manage))
            .header("x-forwarded-for", forwarded)
            .send()
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 200, 429, 200, 200]);
}

/// GETs the user's methods from `forwarded` (a trusted proxy's client); the status and
/// the error code, if any.
async fn list_methods_from(server: &TestServer, app: &TestApp, forwarded: &str) -> (u16, String) {
    let res = reqwest::Client::new()
        .get(format!("{}/v1/methods", server.base_url))
        .bearer_auth(app.assertion("u", Purpose::Manage))
        .header("x-forwarded-for", forwarded)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let retry_after = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    if status == 200 {
        return (status, String::new());
    }
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(retry_after.is_some(), "{status} {body} without Retry-After");
    (status, body["code"].as_str().unwrap().to_owned())
}

/// A server behind a trusted proxy on 127.0.0.1 (so that a test picks the client address
/// with `X-Forwarded-For`), with metrics, a line of `waiting` for refused clients, and an
/// app allowing `per_minute` requests per address, user "u" enrolled early in a minute.
async fn behind_a_proxy(waiting: usize, per_minute: u32) -> (TestServer, TestApp) {
    let server = TestServer::start_with(|c| {
        c.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.server.refused_clients_waiting = waiting;
        c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    });
    let app = server.register_app("Health");
    server.set_policy(
        &app,
        PolicyChange {
            requests_per_address_per_minute: Some(per_minute),
            ..Default::default()
        },
    );
    server.clock.align(60, 1);
    enrol(&server, &app, "u").await;
    (server, app)
}

fn refused_client_requests(server: &TestServer, result: &str) -> f64 {
    common::metric_sum(
        &common::metrics_text(server),
        "ghostkey_refused_client_requests_total",
        &format!("result=\"{result}\""),
    )
}

// Attack traffic from many addresses, each sending as fast as it is answered, used to be
// served alongside everyone else's: under attack, legitimate recoveries were 4.4 times
// slower at p99 (docs/BENCHMARKS.md). Until its Retry-After, a client answered 429 now
// waits in one line per node that serves such clients one request at a time, and still
// gets the store's answer; nobody else waits.
#[tokio::test]
async fn a_client_refused_for_a_limit_waits_its_turn_and_still_gets_the_stores_answer() {
    let (server, app) = behind_a_proxy(ghostkey::http::refused_clients::MAX_WAITING, 3).await;
    let attacker = "198.51.100.1";
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(list_methods_from(&server, &app, attacker).await);
    }
    assert_eq!(answers[3], (429, "address_rate_limited".to_owned()));
    assert_eq!(refused_client_requests(&server, "waited"), 0.0);
    // Refused: its next requests wait their turn, and the store still answers them.
    for _ in 0..2 {
        assert_eq!(
            list_methods_from(&server, &app, attacker).await,
            (429, "address_rate_limited".to_owned())
        );
    }
    assert_eq!(refused_client_requests(&server, "waited"), 2.0);
    // Another client, and the same client in the next minute, are served as usual.
    assert_eq!(
        list_methods_from(&server, &app, "198.51.100.2").await.0,
        200
    );
    assert_eq!(refused_client_requests(&server, "waited"), 2.0);
    server.clock.advance(60);
    assert_eq!(list_methods_from(&server, &app, attacker).await.0, 200);
    assert_eq!(refused_client_requests(&server, "waited"), 2.0);
    assert_eq!(refused_client_requests(&server, "shed"), 0.0);
}

// With no room in the line (`server.refused_clients_waiting = 0`), a refused client's
// request is answered 503 `unavailable` at once, and nothing is counted for it.
#[tokio::test]
async fn a_refused_client_past_the_line_is_shed_and_nothing_is_counted() {
    let (server, app) = behind_a_proxy(0, 1).await;
    let attacker = "203.0.113.7";
    assert_eq!(list_methods_from(&server, &app, attacker).await.0, 200);
    assert_eq!(
        list_methods_from(&server, &app, attacker).await,
        (429, "address_rate_limited".to_owned())
    );
    let units = addr_units(&server);
    for _ in 0..3 {
        assert_eq!(
            list_methods_from(&server, &app, attacker).await,
            (503, "unavailable".to_owned())
        );
    }
    assert_eq!(addr_units(&server), units, "a shed request spends nothing");
    assert_eq!(refused_client_requests(&server, "shed"), 3.0);
    assert_eq!(list_methods_from(&server, &app, "203.0.113.8").await.0, 200);
}

// A client refused by another limit than its address's (here a user's back-off) may be a
// legitimate user refused because of what someone else did: the line never turns it away.
// With no room in the line, its requests go ahead unslowed.
#[tokio::test]
async fn a_client_refused_by_another_limit_is_never_shed_and_goes_ahead_when_the_line_is_full() {
    let server = TestServer::start_with(|c| {
        c.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        c.server.refused_clients_waiting = 0;
        c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    });
    let app = server.register_app("Health");
    let (method, authenticator) = enrol_with_totp(&server, &app, "u").await;
    let recovery = server
        .client()
        .start_recovery(&app.assertion("u", Purpose::Recover), &method)
        .await
        .unwrap();
    // A code no step near now accepts.
    let now = server.now() as u64;
    let near: Vec<String> = [now - 30, now, now + 30]
        .iter()
        .map(|t| authenticator.generate(*t).to_string())
        .collect();
    let wrong = (0..)
        .map(|i| format!("{i:06}"))
        .find(|c| !near.contains(c))
        .unwrap();
    let user = "198.51.100.7";
    let verify = || async {
        let res = reqwest::Client::new()
            .post(format!(
                "{}/v1/recoveries/{}/verify",
                server.base_url, recovery.id
            ))
            .header("x-forwarded-for", user)
            .json(&serde_json::json!({ "code": wrong }))
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let body: serde_json::Value = res.json().await.unwrap();
        (status, body["code"].as_str().unwrap().to_owned())
    };
    assert_eq!(verify().await, (403, "invalid_code".to_owned()));
    assert_eq!(verify().await, (429, "user_backoff".to_owned()));
    // Marked, with no room in the line: served anyway.
    assert_eq!(list_methods_from(&server, &app, user).await.0, 200);
    assert_eq!(refused_client_requests(&server, "went_ahead"), 1.0);
    assert_eq!(refused_client_requests(&server, "shed"), 0.0);
}
