//! TOTP (RFC 6238): SHA-1, 30-second steps, the previous step accepted, each step usable
//! once. `totp-rs` computes the codes; the step arithmetic uses the time passed in.

use secrecy::SecretString;
use subtle::ConstantTimeEq;
use totp_rs::{Algorithm, Builder, Secret, Totp};
use zeroize::Zeroizing;

use crate::clock::UnixTime;
use crate::error::Error;

/// Step length in seconds.
pub const STEP_SECS: i64 = 30;
/// Seed length in bytes (160 bits, as RFC 4226 recommends).
pub const SEED_LEN: usize = 20;

/// A fresh random seed.
pub fn new_seed() -> Zeroizing<Vec<u8>> {
    let mut seed = Zeroizing::new(vec![0u8; SEED_LEN]);
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, seed.as_mut_slice());
    seed
}

fn totp(seed: &[u8], digits: u32, issuer: Option<&str>, account: &str) -> Result<Totp, Error> {
    let digits = u8::try_from(digits).map_err(|_| Error::internal("totp digits out of range"))?;
    Builder::new()
        .with_algorithm(Algorithm::SHA1)
        .with_digits(digits)
        .with_step_duration(STEP_SECS as u64)
        .with_skew(0)
        .with_secret(Secret::from(seed.to_vec()))
        .with_issuer(issuer.map(|i| i.replace(':', " ")))
        .with_account_name(account.replace(':', " "))
        .build()
        .map_err(|e| Error::internal(format!("totp: {e}")))
}

/// What an authenticator app needs: the `otpauth://` URI and the same as a QR code (PNG,
/// base64). The URI holds the seed: it is shown once, to the user enrolling.
pub struct Provisioning {
    /// `otpauth://totp/...`
    pub uri: SecretString,
    /// PNG image of the URI as a QR code, standard base64.
    pub qr_png_base64: SecretString,
}

/// Provisioning data for `seed`, labelled with the app name and the (pseudonymous) user id.
pub fn provisioning(
    seed: &[u8],
    digits: u32,
    issuer: &str,
    account: &str,
) -> Result<Provisioning, Error> {
    let t = totp(seed, digits, Some(issuer), account)?;
    let uri = t
        .to_url()
        .map_err(|e| Error::internal(format!("totp uri: {e}")))?;
    let qr = t
        .to_qr_base64()
        .map_err(|e| Error::internal(format!("totp qr: {e}")))?;
    Ok(Provisioning {
        uri: SecretString::from(uri),
        qr_png_base64: SecretString::from(qr),
    })
}

/// The code for `step` (a step number, not a time).
pub fn code_at_step(seed: &[u8], digits: u32, step: i64) -> Result<Zeroizing<String>, Error> {
    let t = totp(seed, digits, None, "x")?;
    let time = u64::try_from(step.max(0) * STEP_SECS).unwrap_or(0);
    Ok(Zeroizing::new(t.generate(time).to_string()))
}

/// The step `code` belongs to, among the current and the previous step at `now`, or
/// `None`. Both candidates are always computed and compared in constant time.
pub fn matching_step(
    seed: &[u8],
    digits: u32,
    code: &str,
    now: UnixTime,
) -> Result<Option<i64>, Error> {
    let current = now.div_euclid(STEP_SECS);
    let mut found = None;
    for step in [current - 1, current] {
        let expected = code_at_step(seed, digits, step)?;
        let equal: bool =
            expected.len() == code.len() && bool::from(expected.as_bytes().ct_eq(code.as_bytes()));
        if equal {
            found = Some(step);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1 rows (8 digits, seed "12345678901234567890").
    #[test]
    fn rfc_6238_test_vectors() {
        let seed = b"12345678901234567890";
        for (time, code) in [
            (59i64, "94287082"),
            (1111111109, "07081804"),
            (1111111111, "14050471"),
            (1234567890, "89005924"),
            (2000000000, "69279037"),
            (20000000000, "65353130"),
        ] {
            assert_eq!(
                code_at_step(seed, 8, time / STEP_SECS).unwrap().as_str(),
                code,
                "t={time}"
            );
            assert_eq!(
                matching_step(seed, 8, code, time).unwrap(),
                Some(time / STEP_SECS)
            );
        }
    }

    #[test]
    fn previous_step_is_accepted_but_not_older_or_newer() {
        let seed = new_seed();
        let now = 1_800_000_015;
        let step = now / STEP_SECS;
        let prev = code_at_step(&seed, 6, step - 1).unwrap();
        let old = code_at_step(&seed, 6, step - 2).unwrap();
        let next = code_at_step(&seed, 6, step + 1).unwrap();
        assert_eq!(matching_step(&seed, 6, &prev, now).unwrap(), Some(step - 1));
        assert_eq!(matching_step(&seed, 6, &old, now).unwrap(), None);
        assert_eq!(matching_step(&seed, 6, &next, now).unwrap(), None);
        assert_eq!(matching_step(&seed, 6, "12345", now).unwrap(), None);
    }

    #[test]
    fn provisioning_uri_names_the_parameters() {
        use secrecy::ExposeSecret;
        let p = provisioning(&new_seed(), 6, "Health: app", "user-1").unwrap();
        let uri = p.uri.expose_secret();
        assert!(uri.starts_with("otpauth://totp/"), "{uri}");
        assert!(
            uri.contains("digits=6") || !uri.contains("digits="),
            "{uri}"
        );
        assert!(uri.contains("secret="), "{uri}");
        assert!(p.qr_png_base64.expose_secret().len() > 100);
    }
}
