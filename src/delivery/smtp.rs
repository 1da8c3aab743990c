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
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};

use super::{Outgoing, SendError, Sender};
use crate::config::{EmailConfig, SmtpTls};

/// Sends e-mail over SMTP. Its transport holds the password, so it has no `Debug`.
pub struct SmtpSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    timeout: Duration,
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
        let builder = match cfg.smtp_tls {
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host),
            SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host)
                .map_err(|e| format!("`email.smtp_host`: cannot set up STARTTLS: {e}"))?,
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host)
                .map_err(|e| format!("`email.smtp_host`: cannot set up TLS: {e}"))?,
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
        })
    }
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
            Ok(Err(e)) => Err(classify(&e)),
        }
    }
}

/// What a lettre error means. Reply texts are left out: they may echo the address.
fn classify(e: &lettre::transport::smtp::Error) -> SendError {
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
