//! `GET /dev/messages` (docs/PROTOCOL.md §6.11): in development, the messages the `dev-log`
//! senders "sent", bounded, filterable by destination, readable by a page whose origin an
//! app allows; in production, `development_only` and nothing else.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{sms_gateway, TestServer};
use ghostkey::clock::Clock;
use ghostkey_client::proto::api::{MethodKind, MethodState};
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::proto::Problem;

const PHONE: &str = "+33612345678";

async fn messages(server_url: &str, query: &str) -> serde_json::Value {
    let res = reqwest::get(format!("{server_url}/dev/messages{query}"))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    res.json().await.unwrap()
}

#[tokio::test]
async fn production_refuses_the_view_and_shows_nothing() {
    let gateway = sms_gateway::accepting().await;
    let server = TestServer::start_with(|c| {
        c.mode = ghostkey::config::Mode::Production;
        c.keys.data_key = Some(ghostkey::keys::DataKey::generate().to_text());
        sms_gateway::configure(c, &gateway);
        c.email.provider = ghostkey::config::EmailProvider::Smtp;
        c.email.smtp_host = "127.0.0.1".into();
        c.email.smtp_port = 2525;
        c.email.smtp_tls = ghostkey::config::SmtpTls::None;
        c.email.from = "Ghostkey <no-reply@ghostkey.test>".into();
    });
    let app = server.register_app("A");
    ghostkey::admin::add_origin(&*server.store(), &app.id, "https://a.example", server.now())
        .unwrap();
    // A code is sent (to the gateway): production still shows nothing of it.
    let (_, _, _) = common::enrol_with_sms(&server, &app, &gateway, "alice").await;
    let http = reqwest::Client::new();
    for (query, origin) in [
        ("", None),
        ("?to=%2B33612345678", None),
        ("", Some("https://a.example")),
    ] {
        let mut request = http.get(format!("{}/dev/messages{query}", server.base_url));
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        let res = request.send().await.unwrap();
        assert_eq!(res.status().as_u16(), 403, "{query}");
        let body = res.text().await.unwrap();
        assert!(!body.contains("3361"), "{body}");
        assert!(!body.contains("code,"), "{body}");
        let problem: Problem = serde_json::from_str(&body).unwrap();
        assert_eq!(problem.code, "development_only");
    }
    // Only GET exists.
    let res = http
        .post(format!("{}/dev/messages", server.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 405);
}

#[tokio::test]
async fn in_development_the_code_sent_by_sms_is_shown_and_confirms_the_method() {
    // A clock far from the wall clock: `sent_at` must be the server's time.
    let start = 1_700_000_000;
    let server = TestServer::start_at(start, |_| {});
    let app = server.register_app("A");
    let client = server.client();
    for user in ["alice", "bob"] {
        common::enrol(&server, &app, user).await;
    }
    let added = client
        .add_method(
            &app.assertion("alice", Purpose::Enroll),
            MethodKind::Sms,
            Some("+33 6 12 34 56 78"),
            None,
        )
        .await
        .unwrap();
    client
        .add_method(
            &app.assertion("bob", Purpose::Enroll),
            MethodKind::Email,
            Some("bob@example.org"),
            None,
        )
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let all = loop {
        let got = messages(&server.base_url, "").await;
        if got["messages"].as_array().unwrap().len() >= 2 {
            break got;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the two codes never reached the view: {got}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let list = all["messages"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{all}");
    for m in list {
        let sent_at = m["sent_at"].as_i64().unwrap();
        assert!(
            (start..start + 60).contains(&sent_at),
            "sent_at {sent_at} is not the server's time"
        );
        let keys: Vec<&String> = m.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["body", "channel", "sent_at", "to"]);
    }

    // `?to=` keeps one destination, exactly as normalised (a `+` is encoded as %2B).
    let sms = messages(&server.base_url, "?to=%2B33612345678").await;
    let sms = sms["messages"].as_array().unwrap().clone();
    assert_eq!(sms.len(), 1);
    assert_eq!(sms[0]["channel"], "sms");
    assert_eq!(sms[0]["to"], PHONE);
    let email = messages(&server.base_url, "?to=bob%40example.org").await;
    assert_eq!(email["messages"][0]["channel"], "email");
    assert_eq!(email["messages"].as_array().unwrap().len(), 1);
    for other in ["?to=%2B3361234567", "?to=+33612345678", "?to=33612345678"] {
        let none = messages(&server.base_url, other).await;
        assert!(none["messages"].as_array().unwrap().is_empty(), "{other}");
    }

    // The code shown is the one that confirms the method: a wrong one first, refused.
    let body = sms[0]["body"].as_str().unwrap();
    let code = common::find_code(body, 8).unwrap();
    let wrong = if code == "00000000" {
        "11111111"
    } else {
        "00000000"
    };
    assert!(client.answer(&added.challenge.id, wrong).await.is_err());
    // Past the back-off the wrong code started.
    server.clock.advance(3);
    let answered = client.answer(&added.challenge.id, &code).await.unwrap();
    assert_eq!(answered.method.id, added.method.id);
    assert_eq!(answered.method.state, MethodState::Confirmed);

    // A page at an origin some app allows may read it; another gets no CORS header.
    ghostkey::admin::add_origin(
        &*server.store(),
        &app.id,
        "http://localhost:3000",
        server.now(),
    )
    .unwrap();
    let http = reqwest::Client::new();
    for (origin, allowed) in [
        ("http://localhost:3000", true),
        ("https://evil.example", false),
        ("null", false),
    ] {
        let res = http
            .get(format!("{}/dev/messages", server.base_url))
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.headers()
                .get("access-control-allow-origin")
                .map(|v| v.to_str().unwrap().to_owned()),
            allowed.then(|| origin.to_owned()),
            "{origin}"
        );
    }
}

#[test]
fn the_view_keeps_the_newest_thousand() {
    use ghostkey::delivery::Outgoing;
    use secrecy::SecretString;

    let dir = tempfile::tempdir().unwrap();
    let config = common::test_config(dir.path());
    let clock: Arc<dyn Clock> = Arc::new(common::TestClock::starting_at(1_700_000_000));
    let senders =
        ghostkey::delivery::setup::from_config_with_clock(&config, Arc::clone(&clock)).unwrap();
    // 1,005 messages through the development SMS sender, as the outbox worker sends them.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        for i in 0..1_005 {
            let to = if i % 2 == 0 { PHONE } else { "+33700000000" };
            senders
                .sms
                .send(&Outgoing {
                    id: i,
                    to: SecretString::from(to.to_owned()),
                    subject: String::new(),
                    body: SecretString::from(format!("message {i}")),
                })
                .await
                .unwrap();
        }
    });
    drop(runtime);

    // Served over HTTP by a server started with these senders.
    let store: Arc<dyn ghostkey::store::Store> = ghostkey::server::open_store(&config).unwrap();
    let keys = Arc::new(ghostkey::keys::ServerKeys::derive(
        &ghostkey::keys::DataKey::generate(),
    ));
    let (tx, rx) = std::sync::mpsc::channel();
    let server_config = config.clone();
    let server = std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let running =
                ghostkey::server::start_with(&server_config, store, clock, keys, senders).unwrap();
            tx.send((running.addr, running.server.handle())).unwrap();
            running.server.await.unwrap();
        })
    });
    let (addr, handle) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let url = format!("http://{addr}");
        let all = messages(&url, "").await;
        let list = all["messages"].as_array().unwrap();
        assert_eq!(list.len(), 1_000, "the newest thousand");
        assert_eq!(list[0]["body"], "message 5", "the oldest dropped first");
        assert_eq!(list[999]["body"], "message 1004", "newest last");
        let sent_at = list[0]["sent_at"].as_i64().unwrap();
        assert!(
            (1_700_000_000..1_700_000_060).contains(&sent_at),
            "{sent_at}"
        );
        let phone = messages(&url, "?to=%2B33612345678").await;
        assert_eq!(phone["messages"].as_array().unwrap().len(), 500);
        handle.stop(false).await;
    });
    server.join().unwrap();
}
