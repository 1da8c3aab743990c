//! The outbox: queueing codes and notices (coalesced), claiming under a lease, finishing,
//! counts, and rekeying queued bodies.

use super::apps::load_policy;
use super::limits::{bump_limit, raise_clock_floor};
use super::methods::{load_method, parse_kind};
use super::{get, get_u32, PgStore, Tx};
use crate::clock::UnixTime;
use crate::domain::limits::Limit;
use crate::store::{
    ClaimedMessage, MessageKind, NewMessage, OutboxCounts, SendResult, StoreError,
    FINISHED_MESSAGE_RETENTION_SECS,
};

/// At most one security notice of a kind is sent to one destination per this many seconds.
pub const NOTICE_WINDOW_SECS: i64 = 3600;

/// Messages forgotten per maintenance pass, at most.
const PURGE_BATCH: i64 = 500;

/// Forgets up to [`PURGE_BATCH`] messages finished (sent or failed for good) more than
/// [`FINISHED_MESSAGE_RETENTION_SECS`] ago, as the SQLite backend does; rows another node
/// is deleting are skipped, not waited for.
pub(super) fn purge_finished(store: &PgStore, now: UnixTime) -> Result<u64, StoreError> {
    let before = now - FINISHED_MESSAGE_RETENTION_SECS;
    store.write(|tx| {
        // `next_attempt_at` (never after `finished_at`) lets the due index find them.
        let purged = tx.exec(
            "DELETE FROM outbox WHERE id IN \
             (SELECT id FROM outbox WHERE state IN ('sent', 'failed') AND next_attempt_at < $1 \
              AND finished_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
            &[&before, &PURGE_BATCH],
        )?;
        raise_clock_floor(tx, purged, now)?;
        Ok(purged)
    })
}

/// Queues a message. A security notice joins a notice of its kind to the same method that
/// is still waiting to go (counted in its `events`); otherwise it is due an hour after the
/// last one of its kind, so one destination gets at most one notice of a kind an hour, and
/// it spends the destination's and the app's send budgets like a code. A notice is never
/// dropped: a full budget delays nothing and refuses nothing, so no one can silence the
/// user's notices by spending their budget first.
///
/// The caller holds the user's lock, so no other write queues to the user's methods
/// meanwhile. A worker claiming the notice to join at the same moment is kept apart by the
/// row lock: the join waits for the claim's commit, then finds the row leased and does not
/// match, and the notice becomes a new message (a leased notice takes no new events).
pub(super) fn enqueue(
    tx: &Tx<'_>,
    app_id: &str,
    method_id: &str,
    msg: &NewMessage,
    now: UnixTime,
) -> Result<(), StoreError> {
    let mut sends = Vec::new();
    if queue(tx, app_id, method_id, msg, now)? {
        sends = notice_send_limits(tx, app_id, method_id)?;
    }
    bump_in_key_order(tx, sends, now)
}

/// Queues `msg` (see [`enqueue`]); `true` when it is a new notice, whose send the caller
/// counts.
fn queue(
    tx: &Tx<'_>,
    app_id: &str,
    method_id: &str,
    msg: &NewMessage,
    now: UnixTime,
) -> Result<bool, StoreError> {
    let mut due = now;
    if let Some(kind) = msg.notice_kind {
        let joined = tx.exec(
            "UPDATE outbox SET events = events + 1 \
             WHERE method_id = $1 AND notice_kind = $2 AND state = 'pending' AND leased_until <= $3",
            &[&method_id, &kind, &now],
        )?;
        if joined > 0 {
            return Ok(false);
        }
        let row = tx.one(
            "SELECT max(created_at) FROM outbox WHERE method_id = $1 AND notice_kind = $2",
            &[&method_id, &kind],
        )?;
        let last: Option<UnixTime> = get(&row, 0)?;
        due = last.map_or(now, |t| (t + NOTICE_WINDOW_SECS).max(now));
    }
    tx.exec_later(
        "INSERT INTO outbox (app_id, method_id, kind, key_id, body, state, next_attempt_at, created_at, notice_kind, events) \
         VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8, 1)",
        &[&app_id, &method_id, &msg.kind.as_str(), &msg.key_id, &msg.body, &due, &now, &msg.notice_kind],
    )?;
    Ok(msg.notice_kind.is_some())
}

/// The budgets a new notice spends a unit of: its destination's hourly and daily budgets
/// and the app's daily budget, even over them (a notice is never refused): codes that come
/// after it are refused sooner.
fn notice_send_limits(
    tx: &Tx<'_>,
    app_id: &str,
    method_id: &str,
) -> Result<Vec<Limit>, StoreError> {
    let Some(method) = load_method(tx, method_id)? else {
        return Ok(Vec::new());
    };
    let Some(mac) = &method.destination_mac else {
        return Ok(Vec::new());
    };
    let p = load_policy(tx, app_id)?;
    Ok(crate::domain::limits::send_limits(
        app_id,
        mac,
        p.sends_per_destination_per_hour,
        p.sends_per_destination_per_day,
        p.app_daily_send_budget,
    ))
}

/// Bumps `limits` in key order, as `take_limits_in` takes counters, so that two writes
/// never wait for each other's counters (a deadlock, re-run): a notice and a code to the
/// same destination, or notices to several methods, which share the app's budget. The
/// order does not change the result: every bump lands.
fn bump_in_key_order(tx: &Tx<'_>, mut limits: Vec<Limit>, now: UnixTime) -> Result<(), StoreError> {
    limits.sort_by(|a, b| {
        (a.scope, &a.subject, a.window_start(now)).cmp(&(b.scope, &b.subject, b.window_start(now)))
    });
    for limit in &limits {
        bump_limit(tx, limit, now)?;
    }
    Ok(())
}

/// Queues `msg` to every confirmed SMS and e-mail method of the user except one.
pub(super) fn enqueue_to_others(
    tx: &Tx<'_>,
    app_id: &str,
    user_id: &str,
    except_method: &str,
    msg: &NewMessage,
    now: UnixTime,
) -> Result<usize, StoreError> {
    let targets: Vec<String> = tx
        .all(
            "SELECT id FROM methods \
             WHERE app_id = $1 AND user_id = $2 AND id != $3 AND state = 'confirmed' AND kind IN ('sms', 'email') \
             ORDER BY created_at, id COLLATE \"C\"",
            &[&app_id, &user_id, &except_method],
        )?
        .iter()
        .map(|r| get(r, 0))
        .collect::<Result<_, StoreError>>()?;
    // Every notice first, then every send counted at once, in one key order.
    let mut sends = Vec::new();
    for method_id in &targets {
        if queue(tx, app_id, method_id, msg, now)? {
            sends.extend(notice_send_limits(tx, app_id, method_id)?);
        }
    }
    bump_in_key_order(tx, sends, now)?;
    Ok(targets.len())
}

/// Leases the oldest due message. Several nodes claim at once: the row is locked with
/// `FOR UPDATE SKIP LOCKED`, so a claimer skips a message another is claiming (and a
/// message whose notice is being joined) instead of waiting for it; once the other commits,
/// its lease keeps the message from being claimed again until it runs out. The lease is on
/// the caller's clock, like every other time the store records.
pub(super) fn claim_message(
    store: &PgStore,
    now: UnixTime,
    lease_secs: i64,
) -> Result<Option<ClaimedMessage>, StoreError> {
    let leased_until = now + lease_secs;
    // One statement, committed on its own: the claim is a single atomic update, and an
    // idle worker's poll (one per request that may have queued a message) costs the
    // server one statement instead of a transaction.
    store.autocommit(|tx| {
        let row = tx.opt(
            "UPDATE outbox SET leased_until = $2 \
             FROM (SELECT o.id, o.app_id, o.kind, COALESCE(m.kind, o.channel) AS channel, \
                          COALESCE(m.key_id, o.destination_key_id) AS destination_key_id, \
                          COALESCE(m.secret, o.destination) AS destination, o.key_id, o.body, \
                          o.attempts, o.events \
                   FROM outbox o LEFT JOIN methods m ON m.id = o.method_id \
                   WHERE o.state = 'pending' AND o.next_attempt_at <= $1 AND o.leased_until <= $1 \
                     AND (m.id IS NOT NULL OR o.destination IS NOT NULL) \
                   ORDER BY o.next_attempt_at, o.id LIMIT 1 \
                   FOR UPDATE OF o SKIP LOCKED) AS claimed \
             WHERE outbox.id = claimed.id \
             RETURNING claimed.id, claimed.app_id, claimed.kind, claimed.channel, \
                       claimed.destination_key_id, claimed.destination, claimed.key_id, \
                       claimed.body, claimed.attempts, claimed.events",
            &[&now, &leased_until],
        )?;
        let Some(r) = row else {
            return Ok(None);
        };
        let kind: String = get(&r, 2)?;
        let channel: String = get(&r, 3)?;
        Ok(Some(ClaimedMessage {
            id: get(&r, 0)?,
            app_id: get(&r, 1)?,
            kind: if kind == "notice" {
                MessageKind::Notice
            } else {
                MessageKind::Code
            },
            channel: parse_kind(&channel)?,
            destination_key_id: get(&r, 4)?,
            destination: get(&r, 5)?,
            body_key_id: get(&r, 6)?,
            body: get(&r, 7)?,
            attempts: get_u32(&r, 8)?,
            events: get_u32(&r, 9)?,
            leased_until,
        }))
    })
}

/// Records how a send attempt ended, only under the claim's own lease: one conditional
/// update whose row count decides (a stale finish changes nothing). A farewell's copy of
/// an erased user's destination goes with its last attempt (`destination = NULL`); SQLite
/// then scrubs its WAL, which has no counterpart here.
pub(super) fn finish_message(
    store: &PgStore,
    id: i64,
    leased_until: UnixTime,
    result: &SendResult,
    now: UnixTime,
) -> Result<bool, StoreError> {
    store.write(|tx| {
        let applied = match result {
            SendResult::Sent => tx.exec(
                "UPDATE outbox SET state = 'sent', body = ''::bytea, destination = NULL, attempts = attempts + 1, \
                 leased_until = 0, finished_at = $3, last_error = NULL \
                 WHERE id = $1 AND state = 'pending' AND leased_until = $2",
                &[&id, &leased_until, &now],
            )?,
            SendResult::Retry { at, error } => tx.exec(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $3, leased_until = 0, last_error = $4 \
                 WHERE id = $1 AND state = 'pending' AND leased_until = $2",
                &[&id, &leased_until, at, error],
            )?,
            SendResult::Failed { error } => tx.exec(
                "UPDATE outbox SET state = 'failed', body = ''::bytea, destination = NULL, attempts = attempts + 1, \
                 leased_until = 0, finished_at = $3, last_error = $4 \
                 WHERE id = $1 AND state = 'pending' AND leased_until = $2",
                &[&id, &leased_until, &now, error],
            )?,
        };
        Ok(applied > 0)
    })
}

pub(super) fn outbox_counts(store: &PgStore) -> Result<OutboxCounts, StoreError> {
    store.read(|tx| {
        let mut counts = OutboxCounts::default();
        for row in tx.all("SELECT state, count(*) FROM outbox GROUP BY state", &[])? {
            let state: String = get(&row, 0)?;
            let n: i64 = get(&row, 1)?;
            let n =
                u64::try_from(n).map_err(|_| StoreError::Backend("a count is negative".into()))?;
            match state.as_str() {
                "pending" => counts.pending = n,
                "sent" => counts.sent = n,
                _ => counts.failed = n,
            }
        }
        Ok(counts)
    })
}

pub(super) fn messages_under_other_keys(
    store: &PgStore,
    current: &str,
    limit: usize,
) -> Result<Vec<(i64, String, Vec<u8>)>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    store.read(|tx| {
        tx.all(
            "SELECT id, key_id, body FROM outbox WHERE key_id != $1 AND octet_length(body) > 0 LIMIT $2",
            &[&current, &limit],
        )?
        .iter()
        .map(|r| Ok((get(r, 0)?, get(r, 1)?, get(r, 2)?)))
        .collect()
    })
}

pub(super) fn rekey_message(
    store: &PgStore,
    id: i64,
    old_key: &str,
    new_key: &str,
    body: &[u8],
) -> Result<bool, StoreError> {
    store.write(|tx| {
        Ok(tx.exec(
            "UPDATE outbox SET key_id = $3, body = $4 WHERE id = $1 AND key_id = $2 AND octet_length(body) > 0",
            &[&id, &old_key, &new_key, &body],
        )? == 1)
    })
}
