//! One-time-code challenges and the per-user guard (back-off and lock), as pure state
//! transitions: the store reads the state, calls [`settle`] inside its transaction and
//! writes back what it returns, so concurrent answers cannot overtake the limits.

use ghostkey_proto::ErrorCode;

use super::code::StoredCode;
use super::policy::AppPolicy;
use crate::clock::UnixTime;
use crate::error::Error;

/// What a correct answer to a challenge achieves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengePurpose {
    /// Confirms a newly added method (and, if it is the first, completes the enrolment).
    Confirm,
    /// A fresh proof through a confirmed method, spent by a change that needs one.
    Proof,
    /// Ghostkey's own check of the user before a release.
    Recover,
}

impl ChallengePurpose {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengePurpose::Confirm => "confirm",
            ChallengePurpose::Proof => "proof",
            ChallengePurpose::Recover => "recover",
        }
    }
}

/// Where a challenge stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeState {
    /// Waiting for the right code.
    Open,
    /// Answered correctly; never again.
    Used,
    /// Too many wrong answers; dead even for the right code.
    Dead,
}

impl ChallengeState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeState::Open => "open",
            ChallengeState::Used => "used",
            ChallengeState::Dead => "dead",
        }
    }
}

/// A stored challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Random id: the handle the client answers with.
    pub id: String,
    /// The app.
    pub app_id: String,
    /// The user.
    pub user_id: String,
    /// The method it checks.
    pub method_id: String,
    /// What it is for.
    pub purpose: ChallengePurpose,
    /// The code's scheme, salt and MAC (or, written before schema version 7, Argon2id
    /// hash) for SMS and e-mail; `None` for the other kinds.
    pub code: Option<StoredCode>,
    /// The data key whose pepper (or MAC key derived from it) hashed the code (it may have
    /// been rotated since).
    pub code_key_id: Option<String>,
    /// Wrong answers so far.
    pub attempts: u32,
    /// Wrong answers it tolerates.
    pub max_attempts: u32,
    /// Open, used or dead.
    pub state: ChallengeState,
    /// When created.
    pub created_at: UnixTime,
    /// When it stops accepting answers.
    pub expires_at: UnixTime,
    /// The purpose of the assertion that opened it: a proof authorises only requests made
    /// with an assertion of the same purpose (`None` on challenges opened before version 2).
    pub opened_by: Option<ghostkey_proto::assertion::Purpose>,
    /// For a passkey method: the WebAuthn ceremony's state (its random challenge, and for
    /// an authentication the credential allowed), encrypted under the data key
    /// `code_key_id`. Kept server-side so that the response can only answer this
    /// challenge, once.
    pub ceremony: Option<Vec<u8>>,
}

/// A user's failure record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Guard {
    /// Failures since the last success.
    pub failures: u32,
    /// No code is checked before this time.
    pub backoff_until: UnixTime,
    /// When the user was locked, if they are.
    pub locked_at: Option<UnixTime>,
    /// The rolling failure budget: failures in the last [`FAILURE_WINDOW_SECS`], whatever
    /// happened since (a success, an unlock). Read from the store; never reset by a settle.
    pub window: FailureWindow,
}

/// Failed checks of one user in the last [`FAILURE_WINDOW_SECS`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailureWindow {
    /// How many.
    pub count: u32,
    /// When the oldest of them happened.
    pub oldest: Option<UnixTime>,
}

/// The length of the rolling window of the per-user failure budget.
pub const FAILURE_WINDOW_SECS: i64 = 86_400;

/// Whether a lock stops the check. Only the proof that lifts a lock is checked despite it;
/// the failure budget and the back-off hold even then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockRule {
    /// A locked user's codes are not checked.
    Enforce,
    /// The answer is the proof that lifts the lock.
    Lift,
}

/// The result of checking the code itself (done before the transaction: Argon2 is slow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The code is right; for TOTP, the step it belongs to.
    Correct {
        /// The TOTP step matched, if the method is TOTP; for a passkey, its signature
        /// counter when it keeps one (both must move forward: the store keeps the last one
        /// in the method's `totp_last_step`).
        totp_step: Option<i64>,
    },
    /// The code is wrong.
    Wrong,
    /// A passkey's response was refused: a failure like a wrong code, answered with its
    /// own error code.
    Refused(Refusal),
}

/// Why a passkey's response was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It does not verify (`passkey_rejected`).
    PasskeyRejected,
    /// Its signature counter went backwards: a copy of the credential may exist
    /// (`authenticator_cloned`; the user is told).
    Cloned,
}

/// What happened to an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Right code: the challenge is used.
    Accepted,
    /// Wrong code: counted.
    Wrong,
    /// Wrong code, and the user is now locked.
    WrongAndLocked,
    /// A passkey's response refused: counted like a wrong code.
    Refused(Refusal),
    /// The challenge expired; nothing counted.
    Expired,
    /// The challenge is dead; nothing counted.
    Dead,
    /// The challenge was already answered; nothing counted.
    AlreadyUsed,
    /// The TOTP step was already used; nothing counted.
    StepReplayed,
    /// The user is locked; nothing checked.
    Locked,
    /// The user must wait until this time; nothing checked.
    Backoff(UnixTime),
    /// The user's failure budget is spent until this time; nothing checked.
    BudgetSpent(UnixTime),
}

impl Outcome {
    /// Whether this answer was a checked, wrong code (it counts in every budget).
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Outcome::Wrong | Outcome::WrongAndLocked | Outcome::Refused(_)
        )
    }
}

impl Outcome {
    /// The error to answer with, or `None` for [`Outcome::Accepted`].
    pub fn error(self, now: UnixTime) -> Option<Error> {
        Some(match self {
            Outcome::Accepted => return None,
            Outcome::Wrong => Error::new(ErrorCode::InvalidCode),
            Outcome::Refused(Refusal::PasskeyRejected) => Error::new(ErrorCode::PasskeyRejected),
            Outcome::Refused(Refusal::Cloned) => Error::new(ErrorCode::AuthenticatorCloned),
            Outcome::WrongAndLocked | Outcome::Locked => Error::new(ErrorCode::Locked),
            Outcome::Expired => Error::new(ErrorCode::CodeExpired),
            Outcome::Dead => Error::new(ErrorCode::TooManyAttempts),
            Outcome::AlreadyUsed | Outcome::StepReplayed => Error::new(ErrorCode::CodeAlreadyUsed),
            Outcome::Backoff(until) => Error::retry_after(ErrorCode::UserBackoff, until - now),
            Outcome::BudgetSpent(until) => {
                Error::retry_after(ErrorCode::FailureBudgetExhausted, until - now)
            }
        })
    }
}

/// The new state after an answer: what to write back, and what to tell the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement {
    /// What happened.
    pub outcome: Outcome,
    /// The challenge's new attempt count.
    pub attempts: u32,
    /// The challenge's new state.
    pub state: ChallengeState,
    /// The user's new guard.
    pub guard: Guard,
    /// The TOTP step to record as used, on success.
    pub totp_step: Option<i64>,
}

/// Longest back-off, so that a user below the lock threshold is never shut out for long.
pub const MAX_BACKOFF_SECS: i64 = 3600;

/// Back-off after `failures` failures: `base * 2^(failures-1)`, capped.
pub fn backoff_secs(base: i64, failures: u32) -> i64 {
    if failures == 0 || base == 0 {
        return 0;
    }
    let doublings = failures.saturating_sub(1).min(20);
    base.saturating_mul(1i64 << doublings).min(MAX_BACKOFF_SECS)
}

/// The refusal an answer to `challenge` gets whatever its code, before the code is looked
/// at: the user locked, out of failure budget or in back-off, the challenge used, dead or
/// expired. `None`: the answer is checked. Such answers count nothing, and do not spend the
/// app's ceiling on checks either (one user answering a spent challenge from many
/// addresses must not use up every other user's checks).
pub fn refused_before_check(
    challenge: &Challenge,
    guard: &Guard,
    policy: &AppPolicy,
    now: UnixTime,
    lock: LockRule,
) -> Option<Outcome> {
    if guard.locked_at.is_some() && lock == LockRule::Enforce {
        return Some(Outcome::Locked);
    }
    // The budget comes before everything that looks at the code: a spent budget answers
    // the same whether the code is right or wrong.
    if let Some(until) = budget_spent_until(guard, policy, now) {
        return Some(Outcome::BudgetSpent(until));
    }
    match challenge.state {
        ChallengeState::Used => return Some(Outcome::AlreadyUsed),
        ChallengeState::Dead => return Some(Outcome::Dead),
        ChallengeState::Open => {}
    }
    if now >= challenge.expires_at {
        return Some(Outcome::Expired);
    }
    if now < guard.backoff_until {
        return Some(Outcome::Backoff(guard.backoff_until));
    }
    None
}

/// Settles an answer to `challenge` given the code `verdict`, the user's `guard`, the
/// method's last used TOTP step, the app's `policy` and the time.
pub fn settle(
    challenge: &Challenge,
    guard: &Guard,
    verdict: Verdict,
    totp_last_step: Option<i64>,
    policy: &AppPolicy,
    now: UnixTime,
) -> Settlement {
    settle_with(
        challenge,
        guard,
        verdict,
        totp_last_step,
        policy,
        now,
        LockRule::Enforce,
    )
}

/// When the user's failure budget is spent at `now`, the time it has room again.
pub fn budget_spent_until(guard: &Guard, policy: &AppPolicy, now: UnixTime) -> Option<UnixTime> {
    if guard.window.count < policy.user_failures_per_day {
        return None;
    }
    // The budget is back when the oldest failure leaves the window.
    let until = guard.window.oldest.unwrap_or(now) + FAILURE_WINDOW_SECS;
    Some(until.max(now + 1))
}

/// [`settle`], with the lock enforced or (for the proof that lifts it) not.
pub fn settle_with(
    challenge: &Challenge,
    guard: &Guard,
    verdict: Verdict,
    totp_last_step: Option<i64>,
    policy: &AppPolicy,
    now: UnixTime,
    lock: LockRule,
) -> Settlement {
    let unchanged = |outcome| Settlement {
        outcome,
        attempts: challenge.attempts,
        state: challenge.state,
        guard: *guard,
        totp_step: None,
    };
    if let Some(outcome) = refused_before_check(challenge, guard, policy, now, lock) {
        return unchanged(outcome);
    }
    match verdict {
        Verdict::Correct { totp_step } => {
            if let (Some(step), Some(last)) = (totp_step, totp_last_step) {
                if step <= last {
                    return unchanged(Outcome::StepReplayed);
                }
            }
            Settlement {
                outcome: Outcome::Accepted,
                attempts: challenge.attempts,
                state: ChallengeState::Used,
                // A success clears the back-off and the lock, never the rolling budget.
                guard: Guard {
                    window: guard.window,
                    ..Guard::default()
                },
                totp_step,
            }
        }
        Verdict::Wrong | Verdict::Refused(_) => {
            let attempts = challenge.attempts.saturating_add(1);
            let state = if attempts >= challenge.max_attempts {
                ChallengeState::Dead
            } else {
                ChallengeState::Open
            };
            let failures = guard.failures.saturating_add(1);
            let locked = failures >= policy.user_lock_threshold;
            // No back-off means none at all: `now` is when this request read the clock, and
            // a parallel answer that read it a second earlier must not be told to wait.
            let wait = backoff_secs(policy.user_backoff_base_secs, failures);
            let guard = Guard {
                failures,
                backoff_until: if wait > 0 { now + wait } else { 0 },
                // A lock stays from when it was first set.
                locked_at: guard.locked_at.or(locked.then_some(now)),
                window: FailureWindow {
                    count: guard.window.count.saturating_add(1),
                    oldest: guard.window.oldest.or(Some(now)),
                },
            };
            Settlement {
                outcome: match (locked, verdict) {
                    (true, _) => Outcome::WrongAndLocked,
                    (false, Verdict::Refused(why)) => Outcome::Refused(why),
                    (false, _) => Outcome::Wrong,
                },
                attempts,
                state,
                guard,
                totp_step: None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: UnixTime = 1_800_000_000;

    fn challenge() -> Challenge {
        Challenge {
            id: "ch_1".into(),
            app_id: "app".into(),
            user_id: "u".into(),
            method_id: "m_1".into(),
            purpose: ChallengePurpose::Confirm,
            code: None,
            code_key_id: None,
            attempts: 0,
            max_attempts: 3,
            state: ChallengeState::Open,
            created_at: NOW,
            expires_at: NOW + 600,
            opened_by: None,
            ceremony: None,
        }
    }

    fn policy() -> AppPolicy {
        AppPolicy {
            user_backoff_base_secs: 0,
            ..AppPolicy::default()
        }
    }

    #[test]
    fn three_wrong_answers_kill_the_challenge_even_for_the_right_code() {
        let mut ch = challenge();
        let mut guard = Guard::default();
        for i in 1..=3 {
            let s = settle(&ch, &guard, Verdict::Wrong, None, &policy(), NOW);
            assert_eq!(s.outcome, Outcome::Wrong);
            assert_eq!(s.attempts, i);
            ch.attempts = s.attempts;
            ch.state = s.state;
            guard = s.guard;
        }
        assert_eq!(ch.state, ChallengeState::Dead);
        let s = settle(
            &ch,
            &guard,
            Verdict::Correct { totp_step: None },
            None,
            &policy(),
            NOW,
        );
        assert_eq!(s.outcome, Outcome::Dead);
        assert_eq!(s.attempts, 3);
    }

    #[test]
    fn right_code_is_single_use_and_resets_failures() {
        let ch = challenge();
        let guard = Guard {
            failures: 2,
            backoff_until: 0,
            locked_at: None,
            ..Guard::default()
        };
        let s = settle(
            &ch,
            &guard,
            Verdict::Correct { totp_step: None },
            None,
            &policy(),
            NOW,
        );
        assert_eq!(
            (s.outcome, s.state, s.guard.failures),
            (Outcome::Accepted, ChallengeState::Used, 0)
        );
        let used = Challenge {
            state: s.state,
            ..ch
        };
        let s = settle(
            &used,
            &s.guard,
            Verdict::Correct { totp_step: None },
            None,
            &policy(),
            NOW,
        );
        assert_eq!(s.outcome, Outcome::AlreadyUsed);
    }

    #[test]
    fn expiry_backoff_lock_and_totp_replay_count_nothing() {
        let ch = challenge();
        let g = Guard::default();
        let right = Verdict::Correct {
            totp_step: Some(10),
        };
        assert_eq!(
            settle(&ch, &g, right, None, &policy(), NOW + 600).outcome,
            Outcome::Expired
        );
        assert_eq!(
            settle(&ch, &g, right, None, &policy(), NOW + 599).outcome,
            Outcome::Accepted
        );
        assert_eq!(
            settle(&ch, &g, right, Some(10), &policy(), NOW).outcome,
            Outcome::StepReplayed
        );
        assert_eq!(
            settle(&ch, &g, right, Some(9), &policy(), NOW).totp_step,
            Some(10)
        );
        let waiting = Guard {
            failures: 1,
            backoff_until: NOW + 5,
            locked_at: None,
            ..Guard::default()
        };
        let s = settle(&ch, &waiting, Verdict::Wrong, None, &policy(), NOW);
        assert_eq!((s.outcome, s.attempts), (Outcome::Backoff(NOW + 5), 0));
        let locked = Guard {
            failures: 10,
            backoff_until: 0,
            locked_at: Some(NOW - 1),
            ..Guard::default()
        };
        assert_eq!(
            settle(&ch, &locked, right, None, &policy(), NOW).outcome,
            Outcome::Locked
        );
    }

    #[test]
    fn failures_back_off_exponentially_then_lock() {
        let p = AppPolicy {
            user_backoff_base_secs: 2,
            user_lock_threshold: 4,
            ..AppPolicy::default()
        };
        let mut guard = Guard::default();
        let mut now = NOW;
        let mut delays = Vec::new();
        for _ in 0..4 {
            let s = settle(&challenge(), &guard, Verdict::Wrong, None, &p, now);
            guard = s.guard;
            delays.push(guard.backoff_until - now);
            now = guard.backoff_until;
            if s.outcome == Outcome::WrongAndLocked {
                break;
            }
        }
        assert_eq!(delays, vec![2, 4, 8, 16]);
        assert!(guard.locked_at.is_some());
        assert_eq!(backoff_secs(2, 40), MAX_BACKOFF_SECS);
    }

    #[test]
    fn the_rolling_budget_stops_every_check_and_no_success_or_lift_resets_it() {
        let p = AppPolicy {
            user_backoff_base_secs: 0,
            user_lock_threshold: 100,
            user_failures_per_day: 3,
            ..AppPolicy::default()
        };
        let right = Verdict::Correct { totp_step: None };
        let mut guard = Guard::default();
        for i in 0..3 {
            let s = settle(&challenge(), &guard, Verdict::Wrong, None, &p, NOW + i);
            assert!(s.outcome.is_failure());
            guard = s.guard;
        }
        assert_eq!(guard.window.count, 3);
        assert_eq!(guard.window.oldest, Some(NOW));
        // Spent: a right code is not even checked, and the proof that lifts a lock neither.
        for lock in [LockRule::Enforce, LockRule::Lift] {
            let s = settle_with(&challenge(), &guard, right, None, &p, NOW + 10, lock);
            assert_eq!(s.outcome, Outcome::BudgetSpent(NOW + FAILURE_WINDOW_SECS));
            assert_eq!(s.attempts, 0);
        }
        let e = Outcome::BudgetSpent(NOW + FAILURE_WINDOW_SECS)
            .error(NOW + 10)
            .unwrap();
        assert_eq!(e.code, ErrorCode::FailureBudgetExhausted);
        // A success before the budget is spent keeps the window.
        let mut two = guard;
        two.window.count = 2;
        let s = settle(&challenge(), &two, right, None, &p, NOW + 10);
        assert_eq!((s.outcome, s.guard.window), (Outcome::Accepted, two.window));
    }

    #[test]
    fn only_the_lifting_proof_is_checked_while_locked() {
        let locked = Guard {
            failures: 10,
            locked_at: Some(NOW - 1),
            ..Guard::default()
        };
        let right = Verdict::Correct { totp_step: None };
        let s = settle_with(
            &challenge(),
            &locked,
            right,
            None,
            &policy(),
            NOW,
            LockRule::Lift,
        );
        assert_eq!(s.outcome, Outcome::Accepted);
        assert_eq!(s.guard.locked_at, None);
        let s = settle_with(
            &challenge(),
            &locked,
            Verdict::Wrong,
            None,
            &policy(),
            NOW,
            LockRule::Lift,
        );
        assert_eq!(s.outcome, Outcome::WrongAndLocked);
        assert_eq!(s.guard.locked_at, Some(NOW - 1));
        assert_eq!(s.guard.window.count, 1);
    }

    #[test]
    fn without_a_back_off_base_a_wrong_answer_makes_no_one_wait() {
        let p = AppPolicy {
            user_backoff_base_secs: 0,
            ..AppPolicy::default()
        };
        let s = settle(
            &challenge(),
            &Guard::default(),
            Verdict::Wrong,
            None,
            &p,
            NOW + 1,
        );
        assert_eq!(s.outcome, Outcome::Wrong);
        assert_eq!(s.guard.backoff_until, 0);
        // A parallel answer whose clock read came a second earlier is still judged.
        let late = settle(&challenge(), &s.guard, Verdict::Wrong, None, &p, NOW);
        assert_eq!(late.outcome, Outcome::Wrong);
        assert_eq!(late.guard.failures, 2);
    }
}
