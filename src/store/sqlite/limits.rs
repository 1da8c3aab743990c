//! Limits: rate counters, single-use assertion `jti`s, and the clock floor.

use rusqlite::{params, Connection, OptionalExtension};

use super::audit::{audit, Who};
use super::{Cached, SqliteStore};
use crate::clock::UnixTime;
use crate::domain::assertion::VerifiedAssertion;
use crate::domain::limits::Limit;
use crate::store::StoreError;

/// Expired `jti`s deleted per write, so the replay cache stays small without a sweeper.
const JTI_PURGE_BATCH: i64 = 32;

/// After a purge of `purged` rows that expired before `now`, records that the server's
/// time reached `now`: were it to go back before it, what was forgotten would count again
/// (a replayed assertion, a fresh rate window). See [`crate::clock::NeverBackwards`].
pub(super) fn raise_clock_floor(
    tx: &Connection,
    purged: usize,
    now: UnixTime,
) -> Result<(), StoreError> {
    if purged > 0 {
        tx.exec(
            "UPDATE clock_floor SET at = max(at, ?1) WHERE id = 1",
            [now],
        )?;
    }
    Ok(())
}

/// Records a `jti` as used; refuses one seen before. Also forgets a few expired ones.
pub(super) fn consume_jti(
    tx: &Connection,
    assertion: &VerifiedAssertion,
    now: UnixTime,
) -> Result<(), StoreError> {
    let purged = tx.exec(
        "DELETE FROM assertion_jtis WHERE (app_id, jti) IN \
         (SELECT app_id, jti FROM assertion_jtis WHERE expires_at < ?1 LIMIT ?2)",
        params![now, JTI_PURGE_BATCH],
    )?;
    raise_clock_floor(tx, purged, now)?;
    let inserted = tx.exec(
        "INSERT INTO assertion_jtis (app_id, jti, expires_at) VALUES (?1, ?2, ?3) \
         ON CONFLICT (app_id, jti) DO NOTHING",
        params![
            assertion.app_id,
            assertion.jti,
            assertion.remember_jti_until
        ],
    )?;
    if inserted == 0 {
        return Err(StoreError::AssertionReplayed);
    }
    Ok(())
}

/// The refusal for the first full limit of `limits`, if any.
fn full_limit(
    conn: &Connection,
    limits: &[Limit],
    now: UnixTime,
) -> Result<Option<StoreError>, StoreError> {
    for limit in limits {
        let count: u32 = conn
            .one(
                "SELECT count FROM rate_counters WHERE scope = ?1 AND subject = ?2 AND window_start = ?3",
                params![limit.scope, limit.subject, limit.window_start(now)],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(0);
        if count >= limit.max {
            return Ok(Some(StoreError::LimitReached {
                code: limit.code,
                retry_after: limit.retry_after(now),
            }));
        }
    }
    Ok(None)
}

/// Takes a unit from every limit, or none if any is full.
pub(super) fn take_limits_in(
    tx: &Connection,
    limits: &[Limit],
    now: UnixTime,
) -> Result<Result<(), StoreError>, StoreError> {
    let purged = tx.exec(
        "DELETE FROM rate_counters WHERE (scope, subject, window_start) IN \
         (SELECT scope, subject, window_start FROM rate_counters WHERE expires_at < ?1 LIMIT 64)",
        [now],
    )?;
    raise_clock_floor(tx, purged, now)?;
    if let Some(full) = full_limit(tx, limits, now)? {
        return Ok(Err(full));
    }
    for limit in limits {
        bump_limit(tx, limit, now)?;
    }
    Ok(Ok(()))
}

/// Adds one unit to a limit's current window.
pub(super) fn bump_limit(tx: &Connection, limit: &Limit, now: UnixTime) -> Result<(), StoreError> {
    let start = limit.window_start(now);
    tx.exec(
        "INSERT INTO rate_counters (scope, subject, window_start, count, expires_at) VALUES (?1, ?2, ?3, 1, ?4) \
         ON CONFLICT (scope, subject, window_start) DO UPDATE SET count = count + 1",
        params![limit.scope, limit.subject, start, start + limit.window_secs],
    )?;
    Ok(())
}

/// Spends a unit of the caller's `address` limit (if it is still to be spent), then runs
/// `f`: when `f` fails, its writes are undone but the unit stays spent (for
/// `write_keeping`), so a refused request counts against its address as it did when the
/// unit had a transaction of its own. A full limit is an outer error: nothing is written.
pub(super) fn spending<T>(
    tx: &Connection,
    unspent: &[Limit],
    now: UnixTime,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<Result<T, StoreError>, StoreError> {
    if !unspent.is_empty() {
        take_limits_in(tx, unspent, now)??;
    }
    tx.execute_batch("SAVEPOINT after_address_unit")?;
    match f(tx) {
        Ok(value) => {
            tx.execute_batch("RELEASE after_address_unit")?;
            Ok(Ok(value))
        }
        Err(refusal) => {
            if let Err(e) =
                tx.execute_batch("ROLLBACK TO after_address_unit; RELEASE after_address_unit")
            {
                // SQLite rolled the whole transaction back (an I/O error): that is the
                // error worth reporting, and `write_keeping` fails the batch.
                return Err(StoreError::Backend(format!(
                    "{refusal} (then the rollback failed: {e})"
                )));
            }
            Ok(Err(refusal))
        }
    }
}

pub(super) fn consume_assertion(
    store: &SqliteStore,
    assertion: &VerifiedAssertion,
    now: UnixTime,
) -> Result<(), StoreError> {
    store.write(|tx| consume_jti(tx, assertion, now))
}

pub(super) fn take_limits(
    store: &SqliteStore,
    limits: &[Limit],
    now: UnixTime,
) -> Result<(), StoreError> {
    store.write(|tx| take_limits_in(tx, limits, now)?)
}

pub(super) fn limits_allow(
    store: &SqliteStore,
    limits: &[Limit],
    now: UnixTime,
) -> Result<(), StoreError> {
    match full_limit(&*store.reader()?, limits, now)? {
        Some(full) => Err(full),
        None => Ok(()),
    }
}

pub(super) fn time_floor(store: &SqliteStore) -> Result<UnixTime, StoreError> {
    let conn = store.reader()?;
    let floor: Option<i64> = conn
        .one("SELECT at FROM clock_floor WHERE id = 1", [], |r| r.get(0))
        .optional()?;
    floor.ok_or_else(|| StoreError::Backend("the clock floor row is missing".into()))
}

pub(super) fn reset_time_floor(store: &SqliteStore, to: UnixTime) -> Result<UnixTime, StoreError> {
    store.write(|tx| {
        let from: i64 = tx.one("SELECT at FROM clock_floor WHERE id = 1", [], |r| r.get(0))?;
        tx.exec("UPDATE clock_floor SET at = ?1 WHERE id = 1", [to])?;
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
