//! One-time codes sent by SMS or e-mail: generated from the OS CSPRNG, stored only as a
//! keyed hash, compared in constant time.
//!
//! Since schema version 7 a code is stored as HMAC-SHA256 under a MAC key derived from the
//! data key's code pepper ([`CodeScheme::HmacSha256`], [`mac`]). A code has only 10^8
//! values: what stops an offline search of a stolen database is the key, which is not in
//! the database, not the cost of the function. Someone who also stole the data key already
//! holds every TOTP seed and can decrypt every destination, so a costly function would buy
//! nothing against them, and it made every check (and every unknown challenge id) cost the
//! server 19 MiB and about 15 ms. Online guessing is stopped by the attempt limits.
//!
//! Challenges written before version 7 keep their Argon2id hash ([`CodeScheme::Argon2id`]:
//! 19 MiB of memory, 2 passes, 1 lane, the pepper as Argon2's secret) and are checked that
//! way until they expire. Argon2id itself stays for passphrase verifiers
//! (`domain::passphrase`), which [`hash`] serves. Figures in SECURITY.md.

use argon2::{Algorithm, Argon2, Params, Version};
use hmac::{Hmac, Mac};
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use crate::error::Error;

/// Argon2 memory cost in KiB.
pub const ARGON2_MEMORY_KIB: u32 = 19 * 1024;
/// Argon2 passes.
pub const ARGON2_PASSES: u32 = 2;
/// Argon2 lanes.
pub const ARGON2_LANES: u32 = 1;
/// Salt length.
pub const SALT_LEN: usize = 16;
/// Hash length.
pub const HASH_LEN: usize = 32;

/// The label that starts the input of a code's MAC: no other HMAC under the same key can
/// take the same input.
pub const MAC_LABEL: &[u8] = b"ghostkey/v1/one-time-code\0";

/// How a challenge's code is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeScheme {
    /// Argon2id(code; salt, secret = the pepper): challenges written before schema
    /// version 7 (stored with no scheme). Checked through the bounded Argon2 pool.
    Argon2id,
    /// HMAC-SHA256 under the MAC key derived from the pepper, over [`MAC_LABEL`], the salt
    /// and the code ([`mac`]). Checked inline.
    HmacSha256,
}

impl CodeScheme {
    /// The stored name (`None`: the scheme of rows from before version 7, Argon2id).
    pub fn stored_name(self) -> Option<&'static str> {
        match self {
            CodeScheme::Argon2id => None,
            CodeScheme::HmacSha256 => Some("hmac-sha256"),
        }
    }

    /// The scheme a stored name names (`None`, a row from before version 7: Argon2id), or
    /// `None` for a name this Ghostkey does not know.
    pub fn from_stored(name: Option<&str>) -> Option<CodeScheme> {
        match name {
            None => Some(CodeScheme::Argon2id),
            Some("hmac-sha256") => Some(CodeScheme::HmacSha256),
            Some(_) => None,
        }
    }
}

/// A challenge's code as stored: its scheme, salt and hash (or MAC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredCode {
    /// How `hash` was computed.
    pub scheme: CodeScheme,
    /// The challenge's random salt.
    pub salt: [u8; SALT_LEN],
    /// The hash or MAC of the code.
    pub hash: [u8; HASH_LEN],
}

/// A fresh code of `digits` decimal digits, uniformly distributed.
pub fn generate(digits: u32) -> SecretString {
    let digits = digits.clamp(4, 10);
    let bound = 10u64.pow(digits);
    let value = rand::rngs::OsRng.gen_range(0..bound);
    SecretString::from(format!("{value:0width$}", width = digits as usize))
}

/// A fresh random salt.
pub fn new_salt() -> [u8; SALT_LEN] {
    let mut salt = [0u8; SALT_LEN];
    rand::rngs::OsRng.fill(&mut salt);
    salt
}

/// Whether `code` has the shape of a code of `digits` digits (checked before hashing, so
/// junk costs nothing; the shape of a code is no secret).
pub fn well_formed(code: &str, digits: u32) -> bool {
    code.len() == digits as usize && code.bytes().all(|b| b.is_ascii_digit())
}

pub(crate) fn params() -> Result<Params, Error> {
    Params::new(
        ARGON2_MEMORY_KIB,
        ARGON2_PASSES,
        ARGON2_LANES,
        Some(HASH_LEN),
    )
    .map_err(|e| Error::internal(format!("argon2 parameters: {e}")))
}

/// Working memory for one Argon2id computation (19 MiB), allocated once and reused.
///
/// Why: a fresh 19 MiB allocation per hash lands, after the first few, in the calling
/// thread's malloc arena and stays there; with hashes spread over the blocking pool's
/// threads, a loaded server grew to gigabytes. A fixed set of these, one per permitted
/// concurrent hash, bounds Argon2's memory to `permits x 19 MiB` and saves the page
/// faults of a fresh mapping on every hash.
pub struct Argon2Memory(Vec<argon2::Block>);

impl std::fmt::Debug for Argon2Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Argon2Memory({} KiB)", self.0.len())
    }
}

impl Argon2Memory {
    /// Memory for one hash with the parameters above.
    pub fn new() -> Result<Argon2Memory, Error> {
        Ok(Argon2Memory(vec![
            argon2::Block::default();
            params()?.block_count()
        ]))
    }
}

/// Argon2id(code; salt, secret = pepper), computed in `memory`: a passphrase verifier's
/// stored form, and a code's under [`CodeScheme::Argon2id`] (challenges from before schema
/// version 7). Costly: run it off the async executor.
pub fn hash(
    memory: &mut Argon2Memory,
    pepper: &[u8; 32],
    salt: &[u8; SALT_LEN],
    code: &str,
) -> Result<[u8; HASH_LEN], Error> {
    let argon = Argon2::new_with_secret(pepper, Algorithm::Argon2id, Version::V0x13, params()?)
        .map_err(|e| Error::internal(format!("argon2 pepper: {e}")))?;
    let mut out = [0u8; HASH_LEN];
    argon
        .hash_password_into_with_memory(code.as_bytes(), salt, &mut out, &mut memory.0[..])
        .map_err(|e| Error::internal(format!("argon2: {e}")))?;
    Ok(out)
}

/// HMAC-SHA256(key; [`MAC_LABEL`] || salt || u32be(len(code)) || code): the stored form
/// of a code under [`CodeScheme::HmacSha256`]. `key` is the MAC key of the data key whose
/// id the challenge records (`ServerKeys::code_mac_key_for`). Cheap: run it inline.
pub fn mac(key: &[u8; 32], salt: &[u8; SALT_LEN], code: &str) -> [u8; HASH_LEN] {
    let mut out = [0u8; HASH_LEN];
    // HMAC takes a key of any length: a 32-byte key is never refused.
    if let Ok(mut m) = Hmac::<sha2::Sha256>::new_from_slice(key) {
        m.update(MAC_LABEL);
        m.update(salt);
        m.update(&u32::try_from(code.len()).unwrap_or(u32::MAX).to_be_bytes());
        m.update(code.as_bytes());
        out.copy_from_slice(&m.finalize().into_bytes());
    }
    out
}

/// A fresh code's stored form under the current scheme: a new salt and the MAC of `code`.
pub fn store(key: &[u8; 32], code: &SecretString) -> StoredCode {
    let salt = new_salt();
    StoredCode {
        scheme: CodeScheme::HmacSha256,
        salt,
        hash: mac(key, &salt, code.expose_secret()),
    }
}

/// Checks `code` against a code stored as a MAC (salt and MAC) under `key`, or, when there
/// is nothing to check it against (no such challenge), does the same work against a dummy:
/// one MAC and one constant-time comparison on every path.
pub fn check_mac(
    key: &[u8; 32],
    expected: Option<(&[u8; SALT_LEN], &[u8; HASH_LEN])>,
    code: &SecretString,
) -> bool {
    let dummy_salt = [0u8; SALT_LEN];
    let dummy_hash = [0u8; HASH_LEN];
    let (salt, want) = expected.unwrap_or((&dummy_salt, &dummy_hash));
    let got = mac(key, salt, code.expose_secret());
    hashes_equal(&got, want) && expected.is_some()
}

#[cfg(test)]
thread_local! {
    /// Constant-time comparisons made on this thread (tests check every path makes one).
    pub(crate) static COMPARISONS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Constant-time equality of two hashes: every comparison of a code's (or a verifier's)
/// hash goes through here.
pub fn hashes_equal(a: &[u8; HASH_LEN], b: &[u8; HASH_LEN]) -> bool {
    #[cfg(test)]
    COMPARISONS.with(|c| c.set(c.get() + 1));
    a.ct_eq(b).into()
}

/// Hashes `code` with Argon2id and compares it with `expected` (salt and hash), or, when
/// there is nothing to compare with, does the same work against a dummy so that timing
/// does not reveal how much of the code matched.
pub fn check(
    memory: &mut Argon2Memory,
    pepper: &[u8; 32],
    expected: Option<(&[u8; SALT_LEN], &[u8; HASH_LEN])>,
    code: &SecretString,
) -> Result<bool, Error> {
    let dummy_salt = [0u8; SALT_LEN];
    let dummy_hash = [0u8; HASH_LEN];
    let (salt, want) = expected.unwrap_or((&dummy_salt, &dummy_hash));
    let got = hash(memory, pepper, salt, code.expose_secret())?;
    Ok(hashes_equal(&got, want) && expected.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_the_requested_digits_and_vary() {
        let a = generate(8);
        assert!(well_formed(a.expose_secret(), 8));
        let distinct: std::collections::HashSet<String> = (0..50)
            .map(|_| generate(8).expose_secret().to_owned())
            .collect();
        assert!(distinct.len() > 45);
        assert!(!well_formed("1234567", 8) && !well_formed("1234567a", 8));
    }

    #[test]
    fn only_the_right_code_with_the_right_pepper_matches() {
        let pepper = [3u8; 32];
        let salt = new_salt();
        let mut m = Argon2Memory::new().unwrap();
        let h = hash(&mut m, &pepper, &salt, "12345678").unwrap();
        let yes = SecretString::from("12345678".to_owned());
        let no = SecretString::from("12345679".to_owned());
        assert!(check(&mut m, &pepper, Some((&salt, &h)), &yes).unwrap());
        assert!(!check(&mut m, &pepper, Some((&salt, &h)), &no).unwrap());
        assert!(!check(&mut m, &[4u8; 32], Some((&salt, &h)), &yes).unwrap());
        assert!(!check(&mut m, &pepper, None, &yes).unwrap());
    }

    #[test]
    fn only_the_right_code_under_the_right_key_and_salt_matches_the_mac() {
        let key = [3u8; 32];
        let yes = SecretString::from("12345678".to_owned());
        let no = SecretString::from("12345679".to_owned());
        let stored = store(&key, &yes);
        assert_eq!(stored.scheme, CodeScheme::HmacSha256);
        let expected = Some((&stored.salt, &stored.hash));
        assert!(check_mac(&key, expected, &yes));
        assert!(!check_mac(&key, expected, &no));
        assert!(!check_mac(&[4u8; 32], expected, &yes));
        assert!(!check_mac(&key, Some((&new_salt(), &stored.hash)), &yes));
        assert!(!check_mac(&key, None, &yes));
        // The input is framed: a label, the salt, the code's length, the code.
        assert_ne!(
            mac(&key, &stored.salt, "1234567"),
            mac(&key, &stored.salt, "12345678")
        );
        let mut m = Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
        m.update(b"ghostkey/v1/one-time-code\0");
        m.update(&stored.salt);
        m.update(&[0, 0, 0, 8]);
        m.update(b"12345678");
        assert_eq!(stored.hash.as_slice(), m.finalize().into_bytes().as_slice());
    }

    #[test]
    fn the_stored_scheme_names_round_trip_and_no_name_is_argon2id() {
        for scheme in [CodeScheme::Argon2id, CodeScheme::HmacSha256] {
            assert_eq!(CodeScheme::from_stored(scheme.stored_name()), Some(scheme));
        }
        assert_eq!(CodeScheme::from_stored(None), Some(CodeScheme::Argon2id));
        assert_eq!(CodeScheme::from_stored(Some("md5")), None);
    }

    #[test]
    fn every_check_makes_exactly_one_constant_time_comparison() {
        let count = || COMPARISONS.with(std::cell::Cell::get);
        let key = [3u8; 32];
        let code = SecretString::from("12345678".to_owned());
        let stored = store(&key, &code);
        let wrong = SecretString::from("00000000".to_owned());
        for (expected, typed) in [
            (Some((&stored.salt, &stored.hash)), &code),
            (Some((&stored.salt, &stored.hash)), &wrong),
            (None, &code),
        ] {
            let before = count();
            check_mac(&key, expected, typed);
            assert_eq!(count() - before, 1);
        }
        let mut m = Argon2Memory::new().unwrap();
        let salt = new_salt();
        let h = hash(&mut m, &key, &salt, "12345678").unwrap();
        for expected in [Some((&salt, &h)), None] {
            let before = count();
            check(&mut m, &key, expected, &code).unwrap();
            assert_eq!(count() - before, 1);
        }
    }

    #[test]
    fn reused_memory_gives_the_same_hash_as_fresh_memory() {
        let pepper = [5u8; 32];
        let salt = new_salt();
        let mut used = Argon2Memory::new().unwrap();
        hash(&mut used, &pepper, &new_salt(), "87654321").unwrap();
        let mut fresh = Argon2Memory::new().unwrap();
        assert_eq!(
            hash(&mut used, &pepper, &salt, "12345678").unwrap(),
            hash(&mut fresh, &pepper, &salt, "12345678").unwrap()
        );
    }
}
