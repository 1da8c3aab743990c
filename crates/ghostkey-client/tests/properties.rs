//! Property tests: sealing round-trips and detects any tampering; chains built by random
//! honest histories verify, and any flipped byte is caught at its block.

use ghostkey_client::chain::{add_device, revoke_device, root_block};
use ghostkey_client::sealed::SealError;
use ghostkey_client::{AppSigningKey, DeviceKeys, UserKeys, UserSecret, VirtualDevice};
use ghostkey_proto::chain::{verify_chain, Block};
use proptest::prelude::*;

fn id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._-]{1,64}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn sealing_round_trips_and_any_changed_byte_is_refused(
        app in id(), user in id(), version in 1u64..u64::MAX, secret in any::<[u8; 32]>(), flip in any::<prop::sample::Index>(), bit in 0u8..8,
    ) {
        let secret = UserSecret::from_bytes(secret);
        let device = VirtualDevice::generate(&app, &user, version);
        let blob = device.seal(&secret).unwrap();
        prop_assert_eq!(VirtualDevice::open(&blob, &secret, &app, &user, version).unwrap(), device);
        let mut tampered = blob.clone();
        let i = flip.index(blob.len());
        tampered[i] ^= 1 << bit;
        let err = VirtualDevice::open(&tampered, &secret, &app, &user, version).unwrap_err();
        // The version byte is checked first; any other byte fails authentication.
        if i == 0 {
            prop_assert!(matches!(err, SealError::Format(_)));
        } else {
            prop_assert_eq!(err, SealError::Decrypt);
        }
    }

    #[test]
    fn random_honest_histories_verify_and_a_flipped_byte_is_caught_at_its_block(
        ops in prop::collection::vec((any::<bool>(), any::<prop::sample::Index>()), 1..24),
        flip in any::<prop::sample::Index>(),
    ) {
        let app = AppSigningKey::generate("k1");
        let pinned = |kid: &str| (kid == "k1").then(|| app.public_key());
        let vd = VirtualDevice::generate("app", "user", 1);
        let user = UserKeys::generate();
        let root = app.endorse_root(&root_block(&vd, &user, "k1").unwrap(), "app", "user").unwrap();
        let mut blocks: Vec<Block> = vec![root];
        let mut state = verify_chain(&[blocks[0].encode()], &pinned).unwrap();
        let mut devices: Vec<DeviceKeys> = vec![vd.keys().clone()];
        for (revoke, pick) in ops {
            let valid: Vec<&DeviceKeys> = devices.iter().filter(|d| state.valid_device(&d.signing_public()).is_some()).collect();
            let author = valid[pick.index(valid.len())].clone();
            let revocable: Vec<&DeviceKeys> = valid.iter().copied()
                .filter(|d| d.signing_public() != vd.keys().signing_public() && d.signing_public() != author.signing_public())
                .collect();
            let block = if revoke && !revocable.is_empty() {
                let target = revocable[pick.index(revocable.len())].signing_public();
                revoke_device(&state, &author, &target).unwrap()
            } else {
                let new = DeviceKeys::generate();
                let b = add_device(&state, &author, &new, &user).unwrap();
                devices.push(new);
                b
            };
            state.apply(&block).unwrap();
            blocks.push(block);
        }
        let encoded: Vec<Vec<u8>> = blocks.iter().map(Block::encode).collect();
        let verified = verify_chain(&encoded, &pinned).unwrap();
        prop_assert_eq!(verified.len, blocks.len());
        prop_assert_eq!(verified.head, state.head);

        let total: usize = encoded.iter().map(Vec::len).sum();
        let mut at = flip.index(total);
        let mut tampered = encoded.clone();
        let mut block_index = 0;
        for (i, b) in tampered.iter_mut().enumerate() {
            if at < b.len() {
                b[at] ^= 0x01;
                block_index = i;
                break;
            }
            at -= b.len();
        }
        let err = verify_chain(&tampered, &pinned).unwrap_err();
        prop_assert_eq!(err.index, block_index);
    }
}
