//! The app-provider kit: what an app backend needs to work with Ghostkey.
//!
//! - one [`UserSecret`] per user, generated once, kept by the app provider and handed only
//!   to that user once they are logged in;
//! - an [`AppSigningKey`] (Ed25519) whose public half the Ghostkey operator registers;
//! - short-lived assertions minted with it ([`AppSigningKey::mint`]).
//!
//! Use pseudonymous user ids (a random id, never an e-mail address or a name): Ghostkey's
//! operator is a separate party and sees them.

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use ed25519_dalek::SigningKey;
use ghostkey_proto::assertion::{AssertionClaims, Purpose};
use ghostkey_proto::b64;
use rand::rngs::OsRng;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox, SecretString};

/// A user's 32-byte secret: the key that seals their virtual device. Never `Debug`-printed,
/// wiped on drop.
pub struct UserSecret(SecretBox<[u8; 32]>);

impl std::fmt::Debug for UserSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UserSecret([redacted])")
    }
}

impl UserSecret {
    /// A fresh random secret, from the operating system's CSPRNG.
    pub fn generate() -> UserSecret {
        let mut bytes = Box::new([0u8; 32]);
        OsRng.fill_bytes(bytes.as_mut());
        UserSecret(SecretBox::new(bytes))
    }

    /// From raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> UserSecret {
        UserSecret(SecretBox::new(Box::new(bytes)))
    }

    /// From base64url without padding (how an app provider stores or transmits it).
    pub fn from_b64(text: &str) -> Option<UserSecret> {
        b64::decode_array::<32>(text.trim()).map(UserSecret::from_bytes)
    }

    /// As base64url without padding.
    pub fn to_b64(&self) -> SecretString {
        SecretString::from(b64::encode(self.0.expose_secret()))
    }

    /// The raw bytes.
    pub fn expose(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }
}

/// Why an assertion could not be minted or a key loaded.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    /// The key file is not a PKCS#8 Ed25519 private key.
    #[error("not a PKCS#8 Ed25519 private key")]
    BadKey,
    /// Signing failed.
    #[error("cannot sign the assertion: {0}")]
    Sign(String),
}

/// An app provider's Ed25519 assertion key with its key id (`kid`).
#[derive(Clone)]
pub struct AppSigningKey {
    kid: String,
    key: SigningKey,
}

impl std::fmt::Debug for AppSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppSigningKey")
            .field("kid", &self.kid)
            .field("public_key", &self.public_key_b64())
            .finish_non_exhaustive()
    }
}

/// What an assertion says, apart from its times and `jti`.
#[derive(Debug, Clone)]
pub struct AssertionRequest<'a> {
    /// The app id (`iss`).
    pub app_id: &'a str,
    /// The user id (`sub`).
    pub user_id: &'a str,
    /// The Ghostkey deployment's service id (`aud`).
    pub audience: &'a str,
    /// What it allows.
    pub purpose: Purpose,
}

/// Default assertion lifetime: short, since the user uses it at once.
pub const DEFAULT_LIFETIME_SECS: i64 = 120;

impl AppSigningKey {
    /// A fresh key.
    pub fn generate(kid: &str) -> AppSigningKey {
        AppSigningKey {
            kid: kid.to_owned(),
            key: SigningKey::generate(&mut OsRng),
        }
    }

    /// From a 32-byte Ed25519 seed.
    pub fn from_seed(kid: &str, seed: &[u8; 32]) -> AppSigningKey {
        AppSigningKey {
            kid: kid.to_owned(),
            key: SigningKey::from_bytes(seed),
        }
    }

    /// From a PKCS#8 PEM private key (`openssl genpkey -algorithm ed25519` writes one).
    pub fn from_pkcs8_pem(kid: &str, pem: &str) -> Result<AppSigningKey, KitError> {
        Ok(AppSigningKey {
            kid: kid.to_owned(),
            key: SigningKey::from_pkcs8_pem(pem).map_err(|_| KitError::BadKey)?,
        })
    }

    /// As a PKCS#8 PEM private key.
    pub fn to_pkcs8_pem(&self) -> Result<SecretString, KitError> {
        let pem = self
            .key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|_| KitError::BadKey)?;
        Ok(SecretString::from(pem.as_str().to_owned()))
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key, 32 bytes in base64url: what the operator registers with
    /// `ghostkey app add --public-key`.
    pub fn public_key_b64(&self) -> String {
        b64::encode(self.key.verifying_key().to_bytes())
    }

    /// Mints an assertion valid from `now` for `lifetime_secs`, with a fresh random `jti`.
    pub fn mint(
        &self,
        request: &AssertionRequest<'_>,
        now: i64,
        lifetime_secs: i64,
    ) -> Result<String, KitError> {
        let mut jti = [0u8; 16];
        OsRng.fill_bytes(&mut jti);
        self.mint_claims(&AssertionClaims {
            iss: request.app_id.to_owned(),
            sub: request.user_id.to_owned(),
            aud: request.audience.to_owned(),
            iat: now,
            exp: now + lifetime_secs,
            jti: b64::encode(jti),
            purpose: request.purpose,
        })
    }

    /// Signs bytes with the app key (Ed25519).
    pub(crate) fn sign_bytes(&self, message: &[u8]) -> [u8; 64] {
        use ed25519_dalek::Signer;
        self.key.sign(message).to_bytes()
    }

    /// The 32-byte Ed25519 seed (the private key): for the app provider's secret storage.
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The app's Ed25519 public key, raw.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// Mints an assertion with exactly these claims: a compact JWS (RFC 7515) signed with
    /// EdDSA (RFC 8037), header `{"typ":"JWT","alg":"EdDSA","kid":...}` (docs/PROTOCOL.md
    /// §2.1, byte for byte the §11.2 vector). Written out rather than through a JWT
    /// library: it is a few lines, and keeps RSA and ECDSA code out of the WebAssembly
    /// build.
    pub fn mint_claims<C: serde::Serialize>(&self, claims: &C) -> Result<String, KitError> {
        #[derive(serde::Serialize)]
        struct Header<'a> {
            typ: &'a str,
            alg: &'a str,
            kid: &'a str,
        }
        let header = serde_json::to_vec(&Header {
            typ: "JWT",
            alg: ghostkey_proto::assertion::ALGORITHM,
            kid: &self.kid,
        })
        .map_err(|e| KitError::Sign(e.to_string()))?;
        let payload = serde_json::to_vec(claims).map_err(|e| KitError::Sign(e.to_string()))?;
        let signing_input = format!("{}.{}", b64::encode(header), b64::encode(payload));
        let signature = self.sign_bytes(signing_input.as_bytes());
        Ok(format!("{signing_input}.{}", b64::encode(signature)))
    }
}

/// The current time in seconds since the Unix epoch, for [`AppSigningKey::mint`].
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_pem_and_secrets_do_not_print() {
        let key = AppSigningKey::generate("k1");
        let pem = key.to_pkcs8_pem().unwrap();
        let again = AppSigningKey::from_pkcs8_pem("k1", pem.expose_secret()).unwrap();
        assert_eq!(key.public_key_b64(), again.public_key_b64());
        let secret = UserSecret::generate();
        let text = secret.to_b64();
        assert!(!format!("{secret:?}").contains(text.expose_secret()));
        assert_eq!(
            UserSecret::from_b64(text.expose_secret()).unwrap().expose(),
            secret.expose()
        );
        assert!(!format!("{key:?}").contains(pem.expose_secret()));
    }
}
