//! Secret-holding objects: the user secret, device keys, user keys, the virtual device and
//! the app provider's key.
//!
//! Their bytes stay in WebAssembly memory. Each wraps a type of `ghostkey-client` that
//! wipes itself on drop (secrecy's `SecretBox`, ed25519-dalek's and x25519-dalek's
//! `zeroize` features), and wasm-bindgen drops it when JavaScript calls `free()` or its
//! FinalizationRegistry collects the object. Secret inputs are taken by value so that
//! their copies in WebAssembly memory can be wiped too; secret outputs go out through
//! `Uint8Array`/`JsString` built from a buffer that is wiped right after.

use ghostkey_client::proto::b64;
use ghostkey_client::proto::chain::{Block, UnsignedBlock};
use ghostkey_client::{AppSigningKey, DeviceKeys as CoreDevice, UserKeys as CoreUser};
use ghostkey_client::{UserSecret as CoreSecret, VirtualDevice as CoreVirtual};
use js_sys::{JsString, Uint8Array};
use secrecy::ExposeSecret;
use wasm_bindgen::prelude::*;
use zeroize::{Zeroize, Zeroizing};

use crate::error::{Failure, Result};

/// The largest integer a JavaScript number holds exactly.
const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

fn array32(mut bytes: Vec<u8>, what: &str) -> Result<Zeroizing<[u8; 32]>> {
    let out = <[u8; 32]>::try_from(bytes.as_slice())
        .map(Zeroizing::new)
        .map_err(|_| Failure::local("bad_format", format!("{what} must be 32 bytes")));
    bytes.zeroize();
    out
}

pub(crate) fn public32(text: &str, what: &str) -> Result<[u8; 32]> {
    b64::decode_array::<32>(text).ok_or_else(|| {
        Failure::local(
            "bad_format",
            format!("{what} must be 32 bytes in base64url"),
        )
    })
}

pub(crate) fn version_from(n: f64) -> Result<u64> {
    if n.fract() == 0.0 && (0.0..=MAX_SAFE_INTEGER).contains(&n) {
        Ok(n as u64)
    } else {
        Err(Failure::local(
            "bad_format",
            "a version is a non-negative integer",
        ))
    }
}

/// A user's 32-byte secret.
#[wasm_bindgen]
pub struct UserSecret(pub(crate) CoreSecret);

#[wasm_bindgen]
impl UserSecret {
    /// A fresh random secret.
    pub fn generate() -> UserSecret {
        UserSecret(CoreSecret::generate())
    }

    /// From base64url without padding.
    #[wasm_bindgen(js_name = fromBase64)]
    pub fn from_base64(mut text: String) -> Result<UserSecret> {
        let secret = CoreSecret::from_b64(&text);
        text.zeroize();
        secret.map(UserSecret).ok_or_else(|| {
            Failure::local(
                "bad_format",
                "a user secret is 32 bytes in base64url without padding (43 characters)",
            )
        })
    }

    /// The secret as base64url, on explicit request only.
    #[wasm_bindgen(js_name = exportBase64)]
    pub fn export_base64(&self) -> JsString {
        JsString::from(self.0.to_b64().expose_secret())
    }
}

/// A device's private keys.
#[wasm_bindgen]
pub struct DeviceKeys(pub(crate) CoreDevice);

#[wasm_bindgen]
impl DeviceKeys {
    /// Fresh random keys.
    pub fn generate() -> DeviceKeys {
        DeviceKeys(CoreDevice::generate())
    }

    /// From 64 bytes: the Ed25519 seed, then the X25519 secret.
    #[wasm_bindgen(js_name = fromBytes)]
    pub fn from_bytes(mut bytes: Vec<u8>) -> Result<DeviceKeys> {
        if bytes.len() != 64 {
            bytes.zeroize();
            return Err(Failure::local("bad_format", "device keys are 64 bytes"));
        }
        let signing = array32(bytes[..32].to_vec(), "the signing seed")?;
        let encryption = array32(bytes[32..].to_vec(), "the encryption secret")?;
        bytes.zeroize();
        Ok(DeviceKeys(CoreDevice::from_bytes(&signing, &encryption)))
    }

    /// The 64 private bytes, on explicit request only.
    #[wasm_bindgen(js_name = exportBytes)]
    pub fn export_bytes(&self) -> Uint8Array {
        let mut out = Zeroizing::new(Vec::with_capacity(64));
        out.extend_from_slice(self.0.signing_key().as_bytes());
        out.extend_from_slice(self.0.encryption_secret().as_bytes());
        Uint8Array::from(out.as_slice())
    }

    /// The Ed25519 public key, base64url.
    #[wasm_bindgen(getter, js_name = signingKey)]
    pub fn signing_key(&self) -> String {
        b64::encode(self.0.signing_public())
    }

    /// The X25519 public key, base64url.
    #[wasm_bindgen(getter, js_name = encryptionKey)]
    pub fn encryption_key(&self) -> String {
        b64::encode(self.0.encryption_public())
    }
}

/// The user key pair.
#[wasm_bindgen]
pub struct UserKeys(pub(crate) CoreUser);

#[wasm_bindgen]
impl UserKeys {
    /// From the 32-byte private key.
    #[wasm_bindgen(js_name = fromBytes)]
    pub fn from_bytes(bytes: Vec<u8>) -> Result<UserKeys> {
        let secret = array32(bytes, "a user key")?;
        Ok(UserKeys(CoreUser::from_bytes(&secret)))
    }

    /// The 32-byte private key, on explicit request only.
    #[wasm_bindgen(js_name = exportBytes)]
    pub fn export_bytes(&self) -> Uint8Array {
        let bytes = Zeroizing::new(self.0.secret().to_bytes());
        Uint8Array::from(bytes.as_slice())
    }

    /// The X25519 public key, base64url.
    #[wasm_bindgen(getter, js_name = publicKey)]
    pub fn public_key(&self) -> String {
        b64::encode(self.0.public())
    }
}

/// A virtual device.
#[wasm_bindgen]
pub struct VirtualDevice(pub(crate) CoreVirtual);

#[wasm_bindgen]
impl VirtualDevice {
    /// A new virtual device with fresh keys.
    pub fn generate(app_id: &str, user_id: &str, version: f64) -> Result<VirtualDevice> {
        Ok(VirtualDevice(CoreVirtual::generate(
            app_id,
            user_id,
            version_from(version)?,
        )))
    }

    /// A virtual device from existing keys (to seal the same keys with a higher version
    /// when replacing the blob, or test vectors).
    #[wasm_bindgen(js_name = fromKeys)]
    pub fn from_keys(
        app_id: &str,
        user_id: &str,
        version: f64,
        keys: &DeviceKeys,
    ) -> Result<VirtualDevice> {
        Ok(VirtualDevice(CoreVirtual::from_keys(
            app_id,
            user_id,
            version_from(version)?,
            keys.0.clone(),
        )))
    }

    /// Opens a sealed blob and checks app, user and version (docs/PROTOCOL.md §3.3).
    pub fn open(
        sealed: &[u8],
        secret: &UserSecret,
        app_id: &str,
        user_id: &str,
        min_version: f64,
    ) -> Result<VirtualDevice> {
        let min_version = version_from(min_version)?;
        Ok(VirtualDevice(CoreVirtual::open(
            sealed,
            &secret.0,
            app_id,
            user_id,
            min_version,
        )?))
    }

    /// Seals under the user secret with a fresh random nonce.
    pub fn seal(&self, secret: &UserSecret) -> Result<Vec<u8>> {
        Ok(self.0.seal(&secret.0)?)
    }

    /// Seals with a given nonce (test vectors only).
    #[wasm_bindgen(js_name = sealWithNonce)]
    pub fn seal_with_nonce(&self, secret: &UserSecret, nonce: &[u8]) -> Result<Vec<u8>> {
        let nonce: [u8; 24] = nonce
            .try_into()
            .map_err(|_| Failure::local("bad_format", "a nonce is 24 bytes"))?;
        Ok(self.0.seal_with_nonce(&secret.0, &nonce)?)
    }

    /// Its app id.
    #[wasm_bindgen(getter, js_name = appId)]
    pub fn app_id(&self) -> String {
        self.0.app_id().to_owned()
    }

    /// Its user id.
    #[wasm_bindgen(getter, js_name = userId)]
    pub fn user_id(&self) -> String {
        self.0.user_id().to_owned()
    }

    /// Its version counter.
    #[wasm_bindgen(getter)]
    pub fn version(&self) -> f64 {
        self.0.version() as f64
    }

    /// A copy of its keys.
    pub fn keys(&self) -> DeviceKeys {
        DeviceKeys(self.0.keys().clone())
    }
}

/// The first half of an enrolment.
#[wasm_bindgen]
pub struct PreparedEnrolment {
    virtual_device: CoreVirtual,
    user_keys: CoreUser,
    root: UnsignedBlock,
}

#[wasm_bindgen]
impl PreparedEnrolment {
    /// A copy of the new virtual device.
    #[wasm_bindgen(js_name = virtualDevice)]
    pub fn virtual_device(&self) -> VirtualDevice {
        VirtualDevice(self.virtual_device.clone())
    }

    /// A copy of the new user keys.
    #[wasm_bindgen(js_name = userKeys)]
    pub fn user_keys(&self) -> UserKeys {
        UserKeys(self.user_keys.clone())
    }

    /// The root block without its signature (public data).
    #[wasm_bindgen(js_name = unsignedRoot)]
    pub fn unsigned_root(&self) -> Vec<u8> {
        self.root.encode()
    }
}

/// Prepares an enrolment: a virtual device (version 1), a user key pair, and the root
/// block for the app key `kid` to endorse.
#[wasm_bindgen(js_name = prepareEnrolment)]
pub fn prepare_enrolment(app_id: &str, user_id: &str, kid: &str) -> Result<PreparedEnrolment> {
    let prepared = ghostkey_client::prepare_enrolment(app_id, user_id, kid)?;
    Ok(PreparedEnrolment {
        virtual_device: prepared.virtual_device,
        user_keys: prepared.user_keys,
        root: prepared.root,
    })
}

/// Parses an unsigned block: its encoding is a block's without the signature, so a block
/// with a zero signature decodes it with the one decoder.
pub(crate) fn decode_unsigned(bytes: &[u8]) -> Result<UnsignedBlock> {
    let mut full = bytes.to_vec();
    full.extend_from_slice(&[0u8; 64]);
    Block::decode(&full)
        .map(|b| b.unsigned)
        .map_err(|e| Failure::local("bad_format", format!("not an unsigned block: {e}")))
}

/// The app provider's Ed25519 key.
#[wasm_bindgen]
pub struct AppKey(AppSigningKey);

#[wasm_bindgen]
impl AppKey {
    /// A fresh key.
    pub fn generate(kid: &str) -> AppKey {
        AppKey(AppSigningKey::generate(kid))
    }

    /// From a 32-byte Ed25519 seed.
    #[wasm_bindgen(js_name = fromSeed)]
    pub fn from_seed(kid: &str, seed: Vec<u8>) -> Result<AppKey> {
        let seed = array32(seed, "an Ed25519 seed")?;
        Ok(AppKey(AppSigningKey::from_seed(kid, &seed)))
    }

    /// The 32-byte Ed25519 seed, on explicit request only. (PKCS#8 PEM is read and
    /// written in TypeScript: for Ed25519 it is a fixed prefix and the seed, and the DER
    /// and PEM crates would add 20 KiB to the module.)
    #[wasm_bindgen(js_name = exportSeed)]
    pub fn export_seed(&self) -> Uint8Array {
        let seed = Zeroizing::new(self.0.seed());
        Uint8Array::from(seed.as_slice())
    }

    /// The key id.
    #[wasm_bindgen(getter)]
    pub fn kid(&self) -> String {
        self.0.kid().to_owned()
    }

    /// The public key, base64url.
    #[wasm_bindgen(getter, js_name = publicKey)]
    pub fn public_key(&self) -> String {
        self.0.public_key_b64()
    }

    /// Endorses an unsigned root for `app_id` and `user_id`: the signed root block.
    #[wasm_bindgen(js_name = endorseRoot)]
    pub fn endorse_root(&self, unsigned: &[u8], app_id: &str, user_id: &str) -> Result<Vec<u8>> {
        let root = decode_unsigned(unsigned)?;
        Ok(self.0.endorse_root(&root, app_id, user_id)?.encode())
    }

    /// Mints an assertion with exactly these claims (`iss`, `sub`, `aud`, `iat`, `exp`,
    /// `jti`, `purpose`, docs/PROTOCOL.md §2.2), as JSON text.
    #[wasm_bindgen(js_name = mintAssertion)]
    pub fn mint_assertion(&self, claims_json: &str) -> Result<String> {
        let claims: ghostkey_client::proto::assertion::AssertionClaims =
            serde_json::from_str(claims_json)
                .map_err(|e| Failure::local("bad_format", format!("assertion claims: {e}")))?;
        Ok(self.0.mint_claims(&claims)?)
    }
}
