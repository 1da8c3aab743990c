//! Use cases: each one reads the time once, then runs its store work and domain rules on
//! the blocking pool, so neither database I/O, signature checks nor Argon2 stall the
//! executor. (A one-time code's HMAC is a microsecond's work: it runs inline.)

pub mod chain;
pub mod challenges;
pub mod enrollment;
pub mod messages;
pub mod methods;
pub mod recovery;

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use ghostkey_proto::assertion::Purpose;
use ghostkey_proto::ErrorCode;
use secrecy::SecretString;
use tokio::sync::{Notify, Semaphore};

use crate::clock::{Clock, UnixTime};
use crate::domain::assertion::{self, AssertionRules, VerifiedAssertion};
use crate::domain::challenge::{Challenge, ChallengePurpose, Verdict};
use crate::domain::code;
use crate::domain::method::Method;
use crate::domain::policy::{AppPolicy, MethodKind};
use crate::error::Error;
use crate::keys::ServerKeys;
use crate::store::{RegisteredPasskey, Store, StoreError};

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        match e {
            StoreError::AlreadyEnrolled => Error::new(ErrorCode::AlreadyEnrolled),
            StoreError::AssertionReplayed => Error::new(ErrorCode::AssertionReplayed),
            StoreError::NotEnrolled => Error::new(ErrorCode::NotEnrolled),
            StoreError::MethodNotFound => Error::new(ErrorCode::MethodNotFound),
            StoreError::MethodNotConfirmed => Error::new(ErrorCode::MethodNotConfirmed),
            StoreError::LastMethod => Error::new(ErrorCode::LastMethod),
            StoreError::TooManyMethods => Error::new(ErrorCode::TooManyMethods),
            StoreError::ProofRequired => Error::new(ErrorCode::ProofRequired),
            StoreError::InvalidProof => Error::new(ErrorCode::InvalidProof),
            StoreError::Locked => Error::new(ErrorCode::Locked),
            StoreError::LimitReached { code, retry_after } => Error::retry_after(code, retry_after),
            StoreError::RecoveryNotFound => Error::new(ErrorCode::RecoveryNotFound),
            StoreError::ChainFork => Error::new(ErrorCode::ChainFork),
            StoreError::Refused(error) => *error,
            StoreError::ProofRefused(outcome) => outcome.error(0).unwrap_or_else(|| {
                Error::internal("a proof was refused with an accepting outcome")
            }),
            // The database is out of reach or a commit's outcome is unknown: the client
            // may try again; the cause goes to the log only.
            StoreError::Unavailable(cause) => Error {
                cause: Some(cause),
                ..Error::retry_after(ErrorCode::Unavailable, 1)
            },
            other => Error::internal(other),
        }
    }
}

/// A store error as the answer to a request made at `now`. A proof refused during the
/// user's back-off says how long to wait from `now` (the store knows only the end of the
/// back-off); every other error converts as usual.
pub(crate) fn refusal_at(error: StoreError, now: UnixTime) -> Error {
    match error {
        StoreError::ProofRefused(outcome) => outcome
            .error(now)
            .unwrap_or_else(|| Error::internal("a proof was refused with an accepting outcome")),
        other => other.into(),
    }
}

/// Who is calling: the client address, as the HTTP layer resolved it (trusted proxies
/// included). Only an HMAC of it ever reaches the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// The client address.
    pub address: IpAddr,
}

/// At most `permits` Argon2 hashes at once, each in one of the reusable working memories,
/// and a bounded line of requests waiting for one: past it, a request is answered 503 with
/// `Retry-After` at once instead of queueing without end (load shedding).
struct Argon2Pool {
    /// Held by the blocking task that hashes, not by the request: a client that hangs up
    /// mid-hash must not free a slot while its hash still runs.
    permits: Arc<Semaphore>,
    /// Buffers of hashes finished, for the next ones; dropped when idle
    /// ([`Ghostkey::release_idle_argon2_memory`]).
    memory: std::sync::Mutex<Vec<code::Argon2Memory>>,
    /// Buffers allocated and not dropped (in use or in `memory`).
    buffers: std::sync::atomic::AtomicUsize,
    /// Hashes started so far, and the count the last idle check saw.
    started: std::sync::atomic::AtomicU64,
    started_at_last_check: std::sync::atomic::AtomicU64,
    line: WaitLine,
}

/// Requests that may wait for an Argon2 permit, per permit (a hash takes about 15 ms: a
/// full line is about half a second of work).
pub const ARGON2_WAITING_PER_PERMIT: usize = 32;

impl Argon2Pool {
    /// `waiting`: the length of the line (0: [`ARGON2_WAITING_PER_PERMIT`] per permit).
    fn new(concurrency: usize, waiting: usize) -> Argon2Pool {
        let concurrency = concurrency.max(1);
        let waiting = match waiting {
            0 => concurrency * ARGON2_WAITING_PER_PERMIT,
            n => n,
        };
        Argon2Pool {
            permits: Arc::new(Semaphore::new(concurrency)),
            memory: std::sync::Mutex::new(Vec::new()),
            buffers: std::sync::atomic::AtomicUsize::new(0),
            started: std::sync::atomic::AtomicU64::new(0),
            started_at_last_check: std::sync::atomic::AtomicU64::new(0),
            line: WaitLine::new(waiting),
        }
    }
}

impl Argon2Pool {
    /// Sets the gauge to the buffers held now. Under the buffers' lock, so that of two
    /// threads the one that changed the count last also sets the gauge last.
    fn show_memory(&self, metrics: &crate::metrics::Metrics) {
        let _in_order = self.memory.lock();
        let per_buffer = code::params().map_or(0, |p| p.block_count()) * argon2::Block::SIZE;
        let held = self.buffers.load(Ordering::SeqCst) * per_buffer;
        metrics.set_argon2_memory(u64::try_from(held).unwrap_or(u64::MAX));
    }
}

/// A wait line of bounded length.
#[derive(Debug)]
pub struct WaitLine {
    waiting: std::sync::atomic::AtomicUsize,
    max: usize,
}

/// A place in a [`WaitLine`], given back when dropped (also when the request is dropped
/// while it waits).
#[derive(Debug)]
pub struct InLine<'a>(&'a WaitLine);

impl WaitLine {
    /// A line of at most `max` waiting.
    pub fn new(max: usize) -> WaitLine {
        WaitLine {
            waiting: std::sync::atomic::AtomicUsize::new(0),
            max,
        }
    }

    /// A place in the line, or `None` when it is full.
    pub fn join(&self) -> Option<InLine<'_>> {
        use std::sync::atomic::Ordering;
        let before = self.waiting.fetch_add(1, Ordering::SeqCst);
        if before >= self.max {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(InLine(self))
    }
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        self.0
            .waiting
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The service: the store, the clock, the keys and the deployment's rules, shared by all
/// workers.
#[derive(Clone)]
pub struct Ghostkey {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    rules: Arc<AssertionRules>,
    keys: Arc<ServerKeys>,
    argon2: Arc<Argon2Pool>,
    outbox_wake: Arc<Notify>,
    metrics: Arc<crate::metrics::Metrics>,
    chains: Arc<chain::ChainCache>,
}

impl Ghostkey {
    /// Builds the service. `argon2_concurrency` bounds the Argon2id hashes computed at once
    /// (passphrase verifiers, and codes stored before schema version 7).
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        rules: AssertionRules,
        keys: Arc<ServerKeys>,
        argon2_concurrency: usize,
    ) -> Ghostkey {
        Ghostkey {
            store,
            clock,
            rules: Arc::new(rules),
            keys,
            argon2: Arc::new(Argon2Pool::new(argon2_concurrency, 0)),
            outbox_wake: Arc::new(Notify::new()),
            metrics: Arc::new(crate::metrics::Metrics::default()),
            chains: Arc::new(chain::ChainCache::default()),
        }
    }

    /// Sets how many checks may wait for an Argon2 permit, all together (0: the default,
    /// [`ARGON2_WAITING_PER_PERMIT`] per permit). Call before the service is shared.
    pub fn with_argon2_waiting(mut self, waiting: usize) -> Ghostkey {
        let permits = self.argon2.permits.available_permits();
        self.argon2 = Arc::new(Argon2Pool::new(permits, waiting));
        self
    }

    /// The metrics this service records.
    pub fn metrics(&self) -> Arc<crate::metrics::Metrics> {
        Arc::clone(&self.metrics)
    }

    /// Records a code check's outcome (and a lock it caused).
    pub(crate) fn record_code(&self, outcome: crate::domain::challenge::Outcome, purpose: &str) {
        use crate::domain::challenge::Outcome;
        let result = if outcome == Outcome::Accepted {
            "accepted"
        } else {
            "refused"
        };
        self.metrics.inc(
            "ghostkey_codes_total",
            &[("result", result), ("purpose", purpose)],
        );
        if outcome == Outcome::WrongAndLocked {
            self.metrics.inc("ghostkey_locks_total", &[]);
        }
    }

    /// Records a challenge started.
    pub(crate) fn record_challenge(&self, purpose: &str, kind: MethodKind) {
        self.metrics.inc(
            "ghostkey_challenges_started_total",
            &[("purpose", purpose), ("method", kind.as_str())],
        );
    }

    /// Wakes the delivery worker when a request queued a message.
    pub fn outbox_wake(&self) -> Arc<Notify> {
        Arc::clone(&self.outbox_wake)
    }

    /// Runs `f` with the store on the blocking thread pool.
    pub async fn blocking<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&dyn Store, &AssertionRules) -> Result<T, Error> + Send + 'static,
    {
        let store = Arc::clone(&self.store);
        let rules = Arc::clone(&self.rules);
        tokio::task::spawn_blocking(move || {
            crate::store::as_store_thread(|| f(store.as_ref(), &rules))
        })
        .await
        .map_err(|e| Error::internal(format!("blocking task failed: {e}")))?
    }

    /// Spends the caller's units for a request refused before the write that would have
    /// spent them, so that every refused request counts against its address. Answers the
    /// refusal, or the limit's own refusal if a unit was no longer there.
    pub(crate) fn spend_refused_on(
        store: &dyn Store,
        limits: &[crate::domain::limits::Limit],
        now: UnixTime,
        refusal: Error,
    ) -> Error {
        match store.take_limits(limits, now) {
            Ok(()) => refusal,
            Err(limited) => Error::from(limited),
        }
    }

    /// The current time, read once per request.
    pub fn now(&self) -> UnixTime {
        self.clock.now()
    }

    /// Readiness: the store answers.
    pub async fn ready(&self) -> Result<(), Error> {
        self.blocking(|store, _| Ok(store.ping()?)).await
    }

    /// Hashes a passphrase verifier, or a code stored before schema version 7, with
    /// Argon2id on the blocking pool, at most N at once. `key_id` names the data key whose
    /// pepper to use (`None`: the current one).
    async fn hash_code(
        &self,
        salt: [u8; code::SALT_LEN],
        code: SecretString,
        key_id: Option<String>,
    ) -> Result<[u8; code::HASH_LEN], Error> {
        let permit = match Arc::clone(&self.argon2.permits).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let Some(_place) = self.argon2.line.join() else {
                    self.metrics.inc("ghostkey_shed_total", &[]);
                    return Err(Error::retry_after(ErrorCode::Unavailable, 1));
                };
                Arc::clone(&self.argon2.permits)
                    .acquire_owned()
                    .await
                    .map_err(|_| Error::internal("argon2 semaphore closed"))?
            }
        };
        let keys = Arc::clone(&self.keys);
        let pool = Arc::clone(&self.argon2);
        let metrics = Arc::clone(&self.metrics);
        self.metrics.inc("ghostkey_code_hashes_total", &[]);
        pool.started.fetch_add(1, Ordering::SeqCst);
        tokio::task::spawn_blocking(move || {
            use secrecy::ExposeSecret;
            let _permit = permit;
            let pepper = match &key_id {
                Some(id) => keys.code_pepper_for(id).map_err(Error::internal)?,
                None => keys.code_pepper(),
            };
            // Holding a permit guarantees a free buffer, or room for one more.
            let reused = match pool.memory.lock() {
                Ok(mut free) => free.pop(),
                Err(_) => None,
            };
            let mut memory = match reused {
                Some(memory) => memory,
                None => {
                    let memory = code::Argon2Memory::new()?;
                    pool.buffers.fetch_add(1, Ordering::SeqCst);
                    pool.show_memory(&metrics);
                    memory
                }
            };
            let hashed = code::hash(&mut memory, pepper, &salt, code.expose_secret());
            match pool.memory.lock() {
                Ok(mut free) => free.push(memory),
                Err(_) => {
                    pool.buffers.fetch_sub(1, Ordering::SeqCst);
                    pool.show_memory(&metrics);
                }
            }
            hashed
        })
        .await
        .map_err(|e| Error::internal(format!("argon2 task failed: {e}")))?
    }

    /// Drops the Argon2id buffers kept for the next hashes if no hash started since the
    /// last call (the server calls it every second): a burst of passphrase checks would
    /// otherwise keep `slots x 19 MiB` for good. Answers the buffers dropped.
    pub fn release_idle_argon2_memory(&self) -> usize {
        let pool = &self.argon2;
        let started = pool.started.load(Ordering::SeqCst);
        if pool.started_at_last_check.swap(started, Ordering::SeqCst) != started {
            return 0;
        }
        let idle = match pool.memory.lock() {
            Ok(mut free) => std::mem::take(&mut *free),
            Err(_) => return 0,
        };
        let dropped = idle.len();
        if dropped > 0 {
            pool.buffers.fetch_sub(dropped, Ordering::SeqCst);
            pool.show_memory(&self.metrics);
        }
        dropped
    }

    /// Judges an answer against a challenge (or, if there is none, does the same work as
    /// for a wrong code): TOTP against the method's seed, SMS and e-mail codes against
    /// their MAC ([`Ghostkey::check_code`]), passphrase verifiers with Argon2id, a
    /// passkey's response with its WebAuthn ceremony.
    /// An answer of the wrong shape for the method's kind (a code for a passphrase, a
    /// verifier for a code, a code for a passkey or a passkey's response for anything
    /// else) is refused before any work, uncounted.
    async fn judge(
        &self,
        found: Option<&(Challenge, Method, AppPolicy)>,
        answer: &Answer,
        now: UnixTime,
    ) -> Result<Verdict, Error> {
        Ok(self.judge_answer(found, answer, now).await?.verdict)
    }

    /// [`Ghostkey::judge`], with the credential a passkey's registration made (for a
    /// `confirm` answer, to store when the answer is accepted).
    async fn judge_answer(
        &self,
        found: Option<&(Challenge, Method, AppPolicy)>,
        answer: &Answer,
        now: UnixTime,
    ) -> Result<Judged, Error> {
        match self.judge_inline(found, answer, now)? {
            Inline::Judged(judged) => Ok(judged),
            Inline::Passkey => {
                let (Some((ch, method, policy)), Answer::WebAuthn(response)) = (found, answer)
                else {
                    return Err(Error::internal("a passkey verdict without its challenge"));
                };
                let (this, ch, method, policy, response) = (
                    self.clone(),
                    ch.clone(),
                    method.clone(),
                    policy.clone(),
                    response.clone(),
                );
                self.blocking(move |store, _| {
                    this.judge_passkey_on(store, ch, method, policy, response)
                })
                .await
            }
            Inline::Argon2(work) => self.judge_argon2(work).await,
        }
    }

    /// Judges an answer inside a store call already on the blocking pool: everything but
    /// an Argon2id check, which goes through the bounded pool (`Ok(Err(work))`).
    pub(crate) fn judge_on(
        &self,
        store: &dyn Store,
        found: Option<&(Challenge, Method, AppPolicy)>,
        answer: &Answer,
        now: UnixTime,
    ) -> Result<Result<Judged, Argon2Work>, Error> {
        Ok(Ok(match self.judge_inline(found, answer, now)? {
            Inline::Judged(judged) => judged,
            Inline::Passkey => {
                let (Some((ch, method, policy)), Answer::WebAuthn(response)) = (found, answer)
                else {
                    return Err(Error::internal("a passkey verdict without its challenge"));
                };
                self.judge_passkey_on(
                    store,
                    ch.clone(),
                    method.clone(),
                    policy.clone(),
                    response.clone(),
                )?
            }
            Inline::Argon2(work) => return Ok(Err(work)),
        }))
    }

    /// The verdict of one Argon2id computation (through the bounded pool).
    pub(crate) async fn judge_argon2(&self, work: Argon2Work) -> Result<Judged, Error> {
        let got = self.hash_code(work.salt, work.typed, work.key_id).await?;
        Ok(Judged::from(match work.expected {
            Some(expected) if code::hashes_equal(&got, &expected) => {
                Verdict::Correct { totp_step: None }
            }
            Some(_) => Verdict::Wrong,
            None => {
                // No challenge: the comparison is made all the same.
                let _ = code::hashes_equal(&got, &[0u8; code::HASH_LEN]);
                Verdict::Wrong
            }
        }))
    }

    /// What judging an answer takes: the verdict at once (TOTP, a code under a MAC, no
    /// challenge for digits), a passkey ceremony (a store read), or an Argon2id
    /// computation (a passphrase verifier, a verifier for no challenge, a code stored
    /// before schema version 7 that can still open its challenge). Answers of the wrong
    /// shape are refused here, before any work.
    fn judge_inline(
        &self,
        found: Option<&(Challenge, Method, AppPolicy)>,
        answer: &Answer,
        now: UnixTime,
    ) -> Result<Inline, Error> {
        let code = match answer {
            Answer::Code(code) => code,
            Answer::WebAuthn(_) => {
                let Some((_, method, _)) = found else {
                    return Ok(Inline::Judged(Judged::from(Verdict::Wrong)));
                };
                if method.kind != MethodKind::Passkey {
                    return Err(Error::with_detail(
                        ErrorCode::InvalidField,
                        "`webauthn` answers only a passkey method's challenge; this one is answered with `code`",
                    ));
                }
                return Ok(Inline::Passkey);
            }
        };
        use secrecy::ExposeSecret;
        let is_verifier = crate::domain::passphrase::well_formed(code.expose_secret());
        if let Some((_, method, _)) = found {
            if method.kind == MethodKind::Passkey {
                return Err(Error::with_detail(
                    ErrorCode::InvalidField,
                    "a passkey challenge is answered with `webauthn` (the authenticator's response), not `code`",
                ));
            }
            if (method.kind == MethodKind::Passphrase) != is_verifier {
                return Err(Error::with_detail(
                    ErrorCode::InvalidField,
                    if is_verifier {
                        "`code`: this challenge is answered with a code of digits"
                    } else {
                        "`code`: a passphrase challenge is answered with the passphrase verifier (43 base64url characters)"
                    },
                ));
            }
        }
        if let Some((_, method, policy)) = found {
            if method.kind == MethodKind::Totp {
                let seed = self
                    .keys
                    .open(&method.key_id, &method.secret)
                    .map_err(Error::internal)?;
                let step = crate::domain::totp::matching_step(
                    &seed,
                    policy.totp_digits,
                    code.expose_secret(),
                    now,
                )?;
                return Ok(Inline::Judged(Judged::from(match step {
                    Some(step) => Verdict::Correct {
                        totp_step: Some(step),
                    },
                    None => Verdict::Wrong,
                })));
            }
            if method.kind == MethodKind::Passphrase {
                let plain = self
                    .keys
                    .open(&method.key_id, &method.secret)
                    .map_err(Error::internal)?;
                let stored = crate::domain::passphrase::Stored::decode(&plain)?;
                return Ok(Inline::Argon2(Argon2Work {
                    salt: stored.salt,
                    typed: code.clone(),
                    key_id: Some(stored.pepper_key_id),
                    expected: Some(stored.hash),
                }));
            }
        }
        if found.is_none() && is_verifier {
            // A verifier for no challenge: the same work as a wrong verifier (Argon2id
            // against a dummy), so that whether a passphrase challenge exists does not show.
            // The work follows the answer's shape, which the sender chose.
            return Ok(Inline::Argon2(Argon2Work {
                salt: [0u8; code::SALT_LEN],
                typed: code.clone(),
                key_id: None,
                expected: None,
            }));
        }
        self.check_code(found.map(|(ch, _, _)| ch), code, now)
    }

    /// Checks a typed SMS or e-mail code against its challenge's stored code, by the
    /// challenge's scheme: HMAC-SHA256 inline under the MAC key of the data key the
    /// challenge names; Argon2id through the bounded pool for a challenge stored before
    /// schema version 7 while its answer can still matter (open and not expired). With no
    /// challenge, or none that an answer can still open, the same work as a wrong code
    /// under the current scheme: one MAC (under the current key, against a dummy) and one
    /// constant-time comparison.
    fn check_code(
        &self,
        challenge: Option<&Challenge>,
        typed: &SecretString,
        now: UnixTime,
    ) -> Result<Inline, Error> {
        use crate::domain::challenge::ChallengeState;
        use code::CodeScheme;
        let stored = challenge.and_then(|ch| ch.code.map(|c| (ch, c)));
        let verdict = |right: bool| {
            Inline::Judged(Judged::from(if right {
                Verdict::Correct { totp_step: None }
            } else {
                Verdict::Wrong
            }))
        };
        let mac_key = match stored {
            Some((ch, c)) if c.scheme == CodeScheme::Argon2id => {
                if ch.state == ChallengeState::Open && now < ch.expires_at {
                    return Ok(Inline::Argon2(Argon2Work {
                        salt: c.salt,
                        typed: typed.clone(),
                        key_id: ch.code_key_id.clone(),
                        expected: Some(c.hash),
                    }));
                }
                // Its verdict cannot change the answer (used, dead or expired): no Argon2.
                return Ok(verdict(self.mac_check(
                    self.keys.code_mac_key(),
                    None,
                    typed,
                )));
            }
            Some((ch, _)) => match &ch.code_key_id {
                Some(id) => self.keys.code_mac_key_for(id).map_err(Error::internal)?,
                None => self.keys.code_mac_key(),
            },
            None => self.keys.code_mac_key(),
        };
        let expected = stored.map(|(_, c)| (c.salt, c.hash));
        Ok(verdict(self.mac_check(
            mac_key,
            expected.as_ref().map(|(salt, hash)| (salt, hash)),
            typed,
        )))
    }

    /// One code MAC and its constant-time comparison (counted with the code hashes).
    fn mac_check(
        &self,
        key: &[u8; 32],
        expected: Option<(&[u8; code::SALT_LEN], &[u8; code::HASH_LEN])>,
        typed: &SecretString,
    ) -> bool {
        self.metrics.inc("ghostkey_code_hashes_total", &[]);
        code::check_mac(key, expected, typed)
    }

    /// Finishes a passkey challenge's WebAuthn ceremony with the client's response: a
    /// registration for `confirm` (the new credential, unless it is registered already),
    /// an authentication for `proof` and `recover` (its counter must move past the last
    /// one accepted).
    fn judge_passkey_on(
        &self,
        store: &dyn Store,
        ch: Challenge,
        method: Method,
        policy: AppPolicy,
        response: serde_json::Value,
    ) -> Result<Judged, Error> {
        use crate::domain::challenge::Refusal as Why;
        use crate::domain::passkey::{self, MethodSecret, Refusal};
        let keys = &self.keys;
        {
            let rp = passkey_rp(store, &policy, &ch.app_id, "Ghostkey")?;
            let (Some(key_id), Some(sealed)) = (&ch.code_key_id, &ch.ceremony) else {
                return Err(Error::internal("a passkey challenge without its ceremony"));
            };
            let state = keys.open(key_id, sealed).map_err(Error::internal)?;
            let secret = keys
                .open(&method.key_id, &method.secret)
                .map_err(Error::internal)?;
            let secret = MethodSecret::decode(&secret).map_err(Error::internal)?;
            let refused = |why: Why, reason: &str| {
                tracing::info!(reason, "passkey response refused");
                Ok(Judged::from(Verdict::Refused(why)))
            };
            if ch.purpose == ChallengePurpose::Confirm {
                let stored =
                    match passkey::finish_registration(&rp, &response, &state, secret.name()) {
                        Ok(stored) => stored,
                        Err(Refusal::Rejected(reason)) => {
                            return refused(Why::PasskeyRejected, reason)
                        }
                        Err(Refusal::Cloned) => {
                            return refused(Why::PasskeyRejected, "counter at registration")
                        }
                    };
                let credential_hash = passkey::credential_hash(stored.credential_id());
                if store.credential_registered(&credential_hash)? {
                    return refused(Why::PasskeyRejected, "credential registered already");
                }
                let plain = MethodSecret::Registered(Box::new(stored))
                    .encode()
                    .map_err(Error::internal)?;
                return Ok(Judged {
                    verdict: Verdict::Correct { totp_step: None },
                    registered: Some(RegisteredPasskey {
                        key_id: keys.key_id().to_owned(),
                        secret: keys.seal(&plain),
                        credential_hash,
                    }),
                });
            }
            let MethodSecret::Registered(mut stored) = secret else {
                return refused(Why::PasskeyRejected, "the method has no credential yet");
            };
            // The counter last accepted is the store's (the secret keeps the one of the
            // registration): a response must move past it.
            let last = method
                .totp_last_step
                .and_then(|c| u32::try_from(c).ok())
                .unwrap_or(0);
            stored.counter = stored.counter.max(last);
            match passkey::finish_authentication(&rp, &response, &state, &mut stored) {
                Ok(()) => Ok(Judged::from(Verdict::Correct {
                    totp_step: (stored.counter > 0).then_some(i64::from(stored.counter)),
                })),
                Err(Refusal::Cloned) => refused(Why::Cloned, "signature counter went backwards"),
                Err(Refusal::Rejected(reason)) => refused(Why::PasskeyRejected, reason),
            }
        }
    }

    /// The stored form of a new passphrase method: Argon2id of the client's verifier with
    /// a fresh salt and the current pepper (one computation through the bounded pool).
    pub(crate) async fn hash_passphrase(
        &self,
        version: u32,
        verifier: SecretString,
    ) -> Result<crate::domain::passphrase::Stored, Error> {
        let salt = code::new_salt();
        let pepper_key_id = self.keys.key_id().to_owned();
        let hash = self
            .hash_code(salt, verifier, Some(pepper_key_id.clone()))
            .await?;
        Ok(crate::domain::passphrase::Stored {
            version,
            salt,
            hash,
            pepper_key_id,
        })
    }
}

/// Verifies an assertion for an endpoint that accepts `purposes` (everything but the
/// single use of its `jti`, which the write that follows enforces).
pub fn authenticate(
    store: &dyn Store,
    rules: &AssertionRules,
    token: &str,
    purposes: &[Purpose],
    now: UnixTime,
) -> Result<VerifiedAssertion, Error> {
    let unverified = assertion::inspect(token)?;
    let key = store.lookup_assertion_key(&unverified.iss, &unverified.kid)?;
    assertion::verify(&unverified, &key, rules, purposes, now)
}

/// What judging an answer takes (see [`Ghostkey::judge_inline`]).
enum Inline {
    /// The verdict, already.
    Judged(Judged),
    /// A passkey ceremony to finish (a store read, then a signature check).
    Passkey,
    /// One Argon2id computation.
    Argon2(Argon2Work),
}

/// One Argon2id computation an answer needs, and what its result must equal.
pub(crate) struct Argon2Work {
    salt: [u8; code::SALT_LEN],
    typed: SecretString,
    /// The data key whose pepper the hash is under (None: the current one).
    key_id: Option<String>,
    /// The stored hash (None: no challenge; the answer is wrong whatever the result).
    expected: Option<[u8; code::HASH_LEN]>,
}

/// What a check of an answer found, and for a passkey's accepted registration, the
/// credential to store.
pub(crate) struct Judged {
    pub verdict: Verdict,
    pub registered: Option<RegisteredPasskey>,
}

impl From<Verdict> for Judged {
    fn from(verdict: Verdict) -> Judged {
        Judged {
            verdict,
            registered: None,
        }
    }
}

/// The relying party of an app's passkeys: its RP id (policy) and its allowed origins.
/// An app whose operator set none cannot use passkeys.
pub(crate) fn passkey_rp(
    store: &dyn Store,
    policy: &AppPolicy,
    app_id: &str,
    app_name: &str,
) -> Result<webauthn_rs::Webauthn, Error> {
    let Some(rp_id) = &policy.passkey_rp_id else {
        return Err(Error::with_detail(
            ErrorCode::MethodKindNotAllowed,
            "passkeys need the app's relying-party id, which the operator sets with `ghostkey app passkey set`",
        ));
    };
    // Passkeys are made and used from the allowed origins under the RP id; the app may
    // allow others (for CORS) that have no part in them.
    let origins: Vec<String> = store
        .app_origins(app_id)?
        .into_iter()
        .filter(|o| crate::domain::passkey::origin_fits(rp_id, o))
        .collect();
    crate::domain::passkey::relying_party(rp_id, app_name, &origins).map_err(|e| {
        tracing::warn!(app = %app_id, error = %e, "an app's passkey relying party is unusable");
        Error::with_detail(
            ErrorCode::MethodKindNotAllowed,
            "the app's passkey relying party is not usable: none of its allowed web origins is under its RP id",
        )
    })
}

/// A user's answer to a challenge: a typed code (or passphrase verifier), or a passkey's
/// response.
#[derive(Clone)]
pub enum Answer {
    /// Digits, or a passphrase verifier.
    Code(SecretString),
    /// The authenticator's response, as JSON.
    WebAuthn(serde_json::Value),
}

/// Checks the shape of an answer: exactly one of a code ([`parse_code`]) and a passkey's
/// response (a JSON object).
pub fn parse_answer(
    code: Option<&str>,
    webauthn: Option<&serde_json::Value>,
    field: &str,
) -> Result<Answer, Error> {
    match (code, webauthn) {
        (Some(code), None) => parse_code(code).map(Answer::Code),
        (None, Some(response)) if response.is_object() => Ok(Answer::WebAuthn(response.clone())),
        (None, Some(_)) => Err(Error::with_detail(
            ErrorCode::InvalidField,
            format!("`{field}webauthn` must be the authenticator's response, a JSON object"),
        )),
        _ => Err(Error::with_detail(
            ErrorCode::InvalidField,
            format!("give exactly one of `{field}code` and `{field}webauthn`"),
        )),
    }
}

/// Checks the shape of a proof (its challenge id as any id in a path: 1 to 64 of
/// `A-Z a-z 0-9 _ -`, as the API document says) and returns its answer; a malformed proof
/// is refused before anything else looks at the request.
pub fn parse_proof(proof: &ghostkey_proto::api::Proof) -> Result<Answer, Error> {
    let id = &proof.challenge_id;
    let id_ok = (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !id_ok {
        return Err(Error::with_detail(
            ErrorCode::InvalidField,
            "`proof.challenge_id` must be 1 to 64 of A-Z a-z 0-9 _ -",
        ));
    }
    parse_answer(proof.code.as_deref(), proof.webauthn.as_ref(), "proof.")
}

/// Checks the shape of an answer: a typed code of 4 to 10 digits, or a passphrase
/// verifier (43 base64url characters). Junk is refused before it costs an attempt or a
/// hash; whether the shape fits the challenge's method is checked once it is loaded.
pub fn parse_code(code: &str) -> Result<SecretString, Error> {
    let code = code.trim();
    if ((4..=10).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_digit()))
        || crate::domain::passphrase::well_formed(code)
    {
        Ok(SecretString::from(code.to_owned()))
    } else {
        Err(Error::with_detail(
            ErrorCode::InvalidField,
            "`code` must be 4 to 10 digits, or a passphrase verifier (43 base64url characters)",
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use secrecy::SecretString;

    use super::{Answer, Ghostkey, WaitLine};
    use crate::clock::UnixTime;
    use crate::domain::assertion::AssertionRules;
    use crate::domain::challenge::{Challenge, ChallengePurpose, ChallengeState, Verdict};
    use crate::domain::code::{self, CodeScheme, StoredCode, COMPARISONS};
    use crate::domain::method::{Method, MethodState};
    use crate::domain::policy::{AppPolicy, MethodKind};
    use crate::keys::{DataKey, ServerKeys};
    use crate::store::SqliteStore;

    const NOW: UnixTime = 1_800_000_000;

    fn service(dir: &std::path::Path, keys: ServerKeys) -> Ghostkey {
        let store = SqliteStore::open(
            &dir.join("g.db"),
            crate::config::Synchronous::Full,
            std::time::Duration::from_secs(1),
        )
        .unwrap();
        Ghostkey::new(
            Arc::new(store),
            Arc::new(crate::clock::SystemClock),
            AssertionRules {
                service_id: "test".into(),
                max_lifetime_secs: 300,
                max_clock_skew_secs: 30,
            },
            Arc::new(keys),
            1,
        )
    }

    type Found = (Challenge, Method, AppPolicy);

    fn sms_challenge(code: Option<StoredCode>, key_id: &str) -> Found {
        let challenge = Challenge {
            id: "ch_1".into(),
            app_id: "app".into(),
            user_id: "u".into(),
            method_id: "m_1".into(),
            purpose: ChallengePurpose::Recover,
            code,
            code_key_id: Some(key_id.into()),
            attempts: 0,
            max_attempts: 3,
            state: ChallengeState::Open,
            created_at: NOW,
            expires_at: NOW + 600,
            opened_by: None,
            ceremony: None,
        };
        let method = Method {
            id: "m_1".into(),
            app_id: "app".into(),
            user_id: "u".into(),
            kind: MethodKind::Sms,
            state: MethodState::Confirmed,
            key_id: key_id.into(),
            secret: Vec::new(),
            destination_mac: None,
            totp_last_step: None,
            created_at: NOW,
            confirmed_at: Some(NOW),
        };
        (challenge, method, AppPolicy::default())
    }

    fn comparisons() -> u64 {
        COMPARISONS.with(std::cell::Cell::get)
    }

    fn hashes(service: &Ghostkey) -> usize {
        service
            .metrics()
            .render()
            .lines()
            .find_map(|l| l.strip_prefix("ghostkey_code_hashes_total ")?.parse().ok())
            .unwrap_or(0)
    }

    // Every way a typed SMS or e-mail code is judged ends in exactly one constant-time
    // comparison (`code::hashes_equal`): under the MAC of the current key or of a retired
    // one, right or wrong, an unknown challenge (through Argon2 only when the answer has a
    // passphrase verifier's shape, like a wrong verifier), a challenge with nothing
    // stored, an Argon2id code stored before version 7, right or wrong, and one past its
    // expiry.
    // Not timed: the comparisons are counted on this thread (the test runtime's).
    #[tokio::test]
    async fn every_code_check_path_makes_one_constant_time_comparison() {
        let dir = tempfile::tempdir().unwrap();
        let old = DataKey::from_bytes([1; 32]);
        let current = DataKey::from_bytes([2; 32]);
        let keys = ServerKeys::derive(&current).with_retired(&[DataKey::from_bytes([1; 32])]);
        let right = SecretString::from("12345678".to_owned());
        let wrong = SecretString::from("12345670".to_owned());
        let verifier = SecretString::from("A".repeat(43));
        let mac_now = code::store(keys.code_mac_key(), &right);
        let mac_old = code::store(keys.code_mac_key_for(old.id()).unwrap(), &right);
        let salt = code::new_salt();
        let argon = StoredCode {
            scheme: CodeScheme::Argon2id,
            salt,
            hash: code::hash(
                &mut code::Argon2Memory::new().unwrap(),
                keys.code_pepper_for(old.id()).unwrap(),
                &salt,
                "12345678",
            )
            .unwrap(),
        };
        let mut service = service(dir.path(), keys);
        // One Argon2 slot and a line of one: while the test holds both, any Argon2 work
        // would be turned away with `unavailable`.
        service.argon2 = Arc::new(super::Argon2Pool::new(1, 1));
        let pool = Arc::clone(&service.argon2);
        let mut expired = sms_challenge(Some(argon), old.id());
        expired.0.expires_at = NOW;
        let found =
            |stored: Option<StoredCode>, key: &DataKey| Some(sms_challenge(stored, key.id()));
        #[rustfmt::skip]
        let cases: Vec<(&str, Option<Found>, &SecretString, bool, bool)> = vec![
            // (case, challenge, typed code, accepted, through Argon2)
            ("mac, right", found(Some(mac_now), &current), &right, true, false),
            ("mac, wrong", found(Some(mac_now), &current), &wrong, false, false),
            ("mac under a retired key, right", found(Some(mac_old), &old), &right, true, false),
            ("mac under another key id", found(Some(mac_old), &current), &right, false, false),
            ("unknown challenge", None, &right, false, false),
            ("unknown challenge, a passphrase verifier", None, &verifier, false, true),
            ("nothing stored", found(None, &current), &right, false, false),
            ("argon2id before version 7, right", found(Some(argon), &old), &right, true, true),
            ("argon2id before version 7, wrong", found(Some(argon), &old), &wrong, false, true),
            ("argon2id, expired", Some(expired), &right, false, false),
        ];
        for (name, found, typed, accepted, argon2) in cases {
            let full = || {
                (
                    pool.permits.try_acquire().unwrap(),
                    pool.line.join().unwrap(),
                )
            };
            if argon2 {
                // Through the pool: turned away while it is full, nothing compared.
                let busy = full();
                let before = comparisons();
                let refused = service
                    .judge(found.as_ref(), &Answer::Code(typed.clone()), NOW)
                    .await
                    .unwrap_err();
                assert_eq!(
                    refused.code,
                    ghostkey_proto::ErrorCode::Unavailable,
                    "{name}"
                );
                assert_eq!(comparisons(), before, "{name}");
                drop(busy);
            }
            let busy = (!argon2).then(full);
            let (before, hashed) = (comparisons(), hashes(&service));
            let verdict = service
                .judge(found.as_ref(), &Answer::Code(typed.clone()), NOW)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            drop(busy);
            assert_eq!(comparisons() - before, 1, "{name}: one comparison");
            let expected = if accepted {
                Verdict::Correct { totp_step: None }
            } else {
                Verdict::Wrong
            };
            assert_eq!(verdict, expected, "{name}");
            // One code hash per check, whichever the scheme.
            assert_eq!(hashes(&service) - hashed, 1, "{name}: one hash");
        }
    }

    #[test]
    fn a_full_wait_line_turns_the_next_away_until_a_place_is_given_back() {
        let line = WaitLine::new(2);
        let a = line.join().expect("first");
        let _b = line.join().expect("second");
        assert!(line.join().is_none(), "a third waits beyond the bound");
        drop(a);
        assert!(line.join().is_some());
    }
}
