//! Ghostkey's client core for browsers and Node, through wasm-bindgen: the same Rust code
//! as the native client (`ghostkey-client`), with its HTTP client over the host's `fetch`.
//!
//! The JavaScript API is the TypeScript package in `sdk/js`, written on top of these
//! bindings; use that, not these exports directly.
//!
//! - [`keys`]: user secrets, device keys, user keys, the virtual device, the app key;
//! - [`chain`]: the verified device chain and envelopes;
//! - [`passphrase`]: passphrases and their verifiers (strength check, Argon2id);
//! - [`client`]: the `/v1` API client;
//! - [`error`]: failures as JavaScript objects with stable codes.
#![forbid(unsafe_code)]

pub mod chain;
pub mod client;
pub mod error;
pub mod keys;
pub mod passphrase;

use wasm_bindgen::prelude::*;

/// The version of this package (the crate's).
#[wasm_bindgen]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}
