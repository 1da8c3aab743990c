//! The server's checks on the device chain: Ghostkey validates each block against the
//! whole chain before appending it (the clients verify the chain themselves too).

use ghostkey_proto::assertion::Purpose;
use ghostkey_proto::chain::{verify_chain, verify_root, Block, BlockBody, ChainState};
use ghostkey_proto::ErrorCode;

use crate::error::Error;

/// A block accepted for appending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Its index.
    pub index: usize,
    /// Its hash.
    pub hash: [u8; 32],
}

/// Checks a root block's endorsement by one of the app's keys.
pub fn check_root(
    root: &[u8],
    app_keys: &dyn Fn(&str) -> Option<[u8; 32]>,
) -> Result<[u8; 32], Error> {
    let block = Block::decode(root)
        .map_err(|e| Error::with_detail(ErrorCode::InvalidBlock, e.to_string()))?;
    verify_root(&block, app_keys)
        .map(|state| state.head)
        .map_err(|fault| {
            Error::with_detail(ErrorCode::InvalidBlock, format!("root: {}", fault.as_str()))
        })
}

/// Decodes a block to append and checks that the carrying assertion's purpose allows it.
pub fn decode_for_append(new: &[u8], purpose: Purpose) -> Result<Block, Error> {
    let block = Block::decode(new)
        .map_err(|e| Error::with_detail(ErrorCode::InvalidBlock, e.to_string()))?;
    let allowed: &[Purpose] = match block.unsigned.body {
        BlockBody::DeviceAdded { .. } => &[Purpose::Recover, Purpose::Manage],
        BlockBody::DeviceRevoked { .. } => &[Purpose::Manage],
        BlockBody::Root { .. } => &[],
    };
    if !allowed.contains(&purpose) {
        return Err(Error::with_detail(
            ErrorCode::AssertionWrongPurpose,
            "admitting a device needs `recover` or `manage`, revoking one `manage`; roots come with the enrolment",
        ));
    }
    Ok(block)
}

/// The stored chain's length and the hash of its last block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Blocks stored.
    pub len: usize,
    /// The hash of the last one.
    pub hash: [u8; 32],
}

/// Checks, before any signature, that `block` extends the stored `head`: a replay of a
/// stored block (`stored_at_index` is the stored block at the new block's index, if any)
/// or a stale or forked block is refused at the cost of a comparison.
pub fn check_extends(
    block: &Block,
    encoded: &[u8],
    head: Head,
    stored_at_index: Option<&[u8]>,
) -> Result<(), Error> {
    if stored_at_index == Some(encoded) {
        return Err(Error::new(ErrorCode::ChainBlockReplayed));
    }
    let index = usize::try_from(block.unsigned.index).unwrap_or(usize::MAX);
    if index != head.len || block.unsigned.prev_hash != head.hash {
        return Err(Error::with_detail(
            ErrorCode::ChainFork,
            format!(
                "the chain has {} blocks; fetch it and build on its head",
                head.len
            ),
        ));
    }
    Ok(())
}

/// Judges a block that extends the head against the verified state of the stored chain
/// (valid devices at that point), and applies it.
pub fn apply_append(state: &mut ChainState, block: &Block) -> Result<Accepted, Error> {
    state
        .apply(block)
        .map_err(|fault| Error::with_detail(ErrorCode::InvalidBlock, fault.as_str()))?;
    Ok(Accepted {
        index: state.len - 1,
        hash: state.head,
    })
}

/// Verifies a whole stored chain (checked block by block as it grew) into the state the
/// next block is judged against.
pub fn stored_state(
    stored: &[Vec<u8>],
    app_keys: &dyn Fn(&str) -> Option<[u8; 32]>,
) -> Result<ChainState, Error> {
    verify_chain(stored, app_keys)
        .map_err(|e| Error::internal(format!("stored chain does not verify: {e}")))
}
