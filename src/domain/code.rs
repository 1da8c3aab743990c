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

/// Argon2id(code; salt, secret = pepper). Costly: run it off the async executor.
pub fn hash(pepper: &[u8; 32], salt: &[u8; SALT_LEN], code: &str) -> Result<[u8; HASH_LEN], Error> {
    let params = Params::new(
        ARGON2_MEMORY_KIB,
        ARGON2_PASSES,
        ARGON2_LANES,
        Some(HASH_LEN),
    )
    .map_err(|e| Error::internal(format!("argon2 parameters: {e}")))?;
    let argon = Argon2::new_with_secret(pepper, Algorithm::Argon2id, Version::V0x13, params)
        .map_err(|e| Error::internal(format!("argon2 pepper: {e}")))?;
    let mut out = [0u8; HASH_LEN];
    argon
        .hash_password_into(code.as_bytes(), salt, &mut out)
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
    pepper: &[u8; 32],
    expected: Option<(&[u8; SALT_LEN], &[u8; HASH_LEN])>,
    code: &SecretString,
) -> Result<bool, Error> {
    let dummy_salt = [0u8; SALT_LEN];
    let dummy_hash = [0u8; HASH_LEN];
    let (salt, want) = expected.unwrap_or((&dummy_salt, &dummy_hash));
    let got = hash(pepper, salt, code.expose_secret())?;
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
        let h = hash(&pepper, &salt, "12345678").unwrap();
        let yes = SecretString::from("12345678".to_owned());
        let no = SecretString::from("12345679".to_owned());
        assert!(check(&pepper, Some((&salt, &h)), &yes).unwrap());
        assert!(!check(&pepper, Some((&salt, &h)), &no).unwrap());
        assert!(!check(&[4u8; 32], Some((&salt, &h)), &yes).unwrap());
        assert!(!check(&pepper, None, &yes).unwrap());
    }
}
