//! Enrolment of a sealed virtual device (DESIGN.md §3, "Enrol").

use ed25519_dalek::VerifyingKey;
use ghostkey_proto::api::{EnrollRequest, EnrollmentState};
use ghostkey_proto::chain::{Block, BlockBody};
use ghostkey_proto::sealed::{self, SealedFormatError};
use ghostkey_proto::{b64, ErrorCode};

use super::assertion::VerifiedAssertion;
use crate::clock::UnixTime;
use crate::error::Error;

/// What the store keeps for an enrolled user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    /// The app.
    pub app_id: String,
    /// The user, as the app provider names them.
    pub user_id: String,
    /// Pending until a first verification method is confirmed.
    pub state: EnrollmentState,
    /// The sealed virtual device, stored as received: Ghostkey cannot open it.
    pub sealed_virtual_device: Vec<u8>,
    /// The virtual device's Ed25519 public key.
    pub signing_key: [u8; 32],
    /// The virtual device's X25519 public key.
    pub encryption_key: [u8; 32],
    /// When it was stored.
    pub created_at: UnixTime,
    /// The root block of the device chain (its signature is checked by the caller, who
    /// has the app's keys).
    pub root_block: Vec<u8>,
}

/// Checks an enrolment request from a verified `enroll` assertion and builds the record.
/// Ghostkey checks only the sealed blob's version byte and size: it cannot read it.
pub fn new_enrollment(
    assertion: &VerifiedAssertion,
    request: &EnrollRequest,
    now: UnixTime,
) -> Result<Enrollment, Error> {
    let blob = b64::decode(&request.sealed_virtual_device).map_err(|_| {
        Error::with_detail(
            ErrorCode::InvalidField,
            "`sealed_virtual_device` is not base64url without padding",
        )
    })?;
    sealed::parse(&blob).map_err(|e| match e {
        SealedFormatError::UnsupportedVersion(_) => {
            Error::with_detail(ErrorCode::UnsupportedSealedVersion, e.to_string())
        }
        SealedFormatError::TooShort(_) | SealedFormatError::TooLong(_) => Error::with_detail(
            ErrorCode::InvalidField,
            format!("`sealed_virtual_device`: {e}"),
        ),
    })?;
    let signing_key = b64::decode_array::<32>(&request.virtual_device.signing_key)
        .filter(|k| VerifyingKey::from_bytes(k).is_ok_and(|k| !k.is_weak()))
        .ok_or_else(|| {
            Error::with_detail(
                ErrorCode::InvalidField,
                "`virtual_device.signing_key` must be a valid Ed25519 public key (32 bytes, base64url)",
            )
        })?;
    let encryption_key = b64::decode_array::<32>(&request.virtual_device.encryption_key)
        .filter(|k| k != &[0u8; 32])
        .ok_or_else(|| {
            Error::with_detail(
                ErrorCode::InvalidField,
                "`virtual_device.encryption_key` must be an X25519 public key (32 bytes, base64url)",
            )
        })?;
    let root_block = b64::decode(&request.root_block).map_err(|_| {
        Error::with_detail(
            ErrorCode::InvalidField,
            "`root_block` is not base64url without padding",
        )
    })?;
    let root = Block::decode(&root_block)
        .map_err(|e| Error::with_detail(ErrorCode::InvalidBlock, format!("`root_block`: {e}")))?;
    let binds = match &root.unsigned.body {
        BlockBody::Root {
            vd_signing,
            vd_encryption,
            ..
        } => vd_signing == &signing_key && vd_encryption == &encryption_key,
        _ => false,
    };
    if !binds
        || root.unsigned.app_id != assertion.app_id
        || root.unsigned.user_id != assertion.user_id
    {
        return Err(Error::with_detail(
            ErrorCode::InvalidBlock,
            "`root_block` must be a root for this app, user and virtual device",
        ));
    }
    Ok(Enrollment {
        app_id: assertion.app_id.clone(),
        user_id: assertion.user_id.clone(),
        state: EnrollmentState::Pending,
        sealed_virtual_device: blob,
        signing_key,
        encryption_key,
        created_at: now,
        root_block,
    })
}
