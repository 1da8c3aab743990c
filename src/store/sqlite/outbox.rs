//! The outbox: queueing codes and notices (coalesced), claiming under a lease, finishing,
//! counts, and rekeying queued bodies.

use rusqlite::{params, Connection, OptionalExtension};

use super::apps::load_policy;
use super::limits::{bump_limit, raise_clock_floor};
use super::methods::{load_method, parse_kind};
use super::{Cached, SqliteStore};
use crate::clock::UnixTime;
use crate::store::{
    ClaimedMessage, MessageKind, NewMessage, OutboxCounts, SendResult, StoreError,
    FINISHED_MESSAGE_RETENTION_SECS,
};

/// At most one security notice of a kind is sent to one destination per this many seconds.
pub const NOTICE_WINDOW_SECS: i64 = 3600;

/// Messages forgotten per maintenance pass, at most.
const PURGE_BATCH: i64 = 500;

/// Forgets up to [`PURGE_BATCH`] messages finished (sent or failed for good) more than
/// [`FINISHED_MESSAGE_RETENTION_SECS`] ago; their bodies and destinations were wiped when
/// they finished, what is left (method, kind, attempts, last error) is kept that long for
/// the operator. A read first, so an idle server takes no write lock for it.
pub(super) fn purge_finished(store: &SqliteStore, now: UnixTime) -> Result<u64, StoreError> {
    // `next_attempt_at` (never after `finished_at`) lets the due index find them.
    const FINISHED_BEFORE: &str = "state IN ('sent', 'failed') AND next_attempt_at < ?1 \
                                   AND finished_at < ?1";
    let before = now - FINISHED_MESSAGE_RETENTION_SECS;
    let any: bool = store.reader()?.one(
        &format!("SELECT EXISTS (SELECT 1 FROM outbox WHERE {FINISHED_BEFORE})"),
        [before],
        |r| r.get(0),
    )?;
    if !any {
        return Ok(0);
    }
    store.write(|tx| {
        let purged = tx.exec(
            &format!(
                "DELETE FROM outbox WHERE id IN \
                 (SELECT id FROM outbox WHERE {FINISHED_BEFORE} LIMIT ?2)"
            ),
            params![before, PURGE_BATCH],
        )?;
        raise_clock_floor(tx, purged, now)?;
        Ok(u64::try_from(purged).unwrap_or(0))
    })
}

/// Queues a message. A security notice joins a notice of its kind to the same method that
/// is still waiting to go (counted in its `events`); otherwise it is due an hour after the
/// last one of its kind, so one destination gets at most one notice of a kind an hour, and
/// it spends the destination's and the app's send budgets like a code. A notice is never
/// dropped: a full budget delays nothing and refuses nothing, so no one can silence the
/// user's notices by spending their budget first.
pub(super) fn enqueue(
    tx: &Connection,
    app_id: &str,
    method_id: &str,
    msg: &NewMessage,
    now: UnixTime,
) -> Result<(), StoreError> {
    let mut due = now;
    if let Some(kind) = msg.notice_kind {
        let joined = tx.exec(
            "UPDATE outbox SET events = events + 1 \
             WHERE method_id = ?1 AND notice_kind = ?2 AND state = 'pending' AND leased_until <= ?3",
            params![method_id, kind, now],
        )?;
        if joined > 0 {
            return Ok(());
        }
        let last: Option<UnixTime> = tx.one(
            "SELECT max(created_at) FROM outbox WHERE method_id = ?1 AND notice_kind = ?2",
            params![method_id, kind],
            |r| r.get(0),
        )?;
        due = last.map_or(now, |t| (t + NOTICE_WINDOW_SECS).max(now));
        count_notice_send(tx, app_id, method_id, now)?;
    }
    tx.exec(
        "INSERT INTO outbox (app_id, method_id, kind, key_id, body, state, next_attempt_at, created_at, notice_kind, events) \
         VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7, ?8, 1)",
        params![app_id, method_id, msg.kind.as_str(), msg.key_id, msg.body, due, now, msg.notice_kind],
    )?;
    Ok(())
}

/// A notice spends a unit of its destination's hourly and daily budgets and of the app's
/// daily budget, even over them (a notice is never refused): codes that come after it are
/// refused sooner.
fn count_notice_send(
    tx: &Connection,
    app_id: &str,
    method_id: &str,
    now: UnixTime,
) -> Result<(), StoreError> {
    let Some(method) = load_method(tx, method_id)? else {
        return Ok(());
    };
    let Some(mac) = &method.destination_mac else {
        return Ok(());
    };
    let p = load_policy(tx, app_id)?;
    let limits = crate::domain::limits::send_limits(
        app_id,
        mac,
        p.sends_per_destination_per_hour,
        p.sends_per_destination_per_day,
        p.app_daily_send_budget,
    );
    for limit in &limits {
        bump_limit(tx, limit, now)?;
    }
    Ok(())
}

/// Queues `msg` to every confirmed SMS and e-mail method of the user except one.
pub(super) fn enqueue_to_others(
    tx: &Connection,
    app_id: &str,
    user_id: &str,
    except_method: &str,
    msg: &NewMessage,
    now: UnixTime,
) -> Result<usize, StoreError> {
    let targets: Vec<String> = {
        let mut stmt = tx.prepare_cached(
            "SELECT id FROM methods \
             WHERE app_id = ?1 AND user_id = ?2 AND id != ?3 AND state = 'confirmed' AND kind IN ('sms', 'email') \
             ORDER BY created_at, id",
        )?;
        let ids = stmt
            .query_map(params![app_id, user_id, except_method], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        ids
    };
    for method_id in &targets {
        enqueue(tx, app_id, method_id, msg, now)?;
    }
    Ok(targets.len())
}

pub(super) fn claim_message(
    store: &SqliteStore,
    now: UnixTime,
    lease_secs: i64,
) -> Result<Option<ClaimedMessage>, StoreError> {
    // Most wakes find nothing due (every recovery start and verify wakes the worker, most
    // queue nothing): a reader says so without taking the write lock from the requests.
    // A message committed after this read wakes the worker again.
    let anything_due = store.reader()?.one(
        "SELECT EXISTS (SELECT 1 FROM outbox WHERE state = 'pending' AND next_attempt_at <= ?1 \
             AND leased_until <= ?1)",
        [now],
        |r| r.get::<_, bool>(0),
    )?;
    if !anything_due {
        return Ok(None);
    }
    store.write(|tx| {
        let row = tx
            .one(
                "SELECT o.id, o.app_id, o.kind, COALESCE(m.kind, o.channel), COALESCE(m.key_id, o.destination_key_id), \
                        COALESCE(m.secret, o.destination), o.key_id, o.body, o.attempts, o.events \
                 FROM outbox o LEFT JOIN methods m ON m.id = o.method_id \
                 WHERE o.state = 'pending' AND o.next_attempt_at <= ?1 AND o.leased_until <= ?1 \
                   AND (m.id IS NOT NULL OR o.destination IS NOT NULL) \
                 ORDER BY o.next_attempt_at, o.id LIMIT 1",
                [now],
                |r| {
                    let kind: String = r.get(2)?;
                    let channel: String = r.get(3)?;
                    Ok(ClaimedMessage {
                        id: r.get(0)?,
                        app_id: r.get(1)?,
                        kind: if kind == "notice" { MessageKind::Notice } else { MessageKind::Code },
                        channel: parse_kind(&channel)?,
                        destination_key_id: r.get(4)?,
                        destination: r.get(5)?,
                        body_key_id: r.get(6)?,
                        body: r.get(7)?,
                        attempts: r.get(8)?,
                        events: r.get(9)?,
                        leased_until: now + lease_secs,
                    })
                },
            )
            .optional()?;
        if let Some(m) = &row {
            tx.exec("UPDATE outbox SET leased_until = ?2 WHERE id = ?1", params![m.id, now + lease_secs])?;
        }
        Ok(row)
    })
}

pub(super) fn finish_message(
    store: &SqliteStore,
    id: i64,
    leased_until: UnixTime,
    result: &SendResult,
    now: UnixTime,
) -> Result<bool, StoreError> {
    let (applied, farewell_done) = store.write(|tx| {
        // Only under the claim's own lease: a stale finish changes nothing.
        let farewell: Option<bool> = tx
            .one(
                "SELECT destination IS NOT NULL FROM outbox \
                 WHERE id = ?1 AND state = 'pending' AND leased_until = ?2",
                params![id, leased_until],
                |r| r.get(0),
            )
            .optional()?;
        // A farewell's copy of an erased user's destination goes with its last attempt.
        let Some(farewell) = farewell else {
            return Ok((false, false));
        };
        match result {
            SendResult::Sent => tx.exec(
                "UPDATE outbox SET state = 'sent', body = x'', destination = NULL, attempts = attempts + 1, \
                 leased_until = 0, finished_at = ?2, last_error = NULL WHERE id = ?1",
                params![id, now],
            )?,
            SendResult::Retry { at, error } => tx.exec(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?2, leased_until = 0, last_error = ?3 \
                 WHERE id = ?1",
                params![id, at, error],
            )?,
            SendResult::Failed { error } => tx.exec(
                "UPDATE outbox SET state = 'failed', body = x'', destination = NULL, attempts = attempts + 1, \
                 leased_until = 0, finished_at = ?2, last_error = ?3 WHERE id = ?1",
                params![id, now, error],
            )?,
        };
        Ok((true, farewell && !matches!(result, SendResult::Retry { .. })))
    })?;
    if farewell_done {
        store.scrub_wal();
    }
    Ok(applied)
}

pub(super) fn outbox_counts(store: &SqliteStore) -> Result<OutboxCounts, StoreError> {
    let conn = store.reader()?;
    let mut counts = OutboxCounts::default();
    let mut stmt = conn.prepare_cached("SELECT state, count(*) FROM outbox GROUP BY state")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))?;
    for row in rows {
        let (state, n) = row?;
        match state.as_str() {
            "pending" => counts.pending = n,
            "sent" => counts.sent = n,
            _ => counts.failed = n,
        }
    }
    Ok(counts)
}

pub(super) fn messages_under_other_keys(
    store: &SqliteStore,
    current: &str,
    limit: usize,
) -> Result<Vec<(i64, String, Vec<u8>)>, StoreError> {
    let conn = store.reader()?;
    let mut stmt = conn.prepare_cached(
        "SELECT id, key_id, body FROM outbox WHERE key_id != ?1 AND length(body) > 0 LIMIT ?2",
    )?;
    let rows = stmt
        .query_map(params![current, limit as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

pub(super) fn rekey_message(
    store: &SqliteStore,
    id: i64,
    old_key: &str,
    new_key: &str,
    body: &[u8],
) -> Result<bool, StoreError> {
    store.write(|tx| {
        Ok(tx.exec(
            "UPDATE outbox SET key_id = ?3, body = ?4 WHERE id = ?1 AND key_id = ?2 AND length(body) > 0",
            params![id, old_key, new_key, body],
        )? == 1)
    })
}
