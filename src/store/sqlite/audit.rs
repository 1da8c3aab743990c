//! The audit log: events hash-chained in the writer's transaction, and its recorded head.

use rusqlite::{params, Connection, OptionalExtension};

use super::{bad_blob, Cached, SqliteStore};
use crate::clock::UnixTime;
use crate::domain::audit::{AuditEvent, AuditHead};
use crate::store::StoreError;

/// Who an audit event is about.
pub(super) enum Who<'a> {
    /// A user, recorded under their audit pseudonym.
    User(&'a str),
    /// The operator (admin commands).
    Operator,
}

/// Appends an event to the audit log, chained to the previous one, in the caller's
/// transaction (so it commits, or not, with what it records).
pub(super) fn audit(
    tx: &Connection,
    now: UnixTime,
    kind: &str,
    app_id: &str,
    who: Who<'_>,
    detail: serde_json::Value,
) -> Result<(), StoreError> {
    let subject = match who {
        Who::Operator => "operator".to_owned(),
        Who::User(user_id) => tx
            .one(
                "SELECT audit_pseudonym FROM users WHERE app_id = ?1 AND user_id = ?2",
                params![app_id, user_id],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .unwrap_or_default(),
    };
    // The next event follows the recorded head, not whatever event is last: events deleted
    // from the end leave a gap that `audit verify` reports. Events past the head can only
    // come from an older Ghostkey still running when this one upgraded the schema: the
    // chain goes on after them (and `audit verify` still checks every link).
    let (head_seq, head_hash): (i64, Vec<u8>) = tx
        .one("SELECT seq, hash FROM audit_head WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?
        .ok_or_else(|| StoreError::Backend("the audit log's head row is missing".into()))?;
    let last: Option<(i64, Vec<u8>)> = tx
        .one(
            "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (prev_seq, prev_hash) = match last {
        Some((seq, hash)) if seq > head_seq => {
            tracing::warn!(
                recorded_head = head_seq,
                last_event = seq,
                "audit events were appended past the recorded head (by an older Ghostkey?): the head moves to the last event"
            );
            (seq, hash)
        }
        _ => (head_seq, head_hash),
    };
    // Every audited write is a time the database relied on.
    tx.exec(
        "UPDATE clock_floor SET at = max(at, ?1) WHERE id = 1",
        [now],
    )?;
    let prev: [u8; 32] = prev_hash
        .try_into()
        .map_err(|_| StoreError::Backend("stored audit hash is not 32 bytes".into()))?;
    let seq = prev_seq + 1;
    let detail = crate::domain::audit::without_handles(detail).to_string();
    let hash = crate::domain::audit::chain_hash(&prev, seq, now, kind, app_id, &subject, &detail);
    tx.exec(
        "INSERT INTO audit_events (seq, at, kind, app_id, subject, detail, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![seq, now, kind, app_id, subject, detail, hash],
    )?;
    tx.exec(
        "UPDATE audit_head SET seq = ?1, hash = ?2 WHERE id = 1",
        params![seq, hash],
    )?;
    Ok(())
}

pub(super) fn audit_events(
    store: &SqliteStore,
    after_seq: i64,
    limit: usize,
) -> Result<Vec<AuditEvent>, StoreError> {
    let conn = store.reader()?;
    let mut stmt = conn.prepare_cached(
        "SELECT seq, at, kind, app_id, subject, detail, hash FROM audit_events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let events = stmt
        .query_map(params![after_seq, limit as i64], |r| {
            let hash: Vec<u8> = r.get(6)?;
            Ok(AuditEvent {
                seq: r.get(0)?,
                at: r.get(1)?,
                kind: r.get(2)?,
                app_id: r.get(3)?,
                subject: r.get(4)?,
                detail: r.get(5)?,
                hash: hash.try_into().map_err(|_| bad_blob(6))?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(events)
}

pub(super) fn audit_head(store: &SqliteStore) -> Result<Option<AuditHead>, StoreError> {
    let conn = store.reader()?;
    let head = conn
        .one("SELECT seq, hash FROM audit_head WHERE id = 1", [], |r| {
            let hash: Vec<u8> = r.get(1)?;
            Ok(AuditHead {
                seq: r.get(0)?,
                hash: hash.try_into().map_err(|_| bad_blob(1))?,
            })
        })
        .optional()?;
    Ok(head)
}
