//! The sealed virtual device: outer format, plaintext layout, and opening.
//!
//! After a first byte `s`, the input gives, one per line, an app id, a user id, a version
//! and a byte position; the harness seals a virtual device with those values under a fixed
//! user secret and checks that it opens to the same device, only for the same app and user
//! and no older than its version, and that flipping the byte at that position, or another
//! secret, makes it refuse to open. Any other input is raw bytes for the parsers and
//! `open`.
#![no_main]

use ghostkey_client::sealed::SealError;
use ghostkey_client::{DeviceKeys, UserSecret, VirtualDevice};
use ghostkey_fuzz::{fields, tally, text};
use libfuzzer_sys::fuzz_target;

fn same(a: &VirtualDevice, b: &VirtualDevice) {
    assert_eq!(
        (a.app_id(), a.user_id(), a.version()),
        (b.app_id(), b.user_id(), b.version())
    );
    assert_eq!(a.keys(), b.keys());
}

fn structured(data: &[u8]) {
    let f = fields(data, 4);
    let app = text(f[0]).unwrap_or_else(|| "app".into());
    let user = text(f[1]).unwrap_or_else(|| "user".into());
    let version = text(f[2])
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(1);
    let position = text(f[3])
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let secret = UserSecret::from_bytes([7; 32]);
    let device = VirtualDevice::from_keys(
        &app,
        &user,
        version,
        DeviceKeys::from_bytes(&[1; 32], &[2; 32]),
    );
    let nonce = [version as u8; 24];
    let blob = match device.seal_with_nonce(&secret, &nonce) {
        Ok(blob) => blob,
        Err(e) => {
            let ids_ok = (1..=255).contains(&app.len()) && (1..=255).contains(&user.len());
            assert!(
                !ids_ok && matches!(e, SealError::IdLength),
                "sealing failed: {e}"
            );
            tally("sealed:id-length");
            return;
        }
    };
    tally("sealed:opened");
    let opened =
        VirtualDevice::open(&blob, &secret, &app, &user, version).expect("opens as sealed");
    same(&opened, &device);
    let plaintext = device.to_plaintext().expect("layout");
    same(
        &VirtualDevice::from_plaintext(&plaintext).expect("layout parses"),
        &device,
    );
    assert!(matches!(
        VirtualDevice::open(&blob, &secret, &format!("{app}x"), &user, 0),
        Err(SealError::WrongBinding("app"))
    ));
    assert!(matches!(
        VirtualDevice::open(&blob, &secret, &app, &format!("{user}x"), 0),
        Err(SealError::WrongBinding("user"))
    ));
    if let Some(newer) = version.checked_add(1) {
        assert!(matches!(
            VirtualDevice::open(&blob, &secret, &app, &user, newer),
            Err(SealError::RolledBack { .. })
        ));
    }
    let other = UserSecret::from_bytes([8; 32]);
    assert!(matches!(
        VirtualDevice::open(&blob, &other, &app, &user, 0),
        Err(SealError::Decrypt)
    ));
    let mut altered = blob.clone();
    altered[position % blob.len()] ^= 1 << (position % 8);
    assert!(
        VirtualDevice::open(&altered, &secret, &app, &user, 0).is_err(),
        "an altered blob opened"
    );
}

fuzz_target!(|data: &[u8]| {
    if let Some((b's', rest)) = data.split_first() {
        structured(rest);
        return;
    }
    let _ = ghostkey_proto::sealed::parse(data);
    if let Ok(device) = VirtualDevice::from_plaintext(data) {
        assert_eq!(device.to_plaintext().expect("layout").as_slice(), data);
    }
    let secret = UserSecret::from_bytes([7; 32]);
    tally(match VirtualDevice::open(data, &secret, "app", "user", 0) {
        Ok(_) => "raw:opened",
        Err(SealError::Format(_)) => "raw:format",
        Err(SealError::Decrypt) => "raw:decrypt",
        Err(_) => "raw:other",
    });
});
