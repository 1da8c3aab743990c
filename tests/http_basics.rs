//! Hostile bodies, unknown routes and methods: each gets a 4xx problem document and
//! changes nothing.

mod common;

use common::{TestApp, TestServer};
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::proto::{b64, Problem};
use serde_json::json;

async fn problem(res: reqwest::Response) -> (u16, Problem) {
    let status = res.status().as_u16();
    let ctype = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert_eq!(ctype, "application/problem+json");
    let p: Problem = res.json().await.unwrap();
    assert_eq!(p.status, status);
    assert_eq!(p.type_uri, format!("urn:ghostkey:error:{}", p.code));
    (status, p)
}

fn valid_body(app: &TestApp, user: &str) -> serde_json::Value {
    common::enrol_body(app, user)
}

#[tokio::test]
async fn oversized_malformed_and_unknown_field_bodies_are_refused_and_change_nothing() {
    let server = TestServer::start();
    let app = server.register_app("App");
    let http = reqwest::Client::new();
    let url = format!("{}/v1/enrollments", server.base_url);
    // One assertion for every attempt: none of them may consume it.
    let assertion = app.assertion("u", Purpose::Enroll);
    let post = |body: Vec<u8>, ctype: &'static str| {
        http.post(&url)
            .bearer_auth(&assertion)
            .header("content-type", ctype)
            .body(body)
    };

    // Oversized (the default limit is 64 KiB).
    let mut big = valid_body(&app, "u");
    big["sealed_virtual_device"] = json!("A".repeat(200_000));
    let (status, p) = problem(
        post(serde_json::to_vec(&big).unwrap(), "application/json")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, p.code.as_str()), (413, "body_too_large"));

    // Malformed JSON, wrong types, missing and unknown fields.
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{".to_vec(), "end of JSON"),
        (b"{,}".to_vec(), "invalid JSON syntax"),
        (b"".to_vec(), "end of JSON"),
        (b"[]".to_vec(), "wrong type"),
        (
            br#"{"sealed_virtual_device": 5, "virtual_device": {}}"#.to_vec(),
            "wrong type",
        ),
        (
            br#"{"virtual_device": {"signing_key": "a", "encryption_key": "b"}}"#.to_vec(),
            "missing field `sealed_virtual_device`",
        ),
        (
            {
                let mut b = valid_body(&app, "u");
                b["is_admin"] = json!(true);
                serde_json::to_vec(&b).unwrap()
            },
            "unknown field `is_admin`",
        ),
        (
            {
                let mut b = valid_body(&app, "u");
                b["virtual_device"]["extra"] = json!(1);
                serde_json::to_vec(&b).unwrap()
            },
            "unknown field `extra`",
        ),
    ];
    for (body, expected) in cases {
        let (status, p) = problem(post(body, "application/json").send().await.unwrap()).await;
        assert_eq!((status, p.code.as_str()), (400, "malformed_body"));
        assert!(
            p.detail.as_deref().unwrap_or("").contains(expected),
            "{:?} vs {expected}",
            p.detail
        );
    }

    // Not JSON at all.
    let body = serde_json::to_vec(&valid_body(&app, "u")).unwrap();
    let (status, p) = problem(post(body, "text/plain").send().await.unwrap()).await;
    assert_eq!((status, p.code.as_str()), (415, "unsupported_media_type"));

    // Well-formed JSON with bad values.
    let mut bad_version = valid_body(&app, "u");
    let mut blob = b64::decode(bad_version["sealed_virtual_device"].as_str().unwrap()).unwrap();
    blob[0] = 9;
    bad_version["sealed_virtual_device"] = json!(b64::encode(&blob));
    let mut too_short = valid_body(&app, "u");
    too_short["sealed_virtual_device"] = json!(b64::encode([1u8; 40]));
    let mut not_b64 = valid_body(&app, "u");
    not_b64["sealed_virtual_device"] = json!("not base64!");
    let mut bad_signing = valid_body(&app, "u");
    bad_signing["virtual_device"]["signing_key"] = json!(b64::encode([0u8; 31]));
    let mut zero_enc = valid_body(&app, "u");
    zero_enc["virtual_device"]["encryption_key"] = json!(b64::encode([0u8; 32]));
    let cases = [
        (bad_version, 422, "unsupported_sealed_version"),
        (too_short, 422, "invalid_field"),
        (not_b64, 422, "invalid_field"),
        (bad_signing, 422, "invalid_field"),
        (zero_enc, 422, "invalid_field"),
    ];
    for (body, want_status, want_code) in cases {
        let (status, p) = problem(
            post(serde_json::to_vec(&body).unwrap(), "application/json")
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(
            (status, p.code.as_str()),
            (want_status, want_code),
            "{:?}",
            p.detail
        );
    }

    assert_eq!(server.count("users"), 0);
    assert_eq!(server.count("assertion_jtis"), 0);

    // The assertion was never consumed: it still enrols.
    let res = post(
        serde_json::to_vec(&valid_body(&app, "u")).unwrap(),
        "application/json",
    )
    .send()
    .await
    .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(server.count("users"), 1);
}

#[tokio::test]
async fn unknown_routes_and_methods_get_problem_documents() {
    let server = TestServer::start();
    let http = reqwest::Client::new();
    let (status, p) = problem(
        http.get(format!("{}/v1/nothing", server.base_url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, p.code.as_str()), (404, "not_found"));
    let (status, p) = problem(
        http.get(format!("{}/v1/enrollments", server.base_url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, p.code.as_str()), (405, "method_not_allowed"));
    let (status, p) = problem(
        http.delete(format!("{}/healthz", server.base_url))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, p.code.as_str()), (405, "method_not_allowed"));
    let res = http
        .get(format!("{}/readyz", server.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // RFC 9110: a 405 names the methods the resource has.
    for (method, path, allow) in [
        (reqwest::Method::GET, "/v1/enrollments", "POST"),
        (reqwest::Method::PUT, "/v1/methods", "GET, POST"),
        (reqwest::Method::DELETE, "/healthz", "GET"),
        (reqwest::Method::TRACE, "/v1/chains/someone", "GET"),
    ] {
        let res = http
            .request(method.clone(), format!("{}{path}", server.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 405, "{method} {path}");
        assert_eq!(
            res.headers().get("allow").and_then(|v| v.to_str().ok()),
            Some(allow),
            "{method} {path}"
        );
    }
}
