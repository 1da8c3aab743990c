//! Verification of app-provider assertions (DESIGN.md §2): compact JWTs signed with
//! EdDSA/Ed25519. `jsonwebtoken` parses and checks the signature; every claim is checked
//! here against a time passed in, never the system clock.

use ghostkey_proto::assertion::{
    is_valid_identifier, AssertionClaims, Purpose, ALGORITHM, MAX_JTI_LEN, MAX_USER_ID_LEN,
    MIN_JTI_LEN,
};
use ghostkey_proto::ErrorCode;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::app::KeyLookup;
use crate::clock::UnixTime;
use crate::error::Error;

/// Largest accepted token, in bytes; a genuine assertion is a few hundred.
pub const MAX_TOKEN_LEN: usize = 4096;

/// The deployment's rules for assertions.
#[derive(Debug, Clone)]
pub struct AssertionRules {
    /// The `aud` every assertion must carry.
    pub service_id: String,
    /// Largest `exp - iat`.
    pub max_lifetime_secs: i64,
    /// How far in the future `iat` may be.
    pub max_clock_skew_secs: i64,
}

/// A token whose header is acceptable, with the issuer and key id it claims, not yet trusted.
#[derive(Debug)]
pub struct UnverifiedAssertion<'a> {
    token: &'a str,
    /// The claimed app id (`iss`), used to find the key.
    pub iss: String,
    /// The claimed key id (`kid`).
    pub kid: String,
}

/// An assertion whose signature and claims all check out, except the single use of its
/// `jti`, which the store enforces in the same transaction as the action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAssertion {
    /// The app (`iss`).
    pub app_id: String,
    /// The user (`sub`).
    pub user_id: String,
    /// The single-use id.
    pub jti: String,
    /// Until when the `jti` must be remembered.
    pub remember_jti_until: UnixTime,
    /// The purpose.
    pub purpose: Purpose,
}

fn refuse(code: ErrorCode, detail: &str) -> Error {
    Error::with_detail(code, detail)
}

#[derive(Deserialize)]
struct IssuerOnly {
    iss: String,
}

#[derive(Deserialize)]
struct AlgOnly {
    alg: String,
}

/// Reads the algorithm named by a header that `jsonwebtoken` refused to parse (such as
/// `none`), only to choose the error code: nothing read here is trusted.
fn refused_algorithm_name(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let bytes = ghostkey_proto::b64::decode(header).ok()?;
    serde_json::from_slice::<AlgOnly>(&bytes)
        .ok()
        .map(|h| h.alg)
}

/// First step: the header names EdDSA and a key, and the payload names an issuer.
pub fn inspect(token: &str) -> Result<UnverifiedAssertion<'_>, Error> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(refuse(
            ErrorCode::InvalidAssertion,
            "the assertion is too long",
        ));
    }
    let header = match jsonwebtoken::decode_header(token) {
        Ok(header) => header,
        Err(_) => {
            return Err(match refused_algorithm_name(token) {
                Some(alg) if alg != ALGORITHM => refuse(
                    ErrorCode::AssertionAlgorithmRefused,
                    "only EdDSA (Ed25519) assertions are accepted",
                ),
                _ => refuse(
                    ErrorCode::InvalidAssertion,
                    "not a compact JWT with a valid header",
                ),
            })
        }
    };
    if header.alg != Algorithm::EdDSA {
        return Err(refuse(
            ErrorCode::AssertionAlgorithmRefused,
            "only EdDSA (Ed25519) assertions are accepted",
        ));
    }
    let kid = header
        .kid
        .ok_or_else(|| refuse(ErrorCode::InvalidAssertion, "the header has no `kid`"))?;
    let issuer = jsonwebtoken::dangerous::insecure_decode::<IssuerOnly>(token)
        .map_err(|_| refuse(ErrorCode::InvalidAssertion, "the payload has no `iss`"))?;
    Ok(UnverifiedAssertion {
        token,
        iss: issuer.claims.iss,
        kid,
    })
}

/// Second step: given what the store knows of (`iss`, `kid`), checks the signature, then
/// every claim, for an endpoint that requires `purpose`, at time `now`.
pub fn verify(
    unverified: &UnverifiedAssertion<'_>,
    key: &KeyLookup,
    rules: &AssertionRules,
    purposes: &[Purpose],
    now: UnixTime,
) -> Result<VerifiedAssertion, Error> {
    let public_key = match key {
        KeyLookup::UnknownApp => {
            return Err(refuse(
                ErrorCode::AssertionUnknownIssuer,
                "`iss` is not a registered app",
            ))
        }
        KeyLookup::UnknownKey => {
            return Err(refuse(
                ErrorCode::AssertionUnknownKey,
                "`kid` is not a key of the issuing app",
            ))
        }
        KeyLookup::Revoked => {
            return Err(refuse(
                ErrorCode::AssertionKeyRevoked,
                "`kid` names a revoked key",
            ))
        }
        KeyLookup::Active(public_key) => public_key,
    };

    let mut validation = Validation::new(Algorithm::EdDSA);
    // Time and audience are checked below against `now` and the rules, not by the crate.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let claims: AssertionClaims = match jsonwebtoken::decode(
        unverified.token,
        &DecodingKey::from_ed_der(public_key),
        &validation,
    ) {
        Ok(data) => data.claims,
        Err(e) => {
            return Err(match e.kind() {
                ErrorKind::InvalidSignature => refuse(
                    ErrorCode::AssertionBadSignature,
                    "the signature does not verify",
                ),
                ErrorKind::InvalidAlgorithm => refuse(
                    ErrorCode::AssertionAlgorithmRefused,
                    "only EdDSA (Ed25519) assertions are accepted",
                ),
                _ => refuse(
                    ErrorCode::InvalidAssertion,
                    "the claims must be exactly iss, sub, aud, iat, exp, jti and purpose",
                ),
            })
        }
    };

    if claims.aud != rules.service_id {
        return Err(refuse(
            ErrorCode::AssertionWrongAudience,
            "`aud` is not this service's id",
        ));
    }
    if claims.exp <= now {
        return Err(refuse(ErrorCode::AssertionExpired, "`exp` is in the past"));
    }
    let lifetime = claims.exp.saturating_sub(claims.iat);
    if !(0..=rules.max_lifetime_secs).contains(&lifetime) {
        return Err(Error::with_detail(
            ErrorCode::AssertionLifetimeTooLong,
            format!(
                "`exp - iat` must be between 0 and {} seconds",
                rules.max_lifetime_secs
            ),
        ));
    }
    if claims.iat > now.saturating_add(rules.max_clock_skew_secs) {
        return Err(refuse(
            ErrorCode::AssertionIssuedInFuture,
            "`iat` is in the future",
        ));
    }
    if !purposes.contains(&claims.purpose) {
        let wanted: Vec<&str> = purposes.iter().map(|p| p.as_str()).collect();
        return Err(Error::with_detail(
            ErrorCode::AssertionWrongPurpose,
            format!("this endpoint needs purpose `{}`", wanted.join("` or `")),
        ));
    }
    if !is_valid_identifier(&claims.sub, 1, MAX_USER_ID_LEN) {
        return Err(Error::with_detail(
            ErrorCode::InvalidAssertion,
            format!(
                "`sub` must be 1 to {MAX_USER_ID_LEN} printable ASCII characters without spaces"
            ),
        ));
    }
    if !is_valid_identifier(&claims.jti, MIN_JTI_LEN, MAX_JTI_LEN) {
        return Err(Error::with_detail(
            ErrorCode::InvalidAssertion,
            format!("`jti` must be {MIN_JTI_LEN} to {MAX_JTI_LEN} printable ASCII characters without spaces"),
        ));
    }
    Ok(VerifiedAssertion {
        app_id: claims.iss,
        user_id: claims.sub,
        jti: claims.jti,
        // Kept past `exp` by the skew, so nodes whose clocks differ still refuse a replay.
        remember_jti_until: claims.exp.saturating_add(rules.max_clock_skew_secs),
        purpose: claims.purpose,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ghostkey_client::AppSigningKey;

    const NOW: UnixTime = 1_800_000_000;

    fn rules() -> AssertionRules {
        AssertionRules {
            service_id: "gk".into(),
            max_lifetime_secs: 300,
            max_clock_skew_secs: 30,
        }
    }

    fn claims(iat: i64, exp: i64) -> AssertionClaims {
        AssertionClaims {
            iss: "app_1".into(),
            sub: "user-1".into(),
            aud: "gk".into(),
            iat,
            exp,
            jti: "0123456789abcdefghij".into(),
            purpose: Purpose::Recover,
        }
    }

    fn check(
        key: &AppSigningKey,
        c: &AssertionClaims,
        now: UnixTime,
    ) -> Result<VerifiedAssertion, ErrorCode> {
        let token = key.mint_claims(c).unwrap();
        let unverified = inspect(&token).map_err(|e| e.code)?;
        assert_eq!(
            (unverified.iss.as_str(), unverified.kid.as_str()),
            ("app_1", "k1")
        );
        let pk = ghostkey_proto::b64::decode_array::<32>(&key.public_key_b64()).unwrap();
        verify(
            &unverified,
            &KeyLookup::Active(pk),
            &rules(),
            &[Purpose::Recover],
            now,
        )
        .map_err(|e| e.code)
    }

    #[test]
    fn time_rules_use_the_time_passed_in() {
        let key = AppSigningKey::generate("k1");
        let c = claims(NOW, NOW + 300);
        let ok = check(&key, &c, NOW).unwrap();
        assert_eq!(ok.remember_jti_until, NOW + 300 + 30);
        assert_eq!(ok.user_id, "user-1");
        // The same token, judged at other times.
        assert_eq!(check(&key, &c, NOW + 299).map(|_| ()), Ok(()));
        assert_eq!(
            check(&key, &c, NOW + 300).unwrap_err(),
            ErrorCode::AssertionExpired
        );
        assert_eq!(check(&key, &c, NOW - 30).map(|_| ()), Ok(()));
        assert_eq!(
            check(&key, &c, NOW - 31).unwrap_err(),
            ErrorCode::AssertionIssuedInFuture
        );
        assert_eq!(
            check(&key, &claims(NOW, NOW + 301), NOW).unwrap_err(),
            ErrorCode::AssertionLifetimeTooLong
        );
    }

    #[test]
    fn key_states_map_to_their_codes() {
        let key = AppSigningKey::generate("k1");
        let token = key.mint_claims(&claims(NOW, NOW + 60)).unwrap();
        let unverified = inspect(&token).unwrap();
        let other = ghostkey_proto::b64::decode_array::<32>(
            &AppSigningKey::generate("k1").public_key_b64(),
        )
        .unwrap();
        for (lookup, code) in [
            (KeyLookup::UnknownApp, ErrorCode::AssertionUnknownIssuer),
            (KeyLookup::UnknownKey, ErrorCode::AssertionUnknownKey),
            (KeyLookup::Revoked, ErrorCode::AssertionKeyRevoked),
            (KeyLookup::Active(other), ErrorCode::AssertionBadSignature),
        ] {
            assert_eq!(
                verify(&unverified, &lookup, &rules(), &[Purpose::Recover], NOW)
                    .unwrap_err()
                    .code,
                code
            );
        }
    }
}
