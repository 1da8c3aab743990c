//! Apps (the app providers that use Ghostkey) and their assertion keys.

use ed25519_dalek::pkcs8::DecodePublicKey;
use ed25519_dalek::VerifyingKey;
use rand::RngCore;

use super::policy::AppPolicy;
use crate::clock::UnixTime;

/// A registered app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    /// The id Ghostkey generated; app providers put it in `iss`.
    pub id: String,
    /// A name for operators.
    pub name: String,
    /// When it was registered.
    pub created_at: UnixTime,
    /// Its abuse-limit policy.
    pub policy: AppPolicy,
}

/// One of an app's Ed25519 assertion keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppKey {
    /// The key id, the JWT header's `kid`; unique within the app.
    pub kid: String,
    /// The Ed25519 public key.
    pub public_key: [u8; 32],
    /// When it was added.
    pub created_at: UnixTime,
    /// When it was revoked, if it was.
    pub revoked_at: Option<UnixTime>,
}

/// What the store knows about an (`iss`, `kid`) pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyLookup {
    /// No app has this id.
    UnknownApp,
    /// The app exists, but has no key with this id.
    UnknownKey,
    /// The key exists and was revoked.
    Revoked,
    /// The key is active.
    Active([u8; 32]),
}

/// Largest key id length.
pub const MAX_KID_LEN: usize = 64;
/// Largest app name length.
pub const MAX_APP_NAME_LEN: usize = 100;

/// A new random app id: `app_` and 24 hex digits (96 random bits).
pub fn new_app_id() -> String {
    let mut bytes = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("app_{}", hex::encode(bytes))
}

/// Checks a key id: 1 to 64 characters of `[A-Za-z0-9._-]`.
pub fn validate_kid(kid: &str) -> Result<(), String> {
    if (1..=MAX_KID_LEN).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        Ok(())
    } else {
        Err(format!(
            "key id must be 1 to {MAX_KID_LEN} characters of letters, digits, '.', '_' or '-'"
        ))
    }
}

/// Checks an app name: 1 to 100 characters, no control characters.
pub fn validate_app_name(name: &str) -> Result<(), String> {
    let trimmed = name.trim();
    if trimmed.is_empty() || name.len() > MAX_APP_NAME_LEN || name.chars().any(char::is_control) {
        return Err(format!(
            "app name must be 1 to {MAX_APP_NAME_LEN} characters without control characters"
        ));
    }
    Ok(())
}

/// Parses an Ed25519 public key given as 32 bytes in base64url (or standard base64), or as
/// a PEM `PUBLIC KEY` (SubjectPublicKeyInfo, what `openssl pkey -pubout` writes).
pub fn parse_public_key(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    let key = if text.starts_with("-----BEGIN") {
        VerifyingKey::from_public_key_pem(text)
            .map_err(|_| "the PEM is not an Ed25519 public key (SubjectPublicKeyInfo)".to_owned())?
    } else {
        use base64::Engine;
        let bytes = ghostkey_proto::b64::decode(text)
            .or_else(|_| base64::engine::general_purpose::STANDARD.decode(text))
            .map_err(|_| "the public key is neither base64url nor PEM".to_owned())?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!("an Ed25519 public key is 32 bytes, this one is {}", b.len())
        })?;
        VerifyingKey::from_bytes(&bytes)
            .map_err(|_| "the 32 bytes are not a valid Ed25519 public key".to_owned())?
    };
    if key.is_weak() {
        return Err("the Ed25519 public key is of small order and would accept forgeries".into());
    }
    Ok(key.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::pkcs8::{spki::der::pem::LineEnding, EncodePublicKey};
    use ed25519_dalek::SigningKey;

    #[test]
    fn public_keys_parse_from_base64url_base64_and_pem() {
        let sk = SigningKey::from_bytes(&[9u8; 32]);
        let pk = sk.verifying_key().to_bytes();
        assert_eq!(
            parse_public_key(&ghostkey_proto::b64::encode(pk)).unwrap(),
            pk
        );
        use base64::Engine;
        assert_eq!(
            parse_public_key(&base64::engine::general_purpose::STANDARD.encode(pk)).unwrap(),
            pk
        );
        let pem = sk
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        assert_eq!(parse_public_key(&pem).unwrap(), pk);
    }

    #[test]
    fn bad_public_keys_are_refused_with_a_reason() {
        assert!(parse_public_key("!!!").unwrap_err().contains("base64url"));
        assert!(parse_public_key(&ghostkey_proto::b64::encode([1u8; 31]))
            .unwrap_err()
            .contains("31"));
        // The identity point: small order, would accept forged signatures.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(parse_public_key(&ghostkey_proto::b64::encode(identity))
            .unwrap_err()
            .contains("small order"));
        assert!(
            parse_public_key("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----").is_err()
        );
    }

    #[test]
    fn ids_and_names_are_checked() {
        assert!(new_app_id().starts_with("app_") && new_app_id().len() == 28);
        validate_kid("k-2026.01_a").unwrap();
        assert!(validate_kid("").is_err() && validate_kid("a b").is_err());
        validate_app_name("Health platform").unwrap();
        assert!(validate_app_name("  ").is_err() && validate_app_name("a\nb").is_err());
    }
}
