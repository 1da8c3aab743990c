//! `ghostkey client`: a person enrols and recovers from a terminal, typing the codes.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{sms_gateway, TestServer, SERVICE_ID};

fn ghostkey() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ghostkey"));
    for (k, _) in std::env::vars() {
        if k.starts_with("GHOSTKEY_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

/// Runs `ghostkey client <args>`, typing the code the gateway receives after its first
/// `seen` messages.
async fn run_typing_code(
    args: &[&str],
    gateway: &wiremock::MockServer,
    seen: usize,
) -> (String, String) {
    let mut child = ghostkey()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let code = sms_gateway::next_code(gateway, seen).await;
    let mut stdin = child.stdin.take().unwrap();
    writeln!(stdin, "{code}").unwrap();
    drop(stdin);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?}\n{stdout}\n{stderr}");
    (stdout, stderr)
}

#[tokio::test]
async fn a_person_enrols_and_recovers_from_the_terminal() {
    let gateway = sms_gateway::accepting().await;
    // The command-line client mints its assertions with the system clock: the server's
    // clock is the system clock too, whatever TEST_CLOCK_START says.
    let server = TestServer::start_at(common::now(), |c| sms_gateway::configure(c, &gateway));
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("app.key");
    let secret_file = dir.path().join("user.secret");

    let out = ghostkey()
        .args(["client", "keygen", "--out"])
        .arg(&key_file)
        .output()
        .unwrap();
    assert!(out.status.success());
    let public_key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let out = ghostkey()
        .args([
            "app",
            "add",
            "--name",
            "Health",
            "--key-id",
            "k1",
            "--public-key",
            &public_key,
        ])
        .env("GHOSTKEY_DATABASE__PATH", server.db_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let app_id = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let common = |command: &'static str| -> Vec<String> {
        vec![
            "client".into(),
            command.into(),
            "--server".into(),
            server.base_url.clone(),
            "--service-id".into(),
            SERVICE_ID.into(),
            "--app-id".into(),
            app_id.clone(),
            "--key-file".into(),
            key_file.display().to_string(),
            "--user".into(),
            "patient-9".into(),
            "--secret-file".into(),
            secret_file.display().to_string(),
        ]
    };

    let mut enroll = common("enroll");
    enroll.extend(["--sms".into(), "+33 6 12 34 56 78".into()]);
    let args: Vec<&str> = enroll.iter().map(String::as_str).collect();
    let (stdout, stderr) = run_typing_code(&args, &gateway, 0).await;
    assert!(stdout.contains("enrolled: user patient-9"), "{stdout}");
    assert!(stderr.contains("+33 6******78"), "{stderr}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&secret_file)
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }

    let recover = common("recover");
    let args: Vec<&str> = recover.iter().map(String::as_str).collect();
    let (stdout, _) = run_typing_code(&args, &gateway, 1).await;
    assert!(
        stdout.contains("virtual device version 1 recovered"),
        "{stdout}"
    );
    // The keys printed are the ones enrolled.
    let conn = rusqlite::Connection::open(server.db_path()).unwrap();
    let signing: Vec<u8> = conn
        .query_row("SELECT vd_signing_key FROM users", [], |r| r.get(0))
        .unwrap();
    assert!(
        stdout.contains(&ghostkey_client::proto::b64::encode(signing)),
        "{stdout}"
    );

    // A wrong secret file: the blob does not open, and the command says so.
    std::fs::write(
        &secret_file,
        ghostkey_client::UserSecret::generate()
            .to_b64()
            .expose_secret_str(),
    )
    .unwrap();
    let mut child = ghostkey()
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let code = sms_gateway::next_code(&gateway, 2).await;
    writeln!(child.stdin.take().unwrap(), "{code}").unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not open with this user secret"));
}

trait ExposeStr {
    fn expose_secret_str(&self) -> String;
}

impl ExposeStr for secrecy::SecretString {
    fn expose_secret_str(&self) -> String {
        use secrecy::ExposeSecret;
        self.expose_secret().to_owned()
    }
}

/// `--passphrase` with `--passphrase-file` (no terminal needed): a weak passphrase is
/// refused before anything is stored; a good one enrols, and `recover` asks for it and
/// recovers the virtual device.
#[tokio::test]
async fn a_person_enrols_and_recovers_with_a_passphrase() {
    let server = TestServer::start_at(common::now(), |_| {});
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("app.key");
    let secret_file = dir.path().join("user.secret");
    let out = ghostkey()
        .args(["client", "keygen", "--out"])
        .arg(&key_file)
        .output()
        .unwrap();
    assert!(out.status.success());
    let public_key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let out = ghostkey()
        .args(["app", "add", "--name", "Notes", "--key-id", "k1"])
        .args(["--public-key", &public_key])
        .env("GHOSTKEY_DATABASE__PATH", server.db_path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let app_id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    ghostkey::admin::set_policy(
        &*server.store(),
        &app_id,
        &ghostkey::domain::policy::PolicyChange {
            allowed_methods: Some(vec![ghostkey_client::proto::api::MethodKind::Passphrase]),
            ..Default::default()
        },
        server.now(),
    )
    .unwrap();
    let run = |command: &str, file: &std::path::Path, extra: &[&str]| {
        let out = ghostkey()
            .args(["client", command, "--server", &server.base_url])
            .args(["--service-id", SERVICE_ID, "--app-id", &app_id])
            .arg("--key-file")
            .arg(&key_file)
            .args(["--user", "writer-3", "--secret-file"])
            .arg(&secret_file)
            .args(extra)
            .arg("--passphrase-file")
            .arg(file)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    let weak = dir.path().join("weak");
    std::fs::write(&weak, "aaaaaaaaaaaaaaaa\n").unwrap();
    let (ok, _, stderr) = run("enroll", &weak, &["--passphrase"]);
    assert!(!ok);
    assert!(stderr.contains("too weak"), "{stderr}");
    assert!(!stderr.contains("aaaaaaaa"), "{stderr}");
    assert!(
        !secret_file.exists(),
        "nothing stored for a refused passphrase"
    );
    assert_eq!(server.count("users"), 0);

    let good = dir.path().join("good");
    std::fs::write(&good, "seven quiet harbours under amber light\n").unwrap();
    let (ok, stdout, stderr) = run("enroll", &good, &["--passphrase"]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("enrolled: user writer-3"), "{stdout}");
    assert_eq!(
        server.query_i64(
            "SELECT count(*) FROM methods WHERE kind = 'passphrase' AND state = 'confirmed'"
        ),
        1
    );

    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "seven quiet harbours under amber lights\n").unwrap();
    let (ok, _, stderr) = run("recover", &wrong, &[]);
    assert!(!ok);
    assert!(stderr.contains("invalid_code"), "{stderr}");

    // The user backs off for 2 seconds after a failure.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (ok, stdout, stderr) = run("recover", &good, &[]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("virtual device version 1 recovered"),
        "{stdout}"
    );
    assert!(stderr.contains("passphrase"), "{stderr}");
}
