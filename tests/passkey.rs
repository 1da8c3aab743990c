//! Passkey methods over HTTP (docs/PROTOCOL.md §5.7), driven by webauthn-rs's software
//! authenticators against a real server, hostile cases first: responses from another
//! origin, for another RP id, for another challenge (another user's, another purpose's),
//! replayed, without user verification, from another user's credential or from a cloned
//! authenticator are refused with a stable code, counted like wrong codes and change
//! nothing else; then register, recover and prove.

mod common;

use common::{enrol, enrol_with_sms, sms_gateway, TestApp, TestServer};
use ghostkey::domain::policy::PolicyChange;
use ghostkey_client::proto::api::{
    ChallengePurpose, ChallengeView, EnrollmentState, MethodKind, MethodState, Proof, RecoveryState,
};
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::proto::ErrorCode;
use ghostkey_client::ClientError;
use serde_json::{json, Value};
use webauthn_authenticator_rs::prelude::{RequestChallengeResponse, Url};
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_authenticator_rs::softtoken::SoftToken;
use webauthn_authenticator_rs::{AuthenticatorBackend, WebauthnAuthenticator};

/// The page the user is on: an allowed origin of the app, under its RP id.
const ORIGIN: &str = "http://localhost:8443";

/// An app that allows passkeys, with its RP id and the page's origin.
fn passkey_app(server: &TestServer) -> TestApp {
    let app = server.register_app("Health");
    server.set_policy(
        &app,
        PolicyChange {
            allowed_methods: Some(vec![MethodKind::Totp, MethodKind::Passkey]),
            passkey_rp_id: Some(Some("localhost".into())),
            ..PolicyChange::default()
        },
    );
    ghostkey::admin::add_origin(&*server.store(), &app.id, ORIGIN, server.now()).unwrap();
    app
}

fn code_of(result: Result<impl std::fmt::Debug, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Api {
            code: Some(code), ..
        }) => code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn url(origin: &str) -> Url {
    Url::parse(origin).unwrap()
}

/// The authenticator's registration for a confirm challenge's creation options.
fn registration(auth: &mut impl WebauthnAuthenticator, challenge: &ChallengeView) -> Value {
    let options = challenge.webauthn.clone().expect("creation options");
    let reg = auth
        .do_registration(url(ORIGIN), serde_json::from_value(options).unwrap())
        .unwrap();
    serde_json::to_value(&reg).unwrap()
}

/// The authenticator's assertion for a challenge's request options, from `origin`.
fn assertion_from(
    auth: &mut impl WebauthnAuthenticator,
    challenge: &ChallengeView,
    origin: &str,
) -> Value {
    let options = challenge.webauthn.clone().expect("request options");
    let cred = auth
        .do_authentication(url(origin), serde_json::from_value(options).unwrap())
        .unwrap();
    serde_json::to_value(&cred).unwrap()
}

/// The authenticator's assertion for a challenge's request options as `change` altered
/// them on the way (as a hostile page or network would).
fn assertion_for_altered(
    auth: &mut impl AuthenticatorBackend,
    challenge: &ChallengeView,
    change: impl FnOnce(&mut Value),
) -> Value {
    let mut options = challenge.webauthn.clone().expect("request options");
    change(&mut options);
    let rcr: RequestChallengeResponse = serde_json::from_value(options).unwrap();
    let cred = auth
        .perform_auth(url(ORIGIN), rcr.public_key, 60_000)
        .unwrap();
    serde_json::to_value(&cred).unwrap()
}

fn assertion(auth: &mut impl WebauthnAuthenticator, challenge: &ChallengeView) -> Value {
    assertion_from(auth, challenge, ORIGIN)
}

/// Enrols `user` with a confirmed passkey made by `auth`; returns the method id.
async fn enrol_with_passkey(
    server: &TestServer,
    app: &TestApp,
    user: &str,
    auth: &mut impl WebauthnAuthenticator,
) -> String {
    enrol(server, app, user).await;
    let client = server.client();
    let added = client
        .add_passkey(&app.assertion(user, Purpose::Enroll), Some("Laptop"), None)
        .await
        .unwrap();
    assert_eq!(added.method.kind, MethodKind::Passkey);
    assert_eq!(added.challenge.purpose, ChallengePurpose::Confirm);
    let options = added.challenge.webauthn.as_ref().unwrap();
    assert_eq!(
        options["publicKey"]["authenticatorSelection"]["userVerification"],
        "required"
    );
    assert_eq!(options["publicKey"]["rp"]["id"], "localhost");
    let confirmed = client
        .answer_webauthn(&added.challenge.id, registration(auth, &added.challenge))
        .await
        .unwrap();
    assert_eq!(confirmed.method.state, MethodState::Confirmed);
    assert_eq!(confirmed.enrollment_state, EnrollmentState::Active);
    assert_eq!(
        confirmed.method.masked.as_deref(),
        Some("passkey \u{201c}Laptop\u{201d}")
    );
    added.method.id
}

/// How many failures the user has on record, and the method's last accepted counter.
fn failures(server: &TestServer, app: &TestApp, user: &str) -> i64 {
    server.query_i64(&format!(
        "SELECT count(*) FROM user_failures WHERE app_id = '{}' AND user_id = '{user}'",
        app.id
    ))
}

fn counter(server: &TestServer, method_id: &str) -> i64 {
    server.query_i64(&format!(
        "SELECT coalesce(totp_last_step, -1) FROM methods WHERE id = '{method_id}'"
    ))
}

fn recovery_state(server: &TestServer, recovery_id: &str) -> i64 {
    server.query_i64(&format!(
        "SELECT count(*) FROM recoveries WHERE challenge_id = '{recovery_id}' AND state = 'started'"
    ))
}

/// Sends `response` to the recovery and checks the refusal: its code, one more failure,
/// the recovery still started, the method's counter unchanged.
async fn refused(
    server: &TestServer,
    app: &TestApp,
    user: &str,
    method_id: &str,
    recovery: &ChallengeView,
    response: Value,
    expected: ErrorCode,
) {
    let before = (failures(server, app, user), counter(server, method_id));
    let got = server
        .client()
        .verify_recovery_webauthn(&recovery.id, response)
        .await;
    assert_eq!(code_of(got), expected);
    assert_eq!(
        (failures(server, app, user), counter(server, method_id)),
        (before.0 + 1, before.1),
        "one failure counted, the counter unchanged"
    );
    assert_eq!(recovery_state(server, &recovery.id), 1, "still started");
}

async fn start_recovery(
    server: &TestServer,
    app: &TestApp,
    user: &str,
    method_id: &str,
) -> ChallengeView {
    server
        .client()
        .start_recovery(&app.assertion(user, Purpose::Recover), method_id)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_from_elsewhere_or_for_something_else_are_refused_counted_and_change_nothing() {
    let server = TestServer::start_with(|c| c.server.argon2_concurrency = 2);
    let app = passkey_app(&server);
    server.set_policy(
        &app,
        PolicyChange {
            user_backoff_base_secs: Some(0),
            max_attempts_per_challenge: Some(10),
            user_lock_threshold: Some(50),
            user_failures_per_day: Some(20),
            ..PolicyChange::default()
        },
    );
    let mut auth = SoftPasskey::new(true);
    let method = enrol_with_passkey(&server, &app, "u1", &mut auth).await;
    let mut other_auth = SoftPasskey::new(true);
    let other_method = enrol_with_passkey(&server, &app, "u2", &mut other_auth).await;
    let recovery = start_recovery(&server, &app, "u1", &method).await;
    let options = recovery.webauthn.clone().unwrap();
    assert_eq!(options["publicKey"]["userVerification"], "required");
    assert_eq!(options["publicKey"]["rpId"], "localhost");
    assert_eq!(
        options["publicKey"]["allowCredentials"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The same authenticator, answering for a page on an origin the app does not allow.
    let from_elsewhere = assertion_from(&mut auth, &recovery, "http://localhost:9999");
    refused(
        &server,
        &app,
        "u1",
        &method,
        &recovery,
        from_elsewhere,
        ErrorCode::PasskeyRejected,
    )
    .await;

    // Signed for another RP id (the options' rpId changed on the way).
    let other_rp = assertion_for_altered(&mut auth, &recovery, |o| {
        o["publicKey"]["rpId"] = "login.localhost".into()
    });
    refused(
        &server,
        &app,
        "u1",
        &method,
        &recovery,
        other_rp,
        ErrorCode::PasskeyRejected,
    )
    .await;

    // Made for another challenge of the same user and method: a proof's.
    let proof = server
        .client()
        .start_challenge(
            &app.assertion("u1", Purpose::Manage),
            &method,
            ChallengePurpose::Proof,
        )
        .await
        .unwrap();
    let for_the_proof = assertion(&mut auth, &proof);
    refused(
        &server,
        &app,
        "u1",
        &method,
        &recovery,
        for_the_proof,
        ErrorCode::PasskeyRejected,
    )
    .await;

    // Made for another user's recovery, by that user's own passkey.
    let other_recovery = start_recovery(&server, &app, "u2", &other_method).await;
    let theirs = assertion(&mut other_auth, &other_recovery);
    refused(
        &server,
        &app,
        "u1",
        &method,
        &recovery,
        theirs.clone(),
        ErrorCode::PasskeyRejected,
    )
    .await;

    // Another user's credential answering this user's challenge: the other authenticator
    // signs this challenge with its own credential (u2's, registered with Ghostkey too).
    let theirs_allowed =
        other_recovery.webauthn.as_ref().unwrap()["publicKey"]["allowCredentials"].clone();
    let wrong_credential = assertion_for_altered(&mut other_auth, &recovery, |o| {
        o["publicKey"]["allowCredentials"] = theirs_allowed
    });
    refused(
        &server,
        &app,
        "u1",
        &method,
        &recovery,
        wrong_credential,
        ErrorCode::PasskeyRejected,
    )
    .await;

    // User verification missing: the options were changed on the way to not ask for it,
    // and the authenticator signed with the user-present flag alone.
    let without_uv = assertion_for_altered(&mut auth, &recovery, |o| {
        o["publicKey"]["userVerification"] = "discouraged".into()
    });
    let flags = ghostkey_client::proto::b64::decode(
        without_uv["response"]["authenticatorData"]
            .as_str()
            .unwrap(),
    )
    .unwrap()[32];
    assert_eq!(flags & 0x04, 0, "the UV flag is not set");
    refused(
        &server,
        &app,
        "u1",
        &method,
        &recovery,
        without_uv,
        ErrorCode::PasskeyRejected,
    )
    .await;

    // Junk and answers of the wrong shape: refused before anything counts.
    let before = failures(&server, &app, "u1");
    for body in [
        json!({}),
        json!({"code": "12345678", "webauthn": {}}),
        json!({"webauthn": "x"}),
        json!({"code": "12345678"}),
    ] {
        let res = reqwest::Client::new()
            .post(format!(
                "{}/v1/recoveries/{}/verify",
                server.base_url, recovery.id
            ))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 422, "{body}");
        let problem: Value = res.json().await.unwrap();
        assert_eq!(problem["code"], "invalid_field", "{body}");
    }
    assert_eq!(failures(&server, &app, "u1"), before, "nothing counted");

    // The right answer still works on the same recovery, once.
    let right = assertion(&mut auth, &recovery);
    let released = server
        .client()
        .verify_recovery_webauthn(&recovery.id, right.clone())
        .await
        .unwrap();
    assert_eq!(released.state, RecoveryState::Released);
    assert!(released.sealed_virtual_device.is_some());
    // Replayed: to the same recovery it is used; to a new one it answers another challenge.
    let again = server
        .client()
        .verify_recovery_webauthn(&recovery.id, right.clone())
        .await;
    assert_eq!(code_of(again), ErrorCode::CodeAlreadyUsed);
    let next = start_recovery(&server, &app, "u1", &method).await;
    refused(
        &server,
        &app,
        "u1",
        &method,
        &next,
        right,
        ErrorCode::PasskeyRejected,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloned_authenticator_is_refused_audited_counted_and_the_user_told() {
    let gateway = sms_gateway::accepting().await;
    let server = TestServer::start_with(|c| sms_gateway::configure(c, &gateway));
    let app = passkey_app(&server);
    server.set_policy(
        &app,
        PolicyChange {
            allowed_methods: Some(vec![MethodKind::Sms, MethodKind::Passkey]),
            ..PolicyChange::default()
        },
    );
    let client = server.client();
    // The user has a phone, then adds a passkey with a proof through it.
    let (_, _, phone) = enrol_with_sms(&server, &app, &gateway, "u1").await;
    let before = sms_gateway::received(&gateway).await.len();
    let proof = client
        .start_challenge(
            &app.assertion("u1", Purpose::Manage),
            &phone,
            ChallengePurpose::Proof,
        )
        .await
        .unwrap();
    let code = sms_gateway::next_code(&gateway, before).await;
    // A SoftToken keeps a signature counter; a copy of it taken now starts from the same.
    let (mut token, _) = SoftToken::new(true).unwrap();
    let added = client
        .add_passkey(
            &app.assertion("u1", Purpose::Manage),
            Some("Key"),
            Some(Proof::with_code(&proof.id, code)),
        )
        .await
        .unwrap();
    client
        .answer_webauthn(
            &added.challenge.id,
            registration(&mut token, &added.challenge),
        )
        .await
        .unwrap();
    let method = added.method.id;
    let mut clone = SoftToken::from_cbor(&token.to_cbor().unwrap()).unwrap();
    let first = start_recovery(&server, &app, "u1", &method).await;
    let released = client
        .verify_recovery_webauthn(&first.id, assertion(&mut token, &first))
        .await
        .unwrap();
    assert_eq!(released.state, RecoveryState::Released);
    let accepted = counter(&server, &method);
    assert!(accepted > 0, "the token's counter was kept");
    // The copy signs the next challenge with a counter the original already used.
    let second = start_recovery(&server, &app, "u1", &method).await;
    let from_clone = assertion(&mut clone, &second);
    refused(
        &server,
        &app,
        "u1",
        &method,
        &second,
        from_clone,
        ErrorCode::AuthenticatorCloned,
    )
    .await;
    assert_eq!(
        server.query_i64("SELECT count(*) FROM audit_events WHERE kind = 'passkey_cloned'"),
        1
    );
    // The phone is told.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !sms_gateway::received(&gateway).await.iter().any(|m| {
        m["body"]
            .as_str()
            .unwrap_or_default()
            .contains("signature count")
    }) {
        assert!(std::time::Instant::now() < deadline, "no clone notice sent");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The original, moving forward, still answers.
    server.clock.advance(2); // the back-off after one failure
    let third = start_recovery(&server, &app, "u1", &method).await;
    let released = client
        .verify_recovery_webauthn(&third.id, assertion(&mut token, &third))
        .await
        .unwrap();
    assert_eq!(released.state, RecoveryState::Released);
    assert!(counter(&server, &method) > accepted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_responses_spend_the_challenge_attempts_like_wrong_codes() {
    let server = TestServer::start();
    let app = passkey_app(&server);
    let mut auth = SoftPasskey::new(true);
    let method = enrol_with_passkey(&server, &app, "u1", &mut auth).await;
    let recovery = start_recovery(&server, &app, "u1", &method).await;
    // Three refused responses (the default cap), waiting out each back-off.
    for wait in [2, 4, 8] {
        let bad = assertion_from(&mut auth, &recovery, "http://localhost:9999");
        refused(
            &server,
            &app,
            "u1",
            &method,
            &recovery,
            bad,
            ErrorCode::PasskeyRejected,
        )
        .await;
        server.clock.advance(wait);
    }
    // The challenge is dead, even for the right response.
    let right = assertion(&mut auth, &recovery);
    let dead = server
        .client()
        .verify_recovery_webauthn(&recovery.id, right)
        .await;
    assert_eq!(code_of(dead), ErrorCode::TooManyAttempts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passkey_registers_recovers_proves_and_stays_encrypted_at_rest() {
    let server = TestServer::start();
    let app = passkey_app(&server);
    let client = server.client();

    // Without the operator's RP id, no passkey method can be added.
    let bare = server.register_app("Bare");
    server.set_policy(
        &bare,
        PolicyChange {
            allowed_methods: Some(vec![MethodKind::Totp, MethodKind::Passkey]),
            ..PolicyChange::default()
        },
    );
    enrol(&server, &bare, "u1").await;
    let refused = client
        .add_passkey(&bare.assertion("u1", Purpose::Enroll), None, None)
        .await;
    assert_eq!(code_of(refused), ErrorCode::MethodKindNotAllowed);
    assert_eq!(
        server.query_i64(&format!(
            "SELECT count(*) FROM methods WHERE app_id = '{}'",
            bare.id
        )),
        0
    );

    let mut auth = SoftPasskey::new(true);
    let secret = enrol(&server, &app, "u1").await;
    let added = client
        .add_passkey(&app.assertion("u1", Purpose::Enroll), None, None)
        .await
        .unwrap();
    assert_eq!(added.method.masked.as_deref(), Some("passkey"));
    // A code where the authenticator's response goes is refused, uncounted.
    assert_eq!(
        code_of(client.answer(&added.challenge.id, "12345678").await),
        ErrorCode::InvalidField
    );
    // A registration made for another page's origin is refused and counted.
    let options = added.challenge.webauthn.clone().unwrap();
    let elsewhere = auth
        .do_registration(
            url("http://localhost:9999"),
            serde_json::from_value(options).unwrap(),
        )
        .unwrap();
    assert_eq!(
        code_of(
            client
                .answer_webauthn(
                    &added.challenge.id,
                    serde_json::to_value(&elsewhere).unwrap()
                )
                .await
        ),
        ErrorCode::PasskeyRejected
    );
    assert_eq!(failures(&server, &app, "u1"), 1);
    server.clock.advance(2); // the back-off after one failure
    let reg = registration(&mut auth, &added.challenge);
    let raw_id = ghostkey_client::proto::b64::decode(reg["rawId"].as_str().unwrap()).unwrap();
    let confirmed = client
        .answer_webauthn(&added.challenge.id, reg.clone())
        .await
        .unwrap();
    assert_eq!(confirmed.enrollment_state, EnrollmentState::Active);
    let shown = confirmed.method.masked.clone().unwrap();
    assert!(shown.starts_with("passkey (AAGUID "), "{shown}");
    // The same registration again: the challenge is used.
    assert_eq!(
        code_of(client.answer_webauthn(&added.challenge.id, reg).await),
        ErrorCode::CodeAlreadyUsed
    );
    let method = added.method.id;

    // Recovery: the request options name the one credential; the assertion releases.
    let recovery = start_recovery(&server, &app, "u1", &method).await;
    assert_eq!(recovery.kind, MethodKind::Passkey);
    assert_eq!(recovery.masked.as_deref(), Some(shown.as_str()));
    // Through the Rust client's recovery driver: released, opened with the user secret.
    let driver = ghostkey_client::recovery::RecoveryDriver::new(&client, &secret, &app.id, "u1");
    match driver
        .submit_webauthn(&recovery.id, assertion(&mut auth, &recovery))
        .await
        .unwrap()
    {
        ghostkey_client::recovery::Recovered::Released(device) => {
            assert_eq!(device.app_id(), app.id);
        }
        other => panic!("expected a release, got {other:?}"),
    }

    // A proof through the passkey authorises a change (adding a TOTP method), once.
    let proof = client
        .start_challenge(
            &app.assertion("u1", Purpose::Manage),
            &method,
            ChallengePurpose::Proof,
        )
        .await
        .unwrap();
    let signed = assertion(&mut auth, &proof);
    let totp = client
        .add_method(
            &app.assertion("u1", Purpose::Manage),
            MethodKind::Totp,
            None,
            Some(Proof::with_webauthn(&proof.id, signed.clone())),
        )
        .await
        .unwrap();
    assert_eq!(totp.method.kind, MethodKind::Totp);
    let again = client
        .add_method(
            &app.assertion("u1", Purpose::Manage),
            MethodKind::Totp,
            None,
            Some(Proof::with_webauthn(&proof.id, signed)),
        )
        .await;
    assert_eq!(code_of(again), ErrorCode::CodeAlreadyUsed);
    // A second passkey (with a proof through the first) excludes the first credential, and
    // a registration without user verification is refused and counted.
    let proof = client
        .start_challenge(
            &app.assertion("u1", Purpose::Manage),
            &method,
            ChallengePurpose::Proof,
        )
        .await
        .unwrap();
    let second = client
        .add_passkey(
            &app.assertion("u1", Purpose::Manage),
            Some("Phone"),
            Some(Proof::with_webauthn(
                &proof.id,
                assertion(&mut auth, &proof),
            )),
        )
        .await
        .unwrap();
    let mut options = second.challenge.webauthn.clone().unwrap();
    let excluded = options["publicKey"]["excludeCredentials"]
        .as_array()
        .unwrap();
    assert_eq!(excluded.len(), 1);
    assert_eq!(
        excluded[0]["id"].as_str().unwrap(),
        ghostkey_client::proto::b64::encode(&raw_id)
    );
    options["publicKey"]["authenticatorSelection"]["userVerification"] = "discouraged".into();
    options["publicKey"]["excludeCredentials"] = json!([]);
    let (mut token, _) = SoftToken::new(true).unwrap();
    let without_uv = token
        .do_registration(url(ORIGIN), serde_json::from_value(options).unwrap())
        .unwrap();
    let before = failures(&server, &app, "u1");
    assert_eq!(
        code_of(
            client
                .answer_webauthn(
                    &second.challenge.id,
                    serde_json::to_value(&without_uv).unwrap()
                )
                .await
        ),
        ErrorCode::PasskeyRejected
    );
    assert_eq!(failures(&server, &app, "u1"), before + 1);
    assert_eq!(
        server.query_i64(&format!(
            "SELECT count(*) FROM methods WHERE id = '{}' AND state = 'pending' AND credential_hash IS NULL",
            second.method.id
        )),
        1,
        "nothing registered"
    );

    // A passkey needs a proof too: the app provider alone cannot add one.
    let no_proof = client
        .add_passkey(&app.assertion("u1", Purpose::Manage), Some("Phone"), None)
        .await;
    assert_eq!(code_of(no_proof), ErrorCode::ProofRequired);

    // Neither the credential id nor the name is readable in the database or its WAL.
    let raw = server.raw_database();
    assert!(
        !raw.windows(raw_id.len()).any(|w| w == raw_id.as_slice()),
        "the credential id is stored encrypted"
    );
    assert!(!raw.windows(7).any(|w| w == b"\"cred\":"));
}
