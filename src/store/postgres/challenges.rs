//! Challenges: their rows, settling an answer (attempts, the user's guard, failures), proofs
//! through a confirmed method, and the answer to a challenge.
//!
//! Unlike SQLite there is no single writer: every write here runs under the lock of the
//! challenge's user (`Tx::lock_user`), taken before the challenge, the guard or the
//! failure window is read, so that the read-modify-write of a settlement is exact across
//! nodes.

use serde_json::json;
use tokio_postgres::Row;

use super::apps::load_policy;
use super::audit::{audit, Who};
use super::limits::{consume_jti, take_limits_in};
use super::methods::{load_method, remove_pending_methods};
use super::outbox::{enqueue, enqueue_to_others};
use super::users::{guard_allows_start, load_guard, load_window, save_guard};
use super::{get, get_u32, refused, PgStore, Tx};
use crate::clock::UnixTime;
use crate::domain::assertion::VerifiedAssertion;
use crate::domain::challenge::{
    self, Challenge, ChallengePurpose, ChallengeState, LockRule, Outcome, Refusal, Settlement,
    Verdict,
};
use crate::domain::code::{CodeScheme, StoredCode};
use crate::domain::method::{Method, MethodState};
use crate::domain::policy::AppPolicy;
use crate::store::{
    AnswerNotices, Answered, NewMessage, ProofAnswer, RegisteredPasskey, StartChallenge, StoreError,
};

const CHALLENGE_COLUMNS: &str =
    "id, app_id, user_id, method_id, purpose, code_salt, code_hash, attempts, max_attempts, state, created_at, expires_at, code_key_id, opened_by, ceremony, code_scheme";

fn bad_blob(column: usize) -> StoreError {
    StoreError::Backend(format!("column {column}: wrong length"))
}

fn challenge_from_row(row: &Row) -> Result<Challenge, StoreError> {
    let purpose: String = get(row, 4)?;
    let salt: Option<Vec<u8>> = get(row, 5)?;
    let hash: Option<Vec<u8>> = get(row, 6)?;
    let state: String = get(row, 9)?;
    let scheme: Option<String> = get(row, 15)?;
    let code = match (salt, hash) {
        (Some(salt), Some(hash)) => Some(StoredCode {
            // No scheme: a challenge written before version 7, hashed with Argon2id.
            scheme: CodeScheme::from_stored(scheme.as_deref())
                .ok_or_else(|| StoreError::Backend("column 15: unknown code scheme".into()))?,
            salt: salt.try_into().map_err(|_| bad_blob(5))?,
            hash: hash.try_into().map_err(|_| bad_blob(6))?,
        }),
        _ => None,
    };
    Ok(Challenge {
        id: get(row, 0)?,
        app_id: get(row, 1)?,
        user_id: get(row, 2)?,
        method_id: get(row, 3)?,
        purpose: match purpose.as_str() {
            "proof" => ChallengePurpose::Proof,
            "recover" => ChallengePurpose::Recover,
            _ => ChallengePurpose::Confirm,
        },
        code,
        attempts: get_u32(row, 7)?,
        max_attempts: get_u32(row, 8)?,
        state: match state.as_str() {
            "used" => ChallengeState::Used,
            "dead" => ChallengeState::Dead,
            _ => ChallengeState::Open,
        },
        created_at: get(row, 10)?,
        expires_at: get(row, 11)?,
        code_key_id: get(row, 12)?,
        opened_by: get::<Option<String>>(row, 13)?
            .and_then(|p| ghostkey_proto::assertion::Purpose::parse(&p)),
        ceremony: get(row, 14)?,
    })
}

pub(super) fn load_challenge(tx: &Tx<'_>, id: &str) -> Result<Option<Challenge>, StoreError> {
    tx.opt(
        &format!("SELECT {CHALLENGE_COLUMNS} FROM challenges WHERE id = $1"),
        &[&id],
    )?
    .map(|row| challenge_from_row(&row))
    .transpose()
}

/// Whose challenge `id` is: `(app_id, user_id)`, read without a lock, to know which user
/// to lock before reading the challenge again (its owner never changes).
pub(super) fn challenge_owner(
    tx: &Tx<'_>,
    id: &str,
) -> Result<Option<(String, String)>, StoreError> {
    tx.opt(
        "SELECT app_id, user_id FROM challenges WHERE id = $1",
        &[&id],
    )?
    .map(|row| Ok((get(&row, 0)?, get(&row, 1)?)))
    .transpose()
}

pub(super) fn insert_challenge(tx: &Tx<'_>, ch: &Challenge) -> Result<(), StoreError> {
    let (salt, hash, scheme) = match &ch.code {
        Some(code) => (
            Some(code.salt.to_vec()),
            Some(code.hash.to_vec()),
            code.scheme.stored_name(),
        ),
        None => (None, None, None),
    };
    let opened_by = ch.opened_by.map(|p| p.as_str());
    tx.exec_later(
        &format!("INSERT INTO challenges ({CHALLENGE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"),
        &[
            &ch.id,
            &ch.app_id,
            &ch.user_id,
            &ch.method_id,
            &ch.purpose.as_str(),
            &salt,
            &hash,
            &i64::from(ch.attempts),
            &i64::from(ch.max_attempts),
            &ch.state.as_str(),
            &ch.created_at,
            &ch.expires_at,
            &ch.code_key_id,
            &opened_by,
            &ch.ceremony,
            &scheme,
        ],
    )
}

/// Writes back what [`challenge::settle`] decided.
fn save_settlement(
    tx: &Tx<'_>,
    ch: &Challenge,
    s: &Settlement,
    now: UnixTime,
) -> Result<(), StoreError> {
    // Queued, like every write of a settlement: the settlement was decided already.
    tx.exec_later(
        "UPDATE challenges SET attempts = $2, state = $3 WHERE id = $1",
        &[&ch.id, &i64::from(s.attempts), &s.state.as_str()],
    )?;
    save_guard(tx, &ch.app_id, &ch.user_id, &s.guard)?;
    if s.outcome.is_failure() {
        // Unlike SQLite, failures older than the window are not purged here (nor is the
        // clock floor raised): `maintain` forgets them in the background, so that no
        // answer meets the clock floor's row lock. The window's count filters on time.
        tx.exec_later(
            "INSERT INTO user_failures (app_id, user_id, at) VALUES ($1, $2, $3)",
            &[&ch.app_id, &ch.user_id, &now],
        )?;
    }
    if let Some(step) = s.totp_step {
        tx.exec_later(
            "UPDATE methods SET totp_last_step = $2 WHERE id = $1 AND (totp_last_step IS NULL OR totp_last_step < $2)",
            &[&ch.method_id, &step],
        )?;
    }
    Ok(())
}

/// Loads and settles a challenge; the caller commits whatever the outcome. When the
/// answer locks the user, `locked_notice` goes to every confirmed method of theirs; when a
/// passkey's counter went backwards, `cloned_notice` does.
///
/// The caller holds the lock of the challenge's user (`Tx::lock_user`) and read `ch` under
/// it: the attempts, the guard and the failure window read here are then the latest, and
/// no other settlement about the user commits until this transaction does.
pub(super) fn settle_in(
    tx: &Tx<'_>,
    ch: &Challenge,
    verdict: Verdict,
    lock: LockRule,
    (locked_notice, cloned_notice): (&NewMessage, &NewMessage),
    now: UnixTime,
) -> Result<(Method, Settlement), StoreError> {
    let method = load_method(tx, &ch.method_id)?.ok_or(StoreError::MethodNotFound)?;
    let policy = load_policy(tx, &ch.app_id)?;
    let mut guard = load_guard(tx, &ch.app_id, &ch.user_id)?;
    guard.window = load_window(tx, &ch.app_id, &ch.user_id, now)?;
    let settlement = challenge::settle_with(
        ch,
        &guard,
        verdict,
        method.totp_last_step,
        &policy,
        now,
        lock,
    );
    save_settlement(tx, ch, &settlement, now)?;
    let detail = json!({
        "challenge": ch.id,
        "purpose": ch.purpose.as_str(),
        "method": method.kind.as_str(),
        "outcome": format!("{:?}", settlement.outcome),
        "attempts": settlement.attempts,
    });
    let kind = if settlement.outcome == Outcome::Accepted {
        "code_accepted"
    } else {
        "code_refused"
    };
    audit(tx, now, kind, &ch.app_id, Who::User(&ch.user_id), detail)?;
    if settlement.guard.locked_at.is_some() && guard.locked_at.is_none() {
        audit(
            tx,
            now,
            "user_locked",
            &ch.app_id,
            Who::User(&ch.user_id),
            json!({ "failures": settlement.guard.failures }),
        )?;
        enqueue_to_others(tx, &ch.app_id, &ch.user_id, "", locked_notice, now)?;
    }
    if verdict == Verdict::Refused(Refusal::Cloned) && settlement.outcome.is_failure() {
        audit(
            tx,
            now,
            "passkey_cloned",
            &ch.app_id,
            Who::User(&ch.user_id),
            json!({ "method": method.id }),
        )?;
        enqueue_to_others(tx, &ch.app_id, &ch.user_id, "", cloned_notice, now)?;
    }
    Ok((method, settlement))
}

/// Settles a proof for `assertion`'s user: it must be a proof challenge of theirs on a
/// confirmed method. Inner error: refused, to be committed (failures count).
///
/// The caller holds the lock of the assertion's user; a challenge of another user is
/// refused before anything about it is written.
pub(super) fn settle_proof(
    tx: &Tx<'_>,
    proof: &ProofAnswer,
    assertion: &VerifiedAssertion,
    now: UnixTime,
) -> Result<Result<(), StoreError>, StoreError> {
    settle_proof_with(tx, proof, assertion, LockRule::Enforce, now)
}

/// [`settle_proof`], with the lock enforced or (for the proof that lifts it) not.
pub(super) fn settle_proof_with(
    tx: &Tx<'_>,
    proof: &ProofAnswer,
    assertion: &VerifiedAssertion,
    lock: LockRule,
    now: UnixTime,
) -> Result<Result<(), StoreError>, StoreError> {
    let Some(ch) = load_challenge(tx, &proof.challenge_id)? else {
        return Ok(Err(StoreError::InvalidProof));
    };
    // A proof is the user's answer to what its message asked: one opened for a request of
    // one purpose (a recovery's cancellation) does not authorise another (a method change).
    let opened_for_another = ch.opened_by.is_some_and(|p| p != assertion.purpose);
    if ch.app_id != assertion.app_id
        || ch.user_id != assertion.user_id
        || ch.purpose != ChallengePurpose::Proof
        || opened_for_another
    {
        return Ok(Err(StoreError::InvalidProof));
    }
    let (method, settlement) = settle_in(
        tx,
        &ch,
        proof.verdict,
        lock,
        (&proof.locked_notice, &proof.cloned_notice),
        now,
    )?;
    if method.state != MethodState::Confirmed {
        return Ok(Err(StoreError::InvalidProof));
    }
    Ok(match settlement.outcome {
        Outcome::Accepted => Ok(()),
        other => Err(StoreError::ProofRefused(other)),
    })
}

pub(super) fn start_challenge(
    store: &PgStore,
    cmd: &StartChallenge<'_>,
    now: UnixTime,
) -> Result<(), StoreError> {
    store.write(|tx| {
        let ch = cmd.challenge;
        // The user's lock first, so that the lock check below sees every settlement about
        // them. A user erased meanwhile (no row to lock) makes the insert fail on its
        // foreign key, as in SQLite.
        tx.lock_user(&ch.app_id, &ch.user_id)?;
        consume_jti(tx, cmd.assertion, now)?;
        // A locked user may still get a proof challenge: its answer is what lifts the
        // lock (`POST /v1/users/unlock`), and nothing else accepts it while locked.
        if ch.purpose != ChallengePurpose::Proof {
            guard_allows_start(&load_guard(tx, &ch.app_id, &ch.user_id)?)?;
        }
        take_limits_in(tx, cmd.limits, now)??;
        insert_challenge(tx, ch)?;
        if let Some(msg) = cmd.message {
            enqueue(tx, &ch.app_id, &ch.method_id, msg, now)?;
        }
        audit(
            tx,
            now,
            "challenge_started",
            &ch.app_id,
            Who::User(&ch.user_id),
            json!({ "challenge": ch.id, "purpose": ch.purpose.as_str(), "method": ch.method_id }),
        )?;
        Ok(())
    })
}

pub(super) fn challenge(
    store: &PgStore,
    challenge_id: &str,
) -> Result<Option<(Challenge, Method, AppPolicy)>, StoreError> {
    store.read(|tx| {
        let Some(ch) = load_challenge(tx, challenge_id)? else {
            return Ok(None);
        };
        let Some(method) = load_method(tx, &ch.method_id)? else {
            return Ok(None);
        };
        let policy = load_policy(tx, &ch.app_id)?;
        Ok(Some((ch, method, policy)))
    })
}

pub(super) fn answer_challenge(
    store: &PgStore,
    challenge_id: &str,
    verdict: Verdict,
    registered: Option<&RegisteredPasskey>,
    notices: &AnswerNotices<'_>,
    now: UnixTime,
) -> Result<Answered, StoreError> {
    // No single writer: find whose challenge it is (a read of its own, so that the user's
    // lock is the write's first statement, see `Tx::lock_user`), lock that user, then read
    // the challenge again under the lock (it may have been answered, or erased with its
    // user, meanwhile). Parallel answers about the user settle one after the other.
    let (app_id, user_id) = store
        .autocommit(|tx| challenge_owner(tx, challenge_id))?
        .ok_or(StoreError::MethodNotFound)?;
    store.write(|tx| {
        if !tx.lock_user(&app_id, &user_id)? {
            return Err(StoreError::MethodNotFound);
        }
        let ch = load_challenge(tx, challenge_id)?.ok_or(StoreError::MethodNotFound)?;
        let (method, settlement) = settle_in(
            tx,
            &ch,
            verdict,
            LockRule::Enforce,
            (notices.locked, notices.cloned),
            now,
        )?;
        let mut enrollment_completed = false;
        if settlement.outcome == Outcome::Accepted && ch.purpose == ChallengePurpose::Confirm {
            if let Some(passkey) = registered {
                // The credential the registration ceremony made becomes the method's
                // secret; a credential id registered once already (any user) is refused.
                let taken = tx
                    .opt(
                        "SELECT 1 FROM methods WHERE credential_hash = $1",
                        &[&passkey.credential_hash.as_slice()],
                    )?
                    .is_some();
                if taken {
                    return Err(refused(crate::error::Error::new(
                        ghostkey_proto::ErrorCode::PasskeyRejected,
                    )));
                }
                // Another node may register the same credential (another user's) at
                // once: the unique index decides, and the loser is refused the same way
                // (the whole transaction rolls back: no attempt counted).
                let stored = tx.exec_unique(
                    "UPDATE methods SET key_id = $2, secret = $3, credential_hash = $4 WHERE id = $1 AND kind = 'passkey'",
                    &[&method.id, &passkey.key_id, &passkey.secret, &passkey.credential_hash.as_slice()],
                )?;
                if stored.is_none() {
                    return Err(refused(crate::error::Error::new(
                        ghostkey_proto::ErrorCode::PasskeyRejected,
                    )));
                }
            }
            tx.exec(
                "UPDATE methods SET state = 'confirmed', confirmed_at = $2 WHERE id = $1 AND state = 'pending'",
                &[&method.id, &now],
            )?;
            enrollment_completed = tx.exec(
                "UPDATE users SET state = 'active', updated_at = $3 WHERE app_id = $1 AND user_id = $2 AND state = 'pending'",
                &[&ch.app_id, &ch.user_id, &now],
            )? == 1;
            let mut pending_removed = 0;
            if enrollment_completed {
                // The first confirmed method is the user's: every other method added
                // while they were pending (perhaps by someone else) goes, with its
                // challenges and queued codes, so none can be confirmed later without
                // a proof through this one.
                pending_removed = remove_pending_methods(tx, &ch.app_id, &ch.user_id)?;
                if pending_removed > 0 {
                    enqueue(tx, &ch.app_id, &method.id, notices.pending_removed, now)?;
                }
            }
            enqueue_to_others(tx, &ch.app_id, &ch.user_id, &method.id, notices.added, now)?;
            audit(tx, now, "method_confirmed", &ch.app_id, Who::User(&ch.user_id), json!({ "method": method.id, "enrollment_completed": enrollment_completed, "pending_removed": pending_removed }))?;
        }
        Ok(Answered { challenge: ch, settlement, enrollment_completed })
    })
}
