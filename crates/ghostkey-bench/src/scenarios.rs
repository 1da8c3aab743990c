//! What the benchmark asks of Ghostkey, through our own client library: enrolments,
//! complete TOTP, passphrase and passkey recoveries, SMS-code verifications, the attack
//! scenario's victims, and the setup they need.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ghostkey_client::kit::{unix_now, AssertionRequest};
use ghostkey_client::passphrase;
use ghostkey_client::proto::api::{ChallengeView, DevicePublicKeys, MethodKind, RecoveryState};
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::proto::ErrorCode;
use ghostkey_client::{AppSigningKey, Client, ClientError, UserSecret};
use secrecy::SecretString;
use webauthn_authenticator_rs::prelude::Url;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_authenticator_rs::WebauthnAuthenticator;

use crate::load::{timed, Steps};
use crate::receiver::Inbox;

/// The Ghostkey under test and the app the benchmark plays.
pub struct Target {
    /// Our client library over one pooled HTTP client, one per Ghostkey node; each
    /// request goes to the next node in turn (round-robin), so with several nodes an
    /// operation's start and verify usually land on different nodes.
    pub clients: Vec<Client>,
    /// The round-robin counter over `clients`.
    pub next: AtomicUsize,
    /// The app's id.
    pub app_id: String,
    /// The app's signing key.
    pub key: AppSigningKey,
    /// The deployment's service id (the assertions' audience).
    pub audience: String,
    /// The SMS gateway's inbox.
    pub inbox: Inbox,
    /// `503 unavailable` answers (the Argon2 line full) since the last
    /// [`Target::take_shed`]; each was retried after its `Retry-After`.
    pub shed: AtomicUsize,
}

/// The web page a passkey is made and used on: an allowed origin of the bench app, under
/// its RP id `localhost`.
pub const PASSKEY_ORIGIN: &str = "http://localhost:8443";
/// The passkeys' relying-party id.
pub const PASSKEY_RP_ID: &str = "localhost";

/// Shed answers retried before the operation counts as failed.
const MAX_SHED_RETRIES: usize = 30;

impl Target {
    /// A fresh single-use assertion.
    pub fn assertion(&self, user_id: &str, purpose: Purpose) -> Result<String, String> {
        self.key
            .mint(
                &AssertionRequest {
                    app_id: &self.app_id,
                    user_id,
                    audience: &self.audience,
                    purpose,
                },
                unix_now(),
                // Operations are prepared just before their phase; a phase ends well
                // within the service's 300-second ceiling.
                240,
            )
            .map_err(|e| e.to_string())
    }

    /// The client for the next request: the nodes in turn.
    pub fn client(&self) -> &Client {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.clients[i % self.clients.len()]
    }

    /// The shed answers counted since the last call (a phase's, when called after it).
    pub fn take_shed(&self) -> usize {
        self.shed.swap(0, Ordering::SeqCst)
    }
}

/// Times one request to Ghostkey that may be shed: a `503 unavailable` (every Argon2 slot
/// busy and the line full) is counted in [`Target::shed`], waited out for its
/// `Retry-After` as a client would, and the same request sent again. Only the accepted
/// attempt is recorded under `name`; the whole operation's time includes the shed
/// attempts and the waits.
async fn timed_shed<T, F, Fut>(
    t: &Target,
    steps: &mut Steps,
    name: &'static str,
    mut request: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    for _ in 0..=MAX_SHED_RETRIES {
        let t0 = Instant::now();
        match request().await {
            Ok(v) => {
                steps.push((name, t0.elapsed()));
                return Ok(v);
            }
            Err(ClientError::Api {
                code: Some(ErrorCode::Unavailable),
                retry_after,
                ..
            }) => {
                t.shed.fetch_add(1, Ordering::SeqCst);
                let wait = retry_after.unwrap_or(1).clamp(1, 10);
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            Err(e) => return Err(format!("{name}: {e}")),
        }
    }
    Err(format!(
        "{name}: shed {} times in a row",
        MAX_SHED_RETRIES + 1
    ))
}

/// An enrolment, ready to send.
pub struct Enrolment {
    assertion: String,
    sealed: Vec<u8>,
    public: DevicePublicKeys,
    root: Vec<u8>,
}

/// Builds `user_id`'s enrolment as a client would (keys, sealed device, endorsed root).
pub fn prepare_enrolment(t: &Target, user_id: &str) -> Result<Enrolment, String> {
    let prepared = ghostkey_client::prepare_enrolment(&t.app_id, user_id, t.key.kid())
        .map_err(|e| e.to_string())?;
    let root = t
        .key
        .endorse_root(&prepared.root, &t.app_id, user_id)
        .map_err(|e| e.to_string())?;
    Ok(Enrolment {
        assertion: t.assertion(user_id, Purpose::Enroll)?,
        sealed: prepared
            .virtual_device
            .seal(&UserSecret::generate())
            .map_err(|e| e.to_string())?,
        public: prepared.virtual_device.keys().public(),
        root: root.encode(),
    })
}

/// `POST /v1/enrollments`.
pub async fn enrol(t: Arc<Target>, e: Enrolment) -> Result<Steps, String> {
    let mut steps = Steps::new();
    timed(
        &mut steps,
        "POST /v1/enrollments",
        t.client()
            .enroll(&e.assertion, &e.sealed, &e.public, &e.root),
    )
    .await?;
    Ok(steps)
}

/// A user with a confirmed TOTP method.
pub struct TotpUser {
    user_id: String,
    method_id: String,
    authenticator: totp_rs::Totp,
}

/// Adds and confirms a TOTP method for an enrolled (pending) user: the user becomes active.
pub async fn setup_totp(t: Arc<Target>, user_id: String) -> Result<TotpUser, String> {
    confirm_totp(&t, t.client(), user_id).await
}

/// [`setup_totp`] with the requests sent through `client` (another source address).
async fn confirm_totp(t: &Target, client: &Client, user_id: String) -> Result<TotpUser, String> {
    let added = client
        .add_method(
            &t.assertion(&user_id, Purpose::Enroll)?,
            MethodKind::Totp,
            None,
            None,
        )
        .await
        .map_err(|e| format!("add TOTP: {e}"))?;
    let uri = added
        .totp
        .ok_or("no TOTP provisioning in the answer")?
        .otpauth_uri;
    let authenticator = totp_rs::Totp::from_url(&uri).map_err(|e| e.to_string())?;
    let code = authenticator.generate(unix_now() as u64).to_string();
    client
        .answer(&added.challenge.id, &code)
        .await
        .map_err(|e| format!("confirm TOTP: {e}"))?;
    Ok(TotpUser {
        user_id,
        method_id: added.method.id,
        authenticator,
    })
}

/// Enrols `user_id` and confirms a TOTP method, every request through `client` (the
/// attack scenario's victims are set up from several addresses: their app keeps the
/// default limit per address).
pub async fn setup_totp_user(
    t: Arc<Target>,
    client: Client,
    user_id: String,
) -> Result<TotpUser, String> {
    let e = prepare_enrolment(&t, &user_id)?;
    client
        .enroll(&e.assertion, &e.sealed, &e.public, &e.root)
        .await
        .map_err(|e| format!("enrol: {e}"))?;
    confirm_totp(&t, &client, user_id).await
}

/// A user of the attack scenario whose recovery is started and left open: the attackers
/// send it wrong codes.
pub struct Victim {
    /// The open recovery (its challenge id).
    pub recovery_id: String,
    authenticator: totp_rs::Totp,
}

/// Starts a recovery of `user` through `client` and leaves it open.
pub async fn start_victim_recovery(
    t: Arc<Target>,
    client: Client,
    user: TotpUser,
) -> Result<Victim, String> {
    let started = client
        .start_recovery(
            &t.assertion(&user.user_id, Purpose::Recover)?,
            &user.method_id,
        )
        .await
        .map_err(|e| format!("start a victim's recovery: {e}"))?;
    Ok(Victim {
        recovery_id: started.id,
        authenticator: user.authenticator,
    })
}

impl Victim {
    /// A well-formed code that is certainly wrong now: `guess` (any number) made into a
    /// code of the right length, moved on while it equals the code of a step near now
    /// (Ghostkey accepts the current and the previous step).
    pub fn wrong_code(&self, guess: u64) -> String {
        let now = unix_now() as u64;
        let near: Vec<String> = [
            now.saturating_sub(60),
            now.saturating_sub(30),
            now,
            now + 30,
        ]
        .iter()
        .map(|&at| self.authenticator.generate(at).to_string())
        .collect();
        let digits = near[0].len() as u32;
        let modulus = 10u64.pow(digits);
        let mut n = guess % modulus;
        loop {
            let code = format!("{n:0width$}", width = digits as usize);
            if !near.contains(&code) {
                return code;
            }
            n = (n + 1) % modulus;
        }
    }
}

/// A complete TOTP recovery, ready to run.
pub struct TotpRecovery {
    user: TotpUser,
    start_assertion: String,
}

/// Mints what the recovery of `user` needs.
pub fn prepare_totp_recovery(t: &Target, user: TotpUser) -> Result<TotpRecovery, String> {
    Ok(TotpRecovery {
        start_assertion: t.assertion(&user.user_id, Purpose::Recover)?,
        user,
    })
}

/// Start, then verify the code the authenticator shows now. With the default policy (no
/// waiting period) the verify answer is the release: it carries the sealed device.
pub async fn totp_recovery(t: Arc<Target>, r: TotpRecovery) -> Result<Steps, String> {
    let mut steps = Steps::new();
    let started = timed(
        &mut steps,
        "POST /v1/recoveries",
        t.client()
            .start_recovery(&r.start_assertion, &r.user.method_id),
    )
    .await?;
    let code = r.user.authenticator.generate(unix_now() as u64).to_string();
    let released = timed(
        &mut steps,
        "POST /v1/recoveries/{id}/verify",
        t.client().verify_recovery(&started.id, &code),
    )
    .await?;
    expect_released(released.state, released.sealed_virtual_device.is_some())?;
    Ok(steps)
}

fn expect_released(state: RecoveryState, has_blob: bool) -> Result<(), String> {
    if state != RecoveryState::Released || !has_blob {
        return Err(format!("expected a release, got {state:?}"));
    }
    Ok(())
}

/// An SMS recovery challenge whose code has arrived: the verification to measure.
pub struct SmsVerification {
    recovery_id: String,
    code: String,
}

/// Enrols `user_id` with an SMS method on `phone`, confirms it with the texted code, and
/// starts a recovery; returns the recovery and its texted code.
pub async fn setup_sms_recovery(
    t: Arc<Target>,
    user_id: String,
    phone: String,
) -> Result<SmsVerification, String> {
    let e = prepare_enrolment(&t, &user_id)?;
    enrol(Arc::clone(&t), e).await?;
    let added = t
        .client()
        .add_method(
            &t.assertion(&user_id, Purpose::Enroll)?,
            MethodKind::Sms,
            Some(&phone),
            None,
        )
        .await
        .map_err(|e| format!("add SMS: {e}"))?;
    let code = t.inbox.code(&phone, 0, Duration::from_secs(60)).await?;
    let mut steps = Steps::new();
    timed_shed(&t, &mut steps, "confirm SMS", || {
        t.client().answer(&added.challenge.id, &code)
    })
    .await?;
    let recover = t.assertion(&user_id, Purpose::Recover)?;
    let started = timed_shed(&t, &mut steps, "start SMS recovery", || {
        t.client().start_recovery(&recover, &added.method.id)
    })
    .await?;
    let code = t.inbox.code(&phone, 1, Duration::from_secs(60)).await?;
    Ok(SmsVerification {
        recovery_id: started.id,
        code,
    })
}

/// `POST /v1/recoveries/{id}/verify` with the texted code: one Argon2id check, then the
/// release.
pub async fn sms_verification(t: Arc<Target>, v: SmsVerification) -> Result<Steps, String> {
    let mut steps = Steps::new();
    let released = timed_shed(
        &t,
        &mut steps,
        "POST /v1/recoveries/{id}/verify (SMS code)",
        || t.client().verify_recovery(&v.recovery_id, &v.code),
    )
    .await?;
    expect_released(released.state, released.sealed_virtual_device.is_some())?;
    Ok(steps)
}

/// The passphrase every benchmark user sets (its verifier differs per user: the salt is
/// the app and user ids).
const PASSPHRASE: &str = "violet anchors drift past seven lanterns";

/// A user with a confirmed passphrase method, and the verifier their client derived.
pub struct PassphraseUser {
    user_id: String,
    method_id: String,
    verifier: String,
}

/// Enrols `user_id` and adds and confirms a passphrase method. The client's Argon2id
/// derivation of the verifier is done here, once per user, on a blocking thread: it is
/// the client's cost, not the server's, and stays out of the measured recoveries.
pub async fn setup_passphrase(t: Arc<Target>, user_id: String) -> Result<PassphraseUser, String> {
    let e = prepare_enrolment(&t, &user_id)?;
    enrol(Arc::clone(&t), e).await?;
    let (app, user) = (t.app_id.clone(), user_id.clone());
    let setup = tokio::task::spawn_blocking(move || {
        passphrase::setup(&SecretString::from(PASSPHRASE.to_owned()), &app, &user)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let verifier = setup.verifier.clone();
    let mut steps = Steps::new();
    let assertion = t.assertion(&user_id, Purpose::Enroll)?;
    let added = timed_shed(&t, &mut steps, "add passphrase", || {
        t.client().add_passphrase(&assertion, setup.clone(), None)
    })
    .await?;
    if added.challenge.passphrase.as_ref().map(|p| p.version) != Some(setup.version) {
        return Err("the confirm challenge shows other passphrase parameters".into());
    }
    timed_shed(&t, &mut steps, "confirm passphrase", || {
        t.client().answer(&added.challenge.id, &verifier)
    })
    .await?;
    Ok(PassphraseUser {
        user_id,
        method_id: added.method.id,
        verifier,
    })
}

/// A complete passphrase recovery, ready to run.
pub struct PassphraseRecovery {
    user: PassphraseUser,
    start_assertion: String,
}

/// Mints what the recovery of `user` needs.
pub fn prepare_passphrase_recovery(
    t: &Target,
    user: PassphraseUser,
) -> Result<PassphraseRecovery, String> {
    Ok(PassphraseRecovery {
        start_assertion: t.assertion(&user.user_id, Purpose::Recover)?,
        user,
    })
}

/// Start, then verify with the verifier derived at setup: one Argon2id check on the
/// server, then the release.
pub async fn passphrase_recovery(t: Arc<Target>, r: PassphraseRecovery) -> Result<Steps, String> {
    let mut steps = Steps::new();
    let started = timed(
        &mut steps,
        "POST /v1/recoveries",
        t.client()
            .start_recovery(&r.start_assertion, &r.user.method_id),
    )
    .await?;
    if started.passphrase.is_none() {
        return Err("a passphrase recovery without its parameters".into());
    }
    let released = timed_shed(&t, &mut steps, "POST /v1/recoveries/{id}/verify", || {
        t.client().verify_recovery(&started.id, &r.user.verifier)
    })
    .await?;
    expect_released(released.state, released.sealed_virtual_device.is_some())?;
    Ok(steps)
}

/// A user with a confirmed passkey, and the software authenticator that holds it.
pub struct PasskeyUser {
    user_id: String,
    method_id: String,
    authenticator: SoftPasskey,
}

fn passkey_page() -> Result<Url, String> {
    Url::parse(PASSKEY_ORIGIN).map_err(|e| e.to_string())
}

fn webauthn_options<T: serde::de::DeserializeOwned>(ch: &ChallengeView) -> Result<T, String> {
    let options = ch
        .webauthn
        .clone()
        .ok_or("a passkey challenge without WebAuthn options")?;
    serde_json::from_value(options).map_err(|e| format!("WebAuthn options: {e}"))
}

/// Enrols `user_id` and registers a passkey from a software authenticator (user
/// verification set) on the allowed page: the user becomes active.
pub async fn setup_passkey(t: Arc<Target>, user_id: String) -> Result<PasskeyUser, String> {
    let e = prepare_enrolment(&t, &user_id)?;
    enrol(Arc::clone(&t), e).await?;
    let added = t
        .client()
        .add_passkey(&t.assertion(&user_id, Purpose::Enroll)?, None, None)
        .await
        .map_err(|e| format!("add passkey: {e}"))?;
    let mut authenticator = SoftPasskey::new(true);
    let registration = authenticator
        .do_registration(passkey_page()?, webauthn_options(&added.challenge)?)
        .map_err(|e| format!("the authenticator's registration: {e:?}"))?;
    let registration = serde_json::to_value(&registration).map_err(|e| e.to_string())?;
    t.client()
        .answer_webauthn(&added.challenge.id, registration)
        .await
        .map_err(|e| format!("confirm passkey: {e}"))?;
    Ok(PasskeyUser {
        user_id,
        method_id: added.method.id,
        authenticator,
    })
}

/// A complete passkey recovery, ready to run.
pub struct PasskeyRecovery {
    user: PasskeyUser,
    start_assertion: String,
}

/// Mints what the recovery of `user` needs.
pub fn prepare_passkey_recovery(t: &Target, user: PasskeyUser) -> Result<PasskeyRecovery, String> {
    Ok(PasskeyRecovery {
        start_assertion: t.assertion(&user.user_id, Purpose::Recover)?,
        user,
    })
}

/// Start (the server makes the ceremony's challenge and keeps its state, sealed), the
/// authenticator signs the challenge (ECDSA P-256, on the load generator's core, timed
/// as its own step), then verify (the server opens the state and checks the signature),
/// which releases.
pub async fn passkey_recovery(t: Arc<Target>, r: PasskeyRecovery) -> Result<Steps, String> {
    let PasskeyRecovery {
        mut user,
        start_assertion,
    } = r;
    let mut steps = Steps::new();
    let started = timed(
        &mut steps,
        "POST /v1/recoveries",
        t.client().start_recovery(&start_assertion, &user.method_id),
    )
    .await?;
    let t0 = Instant::now();
    let signed = user
        .authenticator
        .do_authentication(passkey_page()?, webauthn_options(&started)?)
        .map_err(|e| format!("the authenticator's assertion: {e:?}"))?;
    let signed = serde_json::to_value(&signed).map_err(|e| e.to_string())?;
    steps.push((CLIENT_SIGNS, t0.elapsed()));
    let released = timed(
        &mut steps,
        "POST /v1/recoveries/{id}/verify",
        t.client().verify_recovery_webauthn(&started.id, signed),
    )
    .await?;
    expect_released(released.state, released.sealed_virtual_device.is_some())?;
    Ok(steps)
}

/// The step name of the authenticator's signature in a passkey recovery: the client's
/// work, inside the whole operation's time, not a request.
pub const CLIENT_SIGNS: &str = "client: the authenticator signs";

/// The baseline's one request: one durable write.
pub async fn baseline_write(http: reqwest::Client, url: Arc<String>) -> Result<Steps, String> {
    let mut steps = Steps::new();
    let status = timed(&mut steps, "POST /write", async {
        let answer = http
            .post(url.as_str())
            .json(&serde_json::json!({"payload": "a durable write"}))
            .send()
            .await?;
        let status = answer.status();
        // Read the body, as our client library does, so the connection is reused.
        answer.bytes().await?;
        Ok::<_, reqwest::Error>(status)
    })
    .await?;
    if status != reqwest::StatusCode::CREATED {
        return Err(format!("baseline answered {status}"));
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_victims_wrong_code_is_well_formed_and_never_a_live_one() {
        let authenticator = totp_rs::Totp::from_url_unchecked(
            "otpauth://totp/bench:victim?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP&issuer=bench&digits=6&period=30",
        )
        .unwrap();
        let victim = Victim {
            recovery_id: "ch_x".into(),
            authenticator,
        };
        let now = unix_now() as u64;
        let live: u64 = victim
            .authenticator
            .generate(now)
            .to_string()
            .parse()
            .unwrap();
        for guess in [live, live + 1_000_000, 0, 999_999, u64::MAX] {
            let code = victim.wrong_code(guess);
            assert_eq!(code.len(), 6, "{code}");
            assert!(code.bytes().all(|b| b.is_ascii_digit()), "{code}");
            let at = unix_now() as u64;
            for step in [at - 30, at] {
                assert_ne!(code, victim.authenticator.generate(step).to_string());
            }
        }
    }
}
