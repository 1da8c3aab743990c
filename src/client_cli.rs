//! `ghostkey client ...`: enrol and recover from a terminal against a running Ghostkey,
//! with an app key file standing in for the app provider (it mints the assertions) and a
//! user-secret file standing in for the secret the app provider keeps for the user.
//! For trying Ghostkey out and for operators' smoke tests; a real app does this in its
//! own backend and client with `ghostkey-client`.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use ghostkey_client::kit::{unix_now, AssertionRequest};
use ghostkey_client::proto::api::{MethodKind, MethodState};
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::recovery::{Recovered, RecoveryDriver};
use ghostkey_client::{AppSigningKey, Client, UserSecret, VirtualDevice};
use secrecy::ExposeSecret;

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
    },
    /// Recover a user's virtual device on a "new device": pick a method, type the code.
    Recover {
        #[command(flatten)]
        user: UserArgs,
        /// The method to use (default: the first confirmed one).
        #[arg(long)]
        method_id: Option<String>,
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
        } => {
            let session = Session::new(user)?;
            let (kind, destination) = match (sms, email, totp) {
                (Some(phone), _, _) => (MethodKind::Sms, Some(phone)),
                (_, Some(address), _) => (MethodKind::Email, Some(address)),
                (_, _, true) => (MethodKind::Totp, None),
                _ => return Err("choose a first method: --sms, --email or --totp".into()),
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
            let added = session
                .client
                .add_method(
                    &session.assertion(Purpose::Enroll)?,
                    kind,
                    destination.as_deref(),
                    None,
                )
                .await
                .map_err(api)?;
            if let Some(totp) = &added.totp {
                eprintln!(
                    "add this to your authenticator app:\n  {}",
                    totp.otpauth_uri
                );
            } else if let Some(masked) = &added.challenge.masked {
                eprintln!("a code was sent to {masked}");
            }
            let code = prompt("code: ")?;
            let answer = session
                .client
                .answer(&added.challenge.id, &code)
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
        ClientCommand::Recover { user, method_id } => {
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
                    m.masked.as_deref().unwrap_or("authenticator app"),
                    m.state
                );
            }
            let method = match method_id {
                Some(id) => id,
                None => methods
                    .methods
                    .iter()
                    .find(|m| m.state == MethodState::Confirmed)
                    .map(|m| m.id.clone())
                    .ok_or("the user has no confirmed method")?,
            };
            let started = driver
                .start(&session.assertion(Purpose::Recover)?, &method)
                .await
                .map_err(api)?;
            match &started.masked {
                Some(masked) => eprintln!(
                    "recovery {} started; a code was sent to {masked}",
                    started.id
                ),
                None => eprintln!(
                    "recovery {} started; type your authenticator app's code",
                    started.id
                ),
            }
            let code = prompt("code: ")?;
            match driver.submit_code(&started.id, &code).await.map_err(api)? {
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
