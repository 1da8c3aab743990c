//! Storage: the one interface the rest of the code reaches the database through.
//!
//! Methods are synchronous and may block; request paths call them through
//! [`crate::service::Blocking`], which runs them on a blocking thread pool, never on the
//! async executor. Every state that must hold across restarts and nodes (replay caches,
//! counters) lives here, not in process memory. A PostgreSQL backend implements the same
//! trait.

pub mod sqlite;

use crate::clock::UnixTime;
use crate::domain::app::{App, AppKey, KeyLookup};
use crate::domain::assertion::VerifiedAssertion;
use crate::domain::enrollment::Enrollment;
use crate::domain::policy::AppPolicy;

pub use sqlite::SqliteStore;

/// Why a store operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No app with this id.
    #[error("no app with this id")]
    UnknownApp,
    /// No key with this id for the app.
    #[error("the app has no key with this id")]
    UnknownKey,
    /// The app already has a key with this id.
    #[error("the app already has a key with this id")]
    KeyExists,
    /// The key is already revoked.
    #[error("the key is already revoked")]
    KeyAlreadyRevoked,
    /// The user is already enrolled for this app.
    #[error("the user is already enrolled")]
    AlreadyEnrolled,
    /// The assertion's `jti` was used before.
    #[error("the assertion has already been used")]
    AssertionReplayed,
    /// The database failed; the message is for the log only.
    #[error("database error: {0}")]
    Backend(String),
}

/// Everything Ghostkey stores.
pub trait Store: Send + Sync + 'static {
    /// Checks that the database answers.
    fn ping(&self) -> Result<(), StoreError>;

    /// Registers an app with its first key.
    fn create_app(&self, app: &App, first_key: &AppKey) -> Result<(), StoreError>;
    /// All apps, oldest first.
    fn list_apps(&self) -> Result<Vec<App>, StoreError>;
    /// One app.
    fn app(&self, app_id: &str) -> Result<Option<App>, StoreError>;
    /// An app's keys, oldest first.
    fn app_keys(&self, app_id: &str) -> Result<Vec<AppKey>, StoreError>;
    /// Adds a key to an app.
    fn add_app_key(&self, app_id: &str, key: &AppKey) -> Result<(), StoreError>;
    /// Revokes a key of an app, from `now` on.
    fn revoke_app_key(&self, app_id: &str, kid: &str, now: UnixTime) -> Result<(), StoreError>;
    /// Replaces an app's policy.
    fn set_app_policy(&self, app_id: &str, policy: &AppPolicy) -> Result<(), StoreError>;
    /// What is known of the key an assertion names.
    fn lookup_assertion_key(&self, app_id: &str, kid: &str) -> Result<KeyLookup, StoreError>;

    /// In one transaction: consumes the assertion's `jti` and stores a new enrolment.
    /// Nothing is written if either fails.
    fn enroll(
        &self,
        assertion: &VerifiedAssertion,
        enrollment: &Enrollment,
        now: UnixTime,
    ) -> Result<(), StoreError>;
    /// A user's enrolment.
    fn enrollment(&self, app_id: &str, user_id: &str) -> Result<Option<Enrollment>, StoreError>;
}
