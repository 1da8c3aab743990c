//! E-mail through an SMTP server, with lettre.
//!
//! One connection per message (no pool): codes are rare and a pooled connection that the
//! server closed would only add a failure mode. SMTP 5xx replies fail the message for
//! good; 4xx replies, timeouts, TLS and connection failures are retried. A reply's text
//! is never kept, as servers often echo the address in it: only its code.

use std::time::Duration;

use async_trait::async_trait;
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use secrecy::{ExposeSecret, SecretString};

use super::{Outgoing, SendError, Sender};
use crate::config::{EmailConfig, SmtpTls};

/// Sends e-mail over SMTP. Its transport holds the password, so it has no `Debug`.
pub struct SmtpSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    timeout: Duration,
    /// `email.smtp_tls = "starttls"`: says so when the server does not offer it.
    starttls: bool,
}

impl SmtpSender {
    /// A sender for the server in `cfg`; `password` goes with `cfg.smtp_username`.
    pub fn new(cfg: &EmailConfig, password: Option<SecretString>) -> Result<SmtpSender, String> {
        let host = cfg.smtp_host.trim();
        if host.is_empty() {
            return Err("`email.smtp_host` must be set".to_owned());
        }
        let from: Mailbox = cfg.from.parse().map_err(|_| {
            "`email.from` must be an address such as `Ghostkey <no-reply@example.org>`".to_owned()
        })?;
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let plain = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host);
        let builder = match cfg.smtp_tls {
            SmtpTls::None => plain,
            // Required: a server that does not offer STARTTLS gets nothing but EHLO and QUIT.
            SmtpTls::Starttls => plain.tls(Tls::Required(tls_parameters(host, cfg)?)),
            SmtpTls::Tls => plain.tls(Tls::Wrapper(tls_parameters(host, cfg)?)),
        };
        let builder = builder.port(cfg.smtp_port).timeout(Some(timeout));
        let builder = match (&cfg.smtp_username, password) {
            (Some(user), Some(password)) => builder.credentials(Credentials::new(
                user.clone(),
                password.expose_secret().to_owned(),
            )),
            (None, None) => builder,
            (Some(_), None) => {
                return Err(
                    "`email.smtp_password` (or `email.smtp_password_file`) must be set with `email.smtp_username`"
                        .to_owned(),
                )
            }
            (None, Some(_)) => {
                return Err("`email.smtp_username` must be set with `email.smtp_password`".to_owned())
            }
        };
        Ok(SmtpSender {
            transport: builder.build(),
            from,
            timeout,
            starttls: cfg.smtp_tls == SmtpTls::Starttls,
        })
    }
}

/// TLS to `host`, its certificate checked against the built-in public roots and the
/// authorities in `email.smtp_ca_file`, if set; TLS 1.2 at least.
fn tls_parameters(host: &str, cfg: &EmailConfig) -> Result<TlsParameters, String> {
    let mut params = TlsParameters::builder(host.to_owned());
    if let Some(path) = &cfg.smtp_ca_file {
        let key = "`email.smtp_ca_file`";
        let pem = std::fs::read(path).map_err(|e| format!("{key} {}: {e}", path.display()))?;
        let cas = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{key} {}: {e}", path.display()))?;
        if cas.is_empty() {
            return Err(format!("{key} {}: no certificate in it", path.display()));
        }
        for (i, ca) in cas.into_iter().enumerate() {
            // Checked here, so that a bad file is named as such (the builder below would
            // only say that TLS cannot be set up).
            rustls::RootCertStore::empty()
                .add(ca.clone())
                .map_err(|e| {
                    format!(
                        "{key} {}: certificate {} is not a usable authority: {e}",
                        path.display(),
                        i + 1
                    )
                })?;
            let ca = Certificate::from_der(ca.to_vec())
                .map_err(|e| format!("{key} {}: {e}", path.display()))?;
            params = params.add_root_certificate(ca);
        }
    }
    params
        .build()
        .map_err(|e| format!("`email.smtp_host` / `email.smtp_ca_file`: cannot set up TLS: {e}"))
}

#[async_trait]
impl Sender for SmtpSender {
    fn name(&self) -> &'static str {
        "smtp"
    }

    async fn send(&self, message: &Outgoing) -> Result<(), SendError> {
        let to: Mailbox = message
            .to
            .expose_secret()
            .parse()
            .map_err(|_| SendError::permanent("invalid address"))?;
        let email = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(message.subject.as_str())
            .header(ContentType::TEXT_PLAIN)
            .body(message.body.expose_secret().to_owned())
            .map_err(|_| SendError::permanent("cannot build the message"))?;
        // lettre's timeout bounds each step; this bounds the whole exchange.
        match tokio::time::timeout(self.timeout, self.transport.send(email)).await {
            Err(_) => Err(SendError::transient("smtp timed out")),
            Ok(Ok(_)) => {
                tracing::debug!(outbox_id = message.id, "smtp server accepted the message");
                Ok(())
            }
            Ok(Err(e)) => Err(classify(&e, self.starttls)),
        }
    }
}

/// What a lettre error means. Reply texts are left out: they may echo the address.
fn classify(e: &lettre::transport::smtp::Error, starttls: bool) -> SendError {
    let code = e.status().map(|c| c.to_string());
    if e.is_permanent() {
        return SendError::permanent(format!("smtp {}", code.as_deref().unwrap_or("5xx")));
    }
    if e.is_transient() {
        return SendError::transient(format!("smtp {}", code.as_deref().unwrap_or("4xx")));
    }
    if e.is_timeout() {
        return SendError::transient("smtp timed out");
    }
    if e.is_tls() {
        return SendError::transient("smtp TLS failed (is `email.smtp_tls` right for this port?)");
    }
    if e.is_response() {
        return SendError::transient("smtp server sent an unreadable reply");
    }
    // lettre's own fixed text, which holds no address.
    if starttls && e.is_client() && e.to_string().contains("STARTTLS is not supported") {
        return SendError::transient(
            "smtp server does not offer STARTTLS, which `email.smtp_tls` requires: nothing sent",
        );
    }
    if e.is_client() || e.is_transport_shutdown() {
        return SendError::transient("smtp client error");
    }
    // Connection and network errors: the I/O error, which names no address, helps.
    match io_error(e) {
        Some(io) => SendError::transient(format!("smtp connection failed: {io}")),
        None => SendError::transient("smtp connection failed"),
    }
}

/// The I/O error under a lettre error, if any.
fn io_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    let mut source = e.source();
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        source = err.source();
    }
    None
}
