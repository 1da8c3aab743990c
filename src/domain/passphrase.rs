//! Passphrase methods (docs/PROTOCOL.md §5.6). The passphrase never reaches Ghostkey: the
//! client derives a 32-byte verifier from it (Argon2id, salt bound to the app and user,
//! versioned parameters). Ghostkey keeps only Argon2id(verifier; fresh salt, secret =
//! the pepper of its data key), inside the method's secret, which is itself encrypted at
//! rest like every method secret. A check is one Argon2id computation, made through the
//! same bounded pool as code checks.
//!
//! The method secret (before encryption at rest) is
//! `version (1) || salt (16) || hash (32) || pepper key id (UTF-8)`: the pepper key id
//! names the data key whose pepper made the hash, which a key rotation cannot redo (it
//! does not know the verifier), so that key must stay readable while such a method lives.

use ghostkey_proto::api::PassphraseParams;
use ghostkey_proto::ErrorCode;
use secrecy::SecretString;

use super::code::{HASH_LEN, SALT_LEN};
use crate::error::Error;

/// Length of a verifier in bytes.
pub const VERIFIER_LEN: usize = 32;
/// Length of a verifier in base64url characters (no padding).
pub const VERIFIER_B64_LEN: usize = 43;

/// Whether `answer` has the shape of a verifier: 43 base64url characters decoding to 32
/// bytes (checked before any work: the shape is no secret).
pub fn well_formed(answer: &str) -> bool {
    answer.len() == VERIFIER_B64_LEN
        && answer
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && ghostkey_proto::b64::decode(answer).is_ok_and(|v| v.len() == VERIFIER_LEN)
}

/// Checks a verifier sent to add a passphrase method: a known parameter version and the
/// exact shape. Refusals are `invalid_field` and name no part of the value.
pub fn parse_setup(version: u32, verifier: &str) -> Result<SecretString, Error> {
    if PassphraseParams::of_version(version).is_none() {
        return Err(Error::with_detail(
            ErrorCode::InvalidField,
            "`passphrase.version` is not a known parameter version (only 1 exists)",
        ));
    }
    if !well_formed(verifier) {
        return Err(Error::with_detail(
            ErrorCode::InvalidField,
            "`passphrase.verifier` must be 32 bytes in base64url without padding (43 characters)",
        ));
    }
    Ok(SecretString::from(verifier.to_owned()))
}

/// What a passphrase method keeps (inside its encrypted secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The client's parameter version.
    pub version: u32,
    /// The server salt.
    pub salt: [u8; SALT_LEN],
    /// Argon2id(verifier; salt, pepper).
    pub hash: [u8; HASH_LEN],
    /// The data key whose pepper made the hash.
    pub pepper_key_id: String,
}

impl Stored {
    /// The plaintext of the method secret.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + SALT_LEN + HASH_LEN + self.pepper_key_id.len());
        out.push(u8::try_from(self.version).unwrap_or(u8::MAX));
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&self.hash);
        out.extend_from_slice(self.pepper_key_id.as_bytes());
        out
    }

    /// Reads a method secret written by [`Stored::encode`].
    pub fn decode(plain: &[u8]) -> Result<Stored, Error> {
        let bad = || Error::internal("a stored passphrase method secret is malformed");
        if plain.len() < 1 + SALT_LEN + HASH_LEN + 1 {
            return Err(bad());
        }
        let version = u32::from(plain[0]);
        let salt: [u8; SALT_LEN] = plain[1..1 + SALT_LEN].try_into().map_err(|_| bad())?;
        let hash: [u8; HASH_LEN] = plain[1 + SALT_LEN..1 + SALT_LEN + HASH_LEN]
            .try_into()
            .map_err(|_| bad())?;
        let pepper_key_id = std::str::from_utf8(&plain[1 + SALT_LEN + HASH_LEN..])
            .map_err(|_| bad())?
            .to_owned();
        Ok(Stored {
            version,
            salt,
            hash,
            pepper_key_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_43_character_base64url_verifier_of_32_bytes_is_well_formed() {
        let good = ghostkey_proto::b64::encode([7u8; 32]);
        assert_eq!(good.len(), 43);
        assert!(well_formed(&good));
        assert!(parse_setup(1, &good).is_ok());
        for bad in [
            String::new(),
            "12345678".to_owned(),
            ghostkey_proto::b64::encode([7u8; 31]),
            ghostkey_proto::b64::encode([7u8; 33]),
            format!("{}=", &good[..42]),
            format!("{}+", &good[..42]),
            // The last character carries unused bits: only some letters end 32 bytes.
            format!("{}B", &good[..42]),
        ] {
            assert!(!well_formed(&bad), "{bad}");
            assert_eq!(
                parse_setup(1, &bad).unwrap_err().code,
                ErrorCode::InvalidField
            );
        }
        assert_eq!(
            parse_setup(2, &good).unwrap_err().code,
            ErrorCode::InvalidField
        );
    }

    #[test]
    fn the_stored_form_round_trips() {
        let s = Stored {
            version: 1,
            salt: [1; SALT_LEN],
            hash: [2; HASH_LEN],
            pepper_key_id: "k2026".into(),
        };
        assert_eq!(Stored::decode(&s.encode()).unwrap(), s);
        assert!(Stored::decode(&[1, 2, 3]).is_err());
    }
}
