//! The schema: the canonical `schema.sql` for a fresh database, the numbered migrations
//! that lead an older one to it, and the checks of a database file (a backup, a restore).

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};

use super::Cached;
use crate::store::StoreError;

/// The canonical schema, run as it is on a fresh database.
pub const SCHEMA_SQL: &str = include_str!("../../../schema.sql");
/// The schema version `schema.sql` records in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 8;

/// The migration to each version from the one before, in order: `(to, sql)`. Each runs in
/// the same exclusive transaction as the ones after it, so an upgrade is all or nothing.
const MIGRATIONS: &[(i64, &str)] = &[
    (2, include_str!("../migrations/v2.sql")),
    (3, include_str!("../migrations/v3.sql")),
    (4, include_str!("../migrations/v4.sql")),
    (5, include_str!("../migrations/v5.sql")),
    (6, include_str!("../migrations/v6.sql")),
    (7, include_str!("../migrations/v7.sql")),
    (8, include_str!("../migrations/v8.sql")),
];

/// A copy is usable if SQLite finds it intact and it has this version's schema.
pub(super) fn check_copy(path: &Path) -> Result<(), StoreError> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let integrity: String = conn.one("PRAGMA integrity_check", [], |r| r.get(0))?;
    if integrity != "ok" {
        return Err(StoreError::Backend(format!(
            "{}: integrity check failed: {integrity}",
            path.display()
        )));
    }
    let version: i64 = conn.one("PRAGMA user_version", [], |r| r.get(0))?;
    // An older copy is fine if a migration leads from it to this version (it is migrated
    // once restored).
    let oldest = MIGRATIONS.first().map_or(SCHEMA_VERSION, |(to, _)| to - 1);
    if !(oldest..=SCHEMA_VERSION).contains(&version) {
        return Err(StoreError::Backend(format!(
            "{}: schema version {version}, this Ghostkey reads versions {oldest} to {SCHEMA_VERSION}",
            path.display()
        )));
    }
    Ok(())
}

pub(super) fn init_schema(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.one("PRAGMA user_version", [], |r| r.get(0))?;
    let tables: i64 = conn.one("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
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
        // Any older version a chain of migrations starts from.
        v if MIGRATIONS.first().is_some_and(|(to, _)| *to <= v + 1) => {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Exclusive)?;
            for (_, sql) in MIGRATIONS.iter().filter(|(to, _)| *to > v) {
                tx.execute_batch(sql)?;
            }
            let dangling: i64 =
                tx.one("SELECT count(*) FROM pragma_foreign_key_check", [], |r| r.get(0))?;
            if dangling != 0 {
                return Err(StoreError::Backend(format!(
                    "the upgrade would leave {dangling} rows referring to missing rows; nothing was changed"
                )));
            }
            tx.commit()?;
            tracing::info!(from = v, to = SCHEMA_VERSION, "database schema upgraded");
            Ok(())
        }
        v => Err(StoreError::Backend(format!(
            "the database has schema version {v} and no migration to {SCHEMA_VERSION} exists"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rusqlite::params;

    use super::super::apps::APP_COLUMNS;
    use super::super::SqliteStore;
    use super::*;
    use crate::config::Synchronous;
    use crate::domain::app::{App, AppKey};
    use crate::domain::policy::{AppPolicy, MethodKind};
    use crate::store::{OriginStanding, OriginSubject, Store};

    fn schema_of(conn: &Connection) -> Vec<(String, String, String)> {
        let mut stmt = conn
            .prepare("SELECT type, name, coalesce(sql, '') FROM sqlite_schema ORDER BY type, name")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// The apps columns of schema versions 2 to 5 (version 6 added `passkey_rp_id`).
    const APP_COLUMNS_V2: &str = "id, name, created_at, allowed_methods, code_digits, totp_digits, \
        code_lifetime_secs, max_attempts_per_challenge, user_lock_threshold, user_backoff_base_secs, \
        sends_per_destination_per_hour, sends_per_destination_per_day, app_daily_send_budget, \
        requests_per_address_per_minute, waiting_period_secs, user_failures_per_day, \
        recovery_starts_per_user_per_day, code_checks_per_app_per_minute";

    #[test]
    fn a_version_5_database_keeps_its_methods_and_challenges_and_takes_passkeys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v5.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "foreign_keys", "ON").unwrap();
            conn.execute_batch(include_str!("../migrations/v1.sql"))
                .unwrap();
            for (_, sql) in MIGRATIONS.iter().filter(|(to, _)| *to <= 5) {
                conn.execute_batch(sql).unwrap();
            }
            conn.execute(
                &format!(
                    "INSERT INTO apps ({APP_COLUMNS_V2}) VALUES ('app_1', 'A', 1, 'totp,passphrase', 8, 6, 600, 3, 7, 2, 5, 10, 10000, 60, 0, 10, 5, 600)"
                ),
                [],
            )
            .unwrap();
            conn.execute_batch(
                "INSERT INTO users (app_id, user_id, state, sealed_virtual_device, vd_signing_key, \
                 vd_encryption_key, audit_pseudonym, created_at, updated_at) \
                 VALUES ('app_1', 'u1', 'active', x'00', zeroblob(32), zeroblob(32), 'p', 1, 1);
                 INSERT INTO methods (id, app_id, user_id, kind, state, key_id, secret, totp_last_step, created_at) \
                 VALUES ('m_1', 'app_1', 'u1', 'passphrase', 'confirmed', 'k', x'0102', 7, 1);
                 INSERT INTO challenges (id, app_id, user_id, method_id, purpose, max_attempts, \
                 state, created_at, expires_at) \
                 VALUES ('ch_1', 'app_1', 'u1', 'm_1', 'proof', 3, 'open', 1, 999);",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path, Synchronous::Full, Duration::from_secs(1)).unwrap();
        let (ch, method, policy) = store.challenge("ch_1").unwrap().unwrap();
        assert_eq!(
            (ch.ceremony, method.kind, method.totp_last_step),
            (None, MethodKind::Passphrase, Some(7))
        );
        assert_eq!(method.secret, vec![1, 2]);
        assert_eq!(policy.passkey_rp_id, None);
        assert!(!store.credential_registered(&[9; 32]).unwrap());
        let conn = Connection::open(&path).unwrap();
        let version: i64 = conn.one("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        // Passkeys fit now, and a credential registers once.
        conn.execute_batch(
            "INSERT INTO methods (id, app_id, user_id, kind, state, key_id, secret, created_at, credential_hash) \
             VALUES ('m_2', 'app_1', 'u1', 'passkey', 'confirmed', 'k', x'03', 1, zeroblob(32));",
        )
        .unwrap();
        assert!(store.credential_registered(&[0; 32]).unwrap());
        assert!(conn
            .execute_batch(
                "INSERT INTO methods (id, app_id, user_id, kind, state, key_id, secret, created_at, credential_hash) \
                 VALUES ('m_3', 'app_1', 'u1', 'passkey', 'pending', 'k', x'03', 1, zeroblob(32));",
            )
            .is_err());
        // The migrated database has the shape of a fresh one.
        let fresh_path = dir.path().join("fresh.db");
        drop(SqliteStore::open(&fresh_path, Synchronous::Full, Duration::from_secs(1)).unwrap());
        assert_eq!(
            shape_of(&conn),
            shape_of(&Connection::open(&fresh_path).unwrap())
        );
    }

    #[test]
    fn a_version_6_database_keeps_its_argon2id_codes_and_takes_mac_codes() {
        use crate::domain::challenge::{Challenge, ChallengePurpose, ChallengeState};
        use crate::domain::code::{CodeScheme, StoredCode};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v6.db");
        let (salt, hash) = ([7u8; 16], [8u8; 32]);
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "foreign_keys", "ON").unwrap();
            conn.execute_batch(include_str!("../migrations/v1.sql"))
                .unwrap();
            for (_, sql) in MIGRATIONS.iter().filter(|(to, _)| *to <= 6) {
                conn.execute_batch(sql).unwrap();
            }
            conn.execute(
                &format!(
                    "INSERT INTO apps ({APP_COLUMNS}) VALUES ('app_1', 'A', 1, 'totp,sms', 8, 6, 600, 3, 7, 2, 5, 10, 10000, 60, 0, 10, 5, 600, NULL)"
                ),
                [],
            )
            .unwrap();
            conn.execute_batch(
                "INSERT INTO users (app_id, user_id, state, sealed_virtual_device, vd_signing_key, \
                 vd_encryption_key, audit_pseudonym, created_at, updated_at) \
                 VALUES ('app_1', 'u1', 'active', x'00', zeroblob(32), zeroblob(32), 'p', 1, 1);
                 INSERT INTO methods (id, app_id, user_id, kind, state, key_id, secret, created_at) \
                 VALUES ('m_1', 'app_1', 'u1', 'sms', 'confirmed', 'k', x'0102', 1);
                 INSERT INTO challenges (id, app_id, user_id, method_id, purpose, max_attempts, \
                 state, created_at, expires_at) \
                 VALUES ('ch_totp', 'app_1', 'u1', 'm_1', 'proof', 3, 'open', 1, 999);",
            )
            .unwrap();
            // A code hashed the only way version 6 knew: Argon2id, under key `k`'s pepper.
            conn.execute(
                "INSERT INTO challenges (id, app_id, user_id, method_id, purpose, code_salt, \
                 code_hash, code_key_id, attempts, max_attempts, state, created_at, expires_at, opened_by) \
                 VALUES ('ch_old', 'app_1', 'u1', 'm_1', 'recover', ?1, ?2, 'k', 1, 3, 'open', 1, 999, 'recover')",
                params![salt.to_vec(), hash.to_vec()],
            )
            .unwrap();
            let has_scheme: i64 = conn
                .one(
                    "SELECT count(*) FROM pragma_table_info('challenges') WHERE name = 'code_scheme'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(has_scheme, 0, "version 6 has no code_scheme");
        }
        let store = SqliteStore::open(&path, Synchronous::Full, Duration::from_secs(1)).unwrap();
        let (old, _, _) = store.challenge("ch_old").unwrap().unwrap();
        assert_eq!(
            old.code,
            Some(StoredCode {
                scheme: CodeScheme::Argon2id,
                salt,
                hash
            }),
            "a code from before the upgrade is still an Argon2id hash"
        );
        assert_eq!(
            (old.code_key_id.as_deref(), old.attempts, old.state),
            (Some("k"), 1, ChallengeState::Open)
        );
        let (totp, _, _) = store.challenge("ch_totp").unwrap().unwrap();
        assert_eq!((totp.code, totp.code_key_id), (None, None));
        drop(store);

        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "foreign_keys", "ON").unwrap();
        let version: i64 = conn.one("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let scheme: Option<String> = conn
            .one(
                "SELECT code_scheme FROM challenges WHERE id = 'ch_old'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(scheme, None);
        // A new challenge is written with its scheme, and read back with it.
        let new = Challenge {
            id: "ch_new".into(),
            app_id: "app_1".into(),
            user_id: "u1".into(),
            method_id: "m_1".into(),
            purpose: ChallengePurpose::Recover,
            code: Some(StoredCode {
                scheme: CodeScheme::HmacSha256,
                salt: [1; 16],
                hash: [2; 32],
            }),
            code_key_id: Some("k2".into()),
            attempts: 0,
            max_attempts: 3,
            state: ChallengeState::Open,
            created_at: 2,
            expires_at: 602,
            opened_by: None,
            ceremony: None,
        };
        super::super::challenges::insert_challenge(&conn, &new).unwrap();
        let scheme: Option<String> = conn
            .one(
                "SELECT code_scheme FROM challenges WHERE id = 'ch_new'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(scheme.as_deref(), Some("hmac-sha256"));
        let store = SqliteStore::open(&path, Synchronous::Full, Duration::from_secs(1)).unwrap();
        assert_eq!(store.challenge("ch_new").unwrap().unwrap().0, new);
        // Only the schemes this version knows are stored.
        assert!(conn
            .execute(
                "UPDATE challenges SET code_scheme = 'md5' WHERE id = 'ch_new'",
                []
            )
            .is_err());
        // The migrated database has the shape of a fresh one.
        let fresh_path = dir.path().join("fresh.db");
        drop(SqliteStore::open(&fresh_path, Synchronous::Full, Duration::from_secs(1)).unwrap());
        assert_eq!(
            shape_of(&conn),
            shape_of(&Connection::open(&fresh_path).unwrap())
        );
    }

    #[test]
    fn a_version_7_cancel_code_still_cancels_after_the_upgrade() {
        use crate::store::{MessageKind, NewMessage, Store};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v7.db");
        let mac = [9u8; 32];
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "foreign_keys", "ON").unwrap();
            conn.execute_batch(include_str!("../migrations/v1.sql"))
                .unwrap();
            for (_, sql) in MIGRATIONS.iter().filter(|(to, _)| *to <= 7) {
                conn.execute_batch(sql).unwrap();
            }
            conn.execute(
                &format!(
                    "INSERT INTO apps ({APP_COLUMNS}) VALUES ('app_1', 'A', 1, 'totp,sms', 8, 6, 600, 3, 7, 2, 5, 10, 10000, 60, 86400, 10, 5, 600, NULL)"
                ),
                [],
            )
            .unwrap();
            conn.execute_batch(
                "INSERT INTO users (app_id, user_id, state, sealed_virtual_device, vd_signing_key, \
                 vd_encryption_key, audit_pseudonym, created_at, updated_at) \
                 VALUES ('app_1', 'u1', 'active', x'00', zeroblob(32), zeroblob(32), 'p', 1, 1);
                 INSERT INTO methods (id, app_id, user_id, kind, state, key_id, secret, created_at) \
                 VALUES ('m_1', 'app_1', 'u1', 'sms', 'confirmed', 'k', x'0102', 1);
                 INSERT INTO challenges (id, app_id, user_id, method_id, purpose, max_attempts, \
                 state, created_at, expires_at) \
                 VALUES ('ch_1', 'app_1', 'u1', 'm_1', 'recover', 3, 'used', 1, 999);
                 INSERT INTO recoveries (challenge_id, app_id, user_id, method_id, state, \
                 available_at, created_at) VALUES ('ch_1', 'app_1', 'u1', 'm_1', 'waiting', 86401, 1);",
            )
            .unwrap();
            // A waiting recovery's cancel code as version 7 wrote it: no key id.
            conn.execute(
                "INSERT INTO cancel_codes (mac, challenge_id, created_at) VALUES (?1, 'ch_1', 1)",
                [mac.to_vec()],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path, Synchronous::Full, Duration::from_secs(1)).unwrap();
        let conn = Connection::open(&path).unwrap();
        let key_id: Option<String> = conn
            .one("SELECT key_id FROM cancel_codes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(key_id, None, "kept, with no key id");
        // A code with no key id names no key a server must hold.
        assert_eq!(store.key_ids_in_use(2).unwrap(), vec!["k".to_owned()]);
        assert_eq!(store.key_usage("k", 2).unwrap().2, 0);
        let found = store.recovery_by_cancel_code(&mac).unwrap().unwrap();
        assert_eq!(found.challenge_id, "ch_1");
        let notice = NewMessage {
            kind: MessageKind::Notice,
            key_id: "k".into(),
            body: vec![1; 40],
            notice_kind: Some("recovery_cancelled"),
        };
        let cancelled = store.cancel_recovery_by_code(&mac, &notice, 3).unwrap();
        assert_eq!(
            cancelled.state,
            crate::domain::recovery::RecoveryState::Cancelled
        );
        assert!(
            store.recovery_by_cancel_code(&mac).unwrap().is_none(),
            "spent"
        );
        let version: i64 = conn.one("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        // The migrated database has the shape of a fresh one.
        let fresh_path = dir.path().join("fresh.db");
        drop(SqliteStore::open(&fresh_path, Synchronous::Full, Duration::from_secs(1)).unwrap());
        assert_eq!(
            shape_of(&conn),
            shape_of(&Connection::open(&fresh_path).unwrap())
        );
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

    /// The columns of every table, and every index, as SQLite describes them.
    fn shape_of(conn: &Connection) -> Vec<String> {
        let mut out = Vec::new();
        let mut tables = conn
            .prepare("SELECT type, name FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name")
            .unwrap();
        let names: Vec<(String, String)> = tables
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        for (kind, name) in names {
            let pragma = if kind == "index" {
                "index_info"
            } else {
                "table_xinfo"
            };
            let mut cols = conn.prepare(&format!("PRAGMA {pragma}('{name}')")).unwrap();
            let n = cols.column_count();
            let rows: Vec<String> = cols
                .query_map([], |r| {
                    Ok((0..n)
                        .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
                        .collect::<Vec<_>>()
                        .join(","))
                })
                .unwrap()
                .map(Result::unwrap)
                .collect();
            out.push(format!("{kind} {name}: {}", rows.join(" | ")));
        }
        out
    }

    #[test]
    fn a_version_1_database_is_migrated_with_its_data_to_the_current_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(include_str!("../migrations/v1.sql"))
                .unwrap();
            conn.execute(
                &format!(
                    "INSERT INTO apps ({}) VALUES ('app_1', 'A', 1, 'totp,sms', 8, 6, 600, 3, 7, 2, 5, 10, 10000, 60, 0)",
                    APP_COLUMNS.split(", user_failures_per_day").next().unwrap()
                ),
                [],
            )
            .unwrap();
            // Two audit events: the head the migration records is the last one.
            let mut prev = [0u8; 32];
            for seq in 1..=2 {
                prev =
                    crate::domain::audit::chain_hash(&prev, seq, 10 + seq, "k", "app_1", "", "{}");
                conn.execute(
                    "INSERT INTO audit_events (seq, at, kind, app_id, subject, detail, hash) VALUES (?1, ?2, 'k', 'app_1', '', '{}', ?3)",
                    params![seq, 10 + seq, prev.to_vec()],
                )
                .unwrap();
            }
        }
        let store = SqliteStore::open(&path, Synchronous::Full, Duration::from_secs(1)).unwrap();
        let head = store.audit_head().unwrap().unwrap();
        assert_eq!(head.seq, 2);
        assert_eq!(
            head.hash,
            store.audit_events(1, 1).unwrap()[0].hash,
            "the head is the log's last event"
        );
        let app = store.app("app_1").unwrap().unwrap();
        // The old values are kept; the new ones take their defaults.
        assert_eq!(app.policy.user_lock_threshold, 7);
        assert_eq!(app.policy.user_failures_per_day, 10);
        assert_eq!(app.policy.recovery_starts_per_user_per_day, 5);
        drop(store);
        let migrated = Connection::open(&path).unwrap();
        let version: i64 = migrated
            .one("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        // The same tables, columns (types, defaults, constraints) and indexes as a fresh one.
        let fresh_path = dir.path().join("fresh.db");
        drop(SqliteStore::open(&fresh_path, Synchronous::Full, Duration::from_secs(1)).unwrap());
        let fresh = Connection::open(&fresh_path).unwrap();
        assert_eq!(shape_of(&migrated), shape_of(&fresh));
    }

    #[test]
    fn a_version_2_database_with_an_empty_audit_log_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(include_str!("../migrations/v1.sql"))
                .unwrap();
            conn.execute_batch(include_str!("../migrations/v2.sql"))
                .unwrap();
        }
        let store = SqliteStore::open(&path, Synchronous::Full, Duration::from_secs(1)).unwrap();
        let head = store.audit_head().unwrap().unwrap();
        assert_eq!((head.seq, head.hash), (0, [0u8; 32]));
        drop(store);
        let version: i64 = Connection::open(&path)
            .unwrap()
            .one("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn a_version_4_database_keeps_its_methods_and_their_challenges_and_takes_passphrases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v4.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "foreign_keys", "ON").unwrap();
            for sql in [
                include_str!("../migrations/v1.sql"),
                include_str!("../migrations/v2.sql"),
                include_str!("../migrations/v3.sql"),
                include_str!("../migrations/v4.sql"),
            ] {
                conn.execute_batch(sql).unwrap();
            }
            conn.execute(
                &format!(
                    "INSERT INTO apps ({APP_COLUMNS_V2}) VALUES ('app_1', 'A', 1, 'totp,sms', 8, 6, 600, 3, 7, 2, 5, 10, 10000, 60, 0, 10, 5, 600)"
                ),
                [],
            )
            .unwrap();
            conn.execute_batch(
                "INSERT INTO users (app_id, user_id, state, sealed_virtual_device, vd_signing_key, \
                 vd_encryption_key, audit_pseudonym, created_at, updated_at) \
                 VALUES ('app_1', 'u1', 'active', x'00', zeroblob(32), zeroblob(32), 'p', 1, 1);
                 INSERT INTO methods (id, app_id, user_id, kind, state, key_id, secret, created_at) \
                 VALUES ('m_1', 'app_1', 'u1', 'sms', 'confirmed', 'k', x'0102', 1);
                 INSERT INTO challenges (id, app_id, user_id, method_id, purpose, max_attempts, \
                 state, created_at, expires_at) \
                 VALUES ('ch_1', 'app_1', 'u1', 'm_1', 'proof', 3, 'open', 1, 999);",
            )
            .unwrap();
            let refused = conn.execute(
                "INSERT INTO methods (id, app_id, user_id, kind, state, key_id, secret, created_at) \
                 VALUES ('m_2', 'app_1', 'u1', 'passphrase', 'pending', 'k', x'01', 1)",
                [],
            );
            assert!(refused.is_err(), "version 4 has no passphrase kind");
        }
        drop(SqliteStore::open(&path, Synchronous::Full, Duration::from_secs(1)).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "foreign_keys", "ON").unwrap();
        let version: i64 = conn.one("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let kept: (String, Vec<u8>) = conn
            .one(
                "SELECT kind, secret FROM methods WHERE id = 'm_1'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(kept, ("sms".to_owned(), vec![1, 2]));
        let challenges: i64 = conn
            .one(
                "SELECT count(*) FROM challenges WHERE method_id = 'm_1'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(challenges, 1, "the rebuild did not cascade");
        conn.execute(
            "INSERT INTO methods (id, app_id, user_id, kind, state, key_id, secret, created_at) \
             VALUES ('m_2', 'app_1', 'u1', 'passphrase', 'pending', 'k', x'01', 1)",
            [],
        )
        .unwrap();
        // The foreign keys still hold: a method's removal still takes its challenges.
        conn.execute("DELETE FROM methods WHERE id = 'm_1'", [])
            .unwrap();
        let challenges: i64 = conn
            .one("SELECT count(*) FROM challenges", [], |r| r.get(0))
            .unwrap();
        assert_eq!(challenges, 0);
    }

    #[test]
    fn a_version_3_database_is_migrated_with_its_apps_and_gains_app_origins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v3.db");
        {
            let conn = Connection::open(&path).unwrap();
            for sql in [
                include_str!("../migrations/v1.sql"),
                include_str!("../migrations/v2.sql"),
                include_str!("../migrations/v3.sql"),
            ] {
                conn.execute_batch(sql).unwrap();
            }
            conn.execute(
                &format!(
                    "INSERT INTO apps ({APP_COLUMNS_V2}) VALUES ('app_1', 'A', 1, 'totp,sms', 8, 6, 600, 3, 7, 2, 5, 10, 10000, 60, 0, 10, 5, 600)"
                ),
                [],
            )
            .unwrap();
            let has_table: i64 = conn
                .one(
                    "SELECT count(*) FROM sqlite_schema WHERE name = 'app_origins'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(has_table, 0, "version 3 has no app_origins");
        }
        let store = SqliteStore::open(&path, Synchronous::Full, Duration::from_secs(1)).unwrap();
        assert_eq!(
            store
                .app("app_1")
                .unwrap()
                .unwrap()
                .policy
                .user_lock_threshold,
            7
        );
        assert!(store.app_origins("app_1").unwrap().is_empty());
        assert!(store
            .add_app_origin("app_1", "https://a.example", 5)
            .unwrap());
        assert!(!store
            .add_app_origin("app_1", "https://a.example", 6)
            .unwrap());
        assert_eq!(store.app_origins("app_1").unwrap(), ["https://a.example"]);
        let standing = store
            .origin_standing(OriginSubject::App("app_1"), "https://a.example")
            .unwrap();
        assert_eq!(
            standing,
            OriginStanding {
                app_known: true,
                allowed_for_app: true,
                allowed_for_any: true
            }
        );
        let standing = store
            .origin_standing(OriginSubject::App("app_2"), "https://a.example")
            .unwrap();
        assert!(!standing.app_known && !standing.allowed_for_app && standing.allowed_for_any);
        drop(store);
        let migrated = Connection::open(&path).unwrap();
        let version: i64 = migrated
            .one("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let fresh_path = dir.path().join("fresh.db");
        drop(SqliteStore::open(&fresh_path, Synchronous::Full, Duration::from_secs(1)).unwrap());
        let fresh = Connection::open(&fresh_path).unwrap();
        assert_eq!(shape_of(&migrated), shape_of(&fresh));
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
}
