//! Every forged or misused assertion is refused with its own code and stores nothing.

mod common;

use common::{TestApp, TestServer, SERVICE_ID};
use ghostkey_client::kit::AssertionRequest;
use ghostkey_client::proto::assertion::{AssertionClaims, Purpose};
use ghostkey_client::proto::{b64, ErrorCode};
use ghostkey_client::{AppSigningKey, UserSecret};
use hmac::{Hmac, Mac};
use serde_json::json;

fn claims(app: &TestApp, user: &str) -> AssertionClaims {
    AssertionClaims {
        iss: app.id.clone(),
        sub: user.into(),
        aud: SERVICE_ID.into(),
        iat: app.now(),
        exp: app.now() + 60,
        jti: b64::encode(rand_bytes()),
        purpose: Purpose::Enroll,
    }
}

fn rand_bytes() -> [u8; 16] {
    let s = UserSecret::generate();
    s.expose()[..16].try_into().unwrap()
}

/// Builds a token by hand from a header, claims and signature function (for forgeries
/// the kit would never make).
fn hand_made(
    header: serde_json::Value,
    claims: &serde_json::Value,
    sign: impl Fn(&[u8]) -> Vec<u8>,
) -> String {
    let signing_input = format!(
        "{}.{}",
        b64::encode(serde_json::to_vec(&header).unwrap()),
        b64::encode(serde_json::to_vec(claims).unwrap())
    );
    let signature = sign(signing_input.as_bytes());
    format!("{signing_input}.{}", b64::encode(signature))
}

/// Tries to enrol `user` with `token`; returns the error code.
async fn refused(server: &TestServer, app: &TestApp, user: &str, token: &str) -> ErrorCode {
    let before_jtis = server.count("assertion_jtis");
    let before_users = server.count("users");
    let err = ghostkey_client::enroll(
        &server.client(),
        token,
        &UserSecret::generate(),
        &app.id,
        user,
        &app.key,
    )
    .await
    .expect_err("the assertion must be refused");
    assert_eq!(
        server.count("users"),
        before_users,
        "a refused assertion stored a user"
    );
    assert_eq!(
        server.count("assertion_jtis"),
        before_jtis,
        "a refused assertion consumed a jti"
    );
    err.code().unwrap_or_else(|| panic!("no error code: {err}"))
}

#[tokio::test]
async fn forged_and_misused_assertions_are_each_refused_with_their_own_code() {
    let server = TestServer::start();
    let app = server.register_app("App");
    let other_app = server.register_app("Other");
    let pk = b64::decode(&app.key.public_key_b64()).unwrap();

    // alg: none, no signature.
    let c = serde_json::to_value(claims(&app, "u")).unwrap();
    let token = hand_made(
        json!({"alg": "none", "typ": "JWT", "kid": "k1"}),
        &c,
        |_| vec![],
    );
    assert_eq!(
        refused(&server, &app, "u", &token).await,
        ErrorCode::AssertionAlgorithmRefused
    );

    // HS256 keyed with the app's public key (the classic algorithm-confusion forgery),
    // with the raw key and with its base64url text.
    for secret in [pk.clone(), app.key.public_key_b64().into_bytes()] {
        let token = hand_made(
            json!({"alg": "HS256", "typ": "JWT", "kid": "k1"}),
            &c,
            |input| {
                let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&secret).unwrap();
                mac.update(input);
                mac.finalize().into_bytes().to_vec()
            },
        );
        assert_eq!(
            refused(&server, &app, "u", &token).await,
            ErrorCode::AssertionAlgorithmRefused
        );
    }
    // RS256 and ES256 headers are refused before any key is looked at.
    for alg in ["RS256", "ES256", "PS256"] {
        let token = hand_made(json!({"alg": alg, "kid": "k1"}), &c, |_| vec![0; 64]);
        assert_eq!(
            refused(&server, &app, "u", &token).await,
            ErrorCode::AssertionAlgorithmRefused
        );
    }

    // Unknown kid.
    let stranger = AppSigningKey::generate("nope");
    let token = stranger.mint_claims(&claims(&app, "u")).unwrap();
    assert_eq!(
        refused(&server, &app, "u", &token).await,
        ErrorCode::AssertionUnknownKey
    );

    // Another app's key, under its own kid, claiming to be this app.
    let token = other_app.key.mint_claims(&claims(&app, "u")).unwrap();
    let kid_of_other = AppSigningKey::generate("kother");
    ghostkey::admin::add_key(
        &*server.store(),
        &other_app.id,
        "kother",
        &kid_of_other.public_key_b64(),
        server.now(),
    )
    .unwrap();
    let token2 = kid_of_other.mint_claims(&claims(&app, "u")).unwrap();
    assert_eq!(
        refused(&server, &app, "u", &token2).await,
        ErrorCode::AssertionUnknownKey
    );
    // Another app's key under this app's kid: the signature does not verify.
    assert_eq!(
        refused(&server, &app, "u", &token).await,
        ErrorCode::AssertionBadSignature
    );

    // Unknown issuer.
    let mut c2 = claims(&app, "u");
    c2.iss = "app_000000000000000000000000".into();
    assert_eq!(
        refused(&server, &app, "u", &app.key.mint_claims(&c2).unwrap()).await,
        ErrorCode::AssertionUnknownIssuer
    );

    // Revoked key.
    let second = AppSigningKey::generate("k2");
    ghostkey::admin::add_key(
        &*server.store(),
        &app.id,
        "k2",
        &second.public_key_b64(),
        server.now(),
    )
    .unwrap();
    ghostkey::admin::revoke_key(&*server.store(), &app.id, "k2", server.now()).unwrap();
    let token = second.mint_claims(&claims(&app, "u")).unwrap();
    assert_eq!(
        refused(&server, &app, "u", &token).await,
        ErrorCode::AssertionKeyRevoked
    );

    // A changed byte in the signed payload.
    let good = app.key.mint_claims(&claims(&app, "u")).unwrap();
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let mut payload: serde_json::Value =
        serde_json::from_slice(&b64::decode(&parts[1]).unwrap()).unwrap();
    payload["sub"] = json!("v");
    parts[1] = b64::encode(serde_json::to_vec(&payload).unwrap());
    assert_eq!(
        refused(&server, &app, "v", &parts.join(".")).await,
        ErrorCode::AssertionBadSignature
    );

    // Wrong audience.
    let mut c2 = claims(&app, "u");
    c2.aud = "another-ghostkey".into();
    assert_eq!(
        refused(&server, &app, "u", &app.key.mint_claims(&c2).unwrap()).await,
        ErrorCode::AssertionWrongAudience
    );

    // Expired.
    let mut c2 = claims(&app, "u");
    c2.iat = server.now() - 200;
    c2.exp = server.now() - 100;
    assert_eq!(
        refused(&server, &app, "u", &app.key.mint_claims(&c2).unwrap()).await,
        ErrorCode::AssertionExpired
    );

    // Lifetime over the maximum (300 s), and negative.
    let mut c2 = claims(&app, "u");
    c2.exp = c2.iat + 301;
    assert_eq!(
        refused(&server, &app, "u", &app.key.mint_claims(&c2).unwrap()).await,
        ErrorCode::AssertionLifetimeTooLong
    );
    let mut c2 = claims(&app, "u");
    c2.iat = c2.exp + 1;
    assert_eq!(
        refused(&server, &app, "u", &app.key.mint_claims(&c2).unwrap()).await,
        ErrorCode::AssertionLifetimeTooLong
    );

    // Issued in the future beyond the skew (30 s).
    let mut c2 = claims(&app, "u");
    c2.iat = server.now() + 120;
    c2.exp = server.now() + 180;
    assert_eq!(
        refused(&server, &app, "u", &app.key.mint_claims(&c2).unwrap()).await,
        ErrorCode::AssertionIssuedInFuture
    );

    // Wrong purpose.
    for purpose in [Purpose::Recover, Purpose::Manage] {
        let mut c2 = claims(&app, "u");
        c2.purpose = purpose;
        assert_eq!(
            refused(&server, &app, "u", &app.key.mint_claims(&c2).unwrap()).await,
            ErrorCode::AssertionWrongPurpose
        );
    }

    // Missing claims, an unknown claim, an unknown purpose, a bad user id.
    let full = serde_json::to_value(claims(&app, "u")).unwrap();
    for missing in ["iss", "sub", "aud", "iat", "exp", "jti", "purpose"] {
        let mut c2 = full.clone();
        c2.as_object_mut().unwrap().remove(missing);
        let token = app.key.mint_claims(&c2).unwrap();
        let code = refused(&server, &app, "u", &token).await;
        assert_eq!(code, ErrorCode::InvalidAssertion, "missing {missing}");
    }
    let mut c2 = full.clone();
    c2["admin"] = json!(true);
    assert_eq!(
        refused(&server, &app, "u", &app.key.mint_claims(&c2).unwrap()).await,
        ErrorCode::InvalidAssertion
    );
    let mut c2 = full.clone();
    c2["purpose"] = json!("everything");
    assert_eq!(
        refused(&server, &app, "u", &app.key.mint_claims(&c2).unwrap()).await,
        ErrorCode::InvalidAssertion
    );
    let mut c2 = full.clone();
    c2["sub"] = json!("has space");
    assert_eq!(
        refused(
            &server,
            &app,
            "has space",
            &app.key.mint_claims(&c2).unwrap()
        )
        .await,
        ErrorCode::InvalidAssertion
    );
    let mut c2 = full.clone();
    c2["jti"] = json!("short");
    assert_eq!(
        refused(&server, &app, "u", &app.key.mint_claims(&c2).unwrap()).await,
        ErrorCode::InvalidAssertion
    );

    // Not a JWT at all, and a header without kid.
    for junk in ["hello", "a.b.c", "....", &"x".repeat(5000)] {
        assert_eq!(
            refused(&server, &app, "u", junk).await,
            ErrorCode::InvalidAssertion,
            "{junk:.20}"
        );
    }
    let token = hand_made(json!({"alg": "EdDSA"}), &full, |_| vec![0; 64]);
    assert_eq!(
        refused(&server, &app, "u", &token).await,
        ErrorCode::InvalidAssertion
    );

    assert_eq!(server.count("users"), 0);
    assert_eq!(server.count("assertion_jtis"), 0);
}

#[tokio::test]
async fn a_replayed_jti_is_refused_even_for_another_user() {
    let server = TestServer::start();
    let app = server.register_app("App");
    let client = server.client();
    let first = claims(&app, "u1");
    let token = app.key.mint_claims(&first).unwrap();
    ghostkey_client::enroll(
        &client,
        &token,
        &UserSecret::generate(),
        &app.id,
        "u1",
        &app.key,
    )
    .await
    .unwrap();

    // The very same token again.
    assert_eq!(
        refused(&server, &app, "u1", &token).await,
        ErrorCode::AssertionReplayed
    );
    // A different, validly signed token that reuses the jti for another user.
    let mut second = claims(&app, "u2");
    second.jti = first.jti.clone();
    let token = app.key.mint_claims(&second).unwrap();
    assert_eq!(
        refused(&server, &app, "u2", &token).await,
        ErrorCode::AssertionReplayed
    );
    assert_eq!(server.count("users"), 1);
}

#[tokio::test]
async fn a_missing_or_non_bearer_authorization_is_refused() {
    let server = TestServer::start();
    let app = server.register_app("App");
    let body = common::enrol_body(&app, "u");
    let http = reqwest::Client::new();
    let url = format!("{}/v1/enrollments", server.base_url);
    let res = http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let problem: ghostkey_client::proto::Problem = res.json().await.unwrap();
    assert_eq!(problem.code, "missing_assertion");
    let token = app
        .key
        .mint(
            &AssertionRequest {
                app_id: &app.id,
                user_id: "u",
                audience: SERVICE_ID,
                purpose: Purpose::Enroll,
            },
            server.now(),
            60,
        )
        .unwrap();
    let res = http
        .post(&url)
        .header("authorization", format!("Basic {token}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    assert_eq!(server.count("users"), 0);
}
