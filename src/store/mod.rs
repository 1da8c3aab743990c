//! Storage: the one interface the rest of the code reaches the database through.
//!
//! Methods are synchronous and may block; request paths call them through
//! [`Ghostkey::blocking`](crate::service::Ghostkey::blocking), which runs them on a
//! blocking thread pool, never on the async executor. Every state that must hold across
//! restarts and nodes (replay caches, counters) lives here, not in process memory. A
//! PostgreSQL backend implements the same trait. The trait's documentation is the
//! concurrency contract every backend keeps (what must hold when several nodes call a
//! method at once); `README.md` beside this file describes the layout and how a migration
//! is added.

pub mod lock;
pub mod postgres;
pub mod sqlite;

use ghostkey_proto::ErrorCode;

use crate::clock::UnixTime;
use crate::domain::app::{App, AppKey, KeyLookup};
use crate::domain::assertion::VerifiedAssertion;
use crate::domain::challenge::{Challenge, Guard, Outcome, Settlement, Verdict};
use crate::domain::enrollment::Enrollment;
use crate::domain::limits::Limit;
use crate::domain::method::Method;
use crate::domain::policy::AppPolicy;
use crate::domain::recovery::Recovery;

pub use lock::{DatabaseLock, LockHolder};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

std::thread_local! {
    static STORE_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with this thread marked as one that may block in store calls: a thread of
/// Tokio's blocking pool (`spawn_blocking`), not an async worker. Tokio cannot tell the
/// two apart from inside; the PostgreSQL backend needs to, since it drives a connection's
/// socket on the waiting thread where it may, and from another thread elsewhere.
pub fn as_store_thread<T>(f: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            STORE_THREAD.with(|marked| marked.set(self.0));
        }
    }
    let _restore = Restore(STORE_THREAD.with(|marked| marked.replace(true)));
    f()
}

/// Whether this thread runs inside [`as_store_thread`].
pub(crate) fn is_store_thread() -> bool {
    STORE_THREAD.with(std::cell::Cell::get)
}

/// Why a store operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No app with this id.
    #[error("no app with this id")]
    UnknownApp,
    /// No key with this id for the app.
    #[error("the app has no key with this id")]
    UnknownKey,
    /// The app already has a key with this id.
    #[error("the app already has a key with this id")]
    KeyExists,
    /// The key is already revoked.
    #[error("the key is already revoked")]
    KeyAlreadyRevoked,
    /// The user is already enrolled for this app.
    #[error("the user is already enrolled")]
    AlreadyEnrolled,
    /// The assertion's `jti` was used before.
    #[error("the assertion has already been used")]
    AssertionReplayed,
    /// The user is not enrolled.
    #[error("the user is not enrolled")]
    NotEnrolled,
    /// No such method for this user.
    #[error("no such method")]
    MethodNotFound,
    /// The method is not in the state the operation needs.
    #[error("the method is not confirmed")]
    MethodNotConfirmed,
    /// The operation would remove the user's last confirmed method.
    #[error("the last confirmed method cannot be removed")]
    LastMethod,
    /// The user already has the maximum number of methods.
    #[error("the user has too many methods")]
    TooManyMethods,
    /// The user has a confirmed method, and no proof was given.
    #[error("a proof is required")]
    ProofRequired,
    /// The proof is not an open proof challenge of this user on a confirmed method.
    #[error("the proof does not belong to this user")]
    InvalidProof,
    /// The proof's code was not accepted; its failure is recorded.
    #[error("the proof was not accepted: {0:?}")]
    ProofRefused(Outcome),
    /// The user is locked.
    #[error("the user is locked")]
    Locked,
    /// A rate limit or budget is spent.
    #[error("limit reached: {code}")]
    LimitReached {
        /// Which limit.
        code: ErrorCode,
        /// Seconds until its window ends.
        retry_after: i64,
    },
    /// The chain moved on: the block does not extend the current head.
    #[error("chain fork")]
    ChainFork,
    /// No such recovery for this user.
    #[error("no such recovery")]
    RecoveryNotFound,
    /// A domain rule refused the operation; the error says why.
    #[error("refused: {0}")]
    Refused(Box<crate::error::Error>),
    /// The database failed; the message is for the log only.
    #[error("database error: {0}")]
    Backend(String),
    /// The database cannot be reached now, or a commit's outcome is unknown (the
    /// connection was lost during `COMMIT`): the request may be tried again (503). The
    /// message is for the log only.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A serialisation failure or deadlock between concurrent transactions: the backend
    /// re-runs the transaction, and this never leaves it.
    #[error("transaction conflict: {0}")]
    Conflict(String),
}

/// How long a sent or failed message stays in the outbox (its body and destination wiped)
/// before maintenance forgets it: a week, for the operator to look into a failure.
pub const FINISHED_MESSAGE_RETENTION_SECS: i64 = 7 * 86_400;

/// What one round of background maintenance did ([`Store::maintain`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Maintenance {
    /// Audit events linked into the hash chain.
    pub linked: u64,
    /// Expired rows forgotten (replay cache, rate windows, failures, finished messages).
    pub purged: u64,
    /// Audit events committed but not yet linked.
    pub unlinked: u64,
    /// When the oldest of them happened.
    pub oldest_unlinked_at: Option<UnixTime>,
}

/// A user as the verification code needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// The enrolment.
    pub enrollment: Enrollment,
    /// Failures, back-off and lock.
    pub guard: Guard,
    /// Every method, oldest first.
    pub methods: Vec<Method>,
}

/// What a message is, for the subject line and the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// A one-time code.
    Code,
    /// A security notice (method added or removed).
    Notice,
}

impl MessageKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Code => "code",
            MessageKind::Notice => "notice",
        }
    }
}

/// A message body, already encrypted with the data key, to put in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Code or notice.
    pub kind: MessageKind,
    /// The data key the body is encrypted under.
    pub key_id: String,
    /// The encrypted body.
    pub body: Vec<u8>,
    /// For a security notice, what it is about (`recovery_started`, `locked`, ...): the
    /// outbox coalesces notices of one kind to one destination.
    pub notice_kind: Option<&'static str>,
}

/// A proof through a confirmed method: a proof challenge and the verdict on its code,
/// settled in the same transaction as the change it authorises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProofAnswer {
    /// The proof challenge.
    pub challenge_id: String,
    /// Whether the code was right.
    pub verdict: Verdict,
    /// "Your account is locked", to every confirmed method, if this answer locks the user.
    pub locked_notice: NewMessage,
    /// "Your passkey may have been copied", to every confirmed method, if the answer was a
    /// passkey whose signature counter went backwards.
    pub cloned_notice: NewMessage,
}

/// The credential a passkey's registration ceremony made, to become its method's secret
/// when the `confirm` answer is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredPasskey {
    /// The data key the secret is encrypted under.
    pub key_id: String,
    /// The encrypted secret (the credential, see `domain::passkey::MethodSecret`).
    pub secret: Vec<u8>,
    /// `domain::passkey::credential_hash` of its credential id: unique across all users.
    pub credential_hash: [u8; 32],
}

/// The notices an answer to a `confirm` challenge may send.
#[derive(Debug)]
pub struct AnswerNotices<'a> {
    /// "A method was added", to the user's other confirmed methods.
    pub added: &'a NewMessage,
    /// "Your account is locked", to every confirmed method, if this answer locks the user.
    pub locked: &'a NewMessage,
    /// "Your passkey may have been copied", to every confirmed method, if a passkey's
    /// signature counter went backwards.
    pub cloned: &'a NewMessage,
    /// "Methods added while you enrolled were removed", to the first confirmed method.
    pub pending_removed: &'a NewMessage,
}

/// Lifts a user's lock.
#[derive(Debug)]
pub struct UnlockUser<'a> {
    /// The app.
    pub app_id: &'a str,
    /// The user.
    pub user_id: &'a str,
    /// The app provider's `manage` assertion (the `jti` is consumed); `None`: an operator,
    /// who also clears the failure budget.
    pub assertion: Option<&'a VerifiedAssertion>,
    /// With an assertion: the user's proof through a confirmed method, checked despite the
    /// lock (the failure budget and the back-off still hold). Required when the user has a
    /// confirmed method.
    pub proof: Option<&'a ProofAnswer>,
    /// "Your account was unlocked", to every confirmed method.
    pub notice: &'a NewMessage,
}

/// Adds a method with its confirmation challenge (and code message), in one transaction.
#[derive(Debug)]
pub struct AddMethod<'a> {
    /// The assertion (its `jti` is consumed).
    pub assertion: &'a VerifiedAssertion,
    /// Required when the user already has a confirmed method.
    pub proof: Option<&'a ProofAnswer>,
    /// The new, pending method.
    pub method: &'a Method,
    /// Its confirmation challenge.
    pub challenge: &'a Challenge,
    /// The code message to the new destination (SMS and e-mail).
    pub message: Option<&'a NewMessage>,
    /// The limits the message spends.
    pub limits: &'a [Limit],
    /// Most methods a user may have.
    pub max_methods: usize,
}

/// Starts a challenge on an existing method, in one transaction.
#[derive(Debug)]
pub struct StartChallenge<'a> {
    /// The assertion (its `jti` is consumed).
    pub assertion: &'a VerifiedAssertion,
    /// The challenge.
    pub challenge: &'a Challenge,
    /// The code message (SMS and e-mail).
    pub message: Option<&'a NewMessage>,
    /// The limits the message spends.
    pub limits: &'a [Limit],
}

/// Removes a confirmed method, with a proof, notifying the other methods.
#[derive(Debug)]
pub struct RemoveMethod<'a> {
    /// The `manage` assertion.
    pub assertion: &'a VerifiedAssertion,
    /// The proof.
    pub proof: &'a ProofAnswer,
    /// The method to remove.
    pub method_id: &'a str,
    /// The notice to the user's other confirmed methods.
    pub notice: &'a NewMessage,
}

/// What the answer to a challenge did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    /// The challenge as it was before the answer.
    pub challenge: Challenge,
    /// The new state and the outcome.
    pub settlement: Settlement,
    /// Whether this answer completed the user's enrolment.
    pub enrollment_completed: bool,
}

/// A message taken from the outbox to send, leased to one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedMessage {
    /// The outbox id.
    pub id: i64,
    /// The app.
    pub app_id: String,
    /// Code or notice.
    pub kind: MessageKind,
    /// The destination method's kind (`sms` or `email`).
    pub channel: crate::domain::policy::MethodKind,
    /// The data key of the destination.
    pub destination_key_id: String,
    /// The encrypted destination.
    pub destination: Vec<u8>,
    /// The data key of the body.
    pub body_key_id: String,
    /// The encrypted body.
    pub body: Vec<u8>,
    /// Attempts before this one.
    pub attempts: u32,
    /// The end of this claim's lease, which identifies the claim: a finish applies only
    /// while the message is still leased until exactly this time (a later claim, after
    /// this lease ran out, leases it until a later time).
    pub leased_until: UnixTime,
    /// How many events of its kind a coalesced notice stands for (1 for everything else).
    pub events: u32,
}

/// How a send attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendResult {
    /// Delivered to the provider: the body is wiped.
    Sent,
    /// Try again at this time.
    Retry {
        /// When.
        at: UnixTime,
        /// Why it failed (no personal value).
        error: String,
    },
    /// Give up: recorded as failed, the body wiped.
    Failed {
        /// Why (no personal value).
        error: String,
    },
}

/// Outbox counts, for tests, health and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxCounts {
    /// Waiting to be sent.
    pub pending: u64,
    /// Sent.
    pub sent: u64,
    /// Given up.
    pub failed: u64,
}

/// Starts a recovery: a `recover` challenge, its code message and a notice to the user's
/// other methods, in one transaction.
#[derive(Debug)]
pub struct StartRecovery<'a> {
    /// The `recover` assertion (its `jti` is consumed).
    pub assertion: &'a VerifiedAssertion,
    /// The challenge.
    pub challenge: &'a Challenge,
    /// The code message (SMS and e-mail).
    pub message: Option<&'a NewMessage>,
    /// The limits the message spends, and the user's daily recovery starts.
    pub limits: &'a [Limit],
    /// The caller's limits (its address) whose unit is still to be spent: spent even when
    /// the start is refused (empty: the caller already spent them).
    pub unspent: &'a [Limit],
    /// "A recovery was started", to the user's other confirmed methods; it carries a
    /// cancel code.
    pub notice: &'a NewMessage,
    /// The stored form of that cancel code.
    pub cancel_code: &'a CancelCodeMac,
}

/// A cancel code as the store keeps it: its MAC (the lookup key) and the id of the data
/// key whose code MAC key made it (a retired key is kept while such a code can be used).
#[derive(Debug, Clone)]
pub struct CancelCodeMac {
    /// The data key id.
    pub key_id: String,
    /// HMAC-SHA256 of the canonical code.
    pub mac: Vec<u8>,
}

/// The notices a verified recovery code may send.
#[derive(Debug)]
pub struct RecoveryNotices<'a> {
    /// "Released", to the user's other confirmed methods.
    pub released: &'a NewMessage,
    /// "Will be released at ..., cancel if it is not you", to every confirmed method; it
    /// carries a cancel code.
    pub waiting: &'a NewMessage,
    /// The stored form of the waiting notice's cancel code.
    pub waiting_cancel_code: &'a CancelCodeMac,
    /// "Your account is locked", to every confirmed method, if this answer locks the user.
    pub locked: &'a NewMessage,
    /// "Your passkey may have been copied", to every confirmed method, if a passkey's
    /// signature counter went backwards.
    pub cloned: &'a NewMessage,
}

/// What a recovery code did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRecovery {
    /// The challenge's settlement.
    pub settlement: Settlement,
    /// The recovery afterwards.
    pub recovery: Recovery,
    /// The sealed virtual device, when released now.
    pub sealed: Option<Vec<u8>>,
}

/// What a request carrying an `Origin` header is about, as far as the CORS layer can tell
/// before the handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginSubject<'a> {
    /// The app an assertion claims (`iss`, not yet verified).
    App(&'a str),
    /// The app of a challenge (or of the recovery with this id).
    Challenge(&'a str),
    /// Nothing the store can name.
    Unknown,
}

/// Where an origin stands, for one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OriginStanding {
    /// The request's subject names an existing app.
    pub app_known: bool,
    /// That app allows the origin.
    pub allowed_for_app: bool,
    /// Some app allows the origin.
    pub allowed_for_any: bool,
}

/// Everything Ghostkey stores.
///
/// # Concurrency contract
///
/// Several nodes (processes sharing one database) may call any method at once, each from
/// many threads. Every backend keeps the rules below, and each method's `Concurrency:`
/// paragraph says what must hold for it and how the SQLite backend provides it today.
///
/// - **A write is one transaction.** All of it commits or none of it does, and the method
///   returns only after the commit (an acknowledged write is durable). The exceptions are
///   written down and keep part of a refused request on purpose: a refused proof still
///   records its settlement (attempt, failure, back-off, lock) and consumes the `jti`; an
///   `unspent` limit unit stays spent when the request behind it is refused. Any other
///   refusal writes nothing, not even the `jti`.
/// - **Writes are serialisable.** What a write checks and what it writes see one state: no
///   other write commits in between, so every read-modify-write (attempt and failure
///   counts, method counts, limit counters, recovery states, the chain length, the audit
///   head) is exact. SQLite provides this with its single write lock: each process has one
///   write connection, and every write runs inside a `BEGIN IMMEDIATE` transaction of it
///   (group commit: the writes of one process run one at a time, each in a savepoint, and
///   share a `COMMIT`); other processes wait for the lock up to `busy_timeout`, then fail
///   with `Backend`. Since every write is serialised with every other, the SQLite code
///   checks and then writes. A backend with concurrent writers must get the same result
///   differently for each method, as its paragraph says: row locks taken in one order,
///   conditional statements whose row count decides, unique keys whose conflict is the
///   refusal.
/// - **Lock order**, for a backend with row locks: the user's `users` row first (the
///   per-user lock: a user's guard, failure window, methods, challenges, recoveries, chain
///   and queued messages are written only under it, and some of them, such as the guard
///   before the first failure, have no row of their own to lock), then the challenge, then
///   the recovery, then rate counters in key order, then outbox rows, and the audit head
///   last where a backend links events inline (every audited write then moves it, so it
///   is held from the append to the commit: the one point where all audited writes meet;
///   PostgreSQL links them after the commit instead, see below). The caller's `unspent`
///   units (its address, its app's ceiling) may be spent before the user's lock, in a
///   transaction of their own, since they stay spent whatever the write does.
/// - **A conflict ends as the documented refusal.** A unique-key conflict or a
///   serialisation failure caused by a concurrent caller must end as the refusal the
///   method documents, or be retried, never as another outcome. The exceptions today are
///   named where they occur (they surface as `Backend`).
/// - **Reads see commits, perhaps not the latest.** A read-only method sees committed data
///   only, never a write still waiting for its commit, but may be a commit or more behind
///   by the time it returns. In SQLite each statement of a read is its own snapshot (the
///   reader connections run in autocommit mode), so a read made of several statements is
///   not one snapshot; the methods for which that is the case say so. A write checks again,
///   in its own transaction, whatever it depends on; where it does not, it says so.
/// - **Shared state every write may touch.** A `jti` is consumed exactly once (see
///   [`Store::consume_assertion`]); limits never go over their cap (see
///   [`Store::take_limits`]), except that a notice adds to its destination's and app's
///   budgets even when they are full (a notice is never refused); a notice joins a pending,
///   unleased notice of its kind to the same method (`events + 1`) if there is one, or is
///   queued an hour after the last of its kind, decided under the user's lock; the
///   audit log is one hash chain: each audited write records one event in its transaction
///   (commits with it or not at all), and each event gets the head's `seq` plus one and a
///   hash chained to the head's, moving the head, so the chain never forks or reuses a
///   `seq`. SQLite links the event inline (the head is held to the commit); PostgreSQL
///   queues it and [`Store::maintain`] links queued events in order shortly after, so the
///   head is not a lock every audited commit waits for. The time floor only moves
///   forward (`max`), except by [`Store::reset_time_floor`].
pub trait Store: Send + Sync + 'static {
    /// Checks that the database answers.
    ///
    /// Concurrency: read-only.
    fn ping(&self) -> Result<(), StoreError>;

    /// Background work any node runs every second or so: links committed audit events
    /// into the hash chain, forgets expired rows and messages finished more than
    /// [`FINISHED_MESSAGE_RETENTION_SECS`] ago, in small batches. The SQLite backend links
    /// and forgets expired rows inline; it forgets finished messages here.
    ///
    /// Concurrency: several nodes may run it at once; the linking is serialised by the
    /// audit head's row lock (the only place every node meets), the purges delete disjoint
    /// batches.
    fn maintain(&self, _now: UnixTime) -> Result<Maintenance, StoreError> {
        Ok(Maintenance::default())
    }

    /// Audit events committed but not yet linked into the chain, and when the oldest
    /// happened (always none for SQLite, which links inline).
    ///
    /// Concurrency: read-only, one statement.
    fn audit_unlinked(&self) -> Result<(u64, Option<UnixTime>), StoreError> {
        Ok((0, None))
    }

    /// Registers an app with its first key.
    ///
    /// Concurrency: one transaction with its audit event. Of two creations of one app id
    /// one lands; the other fails on the `apps` primary key, today as `Backend` (app ids
    /// are random, made by the operator's command).
    fn create_app(&self, app: &App, first_key: &AppKey) -> Result<(), StoreError>;
    /// All apps, oldest first.
    ///
    /// Concurrency: read-only, one statement.
    fn list_apps(&self) -> Result<Vec<App>, StoreError>;
    /// One app.
    ///
    /// Concurrency: read-only, one statement. A policy read here may be replaced before
    /// the request that read it writes; the writes that depend on the policy (settling a
    /// code, the waiting period) read it again in their transaction.
    fn app(&self, app_id: &str) -> Result<Option<App>, StoreError>;
    /// An app's keys, oldest first.
    ///
    /// Concurrency: read-only, one statement.
    fn app_keys(&self, app_id: &str) -> Result<Vec<AppKey>, StoreError>;
    /// Adds a key to an app.
    ///
    /// Concurrency: the `(app_id, kid)` unique key decides (`ON CONFLICT DO NOTHING` and
    /// its row count): of two additions of one `kid` exactly one lands, the other gets
    /// `KeyExists`. Apps are never deleted, so the existence check cannot go stale.
    fn add_app_key(&self, app_id: &str, key: &AppKey) -> Result<(), StoreError>;
    /// Revokes a key of an app, from `now` on.
    ///
    /// Concurrency: of two revocations of one key exactly one succeeds, the other gets
    /// `KeyAlreadyRevoked`. SQLite reads `revoked_at`, then updates, under the write lock;
    /// another backend: `UPDATE ... WHERE revoked_at IS NULL` and its row count. A request
    /// whose key was looked up before the revocation committed may still be accepted (see
    /// [`Store::lookup_assertion_key`]).
    fn revoke_app_key(&self, app_id: &str, kid: &str, now: UnixTime) -> Result<(), StoreError>;
    /// Replaces an app's policy.
    ///
    /// Concurrency: the whole policy is replaced: of concurrent replacements the last to
    /// commit wins. Requests in flight may still act on the policy they read.
    fn set_app_policy(
        &self,
        app_id: &str,
        policy: &AppPolicy,
        now: UnixTime,
    ) -> Result<(), StoreError>;
    /// The web origins an app allows (normalised), sorted.
    ///
    /// Concurrency: read-only, one statement.
    fn app_origins(&self, app_id: &str) -> Result<Vec<String>, StoreError>;
    /// Allows a (normalised) origin for an app, audited; `false` if it already was.
    ///
    /// Concurrency: the `(app_id, origin)` unique key decides (`ON CONFLICT DO NOTHING`):
    /// of two concurrent additions one returns `true` and is audited, the other `false`.
    fn add_app_origin(&self, app_id: &str, origin: &str, now: UnixTime)
        -> Result<bool, StoreError>;
    /// Stops allowing an origin for an app, audited; `false` if it was not allowed.
    ///
    /// Concurrency: the `DELETE`'s row count decides: of two concurrent removals one
    /// returns `true` and is audited, the other `false`.
    fn remove_app_origin(
        &self,
        app_id: &str,
        origin: &str,
        now: UnixTime,
    ) -> Result<bool, StoreError>;
    /// Where a (normalised) origin stands for a request about `subject` (reads only).
    ///
    /// Concurrency: read-only, up to three statements (in SQLite not one snapshot). An
    /// origin added or removed while the request runs may or may not count for it.
    fn origin_standing(
        &self,
        subject: OriginSubject<'_>,
        origin: &str,
    ) -> Result<OriginStanding, StoreError>;
    /// What is known of the key an assertion names.
    ///
    /// Concurrency: read-only, one statement. Nothing checks the key again when the
    /// assertion is used: a key revoked by a commit that lands while a request is in
    /// flight may still verify that request's assertion.
    fn lookup_assertion_key(&self, app_id: &str, kid: &str) -> Result<KeyLookup, StoreError>;

    /// In one transaction: consumes the assertion's `jti` and stores a new enrolment.
    /// Nothing is written if either fails.
    ///
    /// Concurrency: the `(app_id, user_id)` unique key decides (`ON CONFLICT DO NOTHING`):
    /// of two enrolments of one user exactly one lands, with its root block at index 0 and
    /// its audit event; the other gets `AlreadyEnrolled` and writes nothing (its `jti`
    /// stays unused).
    fn enroll(
        &self,
        assertion: &VerifiedAssertion,
        enrollment: &Enrollment,
        now: UnixTime,
    ) -> Result<(), StoreError>;
    /// A user's enrolment.
    ///
    /// Concurrency: read-only, one statement.
    fn enrollment(&self, app_id: &str, user_id: &str) -> Result<Option<Enrollment>, StoreError>;

    /// Consumes an assertion's `jti` for a request that writes nothing else.
    ///
    /// Concurrency: a `jti` is consumed exactly once across all nodes: of concurrent
    /// consumers of one `(app_id, jti)` one succeeds and every other gets
    /// `AssertionReplayed`. The unique key decides (`INSERT ... ON CONFLICT DO NOTHING` and
    /// its row count, never a check then an insert). This holds for every method that
    /// consumes a `jti`; a transaction that does not commit leaves the `jti` unused. A few
    /// expired `jti`s are purged on the way (the purge raises the time floor); purges
    /// racing over the same rows delete each row once.
    fn consume_assertion(
        &self,
        assertion: &VerifiedAssertion,
        now: UnixTime,
    ) -> Result<(), StoreError>;
    /// A user with their guard and methods.
    ///
    /// Concurrency: read-only. The enrolment, the guard and the methods are separate
    /// statements (in SQLite on two connections): not one snapshot. What a request decides
    /// from it, the write that acts on it checks again (the lock, the proof requirement,
    /// the method count, the last confirmed method).
    fn user(&self, app_id: &str, user_id: &str) -> Result<Option<UserRecord>, StoreError>;
    /// A user's guard with its rolling failure window at `now` (the default guard when
    /// the user has none): what decides, before a check, whether an answer would be
    /// checked at all.
    ///
    /// Concurrency: read-only, two statements, not one snapshot. A hint for what the
    /// answer spends: the write that settles the answer reads the guard again.
    fn guard(
        &self,
        app_id: &str,
        user_id: &str,
        now: UnixTime,
    ) -> Result<crate::domain::challenge::Guard, StoreError>;
    /// Adds a pending method and its confirmation challenge; settles the proof first.
    /// A refused proof still records its failure (and the `jti`), and adds nothing.
    ///
    /// Concurrency: under the user's lock, the lock check, the proof requirement (the user
    /// has a confirmed method), the proof's settlement (as in
    /// [`Store::answer_challenge`]), the `max_methods` count and the limits (as in
    /// [`Store::take_limits`]) are all checked against the state the insert commits on:
    /// parallel additions never exceed `max_methods`, and a method confirmed meanwhile
    /// makes the proof required. SQLite: the write lock.
    fn add_method(&self, cmd: &AddMethod<'_>, now: UnixTime) -> Result<(), StoreError>;
    /// Starts a challenge on a method of the assertion's user.
    ///
    /// Concurrency: the `jti`, the lock check (not for a proof challenge) and the limits
    /// (never over the cap) in one transaction. The method is not checked again: the caller
    /// read it. A method removed, or a user erased, after that read makes the insert fail
    /// on its foreign key: today `Backend`.
    fn start_challenge(&self, cmd: &StartChallenge<'_>, now: UnixTime) -> Result<(), StoreError>;
    /// A challenge with its method and the app's policy, for checking a code.
    ///
    /// Concurrency: read-only, three statements (in SQLite not one snapshot). The code is
    /// checked against this read; the answer is settled against the rows as they are in
    /// the settling transaction ([`Store::answer_challenge`], [`Store::verify_recovery`],
    /// the proof of a change).
    fn challenge(
        &self,
        challenge_id: &str,
    ) -> Result<Option<(Challenge, Method, AppPolicy)>, StoreError>;
    /// Whether a passkey credential (its `credential_hash`) is registered already, by any
    /// user of any app.
    ///
    /// Concurrency: read-only, advisory: [`Store::answer_challenge`] checks again, and the
    /// unique index on `methods.credential_hash` backs that check.
    fn credential_registered(&self, credential_hash: &[u8; 32]) -> Result<bool, StoreError>;
    /// Settles an answer; on a correct `confirm` answer, confirms the method (for a
    /// passkey, storing the `registered` credential, refused if that credential is
    /// registered already), activates the user and queues the `added` notice to the
    /// user's other confirmed methods. The first confirmed method removes every other
    /// pending method of the user.
    ///
    /// Concurrency: each answer is settled once, exactly. The settlement reads the
    /// challenge's attempts and state, the user's guard (failures, back-off, lock) and
    /// failure window, and writes them back: of parallel wrong answers (to this challenge
    /// or to another of the user's), each one judged adds exactly one attempt to its
    /// challenge and one failure to the user; the challenge dies at `max_attempts`; the
    /// user is locked when the failures reach the threshold, and the `user_locked` event
    /// and notice happen once, at that transition; of parallel right answers one is
    /// `Accepted` and the others `AlreadyUsed`. A TOTP step, or a passkey's non-zero
    /// signature counter, is accepted once: it must move past the stored one, compared in
    /// the transaction (and stored by a conditional update that only raises it). The
    /// confirmation is conditional (`state = 'pending'`), and exactly one answer completes
    /// the enrolment (the `users` update from `pending` and its row count); only that one
    /// removes the other pending methods. A passkey credential is unique across all users
    /// (checked in the transaction, backed by a unique index): the loser of a race gets
    /// `Refused(PasskeyRejected)` with nothing written, no attempt counted. SQLite: all
    /// under the write lock; another backend: lock the user's row, then the challenge's,
    /// before reading them (the guard may have no row yet).
    fn answer_challenge(
        &self,
        challenge_id: &str,
        verdict: Verdict,
        registered: Option<&RegisteredPasskey>,
        notices: &AnswerNotices<'_>,
        now: UnixTime,
    ) -> Result<Answered, StoreError>;
    /// Removes a confirmed method after settling the proof.
    ///
    /// Concurrency: the last confirmed method is never removed: the count of the user's
    /// other confirmed methods and the delete are in one transaction under the user's lock,
    /// so of two parallel removals of a user's last two confirmed methods one succeeds and
    /// the other gets `LastMethod` (decided before the proof is settled: it writes
    /// nothing). SQLite: the write lock.
    fn remove_method(&self, cmd: &RemoveMethod<'_>, now: UnixTime) -> Result<(), StoreError>;
    /// Lifts a user's lock and clears their back-off, after the app's proof (or for an
    /// operator), notifying every confirmed method. A refused proof records its failure
    /// and the `jti`, and unlocks nothing. Returns whether the user was locked.
    ///
    /// Concurrency: under the user's lock, the lock state read for the answer, the proof's
    /// settlement and the "no confirmed method" check agree with what commits: a method
    /// confirmed meanwhile makes the proof required. Of two parallel unlocks both succeed
    /// and only the first to commit returns `true`. Against a failing answer, whichever
    /// commits last decides whether the user is locked. SQLite: the write lock.
    fn unlock_user(&self, cmd: &UnlockUser<'_>, now: UnixTime) -> Result<bool, StoreError>;
    /// The length of a user's chain and the hash of its last block (`None`: no chain).
    ///
    /// Concurrency: read-only, one statement; the head may have moved by the time the
    /// caller appends (see [`Store::append_block`]).
    fn chain_head(
        &self,
        app_id: &str,
        user_id: &str,
    ) -> Result<Option<crate::domain::chain::Head>, StoreError>;
    /// The encoded block at `index` of a user's chain, if there is one.
    ///
    /// Concurrency: read-only, one statement.
    fn chain_block(
        &self,
        app_id: &str,
        user_id: &str,
        index: usize,
    ) -> Result<Option<Vec<u8>>, StoreError>;
    /// The encoded blocks of a user's chain, in order (empty if none).
    ///
    /// Concurrency: read-only, one statement (one snapshot of the chain).
    fn chain(&self, app_id: &str, user_id: &str) -> Result<Vec<Vec<u8>>, StoreError>;
    /// Appends a checked block at `index`, consuming the assertion; refuses with
    /// `ChainFork` if the chain no longer has exactly `index` blocks.
    ///
    /// Concurrency: an append lands only on the chain it was checked against: of two
    /// appends built on the same head exactly one lands, the other gets `ChainFork` and
    /// writes nothing (its `jti` stays unused). SQLite counts the blocks in the
    /// transaction, under the write lock, and the `(app_id, user_id, idx)` primary key backs
    /// it; another backend must make a conflicting insert at `index` end as `ChainFork`,
    /// not `Backend`. The length is compared, not the head's hash: chains are append-only,
    /// so only an erasure and a new enrolment of the same user between the caller's read
    /// and this write could show the same length with another head.
    fn append_block(
        &self,
        assertion: &VerifiedAssertion,
        index: usize,
        hash: &[u8; 32],
        block: &[u8],
        now: UnixTime,
    ) -> Result<(), StoreError>;
    /// Starts a recovery.
    ///
    /// Concurrency: the caller's `unspent` limits first (spent even when the start is
    /// refused, unless one of them is full), then in one transaction the `jti`, the lock
    /// check and the limits, the user's daily recovery starts among them, never over the
    /// cap (as in [`Store::take_limits`]). Several recoveries of one user may be open at
    /// once.
    fn start_recovery(&self, cmd: &StartRecovery<'_>, now: UnixTime) -> Result<(), StoreError>;
    /// A recovery by id.
    ///
    /// Concurrency: read-only, one statement.
    fn recovery(&self, challenge_id: &str) -> Result<Option<Recovery>, StoreError>;
    /// Settles a recovery code; when right, releases now (returning the sealed virtual
    /// device) or starts the waiting period, and queues the matching notices.
    /// A unit of each of the caller's `unspent` limits (its address, the app's ceiling;
    /// empty if the caller already spent them) is spent first, even when the code is
    /// refused; a full limit refuses the request and changes nothing.
    ///
    /// Concurrency: settled once, as in [`Store::answer_challenge`]: of parallel right
    /// codes one releases (or starts the waiting period) and the others are
    /// `AlreadyUsed`, so the sealed virtual device is released at most once per recovery.
    /// A cancellation that commits first wins: the code finds the recovery cancelled and
    /// counts nothing (the `unspent` units stay spent). SQLite: the write lock; another
    /// backend: lock the user's row, then the challenge and the recovery, before reading
    /// their states.
    fn verify_recovery(
        &self,
        challenge_id: &str,
        unspent: &[Limit],
        verdict: Verdict,
        notices: &RecoveryNotices<'_>,
        now: UnixTime,
    ) -> Result<VerifiedRecovery, StoreError>;
    /// Releases a recovery whose waiting period is over, to a `recover` assertion of its
    /// user; nothing changes when the release is refused.
    ///
    /// Concurrency: a release and a cancellation never both succeed, and a recovery is
    /// released once: the state check (`waiting`, its period over) and the move to
    /// `released` are one transaction, so of a release and a cancellation the one that
    /// commits first wins and the other is refused (`AlreadyReleased`,
    /// `RecoveryCancelled`) with nothing written. SQLite: read, check, write under the
    /// write lock; another backend: lock the recovery row, or `UPDATE ... WHERE state =
    /// 'waiting'` and its row count. The sealed virtual device returned is the one
    /// committed when the release commits (a parallel replacement lands wholly before or
    /// after it).
    fn release_recovery(
        &self,
        assertion: &VerifiedAssertion,
        challenge_id: &str,
        notice: &NewMessage,
        now: UnixTime,
    ) -> Result<(Recovery, Vec<u8>), StoreError>;
    /// Cancels a recovery (a `manage` assertion, or any assertion of the user with a proof).
    ///
    /// Concurrency: against a release, see [`Store::release_recovery`]; of two
    /// cancellations one succeeds and the other gets `RecoveryCancelled`, writing nothing.
    /// The recovery's challenge is killed by a conditional update (`state = 'open'`), so a
    /// right code answered after the cancellation releases nothing. A refused proof keeps
    /// its failure and the `jti`. SQLite: the write lock.
    fn cancel_recovery(
        &self,
        assertion: &VerifiedAssertion,
        proof: Option<&ProofAnswer>,
        challenge_id: &str,
        notice: &NewMessage,
        now: UnixTime,
    ) -> Result<Recovery, StoreError>;
    /// The recovery a cancel code (its MAC) belongs to.
    ///
    /// Concurrency: read-only, two statements (in SQLite not one snapshot).
    fn recovery_by_cancel_code(&self, mac: &[u8]) -> Result<Option<Recovery>, StoreError>;
    /// Cancels the recovery a cancel code belongs to (no assertion: the code reached only
    /// the user's confirmed methods), notifying every method.
    ///
    /// Concurrency: in one transaction, cancels every recovery of the user open at that
    /// moment (`started` or `waiting`) and spends the code: of two uses of one code the
    /// second finds it spent (`Refused(InvalidCode)`). Against a release, see
    /// [`Store::release_recovery`]. The set of open recoveries is read in the transaction:
    /// SQLite's write lock keeps it exact; another backend must lock the user's row first,
    /// so that a recovery started meanwhile is either cancelled too or starts after.
    fn cancel_recovery_by_code(
        &self,
        mac: &[u8],
        notice: &NewMessage,
        now: UnixTime,
    ) -> Result<Recovery, StoreError>;
    /// Replaces the sealed virtual device (`manage` assertion and a proof).
    ///
    /// Concurrency: under the user's lock, after its proof; of parallel replacements the
    /// last to commit wins. A release reads the sealed virtual device in its own
    /// transaction and gets the old or the new one, whole. SQLite: the write lock.
    fn replace_virtual_device(
        &self,
        assertion: &VerifiedAssertion,
        proof: &ProofAnswer,
        sealed: &[u8],
        notice: &NewMessage,
        now: UnixTime,
    ) -> Result<(), StoreError>;
    /// Deletes every row of a user (right to erasure), after queueing `notice` to each of
    /// their confirmed SMS and e-mail methods (a farewell that outlives them until it is
    /// sent); consumes the assertion's `jti` when one is given (operators act without one).
    ///
    /// Concurrency: one transaction: a write about the user that commits before it is
    /// erased with the rest; one that commits after it finds nothing (`NotEnrolled`,
    /// `MethodNotFound`, `RecoveryNotFound`, or, for an insert that names the user's rows,
    /// a foreign-key failure, today `Backend`). Of two erasures one succeeds and the other
    /// gets `NotEnrolled`, writing nothing. A backend must lock the user's row first so
    /// that no row of theirs is added while the others are deleted.
    fn erase_user(
        &self,
        app_id: &str,
        user_id: &str,
        assertion: Option<&VerifiedAssertion>,
        notice: &NewMessage,
        now: UnixTime,
    ) -> Result<(), StoreError>;
    /// Audit events after `after_seq`, oldest first, at most `limit`.
    ///
    /// Concurrency: read-only, one statement. Events are committed in `seq` order (the
    /// head is held to the commit), so a page never has a gap that a later commit fills.
    fn audit_events(
        &self,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<crate::domain::audit::AuditEvent>, StoreError>;
    /// The audit log's recorded head (its last event's position and hash); `None` if the
    /// record itself is gone.
    ///
    /// Concurrency: read-only, one statement; read after [`Store::audit_events`], it may be
    /// past the last event that call returned.
    fn audit_head(&self) -> Result<Option<crate::domain::audit::AuditHead>, StoreError>;
    /// The latest time the database relied on (its last audited write, or the last purge
    /// of expired state): the server's time must not go back before it.
    ///
    /// Concurrency: read-only, one statement; concurrent writes only raise it.
    fn time_floor(&self) -> Result<UnixTime, StoreError>;
    /// Sets the time floor to `to` (after the clock had jumped ahead, so the floor is in
    /// the future), audited; returns the previous floor. Only with no server running.
    ///
    /// Concurrency: overwrites the floor (every other write only raises it), so it runs
    /// alone: the caller holds the database lock ([`LockHolder::Maintenance`]), which no
    /// server runs without.
    fn reset_time_floor(&self, to: UnixTime) -> Result<UnixTime, StoreError>;
    /// Up to `limit` methods whose secret is under another data key than `current`
    /// (passphrase methods excepted: their hash needs the pepper of the key they are under).
    ///
    /// Concurrency: read-only, one statement.
    fn methods_under_other_keys(
        &self,
        current: &str,
        limit: usize,
    ) -> Result<Vec<Method>, StoreError>;
    /// Replaces a method's secret (and destination MAC) if it is still under `old_key`;
    /// returns whether it was.
    ///
    /// Concurrency: a compare-and-set on the key id (`UPDATE ... WHERE key_id = old_key`
    /// and its row count): a method rewritten meanwhile under another key is left alone.
    /// The secret written is the caller's re-encryption of what it read, so this is exact
    /// only while no node still writes values under `old_key` (every node restarted with
    /// the new key first, as the rotation procedure says): a passkey registered under
    /// `old_key` between the read and this update would be overwritten by the stale copy.
    fn rekey_method(
        &self,
        method_id: &str,
        old_key: &str,
        new_key: &str,
        secret: &[u8],
        destination_mac: Option<&[u8]>,
    ) -> Result<bool, StoreError>;
    /// Up to `limit` queued message bodies under another data key than `current`:
    /// (outbox id, key id, body).
    ///
    /// Concurrency: read-only, one statement.
    fn messages_under_other_keys(
        &self,
        current: &str,
        limit: usize,
    ) -> Result<Vec<(i64, String, Vec<u8>)>, StoreError>;
    /// Replaces a queued body if it is still under `old_key`; returns whether it was.
    ///
    /// Concurrency: a compare-and-set on the key id and a body not yet wiped: a message
    /// sent or given up meanwhile is left alone (`false`). Bodies are never rewritten
    /// otherwise, so the stale-copy hazard of [`Store::rekey_method`] does not arise.
    fn rekey_message(
        &self,
        id: i64,
        old_key: &str,
        new_key: &str,
        body: &[u8],
    ) -> Result<bool, StoreError>;
    /// Every data key id a stored value still needs: methods, queued bodies and
    /// destinations, live challenges whose code it hashed, cancel codes that can still
    /// stop a recovery (waiting, or started with its challenge open).
    ///
    /// Concurrency: read-only, one statement; a node still writing under a key it is about
    /// to stop using can add a value right after.
    fn key_ids_in_use(&self, now: UnixTime) -> Result<Vec<String>, StoreError>;
    /// What still needs data key `key_id`: methods, queued bodies, and live codes (open
    /// challenges whose code it hashed, cancel codes that can still stop a recovery).
    ///
    /// Concurrency: read-only, five statements (in SQLite not one snapshot).
    fn key_usage(&self, key_id: &str, now: UnixTime) -> Result<(u64, u64, u64), StoreError>;
    /// An app's activity: enrolled users, audit events since `since`, and the time of its
    /// last event.
    ///
    /// Concurrency: read-only, two statements (in SQLite not one snapshot).
    fn app_activity(
        &self,
        app_id: &str,
        since: UnixTime,
    ) -> Result<(u64, u64, Option<UnixTime>), StoreError>;
    /// A user's recoveries, newest first.
    ///
    /// Concurrency: read-only, one statement.
    fn user_recoveries(&self, app_id: &str, user_id: &str) -> Result<Vec<Recovery>, StoreError>;

    /// Takes one unit from each limit, all or none.
    ///
    /// Concurrency: never over a cap: of parallel takers of a limit's last unit exactly one
    /// gets it and the others get `LimitReached`, which names the first full limit in the
    /// order of `limits`; a refusal takes nothing from any limit. SQLite checks every limit,
    /// then adds one to each (an upsert), under the write lock. Another backend: per limit,
    /// in key order, one conditional statement (`INSERT ... ON CONFLICT DO UPDATE SET
    /// count = count + 1 WHERE count < max`) whose row count decides, rolling back at the
    /// first full one. A few expired counters are purged on the way (raising the time
    /// floor). The same holds for the limits every other write spends.
    fn take_limits(&self, limits: &[Limit], now: UnixTime) -> Result<(), StoreError>;
    /// Refuses (`LimitReached`) if any of `limits` is full, spending nothing: a cheap
    /// early check for requests that spend their unit later, in the write that records
    /// them (the cap itself is enforced by that write).
    ///
    /// Concurrency: read-only, advisory: one statement per limit (in SQLite not one
    /// snapshot), possibly a commit behind.
    fn limits_allow(&self, limits: &[Limit], now: UnixTime) -> Result<(), StoreError>;

    /// Leases the oldest due message for `lease_secs`.
    ///
    /// Concurrency: a message is claimed by one worker at a time: of parallel claims each
    /// gets a different message, or none. SQLite selects and then sets the lease under the
    /// write lock; another backend: `SELECT ... FOR UPDATE SKIP LOCKED`, or a conditional
    /// update on `leased_until` and its row count. A lease that runs out makes the message
    /// claimable again (delivery at least once). A leased notice takes no new events: a
    /// notice of its kind queued meanwhile is a new message.
    fn claim_message(
        &self,
        now: UnixTime,
        lease_secs: i64,
    ) -> Result<Option<ClaimedMessage>, StoreError>;
    /// Records how a send attempt ended, if the claim `leased_until` names is still the
    /// message's lease; returns whether it was (`false`: the lease ran out and the message
    /// was claimed again or finished by another worker; nothing is written).
    ///
    /// Concurrency: applies only under the lease of the claim it reports on: a
    /// conditional update on the message id, its `pending` state and its `leased_until`,
    /// whose row count decides. A worker whose lease ran out while another claimed the
    /// message cannot record its result over the other's.
    fn finish_message(
        &self,
        id: i64,
        leased_until: UnixTime,
        result: &SendResult,
        now: UnixTime,
    ) -> Result<bool, StoreError>;
    /// Outbox counts.
    ///
    /// Concurrency: read-only, one statement.
    fn outbox_counts(&self) -> Result<OutboxCounts, StoreError>;
}
