//! SIGTERM while the outbox is sending a message: the server lets the send finish and
//! records it before it exits, so after the restart that message is not sent again (no
//! duplicate), and the messages still queued at the signal are sent (no loss). The real
//! binary, a real SQLite file, and an SMS gateway on loopback that is slow to answer.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ghostkey_client::kit::AssertionRequest;
use ghostkey_client::proto::api::MethodKind;
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::{AppSigningKey, Client, UserSecret};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

/// How long the gateway takes to accept a message.
const GATEWAY_DELAY: Duration = Duration::from_millis(1500);

/// A gateway that records each message as it arrives (before its slow answer).
#[derive(Clone, Default)]
struct SlowGateway(Arc<Mutex<Vec<String>>>);

impl Respond for SlowGateway {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap_or_default();
        let to = body["to"].as_str().unwrap_or_default().to_owned();
        self.0.lock().unwrap().push(to);
        ResponseTemplate::new(200).set_delay(GATEWAY_DELAY)
    }
}

impl SlowGateway {
    fn arrivals(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.arrivals().len() < n {
            assert!(Instant::now() < deadline, "{what}: {:?}", self.arrivals());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn ghostkey(dir: &Path, port: u16, gateway: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ghostkey"));
    for (k, _) in std::env::vars() {
        if k.starts_with("GHOSTKEY_") {
            cmd.env_remove(k);
        }
    }
    cmd.current_dir(dir)
        .env("GHOSTKEY_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("GHOSTKEY_SMS__PROVIDER", "webhook")
        .env("GHOSTKEY_SMS__WEBHOOK__URL", format!("{gateway}/sms"))
        .env("GHOSTKEY_SMS__WEBHOOK__SECRET", "webhook-test-secret")
        .env("GHOSTKEY_SMS__TIMEOUT_MS", "5000")
        .env("GHOSTKEY_DELIVERY__POLL_INTERVAL_MS", "50");
    cmd
}

async fn serve(dir: &Path, port: u16, gateway: &str, client: &Client, log: &str) -> Child {
    let child = ghostkey(dir, port, gateway)
        .arg("serve")
        .stderr(std::fs::File::create(dir.join(log)).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.ready().await.is_err() {
        assert!(Instant::now() < deadline, "the server did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child
}

fn count(dir: &Path, sql: &str) -> i64 {
    rusqlite::Connection::open(dir.join("ghostkey.db"))
        .unwrap()
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_send_neither_repeats_it_nor_loses_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gateway = SlowGateway::default();
    let mock = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/sms"))
        .respond_with(gateway.clone())
        .mount(&mock)
        .await;

    let key = AppSigningKey::generate("k1");
    let out = ghostkey(dir, port, &mock.uri())
        .args(["app", "add", "--name", "Health", "--key-id", "k1"])
        .args(["--public-key", &key.public_key_b64()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let app_id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let assertion = |purpose| {
        key.mint(
            &AssertionRequest {
                app_id: &app_id,
                user_id: "u",
                audience: "ghostkey-dev",
                purpose,
            },
            ghostkey_client::kit::unix_now(),
            120,
        )
        .unwrap()
    };

    let client = Client::new(&format!("http://127.0.0.1:{port}")).unwrap();
    let mut server = serve(dir, port, &mock.uri(), &client, "serve-1.log").await;
    ghostkey_client::enroll(
        &client,
        &assertion(Purpose::Enroll),
        &UserSecret::generate(),
        &app_id,
        "u",
        &key,
    )
    .await
    .unwrap();
    // Three phones: three code messages queued at once; the gateway takes 1.5 s each.
    let phones = ["+33612345671", "+33612345672", "+33612345673"];
    for phone in phones {
        client
            .add_method(
                &assertion(Purpose::Enroll),
                MethodKind::Sms,
                Some(phone),
                None,
            )
            .await
            .unwrap();
    }
    // The first is on its way (the gateway has it, its answer is not back): the signal.
    gateway
        .wait_for(1, "the first message never reached the gateway")
        .await;
    Command::new("kill")
        .arg("-TERM")
        .arg(server.id().to_string())
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || server.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}");
    // The send in flight at the signal was finished and recorded before the exit.
    let sent_before_restart = gateway.arrivals().len();
    assert_eq!(
        count(dir, "SELECT count(*) FROM outbox WHERE state = 'sent'") as usize,
        sent_before_restart,
        "a message the gateway took is not recorded as sent: it would be sent again"
    );
    assert!(
        sent_before_restart < phones.len(),
        "nothing was left queued at the signal"
    );

    // Restarted: what was queued goes out, and nothing twice.
    let mut server = serve(dir, port, &mock.uri(), &client, "serve-2.log").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(dir, "SELECT count(*) FROM outbox WHERE state = 'pending'") > 0 {
        assert!(
            Instant::now() < deadline,
            "the queue was not drained after the restart"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut arrivals = gateway.arrivals();
    arrivals.sort();
    assert_eq!(arrivals, phones, "each code message exactly once");
    Command::new("kill")
        .arg("-TERM")
        .arg(server.id().to_string())
        .status()
        .unwrap();
    assert!(server.wait().unwrap().success());
}
