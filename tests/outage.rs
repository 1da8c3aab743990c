//! Provider outage under load: the SMS gateway answers 503 (and hangs on some requests)
//! and the SMTP server refuses every connection while many clients ask for codes at once.
//! Every request is answered at once, none waits for a provider; once both providers are
//! back, every queued code is delivered exactly once and still confirms its method.
//! (tests/outbox.rs covers one SMS message through retries, permanent refusals and a
//! restart.)

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::smtp_server::SmtpServer;
use common::{enrol, find_code, sms_gateway, TestServer};
use ghostkey::domain::policy::PolicyChange;
use ghostkey_client::proto::api::{ChallengePurpose, MethodKind};
use ghostkey_client::proto::assertion::Purpose;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const USERS: usize = 40;
/// Longer than any answer can take unless a request waits for a provider: a hang
/// detector, not a speed requirement.
const ANSWER_BOUND: Duration = Duration::from_secs(30);

const DOWN: u8 = 0;
const UP: u8 = 1;

/// An SMS gateway that is down (503; the first requests also hang well past Ghostkey's
/// send timeout) or up (200), recording what it accepted.
#[derive(Clone, Default)]
struct Gateway {
    state: Arc<AtomicU8>,
    refused: Arc<AtomicUsize>,
    /// Accepted messages: (outbox id, destination, body).
    accepted: Arc<Mutex<Vec<(i64, String, String)>>>,
}

impl wiremock::Respond for Gateway {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        if self.state.load(Ordering::SeqCst) == DOWN {
            let n = self.refused.fetch_add(1, Ordering::SeqCst);
            let refusal = ResponseTemplate::new(503);
            return if n < 3 {
                refusal.set_delay(Duration::from_secs(5))
            } else {
                refusal
            };
        }
        let m: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        self.accepted.lock().unwrap().push((
            m["id"].as_i64().unwrap(),
            m["to"].as_str().unwrap().to_owned(),
            m["body"].as_str().unwrap().to_owned(),
        ));
        ResponseTemplate::new(200)
    }
}

/// The answer to a request, which must come within [`ANSWER_BOUND`].
async fn bounded<T>(what: &str, request: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(ANSWER_BOUND, request)
        .await
        .unwrap_or_else(|_| panic!("{what} did not answer"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn codes_requested_during_an_sms_and_email_outage_are_delivered_once_each_afterwards() {
    let started_at = Instant::now();
    let gateway = Gateway::default();
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/sms"))
        .respond_with(gateway.clone())
        .mount(&mock)
        .await;
    let smtp = SmtpServer::start().await;
    smtp.set_down(true);
    let server = TestServer::start_with(|c| {
        sms_gateway::configure(c, &mock);
        c.sms.timeout_ms = 500;
        c.email.provider = ghostkey::config::EmailProvider::Smtp;
        c.email.smtp_host = "127.0.0.1".into();
        c.email.smtp_port = smtp.port();
        c.email.smtp_tls = ghostkey::config::SmtpTls::None;
        c.email.from = "Ghostkey <no-reply@ghostkey.test>".into();
        c.email.timeout_ms = 2000;
        // Room for a long outage with the test's short retry delays.
        c.delivery.max_attempts = 50;
    });
    let app = server.register_app("Health");
    server.set_policy(
        &app,
        PolicyChange {
            requests_per_address_per_minute: Some(100_000),
            ..Default::default()
        },
    );
    // One enrolment per method: a user's first confirmed method removes their other
    // pending ones, and every code below must still confirm its own.
    for u in 0..USERS {
        for i in 0..3 {
            enrol(&server, &app, &format!("u{u}-{i}")).await;
        }
    }

    // Every user at once: a phone with two codes, two addresses with one each.
    let asked = Instant::now();
    let tasks: Vec<_> = (0..USERS)
        .map(|u| {
            let client = server.client();
            let app = app.clone_for_test();
            tokio::spawn(async move {
                let phone = format!("+33 6 20 00 {:02} {:02}", u / 100, u % 100);
                let (a, b) = (
                    format!("user{u}a@example.org"),
                    format!("user{u}b@example.org"),
                );
                let mut challenges = Vec::new();
                // A second code for the phone; one each for two addresses (mails carry no
                // outbox id to tell two codes to one address apart).
                for (i, (kind, to, resend)) in [
                    (MethodKind::Sms, &phone, true),
                    (MethodKind::Email, &a, false),
                    (MethodKind::Email, &b, false),
                ]
                .into_iter()
                .enumerate()
                {
                    let user = format!("u{u}-{i}");
                    let added = bounded(
                        "add method",
                        client.add_method(
                            &app.assertion(&user, Purpose::Enroll),
                            kind,
                            Some(to),
                            None,
                        ),
                    )
                    .await
                    .unwrap();
                    let mut newest = added.challenge.id;
                    if resend {
                        newest = bounded(
                            "new code",
                            client.start_challenge(
                                &app.assertion(&user, Purpose::Enroll),
                                &added.method.id,
                                ChallengePurpose::Confirm,
                            ),
                        )
                        .await
                        .unwrap()
                        .id;
                    }
                    challenges.push((kind, to.clone(), newest));
                }
                challenges
            })
        })
        .collect();
    let mut challenges = Vec::new();
    for t in tasks {
        challenges.push(t.await.unwrap());
    }
    let requests = USERS * 4;
    // Two SMS and two e-mails per user.
    let answered_in = asked.elapsed();
    let messages = requests as i64;
    assert_eq!(server.count("outbox"), messages);

    // The outage goes on until every message has been tried and refused at least twice.
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.query_i64("SELECT min(attempts) FROM outbox") < 2 {
        assert!(Instant::now() < deadline, "the worker does not retry");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gateway.accepted.lock().unwrap().is_empty());
    assert!(smtp.messages().is_empty());
    assert_eq!(
        server.query_i64("SELECT count(*) FROM outbox WHERE state = 'pending'"),
        messages,
        "nothing given up during the outage"
    );
    let refused_sms = gateway.refused.load(Ordering::SeqCst);
    let refused_smtp = smtp.connections();

    // Both providers return.
    let back = Instant::now();
    gateway.state.store(UP, Ordering::SeqCst);
    smtp.set_down(false);
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.query_i64("SELECT count(*) FROM outbox WHERE state = 'sent'") < messages {
        assert!(
            Instant::now() < deadline,
            "{} of {messages} messages sent",
            server.query_i64("SELECT count(*) FROM outbox WHERE state = 'sent'")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let delivered_in = back.elapsed();
    // A few more worker polls: nothing is sent a second time.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let sms = gateway.accepted.lock().unwrap().clone();
    let mails = smtp.messages();
    assert_eq!(sms.len() + mails.len(), messages as usize);
    let mut per_id: HashMap<i64, usize> = HashMap::new();
    for (id, _, _) in &sms {
        *per_id.entry(*id).or_default() += 1;
    }
    assert_eq!(per_id.len(), USERS * 2);
    assert!(per_id.values().all(|&n| n == 1), "an SMS went out twice");
    let mut per_mail: HashMap<(String, String), usize> = HashMap::new();
    for m in &mails {
        let code = find_code(&m.data, 8).expect("a code in every mail");
        *per_mail.entry((m.to.join(","), code)).or_default() += 1;
    }
    assert_eq!(per_mail.len(), USERS * 2);
    assert!(per_mail.values().all(|&n| n == 1), "a mail went out twice");

    // Every code still confirms: for a phone, the newer code (the higher outbox id; retries
    // may have changed the delivery order) answers the newer challenge.
    let client = server.client();
    for user_challenges in &challenges {
        for (kind, to, newest) in user_challenges {
            let code = match kind {
                MethodKind::Sms => {
                    let e164: String = to.chars().filter(|c| *c != ' ').collect();
                    let (_, _, body) = sms
                        .iter()
                        .filter(|(_, dest, _)| *dest == e164)
                        .max_by_key(|(id, _, _)| *id)
                        .unwrap();
                    find_code(body, 8).unwrap()
                }
                _ => {
                    let mail = mails.iter().find(|m| m.to == [to.clone()]).unwrap();
                    find_code(&mail.data, 8).unwrap()
                }
            };
            client.answer(newest, &code).await.unwrap();
        }
    }
    eprintln!(
        "{requests} code requests from {USERS} clients answered in {:.1} s during the outage; \
         {refused_sms} SMS attempts refused and {refused_smtp} SMTP connections refused; \
         {} SMS and {} e-mails delivered once each {:.1} s after the providers returned; \
         whole test {:.1} s",
        answered_in.as_secs_f64(),
        sms.len(),
        mails.len(),
        delivered_in.as_secs_f64(),
        started_at.elapsed().as_secs_f64()
    );
}
