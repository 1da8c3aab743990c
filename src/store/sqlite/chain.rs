//! The device chain: reads and the append that lands only on the head it names.

use rusqlite::{params, OptionalExtension};
use serde_json::json;

use super::audit::{audit, Who};
use super::limits::consume_jti;
use super::{Cached, SqliteStore};
use crate::clock::UnixTime;
use crate::domain::assertion::VerifiedAssertion;
use crate::store::StoreError;

pub(super) fn chain_head(
    store: &SqliteStore,
    app_id: &str,
    user_id: &str,
) -> Result<Option<crate::domain::chain::Head>, StoreError> {
    let conn = store.reader()?;
    let row: Option<(i64, Vec<u8>)> = conn
        .one(
            "SELECT idx, hash FROM chain_blocks WHERE app_id = ?1 AND user_id = ?2 ORDER BY idx DESC LIMIT 1",
            params![app_id, user_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    row.map(|(idx, hash)| {
        let hash: [u8; 32] = hash
            .try_into()
            .map_err(|_| StoreError::Backend("a stored chain hash is not 32 bytes".into()))?;
        let len = usize::try_from(idx + 1)
            .map_err(|_| StoreError::Backend("a stored chain index is negative".into()))?;
        Ok(crate::domain::chain::Head { len, hash })
    })
    .transpose()
}

pub(super) fn chain_block(
    store: &SqliteStore,
    app_id: &str,
    user_id: &str,
    index: usize,
) -> Result<Option<Vec<u8>>, StoreError> {
    let conn = store.reader()?;
    Ok(conn
        .one(
            "SELECT block FROM chain_blocks WHERE app_id = ?1 AND user_id = ?2 AND idx = ?3",
            params![app_id, user_id, i64::try_from(index).unwrap_or(i64::MAX)],
            |r| r.get(0),
        )
        .optional()?)
}

pub(super) fn chain(
    store: &SqliteStore,
    app_id: &str,
    user_id: &str,
) -> Result<Vec<Vec<u8>>, StoreError> {
    let conn = store.reader()?;
    let mut stmt = conn.prepare_cached(
        "SELECT block FROM chain_blocks WHERE app_id = ?1 AND user_id = ?2 ORDER BY idx",
    )?;
    let blocks = stmt
        .query_map(params![app_id, user_id], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<Vec<u8>>>>()?;
    Ok(blocks)
}

pub(super) fn append_block(
    store: &SqliteStore,
    assertion: &VerifiedAssertion,
    index: usize,
    hash: &[u8; 32],
    block: &[u8],
    now: UnixTime,
) -> Result<(), StoreError> {
    store.write(|tx| {
        consume_jti(tx, assertion, now)?;
        let len: i64 = tx.one(
            "SELECT count(*) FROM chain_blocks WHERE app_id = ?1 AND user_id = ?2",
            params![assertion.app_id, assertion.user_id],
            |r| r.get(0),
        )?;
        // Checked in the write transaction: of two appends built on the same head,
        // exactly one lands.
        if usize::try_from(len).ok() != Some(index) {
            return Err(StoreError::ChainFork);
        }
        tx.exec(
            "INSERT INTO chain_blocks (app_id, user_id, idx, hash, block, added_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![assertion.app_id, assertion.user_id, index as i64, hash, block, now],
        )?;
        audit(tx, now, "chain_block_appended", &assertion.app_id, Who::User(&assertion.user_id), json!({ "index": index, "hash": hex::encode(hash) }))?;
        Ok(())
    })
}
