//! Interoperability fixtures between this Rust client and any other implementation (the
//! JavaScript package in `sdk/js` uses it both ways).
//!
//! ```text
//! cargo run -q -p ghostkey-client --example interop -- make  <fixture.json>
//! cargo run -q -p ghostkey-client --example interop -- check <fixture.json>
//! ```
//!
//! `make` writes a fixture built here with fresh keys; `check` reads one built elsewhere
//! and checks it with this crate's code, printing `ok` and exiting 0, or the first failure
//! on stderr and exiting 1. A fixture is one JSON object (bytes in base64url without
//! padding, texts in UTF-8):
//!
//! ```text
//! app_id, user_id             the user's app and id
//! kid, app_public_key         the app key that endorsed the chain's root (Ed25519)
//! user_secret                 32 bytes
//! sealed_virtual_device       the virtual device sealed under user_secret (version 1)
//! virtual_device_signing_key  its Ed25519 public key
//! chain                       [block, ...]: the root, then a device admitted by the
//!                             virtual device
//! device                      that device's 64 private bytes (Ed25519 seed, X25519 secret)
//! envelope                    a document sealed by that device for the user themself
//! user_keys                   the user's 32-byte X25519 private key, to open it
//! document                    the document, as text
//! ```
//!
//! `check` opens the sealed virtual device with the secret (binding app, user, version 1)
//! and compares its key, verifies the chain from the app key alone and checks the device
//! is valid in it and unseals the user key, and opens the envelope with the user keys
//! against the verified chain.

use std::process::ExitCode;

use ghostkey_client::chain::{add_device, root_block, user_keys};
use ghostkey_client::envelope::Envelope;
use ghostkey_client::proto::b64;
use ghostkey_client::proto::chain::verify_chain;
use ghostkey_client::{AppSigningKey, DeviceKeys, UserKeys, UserSecret, VirtualDevice};
use serde_json::{json, Value};

const APP_ID: &str = "app_interop_rust";
const USER_ID: &str = "u-rust-1";
const DOCUMENT: &str = "Made in Rust: ordonnance n° 42, ½ comprimé.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.as_slice() {
        [cmd, path] if cmd == "make" => make()
            .and_then(|v| std::fs::write(path, v.to_string()).map_err(|e| format!("{path}: {e}"))),
        [cmd, path] if cmd == "check" => std::fs::read_to_string(path)
            .map_err(|e| format!("{path}: {e}"))
            .and_then(|t| serde_json::from_str(&t).map_err(|e| format!("{path}: {e}")))
            .and_then(|v| check(&v))
            .map(|()| println!("ok")),
        _ => Err("usage: interop make|check <fixture.json>".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("interop: {e}");
            ExitCode::FAILURE
        }
    }
}

fn make() -> Result<Value, String> {
    let app = AppSigningKey::generate("k1");
    let secret = UserSecret::generate();
    let vd = VirtualDevice::generate(APP_ID, USER_ID, 1);
    let user = UserKeys::generate();
    let root = app
        .endorse_root(
            &root_block(&vd, &user, app.kid()).map_err(e)?,
            APP_ID,
            USER_ID,
        )
        .map_err(e)?;
    let pinned = |kid: &str| (kid == app.kid()).then(|| app.public_key());
    let state = verify_chain(&[root.encode()], &pinned).map_err(e)?;
    let device = DeviceKeys::generate();
    let added = add_device(&state, vd.keys(), &device, &user).map_err(e)?;
    let chain = vec![root.encode(), added.encode()];
    let state = verify_chain(&chain, &pinned).map_err(e)?;
    let envelope = Envelope::seal(USER_ID, &device, &[&state], DOCUMENT.as_bytes())
        .and_then(|env| env.encode())
        .map_err(e)?;
    let mut device_bytes = device.signing_key().to_bytes().to_vec();
    device_bytes.extend_from_slice(device.encryption_secret().as_bytes());
    Ok(json!({
        "app_id": APP_ID,
        "user_id": USER_ID,
        "kid": app.kid(),
        "app_public_key": app.public_key_b64(),
        "user_secret": b64::encode(secret.expose()),
        "sealed_virtual_device": b64::encode(vd.seal(&secret).map_err(e)?),
        "virtual_device_signing_key": b64::encode(vd.keys().signing_public()),
        "chain": chain.iter().map(b64::encode).collect::<Vec<_>>(),
        "device": b64::encode(device_bytes),
        "envelope": b64::encode(envelope),
        "user_keys": b64::encode(user.secret().as_bytes()),
        "document": DOCUMENT,
    }))
}

fn check(v: &Value) -> Result<(), String> {
    let text = |k: &str| {
        v[k].as_str()
            .ok_or_else(|| format!("`{k}` is missing or not a string"))
    };
    let bytes = |k: &str| {
        text(k).and_then(|t| b64::decode(t).map_err(|_| format!("`{k}` is not base64url")))
    };
    let array = |k: &str| {
        text(k).and_then(|t| {
            b64::decode_array::<32>(t).ok_or(format!("`{k}` is not 32 bytes in base64url"))
        })
    };
    let (app_id, user_id, kid) = (text("app_id")?, text("user_id")?, text("kid")?);

    let secret = UserSecret::from_bytes(array("user_secret")?);
    let vd = VirtualDevice::open(
        &bytes("sealed_virtual_device")?,
        &secret,
        app_id,
        user_id,
        1,
    )
    .map_err(|e| format!("sealed_virtual_device: {e}"))?;
    if vd.keys().signing_public() != array("virtual_device_signing_key")? {
        return Err("sealed_virtual_device: not the virtual device named".into());
    }

    let app_key = array("app_public_key")?;
    let blocks = v["chain"]
        .as_array()
        .ok_or("`chain` is not an array")?
        .iter()
        .map(|b| {
            b.as_str()
                .and_then(|t| b64::decode(t).ok())
                .ok_or("a block is not base64url")
        })
        .collect::<Result<Vec<_>, _>>()?;
    let chain = verify_chain(&blocks, &|k: &str| (k == kid).then_some(app_key))
        .map_err(|e| format!("chain: {e}"))?;
    if chain.app_id != app_id || chain.user_id != user_id {
        return Err("chain: belongs to another app or user".into());
    }
    if chain.devices.first().map(|d| d.signing) != Some(vd.keys().signing_public()) {
        return Err("chain: its root names another virtual device".into());
    }
    let device_bytes = bytes("device")?;
    let (seed, secret_key) = device_bytes.split_at(32.min(device_bytes.len()));
    let device = DeviceKeys::from_bytes(
        seed.try_into().map_err(|_| "`device` is not 64 bytes")?,
        secret_key
            .try_into()
            .map_err(|_| "`device` is not 64 bytes")?,
    );
    let unsealed = user_keys(&chain, &device).map_err(|e| format!("chain: the device: {e}"))?;

    let user = UserKeys::from_bytes(&array("user_keys")?);
    if user.public() != chain.user_public || unsealed.public() != chain.user_public {
        return Err("user_keys: not the user key of the chain".into());
    }
    let document = Envelope::decode(&bytes("envelope")?)
        .and_then(|env| env.open(user_id, &user, &chain))
        .map_err(|e| format!("envelope: {e}"))?;
    if document.as_slice() != text("document")?.as_bytes() {
        return Err("envelope: opens to another document".into());
    }
    Ok(())
}

fn e(err: impl std::fmt::Display) -> String {
    err.to_string()
}
