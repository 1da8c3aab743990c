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
