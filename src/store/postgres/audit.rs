//! The audit log: events queued in the transaction that causes them, linked into the hash
//! chain shortly after by any node, and the chain's recorded head.
//!
//! SQLite links each event inline, holding the head through the commit, which its single
//! writer does anyway. Here that would make the head row a lock every audited commit of
//! every node waits for. Instead an event commits (or not) with its transaction into
//! `audit_pending`, and [`link_pending`], run every second by every node's maintenance,
//! takes the head's row lock and moves the pending events, in `id` order, into
//! `audit_events` with the next `seq` and the chained hash. The guarantee: an event is in
//! the log as soon as its transaction commits, and tamper-evident once linked, normally
//! within a second or two (`ghostkey audit verify` reports events not yet linked and the
//! age of the oldest; `/metrics` shows the same as `ghostkey_audit_unlinked_*`).

use super::{get, get32, PgStore, Tx};
use crate::clock::UnixTime;
use crate::domain::audit::{AuditEvent, AuditHead};
use crate::store::StoreError;

/// Events linked per transaction (the head stays locked only that long).
const LINK_BATCH: i64 = 500;

/// Who an audit event is about.
pub(super) enum Who<'a> {
    /// A user, recorded under their audit pseudonym.
    User(&'a str),
    /// The operator (admin commands).
    Operator,
}

/// Queues an event for the audit log in the caller's transaction (so it commits, or not,
/// with what it records); [`link_pending`] chains it.
pub(super) fn audit(
    tx: &Tx<'_>,
    now: UnixTime,
    kind: &str,
    app_id: &str,
    who: Who<'_>,
    detail: serde_json::Value,
) -> Result<(), StoreError> {
    let detail = crate::domain::audit::without_handles(detail).to_string();
    // Queued: nothing here reads its result, so it costs the transaction no round trip.
    match who {
        Who::Operator => tx.exec_later(
            "INSERT INTO audit_pending (at, kind, app_id, subject, detail) VALUES ($1, $2, $3, 'operator', $4)",
            &[&now, &kind, &app_id, &detail],
        ),
        // The user's pseudonym as the statement runs, in its turn: '' once erased.
        Who::User(user_id) => tx.exec_later(
            "INSERT INTO audit_pending (at, kind, app_id, subject, detail) \
             SELECT $1, $2, $3, coalesce((SELECT audit_pseudonym FROM users WHERE app_id = $3 AND user_id = $4), ''), $5",
            &[&now, &kind, &app_id, &user_id, &detail],
        ),
    }
}

/// Links every committed pending event into the chain, in batches; returns how many.
/// Several nodes may run it at once: the head's row lock makes them take turns, and each
/// links what the one before left.
pub(super) fn link_pending(store: &PgStore, _now: UnixTime) -> Result<u64, StoreError> {
    let mut linked = 0;
    loop {
        let batch = store.write(|tx| {
            let head = tx
                .opt("SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE", &[])?
                .ok_or_else(|| StoreError::Backend("the audit log's head row is missing".into()))?;
            let (mut seq, mut hash): (i64, [u8; 32]) = (get(&head, 0)?, get32(&head, 1)?);
            let pending = tx.all(
                "SELECT id, at, kind, app_id, subject, detail FROM audit_pending ORDER BY id LIMIT $1",
                &[&LINK_BATCH],
            )?;
            let mut latest: Option<UnixTime> = None;
            for row in &pending {
                let id: i64 = get(row, 0)?;
                let at: i64 = get(row, 1)?;
                let kind: String = get(row, 2)?;
                let app_id: String = get(row, 3)?;
                let subject: String = get(row, 4)?;
                let detail: String = get(row, 5)?;
                seq += 1;
                hash = crate::domain::audit::chain_hash(
                    &hash, seq, at, &kind, &app_id, &subject, &detail,
                );
                tx.exec(
                    "INSERT INTO audit_events (seq, at, kind, app_id, subject, detail, hash) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[&seq, &at, &kind, &app_id, &subject, &detail, &hash.as_slice()],
                )?;
                tx.exec("DELETE FROM audit_pending WHERE id = $1", &[&id])?;
                latest = Some(latest.map_or(at, |l| l.max(at)));
            }
            if let Some(at) = latest {
                tx.exec(
                    "UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1",
                    &[&seq, &hash.as_slice()],
                )?;
                // Every audited write is a time the database relied on.
                tx.exec(
                    "UPDATE clock_floor SET at = GREATEST(at, $1) WHERE id = 1",
                    &[&at],
                )?;
            }
            Ok(pending.len() as u64)
        })?;
        linked += batch;
        if batch < LINK_BATCH as u64 {
            return Ok(linked);
        }
    }
}

/// Events committed but not yet linked, and when the oldest happened.
pub(super) fn pending(store: &PgStore) -> Result<(u64, Option<UnixTime>), StoreError> {
    store.read(|tx| {
        let row = tx.one("SELECT count(*), min(at) FROM audit_pending", &[])?;
        let count: i64 = get(&row, 0)?;
        Ok((u64::try_from(count).unwrap_or(0), get(&row, 1)?))
    })
}

pub(super) fn audit_events(
    store: &PgStore,
    after_seq: i64,
    limit: usize,
) -> Result<Vec<AuditEvent>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    store.read(|tx| {
        tx.all(
            "SELECT seq, at, kind, app_id, subject, detail, hash FROM audit_events \
             WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[&after_seq, &limit],
        )?
        .iter()
        .map(|r| {
            Ok(AuditEvent {
                seq: get(r, 0)?,
                at: get(r, 1)?,
                kind: get(r, 2)?,
                app_id: get(r, 3)?,
                subject: get(r, 4)?,
                detail: get(r, 5)?,
                hash: get32(r, 6)?,
            })
        })
        .collect()
    })
}

pub(super) fn audit_head(store: &PgStore) -> Result<Option<AuditHead>, StoreError> {
    store.read(|tx| {
        tx.opt("SELECT seq, hash FROM audit_head WHERE id = 1", &[])?
            .map(|r| {
                Ok(AuditHead {
                    seq: get(&r, 0)?,
                    hash: get32(&r, 1)?,
                })
            })
            .transpose()
    })
}
