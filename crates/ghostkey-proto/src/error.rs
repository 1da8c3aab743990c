//! Stable error codes and the RFC 9457 problem document that carries them.
//!
//! A code, once published, keeps its meaning and its HTTP status forever; clients match on
//! the code, never on the title or the detail.

use serde::{Deserialize, Serialize};

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident = ($code:literal, $status:literal, $title:literal), )*) => {
        /// Every error code the `/v1` API can answer with.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
        }

        impl ErrorCode {
            /// Every code, for documentation and exhaustive tests.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            /// The stable machine-readable code.
            pub fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $code,)* }
            }

            /// The HTTP status that always goes with the code.
            pub fn http_status(self) -> u16 {
                match self { $(ErrorCode::$variant => $status,)* }
            }

            /// A short, fixed, human-readable summary.
            pub fn title(self) -> &'static str {
                match self { $(ErrorCode::$variant => $title,)* }
            }

            /// Looks a code up by its string; `None` for codes this version does not know.
            pub fn from_code(code: &str) -> Option<ErrorCode> {
                match code { $($code => Some(ErrorCode::$variant),)* _ => None }
            }
        }
    };
}

error_codes! {
    /// The body is not valid JSON for this endpoint (syntax, types, missing or unknown fields).
    MalformedBody = ("malformed_body", 400, "The request body is malformed"),
    /// A field has a well-formed type but a value out of bounds.
    InvalidField = ("invalid_field", 422, "A field has an invalid value"),
    /// The body is larger than the configured limit.
    BodyTooLarge = ("body_too_large", 413, "The request body is too large"),
    /// The request did not declare `Content-Type: application/json`.
    UnsupportedMediaType = ("unsupported_media_type", 415, "The request body must be application/json"),
    /// No such endpoint.
    NotFound = ("not_found", 404, "No such resource"),
    /// The endpoint exists, but not with this HTTP method.
    MethodNotAllowed = ("method_not_allowed", 405, "Method not allowed on this resource"),
    /// No assertion in `Authorization: Bearer`.
    MissingAssertion = ("missing_assertion", 401, "An assertion is required"),
    /// The assertion is not a compact JWT with the required claims.
    InvalidAssertion = ("invalid_assertion", 401, "The assertion is malformed"),
    /// The assertion is signed with an algorithm other than EdDSA (`none`, `HS*`, `RS*`, `ES*`, ...).
    AssertionAlgorithmRefused = ("assertion_algorithm_refused", 401, "The assertion's algorithm is not accepted"),
    /// `iss` names no registered app.
    AssertionUnknownIssuer = ("assertion_unknown_issuer", 401, "The assertion's issuer is not a registered app"),
    /// `kid` names no key of the issuing app.
    AssertionUnknownKey = ("assertion_unknown_key", 401, "The assertion's key is not a key of the issuing app"),
    /// `kid` names a revoked key of the issuing app.
    AssertionKeyRevoked = ("assertion_key_revoked", 401, "The assertion's key has been revoked"),
    /// The signature does not verify with the named key.
    AssertionBadSignature = ("assertion_bad_signature", 401, "The assertion's signature is invalid"),
    /// `aud` is not this deployment's service id.
    AssertionWrongAudience = ("assertion_wrong_audience", 401, "The assertion is meant for another service"),
    /// `exp` is in the past.
    AssertionExpired = ("assertion_expired", 401, "The assertion has expired"),
    /// `exp - iat` is longer than the configured maximum (or negative).
    AssertionLifetimeTooLong = ("assertion_lifetime_too_long", 401, "The assertion's lifetime is too long"),
    /// `iat` is in the future beyond the allowed clock skew.
    AssertionIssuedInFuture = ("assertion_issued_in_future", 401, "The assertion is issued in the future"),
    /// The `purpose` claim does not match the endpoint.
    AssertionWrongPurpose = ("assertion_wrong_purpose", 403, "The assertion's purpose does not allow this request"),
    /// The assertion's `jti` has been used before.
    AssertionReplayed = ("assertion_replayed", 401, "The assertion has already been used"),
    /// The user is already enrolled for this app.
    AlreadyEnrolled = ("already_enrolled", 409, "The user is already enrolled"),
    /// The sealed virtual device uses a format version this server does not accept.
    UnsupportedSealedVersion = ("unsupported_sealed_version", 422, "The sealed virtual device's format version is not supported"),
    /// The phone number is not a valid number in international form.
    InvalidPhoneNumber = ("invalid_phone_number", 422, "The phone number is not valid"),
    /// The e-mail address is not valid.
    InvalidEmailAddress = ("invalid_email_address", 422, "The e-mail address is not valid"),
    /// The app's policy does not allow this kind of verification method.
    MethodKindNotAllowed = ("method_kind_not_allowed", 403, "The app does not allow this kind of method"),
    /// The assertion's user is not enrolled.
    NotEnrolled = ("not_enrolled", 404, "The user is not enrolled"),
    /// No such method for this user.
    MethodNotFound = ("method_not_found", 404, "No such verification method"),
    /// The method is not confirmed yet.
    MethodNotConfirmed = ("method_not_confirmed", 409, "The verification method is not confirmed"),
    /// The user has a confirmed method: this change needs a fresh proof through one of them.
    ProofRequired = ("proof_required", 403, "A proof through a confirmed method is required"),
    /// The user has too many methods (pending ones included).
    TooManyMethods = ("too_many_methods", 409, "The user has the maximum number of methods"),
    /// The proof names a challenge that is not a proof challenge of this user.
    InvalidProof = ("invalid_proof", 403, "The proof does not belong to this user or purpose"),
    /// Removing this method would leave the user with no confirmed method.
    LastMethod = ("last_method", 409, "The last confirmed method cannot be removed"),
    /// The code is wrong (or the challenge does not exist).
    InvalidCode = ("invalid_code", 403, "The code is not correct"),
    /// A passkey's response does not verify (bad signature, another origin or relying
    /// party, user verification missing, another challenge's or another credential's
    /// response, a credential already registered); counted like a wrong code.
    PasskeyRejected = ("passkey_rejected", 403, "The passkey's response was not accepted"),
    /// A passkey's signature counter went backwards: a copy of the credential may exist.
    /// Counted like a wrong code, and the user is told.
    AuthenticatorCloned = ("authenticator_cloned", 403, "The passkey's signature counter went backwards"),
    /// The challenge has expired.
    CodeExpired = ("code_expired", 410, "The code has expired"),
    /// The challenge has been answered correctly already.
    CodeAlreadyUsed = ("code_already_used", 409, "The code has already been used"),
    /// The challenge took too many wrong answers and is dead, even for the right code.
    TooManyAttempts = ("too_many_attempts", 403, "Too many wrong codes for this challenge"),
    /// The user is locked after too many failures; a proof through a confirmed method
    /// (`POST /v1/users/unlock`) or an operator lifts it.
    Locked = ("locked", 403, "The user is locked after too many failures"),
    /// The user must wait before trying another code (exponential back-off after failures).
    UserBackoff = ("user_backoff", 429, "Too many recent failures; wait before trying again"),
    /// The user's failure budget (failed checks in the last 24 hours, across every kind of
    /// challenge) is spent: no code is checked until the oldest failure ages out.
    FailureBudgetExhausted = ("failure_budget_exhausted", 429, "Too many failed checks for this user in the last 24 hours"),
    /// Too many recoveries started for this user today.
    RecoveryRateLimited = ("recovery_rate_limited", 429, "Too many recoveries started for this user"),
    /// Too many codes sent to this destination recently (per hour or per day).
    DestinationRateLimited = ("destination_rate_limited", 429, "Too many codes sent to this destination"),
    /// The app's daily sending budget is spent.
    AppSendBudgetExhausted = ("app_send_budget_exhausted", 429, "The app's daily sending budget is exhausted"),
    /// The app's ceiling on code checks without an assertion (all addresses together) is
    /// reached for this minute.
    AppRateLimited = ("app_rate_limited", 429, "Too many code checks for this app right now"),
    /// Too many requests from this client address.
    AddressRateLimited = ("address_rate_limited", 429, "Too many requests from this address"),
    /// Recovery needs a completed enrolment (a confirmed method).
    EnrollmentPending = ("enrollment_pending", 409, "The user's enrolment is not complete"),
    /// No such recovery for this user.
    RecoveryNotFound = ("recovery_not_found", 404, "No such recovery"),
    /// The recovery's code has not been verified yet.
    RecoveryNotVerified = ("recovery_not_verified", 409, "The recovery's code has not been verified"),
    /// The waiting period has not ended: `available_at` says when the release can happen.
    ReleasePending = ("release_pending", 409, "The release is not available yet"),
    /// The recovery was cancelled; it never releases.
    RecoveryCancelled = ("recovery_cancelled", 410, "The recovery was cancelled"),
    /// The recovery already released the sealed virtual device.
    AlreadyReleased = ("already_released", 409, "The recovery has already been released"),
    /// The challenge is not of the kind this endpoint answers.
    WrongChallenge = ("wrong_challenge", 409, "The challenge is not for this endpoint"),
    /// The block does not extend the current head of the chain (a fork, or a stale client).
    ChainFork = ("chain_fork", 409, "The block does not extend the current head of the chain"),
    /// The block is already in the chain.
    ChainBlockReplayed = ("chain_block_replayed", 409, "The block is already in the chain"),
    /// The block breaks a rule of the chain; `detail` names the rule.
    InvalidBlock = ("invalid_block", 422, "The block is not valid for this chain"),
    /// No chain for this user.
    ChainNotFound = ("chain_not_found", 404, "No chain for this user"),
    /// A browser page at this `Origin` may not call the API for the app the request is
    /// about: the origin is not in the app's allowed origins (`ghostkey app origins add`).
    OriginNotAllowed = ("origin_not_allowed", 403, "This web origin may not call the API for this app"),
    /// The endpoint exists only in development mode (`GET /dev/messages`).
    DevelopmentOnly = ("development_only", 403, "This endpoint exists only in development mode"),
    /// The server is not ready (store unavailable).
    Unavailable = ("unavailable", 503, "The service is temporarily unavailable"),
    /// An unexpected server-side failure; the cause is in the server log, never in the answer.
    Internal = ("internal", 500, "Internal server error"),
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The media type of error answers.
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// An RFC 9457 problem document with Ghostkey's stable `code` extension member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Problem {
    /// A URI naming the problem type: `urn:ghostkey:error:<code>`.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// Fixed summary of the problem type.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// The stable machine-readable code.
    pub code: String,
    /// What went wrong with this request; never a secret or a personal value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For limits: seconds to wait before trying again (also sent as `Retry-After`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<u64>,
    /// For `release_pending`: when the release becomes available (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_at: Option<i64>,
}

impl Problem {
    /// The problem document for `code`, with an optional detail.
    pub fn new(code: ErrorCode, detail: Option<String>) -> Problem {
        Problem {
            type_uri: format!("urn:ghostkey:error:{}", code.as_str()),
            title: code.title().to_owned(),
            status: code.http_status(),
            code: code.as_str().to_owned(),
            detail,
            retry_after: None,
            available_at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_snake_case_and_round_trip() {
        let mut seen = HashSet::new();
        for &code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "duplicate code {s}");
            assert!(
                s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{s}"
            );
            assert_eq!(ErrorCode::from_code(s), Some(code));
            assert!((400..600).contains(&code.http_status()));
        }
        assert_eq!(ErrorCode::from_code("no_such_code"), None);
    }
}
