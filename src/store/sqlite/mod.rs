//! The SQLite backend: one file, WAL mode, durable commits by default.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use ghostkey_proto::api::EnrollmentState;
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};
use serde_json::json;
use sha2::Digest;

use super::{
    AddMethod, AnswerNotices, Answered, ClaimedMessage, MessageKind, NewMessage, OriginStanding,
    OriginSubject, OutboxCounts, ProofAnswer, RecoveryNotices, RegisteredPasskey, RemoveMethod,
    SendResult, StartChallenge, StartRecovery, Store, StoreError, UnlockUser, UserRecord,
    VerifiedRecovery,
};
use crate::clock::UnixTime;
use crate::config::Synchronous;
use crate::domain::app::{App, AppKey, KeyLookup};
use crate::domain::assertion::VerifiedAssertion;
use crate::domain::audit::{AuditEvent, AuditHead};
use crate::domain::challenge::{
    self, Challenge, ChallengePurpose, ChallengeState, FailureWindow, Guard, LockRule, Outcome,
    Refusal, Settlement, Verdict, FAILURE_WINDOW_SECS,
};
use crate::domain::enrollment::Enrollment;
use crate::domain::limits::Limit;
use crate::domain::method::{Method, MethodState};
use crate::domain::policy::{AppPolicy, MethodKind};
use crate::domain::recovery::{self, Recovery, RecoveryState};

/// The canonical schema, run as it is on a fresh database.
pub const SCHEMA_SQL: &str = include_str!("../../schema.sql");
/// The schema version `schema.sql` records in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 6;

/// The migration to each version from the one before, in order: `(to, sql)`. Each runs in
/// the same exclusive transaction as the ones after it, so an upgrade is all or nothing.
const MIGRATIONS: &[(i64, &str)] = &[
    (2, include_str!("migrations/v2.sql")),
    (3, include_str!("migrations/v3.sql")),
    (4, include_str!("migrations/v4.sql")),
    (5, include_str!("migrations/v5.sql")),
    (6, include_str!("migrations/v6.sql")),
];
/// Expired `jti`s deleted per write, so the replay cache stays small without a sweeper.
const JTI_PURGE_BATCH: i64 = 32;

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Backend(e.to_string())
    }
}

/// Statements through the connection's cache: parsed and planned once, not per request.
trait Cached {
    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    fn one<T, P: rusqlite::Params, F: FnOnce(&Row<'_>) -> rusqlite::Result<T>>(
        &self,
        sql: &str,
        params: P,
        f: F,
    ) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn one<T, P: rusqlite::Params, F: FnOnce(&Row<'_>) -> rusqlite::Result<T>>(
        &self,
        sql: &str,
        params: P,
        f: F,
    ) -> rusqlite::Result<T> {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

/// Distinct statements the store uses, so the cache holds them all.
const STATEMENT_CACHE: usize = 128;

/// Most transactions one commit carries (bounds how long the first of them waits).
const MAX_BATCH: usize = 128;
/// Idle read connections kept open.
const MAX_IDLE_READERS: usize = 8;

/// A SQLite database: one write connection that commits concurrent transactions in
/// batches, and a pool of read connections.
///
/// Group commit: every write transaction runs alone, in order, inside a savepoint of the
/// write connection's open transaction. A transaction that finishes while others queue
/// for the connection leaves the commit to the last of them, so one `COMMIT` (one fsync
/// with `synchronous=full`) makes the whole batch durable. Nobody gets an answer before
/// the commit that holds their transaction has succeeded, so no acknowledged write is
/// lost, and a failed commit fails every transaction in its batch. Transactions still
/// see each other's writes in order, exactly as if each had committed alone.
///
/// Reads use their own connections, which in WAL mode see the last commit: never a
/// batch still waiting for its commit.
pub struct SqliteStore {
    writer: Mutex<Writer>,
    /// Signalled when a batch is committed (or failed).
    batch_done: Condvar,
    /// Write transactions waiting for the write connection.
    queued: AtomicUsize,
    readers: Mutex<Vec<Connection>>,
    path: PathBuf,
    busy_timeout: Duration,
}

/// The write connection and the batch it has open, if any.
struct Writer {
    conn: Connection,
    open: Option<Arc<Batch>>,
    transactions_in_batch: usize,
}

/// How a batch ended: set once, by whoever committed it.
#[derive(Default)]
struct Batch(OnceLock<Result<(), String>>);

/// A read connection, back to the pool when dropped.
struct Reader<'a> {
    conn: Option<Connection>,
    pool: &'a Mutex<Vec<Connection>>,
}

impl std::ops::Deref for Reader<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        // Always Some until drop.
        self.conn
            .as_ref()
            .unwrap_or_else(|| unreachable!("reader used after drop"))
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let (Some(conn), Ok(mut idle)) = (self.conn.take(), self.pool.lock()) {
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
        }
    }
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
        let fresh = !path.exists();
        let mut conn = Connection::open(path)?;
        if fresh {
            // The file holds sealed keys and encrypted secrets: owner only. SQLite gives
            // the -wal and -shm files the same mode.
            make_private(path)?;
        }
        conn.busy_timeout(busy_timeout)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let mode: String = conn.one("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(format!(
                "cannot enable WAL mode (got {mode})"
            )));
        }
        conn.pragma_update(None, "synchronous", synchronous.as_pragma())?;
        // Deleted rows are overwritten with zeros, not left in free pages: an erased user
        // or a replaced sealed blob must not stay readable in the file (or a later backup).
        conn.pragma_update(None, "secure_delete", "ON")?;
        // Migrations run with foreign keys off (a table rebuilt by the documented procedure
        // must not cascade its drop), and check them before they commit.
        conn.pragma_update(None, "foreign_keys", "OFF")?;
        init_schema(&mut conn)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        Ok(SqliteStore {
            writer: Mutex::new(Writer {
                conn,
                open: None,
                transactions_in_batch: 0,
            }),
            batch_done: Condvar::new(),
            queued: AtomicUsize::new(0),
            readers: Mutex::new(Vec::new()),
            path: path.to_owned(),
            busy_timeout,
        })
    }

    /// Writes a consistent copy of the database to `dest` (a new file) with SQLite's online
    /// backup, in one read transaction, so the server keeps serving meanwhile; then checks
    /// the copy. Returns the copy's size in bytes.
    pub fn backup_to(&self, dest: &Path) -> Result<u64, StoreError> {
        if dest.exists() {
            return Err(StoreError::Backend(format!(
                "{} already exists",
                dest.display()
            )));
        }
        {
            let conn = self.reader()?;
            let mut copy = Connection::open(dest)?;
            make_private(dest)?;
            let backup = rusqlite::backup::Backup::new(&conn, &mut copy)?;
            // All pages in one step: one snapshot, never restarted by concurrent writes.
            backup.run_to_completion(i32::MAX, Duration::ZERO, None)?;
        }
        check_copy(dest)?;
        Ok(std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0))
    }

    /// Replaces this database's content with the backup at `src`, after checking it.
    pub fn restore_from(&self, src: &Path) -> Result<(), StoreError> {
        check_copy(src)?;
        let mut writer = self.idle_writer()?;
        writer.conn.restore(
            rusqlite::MAIN_DB,
            src,
            None::<fn(rusqlite::backup::Progress)>,
        )?;
        // A copy from before an upgrade gets this version's schema now.
        init_schema(&mut writer.conn)
    }

    /// Moves every committed page into the database file and truncates the WAL, so that
    /// the old copies of rows just deleted or overwritten (an erased user, a replaced
    /// sealed blob) leave the `-wal` file too. Best effort: the change itself is already
    /// committed; a checkpoint that readers kept from finishing is logged, and the next
    /// one completes it.
    fn scrub_wal(&self) {
        let result = self.idle_writer().and_then(|w| {
            Ok(w.conn.one("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            })?)
        });
        match result {
            Ok(0) => {}
            Ok(_) => tracing::warn!("the WAL checkpoint after an erasure was blocked by readers"),
            Err(e) => tracing::warn!(error = %e, "the WAL checkpoint after an erasure failed"),
        }
    }

    /// A read connection from the pool (or a new one).
    fn reader(&self) -> Result<Reader<'_>, StoreError> {
        let idle = self
            .readers
            .lock()
            .map_err(|_| StoreError::Backend("reader pool poisoned".into()))?
            .pop();
        let conn = match idle {
            Some(conn) => conn,
            None => {
                let conn = Connection::open(&self.path)?;
                conn.busy_timeout(self.busy_timeout)?;
                conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
                conn.pragma_update(None, "query_only", "ON")?;
                conn
            }
        };
        Ok(Reader {
            conn: Some(conn),
            pool: &self.readers,
        })
    }

    /// The write connection with no batch open (for work outside transactions).
    fn idle_writer(&self) -> Result<MutexGuard<'_, Writer>, StoreError> {
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.batch_done
            .wait_while(writer, |w| w.open.is_some())
            .map_err(|_| StoreError::Backend("write connection poisoned".into()))
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.write_keeping(|tx| f(tx).map(Ok))
    }

    /// Like `write`, but an inner error still commits: for refusals that must leave a
    /// trace (a wrong proof code counts as a failure).
    ///
    /// An outer error rolls back this transaction only; the rest of its batch commits.
    fn write_keeping<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<Result<T, StoreError>, StoreError>,
    ) -> Result<T, StoreError> {
        self.queued.fetch_add(1, Ordering::SeqCst);
        // A panic in another transaction leaves the connection usable: its savepoint
        // was rolled back while unwinding.
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.queued.fetch_sub(1, Ordering::SeqCst);
        let batch = match &w.open {
            Some(batch) => Arc::clone(batch),
            None => {
                // IMMEDIATE takes the write lock at once, so checks and writes see one
                // state (other processes, such as `ghostkey keys rotate`, wait for it).
                w.conn.execute_batch("BEGIN IMMEDIATE")?;
                let batch = Arc::new(Batch::default());
                w.open = Some(Arc::clone(&batch));
                w.transactions_in_batch = 0;
                batch
            }
        };
        // This transaction, in a savepoint of the batch: an error rolls back this one only
        // (dropping the savepoint rolls it back).
        let value: Result<Result<T, StoreError>, StoreError> = match w.conn.savepoint() {
            Err(e) => Err(e.into()),
            Ok(sp) => match f(&sp) {
                Ok(inner) => sp.commit().map(|()| inner).map_err(StoreError::from),
                Err(e) => Err(e),
            },
        };
        w.transactions_in_batch += 1;
        if w.conn.is_autocommit() {
            // SQLite rolled the whole transaction back (I/O error, disk full): the batch
            // is lost, and everyone in it is told so.
            let failed = Err("the transaction was rolled back by SQLite".to_owned());
            self.finish(&mut w, &batch, failed);
            return Err(StoreError::Backend(
                "the transaction was rolled back by SQLite".into(),
            ));
        }
        let outcome =
            if self.queued.load(Ordering::SeqCst) > 0 && w.transactions_in_batch < MAX_BATCH {
                // Someone is queued for the connection: they join the batch and commit it
                // (or pass it on). Wait for that commit before answering.
                let w = self
                    .batch_done
                    .wait_while(w, |_| batch.0.get().is_none())
                    .unwrap_or_else(|p| p.into_inner());
                drop(w);
                batch
                    .0
                    .get()
                    .cloned()
                    .unwrap_or_else(|| Err("batch never finished".into()))
            } else {
                let committed = w.conn.execute_batch("COMMIT").map_err(|e| e.to_string());
                if committed.is_err() && !w.conn.is_autocommit() {
                    let _ = w.conn.execute_batch("ROLLBACK");
                }
                self.finish(&mut w, &batch, committed.clone());
                committed
            };
        match outcome {
            Ok(()) => value.and_then(|inner| inner),
            Err(e) => Err(StoreError::Backend(format!("commit failed: {e}"))),
        }
    }

    /// Closes the open batch with `outcome` and wakes its waiters.
    fn finish(&self, w: &mut Writer, batch: &Batch, outcome: Result<(), String>) {
        let _ = batch.0.set(outcome);
        w.open = None;
        w.transactions_in_batch = 0;
        self.batch_done.notify_all();
    }
}

#[cfg(unix)]
fn make_private(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| StoreError::Backend(format!("cannot restrict {}: {e}", path.display())))
}

#[cfg(not(unix))]
fn make_private(_path: &Path) -> Result<(), StoreError> {
    Ok(())
}

/// A copy is usable if SQLite finds it intact and it has this version's schema.
fn check_copy(path: &Path) -> Result<(), StoreError> {
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

fn init_schema(conn: &mut Connection) -> Result<(), StoreError> {
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

const APP_COLUMNS: &str = "id, name, created_at, allowed_methods, code_digits, totp_digits, \
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

/// After a purge of `purged` rows that expired before `now`, records that the server's
/// time reached `now`: were it to go back before it, what was forgotten would count again
/// (a replayed assertion, a fresh rate window). See [`crate::clock::NeverBackwards`].
fn raise_clock_floor(tx: &Connection, purged: usize, now: UnixTime) -> Result<(), StoreError> {
    if purged > 0 {
        tx.exec(
            "UPDATE clock_floor SET at = max(at, ?1) WHERE id = 1",
            [now],
        )?;
    }
    Ok(())
}

/// Records a `jti` as used; refuses one seen before. Also forgets a few expired ones.
fn consume_jti(
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

fn parse_kind(s: &str) -> rusqlite::Result<MethodKind> {
    MethodKind::parse(s).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            "unknown method kind".into(),
        )
    })
}

const METHOD_COLUMNS: &str =
    "id, app_id, user_id, kind, state, key_id, secret, destination_mac, totp_last_step, created_at, confirmed_at";

fn method_from_row(row: &Row<'_>) -> rusqlite::Result<Method> {
    let kind: String = row.get(3)?;
    let state: String = row.get(4)?;
    Ok(Method {
        id: row.get(0)?,
        app_id: row.get(1)?,
        user_id: row.get(2)?,
        kind: parse_kind(&kind)?,
        state: if state == "confirmed" {
            MethodState::Confirmed
        } else {
            MethodState::Pending
        },
        key_id: row.get(5)?,
        secret: row.get(6)?,
        destination_mac: row.get(7)?,
        totp_last_step: row.get(8)?,
        created_at: row.get(9)?,
        confirmed_at: row.get(10)?,
    })
}

const CHALLENGE_COLUMNS: &str =
    "id, app_id, user_id, method_id, purpose, code_salt, code_hash, attempts, max_attempts, state, created_at, expires_at, code_key_id, opened_by, ceremony";

fn challenge_from_row(row: &Row<'_>) -> rusqlite::Result<Challenge> {
    let purpose: String = row.get(4)?;
    let salt: Option<Vec<u8>> = row.get(5)?;
    let hash: Option<Vec<u8>> = row.get(6)?;
    let state: String = row.get(9)?;
    let code = match (salt, hash) {
        (Some(salt), Some(hash)) => Some((
            salt.try_into().map_err(|_| bad_blob(5))?,
            hash.try_into().map_err(|_| bad_blob(6))?,
        )),
        _ => None,
    };
    Ok(Challenge {
        id: row.get(0)?,
        app_id: row.get(1)?,
        user_id: row.get(2)?,
        method_id: row.get(3)?,
        purpose: match purpose.as_str() {
            "proof" => ChallengePurpose::Proof,
            "recover" => ChallengePurpose::Recover,
            _ => ChallengePurpose::Confirm,
        },
        code,
        attempts: row.get(7)?,
        max_attempts: row.get(8)?,
        state: match state.as_str() {
            "used" => ChallengeState::Used,
            "dead" => ChallengeState::Dead,
            _ => ChallengeState::Open,
        },
        created_at: row.get(10)?,
        expires_at: row.get(11)?,
        code_key_id: row.get(12)?,
        opened_by: row
            .get::<_, Option<String>>(13)?
            .and_then(|p| ghostkey_proto::assertion::Purpose::parse(&p)),
        ceremony: row.get(14)?,
    })
}

fn bad_blob(column: usize) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        column,
        rusqlite::types::Type::Blob,
        "wrong length".into(),
    )
}

fn load_method(tx: &Connection, id: &str) -> Result<Option<Method>, StoreError> {
    Ok(tx
        .one(
            &format!("SELECT {METHOD_COLUMNS} FROM methods WHERE id = ?1"),
            [id],
            method_from_row,
        )
        .optional()?)
}

fn load_methods(tx: &Connection, app_id: &str, user_id: &str) -> Result<Vec<Method>, StoreError> {
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {METHOD_COLUMNS} FROM methods WHERE app_id = ?1 AND user_id = ?2 ORDER BY created_at, id"
    ))?;
    let methods = stmt
        .query_map(params![app_id, user_id], method_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(methods)
}

fn load_challenge(tx: &Connection, id: &str) -> Result<Option<Challenge>, StoreError> {
    Ok(tx
        .one(
            &format!("SELECT {CHALLENGE_COLUMNS} FROM challenges WHERE id = ?1"),
            [id],
            challenge_from_row,
        )
        .optional()?)
}

fn load_policy(tx: &Connection, app_id: &str) -> Result<AppPolicy, StoreError> {
    tx.one(
        &format!("SELECT {APP_COLUMNS} FROM apps WHERE id = ?1"),
        [app_id],
        app_from_row,
    )
    .optional()?
    .map(|app| app.policy)
    .ok_or(StoreError::UnknownApp)
}

fn load_guard(tx: &Connection, app_id: &str, user_id: &str) -> Result<Guard, StoreError> {
    Ok(tx
        .one(
            "SELECT failures, backoff_until, locked_at FROM user_guards WHERE app_id = ?1 AND user_id = ?2",
            params![app_id, user_id],
            |r| Ok(Guard { failures: r.get(0)?, backoff_until: r.get(1)?, locked_at: r.get(2)?, window: FailureWindow::default() }),
        )
        .optional()?
        .unwrap_or_default())
}

fn save_guard(
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

fn user_exists(tx: &Connection, app_id: &str, user_id: &str) -> Result<bool, StoreError> {
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
fn load_window(
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

/// Writes back what [`challenge::settle`] decided.
fn save_settlement(
    tx: &Connection,
    ch: &Challenge,
    s: &Settlement,
    now: UnixTime,
) -> Result<(), StoreError> {
    tx.exec(
        "UPDATE challenges SET attempts = ?2, state = ?3 WHERE id = ?1",
        params![ch.id, s.attempts, s.state.as_str()],
    )?;
    save_guard(tx, &ch.app_id, &ch.user_id, &s.guard)?;
    if s.outcome.is_failure() {
        // Failures older than the window no longer count: drop them as new ones come, a
        // window later still: a request that read the clock a moment before this one (a
        // concurrent answer, another node) and commits after it must find every failure
        // of its own 24 hours (tests/failure_budget_edge.rs).
        let purged = tx.exec(
            "DELETE FROM user_failures WHERE app_id = ?1 AND user_id = ?2 AND at <= ?3",
            params![ch.app_id, ch.user_id, now - 2 * FAILURE_WINDOW_SECS],
        )?;
        raise_clock_floor(tx, purged, now)?;
        tx.exec(
            "INSERT INTO user_failures (app_id, user_id, at) VALUES (?1, ?2, ?3)",
            params![ch.app_id, ch.user_id, now],
        )?;
    }
    if let Some(step) = s.totp_step {
        tx.exec(
            "UPDATE methods SET totp_last_step = ?2 WHERE id = ?1 AND (totp_last_step IS NULL OR totp_last_step < ?2)",
            params![ch.method_id, step],
        )?;
    }
    Ok(())
}

/// Loads and settles a challenge; the caller commits whatever the outcome. When the
/// answer locks the user, `locked_notice` goes to every confirmed method of theirs; when a
/// passkey's counter went backwards, `cloned_notice` does.
fn settle_in(
    tx: &Connection,
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
fn settle_proof(
    tx: &Connection,
    proof: &ProofAnswer,
    assertion: &VerifiedAssertion,
    now: UnixTime,
) -> Result<Result<(), StoreError>, StoreError> {
    settle_proof_with(tx, proof, assertion, LockRule::Enforce, now)
}

/// [`settle_proof`], with the lock enforced or (for the proof that lifts it) not.
fn settle_proof_with(
    tx: &Connection,
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

fn insert_cancel_code(
    tx: &Connection,
    mac: &[u8],
    challenge_id: &str,
    now: UnixTime,
) -> Result<(), StoreError> {
    tx.exec(
        "INSERT INTO cancel_codes (mac, challenge_id, created_at) VALUES (?1, ?2, ?3)",
        params![mac, challenge_id, now],
    )?;
    Ok(())
}

/// Marks a recovery cancelled and kills its challenge (a late right code releases
/// nothing), notifying every method.
fn cancel_in(
    tx: &Connection,
    rec: &mut Recovery,
    notice: &NewMessage,
    by: &str,
    now: UnixTime,
) -> Result<(), StoreError> {
    rec.state = RecoveryState::Cancelled;
    rec.cancelled_at = Some(now);
    save_recovery(tx, rec)?;
    tx.exec(
        "UPDATE challenges SET state = 'dead' WHERE id = ?1 AND state = 'open'",
        [&rec.challenge_id],
    )?;
    // Its cancel codes have done their work.
    tx.exec(
        "DELETE FROM cancel_codes WHERE challenge_id = ?1",
        [&rec.challenge_id],
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

/// Deletes every pending method of a user, with their challenges and unsent messages;
/// answers how many methods went.
fn remove_pending_methods(
    tx: &Connection,
    app_id: &str,
    user_id: &str,
) -> Result<usize, StoreError> {
    let pending = "SELECT id FROM methods WHERE app_id = ?1 AND user_id = ?2 AND state = 'pending'";
    tx.exec(
        &format!("DELETE FROM outbox WHERE state = 'pending' AND method_id IN ({pending})"),
        params![app_id, user_id],
    )?;
    tx.exec(
        &format!("DELETE FROM challenges WHERE method_id IN ({pending})"),
        params![app_id, user_id],
    )?;
    Ok(tx.exec(
        "DELETE FROM methods WHERE app_id = ?1 AND user_id = ?2 AND state = 'pending'",
        params![app_id, user_id],
    )?)
}

fn insert_challenge(tx: &Connection, ch: &Challenge) -> Result<(), StoreError> {
    let (salt, hash) = match &ch.code {
        Some((salt, hash)) => (Some(salt.to_vec()), Some(hash.to_vec())),
        None => (None, None),
    };
    tx.exec(
        &format!("INSERT INTO challenges ({CHALLENGE_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"),
        params![
            ch.id,
            ch.app_id,
            ch.user_id,
            ch.method_id,
            ch.purpose.as_str(),
            salt,
            hash,
            ch.attempts,
            ch.max_attempts,
            ch.state.as_str(),
            ch.created_at,
            ch.expires_at,
            ch.code_key_id,
            ch.opened_by.map(|p| p.as_str()),
            ch.ceremony
        ],
    )?;
    Ok(())
}

/// At most one security notice of a kind is sent to one destination per this many seconds.
pub const NOTICE_WINDOW_SECS: i64 = 3600;

/// Queues a message. A security notice joins a notice of its kind to the same method that
/// is still waiting to go (counted in its `events`); otherwise it is due an hour after the
/// last one of its kind, so one destination gets at most one notice of a kind an hour, and
/// it spends the destination's and the app's send budgets like a code. A notice is never
/// dropped: a full budget delays nothing and refuses nothing, so no one can silence the
/// user's notices by spending their budget first.
fn enqueue(
    tx: &Connection,
    app_id: &str,
    method_id: &str,
    msg: &NewMessage,
    now: UnixTime,
) -> Result<(), StoreError> {
    let mut due = now;
    if let Some(kind) = msg.notice_kind {
        let joined = tx.exec(
            "UPDATE outbox SET events = events + 1 \
             WHERE method_id = ?1 AND notice_kind = ?2 AND state = 'pending' AND leased_until <= ?3",
            params![method_id, kind, now],
        )?;
        if joined > 0 {
            return Ok(());
        }
        let last: Option<UnixTime> = tx.one(
            "SELECT max(created_at) FROM outbox WHERE method_id = ?1 AND notice_kind = ?2",
            params![method_id, kind],
            |r| r.get(0),
        )?;
        due = last.map_or(now, |t| (t + NOTICE_WINDOW_SECS).max(now));
        count_notice_send(tx, app_id, method_id, now)?;
    }
    tx.exec(
        "INSERT INTO outbox (app_id, method_id, kind, key_id, body, state, next_attempt_at, created_at, notice_kind, events) \
         VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7, ?8, 1)",
        params![app_id, method_id, msg.kind.as_str(), msg.key_id, msg.body, due, now, msg.notice_kind],
    )?;
    Ok(())
}

/// A notice spends a unit of its destination's hourly and daily budgets and of the app's
/// daily budget, even over them (a notice is never refused): codes that come after it are
/// refused sooner.
fn count_notice_send(
    tx: &Connection,
    app_id: &str,
    method_id: &str,
    now: UnixTime,
) -> Result<(), StoreError> {
    let Some(method) = load_method(tx, method_id)? else {
        return Ok(());
    };
    let Some(mac) = &method.destination_mac else {
        return Ok(());
    };
    let p = load_policy(tx, app_id)?;
    let limits = crate::domain::limits::send_limits(
        app_id,
        mac,
        p.sends_per_destination_per_hour,
        p.sends_per_destination_per_day,
        p.app_daily_send_budget,
    );
    for limit in &limits {
        bump_limit(tx, limit, now)?;
    }
    Ok(())
}

/// Queues `msg` to every confirmed SMS and e-mail method of the user except one.
fn enqueue_to_others(
    tx: &Connection,
    app_id: &str,
    user_id: &str,
    except_method: &str,
    msg: &NewMessage,
    now: UnixTime,
) -> Result<usize, StoreError> {
    let targets: Vec<String> = {
        let mut stmt = tx.prepare_cached(
            "SELECT id FROM methods \
             WHERE app_id = ?1 AND user_id = ?2 AND id != ?3 AND state = 'confirmed' AND kind IN ('sms', 'email') \
             ORDER BY created_at, id",
        )?;
        let ids = stmt
            .query_map(params![app_id, user_id, except_method], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        ids
    };
    for method_id in &targets {
        enqueue(tx, app_id, method_id, msg, now)?;
    }
    Ok(targets.len())
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
fn take_limits_in(
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
fn bump_limit(tx: &Connection, limit: &Limit, now: UnixTime) -> Result<(), StoreError> {
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
fn spending<T>(
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

fn guard_allows_start(guard: &Guard) -> Result<(), StoreError> {
    if guard.locked_at.is_some() {
        return Err(StoreError::Locked);
    }
    Ok(())
}

const RECOVERY_COLUMNS: &str =
    "challenge_id, app_id, user_id, method_id, state, available_at, released_at, cancelled_at, created_at";

fn recovery_from_row(row: &Row<'_>) -> rusqlite::Result<Recovery> {
    let state: String = row.get(4)?;
    Ok(Recovery {
        challenge_id: row.get(0)?,
        app_id: row.get(1)?,
        user_id: row.get(2)?,
        method_id: row.get(3)?,
        state: RecoveryState::parse(&state).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                4,
                rusqlite::types::Type::Text,
                "unknown recovery state".into(),
            )
        })?,
        available_at: row.get(5)?,
        released_at: row.get(6)?,
        cancelled_at: row.get(7)?,
        created_at: row.get(8)?,
    })
}

fn load_recovery(tx: &Connection, challenge_id: &str) -> Result<Option<Recovery>, StoreError> {
    Ok(tx
        .one(
            &format!("SELECT {RECOVERY_COLUMNS} FROM recoveries WHERE challenge_id = ?1"),
            [challenge_id],
            recovery_from_row,
        )
        .optional()?)
}

/// The recovery `challenge_id` of the assertion's user, or `RecoveryNotFound` (also for
/// another user's recovery: its existence is not revealed).
fn load_own_recovery(
    tx: &Connection,
    assertion: &VerifiedAssertion,
    challenge_id: &str,
) -> Result<Recovery, StoreError> {
    match load_recovery(tx, challenge_id)? {
        Some(r) if r.app_id == assertion.app_id && r.user_id == assertion.user_id => Ok(r),
        _ => Err(StoreError::RecoveryNotFound),
    }
}

fn save_recovery(tx: &Connection, r: &Recovery) -> Result<(), StoreError> {
    tx.exec(
        "UPDATE recoveries SET state = ?2, available_at = ?3, released_at = ?4, cancelled_at = ?5 WHERE challenge_id = ?1",
        params![r.challenge_id, r.state.as_str(), r.available_at, r.released_at, r.cancelled_at],
    )?;
    Ok(())
}

fn sealed_blob(tx: &Connection, app_id: &str, user_id: &str) -> Result<Vec<u8>, StoreError> {
    tx.one(
        "SELECT sealed_virtual_device FROM users WHERE app_id = ?1 AND user_id = ?2",
        params![app_id, user_id],
        |r| r.get(0),
    )
    .optional()?
    .ok_or(StoreError::NotEnrolled)
}

fn refused(e: crate::error::Error) -> StoreError {
    StoreError::Refused(Box::new(e))
}

/// Who an audit event is about.
enum Who<'a> {
    /// A user, recorded under their audit pseudonym.
    User(&'a str),
    /// The operator (admin commands).
    Operator,
}

/// Appends an event to the audit log, chained to the previous one, in the caller's
/// transaction (so it commits, or not, with what it records).
fn audit(
    tx: &Connection,
    now: UnixTime,
    kind: &str,
    app_id: &str,
    who: Who<'_>,
    detail: serde_json::Value,
) -> Result<(), StoreError> {
    let subject = match who {
        Who::Operator => "operator".to_owned(),
        Who::User(user_id) => tx
            .one(
                "SELECT audit_pseudonym FROM users WHERE app_id = ?1 AND user_id = ?2",
                params![app_id, user_id],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .unwrap_or_default(),
    };
    // The next event follows the recorded head, not whatever event is last: events deleted
    // from the end leave a gap that `audit verify` reports. Events past the head can only
    // come from an older Ghostkey still running when this one upgraded the schema: the
    // chain goes on after them (and `audit verify` still checks every link).
    let (head_seq, head_hash): (i64, Vec<u8>) = tx
        .one("SELECT seq, hash FROM audit_head WHERE id = 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?
        .ok_or_else(|| StoreError::Backend("the audit log's head row is missing".into()))?;
    let last: Option<(i64, Vec<u8>)> = tx
        .one(
            "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (prev_seq, prev_hash) = match last {
        Some((seq, hash)) if seq > head_seq => {
            tracing::warn!(
                recorded_head = head_seq,
                last_event = seq,
                "audit events were appended past the recorded head (by an older Ghostkey?): the head moves to the last event"
            );
            (seq, hash)
        }
        _ => (head_seq, head_hash),
    };
    // Every audited write is a time the database relied on.
    tx.exec(
        "UPDATE clock_floor SET at = max(at, ?1) WHERE id = 1",
        [now],
    )?;
    let prev: [u8; 32] = prev_hash
        .try_into()
        .map_err(|_| StoreError::Backend("stored audit hash is not 32 bytes".into()))?;
    let seq = prev_seq + 1;
    let detail = crate::domain::audit::without_handles(detail).to_string();
    let hash = crate::domain::audit::chain_hash(&prev, seq, now, kind, app_id, &subject, &detail);
    tx.exec(
        "INSERT INTO audit_events (seq, at, kind, app_id, subject, detail, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![seq, now, kind, app_id, subject, detail, hash],
    )?;
    tx.exec(
        "UPDATE audit_head SET seq = ?1, hash = ?2 WHERE id = 1",
        params![seq, hash],
    )?;
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
        self.reader()?.one("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }

    fn create_app(&self, app: &App, first_key: &AppKey) -> Result<(), StoreError> {
        let p = &app.policy;
        self.write(|tx| {
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

    fn list_apps(&self) -> Result<Vec<App>, StoreError> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {APP_COLUMNS} FROM apps ORDER BY created_at, id"
        ))?;
        let apps = stmt
            .query_map([], app_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(apps)
    }

    fn app(&self, app_id: &str) -> Result<Option<App>, StoreError> {
        let conn = self.reader()?;
        Ok(conn
            .one(
                &format!("SELECT {APP_COLUMNS} FROM apps WHERE id = ?1"),
                [app_id],
                app_from_row,
            )
            .optional()?)
    }

    fn app_keys(&self, app_id: &str) -> Result<Vec<AppKey>, StoreError> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare_cached(
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

    fn revoke_app_key(&self, app_id: &str, kid: &str, now: UnixTime) -> Result<(), StoreError> {
        self.write(|tx| {
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

    fn set_app_policy(&self, app_id: &str, p: &AppPolicy, now: UnixTime) -> Result<(), StoreError> {
        self.write(|tx| {
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

    fn app_origins(&self, app_id: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.reader()?;
        let mut stmt = conn
            .prepare_cached("SELECT origin FROM app_origins WHERE app_id = ?1 ORDER BY origin")?;
        let origins = stmt
            .query_map([app_id], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(origins)
    }

    fn add_app_origin(
        &self,
        app_id: &str,
        origin: &str,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
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

    fn remove_app_origin(
        &self,
        app_id: &str,
        origin: &str,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
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

    fn origin_standing(
        &self,
        subject: OriginSubject<'_>,
        origin: &str,
    ) -> Result<OriginStanding, StoreError> {
        let conn = self.reader()?;
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

    fn lookup_assertion_key(&self, app_id: &str, kid: &str) -> Result<KeyLookup, StoreError> {
        let conn = self.reader()?;
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

    fn enroll(
        &self,
        assertion: &VerifiedAssertion,
        e: &Enrollment,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
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

    fn enrollment(&self, app_id: &str, user_id: &str) -> Result<Option<Enrollment>, StoreError> {
        let conn = self.reader()?;
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

    fn consume_assertion(
        &self,
        assertion: &VerifiedAssertion,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| consume_jti(tx, assertion, now))
    }

    fn user(&self, app_id: &str, user_id: &str) -> Result<Option<UserRecord>, StoreError> {
        let Some(enrollment) = self.enrollment(app_id, user_id)? else {
            return Ok(None);
        };
        let conn = self.reader()?;
        Ok(Some(UserRecord {
            enrollment,
            guard: load_guard(&conn, app_id, user_id)?,
            methods: load_methods(&conn, app_id, user_id)?,
        }))
    }

    fn add_method(&self, cmd: &AddMethod<'_>, now: UnixTime) -> Result<(), StoreError> {
        self.write_keeping(|tx| {
            consume_jti(tx, cmd.assertion, now)?;
            let (app_id, user_id) = (&cmd.assertion.app_id, &cmd.assertion.user_id);
            if !user_exists(tx, app_id, user_id)? {
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
            tx.exec(
                &format!("INSERT INTO methods ({METHOD_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
                params![
                    m.id,
                    m.app_id,
                    m.user_id,
                    m.kind.as_str(),
                    m.state.as_str(),
                    m.key_id,
                    m.secret,
                    m.destination_mac,
                    m.totp_last_step,
                    m.created_at,
                    m.confirmed_at
                ],
            )?;
            insert_challenge(tx, cmd.challenge)?;
            if let Some(msg) = cmd.message {
                enqueue(tx, app_id, &m.id, msg, now)?;
            }
            audit(tx, now, "method_added", app_id, Who::User(user_id), json!({ "method": m.id, "kind": m.kind.as_str() }))?;
            Ok(Ok(()))
        })
    }

    fn start_challenge(&self, cmd: &StartChallenge<'_>, now: UnixTime) -> Result<(), StoreError> {
        self.write(|tx| {
            consume_jti(tx, cmd.assertion, now)?;
            let ch = cmd.challenge;
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
            audit(tx, now, "challenge_started", &ch.app_id, Who::User(&ch.user_id), json!({ "challenge": ch.id, "purpose": ch.purpose.as_str(), "method": ch.method_id }))?;
            Ok(())
        })
    }

    fn challenge(
        &self,
        challenge_id: &str,
    ) -> Result<Option<(Challenge, Method, AppPolicy)>, StoreError> {
        let conn = self.reader()?;
        let Some(ch) = load_challenge(&conn, challenge_id)? else {
            return Ok(None);
        };
        let Some(method) = load_method(&conn, &ch.method_id)? else {
            return Ok(None);
        };
        let policy = load_policy(&conn, &ch.app_id)?;
        Ok(Some((ch, method, policy)))
    }

    fn credential_registered(&self, credential_hash: &[u8; 32]) -> Result<bool, StoreError> {
        let conn = self.reader()?;
        Ok(conn
            .one(
                "SELECT 1 FROM methods WHERE credential_hash = ?1",
                [&credential_hash[..]],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    fn answer_challenge(
        &self,
        challenge_id: &str,
        verdict: Verdict,
        registered: Option<&RegisteredPasskey>,
        notices: &AnswerNotices<'_>,
        now: UnixTime,
    ) -> Result<Answered, StoreError> {
        self.write(|tx| {
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
                        .one(
                            "SELECT 1 FROM methods WHERE credential_hash = ?1",
                            [&passkey.credential_hash[..]],
                            |_| Ok(()),
                        )
                        .optional()?
                        .is_some();
                    if taken {
                        return Err(refused(crate::error::Error::new(
                            ghostkey_proto::ErrorCode::PasskeyRejected,
                        )));
                    }
                    tx.exec(
                        "UPDATE methods SET key_id = ?2, secret = ?3, credential_hash = ?4 WHERE id = ?1 AND kind = 'passkey'",
                        params![method.id, passkey.key_id, passkey.secret, &passkey.credential_hash[..]],
                    )?;
                }
                tx.exec(
                    "UPDATE methods SET state = 'confirmed', confirmed_at = ?2 WHERE id = ?1 AND state = 'pending'",
                    params![method.id, now],
                )?;
                enrollment_completed = tx.exec(
                    "UPDATE users SET state = 'active', updated_at = ?3 WHERE app_id = ?1 AND user_id = ?2 AND state = 'pending'",
                    params![ch.app_id, ch.user_id, now],
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

    fn remove_method(&self, cmd: &RemoveMethod<'_>, now: UnixTime) -> Result<(), StoreError> {
        self.write_keeping(|tx| {
            consume_jti(tx, cmd.assertion, now)?;
            let (app_id, user_id) = (&cmd.assertion.app_id, &cmd.assertion.user_id);
            if !user_exists(tx, app_id, user_id)? {
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
            tx.exec("DELETE FROM methods WHERE id = ?1", [&target.id])?;
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

    fn unlock_user(&self, cmd: &UnlockUser<'_>, now: UnixTime) -> Result<bool, StoreError> {
        let (app_id, user_id) = (cmd.app_id, cmd.user_id);
        self.write_keeping(|tx| {
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

    fn chain_head(
        &self,
        app_id: &str,
        user_id: &str,
    ) -> Result<Option<crate::domain::chain::Head>, StoreError> {
        let conn = self.reader()?;
        let row: Option<(i64, Vec<u8>)> = conn
            .one(
                "SELECT idx, hash FROM chain_blocks WHERE app_id = ?1 AND user_id = ?2 ORDER BY idx DESC LIMIT 1",
                params![app_id, user_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        row.map(|(idx, hash)| {
            let hash: [u8; 32] = hash
                .try_into()
                .map_err(|_| StoreError::Backend("a stored chain hash is not 32 bytes".into()))?;
            let len = usize::try_from(idx + 1)
                .map_err(|_| StoreError::Backend("a stored chain index is negative".into()))?;
            Ok(crate::domain::chain::Head { len, hash })
        })
        .transpose()
    }

    fn chain_block(
        &self,
        app_id: &str,
        user_id: &str,
        index: usize,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let conn = self.reader()?;
        Ok(conn
            .one(
                "SELECT block FROM chain_blocks WHERE app_id = ?1 AND user_id = ?2 AND idx = ?3",
                params![app_id, user_id, i64::try_from(index).unwrap_or(i64::MAX)],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn chain(&self, app_id: &str, user_id: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare_cached(
            "SELECT block FROM chain_blocks WHERE app_id = ?1 AND user_id = ?2 ORDER BY idx",
        )?;
        let blocks = stmt
            .query_map(params![app_id, user_id], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<Vec<u8>>>>()?;
        Ok(blocks)
    }

    fn append_block(
        &self,
        assertion: &VerifiedAssertion,
        index: usize,
        hash: &[u8; 32],
        block: &[u8],
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            consume_jti(tx, assertion, now)?;
            let len: i64 = tx.one(
                "SELECT count(*) FROM chain_blocks WHERE app_id = ?1 AND user_id = ?2",
                params![assertion.app_id, assertion.user_id],
                |r| r.get(0),
            )?;
            // Checked in the write transaction: of two appends built on the same head,
            // exactly one lands.
            if usize::try_from(len).ok() != Some(index) {
                return Err(StoreError::ChainFork);
            }
            tx.exec(
                "INSERT INTO chain_blocks (app_id, user_id, idx, hash, block, added_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![assertion.app_id, assertion.user_id, index as i64, hash, block, now],
            )?;
            audit(tx, now, "chain_block_appended", &assertion.app_id, Who::User(&assertion.user_id), json!({ "index": index, "hash": hex::encode(hash) }))?;
            Ok(())
        })
    }

    fn start_recovery(&self, cmd: &StartRecovery<'_>, now: UnixTime) -> Result<(), StoreError> {
        self.write_keeping(|tx| spending(tx, cmd.unspent, now, |tx| {
            consume_jti(tx, cmd.assertion, now)?;
            let ch = cmd.challenge;
            // A locked user may still get a proof challenge: its answer is what lifts the
            // lock (`POST /v1/users/unlock`), and nothing else accepts it while locked.
            if ch.purpose != ChallengePurpose::Proof {
                guard_allows_start(&load_guard(tx, &ch.app_id, &ch.user_id)?)?;
            }
            take_limits_in(tx, cmd.limits, now)??;
            insert_challenge(tx, ch)?;
            tx.exec(
                &format!("INSERT INTO recoveries ({RECOVERY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, 'started', NULL, NULL, NULL, ?5)"),
                params![ch.id, ch.app_id, ch.user_id, ch.method_id, now],
            )?;
            if let Some(msg) = cmd.message {
                enqueue(tx, &ch.app_id, &ch.method_id, msg, now)?;
            }
            insert_cancel_code(tx, cmd.cancel_mac, &ch.id, now)?;
            enqueue_to_others(tx, &ch.app_id, &ch.user_id, &ch.method_id, cmd.notice, now)?;
            audit(tx, now, "recovery_started", &ch.app_id, Who::User(&ch.user_id), json!({ "recovery": ch.id, "method": ch.method_id }))?;
            Ok(())
        }))
    }

    fn recovery(&self, challenge_id: &str) -> Result<Option<Recovery>, StoreError> {
        load_recovery(&*self.reader()?, challenge_id)
    }

    fn verify_recovery(
        &self,
        challenge_id: &str,
        unspent: &[Limit],
        verdict: Verdict,
        notices: &RecoveryNotices<'_>,
        now: UnixTime,
    ) -> Result<VerifiedRecovery, StoreError> {
        self.write_keeping(|tx| {
            spending(tx, unspent, now, |tx| {
                let ch = load_challenge(tx, challenge_id)?.ok_or(StoreError::RecoveryNotFound)?;
                let mut rec =
                    load_recovery(tx, challenge_id)?.ok_or(StoreError::RecoveryNotFound)?;
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
                    let (state, at) =
                        recovery::after_verified_code(policy.waiting_period_secs, now);
                    rec.state = state;
                    rec.available_at = Some(at);
                    if state == RecoveryState::Released {
                        rec.released_at = Some(now);
                        // A released recovery can no longer be cancelled: its codes are void.
                        tx.exec(
                            "DELETE FROM cancel_codes WHERE challenge_id = ?1",
                            [&rec.challenge_id],
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
                    } else {
                        insert_cancel_code(tx, notices.waiting_cancel_mac, &ch.id, now)?;
                        enqueue_to_others(tx, &ch.app_id, &ch.user_id, "", notices.waiting, now)?;
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

    fn release_recovery(
        &self,
        assertion: &VerifiedAssertion,
        challenge_id: &str,
        notice: &NewMessage,
        now: UnixTime,
    ) -> Result<(Recovery, Vec<u8>), StoreError> {
        self.write(|tx| {
            consume_jti(tx, assertion, now)?;
            let mut rec = load_own_recovery(tx, assertion, challenge_id)?;
            recovery::check_release(&rec, now).map_err(refused)?;
            rec.state = RecoveryState::Released;
            rec.released_at = Some(now);
            // A released recovery can no longer be cancelled: its codes are void.
            tx.exec(
                "DELETE FROM cancel_codes WHERE challenge_id = ?1",
                [&rec.challenge_id],
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

    fn cancel_recovery(
        &self,
        assertion: &VerifiedAssertion,
        proof: Option<&ProofAnswer>,
        challenge_id: &str,
        notice: &NewMessage,
        now: UnixTime,
    ) -> Result<Recovery, StoreError> {
        self.write_keeping(|tx| {
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

    fn recovery_by_cancel_code(&self, mac: &[u8]) -> Result<Option<Recovery>, StoreError> {
        let conn = self.reader()?;
        let id: Option<String> = conn
            .one(
                "SELECT challenge_id FROM cancel_codes WHERE mac = ?1",
                [mac],
                |r| r.get(0),
            )
            .optional()?;
        match id {
            Some(id) => load_recovery(&conn, &id),
            None => Ok(None),
        }
    }

    fn cancel_recovery_by_code(
        &self,
        mac: &[u8],
        notice: &NewMessage,
        now: UnixTime,
    ) -> Result<Recovery, StoreError> {
        self.write(|tx| {
            let id: Option<String> = tx
                .one(
                    "SELECT challenge_id FROM cancel_codes WHERE mac = ?1",
                    [mac],
                    |r| r.get(0),
                )
                .optional()?;
            let rec = match id {
                Some(id) => load_recovery(tx, &id)?,
                None => None,
            }
            .ok_or_else(|| {
                refused(crate::error::Error::new(
                    ghostkey_proto::ErrorCode::InvalidCode,
                ))
            })?;
            // The code stops every open recovery of its user: notices of one kind are
            // coalesced, so the code the user got may be from the first of several.
            let open: Vec<String> = {
                let mut stmt = tx.prepare_cached(
                    "SELECT challenge_id FROM recoveries WHERE app_id = ?1 AND user_id = ?2 \
                     AND state IN ('started', 'waiting') ORDER BY created_at, challenge_id",
                )?;
                let ids = stmt
                    .query_map(params![rec.app_id, rec.user_id], |r| r.get(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()?;
                ids
            };
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
            // Spent, even if its own recovery had ended before.
            tx.exec("DELETE FROM cancel_codes WHERE mac = ?1", [mac])?;
            Ok(answer)
        })
    }

    fn replace_virtual_device(
        &self,
        assertion: &VerifiedAssertion,
        proof: &ProofAnswer,
        sealed: &[u8],
        notice: &NewMessage,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.write_keeping(|tx| {
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
        self.scrub_wal();
        Ok(())
    }

    fn erase_user(
        &self,
        app: &str,
        user: &str,
        assertion: Option<&VerifiedAssertion>,
        notice: &NewMessage,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        self.write(|tx| {
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
        self.scrub_wal();
        Ok(())
    }

    fn audit_events(&self, after_seq: i64, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare_cached(
            "SELECT seq, at, kind, app_id, subject, detail, hash FROM audit_events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let events = stmt
            .query_map(params![after_seq, limit as i64], |r| {
                let hash: Vec<u8> = r.get(6)?;
                Ok(AuditEvent {
                    seq: r.get(0)?,
                    at: r.get(1)?,
                    kind: r.get(2)?,
                    app_id: r.get(3)?,
                    subject: r.get(4)?,
                    detail: r.get(5)?,
                    hash: hash.try_into().map_err(|_| bad_blob(6))?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(events)
    }

    fn audit_head(&self) -> Result<Option<AuditHead>, StoreError> {
        let conn = self.reader()?;
        let head = conn
            .one("SELECT seq, hash FROM audit_head WHERE id = 1", [], |r| {
                let hash: Vec<u8> = r.get(1)?;
                Ok(AuditHead {
                    seq: r.get(0)?,
                    hash: hash.try_into().map_err(|_| bad_blob(1))?,
                })
            })
            .optional()?;
        Ok(head)
    }

    fn time_floor(&self) -> Result<UnixTime, StoreError> {
        let conn = self.reader()?;
        let floor: Option<i64> = conn
            .one("SELECT at FROM clock_floor WHERE id = 1", [], |r| r.get(0))
            .optional()?;
        floor.ok_or_else(|| StoreError::Backend("the clock floor row is missing".into()))
    }

    fn reset_time_floor(&self, to: UnixTime) -> Result<UnixTime, StoreError> {
        self.write(|tx| {
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

    fn methods_under_other_keys(
        &self,
        current: &str,
        limit: usize,
    ) -> Result<Vec<Method>, StoreError> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare_cached(&format!(
            // A passphrase method stays under its key: its hash was made with that key's
            // pepper, which no rotation can redo without the verifier.
            "SELECT {METHOD_COLUMNS} FROM methods WHERE key_id != ?1 AND kind != 'passphrase' LIMIT ?2"
        ))?;
        let rows = stmt
            .query_map(params![current, limit as i64], method_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn rekey_method(
        &self,
        method_id: &str,
        old_key: &str,
        new_key: &str,
        secret: &[u8],
        destination_mac: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
            Ok(tx.exec(
                "UPDATE methods SET key_id = ?3, secret = ?4, destination_mac = ?5 WHERE id = ?1 AND key_id = ?2",
                params![method_id, old_key, new_key, secret, destination_mac],
            )? == 1)
        })
    }

    fn messages_under_other_keys(
        &self,
        current: &str,
        limit: usize,
    ) -> Result<Vec<(i64, String, Vec<u8>)>, StoreError> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare_cached(
            "SELECT id, key_id, body FROM outbox WHERE key_id != ?1 AND length(body) > 0 LIMIT ?2",
        )?;
        let rows = stmt
            .query_map(params![current, limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn rekey_message(
        &self,
        id: i64,
        old_key: &str,
        new_key: &str,
        body: &[u8],
    ) -> Result<bool, StoreError> {
        self.write(|tx| {
            Ok(tx.exec(
                "UPDATE outbox SET key_id = ?3, body = ?4 WHERE id = ?1 AND key_id = ?2 AND length(body) > 0",
                params![id, old_key, new_key, body],
            )? == 1)
        })
    }

    fn key_ids_in_use(&self, now: UnixTime) -> Result<Vec<String>, StoreError> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare_cached(
            "SELECT key_id FROM methods \
             UNION SELECT key_id FROM outbox WHERE length(body) > 0 \
             UNION SELECT destination_key_id FROM outbox WHERE destination IS NOT NULL \
             UNION SELECT code_key_id FROM challenges \
                   WHERE code_key_id IS NOT NULL AND state = 'open' AND expires_at > ?1",
        )?;
        let ids = stmt
            .query_map([now], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(ids)
    }

    fn key_usage(&self, key_id: &str, now: UnixTime) -> Result<(u64, u64, u64), StoreError> {
        let conn = self.reader()?;
        let count = |sql: &str, p: &[&dyn rusqlite::ToSql]| -> Result<u64, StoreError> {
            Ok(conn.one(sql, p, |r| r.get(0))?)
        };
        Ok((
            count("SELECT count(*) FROM methods WHERE key_id = ?1", &[&key_id])?
                + count(
                    "SELECT count(*) FROM outbox WHERE destination_key_id = ?1 AND destination IS NOT NULL",
                    &[&key_id],
                )?,
            count("SELECT count(*) FROM outbox WHERE key_id = ?1 AND length(body) > 0", &[&key_id])?,
            count(
                "SELECT count(*) FROM challenges WHERE code_key_id = ?1 AND state = 'open' AND expires_at > ?2",
                &[&key_id, &now],
            )?,
        ))
    }

    fn app_activity(
        &self,
        app_id: &str,
        since: UnixTime,
    ) -> Result<(u64, u64, Option<UnixTime>), StoreError> {
        let conn = self.reader()?;
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

    fn user_recoveries(&self, app_id: &str, user_id: &str) -> Result<Vec<Recovery>, StoreError> {
        let conn = self.reader()?;
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {RECOVERY_COLUMNS} FROM recoveries WHERE app_id = ?1 AND user_id = ?2 ORDER BY created_at DESC"
        ))?;
        let rows = stmt
            .query_map(params![app_id, user_id], recovery_from_row)?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }

    fn take_limits(&self, limits: &[Limit], now: UnixTime) -> Result<(), StoreError> {
        self.write(|tx| take_limits_in(tx, limits, now)?)
    }

    fn limits_allow(&self, limits: &[Limit], now: UnixTime) -> Result<(), StoreError> {
        match full_limit(&*self.reader()?, limits, now)? {
            Some(full) => Err(full),
            None => Ok(()),
        }
    }

    fn claim_message(
        &self,
        now: UnixTime,
        lease_secs: i64,
    ) -> Result<Option<ClaimedMessage>, StoreError> {
        self.write(|tx| {
            let row = tx
                .one(
                    "SELECT o.id, o.app_id, o.kind, COALESCE(m.kind, o.channel), COALESCE(m.key_id, o.destination_key_id), \
                            COALESCE(m.secret, o.destination), o.key_id, o.body, o.attempts, o.events \
                     FROM outbox o LEFT JOIN methods m ON m.id = o.method_id \
                     WHERE o.state = 'pending' AND o.next_attempt_at <= ?1 AND o.leased_until <= ?1 \
                       AND (m.id IS NOT NULL OR o.destination IS NOT NULL) \
                     ORDER BY o.next_attempt_at, o.id LIMIT 1",
                    [now],
                    |r| {
                        let kind: String = r.get(2)?;
                        let channel: String = r.get(3)?;
                        Ok(ClaimedMessage {
                            id: r.get(0)?,
                            app_id: r.get(1)?,
                            kind: if kind == "notice" { MessageKind::Notice } else { MessageKind::Code },
                            channel: parse_kind(&channel)?,
                            destination_key_id: r.get(4)?,
                            destination: r.get(5)?,
                            body_key_id: r.get(6)?,
                            body: r.get(7)?,
                            attempts: r.get(8)?,
                            events: r.get(9)?,
                        })
                    },
                )
                .optional()?;
            if let Some(m) = &row {
                tx.exec("UPDATE outbox SET leased_until = ?2 WHERE id = ?1", params![m.id, now + lease_secs])?;
            }
            Ok(row)
        })
    }

    fn finish_message(
        &self,
        id: i64,
        result: &SendResult,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        let farewell_done = self.write(|tx| {
            // A farewell's copy of an erased user's destination goes with its last attempt.
            let farewell: bool = tx.one(
                "SELECT destination IS NOT NULL FROM outbox WHERE id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()?
            .unwrap_or(false);
            match result {
                SendResult::Sent => tx.exec(
                    "UPDATE outbox SET state = 'sent', body = x'', destination = NULL, attempts = attempts + 1, \
                     leased_until = 0, finished_at = ?2, last_error = NULL WHERE id = ?1",
                    params![id, now],
                )?,
                SendResult::Retry { at, error } => tx.exec(
                    "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?2, leased_until = 0, last_error = ?3 \
                     WHERE id = ?1",
                    params![id, at, error],
                )?,
                SendResult::Failed { error } => tx.exec(
                    "UPDATE outbox SET state = 'failed', body = x'', destination = NULL, attempts = attempts + 1, \
                     leased_until = 0, finished_at = ?2, last_error = ?3 WHERE id = ?1",
                    params![id, now, error],
                )?,
            };
            Ok(farewell && !matches!(result, SendResult::Retry { .. }))
        })?;
        if farewell_done {
            self.scrub_wal();
        }
        Ok(())
    }

    fn outbox_counts(&self) -> Result<OutboxCounts, StoreError> {
        let conn = self.reader()?;
        let mut counts = OutboxCounts::default();
        let mut stmt = conn.prepare_cached("SELECT state, count(*) FROM outbox GROUP BY state")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))?;
        for row in rows {
            let (state, n) = row?;
            match state.as_str() {
                "pending" => counts.pending = n,
                "sent" => counts.sent = n,
                _ => counts.failed = n,
            }
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_in(dir: &tempfile::TempDir) -> SqliteStore {
        let store = SqliteStore::open(
            &dir.path().join("g.db"),
            Synchronous::Full,
            Duration::from_secs(5),
        )
        .unwrap();
        store
            .write(|tx| {
                tx.execute_batch("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT NOT NULL)")?;
                Ok(())
            })
            .unwrap();
        store
    }

    #[test]
    fn concurrent_writes_are_batched_and_each_answer_follows_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(store_in(&dir));
        let threads: Vec<_> = (0..32)
            .map(|t| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let k = t * 1000 + i;
                        store
                            .write(|tx| {
                                tx.execute("INSERT INTO t (k, v) VALUES (?1, 'x')", [k])?;
                                Ok(())
                            })
                            .unwrap();
                        // Acknowledged means committed: a fresh connection sees it.
                        let seen: i64 = Connection::open(dir_path(&store))
                            .unwrap()
                            .query_row("SELECT count(*) FROM t WHERE k = ?1", [k], |r| r.get(0))
                            .unwrap();
                        assert_eq!(seen, 1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let n: i64 = store
            .reader()
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 32 * 50);
    }

    fn dir_path(store: &SqliteStore) -> &Path {
        &store.path
    }

    #[test]
    fn a_failed_transaction_rolls_back_alone_and_refusals_that_keep_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(store_in(&dir));
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for i in 0..30 {
                        let k = t * 1000 + i;
                        let outcome = match k % 3 {
                            // Writes, then fails: nothing of it may remain.
                            0 => store.write(|tx| {
                                tx.execute("INSERT INTO t (k, v) VALUES (?1, 'gone')", [k])?;
                                Err::<(), _>(StoreError::Locked)
                            }),
                            // Writes, then refuses while keeping the write.
                            1 => store.write_keeping(|tx| {
                                tx.execute("INSERT INTO t (k, v) VALUES (?1, 'kept')", [k])?;
                                Ok(Err::<(), _>(StoreError::Locked))
                            }),
                            _ => store.write(|tx| {
                                tx.execute("INSERT INTO t (k, v) VALUES (?1, 'ok')", [k])?;
                                Ok(())
                            }),
                        };
                        assert_eq!(outcome.is_ok(), k % 3 == 2, "key {k}");
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let reader = store.reader().unwrap();
        let count = |v: &str| -> i64 {
            reader
                .query_row("SELECT count(*) FROM t WHERE v = ?1", [v], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(count("gone"), 0);
        assert_eq!(
            count("kept") + count("ok"),
            (0..16)
                .flat_map(|t| (0..30).map(move |i| t * 1000 + i))
                .filter(|k| k % 3 != 0)
                .count() as i64
        );
    }

    #[test]
    fn readers_never_see_a_batch_before_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(&dir);
        store
            .write(|tx| {
                tx.execute("INSERT INTO t (k, v) VALUES (1, 'x')", [])?;
                // Inside the open transaction, a read connection still sees the last commit.
                let seen: i64 = store
                    .reader()?
                    .query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
                assert_eq!(seen, 0);
                Ok(())
            })
            .unwrap();
        let seen: i64 = store
            .reader()
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(seen, 1);
    }

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
            conn.execute_batch(include_str!("migrations/v1.sql"))
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
            conn.execute_batch(include_str!("migrations/v1.sql"))
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
            conn.execute_batch(include_str!("migrations/v1.sql"))
                .unwrap();
            conn.execute_batch(include_str!("migrations/v2.sql"))
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
                include_str!("migrations/v1.sql"),
                include_str!("migrations/v2.sql"),
                include_str!("migrations/v3.sql"),
                include_str!("migrations/v4.sql"),
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
                include_str!("migrations/v1.sql"),
                include_str!("migrations/v2.sql"),
                include_str!("migrations/v3.sql"),
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
