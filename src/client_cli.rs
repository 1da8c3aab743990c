//! `ghostkey client ...`: enrol and recover from a terminal against a running Ghostkey,
//! with an app key file standing in for the app provider (it mints the assertions) and a
//! user-secret file standing in for the secret the app provider keeps for the user.
//! For trying Ghostkey out and for operators' smoke tests; a real app does this in its
//! own backend and client with `ghostkey-client`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use ghostkey_client::kit::{unix_now, AssertionRequest};
use ghostkey_client::passphrase;
use ghostkey_client::proto::api::{MethodKind, MethodState};
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::recovery::{Recovered, RecoveryDriver};
use ghostkey_client::{AppSigningKey, Client, UserSecret, VirtualDevice};
use secrecy::{ExposeSecret, SecretString};

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Generate an app signing key (PKCS#8 PEM, mode 0600); prints its public key for
    /// `ghostkey app add --public-key`.
    Keygen {
        /// Where to write the private key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Enrol a user: seal a new virtual device, store it, and confirm a first method.
    Enroll {
        #[command(flatten)]
        user: UserArgs,
        /// Confirm an SMS method with this phone number (international form).
        #[arg(long, group = "method")]
        sms: Option<String>,
        /// Confirm an e-mail method with this address.
        #[arg(long, group = "method")]
        email: Option<String>,
        /// Confirm a TOTP method (prints the otpauth:// URI for an authenticator app).
        #[arg(long, group = "method")]
        totp: bool,
        /// Confirm a passphrase method: asked twice on the terminal without echo (or read
        /// from --passphrase-file). Only a verifier derived from it is sent.
        #[arg(long, group = "method")]
        passphrase: bool,
        /// Read the passphrase from the first line of this file instead of the terminal
        /// (for scripts and tests; keep the file private).
        #[arg(long, requires = "passphrase")]
        passphrase_file: Option<PathBuf>,
    },
    /// Recover a user's virtual device on a "new device": pick a method, type the code.
    Recover {
        #[command(flatten)]
        user: UserArgs,
        /// The method to use (default: the first confirmed one).
        #[arg(long)]
        method_id: Option<String>,
        /// For a passphrase method: read the passphrase from the first line of this file
        /// instead of asking on the terminal without echo.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
    /// Stop a recovery with the cancel code a notice carried: what a user does when a
    /// recovery they did not start is announced. Needs nothing from the app provider.
    Cancel {
        /// Ghostkey's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        server: String,
        /// The cancel code (`XXXX-XXXX-XXXX-XXXX-XXXX`); asked on standard input if absent.
        #[arg(long)]
        cancel_code: Option<String>,
    },
    /// Complete a recovery whose waiting period is over.
    Release {
        #[command(flatten)]
        user: UserArgs,
        /// The recovery id `recover` printed.
        #[arg(long)]
        recovery_id: String,
    },
}

#[derive(Args)]
pub struct UserArgs {
    /// Ghostkey's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    server: String,
    /// The deployment's service id (the assertions' `aud`).
    #[arg(long, default_value = "ghostkey-dev")]
    service_id: String,
    /// The app id `ghostkey app add` printed.
    #[arg(long)]
    app_id: String,
    /// The app signing key file (`ghostkey client keygen`).
    #[arg(long)]
    key_file: PathBuf,
    /// The key id registered with the key.
    #[arg(long, default_value = "k1")]
    key_id: String,
    /// The user id (pseudonymous).
    #[arg(long)]
    user: String,
    /// The user-secret file: created by `enroll`, read by `recover`.
    #[arg(long)]
    secret_file: PathBuf,
}

struct Session {
    client: Client,
    key: AppSigningKey,
    args: UserArgs,
}

impl Session {
    fn new(args: UserArgs) -> Result<Session, String> {
        let pem = std::fs::read_to_string(&args.key_file)
            .map_err(|e| format!("cannot read {}: {e}", args.key_file.display()))?;
        let key = AppSigningKey::from_pkcs8_pem(&args.key_id, &pem).map_err(|e| e.to_string())?;
        let client = Client::new(&args.server).map_err(|e| e.to_string())?;
        Ok(Session { client, key, args })
    }

    fn assertion(&self, purpose: Purpose) -> Result<String, String> {
        let request = AssertionRequest {
            app_id: &self.args.app_id,
            user_id: &self.args.user,
            audience: &self.args.service_id,
            purpose,
        };
        self.key
            .mint(
                &request,
                unix_now(),
                ghostkey_client::kit::DEFAULT_LIFETIME_SECS,
            )
            .map_err(|e| e.to_string())
    }
}

fn prompt(question: &str) -> Result<String, String> {
    eprint!("{question}");
    std::io::stderr().flush().map_err(|e| e.to_string())?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    if line.is_empty() {
        return Err("no answer on standard input".into());
    }
    Ok(line.trim().to_owned())
}

/// A passphrase from the first line of `file` (its line ending removed), or asked on the
/// terminal with echo off (`stty -echo` on `/dev/tty`, restored afterwards).
fn read_passphrase(file: Option<&Path>, question: &str) -> Result<SecretString, String> {
    if let Some(path) = file {
        let text = zeroize::Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        );
        let line = text.lines().next().unwrap_or("");
        return Ok(SecretString::from(line.to_owned()));
    }
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|e| {
            format!("no terminal to ask for the passphrase ({e}): use --passphrase-file")
        })?;
    let stty = |arg: &str| -> Result<(), String> {
        let input = tty.try_clone().map_err(|e| e.to_string())?;
        let status = std::process::Command::new("stty")
            .arg(arg)
            .stdin(input)
            .status()
            .map_err(|e| format!("cannot run stty to hide the passphrase: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err("stty could not turn the terminal's echo off: use --passphrase-file".into())
        }
    };
    eprint!("{question}");
    std::io::stderr().flush().map_err(|e| e.to_string())?;
    stty("-echo")?;
    let mut line = zeroize::Zeroizing::new(String::new());
    let read = std::io::BufReader::new(&tty).read_line(&mut line);
    let restored = stty("echo");
    eprintln!();
    read.map_err(|e| e.to_string())?;
    restored?;
    Ok(SecretString::from(
        line.trim_end_matches(['\r', '\n']).to_owned(),
    ))
}

fn write_private(path: &Path, content: &str) -> Result<(), String> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| {
        format!(
            "cannot create {} (it must not exist yet): {e}",
            path.display()
        )
    })?;
    file.write_all(content.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn api(e: ghostkey_client::ClientError) -> String {
    e.to_string()
}

fn show_device(device: &VirtualDevice) {
    let public = device.keys().public();
    println!("virtual device version {} recovered", device.version());
    println!("  signing key (Ed25519):    {}", public.signing_key);
    println!("  encryption key (X25519):  {}", public.encryption_key);
}

/// Runs one `ghostkey client` command.
pub async fn run(command: ClientCommand) -> Result<(), String> {
    match command {
        ClientCommand::Keygen { out } => {
            let key = AppSigningKey::generate("k1");
            let pem = key.to_pkcs8_pem().map_err(|e| e.to_string())?;
            write_private(&out, pem.expose_secret())?;
            eprintln!("wrote {}; register its public key with:", out.display());
            eprintln!("  ghostkey app add --name NAME --key-id k1 --public-key PUBLIC_KEY");
            println!("{}", key.public_key_b64());
        }
        ClientCommand::Enroll {
            user,
            sms,
            email,
            totp,
            passphrase,
            passphrase_file,
        } => {
            let session = Session::new(user)?;
            let (kind, destination) = match (sms, email, totp, passphrase) {
                (Some(phone), _, _, _) => (MethodKind::Sms, Some(phone)),
                (_, Some(address), _, _) => (MethodKind::Email, Some(address)),
                (_, _, true, _) => (MethodKind::Totp, None),
                (_, _, _, true) => (MethodKind::Passphrase, None),
                _ => {
                    return Err(
                        "choose a first method: --sms, --email, --totp or --passphrase".into(),
                    )
                }
            };
            // A passphrase is checked here, before anything is stored anywhere.
            let chosen = if kind == MethodKind::Passphrase {
                let first = read_passphrase(passphrase_file.as_deref(), "new passphrase: ")?;
                passphrase::check_strength(&first).map_err(|e| e.to_string())?;
                if passphrase_file.is_none() {
                    let again = read_passphrase(None, "the same passphrase again: ")?;
                    if again.expose_secret() != first.expose_secret() {
                        return Err("the two passphrases differ; nothing was done".into());
                    }
                }
                Some(first)
            } else {
                None
            };
            // The app provider's part: one secret per user, kept by the app.
            let secret = UserSecret::generate();
            write_private(&session.args.secret_file, secret.to_b64().expose_secret())?;
            let enrolled = ghostkey_client::enroll(
                &session.client,
                &session.assertion(Purpose::Enroll)?,
                &secret,
                &session.args.app_id,
                &session.args.user,
                &session.key,
            )
            .await
            .map_err(api)?;
            eprintln!("virtual device sealed and stored (pending until a method is confirmed)");
            let added = match &chosen {
                Some(p) => {
                    let setup = passphrase::setup(p, &session.args.app_id, &session.args.user)
                        .map_err(|e| e.to_string())?;
                    session
                        .client
                        .add_passphrase(&session.assertion(Purpose::Enroll)?, setup, None)
                        .await
                        .map_err(api)?
                }
                None => session
                    .client
                    .add_method(
                        &session.assertion(Purpose::Enroll)?,
                        kind,
                        destination.as_deref(),
                        None,
                    )
                    .await
                    .map_err(api)?,
            };
            let code = match &chosen {
                // Confirmed with the verifier of the passphrase typed (twice) above.
                Some(p) => passphrase::answer(
                    p,
                    &session.args.app_id,
                    &session.args.user,
                    added.challenge.passphrase.as_ref(),
                )
                .map_err(|e| e.to_string())?,
                None => SecretString::from(String::new()),
            };
            if chosen.is_some() {
                eprintln!("passphrase set; confirming it");
            } else if let Some(totp) = &added.totp {
                eprintln!(
                    "add this to your authenticator app:\n  {}",
                    totp.otpauth_uri
                );
            } else if let Some(masked) = &added.challenge.masked {
                eprintln!("a code was sent to {masked}");
            }
            let code = match chosen {
                Some(_) => code,
                None => SecretString::from(prompt("code: ")?),
            };
            let answer = session
                .client
                .answer(&added.challenge.id, code.expose_secret())
                .await
                .map_err(api)?;
            println!(
                "enrolled: user {} of app {}, state {:?}, method {} confirmed",
                enrolled.answer.user_id,
                enrolled.answer.app_id,
                answer.enrollment_state,
                answer.method.id
            );
        }
        ClientCommand::Recover {
            user,
            method_id,
            passphrase_file,
        } => {
            let session = Session::new(user)?;
            let secret = read_secret(&session.args.secret_file)?;
            let driver = RecoveryDriver::new(
                &session.client,
                &secret,
                &session.args.app_id,
                &session.args.user,
            );
            let methods = driver
                .methods(&session.assertion(Purpose::Recover)?)
                .await
                .map_err(api)?;
            for m in &methods.methods {
                eprintln!(
                    "  method {}  {}  {}  {:?}",
                    m.id,
                    m.kind.as_str(),
                    m.masked.as_deref().unwrap_or(match m.kind {
                        MethodKind::Passphrase => "passphrase",
                        _ => "authenticator app",
                    }),
                    m.state
                );
            }
            // A passkey needs an authenticator, which this command cannot reach: it is
            // refused before a recovery (one of the user's few a day) is started for nothing.
            let method = match method_id {
                Some(id) => {
                    if methods
                        .methods
                        .iter()
                        .any(|m| m.id == id && m.kind == MethodKind::Passkey)
                    {
                        return Err(format!(
                            "method {id} is a passkey: recover with it from a browser (the web SDK) \
                             or another WebAuthn client; this command cannot use an authenticator"
                        ));
                    }
                    id
                }
                None => methods
                    .methods
                    .iter()
                    .find(|m| m.state == MethodState::Confirmed && m.kind != MethodKind::Passkey)
                    .map(|m| m.id.clone())
                    .ok_or(
                        "the user has no confirmed method this command can use (a passkey needs \
                         a browser or another WebAuthn client)",
                    )?,
            };
            let started = driver
                .start(&session.assertion(Purpose::Recover)?, &method)
                .await
                .map_err(api)?;
            let code = match (&started.masked, &started.passphrase) {
                (_, Some(params)) => {
                    eprintln!("recovery {} started; type your passphrase", started.id);
                    let typed = read_passphrase(passphrase_file.as_deref(), "passphrase: ")?;
                    passphrase::answer(
                        &typed,
                        &session.args.app_id,
                        &session.args.user,
                        Some(params),
                    )
                    .map_err(|e| e.to_string())?
                }
                (Some(masked), None) => {
                    eprintln!(
                        "recovery {} started; a code was sent to {masked}",
                        started.id
                    );
                    SecretString::from(prompt("code: ")?)
                }
                (None, None) => {
                    eprintln!(
                        "recovery {} started; type your authenticator app's code",
                        started.id
                    );
                    SecretString::from(prompt("code: ")?)
                }
            };
            match driver
                .submit_code(&started.id, code.expose_secret())
                .await
                .map_err(api)?
            {
                Recovered::Released(device) => show_device(&device),
                Recovered::Waiting { available_at } => {
                    println!(
                        "code accepted; the release is available from {available_at} (Unix time). Then run:\n  \
                         ghostkey client release --recovery-id {} ...",
                        started.id
                    );
                }
            }
        }
        ClientCommand::Cancel {
            server,
            cancel_code,
        } => {
            let client = Client::new(&server).map_err(|e| e.to_string())?;
            let code = match cancel_code {
                Some(code) => code,
                None => prompt("Cancel code from the notice: ")?,
            };
            let recovery = client.cancel_recovery_with_code(&code).await.map_err(api)?;
            eprintln!(
                "recovery {} is cancelled: it will never release anything",
                recovery.recovery_id
            );
        }
        ClientCommand::Release { user, recovery_id } => {
            let session = Session::new(user)?;
            let secret = read_secret(&session.args.secret_file)?;
            let driver = RecoveryDriver::new(
                &session.client,
                &secret,
                &session.args.app_id,
                &session.args.user,
            );
            let device = driver
                .release(&session.assertion(Purpose::Recover)?, &recovery_id)
                .await
                .map_err(api)?;
            show_device(&device);
        }
    }
    Ok(())
}

fn read_secret(path: &Path) -> Result<UserSecret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    UserSecret::from_b64(&text)
        .ok_or_else(|| format!("{} does not hold a user secret", path.display()))
}
