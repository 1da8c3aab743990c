//! Building and reading the device chain (format and verification in
//! [`ghostkey_proto::chain`]): the root the app provider endorses, a device admitted or
//! revoked by a valid device, and the user key each device can unseal.

use crypto_box::{PublicKey, SecretKey};
use ed25519_dalek::Signer;
use ghostkey_proto::chain::{Author, Block, BlockBody, ChainState, UnsignedBlock};
use zeroize::Zeroizing;

use crate::device::{DeviceKeys, UserKeys, VirtualDevice};
use crate::kit::{AppSigningKey, KitError};

/// Why a chain operation failed on the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainUseError {
    /// This device is not a valid device of the chain.
    #[error("this device is not a valid device of the chain")]
    NotADevice,
    /// The sealed user key does not open with this device's key.
    #[error("the user key sealed to this device does not open")]
    UserKey,
    /// Sealing failed.
    #[error("sealing failed")]
    Seal,
    /// The block to endorse is not a root for the expected app and user.
    #[error("refusing to endorse: {0}")]
    Endorse(&'static str),
}

/// Seals `plaintext` to an X25519 public key (NaCl `crypto_box_seal`).
pub fn seal_to(recipient: &[u8; 32], plaintext: &[u8]) -> Result<Vec<u8>, ChainUseError> {
    PublicKey::from_bytes(*recipient)
        .seal(&mut rand::rngs::OsRng, plaintext)
        .map_err(|_| ChainUseError::Seal)
}

/// Opens a sealed box with an X25519 secret key (NaCl `crypto_box_seal_open`).
pub fn open_sealed(secret: &[u8; 32], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    SecretKey::from_bytes(*secret)
        .unseal(sealed)
        .ok()
        .map(Zeroizing::new)
}

/// The root block for a new user, to be endorsed by the app provider: it binds (app,
/// user) to the virtual device and the user public key, with the user private key sealed
/// to the virtual device.
pub fn root_block(
    vd: &VirtualDevice,
    user: &UserKeys,
    kid: &str,
) -> Result<UnsignedBlock, ChainUseError> {
    Ok(UnsignedBlock {
        index: 0,
        prev_hash: [0u8; 32],
        app_id: vd.app_id().to_owned(),
        user_id: vd.user_id().to_owned(),
        body: BlockBody::Root {
            vd_signing: vd.keys().signing_public(),
            vd_encryption: vd.keys().encryption_public(),
            user_public: user.public(),
            user_key_for_vd: seal_to(&vd.keys().encryption_public(), user.secret().as_bytes())?,
        },
        author: Author::App(kid.to_owned()),
    })
}

impl AppSigningKey {
    /// The app provider endorses a user's root block. It checks that the block is a root
    /// for `app_id` and the user it has authenticated, naming this key; it sees only
    /// public keys and a sealed box.
    pub fn endorse_root(
        &self,
        block: &UnsignedBlock,
        app_id: &str,
        user_id: &str,
    ) -> Result<Block, KitError> {
        let ok = matches!(block.body, BlockBody::Root { .. })
            && block.app_id == app_id
            && block.user_id == user_id
            && block.author == Author::App(self.kid().to_owned());
        if !ok {
            return Err(KitError::Sign(
                "not a root block for this app, user and key".into(),
            ));
        }
        Ok(Block {
            signature: self.sign_bytes(&block.signing_input()),
            unsigned: block.clone(),
        })
    }
}

fn sign(author: &DeviceKeys, unsigned: UnsignedBlock) -> Block {
    Block {
        signature: author
            .signing_key()
            .sign(&unsigned.signing_input())
            .to_bytes(),
        unsigned,
    }
}

/// The next block admitting `new` to the chain, signed by `author` (a valid device of it,
/// virtual or physical); the user private key is sealed to the new device.
pub fn add_device(
    state: &ChainState,
    author: &DeviceKeys,
    new: &DeviceKeys,
    user: &UserKeys,
) -> Result<Block, ChainUseError> {
    if state.valid_device(&author.signing_public()).is_none() {
        return Err(ChainUseError::NotADevice);
    }
    Ok(sign(
        author,
        UnsignedBlock {
            index: state.len as u64,
            prev_hash: state.head,
            app_id: state.app_id.clone(),
            user_id: state.user_id.clone(),
            body: BlockBody::DeviceAdded {
                signing: new.signing_public(),
                encryption: new.encryption_public(),
                user_key_for_device: seal_to(&new.encryption_public(), user.secret().as_bytes())?,
            },
            author: Author::Device(author.signing_public()),
        },
    ))
}

/// The next block revoking the device with Ed25519 key `revoked`, signed by `author`.
pub fn revoke_device(
    state: &ChainState,
    author: &DeviceKeys,
    revoked: &[u8; 32],
) -> Result<Block, ChainUseError> {
    if state.valid_device(&author.signing_public()).is_none() {
        return Err(ChainUseError::NotADevice);
    }
    Ok(sign(
        author,
        UnsignedBlock {
            index: state.len as u64,
            prev_hash: state.head,
            app_id: state.app_id.clone(),
            user_id: state.user_id.clone(),
            body: BlockBody::DeviceRevoked { revoked: *revoked },
            author: Author::Device(author.signing_public()),
        },
    ))
}

/// The user key pair, unsealed from the chain with one of the user's valid devices.
pub fn user_keys(state: &ChainState, device: &DeviceKeys) -> Result<UserKeys, ChainUseError> {
    let entry = state
        .valid_device(&device.signing_public())
        .ok_or(ChainUseError::NotADevice)?;
    let secret = open_sealed(device.encryption_secret().as_bytes(), &entry.user_key)
        .ok_or(ChainUseError::UserKey)?;
    let secret: [u8; 32] = secret
        .as_slice()
        .try_into()
        .map_err(|_| ChainUseError::UserKey)?;
    let keys = UserKeys::from_bytes(&secret);
    if keys.public() != state.user_public {
        return Err(ChainUseError::UserKey);
    }
    Ok(keys)
}
