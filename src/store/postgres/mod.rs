//! The PostgreSQL backend: several `ghostkey serve` nodes on one shared database.
//!
//! This module holds the connection plumbing (a pool of connections, each with a private
//! Tokio runtime that the waiting thread drives, so that the store stays synchronous like
//! SQLite's: see `conn`), the
//! transaction runner with its retries, and `impl Store for PgStore`, whose methods
//! delegate to one file per concern with the same names as the SQLite backend's:
//! `apps`, `users`, `methods`, `challenges`, `recoveries`, `chain`, `limits`, `outbox`,
//! `audit`, and `schema`.
//!
//! # How the concurrency contract is kept
//!
//! Writes run at `READ COMMITTED` (or `SERIALIZABLE`, `database.isolation`), and do not
//! rely on a single writer:
//! - every write about a user first locks that user's `users` row (`FOR UPDATE`), so the
//!   reads that follow see every earlier write about the user, and no other write about
//!   them runs until the commit (the lock order of the `Store` trait);
//! - counters and limits are single conditional statements whose row count decides;
//! - single use (`jti`, cancel codes, credentials) is a primary or unique key;
//! - the audit log is not a lock every commit meets: events are queued in the
//!   transaction that causes them (`audit_pending`) and linked into the hash chain
//!   shortly after by [`PgStore::maintain`], which any node runs;
//! - a serialisation failure or a deadlock re-runs the whole transaction (every
//!   transaction closure is re-runnable); a connection lost during `COMMIT` answers
//!   `Unavailable` (the outcome is unknown), never a success or a refusal.
//!
//! `READ COMMITTED` is the default because the hot shared rows (an app's per-minute
//! ceiling, its daily budget) are updated by conditional statements that wait for each
//! other's row locks and then re-check, where `SERIALIZABLE` would abort all but one of
//! the concurrent writers and re-run them. Correctness does not depend on it: every
//! check-then-write about a user runs under that user's row lock, and the conformance
//! suite passes under both levels.

mod apps;
mod audit;
mod chain;
mod challenges;
mod conn;
mod limits;
mod methods;
mod outbox;
mod recoveries;
mod schema;
mod users;

pub use schema::{migrate, SCHEMA_SQL, SCHEMA_VERSION};

use std::cell::{Cell, RefCell};
use std::str::FromStr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use postgres_types::ToSql;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use tokio_postgres::{IsolationLevel, Row, Statement};

use conn::Conn;

use crate::clock::UnixTime;
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
    AddMethod, AnswerNotices, Answered, ClaimedMessage, Maintenance, NewMessage, OriginStanding,
    OriginSubject, OutboxCounts, ProofAnswer, RecoveryNotices, RegisteredPasskey, RemoveMethod,
    SendResult, StartChallenge, StartRecovery, Store, StoreError, UnlockUser, UserRecord,
    VerifiedRecovery,
};

/// The longest a re-run waits before it starts again (it waits a random time up to this,
/// growing with the runs, so that contenders spread out).
const MAX_RERUN_PAUSE_MS: u64 = 32;

/// The isolation level of write transactions (`database.isolation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Each statement sees the latest commits; the per-user row lock and conditional
    /// statements make the writes exact (the default).
    #[default]
    ReadCommitted,
    /// PostgreSQL's serialisable snapshot isolation: more transactions are re-run.
    Serializable,
}

/// How to reach the database.
#[derive(Clone)]
pub struct PgOptions {
    /// A `postgres://` URL (or a `key=value` connection string).
    pub url: secrecy::SecretString,
    /// PEM file of the certificate authorities that sign the server's certificate; when
    /// unset, TLS (`sslmode=require`) verifies it against the public web roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Most connections this node opens.
    pub max_connections: usize,
    /// The isolation level of write transactions.
    pub isolation: Isolation,
    /// How long a write keeps re-running after serialisation failures, deadlocks or a busy
    /// user lock before it is answered `unavailable` (`database.busy_timeout_ms`).
    pub retry_for: Duration,
    /// Prepare each statement once per connection and reuse it (the server then skips
    /// parsing and planning); off behind a pooler in transaction mode that does not track
    /// prepared statements (PgBouncer before 1.21, or without `max_prepared_statements`).
    pub prepared_statements: bool,
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password.
        f.debug_struct("PgOptions")
            .field("ca_file", &self.ca_file)
            .field("max_connections", &self.max_connections)
            .field("isolation", &self.isolation)
            .field("prepared_statements", &self.prepared_statements)
            .finish_non_exhaustive()
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> StoreError {
        match e.as_db_error() {
            // Only the SQLSTATE and the message: the detail of a key conflict quotes the
            // key's value, which may be personal (a MAC, a user id).
            Some(db) => {
                let cause = format!("{}: {}", db.code().code(), db.message());
                if db.code() == &SqlState::T_R_SERIALIZATION_FAILURE
                    || db.code() == &SqlState::T_R_DEADLOCK_DETECTED
                    || db.code() == &SqlState::LOCK_NOT_AVAILABLE
                {
                    StoreError::Conflict(cause)
                } else if db.code() == &SqlState::READ_ONLY_SQL_TRANSACTION
                    || db.code() == &SqlState::ADMIN_SHUTDOWN
                    || db.code() == &SqlState::CANNOT_CONNECT_NOW
                    || db.code() == &SqlState::CRASH_SHUTDOWN
                {
                    // A standby (after a failover, before the nodes reconnect) or a
                    // stopping server: try again shortly.
                    StoreError::Unavailable(cause)
                } else {
                    StoreError::Backend(cause)
                }
            }
            None if e.is_closed() || e.code().is_none() => {
                // With its causes: "error performing TLS handshake" alone does not say
                // that the certificate was not trusted.
                let mut cause = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(inner) = source {
                    cause.push_str(": ");
                    cause.push_str(&inner.to_string());
                    source = inner.source();
                }
                StoreError::Unavailable(format!("the database connection failed: {cause}"))
            }
            None => StoreError::Backend(e.to_string()),
        }
    }
}

/// Whether an error is a unique-key conflict (the refusal some writes document).
pub(super) fn is_unique_violation(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .is_some_and(|db| db.code() == &SqlState::UNIQUE_VIOLATION)
}

/// The parameter types of each statement text this process has run, learnt once from
/// the server (statements are then sent typed, unnamed, in one round trip each: no
/// prepared statement outlives its transaction, so a pooler in transaction mode works).
#[derive(Default)]
struct StatementTypes {
    known: std::sync::RwLock<std::collections::HashMap<String, Arc<[Type]>>>,
}

/// Statement texts are the code's own, so their number is small; this bounds the map
/// anyway should a text ever carry a varying part.
const MAX_KNOWN_STATEMENTS: usize = 4096;

impl StatementTypes {
    fn get(&self, sql: &str) -> Option<Arc<[Type]>> {
        let known = self.known.read().unwrap_or_else(|p| p.into_inner());
        known.get(sql).cloned()
    }

    fn learn(&self, sql: &str, types: Arc<[Type]>) {
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        if known.len() < MAX_KNOWN_STATEMENTS {
            known.insert(sql.to_owned(), types);
        }
    }
}

/// A statement's failure: the database's own error (kept whole, so that a key conflict can
/// be told apart), the store's, or the database's refusal of a write queued earlier with
/// [`Tx::exec_later`]: the transaction is aborted and will not commit (see
/// [`Tx::savepoint`], which never takes it for a refusal).
enum Failed {
    Db(tokio_postgres::Error),
    Store(StoreError),
    Queued(tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for Failed {
    fn from(e: tokio_postgres::Error) -> Failed {
        Failed::Db(e)
    }
}

impl From<StoreError> for Failed {
    fn from(e: StoreError) -> Failed {
        Failed::Store(e)
    }
}

impl From<Failed> for StoreError {
    fn from(e: Failed) -> StoreError {
        match e {
            Failed::Db(e) | Failed::Queued(e) => e.into(),
            Failed::Store(e) => e,
        }
    }
}

/// One transaction (or one read-only snapshot), as the concern files see it.
///
/// Round trips are what a transaction costs most here, so `BEGIN` and savepoint commands
/// are not sent on their own: they wait in `pending` and go out in the same write as the
/// next statement (or the `COMMIT`), and their results are still checked.
pub(super) struct Tx<'a> {
    conn: &'a Conn,
    /// The connection's prepared statements, when `database.prepared_statements` is on.
    prepared: Option<&'a RefCell<std::collections::HashMap<String, Statement>>>,
    types: &'a StatementTypes,
    /// What is not sent yet, in order: simple-protocol commands (`BEGIN ...`, savepoints)
    /// and writes queued with [`Tx::exec_later`].
    pending: RefCell<Vec<Pending<'a>>>,
    /// Whether `BEGIN` has reached the server (a rollback is then owed if not committed).
    begun: Cell<bool>,
    /// Whether the transaction ended (committed, or rolled back).
    ended: Cell<bool>,
    /// Take the user lock without waiting (under `SERIALIZABLE`, see [`Tx::lock_user`]).
    lock_nowait: bool,
    /// `false` in [`PgStore::autocommit`]: each statement commits on its own.
    in_transaction: bool,
    /// The app policies this transaction read (see [`apps::load_policy`]): a settlement,
    /// its notices and the recovery's waiting period each need the same app's.
    policies: RefCell<std::collections::HashMap<String, AppPolicy>>,
    /// A read-only transaction: a queued write would never be sent, so none is queued.
    read_only: bool,
    /// How many times what was pending has been sent (a savepoint tells the writes queued
    /// inside it from those queued before it).
    sends: Cell<u64>,
    /// A queued write failed: the transaction is aborted, whatever a savepoint says.
    queued_failed: Cell<bool>,
}

/// Parameters of a statement.
pub(super) type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Something a transaction sends with its next statement.
enum Pending<'a> {
    /// Simple-protocol commands, `;`-separated.
    Commands(String),
    /// A write whose row count nobody reads: it runs in its turn, and its failure is
    /// the answer of the statement that carries it (see [`Failed::Queued`]).
    Write(futures_util::future::BoxFuture<'a, Result<u64, tokio_postgres::Error>>),
}

/// A parameter already in PostgreSQL's binary form (`None`: NULL), so that a queued
/// write owns its parameters: the caller's may not outlive the call.
struct Encoded(Option<Vec<u8>>);

/// Its length only: a parameter may be a MAC, a sealed blob or a user id.
impl std::fmt::Debug for Encoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(value) => write!(f, "<{} bytes>", value.len()),
            None => f.write_str("NULL"),
        }
    }
}

impl ToSql for Encoded {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres_types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match &self.0 {
            Some(value) => {
                out.extend_from_slice(value);
                Ok(postgres_types::IsNull::No)
            }
            None => Ok(postgres_types::IsNull::Yes),
        }
    }

    /// The value was encoded for this very type (see [`encode`]).
    fn accepts(_ty: &Type) -> bool {
        true
    }

    postgres_types::to_sql_checked!();
}

/// Encodes `params` for a statement whose parameter types are `types`, checking each
/// value against its type as sending it would.
fn encode(params: Params<'_>, types: &[Type]) -> Result<Vec<Encoded>, StoreError> {
    if params.len() != types.len() {
        return Err(StoreError::Backend(format!(
            "the statement expects {} parameters, {} given",
            types.len(),
            params.len()
        )));
    }
    params
        .iter()
        .zip(types)
        .map(|(param, ty)| {
            let mut out = bytes::BytesMut::new();
            match param.to_sql_checked(ty, &mut out) {
                Ok(postgres_types::IsNull::No) => Ok(Encoded(Some(out.to_vec()))),
                Ok(postgres_types::IsNull::Yes) => Ok(Encoded(None)),
                Err(e) => Err(StoreError::Backend(format!(
                    "a parameter of type {ty} could not be encoded: {e}"
                ))),
            }
        })
        .collect()
}

impl<'a> Tx<'a> {
    /// A transaction at `isolation` (`None`: no transaction, each statement commits on
    /// its own).
    fn begin(
        conn: &'a Conn,
        prepare: bool,
        types: &'a StatementTypes,
        isolation: Option<IsolationLevel>,
        read_only: bool,
        lock_nowait: bool,
    ) -> Tx<'a> {
        let begin = match isolation {
            None => String::new(),
            Some(isolation) => {
                let level = match isolation {
                    IsolationLevel::ReadCommitted => "READ COMMITTED",
                    IsolationLevel::RepeatableRead => "REPEATABLE READ",
                    _ => "SERIALIZABLE",
                };
                let mode = if read_only { "READ ONLY" } else { "READ WRITE" };
                format!("BEGIN ISOLATION LEVEL {level}, {mode}")
            }
        };
        let pending = if begin.is_empty() {
            Vec::new()
        } else {
            vec![Pending::Commands(begin)]
        };
        Tx {
            conn,
            prepared: prepare.then_some(&conn.prepared),
            types,
            pending: RefCell::new(pending),
            begun: Cell::new(false),
            ended: Cell::new(false),
            lock_nowait,
            in_transaction: isolation.is_some(),
            policies: RefCell::default(),
            read_only,
            sends: Cell::new(0),
            queued_failed: Cell::new(false),
        }
    }

    /// Runs `statement` after the pending commands, in one write: both results are
    /// checked, the pending commands' first. (Should `BEGIN` itself fail, the statement
    /// would run outside a transaction; `BEGIN` with a fixed text only fails when the
    /// connection does, which fails the statement too.)
    fn after_pending<T: Send>(
        &self,
        statement: impl std::future::Future<Output = Result<T, tokio_postgres::Error>> + Send,
    ) -> Result<T, Failed> {
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        if pending.is_empty() {
            return Ok(self.conn.wait(statement)??);
        }
        if matches!(pending.first(), Some(Pending::Commands(c)) if c.starts_with("BEGIN")) {
            self.begun.set(true);
        }
        self.sends.set(self.sends.get() + 1);
        let client = &self.conn.client;
        let mut is_write = Vec::with_capacity(pending.len());
        let ahead: Vec<futures_util::future::BoxFuture<'_, Result<u64, tokio_postgres::Error>>> =
            pending
                .into_iter()
                .map(|item| match item {
                    Pending::Commands(commands) => {
                        is_write.push(false);
                        Box::pin(
                            async move { client.batch_execute(&commands).await.map(|()| 0u64) },
                        ) as futures_util::future::BoxFuture<'_, _>
                    }
                    Pending::Write(write) => {
                        is_write.push(true);
                        write
                    }
                })
                .collect();
        // `join_all` and `join` poll in order, and each future sends its messages on its
        // first poll: everything goes out in one write, in the order it was queued.
        let (sent, result) = self.conn.wait(futures_util::future::join(
            futures_util::future::join_all(ahead),
            statement,
        ))?;
        // The first failure is the cause; what follows it failed because the transaction
        // was aborted. A command's failure is the connection's (fixed texts), and a queued
        // write's is told apart, unless it is the connection's too (then, as for a
        // statement, the outcome of what was sent is unknown).
        for (outcome, is_write) in sent.into_iter().zip(is_write) {
            if let Err(e) = outcome {
                if is_write {
                    self.queued_failed.set(true);
                }
                return Err(if is_write && e.as_db_error().is_some() {
                    Failed::Queued(e)
                } else {
                    Failed::Db(e)
                });
            }
        }
        Ok(result?)
    }

    /// Whether a queued write waits to be sent.
    fn writes_queued(&self) -> bool {
        self.pending
            .borrow()
            .iter()
            .any(|item| matches!(item, Pending::Write(_)))
    }

    /// The statement's parameters with their types, learnt from the server the first
    /// time this process runs the text (inside the transaction, so that the statement
    /// used to learn them is closed on the same server connection).
    fn typed<'p>(
        &self,
        sql: &str,
        params: Params<'p>,
    ) -> Result<Vec<(&'p (dyn ToSql + Sync), Type)>, StoreError> {
        let types = match self.types.get(sql) {
            Some(types) => types,
            None => {
                let client = &self.conn.client;
                // Outside a transaction, a pooler in transaction mode could send the
                // learning statement's close to another server connection, leaving the
                // name taken on this one: learn inside a transaction of its own.
                let own_transaction = !self.in_transaction;
                let statement = self.after_pending(async move {
                    if own_transaction {
                        client.batch_execute("BEGIN").await?;
                    }
                    client.prepare(sql).await
                })?;
                let types: Arc<[Type]> = statement.params().into();
                // Its close is queued now, before the COMMIT.
                drop(statement);
                if own_transaction {
                    self.conn.wait(client.batch_execute("COMMIT"))??;
                }
                self.types.learn(sql, Arc::clone(&types));
                types
            }
        };
        if types.len() != params.len() {
            return Err(StoreError::Backend(format!(
                "the statement expects {} parameters, {} given",
                types.len(),
                params.len()
            )));
        }
        Ok(params.iter().copied().zip(types.iter().cloned()).collect())
    }

    /// The connection's prepared statement for `sql`, prepared now (in the transaction)
    /// the first time the connection runs it.
    fn prepared(
        &self,
        cache: &RefCell<std::collections::HashMap<String, Statement>>,
        sql: &str,
    ) -> Result<Statement, StoreError> {
        if let Some(statement) = cache.borrow().get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.after_pending(self.conn.client.prepare(sql))?;
        let mut cache = cache.borrow_mut();
        if cache.len() < MAX_KNOWN_STATEMENTS {
            cache.insert(sql.to_owned(), statement.clone());
        }
        Ok(statement)
    }

    /// Runs a statement; its row count.
    pub(super) fn exec(&self, sql: &str, params: Params<'_>) -> Result<u64, StoreError> {
        Ok(self.execute(sql, params)?)
    }

    /// Runs a statement, keeping a unique-key conflict apart: `Ok(None)` when it hit one.
    pub(super) fn exec_unique(
        &self,
        sql: &str,
        params: Params<'_>,
    ) -> Result<Option<u64>, StoreError> {
        match self.execute(sql, params) {
            Ok(n) => Ok(Some(n)),
            Err(Failed::Db(e)) if is_unique_violation(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, Failed> {
        match self.prepared {
            Some(cache) => {
                let statement = self.prepared(cache, sql)?;
                Ok(self.after_pending(self.conn.client.execute(&statement, params))?)
            }
            None => {
                let typed = self.typed(sql, params)?;
                Ok(self.after_pending(self.conn.client.execute_typed(sql, &typed))?)
            }
        }
    }

    /// At most one row.
    pub(super) fn opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>, StoreError> {
        let mut rows = self.all(sql, params)?;
        match rows.len() {
            0 | 1 => Ok(rows.pop()),
            n => Err(StoreError::Backend(format!(
                "the statement returned {n} rows where at most one was expected"
            ))),
        }
    }

    /// Exactly one row.
    pub(super) fn one(&self, sql: &str, params: Params<'_>) -> Result<Row, StoreError> {
        self.opt(sql, params)?.ok_or_else(|| {
            StoreError::Backend("the statement returned no row where one was expected".into())
        })
    }

    /// Every row.
    pub(super) fn all(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, StoreError> {
        self.all_together(&[(sql, params)])?
            .pop()
            .ok_or_else(|| StoreError::Backend("a statement went unanswered".into()))
    }

    /// Several statements sent together and answered together: one round trip for reads
    /// that do not depend on each other's results. Each statement's rows, in order; the
    /// first failure is the answer.
    pub(super) fn all_together(
        &self,
        statements: &[(&str, Params<'_>)],
    ) -> Result<Vec<Vec<Row>>, StoreError> {
        use futures_util::future::{join_all, BoxFuture};
        let mut queries: Vec<BoxFuture<'_, Result<Vec<Row>, tokio_postgres::Error>>> =
            Vec::with_capacity(statements.len());
        match self.prepared {
            Some(cache) => {
                let prepared = statements
                    .iter()
                    .map(|(sql, _)| self.prepared(cache, sql))
                    .collect::<Result<Vec<_>, _>>()?;
                for (statement, (_, params)) in prepared.into_iter().zip(statements) {
                    let client = &self.conn.client;
                    queries.push(Box::pin(
                        async move { client.query(&statement, params).await },
                    ));
                }
            }
            None => {
                for (sql, params) in statements {
                    let typed = self.typed(sql, params)?;
                    let client = &self.conn.client;
                    queries.push(Box::pin(
                        async move { client.query_typed(sql, &typed).await },
                    ));
                }
            }
        }
        // `join_all` polls in order, and each query sends its messages on its first poll.
        let answered = self.after_pending(async move {
            join_all(queries)
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
        })?;
        Ok(answered)
    }

    /// Statements without parameters or results (the schema's), run now.
    pub(super) fn batch(&self, sql: &str) -> Result<(), StoreError> {
        Ok(self.after_pending(self.conn.client.batch_execute(sql))?)
    }

    /// A command without parameters or results, sent with the next statement.
    fn defer(&self, sql: &str) {
        let mut pending = self.pending.borrow_mut();
        match pending.last_mut() {
            Some(Pending::Commands(commands)) => {
                commands.push_str("; ");
                commands.push_str(sql);
            }
            _ => pending.push(Pending::Commands(sql.to_owned())),
        }
    }

    /// Queues a write whose row count the caller does not need: it is sent with the next
    /// statement (or the `COMMIT`), in the order it was queued, so a transaction's writes
    /// cost no round trip each. Its failure aborts the transaction and is the answer of
    /// the statement that carried it. Outside a transaction it runs now.
    pub(super) fn exec_later(&self, sql: &str, params: Params<'_>) -> Result<(), StoreError> {
        if !self.in_transaction || self.read_only {
            self.exec(sql, params)?;
            return Ok(());
        }
        let client: &'a tokio_postgres::Client = &self.conn.client;
        let write: futures_util::future::BoxFuture<'a, Result<u64, tokio_postgres::Error>> =
            match self.prepared {
                Some(cache) => {
                    let statement = self.prepared(cache, sql)?;
                    let params = encode(params, statement.params())?;
                    Box::pin(async move { client.execute_raw(&statement, params.iter()).await })
                }
                None => {
                    let types: Vec<Type> = self
                        .typed(sql, params)?
                        .into_iter()
                        .map(|(_, ty)| ty)
                        .collect();
                    let params = encode(params, &types)?;
                    let sql = sql.to_owned();
                    Box::pin(async move {
                        let typed: Vec<(&(dyn ToSql + Sync), Type)> = params
                            .iter()
                            .map(|p| p as &(dyn ToSql + Sync))
                            .zip(types)
                            .collect();
                        client.execute_typed(&sql, &typed).await
                    })
                }
            };
        self.pending.borrow_mut().push(Pending::Write(write));
        Ok(())
    }

    /// Commits: what is pending and `COMMIT` in one write.
    fn commit(self) -> Result<(), Failed> {
        self.ended.set(true);
        if !self.begun.get() && !self.writes_queued() {
            // Nothing reached the server, nor waits to: there is nothing to commit.
            return Ok(());
        }
        self.after_pending(self.conn.client.batch_execute("COMMIT"))
    }

    /// Ends a read-only transaction without waiting for the answer: the next user of the
    /// connection is answered after it, and a read-only transaction has nothing to lose.
    fn finish_read(self) {
        self.ended.set(true);
        if self.begun.get() {
            use futures_util::FutureExt;
            // The first poll queues the command, the flush sends it; the dropped answer is
            // discarded.
            let _ = self.conn.client.batch_execute("COMMIT").now_or_never();
            self.conn.flush();
        }
    }

    /// Locks the user's row for the rest of the transaction (the per-user lock every write
    /// about a user takes first); `false` if the user does not exist.
    ///
    /// Under `SERIALIZABLE` the lock is taken with `NOWAIT`, and a busy lock re-runs the
    /// transaction: the transaction's snapshot is taken by its first statement, so one that
    /// waited for the lock would read the user as it was before the holder's commit and
    /// then fail on its first write anyway, after having waited.
    pub(super) fn lock_user(&self, app_id: &str, user_id: &str) -> Result<bool, StoreError> {
        let sql = if self.lock_nowait {
            "SELECT 1 FROM users WHERE app_id = $1 AND user_id = $2 FOR UPDATE NOWAIT"
        } else {
            "SELECT 1 FROM users WHERE app_id = $1 AND user_id = $2 FOR UPDATE"
        };
        Ok(self.opt(sql, &[&app_id, &user_id])?.is_some())
    }

    /// Runs `f` in a savepoint: when `f` fails its writes are undone (and the error
    /// returned as the inner one) while the transaction goes on. For `write_keeping`
    /// writes whose refused part must leave earlier writes in place.
    ///
    /// A queued write that failed (before the savepoint or inside it) is never a refusal:
    /// the transaction is aborted and fails whole. Writes `f` queued and did not send yet
    /// are dropped when it is refused: the rollback would undo them anyway.
    pub(super) fn savepoint<T>(
        &self,
        f: impl FnOnce(&Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<Result<T, StoreError>, StoreError> {
        if !self.in_transaction {
            return Err(StoreError::Backend(
                "a savepoint needs a transaction (not in autocommit)".into(),
            ));
        }
        self.defer("SAVEPOINT ghostkey_inner");
        // Where `f`'s own pending items start, as long as nothing is sent meanwhile.
        let (sends, start) = (self.sends.get(), self.pending.borrow().len());
        match f(self) {
            Ok(value) => {
                self.defer("RELEASE SAVEPOINT ghostkey_inner");
                Ok(Ok(value))
            }
            // A conflict or a lost connection is the transaction's, not a refusal.
            Err(e @ (StoreError::Conflict(_) | StoreError::Unavailable(_))) => Err(e),
            Err(e) if self.queued_failed.get() => Err(e),
            Err(refusal) => {
                let from = if self.sends.get() == sends { start } else { 0 };
                let mut index = 0;
                self.pending.borrow_mut().retain(|item| {
                    index += 1;
                    index <= from || !matches!(item, Pending::Write(_))
                });
                self.defer("ROLLBACK TO SAVEPOINT ghostkey_inner");
                self.defer("RELEASE SAVEPOINT ghostkey_inner");
                Ok(Err(refusal))
            }
        }
    }
}

impl Drop for Tx<'_> {
    /// A transaction left without a commit (an error, a refusal, a re-run) is rolled back
    /// before its connection goes back to the pool; the answer is not waited for.
    fn drop(&mut self) {
        if self.begun.get() && !self.ended.get() {
            use futures_util::FutureExt;
            let _ = self.conn.client.batch_execute("ROLLBACK").now_or_never();
            self.conn.flush();
        }
    }
}

/// A column of a row, as a store error when its type is not the expected one.
pub(super) fn get<'a, T: postgres_types::FromSql<'a>>(
    row: &'a Row,
    idx: usize,
) -> Result<T, StoreError> {
    row.try_get(idx)
        .map_err(|e| StoreError::Backend(format!("column {idx}: {e}")))
}

/// A 32-byte column.
pub(super) fn get32(row: &Row, idx: usize) -> Result<[u8; 32], StoreError> {
    let bytes: Vec<u8> = get(row, idx)?;
    bytes
        .try_into()
        .map_err(|_| StoreError::Backend(format!("column {idx} is not 32 bytes")))
}

/// A count or small number stored as `bigint`.
pub(super) fn get_u32(row: &Row, idx: usize) -> Result<u32, StoreError> {
    let n: i64 = get(row, idx)?;
    u32::try_from(n).map_err(|_| StoreError::Backend(format!("column {idx} is out of range")))
}

pub(super) fn refused(e: crate::error::Error) -> StoreError {
    StoreError::Refused(Box::new(e))
}

/// What connects: the parsed configuration and the TLS set-up.
struct Connector {
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
}

/// The connections, open and idle.
struct Pool {
    idle: Mutex<PoolState>,
    freed: Condvar,
    max: usize,
}

struct PoolState {
    idle: Vec<Conn>,
    open: usize,
}

/// A PostgreSQL database shared by every node.
pub struct PgStore {
    connector: Connector,
    pool: Pool,
    isolation: Isolation,
    retry_for: Duration,
    /// Whether connections prepare their statements (`database.prepared_statements`).
    prepared_statements: bool,
    types: StatementTypes,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

/// A connection lent by the pool, back to it when dropped (unless it broke).
struct Lent<'a> {
    conn: Option<Conn>,
    pool: &'a Pool,
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        let mut state = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
        match self.conn.take() {
            Some(conn) if !conn.is_closed() => state.idle.push(conn),
            _ => state.open = state.open.saturating_sub(1),
        }
        self.pool.freed.notify_one();
    }
}

fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, StoreError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| {
                StoreError::Backend(format!(
                    "cannot read database.ca_file {}: {e}",
                    path.display()
                ))
            })?;
            let mut added = 0;
            use rustls::pki_types::pem::PemObject;
            for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| {
                    StoreError::Backend(format!("database.ca_file {}: {e}", path.display()))
                })?;
                roots.add(cert).map_err(|e| {
                    StoreError::Backend(format!("database.ca_file {}: {e}", path.display()))
                })?;
                added += 1;
            }
            if added == 0 {
                return Err(StoreError::Backend(format!(
                    "database.ca_file {} holds no certificate",
                    path.display()
                )));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Backend(format!("TLS set-up: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl PgStore {
    /// Connects (one connection, to check the database) and checks that the schema is the
    /// one this version knows; run [`migrate`] first on a new or older database.
    pub fn open(options: &PgOptions) -> Result<PgStore, StoreError> {
        let store = PgStore::connect(options)?;
        schema::check_version(&store)?;
        Ok(store)
    }

    /// Connects without checking the schema (for `ghostkey db migrate`).
    pub fn connect(options: &PgOptions) -> Result<PgStore, StoreError> {
        use secrecy::ExposeSecret;
        let mut config = tokio_postgres::Config::from_str(options.url.expose_secret())
            .map_err(|e| StoreError::Backend(format!("database.url is not valid: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        // A primary that vanishes without closing its sockets (power loss, partition)
        // must not leave pooled connections waiting for the system's TCP timeout (up to
        // about 15 minutes): unacknowledged data gives up after 10 s (unless the URL sets
        // `tcp_user_timeout`), idle connections are probed after 10 s.
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(Duration::from_secs(10));
        }
        config.keepalives_idle(Duration::from_secs(10));
        config.keepalives_interval(Duration::from_secs(5));
        config.keepalives_retries(3);
        config.application_name("ghostkey");
        let tls = match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => None,
            _ => Some(tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(
                options.ca_file.as_deref(),
            )?)),
        };
        let store = PgStore {
            connector: Connector { config, tls },
            pool: Pool {
                idle: Mutex::new(PoolState {
                    idle: Vec::new(),
                    open: 0,
                }),
                freed: Condvar::new(),
                max: options.max_connections.max(1),
            },
            isolation: options.isolation,
            retry_for: options.retry_for,
            prepared_statements: options.prepared_statements,
            types: StatementTypes::default(),
        };
        // Fail now, with a clear message, rather than on the first request.
        drop(store.lend()?);
        Ok(store)
    }

    /// A new connection, its socket driven by whichever thread waits on it.
    fn open_connection(&self) -> Result<Conn, StoreError> {
        let config = &self.connector.config;
        let opened = match &self.connector.tls {
            None => Conn::open(config.connect(tokio_postgres::NoTls)),
            Some(tls) => Conn::open(config.connect(tls.clone())),
        };
        opened.map_err(|e| match e {
            StoreError::Backend(cause) | StoreError::Unavailable(cause) => {
                StoreError::Unavailable(format!("cannot connect to the database: {cause}"))
            }
            other => other,
        })
    }

    /// A connection from the pool, a new one if none is idle and the pool is not full, or
    /// the next one freed.
    fn lend(&self) -> Result<Lent<'_>, StoreError> {
        let mut state = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(conn) = state.idle.pop() {
                // Without a thread driving idle sockets, a close by the server is read
                // now (a restart or failover must not fail the next request).
                drop(state);
                conn.refresh();
                if conn.is_closed() {
                    drop(conn);
                    state = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
                    state.open = state.open.saturating_sub(1);
                    continue;
                }
                return Ok(Lent {
                    conn: Some(conn),
                    pool: &self.pool,
                });
            }
            if state.open < self.pool.max {
                state.open += 1;
                drop(state);
                return match self.open_connection() {
                    Ok(conn) => Ok(Lent {
                        conn: Some(conn),
                        pool: &self.pool,
                    }),
                    Err(e) => {
                        let mut state = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
                        state.open = state.open.saturating_sub(1);
                        self.pool.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let (next, timeout) = self
                .pool
                .freed
                .wait_timeout(state, Duration::from_secs(30))
                .unwrap_or_else(|p| p.into_inner());
            state = next;
            if timeout.timed_out() && state.idle.is_empty() && state.open >= self.pool.max {
                return Err(StoreError::Unavailable(
                    "no database connection was free for 30 s".into(),
                ));
            }
        }
    }

    /// Runs `f` in one transaction at `isolation`, committing when it returns `Ok` (outer
    /// and inner): the transaction is re-run on a serialisation failure, a deadlock or a
    /// busy user lock, for up to `retry_for`, then answered `Unavailable`.
    fn run<T>(
        &self,
        isolation: Option<IsolationLevel>,
        read_only: bool,
        mut f: impl FnMut(&Tx<'_>) -> Result<Result<T, StoreError>, StoreError>,
    ) -> Result<T, StoreError> {
        let started = std::time::Instant::now();
        let lock_nowait = !read_only && matches!(isolation, Some(IsolationLevel::Serializable));
        let mut runs: u32 = 0;
        loop {
            runs += 1;
            let lent = self.lend()?;
            let conn = lent
                .conn
                .as_ref()
                .ok_or_else(|| StoreError::Backend("pool connection missing".into()))?;
            let attempt = (|| {
                let tx = Tx::begin(
                    conn,
                    self.prepared_statements,
                    &self.types,
                    isolation,
                    read_only,
                    lock_nowait,
                );
                let value = f(&tx)?;
                if read_only {
                    tx.finish_read();
                    return Ok(value);
                }
                match tx.commit() {
                    Ok(()) => Ok(value),
                    // The commit may or may not have happened: say neither.
                    Err(Failed::Db(e)) if e.as_db_error().is_none() => {
                        Err(StoreError::Unavailable(format!(
                            "the connection was lost during COMMIT; the write may or may not have been made: {e}"
                        )))
                    }
                    // The wait itself failed (the connection is closed since): the same.
                    Err(Failed::Store(e)) => Err(StoreError::Unavailable(format!(
                        "the COMMIT could not be waited for; the write may or may not have been made: {e}"
                    ))),
                    Err(e) => Err(e.into()),
                }
            })();
            match attempt {
                Err(StoreError::Conflict(cause)) => {
                    drop(lent);
                    if started.elapsed() >= self.retry_for {
                        return Err(StoreError::Unavailable(format!(
                            "the transaction met conflicts {runs} times in {} ms: {cause}",
                            started.elapsed().as_millis()
                        )));
                    }
                    // A random pause, longer as the runs add up, so that the re-runs of
                    // contenders do not collide again.
                    let ceiling = (1u64 << runs.min(5)).min(MAX_RERUN_PAUSE_MS);
                    let ms = rand::random::<u64>() % (ceiling + 1);
                    std::thread::sleep(Duration::from_millis(ms));
                }
                other => return other.and_then(|inner| inner),
            }
        }
    }

    fn write_level(&self) -> IsolationLevel {
        match self.isolation {
            Isolation::ReadCommitted => IsolationLevel::ReadCommitted,
            Isolation::Serializable => IsolationLevel::Serializable,
        }
    }

    /// One write transaction; a refusal (any error) rolls it back.
    pub(super) fn write<T>(
        &self,
        mut f: impl FnMut(&Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.run(Some(self.write_level()), false, |tx| f(tx).map(Ok))
    }

    /// One write transaction at `READ COMMITTED` whatever `database.isolation` says: for
    /// transactions of single conditional statements, exact at any level.
    pub(super) fn write_read_committed<T>(
        &self,
        mut f: impl FnMut(&Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.run(Some(IsolationLevel::ReadCommitted), false, |tx| {
            f(tx).map(Ok)
        })
    }

    /// Like `write`, but an inner error still commits: for refusals that must leave a
    /// trace (a wrong proof code counts as a failure).
    pub(super) fn write_keeping<T>(
        &self,
        f: impl FnMut(&Tx<'_>) -> Result<Result<T, StoreError>, StoreError>,
    ) -> Result<T, StoreError> {
        self.run(Some(self.write_level()), false, f)
    }

    /// A read-only transaction: one snapshot for all its statements.
    pub(super) fn read<T>(
        &self,
        mut f: impl FnMut(&Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.run(Some(IsolationLevel::RepeatableRead), true, |tx| {
            f(tx).map(Ok)
        })
    }

    /// Statements that each commit on their own, with no transaction around them: for a
    /// single statement (atomic by itself), or reads that need no snapshot in common
    /// (each sees the latest commits). A transaction would cost the server a `BEGIN` and
    /// a `COMMIT` more, and these run on every request.
    pub(super) fn autocommit<T>(
        &self,
        mut f: impl FnMut(&Tx<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.run(None, false, |tx| f(tx).map(Ok))
    }

    /// Checks that acknowledged commits are durable: `synchronous_commit` is not `off` or
    /// `local` while synchronous standbys are named, and `fsync` is on. Returns what is
    /// wrong, if anything (the server warns loudly, as it does for SQLite's
    /// `synchronous`).
    pub fn durability_warnings(&self) -> Result<Vec<String>, StoreError> {
        self.read(|tx| {
            let setting = |name: &str| -> Result<String, StoreError> {
                let row = tx.one("SELECT current_setting($1)", &[&name])?;
                get(&row, 0)
            };
            let mut warnings = Vec::new();
            let commit = setting("synchronous_commit")?;
            if commit == "off" {
                warnings.push(
                    "synchronous_commit is off: acknowledged writes may be lost if PostgreSQL crashes"
                        .to_owned(),
                );
            } else if commit == "local" && !setting("synchronous_standby_names")?.is_empty() {
                warnings.push(
                    "synchronous_commit is local while synchronous standbys are configured: \
                     acknowledged writes may be lost in a failover"
                        .to_owned(),
                );
            }
            if setting("fsync")? != "on" {
                warnings.push(
                    "fsync is off: acknowledged writes may be lost if the machine crashes".to_owned(),
                );
            }
            Ok(warnings)
        })
    }
}

impl Store for PgStore {
    fn ping(&self) -> Result<(), StoreError> {
        self.read(|tx| tx.one("SELECT 1", &[]).map(|_| ()))
    }

    fn maintain(&self, now: UnixTime) -> Result<Maintenance, StoreError> {
        let linked = audit::link_pending(self, now)?;
        let purged = limits::purge_expired(self, now)? + outbox::purge_finished(self, now)?;
        let (unlinked, oldest_unlinked_at) = audit::pending(self)?;
        Ok(Maintenance {
            linked,
            purged,
            unlinked,
            oldest_unlinked_at,
        })
    }

    fn audit_unlinked(&self) -> Result<(u64, Option<UnixTime>), StoreError> {
        audit::pending(self)
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
