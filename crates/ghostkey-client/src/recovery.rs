//! The recovery driver: from "all devices lost" to the virtual device's keys, on a new
//! device that has only what the app provider hands its logged-in user (the user secret
//! and `recover` assertions).
//!
//! ```no_run
//! # async fn example(
//! #     client: ghostkey_client::Client,
//! #     secret: ghostkey_client::UserSecret,
//! #     assertion: String,
//! #     release_assertion: String,
//! #     read_code: impl Fn() -> String,
//! # ) -> Result<(), ghostkey_client::ClientError> {
//! use ghostkey_client::recovery::{Recovered, RecoveryDriver};
//!
//! let driver = RecoveryDriver::new(&client, &secret, "app_0123", "u-7f3a");
//! // The user picks one of their confirmed methods (shown masked).
//! let methods = driver.methods(&assertion).await?;
//! let started = driver.start(&release_assertion, &methods.methods[0].id).await?;
//! // The code arrives by SMS or e-mail (or the user reads their authenticator app).
//! match driver.submit_code(&started.id, &read_code()).await? {
//!     Recovered::Released(device) => println!("keys back: {:?}", device.keys()),
//!     Recovered::Waiting { available_at } => println!("released after {available_at}"),
//! }
//! # Ok(())
//! # }
//! ```

use ghostkey_proto::api::{ChallengeView, MethodList, RecoveryResponse, RecoveryState};
use ghostkey_proto::b64;

use crate::api::{Client, ClientError};
use crate::device::VirtualDevice;
use crate::kit::UserSecret;

/// Where a recovery ended up after the code.
#[derive(Debug)]
pub enum Recovered {
    /// The sealed virtual device was released, opened and checked.
    Released(Box<VirtualDevice>),
    /// The app's waiting period runs until `available_at`; then call
    /// [`RecoveryDriver::release`] with a fresh `recover` assertion.
    Waiting {
        /// When the release becomes available (Unix seconds).
        available_at: i64,
    },
}

/// Drives one user's recovery.
#[derive(Debug)]
pub struct RecoveryDriver<'a> {
    client: &'a Client,
    secret: &'a UserSecret,
    app_id: String,
    user_id: String,
    min_version: u64,
}

impl<'a> RecoveryDriver<'a> {
    /// A driver for `user_id` of `app_id`, whose user secret the app provider handed over.
    pub fn new(
        client: &'a Client,
        secret: &'a UserSecret,
        app_id: &str,
        user_id: &str,
    ) -> RecoveryDriver<'a> {
        RecoveryDriver {
            client,
            secret,
            app_id: app_id.to_owned(),
            user_id: user_id.to_owned(),
            min_version: 1,
        }
    }

    /// Refuses a released blob older than `version` (a rollback), when the app knows the
    /// version it last sealed.
    pub fn with_min_version(mut self, version: u64) -> RecoveryDriver<'a> {
        self.min_version = version;
        self
    }

    /// The user's methods, masked, to choose from (`recover` assertion).
    pub async fn methods(&self, assertion: &str) -> Result<MethodList, ClientError> {
        self.client.list_methods(assertion).await
    }

    /// Starts the recovery with a confirmed method (`recover` assertion).
    pub async fn start(
        &self,
        assertion: &str,
        method_id: &str,
    ) -> Result<ChallengeView, ClientError> {
        self.client.start_recovery(assertion, method_id).await
    }

    /// Submits the code the user typed; opens and checks the blob if it is released now.
    pub async fn submit_code(
        &self,
        recovery_id: &str,
        code: &str,
    ) -> Result<Recovered, ClientError> {
        let answer = self.client.verify_recovery(recovery_id, code).await?;
        self.settle(answer)
    }

    /// After the waiting period: releases, opens and checks the blob (`recover` assertion).
    pub async fn release(
        &self,
        assertion: &str,
        recovery_id: &str,
    ) -> Result<VirtualDevice, ClientError> {
        let answer = self.client.release_recovery(assertion, recovery_id).await?;
        match self.settle(answer)? {
            Recovered::Released(device) => Ok(*device),
            Recovered::Waiting { available_at } => Err(ClientError::Unexpected {
                status: 200,
                detail: format!("the release answered `waiting` until {available_at}"),
            }),
        }
    }

    /// Opens a released blob with the user secret and checks that it belongs to this app
    /// and user and is not older than expected.
    pub fn open(&self, sealed: &[u8]) -> Result<VirtualDevice, ClientError> {
        Ok(VirtualDevice::open(
            sealed,
            self.secret,
            &self.app_id,
            &self.user_id,
            self.min_version,
        )?)
    }

    fn settle(&self, answer: RecoveryResponse) -> Result<Recovered, ClientError> {
        match (
            answer.state,
            answer.sealed_virtual_device,
            answer.available_at,
        ) {
            (RecoveryState::Released, Some(blob), _) => {
                let bytes = b64::decode(&blob).map_err(|_| ClientError::Unexpected {
                    status: 200,
                    detail: "the released blob is not base64url".into(),
                })?;
                Ok(Recovered::Released(Box::new(self.open(&bytes)?)))
            }
            (RecoveryState::Waiting, _, Some(available_at)) => {
                Ok(Recovered::Waiting { available_at })
            }
            (state, _, _) => Err(ClientError::Unexpected {
                status: 200,
                detail: format!("unexpected recovery answer in state {state:?}"),
            }),
        }
    }
}
