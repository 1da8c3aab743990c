//! Ghostkey client library and app-provider kit.
//!
//! - [`kit`]: for the app provider's backend: generate user secrets, mint assertions.
//! - [`device`] and [`sealed`]: device keys, the virtual device and its sealing under the
//!   user secret (DESIGN.md §2).
//! - [`api`]: a typed HTTP client for the `/v1` API.
//! - [`enroll`]: the enrolment flow, from a user secret and an assertion to a stored,
//!   pending enrolment.
//! - [`recovery`]: the recovery driver, from a user secret and `recover` assertions to
//!   the virtual device's keys on a new device.
//!
//! No server dependencies: no actix, no SQLite.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod chain;
pub mod device;
pub mod envelope;
pub mod kit;
pub mod recovery;
pub mod sealed;

pub use api::{Client, ClientError};
pub use device::{DeviceKeys, UserKeys, VirtualDevice};
pub use ghostkey_proto as proto;
pub use kit::{AppSigningKey, UserSecret};

use ghostkey_proto::api::EnrollResponse;

/// What a successful enrolment leaves on the user's first device.
#[derive(Debug)]
pub struct Enrolled {
    /// The virtual device, whose private keys now live only sealed at Ghostkey (and in
    /// this value until it is dropped).
    pub virtual_device: VirtualDevice,
    /// The user key pair, to seal to the user's devices in the device chain.
    pub user_keys: UserKeys,
    /// Ghostkey's answer (the enrolment is pending until a method is confirmed).
    pub answer: EnrollResponse,
}

/// Enrols a user: generates their virtual device and user key pair, seals the virtual
/// device under `secret` (binding `app_id`, `user_id` and version 1), and stores it at
/// Ghostkey with an `enroll` assertion.
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
/// let enrolled = ghostkey_client::enroll(&client, &assertion, &secret, "app_0123", "u-7f3a").await?;
/// assert_eq!(enrolled.answer.user_id, "u-7f3a");
/// # Ok(())
/// # }
/// ```
pub async fn enroll(
    client: &Client,
    assertion: &str,
    secret: &UserSecret,
    app_id: &str,
    user_id: &str,
) -> Result<Enrolled, ClientError> {
    let virtual_device = VirtualDevice::generate(app_id, user_id, 1);
    let user_keys = UserKeys::generate();
    let sealed = virtual_device.seal(secret)?;
    let answer = client
        .enroll(assertion, &sealed, &virtual_device.keys().public())
        .await?;
    Ok(Enrolled {
        virtual_device,
        user_keys,
        answer,
    })
}
