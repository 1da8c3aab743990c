//! TLS termination in Ghostkey: a handshake and a request over HTTPS with a test
//! certificate; a bad key file is refused at start-up naming the key; `ghostkey serve`
//! refuses a key that is not the certificate's and a certificate out of its validity,
//! naming the file and the dates, never showing key material; client hellos offering
//! only SSL 3.0, TLS 1.0 or TLS 1.1, or only obsolete cipher suites, are refused with a
//! fatal alert and no ServerHello, while the same hello for TLS 1.2 is answered.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::TestServer;
use ghostkey::config::TlsConfig;

#[tokio::test]
async fn requests_over_https_with_a_test_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let cert_pem = certified.cert.pem();
    std::fs::write(dir.path().join("cert.pem"), &cert_pem).unwrap();
    std::fs::write(
        dir.path().join("key.pem"),
        certified.signing_key.serialize_pem(),
    )
    .unwrap();
    let tls = TlsConfig {
        cert_file: dir.path().join("cert.pem"),
        key_file: dir.path().join("key.pem"),
    };
    let server = TestServer::start_with(|c| c.server.tls = Some(tls.clone()));
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap())
        .resolve("localhost", server.addr)
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/healthz", server.addr.port());
    let res = http.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    // Through the client library too.
    let client = ghostkey_client::Client::with_http(
        &format!("https://localhost:{}", server.addr.port()),
        http,
    )
    .unwrap();
    assert_eq!(client.ready().await.unwrap().status, "ok");
    // Plain HTTP on the TLS port gets no answer it could mistake for the service's.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", server.addr))
        .send()
        .await;
    assert!(plain.map(|r| r.status() != 200).unwrap_or(true));
    // A client that does not trust the certificate refuses the handshake.
    let untrusting = reqwest::Client::builder()
        .resolve("localhost", server.addr)
        .build()
        .unwrap();
    assert!(untrusting.get(&url).send().await.is_err());
}

#[test]
fn unusable_tls_files_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
    std::fs::write(dir.path().join("key.pem"), "not a key").unwrap();
    let tls = TlsConfig {
        cert_file: dir.path().join("cert.pem"),
        key_file: dir.path().join("key.pem"),
    };
    let err = ghostkey::tls::server_config(&tls, common::now()).unwrap_err();
    assert!(err.contains("server.tls.cert_file"), "{err}");
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), certified.cert.pem()).unwrap();
    let err = ghostkey::tls::server_config(&tls, common::now()).unwrap_err();
    assert!(err.contains("server.tls.key_file"), "{err}");
    let missing = TlsConfig {
        cert_file: dir.path().join("none.pem"),
        key_file: tls.key_file.clone(),
    };
    assert!(ghostkey::tls::server_config(&missing, common::now())
        .unwrap_err()
        .contains("server.tls.cert_file"));
}

/// A certificate for `localhost` and its key, written as `cert.pem` and `key.pem` in
/// `dir`, with `adjust` applied to the certificate's parameters.
fn write_cert(
    dir: &Path,
    adjust: impl FnOnce(&mut rcgen::CertificateParams),
) -> (TlsConfig, String, String) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    adjust(&mut params);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    let tls = TlsConfig {
        cert_file: dir.join("cert.pem"),
        key_file: dir.join("key.pem"),
    };
    (tls, cert.pem(), key.serialize_pem())
}

/// Unix seconds of midnight UTC at the start of a day.
fn ymd(year: i32, month: u8, day: u8) -> i64 {
    rcgen::date_time_ymd(year, month, day).unix_timestamp()
}

/// Runs `ghostkey serve` with `[server.tls]` naming these files; it must exit on its own
/// (within a minute) having refused to start. Returns its standard error.
fn serve_refuses(dir: &Path, tls: &TlsConfig) -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.join("ghostkey.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[server.tls]\ncert_file = {:?}\nkey_file = {:?}\n\
             [database]\npath = {:?}\n",
            tls.cert_file,
            tls.key_file,
            dir.join("ghostkey.db")
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ghostkey"));
    for (k, _) in std::env::vars() {
        if k.starts_with("GHOSTKEY_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .current_dir(dir)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("serve did not refuse to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    stderr
}

/// No key material in what the operator sees: no PEM block, no line of the key's base64.
fn assert_no_key_material(text: &str, key_pem: &str) {
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    for line in key_pem.lines().filter(|l| !l.starts_with("-----")) {
        assert!(!text.contains(line), "key material in: {text}");
    }
}

#[test]
fn serve_refuses_a_key_that_is_not_the_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, _, _) = write_cert(dir.path(), |_| {});
    // Another key of the same kind (ECDSA P-256) in the key file.
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(&tls.key_file, other.serialize_pem()).unwrap();
    let stderr = serve_refuses(dir.path(), &tls);
    assert!(
        stderr.contains(&format!(
            "`server.tls.key_file` {} is not the private key of the certificate in \
             `server.tls.cert_file` {}",
            tls.key_file.display(),
            tls.cert_file.display()
        )),
        "{stderr}"
    );
    assert_no_key_material(&stderr, &other.serialize_pem());

    // The same through the library, for keys of another kind too (Ed25519, P-384).
    for alg in [&rcgen::PKCS_ED25519, &rcgen::PKCS_ECDSA_P384_SHA384] {
        let other = rcgen::KeyPair::generate_for(alg).unwrap();
        std::fs::write(&tls.key_file, other.serialize_pem()).unwrap();
        let err = ghostkey::tls::server_config(&tls, common::now()).unwrap_err();
        assert!(
            err.contains("is not the private key of the certificate"),
            "{err}"
        );
        assert_no_key_material(&err, &other.serialize_pem());
    }
}

#[test]
fn serve_refuses_an_expired_or_not_yet_valid_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, _, key) = write_cert(dir.path(), |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let stderr = serve_refuses(dir.path(), &tls);
    assert!(
        stderr.contains(&format!(
            "`server.tls.cert_file` {}: the certificate expired at 2021-01-01T00:00:00Z",
            tls.cert_file.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("renew it"), "{stderr}");
    assert_no_key_material(&stderr, &key);

    let (tls, _, _) = write_cert(dir.path(), |p| {
        p.not_before = rcgen::date_time_ymd(2999, 1, 1);
    });
    let stderr = serve_refuses(dir.path(), &tls);
    assert!(
        stderr.contains("the certificate is not valid before 2999-01-01T00:00:00Z"),
        "{stderr}"
    );
}

#[test]
fn certificate_validity_is_checked_at_the_servers_clock_to_the_second() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, _, _) = write_cert(dir.path(), |p| {
        p.not_before = rcgen::date_time_ymd(2020, 1, 1);
        p.not_after = rcgen::date_time_ymd(2021, 1, 1);
    });
    let (start, end) = (ymd(2020, 1, 1), ymd(2021, 1, 1));
    for ok in [start, ymd(2020, 6, 1), end] {
        ghostkey::tls::server_config(&tls, ok).unwrap();
    }
    let err = ghostkey::tls::server_config(&tls, end + 1).unwrap_err();
    assert!(err.contains("expired at 2021-01-01T00:00:00Z"), "{err}");
    assert!(err.contains("(now 2021-01-01T00:00:01Z)"), "{err}");
    let err = ghostkey::tls::server_config(&tls, start - 1).unwrap_err();
    assert!(
        err.contains("not valid before 2020-01-01T00:00:00Z"),
        "{err}"
    );

    // An expired certificate further up the chain (an old cross-signed one in a bundle) is
    // only warned about: clients build their path around it.
    let (leaf, _, _) = write_cert(dir.path(), |_| {});
    let mut chain = std::fs::read_to_string(&leaf.cert_file).unwrap();
    let mut old = rcgen::CertificateParams::new(vec!["Old CA".to_owned()]).unwrap();
    old.not_before = rcgen::date_time_ymd(2020, 1, 1);
    old.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let old = old
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap();
    chain.push_str(&old.pem());
    std::fs::write(&leaf.cert_file, chain).unwrap();
    ghostkey::tls::server_config(&leaf, common::now()).unwrap();
}

// ---------------------------------------------------------------------------------------
// Protocol versions and cipher suites, with client hellos written byte by byte (rustls, as
// a client, cannot offer anything older than TLS 1.2).

const TLS_1_2: [u8; 2] = [3, 3];
/// ECDHE-ECDSA-AES128-GCM-SHA256: TLS 1.2, and what the test certificate (P-256) can use.
const ECDHE_ECDSA_AES128_GCM: u16 = 0xc02b;
/// What TLS 1.0 and 1.1 clients offer: CBC suites with RSA or ECDHE key exchange.
const OLD_SUITES: [u16; 6] = [0xc009, 0xc00a, 0xc013, 0xc014, 0x002f, 0x0035];

fn extension(kind: u16, body: &[u8]) -> Vec<u8> {
    let mut e = kind.to_be_bytes().to_vec();
    e.extend((body.len() as u16).to_be_bytes());
    e.extend(body);
    e
}

/// A ClientHello record: `version` in the record and the hello, `suites`, and the
/// extensions of a TLS 1.2 client (SNI, groups, point formats, signature algorithms).
/// No `supported_versions`: such a hello offers `version` and
/// nothing newer.
fn client_hello(version: [u8; 2], suites: &[u16]) -> Vec<u8> {
    let mut hello = version.to_vec();
    hello.extend([0x5a; 32]); // random
    hello.push(0); // no session id
    hello.extend(((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        hello.extend(s.to_be_bytes());
    }
    hello.extend([1, 0]); // compression: null only
    let mut extensions = Vec::new();
    let name = b"localhost";
    let mut sni = ((name.len() + 3) as u16).to_be_bytes().to_vec();
    sni.push(0);
    sni.extend((name.len() as u16).to_be_bytes());
    sni.extend(name);
    extensions.extend(extension(0x0000, &sni));
    extensions.extend(extension(0x000a, &[0, 4, 0x00, 0x1d, 0x00, 0x17])); // x25519, P-256
    extensions.extend(extension(0x000b, &[1, 0])); // uncompressed points
                                                   // ecdsa_secp256r1_sha256, rsa_pss_rsae_sha256, rsa_pkcs1_sha256: sent whatever the
                                                   // version, so that the version is all that differs between the hellos.
    extensions.extend(extension(0x000d, &[0, 6, 4, 3, 8, 4, 4, 1]));
    hello.extend((extensions.len() as u16).to_be_bytes());
    hello.extend(extensions);
    let mut handshake = vec![1]; // ClientHello
    handshake.extend(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend(hello);
    // The record layer says TLS 1.0 for any first hello, as clients do.
    let mut record = vec![0x16, 3, 1];
    record.extend((handshake.len() as u16).to_be_bytes());
    record.extend(handshake);
    record
}

/// Sends `hello` to `addr`; returns the first record of the answer: (content type, body).
fn first_record(addr: SocketAddr, hello: &[u8]) -> (u8, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(hello).unwrap();
    let mut header = [0u8; 5];
    stream.read_exact(&mut header).unwrap();
    let len = u16::from_be_bytes([header[3], header[4]]) as usize;
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).unwrap();
    (header[0], body)
}

/// The server answers `hello` with a fatal alert `description` and no ServerHello.
fn assert_refused(addr: SocketAddr, hello: &[u8], description: u8, what: &str) {
    let (kind, body) = first_record(addr, hello);
    assert_eq!(
        kind, 0x15,
        "{what}: answered with record type {kind}, not an alert"
    );
    assert_eq!(body, [2, description], "{what}: alert {body:?}");
}

#[test]
fn old_protocol_versions_and_obsolete_suites_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (tls, _, _) = write_cert(dir.path(), |_| {});
    let server = TestServer::start_with(|c| c.server.tls = Some(tls.clone()));

    // The control: a TLS 1.2 hello built the same way gets a ServerHello for TLS 1.2.
    let (kind, body) = first_record(
        server.addr,
        &client_hello(TLS_1_2, &[ECDHE_ECDSA_AES128_GCM]),
    );
    assert_eq!(kind, 0x16, "not a handshake record");
    assert_eq!(body[0], 2, "not a ServerHello");
    assert_eq!(body[4..6], TLS_1_2);
    let suite_at = 39 + body[38] as usize; // after the session id
    assert_eq!(
        body[suite_at..suite_at + 2],
        ECDHE_ECDSA_AES128_GCM.to_be_bytes()
    );

    // SSL 3.0, TLS 1.0 and TLS 1.1, each offering every suite it could use: protocol_version.
    let mut suites = OLD_SUITES.to_vec();
    suites.push(ECDHE_ECDSA_AES128_GCM);
    for (version, name) in [
        ([3, 0], "SSL 3.0"),
        ([3, 1], "TLS 1.0"),
        ([3, 2], "TLS 1.1"),
    ] {
        assert_refused(server.addr, &client_hello(version, &suites), 70, name);
    }
    // TLS 1.2 offering only the CBC suites of those versions: handshake_failure.
    assert_refused(
        server.addr,
        &client_hello(TLS_1_2, &OLD_SUITES),
        40,
        "TLS 1.2 with CBC suites only",
    );
    // And the server still answers a good client afterwards.
    let (kind, _) = first_record(
        server.addr,
        &client_hello(TLS_1_2, &[ECDHE_ECDSA_AES128_GCM]),
    );
    assert_eq!(kind, 0x16);
}
