//! Sealing and opening the virtual device (DESIGN.md §2; `docs/PROTOCOL.md`).
//!
//! Sealed form: `0x01 || nonce (24) || crypto_secretbox(plaintext)` (tag, then ciphertext)
//! under the user secret.
//! Plaintext layout, version 1 (all integers big-endian):
//!
//! ```text
//! "GKVD"              4 bytes, magic
//! 0x01                1 byte, plaintext layout version
//! version             8 bytes, u64 counter, raised on every replacement
//! app_id_len          1 byte, then app_id (UTF-8, 1..=255 bytes)
//! user_id_len         1 byte, then user_id (UTF-8, 1..=255 bytes)
//! signing_seed        32 bytes, Ed25519 private key seed
//! encryption_secret   32 bytes, X25519 private key
//! ```

use crypto_secretbox::aead::{Aead, KeyInit};
use crypto_secretbox::{Nonce, XSalsa20Poly1305};
use ghostkey_proto::sealed::{self as format, NONCE_LEN, SEALED_FORMAT_V1};
use rand::RngCore;
use zeroize::Zeroizing;

use crate::device::{DeviceKeys, VirtualDevice};
use crate::kit::UserSecret;

const MAGIC: &[u8; 4] = b"GKVD";
const LAYOUT_V1: u8 = 1;

/// Why a sealed virtual device could not be made or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The outer format is wrong (version byte, size).
    #[error("sealed virtual device: {0}")]
    Format(#[from] format::SealedFormatError),
    /// The user secret does not open it, or it was altered.
    #[error("the sealed virtual device does not open with this user secret (wrong secret or altered blob)")]
    Decrypt,
    /// It opened, but the plaintext is not a version-1 layout.
    #[error("the virtual device plaintext is malformed: {0}")]
    Layout(&'static str),
    /// It opened, but it belongs to another app or user.
    #[error("the virtual device belongs to another {0}")]
    WrongBinding(&'static str),
    /// It opened, but its version is older than the one expected (a rollback).
    #[error("the virtual device has version {found}, older than the expected {expected}")]
    RolledBack {
        /// Version found.
        found: u64,
        /// Smallest acceptable version.
        expected: u64,
    },
    /// An id is empty or longer than 255 bytes.
    #[error("app id and user id must be 1 to 255 bytes")]
    IdLength,
}

fn push_id(out: &mut Vec<u8>, id: &str) -> Result<(), SealError> {
    let len = u8::try_from(id.len()).map_err(|_| SealError::IdLength)?;
    if len == 0 {
        return Err(SealError::IdLength);
    }
    out.push(len);
    out.extend_from_slice(id.as_bytes());
    Ok(())
}

impl VirtualDevice {
    /// The plaintext layout (secret: wiped on drop).
    pub fn to_plaintext(&self) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let mut out = Zeroizing::new(Vec::with_capacity(128));
        out.extend_from_slice(MAGIC);
        out.push(LAYOUT_V1);
        out.extend_from_slice(&self.version.to_be_bytes());
        push_id(&mut out, &self.app_id)?;
        push_id(&mut out, &self.user_id)?;
        out.extend_from_slice(self.keys.signing_key().as_bytes());
        out.extend_from_slice(self.keys.encryption_secret().as_bytes().as_slice());
        Ok(out)
    }

    /// Parses the plaintext layout.
    pub fn from_plaintext(bytes: &[u8]) -> Result<VirtualDevice, SealError> {
        let mut r = Reader(bytes);
        if r.take(4)? != MAGIC {
            return Err(SealError::Layout("bad magic"));
        }
        if r.take(1)?[0] != LAYOUT_V1 {
            return Err(SealError::Layout("unknown layout version"));
        }
        let version = u64::from_be_bytes(r.array::<8>()?);
        let app_id = r.id()?;
        let user_id = r.id()?;
        let seed = Zeroizing::new(r.array::<32>()?);
        let secret = Zeroizing::new(r.array::<32>()?);
        if !r.0.is_empty() {
            return Err(SealError::Layout("trailing bytes"));
        }
        Ok(VirtualDevice {
            app_id,
            user_id,
            version,
            keys: DeviceKeys::from_bytes(&seed, &secret),
        })
    }

    /// Seals under the user secret with a fresh random nonce.
    pub fn seal(&self, secret: &UserSecret) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        self.seal_with_nonce(secret, &nonce)
    }

    /// Seals with a given nonce. Only for test vectors: a nonce must never repeat under
    /// one user secret.
    pub fn seal_with_nonce(
        &self,
        secret: &UserSecret,
        nonce: &[u8; NONCE_LEN],
    ) -> Result<Vec<u8>, SealError> {
        let plaintext = self.to_plaintext()?;
        let cipher = XSalsa20Poly1305::new(secret.expose().into());
        let ciphertext = cipher
            .encrypt(Nonce::from_slice(nonce), plaintext.as_slice())
            .map_err(|_| SealError::Decrypt)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        out.push(SEALED_FORMAT_V1);
        out.extend_from_slice(nonce);
        out.extend_from_slice(&ciphertext);
        format::parse(&out)?;
        Ok(out)
    }

    /// Opens a sealed virtual device and checks that it belongs to `app_id` and `user_id`
    /// and is at least version `min_version`.
    pub fn open(
        blob: &[u8],
        secret: &UserSecret,
        app_id: &str,
        user_id: &str,
        min_version: u64,
    ) -> Result<VirtualDevice, SealError> {
        let parts = format::parse(blob)?;
        let cipher = XSalsa20Poly1305::new(secret.expose().into());
        let plaintext = Zeroizing::new(
            cipher
                .decrypt(Nonce::from_slice(parts.nonce), parts.ciphertext)
                .map_err(|_| SealError::Decrypt)?,
        );
        let device = VirtualDevice::from_plaintext(&plaintext)?;
        if device.app_id != app_id {
            return Err(SealError::WrongBinding("app"));
        }
        if device.user_id != user_id {
            return Err(SealError::WrongBinding("user"));
        }
        if device.version < min_version {
            return Err(SealError::RolledBack {
                found: device.version,
                expected: min_version,
            });
        }
        Ok(device)
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SealError> {
        if self.0.len() < n {
            return Err(SealError::Layout("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], SealError> {
        self.take(N)?
            .try_into()
            .map_err(|_| SealError::Layout("truncated"))
    }

    fn id(&mut self) -> Result<String, SealError> {
        let len = usize::from(self.take(1)?[0]);
        if len == 0 {
            return Err(SealError::Layout("empty id"));
        }
        String::from_utf8(self.take(len)?.to_vec())
            .map_err(|_| SealError::Layout("id is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_binding_checks() {
        let secret = UserSecret::generate();
        let device = VirtualDevice::generate("app_1", "user-1", 3);
        let blob = device.seal(&secret).unwrap();
        assert_eq!(blob[0], SEALED_FORMAT_V1);
        assert_eq!(
            VirtualDevice::open(&blob, &secret, "app_1", "user-1", 3).unwrap(),
            device
        );
        assert_eq!(
            VirtualDevice::open(&blob, &UserSecret::generate(), "app_1", "user-1", 1),
            Err(SealError::Decrypt)
        );
        assert_eq!(
            VirtualDevice::open(&blob, &secret, "app_2", "user-1", 1),
            Err(SealError::WrongBinding("app"))
        );
        assert_eq!(
            VirtualDevice::open(&blob, &secret, "app_1", "user-2", 1),
            Err(SealError::WrongBinding("user"))
        );
        assert_eq!(
            VirtualDevice::open(&blob, &secret, "app_1", "user-1", 4),
            Err(SealError::RolledBack {
                found: 3,
                expected: 4
            })
        );
        for i in 1..blob.len() {
            let mut tampered = blob.clone();
            tampered[i] ^= 1;
            assert_eq!(
                VirtualDevice::open(&tampered, &secret, "app_1", "user-1", 1),
                Err(SealError::Decrypt),
                "byte {i}"
            );
        }
    }

    #[test]
    fn two_seals_differ_by_their_nonce() {
        let secret = UserSecret::generate();
        let device = VirtualDevice::generate("a", "u", 1);
        assert_ne!(device.seal(&secret).unwrap(), device.seal(&secret).unwrap());
    }
}
