//! `/metrics` on its own listener exposes the named series and no personal value.

mod common;

use common::{sms_gateway, TestServer};
use ghostkey_client::proto::api::MethodKind;
use ghostkey_client::proto::assertion::Purpose;

#[tokio::test]
async fn metrics_expose_the_named_series_and_no_personal_value() {
    let gateway = sms_gateway::accepting().await;
    let server = TestServer::start_with(|c| {
        sms_gateway::configure(c, &gateway);
        c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    });
    let app = server.register_app("Health");
    server.set_policy(
        &app,
        ghostkey::domain::policy::PolicyChange {
            user_backoff_base_secs: Some(0),
            user_lock_threshold: Some(3),
            ..Default::default()
        },
    );
    let client = server.client();
    common::enrol(&server, &app, "patient-31").await;
    let added = client
        .add_method(
            &app.assertion("patient-31", Purpose::Enroll),
            MethodKind::Sms,
            Some("+33 6 12 34 56 78"),
            None,
        )
        .await
        .unwrap();
    let err = client
        .answer(&added.challenge.id, "00000000")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(ghostkey_client::proto::ErrorCode::InvalidCode),
        "{err}"
    );
    let code = sms_gateway::code(&gateway, 0).await;
    client.answer(&added.challenge.id, &code).await.unwrap();
    let started = client
        .start_recovery(
            &app.assertion("patient-31", Purpose::Recover),
            &added.method.id,
        )
        .await
        .unwrap();
    client
        .verify_recovery(&started.id, &sms_gateway::code(&gateway, 1).await)
        .await
        .unwrap();
    // Lock the user: three more failures on a new recovery.
    let again = client
        .start_recovery(
            &app.assertion("patient-31", Purpose::Recover),
            &added.method.id,
        )
        .await
        .unwrap();
    let mut answers = Vec::new();
    for _ in 0..3 {
        let err = client
            .verify_recovery(&again.id, "00000000")
            .await
            .unwrap_err();
        answers.push(err.code());
    }
    {
        use ghostkey_client::proto::ErrorCode::{InvalidCode, Locked};
        assert_eq!(
            answers,
            [Some(InvalidCode), Some(InvalidCode), Some(Locked)],
            "the third failure locks the user"
        );
    }

    let metrics_addr = server.metrics_addr.expect("metrics listener");
    let text = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        "ghostkey_http_requests_total{method=\"POST\",route=\"/v1/enrollments\",status=\"201\"} 1",
        "ghostkey_http_request_duration_seconds_bucket{method=\"POST\",route=\"/v1/challenges/{challenge_id}/answer\",status=\"200\",le=\"+Inf\"} 1",
        "ghostkey_challenges_started_total{purpose=\"confirm\",method=\"sms\"} 1",
        "ghostkey_challenges_started_total{purpose=\"recover\",method=\"sms\"} 2",
        "ghostkey_codes_total{result=\"accepted\",purpose=\"confirm\"} 1",
        "ghostkey_codes_total{result=\"refused\",purpose=\"recover\"} 3",
        "ghostkey_releases_total 1",
        "ghostkey_locks_total 1",
        "ghostkey_messages_total{channel=\"sms\",result=\"sent\"}",
        "ghostkey_outbox_depth",
    ] {
        assert!(text.contains(series), "missing {series}\n{text}");
    }
    // Route templates only: no ids, no user, no number, no code.
    for needle in [
        "patient-31",
        "612345678",
        code.as_str(),
        started.id.as_str(),
        added.method.id.as_str(),
        app.id.as_str(),
    ] {
        assert!(!text.contains(needle), "{needle} leaked into /metrics");
    }
    // The API's own port does not serve metrics.
    let res = reqwest::get(format!("{}/metrics", server.base_url))
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

/// Attack 6: request metrics were keyed by the raw method string, so every junk method
/// added a series for good (800 requests with 100 KB methods grew the server by 80 MiB).
#[tokio::test]
async fn junk_methods_and_paths_add_no_series() {
    let server = TestServer::start_with(|c| {
        c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
    });
    let metrics_url = format!("http://{}/metrics", server.metrics_addr.unwrap());
    let series = || async {
        let text = reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let lines: Vec<String> = text
            .lines()
            .filter(|l| l.starts_with("ghostkey_http_requests_total{"))
            .map(str::to_owned)
            .collect();
        (text.len(), lines)
    };
    let http = reqwest::Client::new();
    // Warm the series an attacker can reach: one junk method, one junk path.
    let junk = |i: usize| {
        reqwest::Method::from_bytes(format!("JUNK{i}{}", "X".repeat(8 * 1024)).as_bytes()).unwrap()
    };
    let send = |method: reqwest::Method, path: String| {
        let http = http.clone();
        let url = format!("{}{path}", server.base_url);
        async move { http.request(method, url).send().await.unwrap().status() }
    };
    send(junk(0), "/v1/methods/m_0/remove".into()).await;
    send(reqwest::Method::GET, "/v1/nothing-0".into()).await;
    let (size_before, before) = series().await;
    for i in 1..200 {
        send(junk(i), format!("/v1/methods/m_{i}/remove")).await;
        send(
            reqwest::Method::GET,
            format!("/v1/nothing-{i}/{}", "y".repeat(2048)),
        )
        .await;
    }
    let (size_after, after) = series().await;
    // Counts grew; the set of series did not.
    let labels = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .map(|l| {
                l.rsplit_once('}')
                    .map_or(l.as_str(), |(labels, _)| labels)
                    .to_owned()
            })
            .collect()
    };
    assert_eq!(labels(&before), labels(&after));
    assert_eq!(before.len(), after.len(), "{after:#?}");
    assert!(after
        .iter()
        .all(|l| !l.contains("JUNK") && !l.contains("nothing")));
    assert!(
        after.iter().any(|l| l.contains("method=\"other\"")),
        "{after:#?}"
    );
    // The exposition grows only by the digits of the counts.
    assert!(
        size_after < size_before + 1024,
        "{size_before} -> {size_after}"
    );
}
