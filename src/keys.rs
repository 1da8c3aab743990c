//! The server data key: the symmetric key that encrypts Ghostkey's own secrets at rest
//! (verification methods) and from which its other server keys are derived.

use std::io::Write;
use std::path::Path;

use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::{Digest, Sha256};

use crate::config::{Config, Mode};

/// Length of the data key in bytes.
pub const DATA_KEY_LEN: usize = 32;

/// The server data key with its public id (stored beside every value it encrypts, so the
/// key can be rotated).
pub struct DataKey {
    id: String,
    key: SecretBox<[u8; DATA_KEY_LEN]>,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// Where the data key came from, for the start-up log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataKeySource {
    /// Given in the configuration.
    Configured,
    /// Read from the development key file beside the database.
    DevelopmentFile,
    /// Generated just now into the development key file.
    GeneratedDevelopmentFile,
}

impl DataKey {
    /// Builds a key from its bytes.
    pub fn from_bytes(bytes: [u8; DATA_KEY_LEN]) -> DataKey {
        let id = hex::encode(
            &Sha256::new_with_prefix(b"ghostkey data key id v1\0")
                .chain_update(bytes)
                .finalize()[..8],
        );
        DataKey {
            id,
            key: SecretBox::new(Box::new(bytes)),
        }
    }

    /// Parses the text form: 32 bytes in base64url (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<DataKey, String> {
        let bytes = ghostkey_proto::b64::decode_array::<DATA_KEY_LEN>(text.trim())
            .ok_or_else(|| format!("must be {DATA_KEY_LEN} bytes in base64url without padding"))?;
        Ok(DataKey::from_bytes(bytes))
    }

    /// Generates a fresh random key.
    pub fn generate() -> DataKey {
        let mut bytes = [0u8; DATA_KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        DataKey::from_bytes(bytes)
    }

    /// The text form written to key files.
    pub fn to_text(&self) -> SecretString {
        SecretString::from(ghostkey_proto::b64::encode(self.key.expose_secret()))
    }

    /// The public key id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key bytes.
    pub fn expose(&self) -> &[u8; DATA_KEY_LEN] {
        self.key.expose_secret()
    }

    /// Loads the key the configuration names, or in development mode, the key file beside
    /// the database, generating it (mode 0600) on first start.
    pub fn load(config: &Config) -> Result<(DataKey, DataKeySource), String> {
        if let Some(inline) = &config.keys.data_key {
            let key = DataKey::parse(inline.expose_secret())
                .map_err(|e| format!("`keys.data_key` {e}"))?;
            return Ok((key, DataKeySource::Configured));
        }
        if let Some(path) = &config.keys.data_key_file {
            let key = read_key_file(path).map_err(|e| format!("`keys.data_key_file` {e}"))?;
            return Ok((key, DataKeySource::Configured));
        }
        if config.mode == Mode::Production {
            return Err(
                "`keys.data_key_file` is not set; production refuses a generated key".into(),
            );
        }
        let path = config.dev_data_key_path();
        match read_key_file(&path) {
            Ok(key) => Ok((key, DataKeySource::DevelopmentFile)),
            Err(_) if !path.exists() => {
                let key = DataKey::generate();
                write_key_file(&path, &key).map_err(|e| {
                    format!(
                        "cannot write the development data key {}: {e}",
                        path.display()
                    )
                })?;
                Ok((key, DataKeySource::GeneratedDevelopmentFile))
            }
            Err(e) => Err(format!("development data key {e}")),
        }
    }
}

/// Loads the retired keys the configuration lists.
pub fn load_retired(config: &Config) -> Result<Vec<DataKey>, String> {
    config
        .keys
        .retired_key_files
        .iter()
        .map(|path| read_key_file(path).map_err(|e| format!("`keys.retired_key_files` {e}")))
        .collect()
}

/// The server's keys as the configuration describes them: current and retired.
pub fn load_server_keys(config: &Config) -> Result<(ServerKeys, DataKeySource), String> {
    let (current, source) = DataKey::load(config)?;
    let retired = load_retired(config)?;
    Ok((ServerKeys::derive(&current).with_retired(&retired), source))
}

/// Reads a key file, refusing one that others may read.
pub fn read_key_file(path: &Path) -> Result<DataKey, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{}: cannot be read: {e}", path.display()))?;
    check_private(path)?;
    DataKey::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(format!(
            "{}: is readable by group or others (mode {:o}); run chmod 600",
            path.display(),
            mode & 0o777
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_path: &Path) -> Result<(), String> {
    Ok(())
}

/// Writes a new key file with mode 0600; never overwrites an existing file.
pub fn write_key_file(path: &Path, key: &DataKey) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(key.to_text().expose_secret().as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_key_is_generated_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.database.path = dir.path().join("g.db");
        let (first, source) = DataKey::load(&config).unwrap();
        assert_eq!(source, DataKeySource::GeneratedDevelopmentFile);
        let (again, source) = DataKey::load(&config).unwrap();
        assert_eq!(source, DataKeySource::DevelopmentFile);
        assert_eq!(first.id(), again.id());
        assert_eq!(first.expose(), again.expose());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(config.dev_data_key_path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!format!("{first:?}").contains(&ghostkey_proto::b64::encode(first.expose())));
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_key_file(&path, &DataKey::generate()).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_key_file(&path).unwrap_err().contains("chmod 600"));
    }

    #[test]
    fn malformed_keys_are_refused() {
        assert!(DataKey::parse("short").is_err());
        assert!(DataKey::parse(&ghostkey_proto::b64::encode([0u8; 31])).is_err());
        assert!(DataKey::parse(&ghostkey_proto::b64::encode([7u8; 32])).is_ok());
    }
}

/// The keys derived from one data key, each for one purpose only.
struct KeySet {
    id: String,
    at_rest: SecretBox<[u8; 32]>,
    code_pepper: SecretBox<[u8; 32]>,
    code_mac: SecretBox<[u8; 32]>,
    destination_mac: SecretBox<[u8; 32]>,
}

/// The keys Ghostkey works with: those of the current data key, and those of retired data
/// keys that values not yet re-encrypted (or codes not yet expired) still need.
pub struct ServerKeys {
    current: KeySet,
    retired: Vec<KeySet>,
}

impl std::fmt::Debug for ServerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerKeys")
            .field("key_id", &self.current.id)
            .field(
                "retired",
                &self
                    .retired
                    .iter()
                    .map(|k| k.id.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Why a value encrypted at rest did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AtRestError {
    /// The value was encrypted under a key this server does not have.
    #[error("value is encrypted under data key {0}, which this server does not hold")]
    UnknownKey(String),
    /// The value was altered, or is not a value this server encrypted.
    #[error("value does not decrypt (altered or foreign)")]
    Corrupt,
}

fn derive(key: &[u8; 32], label: &[u8]) -> SecretBox<[u8; 32]> {
    use hmac::{Hmac, Mac};
    let mut out = Box::new([0u8; 32]);
    // HMAC-SHA256 as a PRF: one independent key per label.
    if let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) {
        mac.update(label);
        out.copy_from_slice(&mac.finalize().into_bytes());
    }
    SecretBox::new(out)
}

fn key_set(data_key: &DataKey) -> KeySet {
    let k = data_key.expose();
    let code_pepper = derive(k, b"ghostkey/v1/one-time-code-pepper");
    // The one-time-code MAC key comes from the pepper under a label of its own: the pepper
    // keeps its meaning for the Argon2id hashes (passphrases, codes stored before schema
    // version 7), and the MAC key is independent of it and of every other purpose key.
    let code_mac = derive(
        code_pepper.expose_secret(),
        b"ghostkey/v1/one-time-code-mac",
    );
    KeySet {
        id: data_key.id().to_owned(),
        at_rest: derive(k, b"ghostkey/v1/at-rest-encryption"),
        code_pepper,
        code_mac,
        destination_mac: derive(k, b"ghostkey/v1/destination-mac"),
    }
}

impl ServerKeys {
    /// Derives the purpose keys from the current data key.
    pub fn derive(data_key: &DataKey) -> ServerKeys {
        ServerKeys {
            current: key_set(data_key),
            retired: Vec::new(),
        }
    }

    /// Adds retired data keys: still read, never written.
    pub fn with_retired(mut self, retired: &[DataKey]) -> ServerKeys {
        self.retired = retired
            .iter()
            .filter(|k| k.id() != self.current.id)
            .map(key_set)
            .collect();
        self
    }

    /// The id of the data key in use (stored beside each encrypted value).
    pub fn key_id(&self) -> &str {
        &self.current.id
    }

    /// Whether this server can read values under `key_id` (its current or a retired key).
    pub fn has_key(&self, key_id: &str) -> bool {
        self.set(key_id).is_ok()
    }

    /// The ids of the retired keys this server still reads.
    pub fn retired_ids(&self) -> Vec<String> {
        self.retired.iter().map(|k| k.id.clone()).collect()
    }

    fn set(&self, key_id: &str) -> Result<&KeySet, AtRestError> {
        std::iter::once(&self.current)
            .chain(self.retired.iter())
            .find(|k| k.id == key_id)
            .ok_or_else(|| AtRestError::UnknownKey(key_id.to_owned()))
    }

    /// The Argon2 secret (pepper) for new Argon2id hashes (passphrase verifiers).
    pub fn code_pepper(&self) -> &[u8; 32] {
        self.current.code_pepper.expose_secret()
    }

    /// The pepper of the data key `key_id` (hashes made before a rotation, and codes
    /// stored with Argon2id before schema version 7).
    pub fn code_pepper_for(&self, key_id: &str) -> Result<&[u8; 32], AtRestError> {
        Ok(self.set(key_id)?.code_pepper.expose_secret())
    }

    /// The HMAC-SHA256 key for new one-time codes (derived from the current pepper).
    pub fn code_mac_key(&self) -> &[u8; 32] {
        self.current.code_mac.expose_secret()
    }

    /// The code MAC key of the data key `key_id` (codes stored before a rotation).
    pub fn code_mac_key_for(&self, key_id: &str) -> Result<&[u8; 32], AtRestError> {
        Ok(self.set(key_id)?.code_mac.expose_secret())
    }

    /// Encrypts a value for storage under the current key:
    /// `nonce (24) || XSalsa20-Poly1305 ciphertext`.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        use crypto_secretbox::aead::{Aead, KeyInit};
        use crypto_secretbox::{Nonce, XSalsa20Poly1305};
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let cipher = XSalsa20Poly1305::new(self.current.at_rest.expose_secret().into());
        let mut out = nonce.to_vec();
        // Encryption with a valid key and nonce cannot fail for in-memory buffers.
        if let Ok(ct) = cipher.encrypt(Nonce::from_slice(&nonce), plaintext) {
            out.extend_from_slice(&ct);
        }
        out
    }

    /// Decrypts a value sealed under key `key_id` (current or retired).
    pub fn open(
        &self,
        key_id: &str,
        sealed: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, AtRestError> {
        use crypto_secretbox::aead::{Aead, KeyInit};
        use crypto_secretbox::{Nonce, XSalsa20Poly1305};
        let set = self.set(key_id)?;
        if sealed.len() < 24 + 16 {
            return Err(AtRestError::Corrupt);
        }
        let (nonce, ct) = sealed.split_at(24);
        let cipher = XSalsa20Poly1305::new(set.at_rest.expose_secret().into());
        cipher
            .decrypt(Nonce::from_slice(nonce), ct)
            .map(zeroize::Zeroizing::new)
            .map_err(|_| AtRestError::Corrupt)
    }

    /// A keyed MAC of a normalised destination (or client address): what rate limits
    /// count by, so the store never holds the destination itself for that purpose.
    pub fn destination_mac(&self, kind: &str, normalised: &str) -> Vec<u8> {
        labelled_mac(&self.current.destination_mac, kind, normalised)
    }

    /// The MAC a new cancel code is stored as, and the id of the key it is under: the
    /// current one-time-code MAC key, like every other code since schema version 7.
    pub fn cancel_code_mac(&self, canonical: &str) -> (String, Vec<u8>) {
        (
            self.current.id.clone(),
            labelled_mac(&self.current.code_mac, CANCEL_CODE_LABEL, canonical),
        )
    }

    /// Every MAC a cancel code may be stored as: under the code MAC key of the current
    /// and of each retired data key (a rotation while a recovery waits), then the form
    /// written before schema version 8 (the destination MAC key, with no key id).
    pub fn cancel_code_mac_candidates(&self, canonical: &str) -> Vec<Vec<u8>> {
        let sets = || std::iter::once(&self.current).chain(self.retired.iter());
        sets()
            .map(|set| labelled_mac(&set.code_mac, CANCEL_CODE_LABEL, canonical))
            .chain(sets().map(|set| labelled_mac(&set.destination_mac, "cancel-code", canonical)))
            .collect()
    }
}

/// The label of cancel-code MACs under a code MAC key (recovery and confirmation codes
/// use their own, see `domain::code`).
const CANCEL_CODE_LABEL: &str = "ghostkey/v1/cancel-code";

/// HMAC-SHA256 under `key` of `label || 0 || text`.
fn labelled_mac(key: &SecretBox<[u8; 32]>, label: &str, text: &str) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key.expose_secret()) else {
        return Vec::new();
    };
    mac.update(label.as_bytes());
    mac.update(b"\0");
    mac.update(text.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod server_key_tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_under_their_key_and_unaltered() {
        let keys = ServerKeys::derive(&DataKey::generate());
        let sealed = keys.seal(b"+33612345678");
        assert!(!sealed.windows(12).any(|w| w == b"+33612345678"));
        assert_eq!(
            keys.open(keys.key_id(), &sealed).unwrap().as_slice(),
            b"+33612345678"
        );
        let mut altered = sealed.clone();
        altered[30] ^= 1;
        assert_eq!(
            keys.open(keys.key_id(), &altered),
            Err(AtRestError::Corrupt)
        );
        assert!(matches!(
            keys.open("other", &sealed),
            Err(AtRestError::UnknownKey(_))
        ));
        let other = ServerKeys::derive(&DataKey::generate());
        assert_eq!(
            other.open(other.key_id(), &sealed),
            Err(AtRestError::Corrupt)
        );
    }

    #[test]
    fn purpose_keys_differ_and_macs_are_stable() {
        let keys = ServerKeys::derive(&DataKey::from_bytes([1; 32]));
        assert_ne!(keys.code_pepper(), keys.current.at_rest.expose_secret());
        assert_ne!(keys.code_mac_key(), keys.code_pepper());
        assert_ne!(keys.code_mac_key(), keys.current.at_rest.expose_secret());
        assert_eq!(
            keys.destination_mac("sms", "+1"),
            keys.destination_mac("sms", "+1")
        );
        assert_ne!(
            keys.destination_mac("sms", "+1"),
            keys.destination_mac("email", "+1")
        );
    }

    #[test]
    fn the_code_mac_key_changes_with_the_data_key_and_is_found_by_its_id() {
        let a = DataKey::from_bytes([1; 32]);
        let b = DataKey::from_bytes([2; 32]);
        let keys = ServerKeys::derive(&b).with_retired(&[DataKey::from_bytes([1; 32])]);
        let only_a = ServerKeys::derive(&a);
        assert_eq!(
            keys.code_mac_key_for(a.id()).unwrap(),
            only_a.code_mac_key(),
            "the same data key gives the same MAC key, current or retired"
        );
        assert_eq!(keys.code_mac_key_for(b.id()).unwrap(), keys.code_mac_key());
        assert_ne!(keys.code_mac_key_for(a.id()).unwrap(), keys.code_mac_key());
        assert!(matches!(
            keys.code_mac_key_for("nope"),
            Err(AtRestError::UnknownKey(_))
        ));
        // So the stored MAC of one code and salt depends on the key id the challenge records.
        let salt = [9u8; 16];
        assert_ne!(
            crate::domain::code::mac(keys.code_mac_key_for(a.id()).unwrap(), &salt, "12345678"),
            crate::domain::code::mac(keys.code_mac_key_for(b.id()).unwrap(), &salt, "12345678")
        );
    }

    #[test]
    fn a_cancel_code_is_found_under_its_key_a_retired_key_or_the_form_before_version_8() {
        let old = DataKey::from_bytes([1; 32]);
        let new = DataKey::from_bytes([2; 32]);
        let code = "ABCDEFGHJKMNPQRSTVWX";
        let before = ServerKeys::derive(&old);
        let (old_id, made_before) = before.cancel_code_mac(code);
        assert_eq!(old_id, old.id());
        // Written before schema version 8: the destination MAC key, no key id.
        let legacy = before.destination_mac("cancel-code", code);
        assert_ne!(made_before, legacy, "the code MAC key is its own");

        let after = ServerKeys::derive(&new).with_retired(&[DataKey::from_bytes([1; 32])]);
        let (new_id, made_after) = after.cancel_code_mac(code);
        assert_eq!(new_id, new.id());
        assert_ne!(made_after, made_before, "the MAC changes with the key");
        let candidates = after.cancel_code_mac_candidates(code);
        assert_eq!(candidates[0], made_after, "the current key is tried first");
        assert!(
            candidates.contains(&made_before),
            "a retired key's code is found"
        );
        assert!(
            candidates.contains(&legacy),
            "a code from before version 8 is found"
        );
        // Another code matches none of them.
        let other = after.cancel_code_mac_candidates("0123456789ABCDEFGHJK");
        assert!(other.iter().all(|m| !candidates.contains(m)));
        // Without the retired key, its codes are not found.
        let alone = ServerKeys::derive(&new).cancel_code_mac_candidates(code);
        assert!(!alone.contains(&made_before) && !alone.contains(&legacy));
    }
}
