//! The SQLite backend: one file, WAL mode, durable commits by default.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use ghostkey_proto::api::EnrollmentState;
use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};

use super::{Store, StoreError};
use crate::clock::UnixTime;
use crate::config::Synchronous;
use crate::domain::app::{App, AppKey, KeyLookup};
use crate::domain::assertion::VerifiedAssertion;
use crate::domain::enrollment::Enrollment;
use crate::domain::policy::{AppPolicy, MethodKind};

/// The canonical schema, run as it is on a fresh database.
pub const SCHEMA_SQL: &str = include_str!("../../schema.sql");
/// The schema version `schema.sql` records in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 1;
/// Expired `jti`s deleted per write, so the replay cache stays small without a sweeper.
const JTI_PURGE_BATCH: i64 = 32;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Backend(e.to_string())
    }
}

/// A SQLite database behind one connection.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, applies the pragmas, and
    /// creates the schema on a fresh file or checks its version on an existing one.
    pub fn open(
        path: &Path,
        synchronous: Synchronous,
        busy_timeout: Duration,
    ) -> Result<SqliteStore, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(busy_timeout)?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(format!(
                "cannot enable WAL mode (got {mode})"
            )));
        }
        conn.pragma_update(None, "synchronous", synchronous.as_pragma())?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        init_schema(&mut conn)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        self.conn
            .lock()
            .map_err(|_| StoreError::Backend("connection mutex poisoned".into()))
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn()?;
        // IMMEDIATE takes the write lock at once, so checks and writes see one state.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let value = f(&tx)?;
        tx.commit()?;
        Ok(value)
    }
}

fn init_schema(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
    match version {
        0 if tables == 0 => {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
            tx.execute_batch(SCHEMA_SQL)?;
            tx.commit()?;
            Ok(())
        }
        0 => Err(StoreError::Backend(
            "the database file has tables but no Ghostkey schema version; is it a Ghostkey database?".into(),
        )),
        SCHEMA_VERSION => Ok(()),
        v if v > SCHEMA_VERSION => Err(StoreError::Backend(format!(
            "the database has schema version {v}, newer than this Ghostkey ({SCHEMA_VERSION}); upgrade Ghostkey"
        ))),
        v => Err(StoreError::Backend(format!(
            "the database has schema version {v} and no migration to {SCHEMA_VERSION} exists"
        ))),
    }
}

const APP_COLUMNS: &str = "id, name, created_at, allowed_methods, code_digits, totp_digits, \
    code_lifetime_secs, max_attempts_per_challenge, user_lock_threshold, user_backoff_base_secs, \
    sends_per_destination_per_hour, sends_per_destination_per_day, app_daily_send_budget, \
    requests_per_address_per_minute, waiting_period_secs";

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

fn app_exists(tx: &Transaction<'_>, app_id: &str) -> Result<bool, StoreError> {
    Ok(tx
        .query_row("SELECT 1 FROM apps WHERE id = ?1", [app_id], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Records a `jti` as used; refuses one seen before. Also forgets a few expired ones.
fn consume_jti(
    tx: &Transaction<'_>,
    assertion: &VerifiedAssertion,
    now: UnixTime,
) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM assertion_jtis WHERE (app_id, jti) IN \
         (SELECT app_id, jti FROM assertion_jtis WHERE expires_at < ?1 LIMIT ?2)",
        params![now, JTI_PURGE_BATCH],
    )?;
    let inserted = tx.execute(
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

fn state_to_text(state: EnrollmentState) -> &'static str {
    match state {
        EnrollmentState::Pending => "pending",
        EnrollmentState::Active => "active",
    }
}

impl Store for SqliteStore {
    fn ping(&self) -> Result<(), StoreError> {
        self.conn()?.query_row("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }

    fn create_app(&self, app: &App, first_key: &AppKey) -> Result<(), StoreError> {
        let p = &app.policy;
        self.write(|tx| {
            tx.execute(
                &format!("INSERT INTO apps ({APP_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"),
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
                ],
            )?;
            tx.execute(
                "INSERT INTO app_keys (app_id, kid, public_key, created_at, revoked_at) VALUES (?1, ?2, ?3, ?4, NULL)",
                params![app.id, first_key.kid, first_key.public_key, first_key.created_at],
            )?;
            Ok(())
        })
    }

    fn list_apps(&self) -> Result<Vec<App>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {APP_COLUMNS} FROM apps ORDER BY created_at, id"
        ))?;
        let apps = stmt
            .query_map([], app_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(apps)
    }

    fn app(&self, app_id: &str) -> Result<Option<App>, StoreError> {
        let conn = self.conn()?;
        Ok(conn
            .query_row(
                &format!("SELECT {APP_COLUMNS} FROM apps WHERE id = ?1"),
                [app_id],
                app_from_row,
            )
            .optional()?)
    }

    fn app_keys(&self, app_id: &str) -> Result<Vec<AppKey>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT kid, public_key, created_at, revoked_at FROM app_keys WHERE app_id = ?1 ORDER BY created_at, kid",
        )?;
        let keys = stmt
            .query_map([app_id], key_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(keys)
    }

    fn add_app_key(&self, app_id: &str, key: &AppKey) -> Result<(), StoreError> {
        self.write(|tx| {
            if !app_exists(tx, app_id)? {
                return Err(StoreError::UnknownApp);
            }
            let inserted = tx.execute(
                "INSERT INTO app_keys (app_id, kid, public_key, created_at, revoked_at) VALUES (?1, ?2, ?3, ?4, NULL) \
                 ON CONFLICT (app_id, kid) DO NOTHING",
                params![app_id, key.kid, key.public_key, key.created_at],
            )?;
            if inserted == 0 {
                return Err(StoreError::KeyExists);
            }
            Ok(())
        })
    }

    fn revoke_app_key(&self, app_id: &str, kid: &str, now: UnixTime) -> Result<(), StoreError> {
        self.write(|tx| {
            if !app_exists(tx, app_id)? {
                return Err(StoreError::UnknownApp);
            }
            let revoked_at: Option<Option<UnixTime>> = tx
                .query_row(
                    "SELECT revoked_at FROM app_keys WHERE app_id = ?1 AND kid = ?2",
                    params![app_id, kid],
                    |r| r.get(0),
                )
                .optional()?;
            match revoked_at {
                None => Err(StoreError::UnknownKey),
                Some(Some(_)) => Err(StoreError::KeyAlreadyRevoked),
                Some(None) => {
                    tx.execute(
                        "UPDATE app_keys SET revoked_at = ?3 WHERE app_id = ?1 AND kid = ?2",
                        params![app_id, kid, now],
                    )?;
                    Ok(())
                }
            }
        })
    }

    fn set_app_policy(&self, app_id: &str, p: &AppPolicy) -> Result<(), StoreError> {
        self.write(|tx| {
            let updated = tx.execute(
                "UPDATE apps SET allowed_methods = ?2, code_digits = ?3, totp_digits = ?4, code_lifetime_secs = ?5, \
                 max_attempts_per_challenge = ?6, user_lock_threshold = ?7, user_backoff_base_secs = ?8, \
                 sends_per_destination_per_hour = ?9, sends_per_destination_per_day = ?10, \
                 app_daily_send_budget = ?11, requests_per_address_per_minute = ?12, waiting_period_secs = ?13 \
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
                ],
            )?;
            if updated == 0 {
                return Err(StoreError::UnknownApp);
            }
            Ok(())
        })
    }

    fn lookup_assertion_key(&self, app_id: &str, kid: &str) -> Result<KeyLookup, StoreError> {
        let conn = self.conn()?;
        // One query answers all three questions: does the app exist, the key, is it revoked.
        let row: Option<(Option<Vec<u8>>, Option<UnixTime>)> = conn
            .query_row(
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

    fn enroll(
        &self,
        assertion: &VerifiedAssertion,
        e: &Enrollment,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            consume_jti(tx, assertion, now)?;
            let inserted = tx.execute(
                "INSERT INTO users (app_id, user_id, state, sealed_virtual_device, vd_signing_key, \
                 vd_encryption_key, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7) \
                 ON CONFLICT (app_id, user_id) DO NOTHING",
                params![
                    e.app_id,
                    e.user_id,
                    state_to_text(e.state),
                    e.sealed_virtual_device,
                    e.signing_key,
                    e.encryption_key,
                    e.created_at,
                ],
            )?;
            if inserted == 0 {
                return Err(StoreError::AlreadyEnrolled);
            }
            Ok(())
        })
    }

    fn enrollment(&self, app_id: &str, user_id: &str) -> Result<Option<Enrollment>, StoreError> {
        let conn = self.conn()?;
        Ok(conn
            .query_row(
                "SELECT state, sealed_virtual_device, vd_signing_key, vd_encryption_key, created_at \
                 FROM users WHERE app_id = ?1 AND user_id = ?2",
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
                    })
                },
            )
            .optional()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema_of(conn: &Connection) -> Vec<(String, String, String)> {
        let mut stmt = conn
            .prepare("SELECT type, name, coalesce(sql, '') FROM sqlite_schema ORDER BY type, name")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn a_fresh_database_has_exactly_the_canonical_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        drop(SqliteStore::open(&path, Synchronous::Full, Duration::from_secs(1)).unwrap());

        // Reference: schema.sql read from the repository at test time, run on a blank database.
        let reference = Connection::open_in_memory().unwrap();
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.sql")).unwrap();
        reference.execute_batch(&text).unwrap();

        let created = Connection::open(&path).unwrap();
        assert_eq!(schema_of(&created), schema_of(&reference));
        assert!(!schema_of(&created).is_empty());
        let version: i64 = created
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let mode: String = created
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn reopening_keeps_data_and_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.db");
        let store = SqliteStore::open(&path, Synchronous::Full, Duration::from_secs(1)).unwrap();
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
        drop(store);
        let store = SqliteStore::open(&path, Synchronous::Full, Duration::from_secs(1)).unwrap();
        assert_eq!(store.app("app_1").unwrap().unwrap(), app);
        drop(store);

        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let err = SqliteStore::open(&path, Synchronous::Full, Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("newer"), "{err}");
    }

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
