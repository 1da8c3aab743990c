//! Device chains: decoding, whole-chain verification (`verify_chain`), and the server's
//! append checks (`src/domain/chain.rs`).
//!
//! After a first byte `b`, the input is a list of operations of three bytes each
//! (`kind selector flags`); the harness builds one block per operation and signs it with
//! fixed keys, so that the chain rules behind the signatures are reached:
//!
//! - kind % 3: 0 a root (endorsed by the app key the selector names: `k1`, `k2` or an
//!   unknown `kx`), 1 a device added, 2 a device revoked (author: device `selector & 15`,
//!   subject: device `selector >> 4`, of a fixed pool whose device 0 is the virtual one);
//! - flags: 1 an index one short, 2 a stale link (the hash of the block before the
//!   previous one), 4 another app, 8 another user, 16 signed by the wrong key, 32 a
//!   corrupted signature, 64 a longer sealed user key, 128 appended with a `recover`
//!   rather than a `manage` assertion.
//!
//! Otherwise built, each block links to the one built before it. The harness checks
//! `verify_chain` against a model of the rules (the first bad block and a reason of the
//! first stage it breaks, or, for a good chain, the same devices, length and head), then
//! replays the blocks through the server's append path and checks that what the server
//! stores always verifies as a whole chain, to the same state it built block by block,
//! and that a stored block sent again is refused as a replay.
//!
//! Any other input is raw bytes: decoded (what decodes encodes back to the same bytes),
//! and cut into blocks (the first byte says where) for `verify_chain` and the root check.
#![no_main]

use ed25519_dalek::Signer;
use ghostkey::domain::chain::{
    apply_append, check_extends, check_root, decode_for_append, stored_state, Head,
};
use ghostkey_fuzz::{app_key_1, app_key_2, app_public_key, device, tally};
use ghostkey_proto::assertion::Purpose;
use ghostkey_proto::chain::{
    verify_chain, Author, Block, BlockBody, ChainError, ChainFault, ChainState, UnsignedBlock,
};
use ghostkey_proto::ErrorCode;
use libfuzzer_sys::fuzz_target;

const MAX_OPS: usize = 12;
const APP: &str = "app_1";
const USER: &str = "user-1";
const USER_PUBLIC: [u8; 32] = [9; 32];

struct Op {
    kind: u8,
    sel: u8,
    flags: u8,
}

impl Op {
    fn flag(&self, bit: u8) -> bool {
        self.flags & bit != 0
    }
}

struct Built {
    block: Block,
    encoded: Vec<u8>,
    /// Whether the signature was made by the key the block names as its author.
    signed_by_author: bool,
    purpose: Purpose,
}

fn sealed_key(op: &Op) -> Vec<u8> {
    let len = if op.flag(64) {
        48 + usize::from(op.sel)
    } else {
        48
    };
    (0..len).map(|i| (i as u8) ^ op.sel).collect()
}

fn build(ops: &[Op]) -> Vec<Built> {
    let mut built: Vec<Built> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let index = if op.flag(1) {
            (i as u64).wrapping_sub(1)
        } else {
            i as u64
        };
        let prev_hash = match (op.flag(2), i) {
            (false, 0) => [0; 32],
            (false, _) => built[i - 1].block.hash(),
            (true, 0 | 1) => [0xff; 32],
            (true, _) => built[i - 2].block.hash(),
        };
        let app_id = if op.flag(4) { "app_2" } else { APP }.to_owned();
        let user_id = if op.flag(8) { "user-2" } else { USER }.to_owned();
        let (body, author, signer, signed_by_author) = match op.kind % 3 {
            0 => {
                let (kid, own, other) = match op.sel % 3 {
                    0 => ("k1", app_key_1(), app_key_2()),
                    1 => ("k2", app_key_2(), app_key_1()),
                    _ => ("kx", app_key_1(), app_key_2()),
                };
                let vd = device(0);
                let body = BlockBody::Root {
                    vd_signing: vd.signing,
                    vd_encryption: vd.encryption,
                    user_public: USER_PUBLIC,
                    user_key_for_vd: sealed_key(op),
                };
                let signer = if op.flag(16) { other } else { own };
                let by_author = app_public_key(kid) == Some(signer.verifying_key().to_bytes());
                (body, Author::App(kid.to_owned()), signer, by_author)
            }
            kind => {
                let author_index = usize::from(op.sel & 15);
                let subject = device(usize::from(op.sel >> 4));
                let body = if kind == 1 {
                    BlockBody::DeviceAdded {
                        signing: subject.signing,
                        encryption: subject.encryption,
                        user_key_for_device: sealed_key(op),
                    }
                } else {
                    BlockBody::DeviceRevoked {
                        revoked: subject.signing,
                    }
                };
                let author = device(author_index);
                let signer = if op.flag(16) {
                    device(author_index + 1)
                } else {
                    device(author_index)
                };
                let by_author = !op.flag(16);
                (
                    body,
                    Author::Device(author.signing),
                    signer.keys.signing_key(),
                    by_author,
                )
            }
        };
        let unsigned = UnsignedBlock {
            index,
            prev_hash,
            app_id,
            user_id,
            body,
            author,
        };
        let mut signature = signer.sign(&unsigned.signing_input()).to_bytes();
        if op.flag(32) {
            signature[usize::from(op.sel) % 64] ^= 1 << (op.kind % 8);
        }
        let block = Block {
            unsigned,
            signature,
        };
        let encoded = block.encode();
        assert_eq!(
            Block::decode(&encoded).as_ref(),
            Ok(&block),
            "a built block decodes back"
        );
        let purpose = if op.flag(128) {
            Purpose::Recover
        } else {
            Purpose::Manage
        };
        built.push(Built {
            block,
            encoded,
            signed_by_author: signed_by_author && !op.flag(32),
            purpose,
        });
    }
    built
}

/// The model: a chain's devices (signing key, virtual, revoked at), owner, length, head.
#[derive(Debug)]
struct Model {
    app_id: String,
    user_id: String,
    devices: Vec<([u8; 32], bool, Option<usize>)>,
    len: usize,
    head: [u8; 32],
}

/// The reasons `b` breaks the rules after `model`, by stage in the order the rules are
/// checked (structure, then signature, then what the block does); empty when it is good.
fn judge_root(b: &Built) -> Result<Model, Vec<Vec<ChainFault>>> {
    let u = &b.block.unsigned;
    let BlockBody::Root { vd_signing, .. } = &u.body else {
        return Err(vec![vec![ChainFault::NoRoot]]);
    };
    let mut structure = Vec::new();
    if u.index != 0 {
        structure.push(ChainFault::WrongIndex);
    }
    if u.prev_hash != [0; 32] {
        structure.push(ChainFault::BrokenLink);
    }
    let signature = if b.signed_by_author {
        vec![]
    } else {
        vec![ChainFault::RootNotSignedByApp]
    };
    if structure.is_empty() && signature.is_empty() {
        return Ok(Model {
            app_id: u.app_id.clone(),
            user_id: u.user_id.clone(),
            devices: vec![(*vd_signing, true, None)],
            len: 1,
            head: b.block.hash(),
        });
    }
    Err(vec![structure, signature])
}

fn judge_next(m: &mut Model, b: &Built) -> Result<(), Vec<Vec<ChainFault>>> {
    let u = &b.block.unsigned;
    if matches!(u.body, BlockBody::Root { .. }) {
        return Err(vec![vec![ChainFault::SecondRoot]]);
    }
    let mut structure = Vec::new();
    if u.index != m.len as u64 {
        structure.push(ChainFault::WrongIndex);
    }
    if u.prev_hash != m.head {
        structure.push(ChainFault::BrokenLink);
    }
    if u.app_id != m.app_id || u.user_id != m.user_id {
        structure.push(ChainFault::WrongOwner);
    }
    let Author::Device(author) = &u.author else {
        unreachable!("built non-roots have device authors")
    };
    match m.devices.iter().find(|d| &d.0 == author) {
        None => structure.push(ChainFault::UnknownAuthor),
        Some(d) if d.2.is_some() => structure.push(ChainFault::RevokedAuthor),
        Some(_) => {}
    }
    let signature = if b.signed_by_author {
        vec![]
    } else {
        vec![ChainFault::BadSignature]
    };
    let mut effect = Vec::new();
    match &u.body {
        BlockBody::DeviceAdded { signing, .. } => {
            if m.devices.iter().any(|d| &d.0 == signing) {
                effect.push(ChainFault::DuplicateDevice);
            }
        }
        BlockBody::DeviceRevoked { revoked } => {
            match m.devices.iter().find(|d| &d.0 == revoked && d.2.is_none()) {
                None => effect.push(ChainFault::RevokeUnknown),
                Some(d) if d.1 => effect.push(ChainFault::RevokeVirtualDevice),
                Some(_) => {}
            }
        }
        BlockBody::Root { .. } => unreachable!(),
    }
    if !(structure.is_empty() && signature.is_empty() && effect.is_empty()) {
        return Err(vec![structure, signature, effect]);
    }
    match &u.body {
        BlockBody::DeviceAdded { signing, .. } => m.devices.push((*signing, false, None)),
        BlockBody::DeviceRevoked { revoked } => {
            if let Some(d) = m
                .devices
                .iter_mut()
                .find(|d| &d.0 == revoked && d.2.is_none())
            {
                d.2 = Some(m.len);
            }
        }
        BlockBody::Root { .. } => unreachable!(),
    }
    m.len += 1;
    m.head = b.block.hash();
    Ok(())
}

fn first_fault(stages: &[Vec<ChainFault>]) -> &[ChainFault] {
    stages
        .iter()
        .find(|s| !s.is_empty())
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn same_state(state: &ChainState, m: &Model) {
    assert_eq!(
        (state.app_id.as_str(), state.user_id.as_str()),
        (m.app_id.as_str(), m.user_id.as_str())
    );
    assert_eq!((state.len, state.head), (m.len, m.head));
    let devices: Vec<_> = state
        .devices
        .iter()
        .map(|d| (d.signing, d.is_virtual, d.revoked_at))
        .collect();
    assert_eq!(devices, m.devices);
    assert_eq!(state.user_public, USER_PUBLIC);
}

fn check_verify_chain(built: &[Built]) {
    let encoded: Vec<Vec<u8>> = built.iter().map(|b| b.encoded.clone()).collect();
    let actual = verify_chain(&encoded, &app_public_key);
    let mut expected: Result<Model, (usize, Vec<Vec<ChainFault>>)> = match built.first() {
        None => Err((0, vec![vec![ChainFault::Empty]])),
        Some(root) => judge_root(root).map_err(|stages| (0, stages)),
    };
    if let Ok(m) = &mut expected {
        for (index, b) in built.iter().enumerate().skip(1) {
            if let Err(stages) = judge_next(m, b) {
                expected = Err((index, stages));
                break;
            }
        }
    }
    match &actual {
        Ok(state) => tally(&format!("chain:valid-{}-blocks", state.len.min(4))),
        Err(e) => tally(&format!("chain:{}", e.fault.as_str())),
    }
    match (&expected, &actual) {
        (Ok(m), Ok(state)) => same_state(state, m),
        (Err((index, stages)), Err(ChainError { index: got, fault })) => {
            assert_eq!(
                got, index,
                "first bad block: got {fault:?}, expected one of {stages:?}"
            );
            let allowed = first_fault(stages);
            assert!(
                allowed.contains(fault),
                "block {index}: {fault:?}, expected one of {allowed:?}"
            );
        }
        (Ok(m), Err(e)) => panic!("refused ({e}) a chain the model accepts: {m:?}"),
        (Err(e), Ok(_)) => panic!("accepted a chain the model refuses at {e:?}"),
    }
}

/// The server's path: the root at enrolment, then each block through the append checks.
fn check_server_append(built: &[Built]) {
    let Some(root) = built.first() else { return };
    let Ok(root_head) = check_root(&root.encoded, &app_public_key) else {
        assert!(judge_root(root).is_err(), "check_root refused a good root");
        return;
    };
    assert_eq!(root_head, root.block.hash());
    let mut stored = vec![root.encoded.clone()];
    let mut state = stored_state(&stored, &app_public_key).expect("an accepted root verifies");
    let mut model = judge_root(root).expect("the model accepts the root");
    for b in &built[1..] {
        let allowed = match b.block.unsigned.body {
            BlockBody::Root { .. } => false,
            BlockBody::DeviceAdded { .. } => true,
            BlockBody::DeviceRevoked { .. } => b.purpose == Purpose::Manage,
        };
        let block = match decode_for_append(&b.encoded, b.purpose) {
            Ok(block) => {
                assert!(
                    allowed,
                    "a {:?} assertion appended {:?}",
                    b.purpose, b.block.unsigned.body
                );
                block
            }
            Err(e) => {
                assert!(
                    !allowed && e.code == ErrorCode::AssertionWrongPurpose,
                    "{:?}",
                    e.code
                );
                continue;
            }
        };
        assert_eq!(block, b.block);
        let head = Head {
            len: stored.len(),
            hash: state.head,
        };
        let at_index = usize::try_from(block.unsigned.index)
            .ok()
            .and_then(|i| stored.get(i));
        if let Err(e) = check_extends(&block, &b.encoded, head, at_index.map(Vec::as_slice)) {
            assert!(
                block.unsigned.index != stored.len() as u64
                    || block.unsigned.prev_hash != state.head,
                "check_extends refused a block on the head: {:?}",
                e.code
            );
            continue;
        }
        // The rules, judged on the server's own state (what it stored so far).
        let expected = judge_next(&mut model, b);
        let before = state.clone();
        match (apply_append(&mut state, &block), expected) {
            (Ok(accepted), Ok(())) => {
                tally("append:accepted");
                assert_eq!(accepted.index, stored.len());
                assert_eq!(accepted.hash, block.hash());
                same_state(&state, &model);
                stored.push(b.encoded.clone());
            }
            (Err(e), Err(stages)) => {
                tally(&format!(
                    "append:{}",
                    e.detail.as_deref().unwrap_or_default()
                ));
                let allowed = first_fault(&stages);
                assert_eq!(e.code, ErrorCode::InvalidBlock);
                let detail = e.detail.unwrap_or_default();
                assert!(
                    allowed.iter().any(|f| f.as_str() == detail),
                    "{detail}, expected one of {allowed:?}"
                );
                assert_eq!(state, before, "a refused block leaves the state alone");
            }
            (Ok(_), Err(stages)) => panic!("appended a block that breaks {stages:?}"),
            (Err(e), Ok(())) => panic!("refused a good block: {:?}", e.detail),
        }
    }
    // What the server stored, verified as a whole chain, is the state it built block by block.
    let again = stored_state(&stored, &app_public_key).expect("what the server stores verifies");
    assert_eq!(again, state);
    let head = Head {
        len: stored.len(),
        hash: state.head,
    };
    for (i, encoded) in stored.iter().enumerate().skip(1) {
        let block = Block::decode(encoded).expect("stored blocks decode");
        let e =
            check_extends(&block, encoded, head, Some(encoded)).expect_err("a replay is refused");
        assert_eq!(e.code, ErrorCode::ChainBlockReplayed, "replay of block {i}");
    }
}

fn fuzz_raw(data: &[u8]) {
    if let Ok(block) = Block::decode(data) {
        // What decodes must encode back to the same bytes.
        assert_eq!(block.encode(), data);
        for purpose in [Purpose::Recover, Purpose::Manage] {
            if let Ok(again) = decode_for_append(data, purpose) {
                assert_eq!(again, block);
            }
        }
    }
    if let Ok(head) = check_root(data, &app_public_key) {
        assert_eq!(Block::decode(data).map(|b| b.hash()), Ok(head));
    }
    // The first byte says where to cut the rest into blocks.
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut).max(1);
    let blocks: Vec<Vec<u8>> = rest
        .chunks(cut.min(rest.len().max(1)))
        .map(<[u8]>::to_vec)
        .collect();
    if let Ok(state) = verify_chain(&blocks, &app_public_key) {
        assert_eq!(state.len, blocks.len());
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((b'b', rest)) = data.split_first() else {
        fuzz_raw(data);
        return;
    };
    let ops: Vec<Op> = rest
        .chunks_exact(3)
        .take(MAX_OPS)
        .map(|c| Op {
            kind: c[0],
            sel: c[1],
            flags: c[2],
        })
        .collect();
    let built = build(&ops);
    check_verify_chain(&built);
    check_server_append(&built);
});
