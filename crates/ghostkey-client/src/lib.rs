//! Ghostkey client library and app-provider kit.
//!
//! - [`kit`]: for the app provider's backend: generate user secrets, mint assertions.
//! - [`passphrase`]: the verifier a passphrase method sends instead of the passphrase,
//!   and the minimum strength a client enforces.
//! - [`device`] and [`sealed`]: device keys, the virtual device and its sealing under the
//!   user secret (DESIGN.md §2).
//! - [`chain`] and [`envelope`]: the device chain and documents sealed to users.
//! - [`api`]: a typed HTTP client for the `/v1` API.
//! - [`enroll`]: the enrolment flow, from a user secret and an assertion to a stored,
//!   pending enrolment.
//! - [`recovery`]: the recovery driver, from a user secret and `recover` assertions to
//!   the virtual device's keys on a new device.
//!
//! No server dependencies: no actix, no SQLite. The last three need the `http` feature
//! (on by default: reqwest, over the host's `fetch` in WebAssembly); without it the crate
//! is the core alone, keys, sealing, chain, envelopes and the kit, and does no I/O.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(feature = "http")]
pub mod api;
pub mod chain;
pub mod device;
pub mod envelope;
pub mod error;
pub mod kit;
pub mod passphrase;
#[cfg(feature = "http")]
pub mod recovery;
pub mod sealed;

#[cfg(feature = "http")]
pub use api::Client;
pub use device::{DeviceKeys, UserKeys, VirtualDevice};
pub use error::ClientError;
pub use ghostkey_proto as proto;
pub use kit::{AppSigningKey, UserSecret};

#[cfg(feature = "http")]
use ghostkey_proto::api::EnrollResponse;

/// What a successful enrolment leaves on the user's first device.
#[cfg(feature = "http")]
#[derive(Debug)]
pub struct Enrolled {
    /// The virtual device, whose private keys now live only sealed at Ghostkey (and in
    /// this value until it is dropped).
    pub virtual_device: VirtualDevice,
    /// The user key pair (its private half is also sealed to the virtual device in the
    /// chain's root).
    pub user_keys: UserKeys,
    /// The endorsed root block of the user's device chain.
    pub root: ghostkey_proto::chain::Block,
    /// Ghostkey's answer (the enrolment is pending until a method is confirmed).
    pub answer: EnrollResponse,
}

/// The first half of an enrolment, on the user's device: a new virtual device and user
/// key pair, and the chain's root block for the app provider to endorse.
#[derive(Debug)]
pub struct PreparedEnrolment {
    /// The new virtual device.
    pub virtual_device: VirtualDevice,
    /// The new user key pair.
    pub user_keys: UserKeys,
    /// The root block to send to the app provider's backend for endorsement
    /// ([`AppSigningKey::endorse_root`]).
    pub root: ghostkey_proto::chain::UnsignedBlock,
}

/// Prepares an enrolment for `user_id` of `app_id`; `kid` names the app key that will
/// endorse the root.
pub fn prepare_enrolment(
    app_id: &str,
    user_id: &str,
    kid: &str,
) -> Result<PreparedEnrolment, ClientError> {
    let virtual_device = VirtualDevice::generate(app_id, user_id, 1);
    let user_keys = UserKeys::generate();
    let root = chain::root_block(&virtual_device, &user_keys, kid).map_err(|e| {
        ClientError::Unexpected {
            status: 0,
            detail: e.to_string(),
        }
    })?;
    Ok(PreparedEnrolment {
        virtual_device,
        user_keys,
        root,
    })
}

/// The second half: seals the virtual device under `secret` (binding app id, user id and
/// version 1) and stores it at Ghostkey with the endorsed root and an `enroll` assertion.
#[cfg(feature = "http")]
pub async fn complete_enrolment(
    client: &Client,
    assertion: &str,
    secret: &UserSecret,
    prepared: PreparedEnrolment,
    endorsed_root: ghostkey_proto::chain::Block,
) -> Result<Enrolled, ClientError> {
    let sealed = prepared.virtual_device.seal(secret)?;
    let answer = client
        .enroll(
            assertion,
            &sealed,
            &prepared.virtual_device.keys().public(),
            &endorsed_root.encode(),
        )
        .await?;
    Ok(Enrolled {
        virtual_device: prepared.virtual_device,
        user_keys: prepared.user_keys,
        root: endorsed_root,
        answer,
    })
}

/// Enrols a user in one call when the app key is at hand (the app provider's own tools,
/// tests): prepare, endorse the root with `app_key`, complete.
///
/// ```no_run
/// # async fn example(app_key: ghostkey_client::AppSigningKey) -> Result<(), Box<dyn std::error::Error>> {
/// use ghostkey_client::kit::{unix_now, AssertionRequest};
/// use ghostkey_client::proto::assertion::Purpose;
/// use ghostkey_client::{Client, UserSecret};
///
/// // On the app provider's backend, once the user is logged in:
/// let secret = UserSecret::generate();
/// let assertion = app_key.mint(
///     &AssertionRequest { app_id: "app_0123", user_id: "u-7f3a", audience: "gk.example.org", purpose: Purpose::Enroll },
///     unix_now(),
///     120,
/// )?;
/// // On the user's device, with the secret and assertion the backend handed over:
/// let client = Client::new("https://gk.example.org")?;
/// let enrolled = ghostkey_client::enroll(&client, &assertion, &secret, "app_0123", "u-7f3a", &app_key).await?;
/// assert_eq!(enrolled.answer.user_id, "u-7f3a");
/// # Ok(())
/// # }
/// ```
#[cfg(feature = "http")]
pub async fn enroll(
    client: &Client,
    assertion: &str,
    secret: &UserSecret,
    app_id: &str,
    user_id: &str,
    app_key: &AppSigningKey,
) -> Result<Enrolled, ClientError> {
    let prepared = prepare_enrolment(app_id, user_id, app_key.kid())?;
    let endorsed = app_key
        .endorse_root(&prepared.root, app_id, user_id)
        .map_err(|e| ClientError::Unexpected {
            status: 0,
            detail: e.to_string(),
        })?;
    complete_enrolment(client, assertion, secret, prepared, endorsed).await
}
