//! Assertion parsing and verification, as the server runs them on any bearer token.
#![no_main]

use ghostkey::domain::app::KeyLookup;
use ghostkey::domain::assertion::{inspect, verify, AssertionRules};
use ghostkey_proto::assertion::Purpose;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else { return };
    let Ok(unverified) = inspect(token) else { return };
    let rules = AssertionRules { service_id: "gk".into(), max_lifetime_secs: 300, max_clock_skew_secs: 30 };
    // A valid Ed25519 point (the basepoint), so verification runs to the signature check.
    let key = [
        0x58, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66,
        0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66, 0x66,
    ];
    for lookup in [KeyLookup::Active(key), KeyLookup::Revoked, KeyLookup::UnknownKey] {
        let _ = verify(&unverified, &lookup, &rules, &[Purpose::Enroll, Purpose::Recover], 1_800_000_000);
    }
});
