//! The verified device chain and envelopes. Only `Chain.verify` and `Chain.apply` make a
//! `Chain`, so every chain JavaScript holds has been verified from the app's pinned keys.

use std::collections::BTreeMap;

use ghostkey_client::chain::{add_device, revoke_device, user_keys};
use ghostkey_client::envelope::Envelope;
use ghostkey_client::proto::b64;
use ghostkey_client::proto::chain::{verify_chain, Block, ChainError, ChainFault, ChainState};
use js_sys::{Array, Uint8Array};
use wasm_bindgen::prelude::*;
use zeroize::Zeroize;

use crate::error::{Failure, Result};
use crate::keys::{public32, DeviceKeys, UserKeys};

/// A verified device chain (public data only).
#[wasm_bindgen]
pub struct Chain(pub(crate) ChainState);

#[wasm_bindgen]
impl Chain {
    /// Verifies `blocks` (an array of Uint8Array) from `pinned_json`, a JSON object of
    /// key id to base64url Ed25519 public key.
    pub fn verify(blocks: &Array, pinned_json: &str) -> Result<Chain> {
        let pinned: BTreeMap<String, String> = serde_json::from_str(pinned_json).map_err(|_| {
            Failure::local(
                "bad_format",
                "pinned keys are an object of key id to base64url public key",
            )
        })?;
        let pinned = pinned
            .into_iter()
            .map(|(kid, key)| Ok((kid, public32(&key, "a pinned app key")?)))
            .collect::<Result<BTreeMap<String, [u8; 32]>>>()?;
        let mut encoded = Vec::with_capacity(blocks.length() as usize);
        for block in blocks.iter() {
            let block = block
                .dyn_into::<Uint8Array>()
                .map_err(|_| Failure::local("bad_format", "each block is a Uint8Array"))?;
            encoded.push(block.to_vec());
        }
        let state = verify_chain(&encoded, &|kid: &str| pinned.get(kid).copied())?;
        Ok(Chain(state))
    }

    /// The app id.
    #[wasm_bindgen(getter, js_name = appId)]
    pub fn app_id(&self) -> String {
        self.0.app_id.clone()
    }

    /// The user id.
    #[wasm_bindgen(getter, js_name = userId)]
    pub fn user_id(&self) -> String {
        self.0.user_id.clone()
    }

    /// The user's X25519 public key, base64url.
    #[wasm_bindgen(getter, js_name = userPublicKey)]
    pub fn user_public_key(&self) -> String {
        b64::encode(self.0.user_public)
    }

    /// The number of blocks.
    #[wasm_bindgen(getter)]
    pub fn length(&self) -> usize {
        self.0.len
    }

    /// The hash of the last block, base64url.
    #[wasm_bindgen(getter)]
    pub fn head(&self) -> String {
        b64::encode(self.0.head)
    }

    /// The devices, as JSON text (`signing_key`, `encryption_key`, `is_virtual`,
    /// `revoked_at`).
    #[wasm_bindgen(js_name = devicesJson)]
    pub fn devices_json(&self) -> String {
        let devices: Vec<serde_json::Value> = self
            .0
            .devices
            .iter()
            .map(|d| {
                let mut v = serde_json::json!({
                    "signing_key": b64::encode(d.signing),
                    "encryption_key": b64::encode(d.encryption),
                    "is_virtual": d.is_virtual,
                });
                if let Some(at) = d.revoked_at {
                    v["revoked_at"] = at.into();
                }
                v
            })
            .collect();
        serde_json::Value::from(devices).to_string()
    }

    /// Whether the device with this Ed25519 key (base64url) is valid now.
    #[wasm_bindgen(js_name = isValidDevice)]
    pub fn is_valid_device(&self, signing_key: &str) -> bool {
        b64::decode_array::<32>(signing_key).is_some_and(|key| self.0.valid_device(&key).is_some())
    }

    /// The chain with `block` appended, checked by the same rules.
    pub fn apply(&self, block: &[u8]) -> Result<Chain> {
        let fail = |fault| ChainError {
            index: self.0.len,
            fault,
        };
        let block = Block::decode(block).map_err(|e| fail(ChainFault::Malformed(e)))?;
        let mut next = self.0.clone();
        next.apply(&block).map_err(fail)?;
        Ok(Chain(next))
    }

    /// The next block, admitting `new_device`, signed by `author`.
    #[wasm_bindgen(js_name = admitDevice)]
    pub fn admit_device(
        &self,
        author: &DeviceKeys,
        new_device: &DeviceKeys,
        user: &UserKeys,
    ) -> Result<Vec<u8>> {
        Ok(add_device(&self.0, &author.0, &new_device.0, &user.0)?.encode())
    }

    /// The next block, revoking the device with Ed25519 key `revoked` (base64url).
    #[wasm_bindgen(js_name = revokeDevice)]
    pub fn revoke_device(&self, author: &DeviceKeys, revoked: &str) -> Result<Vec<u8>> {
        let revoked = public32(revoked, "the revoked device's key")?;
        Ok(revoke_device(&self.0, &author.0, &revoked)?.encode())
    }

    /// The user key pair, unsealed with a valid device of the chain.
    #[wasm_bindgen(js_name = userKeys)]
    pub fn user_keys(&self, device: &DeviceKeys) -> Result<UserKeys> {
        Ok(UserKeys(user_keys(&self.0, &device.0)?))
    }
}

/// Collects the recipients of an envelope, then seals it.
#[wasm_bindgen]
#[derive(Default)]
pub struct EnvelopeSealer {
    recipients: Vec<ChainState>,
}

#[wasm_bindgen]
impl EnvelopeSealer {
    /// No recipients yet.
    #[wasm_bindgen(constructor)]
    pub fn new() -> EnvelopeSealer {
        EnvelopeSealer::default()
    }

    /// Adds the user of a verified chain as a recipient.
    #[wasm_bindgen(js_name = addRecipient)]
    pub fn add_recipient(&mut self, chain: &Chain) {
        self.recipients.push(chain.0.clone());
    }

    /// Encrypts `document` for the recipients, signed by `author` (a device of
    /// `author_user`). The plaintext's copy in WebAssembly memory is wiped.
    pub fn seal(
        &self,
        author_user: &str,
        author: &DeviceKeys,
        mut document: Vec<u8>,
    ) -> Result<Vec<u8>> {
        let recipients: Vec<&ChainState> = self.recipients.iter().collect();
        let sealed = Envelope::seal(author_user, &author.0, &recipients, &document);
        document.zeroize();
        Ok(sealed?.encode()?)
    }
}

/// The author of an envelope (unverified), as JSON text `{ "userId", "deviceKey" }`.
#[wasm_bindgen(js_name = envelopeAuthor)]
pub fn envelope_author(envelope: &[u8]) -> Result<String> {
    let e = Envelope::decode(envelope)?;
    Ok(serde_json::json!({
        "userId": e.author_user,
        "deviceKey": b64::encode(e.author_device),
    })
    .to_string())
}

/// Opens an envelope as `reader` after checking its author against `author_chain`.
#[wasm_bindgen(js_name = openEnvelope)]
pub fn open_envelope(
    envelope: &[u8],
    reader: &str,
    keys: &UserKeys,
    author_chain: &Chain,
) -> Result<Uint8Array> {
    let document = Envelope::decode(envelope)?.open(reader, &keys.0, &author_chain.0)?;
    Ok(Uint8Array::from(document.as_slice()))
}
