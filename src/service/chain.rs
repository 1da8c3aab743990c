//! The device chain: append a block after checking it against the whole chain; serve a
//! chain to clients of the same app.

use ghostkey_proto::api::{AppendBlockRequest, ChainResponse};
use ghostkey_proto::assertion::{is_valid_identifier, Purpose, MAX_USER_ID_LEN};
use ghostkey_proto::{b64, ErrorCode};

use super::methods::load_user;
use super::{authenticate, Caller, Ghostkey};
use crate::domain::chain::check_append;
use crate::domain::limits::address_limit;
use crate::error::Error;
use crate::store::Store;

/// Every key the app ever had, revoked ones included: old blocks stay valid.
fn app_keys(store: &dyn Store, app_id: &str) -> Result<Vec<(String, [u8; 32])>, Error> {
    Ok(store
        .app_keys(app_id)?
        .into_iter()
        .map(|k| (k.kid, k.public_key))
        .collect())
}

impl Ghostkey {
    /// Appends a block to the assertion user's chain.
    pub async fn append_block(
        &self,
        token: String,
        caller: Caller,
        request: AppendBlockRequest,
    ) -> Result<(), Error> {
        let now = self.now();
        let block = b64::decode(&request.block).map_err(|_| {
            Error::with_detail(
                ErrorCode::InvalidField,
                "`block` is not base64url without padding",
            )
        })?;
        let mac = self.caller_mac(caller);
        self.blocking(move |store, rules| {
            let ctx = load_user(
                store,
                rules,
                &token,
                &[Purpose::Recover, Purpose::Manage],
                &mac,
                now,
            )?;
            let keys = app_keys(store, &ctx.app.id)?;
            let lookup = |kid: &str| keys.iter().find(|(k, _)| k == kid).map(|(_, pk)| *pk);
            let stored = store.chain(&ctx.app.id, &ctx.assertion.user_id)?;
            let accepted = check_append(&stored, &block, ctx.assertion.purpose, &lookup)?;
            store.append_block(&ctx.assertion, accepted.index, &accepted.hash, &block, now)?;
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
