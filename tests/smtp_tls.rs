//! E-mail to the SMTP relay with `email.smtp_tls = "starttls"`, against the loopback SMTP
//! server of `tests/common/smtp_server.rs`: a relay that does not offer STARTTLS, one that
//! refuses it, and one whose certificate is untrusted, for another name or expired, gets
//! nothing but EHLO (and STARTTLS) in clear: no address, no body, no code; the attempt is
//! a transient failure the outbox retries, and the message goes out once the relay offers
//! STARTTLS with a certificate trusted through `email.smtp_ca_file`, over TLS only. With
//! `smtp_tls = "tls"` (TLS from the first byte) the same certificates are refused before a
//! single SMTP command.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::smtp_server::SmtpServer;
use common::{enrol, find_code, TestServer};
use ghostkey::config::{EmailConfig, EmailProvider, SmtpTls};
use ghostkey::delivery::smtp::SmtpSender;
use ghostkey::delivery::{Outgoing, SendError, Sender};
use ghostkey_client::proto::api::{EnrollmentState, MethodKind};
use ghostkey_client::proto::assertion::Purpose;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use secrecy::SecretString;

const TO: &str = "jane.doe@example.org";
const CODE: &str = "48213907";
const BODY: &str = "Your Ghostkey code is 48213907";
const SUBJECT: &str = "Your verification code";
const USER: &str = "ghostkey";
const PASSWORD: &str = "smtp-pass-7c41";

/// A test certificate authority.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `name` issued by this authority: (chain PEM, key PEM).
    fn issue(&self, name: &str) -> (String, String) {
        self.issue_with(name, |_| {})
    }

    fn issue_with(
        &self,
        name: &str,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> (String, String) {
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        adjust(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (format!("{}{}", cert.pem(), self.pem()), key.serialize_pem())
    }
}

/// The relay's authority in a file, as `email.smtp_ca_file` names it.
fn ca_file(dir: &Path, ca: &Ca) -> PathBuf {
    let path = dir.join("relay-ca.pem");
    std::fs::write(&path, ca.pem()).unwrap();
    path
}

fn starttls_config(port: u16, ca_file: &Path) -> EmailConfig {
    EmailConfig {
        provider: EmailProvider::Smtp,
        smtp_host: "127.0.0.1".to_owned(),
        smtp_port: port,
        smtp_tls: SmtpTls::Starttls,
        smtp_ca_file: Some(ca_file.to_owned()),
        smtp_username: None,
        smtp_password: None,
        smtp_password_file: None,
        from: "Ghostkey <no-reply@ghostkey.test>".to_owned(),
        subject: SUBJECT.to_owned(),
        timeout_ms: 5000,
    }
}

fn mail() -> Outgoing {
    Outgoing {
        id: 1,
        to: SecretString::from(TO),
        subject: SUBJECT.to_owned(),
        body: SecretString::from(BODY),
    }
}

/// The error's reason, after checking it is transient (retried) and echoes nothing.
fn transient_reason(e: &SendError) -> String {
    let reason = match e {
        SendError::Transient { reason, .. } => reason.clone(),
        SendError::Permanent { reason } => panic!("expected transient, got permanent: {reason}"),
    };
    for secret in [TO, CODE, BODY] {
        assert!(!reason.contains(secret), "{reason}");
    }
    reason
}

/// A sender that logs in as [`USER`] with [`PASSWORD`] (after TLS, or never).
fn with_login(config: EmailConfig) -> SmtpSender {
    let config = EmailConfig {
        smtp_username: Some(USER.to_owned()),
        ..config
    };
    SmtpSender::new(&config, Some(SecretString::from(PASSWORD))).unwrap()
}

/// What the relay got in clear holds no envelope, no address, no subject, no code, no
/// password (plain or as AUTH PLAIN / LOGIN encode it).
fn assert_nothing_in_clear(smtp: &SmtpServer) {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let clear = String::from_utf8_lossy(&smtp.received_in_clear()).to_ascii_lowercase();
    let login = [
        PASSWORD.to_owned(),
        b64(PASSWORD),
        b64(&format!("\0{USER}\0{PASSWORD}")),
    ];
    for secret in [TO, CODE, SUBJECT, "mail from", "rcpt to", "data", "auth"]
        .into_iter()
        .chain(login.iter().map(String::as_str))
    {
        assert!(
            !clear.contains(&secret.to_ascii_lowercase()),
            "{secret:?} went in clear: {clear}"
        );
    }
    for (tls, command) in smtp.commands() {
        if !tls {
            let verb = command.split_whitespace().next().unwrap_or("");
            assert!(
                ["EHLO", "STARTTLS", "QUIT"].contains(&verb.to_ascii_uppercase().as_str()),
                "{command:?} in clear"
            );
        }
    }
}

#[tokio::test]
async fn starttls_required_and_not_offered_sends_nothing_and_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Relay CA");
    let smtp = SmtpServer::start().await; // does not offer STARTTLS
    let sender = with_login(starttls_config(smtp.port(), &ca_file(dir.path(), &ca)));
    let e = sender.send(&mail()).await.unwrap_err();
    let reason = transient_reason(&e);
    assert!(reason.contains("does not offer STARTTLS"), "{reason}");
    assert_eq!(smtp.connections(), 1);
    let verbs: Vec<String> = smtp.commands().into_iter().map(|(_, c)| c).collect();
    assert!(verbs[0].starts_with("EHLO"), "{verbs:?}");
    assert_nothing_in_clear(&smtp);
    assert!(smtp.messages().is_empty());
    assert_eq!(smtp.handshakes(), (0, 0));
}

#[tokio::test]
async fn starttls_refused_by_the_relay_sends_nothing_and_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Relay CA");
    let smtp = SmtpServer::start().await;
    let (chain, key) = ca.issue("127.0.0.1");
    smtp.offer_starttls(Some((&chain, &key)));
    smtp.refuse_starttls(Some("454 4.7.0 TLS not available"));
    let sender = SmtpSender::new(
        &starttls_config(smtp.port(), &ca_file(dir.path(), &ca)),
        None,
    )
    .unwrap();
    let e = sender.send(&mail()).await.unwrap_err();
    assert_eq!(transient_reason(&e), "smtp 454");
    assert!(smtp
        .commands()
        .iter()
        .any(|(tls, c)| !tls && c.eq_ignore_ascii_case("STARTTLS")));
    assert_nothing_in_clear(&smtp);
    assert!(smtp.messages().is_empty());
    assert_eq!(smtp.handshakes(), (0, 0));
}

/// The relay offers STARTTLS with a certificate the sender must refuse.
async fn refused_certificate(chain: &str, key: &str, trusted: &Ca) -> String {
    let dir = tempfile::tempdir().unwrap();
    let smtp = SmtpServer::start().await;
    smtp.offer_starttls(Some((chain, key)));
    let sender = with_login(starttls_config(smtp.port(), &ca_file(dir.path(), trusted)));
    let e = sender.send(&mail()).await.unwrap_err();
    let reason = transient_reason(&e);
    // The handshake began and failed on the server's side too; nothing came over TLS.
    assert!(
        smtp.wait_until(Duration::from_secs(5), |s| s.handshakes().1 == 1)
            .await,
        "handshakes {:?}",
        smtp.handshakes()
    );
    assert_eq!(smtp.handshakes().0, 0);
    assert!(smtp.commands().iter().all(|(tls, _)| !tls));
    assert!(smtp
        .commands()
        .iter()
        .any(|(_, c)| c.eq_ignore_ascii_case("STARTTLS")));
    assert_nothing_in_clear(&smtp);
    assert!(smtp.messages().is_empty());
    reason
}

#[tokio::test]
async fn an_untrusted_relay_certificate_is_refused_before_anything_is_sent() {
    let trusted = Ca::new("Relay CA");
    let (chain, key) = Ca::new("Someone else's CA").issue("127.0.0.1");
    let reason = refused_certificate(&chain, &key, &trusted).await;
    assert!(reason.contains("UnknownIssuer"), "{reason}");
    // A self-signed certificate for the right name: refused too.
    let own = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let reason =
        refused_certificate(&own.cert.pem(), &own.signing_key.serialize_pem(), &trusted).await;
    assert!(reason.contains("certificate"), "{reason}");
}

#[tokio::test]
async fn a_relay_certificate_for_another_name_is_refused_before_anything_is_sent() {
    let trusted = Ca::new("Relay CA");
    let (chain, key) = trusted.issue("mail.example.org");
    let reason = refused_certificate(&chain, &key, &trusted).await;
    assert!(
        reason.contains("certificate not valid for name"),
        "{reason}"
    );
}

#[tokio::test]
async fn an_expired_relay_certificate_is_refused_before_anything_is_sent() {
    let trusted = Ca::new("Relay CA");
    let (chain, key) = trusted.issue_with("127.0.0.1", |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let reason = refused_certificate(&chain, &key, &trusted).await;
    assert!(reason.contains("certificate expired"), "{reason}");
}

#[tokio::test]
async fn a_trusted_relay_certificate_carries_the_message_over_tls_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Relay CA");
    let smtp = SmtpServer::start().await;
    let (chain, key) = ca.issue("127.0.0.1");
    smtp.offer_starttls(Some((&chain, &key)));
    let sender = SmtpSender::new(
        &starttls_config(smtp.port(), &ca_file(dir.path(), &ca)),
        None,
    )
    .unwrap();
    sender.send(&mail()).await.unwrap();
    let over_tls = smtp.messages_over_tls();
    assert_eq!(over_tls.len(), 1);
    assert_eq!(smtp.messages().len(), 1);
    assert_eq!(over_tls[0].to, vec![TO.to_owned()]);
    assert!(over_tls[0].data.contains(BODY), "{}", over_tls[0].data);
    assert_eq!(smtp.handshakes(), (1, 0));
    assert_nothing_in_clear(&smtp);
    let in_clear: Vec<String> = smtp
        .commands()
        .into_iter()
        .filter(|(tls, _)| !tls)
        .map(|(_, c)| c.split_whitespace().next().unwrap_or("").to_owned())
        .collect();
    assert_eq!(in_clear, ["EHLO", "STARTTLS"]);

    // Without `email.smtp_ca_file` the same relay is not trusted: the public roots alone
    // do not vouch for it.
    let untrusting = SmtpSender::new(
        &EmailConfig {
            smtp_ca_file: None,
            ..starttls_config(smtp.port(), Path::new("unused"))
        },
        None,
    )
    .unwrap();
    let e = untrusting.send(&mail()).await.unwrap_err();
    assert!(transient_reason(&e).contains("UnknownIssuer"));
    assert_eq!(smtp.messages().len(), 1);
}

/// `email.smtp_tls = "tls"`: TLS from the first byte, the same checks.
#[tokio::test]
async fn implicit_tls_delivers_to_a_trusted_relay_and_sends_nothing_to_another() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Relay CA");
    let implicit = |port| EmailConfig {
        smtp_tls: SmtpTls::Tls,
        ..starttls_config(port, &ca_file(dir.path(), &ca))
    };
    let (chain, key) = ca.issue("127.0.0.1");
    let smtp = SmtpServer::start_implicit_tls(&chain, &key).await;
    SmtpSender::new(&implicit(smtp.port()), None)
        .unwrap()
        .send(&mail())
        .await
        .unwrap();
    assert_eq!(smtp.messages_over_tls().len(), 1);
    assert_eq!(smtp.messages().len(), 1);
    assert!(smtp.received_in_clear().is_empty());
    assert!(smtp.commands().iter().all(|(tls, _)| *tls));

    for (chain, key) in [
        Ca::new("Someone else's CA").issue("127.0.0.1"),
        ca.issue("mail.example.org"),
        ca.issue_with("127.0.0.1", |p| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }),
    ] {
        let smtp = SmtpServer::start_implicit_tls(&chain, &key).await;
        let e = SmtpSender::new(&implicit(smtp.port()), None)
            .unwrap()
            .send(&mail())
            .await
            .unwrap_err();
        let reason = transient_reason(&e);
        assert!(reason.contains("invalid peer certificate"), "{reason}");
        assert!(
            smtp.wait_until(Duration::from_secs(5), |s| s.handshakes().1 == 1)
                .await,
            "handshakes {:?}",
            smtp.handshakes()
        );
        assert_eq!(smtp.handshakes().0, 0);
        assert!(smtp.commands().is_empty());
        assert!(smtp.received_in_clear().is_empty());
        assert!(smtp.messages().is_empty());
    }
}

#[test]
fn an_unusable_smtp_ca_file_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay-ca.pem");
    std::fs::write(&path, "not a certificate").unwrap();
    let e = SmtpSender::new(&starttls_config(587, &path), None)
        .err()
        .unwrap();
    assert!(e.contains("email.smtp_ca_file"), "{e}");
    let e = SmtpSender::new(&starttls_config(587, &dir.path().join("none.pem")), None)
        .err()
        .unwrap();
    assert!(e.contains("email.smtp_ca_file"), "{e}");
    // A PEM certificate block whose content is no certificate is named as such.
    std::fs::write(
        &path,
        "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let e = SmtpSender::new(&starttls_config(587, &path), None)
        .err()
        .unwrap();
    assert!(
        e.contains("email.smtp_ca_file") && e.contains("certificate 1 is not a usable authority"),
        "{e}"
    );
    // With `smtp_tls = "none"` a CA file would check nothing: the configuration says so.
    let config = ghostkey::config::Config {
        email: EmailConfig {
            smtp_tls: SmtpTls::None,
            ..starttls_config(587, &path)
        },
        ..ghostkey::config::Config::default()
    };
    let e = config.validate().unwrap_err().to_string();
    assert!(e.contains("email.smtp_ca_file"), "{e}");
}

/// Through the whole service: a code queued while the relay offers no STARTTLS, then an
/// untrusted certificate, stays in the outbox (retried, nothing in clear) and is delivered
/// over TLS, once, when the relay presents a trusted certificate; the code works.
#[tokio::test]
async fn the_outbox_holds_a_code_until_the_relay_offers_trusted_tls() {
    let ca = Ca::new("Relay CA");
    let smtp = SmtpServer::start().await;
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_path = ca_file(ca_dir.path(), &ca);
    let server = TestServer::start_with(|c| {
        c.email = starttls_config(smtp.port(), &ca_path);
        c.email.timeout_ms = 2000;
        c.delivery.max_attempts = 100;
    });
    let app = server.register_app("Health");
    let client = server.client();
    enrol(&server, &app, "patient-1").await;
    let added = client
        .add_method(
            &app.assertion("patient-1", Purpose::Enroll),
            MethodKind::Email,
            Some(TO),
            None,
        )
        .await
        .unwrap();
    let attempts = || {
        server.query_i64("SELECT coalesce(max(attempts), 0) FROM outbox WHERE state = 'pending'")
    };
    let pending = || server.count("outbox WHERE state = 'pending'");

    // No STARTTLS offered: refused and retried (the clock moved past each retry time).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !(pending() == 1 && attempts() >= 2) {
        assert!(std::time::Instant::now() < deadline, "not retried");
        // Each retry is due a second or more later: move the clock rather than wait.
        server.clock.advance(1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last_error: String = rusqlite::Connection::open(server.db_path())
        .unwrap()
        .query_row(
            "SELECT last_error FROM outbox WHERE state = 'pending'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(last_error.contains("STARTTLS"), "{last_error}");
    assert!(smtp.messages().is_empty());
    assert_nothing_in_clear(&smtp);

    // An untrusted certificate: refused and retried as well.
    let (chain, key) = Ca::new("Someone else's CA").issue("127.0.0.1");
    smtp.offer_starttls(Some((&chain, &key)));
    let before = attempts();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !(smtp.handshakes().1 >= 1 && attempts() > before) {
        assert!(std::time::Instant::now() < deadline, "not retried");
        // Each retry is due a second or more later: move the clock rather than wait.
        server.clock.advance(1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(pending(), 1);
    assert!(smtp.messages().is_empty());
    assert_eq!(smtp.handshakes().0, 0);
    assert_nothing_in_clear(&smtp);

    // A trusted certificate: delivered over TLS, once, and the code confirms the method.
    let (chain, key) = ca.issue("127.0.0.1");
    smtp.offer_starttls(Some((&chain, &key)));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while smtp.messages().is_empty() {
        assert!(std::time::Instant::now() < deadline, "not delivered");
        // Each retry is due a second or more later: move the clock rather than wait.
        server.clock.advance(1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mails = smtp.messages_over_tls();
    assert_eq!(mails.len(), 1);
    assert_eq!(smtp.messages().len(), 1);
    assert_eq!(mails[0].to, vec![TO.to_owned()]);
    // The worker records the send just after the relay's answer.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pending() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "never recorded as sent"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.count("outbox WHERE state = 'sent'"), 1);
    assert_nothing_in_clear(&smtp);
    let code = find_code(&mails[0].data, 8).expect("an 8-digit code");
    let answer = client.answer(&added.challenge.id, &code).await.unwrap();
    assert_eq!(answer.enrollment_state, EnrollmentState::Active);
}
