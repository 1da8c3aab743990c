//! A small real SMTP server on 127.0.0.1:0 for tests: enough ESMTP for lettre, with
//! switches to make it refuse a recipient or the whole service, and STARTTLS (RFC 3207)
//! with a given certificate when asked ([`SmtpServer::offer_starttls`]; not offered by
//! default), or TLS from the first byte ([`SmtpServer::start_implicit_tls`]). It records every byte it receives in clear, every command with whether it
//! came over TLS, and whether each message did.
#![allow(dead_code)]

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One message as the server received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMail {
    /// The `MAIL FROM` address, without the angle brackets.
    pub from: String,
    /// The `RCPT TO` addresses, without the angle brackets.
    pub to: Vec<String>,
    /// The raw DATA section (headers and body, CRLF line ends), dot-unstuffed, without
    /// the final `.` line.
    pub data: String,
}

#[derive(Default)]
struct State {
    messages: Vec<ReceivedMail>,
    /// The reply to the next RCPT TO instead of 250 (one-shot).
    fail_next_rcpt: Option<String>,
    /// The reply to every command after the greeting while set (the whole session).
    fail_session: Option<String>,
    /// Answer 421 on connect and close.
    down: bool,
    connections: usize,
    /// TLS from the first byte (implicit TLS, port 465 style) with this configuration.
    implicit_tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// Offer STARTTLS with this configuration (None: not offered, the default).
    starttls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    /// Answer the STARTTLS command with this instead of 220 (offered but refused).
    refuse_starttls: Option<String>,
    /// Every byte received outside TLS, on every connection, in order.
    clear: Vec<u8>,
    /// Every command line (DATA content excluded), with whether it came over TLS.
    commands: Vec<(bool, String)>,
    /// Whether each of `messages` came over TLS.
    messages_tls: Vec<bool>,
    /// TLS handshakes completed and failed.
    handshakes: usize,
    failed_handshakes: usize,
}

/// The server; it stops when dropped.
pub struct SmtpServer {
    port: u16,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl SmtpServer {
    /// Binds 127.0.0.1:0 and serves connections, one task each, until dropped.
    pub async fn start() -> SmtpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    // A client that goes away mid-session is not the server's problem.
                    let _ = session(stream, state).await;
                });
            }
        });
        SmtpServer { port, state, task }
    }

    /// The port it listens on (host 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The messages received so far.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        lock(&self.state).messages.clone()
    }

    /// How many connections were accepted so far.
    pub fn connections(&self) -> usize {
        lock(&self.state).connections
    }

    /// Waits until at least `n` messages arrived or `timeout` passed; returns them all.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n || Instant::now() >= deadline {
                return messages;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Answers the next RCPT TO with `reply` (such as `550 5.1.1 no such user`), once.
    pub fn fail_next(&self, reply: &str) {
        lock(&self.state).fail_next_rcpt = Some(reply.to_owned());
    }

    /// Answers every command after the greeting with `reply` while set (None: normal).
    pub fn fail_session(&self, reply: Option<&str>) {
        lock(&self.state).fail_session = reply.map(str::to_owned);
    }

    /// While down, answers `421` on connect and closes the connection.
    pub fn set_down(&self, down: bool) {
        lock(&self.state).down = down;
    }

    /// A server that speaks TLS from the first byte (implicit TLS, as on port 465) with
    /// this certificate chain and key (PEM), and never in clear.
    pub async fn start_implicit_tls(cert_chain_pem: &str, key_pem: &str) -> SmtpServer {
        let server = SmtpServer::start().await;
        lock(&server.state).implicit_tls = Some(tls_config(cert_chain_pem, key_pem));
        server
    }

    /// From the next EHLO on, offers STARTTLS with this certificate chain and key (PEM);
    /// None stops offering it.
    pub fn offer_starttls(&self, cert_chain_pem: Option<(&str, &str)>) {
        let config = cert_chain_pem.map(|(chain, key)| tls_config(chain, key));
        lock(&self.state).starttls = config;
    }

    /// Offers STARTTLS (see [`SmtpServer::offer_starttls`]) but answers the command with
    /// `reply` (such as `454 4.7.0 TLS not available`) while set.
    pub fn refuse_starttls(&self, reply: Option<&str>) {
        lock(&self.state).refuse_starttls = reply.map(str::to_owned);
    }

    /// Every byte received outside TLS so far, all connections together.
    pub fn received_in_clear(&self) -> Vec<u8> {
        lock(&self.state).clear.clone()
    }

    /// Every command line received so far (without DATA content), with whether it came
    /// over TLS.
    pub fn commands(&self) -> Vec<(bool, String)> {
        lock(&self.state).commands.clone()
    }

    /// The messages received so far over TLS.
    pub fn messages_over_tls(&self) -> Vec<ReceivedMail> {
        let s = lock(&self.state);
        s.messages
            .iter()
            .zip(&s.messages_tls)
            .filter(|(_, tls)| **tls)
            .map(|(m, _)| m.clone())
            .collect()
    }

    /// TLS handshakes completed and failed so far.
    pub fn handshakes(&self) -> (usize, usize) {
        let s = lock(&self.state);
        (s.handshakes, s.failed_handshakes)
    }

    /// Waits until `done` holds for this server or `timeout` passed; returns whether it held.
    pub async fn wait_until(&self, timeout: Duration, done: impl Fn(&SmtpServer) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(self) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TLS 1.2/1.3 server configuration for this certificate chain and key (PEM).
fn tls_config(chain: &str, key: &str) -> Arc<tokio_rustls::rustls::ServerConfig> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(chain.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    Arc::new(config)
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The address inside `<...>` after `prefix` (`MAIL FROM:` / `RCPT TO:`), parameters
/// after it ignored.
fn path_arg(line: &str, prefix: &str) -> Option<String> {
    if line.len() < prefix.len() || !line[..prefix.len()].eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = line[prefix.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let end = rest.find('>')?;
    Some(rest[..end].to_owned())
}

async fn session(stream: TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    let (down, implicit) = {
        let mut s = lock(&state);
        s.connections += 1;
        (s.down, s.implicit_tls.clone())
    };
    if let (false, Some(config)) = (down, implicit) {
        return match tokio_rustls::TlsAcceptor::from(config).accept(stream).await {
            Ok(tls) => {
                lock(&state).handshakes += 1;
                let mut reader = BufReader::new(tls);
                reader
                    .get_mut()
                    .write_all(b"220 localhost ESMTP test server\r\n")
                    .await?;
                dialogue(&mut reader, &state, true).await?;
                Ok(())
            }
            Err(_) => {
                lock(&state).failed_handshakes += 1;
                Ok(())
            }
        };
    }
    let mut reader = BufReader::new(stream);
    if down {
        reader
            .get_mut()
            .write_all(b"421 4.3.2 service not available, closing channel\r\n")
            .await?;
        reader.get_mut().shutdown().await?;
        return Ok(());
    }
    reader
        .get_mut()
        .write_all(b"220 localhost ESMTP test server\r\n")
        .await?;
    let Some(config) = dialogue(&mut reader, &state, false).await? else {
        return Ok(());
    };
    // RFC 3207: nothing may follow STARTTLS before the handshake; anything buffered
    // would be a command injected in clear.
    if !reader.buffer().is_empty() {
        return Ok(());
    }
    let tcp = reader.into_inner();
    match tokio_rustls::TlsAcceptor::from(config).accept(tcp).await {
        Ok(tls) => {
            lock(&state).handshakes += 1;
            let mut reader = BufReader::new(tls);
            dialogue(&mut reader, &state, true).await?;
            Ok(())
        }
        Err(_) => {
            lock(&state).failed_handshakes += 1;
            Ok(())
        }
    }
}

/// One SMTP dialogue after the greeting, on a plain or a TLS stream. Returns the TLS
/// configuration to upgrade with when the client sent STARTTLS and it was accepted.
async fn dialogue<S: AsyncRead + AsyncWrite + Unpin>(
    reader: &mut BufReader<S>,
    state: &Arc<Mutex<State>>,
    tls: bool,
) -> std::io::Result<Option<Arc<tokio_rustls::rustls::ServerConfig>>> {
    let mut from: Option<String> = None;
    let mut to: Vec<String> = Vec::new();
    let mut raw = Vec::new();
    loop {
        raw.clear();
        if reader.read_until(b'\n', &mut raw).await? == 0 {
            return Ok(None);
        }
        let line = String::from_utf8_lossy(&raw);
        let line = line.trim_end_matches(['\r', '\n']);
        {
            let mut s = lock(state);
            if !tls {
                s.clear.extend_from_slice(&raw);
            }
            s.commands.push((tls, line.to_owned()));
        }
        let verb = line
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        let write = reader.get_mut();
        if verb == "QUIT" {
            write.write_all(b"221 2.0.0 bye\r\n").await?;
            write.shutdown().await?;
            return Ok(None);
        }
        let session_reply = lock(state).fail_session.clone();
        if let Some(reply) = session_reply {
            write.write_all(format!("{reply}\r\n").as_bytes()).await?;
            continue;
        }
        let starttls = if tls {
            None
        } else {
            lock(state).starttls.clone()
        };
        let reply: String = match verb.as_str() {
            "EHLO" => {
                let offer = if starttls.is_some() {
                    "250-STARTTLS\r\n"
                } else {
                    ""
                };
                format!(
                    "250-localhost greets you\r\n{offer}250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 10485760"
                )
            }
            "STARTTLS" if starttls.is_some() => {
                let refusal = lock(state).refuse_starttls.clone();
                match (refusal, starttls) {
                    (Some(reply), _) => reply,
                    (None, Some(config)) => {
                        write.write_all(b"220 2.0.0 ready to start TLS\r\n").await?;
                        return Ok(Some(config));
                    }
                    (None, None) => "454 4.7.0 TLS not available".to_owned(),
                }
            }
            "HELO" => "250 localhost".to_owned(),
            "NOOP" => "250 2.0.0 OK".to_owned(),
            "RSET" => {
                from = None;
                to.clear();
                "250 2.0.0 OK".to_owned()
            }
            "MAIL" => match path_arg(line, "MAIL FROM:") {
                Some(addr) => {
                    from = Some(addr);
                    to.clear();
                    "250 2.1.0 OK".to_owned()
                }
                None => "501 5.5.4 syntax: MAIL FROM:<address>".to_owned(),
            },
            "RCPT" => {
                if from.is_none() {
                    "503 5.5.1 MAIL first".to_owned()
                } else if let Some(reply) = lock(state).fail_next_rcpt.take() {
                    reply
                } else {
                    match path_arg(line, "RCPT TO:") {
                        Some(addr) => {
                            to.push(addr);
                            "250 2.1.5 OK".to_owned()
                        }
                        None => "501 5.5.4 syntax: RCPT TO:<address>".to_owned(),
                    }
                }
            }
            "DATA" => {
                if from.is_none() || to.is_empty() {
                    "503 5.5.1 RCPT first".to_owned()
                } else {
                    write
                        .write_all(b"354 end data with <CR><LF>.<CR><LF>\r\n")
                        .await?;
                    let mut section = Vec::new();
                    let data = read_data(reader, &mut section).await?;
                    let mail = ReceivedMail {
                        from: from.take().unwrap_or_default(),
                        to: std::mem::take(&mut to),
                        data,
                    };
                    let mut s = lock(state);
                    if !tls {
                        s.clear.extend_from_slice(&section);
                    }
                    s.messages.push(mail);
                    s.messages_tls.push(tls);
                    "250 2.0.0 OK queued".to_owned()
                }
            }
            "VRFY" => "252 2.1.5 cannot verify".to_owned(),
            _ => "502 5.5.2 command not implemented".to_owned(),
        };
        let write = reader.get_mut();
        write.write_all(reply.as_bytes()).await?;
        write.write_all(b"\r\n").await?;
    }
}

/// Reads a DATA section up to the line holding a single `.`, undoing dot-stuffing; every
/// byte read, as received, is appended to `raw`.
async fn read_data<R: AsyncBufReadExt + Unpin>(
    reader: &mut R,
    raw: &mut Vec<u8>,
) -> std::io::Result<String> {
    let mut data = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader.read_until(b'\n', &mut line).await?;
        raw.extend_from_slice(&line);
        if read == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed in DATA",
            ));
        }
        if line == b".\r\n" || line == b".\n" {
            return Ok(String::from_utf8_lossy(&data).into_owned());
        }
        let unstuffed = if line.first() == Some(&b'.') {
            &line[1..]
        } else {
            &line[..]
        };
        data.extend_from_slice(unstuffed);
    }
}
