//! The channel adapters against real local servers: wiremock standing in for Twilio and
//! for an operator's webhook gateway, answering as the real APIs do, and a small real
//! SMTP server.

#[path = "common/smtp_server.rs"]
mod smtp_server;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use ghostkey::config::{Config, EmailConfig, EmailProvider, SmsProvider, SmtpTls, TwilioConfig};
use ghostkey::delivery::dev_log::DevLogSender;
use ghostkey::delivery::setup::from_config;
use ghostkey::delivery::smtp::SmtpSender;
use ghostkey::delivery::twilio::TwilioSender;
use ghostkey::delivery::webhook::{signature_header, WebhookSender};
use ghostkey::delivery::{Outgoing, SendError, Sender};
use hmac::{Hmac, Mac};
use secrecy::SecretString;
use sha2::Sha256;
use smtp_server::SmtpServer;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const PHONE: &str = "+15005550001";
const CODE_BODY: &str = "Your Ghostkey code is 493817";
const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
const AUTH_TOKEN: &str = "twilio-token-3f9a";
const TWILIO_PATH: &str = "/2010-04-01/Accounts/AC0123456789abcdef0123456789abcdef/Messages.json";
const WEBHOOK_SECRET: &str = "whsec_5b1c9e";
const EMAIL: &str = "patient@example.net";

fn sms(id: i64) -> Outgoing {
    Outgoing {
        id,
        to: SecretString::from(PHONE),
        subject: String::new(),
        body: SecretString::from(CODE_BODY),
    }
}

fn mail(id: i64, to: &str, body: &str) -> Outgoing {
    Outgoing {
        id,
        to: SecretString::from(to),
        subject: "Your verification code".to_owned(),
        body: SecretString::from(body),
    }
}

/// The reason of an error, after checking it holds no destination, body or code.
fn reason(e: &SendError) -> &str {
    let reason = match e {
        SendError::Transient { reason, .. } | SendError::Permanent { reason } => reason.as_str(),
    };
    for secret in [
        PHONE,
        "5005550001",
        CODE_BODY,
        "493817",
        EMAIL,
        AUTH_TOKEN,
        WEBHOOK_SECRET,
    ] {
        assert!(
            !reason.contains(secret),
            "reason leaks {secret:?}: {reason}"
        );
    }
    reason
}

fn assert_transient(e: &SendError) -> Option<Duration> {
    match e {
        SendError::Transient { retry_after, .. } => *retry_after,
        SendError::Permanent { reason } => panic!("expected transient, got permanent: {reason}"),
    }
}

fn assert_permanent(e: &SendError) {
    assert!(
        matches!(e, SendError::Permanent { .. }),
        "expected permanent: {e}"
    );
}

fn form(request: &Request) -> Vec<(String, String)> {
    let body = String::from_utf8(request.body.clone()).unwrap();
    reqwest::Url::parse(&format!("http://form.invalid/?{body}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A port on which nothing listens.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------------------
// Twilio

fn twilio_config(base_url: &str) -> TwilioConfig {
    TwilioConfig {
        base_url: base_url.to_owned(),
        account_sid: ACCOUNT_SID.to_owned(),
        from: Some("+15005550006".to_owned()),
        ..TwilioConfig::default()
    }
}

fn twilio(base_url: &str, timeout: Duration) -> TwilioSender {
    TwilioSender::new(
        &twilio_config(base_url),
        SecretString::from(AUTH_TOKEN),
        timeout,
    )
    .unwrap()
}

/// Twilio's answer to an accepted message (abridged).
fn twilio_queued() -> ResponseTemplate {
    ResponseTemplate::new(201).set_body_json(serde_json::json!({
        "sid": "SM1f0e6b2c3d4e5f60718293a4b5c6d7e8",
        "status": "queued",
        "to": PHONE,
        "body": CODE_BODY,
    }))
}

/// Twilio's error document, whose `message` echoes the number.
fn twilio_error(status: u16, code: u64, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(serde_json::json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status,
    }))
}

#[tokio::test]
async fn twilio_posts_the_form_with_basic_auth_to_the_messages_resource() {
    let server = MockServer::start().await;
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("{ACCOUNT_SID}:{AUTH_TOKEN}"));
    Mock::given(method("POST"))
        .and(path(TWILIO_PATH))
        .and(header(
            "authorization",
            format!("Basic {credentials}").as_str(),
        ))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .respond_with(twilio_queued())
        .expect(1)
        .mount(&server)
        .await;

    let sender = twilio(&server.uri(), Duration::from_secs(5));
    assert_eq!(sender.name(), "twilio");
    assert!(!sender.is_development());
    sender.send(&sms(1)).await.unwrap();

    server.verify().await;
    let requests = server.received_requests().await.unwrap();
    let fields = form(&requests[0]);
    assert_eq!(field(&fields, "To"), Some(PHONE));
    assert_eq!(field(&fields, "From"), Some("+15005550006"));
    assert_eq!(field(&fields, "Body"), Some(CODE_BODY));
    assert_eq!(field(&fields, "MessagingServiceSid"), None);
}

#[tokio::test]
async fn twilio_sends_from_a_messaging_service_when_configured() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(TWILIO_PATH))
        .respond_with(twilio_queued())
        .expect(1)
        .mount(&server)
        .await;
    // A trailing slash on the base URL must not double the separator.
    let cfg = TwilioConfig {
        from: None,
        messaging_service_sid: Some("MG0123456789abcdef0123456789abcdef".to_owned()),
        ..twilio_config(&format!("{}/", server.uri()))
    };
    let sender =
        TwilioSender::new(&cfg, SecretString::from(AUTH_TOKEN), Duration::from_secs(5)).unwrap();
    sender.send(&sms(2)).await.unwrap();

    let requests = server.received_requests().await.unwrap();
    let fields = form(&requests[0]);
    assert_eq!(
        field(&fields, "MessagingServiceSid"),
        Some("MG0123456789abcdef0123456789abcdef")
    );
    assert_eq!(field(&fields, "From"), None);
}

#[tokio::test]
async fn twilio_invalid_number_is_permanent_with_the_code_and_without_the_number() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(twilio_error(
            400,
            21211,
            &format!("The 'To' number {PHONE} is not a valid phone number."),
        ))
        .mount(&server)
        .await;
    let e = twilio(&server.uri(), Duration::from_secs(5))
        .send(&sms(3))
        .await
        .unwrap_err();
    assert_permanent(&e);
    let reason = reason(&e);
    assert!(reason.contains("21211"), "{reason}");
    assert!(reason.contains("HTTP 400"), "{reason}");
    assert!(
        !reason.contains("not a valid"),
        "Twilio's message text leaked: {reason}"
    );
}

#[tokio::test]
async fn twilio_other_client_errors_are_permanent_even_without_a_json_body() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(404).set_body_string("<html>not found</html>"))
        .mount(&server)
        .await;
    let e = twilio(&server.uri(), Duration::from_secs(5))
        .send(&sms(4))
        .await
        .unwrap_err();
    assert_permanent(&e);
    assert!(reason(&e).contains("HTTP 404"), "{e}");
}

#[tokio::test]
async fn twilio_rate_limit_is_transient_with_retry_after() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            twilio_error(429, 20429, "Too Many Requests").insert_header("Retry-After", "7"),
        )
        .mount(&server)
        .await;
    let e = twilio(&server.uri(), Duration::from_secs(5))
        .send(&sms(5))
        .await
        .unwrap_err();
    assert_eq!(assert_transient(&e), Some(Duration::from_secs(7)));
    assert!(reason(&e).contains("429"), "{e}");
}

#[tokio::test]
async fn twilio_server_errors_are_transient() {
    for status in [500u16, 503] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(status).set_body_string("Service Unavailable"))
            .mount(&server)
            .await;
        let e = twilio(&server.uri(), Duration::from_secs(5))
            .send(&sms(6))
            .await
            .unwrap_err();
        assert_eq!(assert_transient(&e), None, "HTTP {status}");
        assert!(reason(&e).contains(&status.to_string()), "{e}");
    }
}

#[tokio::test]
async fn twilio_refused_credentials_are_transient_and_say_so() {
    for (status, code) in [(401u16, 20003u64), (403, 20005)] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(twilio_error(status, code, "Authenticate"))
            .mount(&server)
            .await;
        let e = twilio(&server.uri(), Duration::from_secs(5))
            .send(&sms(7))
            .await
            .unwrap_err();
        assert_transient(&e);
        let reason = reason(&e);
        assert!(reason.contains("credentials"), "{reason}");
        assert!(reason.contains(&code.to_string()), "{reason}");
    }
}

#[tokio::test]
async fn twilio_request_timeout_status_is_transient() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(408))
        .mount(&server)
        .await;
    let e = twilio(&server.uri(), Duration::from_secs(5))
        .send(&sms(8))
        .await
        .unwrap_err();
    assert_transient(&e);
}

#[tokio::test]
async fn twilio_slow_answer_is_a_transient_timeout_within_the_configured_time() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(twilio_queued().set_delay(Duration::from_secs(10)))
        .mount(&server)
        .await;
    let started = Instant::now();
    let e = twilio(&server.uri(), Duration::from_millis(300))
        .send(&sms(9))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_transient(&e);
    assert!(reason(&e).contains("timed out"), "{e}");
}

#[tokio::test]
async fn twilio_unreachable_is_transient() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let e = twilio(&url, Duration::from_secs(5))
        .send(&sms(10))
        .await
        .unwrap_err();
    assert_transient(&e);
    assert!(reason(&e).contains("connection"), "{e}");
}

#[test]
fn twilio_configuration_errors_name_the_key() {
    let token = || SecretString::from(AUTH_TOKEN);
    let t = Duration::from_secs(1);
    let both = TwilioConfig {
        messaging_service_sid: Some("MG1".to_owned()),
        ..twilio_config("https://api.twilio.com")
    };
    let e = TwilioSender::new(&both, token(), t).err().unwrap();
    assert!(e.contains("sms.twilio.from"), "{e}");
    let neither = TwilioConfig {
        from: None,
        ..twilio_config("https://api.twilio.com")
    };
    let e = TwilioSender::new(&neither, token(), t).err().unwrap();
    assert!(e.contains("sms.twilio.messaging_service_sid"), "{e}");
    let bad_sid = TwilioConfig {
        account_sid: "AC123/../x".to_owned(),
        ..twilio_config("https://api.twilio.com")
    };
    let e = TwilioSender::new(&bad_sid, token(), t).err().unwrap();
    assert!(e.contains("sms.twilio.account_sid"), "{e}");
    let e = TwilioSender::new(&twilio_config("ftp://x"), token(), t)
        .err()
        .unwrap();
    assert!(e.contains("sms.twilio.base_url"), "{e}");
    let e = TwilioSender::new(
        &twilio_config("https://api.twilio.com"),
        SecretString::from(""),
        t,
    )
    .err()
    .unwrap();
    assert!(e.contains("sms.twilio.auth_token"), "{e}");
}

// ---------------------------------------------------------------------------------------
// Webhook

fn webhook(url: &str, timeout: Duration) -> WebhookSender {
    WebhookSender::new(url, SecretString::from(WEBHOOK_SECRET), timeout).unwrap()
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn webhook_posts_signed_json_with_an_idempotency_key() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/gateway/sms"))
        .and(header("content-type", "application/json"))
        .and(header("idempotency-key", "42"))
        .respond_with(ResponseTemplate::new(202))
        .expect(1)
        .mount(&server)
        .await;
    let sender = webhook(
        &format!("{}/gateway/sms", server.uri()),
        Duration::from_secs(5),
    );
    assert_eq!(sender.name(), "webhook");
    sender.send(&sms(42)).await.unwrap();
    server.verify().await;

    let request = &server.received_requests().await.unwrap()[0];
    let json: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"id": 42, "channel": "sms", "to": PHONE, "body": CODE_BODY})
    );

    // Verify the signature as a receiver would: over the raw body, with the hmac crate.
    let signature = request
        .headers
        .get("ghostkey-signature")
        .unwrap()
        .to_str()
        .unwrap();
    let (t, v1) = signature
        .strip_prefix("t=")
        .and_then(|rest| rest.split_once(",v1="))
        .unwrap();
    let t: i64 = t.parse().unwrap();
    assert!((now() - t).abs() <= 60, "timestamp {t} is not now");
    let mut mac = Hmac::<Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(&request.body);
    mac.verify_slice(&hex::decode(v1).unwrap()).unwrap();
    assert_eq!(v1, v1.to_lowercase());
    assert_eq!(v1.len(), 64);
}

#[test]
fn signature_header_matches_a_known_answer_and_hmac_for_any_key_length() {
    // Computed independently with Python's hmac module.
    assert_eq!(
        signature_header(b"whsec_test", 1_700_000_000, br#"{"id":1}"#),
        "t=1700000000,v1=2f441ba4b3b2d50d28a9ab9d9fd8880376ecd1eb5d0435401553f5d8d0a5dcf8"
    );
    // A key longer than SHA-256's block is hashed first (RFC 2104).
    assert_eq!(
        signature_header(&[b'k'; 100], 1_700_000_000, br#"{"id":1}"#),
        "t=1700000000,v1=316ab633a1f9a5b00e78da836a991c77a15e567848b716992cac91528f8b9df1"
    );
    let body = br#"{"id":7,"channel":"sms","to":"+1","body":"x"}"#;
    for len in [0usize, 1, 32, 63, 64, 65, 131] {
        let key = vec![0xa5u8; len];
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(b"-5.");
        mac.update(body);
        let expected = format!("t=-5,v1={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(
            signature_header(&key, -5, body),
            expected,
            "key length {len}"
        );
    }
}

#[tokio::test]
async fn webhook_client_errors_are_permanent() {
    for status in [400u16, 404, 422] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(
                ResponseTemplate::new(status)
                    .set_body_json(serde_json::json!({"error": format!("bad number {PHONE}")})),
            )
            .mount(&server)
            .await;
        let e = webhook(&server.uri(), Duration::from_secs(5))
            .send(&sms(11))
            .await
            .unwrap_err();
        assert_permanent(&e);
        assert!(reason(&e).contains(&status.to_string()), "{e}");
    }
}

#[tokio::test]
async fn webhook_retryable_statuses_are_transient() {
    for (status, retry_after) in [(429u16, Some(7u64)), (500, None), (502, None), (408, None)] {
        let server = MockServer::start().await;
        let mut answer = ResponseTemplate::new(status);
        if let Some(secs) = retry_after {
            answer = answer.insert_header("Retry-After", secs.to_string().as_str());
        }
        Mock::given(method("POST"))
            .respond_with(answer)
            .mount(&server)
            .await;
        let e = webhook(&server.uri(), Duration::from_secs(5))
            .send(&sms(12))
            .await
            .unwrap_err();
        assert_eq!(
            assert_transient(&e),
            retry_after.map(Duration::from_secs),
            "HTTP {status}"
        );
        assert!(reason(&e).contains(&status.to_string()), "{e}");
    }
}

#[tokio::test]
async fn webhook_refused_signature_is_transient_so_messages_survive_a_secret_mixup() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&server)
        .await;
    let e = webhook(&server.uri(), Duration::from_secs(5))
        .send(&sms(13))
        .await
        .unwrap_err();
    assert_transient(&e);
    assert!(reason(&e).contains("sms.webhook.secret"), "{e}");
}

#[tokio::test]
async fn webhook_slow_answer_is_a_transient_timeout() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(10)))
        .mount(&server)
        .await;
    let started = Instant::now();
    let e = webhook(&server.uri(), Duration::from_millis(300))
        .send(&sms(14))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_transient(&e);
    assert!(reason(&e).contains("timed out"), "{e}");
}

#[tokio::test]
async fn webhook_unreachable_is_transient() {
    let url = format!("http://127.0.0.1:{}/sms", closed_port());
    let e = webhook(&url, Duration::from_secs(5))
        .send(&sms(15))
        .await
        .unwrap_err();
    assert_transient(&e);
}

#[test]
fn webhook_configuration_errors_name_the_key() {
    let t = Duration::from_secs(1);
    let e = WebhookSender::new("not a url", SecretString::from("s"), t)
        .err()
        .unwrap();
    assert!(e.contains("sms.webhook.url"), "{e}");
    let e = WebhookSender::new("https://gw.example.org/sms", SecretString::from(""), t)
        .err()
        .unwrap();
    assert!(e.contains("sms.webhook.secret"), "{e}");
}

// ---------------------------------------------------------------------------------------
// SMTP

fn email_config(port: u16, timeout_ms: u64) -> EmailConfig {
    EmailConfig {
        provider: EmailProvider::Smtp,
        smtp_host: "127.0.0.1".to_owned(),
        smtp_port: port,
        smtp_tls: SmtpTls::None,
        smtp_ca_file: None,
        smtp_username: None,
        smtp_password: None,
        smtp_password_file: None,
        from: "Ghostkey <no-reply@example.org>".to_owned(),
        subject: "Your verification code".to_owned(),
        timeout_ms,
    }
}

fn smtp(port: u16) -> SmtpSender {
    SmtpSender::new(&email_config(port, 5000), None).unwrap()
}

#[tokio::test]
async fn smtp_delivers_the_message_with_to_subject_and_body() {
    let server = SmtpServer::start().await;
    let sender = smtp(server.port());
    assert_eq!(sender.name(), "smtp");
    // A line holding a single dot must not end the DATA section early.
    let body = "Your Ghostkey code is 493817\r\n.\r\nIt expires in 10 minutes.";
    sender.send(&mail(20, EMAIL, body)).await.unwrap();

    let messages = server.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(m.from, "no-reply@example.org");
    assert_eq!(m.to, vec![EMAIL.to_owned()]);
    assert!(
        m.data.contains("Subject: Your verification code\r\n"),
        "{}",
        m.data
    );
    assert!(m.data.contains(&format!("To: {EMAIL}\r\n")), "{}", m.data);
    assert!(
        m.data.contains("From: Ghostkey <no-reply@example.org>\r\n"),
        "{}",
        m.data
    );
    assert!(m.data.contains("Content-Type: text/plain"), "{}", m.data);
    assert!(
        m.data
            .contains("Your Ghostkey code is 493817\r\n.\r\nIt expires in 10 minutes."),
        "{}",
        m.data
    );
}

#[tokio::test]
async fn smtp_rejected_recipient_is_permanent_with_the_code_only() {
    let server = SmtpServer::start().await;
    server.fail_next(&format!("550 5.1.1 <{EMAIL}>: no such user"));
    let e = smtp(server.port())
        .send(&mail(21, EMAIL, CODE_BODY))
        .await
        .unwrap_err();
    assert_permanent(&e);
    assert_eq!(reason(&e), "smtp 550");
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn smtp_temporary_refusal_is_transient_and_the_next_attempt_delivers() {
    let server = SmtpServer::start().await;
    server.fail_next("451 4.3.0 try later");
    let sender = smtp(server.port());
    let e = sender.send(&mail(22, EMAIL, CODE_BODY)).await.unwrap_err();
    assert_transient(&e);
    assert_eq!(reason(&e), "smtp 451");
    sender.send(&mail(22, EMAIL, CODE_BODY)).await.unwrap();
    assert_eq!(server.wait_for(1, Duration::from_secs(5)).await.len(), 1);
}

#[tokio::test]
async fn smtp_server_down_is_transient_until_it_is_back() {
    let server = SmtpServer::start().await;
    server.set_down(true);
    let sender = smtp(server.port());
    let e = sender.send(&mail(23, EMAIL, CODE_BODY)).await.unwrap_err();
    assert_transient(&e);
    assert_eq!(reason(&e), "smtp 421");
    server.set_down(false);
    sender.send(&mail(23, EMAIL, CODE_BODY)).await.unwrap();
    assert_eq!(server.wait_for(1, Duration::from_secs(5)).await.len(), 1);
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn smtp_session_failure_is_transient() {
    let server = SmtpServer::start().await;
    server.fail_session(Some("454 4.7.0 temporary failure"));
    let e = smtp(server.port())
        .send(&mail(24, EMAIL, CODE_BODY))
        .await
        .unwrap_err();
    assert_transient(&e);
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn smtp_unparseable_address_is_permanent_without_echoing_it() {
    let server = SmtpServer::start().await;
    let e = smtp(server.port())
        .send(&mail(25, "patient at example dot net", CODE_BODY))
        .await
        .unwrap_err();
    assert_permanent(&e);
    assert_eq!(reason(&e), "invalid address");
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn smtp_unreachable_is_transient() {
    let e = smtp(closed_port())
        .send(&mail(26, EMAIL, CODE_BODY))
        .await
        .unwrap_err();
    assert_transient(&e);
    assert!(reason(&e).contains("connection"), "{e}");
}

#[tokio::test]
async fn smtp_silent_server_is_a_transient_timeout_within_the_configured_time() {
    // Accepts connections and never greets.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            open.push(stream);
        }
    });
    let sender = SmtpSender::new(&email_config(port, 300), None).unwrap();
    let started = Instant::now();
    let e = sender.send(&mail(27, EMAIL, CODE_BODY)).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_transient(&e);
    assert!(reason(&e).contains("timed out"), "{e}");
    held.abort();
}

#[test]
fn smtp_configuration_errors_name_the_key() {
    let cfg = EmailConfig {
        smtp_username: Some("ghostkey".to_owned()),
        ..email_config(25, 1000)
    };
    let e = SmtpSender::new(&cfg, None).err().unwrap();
    assert!(e.contains("email.smtp_password"), "{e}");
    let e = SmtpSender::new(&email_config(25, 1000), Some(SecretString::from("pw")))
        .err()
        .unwrap();
    assert!(e.contains("email.smtp_username"), "{e}");
    let cfg = EmailConfig {
        from: "not an address".to_owned(),
        ..email_config(25, 1000)
    };
    let e = SmtpSender::new(&cfg, None).err().unwrap();
    assert!(e.contains("email.from"), "{e}");
    for tls in [SmtpTls::Starttls, SmtpTls::Tls] {
        let cfg = EmailConfig {
            smtp_tls: tls,
            smtp_username: Some("ghostkey".to_owned()),
            ..email_config(587, 1000)
        };
        SmtpSender::new(&cfg, Some(SecretString::from("pw"))).unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// Development log

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends `message` through `sender` and returns the one JSON log line it wrote.
async fn logged_line(sender: &dyn Sender, message: &Outgoing) -> serde_json::Value {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    sender.send(message).await.unwrap();
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert_eq!(log.lines().count(), 1, "{log}");
    serde_json::from_str(&log).unwrap()
}

#[tokio::test]
async fn dev_log_writes_the_code_to_the_log_and_says_it_is_for_development() {
    let sender = DevLogSender::new("sms");
    assert!(sender.is_development());
    assert_eq!(sender.name(), "dev-log");
    let line = logged_line(&sender, &sms(77)).await;
    assert_eq!(line["level"], "WARN", "{line}");
    let fields = &line["fields"];
    assert_eq!(fields["outbox_id"], 77, "{line}");
    assert_eq!(fields["channel"], "sms", "{line}");
    assert_eq!(fields["to"], PHONE, "{line}");
    assert_eq!(fields["body"], CODE_BODY, "{line}");
}

// ---------------------------------------------------------------------------------------
// setup::from_config

fn twilio_settings(config: &mut Config, base_url: &str) {
    config.sms.provider = SmsProvider::Twilio;
    config.sms.twilio = twilio_config(base_url);
}

#[tokio::test]
async fn from_config_defaults_to_the_development_log_for_both_channels() {
    let senders = from_config(&Config::default()).unwrap();
    assert_eq!(senders.sms.name(), "dev-log");
    assert_eq!(senders.email.name(), "dev-log");
    assert!(senders.sms.is_development());
    assert!(senders.email.is_development());
    let line = logged_line(senders.sms.as_ref(), &sms(78)).await;
    assert_eq!(line["fields"]["channel"], "sms", "{line}");
    let line = logged_line(senders.email.as_ref(), &mail(79, EMAIL, CODE_BODY)).await;
    assert_eq!(line["fields"]["channel"], "email", "{line}");
    assert_eq!(line["fields"]["to"], EMAIL, "{line}");
}

#[test]
fn from_config_builds_the_configured_adapters() {
    let mut config = Config::default();
    twilio_settings(&mut config, "https://api.twilio.com");
    config.sms.twilio.auth_token = Some(SecretString::from(AUTH_TOKEN));
    config.email = email_config(25, 1000);
    let senders = from_config(&config).unwrap();
    assert_eq!(senders.sms.name(), "twilio");
    assert_eq!(senders.email.name(), "smtp");
    assert!(!senders.sms.is_development());
    assert!(!senders.email.is_development());

    config.sms.provider = SmsProvider::Webhook;
    config.sms.webhook.url = "https://gw.example.org/sms".to_owned();
    config.sms.webhook.secret = Some(SecretString::from(WEBHOOK_SECRET));
    assert_eq!(from_config(&config).unwrap().sms.name(), "webhook");
}

#[test]
fn from_config_names_the_missing_secret() {
    let mut config = Config::default();
    twilio_settings(&mut config, "https://api.twilio.com");
    let e = from_config(&config).err().unwrap();
    assert!(e.contains("sms.twilio.auth_token"), "{e}");

    let mut config = Config::default();
    config.sms.provider = SmsProvider::Webhook;
    config.sms.webhook.url = "https://gw.example.org/sms".to_owned();
    let e = from_config(&config).err().unwrap();
    assert!(e.contains("sms.webhook.secret"), "{e}");

    let config = Config {
        email: EmailConfig {
            smtp_username: Some("ghostkey".to_owned()),
            ..email_config(25, 1000)
        },
        ..Config::default()
    };
    let e = from_config(&config).err().unwrap();
    assert!(e.contains("email.smtp_password"), "{e}");

    let mut config = Config::default();
    twilio_settings(&mut config, "https://api.twilio.com");
    config.sms.twilio.auth_token_file = Some("/nonexistent/twilio-token".into());
    let e = from_config(&config).err().unwrap();
    assert!(e.contains("sms.twilio.auth_token_file"), "{e}");
}

#[tokio::test]
async fn from_config_reads_the_secret_file_and_the_timeout() {
    let server = MockServer::start().await;
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("{ACCOUNT_SID}:{AUTH_TOKEN}"));
    Mock::given(method("POST"))
        .and(path(TWILIO_PATH))
        .and(header(
            "authorization",
            format!("Basic {credentials}").as_str(),
        ))
        .respond_with(twilio_queued().set_delay(Duration::from_millis(700)))
        .expect(2)
        .mount(&server)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("twilio-token");
    std::fs::write(&token_file, format!("{AUTH_TOKEN}\n")).unwrap();

    let mut config = Config::default();
    twilio_settings(&mut config, &server.uri());
    config.sms.twilio.auth_token_file = Some(token_file);
    config.sms.timeout_ms = 5000;
    from_config(&config)
        .unwrap()
        .sms
        .send(&sms(30))
        .await
        .unwrap();

    // The same answer, slower than a shorter configured timeout.
    config.sms.timeout_ms = 200;
    let e = from_config(&config)
        .unwrap()
        .sms
        .send(&sms(31))
        .await
        .unwrap_err();
    assert_transient(&e);
    server.verify().await;
}

#[tokio::test]
async fn from_config_smtp_delivers_to_the_configured_server() {
    let server = SmtpServer::start().await;
    let config = Config {
        email: email_config(server.port(), 5000),
        ..Config::default()
    };
    from_config(&config)
        .unwrap()
        .email
        .send(&mail(32, EMAIL, CODE_BODY))
        .await
        .unwrap();
    let messages = server.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].to, vec![EMAIL.to_owned()]);
}
