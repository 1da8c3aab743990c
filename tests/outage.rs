//! Provider outage under load: many clients ask for codes at once, half while the SMS
//! gateway hangs (it takes connections and answers nothing) and half while the SMTP server
//! does; then both refuse everything. Every request is answered well inside the providers'
//! send timeout, so none waited for a provider; the fakes record every attempt they hold
//! or refuse, and once both providers are back every queued code is delivered exactly once
//! and still confirms its method. (tests/outbox.rs covers one SMS message through retries, permanent refusals
//! and a restart.)

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::smtp_server::SmtpServer;
use common::{enrol, find_code, sms_gateway, wait_outbox_settled, wait_until, TestServer};
use ghostkey::domain::policy::PolicyChange;
use ghostkey_client::proto::api::{ChallengePurpose, MethodKind};
use ghostkey_client::proto::assertion::Purpose;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const USERS: usize = 40;
/// Ghostkey's send timeout for both providers in this test: a request that waited for a
/// provider that hangs would take at least this long.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Every answer during the outage comes within a third of the send timeout: a request
/// that waited for a hanging provider, even once, could not.
const ANSWER_BOUND: Duration = Duration::from_secs(20);

/// The SMS gateway's states.
const DOWN: u8 = 0;
const UP: u8 = 1;

/// One request the SMS gateway received.
#[derive(Debug, Clone)]
struct SmsRequest {
    /// The outbox id (the idempotency key).
    id: i64,
    to: String,
    body: String,
    /// Accepted (200), or refused (503).
    accepted: bool,
}

/// An SMS gateway that is down (503) or up (200), recording every request with what it
/// answered.
#[derive(Clone)]
struct Gateway {
    state: Arc<AtomicU8>,
    requests: Arc<Mutex<Vec<SmsRequest>>>,
}

impl Gateway {
    fn requests(&self) -> Vec<SmsRequest> {
        self.requests.lock().unwrap().clone()
    }
}

impl wiremock::Respond for Gateway {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let up = self.state.load(Ordering::SeqCst) == UP;
        let m: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
        self.requests.lock().unwrap().push(SmsRequest {
            id: m["id"].as_i64().unwrap(),
            to: m["to"].as_str().unwrap().to_owned(),
            body: m["body"].as_str().unwrap().to_owned(),
            accepted: up,
        });
        ResponseTemplate::new(if up { 200 } else { 503 })
    }
}

/// A provider that hangs: in front of a fake provider (the SMS gateway, the SMTP server),
/// it takes each connection and answers nothing until released, then closes it; once
/// released it passes connections through.
struct HangingFront {
    port: u16,
    /// Connections held without an answer.
    hung: Arc<AtomicUsize>,
    release: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl HangingFront {
    async fn start(backend_port: u16) -> HangingFront {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hung = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let shared_hung = Arc::clone(&hung);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let hung = Arc::clone(&shared_hung);
                let mut released = released.clone();
                tokio::spawn(async move {
                    if !*released.borrow() {
                        hung.fetch_add(1, Ordering::SeqCst);
                        // Held, bounded in case the test fails before releasing it.
                        tokio::select! {
                            _ = released.wait_for(|r| *r) => {}
                            _ = tokio::time::sleep(2 * SEND_TIMEOUT) => {}
                        }
                        return;
                    }
                    let mut outbound = tokio::net::TcpStream::connect(("127.0.0.1", backend_port))
                        .await
                        .unwrap();
                    // Either side closing ends the session; nothing to report.
                    tokio::io::copy_bidirectional(&mut inbound, &mut outbound)
                        .await
                        .ok();
                });
            }
        });
        HangingFront {
            port,
            hung,
            release,
            task,
        }
    }

    fn hung(&self) -> usize {
        self.hung.load(Ordering::SeqCst)
    }

    /// Ends the hang: held connections are closed, new ones pass through.
    fn release(&self) {
        self.release.send_replace(true);
    }
}

impl Drop for HangingFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs a request, returning its answer and how long it took; fails the test if it takes
/// [`ANSWER_BOUND`].
async fn timed<T>(what: &str, request: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let answer = tokio::time::timeout(ANSWER_BOUND, request)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{what} took {ANSWER_BOUND:?} while a provider hung: answers must not wait \
                 for a provider (send timeout {SEND_TIMEOUT:?})"
            )
        });
    (answer, started.elapsed())
}

/// Users `users` all at once, each asking for two codes for a phone and one each for two
/// addresses; returns the newest challenge of each method and how long each request took.
async fn burst(
    client: &ghostkey_client::Client,
    app: &common::TestApp,
    users: std::ops::Range<usize>,
) -> (Vec<(MethodKind, String, String)>, Vec<Duration>) {
    let tasks: Vec<_> = users
        .map(|u| {
            let client = client.clone();
            let app = app.clone_for_test();
            tokio::spawn(async move {
                let phone = format!("+33 6 20 00 {:02} {:02}", u / 100, u % 100);
                let (a, b) = (
                    format!("user{u}a@example.org"),
                    format!("user{u}b@example.org"),
                );
                let mut challenges = Vec::new();
                let mut took = Vec::new();
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
                    let assertion = app.assertion(&user, Purpose::Enroll);
                    let (added, t) = timed(
                        "adding a method",
                        client.add_method(&assertion, kind, Some(to), None),
                    )
                    .await;
                    took.push(t);
                    let added = added.unwrap();
                    let mut newest = added.challenge.id;
                    if resend {
                        let assertion = app.assertion(&user, Purpose::Enroll);
                        let (again, t) = timed(
                            "a new code",
                            client.start_challenge(
                                &assertion,
                                &added.method.id,
                                ChallengePurpose::Confirm,
                            ),
                        )
                        .await;
                        took.push(t);
                        newest = again.unwrap().id;
                    }
                    challenges.push((kind, to.clone(), newest));
                }
                (challenges, took)
            })
        })
        .collect();
    let mut challenges = Vec::new();
    let mut took = Vec::new();
    for t in tasks {
        let (c, t) = t.await.unwrap();
        challenges.extend(c);
        took.extend(t);
    }
    (challenges, took)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn codes_requested_during_an_sms_and_email_outage_are_delivered_once_each_afterwards() {
    let started_at = Instant::now();
    let gateway = Gateway {
        state: Arc::new(AtomicU8::new(DOWN)),
        requests: Arc::default(),
    };
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/sms"))
        .respond_with(gateway.clone())
        .mount(&mock)
        .await;
    let sms_front = HangingFront::start(mock.address().port()).await;
    let smtp = SmtpServer::start().await;
    smtp.set_down(true);
    let smtp_front = HangingFront::start(smtp.port()).await;
    let server = TestServer::start_with(|c| {
        sms_gateway::configure(c, &mock);
        c.sms.webhook.url = format!("http://127.0.0.1:{}/sms", sms_front.port);
        c.sms.timeout_ms = SEND_TIMEOUT.as_millis() as u64;
        c.email.provider = ghostkey::config::EmailProvider::Smtp;
        c.email.smtp_host = "127.0.0.1".into();
        c.email.smtp_port = smtp_front.port;
        c.email.smtp_tls = ghostkey::config::SmtpTls::None;
        c.email.from = "Ghostkey <no-reply@ghostkey.test>".into();
        c.email.timeout_ms = SEND_TIMEOUT.as_millis() as u64;
        // Room for a long outage with the test's short retry delays.
        c.delivery.max_attempts = 50;
        c.metrics.listen = Some("127.0.0.1:0".parse().unwrap());
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

    // Every user at once, in two halves: the first while the SMS gateway hangs (each
    // user's first request is for a phone, so the worker's first message is an SMS), the
    // second while the SMTP server hangs. Each request is timed.
    let client = server.client();
    let asked = Instant::now();
    let (mut challenges, mut took) = burst(&client, &app, 0..USERS / 2).await;
    let hung_sms = sms_front.hung();
    assert!(
        hung_sms >= 1,
        "the SMS gateway was not hanging while the first half was answered"
    );
    assert!(gateway.requests().is_empty() && smtp.connections() == 0);
    // The gateway refuses at once from now on: the worker moves on to an e-mail, and the
    // SMTP server holds it.
    sms_front.release();
    wait_until(
        "the worker to be held by the SMTP server",
        Duration::from_secs(30),
        || (smtp_front.hung() >= 1).then_some(()),
    )
    .await;
    let (more, more_took) = burst(&client, &app, USERS / 2..USERS).await;
    let hung_smtp = smtp_front.hung();
    assert_eq!(
        smtp.connections(),
        0,
        "an e-mail got through while the SMTP server should have been hanging"
    );
    challenges.extend(more);
    took.extend(more_took);
    let burst = asked.elapsed();
    // Two SMS and two e-mails per user.
    let requests = USERS * 4;
    assert_eq!(took.len(), requests);
    let slowest = took.iter().copied().max().unwrap();
    let mean = took.iter().sum::<Duration>() / requests as u32;
    assert!(slowest < ANSWER_BOUND);
    let messages = requests as i64;
    assert_eq!(server.count("outbox"), messages);

    // The providers stop hanging and refuse at once; the outage goes on until every
    // message has been tried and refused at least twice.
    smtp_front.release();
    wait_until(
        "every message to be tried twice during the outage",
        Duration::from_secs(60),
        || {
            (server
                .query_i64("SELECT count(*) FROM outbox WHERE state = 'pending' AND attempts < 2")
                == 0)
                .then_some(())
        },
    )
    .await;
    // Nothing was delivered: the store has every message pending, and every SMS request
    // the gateway received so far was refused (it records refusals too: every message
    // reached it).
    assert_eq!(
        server.query_i64("SELECT count(*) FROM outbox WHERE state = 'pending'"),
        messages,
        "nothing given up or marked sent during the outage"
    );
    let during = gateway.requests();
    assert!(during.iter().all(|r| !r.accepted));
    assert!(smtp.messages().is_empty());
    let mut sms_ids: Vec<i64> = during.iter().map(|r| r.id).collect();
    sms_ids.sort();
    sms_ids.dedup();
    assert_eq!(
        sms_ids.len(),
        USERS * 2,
        "every SMS reached the gateway, and was refused, during the outage"
    );
    let refused_sms = during.len();
    let refused_smtp = smtp.connections();
    assert!(
        refused_smtp + hung_smtp >= USERS * 2 * 2,
        "every e-mail tried at least twice"
    );

    // Both providers return.
    let back = Instant::now();
    gateway.state.store(UP, Ordering::SeqCst);
    smtp.set_down(false);
    wait_until(
        "every message to be sent once the providers are back",
        Duration::from_secs(60),
        || {
            (server.query_i64("SELECT count(*) FROM outbox WHERE state = 'sent'") == messages)
                .then_some(())
        },
    )
    .await;
    let delivered_in = back.elapsed();
    // The outbox settles: nothing pending, the worker idle, and as many sends counted as
    // the store records attempts. Only then is "exactly once" checked.
    let settled = wait_outbox_settled(&server, 0, Duration::from_secs(20)).await;
    assert_eq!((settled.sent, settled.failed), (messages, 0));

    let all_sms = gateway.requests();
    let sms: Vec<SmsRequest> = all_sms.iter().filter(|r| r.accepted).cloned().collect();
    let mails = smtp.messages();
    assert_eq!(sms.len() + mails.len(), messages as usize);
    // Each provider saw exactly the attempts the store counts, held, refused or accepted.
    let attempts_by = |kind: &str| {
        server.query_i64(&format!(
            "SELECT coalesce(sum(o.attempts), 0) FROM outbox o \
             JOIN methods m ON m.id = o.method_id WHERE m.kind = '{kind}'"
        ))
    };
    let (sms_attempts, mail_attempts) = (attempts_by("sms"), attempts_by("email"));
    assert_eq!(sms_attempts + mail_attempts, settled.attempts);
    assert_eq!((all_sms.len() + hung_sms) as i64, sms_attempts);
    assert_eq!((smtp.connections() + hung_smtp) as i64, mail_attempts);
    let mut per_id: HashMap<i64, usize> = HashMap::new();
    for r in &sms {
        *per_id.entry(r.id).or_default() += 1;
    }
    assert_eq!(per_id.len(), USERS * 2);
    assert!(per_id.values().all(|&n| n == 1), "an SMS went out twice");
    // Each SMS was refused until its last attempt, the one accepted.
    for r in &all_sms {
        let last = all_sms.iter().rposition(|o| o.id == r.id).unwrap();
        assert!(all_sms[last].accepted, "message {} ended refused", r.id);
    }
    let mut per_mail: HashMap<(String, String), usize> = HashMap::new();
    for m in &mails {
        let code = find_code(&m.data, 8).expect("a code in every mail");
        *per_mail.entry((m.to.join(","), code)).or_default() += 1;
    }
    assert_eq!(per_mail.len(), USERS * 2);
    assert!(per_mail.values().all(|&n| n == 1), "a mail went out twice");

    // Every code still confirms: for a phone, the newer code (the higher outbox id; retries
    // may have changed the delivery order) answers the newer challenge.
    for (kind, to, newest) in &challenges {
        let code = match kind {
            MethodKind::Sms => {
                let e164: String = to.chars().filter(|c| *c != ' ').collect();
                let newest_sms = sms
                    .iter()
                    .filter(|r| r.to == e164)
                    .max_by_key(|r| r.id)
                    .unwrap();
                find_code(&newest_sms.body, 8).unwrap()
            }
            _ => {
                let mail = mails.iter().find(|m| m.to == [to.clone()]).unwrap();
                find_code(&mail.data, 8).unwrap()
            }
        };
        client.answer(newest, &code).await.unwrap();
    }
    eprintln!(
        "{requests} code requests from {USERS} clients in {:.1} s, half while the SMS gateway \
         hung, half while the SMTP server hung ({hung_sms} SMS and {hung_smtp} SMTP \
         connections held): slowest answer {:.0} ms, \
         mean {:.0} ms (bound {} ms, send timeout {} ms); during the outage {refused_sms} SMS \
         attempts and {refused_smtp} SMTP connections refused; {} SMS and {} e-mails \
         delivered once each {:.1} s after the providers returned; whole test {:.1} s",
        burst.as_secs_f64(),
        slowest.as_secs_f64() * 1000.0,
        mean.as_secs_f64() * 1000.0,
        ANSWER_BOUND.as_millis(),
        SEND_TIMEOUT.as_millis(),
        sms.len(),
        mails.len(),
        delivered_in.as_secs_f64(),
        started_at.elapsed().as_secs_f64()
    );
}
