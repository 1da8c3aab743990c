//! Cancel codes: what a notice about a started or waiting recovery carries so that the
//! user can stop that recovery with nothing else (no assertion, no app). 20 symbols of
//! Crockford's base32 (100 bits), shown in groups of four; stored only as a keyed MAC.

use ghostkey_proto::ErrorCode;
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};

use crate::error::Error;

/// Crockford's base32: no I, L, O or U, so a code read aloud or retyped is unambiguous.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Symbols in a cancel code.
pub const SYMBOLS: usize = 20;

/// A fresh cancel code, formatted `XXXX-XXXX-XXXX-XXXX-XXXX`.
pub fn generate() -> SecretString {
    let mut rng = rand::rngs::OsRng;
    let mut out = String::with_capacity(SYMBOLS + SYMBOLS / 4);
    for i in 0..SYMBOLS {
        if i > 0 && i % 4 == 0 {
            out.push('-');
        }
        out.push(char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]));
    }
    SecretString::from(out)
}

/// The canonical form of a typed cancel code (dashes and spaces dropped, upper case, the
/// look-alikes O, I and L read as 0, 1 and 1), or `invalid_field` if it cannot be one.
pub fn parse(typed: &str) -> Result<SecretString, Error> {
    let mut out = String::with_capacity(SYMBOLS);
    for c in typed.chars() {
        let c = match c.to_ascii_uppercase() {
            '-' | ' ' => continue,
            'O' => '0',
            'I' | 'L' => '1',
            c => c,
        };
        if !c.is_ascii() || !ALPHABET.contains(&(c as u8)) || out.len() >= SYMBOLS {
            return Err(shape());
        }
        out.push(c);
    }
    if out.len() != SYMBOLS {
        return Err(shape());
    }
    Ok(SecretString::from(out))
}

/// The form that is MACed: the canonical symbols without dashes.
pub fn canonical(code: &SecretString) -> Result<SecretString, Error> {
    parse(code.expose_secret())
}

fn shape() -> Error {
    Error::with_detail(
        ErrorCode::InvalidField,
        "`cancel_code` must be 20 symbols of Crockford base32, dashes allowed",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_twenty_symbols_in_groups_and_parse_back_however_typed() {
        let code = generate();
        let text = code.expose_secret();
        assert_eq!(text.len(), 24);
        assert_eq!(text.matches('-').count(), 4);
        let canonical = parse(text).unwrap();
        assert_eq!(canonical.expose_secret().len(), SYMBOLS);
        assert_eq!(canonical.expose_secret(), &text.replace('-', ""));
        let sloppy = text.to_lowercase().replace('-', " ");
        assert_eq!(
            parse(&sloppy).unwrap().expose_secret(),
            canonical.expose_secret()
        );
        assert_eq!(
            parse("oIL0-0000-0000-0000-0000").unwrap().expose_secret(),
            "01100000000000000000"
        );
        assert_ne!(generate().expose_secret(), text);
    }

    #[test]
    fn every_shape_the_document_allows_parses() {
        // The OpenAPI pattern: 20 symbols of 0-9 A-Z (no U, either case), dashes and
        // spaces anywhere. O, I and L are read as 0, 1 and 1.
        for ok in [
            "abcd-efgh-jkmn-pqrs-tvwx",
            " - 0123456789ABCDEFGHJK - ",
            "oooo iiii llll 0000 zzzz",
            "7K3M-Q9TX-2HVB-R8NC-4WZP",
        ] {
            assert!(parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn junk_is_refused_by_shape() {
        for junk in [
            "",
            "ABCD",
            "ABCD-EFGH-JKMN-PQRS-TVWXY",
            "ABCD-EFGH-JKMN-PQRS-TVWU",
            "ÄBCD-EFGH-JKMN-PQRS-TVWX",
        ] {
            assert_eq!(
                parse(junk).unwrap_err().code,
                ErrorCode::InvalidField,
                "{junk}"
            );
        }
    }
}
