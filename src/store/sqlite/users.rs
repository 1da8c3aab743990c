//! Users: enrolment, the user record, erasure, the sealed virtual device, unlock, and the
//! guard (failures, back-off, lock) with its rolling failure window.

use ghostkey_proto::api::EnrollmentState;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::json;
use sha2::Digest;

use super::audit::{audit, Who};
use super::challenges::{settle_proof, settle_proof_with};
use super::limits::consume_jti;
use super::methods::load_methods;
use super::outbox::enqueue_to_others;
use super::{Cached, SqliteStore};
use crate::clock::UnixTime;
use crate::domain::assertion::VerifiedAssertion;
use crate::domain::challenge::{FailureWindow, Guard, LockRule, FAILURE_WINDOW_SECS};
use crate::domain::enrollment::Enrollment;
use crate::domain::method::MethodState;
use crate::store::{NewMessage, ProofAnswer, StoreError, UnlockUser, UserRecord};

pub(super) fn load_guard(
    tx: &Connection,
    app_id: &str,
    user_id: &str,
) -> Result<Guard, StoreError> {
    Ok(tx
        .one(
            "SELECT failures, backoff_until, locked_at FROM user_guards WHERE app_id = ?1 AND user_id = ?2",
            params![app_id, user_id],
            |r| Ok(Guard { failures: r.get(0)?, backoff_until: r.get(1)?, locked_at: r.get(2)?, window: FailureWindow::default() }),
        )
        .optional()?
        .unwrap_or_default())
}

pub(super) fn save_guard(
    tx: &Connection,
    app_id: &str,
    user_id: &str,
    guard: &Guard,
) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO user_guards (app_id, user_id, failures, backoff_until, locked_at) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (app_id, user_id) DO UPDATE SET failures = ?3, backoff_until = ?4, locked_at = ?5",
        params![app_id, user_id, guard.failures, guard.backoff_until, guard.locked_at],
    )?;
    Ok(())
}

pub(super) fn user_exists(
    tx: &Connection,
    app_id: &str,
    user_id: &str,
) -> Result<bool, StoreError> {
    Ok(tx
        .one(
            "SELECT 1 FROM users WHERE app_id = ?1 AND user_id = ?2",
            params![app_id, user_id],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// The user's failures in the rolling window ending at `now`.
pub(super) fn load_window(
    tx: &Connection,
    app_id: &str,
    user_id: &str,
    now: UnixTime,
) -> Result<FailureWindow, StoreError> {
    let (count, oldest): (u32, Option<UnixTime>) = tx.one(
        "SELECT count(*), min(at) FROM user_failures WHERE app_id = ?1 AND user_id = ?2 AND at > ?3",
        params![app_id, user_id, now - FAILURE_WINDOW_SECS],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(FailureWindow { count, oldest })
}

pub(super) fn guard_allows_start(guard: &Guard) -> Result<(), StoreError> {
    if guard.locked_at.is_some() {
        return Err(StoreError::Locked);
    }
    Ok(())
}

pub(super) fn sealed_blob(
    tx: &Connection,
    app_id: &str,
    user_id: &str,
) -> Result<Vec<u8>, StoreError> {
    tx.one(
        "SELECT sealed_virtual_device FROM users WHERE app_id = ?1 AND user_id = ?2",
        params![app_id, user_id],
        |r| r.get(0),
    )
    .optional()?
    .ok_or(StoreError::NotEnrolled)
}

fn state_to_text(state: EnrollmentState) -> &'static str {
    match state {
        EnrollmentState::Pending => "pending",
        EnrollmentState::Active => "active",
    }
}

pub(super) fn enroll(
    store: &SqliteStore,
    assertion: &VerifiedAssertion,
    e: &Enrollment,
    now: UnixTime,
) -> Result<(), StoreError> {
    store.write(|tx| {
        consume_jti(tx, assertion, now)?;
        let inserted = tx.exec(
            "INSERT INTO users (app_id, user_id, state, sealed_virtual_device, vd_signing_key, \
             vd_encryption_key, audit_pseudonym, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8) \
             ON CONFLICT (app_id, user_id) DO NOTHING",
            params![
                e.app_id,
                e.user_id,
                state_to_text(e.state),
                e.sealed_virtual_device,
                e.signing_key,
                e.encryption_key,
                crate::domain::method::new_id("u_"),
                e.created_at,
            ],
        )?;
        if inserted == 0 {
            return Err(StoreError::AlreadyEnrolled);
        }
        let root_hash: [u8; 32] = sha2::Sha256::digest(&e.root_block).into();
        tx.exec(
            "INSERT INTO chain_blocks (app_id, user_id, idx, hash, block, added_at) VALUES (?1, ?2, 0, ?3, ?4, ?5)",
            params![e.app_id, e.user_id, root_hash, e.root_block, now],
        )?;
        audit(tx, now, "enrolled", &e.app_id, Who::User(&e.user_id), json!({}))?;
        Ok(())
    })
}

pub(super) fn enrollment(
    store: &SqliteStore,
    app_id: &str,
    user_id: &str,
) -> Result<Option<Enrollment>, StoreError> {
    let conn = store.reader()?;
    Ok(conn
        .one(
            "SELECT u.state, u.sealed_virtual_device, u.vd_signing_key, u.vd_encryption_key, u.created_at, \
             coalesce(c.block, x'') FROM users u \
             LEFT JOIN chain_blocks c ON c.app_id = u.app_id AND c.user_id = u.user_id AND c.idx = 0 \
             WHERE u.app_id = ?1 AND u.user_id = ?2",
            params![app_id, user_id],
            |r| {
                let state: String = r.get(0)?;
                Ok(Enrollment {
                    app_id: app_id.to_owned(),
                    user_id: user_id.to_owned(),
                    state: if state == "active" { EnrollmentState::Active } else { EnrollmentState::Pending },
                    sealed_virtual_device: r.get(1)?,
                    signing_key: r.get(2)?,
                    encryption_key: r.get(3)?,
                    created_at: r.get(4)?,
                    root_block: r.get(5)?,
                })
            },
        )
        .optional()?)
}

pub(super) fn user(
    store: &SqliteStore,
    app_id: &str,
    user_id: &str,
) -> Result<Option<UserRecord>, StoreError> {
    let Some(enrollment) = enrollment(store, app_id, user_id)? else {
        return Ok(None);
    };
    let conn = store.reader()?;
    Ok(Some(UserRecord {
        enrollment,
        guard: load_guard(&conn, app_id, user_id)?,
        methods: load_methods(&conn, app_id, user_id)?,
    }))
}

pub(super) fn guard(
    store: &SqliteStore,
    app_id: &str,
    user_id: &str,
    now: UnixTime,
) -> Result<Guard, StoreError> {
    let conn = store.reader()?;
    let mut guard = load_guard(&conn, app_id, user_id)?;
    guard.window = load_window(&conn, app_id, user_id, now)?;
    Ok(guard)
}

pub(super) fn unlock_user(
    store: &SqliteStore,
    cmd: &UnlockUser<'_>,
    now: UnixTime,
) -> Result<bool, StoreError> {
    let (app_id, user_id) = (cmd.app_id, cmd.user_id);
    store.write_keeping(|tx| {
        if let Some(assertion) = cmd.assertion {
            consume_jti(tx, assertion, now)?;
        }
        if !user_exists(tx, app_id, user_id)? {
            return Err(StoreError::NotEnrolled);
        }
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
                save_guard(tx, app_id, user_id, &Guard { window: guard.window, ..Guard::default() })?;
                0
            }
            (None, _) => {
                save_guard(tx, app_id, user_id, &Guard::default())?;
                tx.exec(
                    "DELETE FROM user_failures WHERE app_id = ?1 AND user_id = ?2",
                    params![app_id, user_id],
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
    store: &SqliteStore,
    assertion: &VerifiedAssertion,
    proof: &ProofAnswer,
    sealed: &[u8],
    notice: &NewMessage,
    now: UnixTime,
) -> Result<(), StoreError> {
    store.write_keeping(|tx| {
        consume_jti(tx, assertion, now)?;
        if !user_exists(tx, &assertion.app_id, &assertion.user_id)? {
            return Err(StoreError::NotEnrolled);
        }
        if let Err(refusal) = settle_proof(tx, proof, assertion, now)? {
            return Ok(Err(refusal));
        }
        tx.exec(
            "UPDATE users SET sealed_virtual_device = ?3, updated_at = ?4 WHERE app_id = ?1 AND user_id = ?2",
            params![assertion.app_id, assertion.user_id, sealed, now],
        )?;
        enqueue_to_others(tx, &assertion.app_id, &assertion.user_id, "", notice, now)?;
        audit(tx, now, "virtual_device_replaced", &assertion.app_id, Who::User(&assertion.user_id), json!({}))?;
        Ok(Ok(()))
    })?;
    store.scrub_wal();
    Ok(())
}

pub(super) fn erase_user(
    store: &SqliteStore,
    app: &str,
    user: &str,
    assertion: Option<&VerifiedAssertion>,
    notice: &NewMessage,
    now: UnixTime,
) -> Result<(), StoreError> {
    store.write(|tx| {
        if let Some(assertion) = assertion {
            consume_jti(tx, assertion, now)?;
        }
        // Recorded under the pseudonym, before the row that links it to the user goes.
        let by = if assertion.is_some() { "manage_assertion" } else { "operator" };
        audit(tx, now, "user_erased", app, Who::User(user), json!({ "by": by }))?;
        // Told before the rows go: the farewell carries a copy of each confirmed SMS and
        // e-mail destination (still encrypted), wiped once it is sent or given up.
        tx.exec(
            "INSERT INTO outbox (app_id, method_id, kind, key_id, body, state, next_attempt_at, created_at, \
                                 notice_kind, events, channel, destination_key_id, destination) \
             SELECT app_id, NULL, ?3, ?4, ?5, 'pending', ?6, ?6, ?7, 1, kind, key_id, secret FROM methods \
             WHERE app_id = ?1 AND user_id = ?2 AND state = 'confirmed' AND kind IN ('sms', 'email')",
            params![app, user, notice.kind.as_str(), notice.key_id, notice.body, now, notice.notice_kind],
        )?;
        // Foreign keys cascade to guards, methods, challenges, recoveries and queued
        // messages; each is also deleted explicitly so erasure does not hang on them.
        tx.exec(
            "DELETE FROM outbox WHERE method_id IN (SELECT id FROM methods WHERE app_id = ?1 AND user_id = ?2)",
            params![app, user],
        )?;
        tx.exec(
            "DELETE FROM cancel_codes WHERE challenge_id IN (SELECT challenge_id FROM recoveries WHERE app_id = ?1 AND user_id = ?2)",
            params![app, user],
        )?;
        for table in ["recoveries", "challenges", "methods", "user_guards", "user_failures", "chain_blocks"] {
            tx.exec(&format!("DELETE FROM {table} WHERE app_id = ?1 AND user_id = ?2"), params![app, user])?;
        }
        if tx.exec("DELETE FROM users WHERE app_id = ?1 AND user_id = ?2", params![app, user])? == 0 {
            return Err(StoreError::NotEnrolled);
        }
        Ok(())
    })?;
    store.scrub_wal();
    Ok(())
}
