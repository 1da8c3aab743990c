//! Apps: their keys, policy and web origins, and the key an assertion names.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde_json::json;

use super::audit::{audit, Who};
use super::{Cached, SqliteStore};
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

fn app_from_row(row: &Row<'_>) -> rusqlite::Result<App> {
    let methods: String = row.get(3)?;
    let allowed_methods = methods
        .split(',')
        .map(|m| {
            MethodKind::parse(m).ok_or_else(|| {
                rusqlite::Error::FromSqlConversionFailure(
                    3,
                    rusqlite::types::Type::Text,
                    "unknown method".into(),
                )
            })
        })
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(App {
        id: row.get(0)?,
        name: row.get(1)?,
        created_at: row.get(2)?,
        policy: AppPolicy {
            allowed_methods,
            code_digits: row.get(4)?,
            totp_digits: row.get(5)?,
            code_lifetime_secs: row.get(6)?,
            max_attempts_per_challenge: row.get(7)?,
            user_lock_threshold: row.get(8)?,
            user_backoff_base_secs: row.get(9)?,
            sends_per_destination_per_hour: row.get(10)?,
            sends_per_destination_per_day: row.get(11)?,
            app_daily_send_budget: row.get(12)?,
            requests_per_address_per_minute: row.get(13)?,
            waiting_period_secs: row.get(14)?,
            user_failures_per_day: row.get(15)?,
            recovery_starts_per_user_per_day: row.get(16)?,
            code_checks_per_app_per_minute: row.get(17)?,
            passkey_rp_id: row.get(18)?,
        },
    })
}

fn key_from_row(row: &Row<'_>) -> rusqlite::Result<AppKey> {
    Ok(AppKey {
        kid: row.get(0)?,
        public_key: row.get(1)?,
        created_at: row.get(2)?,
        revoked_at: row.get(3)?,
    })
}

fn app_exists(tx: &Connection, app_id: &str) -> Result<bool, StoreError> {
    Ok(tx
        .one("SELECT 1 FROM apps WHERE id = ?1", [app_id], |_| Ok(()))
        .optional()?
        .is_some())
}

pub(super) fn load_policy(tx: &Connection, app_id: &str) -> Result<AppPolicy, StoreError> {
    tx.one(
        &format!("SELECT {APP_COLUMNS} FROM apps WHERE id = ?1"),
        [app_id],
        app_from_row,
    )
    .optional()?
    .map(|app| app.policy)
    .ok_or(StoreError::UnknownApp)
}

pub(super) fn create_app(
    store: &SqliteStore,
    app: &App,
    first_key: &AppKey,
) -> Result<(), StoreError> {
    let p = &app.policy;
    store.write(|tx| {
        tx.exec(
            &format!("INSERT INTO apps ({APP_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)"),
            params![
                app.id,
                app.name,
                app.created_at,
                methods_to_text(&p.allowed_methods),
                p.code_digits,
                p.totp_digits,
                p.code_lifetime_secs,
                p.max_attempts_per_challenge,
                p.user_lock_threshold,
                p.user_backoff_base_secs,
                p.sends_per_destination_per_hour,
                p.sends_per_destination_per_day,
                p.app_daily_send_budget,
                p.requests_per_address_per_minute,
                p.waiting_period_secs,
                p.user_failures_per_day,
                p.recovery_starts_per_user_per_day,
                p.code_checks_per_app_per_minute,
                p.passkey_rp_id,
            ],
        )?;
        tx.exec(
            "INSERT INTO app_keys (app_id, kid, public_key, created_at, revoked_at) VALUES (?1, ?2, ?3, ?4, NULL)",
            params![app.id, first_key.kid, first_key.public_key, first_key.created_at],
        )?;
        audit(tx, app.created_at, "app_added", &app.id, Who::Operator, json!({ "kid": first_key.kid }))?;
        Ok(())
    })
}

pub(super) fn list_apps(store: &SqliteStore) -> Result<Vec<App>, StoreError> {
    let conn = store.reader()?;
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {APP_COLUMNS} FROM apps ORDER BY created_at, id"
    ))?;
    let apps = stmt
        .query_map([], app_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(apps)
}

pub(super) fn app(store: &SqliteStore, app_id: &str) -> Result<Option<App>, StoreError> {
    let conn = store.reader()?;
    Ok(conn
        .one(
            &format!("SELECT {APP_COLUMNS} FROM apps WHERE id = ?1"),
            [app_id],
            app_from_row,
        )
        .optional()?)
}

pub(super) fn app_keys(store: &SqliteStore, app_id: &str) -> Result<Vec<AppKey>, StoreError> {
    let conn = store.reader()?;
    let mut stmt = conn.prepare_cached(
        "SELECT kid, public_key, created_at, revoked_at FROM app_keys WHERE app_id = ?1 ORDER BY created_at, kid",
    )?;
    let keys = stmt
        .query_map([app_id], key_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(keys)
}

pub(super) fn add_app_key(
    store: &SqliteStore,
    app_id: &str,
    key: &AppKey,
) -> Result<(), StoreError> {
    store.write(|tx| {
        if !app_exists(tx, app_id)? {
            return Err(StoreError::UnknownApp);
        }
        let inserted = tx.exec(
            "INSERT INTO app_keys (app_id, kid, public_key, created_at, revoked_at) VALUES (?1, ?2, ?3, ?4, NULL) \
             ON CONFLICT (app_id, kid) DO NOTHING",
            params![app_id, key.kid, key.public_key, key.created_at],
        )?;
        if inserted == 0 {
            return Err(StoreError::KeyExists);
        }
        audit(tx, key.created_at, "app_key_added", app_id, Who::Operator, json!({ "kid": key.kid }))?;
        Ok(())
    })
}

pub(super) fn revoke_app_key(
    store: &SqliteStore,
    app_id: &str,
    kid: &str,
    now: UnixTime,
) -> Result<(), StoreError> {
    store.write(|tx| {
        if !app_exists(tx, app_id)? {
            return Err(StoreError::UnknownApp);
        }
        let revoked_at: Option<Option<UnixTime>> = tx
            .one(
                "SELECT revoked_at FROM app_keys WHERE app_id = ?1 AND kid = ?2",
                params![app_id, kid],
                |r| r.get(0),
            )
            .optional()?;
        match revoked_at {
            None => Err(StoreError::UnknownKey),
            Some(Some(_)) => Err(StoreError::KeyAlreadyRevoked),
            Some(None) => {
                tx.exec(
                    "UPDATE app_keys SET revoked_at = ?3 WHERE app_id = ?1 AND kid = ?2",
                    params![app_id, kid, now],
                )?;
                audit(
                    tx,
                    now,
                    "app_key_revoked",
                    app_id,
                    Who::Operator,
                    json!({ "kid": kid }),
                )?;
                Ok(())
            }
        }
    })
}

pub(super) fn set_app_policy(
    store: &SqliteStore,
    app_id: &str,
    p: &AppPolicy,
    now: UnixTime,
) -> Result<(), StoreError> {
    store.write(|tx| {
        let updated = tx.exec(
            "UPDATE apps SET allowed_methods = ?2, code_digits = ?3, totp_digits = ?4, code_lifetime_secs = ?5, \
             max_attempts_per_challenge = ?6, user_lock_threshold = ?7, user_backoff_base_secs = ?8, \
             sends_per_destination_per_hour = ?9, sends_per_destination_per_day = ?10, \
             app_daily_send_budget = ?11, requests_per_address_per_minute = ?12, waiting_period_secs = ?13, \
             user_failures_per_day = ?14, recovery_starts_per_user_per_day = ?15, \
             code_checks_per_app_per_minute = ?16, passkey_rp_id = ?17 \
             WHERE id = ?1",
            params![
                app_id,
                methods_to_text(&p.allowed_methods),
                p.code_digits,
                p.totp_digits,
                p.code_lifetime_secs,
                p.max_attempts_per_challenge,
                p.user_lock_threshold,
                p.user_backoff_base_secs,
                p.sends_per_destination_per_hour,
                p.sends_per_destination_per_day,
                p.app_daily_send_budget,
                p.requests_per_address_per_minute,
                p.waiting_period_secs,
                p.user_failures_per_day,
                p.recovery_starts_per_user_per_day,
                p.code_checks_per_app_per_minute,
                p.passkey_rp_id,
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

pub(super) fn app_origins(store: &SqliteStore, app_id: &str) -> Result<Vec<String>, StoreError> {
    let conn = store.reader()?;
    let mut stmt =
        conn.prepare_cached("SELECT origin FROM app_origins WHERE app_id = ?1 ORDER BY origin")?;
    let origins = stmt
        .query_map([app_id], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(origins)
}

pub(super) fn add_app_origin(
    store: &SqliteStore,
    app_id: &str,
    origin: &str,
    now: UnixTime,
) -> Result<bool, StoreError> {
    store.write(|tx| {
        if !app_exists(tx, app_id)? {
            return Err(StoreError::UnknownApp);
        }
        let inserted = tx.exec(
            "INSERT INTO app_origins (app_id, origin, added_at) VALUES (?1, ?2, ?3) \
             ON CONFLICT (app_id, origin) DO NOTHING",
            params![app_id, origin, now],
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
    store: &SqliteStore,
    app_id: &str,
    origin: &str,
    now: UnixTime,
) -> Result<bool, StoreError> {
    store.write(|tx| {
        if !app_exists(tx, app_id)? {
            return Err(StoreError::UnknownApp);
        }
        let removed = tx.exec(
            "DELETE FROM app_origins WHERE app_id = ?1 AND origin = ?2",
            params![app_id, origin],
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
    store: &SqliteStore,
    subject: OriginSubject<'_>,
    origin: &str,
) -> Result<OriginStanding, StoreError> {
    let conn = store.reader()?;
    let app_id: Option<String> = match subject {
        OriginSubject::App(id) => conn
            .one("SELECT id FROM apps WHERE id = ?1", [id], |r| r.get(0))
            .optional()?,
        OriginSubject::Challenge(id) => conn
            .one("SELECT app_id FROM challenges WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()?,
        OriginSubject::Unknown => None,
    };
    let allowed_for_app = match &app_id {
        Some(app) => conn
            .one(
                "SELECT 1 FROM app_origins WHERE app_id = ?1 AND origin = ?2",
                params![app, origin],
                |_| Ok(()),
            )
            .optional()?
            .is_some(),
        None => false,
    };
    let allowed_for_any = allowed_for_app
        || conn
            .one(
                "SELECT 1 FROM app_origins WHERE origin = ?1 LIMIT 1",
                [origin],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
    Ok(OriginStanding {
        app_known: app_id.is_some(),
        allowed_for_app,
        allowed_for_any,
    })
}

pub(super) fn lookup_assertion_key(
    store: &SqliteStore,
    app_id: &str,
    kid: &str,
) -> Result<KeyLookup, StoreError> {
    let conn = store.reader()?;
    // One query answers all three questions: does the app exist, the key, is it revoked.
    let row: Option<(Option<Vec<u8>>, Option<UnixTime>)> = conn
        .one(
            "SELECT k.public_key, k.revoked_at FROM apps a \
             LEFT JOIN app_keys k ON k.app_id = a.id AND k.kid = ?2 WHERE a.id = ?1",
            params![app_id, kid],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(match row {
        None => KeyLookup::UnknownApp,
        Some((None, _)) => KeyLookup::UnknownKey,
        Some((Some(_), Some(_))) => KeyLookup::Revoked,
        Some((Some(pk), None)) => KeyLookup::Active(
            pk.try_into()
                .map_err(|_| StoreError::Backend("stored public key is not 32 bytes".into()))?,
        ),
    })
}

pub(super) fn app_activity(
    store: &SqliteStore,
    app_id: &str,
    since: UnixTime,
) -> Result<(u64, u64, Option<UnixTime>), StoreError> {
    let conn = store.reader()?;
    let users: u64 = conn.one(
        "SELECT count(*) FROM users WHERE app_id = ?1",
        [app_id],
        |r| r.get(0),
    )?;
    let (recent, last): (u64, Option<UnixTime>) = conn.one(
        "SELECT count(*) FILTER (WHERE at >= ?2), max(at) FROM audit_events WHERE app_id = ?1",
        params![app_id, since],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok((users, recent, last))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Synchronous;
    use crate::store::Store;

    #[test]
    fn key_lookup_distinguishes_app_key_and_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(
            &dir.path().join("g.db"),
            Synchronous::Full,
            Duration::from_secs(1),
        )
        .unwrap();
        let app = App {
            id: "app_1".into(),
            name: "A".into(),
            created_at: 1,
            policy: AppPolicy::default(),
        };
        let key = AppKey {
            kid: "k1".into(),
            public_key: [1; 32],
            created_at: 1,
            revoked_at: None,
        };
        store.create_app(&app, &key).unwrap();
        assert_eq!(
            store.lookup_assertion_key("nope", "k1").unwrap(),
            KeyLookup::UnknownApp
        );
        assert_eq!(
            store.lookup_assertion_key("app_1", "k2").unwrap(),
            KeyLookup::UnknownKey
        );
        assert_eq!(
            store.lookup_assertion_key("app_1", "k1").unwrap(),
            KeyLookup::Active([1; 32])
        );
        store.revoke_app_key("app_1", "k1", 5).unwrap();
        assert_eq!(
            store.lookup_assertion_key("app_1", "k1").unwrap(),
            KeyLookup::Revoked
        );
        assert!(matches!(
            store.revoke_app_key("app_1", "k1", 6),
            Err(StoreError::KeyAlreadyRevoked)
        ));
        assert!(matches!(
            store.add_app_key("app_1", &key),
            Err(StoreError::KeyExists)
        ));
        assert!(matches!(
            store.add_app_key("nope", &key),
            Err(StoreError::UnknownApp)
        ));
    }
}
