//! Helpers shared by the fuzz targets: splitting an input into fields, and the fixed keys
//! the harnesses sign with so that fuzzed claims and blocks pass their signature checks
//! and reach the rules behind them.
//!
//! The keys are fixed (derived from constant seeds) so that every run is deterministic and
//! a saved input reproduces; they are test keys and protect nothing.
#![forbid(unsafe_code)]

use std::sync::OnceLock;

use ed25519_dalek::SigningKey;
use ghostkey_client::DeviceKeys;

/// The fixed time the harnesses judge at (2027-01-15, as the unit tests use).
pub const NOW: i64 = 1_800_000_000;

/// The app id registered in the harnesses' fake store.
pub const APP_ID: &str = "app_1";

/// The fixed app keys: `k1` and `k2` active, `k0` registered and revoked. Made once:
/// deriving a key costs a scalar multiplication, which would dominate every input.
struct AppKeys {
    keys: [SigningKey; 3],
    public: [[u8; 32]; 3],
}

fn app_keys() -> &'static AppKeys {
    static KEYS: OnceLock<AppKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let keys = [0x11u8, 0x22, 0x33].map(|b| SigningKey::from_bytes(&[b; 32]));
        let public = [0, 1, 2].map(|i| keys[i].verifying_key().to_bytes());
        AppKeys { keys, public }
    })
}

/// The app's first assertion / root key: active, kid `k1`.
pub fn app_key_1() -> &'static SigningKey {
    &app_keys().keys[0]
}

/// The app's second active key, kid `k2`.
pub fn app_key_2() -> &'static SigningKey {
    &app_keys().keys[1]
}

/// A key registered as `k0` and revoked.
pub fn app_key_revoked() -> &'static SigningKey {
    &app_keys().keys[2]
}

/// The public halves of `k1`, `k2` and `k0`.
pub fn app_public(kid: &str) -> Option<[u8; 32]> {
    match kid {
        "k1" => Some(app_keys().public[0]),
        "k2" => Some(app_keys().public[1]),
        "k0" => Some(app_keys().public[2]),
        _ => None,
    }
}

/// The public half of an app key, by key id, as the store would answer for a chain root:
/// `k1` and `k2`; the revoked `k0` has none.
pub fn app_public_key(kid: &str) -> Option<[u8; 32]> {
    match kid {
        "k1" | "k2" => app_public(kid),
        _ => None,
    }
}

/// Number of devices in the pool the chain harness draws from; device 0 is the virtual
/// device.
pub const DEVICES: usize = 6;

/// A device of the fixed pool, with its public keys worked out once.
pub struct Device {
    /// Its keys.
    pub keys: DeviceKeys,
    /// Its Ed25519 public key.
    pub signing: [u8; 32],
    /// Its X25519 public key.
    pub encryption: [u8; 32],
}

/// Device `i` of the fixed pool (`i` taken modulo [`DEVICES`]).
pub fn device(i: usize) -> &'static Device {
    static POOL: OnceLock<Vec<Device>> = OnceLock::new();
    let pool = POOL.get_or_init(|| {
        (0..DEVICES as u8)
            .map(|i| {
                let keys = DeviceKeys::from_bytes(&[0x40 + i; 32], &[0x60 + i; 32]);
                let (signing, encryption) = (keys.signing_public(), keys.encryption_public());
                Device {
                    keys,
                    signing,
                    encryption,
                }
            })
            .collect()
    });
    &pool[i % DEVICES]
}

/// The input cut at `\n` into at most `n` fields; missing fields are `None`.
pub fn fields(data: &[u8], n: usize) -> Vec<Option<&[u8]>> {
    let mut out: Vec<Option<&[u8]>> = data.splitn(n, |&b| b == b'\n').map(Some).collect();
    out.resize(n, None);
    out
}

/// A field as text (lossy: invalid UTF-8 becomes U+FFFD, so the value is still used).
pub fn text(field: Option<&[u8]>) -> Option<String> {
    field.map(|b| String::from_utf8_lossy(b).into_owned())
}

/// Counts how often each outcome is reached, so a run can show that the interesting cases
/// are exercised: with `GHOSTKEY_FUZZ_STATS=1` in the environment the counts are printed
/// to stderr after 2^10, 2^11, … inputs (otherwise nothing is counted).
pub fn tally(outcome: &str) {
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    static ON: OnceLock<bool> = OnceLock::new();
    static COUNTS: Mutex<(u64, BTreeMap<String, u64>)> = Mutex::new((0, BTreeMap::new()));
    if !*ON.get_or_init(|| std::env::var_os("GHOSTKEY_FUZZ_STATS").is_some()) {
        return;
    }
    let Ok(mut counts) = COUNTS.lock() else {
        return;
    };
    counts.0 += 1;
    *counts.1.entry(outcome.to_owned()).or_insert(0) += 1;
    if counts.0 >= 1024 && counts.0.is_power_of_two() {
        let line: Vec<String> = counts.1.iter().map(|(k, v)| format!("{k}={v}")).collect();
        eprintln!("outcomes after {} inputs: {}", counts.0, line.join(" "));
    }
}
