//! Users: enrolment, the user record, erasure, the sealed virtual device, unlock, and the
//! guard (failures, back-off, lock) with its rolling failure window.
//!
//! Every write about an existing user locks the user's row first ([`Tx::lock_user`]), then
//! consumes the assertion's `jti`, then answers `NotEnrolled` if there was no row: the same
//! refusals, in the same order, as SQLite's `jti`-then-existence checks, with the per-user
//! lock taken before anything else about the user is read.

use ghostkey_proto::api::EnrollmentState;
use serde_json::json;
use sha2::Digest;
use tokio_postgres::Row;

use super::audit::{audit, Who};
use super::challenges::{settle_proof, settle_proof_with};
use super::limits::consume_jti;
use super::methods::{load_methods, method_from_row, methods_sql};
use super::outbox::enqueue_to_others;
use super::{get, get32, get_u32, Params, PgStore, Tx};
use crate::clock::UnixTime;
use crate::domain::assertion::VerifiedAssertion;
use crate::domain::challenge::{FailureWindow, Guard, LockRule, FAILURE_WINDOW_SECS};
use crate::domain::enrollment::Enrollment;
use crate::domain::method::MethodState;
use crate::store::{NewMessage, ProofAnswer, StoreError, UnlockUser, UserRecord};

const GUARD_SQL: &str =
    "SELECT failures, backoff_until, locked_at FROM user_guards WHERE app_id = $1 AND user_id = $2";

pub(super) fn load_guard(tx: &Tx<'_>, app_id: &str, user_id: &str) -> Result<Guard, StoreError> {
    guard_from_row(tx.opt(GUARD_SQL, &[&app_id, &user_id])?.as_ref())
}

/// A user's guard from its row; no row is a guard with nothing counted.
fn guard_from_row(row: Option<&Row>) -> Result<Guard, StoreError> {
    let Some(row) = row else {
        return Ok(Guard::default());
    };
    Ok(Guard {
        failures: get_u32(row, 0)?,
        backoff_until: get(row, 1)?,
        locked_at: get(row, 2)?,
        window: FailureWindow::default(),
    })
}

pub(super) fn save_guard(
    tx: &Tx<'_>,
    app_id: &str,
    user_id: &str,
    guard: &Guard,
) -> Result<(), StoreError> {
    tx.exec_later(
        "INSERT INTO user_guards (app_id, user_id, failures, backoff_until, locked_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (app_id, user_id) DO UPDATE SET failures = $3, backoff_until = $4, locked_at = $5",
        &[
            &app_id,
            &user_id,
            &i64::from(guard.failures),
            &guard.backoff_until,
            &guard.locked_at,
        ],
    )
}

/// The user's failures in the rolling window ending at `now`.
pub(super) fn load_window(
    tx: &Tx<'_>,
    app_id: &str,
    user_id: &str,
    now: UnixTime,
) -> Result<FailureWindow, StoreError> {
    window_from_row(&tx.one(
        WINDOW_SQL,
        &[&app_id, &user_id, &(now - FAILURE_WINDOW_SECS)],
    )?)
}

/// Filtered on time: expired failures stay until maintenance purges them.
const WINDOW_SQL: &str =
    "SELECT count(*), min(at) FROM user_failures WHERE app_id = $1 AND user_id = $2 AND at > $3";

fn window_from_row(row: &Row) -> Result<FailureWindow, StoreError> {
    Ok(FailureWindow {
        count: get_u32(row, 0)?,
        oldest: get(row, 1)?,
    })
}

pub(super) fn guard_allows_start(guard: &Guard) -> Result<(), StoreError> {
    if guard.locked_at.is_some() {
        return Err(StoreError::Locked);
    }
    Ok(())
}

pub(super) fn sealed_blob(tx: &Tx<'_>, app_id: &str, user_id: &str) -> Result<Vec<u8>, StoreError> {
    let row = tx
        .opt(
            "SELECT sealed_virtual_device FROM users WHERE app_id = $1 AND user_id = $2",
            &[&app_id, &user_id],
        )?
        .ok_or(StoreError::NotEnrolled)?;
    get(&row, 0)
}

fn state_to_text(state: EnrollmentState) -> &'static str {
    match state {
        EnrollmentState::Pending => "pending",
        EnrollmentState::Active => "active",
    }
}

/// Locks the user's row (the per-user lock), then consumes the assertion's `jti` (if any),
/// then refuses `NotEnrolled` if the user has no row: SQLite checks the `jti` before the
/// user, so a replayed assertion about an unknown user is `AssertionReplayed` in both.
fn lock_and_consume(
    tx: &Tx<'_>,
    app_id: &str,
    user_id: &str,
    assertion: Option<&VerifiedAssertion>,
    now: UnixTime,
) -> Result<(), StoreError> {
    let exists = tx.lock_user(app_id, user_id)?;
    if let Some(assertion) = assertion {
        consume_jti(tx, assertion, now)?;
    }
    if !exists {
        return Err(StoreError::NotEnrolled);
    }
    Ok(())
}

pub(super) fn enroll(
    store: &PgStore,
    assertion: &VerifiedAssertion,
    e: &Enrollment,
    now: UnixTime,
) -> Result<(), StoreError> {
    store.write(|tx| {
        consume_jti(tx, assertion, now)?;
        // The primary key decides: of two enrolments of one user, the second waits for the
        // first's commit, then inserts nothing (under SERIALIZABLE it may instead meet a
        // serialisation failure, and its re-run inserts nothing). The refusal rolls the
        // whole transaction back, the `jti` with it.
        let inserted = tx.exec(
            "INSERT INTO users (app_id, user_id, state, sealed_virtual_device, vd_signing_key, \
             vd_encryption_key, audit_pseudonym, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) \
             ON CONFLICT (app_id, user_id) DO NOTHING",
            &[
                &e.app_id,
                &e.user_id,
                &state_to_text(e.state),
                &e.sealed_virtual_device,
                &e.signing_key.as_slice(),
                &e.encryption_key.as_slice(),
                &crate::domain::method::new_id("u_"),
                &e.created_at,
            ],
        )?;
        if inserted == 0 {
            return Err(StoreError::AlreadyEnrolled);
        }
        let root_hash: [u8; 32] = sha2::Sha256::digest(&e.root_block).into();
        tx.exec_later(
            "INSERT INTO chain_blocks (app_id, user_id, idx, hash, block, added_at) VALUES ($1, $2, 0, $3, $4, $5)",
            &[&e.app_id, &e.user_id, &root_hash.as_slice(), &e.root_block, &now],
        )?;
        audit(tx, now, "enrolled", &e.app_id, Who::User(&e.user_id), json!({}))?;
        Ok(())
    })
}

/// The enrolment, read in the caller's transaction.
fn load_enrollment(
    tx: &Tx<'_>,
    app_id: &str,
    user_id: &str,
) -> Result<Option<Enrollment>, StoreError> {
    let Some(row) = tx.opt(ENROLLMENT_SQL, &[&app_id, &user_id])? else {
        return Ok(None);
    };
    enrollment_from_row(&row, app_id, user_id).map(Some)
}

const ENROLLMENT_SQL: &str =
    "SELECT u.state, u.sealed_virtual_device, u.vd_signing_key, u.vd_encryption_key, u.created_at, \
     coalesce(c.block, '\\x'::bytea) FROM users u \
     LEFT JOIN chain_blocks c ON c.app_id = u.app_id AND c.user_id = u.user_id AND c.idx = 0 \
     WHERE u.app_id = $1 AND u.user_id = $2";

fn enrollment_from_row(row: &Row, app_id: &str, user_id: &str) -> Result<Enrollment, StoreError> {
    let state: String = get(row, 0)?;
    Ok(Enrollment {
        app_id: app_id.to_owned(),
        user_id: user_id.to_owned(),
        state: if state == "active" {
            EnrollmentState::Active
        } else {
            EnrollmentState::Pending
        },
        sealed_virtual_device: get(row, 1)?,
        signing_key: get32(row, 2)?,
        encryption_key: get32(row, 3)?,
        created_at: get(row, 4)?,
        root_block: get(row, 5)?,
    })
}

pub(super) fn enrollment(
    store: &PgStore,
    app_id: &str,
    user_id: &str,
) -> Result<Option<Enrollment>, StoreError> {
    store.read(|tx| load_enrollment(tx, app_id, user_id))
}

pub(super) fn user(
    store: &PgStore,
    app_id: &str,
    user_id: &str,
) -> Result<Option<UserRecord>, StoreError> {
    // The enrolment, the guard and the methods in one round trip, each statement with its
    // own snapshot (the trait's contract: every write re-reads what it relies on under the
    // user's lock).
    store.autocommit(|tx| {
        let key: Params<'_> = &[&app_id, &user_id];
        let answers = tx.all_together(&[
            (ENROLLMENT_SQL, key),
            (GUARD_SQL, key),
            (&methods_sql(), key),
        ])?;
        let [enrollment, guard, methods] = &answers[..] else {
            return Err(StoreError::Backend("three answers expected".into()));
        };
        let Some(enrollment) = enrollment.first() else {
            return Ok(None);
        };
        Ok(Some(UserRecord {
            enrollment: enrollment_from_row(enrollment, app_id, user_id)?,
            guard: guard_from_row(guard.first())?,
            methods: methods
                .iter()
                .map(method_from_row)
                .collect::<Result<_, _>>()?,
        }))
    })
}

pub(super) fn guard(
    store: &PgStore,
    app_id: &str,
    user_id: &str,
    now: UnixTime,
) -> Result<Guard, StoreError> {
    // One round trip; not one snapshot (the trait's contract: a hint, re-read by the
    // write that settles the answer).
    store.autocommit(|tx| {
        let since = now - FAILURE_WINDOW_SECS;
        let answers = tx.all_together(&[
            (GUARD_SQL, &[&app_id, &user_id]),
            (WINDOW_SQL, &[&app_id, &user_id, &since]),
        ])?;
        let [guard, window] = &answers[..] else {
            return Err(StoreError::Backend("two answers expected".into()));
        };
        let mut guard = guard_from_row(guard.first())?;
        guard.window = window_from_row(
            window
                .first()
                .ok_or_else(|| StoreError::Backend("a count returned no row".into()))?,
        )?;
        Ok(guard)
    })
}

pub(super) fn unlock_user(
    store: &PgStore,
    cmd: &UnlockUser<'_>,
    now: UnixTime,
) -> Result<bool, StoreError> {
    let (app_id, user_id) = (cmd.app_id, cmd.user_id);
    store.write_keeping(|tx| {
        lock_and_consume(tx, app_id, user_id, cmd.assertion, now)?;
        let was_locked = load_guard(tx, app_id, user_id)?.locked_at.is_some();
        let cleared_failures = match (cmd.assertion, cmd.proof) {
            (Some(assertion), Some(proof)) => {
                // The proof is checked despite the lock; an accepted one clears the
                // lock and the back-off as any success does. The budget stays.
                if let Err(refused) =
                    settle_proof_with(tx, proof, assertion, LockRule::Lift, now)?
                {
                    return Ok(Err(refused));
                }
                0
            }
            (Some(_), None) => {
                // Only a user with no confirmed method (nothing a guess could reach)
                // is unlocked without a proof; the budget stays.
                let confirmed = load_methods(tx, app_id, user_id)?
                    .iter()
                    .any(|m| m.state == MethodState::Confirmed);
                if confirmed {
                    return Err(StoreError::ProofRequired);
                }
                let guard = load_guard(tx, app_id, user_id)?;
                save_guard(
                    tx,
                    app_id,
                    user_id,
                    &Guard {
                        window: guard.window,
                        ..Guard::default()
                    },
                )?;
                0
            }
            (None, _) => {
                // An operator also clears the failure budget: part of the unlock, not a
                // purge of expired rows.
                save_guard(tx, app_id, user_id, &Guard::default())?;
                tx.exec(
                    "DELETE FROM user_failures WHERE app_id = $1 AND user_id = $2",
                    &[&app_id, &user_id],
                )?
            }
        };
        enqueue_to_others(tx, app_id, user_id, "", cmd.notice, now)?;
        let by = match (cmd.assertion, cmd.proof) {
            (Some(_), Some(_)) => "proof",
            (Some(_), None) => "manage_assertion_no_confirmed_method",
            (None, _) => "operator",
        };
        audit(
            tx,
            now,
            "user_unlocked",
            app_id,
            Who::User(user_id),
            json!({ "by": by, "was_locked": was_locked, "budget_failures_cleared": cleared_failures }),
        )?;
        Ok(Ok(was_locked))
    })
}

pub(super) fn replace_virtual_device(
    store: &PgStore,
    assertion: &VerifiedAssertion,
    proof: &ProofAnswer,
    sealed: &[u8],
    notice: &NewMessage,
    now: UnixTime,
) -> Result<(), StoreError> {
    let (app_id, user_id) = (assertion.app_id.as_str(), assertion.user_id.as_str());
    // No WAL to scrub afterwards as SQLite does: PostgreSQL's old row versions are
    // reclaimed by (auto)vacuum.
    store.write_keeping(|tx| {
        lock_and_consume(tx, app_id, user_id, Some(assertion), now)?;
        if let Err(refusal) = settle_proof(tx, proof, assertion, now)? {
            return Ok(Err(refusal));
        }
        tx.exec(
            "UPDATE users SET sealed_virtual_device = $3, updated_at = $4 WHERE app_id = $1 AND user_id = $2",
            &[&app_id, &user_id, &sealed, &now],
        )?;
        enqueue_to_others(tx, app_id, user_id, "", notice, now)?;
        audit(tx, now, "virtual_device_replaced", app_id, Who::User(user_id), json!({}))?;
        Ok(Ok(()))
    })
}

pub(super) fn erase_user(
    store: &PgStore,
    app: &str,
    user: &str,
    assertion: Option<&VerifiedAssertion>,
    notice: &NewMessage,
    now: UnixTime,
) -> Result<(), StoreError> {
    store.write(|tx| {
        // The user's lock first, so that no row of theirs is added while the others are
        // deleted (a write waiting for it then finds no user); of two erasures the second
        // finds no row and writes nothing.
        lock_and_consume(tx, app, user, assertion, now)?;
        // Recorded under the pseudonym, before the row that links it to the user goes.
        let by = if assertion.is_some() { "manage_assertion" } else { "operator" };
        audit(tx, now, "user_erased", app, Who::User(user), json!({ "by": by }))?;
        // Told before the rows go: the farewell carries a copy of each confirmed SMS and
        // e-mail destination (still encrypted), wiped once it is sent or given up.
        tx.exec(
            "INSERT INTO outbox (app_id, method_id, kind, key_id, body, state, next_attempt_at, created_at, \
                                 notice_kind, events, channel, destination_key_id, destination) \
             SELECT app_id, NULL, $3::text, $4::text, $5::bytea, 'pending', $6::bigint, $6::bigint, $7::text, 1, \
                    kind, key_id, secret FROM methods \
             WHERE app_id = $1 AND user_id = $2 AND state = 'confirmed' AND kind IN ('sms', 'email')",
            &[
                &app,
                &user,
                &notice.kind.as_str(),
                &notice.key_id,
                &notice.body,
                &now,
                &notice.notice_kind,
            ],
        )?;
        // Foreign keys cascade to guards, methods, challenges, recoveries and queued
        // messages; each is also deleted explicitly so erasure does not hang on them.
        tx.exec(
            "DELETE FROM outbox WHERE method_id IN (SELECT id FROM methods WHERE app_id = $1 AND user_id = $2)",
            &[&app, &user],
        )?;
        tx.exec(
            "DELETE FROM cancel_codes WHERE challenge_id IN (SELECT challenge_id FROM recoveries WHERE app_id = $1 AND user_id = $2)",
            &[&app, &user],
        )?;
        for table in [
            "recoveries",
            "challenges",
            "methods",
            "user_guards",
            "user_failures",
            "chain_blocks",
        ] {
            tx.exec(
                &format!("DELETE FROM {table} WHERE app_id = $1 AND user_id = $2"),
                &[&app, &user],
            )?;
        }
        if tx.exec(
            "DELETE FROM users WHERE app_id = $1 AND user_id = $2",
            &[&app, &user],
        )? == 0
        {
            return Err(StoreError::NotEnrolled);
        }
        Ok(())
    })
    // No WAL to scrub afterwards as SQLite does: PostgreSQL's dead row versions are
    // reclaimed by (auto)vacuum.
}
