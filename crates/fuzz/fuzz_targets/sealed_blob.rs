//! The sealed virtual device: outer format, plaintext layout, and opening.
#![no_main]

use ghostkey_client::{UserSecret, VirtualDevice};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ghostkey_proto::sealed::parse(data);
    let _ = VirtualDevice::from_plaintext(data);
    let secret = UserSecret::from_bytes([7; 32]);
    let _ = VirtualDevice::open(data, &secret, "app", "user", 0);
});
