//! One-time codes sent by SMS or e-mail: generated from the OS CSPRNG, stored only as an
//! Argon2id hash keyed with the server pepper, compared in constant time.
//!
//! Argon2id parameters: 19 MiB of memory, 2 passes, 1 lane (the OWASP minimum for
//! Argon2id). A code has only 10^8 values, so the hash alone could not stop an offline
//! search; the pepper (derived from the data key, which is not in the database) does, and
//! the memory cost slows a search by someone who also stole the key. Online guessing is
//! stopped by the attempt limits, not by the hash. The cost of one check on this machine
//! is measured by `cargo run --release --example argon2_cost` (figures in SECURITY.md).

use argon2::{Algorithm, Argon2, Params, Version};
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

fn params() -> Result<Params, Error> {
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

/// Argon2id(code; salt, secret = pepper), computed in `memory`. Costly: run it off the
/// async executor.
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

/// Constant-time equality of two hashes.
pub fn hashes_equal(a: &[u8; HASH_LEN], b: &[u8; HASH_LEN]) -> bool {
    a.ct_eq(b).into()
}

/// Hashes `code` and compares it with `expected` (salt and hash of a challenge), or, when
/// there is no such challenge, does the same work against a dummy so that timing does
/// not reveal whether the challenge exists or how much of the code matched.
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
