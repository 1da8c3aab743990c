//! The device chain verifies when built by honest devices and reports the exact block and
//! reason for each tampering; envelopes open for their recipients only.

use ghostkey_client::chain::{add_device, revoke_device, root_block, user_keys};
use ghostkey_client::envelope::{Envelope, EnvelopeError};
use ghostkey_client::{AppSigningKey, DeviceKeys, UserKeys, VirtualDevice};
use ghostkey_proto::chain::{verify_chain, Author, Block, BlockBody, ChainFault, ChainState};

const APP: &str = "app_health";

struct User {
    app_key: AppSigningKey,
    vd: VirtualDevice,
    user: UserKeys,
    phone: DeviceKeys,
    laptop: DeviceKeys,
    blocks: Vec<Block>,
}

fn pinned(app_key: &AppSigningKey) -> impl Fn(&str) -> Option<[u8; 32]> + '_ {
    move |kid| (kid == app_key.kid()).then(|| app_key.public_key())
}

fn state_of(u: &User, blocks: &[Block]) -> Result<ChainState, ghostkey_proto::chain::ChainError> {
    let encoded: Vec<Vec<u8>> = blocks.iter().map(Block::encode).collect();
    verify_chain(&encoded, &pinned(&u.app_key))
}

/// Root; the virtual device admits the phone; the phone admits the laptop; the laptop
/// revokes the phone.
fn honest(user_id: &str) -> User {
    let app_key = AppSigningKey::generate("k1");
    let vd = VirtualDevice::generate(APP, user_id, 1);
    let user = UserKeys::generate();
    let root = app_key
        .endorse_root(&root_block(&vd, &user, "k1").unwrap(), APP, user_id)
        .unwrap();
    let mut u = User {
        app_key,
        vd,
        user,
        phone: DeviceKeys::generate(),
        laptop: DeviceKeys::generate(),
        blocks: vec![root],
    };
    let s = state_of(&u, &u.blocks).unwrap();
    u.blocks
        .push(add_device(&s, u.vd.keys(), &u.phone, &u.user).unwrap());
    let s = state_of(&u, &u.blocks).unwrap();
    u.blocks
        .push(add_device(&s, &u.phone, &u.laptop, &u.user).unwrap());
    let s = state_of(&u, &u.blocks).unwrap();
    u.blocks
        .push(revoke_device(&s, &u.laptop, &u.phone.signing_public()).unwrap());
    u
}

fn fault(u: &User, blocks: &[Block]) -> (usize, ChainFault) {
    let e = state_of(u, blocks).expect_err("the chain must be refused");
    (e.index, e.fault)
}

#[test]
fn an_honest_chain_verifies_and_every_valid_device_reads_the_user_key() {
    let u = honest("doctor");
    let s = state_of(&u, &u.blocks).unwrap();
    assert_eq!(s.len, 4);
    assert_eq!(s.user_public, u.user.public());
    assert!(s.valid_device(&u.vd.keys().signing_public()).is_some());
    assert!(s.valid_device(&u.laptop.signing_public()).is_some());
    assert!(
        s.valid_device(&u.phone.signing_public()).is_none(),
        "revoked"
    );
    for device in [u.vd.keys(), &u.laptop] {
        assert_eq!(user_keys(&s, device).unwrap().public(), u.user.public());
    }
    assert!(
        user_keys(&s, &u.phone).is_err(),
        "a revoked device gets nothing from the chain"
    );
}

#[test]
fn a_changed_byte_anywhere_is_caught_at_that_block() {
    let u = honest("doctor");
    let encoded: Vec<Vec<u8>> = u.blocks.iter().map(Block::encode).collect();
    for (i, block) in encoded.iter().enumerate() {
        for j in 0..block.len() {
            let mut tampered = encoded.clone();
            tampered[i][j] ^= 0x01;
            let e =
                verify_chain(&tampered, &pinned(&u.app_key)).expect_err("tampering must be caught");
            assert_eq!(e.index, i, "block {i} byte {j}: {e}");
        }
    }
}

#[test]
fn reordered_dropped_and_duplicated_blocks_are_caught() {
    let u = honest("doctor");
    let mut reordered = u.blocks.clone();
    reordered.swap(1, 2);
    assert_eq!(fault(&u, &reordered), (1, ChainFault::WrongIndex));
    let mut dropped = u.blocks.clone();
    dropped.remove(1);
    assert_eq!(fault(&u, &dropped), (1, ChainFault::WrongIndex));
    let mut replayed = u.blocks.clone();
    replayed.push(u.blocks[3].clone());
    assert_eq!(fault(&u, &replayed), (4, ChainFault::WrongIndex));
    assert_eq!(fault(&u, &[]), (0, ChainFault::Empty));
    assert_eq!(fault(&u, &u.blocks[1..]), (0, ChainFault::NoRoot));
}

#[test]
fn blocks_by_revoked_devices_and_strangers_are_refused() {
    let u = honest("doctor");
    let s = state_of(&u, &u.blocks).unwrap();
    // The revoked phone tries to admit a device: build as if it were still valid.
    let mut forged_state = s.clone();
    forged_state
        .devices
        .iter_mut()
        .for_each(|d| d.revoked_at = None);
    let by_revoked = add_device(&forged_state, &u.phone, &DeviceKeys::generate(), &u.user).unwrap();
    let mut chain = u.blocks.clone();
    chain.push(by_revoked);
    assert_eq!(fault(&u, &chain), (4, ChainFault::RevokedAuthor));

    // A stranger's device.
    let stranger = DeviceKeys::generate();
    forged_state.devices[0].signing = stranger.signing_public();
    let by_stranger =
        add_device(&forged_state, &stranger, &DeviceKeys::generate(), &u.user).unwrap();
    let mut chain = u.blocks.clone();
    chain.push(by_stranger);
    assert_eq!(fault(&u, &chain), (4, ChainFault::UnknownAuthor));

    // A valid device cannot revoke the virtual device.
    let revoke_vd = revoke_device(&s, &u.laptop, &u.vd.keys().signing_public()).unwrap();
    let mut chain = u.blocks.clone();
    chain.push(revoke_vd);
    assert_eq!(fault(&u, &chain), (4, ChainFault::RevokeVirtualDevice));
}

#[test]
fn a_second_root_and_a_root_not_signed_by_the_app_are_refused() {
    let u = honest("doctor");
    let s = state_of(&u, &u.blocks).unwrap();
    // A second root, even endorsed by the app.
    let mut root = root_block(&u.vd, &u.user, "k1").unwrap();
    root.index = 4;
    root.prev_hash = s.head;
    let second = Block {
        signature: u
            .app_key
            .endorse_root(&root, APP, "doctor")
            .unwrap()
            .signature,
        unsigned: root,
    };
    let mut chain = u.blocks.clone();
    chain.push(second);
    assert_eq!(fault(&u, &chain), (4, ChainFault::SecondRoot));

    // A root signed by another key under the same kid, or by an unknown kid.
    let impostor = AppSigningKey::generate("k1");
    let fake_root = impostor
        .endorse_root(&root_block(&u.vd, &u.user, "k1").unwrap(), APP, "doctor")
        .unwrap();
    assert_eq!(fault(&u, &[fake_root]), (0, ChainFault::RootNotSignedByApp));
    let other_kid = AppSigningKey::generate("k9");
    let fake_root = other_kid
        .endorse_root(&root_block(&u.vd, &u.user, "k9").unwrap(), APP, "doctor")
        .unwrap();
    assert_eq!(fault(&u, &[fake_root]), (0, ChainFault::RootNotSignedByApp));
    // A root signed by a device, not the app.
    let mut by_device = u.blocks[0].clone();
    by_device.unsigned.author = Author::Device(u.vd.keys().signing_public());
    assert!(matches!(
        fault(&u, &[by_device]),
        (0, ChainFault::Malformed(_)) | (0, ChainFault::RootNotSignedByApp)
    ));
    // The app refuses to endorse a root for another user.
    assert!(u
        .app_key
        .endorse_root(
            &root_block(&u.vd, &u.user, "k1").unwrap(),
            APP,
            "someone-else"
        )
        .is_err());
}

#[test]
fn a_block_for_another_user_is_refused() {
    let u = honest("doctor");
    let other = honest("patient");
    let s_other = state_of(&other, &other.blocks).unwrap();
    let mut s = state_of(&u, &u.blocks).unwrap();
    s.user_id = s_other.user_id.clone();
    let block = add_device(&s, &u.laptop, &DeviceKeys::generate(), &u.user).unwrap();
    let mut chain = u.blocks.clone();
    chain.push(block);
    assert_eq!(fault(&u, &chain), (4, ChainFault::WrongOwner));
    assert!(matches!(
        BlockBody::DeviceRevoked { revoked: [0; 32] },
        BlockBody::DeviceRevoked { .. }
    ));
}

#[test]
fn envelopes_open_for_each_recipient_and_nobody_else() {
    let doctor = honest("doctor");
    let patient = honest("patient");
    let d = state_of(&doctor, &doctor.blocks).unwrap();
    let p = state_of(&patient, &patient.blocks).unwrap();
    let prescription = b"Amoxicillin 500 mg, three times a day for 7 days";

    let envelope = Envelope::seal("patient", &patient.laptop, &[&d, &p], prescription).unwrap();
    let bytes = envelope.encode().unwrap();
    let parsed = Envelope::decode(&bytes).unwrap();
    assert_eq!(
        parsed.open("doctor", &doctor.user, &p).unwrap().as_slice(),
        prescription
    );
    assert_eq!(
        parsed
            .open("patient", &patient.user, &p)
            .unwrap()
            .as_slice(),
        prescription
    );

    // Not a recipient; or a recipient's name with someone else's keys.
    let stranger = honest("stranger");
    assert_eq!(
        parsed.open("stranger", &stranger.user, &p).unwrap_err(),
        EnvelopeError::NotARecipient
    );
    assert_eq!(
        parsed.open("doctor", &stranger.user, &p).unwrap_err(),
        EnvelopeError::Decrypt
    );
    // Each document has its own key: two envelopes of the same text differ everywhere.
    let again = Envelope::seal("patient", &patient.laptop, &[&d], prescription).unwrap();
    assert_ne!(again.recipients[0].1, envelope.recipients[0].1);
    assert_ne!(again.ciphertext, envelope.ciphertext);

    // A changed byte anywhere is refused.
    for j in 0..bytes.len() {
        let mut tampered = bytes.clone();
        tampered[j] ^= 0x01;
        let refused = match Envelope::decode(&tampered) {
            Err(_) => true,
            Ok(e) => e.open("doctor", &doctor.user, &p).is_err(),
        };
        assert!(refused, "byte {j}");
    }

    // A forged author: a device outside the patient's chain, or the patient's revoked phone.
    let forger = DeviceKeys::generate();
    let forged = Envelope::seal("patient", &forger, &[&d], b"take 50 pills").unwrap();
    assert_eq!(
        forged.open("doctor", &doctor.user, &p).unwrap_err(),
        EnvelopeError::UnknownAuthor
    );
    let by_revoked = Envelope::seal("patient", &patient.phone, &[&d], b"stale").unwrap();
    assert_eq!(
        by_revoked.open("doctor", &doctor.user, &p).unwrap_err(),
        EnvelopeError::UnknownAuthor
    );
    // Claiming another author's chain.
    assert_eq!(
        envelope.open("doctor", &doctor.user, &d).unwrap_err(),
        EnvelopeError::UnknownAuthor
    );
}
