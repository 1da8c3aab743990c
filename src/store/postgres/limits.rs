//! Limits: rate counters, single-use assertion `jti`s, the clock floor, and the purge of
//! expired rows.
//!
//! Unlike SQLite, no request transaction purges or raises the clock floor: the floor row
//! would be a lock every such commit meets. [`purge_expired`], run by every node's
//! maintenance, forgets expired rows in small batches and raises the floor in the same
//! transaction.

use super::audit::{audit, Who};
use super::{get, get_u32, PgStore, Tx};
use crate::clock::UnixTime;
use crate::domain::assertion::VerifiedAssertion;
use crate::domain::challenge::FAILURE_WINDOW_SECS;
use crate::domain::limits::Limit;
use crate::store::StoreError;

/// Expired rows forgotten per table per maintenance transaction.
const PURGE_BATCH: i64 = 500;

/// Records a `jti` as used; refuses one seen before. A remembered `jti` whose assertion
/// can no longer be accepted anyway (not yet purged) is taken over.
pub(super) fn consume_jti(
    tx: &Tx<'_>,
    assertion: &VerifiedAssertion,
    now: UnixTime,
) -> Result<(), StoreError> {
    // The primary key decides: of two nodes inserting one `jti` at once, the second waits
    // for the first's commit and then finds the row.
    let inserted = tx.exec(
        "INSERT INTO assertion_jtis (app_id, jti, expires_at) VALUES ($1, $2, $3) \
         ON CONFLICT (app_id, jti) DO UPDATE SET expires_at = EXCLUDED.expires_at \
         WHERE assertion_jtis.expires_at < $4",
        &[
            &assertion.app_id,
            &assertion.jti,
            &assertion.remember_jti_until,
            &now,
        ],
    )?;
    if inserted == 0 {
        return Err(StoreError::AssertionReplayed);
    }
    Ok(())
}

fn limit_full(limit: &Limit, now: UnixTime) -> StoreError {
    StoreError::LimitReached {
        code: limit.code,
        retry_after: limit.retry_after(now),
    }
}

/// The refusal for the first full limit of `limits`, if any (a read: advisory).
fn full_limit(
    tx: &Tx<'_>,
    limits: &[Limit],
    now: UnixTime,
) -> Result<Option<StoreError>, StoreError> {
    // Every count in one round trip.
    let windows: Vec<UnixTime> = limits.iter().map(|l| l.window_start(now)).collect();
    let params: Vec<[&(dyn postgres_types::ToSql + Sync); 3]> = limits
        .iter()
        .zip(&windows)
        .map(|(l, window)| [&l.scope as _, &l.subject as _, window as _])
        .collect();
    let statements: Vec<(&str, super::Params<'_>)> = params
        .iter()
        .map(|p| {
            (
                "SELECT count FROM rate_counters WHERE scope = $1 AND subject = $2 AND window_start = $3",
                &p[..],
            )
        })
        .collect();
    let counts = tx.all_together(&statements)?;
    for (limit, rows) in limits.iter().zip(&counts) {
        let count = match rows.first() {
            Some(row) => get_u32(row, 0)?,
            None => 0,
        };
        if count >= limit.max {
            return Ok(Some(limit_full(limit, now)));
        }
    }
    Ok(None)
}

/// Takes a unit from every limit, or none if any is full.
///
/// Each limit is one conditional upsert whose row count decides (a concurrent taker waits
/// for the row's lock, then re-checks the count), taken in key order so that two
/// transactions never wait for each other's counters. A full limit undoes the units
/// already taken (a savepoint) and names the first full limit in the order of `limits`.
pub(super) fn take_limits_in(
    tx: &Tx<'_>,
    limits: &[Limit],
    now: UnixTime,
) -> Result<Result<(), StoreError>, StoreError> {
    if limits.is_empty() {
        return Ok(Ok(()));
    }
    tx.savepoint(|tx| take_each(tx, limits, now))
}

/// [`take_limits_in`] as a transaction of its own: a full limit fails the transaction,
/// whose rollback undoes the units already taken (no savepoint needed).
fn take_limits_alone(store: &PgStore, limits: &[Limit], now: UnixTime) -> Result<(), StoreError> {
    store.write_read_committed(|tx| take_each(tx, limits, now))
}

/// One conditional upsert per limit, in key order; the first full limit in the order of
/// `limits`, if any (the units taken are then the caller's to undo).
fn take_each(tx: &Tx<'_>, limits: &[Limit], now: UnixTime) -> Result<(), StoreError> {
    let mut order: Vec<usize> = (0..limits.len()).collect();
    order.sort_by(|&a, &b| {
        let (la, lb) = (&limits[a], &limits[b]);
        (la.scope, &la.subject, la.window_start(now)).cmp(&(
            lb.scope,
            &lb.subject,
            lb.window_start(now),
        ))
    });
    {
        let mut first_full: Option<usize> = None;
        for &i in &order {
            let limit = &limits[i];
            let start = limit.window_start(now);
            let taken = limit.max > 0
                && tx.exec(
                    "INSERT INTO rate_counters (scope, subject, window_start, count, expires_at) \
                     VALUES ($1, $2, $3, 1, $4) \
                     ON CONFLICT (scope, subject, window_start) \
                     DO UPDATE SET count = rate_counters.count + 1 WHERE rate_counters.count < $5",
                    &[
                        &limit.scope,
                        &limit.subject,
                        &start,
                        &(start + limit.window_secs),
                        &i64::from(limit.max),
                    ],
                )? == 1;
            if !taken {
                first_full = Some(first_full.map_or(i, |f| f.min(i)));
            }
        }
        match first_full {
            Some(i) => Err(limit_full(&limits[i], now)),
            None => Ok(()),
        }
    }
}

/// Adds one unit to a limit's current window, even over its cap (notices are never
/// refused).
pub(super) fn bump_limit(tx: &Tx<'_>, limit: &Limit, now: UnixTime) -> Result<(), StoreError> {
    let start = limit.window_start(now);
    // Unconditional: queued, it costs the transaction no round trip.
    tx.exec_later(
        "INSERT INTO rate_counters (scope, subject, window_start, count, expires_at) VALUES ($1, $2, $3, 1, $4) \
         ON CONFLICT (scope, subject, window_start) DO UPDATE SET count = rate_counters.count + 1",
        &[&limit.scope, &limit.subject, &start, &(start + limit.window_secs)],
    )
}

/// Spends a unit of the caller's `unspent` limits (if any), then runs `f`: when `f` fails,
/// its writes are undone but the units stay spent (for `write_keeping`). A full limit is
/// an outer error: nothing is written.
pub(super) fn spending<T>(
    tx: &Tx<'_>,
    unspent: &[Limit],
    now: UnixTime,
    f: impl FnOnce(&Tx<'_>) -> Result<T, StoreError>,
) -> Result<Result<T, StoreError>, StoreError> {
    if !unspent.is_empty() {
        take_limits_in(tx, unspent, now)??;
    }
    tx.savepoint(f)
}

/// Spends a unit of each of the caller's `unspent` limits (its address, its app's
/// ceiling), all or none, in a short `READ COMMITTED` transaction of its own, before the
/// write that judges the request: the units stay spent whatever that write does (as the
/// trait documents), and the hot counters (an app's ceiling is spent by every code check
/// of the app) are locked only for one statement each, never through a user's whole
/// transaction, nor made part of a `SERIALIZABLE` one whose every concurrent writer they
/// would conflict with. A full limit refuses the request with nothing written.
pub(super) fn spend_unspent(
    store: &PgStore,
    unspent: &[Limit],
    now: UnixTime,
) -> Result<(), StoreError> {
    if unspent.is_empty() {
        return Ok(());
    }
    take_limits_alone(store, unspent, now)
}

pub(super) fn consume_assertion(
    store: &PgStore,
    assertion: &VerifiedAssertion,
    now: UnixTime,
) -> Result<(), StoreError> {
    store.write(|tx| consume_jti(tx, assertion, now))
}

pub(super) fn take_limits(
    store: &PgStore,
    limits: &[Limit],
    now: UnixTime,
) -> Result<(), StoreError> {
    // Single conditional statements: exact at `READ COMMITTED` whatever the isolation.
    take_limits_alone(store, limits, now)
}

pub(super) fn limits_allow(
    store: &PgStore,
    limits: &[Limit],
    now: UnixTime,
) -> Result<(), StoreError> {
    // Limits are independent: each count is its own statement, with no snapshot in common
    // (the write that takes the units decides; this only spares it a full limit).
    match store.autocommit(|tx| full_limit(tx, limits, now))? {
        Some(full) => Err(full),
        None => Ok(()),
    }
}

/// The floor, and the time of any audited write not yet linked (its transaction relied on
/// that time already).
pub(super) fn time_floor(store: &PgStore) -> Result<UnixTime, StoreError> {
    store.read(|tx| {
        let row = tx
            .opt(
                "SELECT GREATEST(at, COALESCE((SELECT max(at) FROM audit_pending), 0)) \
                 FROM clock_floor WHERE id = 1",
                &[],
            )?
            .ok_or_else(|| StoreError::Backend("the clock floor row is missing".into()))?;
        get(&row, 0)
    })
}

pub(super) fn reset_time_floor(store: &PgStore, to: UnixTime) -> Result<UnixTime, StoreError> {
    store.write(|tx| {
        let row = tx.one("SELECT at FROM clock_floor WHERE id = 1 FOR UPDATE", &[])?;
        let from: i64 = get(&row, 0)?;
        tx.exec("UPDATE clock_floor SET at = $1 WHERE id = 1", &[&to])?;
        audit(
            tx,
            to,
            "clock_floor_reset",
            "",
            Who::Operator,
            serde_json::json!({ "from": from, "to": to }),
        )?;
        Ok(from)
    })
}

/// Forgets a batch of expired `jti`s, rate windows and failures older than the rolling
/// window, and records that the server's time reached `now` (were it to go back, what was
/// forgotten would count again). Rows another node is purging are skipped.
pub(super) fn purge_expired(store: &PgStore, now: UnixTime) -> Result<u64, StoreError> {
    store.write(|tx| {
        let mut purged = tx.exec(
            "DELETE FROM assertion_jtis WHERE (app_id, jti) IN \
             (SELECT app_id, jti FROM assertion_jtis WHERE expires_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
            &[&now, &PURGE_BATCH],
        )?;
        purged += tx.exec(
            "DELETE FROM rate_counters WHERE (scope, subject, window_start) IN \
             (SELECT scope, subject, window_start FROM rate_counters WHERE expires_at < $1 \
              LIMIT $2 FOR UPDATE SKIP LOCKED)",
            &[&now, &PURGE_BATCH],
        )?;
        purged += tx.exec(
            "DELETE FROM user_failures WHERE ctid IN \
             (SELECT ctid FROM user_failures WHERE at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
            &[&(now - FAILURE_WINDOW_SECS), &PURGE_BATCH],
        )?;
        raise_clock_floor(tx, purged, now)?;
        Ok(purged)
    })
}

/// After a purge of `purged` rows that expired before `now`, records that the server's
/// time reached `now`: a clock set back later must not bring those rows' limits back.
pub(super) fn raise_clock_floor(tx: &Tx<'_>, purged: u64, now: UnixTime) -> Result<(), StoreError> {
    if purged > 0 {
        tx.exec(
            "UPDATE clock_floor SET at = GREATEST(at, $1) WHERE id = 1",
            &[&now],
        )?;
    }
    Ok(())
}
