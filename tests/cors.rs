//! Browser pages (CORS, docs/PROTOCOL.md §6.10): per-app allowed origins, preflights,
//! refusals that change nothing, the headers of allowed answers, the operator's commands
//! and the schema upgrade that brings the origins table.

mod common;

use common::{sms_gateway, TestApp, TestServer};
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::proto::Problem;

const ORIGIN_A: &str = "https://a.example";
const ORIGIN_B: &str = "https://b.example";

fn allow(server: &TestServer, app: &TestApp, origin: &str) {
    ghostkey::admin::add_origin(&*server.store(), &app.id, origin, server.now()).unwrap();
}

/// Every header of an answer whose name starts with `access-control-`.
fn cors_headers(res: &reqwest::Response) -> Vec<String> {
    res.headers()
        .keys()
        .map(|k| k.as_str().to_owned())
        .filter(|k| k.starts_with("access-control-"))
        .collect()
}

fn header(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

async fn problem_code(res: reqwest::Response) -> (u16, String) {
    let status = res.status().as_u16();
    let p: Problem = res.json().await.unwrap();
    (status, p.code)
}

/// What a refused request must not change: attempts, failures, counters, used assertions,
/// audit events, queued messages.
fn state(server: &TestServer) -> Vec<i64> {
    [
        "SELECT coalesce(sum(attempts), 0) FROM challenges",
        "SELECT coalesce(sum(failures), 0) FROM user_guards",
        "SELECT count(*) FROM user_failures",
        "SELECT coalesce(sum(count), 0) FROM rate_counters",
        "SELECT count(*) FROM assertion_jtis",
        "SELECT count(*) FROM audit_events",
        "SELECT count(*) FROM outbox",
        "SELECT count(*) FROM recoveries WHERE state = 'started'",
    ]
    .iter()
    .map(|sql| server.query_i64(sql))
    .collect()
}

/// App A (no origin of its own unless a test adds one) and app B, which allows
/// `ORIGIN_B`; SMS through a webhook gateway.
async fn two_apps() -> (TestServer, wiremock::MockServer, TestApp, TestApp) {
    let gateway = sms_gateway::accepting().await;
    let server = TestServer::start_with(|c| sms_gateway::configure(c, &gateway));
    let a = server.register_app("A");
    let b = server.register_app("B");
    allow(&server, &b, ORIGIN_B);
    (server, gateway, a, b)
}

#[tokio::test]
async fn an_origin_allowed_for_another_app_is_refused_and_changes_nothing() {
    let (server, gateway, a, _b) = two_apps().await;
    let (_, _, method) = common::enrol_with_sms(&server, &a, &gateway, "alice").await;
    let recovery = server
        .client()
        .start_recovery(&a.assertion("alice", Purpose::Recover), &method)
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let verify = format!("{}/v1/recoveries/{}/verify", server.base_url, recovery.id);
    let before = state(&server);

    // A wrong recovery code from app B's page, about app A's recovery: refused before
    // the code is looked at. Also `null` (a sandboxed frame) and an unknown origin.
    for origin in [ORIGIN_B, "null", "https://evil.example", "http://b.example"] {
        let res = http
            .post(&verify)
            .header("origin", origin)
            .json(&serde_json::json!({"code": "00000000"}))
            .send()
            .await
            .unwrap();
        assert!(cors_headers(&res).is_empty(), "{origin}: {res:?}");
        assert_eq!(
            problem_code(res).await,
            (403, "origin_not_allowed".to_owned()),
            "{origin}"
        );
        assert_eq!(state(&server), before, "{origin}: something changed");
    }

    // The same on the challenge route and on routes with an assertion: app A's assertion
    // from app B's page is refused, and not even consumed.
    let manage = a.assertion("alice", Purpose::Manage);
    let res = http
        .get(format!("{}/v1/methods", server.base_url))
        .bearer_auth(&manage)
        .header("origin", ORIGIN_B)
        .send()
        .await
        .unwrap();
    assert!(cors_headers(&res).is_empty());
    assert_eq!(
        problem_code(res).await,
        (403, "origin_not_allowed".to_owned())
    );
    let res = http
        .post(format!(
            "{}/v1/challenges/{}/answer",
            server.base_url, recovery.id
        ))
        .header("origin", ORIGIN_B)
        .json(&serde_json::json!({"code": "00000000"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        problem_code(res).await,
        (403, "origin_not_allowed".to_owned())
    );
    assert_eq!(
        state(&server),
        before,
        "a refused request changed something"
    );
    let methods = server.client().list_methods(&manage).await.unwrap();
    assert_eq!(
        methods.methods.len(),
        1,
        "the refused assertion was not consumed"
    );

    // Without a browser's `Origin` the wrong code does count: the checks above could fail.
    let before = state(&server);
    let res = http
        .post(&verify)
        .json(&serde_json::json!({"code": "00000000"}))
        .send()
        .await
        .unwrap();
    assert!(cors_headers(&res).is_empty());
    assert_eq!(problem_code(res).await, (403, "invalid_code".to_owned()));
    let after = state(&server);
    assert_eq!(after[0], before[0] + 1, "the attempt is counted");
    assert_eq!(after[2], before[2] + 1, "the failure is recorded");
}

#[tokio::test]
async fn preflights_are_answered_only_for_an_origin_some_app_allows() {
    let (server, _gateway, _a, _b) = two_apps().await;
    let http = reqwest::Client::new();
    let preflight = |path: &str, origin: &str| {
        http.request(
            reqwest::Method::OPTIONS,
            format!("{}{path}", server.base_url),
        )
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type, x-evil, cookie",
        )
        .send()
    };

    // Hostile first: `null`, an unknown origin, the right host over http, a look-alike.
    for origin in [
        "null",
        "https://evil.example",
        "http://b.example",
        "https://b.example.evil.org",
        "https://b.example:8443",
        "*",
    ] {
        let res = preflight("/v1/recoveries/ch_x/verify", origin)
            .await
            .unwrap();
        assert!(cors_headers(&res).is_empty(), "{origin}: {res:?}");
        assert_eq!(res.status().as_u16(), 403, "{origin}");
    }

    // App B's origin: a preflight knows no app, so any route the SDK uses is allowed.
    for path in [
        "/v1/enrollments",
        "/v1/methods",
        "/v1/challenges/ch_x/answer",
        "/v1/recoveries/ch_x/verify",
        "/v1/recoveries/cancel",
        "/v1/chains/alice",
        "/dev/messages",
    ] {
        let res = preflight(path, ORIGIN_B).await.unwrap();
        assert_eq!(res.status().as_u16(), 204, "{path}");
        assert_eq!(
            header(&res, "access-control-allow-origin").as_deref(),
            Some(ORIGIN_B)
        );
        assert_eq!(
            header(&res, "access-control-allow-methods").as_deref(),
            Some("GET, POST")
        );
        assert_eq!(
            header(&res, "access-control-allow-headers").as_deref(),
            Some("authorization, content-type"),
            "other requested headers are not echoed"
        );
        assert_eq!(
            header(&res, "access-control-max-age").as_deref(),
            Some("600")
        );
        assert!(header(&res, "access-control-allow-credentials").is_none());
        assert_eq!(header(&res, "vary").as_deref(), Some("origin"));
    }

    // Paths browser pages have no business calling are left alone.
    let res = preflight("/healthz", ORIGIN_B).await.unwrap();
    assert!(cors_headers(&res).is_empty());
    assert_eq!(res.status().as_u16(), 405);
    // An OPTIONS that is no preflight (no requested method) is an actual request: 405.
    let res = http
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/methods", server.base_url),
        )
        .header("origin", ORIGIN_B)
        .send()
        .await
        .unwrap();
    assert_eq!(problem_code(res).await.0, 405);
}

#[tokio::test]
async fn allowed_answers_carry_the_headers_and_requests_without_origin_none() {
    let (server, _gateway, a, _b) = two_apps().await;
    allow(&server, &a, ORIGIN_A);
    let http = reqwest::Client::new();
    let methods = format!("{}/v1/methods", server.base_url);

    // App A's own page: its answer (here a problem: the user is not enrolled) carries the
    // headers.
    let res = http
        .get(&methods)
        .bearer_auth(a.assertion("nobody", Purpose::Manage))
        .header("origin", ORIGIN_A)
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&res, "access-control-allow-origin").as_deref(),
        Some(ORIGIN_A)
    );
    assert_eq!(
        header(&res, "access-control-expose-headers").as_deref(),
        Some("retry-after")
    );
    assert_eq!(header(&res, "vary").as_deref(), Some("origin"));
    assert!(header(&res, "access-control-allow-credentials").is_none());
    assert_eq!(problem_code(res).await, (404, "not_enrolled".to_owned()));

    // A wrong purpose from the right page: the endpoint's own refusal, with the headers.
    let res = http
        .post(format!("{}/v1/users/erase", server.base_url))
        .bearer_auth(a.assertion("nobody", Purpose::Recover))
        .header("origin", ORIGIN_A)
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&res, "access-control-allow-origin").as_deref(),
        Some(ORIGIN_A)
    );
    assert_eq!(
        problem_code(res).await,
        (403, "assertion_wrong_purpose".to_owned())
    );

    // No `Origin` (a server, the CLI): no CORS header at all, no `Vary`.
    let res = http
        .get(&methods)
        .bearer_auth(a.assertion("nobody", Purpose::Manage))
        .send()
        .await
        .unwrap();
    assert!(cors_headers(&res).is_empty());
    assert!(header(&res, "vary").is_none());
    assert_eq!(problem_code(res).await.1, "not_enrolled");

    // The app cannot be told (no assertion, an unknown id, the cancel code route): the
    // endpoint runs, with the headers only for an origin some app allows.
    let anonymous = [
        (format!("{}/v1/methods", server.base_url), None),
        (
            format!("{}/v1/challenges/ch_unknown/answer", server.base_url),
            Some(serde_json::json!({"code": "12345678"})),
        ),
        (
            format!("{}/v1/recoveries/cancel", server.base_url),
            Some(serde_json::json!({"cancel_code": "7K3M-Q9TX-2HVB-R8NC-4WZP"})),
        ),
    ];
    for (url, body) in &anonymous {
        for (origin, allowed) in [(ORIGIN_B, true), ("https://evil.example", false)] {
            let request = match body {
                Some(body) => http.post(url).json(body),
                None => http.get(url),
            };
            let res = request.header("origin", origin).send().await.unwrap();
            let got = header(&res, "access-control-allow-origin");
            assert_eq!(got.as_deref(), allowed.then_some(origin), "{url} {origin}");
            let (_, code) = problem_code(res).await;
            assert_ne!(
                code, "origin_not_allowed",
                "{url} {origin}: the endpoint ran"
            );
        }
    }
    // An assertion naming an unknown app is the endpoint's to refuse.
    let mut stranger = a.clone_for_test();
    stranger.id = "app_000000000000000000000000".into();
    let res = http
        .get(&methods)
        .bearer_auth(stranger.assertion("u", Purpose::Manage))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(cors_headers(&res).is_empty());
    assert_eq!(
        problem_code(res).await.1,
        "assertion_unknown_issuer".to_owned()
    );
}

#[tokio::test]
async fn a_page_can_read_retry_after_on_a_429() {
    let (server, _gateway, a, _b) = two_apps().await;
    allow(&server, &a, ORIGIN_A);
    server.set_policy(
        &a,
        ghostkey::domain::policy::PolicyChange {
            requests_per_address_per_minute: Some(2),
            ..Default::default()
        },
    );
    // All in one minute window.
    server.clock.align(60, 1);
    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let res = http
            .get(format!("{}/v1/methods", server.base_url))
            .bearer_auth(a.assertion("nobody", Purpose::Manage))
            .header("origin", ORIGIN_A)
            .send()
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
        if res.status().as_u16() == 429 {
            assert!(header(&res, "retry-after").is_some());
            assert_eq!(
                header(&res, "access-control-expose-headers").as_deref(),
                Some("retry-after")
            );
            assert_eq!(
                header(&res, "access-control-allow-origin").as_deref(),
                Some(ORIGIN_A)
            );
            assert_eq!(problem_code(res).await.1, "address_rate_limited".to_owned());
        }
    }
    assert_eq!(statuses, [404, 404, 429]);
}

fn cli(db: &std::path::Path, args: &[&str]) -> std::process::Output {
    common::ghostkey_on(db).args(args).output().unwrap()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn count(db: &std::path::Path, sql: &str) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

#[test]
fn the_origins_commands_validate_normalise_and_audit() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("g.db");
    let key = ghostkey_client::AppSigningKey::generate("k1");
    let out = cli(
        &db,
        &[
            "app",
            "add",
            "--name",
            "Health",
            "--key-id",
            "k1",
            "--public-key",
            &key.public_key_b64(),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let app = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let events = |kind: &str| {
        count(
            &db,
            &format!("SELECT count(*) FROM audit_events WHERE kind = '{kind}'"),
        )
    };

    // Hostile and malformed first: each refused with its reason, nothing stored.
    let bad: &[(&str, &str)] = &[
        ("null", "`null` is not allowed"),
        ("*", "`*` is not an origin"),
        ("https://health.example.org/", "no path"),
        ("https://health.example.org/app", "no path"),
        ("https://health.example.org?x", "no query"),
        ("https://health.example.org#x", "no fragment"),
        ("https://me@health.example.org", "no user info"),
        (
            "http://health.example.org",
            "http is allowed only for a loopback host",
        ),
        ("ftp://health.example.org", "scheme `ftp` is not allowed"),
        ("health.example.org", "expected scheme://host[:port]"),
        ("https://health.example.org:99999", "is not a port"),
        ("https://heälth.example.org", "non-ASCII"),
        ("", "empty"),
    ];
    for (origin, reason) in bad {
        let out = cli(&db, &["app", "origins", "add", &app, origin]);
        assert!(!out.status.success(), "{origin} accepted");
        assert!(stderr(&out).contains(reason), "{origin}: {}", stderr(&out));
    }
    let out = cli(
        &db,
        &["app", "origins", "add", "app_nope", "https://a.example"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no app with id `app_nope`"),
        "{}",
        stderr(&out)
    );
    for args in [
        ["app", "origins", "list", "app_nope"].as_slice(),
        ["app", "origins", "remove", "app_nope", "https://a.example"].as_slice(),
    ] {
        let out = cli(&db, args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr(&out).contains("no app with id `app_nope`"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    assert_eq!(count(&db, "SELECT count(*) FROM app_origins"), 0);
    assert_eq!(events("app_origin_added"), 0);

    // Added in its normal form, once; adding again changes nothing.
    for _ in 0..2 {
        let out = cli(
            &db,
            &[
                "app",
                "origins",
                "add",
                &app,
                "HTTPS://Health.Example.ORG:443",
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert!(stderr(&cli(
        &db,
        &["app", "origins", "add", &app, "https://health.example.org"]
    ))
    .contains("already allows"));
    let out = cli(
        &db,
        &["app", "origins", "add", &app, "http://localhost:3000"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(count(&db, "SELECT count(*) FROM app_origins"), 2);
    assert_eq!(events("app_origin_added"), 2);

    let out = cli(&db, &["app", "origins", "list", &app]);
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        "http://localhost:3000\nhttps://health.example.org\n"
    );
    let out = cli(&db, &["app", "origins", "list", &app, "--json"]);
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        listed["allowed_origins"],
        serde_json::json!(["http://localhost:3000", "https://health.example.org"])
    );
    let out = cli(&db, &["app", "show", &app, "--json"]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["allowed_origins"], listed["allowed_origins"]);
    let out = cli(&db, &["app", "show", &app]);
    assert!(String::from_utf8(out.stdout)
        .unwrap()
        .contains("allowed_origins:\n    http://localhost:3000\n    https://health.example.org\n"));

    // Removed (in any spelling of the same origin), audited; removing it again is an error.
    let out = cli(
        &db,
        &[
            "app",
            "origins",
            "remove",
            &app,
            "https://HEALTH.example.org",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = cli(
        &db,
        &[
            "app",
            "origins",
            "remove",
            &app,
            "https://health.example.org",
        ],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not allow origin `https://health.example.org`"));
    assert_eq!(events("app_origin_removed"), 1);
    assert_eq!(count(&db, "SELECT count(*) FROM app_origins"), 1);
    let out = cli(&db, &["audit", "verify"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_version_3_database_keeps_its_apps_and_gains_the_origins_table() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("v3.db");
    let key = ghostkey_client::AppSigningKey::generate("k1");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        for sql in [
            include_str!("../src/store/migrations/v1.sql"),
            include_str!("../src/store/migrations/v2.sql"),
            include_str!("../src/store/migrations/v3.sql"),
        ] {
            conn.execute_batch(sql).unwrap();
        }
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 3);
    }
    // An app registered by a version-3 Ghostkey: written here as that schema has it.
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute(
            "INSERT INTO apps (id, name, created_at, allowed_methods, code_digits, totp_digits, \
             code_lifetime_secs, max_attempts_per_challenge, user_lock_threshold, \
             user_backoff_base_secs, sends_per_destination_per_hour, sends_per_destination_per_day, \
             app_daily_send_budget, requests_per_address_per_minute, waiting_period_secs) \
             VALUES ('app_0123456789abcdef01234567', 'Old app', 1, 'totp,sms,email', 8, 6, 600, 3, \
             7, 2, 5, 10, 10000, 60, 0)",
            [],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO app_keys (app_id, kid, public_key, created_at) VALUES (?1, 'k1', ?2, 1)",
            rusqlite::params!["app_0123456789abcdef01234567", key.public_key().to_vec()],
        )
        .unwrap();
        let missing: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'app_origins'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(missing, 0);
    }
    let app = "app_0123456789abcdef01234567";
    let out = cli(&db, &["app", "origins", "add", app, "https://old.example"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        count(&db, "PRAGMA user_version"),
        ghostkey::store::sqlite::SCHEMA_VERSION
    );
    let out = cli(&db, &["app", "show", app, "--json"]);
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["name"], "Old app");
    assert_eq!(shown["policy"]["user_lock_threshold"], 7);
    assert_eq!(shown["keys"][0]["kid"], "k1");
    assert_eq!(
        shown["allowed_origins"],
        serde_json::json!(["https://old.example"])
    );
}
