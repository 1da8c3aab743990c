//! Device keys: an Ed25519 signing pair and an X25519 encryption pair per device.

use ed25519_dalek::SigningKey;
use ghostkey_proto::api::DevicePublicKeys;
use ghostkey_proto::b64;
use rand::rngs::OsRng;
use x25519_dalek::{PublicKey, StaticSecret};

/// A device's private keys. Wiped on drop; `Debug` shows only the public halves.
#[derive(Clone)]
pub struct DeviceKeys {
    signing: SigningKey,
    encryption: StaticSecret,
}

impl std::fmt::Debug for DeviceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceKeys")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

impl PartialEq for DeviceKeys {
    fn eq(&self, other: &DeviceKeys) -> bool {
        // Comparing public keys is enough: they are functions of the private keys.
        self.public() == other.public()
    }
}

impl Eq for DeviceKeys {}

impl DeviceKeys {
    /// Fresh random keys.
    pub fn generate() -> DeviceKeys {
        DeviceKeys {
            signing: SigningKey::generate(&mut OsRng),
            encryption: StaticSecret::random_from_rng(OsRng),
        }
    }

    /// Keys from their 32-byte private halves.
    pub fn from_bytes(signing_seed: &[u8; 32], encryption_secret: &[u8; 32]) -> DeviceKeys {
        DeviceKeys {
            signing: SigningKey::from_bytes(signing_seed),
            encryption: StaticSecret::from(*encryption_secret),
        }
    }

    /// The Ed25519 signing key.
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    /// The X25519 secret.
    pub fn encryption_secret(&self) -> &StaticSecret {
        &self.encryption
    }

    /// The Ed25519 public key.
    pub fn signing_public(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// The X25519 public key.
    pub fn encryption_public(&self) -> [u8; 32] {
        PublicKey::from(&self.encryption).to_bytes()
    }

    /// The public keys in wire form.
    pub fn public(&self) -> DevicePublicKeys {
        DevicePublicKeys {
            signing_key: b64::encode(self.signing_public()),
            encryption_key: b64::encode(self.encryption_public()),
        }
    }
}

/// The user key pair (X25519): documents for the user are sealed to its public half; its
/// private half is sealed to each of the user's devices (DESIGN.md §2), so any of them can
/// open the user's documents. Wiped on drop; `Debug` shows only the public key.
#[derive(Clone)]
pub struct UserKeys {
    secret: StaticSecret,
}

impl std::fmt::Debug for UserKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserKeys")
            .field("public", &b64::encode(self.public()))
            .finish_non_exhaustive()
    }
}

impl UserKeys {
    /// A fresh random user key pair.
    pub fn generate() -> UserKeys {
        UserKeys {
            secret: StaticSecret::random_from_rng(OsRng),
        }
    }

    /// From the 32-byte private key.
    pub fn from_bytes(secret: &[u8; 32]) -> UserKeys {
        UserKeys {
            secret: StaticSecret::from(*secret),
        }
    }

    /// The X25519 public key.
    pub fn public(&self) -> [u8; 32] {
        PublicKey::from(&self.secret).to_bytes()
    }

    /// The X25519 private key.
    pub fn secret(&self) -> &StaticSecret {
        &self.secret
    }
}

/// A virtual device: keys whose private halves live only sealed at Ghostkey, bound to an
/// app, a user and a version counter (raised each time the blob is replaced, so a client
/// can refuse a rolled-back blob).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualDevice {
    pub(crate) app_id: String,
    pub(crate) user_id: String,
    pub(crate) version: u64,
    pub(crate) keys: DeviceKeys,
}

impl VirtualDevice {
    /// A new virtual device with fresh keys.
    pub fn generate(app_id: &str, user_id: &str, version: u64) -> VirtualDevice {
        VirtualDevice::from_keys(app_id, user_id, version, DeviceKeys::generate())
    }

    /// A virtual device from existing keys.
    pub fn from_keys(app_id: &str, user_id: &str, version: u64, keys: DeviceKeys) -> VirtualDevice {
        VirtualDevice {
            app_id: app_id.to_owned(),
            user_id: user_id.to_owned(),
            version,
            keys,
        }
    }

    /// The app it belongs to.
    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    /// The user it belongs to.
    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    /// Its version counter.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Its keys.
    pub fn keys(&self) -> &DeviceKeys {
        &self.keys
    }
}
