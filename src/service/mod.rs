//! Use cases: each one reads the time once, then runs its store work and domain rules on
//! the blocking pool, so neither database I/O nor signature checks stall the executor.

pub mod enrollment;

use std::sync::Arc;

use ghostkey_proto::assertion::Purpose;
use ghostkey_proto::ErrorCode;

use crate::clock::{Clock, UnixTime};
use crate::domain::assertion::{self, AssertionRules, VerifiedAssertion};
use crate::error::Error;
use crate::store::{Store, StoreError};

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        match e {
            StoreError::AlreadyEnrolled => Error::new(ErrorCode::AlreadyEnrolled),
            StoreError::AssertionReplayed => Error::new(ErrorCode::AssertionReplayed),
            other => Error::internal(other),
        }
    }
}

/// The service: the store, the clock and the deployment's rules, shared by all workers.
#[derive(Clone)]
pub struct Ghostkey {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    rules: Arc<AssertionRules>,
}

impl Ghostkey {
    /// Builds the service.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, rules: AssertionRules) -> Ghostkey {
        Ghostkey {
            store,
            clock,
            rules: Arc::new(rules),
        }
    }

    /// Runs `f` with the store on the blocking thread pool.
    pub async fn blocking<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Store, &AssertionRules) -> Result<T, Error> + Send + 'static,
    {
        let store = Arc::clone(&self.store);
        let rules = Arc::clone(&self.rules);
        tokio::task::spawn_blocking(move || f(store.as_ref(), &rules))
            .await
            .map_err(|e| Error::internal(format!("blocking task failed: {e}")))?
    }

    /// The current time, read once per request.
    pub fn now(&self) -> UnixTime {
        self.clock.now()
    }

    /// Readiness: the store answers.
    pub async fn ready(&self) -> Result<(), Error> {
        self.blocking(|store, _| Ok(store.ping()?)).await
    }
}

/// Verifies an assertion for an endpoint that requires `purpose` (everything but the
/// single use of its `jti`, which the write that follows enforces).
pub fn authenticate(
    store: &dyn Store,
    rules: &AssertionRules,
    token: &str,
    purpose: Purpose,
    now: UnixTime,
) -> Result<VerifiedAssertion, Error> {
    let unverified = assertion::inspect(token)?;
    let key = store.lookup_assertion_key(&unverified.iss, &unverified.kid)?;
    assertion::verify(&unverified, &key, rules, purpose, now)
}
