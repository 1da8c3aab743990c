//! The app provider's assertion: a compact JWT signed with EdDSA (Ed25519, RFC 8037).

use serde::{Deserialize, Serialize};

/// The only JWS algorithm Ghostkey accepts.
pub const ALGORITHM: &str = "EdDSA";
/// The default largest `exp - iat`, in seconds.
pub const DEFAULT_MAX_LIFETIME_SECS: i64 = 300;

/// What an assertion allows its bearer to do; each endpoint requires one purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Purpose {
    /// Create the user's enrolment (first device).
    Enroll,
    /// Start and complete a recovery.
    Recover,
    /// Manage methods, replace the sealed virtual device, lift locks, erase the user.
    Manage,
}

impl Purpose {
    /// The claim value.
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Enroll => "enroll",
            Purpose::Recover => "recover",
            Purpose::Manage => "manage",
        }
    }

    /// The purpose a claim value names, if any.
    pub fn parse(value: &str) -> Option<Purpose> {
        [Purpose::Enroll, Purpose::Recover, Purpose::Manage]
            .into_iter()
            .find(|p| p.as_str() == value)
    }
}

/// The claims of an assertion. Every field is required.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssertionClaims {
    /// The app id Ghostkey gave the app provider at registration.
    pub iss: String,
    /// The user id: pseudonymous, chosen by the app provider (never an e-mail or a name).
    pub sub: String,
    /// The service id of the Ghostkey deployment the assertion is meant for.
    pub aud: String,
    /// Issued at, seconds since the Unix epoch.
    pub iat: i64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: i64,
    /// A random, single-use identifier.
    pub jti: String,
    /// What the assertion allows.
    pub purpose: Purpose,
}

/// Largest accepted user id, in bytes.
pub const MAX_USER_ID_LEN: usize = 128;
/// Largest accepted `jti`, in bytes.
pub const MAX_JTI_LEN: usize = 128;
/// Smallest accepted `jti`, in bytes (a random id of at least 96 bits in base64url).
pub const MIN_JTI_LEN: usize = 16;

/// Whether `s` is a well-formed identifier: `len` within bounds, printable ASCII without
/// spaces. User ids and `jti`s obey it so they can never smuggle control characters into
/// logs or the audit trail.
pub fn is_valid_identifier(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic())
}
