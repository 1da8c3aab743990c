//! What the benchmark asks of Ghostkey, through our own client library: enrolments,
//! complete TOTP recoveries, SMS-code verifications, and the setup they need.

use std::sync::Arc;
use std::time::Duration;

use ghostkey_client::kit::{unix_now, AssertionRequest};
use ghostkey_client::proto::api::{DevicePublicKeys, MethodKind, RecoveryState};
use ghostkey_client::proto::assertion::Purpose;
use ghostkey_client::{AppSigningKey, Client, UserSecret};

use crate::load::{timed, Steps};
use crate::receiver::Inbox;

/// The Ghostkey under test and the app the benchmark plays.
pub struct Target {
    /// Our client library over one pooled HTTP client.
    pub client: Client,
    /// The app's id.
    pub app_id: String,
    /// The app's signing key.
    pub key: AppSigningKey,
    /// The deployment's service id (the assertions' audience).
    pub audience: String,
    /// The SMS gateway's inbox.
    pub inbox: Inbox,
}

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
        t.client.enroll(&e.assertion, &e.sealed, &e.public, &e.root),
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
    let added = t
        .client
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
    t.client
        .answer(&added.challenge.id, &code)
        .await
        .map_err(|e| format!("confirm TOTP: {e}"))?;
    Ok(TotpUser {
        user_id,
        method_id: added.method.id,
        authenticator,
    })
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
        t.client
            .start_recovery(&r.start_assertion, &r.user.method_id),
    )
    .await?;
    let code = r.user.authenticator.generate(unix_now() as u64).to_string();
    let released = timed(
        &mut steps,
        "POST /v1/recoveries/{id}/verify",
        t.client.verify_recovery(&started.id, &code),
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
        .client
        .add_method(
            &t.assertion(&user_id, Purpose::Enroll)?,
            MethodKind::Sms,
            Some(&phone),
            None,
        )
        .await
        .map_err(|e| format!("add SMS: {e}"))?;
    let code = t.inbox.code(&phone, 0, Duration::from_secs(60)).await?;
    t.client
        .answer(&added.challenge.id, &code)
        .await
        .map_err(|e| format!("confirm SMS: {e}"))?;
    let started = t
        .client
        .start_recovery(&t.assertion(&user_id, Purpose::Recover)?, &added.method.id)
        .await
        .map_err(|e| format!("start SMS recovery: {e}"))?;
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
    let released = timed(
        &mut steps,
        "POST /v1/recoveries/{id}/verify (SMS code)",
        t.client.verify_recovery(&v.recovery_id, &v.code),
    )
    .await?;
    expect_released(released.state, released.sealed_virtual_device.is_some())?;
    Ok(steps)
}

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
