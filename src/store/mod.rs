//! Storage: the one interface the rest of the code reaches the database through.
//!
//! Methods are synchronous and may block; request paths call them through
//! [`crate::service::Blocking`], which runs them on a blocking thread pool, never on the
//! async executor. Every state that must hold across restarts and nodes (replay caches,
//! counters) lives here, not in process memory. A PostgreSQL backend implements the same
//! trait.

pub mod lock;
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
pub use sqlite::SqliteStore;

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
    /// The MAC of that cancel code.
    pub cancel_mac: &'a [u8],
}

/// The notices a verified recovery code may send.
#[derive(Debug)]
pub struct RecoveryNotices<'a> {
    /// "Released", to the user's other confirmed methods.
    pub released: &'a NewMessage,
    /// "Will be released at ..., cancel if it is not you", to every confirmed method; it
    /// carries a cancel code.
    pub waiting: &'a NewMessage,
    /// The MAC of the waiting notice's cancel code.
    pub waiting_cancel_mac: &'a [u8],
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
pub trait Store: Send + Sync + 'static {
    /// Checks that the database answers.
    fn ping(&self) -> Result<(), StoreError>;

    /// Registers an app with its first key.
    fn create_app(&self, app: &App, first_key: &AppKey) -> Result<(), StoreError>;
    /// All apps, oldest first.
    fn list_apps(&self) -> Result<Vec<App>, StoreError>;
    /// One app.
    fn app(&self, app_id: &str) -> Result<Option<App>, StoreError>;
    /// An app's keys, oldest first.
    fn app_keys(&self, app_id: &str) -> Result<Vec<AppKey>, StoreError>;
    /// Adds a key to an app.
    fn add_app_key(&self, app_id: &str, key: &AppKey) -> Result<(), StoreError>;
    /// Revokes a key of an app, from `now` on.
    fn revoke_app_key(&self, app_id: &str, kid: &str, now: UnixTime) -> Result<(), StoreError>;
    /// Replaces an app's policy.
    fn set_app_policy(
        &self,
        app_id: &str,
        policy: &AppPolicy,
        now: UnixTime,
    ) -> Result<(), StoreError>;
    /// The web origins an app allows (normalised), sorted.
    fn app_origins(&self, app_id: &str) -> Result<Vec<String>, StoreError>;
    /// Allows a (normalised) origin for an app, audited; `false` if it already was.
    fn add_app_origin(&self, app_id: &str, origin: &str, now: UnixTime)
        -> Result<bool, StoreError>;
    /// Stops allowing an origin for an app, audited; `false` if it was not allowed.
    fn remove_app_origin(
        &self,
        app_id: &str,
        origin: &str,
        now: UnixTime,
    ) -> Result<bool, StoreError>;
    /// Where a (normalised) origin stands for a request about `subject` (reads only).
    fn origin_standing(
        &self,
        subject: OriginSubject<'_>,
        origin: &str,
    ) -> Result<OriginStanding, StoreError>;
    /// What is known of the key an assertion names.
    fn lookup_assertion_key(&self, app_id: &str, kid: &str) -> Result<KeyLookup, StoreError>;

    /// In one transaction: consumes the assertion's `jti` and stores a new enrolment.
    /// Nothing is written if either fails.
    fn enroll(
        &self,
        assertion: &VerifiedAssertion,
        enrollment: &Enrollment,
        now: UnixTime,
    ) -> Result<(), StoreError>;
    /// A user's enrolment.
    fn enrollment(&self, app_id: &str, user_id: &str) -> Result<Option<Enrollment>, StoreError>;

    /// Consumes an assertion's `jti` for a request that writes nothing else.
    fn consume_assertion(
        &self,
        assertion: &VerifiedAssertion,
        now: UnixTime,
    ) -> Result<(), StoreError>;
    /// A user with their guard and methods.
    fn user(&self, app_id: &str, user_id: &str) -> Result<Option<UserRecord>, StoreError>;
    /// Adds a pending method and its confirmation challenge; settles the proof first.
    /// A refused proof still records its failure (and the `jti`), and adds nothing.
    fn add_method(&self, cmd: &AddMethod<'_>, now: UnixTime) -> Result<(), StoreError>;
    /// Starts a challenge on a method of the assertion's user.
    fn start_challenge(&self, cmd: &StartChallenge<'_>, now: UnixTime) -> Result<(), StoreError>;
    /// A challenge with its method and the app's policy, for checking a code.
    fn challenge(
        &self,
        challenge_id: &str,
    ) -> Result<Option<(Challenge, Method, AppPolicy)>, StoreError>;
    /// Whether a passkey credential (its `credential_hash`) is registered already, by any
    /// user of any app.
    fn credential_registered(&self, credential_hash: &[u8; 32]) -> Result<bool, StoreError>;
    /// Settles an answer; on a correct `confirm` answer, confirms the method (for a
    /// passkey, storing the `registered` credential, refused if that credential is
    /// registered already), activates the user and queues the `added` notice to the
    /// user's other confirmed methods. The first confirmed method removes every other
    /// pending method of the user.
    fn answer_challenge(
        &self,
        challenge_id: &str,
        verdict: Verdict,
        registered: Option<&RegisteredPasskey>,
        notices: &AnswerNotices<'_>,
        now: UnixTime,
    ) -> Result<Answered, StoreError>;
    /// Removes a confirmed method after settling the proof.
    fn remove_method(&self, cmd: &RemoveMethod<'_>, now: UnixTime) -> Result<(), StoreError>;
    /// Lifts a user's lock and clears their back-off, after the app's proof (or for an
    /// operator), notifying every confirmed method. A refused proof records its failure
    /// and the `jti`, and unlocks nothing. Returns whether the user was locked.
    fn unlock_user(&self, cmd: &UnlockUser<'_>, now: UnixTime) -> Result<bool, StoreError>;
    /// The length of a user's chain and the hash of its last block (`None`: no chain).
    fn chain_head(
        &self,
        app_id: &str,
        user_id: &str,
    ) -> Result<Option<crate::domain::chain::Head>, StoreError>;
    /// The encoded block at `index` of a user's chain, if there is one.
    fn chain_block(
        &self,
        app_id: &str,
        user_id: &str,
        index: usize,
    ) -> Result<Option<Vec<u8>>, StoreError>;
    /// The encoded blocks of a user's chain, in order (empty if none).
    fn chain(&self, app_id: &str, user_id: &str) -> Result<Vec<Vec<u8>>, StoreError>;
    /// Appends a checked block at `index`, consuming the assertion; refuses with
    /// `ChainFork` if the chain no longer has exactly `index` blocks.
    fn append_block(
        &self,
        assertion: &VerifiedAssertion,
        index: usize,
        hash: &[u8; 32],
        block: &[u8],
        now: UnixTime,
    ) -> Result<(), StoreError>;
    /// Starts a recovery.
    fn start_recovery(&self, cmd: &StartRecovery<'_>, now: UnixTime) -> Result<(), StoreError>;
    /// A recovery by id.
    fn recovery(&self, challenge_id: &str) -> Result<Option<Recovery>, StoreError>;
    /// Settles a recovery code; when right, releases now (returning the sealed virtual
    /// device) or starts the waiting period, and queues the matching notices.
    /// A unit of each of the caller's `unspent` limits (its address, the app's ceiling;
    /// empty if the caller already spent them) is spent first, even when the code is
    /// refused; a full limit refuses the request and changes nothing.
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
    fn release_recovery(
        &self,
        assertion: &VerifiedAssertion,
        challenge_id: &str,
        notice: &NewMessage,
        now: UnixTime,
    ) -> Result<(Recovery, Vec<u8>), StoreError>;
    /// Cancels a recovery (a `manage` assertion, or any assertion of the user with a proof).
    fn cancel_recovery(
        &self,
        assertion: &VerifiedAssertion,
        proof: Option<&ProofAnswer>,
        challenge_id: &str,
        notice: &NewMessage,
        now: UnixTime,
    ) -> Result<Recovery, StoreError>;
    /// The recovery a cancel code (its MAC) belongs to.
    fn recovery_by_cancel_code(&self, mac: &[u8]) -> Result<Option<Recovery>, StoreError>;
    /// Cancels the recovery a cancel code belongs to (no assertion: the code reached only
    /// the user's confirmed methods), notifying every method.
    fn cancel_recovery_by_code(
        &self,
        mac: &[u8],
        notice: &NewMessage,
        now: UnixTime,
    ) -> Result<Recovery, StoreError>;
    /// Replaces the sealed virtual device (`manage` assertion and a proof).
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
    fn erase_user(
        &self,
        app_id: &str,
        user_id: &str,
        assertion: Option<&VerifiedAssertion>,
        notice: &NewMessage,
        now: UnixTime,
    ) -> Result<(), StoreError>;
    /// Audit events after `after_seq`, oldest first, at most `limit`.
    fn audit_events(
        &self,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<crate::domain::audit::AuditEvent>, StoreError>;
    /// The audit log's recorded head (its last event's position and hash); `None` if the
    /// record itself is gone.
    fn audit_head(&self) -> Result<Option<crate::domain::audit::AuditHead>, StoreError>;
    /// The latest time the database relied on (its last audited write, or the last purge
    /// of expired state): the server's time must not go back before it.
    fn time_floor(&self) -> Result<UnixTime, StoreError>;
    /// Sets the time floor to `to` (after the clock had jumped ahead, so the floor is in
    /// the future), audited; returns the previous floor. Only with no server running.
    fn reset_time_floor(&self, to: UnixTime) -> Result<UnixTime, StoreError>;
    /// Up to `limit` methods whose secret is under another data key than `current`
    /// (passphrase methods excepted: their hash needs the pepper of the key they are under).
    fn methods_under_other_keys(
        &self,
        current: &str,
        limit: usize,
    ) -> Result<Vec<Method>, StoreError>;
    /// Replaces a method's secret (and destination MAC) if it is still under `old_key`;
    /// returns whether it was.
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
    fn messages_under_other_keys(
        &self,
        current: &str,
        limit: usize,
    ) -> Result<Vec<(i64, String, Vec<u8>)>, StoreError>;
    /// Replaces a queued body if it is still under `old_key`; returns whether it was.
    fn rekey_message(
        &self,
        id: i64,
        old_key: &str,
        new_key: &str,
        body: &[u8],
    ) -> Result<bool, StoreError>;
    /// Every data key id a stored value still needs: methods, queued bodies and
    /// destinations, live challenges whose code it hashed.
    fn key_ids_in_use(&self, now: UnixTime) -> Result<Vec<String>, StoreError>;
    /// What still needs data key `key_id`: methods, queued bodies, live challenges whose
    /// code it hashed.
    fn key_usage(&self, key_id: &str, now: UnixTime) -> Result<(u64, u64, u64), StoreError>;
    /// An app's activity: enrolled users, audit events since `since`, and the time of its
    /// last event.
    fn app_activity(
        &self,
        app_id: &str,
        since: UnixTime,
    ) -> Result<(u64, u64, Option<UnixTime>), StoreError>;
    /// A user's recoveries, newest first.
    fn user_recoveries(&self, app_id: &str, user_id: &str) -> Result<Vec<Recovery>, StoreError>;

    /// Takes one unit from each limit, all or none.
    fn take_limits(&self, limits: &[Limit], now: UnixTime) -> Result<(), StoreError>;
    /// Refuses (`LimitReached`) if any of `limits` is full, spending nothing: a cheap
    /// early check for requests that spend their unit later, in the write that records
    /// them (the cap itself is enforced by that write).
    fn limits_allow(&self, limits: &[Limit], now: UnixTime) -> Result<(), StoreError>;

    /// Leases the oldest due message for `lease_secs`.
    fn claim_message(
        &self,
        now: UnixTime,
        lease_secs: i64,
    ) -> Result<Option<ClaimedMessage>, StoreError>;
    /// Records how a send attempt ended.
    fn finish_message(&self, id: i64, result: &SendResult, now: UnixTime)
        -> Result<(), StoreError>;
    /// Outbox counts.
    fn outbox_counts(&self) -> Result<OutboxCounts, StoreError>;
}
