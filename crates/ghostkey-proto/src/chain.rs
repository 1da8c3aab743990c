//! The device chain (DESIGN.md §4): an append-only, hash-linked list of signed blocks per
//! user, and its verification.
//!
//! Encoding, version 1 (integers big-endian, `bytes` = u16 length then the bytes):
//!
//! ```text
//! block    = version:u8(=1) kind:u8 index:u64 prev_hash:[32] app_id:bytes user_id:bytes
//!            body author signature:[64]
//! kind 1 (root):            vd_signing:[32] vd_encryption:[32] user_public:[32]
//!                           user_key_for_vd:bytes          author = kid:bytes (an app key)
//! kind 2 (device added):    signing:[32] encryption:[32] user_key_for_device:bytes
//!                                                          author = signing key:[32]
//! kind 3 (device revoked):  revoked signing key:[32]       author = signing key:[32]
//! ```
//!
//! The signature is Ed25519 over `"ghostkey/chain/v1/" + kind name + "\0"` followed by
//! every byte of the block before the signature, so a signature for one kind of block can
//! never pass for another. A block's hash is SHA-256 over all its bytes, signature
//! included; each block carries the hash of the one before (the root, 32 zero bytes).
//! `user_key_*` is the user's X25519 private key in a NaCl sealed box to that device's
//! X25519 key; this module only carries it.

use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};

/// The only encoding version so far.
pub const CHAIN_FORMAT_V1: u8 = 1;
/// Longest chain a verifier accepts (a device added every day for 27 years).
pub const MAX_BLOCKS: usize = 10_000;
/// Longest encoded block.
pub const MAX_BLOCK_LEN: usize = 2048;

/// The kinds of block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind {
    /// The first block, endorsed by the app provider.
    Root = 1,
    /// A device admitted by a valid device.
    DeviceAdded = 2,
    /// A device revoked by a valid device.
    DeviceRevoked = 3,
}

impl BlockKind {
    fn from_byte(b: u8) -> Option<BlockKind> {
        match b {
            1 => Some(BlockKind::Root),
            2 => Some(BlockKind::DeviceAdded),
            3 => Some(BlockKind::DeviceRevoked),
            _ => None,
        }
    }

    /// The name in the signature's domain separator.
    pub fn name(self) -> &'static str {
        match self {
            BlockKind::Root => "root",
            BlockKind::DeviceAdded => "device-added",
            BlockKind::DeviceRevoked => "device-revoked",
        }
    }
}

/// What a block says, by kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockBody {
    /// Binds (app, user) to the virtual device and the user public key.
    Root {
        /// Virtual device's Ed25519 key.
        vd_signing: [u8; 32],
        /// Virtual device's X25519 key.
        vd_encryption: [u8; 32],
        /// The user's X25519 public key.
        user_public: [u8; 32],
        /// The user private key, sealed to the virtual device.
        user_key_for_vd: Vec<u8>,
    },
    /// Admits a device.
    DeviceAdded {
        /// The new device's Ed25519 key.
        signing: [u8; 32],
        /// The new device's X25519 key.
        encryption: [u8; 32],
        /// The user private key, sealed to the new device.
        user_key_for_device: Vec<u8>,
    },
    /// Revokes a device.
    DeviceRevoked {
        /// The revoked device's Ed25519 key.
        revoked: [u8; 32],
    },
}

impl BlockBody {
    /// The kind.
    pub fn kind(&self) -> BlockKind {
        match self {
            BlockBody::Root { .. } => BlockKind::Root,
            BlockBody::DeviceAdded { .. } => BlockKind::DeviceAdded,
            BlockBody::DeviceRevoked { .. } => BlockKind::DeviceRevoked,
        }
    }
}

/// Who signed a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Author {
    /// An app key, by key id (root blocks).
    App(String),
    /// A device of the chain, by Ed25519 key.
    Device([u8; 32]),
}

/// A block without its signature: what gets signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsignedBlock {
    /// Position in the chain, from 0.
    pub index: u64,
    /// Hash of the previous block (zeros for the root).
    pub prev_hash: [u8; 32],
    /// The app.
    pub app_id: String,
    /// The user.
    pub user_id: String,
    /// What it says.
    pub body: BlockBody,
    /// Who signs it.
    pub author: Author,
}

/// A signed block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The signed part.
    pub unsigned: UnsignedBlock,
    /// Ed25519 signature.
    pub signature: [u8; 64],
}

/// Why bytes are not a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Unknown encoding version.
    #[error("unknown block format version")]
    Version,
    /// Unknown kind byte.
    #[error("unknown block kind")]
    Kind,
    /// Ends too early, or has bytes after the signature.
    #[error("truncated or trailing bytes")]
    Length,
    /// An id is not UTF-8.
    #[error("an id is not UTF-8")]
    Utf8,
    /// Longer than a block may be.
    #[error("block too long")]
    TooLong,
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    // Lengths are bounded by MAX_BLOCK_LEN when encoding our own blocks.
    let len = u16::try_from(b.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&b[..usize::from(len)]);
}

impl UnsignedBlock {
    /// The encoding of everything before the signature.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.push(CHAIN_FORMAT_V1);
        out.push(self.body.kind() as u8);
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.prev_hash);
        put_bytes(&mut out, self.app_id.as_bytes());
        put_bytes(&mut out, self.user_id.as_bytes());
        match &self.body {
            BlockBody::Root {
                vd_signing,
                vd_encryption,
                user_public,
                user_key_for_vd,
            } => {
                out.extend_from_slice(vd_signing);
                out.extend_from_slice(vd_encryption);
                out.extend_from_slice(user_public);
                put_bytes(&mut out, user_key_for_vd);
            }
            BlockBody::DeviceAdded {
                signing,
                encryption,
                user_key_for_device,
            } => {
                out.extend_from_slice(signing);
                out.extend_from_slice(encryption);
                put_bytes(&mut out, user_key_for_device);
            }
            BlockBody::DeviceRevoked { revoked } => out.extend_from_slice(revoked),
        }
        match &self.author {
            Author::App(kid) => put_bytes(&mut out, kid.as_bytes()),
            Author::Device(key) => out.extend_from_slice(key),
        }
        out
    }

    /// The exact bytes the author signs: domain separator, then the encoding.
    pub fn signing_input(&self) -> Vec<u8> {
        let mut out = format!("ghostkey/chain/v1/{}\0", self.body.kind().name()).into_bytes();
        out.extend_from_slice(&self.encode());
        out
    }
}

impl Block {
    /// The full encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.unsigned.encode();
        out.extend_from_slice(&self.signature);
        out
    }

    /// SHA-256 of the full encoding: what the next block links to.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.encode()).into()
    }

    /// Parses one block.
    pub fn decode(bytes: &[u8]) -> Result<Block, DecodeError> {
        if bytes.len() > MAX_BLOCK_LEN {
            return Err(DecodeError::TooLong);
        }
        let mut r = Reader(bytes);
        if r.byte()? != CHAIN_FORMAT_V1 {
            return Err(DecodeError::Version);
        }
        let kind = BlockKind::from_byte(r.byte()?).ok_or(DecodeError::Kind)?;
        let index = u64::from_be_bytes(r.array()?);
        let prev_hash = r.array()?;
        let app_id = r.string()?;
        let user_id = r.string()?;
        let body = match kind {
            BlockKind::Root => BlockBody::Root {
                vd_signing: r.array()?,
                vd_encryption: r.array()?,
                user_public: r.array()?,
                user_key_for_vd: r.bytes()?.to_vec(),
            },
            BlockKind::DeviceAdded => BlockBody::DeviceAdded {
                signing: r.array()?,
                encryption: r.array()?,
                user_key_for_device: r.bytes()?.to_vec(),
            },
            BlockKind::DeviceRevoked => BlockBody::DeviceRevoked {
                revoked: r.array()?,
            },
        };
        let author = match kind {
            BlockKind::Root => Author::App(r.string()?),
            _ => Author::Device(r.array()?),
        };
        let signature = r.array()?;
        if !r.0.is_empty() {
            return Err(DecodeError::Length);
        }
        Ok(Block {
            unsigned: UnsignedBlock {
                index,
                prev_hash,
                app_id,
                user_id,
                body,
                author,
            },
            signature,
        })
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Length);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn byte(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.take(N)?.try_into().map_err(|_| DecodeError::Length)
    }
    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = u16::from_be_bytes(self.array()?);
        self.take(usize::from(len))
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| DecodeError::Utf8)
    }
}

/// Why a chain is bad. Each has a stable code (`as_str`) that the server also answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainFault {
    /// The bytes are not a block.
    #[error("malformed block: {0}")]
    Malformed(DecodeError),
    /// The chain is empty.
    #[error("the chain is empty")]
    Empty,
    /// The first block is not a root.
    #[error("the first block is not a root")]
    NoRoot,
    /// A root block after the first.
    #[error("a second root block")]
    SecondRoot,
    /// The block's index is not its position (a block dropped or reordered).
    #[error("the block's index is not its position")]
    WrongIndex,
    /// The block does not link to the hash of the one before.
    #[error("the block does not link to the previous block")]
    BrokenLink,
    /// The block names another app or user than the root.
    #[error("the block belongs to another app or user")]
    WrongOwner,
    /// The root is not signed by one of the app's pinned keys.
    #[error("the root is not signed by a key of the app")]
    RootNotSignedByApp,
    /// The author is not, and never was, a device of the chain.
    #[error("the author is not a device of the chain")]
    UnknownAuthor,
    /// The author was a device of the chain, but was revoked before this block.
    #[error("the author was revoked")]
    RevokedAuthor,
    /// The signature does not verify.
    #[error("the signature does not verify")]
    BadSignature,
    /// A device added twice.
    #[error("the device is already in the chain")]
    DuplicateDevice,
    /// Revoking a device that is not valid.
    #[error("the revoked device is not a valid device")]
    RevokeUnknown,
    /// Revoking the virtual device.
    #[error("the virtual device cannot be revoked")]
    RevokeVirtualDevice,
    /// Longer than a verifier accepts.
    #[error("the chain is too long")]
    TooLong,
}

impl ChainFault {
    /// The stable reason code.
    pub fn as_str(self) -> &'static str {
        match self {
            ChainFault::Malformed(_) => "malformed",
            ChainFault::Empty => "empty",
            ChainFault::NoRoot => "no_root",
            ChainFault::SecondRoot => "second_root",
            ChainFault::WrongIndex => "wrong_index",
            ChainFault::BrokenLink => "broken_link",
            ChainFault::WrongOwner => "wrong_owner",
            ChainFault::RootNotSignedByApp => "root_not_signed_by_app",
            ChainFault::UnknownAuthor => "unknown_author",
            ChainFault::RevokedAuthor => "revoked_author",
            ChainFault::BadSignature => "bad_signature",
            ChainFault::DuplicateDevice => "duplicate_device",
            ChainFault::RevokeUnknown => "revoke_unknown",
            ChainFault::RevokeVirtualDevice => "revoke_virtual_device",
            ChainFault::TooLong => "too_long",
        }
    }
}

/// A bad chain: which block, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("block {index}: {fault}")]
pub struct ChainError {
    /// The index of the first bad block.
    pub index: usize,
    /// Why.
    pub fault: ChainFault,
}

/// A device of a verified chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainDevice {
    /// Ed25519 key (the device's identity).
    pub signing: [u8; 32],
    /// X25519 key.
    pub encryption: [u8; 32],
    /// The user private key sealed to this device.
    pub user_key: Vec<u8>,
    /// Whether it is the virtual device.
    pub is_virtual: bool,
    /// The index of the block that revoked it, if any.
    pub revoked_at: Option<usize>,
}

/// The state a valid chain describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainState {
    /// The app.
    pub app_id: String,
    /// The user.
    pub user_id: String,
    /// The user's X25519 public key.
    pub user_public: [u8; 32],
    /// Every device ever admitted, in order.
    pub devices: Vec<ChainDevice>,
    /// The number of blocks.
    pub len: usize,
    /// The hash of the last block.
    pub head: [u8; 32],
}

impl ChainState {
    /// The device with this signing key, if it is valid now.
    pub fn valid_device(&self, signing: &[u8; 32]) -> Option<&ChainDevice> {
        self.devices
            .iter()
            .find(|d| &d.signing == signing && d.revoked_at.is_none())
    }

    /// Checks one more block against this state and applies it.
    pub fn apply(&mut self, block: &Block) -> Result<(), ChainFault> {
        if self.len >= MAX_BLOCKS {
            return Err(ChainFault::TooLong);
        }
        let b = &block.unsigned;
        if matches!(b.body, BlockBody::Root { .. }) {
            return Err(ChainFault::SecondRoot);
        }
        if b.index != self.len as u64 {
            return Err(ChainFault::WrongIndex);
        }
        if b.prev_hash != self.head {
            return Err(ChainFault::BrokenLink);
        }
        if b.app_id != self.app_id || b.user_id != self.user_id {
            return Err(ChainFault::WrongOwner);
        }
        let Author::Device(author) = &b.author else {
            return Err(ChainFault::UnknownAuthor);
        };
        match self.devices.iter().find(|d| &d.signing == author) {
            None => return Err(ChainFault::UnknownAuthor),
            Some(d) if d.revoked_at.is_some() => return Err(ChainFault::RevokedAuthor),
            Some(_) => {}
        }
        verify_signature(author, block).map_err(|_| ChainFault::BadSignature)?;
        match &b.body {
            BlockBody::DeviceAdded {
                signing,
                encryption,
                user_key_for_device,
            } => {
                if self.devices.iter().any(|d| &d.signing == signing) {
                    return Err(ChainFault::DuplicateDevice);
                }
                self.devices.push(ChainDevice {
                    signing: *signing,
                    encryption: *encryption,
                    user_key: user_key_for_device.clone(),
                    is_virtual: false,
                    revoked_at: None,
                });
            }
            BlockBody::DeviceRevoked { revoked } => {
                let index = self.len;
                let target = self
                    .devices
                    .iter_mut()
                    .find(|d| &d.signing == revoked && d.revoked_at.is_none())
                    .ok_or(ChainFault::RevokeUnknown)?;
                if target.is_virtual {
                    return Err(ChainFault::RevokeVirtualDevice);
                }
                target.revoked_at = Some(index);
            }
            BlockBody::Root { .. } => return Err(ChainFault::SecondRoot),
        }
        self.len += 1;
        self.head = block.hash();
        Ok(())
    }
}

fn verify_signature(key: &[u8; 32], block: &Block) -> Result<(), ()> {
    let key = VerifyingKey::from_bytes(key).map_err(|_| ())?;
    if key.is_weak() {
        return Err(());
    }
    let signature = Signature::from_bytes(&block.signature);
    key.verify_strict(&block.unsigned.signing_input(), &signature)
        .map_err(|_| ())
}

/// Checks a root block against the app's keys (kid → Ed25519 key) and starts the state.
pub fn verify_root(
    block: &Block,
    app_keys: &dyn Fn(&str) -> Option<[u8; 32]>,
) -> Result<ChainState, ChainFault> {
    let b = &block.unsigned;
    let BlockBody::Root {
        vd_signing,
        vd_encryption,
        user_public,
        user_key_for_vd,
    } = &b.body
    else {
        return Err(ChainFault::NoRoot);
    };
    if b.index != 0 {
        return Err(ChainFault::WrongIndex);
    }
    if b.prev_hash != [0u8; 32] {
        return Err(ChainFault::BrokenLink);
    }
    let Author::App(kid) = &b.author else {
        return Err(ChainFault::RootNotSignedByApp);
    };
    let key = app_keys(kid).ok_or(ChainFault::RootNotSignedByApp)?;
    verify_signature(&key, block).map_err(|_| ChainFault::RootNotSignedByApp)?;
    Ok(ChainState {
        app_id: b.app_id.clone(),
        user_id: b.user_id.clone(),
        user_public: *user_public,
        devices: vec![ChainDevice {
            signing: *vd_signing,
            encryption: *vd_encryption,
            user_key: user_key_for_vd.clone(),
            is_virtual: true,
            revoked_at: None,
        }],
        len: 1,
        head: block.hash(),
    })
}

/// Verifies a whole chain of encoded blocks from the app's pinned keys; the error names
/// the first bad block and why.
pub fn verify_chain(
    blocks: &[Vec<u8>],
    app_keys: &dyn Fn(&str) -> Option<[u8; 32]>,
) -> Result<ChainState, ChainError> {
    if blocks.len() > MAX_BLOCKS {
        return Err(ChainError {
            index: MAX_BLOCKS,
            fault: ChainFault::TooLong,
        });
    }
    let decode = |index: usize| {
        Block::decode(&blocks[index]).map_err(|e| ChainError {
            index,
            fault: ChainFault::Malformed(e),
        })
    };
    if blocks.is_empty() {
        return Err(ChainError {
            index: 0,
            fault: ChainFault::Empty,
        });
    }
    let root = decode(0)?;
    let mut state = verify_root(&root, app_keys).map_err(|fault| ChainError { index: 0, fault })?;
    for index in 1..blocks.len() {
        let block = decode(index)?;
        state
            .apply(&block)
            .map_err(|fault| ChainError { index, fault })?;
    }
    Ok(state)
}
