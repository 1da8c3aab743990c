//! Recoveries: start, verify, release after the waiting period, cancel (with an assertion
//! or a cancel code).
//!
//! Unlike SQLite there is no single writer: every write here first locks the recovery's
//! user (`Tx::lock_user`), then reads the recovery and its challenge. A release, a
//! cancellation and a verified code of one user's recoveries therefore run one after the
//! other on every node, each seeing the states the previous one committed: a recovery is
//! released at most once, and never both released and cancelled.

use serde_json::json;
use tokio_postgres::Row;

use super::apps::load_policy;
use super::audit::{audit, Who};
use super::challenges::{
    challenge_owner, insert_challenge, load_challenge, settle_in, settle_proof,
};
use super::limits::{consume_jti, spend_unspent, spending, take_limits_in};
use super::outbox::{enqueue, enqueue_to_others};
use super::users::{guard_allows_start, load_guard, sealed_blob};
use super::{get, refused, PgStore, Tx};
use crate::clock::UnixTime;
use crate::domain::assertion::VerifiedAssertion;
use crate::domain::challenge::{ChallengePurpose, LockRule, Outcome, Verdict};
use crate::domain::limits::Limit;
use crate::domain::recovery::{self, Recovery, RecoveryState};
use crate::store::{
    CancelCodeMac, NewMessage, ProofAnswer, RecoveryNotices, StartRecovery, StoreError,
    VerifiedRecovery,
};

/// Stores a cancel code. Its MAC is the primary key; a conflict (two random 100-bit codes
/// alike) fails as `Backend`, as in SQLite.
fn insert_cancel_code(
    tx: &Tx<'_>,
    code: &CancelCodeMac,
    challenge_id: &str,
    now: UnixTime,
) -> Result<(), StoreError> {
    tx.exec_later(
        "INSERT INTO cancel_codes (mac, challenge_id, created_at, key_id) VALUES ($1, $2, $3, $4)",
        &[&code.mac, &challenge_id, &now, &code.key_id],
    )
}

/// Marks a recovery cancelled and kills its challenge (a late right code releases
/// nothing), notifying every method. The caller holds the user's lock.
fn cancel_in(
    tx: &Tx<'_>,
    rec: &mut Recovery,
    notice: &NewMessage,
    by: &str,
    now: UnixTime,
) -> Result<(), StoreError> {
    rec.state = RecoveryState::Cancelled;
    rec.cancelled_at = Some(now);
    save_recovery(tx, rec)?;
    tx.exec_later(
        "UPDATE challenges SET state = 'dead' WHERE id = $1 AND state = 'open'",
        &[&rec.challenge_id],
    )?;
    // Its cancel codes have done their work.
    tx.exec_later(
        "DELETE FROM cancel_codes WHERE challenge_id = $1",
        &[&rec.challenge_id],
    )?;
    enqueue_to_others(tx, &rec.app_id, &rec.user_id, "", notice, now)?;
    audit(
        tx,
        now,
        "recovery_cancelled",
        &rec.app_id,
        Who::User(&rec.user_id),
        json!({ "recovery": rec.challenge_id, "by": by }),
    )?;
    Ok(())
}

const RECOVERY_COLUMNS: &str =
    "challenge_id, app_id, user_id, method_id, state, available_at, released_at, cancelled_at, created_at";

fn recovery_from_row(row: &Row) -> Result<Recovery, StoreError> {
    let state: String = get(row, 4)?;
    Ok(Recovery {
        challenge_id: get(row, 0)?,
        app_id: get(row, 1)?,
        user_id: get(row, 2)?,
        method_id: get(row, 3)?,
        state: RecoveryState::parse(&state)
            .ok_or_else(|| StoreError::Backend("column 4: unknown recovery state".into()))?,
        available_at: get(row, 5)?,
        released_at: get(row, 6)?,
        cancelled_at: get(row, 7)?,
        created_at: get(row, 8)?,
    })
}

fn load_recovery(tx: &Tx<'_>, challenge_id: &str) -> Result<Option<Recovery>, StoreError> {
    tx.opt(
        &format!("SELECT {RECOVERY_COLUMNS} FROM recoveries WHERE challenge_id = $1"),
        &[&challenge_id],
    )?
    .map(|row| recovery_from_row(&row))
    .transpose()
}

/// The recovery `challenge_id` of the assertion's user, or `RecoveryNotFound` (also for
/// another user's recovery: its existence is not revealed). The caller holds the lock of
/// the assertion's user.
fn load_own_recovery(
    tx: &Tx<'_>,
    assertion: &VerifiedAssertion,
    challenge_id: &str,
) -> Result<Recovery, StoreError> {
    match load_recovery(tx, challenge_id)? {
        Some(r) if r.app_id == assertion.app_id && r.user_id == assertion.user_id => Ok(r),
        _ => Err(StoreError::RecoveryNotFound),
    }
}

fn save_recovery(tx: &Tx<'_>, r: &Recovery) -> Result<(), StoreError> {
    tx.exec_later(
        "UPDATE recoveries SET state = $2, available_at = $3, released_at = $4, cancelled_at = $5 WHERE challenge_id = $1",
        &[&r.challenge_id, &r.state.as_str(), &r.available_at, &r.released_at, &r.cancelled_at],
    )
}

pub(super) fn start_recovery(
    store: &PgStore,
    cmd: &StartRecovery<'_>,
    now: UnixTime,
) -> Result<(), StoreError> {
    // The caller's unspent units first, in a transaction of their own (see
    // `limits::spend_unspent`): spent even when the start is refused.
    spend_unspent(store, cmd.unspent, now)?;
    store.write_keeping(|tx| {
        let ch = cmd.challenge;
        // The user's lock first (the lock order: the user's row, then rate counters), so
        // that a cancellation by code sees this recovery or runs before it starts. A user
        // erased meanwhile (no row to lock) makes the insert fail on its foreign key, as in
        // SQLite.
        tx.lock_user(&ch.app_id, &ch.user_id)?;
        spending(tx, &[], now, |tx| {
            consume_jti(tx, cmd.assertion, now)?;
            // A locked user may still get a proof challenge: its answer is what lifts the
            // lock (`POST /v1/users/unlock`), and nothing else accepts it while locked.
            if ch.purpose != ChallengePurpose::Proof {
                guard_allows_start(&load_guard(tx, &ch.app_id, &ch.user_id)?)?;
            }
            take_limits_in(tx, cmd.limits, now)??;
            insert_challenge(tx, ch)?;
            tx.exec_later(
                &format!("INSERT INTO recoveries ({RECOVERY_COLUMNS}) VALUES ($1, $2, $3, $4, 'started', NULL, NULL, NULL, $5)"),
                &[&ch.id, &ch.app_id, &ch.user_id, &ch.method_id, &now],
            )?;
            if let Some(msg) = cmd.message {
                enqueue(tx, &ch.app_id, &ch.method_id, msg, now)?;
            }
            // The code is kept only if a notice carries it to someone.
            if enqueue_to_others(tx, &ch.app_id, &ch.user_id, &ch.method_id, cmd.notice, now)? > 0 {
                insert_cancel_code(tx, cmd.cancel_code, &ch.id, now)?;
            }
            audit(tx, now, "recovery_started", &ch.app_id, Who::User(&ch.user_id), json!({ "recovery": ch.id, "method": ch.method_id }))?;
            Ok(())
        })
    })
}

pub(super) fn recovery(
    store: &PgStore,
    challenge_id: &str,
) -> Result<Option<Recovery>, StoreError> {
    store.read(|tx| load_recovery(tx, challenge_id))
}

pub(super) fn verify_recovery(
    store: &PgStore,
    challenge_id: &str,
    unspent: &[Limit],
    verdict: Verdict,
    notices: &RecoveryNotices<'_>,
    now: UnixTime,
) -> Result<VerifiedRecovery, StoreError> {
    // The caller's unspent units first, in a transaction of their own (see
    // `limits::spend_unspent`): spent even when the code is refused, or the id unknown.
    spend_unspent(store, unspent, now)?;
    // Whose recovery it is (a read of its own, so that the user's lock is the write's first
    // statement, see `Tx::lock_user`), then that user's lock, then the challenge and the
    // recovery again under the lock.
    let owner = store.autocommit(|tx| challenge_owner(tx, challenge_id))?;
    store.write_keeping(|tx| {
        let locked = match &owner {
            Some((app_id, user_id)) => tx.lock_user(app_id, user_id)?,
            None => false,
        };
        spending(tx, &[], now, |tx| {
            // Not locked: no such challenge (or its user was erased meanwhile, and it with
            // them); nothing is read without the lock.
            let ch = if locked {
                load_challenge(tx, challenge_id)?
            } else {
                None
            }
            .ok_or(StoreError::RecoveryNotFound)?;
            let mut rec = load_recovery(tx, challenge_id)?.ok_or(StoreError::RecoveryNotFound)?;
            // A cancelled recovery says so, whatever the code, and counts nothing.
            if rec.state == RecoveryState::Cancelled {
                return Err(refused(crate::error::Error::new(
                    ghostkey_proto::ErrorCode::RecoveryCancelled,
                )));
            }
            let (_, settlement) = settle_in(
                tx,
                &ch,
                verdict,
                LockRule::Enforce,
                (notices.locked, notices.cloned),
                now,
            )?;
            let mut sealed = None;
            if settlement.outcome == Outcome::Accepted {
                let policy = load_policy(tx, &ch.app_id)?;
                let (state, at) = recovery::after_verified_code(policy.waiting_period_secs, now);
                rec.state = state;
                rec.available_at = Some(at);
                if state == RecoveryState::Released {
                    rec.released_at = Some(now);
                    // A released recovery can no longer be cancelled: its codes are void.
                    tx.exec_later(
                        "DELETE FROM cancel_codes WHERE challenge_id = $1",
                        &[&rec.challenge_id],
                    )?;
                    sealed = Some(sealed_blob(tx, &ch.app_id, &ch.user_id)?);
                    enqueue_to_others(
                        tx,
                        &ch.app_id,
                        &ch.user_id,
                        &ch.method_id,
                        notices.released,
                        now,
                    )?;
                } else if enqueue_to_others(tx, &ch.app_id, &ch.user_id, "", notices.waiting, now)?
                    > 0
                {
                    insert_cancel_code(tx, notices.waiting_cancel_code, &ch.id, now)?;
                }
                save_recovery(tx, &rec)?;
                let kind = if state == RecoveryState::Released {
                    "recovery_released"
                } else {
                    "recovery_waiting"
                };
                audit(
                    tx,
                    now,
                    kind,
                    &ch.app_id,
                    Who::User(&ch.user_id),
                    json!({ "recovery": ch.id, "available_at": at }),
                )?;
            }
            Ok(VerifiedRecovery {
                settlement,
                recovery: rec,
                sealed,
            })
        })
    })
}

pub(super) fn release_recovery(
    store: &PgStore,
    assertion: &VerifiedAssertion,
    challenge_id: &str,
    notice: &NewMessage,
    now: UnixTime,
) -> Result<(Recovery, Vec<u8>), StoreError> {
    store.write(|tx| {
        // Only the assertion's user's recovery can be released: their lock first, so that
        // of a release and a cancellation the second sees the first's state. A user
        // erased meanwhile has no recovery left: `RecoveryNotFound`, as in SQLite.
        tx.lock_user(&assertion.app_id, &assertion.user_id)?;
        consume_jti(tx, assertion, now)?;
        let mut rec = load_own_recovery(tx, assertion, challenge_id)?;
        recovery::check_release(&rec, now).map_err(refused)?;
        rec.state = RecoveryState::Released;
        rec.released_at = Some(now);
        // A released recovery can no longer be cancelled: its codes are void.
        tx.exec_later(
            "DELETE FROM cancel_codes WHERE challenge_id = $1",
            &[&rec.challenge_id],
        )?;
        save_recovery(tx, &rec)?;
        let sealed = sealed_blob(tx, &rec.app_id, &rec.user_id)?;
        enqueue_to_others(tx, &rec.app_id, &rec.user_id, &rec.method_id, notice, now)?;
        audit(
            tx,
            now,
            "recovery_released",
            &rec.app_id,
            Who::User(&rec.user_id),
            json!({ "recovery": rec.challenge_id, "after_waiting": true }),
        )?;
        Ok((rec, sealed))
    })
}

pub(super) fn cancel_recovery(
    store: &PgStore,
    assertion: &VerifiedAssertion,
    proof: Option<&ProofAnswer>,
    challenge_id: &str,
    notice: &NewMessage,
    now: UnixTime,
) -> Result<Recovery, StoreError> {
    store.write_keeping(|tx| {
        // The assertion's user's lock first (their recovery, and their proof challenge).
        // A user erased meanwhile has no recovery left: `RecoveryNotFound`, as in SQLite.
        tx.lock_user(&assertion.app_id, &assertion.user_id)?;
        consume_jti(tx, assertion, now)?;
        let mut rec = load_own_recovery(tx, assertion, challenge_id)?;
        recovery::check_cancel(&rec).map_err(refused)?;
        if let Some(proof) = proof {
            if let Err(refusal) = settle_proof(tx, proof, assertion, now)? {
                return Ok(Err(refusal));
            }
        }
        let by = if proof.is_some() {
            "user_proof"
        } else {
            "manage_assertion"
        };
        cancel_in(tx, &mut rec, notice, by, now)?;
        Ok(Ok(rec))
    })
}

pub(super) fn recovery_by_cancel_code(
    store: &PgStore,
    mac: &[u8],
) -> Result<Option<Recovery>, StoreError> {
    store.read(|tx| {
        let id: Option<String> = tx
            .opt(
                "SELECT challenge_id FROM cancel_codes WHERE mac = $1",
                &[&mac],
            )?
            .map(|r| get(&r, 0))
            .transpose()?;
        match id {
            Some(id) => load_recovery(tx, &id),
            None => Ok(None),
        }
    })
}

pub(super) fn cancel_recovery_by_code(
    store: &PgStore,
    mac: &[u8],
    notice: &NewMessage,
    now: UnixTime,
) -> Result<Recovery, StoreError> {
    let invalid = || {
        refused(crate::error::Error::new(
            ghostkey_proto::ErrorCode::InvalidCode,
        ))
    };
    store.write(|tx| {
        // Whose code it is (a plain read), then that user's lock: the recoveries open
        // below are then all of theirs (one started meanwhile commits before this reads
        // them, or starts after this commits), and no other use of the code runs at once.
        let owner = tx.opt(
            "SELECT r.app_id, r.user_id FROM cancel_codes c \
             JOIN recoveries r ON r.challenge_id = c.challenge_id WHERE c.mac = $1",
            &[&mac],
        )?;
        let Some(owner) = owner else {
            return Err(invalid());
        };
        let (app_id, user_id): (String, String) = (get(&owner, 0)?, get(&owner, 1)?);
        if !tx.lock_user(&app_id, &user_id)? {
            return Err(invalid());
        }
        // Spent, even if its own recovery had ended before. Spending is deleting: the
        // delete's row count decides, so of two uses of one code the second finds it
        // spent. (SQLite deletes it last; in one transaction the order does not matter,
        // and a refusal below rolls the delete back.)
        let id: Option<String> = tx
            .opt(
                "DELETE FROM cancel_codes WHERE mac = $1 RETURNING challenge_id",
                &[&mac],
            )?
            .map(|r| get(&r, 0))
            .transpose()?;
        let rec = match id {
            Some(id) => load_recovery(tx, &id)?,
            None => None,
        }
        .ok_or_else(invalid)?;
        // The code stops every open recovery of its user: notices of one kind are
        // coalesced, so the code the user got may be from the first of several.
        // (`COLLATE "C"`: ids in byte order, as SQLite sorts them.)
        let open: Vec<String> = tx
            .all(
                "SELECT challenge_id FROM recoveries WHERE app_id = $1 AND user_id = $2 \
                 AND state IN ('started', 'waiting') ORDER BY created_at, challenge_id COLLATE \"C\"",
                &[&rec.app_id, &rec.user_id],
            )?
            .iter()
            .map(|r| get(r, 0))
            .collect::<Result<_, _>>()?;
        if open.is_empty() {
            recovery::check_cancel(&rec).map_err(refused)?;
        }
        let mut answer = rec.clone();
        for id in open {
            if let Some(mut other) = load_recovery(tx, &id)? {
                cancel_in(tx, &mut other, notice, "cancel_code", now)?;
                if other.challenge_id == rec.challenge_id {
                    answer = other;
                }
            }
        }
        Ok(answer)
    })
}

pub(super) fn user_recoveries(
    store: &PgStore,
    app_id: &str,
    user_id: &str,
) -> Result<Vec<Recovery>, StoreError> {
    store.read(|tx| {
        tx.all(
            &format!(
                "SELECT {RECOVERY_COLUMNS} FROM recoveries WHERE app_id = $1 AND user_id = $2 ORDER BY created_at DESC"
            ),
            &[&app_id, &user_id],
        )?
        .iter()
        .map(recovery_from_row)
        .collect()
    })
}
