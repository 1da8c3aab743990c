//! Requests and responses of the `/v1` HTTP API.
//!
//! Binary values travel as base64url without padding. Requests refuse unknown fields.

use serde::{Deserialize, Serialize};

/// The public keys of a device: Ed25519 for signing, X25519 for encryption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DevicePublicKeys {
    /// Ed25519 public key, 32 bytes, base64url.
    pub signing_key: String,
    /// X25519 public key, 32 bytes, base64url.
    pub encryption_key: String,
}

/// `POST /v1/enrollments`, with an `enroll` assertion as bearer token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The sealed virtual device (see [`crate::sealed`]), base64url.
    pub sealed_virtual_device: String,
    /// The virtual device's public keys.
    pub virtual_device: DevicePublicKeys,
    /// The root block of the user's device chain, endorsed by the app provider, base64url.
    pub root_block: String,
}

/// The state of a user's enrolment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EnrollmentState {
    /// Stored, waiting for a first verification method to be confirmed.
    Pending,
    /// At least one verification method is confirmed; recovery is possible.
    Active,
}

/// The answer to an enrolment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollResponse {
    /// The app id (the assertion's `iss`).
    pub app_id: String,
    /// The user id (the assertion's `sub`).
    pub user_id: String,
    /// The enrolment state.
    pub state: EnrollmentState,
    /// When Ghostkey stored it, seconds since the Unix epoch.
    pub created_at: i64,
}

/// `GET /healthz` and `GET /readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    /// `ok`. (When the store does not answer, `/readyz` answers 503 with the problem
    /// document `unavailable` instead.)
    pub status: String,
}

/// A kind of verification method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum MethodKind {
    /// Time-based one-time password (RFC 6238) in an authenticator app.
    Totp,
    /// A code sent by SMS.
    Sms,
    /// A code sent by e-mail.
    Email,
    /// A passphrase the user knows. Ghostkey receives only a verifier derived from it on
    /// the client (docs/PROTOCOL.md §5.6); nothing is delivered.
    Passphrase,
    /// A passkey (WebAuthn credential) made for Ghostkey alone, checked by Ghostkey's own
    /// WebAuthn ceremonies with user verification (docs/PROTOCOL.md §5.7).
    Passkey,
}

impl MethodKind {
    /// The wire and stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            MethodKind::Totp => "totp",
            MethodKind::Sms => "sms",
            MethodKind::Email => "email",
            MethodKind::Passphrase => "passphrase",
            MethodKind::Passkey => "passkey",
        }
    }

    /// Whether Ghostkey sends this kind of method a code (SMS and e-mail) — the kinds
    /// that have a destination, receive notices and spend send limits.
    pub fn is_delivered(self) -> bool {
        matches!(self, MethodKind::Sms | MethodKind::Email)
    }

    /// Parses a wire or stored name.
    pub fn parse(s: &str) -> Option<MethodKind> {
        match s {
            "totp" => Some(MethodKind::Totp),
            "sms" => Some(MethodKind::Sms),
            "email" => Some(MethodKind::Email),
            "passphrase" => Some(MethodKind::Passphrase),
            "passkey" => Some(MethodKind::Passkey),
            _ => None,
        }
    }
}

/// Whether a method counts yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum MethodState {
    /// Added, waiting for its first correct code.
    Pending,
    /// Proven: usable for proofs and recovery.
    Confirmed,
}

/// A proof through a confirmed method: a `proof` challenge and the user's answer to it
/// (exactly one of `code` and `webauthn`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Proof {
    /// The proof challenge.
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
    pub challenge_id: String,
    /// The code (4 to 10 digits), or for a passphrase method its verifier (43 base64url
    /// characters, docs/PROTOCOL.md §5.6). Absent for a passkey method.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^(?:[0-9]{4,10}|[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048])$")
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// For a passkey method (and only for it): the authenticator's assertion, a
    /// `PublicKeyCredential` in its JSON form (docs/PROTOCOL.md §5.7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub webauthn: Option<serde_json::Value>,
}

impl Proof {
    /// A proof answered with a typed code or a passphrase verifier.
    pub fn with_code(challenge_id: impl Into<String>, code: impl Into<String>) -> Proof {
        Proof {
            challenge_id: challenge_id.into(),
            code: Some(code.into()),
            webauthn: None,
        }
    }

    /// A proof answered with a passkey's assertion.
    pub fn with_webauthn(challenge_id: impl Into<String>, webauthn: serde_json::Value) -> Proof {
        Proof {
            challenge_id: challenge_id.into(),
            code: None,
            webauthn: Some(webauthn),
        }
    }
}

/// `POST /v1/methods`: an `enroll` assertion while the user has no confirmed method, a
/// `manage` assertion and a `proof` afterwards.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AddMethodRequest {
    /// The kind of method.
    pub kind: MethodKind,
    /// Phone number in international form (`+33 6 12 34 56 78`) for `sms`, address for
    /// `email`; absent for `totp` (Ghostkey generates the seed) and `passphrase`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// For `passphrase` (and only for it): the verifier the client derived from the
    /// passphrase, and the version of the parameters it used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase: Option<PassphraseSetup>,
    /// For `passkey` (optional, and only for it): the name the user gives the passkey.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passkey: Option<PasskeySetup>,
    /// Required once the user has a confirmed method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<Proof>,
}

/// A method as Ghostkey shows it: destinations only masked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MethodView {
    /// The method id.
    pub id: String,
    /// The kind.
    pub kind: MethodKind,
    /// Pending or confirmed.
    pub state: MethodState,
    /// The masked destination (`+33 6******78`, `j***@e***.org`), or a passkey's name
    /// (`passkey “YubiKey”`, or its authenticator model's AAGUID); absent for TOTP and
    /// passphrase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masked: Option<String>,
    /// When added.
    pub created_at: i64,
    /// When confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_at: Option<i64>,
}

/// What a challenge is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ChallengePurpose {
    /// Confirms a pending method.
    Confirm,
    /// A fresh proof through a confirmed method, for a change that needs one.
    Proof,
    /// Ghostkey's own check before it releases the sealed virtual device.
    Recover,
}

/// A challenge as Ghostkey shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChallengeView {
    /// The challenge id: answer with it.
    pub id: String,
    /// What it is for.
    pub purpose: ChallengePurpose,
    /// The method it checks.
    pub method_id: String,
    /// The method's kind: for `totp`, type the code the authenticator app shows.
    pub kind: MethodKind,
    /// Where the code was sent (masked); absent for TOTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masked: Option<String>,
    /// When it stops accepting answers.
    pub expires_at: i64,
    /// Wrong answers it tolerates.
    pub max_attempts: u32,
    /// For a passphrase method: the parameters to derive the verifier with (answer with
    /// the verifier as the `code`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passphrase: Option<PassphraseParams>,
    /// For a passkey method: the WebAuthn options to pass to the authenticator, as
    /// `{"publicKey": ...}` with binary members in base64url: creation options for a
    /// `confirm` challenge (`navigator.credentials.create`), request options for `proof`
    /// and `recover` (`navigator.credentials.get`). Answer with the credential's JSON as
    /// `webauthn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub webauthn: Option<serde_json::Value>,
}

/// What a client may say when adding a passkey method.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PasskeySetup {
    /// The name the user gives it (1 to 64 characters, no control characters), shown in
    /// method lists and notices instead of the authenticator model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64))]
    pub name: Option<String>,
}

/// A passphrase verifier as the client sends it when adding a passphrase method.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PassphraseSetup {
    /// The version of the derivation parameters (docs/PROTOCOL.md §5.6; only `1` exists).
    /// JSON has one number type: `1.0` is read as `1`, as JSON Schema's `integer` says.
    #[serde(deserialize_with = "integral_u32")]
    pub version: u32,
    /// The verifier: Argon2id of the passphrase, 32 bytes, base64url without padding (the
    /// last character carries 4 bits, so it is one of 16).
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$")
    )]
    pub verifier: String,
}

impl std::fmt::Debug for PassphraseSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The verifier is a password equivalent: never in a debug print.
        f.debug_struct("PassphraseSetup")
            .field("version", &self.version)
            .field("verifier", &"[redacted]")
            .finish()
    }
}

/// The parameters a client derives a passphrase verifier with (docs/PROTOCOL.md §5.6).
/// A client knows each version's parameters itself and refuses a version it does not
/// know or parameters that differ from its own table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PassphraseParams {
    /// The version (`1`).
    pub version: u32,
    /// Argon2id memory cost in KiB (version 1: 19456).
    pub memory_kib: u32,
    /// Argon2id passes (version 1: 2).
    pub iterations: u32,
    /// Argon2id lanes (version 1: 1).
    pub parallelism: u32,
}

impl PassphraseParams {
    /// Version 1: Argon2id, 19 MiB, 2 passes, 1 lane (the OWASP minimum).
    pub const V1: PassphraseParams = PassphraseParams {
        version: 1,
        memory_kib: 19_456,
        iterations: 2,
        parallelism: 1,
    };

    /// The parameters of a known version.
    pub fn of_version(version: u32) -> Option<PassphraseParams> {
        match version {
            1 => Some(PassphraseParams::V1),
            _ => None,
        }
    }
}

/// What an authenticator app needs. Shown once: it holds the TOTP seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TotpProvisioning {
    /// `otpauth://totp/...`
    pub otpauth_uri: String,
    /// The same as a QR code, PNG in standard base64.
    pub qr_png_base64: String,
}

/// The answer to `POST /v1/methods`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AddMethodResponse {
    /// The new, pending method.
    pub method: MethodView,
    /// Its confirmation challenge (the code is on its way for SMS and e-mail).
    pub challenge: ChallengeView,
    /// For TOTP: the provisioning URI and QR code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp: Option<TotpProvisioning>,
}

/// `POST /v1/challenges`: a new challenge on an existing method.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StartChallengeRequest {
    /// The method.
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
    pub method_id: String,
    /// `confirm` (a pending method: a new code) or `proof` (a confirmed method).
    pub purpose: ChallengePurpose,
}

/// `POST /v1/challenges/{id}/answer` and `POST /v1/recoveries/{id}/verify`: exactly one of
/// `code` and `webauthn`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AnswerRequest {
    /// The code the user typed (4 to 10 digits), or for a passphrase method the verifier
    /// the client derived from the passphrase (43 base64url characters, docs/PROTOCOL.md
    /// §5.6). Absent for a passkey method.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^(?:[0-9]{4,10}|[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048])$")
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// For a passkey method (and only for it): the authenticator's response in its JSON
    /// form: the new credential (`RegisterPublicKeyCredential`) for a `confirm` challenge,
    /// an assertion (`PublicKeyCredential`) for a recovery (docs/PROTOCOL.md §5.7).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub webauthn: Option<serde_json::Value>,
}

impl AnswerRequest {
    /// An answer with a typed code or a passphrase verifier.
    pub fn with_code(code: impl Into<String>) -> AnswerRequest {
        AnswerRequest {
            code: Some(code.into()),
            webauthn: None,
        }
    }

    /// An answer with a passkey's response.
    pub fn with_webauthn(webauthn: serde_json::Value) -> AnswerRequest {
        AnswerRequest {
            code: None,
            webauthn: Some(webauthn),
        }
    }
}

/// The answer to a correct code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AnswerResponse {
    /// The challenge.
    pub challenge_id: String,
    /// What it was for.
    pub purpose: ChallengePurpose,
    /// The method, now confirmed if the purpose was `confirm`.
    pub method: MethodView,
    /// The user's enrolment state afterwards.
    pub enrollment_state: EnrollmentState,
}

/// `GET /v1/methods`, with a `manage` assertion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MethodList {
    /// Every method of the user, oldest first.
    pub methods: Vec<MethodView>,
}

/// `POST /v1/methods/{id}/remove`, with a `manage` assertion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RemoveMethodRequest {
    /// A fresh proof through a confirmed method.
    pub proof: Proof,
}

/// `POST /v1/users/unlock`, with a `manage` assertion: lifts the user's lock with the
/// user's own proof through a confirmed method (started with `purpose: proof` while the
/// user is locked; it is checked despite the lock, within the failure budget).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UnlockRequest {
    /// A fresh proof through a confirmed method; required once the user has one (a user
    /// with no confirmed method has nothing a guess could reach).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<Proof>,
}

/// `POST /v1/recoveries/cancel`, with no assertion: cancels the recovery a notice's cancel
/// code belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CancelWithCodeRequest {
    /// The cancel code as the notice shows it (`XXXX-XXXX-XXXX-XXXX-XXXX`, Crockford base32;
    /// case, dashes and spaces do not matter).
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = r"^[ -]*(?:[0-9A-TV-Za-tv-z][ -]*){20}$")
    )]
    pub cancel_code: String,
}

/// The answer to `POST /v1/users/unlock`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UnlockResponse {
    /// Whether the user was locked.
    pub was_locked: bool,
}

/// `POST /v1/recoveries`, with a `recover` assertion: starts a recovery with one of the
/// user's confirmed methods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct StartRecoveryRequest {
    /// The confirmed method to check the user with.
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
    pub method_id: String,
}

/// Where a recovery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum RecoveryState {
    /// Started: waiting for the code.
    Started,
    /// The code was right; the release waits for the app's waiting period.
    Waiting,
    /// The sealed virtual device was released.
    Released,
    /// Cancelled: it will never release.
    Cancelled,
}

/// The answer to a verified code, a release or a cancellation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecoveryResponse {
    /// The recovery (its challenge id).
    pub recovery_id: String,
    /// Where it stands.
    pub state: RecoveryState,
    /// When `waiting`: when the release becomes available (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_at: Option<i64>,
    /// When `released`: the sealed virtual device, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_virtual_device: Option<String>,
}

/// `POST /v1/recoveries/{id}/cancel`: a `manage` assertion alone, or a `recover`
/// assertion with a proof through a confirmed method.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CancelRecoveryRequest {
    /// Required with a `recover` assertion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<Proof>,
}

/// `POST /v1/virtual-device/replace`, with a `manage` assertion and a proof: after the
/// app provider rotated the user secret, the same virtual device sealed under the new one
/// (with a higher version).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ReplaceVirtualDeviceRequest {
    /// The new sealed virtual device, base64url.
    pub sealed_virtual_device: String,
    /// A fresh proof through a confirmed method.
    pub proof: Proof,
}

/// `POST /v1/chain/blocks`: appends a block to the assertion user's chain (`recover` or
/// `manage` assertion to admit a device, `manage` to revoke one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AppendBlockRequest {
    /// The encoded block, base64url.
    pub block: String,
}

/// A user's device chain, as stored: verify it yourself from the app's pinned keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChainResponse {
    /// The user whose chain it is.
    pub user_id: String,
    /// The encoded blocks in order, base64url.
    pub blocks: Vec<String>,
}

/// A `u32` from a JSON number written either way (`1` or `1.0`); a fraction, a negative
/// number or one past `u32::MAX` is refused.
fn integral_u32<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    struct Integral;
    impl serde::de::Visitor<'_> for Integral {
        type Value = u32;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a whole number from 0 to 4294967295")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<u32, E> {
            u32::try_from(v).map_err(|_| E::custom("number out of range"))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<u32, E> {
            u32::try_from(v).map_err(|_| E::custom("number out of range"))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<u32, E> {
            if v.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(&v) {
                // Whole and in range: the conversion is exact.
                Ok(v as u32)
            } else {
                Err(E::custom("not a whole number in range"))
            }
        }
    }
    deserializer.deserialize_any(Integral)
}

#[cfg(test)]
mod integral_tests {
    use super::PassphraseSetup;

    fn version(json: &str) -> Option<u32> {
        let body = format!(
            r#"{{"version": {json}, "verifier": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}}"#
        );
        serde_json::from_str::<PassphraseSetup>(&body)
            .ok()
            .map(|s| s.version)
    }

    #[test]
    fn a_version_is_read_as_a_whole_number_written_either_way() {
        assert_eq!(version("1"), Some(1));
        assert_eq!(version("1.0"), Some(1));
        assert_eq!(version("359817.0"), Some(359_817));
        assert_eq!(version("1.5"), None);
        assert_eq!(version("-1"), None);
        assert_eq!(version("4294967296"), None);
        assert_eq!(version("\"1\""), None);
    }
}
