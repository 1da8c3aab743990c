//! TLS termination in Ghostkey: a handshake and a request over HTTPS with a test
//! certificate; a bad key file is refused at start-up naming the key.

mod common;

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
