//! Passphrase methods on the client (docs/PROTOCOL.md §5.6): the passphrase never leaves
//! the device. What Ghostkey receives is a verifier,
//!
//! ```text
//! salt     = SHA-256("ghostkey passphrase v1" || u32be(len app_id) || app_id
//!                                             || u32be(len user_id) || user_id)[..16]
//! verifier = Argon2id(NFC(passphrase) as UTF-8, salt, m, t, p, 32 bytes)   (base64url)
//! ```
//!
//! with the parameters of a version (version 1: m = 19456 KiB, t = 2, p = 1). Ghostkey
//! shows the version with every passphrase challenge; a client derives with its own table
//! for that version and refuses a version or parameters it does not know, so a server
//! cannot talk it into a cheaper derivation.
//!
//! A new passphrase must pass [`check_strength`]: at least [`MIN_CHARS`] characters and
//! an estimate of at least [`MIN_BITS`] bits (see [`estimate_bits`]). This is a floor
//! against the obvious, not a guarantee: a passphrase made of a known phrase passes it.

use argon2::{Algorithm, Argon2, Params, Version};
use ghostkey_proto::api::{PassphraseParams, PassphraseSetup};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Fewest characters (Unicode scalar values, after NFC) a new passphrase may have.
pub const MIN_CHARS: usize = 12;
/// Lowest strength estimate a new passphrase may have, in bits.
pub const MIN_BITS: u32 = 50;
/// The domain-separation prefix of the salt.
pub const SALT_CONTEXT: &[u8] = b"ghostkey passphrase v1";
/// Verifier length in bytes.
pub const VERIFIER_LEN: usize = 32;

/// Why a passphrase or a derivation was refused. Never holds the passphrase.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PassphraseError {
    /// Shorter than [`MIN_CHARS`].
    #[error("the passphrase is too short: {chars} characters, at least {min} are needed")]
    TooShort {
        /// Its length in characters.
        chars: usize,
        /// The minimum.
        min: usize,
    },
    /// Long enough, but its estimate is below [`MIN_BITS`] (repeated or few kinds of
    /// characters).
    #[error("the passphrase is too weak: about {bits} bits, at least {min} are needed (use more words, or more varied characters)")]
    TooWeak {
        /// Its estimate.
        bits: u32,
        /// The minimum.
        min: u32,
    },
    /// Ghostkey asked for a parameter version this client does not know.
    #[error("unknown passphrase parameter version {0}: update this client")]
    UnknownVersion(u32),
    /// Ghostkey showed parameters that differ from this client's table for the version.
    #[error("the passphrase parameters Ghostkey showed differ from version {0}'s: refused")]
    ParamsMismatch(u32),
    /// The challenge is not for a passphrase method (it shows no parameters).
    #[error("this challenge is not for a passphrase method")]
    NotPassphrase,
    /// Argon2 refused the parameters (cannot happen with a known version).
    #[error("passphrase derivation failed: {0}")]
    Derive(String),
}

/// The salt: the first 16 bytes of SHA-256 over the context, the app id and the user id,
/// each id preceded by its length in bytes as a 32-bit big-endian integer.
pub fn salt(app_id: &str, user_id: &str) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(SALT_CONTEXT);
    for part in [app_id, user_id] {
        h.update(u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        h.update(part.as_bytes());
    }
    let digest = h.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// The passphrase in Unicode Normalization Form C (wiped when dropped). ICU4X's
/// normalizer: its data is already in the WebAssembly module (URL parsing uses it), so NFC
/// adds no tables of its own there.
fn nfc(passphrase: &str) -> Zeroizing<String> {
    Zeroizing::new(
        icu_normalizer::ComposingNormalizerBorrowed::new_nfc()
            .normalize(passphrase)
            .into_owned(),
    )
}

/// The strength estimate, in bits: `L × log2(C)`, where `C` is the sum of the sizes of
/// the character classes the passphrase uses (lower case 26, upper case 26, digits 10,
/// other ASCII including space 33, anything beyond ASCII 100) and `L` is its length in
/// characters, but at most twice the number of distinct characters (so repetitions such
/// as `aaaa…` or `abcabc…` count for little). Rounded down.
pub fn estimate_bits(passphrase: &str) -> u32 {
    let text = nfc(passphrase);
    let chars: Zeroizing<Vec<char>> = Zeroizing::new(text.chars().collect());
    let (mut lower, mut upper, mut digit, mut other, mut beyond) =
        (false, false, false, false, false);
    for c in chars.iter() {
        match c {
            'a'..='z' => lower = true,
            'A'..='Z' => upper = true,
            '0'..='9' => digit = true,
            c if c.is_ascii() => other = true,
            _ => beyond = true,
        }
    }
    let pool: u32 = [
        (lower, 26),
        (upper, 26),
        (digit, 10),
        (other, 33),
        (beyond, 100),
    ]
    .iter()
    .filter(|(used, _)| *used)
    .map(|(_, n)| n)
    .sum();
    if pool == 0 {
        return 0;
    }
    let mut distinct = chars.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let effective = chars.len().min(2 * distinct.len());
    // Integer-free of surprises: f64 is exact enough for an estimate.
    let bits = effective as f64 * f64::from(pool).log2();
    bits.floor() as u32
}

/// Checks a new passphrase against the minimum strength (length, then the estimate).
pub fn check_strength(passphrase: &SecretString) -> Result<(), PassphraseError> {
    let chars = nfc(passphrase.expose_secret()).chars().count();
    if chars < MIN_CHARS {
        return Err(PassphraseError::TooShort {
            chars,
            min: MIN_CHARS,
        });
    }
    let bits = estimate_bits(passphrase.expose_secret());
    if bits < MIN_BITS {
        return Err(PassphraseError::TooWeak {
            bits,
            min: MIN_BITS,
        });
    }
    Ok(())
}

/// Derives the verifier (base64url, 43 characters) with the parameters of `version`.
pub fn derive_verifier(
    passphrase: &SecretString,
    app_id: &str,
    user_id: &str,
    version: u32,
) -> Result<SecretString, PassphraseError> {
    let p =
        PassphraseParams::of_version(version).ok_or(PassphraseError::UnknownVersion(version))?;
    let params = Params::new(
        p.memory_kib,
        p.iterations,
        p.parallelism,
        Some(VERIFIER_LEN),
    )
    .map_err(|e| PassphraseError::Derive(e.to_string()))?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let normalised = nfc(passphrase.expose_secret());
    let mut out = Zeroizing::new([0u8; VERIFIER_LEN]);
    argon
        .hash_password_into(normalised.as_bytes(), &salt(app_id, user_id), &mut out[..])
        .map_err(|e| PassphraseError::Derive(e.to_string()))?;
    Ok(SecretString::from(ghostkey_proto::b64::encode(&out[..])))
}

/// What to send to add a passphrase method: checks the strength, then derives the
/// verifier with the newest parameter version.
pub fn setup(
    passphrase: &SecretString,
    app_id: &str,
    user_id: &str,
) -> Result<PassphraseSetup, PassphraseError> {
    check_strength(passphrase)?;
    let version = PassphraseParams::V1.version;
    let verifier = derive_verifier(passphrase, app_id, user_id, version)?;
    Ok(PassphraseSetup {
        version,
        verifier: verifier.expose_secret().to_owned(),
    })
}

/// The answer to a passphrase challenge (confirm, proof or recovery): the verifier,
/// derived with the parameters the challenge shows, after checking them against this
/// client's own table. No strength check: the passphrase is the one already set.
pub fn answer(
    passphrase: &SecretString,
    app_id: &str,
    user_id: &str,
    shown: Option<&PassphraseParams>,
) -> Result<SecretString, PassphraseError> {
    let shown = shown.ok_or(PassphraseError::NotPassphrase)?;
    let known = PassphraseParams::of_version(shown.version)
        .ok_or(PassphraseError::UnknownVersion(shown.version))?;
    if known != *shown {
        return Err(PassphraseError::ParamsMismatch(shown.version));
    }
    derive_verifier(passphrase, app_id, user_id, shown.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> SecretString {
        SecretString::from(text.to_owned())
    }

    #[test]
    fn short_and_repetitive_passphrases_are_refused_with_a_clear_error() {
        assert_eq!(
            check_strength(&s("Tr0ub4dor&3")),
            Err(PassphraseError::TooShort { chars: 11, min: 12 })
        );
        assert!(matches!(
            check_strength(&s("aaaaaaaaaaaaaaaa")),
            Err(PassphraseError::TooWeak { .. })
        ));
        assert!(matches!(
            check_strength(&s("abcabcabcabcabc")),
            Err(PassphraseError::TooWeak { .. })
        ));
        assert!(check_strength(&s("correct horse battery staple")).is_ok());
        assert!(check_strength(&s("Tr0ub4dor&3x")).is_ok());
        // Characters, not bytes: 12 accented letters are 12.
        assert_eq!(s("é").expose_secret().len(), 2);
        let msg = check_strength(&s("short")).unwrap_err().to_string();
        assert!(
            msg.contains("too short") && !msg.contains("short\""),
            "{msg}"
        );
    }

    #[test]
    fn nfc_and_nfd_spellings_give_one_verifier_and_the_ids_bind_it() {
        let nfc = s("caf\u{e9} au lait, s'il vous pla\u{ee}t");
        let nfd = s("cafe\u{301} au lait, s'il vous plai\u{302}t");
        let a = derive_verifier(&nfc, "app_1", "u1", 1).unwrap();
        assert_eq!(a.expose_secret().len(), 43);
        assert_eq!(
            a.expose_secret(),
            derive_verifier(&nfd, "app_1", "u1", 1)
                .unwrap()
                .expose_secret()
        );
        assert_ne!(
            a.expose_secret(),
            derive_verifier(&nfc, "app_1", "u2", 1)
                .unwrap()
                .expose_secret()
        );
        // The length prefixes keep ("ab", "c") and ("a", "bc") apart.
        assert_ne!(salt("ab", "c"), salt("a", "bc"));
        assert_eq!(
            derive_verifier(&nfc, "a", "b", 2).unwrap_err(),
            PassphraseError::UnknownVersion(2)
        );
    }

    #[test]
    fn a_challenge_with_other_parameters_than_the_table_is_refused() {
        let p = s("correct horse battery staple");
        let cheap = PassphraseParams {
            memory_kib: 8,
            iterations: 1,
            ..PassphraseParams::V1
        };
        assert_eq!(
            answer(&p, "a", "u", Some(&cheap)).unwrap_err(),
            PassphraseError::ParamsMismatch(1)
        );
        assert_eq!(
            answer(&p, "a", "u", None).unwrap_err(),
            PassphraseError::NotPassphrase
        );
        assert!(answer(&p, "a", "u", Some(&PassphraseParams::V1)).is_ok());
    }
}
