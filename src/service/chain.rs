//! The device chain: append a block after checking it against the stored head and the
//! chain's verified state; serve a chain to clients of the same app.

use ghostkey_proto::api::{AppendBlockRequest, ChainResponse};
use ghostkey_proto::assertion::{is_valid_identifier, Purpose, MAX_USER_ID_LEN};
use ghostkey_proto::{b64, ErrorCode};

use super::methods::load_user;
use super::{authenticate, Caller, Ghostkey};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ghostkey_proto::chain::ChainState;

use crate::clock::UnixTime;
use crate::domain::assertion::VerifiedAssertion;
use crate::domain::chain::{apply_append, check_extends, decode_for_append, stored_state, Head};
use crate::domain::limits::address_limit;
use crate::error::Error;
use crate::store::{Store, StoreError};

/// Every key the app ever had, revoked ones included: old blocks stay valid.
fn app_keys(store: &dyn Store, app_id: &str) -> Result<Vec<(String, [u8; 32])>, Error> {
    Ok(store
        .app_keys(app_id)?
        .into_iter()
        .map(|k| (k.kid, k.public_key))
        .collect())
}

/// Verified chain states by app and user, so that an append checks one block rather than
/// replaying the whole chain. An entry is used only when it ends at the stored head (the
/// head hash commits to every block), so a stale entry, another node's append or a restart
/// costs one full verification and nothing else.
#[derive(Default)]
pub(crate) struct ChainCache {
    states: Mutex<HashMap<(String, String), ChainState>>,
}

/// Devices held in the cache at most (each a few hundred bytes): past it, the cache starts
/// over.
const CACHED_DEVICES: usize = 100_000;

impl ChainCache {
    fn get(&self, app_id: &str, user_id: &str, head: Head) -> Option<ChainState> {
        let states = self.states.lock().ok()?;
        states
            .get(&(app_id.to_owned(), user_id.to_owned()))
            .filter(|s| s.len == head.len && s.head == head.hash)
            .cloned()
    }

    fn put(&self, state: ChainState) {
        if let Ok(mut states) = self.states.lock() {
            let held: usize = states.values().map(|s| s.devices.len()).sum();
            if held + state.devices.len() > CACHED_DEVICES {
                states.clear();
            }
            states.insert((state.app_id.clone(), state.user_id.clone()), state);
        }
    }
}

/// A refused append still spends its assertion, so that one assertion cannot be replayed
/// to make the server judge block after block. A replayed assertion is answered as such.
fn spend_on_refusal(
    store: &dyn Store,
    assertion: &VerifiedAssertion,
    refusal: Error,
    now: UnixTime,
) -> Error {
    match store.consume_assertion(assertion, now) {
        Ok(()) => refusal,
        Err(StoreError::AssertionReplayed) => Error::new(ErrorCode::AssertionReplayed),
        Err(other) => other.into(),
    }
}

impl Ghostkey {
    /// Appends a block to the assertion user's chain: first compared with the stored head
    /// (a stale or replayed block costs no signature check), then judged against the
    /// verified state of the chain (cached: one block's checks).
    pub async fn append_block(
        &self,
        token: String,
        caller: Caller,
        request: AppendBlockRequest,
    ) -> Result<(), Error> {
        let now = self.now();
        let encoded = b64::decode(&request.block).map_err(|_| {
            Error::with_detail(
                ErrorCode::InvalidField,
                "`block` is not base64url without padding",
            )
        })?;
        let mac = self.caller_mac(caller);
        let cache = Arc::clone(&self.chains);
        let metrics = Arc::clone(&self.metrics);
        self.blocking(move |store, rules| {
            let ctx = load_user(
                store,
                rules,
                &token,
                &[Purpose::Recover, Purpose::Manage],
                &mac,
                now,
            )?;
            let (app_id, user_id) = (&ctx.app.id, &ctx.assertion.user_id);
            let refuse = |e: Error| spend_on_refusal(store, &ctx.assertion, e, now);
            let block = decode_for_append(&encoded, ctx.assertion.purpose).map_err(refuse)?;
            let head = store
                .chain_head(app_id, user_id)?
                .ok_or_else(|| Error::internal("an enrolled user has no chain"))?;
            let index = usize::try_from(block.unsigned.index).unwrap_or(usize::MAX);
            let stored_at_index = if index < head.len {
                store.chain_block(app_id, user_id, index)?
            } else {
                None
            };
            check_extends(&block, &encoded, head, stored_at_index.as_deref()).map_err(refuse)?;
            let mut verified = 0;
            let mut state = match cache.get(app_id, user_id, head) {
                Some(state) => state,
                None => {
                    let keys = app_keys(store, app_id)?;
                    let lookup = |kid: &str| keys.iter().find(|(k, _)| k == kid).map(|(_, pk)| *pk);
                    let mut stored = store.chain(app_id, user_id)?;
                    // Judged against the head read above: a block another request (or
                    // node) appended since then makes this append a fork, which the
                    // store's length check answers `chain_fork`, not a block judged
                    // against a chain it was not built on (`invalid_block`).
                    stored.truncate(head.len);
                    verified += stored.len();
                    stored_state(&stored, &lookup)?
                }
            };
            verified += 1;
            metrics.add("ghostkey_chain_blocks_verified_total", &[], verified as u64);
            let accepted = apply_append(&mut state, &block).map_err(refuse)?;
            store.append_block(
                &ctx.assertion,
                accepted.index,
                &accepted.hash,
                &encoded,
                now,
            )?;
            cache.put(state);
            Ok(())
        })
        .await
    }

    /// A user's chain, for any client of the same app holding a valid assertion.
    pub async fn chain(
        &self,
        token: String,
        caller: Caller,
        user_id: String,
    ) -> Result<ChainResponse, Error> {
        let now = self.now();
        if !is_valid_identifier(&user_id, 1, MAX_USER_ID_LEN) {
            return Err(Error::with_detail(
                ErrorCode::InvalidField,
                "malformed user id",
            ));
        }
        let mac = self.caller_mac(caller);
        self.blocking(move |store, rules| {
            let assertion = authenticate(
                store,
                rules,
                &token,
                &[Purpose::Enroll, Purpose::Recover, Purpose::Manage],
                now,
            )?;
            if let Some(app) = store.app(&assertion.app_id)? {
                store.take_limits(
                    &[address_limit(
                        &app.id,
                        &mac,
                        app.policy.requests_per_address_per_minute,
                    )],
                    now,
                )?;
            }
            store.consume_assertion(&assertion, now)?;
            let blocks = store.chain(&assertion.app_id, &user_id)?;
            if blocks.is_empty() {
                return Err(Error::new(ErrorCode::ChainNotFound));
            }
            Ok(ChainResponse {
                user_id,
                blocks: blocks.iter().map(b64::encode).collect(),
            })
        })
        .await
    }
}
