//! The server's checks on the device chain: Ghostkey validates each block against the
//! whole chain before appending it (the clients verify the chain themselves too).

use ghostkey_proto::assertion::Purpose;
use ghostkey_proto::chain::{verify_chain, verify_root, Block, BlockBody};
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

/// Checks `new` against the stored chain: it must extend the head, be authored by a
/// device valid at that point, and be allowed by the purpose of the carrying assertion.
pub fn check_append(
    stored: &[Vec<u8>],
    new: &[u8],
    purpose: Purpose,
    app_keys: &dyn Fn(&str) -> Option<[u8; 32]>,
) -> Result<Accepted, Error> {
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
    let index = usize::try_from(block.unsigned.index).unwrap_or(usize::MAX);
    if index < stored.len() && stored[index] == new {
        return Err(Error::new(ErrorCode::ChainBlockReplayed));
    }
    // The stored chain was checked block by block as it grew; replaying it rebuilds the
    // state (valid devices, head) the new block is judged against.
    let mut state = verify_chain(stored, app_keys)
        .map_err(|e| Error::internal(format!("stored chain does not verify: {e}")))?;
    if index != state.len || block.unsigned.prev_hash != state.head {
        return Err(Error::with_detail(
            ErrorCode::ChainFork,
            format!(
                "the chain has {} blocks; fetch it and build on its head",
                state.len
            ),
        ));
    }
    state
        .apply(&block)
        .map_err(|fault| Error::with_detail(ErrorCode::InvalidBlock, fault.as_str()))?;
    Ok(Accepted {
        index,
        hash: state.head,
    })
}
