//! Apps: their keys, policy and web origins, and the key an assertion names.

use serde_json::json;
use tokio_postgres::Row;

use super::audit::{audit, Who};
use super::{get, get_u32, PgStore, Tx};
use crate::clock::UnixTime;
use crate::domain::app::{App, AppKey, KeyLookup};
use crate::domain::policy::{AppPolicy, MethodKind};
use crate::store::{OriginStanding, OriginSubject, StoreError};

pub(super) const APP_COLUMNS: &str =
    "id, name, created_at, allowed_methods, code_digits, totp_digits, \
    code_lifetime_secs, max_attempts_per_challenge, user_lock_threshold, user_backoff_base_secs, \
    sends_per_destination_per_hour, sends_per_destination_per_day, app_daily_send_budget, \
    requests_per_address_per_minute, waiting_period_secs, user_failures_per_day, \
    recovery_starts_per_user_per_day, code_checks_per_app_per_minute, passkey_rp_id";

fn methods_to_text(methods: &[MethodKind]) -> String {
    methods
        .iter()
        .map(|m| m.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

pub(super) fn app_from_row(row: &Row) -> Result<App, StoreError> {
    let methods: String = get(row, 3)?;
    let allowed_methods = methods
        .split(',')
        .map(|m| {
            MethodKind::parse(m)
                .ok_or_else(|| StoreError::Backend("column 3: unknown method".into()))
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(App {
        id: get(row, 0)?,
        name: get(row, 1)?,
        created_at: get(row, 2)?,
        policy: AppPolicy {
            allowed_methods,
            code_digits: get_u32(row, 4)?,
            totp_digits: get_u32(row, 5)?,
            code_lifetime_secs: get(row, 6)?,
            max_attempts_per_challenge: get_u32(row, 7)?,
            user_lock_threshold: get_u32(row, 8)?,
            user_backoff_base_secs: get(row, 9)?,
            sends_per_destination_per_hour: get_u32(row, 10)?,
            sends_per_destination_per_day: get_u32(row, 11)?,
            app_daily_send_budget: get_u32(row, 12)?,
            requests_per_address_per_minute: get_u32(row, 13)?,
            waiting_period_secs: get(row, 14)?,
            user_failures_per_day: get_u32(row, 15)?,
            recovery_starts_per_user_per_day: get_u32(row, 16)?,
            code_checks_per_app_per_minute: get_u32(row, 17)?,
            passkey_rp_id: get(row, 18)?,
        },
    })
}

fn key_from_row(row: &Row) -> Result<AppKey, StoreError> {
    let public_key: Vec<u8> = get(row, 1)?;
    Ok(AppKey {
        kid: get(row, 0)?,
        public_key: public_key
            .try_into()
            .map_err(|_| StoreError::Backend("stored public key is not 32 bytes".into()))?,
        created_at: get(row, 2)?,
        revoked_at: get(row, 3)?,
    })
}

fn app_exists(tx: &Tx<'_>, app_id: &str) -> Result<bool, StoreError> {
    Ok(tx
        .opt("SELECT 1 FROM apps WHERE id = $1", &[&app_id])?
        .is_some())
}

/// An app's policy, read once per transaction: no transaction that reads it writes it,
/// and one read keeps every use in the transaction on the same policy.
pub(super) fn load_policy(tx: &Tx<'_>, app_id: &str) -> Result<AppPolicy, StoreError> {
    if let Some(policy) = tx.policies.borrow().get(app_id) {
        return Ok(policy.clone());
    }
    let policy = tx
        .opt(
            &format!("SELECT {APP_COLUMNS} FROM apps WHERE id = $1"),
            &[&app_id],
        )?
        .map(|row| app_from_row(&row))
        .transpose()?
        .map(|app| app.policy)
        .ok_or(StoreError::UnknownApp)?;
    tx.policies
        .borrow_mut()
        .insert(app_id.to_owned(), policy.clone());
    Ok(policy)
}

/// An app's policy as the `apps` columns store it (every number a `bigint`).
struct PolicyColumns {
    allowed_methods: String,
    code_digits: i64,
    totp_digits: i64,
    max_attempts_per_challenge: i64,
    user_lock_threshold: i64,
    sends_per_destination_per_hour: i64,
    sends_per_destination_per_day: i64,
    app_daily_send_budget: i64,
    requests_per_address_per_minute: i64,
    user_failures_per_day: i64,
    recovery_starts_per_user_per_day: i64,
    code_checks_per_app_per_minute: i64,
}

impl PolicyColumns {
    fn of(p: &AppPolicy) -> PolicyColumns {
        PolicyColumns {
            allowed_methods: methods_to_text(&p.allowed_methods),
            code_digits: i64::from(p.code_digits),
            totp_digits: i64::from(p.totp_digits),
            max_attempts_per_challenge: i64::from(p.max_attempts_per_challenge),
            user_lock_threshold: i64::from(p.user_lock_threshold),
            sends_per_destination_per_hour: i64::from(p.sends_per_destination_per_hour),
            sends_per_destination_per_day: i64::from(p.sends_per_destination_per_day),
            app_daily_send_budget: i64::from(p.app_daily_send_budget),
            requests_per_address_per_minute: i64::from(p.requests_per_address_per_minute),
            user_failures_per_day: i64::from(p.user_failures_per_day),
            recovery_starts_per_user_per_day: i64::from(p.recovery_starts_per_user_per_day),
            code_checks_per_app_per_minute: i64::from(p.code_checks_per_app_per_minute),
        }
    }
}

pub(super) fn create_app(store: &PgStore, app: &App, first_key: &AppKey) -> Result<(), StoreError> {
    let p = &app.policy;
    let c = PolicyColumns::of(p);
    store.write(|tx| {
        // A second creation of the same id fails on the primary key, as `Backend` (app
        // ids are random, made by the operator's command).
        tx.exec(
            &format!("INSERT INTO apps ({APP_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"),
            &[
                &app.id,
                &app.name,
                &app.created_at,
                &c.allowed_methods,
                &c.code_digits,
                &c.totp_digits,
                &p.code_lifetime_secs,
                &c.max_attempts_per_challenge,
                &c.user_lock_threshold,
                &p.user_backoff_base_secs,
                &c.sends_per_destination_per_hour,
                &c.sends_per_destination_per_day,
                &c.app_daily_send_budget,
                &c.requests_per_address_per_minute,
                &p.waiting_period_secs,
                &c.user_failures_per_day,
                &c.recovery_starts_per_user_per_day,
                &c.code_checks_per_app_per_minute,
                &p.passkey_rp_id,
            ],
        )?;
        tx.exec(
            "INSERT INTO app_keys (app_id, kid, public_key, created_at, revoked_at) VALUES ($1, $2, $3, $4, NULL)",
            &[&app.id, &first_key.kid, &first_key.public_key.as_slice(), &first_key.created_at],
        )?;
        audit(tx, app.created_at, "app_added", &app.id, Who::Operator, json!({ "kid": first_key.kid }))?;
        Ok(())
    })
}

pub(super) fn list_apps(store: &PgStore) -> Result<Vec<App>, StoreError> {
    store.read(|tx| {
        tx.all(
            &format!("SELECT {APP_COLUMNS} FROM apps ORDER BY created_at, id COLLATE \"C\""),
            &[],
        )?
        .iter()
        .map(app_from_row)
        .collect()
    })
}

pub(super) fn app(store: &PgStore, app_id: &str) -> Result<Option<App>, StoreError> {
    store.autocommit(|tx| {
        tx.opt(
            &format!("SELECT {APP_COLUMNS} FROM apps WHERE id = $1"),
            &[&app_id],
        )?
        .map(|row| app_from_row(&row))
        .transpose()
    })
}

pub(super) fn app_keys(store: &PgStore, app_id: &str) -> Result<Vec<AppKey>, StoreError> {
    store.read(|tx| {
        tx.all(
            "SELECT kid, public_key, created_at, revoked_at FROM app_keys WHERE app_id = $1 ORDER BY created_at, kid COLLATE \"C\"",
            &[&app_id],
        )?
        .iter()
        .map(key_from_row)
        .collect()
    })
}

pub(super) fn add_app_key(store: &PgStore, app_id: &str, key: &AppKey) -> Result<(), StoreError> {
    store.write(|tx| {
        // Apps are never deleted: the check cannot go stale.
        if !app_exists(tx, app_id)? {
            return Err(StoreError::UnknownApp);
        }
        // Of two concurrent additions of one `kid`, the second waits for the first's
        // commit and then does nothing: its row count is the refusal.
        let inserted = tx.exec(
            "INSERT INTO app_keys (app_id, kid, public_key, created_at, revoked_at) VALUES ($1, $2, $3, $4, NULL) \
             ON CONFLICT (app_id, kid) DO NOTHING",
            &[&app_id, &key.kid, &key.public_key.as_slice(), &key.created_at],
        )?;
        if inserted == 0 {
            return Err(StoreError::KeyExists);
        }
        audit(tx, key.created_at, "app_key_added", app_id, Who::Operator, json!({ "kid": key.kid }))?;
        Ok(())
    })
}

pub(super) fn revoke_app_key(
    store: &PgStore,
    app_id: &str,
    kid: &str,
    now: UnixTime,
) -> Result<(), StoreError> {
    store.write(|tx| {
        if !app_exists(tx, app_id)? {
            return Err(StoreError::UnknownApp);
        }
        // No single writer here: the conditional update's row count decides which of two
        // concurrent revocations lands (SQLite reads `revoked_at`, then updates).
        let revoked = tx.exec(
            "UPDATE app_keys SET revoked_at = $3 WHERE app_id = $1 AND kid = $2 AND revoked_at IS NULL",
            &[&app_id, &kid, &now],
        )?;
        if revoked == 0 {
            // Keys are never deleted: a key that exists now existed at the update.
            let exists = tx
                .opt(
                    "SELECT 1 FROM app_keys WHERE app_id = $1 AND kid = $2",
                    &[&app_id, &kid],
                )?
                .is_some();
            return Err(if exists {
                StoreError::KeyAlreadyRevoked
            } else {
                StoreError::UnknownKey
            });
        }
        audit(
            tx,
            now,
            "app_key_revoked",
            app_id,
            Who::Operator,
            json!({ "kid": kid }),
        )?;
        Ok(())
    })
}

pub(super) fn set_app_policy(
    store: &PgStore,
    app_id: &str,
    p: &AppPolicy,
    now: UnixTime,
) -> Result<(), StoreError> {
    let c = PolicyColumns::of(p);
    store.write(|tx| {
        // A policy read earlier in this transaction is no longer the app's.
        tx.policies.borrow_mut().remove(app_id);
        let updated = tx.exec(
            "UPDATE apps SET allowed_methods = $2, code_digits = $3, totp_digits = $4, code_lifetime_secs = $5, \
             max_attempts_per_challenge = $6, user_lock_threshold = $7, user_backoff_base_secs = $8, \
             sends_per_destination_per_hour = $9, sends_per_destination_per_day = $10, \
             app_daily_send_budget = $11, requests_per_address_per_minute = $12, waiting_period_secs = $13, \
             user_failures_per_day = $14, recovery_starts_per_user_per_day = $15, \
             code_checks_per_app_per_minute = $16, passkey_rp_id = $17 \
             WHERE id = $1",
            &[
                &app_id,
                &c.allowed_methods,
                &c.code_digits,
                &c.totp_digits,
                &p.code_lifetime_secs,
                &c.max_attempts_per_challenge,
                &c.user_lock_threshold,
                &p.user_backoff_base_secs,
                &c.sends_per_destination_per_hour,
                &c.sends_per_destination_per_day,
                &c.app_daily_send_budget,
                &c.requests_per_address_per_minute,
                &p.waiting_period_secs,
                &c.user_failures_per_day,
                &c.recovery_starts_per_user_per_day,
                &c.code_checks_per_app_per_minute,
                &p.passkey_rp_id,
            ],
        )?;
        if updated == 0 {
            return Err(StoreError::UnknownApp);
        }
        let policy = serde_json::to_value(p).map_err(|e| StoreError::Backend(e.to_string()))?;
        audit(tx, now, "app_policy_set", app_id, Who::Operator, policy)?;
        Ok(())
    })
}

pub(super) fn app_origins(store: &PgStore, app_id: &str) -> Result<Vec<String>, StoreError> {
    store.read(|tx| {
        tx.all(
            "SELECT origin FROM app_origins WHERE app_id = $1 ORDER BY origin COLLATE \"C\"",
            &[&app_id],
        )?
        .iter()
        .map(|r| get(r, 0))
        .collect()
    })
}

pub(super) fn add_app_origin(
    store: &PgStore,
    app_id: &str,
    origin: &str,
    now: UnixTime,
) -> Result<bool, StoreError> {
    store.write(|tx| {
        if !app_exists(tx, app_id)? {
            return Err(StoreError::UnknownApp);
        }
        let inserted = tx.exec(
            "INSERT INTO app_origins (app_id, origin, added_at) VALUES ($1, $2, $3) \
             ON CONFLICT (app_id, origin) DO NOTHING",
            &[&app_id, &origin, &now],
        )?;
        if inserted == 0 {
            return Ok(false);
        }
        audit(
            tx,
            now,
            "app_origin_added",
            app_id,
            Who::Operator,
            json!({ "origin": origin }),
        )?;
        Ok(true)
    })
}

pub(super) fn remove_app_origin(
    store: &PgStore,
    app_id: &str,
    origin: &str,
    now: UnixTime,
) -> Result<bool, StoreError> {
    store.write(|tx| {
        if !app_exists(tx, app_id)? {
            return Err(StoreError::UnknownApp);
        }
        let removed = tx.exec(
            "DELETE FROM app_origins WHERE app_id = $1 AND origin = $2",
            &[&app_id, &origin],
        )?;
        if removed == 0 {
            return Ok(false);
        }
        audit(
            tx,
            now,
            "app_origin_removed",
            app_id,
            Who::Operator,
            json!({ "origin": origin }),
        )?;
        Ok(true)
    })
}

pub(super) fn origin_standing(
    store: &PgStore,
    subject: OriginSubject<'_>,
    origin: &str,
) -> Result<OriginStanding, StoreError> {
    store.read(|tx| {
        let app_id: Option<String> = match subject {
            OriginSubject::App(id) => tx
                .opt("SELECT id FROM apps WHERE id = $1", &[&id])?
                .map(|r| get(&r, 0))
                .transpose()?,
            OriginSubject::Challenge(id) => tx
                .opt("SELECT app_id FROM challenges WHERE id = $1", &[&id])?
                .map(|r| get(&r, 0))
                .transpose()?,
            OriginSubject::Unknown => None,
        };
        let allowed_for_app = match &app_id {
            Some(app) => tx
                .opt(
                    "SELECT 1 FROM app_origins WHERE app_id = $1 AND origin = $2",
                    &[app, &origin],
                )?
                .is_some(),
            None => false,
        };
        let allowed_for_any = allowed_for_app
            || tx
                .opt(
                    "SELECT 1 FROM app_origins WHERE origin = $1 LIMIT 1",
                    &[&origin],
                )?
                .is_some();
        Ok(OriginStanding {
            app_known: app_id.is_some(),
            allowed_for_app,
            allowed_for_any,
        })
    })
}

pub(super) fn lookup_assertion_key(
    store: &PgStore,
    app_id: &str,
    kid: &str,
) -> Result<KeyLookup, StoreError> {
    store.autocommit(|tx| {
        // One query answers all three questions: does the app exist, the key, is it revoked.
        let row = tx.opt(
            "SELECT k.public_key, k.revoked_at FROM apps a \
             LEFT JOIN app_keys k ON k.app_id = a.id AND k.kid = $2 WHERE a.id = $1",
            &[&app_id, &kid],
        )?;
        let row: Option<(Option<Vec<u8>>, Option<UnixTime>)> = row
            .map(|r| Ok::<_, StoreError>((get(&r, 0)?, get(&r, 1)?)))
            .transpose()?;
        Ok(match row {
            None => KeyLookup::UnknownApp,
            Some((None, _)) => KeyLookup::UnknownKey,
            Some((Some(_), Some(_))) => KeyLookup::Revoked,
            Some((Some(pk), None)) => KeyLookup::Active(
                pk.try_into()
                    .map_err(|_| StoreError::Backend("stored public key is not 32 bytes".into()))?,
            ),
        })
    })
}

pub(super) fn app_activity(
    store: &PgStore,
    app_id: &str,
    since: UnixTime,
) -> Result<(u64, u64, Option<UnixTime>), StoreError> {
    let count =
        |n: i64| u64::try_from(n).map_err(|_| StoreError::Backend("a count is negative".into()));
    store.read(|tx| {
        let users: i64 = get(
            &tx.one("SELECT count(*) FROM users WHERE app_id = $1", &[&app_id])?,
            0,
        )?;
        // Events not yet linked into the chain are still in `audit_pending` (linking moves
        // them in one transaction, and this read is one snapshot: none is counted twice).
        let row = tx.one(
            "SELECT count(*) FILTER (WHERE at >= $2), max(at) FROM ( \
                 SELECT at FROM audit_events WHERE app_id = $1 \
                 UNION ALL \
                 SELECT at FROM audit_pending WHERE app_id = $1 \
             ) e",
            &[&app_id, &since],
        )?;
        let recent: i64 = get(&row, 0)?;
        let last: Option<UnixTime> = get(&row, 1)?;
        Ok((count(users)?, count(recent)?, last))
    })
}
