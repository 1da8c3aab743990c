//! Assertions, as the server judges any bearer token: parsing (`inspect`), then the key
//! lookup, the signature and every claim rule (`verify`).
//!
//! The first byte chooses how the rest is read:
//!
//! - `c`: one value per line: when to judge (`n` the fixed now; around the claims' own
//!   bounds: `i` `iat` less the allowed skew, `j` one second before that, `e` one second
//!   before `exp`, `x` at `exp`), `aud`, `iat` and `exp` (offsets in seconds from the fixed
//!   now; anything but an integer is sent as a JSON string), `purpose`, the purposes the
//!   endpoint accepts (letters `e`, `r`, `m`), `jti`, `sub`, the header's `kid`, the signer
//!   (`1`, `2` or `0`: the keys registered as `k1`, `k2` and the revoked `k0`), `iss` and
//!   the name of an extra claim. A missing line takes a valid default (so a cut input is
//!   still a valid assertion); a claim line of exactly `-` leaves the claim out. The harness signs the claims (a
//!   header like the app kit's, `{"typ":"JWT","alg":"EdDSA","kid":…}`), so the signature
//!   holds whenever the signer is the key `kid` names, and checks `verify`'s answer against a model of the rules: the
//!   token is accepted exactly when no rule is broken, and a refusal names a broken rule
//!   of the first stage that has one (parsing, then key and signature, then the claim
//!   set, then the claims' values).
//! - `j`: a JWS header (first line; empty for the default) and a payload (the rest),
//!   signed with `k1` as they are: whatever is accepted must be a claim set that obeys
//!   every rule, and an exact, valid claim set under the default header must be accepted.
//! - anything else: the whole input is the token (parsing and the refusals before the
//!   signature).
#![no_main]

use ed25519_dalek::{Signer, SigningKey};
use ghostkey::domain::app::KeyLookup;
use ghostkey::domain::assertion::{
    inspect, verify, AssertionRules, VerifiedAssertion, MAX_TOKEN_LEN,
};
use ghostkey_fuzz::{
    app_key_1, app_key_2, app_key_revoked, app_public, fields, tally, text, APP_ID, NOW,
};
use ghostkey_proto::assertion::{
    is_valid_identifier, AssertionClaims, Purpose, MAX_JTI_LEN, MAX_USER_ID_LEN, MIN_JTI_LEN,
};
use ghostkey_proto::{b64, ErrorCode};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

const SERVICE_ID: &str = "gk";
const MAX_LIFETIME: i64 = 300;
const SKEW: i64 = 30;
const ALL: [Purpose; 3] = [Purpose::Enroll, Purpose::Recover, Purpose::Manage];
const CLAIMS: [&str; 7] = ["iss", "sub", "aud", "iat", "exp", "jti", "purpose"];

fn rules() -> AssertionRules {
    AssertionRules {
        service_id: SERVICE_ID.into(),
        max_lifetime_secs: MAX_LIFETIME,
        max_clock_skew_secs: SKEW,
    }
}

/// The fake store: `APP_ID` with `k1` and `k2` active and `k0` revoked.
fn lookup(iss: &str, kid: &str) -> KeyLookup {
    if iss != APP_ID {
        return KeyLookup::UnknownApp;
    }
    match (kid, app_public(kid)) {
        ("k0", _) => KeyLookup::Revoked,
        (_, Some(key)) => KeyLookup::Active(key),
        (_, None) => KeyLookup::UnknownKey,
    }
}

/// The rules on the values of a complete claim set, as PROTOCOL.md states them.
fn broken_value_rules(c: &AssertionClaims, purposes: &[Purpose], now: i64) -> Vec<ErrorCode> {
    let mut broken = Vec::new();
    if c.aud != SERVICE_ID {
        broken.push(ErrorCode::AssertionWrongAudience);
    }
    if c.exp <= now {
        broken.push(ErrorCode::AssertionExpired);
    }
    let lifetime = i128::from(c.exp) - i128::from(c.iat);
    if !(0..=i128::from(MAX_LIFETIME)).contains(&lifetime) {
        broken.push(ErrorCode::AssertionLifetimeTooLong);
    }
    if i128::from(c.iat) > i128::from(now) + i128::from(SKEW) {
        broken.push(ErrorCode::AssertionIssuedInFuture);
    }
    if !purposes.contains(&c.purpose) {
        broken.push(ErrorCode::AssertionWrongPurpose);
    }
    if !is_valid_identifier(&c.sub, 1, MAX_USER_ID_LEN) {
        broken.push(ErrorCode::InvalidAssertion);
    }
    if !is_valid_identifier(&c.jti, MIN_JTI_LEN, MAX_JTI_LEN) {
        broken.push(ErrorCode::InvalidAssertion);
    }
    broken
}

/// An accepted assertion says exactly what its claims say.
fn check_accepted(v: &VerifiedAssertion, c: &AssertionClaims, now: i64) {
    assert_eq!(v.app_id, c.iss);
    assert_eq!(v.user_id, c.sub);
    assert_eq!(v.jti, c.jti);
    assert_eq!(v.purpose, c.purpose);
    assert_eq!(v.remember_jti_until, c.exp.saturating_add(SKEW));
    assert!(
        v.remember_jti_until > now,
        "a jti must be remembered past now"
    );
}

/// The outcome's name for the tally: the mode and `accepted` or the code.
fn outcome(mode: &str, actual: &Result<VerifiedAssertion, ErrorCode>) -> String {
    match actual {
        Ok(_) => format!("{mode}:accepted"),
        Err(code) => format!("{mode}:{}", code.as_str()),
    }
}

/// Runs the server's two steps on `token`.
fn judge(token: &str, purposes: &[Purpose], now: i64) -> Result<VerifiedAssertion, ErrorCode> {
    let unverified = inspect(token).map_err(|e| e.code)?;
    let key = lookup(&unverified.iss, &unverified.kid);
    verify(&unverified, &key, &rules(), purposes, now).map_err(|e| e.code)
}

/// `actual` against the model: accepted exactly when every stage is clean, and otherwise
/// refused with a code of the first stage that is not.
fn check_against_model(actual: &Result<VerifiedAssertion, ErrorCode>, stages: &[Vec<ErrorCode>]) {
    match (stages.iter().find(|s| !s.is_empty()), actual) {
        (None, Ok(_)) => {}
        (None, Err(code)) => panic!("refused with {code:?}, but no rule is broken"),
        (Some(broken), Ok(v)) => panic!("accepted {v:?}, but it breaks {broken:?}"),
        (Some(broken), Err(code)) => {
            assert!(
                broken.contains(code),
                "refused with {code:?}, expected one of {broken:?}"
            )
        }
    }
}

fn fuzz_claims(data: &[u8]) {
    let f = fields(data, 12);
    let field = |i: usize, default: &str| text(f[i]).unwrap_or_else(|| default.to_owned());
    // In the order of CLAIMS.
    let values = [
        field(10, APP_ID),
        field(7, "user-1"),
        field(1, SERVICE_ID),
        field(2, "0"),
        field(3, "120"),
        field(6, "0123456789abcdefghij"),
        field(4, "recover"),
    ];
    let kid = field(8, "k1");
    let purposes: Vec<Purpose> = field(5, "r")
        .chars()
        .filter_map(|c| match c {
            'e' => Some(Purpose::Enroll),
            'r' => Some(Purpose::Recover),
            'm' => Some(Purpose::Manage),
            _ => None,
        })
        .collect();
    let (signer, signer_kid) = match field(9, "1").as_str() {
        "2" => (app_key_2(), "k2"),
        "0" => (app_key_revoked(), "k0"),
        _ => (app_key_1(), "k1"),
    };
    let extra = field(11, "");

    let mut claims = Map::new();
    let mut set_complete = true;
    for (name, value) in CLAIMS.iter().zip(&values) {
        if value == "-" {
            set_complete = false;
            continue;
        }
        let json = match *name {
            "iat" | "exp" => match value.trim().parse::<i64>() {
                Ok(offset) => Value::from(NOW.saturating_add(offset)),
                Err(_) => {
                    set_complete = false;
                    Value::from(value.clone())
                }
            },
            _ => Value::from(value.clone()),
        };
        claims.insert((*name).to_owned(), json);
    }
    if Purpose::parse(&values[6]).is_none() {
        set_complete = false;
    }
    if !extra.is_empty() && !claims.contains_key(&extra) && !CLAIMS.contains(&extra.as_str()) {
        claims.insert(extra, Value::from("x"));
        set_complete = false;
    }
    // When to judge: the fixed now, or at a bound of the claims' own times.
    let time = |name: &str| claims.get(name).and_then(Value::as_i64);
    let now = match (field(0, "n").as_str(), time("iat"), time("exp")) {
        ("i", Some(iat), _) => iat.saturating_sub(SKEW),
        ("j", Some(iat), _) => iat.saturating_sub(SKEW).saturating_sub(1),
        ("e", _, Some(exp)) => exp.saturating_sub(1),
        ("x", _, Some(exp)) => exp,
        _ => NOW,
    };
    let header = serde_json::json!({"typ": "JWT", "alg": "EdDSA", "kid": kid});
    let token = sign_jws(
        signer,
        header.to_string().as_bytes(),
        Value::Object(claims.clone()).to_string().as_bytes(),
    );

    // Stage 1: parsing.
    let mut parsing = Vec::new();
    if token.len() > MAX_TOKEN_LEN || !claims.contains_key("iss") {
        parsing.push(ErrorCode::InvalidAssertion);
    }
    // Stage 2: the key and the signature.
    let iss = claims
        .get("iss")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let key = match lookup(iss, &kid) {
        KeyLookup::UnknownApp => vec![ErrorCode::AssertionUnknownIssuer],
        KeyLookup::UnknownKey => vec![ErrorCode::AssertionUnknownKey],
        KeyLookup::Revoked => vec![ErrorCode::AssertionKeyRevoked],
        KeyLookup::Active(_) if signer_kid != kid => vec![ErrorCode::AssertionBadSignature],
        KeyLookup::Active(_) => vec![],
    };
    // Stage 3: exactly the seven claims, of the right types.
    let complete = if set_complete {
        serde_json::from_value::<AssertionClaims>(Value::Object(claims.clone())).ok()
    } else {
        None
    };
    let shape = if complete.is_some() {
        vec![]
    } else {
        vec![ErrorCode::InvalidAssertion]
    };
    // Stage 4: the values.
    let values_broken = complete
        .as_ref()
        .map(|c| broken_value_rules(c, &purposes, now))
        .unwrap_or_default();

    if parsing.is_empty() {
        let unverified = inspect(&token).expect("the model says it parses");
        assert_eq!(
            (unverified.iss.as_str(), unverified.kid.as_str()),
            (iss, kid.as_str())
        );
    }
    let actual = judge(&token, &purposes, now);
    tally(&outcome("claims", &actual));
    check_against_model(&actual, &[parsing, key, shape, values_broken]);
    if let (Ok(v), Some(c)) = (&actual, &complete) {
        check_accepted(v, c, now);
    }
}

/// A compact JWS of `header` and `payload` as they are, signed with `key`.
fn sign_jws(key: &SigningKey, header: &[u8], payload: &[u8]) -> String {
    let input = format!("{}.{}", b64::encode(header), b64::encode(payload));
    let signature = key.sign(input.as_bytes());
    format!("{input}.{}", b64::encode(signature.to_bytes()))
}

const DEFAULT_HEADER: &str = r#"{"alg":"EdDSA","typ":"JWT","kid":"k1"}"#;

fn fuzz_signed_json(data: &[u8]) {
    let f = fields(data, 2);
    let header = match f[0] {
        Some(h) if !h.is_empty() => h,
        _ => DEFAULT_HEADER.as_bytes(),
    };
    let payload = f[1].unwrap_or_default();
    let token = sign_jws(app_key_1(), header, payload);
    let parsed = serde_json::from_slice::<AssertionClaims>(payload).ok();
    let actual = judge(&token, &ALL, NOW);
    tally(&outcome("json", &actual));
    if let Ok(v) = &actual {
        let c = parsed
            .as_ref()
            .expect("an accepted payload is exactly a claim set");
        assert!(
            broken_value_rules(c, &ALL, NOW).is_empty(),
            "accepted {c:?}, which breaks a rule"
        );
        check_accepted(v, c, NOW);
    }
    if let Some(c) = &parsed {
        let valid = header == DEFAULT_HEADER.as_bytes()
            && c.iss == APP_ID
            && token.len() <= MAX_TOKEN_LEN
            && broken_value_rules(c, &ALL, NOW).is_empty();
        if valid {
            assert!(
                actual.is_ok(),
                "a valid claim set under k1 was refused: {actual:?}"
            );
        }
    }
}

fn fuzz_raw(data: &[u8]) {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let unverified = match inspect(token) {
        Ok(unverified) => unverified,
        Err(e) => {
            return tally(if e.code == ErrorCode::InvalidAssertion {
                "raw:unparsed"
            } else {
                "raw:refused-alg"
            })
        }
    };
    tally("raw:parsed");
    let keys = ["k1", "k2"].map(|kid| KeyLookup::Active(app_public(kid).unwrap_or_default()));
    for key in [
        keys[0].clone(),
        keys[1].clone(),
        KeyLookup::Revoked,
        KeyLookup::UnknownKey,
        KeyLookup::UnknownApp,
    ] {
        let Ok(v) = verify(&unverified, &key, &rules(), &ALL, NOW) else {
            continue;
        };
        // Only a token signed by the key can pass: its payload is then a valid claim set.
        let payload = token.split('.').nth(1).and_then(|p| b64::decode(p).ok());
        let c: AssertionClaims = payload
            .and_then(|p| serde_json::from_slice(&p).ok())
            .expect("an accepted token carries a claim set");
        assert!(broken_value_rules(&c, &ALL, NOW).is_empty());
        check_accepted(&v, &c, NOW);
    }
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((b'c', rest)) => fuzz_claims(rest),
        Some((b'j', rest)) => fuzz_signed_json(rest),
        _ => fuzz_raw(data),
    }
});
