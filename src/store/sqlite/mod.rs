//! The SQLite backend: one file, WAL mode, durable commits by default.
//!
//! This module holds the connection plumbing (one write connection that commits
//! transactions in batches, a pool of read connections) and `impl Store for SqliteStore`,
//! whose methods delegate to one file per concern: `apps`, `users`, `methods`,
//! `challenges`, `recoveries`, `chain`, `limits`, `outbox`, `audit`, and `schema` for the
//! schema and its migrations. Every write runs inside one `BEGIN IMMEDIATE` transaction of
//! the single write connection; the concurrency contract each method keeps is on the
//! [`Store`] trait.

mod apps;
mod audit;
mod chain;
mod challenges;
mod limits;
mod methods;
mod outbox;
mod recoveries;
mod schema;
mod users;

pub use outbox::NOTICE_WINDOW_SECS;
pub use schema::{SCHEMA_SQL, SCHEMA_VERSION};

use schema::{check_copy, init_schema};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use rusqlite::{Connection, Row};

use crate::clock::UnixTime;
use crate::config::Synchronous;
use crate::domain::app::{App, AppKey, KeyLookup};
use crate::domain::assertion::VerifiedAssertion;
use crate::domain::audit::{AuditEvent, AuditHead};
use crate::domain::challenge::{Challenge, Verdict};
use crate::domain::enrollment::Enrollment;
use crate::domain::limits::Limit;
use crate::domain::method::Method;
use crate::domain::policy::AppPolicy;
use crate::domain::recovery::Recovery;
use crate::store::{
    AddMethod, AnswerNotices, Answered, ClaimedMessage, NewMessage, OriginStanding, OriginSubject,
    OutboxCounts, ProofAnswer, RecoveryNotices, RegisteredPasskey, RemoveMethod, SendResult,
    StartChallenge, StartRecovery, Store, StoreError, UnlockUser, UserRecord, VerifiedRecovery,
};

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
/// Read connections open at once, at least (two per core if that is more). Each holds its
/// own page cache and prepared statements: opening one per concurrent request (64 at
/// c=64) cost memory, and reopening them cost a schema parse and every statement's
/// preparation again.
const MIN_READERS: usize = 8;
/// How long a read waits for a connection when all are busy before it opens one more
/// (closed after use), so that a read made while holding another never waits for ever.
const READER_WAIT: Duration = Duration::from_millis(50);

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
    readers: Mutex<ReaderPool>,
    /// Signalled when a read connection is given back.
    reader_free: Condvar,
    max_readers: usize,
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

/// The read connections: idle ones, and how many are open (idle or in use).
#[derive(Default)]
struct ReaderPool {
    idle: Vec<Connection>,
    open: usize,
}

/// A read connection, back to the pool when dropped (or closed, if it was opened past the
/// pool's bound).
struct Reader<'a> {
    conn: Option<Connection>,
    store: &'a SqliteStore,
    pooled: bool,
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
        if let (Some(conn), true) = (self.conn.take(), self.pooled) {
            let mut pool = self.store.readers.lock().unwrap_or_else(|p| p.into_inner());
            pool.idle.push(conn);
            drop(pool);
            self.store.reader_free.notify_one();
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
            readers: Mutex::new(ReaderPool::default()),
            reader_free: Condvar::new(),
            max_readers: std::thread::available_parallelism()
                .map_or(MIN_READERS, |n| (2 * n.get()).max(MIN_READERS)),
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

    /// A read connection from the pool: an idle one, a new one while fewer than
    /// `max_readers` are open, else the first given back (or, after [`READER_WAIT`], one
    /// more outside the pool).
    fn reader(&self) -> Result<Reader<'_>, StoreError> {
        let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = std::time::Instant::now() + READER_WAIT;
        let pooled = loop {
            if let Some(conn) = pool.idle.pop() {
                return Ok(Reader {
                    conn: Some(conn),
                    store: self,
                    pooled: true,
                });
            }
            if pool.open < self.max_readers {
                pool.open += 1;
                break true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break false;
            }
            pool = self
                .reader_free
                .wait_timeout(pool, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        };
        drop(pool);
        match self.open_reader() {
            Ok(conn) => Ok(Reader {
                conn: Some(conn),
                store: self,
                pooled,
            }),
            Err(e) => {
                if pooled {
                    self.readers.lock().unwrap_or_else(|p| p.into_inner()).open -= 1;
                    self.reader_free.notify_one();
                }
                Err(e)
            }
        }
    }

    fn open_reader(&self) -> Result<Connection, StoreError> {
        let conn = Connection::open(&self.path)?;
        conn.busy_timeout(self.busy_timeout)?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        conn.pragma_update(None, "query_only", "ON")?;
        Ok(conn)
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

fn bad_blob(column: usize) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        column,
        rusqlite::types::Type::Blob,
        "wrong length".into(),
    )
}

fn refused(e: crate::error::Error) -> StoreError {
    StoreError::Refused(Box::new(e))
}

impl Store for SqliteStore {
    fn ping(&self) -> Result<(), StoreError> {
        self.reader()?.one("SELECT 1", [], |_| Ok(()))?;
        Ok(())
    }

    fn maintain(&self, now: UnixTime) -> Result<crate::store::Maintenance, StoreError> {
        Ok(crate::store::Maintenance {
            purged: outbox::purge_finished(self, now)?,
            ..Default::default()
        })
    }

    fn create_app(&self, app: &App, first_key: &AppKey) -> Result<(), StoreError> {
        apps::create_app(self, app, first_key)
    }

    fn list_apps(&self) -> Result<Vec<App>, StoreError> {
        apps::list_apps(self)
    }

    fn app(&self, app_id: &str) -> Result<Option<App>, StoreError> {
        apps::app(self, app_id)
    }

    fn app_keys(&self, app_id: &str) -> Result<Vec<AppKey>, StoreError> {
        apps::app_keys(self, app_id)
    }

    fn add_app_key(&self, app_id: &str, key: &AppKey) -> Result<(), StoreError> {
        apps::add_app_key(self, app_id, key)
    }

    fn revoke_app_key(&self, app_id: &str, kid: &str, now: UnixTime) -> Result<(), StoreError> {
        apps::revoke_app_key(self, app_id, kid, now)
    }

    fn set_app_policy(&self, app_id: &str, p: &AppPolicy, now: UnixTime) -> Result<(), StoreError> {
        apps::set_app_policy(self, app_id, p, now)
    }

    fn app_origins(&self, app_id: &str) -> Result<Vec<String>, StoreError> {
        apps::app_origins(self, app_id)
    }

    fn add_app_origin(
        &self,
        app_id: &str,
        origin: &str,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        apps::add_app_origin(self, app_id, origin, now)
    }

    fn remove_app_origin(
        &self,
        app_id: &str,
        origin: &str,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        apps::remove_app_origin(self, app_id, origin, now)
    }

    fn origin_standing(
        &self,
        subject: OriginSubject<'_>,
        origin: &str,
    ) -> Result<OriginStanding, StoreError> {
        apps::origin_standing(self, subject, origin)
    }

    fn lookup_assertion_key(&self, app_id: &str, kid: &str) -> Result<KeyLookup, StoreError> {
        apps::lookup_assertion_key(self, app_id, kid)
    }

    fn enroll(
        &self,
        assertion: &VerifiedAssertion,
        e: &Enrollment,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        users::enroll(self, assertion, e, now)
    }

    fn enrollment(&self, app_id: &str, user_id: &str) -> Result<Option<Enrollment>, StoreError> {
        users::enrollment(self, app_id, user_id)
    }

    fn consume_assertion(
        &self,
        assertion: &VerifiedAssertion,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        limits::consume_assertion(self, assertion, now)
    }

    fn user(&self, app_id: &str, user_id: &str) -> Result<Option<UserRecord>, StoreError> {
        users::user(self, app_id, user_id)
    }

    fn guard(
        &self,
        app_id: &str,
        user_id: &str,
        now: UnixTime,
    ) -> Result<crate::domain::challenge::Guard, StoreError> {
        users::guard(self, app_id, user_id, now)
    }

    fn add_method(&self, cmd: &AddMethod<'_>, now: UnixTime) -> Result<(), StoreError> {
        methods::add_method(self, cmd, now)
    }

    fn start_challenge(&self, cmd: &StartChallenge<'_>, now: UnixTime) -> Result<(), StoreError> {
        challenges::start_challenge(self, cmd, now)
    }

    fn challenge(
        &self,
        challenge_id: &str,
    ) -> Result<Option<(Challenge, Method, AppPolicy)>, StoreError> {
        challenges::challenge(self, challenge_id)
    }

    fn credential_registered(&self, credential_hash: &[u8; 32]) -> Result<bool, StoreError> {
        methods::credential_registered(self, credential_hash)
    }

    fn answer_challenge(
        &self,
        challenge_id: &str,
        verdict: Verdict,
        registered: Option<&RegisteredPasskey>,
        notices: &AnswerNotices<'_>,
        now: UnixTime,
    ) -> Result<Answered, StoreError> {
        challenges::answer_challenge(self, challenge_id, verdict, registered, notices, now)
    }

    fn remove_method(&self, cmd: &RemoveMethod<'_>, now: UnixTime) -> Result<(), StoreError> {
        methods::remove_method(self, cmd, now)
    }

    fn unlock_user(&self, cmd: &UnlockUser<'_>, now: UnixTime) -> Result<bool, StoreError> {
        users::unlock_user(self, cmd, now)
    }

    fn chain_head(
        &self,
        app_id: &str,
        user_id: &str,
    ) -> Result<Option<crate::domain::chain::Head>, StoreError> {
        chain::chain_head(self, app_id, user_id)
    }

    fn chain_block(
        &self,
        app_id: &str,
        user_id: &str,
        index: usize,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        chain::chain_block(self, app_id, user_id, index)
    }

    fn chain(&self, app_id: &str, user_id: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        chain::chain(self, app_id, user_id)
    }

    fn append_block(
        &self,
        assertion: &VerifiedAssertion,
        index: usize,
        hash: &[u8; 32],
        block: &[u8],
        now: UnixTime,
    ) -> Result<(), StoreError> {
        chain::append_block(self, assertion, index, hash, block, now)
    }

    fn start_recovery(&self, cmd: &StartRecovery<'_>, now: UnixTime) -> Result<(), StoreError> {
        recoveries::start_recovery(self, cmd, now)
    }

    fn recovery(&self, challenge_id: &str) -> Result<Option<Recovery>, StoreError> {
        recoveries::recovery(self, challenge_id)
    }

    fn verify_recovery(
        &self,
        challenge_id: &str,
        unspent: &[Limit],
        verdict: Verdict,
        notices: &RecoveryNotices<'_>,
        now: UnixTime,
    ) -> Result<VerifiedRecovery, StoreError> {
        recoveries::verify_recovery(self, challenge_id, unspent, verdict, notices, now)
    }

    fn release_recovery(
        &self,
        assertion: &VerifiedAssertion,
        challenge_id: &str,
        notice: &NewMessage,
        now: UnixTime,
    ) -> Result<(Recovery, Vec<u8>), StoreError> {
        recoveries::release_recovery(self, assertion, challenge_id, notice, now)
    }

    fn cancel_recovery(
        &self,
        assertion: &VerifiedAssertion,
        proof: Option<&ProofAnswer>,
        challenge_id: &str,
        notice: &NewMessage,
        now: UnixTime,
    ) -> Result<Recovery, StoreError> {
        recoveries::cancel_recovery(self, assertion, proof, challenge_id, notice, now)
    }

    fn recovery_by_cancel_code(&self, mac: &[u8]) -> Result<Option<Recovery>, StoreError> {
        recoveries::recovery_by_cancel_code(self, mac)
    }

    fn cancel_recovery_by_code(
        &self,
        mac: &[u8],
        notice: &NewMessage,
        now: UnixTime,
    ) -> Result<Recovery, StoreError> {
        recoveries::cancel_recovery_by_code(self, mac, notice, now)
    }

    fn replace_virtual_device(
        &self,
        assertion: &VerifiedAssertion,
        proof: &ProofAnswer,
        sealed: &[u8],
        notice: &NewMessage,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        users::replace_virtual_device(self, assertion, proof, sealed, notice, now)
    }

    fn erase_user(
        &self,
        app: &str,
        user: &str,
        assertion: Option<&VerifiedAssertion>,
        notice: &NewMessage,
        now: UnixTime,
    ) -> Result<(), StoreError> {
        users::erase_user(self, app, user, assertion, notice, now)
    }

    fn audit_events(&self, after_seq: i64, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        audit::audit_events(self, after_seq, limit)
    }

    fn audit_head(&self) -> Result<Option<AuditHead>, StoreError> {
        audit::audit_head(self)
    }

    fn time_floor(&self) -> Result<UnixTime, StoreError> {
        limits::time_floor(self)
    }

    fn reset_time_floor(&self, to: UnixTime) -> Result<UnixTime, StoreError> {
        limits::reset_time_floor(self, to)
    }

    fn methods_under_other_keys(
        &self,
        current: &str,
        limit: usize,
    ) -> Result<Vec<Method>, StoreError> {
        methods::methods_under_other_keys(self, current, limit)
    }

    fn rekey_method(
        &self,
        method_id: &str,
        old_key: &str,
        new_key: &str,
        secret: &[u8],
        destination_mac: Option<&[u8]>,
    ) -> Result<bool, StoreError> {
        methods::rekey_method(self, method_id, old_key, new_key, secret, destination_mac)
    }

    fn messages_under_other_keys(
        &self,
        current: &str,
        limit: usize,
    ) -> Result<Vec<(i64, String, Vec<u8>)>, StoreError> {
        outbox::messages_under_other_keys(self, current, limit)
    }

    fn rekey_message(
        &self,
        id: i64,
        old_key: &str,
        new_key: &str,
        body: &[u8],
    ) -> Result<bool, StoreError> {
        outbox::rekey_message(self, id, old_key, new_key, body)
    }

    fn key_ids_in_use(&self, now: UnixTime) -> Result<Vec<String>, StoreError> {
        methods::key_ids_in_use(self, now)
    }

    fn key_usage(&self, key_id: &str, now: UnixTime) -> Result<(u64, u64, u64), StoreError> {
        methods::key_usage(self, key_id, now)
    }

    fn app_activity(
        &self,
        app_id: &str,
        since: UnixTime,
    ) -> Result<(u64, u64, Option<UnixTime>), StoreError> {
        apps::app_activity(self, app_id, since)
    }

    fn user_recoveries(&self, app_id: &str, user_id: &str) -> Result<Vec<Recovery>, StoreError> {
        recoveries::user_recoveries(self, app_id, user_id)
    }

    fn take_limits(&self, limits: &[Limit], now: UnixTime) -> Result<(), StoreError> {
        limits::take_limits(self, limits, now)
    }

    fn limits_allow(&self, limits: &[Limit], now: UnixTime) -> Result<(), StoreError> {
        limits::limits_allow(self, limits, now)
    }

    fn claim_message(
        &self,
        now: UnixTime,
        lease_secs: i64,
    ) -> Result<Option<ClaimedMessage>, StoreError> {
        outbox::claim_message(self, now, lease_secs)
    }

    fn finish_message(
        &self,
        id: i64,
        leased_until: UnixTime,
        result: &SendResult,
        now: UnixTime,
    ) -> Result<bool, StoreError> {
        outbox::finish_message(self, id, leased_until, result, now)
    }

    fn outbox_counts(&self) -> Result<OutboxCounts, StoreError> {
        outbox::outbox_counts(self)
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
    fn read_connections_are_bounded_and_a_read_holding_them_all_still_gets_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(&dir);
        let held: Vec<_> = (0..store.max_readers)
            .map(|_| store.reader().unwrap())
            .collect();
        // All in use: one more read waits, then gets a connection outside the pool.
        let extra = store.reader().unwrap();
        assert!(!extra.pooled);
        let count = |r: &Reader<'_>| -> i64 {
            r.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(count(&extra), 0);
        drop(extra);
        assert_eq!(store.readers.lock().unwrap().idle.len(), 0, "not kept");
        // Those given back are taken by the next reads, with no new connection.
        drop(held);
        assert!(store.reader().unwrap().pooled);
        let pool = store.readers.lock().unwrap();
        assert_eq!(pool.open, store.max_readers);
        assert_eq!(pool.idle.len(), store.max_readers);
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
}
