//! Verification methods: TOTP, phone (SMS) and e-mail; validation, normalisation, masking.

use ghostkey_proto::ErrorCode;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};

use super::policy::MethodKind;
use crate::clock::UnixTime;
use crate::error::Error;

/// Whether a method counts yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodState {
    /// Added, waiting for a first correct code.
    Pending,
    /// Proven by a correct code: usable for proofs and recovery.
    Confirmed,
}

impl MethodState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            MethodState::Pending => "pending",
            MethodState::Confirmed => "confirmed",
        }
    }
}

/// A stored method. `secret` is the TOTP seed, phone number or e-mail address, encrypted
/// at rest under data key `key_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Method {
    /// Random id, shown to the client.
    pub id: String,
    /// The app.
    pub app_id: String,
    /// The user.
    pub user_id: String,
    /// TOTP, SMS or e-mail.
    pub kind: MethodKind,
    /// Pending or confirmed.
    pub state: MethodState,
    /// The data key the secret is encrypted under.
    pub key_id: String,
    /// The encrypted secret.
    pub secret: Vec<u8>,
    /// HMAC of the normalised destination (SMS and e-mail), for rate limits.
    pub destination_mac: Option<Vec<u8>>,
    /// The last TOTP step accepted (each step is usable once).
    pub totp_last_step: Option<i64>,
    /// When added.
    pub created_at: UnixTime,
    /// When confirmed.
    pub confirmed_at: Option<UnixTime>,
}

/// A new random id with a readable prefix (`m_`, `ch_`), 128 random bits.
pub fn new_id(prefix: &str) -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}{}", ghostkey_proto::b64::encode(bytes))
}

/// Parses a phone number given in international form (`+33 6 12 34 56 78`) and returns
/// it in E.164 (`+33612345678`). Numbers that are not valid for their country are refused.
pub fn normalise_phone(input: &str) -> Result<SecretString, Error> {
    let invalid = || {
        Error::with_detail(
            ErrorCode::InvalidPhoneNumber,
            "the phone number must be a valid number in international form, starting with + and the country code",
        )
    };
    let trimmed = input.trim();
    if !trimmed.starts_with('+') || trimmed.len() > 32 {
        return Err(invalid());
    }
    // Digits and the usual separators only: the parser would read letters as a keypad's
    // digits ("1-800-FLOWERS") and extension markers as an extension, neither of which an
    // SMS can reach.
    if !trimmed[1..]
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b' ' | b'-' | b'.' | b'(' | b')'))
    {
        return Err(invalid());
    }
    let e164 = e164_if_valid(trimmed).ok_or_else(invalid)?;
    // The stored form must itself be a valid number, so that the same number always
    // normalises to the same row (the metadata is not always consistent about this).
    if e164_if_valid(&e164).as_deref() != Some(e164.as_str()) {
        return Err(invalid());
    }
    Ok(SecretString::from(e164))
}

/// The E.164 form of `text` when the numbering plan allocates it, within E.164's 15 digits
/// (the metadata calls some longer numbers valid).
fn e164_if_valid(text: &str) -> Option<String> {
    let number = phonenumber::parse(None, text).ok()?;
    if !phonenumber::is_valid(&number) {
        return None;
    }
    let e164 = number.format().mode(phonenumber::Mode::E164).to_string();
    (e164.len() <= 16).then_some(e164)
}

/// Checks an e-mail address and returns it with the domain in lower case.
pub fn normalise_email(input: &str) -> Result<SecretString, Error> {
    let invalid = || {
        Error::with_detail(
            ErrorCode::InvalidEmailAddress,
            "the e-mail address is not valid",
        )
    };
    let trimmed = input.trim();
    if trimmed.len() > 254 {
        return Err(invalid());
    }
    let address: lettre::Address = trimmed.parse().map_err(|_| invalid())?;
    let domain = address.domain().to_ascii_lowercase();
    if !domain.contains('.') {
        return Err(invalid());
    }
    Ok(SecretString::from(format!("{}@{}", address.user(), domain)))
}

/// The form of a normalised destination that rate limits count: one mailbox, however it is
/// spelled. E-mail local parts are compared without case and without a `+tag` (providers
/// deliver `Jo+x@example.org` to `jo@example.org`); phone numbers are already E.164. The
/// message itself still goes to the address as the user gave it.
pub fn rate_limit_form(kind: MethodKind, normalised: &str) -> String {
    match kind {
        MethodKind::Email => match normalised.rsplit_once('@') {
            Some((local, domain)) => {
                let local = local.split('+').next().unwrap_or(local);
                format!("{}@{}", local.to_lowercase(), domain.to_ascii_lowercase())
            }
            None => normalised.to_lowercase(),
        },
        _ => normalised.to_owned(),
    }
}

/// `+33612345678` → `+33 6******78`: the country code, the first national digit and the
/// last two, enough for the user to recognise their number.
pub fn mask_phone(e164: &SecretString) -> String {
    let text = e164.expose_secret();
    let country = phonenumber::parse(None, text)
        .map(|n| n.code().value().to_string())
        .unwrap_or_default();
    let national: Vec<char> = text
        .trim_start_matches('+')
        .chars()
        .skip(country.len())
        .collect();
    if national.len() < 4 {
        return format!("+{country} ****");
    }
    let hidden = "*".repeat(national.len() - 3);
    format!(
        "+{country} {}{hidden}{}{}",
        national[0],
        national[national.len() - 2],
        national[national.len() - 1]
    )
}

/// `jane.doe@example.org` → `j***@e***.org`.
pub fn mask_email(address: &SecretString) -> String {
    let text = address.expose_secret();
    let (local, domain) = text.rsplit_once('@').unwrap_or((text, ""));
    let first = local.chars().next().unwrap_or('*');
    let (name, tld) = domain.rsplit_once('.').unwrap_or((domain, ""));
    let domain_first = name.chars().next().unwrap_or('*');
    format!("{first}***@{domain_first}***.{tld}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn spellings_of_one_mailbox_share_one_rate_limit_form() {
        use super::{normalise_email, rate_limit_form, MethodKind};
        use secrecy::ExposeSecret;
        let form = |a: &str| {
            rate_limit_form(
                MethodKind::Email,
                normalise_email(a).unwrap().expose_secret(),
            )
        };
        let one = form("jo@example.org");
        for spelling in [
            "Jo@Example.org",
            "JO@EXAMPLE.ORG",
            "jo+news@example.org",
            "Jo+A+b@example.ORG",
        ] {
            assert_eq!(form(spelling), one, "{spelling}");
        }
        assert_ne!(form("jo2@example.org"), one);
        // Delivery keeps the local part as given.
        assert_eq!(
            normalise_email("Jo+x@Example.org").unwrap().expose_secret(),
            "Jo+x@example.org"
        );
        assert_eq!(
            rate_limit_form(MethodKind::Sms, "+33612345678"),
            "+33612345678"
        );
    }

    use super::*;

    #[test]
    fn phones_are_normalised_to_e164_and_masked() {
        let n = normalise_phone(" +33 6 12 34 56 78 ").unwrap();
        assert_eq!(n.expose_secret(), "+33612345678");
        assert_eq!(mask_phone(&n), "+33 6******78");
        let us = normalise_phone("+1 (415) 555-2671").unwrap();
        assert_eq!(us.expose_secret(), "+14155552671");
        let dotted = normalise_phone("+33.6.12.34.56.78").unwrap();
        assert_eq!(dotted.expose_secret(), "+33612345678");
        for bad in [
            "0612345678",
            "+33 1",
            "+999 123456",
            "hello",
            "+33612345678999999999",
            // 16 digits: the metadata calls it valid for Germany, but E.164 allows 15
            // (found by the request_bodies fuzz target).
            "+4921426122639267",
            // Letters: the parser reads them as a keypad's digits, giving a number that
            // is valid once but whose E.164 form is not (found by request_bodies).
            "+250000 maiemail",
            "+1 800 FLOWERS",
        ] {
            assert_eq!(
                normalise_phone(bad).unwrap_err().code,
                ErrorCode::InvalidPhoneNumber,
                "{bad}"
            );
        }
    }

    #[test]
    fn emails_are_validated_and_masked() {
        let e = normalise_email("Jane.Doe@Example.ORG").unwrap();
        assert_eq!(e.expose_secret(), "Jane.Doe@example.org");
        assert_eq!(mask_email(&e), "J***@e***.org");
        for bad in ["nobody", "a@b", "@example.org", "a b@example.org"] {
            assert_eq!(
                normalise_email(bad).unwrap_err().code,
                ErrorCode::InvalidEmailAddress,
                "{bad}"
            );
        }
    }

    #[test]
    fn ids_are_random_and_prefixed() {
        let a = new_id("m_");
        assert!(a.starts_with("m_") && a.len() == 24);
        assert_ne!(a, new_id("m_"));
    }
}
