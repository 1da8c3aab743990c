//! Document envelopes: decoding, and encoding back.
#![no_main]

use ghostkey_client::envelope::Envelope;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::decode(data) {
        assert_eq!(envelope.encode().ok().as_deref(), Some(data));
    }
});
