//! The outer format of a sealed virtual device (DESIGN.md §2).
//!
//! `version (1 byte) || nonce (24 bytes) || Poly1305 tag (16) || ciphertext`, made with NaCl
//! `crypto_secretbox` (XSalsa20-Poly1305) under the 32-byte user secret. Ghostkey cannot
//! open it; it checks only the version byte and the size bounds below.

/// The only version of the sealed format defined so far.
pub const SEALED_FORMAT_V1: u8 = 1;
/// XSalsa20 nonce length.
pub const NONCE_LEN: usize = 24;
/// Poly1305 tag length.
pub const TAG_LEN: usize = 16;
/// The smallest plaintext a v1 client can produce (two 32-byte private keys, no ids).
pub const MIN_PLAINTEXT_LEN: usize = 64;
/// The largest sealed blob Ghostkey stores, header included.
pub const MAX_SEALED_LEN: usize = 4096;
/// The smallest sealed blob that can be valid, header included.
pub const MIN_SEALED_LEN: usize = 1 + NONCE_LEN + TAG_LEN + MIN_PLAINTEXT_LEN;

/// Why bytes are not a well-formed sealed virtual device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealedFormatError {
    /// The first byte names a version this code does not know.
    #[error("unsupported sealed format version {0}")]
    UnsupportedVersion(u8),
    /// Shorter than the smallest possible blob.
    #[error("sealed blob is too short ({0} bytes, minimum {MIN_SEALED_LEN})")]
    TooShort(usize),
    /// Longer than Ghostkey stores.
    #[error("sealed blob is too long ({0} bytes, maximum {MAX_SEALED_LEN})")]
    TooLong(usize),
}

/// A borrowed view of a well-formed sealed blob.
#[derive(Debug, Clone, Copy)]
pub struct SealedParts<'a> {
    /// The format version byte.
    pub version: u8,
    /// The 24-byte nonce.
    pub nonce: &'a [u8; NONCE_LEN],
    /// The 16-byte tag followed by the ciphertext (NaCl `crypto_secretbox_easy` order).
    pub ciphertext: &'a [u8],
}

/// Checks the version byte and size bounds and splits the blob into its parts.
pub fn parse(blob: &[u8]) -> Result<SealedParts<'_>, SealedFormatError> {
    if blob.len() > MAX_SEALED_LEN {
        return Err(SealedFormatError::TooLong(blob.len()));
    }
    let Some((&version, rest)) = blob.split_first() else {
        return Err(SealedFormatError::TooShort(0));
    };
    if version != SEALED_FORMAT_V1 {
        return Err(SealedFormatError::UnsupportedVersion(version));
    }
    if blob.len() < MIN_SEALED_LEN {
        return Err(SealedFormatError::TooShort(blob.len()));
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    let nonce = nonce
        .try_into()
        .map_err(|_| SealedFormatError::TooShort(blob.len()))?;
    Ok(SealedParts {
        version,
        nonce,
        ciphertext,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_and_version_are_checked() {
        let mut ok = vec![0u8; MIN_SEALED_LEN];
        ok[0] = SEALED_FORMAT_V1;
        let parts = parse(&ok).unwrap();
        assert_eq!(parts.ciphertext.len(), TAG_LEN + MIN_PLAINTEXT_LEN);
        assert_eq!(
            parse(&ok[..MIN_SEALED_LEN - 1]).unwrap_err(),
            SealedFormatError::TooShort(MIN_SEALED_LEN - 1)
        );
        assert_eq!(parse(&[]).unwrap_err(), SealedFormatError::TooShort(0));
        let mut v2 = ok.clone();
        v2[0] = 2;
        assert_eq!(
            parse(&v2).unwrap_err(),
            SealedFormatError::UnsupportedVersion(2)
        );
        let mut long = vec![0u8; MAX_SEALED_LEN + 1];
        long[0] = SEALED_FORMAT_V1;
        assert_eq!(
            parse(&long).unwrap_err(),
            SealedFormatError::TooLong(MAX_SEALED_LEN + 1)
        );
        assert!(parse(&long[..MAX_SEALED_LEN]).is_ok());
    }
}
