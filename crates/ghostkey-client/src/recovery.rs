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
use ghostkey_proto::assertion::Purpose;
use ghostkey_proto::b64;
use ghostkey_proto::chain::{verify_chain, ChainState};

use crate::api::{Client, ClientError};
use crate::chain::{add_device, user_keys};
use crate::device::{DeviceKeys, UserKeys, VirtualDevice};
use crate::kit::UserSecret;

/// A new device admitted to the user's chain by the recovered virtual device: it acts as
/// the user from now on.
#[derive(Debug)]
pub struct NewDevice {
    /// The new device's keys (kept on the device).
    pub device: DeviceKeys,
    /// The user key pair, unsealed from the chain.
    pub user_keys: UserKeys,
    /// The verified chain, with the new device in it.
    pub chain: ChainState,
}

/// Where a recovery ended up after the code, with the new device admitted.
#[derive(Debug)]
pub enum Admission {
    /// Released, and the new device admitted.
    Admitted(Box<NewDevice>),
    /// The app's waiting period runs until `available_at`.
    Waiting {
        /// When the release becomes available (Unix seconds).
        available_at: i64,
    },
}

/// Supplies assertions from the app provider (its backend mints them for the logged-in
/// user); each call must return a fresh one, since they are single use.
pub type Assertions<'a> = &'a (dyn Fn(Purpose) -> Result<String, ClientError> + Send + Sync);

/// The app's pinned Ed25519 keys by key id, from which chains are verified.
pub type PinnedKeys<'a> = &'a (dyn Fn(&str) -> Option<[u8; 32]> + Send + Sync);

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

    /// Submits a passkey's assertion (the JSON a WebAuthn client made from the recovery
    /// challenge's `webauthn` request options); opens and checks the blob if it is
    /// released now.
    pub async fn submit_webauthn(
        &self,
        recovery_id: &str,
        assertion: serde_json::Value,
    ) -> Result<Recovered, ClientError> {
        let answer = self
            .client
            .verify_recovery_webauthn(recovery_id, assertion)
            .await?;
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

    /// Submits the code and, once released, admits a fresh device to the user's chain with
    /// the recovered virtual device: one call from "all devices lost" to "new device
    /// admitted".
    pub async fn submit_code_and_admit(
        &self,
        recovery_id: &str,
        code: &str,
        assertions: Assertions<'_>,
        pinned: PinnedKeys<'_>,
    ) -> Result<Admission, ClientError> {
        match self.submit_code(recovery_id, code).await? {
            Recovered::Released(vd) => Ok(Admission::Admitted(Box::new(
                self.admit_new_device(&vd, assertions, pinned).await?,
            ))),
            Recovered::Waiting { available_at } => Ok(Admission::Waiting { available_at }),
        }
    }

    /// Admits a fresh device with the recovered virtual device: fetches and verifies the
    /// chain from the app's pinned keys, unseals the user key with the virtual device,
    /// and appends a `device added` block signed by it.
    pub async fn admit_new_device(
        &self,
        vd: &VirtualDevice,
        assertions: Assertions<'_>,
        pinned: PinnedKeys<'_>,
    ) -> Result<NewDevice, ClientError> {
        let blocks = self
            .client
            .chain(&assertions(Purpose::Recover)?, &self.user_id)
            .await?;
        let mut chain = verify_chain(&blocks, pinned)?;
        if chain.app_id != self.app_id || chain.user_id != self.user_id {
            return Err(ClientError::Unexpected {
                status: 200,
                detail: "the chain served belongs to another app or user".into(),
            });
        }
        let user_keys = user_keys(&chain, vd.keys())?;
        let device = DeviceKeys::generate();
        let block = add_device(&chain, vd.keys(), &device, &user_keys)?;
        self.client
            .append_block(&assertions(Purpose::Recover)?, &block.encode())
            .await?;
        chain.apply(&block).map_err(|fault| {
            ClientError::Chain(ghostkey_proto::chain::ChainError {
                index: chain.len,
                fault,
            })
        })?;
        Ok(NewDevice {
            device,
            user_keys,
            chain,
        })
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
