//! The OpenAPI document: generated from the code, served, committed; the committed copy
//! may not drift, it describes every route the server registers, and each operation lists
//! exactly the statuses it can answer (no `4XX` or `5XX` range), with the codes behind them.

mod common;

#[test]
fn the_committed_document_is_the_generated_one() {
    let generated = ghostkey::http::openapi::document();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    let committed = std::fs::read_to_string(path).unwrap();
    assert!(
        committed.trim_end() == generated.trim_end(),
        "docs/openapi.json is stale: run `cargo run -- openapi > docs/openapi.json`"
    );
}

#[test]
fn every_registered_route_is_documented_with_its_methods() {
    let doc: serde_json::Value =
        serde_json::from_str(&ghostkey::http::openapi::document()).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let routes =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/http/mod.rs")).unwrap();
    // `web::resource("/x")` then its `.route(web::get()...)` lines, under `/v1` or at the top.
    let mut current: Option<String> = None;
    let mut checked = 0;
    for line in routes.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("web::resource(\"") {
            let path = rest.split('"').next().unwrap();
            let full = if path.starts_with("/healthz")
                || path.starts_with("/readyz")
                || path.starts_with("/dev/")
            {
                path.to_owned()
            } else {
                format!("/v1{path}")
            };
            current = Some(full);
        }
        for method in ["get", "post", "put", "delete"] {
            if line.contains(&format!("web::{method}()")) {
                let path = current.clone().unwrap();
                // Development-only routes live outside `/v1` and its document.
                if path == "/v1/openapi.json" || path.starts_with("/dev/") {
                    continue;
                }
                assert!(
                    doc["paths"][&path][method].is_object(),
                    "{method} {path} is not in the OpenAPI document"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 17, "only {checked} routes found");
    for name in [
        "EnrollRequest",
        "Problem",
        "RecoveryResponse",
        "ChainResponse",
    ] {
        assert!(doc["components"]["schemas"][name].is_object(), "{name}");
    }
}

#[tokio::test]
async fn the_server_serves_the_document() {
    let server = common::TestServer::start();
    let served = reqwest::get(format!("{}/v1/openapi.json", server.base_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(served, ghostkey::http::openapi::document());
}

/// Every operation of the document, as (method, path, operation).
fn operations(doc: &serde_json::Value) -> Vec<(String, String, serde_json::Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            out.push((method.clone(), path.clone(), operation.clone()));
        }
    }
    out
}

#[test]
fn every_operation_lists_exactly_its_statuses_and_the_codes_behind_them() {
    use ghostkey_proto::ErrorCode;
    let doc: serde_json::Value =
        serde_json::from_str(&ghostkey::http::openapi::document()).unwrap();
    let ops = operations(&doc);
    assert_eq!(ops.len(), 18, "operations in the document");
    let mut documented_codes = std::collections::BTreeSet::new();
    for (method, path, op) in &ops {
        let id = op["operationId"].as_str().unwrap();
        let at = format!("{method} {path} ({id})");
        let responses = op["responses"].as_object().unwrap();
        let statuses: Vec<u16> = responses
            .keys()
            .map(|k| {
                assert!(
                    k.len() == 3 && k.bytes().all(|b| b.is_ascii_digit()),
                    "{at}: status `{k}` is a range or not a status"
                );
                k.parse().unwrap()
            })
            .collect();
        let successes: Vec<u16> = statuses
            .iter()
            .copied()
            .filter(|s| (200..300).contains(s))
            .collect();
        assert_eq!(successes.len(), 1, "{at}: one success status");

        // Each error status names its codes, each of that status, as the table says.
        let table = ghostkey::http::openapi::operation_errors(id)
            .unwrap_or_else(|| panic!("{at}: not in operation_errors"));
        let mut listed = Vec::new();
        for status in statuses.iter().filter(|s| **s >= 300) {
            let description = responses[&status.to_string()]["description"]
                .as_str()
                .unwrap();
            let codes: Vec<&str> = description.split('`').skip(1).step_by(2).collect();
            assert!(
                !codes.is_empty(),
                "{at} {status}: no code in `{description}`"
            );
            for code in codes {
                let code = ErrorCode::from_code(code)
                    .unwrap_or_else(|| panic!("{at} {status}: unknown code `{code}`"));
                assert_eq!(code.http_status(), *status, "{at}: `{code}` under {status}");
                listed.push(code);
                documented_codes.insert(code.as_str());
            }
            let schema = &responses[&status.to_string()]["content"]["application/problem+json"]
                ["schema"]["$ref"];
            assert_eq!(schema, "#/components/schemas/Problem", "{at} {status}");
        }
        listed.sort_by_key(|c| c.as_str());
        let mut wanted = table.clone();
        wanted.sort_by_key(|c| c.as_str());
        assert_eq!(listed, wanted, "{at}: the document and operation_errors");

        let has = |s: u16| statuses.contains(&s);
        // An assertion: its refusals (401) and a wrong purpose (403); none without one.
        let secured = op["security"].is_array();
        assert_eq!(
            has(401),
            secured,
            "{at}: 401 if and only if an assertion is needed"
        );
        if secured {
            assert!(table.contains(&ErrorCode::AssertionWrongPurpose), "{at}");
            assert!(table.contains(&ErrorCode::AssertionReplayed), "{at}");
            assert!(
                has(429),
                "{at}: every assertion's request spends the address limit"
            );
        }
        // A body: its syntax (400), size (413) and media type (415); none without one.
        let body = op["requestBody"].is_object();
        for status in [400, 413, 415] {
            assert_eq!(has(status), body, "{at}: {status} if and only if a body");
        }
        // Ids in the path are checked for shape: 422.
        if path.contains('{') {
            assert!(table.contains(&ErrorCode::InvalidField), "{at}: path id");
        }
        // 503 on readiness, and with `Retry-After` on every `/v1` operation: a client that
        // keeps sending after a 429 may be shed when the line of such requests is full (and
        // some operations may shed Argon2 work). Never on `healthz`. 500 wherever the store
        // is used.
        let v1 = path.starts_with("/v1/");
        assert_eq!(has(503), v1 || id == "readyz", "{at}: 503");
        let retry_after = responses
            .get("503")
            .is_some_and(|r| r["headers"]["Retry-After"].is_object());
        assert_eq!(retry_after, v1, "{at}: 503 with Retry-After");
        assert_eq!(has(500), !["healthz", "readyz"].contains(&id), "{at}: 500");
        if has(429) {
            assert!(
                responses["429"]["headers"]["Retry-After"].is_object(),
                "{at}: 429 with Retry-After"
            );
        }
    }
    // Every code an operation can answer is documented on one; `not_found` and
    // `method_not_allowed` belong to no operation (unknown paths and methods), nor does
    // `development_only` (`GET /dev/messages`, outside the `/v1` document).
    for code in ErrorCode::ALL {
        let expected = !matches!(
            code,
            ErrorCode::NotFound | ErrorCode::MethodNotAllowed | ErrorCode::DevelopmentOnly
        );
        assert_eq!(
            documented_codes.contains(code.as_str()),
            expected,
            "`{code}` on an operation"
        );
    }
}
