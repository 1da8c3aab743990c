//! Requests and responses of the `/v1` HTTP API.
//!
//! Binary values travel as base64url without padding. Requests refuse unknown fields.

use serde::{Deserialize, Serialize};

/// The public keys of a device: Ed25519 for signing, X25519 for encryption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicePublicKeys {
    /// Ed25519 public key, 32 bytes, base64url.
    pub signing_key: String,
    /// X25519 public key, 32 bytes, base64url.
    pub encryption_key: String,
}

/// `POST /v1/enrollments`, with an `enroll` assertion as bearer token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The sealed virtual device (see [`crate::sealed`]), base64url.
    pub sealed_virtual_device: String,
    /// The virtual device's public keys.
    pub virtual_device: DevicePublicKeys,
}

/// The state of a user's enrolment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnrollmentState {
    /// Stored, waiting for a first verification method to be confirmed.
    Pending,
    /// At least one verification method is confirmed; recovery is possible.
    Active,
}

/// The answer to an enrolment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
pub struct Health {
    /// `ok`, or `unavailable` on `/readyz` when the store does not answer.
    pub status: String,
}
