//! Ghostkey client library and app-provider kit.
//!
//! - [`kit`]: for the app provider's backend: generate user secrets, mint assertions.
//! - [`device`] and [`sealed`]: device keys, the virtual device and its sealing under the
//!   user secret (DESIGN.md §2).
//! - [`api`]: a typed HTTP client for the `/v1` API.
//! - [`enroll`]: the enrolment flow, from a user secret and an assertion to a stored,
//!   pending enrolment.
//!
//! No server dependencies: no actix, no SQLite.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod device;
pub mod kit;
pub mod sealed;

pub use api::{Client, ClientError};
pub use device::{DeviceKeys, VirtualDevice};
pub use ghostkey_proto as proto;
pub use kit::{AppSigningKey, UserSecret};

use ghostkey_proto::api::EnrollResponse;

/// Enrols a user: generates their virtual device, seals it under `secret` (binding
/// `app_id`, `user_id` and version 1), and stores it at Ghostkey with an `enroll`
/// assertion. Returns the virtual device (to build the device chain) and the answer.
pub async fn enroll(
    client: &Client,
    assertion: &str,
    secret: &UserSecret,
    app_id: &str,
    user_id: &str,
) -> Result<(VirtualDevice, EnrollResponse), ClientError> {
    let device = VirtualDevice::generate(app_id, user_id, 1);
    let sealed = device.seal(secret).map_err(ClientError::Format)?;
    let answer = client
        .enroll(assertion, &sealed, &device.keys().public())
        .await?;
    Ok((device, answer))
}
