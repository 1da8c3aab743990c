//! `docs/PROTOCOL.md` against the server's code: every route registered in
//! `src/http/mod.rs` and every error code is documented (with its status), the webhook
//! signature vectors (§11.4) and the constants (§10) match the code, and the assertion
//! vector (§11.2) is accepted by the server's own verifier. The sealed, assertion and
//! chain vectors are recomputed in `crates/ghostkey-client/tests/protocol_vectors.rs`.

use std::collections::BTreeMap;

use ghostkey::config::Config;
use ghostkey::delivery::webhook::signature_header;
use ghostkey::domain::app::KeyLookup;
use ghostkey::domain::assertion::{inspect, verify, AssertionRules, MAX_TOKEN_LEN};
use ghostkey::domain::challenge::MAX_BACKOFF_SECS;
use ghostkey::domain::policy::AppPolicy;
use ghostkey::service::methods::MAX_METHODS_PER_USER;
use ghostkey_proto::assertion::{self, Purpose};
use ghostkey_proto::chain;
use ghostkey_proto::{b64, sealed, ErrorCode, Problem};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const DOC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/PROTOCOL.md");
const ROUTES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/http/mod.rs");

/// Every vector block the document may hold; each is checked by one of the two tests.
const KNOWN_VECTORS: &[&str] = &[
    "sealed-v1",
    "assertion-eddsa",
    "chain-v1",
    "webhook-signature",
    "webhook-signature-long-secret",
    "constants",
    // crates/ghostkey-client/tests/protocol_vectors.rs (the derivation is the client's).
    "passphrase-v1",
];

fn doc() -> String {
    std::fs::read_to_string(DOC).unwrap_or_else(|e| panic!("cannot read {DOC}: {e}"))
}

/// Every ```` ```vector name="..." ```` block, by name, as its `key: value` lines.
fn vectors(doc: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim_end().strip_prefix("```vector") else {
            continue;
        };
        let name = rest
            .trim()
            .strip_prefix("name=\"")
            .and_then(|r| r.strip_suffix('"'))
            .unwrap_or_else(|| panic!("bad vector opening: `{line}`"))
            .to_owned();
        let mut block = BTreeMap::new();
        for line in lines.by_ref() {
            if line.trim_end() == "```" {
                break;
            }
            let (key, value) = line
                .split_once(": ")
                .unwrap_or_else(|| panic!("vector {name}: `{line}` is not `key: value`"));
            let previous = block.insert(key.trim().to_owned(), value.trim_end().to_owned());
            assert!(previous.is_none(), "vector {name}: `{key}` appears twice");
        }
        assert!(
            out.insert(name.clone(), block).is_none(),
            "vector {name} appears twice"
        );
    }
    out
}

fn vector(name: &str, expected: &[&str]) -> BTreeMap<String, String> {
    let block = vectors(&doc())
        .remove(name)
        .unwrap_or_else(|| panic!("no vector {name} in {DOC}"));
    let keys: Vec<&str> = block.keys().map(String::as_str).collect();
    let mut wanted = expected.to_vec();
    wanted.sort_unstable();
    assert_eq!(keys, wanted, "vector {name}: keys");
    block
}

#[test]
fn every_vector_block_is_one_a_test_checks() {
    let names: Vec<String> = vectors(&doc()).into_keys().collect();
    let mut known: Vec<&str> = KNOWN_VECTORS.to_vec();
    known.sort_unstable();
    assert_eq!(names, known);
}

fn check_webhook_vector(name: &str) {
    let v = vector(name, &["secret", "timestamp", "body", "signature_header"]);
    let timestamp: i64 = v["timestamp"].parse().unwrap();
    let (secret, body) = (v["secret"].as_bytes(), v["body"].as_bytes());
    assert_eq!(
        signature_header(secret, timestamp, body),
        v["signature_header"],
        "{name}"
    );
    // The documented definition, with a stock HMAC: `t=<t>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    let expected = format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    );
    assert_eq!(expected, v["signature_header"], "{name}");
    // The body is the webhook's JSON payload.
    let payload: serde_json::Value = serde_json::from_slice(body).unwrap();
    let members: Vec<&str> = payload
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(members, ["body", "channel", "id", "to"]);
}

#[test]
fn webhook_signature_vectors_match_the_code() {
    check_webhook_vector("webhook-signature");
    check_webhook_vector("webhook-signature-long-secret");
    let long = vector(
        "webhook-signature-long-secret",
        &["secret", "timestamp", "body", "signature_header"],
    );
    assert!(long["secret"].len() > 64, "the long secret exceeds a block");
}

#[test]
fn constants_match_the_code() {
    let v = vector(
        "constants",
        &[
            "sealed_format_version",
            "min_sealed_len",
            "max_sealed_len",
            "max_token_len",
            "max_lifetime_secs",
            "max_clock_skew_secs",
            "max_user_id_len",
            "min_jti_len",
            "max_jti_len",
            "max_methods_per_user",
            "body_limit_bytes",
            "chain_format_version",
            "max_block_len",
            "max_chain_blocks",
            "max_backoff_secs",
            "code_digits",
            "totp_digits",
            "code_lifetime_secs",
            "max_attempts_per_challenge",
            "user_lock_threshold",
            "user_backoff_base_secs",
            "user_failures_per_day",
            "max_user_failures_per_day",
            "recovery_starts_per_user_per_day",
            "sends_per_destination_per_hour",
            "sends_per_destination_per_day",
            "app_daily_send_budget",
            "requests_per_address_per_minute",
            "code_checks_per_app_per_minute",
            "waiting_period_secs",
        ],
    );
    let config = Config::default();
    let policy = AppPolicy::default();
    let actual: BTreeMap<&str, i64> = [
        ("sealed_format_version", i64::from(sealed::SEALED_FORMAT_V1)),
        ("min_sealed_len", sealed::MIN_SEALED_LEN as i64),
        ("max_sealed_len", sealed::MAX_SEALED_LEN as i64),
        ("max_token_len", MAX_TOKEN_LEN as i64),
        ("max_lifetime_secs", config.assertions.max_lifetime_secs),
        ("max_clock_skew_secs", config.assertions.max_clock_skew_secs),
        ("max_user_id_len", assertion::MAX_USER_ID_LEN as i64),
        ("min_jti_len", assertion::MIN_JTI_LEN as i64),
        ("max_jti_len", assertion::MAX_JTI_LEN as i64),
        ("max_methods_per_user", MAX_METHODS_PER_USER as i64),
        ("body_limit_bytes", config.server.body_limit_bytes as i64),
        ("chain_format_version", i64::from(chain::CHAIN_FORMAT_V1)),
        ("max_block_len", chain::MAX_BLOCK_LEN as i64),
        ("max_chain_blocks", chain::MAX_BLOCKS as i64),
        ("max_backoff_secs", MAX_BACKOFF_SECS),
        ("code_digits", i64::from(policy.code_digits)),
        ("totp_digits", i64::from(policy.totp_digits)),
        ("code_lifetime_secs", policy.code_lifetime_secs),
        (
            "max_attempts_per_challenge",
            i64::from(policy.max_attempts_per_challenge),
        ),
        ("user_lock_threshold", i64::from(policy.user_lock_threshold)),
        ("user_backoff_base_secs", policy.user_backoff_base_secs),
        (
            "user_failures_per_day",
            i64::from(policy.user_failures_per_day),
        ),
        (
            "max_user_failures_per_day",
            i64::from(ghostkey::domain::policy::MAX_USER_FAILURES_PER_DAY),
        ),
        (
            "recovery_starts_per_user_per_day",
            i64::from(policy.recovery_starts_per_user_per_day),
        ),
        (
            "sends_per_destination_per_hour",
            i64::from(policy.sends_per_destination_per_hour),
        ),
        (
            "sends_per_destination_per_day",
            i64::from(policy.sends_per_destination_per_day),
        ),
        (
            "app_daily_send_budget",
            i64::from(policy.app_daily_send_budget),
        ),
        (
            "requests_per_address_per_minute",
            i64::from(policy.requests_per_address_per_minute),
        ),
        (
            "code_checks_per_app_per_minute",
            i64::from(policy.code_checks_per_app_per_minute),
        ),
        ("waiting_period_secs", policy.waiting_period_secs),
    ]
    .into_iter()
    .collect();
    for (key, value) in &v {
        let documented: i64 = value
            .parse()
            .unwrap_or_else(|_| panic!("constants: `{key}` is not an integer"));
        assert_eq!(documented, actual[key.as_str()], "constants: {key}");
    }
}

#[test]
fn the_assertion_vector_is_accepted_by_the_server() {
    let v = vector(
        "assertion-eddsa",
        &[
            "app_key_seed",
            "app_public_key",
            "kid",
            "iss",
            "sub",
            "aud",
            "iat",
            "exp",
            "jti",
            "purpose",
            "header_json",
            "payload_json",
            "signature",
            "token",
        ],
    );
    let config = Config::default();
    let rules = AssertionRules {
        service_id: v["aud"].clone(),
        max_lifetime_secs: config.assertions.max_lifetime_secs,
        max_clock_skew_secs: config.assertions.max_clock_skew_secs,
    };
    let iat: i64 = v["iat"].parse().unwrap();
    let exp: i64 = v["exp"].parse().unwrap();
    let key = KeyLookup::Active(b64::decode_array(&v["app_public_key"]).unwrap());
    let unverified = inspect(&v["token"]).unwrap();
    assert_eq!(
        (unverified.iss.as_str(), unverified.kid.as_str()),
        (v["iss"].as_str(), v["kid"].as_str())
    );
    let ok = verify(&unverified, &key, &rules, &[Purpose::Recover], iat).unwrap();
    assert_eq!(
        (ok.app_id.as_str(), ok.user_id.as_str(), ok.jti.as_str()),
        (v["iss"].as_str(), v["sub"].as_str(), v["jti"].as_str())
    );
    assert_eq!(ok.purpose.as_str(), v["purpose"]);
    assert_eq!(ok.remember_jti_until, exp + rules.max_clock_skew_secs);
    let refused = |purposes: &[Purpose], now: i64| {
        verify(&unverified, &key, &rules, purposes, now)
            .unwrap_err()
            .code
    };
    assert_eq!(
        refused(&[Purpose::Recover], exp),
        ErrorCode::AssertionExpired
    );
    assert_eq!(
        refused(&[Purpose::Manage], iat),
        ErrorCode::AssertionWrongPurpose
    );
}

/// `(code, status)` of every row of the table in the document's `## <n>. Error codes`
/// section.
fn documented_errors(doc: &str) -> Vec<(String, u16)> {
    let mut sections = doc.split("\n## ").filter(|s| {
        s.lines()
            .next()
            .is_some_and(|heading| heading.ends_with(". Error codes"))
    });
    let section = sections
        .next()
        .expect("the document has an `Error codes` section");
    assert!(sections.next().is_none(), "two `Error codes` sections");
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let code = cells[1].trim_matches('`').to_owned();
            let status = cells[2]
                .parse()
                .unwrap_or_else(|_| panic!("error table: bad status in `{line}`"));
            (code, status)
        })
        .collect()
}

#[test]
fn every_error_code_is_in_the_error_table_with_its_status() {
    let doc = doc();
    let rows = documented_errors(&doc);
    let mut documented = BTreeMap::new();
    for (code, status) in &rows {
        assert!(
            documented.insert(code.as_str(), *status).is_none(),
            "`{code}` is documented twice"
        );
    }
    let actual: BTreeMap<&str, u16> = ErrorCode::ALL
        .iter()
        .map(|c| (c.as_str(), c.http_status()))
        .collect();
    assert_eq!(documented, actual, "the error table of {DOC}");
    // The problem document's `type` is as documented.
    let problem = Problem::new(ErrorCode::ReleasePending, None);
    assert_eq!(problem.type_uri, "urn:ghostkey:error:release_pending");
    assert!(doc.contains("`urn:ghostkey:error:<code>`"));
}

/// `(METHOD, path)` of every route registered in `src/http/mod.rs`, read as text: each
/// `web::resource("...")` with the `.route(web::<method>()...)` calls that follow it, the
/// path prefixed with the `web::scope("...")` it is registered under.
fn registered_routes(source: &str) -> Vec<(String, String)> {
    #[derive(Debug)]
    enum Token {
        Scope(String),
        Resource(String),
        Method(String),
    }
    let quoted = |rest: &str| rest.split('"').next().unwrap_or_default().to_owned();
    let mut tokens = Vec::new();
    for (at, _) in source.match_indices("web::") {
        let rest = &source[at + "web::".len()..];
        if let Some(r) = rest.strip_prefix("scope(\"") {
            tokens.push(Token::Scope(quoted(r)));
        } else if let Some(r) = rest.strip_prefix("resource(\"") {
            tokens.push(Token::Resource(quoted(r)));
        } else if source[..at].ends_with(".route(") {
            let method = rest.split('(').next().unwrap_or_default();
            tokens.push(Token::Method(method.to_ascii_uppercase()));
        }
    }
    let mut scope = String::new();
    let mut resource = None;
    let mut routes = Vec::new();
    for token in tokens {
        match token {
            Token::Scope(s) => scope = s,
            Token::Resource(r) => resource = Some(format!("{scope}{r}")),
            Token::Method(m) => {
                let path = resource
                    .clone()
                    .expect("a `.route(...)` before any `web::resource`");
                routes.push((m, path));
            }
        }
    }
    routes
}

#[test]
fn every_registered_route_is_documented() {
    let source =
        std::fs::read_to_string(ROUTES).unwrap_or_else(|e| panic!("cannot read {ROUTES}: {e}"));
    let routes = registered_routes(&source);
    let v1: Vec<&(String, String)> = routes
        .iter()
        .filter(|(_, p)| p.starts_with("/v1/"))
        .collect();
    assert!(
        v1.len() >= 13,
        "the route extraction found only {v1:?} under /v1"
    );
    for route in [
        ("GET", "/healthz"),
        ("GET", "/v1/methods"),
        ("POST", "/v1/methods"),
    ] {
        assert!(
            routes.contains(&(route.0.to_owned(), route.1.to_owned())),
            "the route extraction missed {route:?}"
        );
    }
    let doc = doc();
    let missing: Vec<String> = routes
        .iter()
        .map(|(method, path)| format!("`{method} {path}`"))
        .filter(|route| !doc.contains(route.as_str()))
        .collect();
    assert!(missing.is_empty(), "routes missing from {DOC}: {missing:?}");
}
