//! Verification methods: add, confirm-time cleanup, remove, and their data keys (rotation).

use serde_json::json;
use tokio_postgres::Row;

use super::audit::{audit, Who};
use super::challenges::{insert_challenge, settle_proof};
use super::limits::{consume_jti, take_limits_in};
use super::outbox::{enqueue, enqueue_to_others};
use super::users::{guard_allows_start, load_guard};
use super::{get, PgStore, Tx};
use crate::clock::UnixTime;
use crate::domain::method::{Method, MethodState};
use crate::domain::policy::MethodKind;
use crate::store::{AddMethod, RemoveMethod, StoreError};

pub(super) fn parse_kind(s: &str) -> Result<MethodKind, StoreError> {
    MethodKind::parse(s).ok_or_else(|| StoreError::Backend(format!("unknown method kind {s:?}")))
}

const METHOD_COLUMNS: &str =
    "id, app_id, user_id, kind, state, key_id, secret, destination_mac, totp_last_step, created_at, confirmed_at";

pub(super) fn method_from_row(row: &Row) -> Result<Method, StoreError> {
    let kind: String = get(row, 3)?;
    let state: String = get(row, 4)?;
    Ok(Method {
        id: get(row, 0)?,
        app_id: get(row, 1)?,
        user_id: get(row, 2)?,
        kind: parse_kind(&kind)?,
        state: if state == "confirmed" {
            MethodState::Confirmed
        } else {
            MethodState::Pending
        },
        key_id: get(row, 5)?,
        secret: get(row, 6)?,
        destination_mac: get(row, 7)?,
        totp_last_step: get(row, 8)?,
        created_at: get(row, 9)?,
        confirmed_at: get(row, 10)?,
    })
}

pub(super) fn load_method(tx: &Tx<'_>, id: &str) -> Result<Option<Method>, StoreError> {
    tx.opt(
        &format!("SELECT {METHOD_COLUMNS} FROM methods WHERE id = $1"),
        &[&id],
    )?
    .as_ref()
    .map(method_from_row)
    .transpose()
}

pub(super) fn load_methods(
    tx: &Tx<'_>,
    app_id: &str,
    user_id: &str,
) -> Result<Vec<Method>, StoreError> {
    tx.all(&methods_sql(), &[&app_id, &user_id])?
        .iter()
        .map(method_from_row)
        .collect()
}

/// A user's methods (`$1`, `$2`: app and user), oldest first. `COLLATE "C"`: ids compared
/// byte by byte, as SQLite's BINARY collation does (the database's collation may order
/// mixed-case ids otherwise).
pub(super) fn methods_sql() -> String {
    format!(
        "SELECT {METHOD_COLUMNS} FROM methods WHERE app_id = $1 AND user_id = $2 \
         ORDER BY created_at, id COLLATE \"C\""
    )
}

/// Deletes every pending method of a user, with their challenges and unsent messages;
/// answers how many methods went.
pub(super) fn remove_pending_methods(
    tx: &Tx<'_>,
    app_id: &str,
    user_id: &str,
) -> Result<usize, StoreError> {
    let pending = "SELECT id FROM methods WHERE app_id = $1 AND user_id = $2 AND state = 'pending'";
    tx.exec(
        &format!("DELETE FROM outbox WHERE state = 'pending' AND method_id IN ({pending})"),
        &[&app_id, &user_id],
    )?;
    tx.exec(
        &format!("DELETE FROM challenges WHERE method_id IN ({pending})"),
        &[&app_id, &user_id],
    )?;
    let removed = tx.exec(
        "DELETE FROM methods WHERE app_id = $1 AND user_id = $2 AND state = 'pending'",
        &[&app_id, &user_id],
    )?;
    usize::try_from(removed).map_err(|_| StoreError::Backend("row count out of range".into()))
}

pub(super) fn add_method(
    store: &PgStore,
    cmd: &AddMethod<'_>,
    now: UnixTime,
) -> Result<(), StoreError> {
    store.write_keeping(|tx| {
        let (app_id, user_id) = (&cmd.assertion.app_id, &cmd.assertion.user_id);
        // The user's lock first: the lock check, the proof requirement, the proof, the
        // method count and the insert all see (and hold) the state the insert commits
        // on. The `jti` before the existence check, as in SQLite.
        let exists = tx.lock_user(app_id, user_id)?;
        consume_jti(tx, cmd.assertion, now)?;
        if !exists {
            return Err(StoreError::NotEnrolled);
        }
        guard_allows_start(&load_guard(tx, app_id, user_id)?)?;
        let methods = load_methods(tx, app_id, user_id)?;
        let has_confirmed = methods.iter().any(|m| m.state == MethodState::Confirmed);
        match (has_confirmed, cmd.proof) {
            (true, None) => return Err(StoreError::ProofRequired),
            (_, Some(proof)) => {
                if let Err(refused) = settle_proof(tx, proof, cmd.assertion, now)? {
                    return Ok(Err(refused));
                }
            }
            (false, None) => {}
        }
        if methods.len() >= cmd.max_methods {
            return Ok(Err(StoreError::TooManyMethods));
        }
        if let Err(limit) = take_limits_in(tx, cmd.limits, now)? {
            // A spent proof stays spent: commit it with the refusal.
            return if cmd.proof.is_some() { Ok(Err(limit)) } else { Err(limit) };
        }
        let m = cmd.method;
        // A new method has no `credential_hash` yet (NULL, which the unique index does not
        // compare): a passkey's credential is stored when its `confirm` answer is accepted.
        tx.exec(
            &format!(
                "INSERT INTO methods ({METHOD_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
            ),
            &[
                &m.id,
                &m.app_id,
                &m.user_id,
                &m.kind.as_str(),
                &m.state.as_str(),
                &m.key_id,
                &m.secret,
                &m.destination_mac,
                &m.totp_last_step,
                &m.created_at,
                &m.confirmed_at,
            ],
        )?;
        insert_challenge(tx, cmd.challenge)?;
        if let Some(msg) = cmd.message {
            enqueue(tx, app_id, &m.id, msg, now)?;
        }
        audit(
            tx,
            now,
            "method_added",
            app_id,
            Who::User(user_id),
            json!({ "method": m.id, "kind": m.kind.as_str() }),
        )?;
        Ok(Ok(()))
    })
}

pub(super) fn remove_method(
    store: &PgStore,
    cmd: &RemoveMethod<'_>,
    now: UnixTime,
) -> Result<(), StoreError> {
    store.write_keeping(|tx| {
        let (app_id, user_id) = (&cmd.assertion.app_id, &cmd.assertion.user_id);
        // The user's lock first: the other confirmed methods are counted, and the method
        // deleted, with no other write about the user in between, so of parallel removals
        // of the last two confirmed methods the second to get the lock finds one left
        // (`LastMethod`). The `jti` before the existence check, as in SQLite.
        let exists = tx.lock_user(app_id, user_id)?;
        consume_jti(tx, cmd.assertion, now)?;
        if !exists {
            return Err(StoreError::NotEnrolled);
        }
        let methods = load_methods(tx, app_id, user_id)?;
        let Some(target) = methods.iter().find(|m| m.id == cmd.method_id) else {
            return Err(StoreError::MethodNotFound);
        };
        let others_confirmed = methods
            .iter()
            .filter(|m| m.id != target.id && m.state == MethodState::Confirmed)
            .count();
        if target.state == MethodState::Confirmed && others_confirmed == 0 {
            return Err(StoreError::LastMethod);
        }
        if let Err(refused) = settle_proof(tx, cmd.proof, cmd.assertion, now)? {
            return Ok(Err(refused));
        }
        tx.exec("DELETE FROM methods WHERE id = $1", &[&target.id])?;
        enqueue_to_others(tx, app_id, user_id, &target.id, cmd.notice, now)?;
        audit(
            tx,
            now,
            "method_removed",
            app_id,
            Who::User(user_id),
            json!({ "method": target.id, "kind": target.kind.as_str() }),
        )?;
        Ok(Ok(()))
    })
}

pub(super) fn credential_registered(
    store: &PgStore,
    credential_hash: &[u8; 32],
) -> Result<bool, StoreError> {
    let hash: &[u8] = credential_hash;
    store.read(|tx| {
        Ok(tx
            .opt("SELECT 1 FROM methods WHERE credential_hash = $1", &[&hash])?
            .is_some())
    })
}

pub(super) fn methods_under_other_keys(
    store: &PgStore,
    current: &str,
    limit: usize,
) -> Result<Vec<Method>, StoreError> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    store.read(|tx| {
        tx.all(
            &format!(
                // A passphrase method stays under its key: its hash was made with that key's
                // pepper, which no rotation can redo without the verifier.
                "SELECT {METHOD_COLUMNS} FROM methods WHERE key_id != $1 AND kind != 'passphrase' LIMIT $2"
            ),
            &[&current, &limit],
        )?
        .iter()
        .map(method_from_row)
        .collect()
    })
}

pub(super) fn rekey_method(
    store: &PgStore,
    method_id: &str,
    old_key: &str,
    new_key: &str,
    secret: &[u8],
    destination_mac: Option<&[u8]>,
) -> Result<bool, StoreError> {
    // One conditional statement, no user lock: the compare-and-set on `key_id` is exact
    // (a concurrent writer of the row holds its row lock; this update waits for it and
    // then re-checks `key_id` on the row as committed), and it takes no other lock.
    store.write(|tx| {
        Ok(tx.exec(
            "UPDATE methods SET key_id = $3, secret = $4, destination_mac = $5 WHERE id = $1 AND key_id = $2",
            &[&method_id, &old_key, &new_key, &secret, &destination_mac],
        )? == 1)
    })
}

pub(super) fn key_ids_in_use(store: &PgStore, now: UnixTime) -> Result<Vec<String>, StoreError> {
    store.read(|tx| {
        tx.all(
            "SELECT key_id FROM methods \
             UNION SELECT key_id FROM outbox WHERE octet_length(body) > 0 \
             UNION SELECT destination_key_id FROM outbox WHERE destination IS NOT NULL \
             UNION SELECT code_key_id FROM challenges \
                   WHERE code_key_id IS NOT NULL AND state = 'open' AND expires_at > $1 \
             UNION SELECT c.key_id FROM cancel_codes c \
                   JOIN recoveries r ON r.challenge_id = c.challenge_id \
                   JOIN challenges ch ON ch.id = c.challenge_id \
                   WHERE c.key_id IS NOT NULL AND (r.state = 'waiting' \
                         OR (r.state = 'started' AND ch.state = 'open' AND ch.expires_at > $1))",
            &[&now],
        )?
        .iter()
        .map(|row| get::<String>(row, 0))
        .collect()
    })
}

pub(super) fn key_usage(
    store: &PgStore,
    key_id: &str,
    now: UnixTime,
) -> Result<(u64, u64, u64), StoreError> {
    // One snapshot for the five counts (SQLite's are separate statements).
    store.read(|tx| {
        let count = |sql: &str, p: super::Params<'_>| -> Result<u64, StoreError> {
            let n: i64 = get(&tx.one(sql, p)?, 0)?;
            u64::try_from(n).map_err(|_| StoreError::Backend("negative count".into()))
        };
        Ok((
            count("SELECT count(*) FROM methods WHERE key_id = $1", &[&key_id])?
                + count(
                    "SELECT count(*) FROM outbox WHERE destination_key_id = $1 AND destination IS NOT NULL",
                    &[&key_id],
                )?,
            count(
                "SELECT count(*) FROM outbox WHERE key_id = $1 AND octet_length(body) > 0",
                &[&key_id],
            )?,
            count(
                "SELECT count(*) FROM challenges WHERE code_key_id = $1 AND state = 'open' AND expires_at > $2",
                &[&key_id, &now],
            )? + count(LIVE_CANCEL_CODES_UNDER_KEY, &[&key_id, &now])?,
        ))
    })
}

/// Cancel codes under a key that can still stop something: those of a waiting recovery
/// (until its release), or of a started one whose challenge can still be answered.
const LIVE_CANCEL_CODES_UNDER_KEY: &str = "SELECT count(*) FROM cancel_codes c \
     JOIN recoveries r ON r.challenge_id = c.challenge_id \
     JOIN challenges ch ON ch.id = c.challenge_id \
     WHERE c.key_id = $1 AND (r.state = 'waiting' \
           OR (r.state = 'started' AND ch.state = 'open' AND ch.expires_at > $2))";
