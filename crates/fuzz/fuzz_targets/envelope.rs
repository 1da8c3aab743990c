//! Document envelopes: decoding, encoding back, and opening.
//!
//! After a first byte `e`, the input gives, one per line, the author's user id, a reader's
//! user id, a byte position and the document (the rest). The harness seals the document
//! for the author and the reader with fixed device and user keys (the document key and
//! nonce are random, as in use) and checks that each recipient opens it to the same
//! document, that it opens for no one else, not under a revoked or unknown author device,
//! and that flipping any bit of its encoding makes it refuse to open. Any other input is
//! raw bytes: what decodes encodes back to the same bytes, and opening it is refused
//! unless its signature holds.
#![no_main]

use ghostkey_client::envelope::{Envelope, EnvelopeError};
use ghostkey_client::UserKeys;
use ghostkey_fuzz::{device, fields, tally, text};
use ghostkey_proto::chain::{ChainDevice, ChainState};
use libfuzzer_sys::fuzz_target;

/// A one-device chain state for `user`, whose author device is pool device `dev`.
fn chain(user: &str, user_keys: &UserKeys, dev: usize, revoked: bool) -> ChainState {
    let d = device(dev);
    ChainState {
        app_id: "app_1".into(),
        user_id: user.into(),
        user_public: user_keys.public(),
        devices: vec![ChainDevice {
            signing: d.signing,
            encryption: d.encryption,
            user_key: Vec::new(),
            is_virtual: false,
            revoked_at: revoked.then_some(1),
        }],
        len: 2,
        head: [0; 32],
    }
}

fn structured(data: &[u8]) {
    let f = fields(data, 4);
    let author = text(f[0]).unwrap_or_else(|| "author".into());
    let reader = text(f[1]).unwrap_or_else(|| "reader".into());
    let position = text(f[2])
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let document = f[3].unwrap_or_default();
    let (author_keys, reader_keys) = (
        UserKeys::from_bytes(&[5; 32]),
        UserKeys::from_bytes(&[6; 32]),
    );
    let author_chain = chain(&author, &author_keys, 1, false);
    let reader_chain = chain(&reader, &reader_keys, 2, false);
    let envelope = match Envelope::seal(
        &author,
        &device(1).keys,
        &[&author_chain, &reader_chain],
        document,
    ) {
        Ok(envelope) => envelope,
        Err(e) => {
            let too_long =
                author.len() > usize::from(u16::MAX) || reader.len() > usize::from(u16::MAX);
            assert!(
                too_long && matches!(e, EnvelopeError::Build),
                "sealing failed: {e}"
            );
            return;
        }
    };
    tally("envelope:sealed");
    let encoded = envelope.encode().expect("a sealed envelope encodes");
    let decoded = Envelope::decode(&encoded).expect("an encoded envelope decodes");
    assert_eq!(decoded.encode().ok().as_ref(), Some(&encoded));
    let opened = decoded
        .open(&author, &author_keys, &author_chain)
        .expect("the author reads it");
    assert_eq!(opened.as_slice(), document);
    if reader != author {
        let opened = decoded
            .open(&reader, &reader_keys, &author_chain)
            .expect("the reader reads it");
        assert_eq!(opened.as_slice(), document);
        let stranger = format!("{reader}{author}x");
        assert!(matches!(
            decoded.open(&stranger, &reader_keys, &author_chain),
            Err(EnvelopeError::NotARecipient)
        ));
    }
    // The author's device revoked, or another device: refused before the signature.
    let revoked = chain(&author, &author_keys, 1, true);
    assert!(matches!(
        decoded.open(&author, &author_keys, &revoked),
        Err(EnvelopeError::UnknownAuthor)
    ));
    let other = chain(&author, &author_keys, 3, false);
    assert!(matches!(
        decoded.open(&author, &author_keys, &other),
        Err(EnvelopeError::UnknownAuthor)
    ));
    // Any flipped bit: it no longer decodes, or no longer opens.
    let mut altered = encoded.clone();
    altered[position % encoded.len()] ^= 1 << (position % 8);
    if let Ok(altered) = Envelope::decode(&altered) {
        assert!(
            altered.open(&author, &author_keys, &author_chain).is_err(),
            "an altered envelope opened"
        );
        assert!(
            altered.open(&reader, &reader_keys, &author_chain).is_err(),
            "an altered envelope opened"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some((b'e', rest)) = data.split_first() {
        structured(rest);
        return;
    }
    if let Ok(envelope) = Envelope::decode(data) {
        assert_eq!(envelope.encode().ok().as_deref(), Some(data));
        // Without the author's key, no signature made here holds.
        let keys = UserKeys::from_bytes(&[5; 32]);
        let author_chain = chain(&envelope.author_user, &keys, 1, false);
        let opened = envelope.open(&envelope.author_user, &keys, &author_chain);
        if envelope.author_device != device(1).signing {
            assert!(matches!(opened, Err(EnvelopeError::UnknownAuthor)));
        }
        tally(if opened.is_ok() {
            "raw:opened"
        } else {
            "raw:refused"
        });
    } else {
        tally("raw:malformed");
    }
});
