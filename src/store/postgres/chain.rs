//! The device chain: reads and the append that lands only on the head it names.

use serde_json::json;

use super::audit::{audit, Who};
use super::limits::consume_jti;
use super::{get, PgStore};
use crate::clock::UnixTime;
use crate::domain::assertion::VerifiedAssertion;
use crate::store::StoreError;

pub(super) fn chain_head(
    store: &PgStore,
    app_id: &str,
    user_id: &str,
) -> Result<Option<crate::domain::chain::Head>, StoreError> {
    store.read(|tx| {
        let row = tx.opt(
            "SELECT idx, hash FROM chain_blocks WHERE app_id = $1 AND user_id = $2 ORDER BY idx DESC LIMIT 1",
            &[&app_id, &user_id],
        )?;
        row.map(|r| {
            let idx: i64 = get(&r, 0)?;
            let hash: Vec<u8> = get(&r, 1)?;
            let hash: [u8; 32] = hash
                .try_into()
                .map_err(|_| StoreError::Backend("a stored chain hash is not 32 bytes".into()))?;
            let len = usize::try_from(idx + 1)
                .map_err(|_| StoreError::Backend("a stored chain index is negative".into()))?;
            Ok(crate::domain::chain::Head { len, hash })
        })
        .transpose()
    })
}

pub(super) fn chain_block(
    store: &PgStore,
    app_id: &str,
    user_id: &str,
    index: usize,
) -> Result<Option<Vec<u8>>, StoreError> {
    let idx = i64::try_from(index).unwrap_or(i64::MAX);
    store.read(|tx| {
        tx.opt(
            "SELECT block FROM chain_blocks WHERE app_id = $1 AND user_id = $2 AND idx = $3",
            &[&app_id, &user_id, &idx],
        )?
        .map(|r| get(&r, 0))
        .transpose()
    })
}

pub(super) fn chain(
    store: &PgStore,
    app_id: &str,
    user_id: &str,
) -> Result<Vec<Vec<u8>>, StoreError> {
    store.read(|tx| {
        tx.all(
            "SELECT block FROM chain_blocks WHERE app_id = $1 AND user_id = $2 ORDER BY idx",
            &[&app_id, &user_id],
        )?
        .iter()
        .map(|r| get(r, 0))
        .collect()
    })
}

pub(super) fn append_block(
    store: &PgStore,
    assertion: &VerifiedAssertion,
    index: usize,
    hash: &[u8; 32],
    block: &[u8],
    now: UnixTime,
) -> Result<(), StoreError> {
    let idx = i64::try_from(index).unwrap_or(i64::MAX);
    store.write(|tx| {
        // The user's lock first: every append to (and the erasure of) this chain waits
        // for it. A user who is gone has no blocks: the length check below refuses as
        // SQLite's does (`ChainFork`, or the foreign key at index 0), so the result of
        // the lock is not needed.
        tx.lock_user(&assertion.app_id, &assertion.user_id)?;
        consume_jti(tx, assertion, now)?;
        let row = tx.one(
            "SELECT count(*) FROM chain_blocks WHERE app_id = $1 AND user_id = $2",
            &[&assertion.app_id, &assertion.user_id],
        )?;
        let len: i64 = get(&row, 0)?;
        // Checked under the user's lock: of two appends built on the same head, exactly
        // one lands.
        if usize::try_from(len).ok() != Some(index) {
            return Err(StoreError::ChainFork);
        }
        // The primary key backs the check: a conflict at `index` is a fork, never a
        // backend error.
        let inserted = tx.exec_unique(
            "INSERT INTO chain_blocks (app_id, user_id, idx, hash, block, added_at) VALUES ($1, $2, $3, $4, $5, $6)",
            &[&assertion.app_id, &assertion.user_id, &idx, &hash.as_slice(), &block, &now],
        )?;
        if inserted.is_none() {
            return Err(StoreError::ChainFork);
        }
        audit(tx, now, "chain_block_appended", &assertion.app_id, Who::User(&assertion.user_id), json!({ "index": index, "hash": hex::encode(hash) }))?;
        Ok(())
    })
}
