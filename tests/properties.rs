//! Property test of the code-check rules (`src/domain/challenge.rs`) as the service
//! threads them between the challenges of one user.
//!
//! Each case is one user of one app with a random policy (caps 1..=8, lock thresholds,
//! back-off bases, daily failure budgets, code lifetimes), one TOTP method and one SMS
//! method, and 1..=4 challenges on them that share the user's guard and the TOTP method's
//! last used step, answered interleaved: right and wrong codes, the previous TOTP step, a
//! replayed TOTP step, an older one, proofs sent to `POST /v1/users/unlock`, new
//! challenges, the operator's `ghostkey user unlock`. Between answers the clock moves
//! mostly by seconds, sometimes past a code's lifetime or a back-off, sometimes by hours
//! (past the longest back-off, to the edge of the 24-hour failure window and past it), and
//! sometimes back by a few seconds (two concurrent requests, or two nodes, that read the
//! clock in one order and commit in the other). A second run stays at the edge of the
//! failure budget's day: no back-off, small budgets, answers out of clock order (it found
//! the store forgetting failures that a request committing later still counts, see
//! `tests/failure_budget_edge.rs`).
//!
//! The harness keeps what the store keeps (`src/store/sqlite/challenges.rs`, `settle_in`): the guard
//! without its window, the user's failure rows (those two days old dropped when a new one
//! is written), the window recomputed from them before each check, the TOTP step recorded
//! only when it is newer. Every answer is compared, field by field, with a reference model
//! written out from SECURITY.md, and the history is checked against the promises directly:
//! no challenge counts more wrong answers than its cap, none accepts twice or once dead,
//! used, expired, locked, in back-off or with the budget spent; a TOTP step is accepted at
//! most once; no 24 hours hold more failures than the budget; a lock holds until a proof
//! lifts it or the operator does; refusals change nothing.
//!
//! Each run counts how often each interesting state was reached, prints the counts
//! (`cargo test --test properties -- --nocapture --test-threads 1`) and fails if a state
//! was reached in fewer cases than its minimum, so that generators which stop reaching a
//! state fail too.

use std::cell::RefCell;
use std::collections::BTreeSet;

use ghostkey::domain::challenge::{
    settle_with, Challenge, ChallengePurpose, ChallengeState, FailureWindow, Guard, LockRule,
    Outcome, Settlement, Verdict, FAILURE_WINDOW_SECS, MAX_BACKOFF_SECS,
};
use ghostkey::domain::policy::AppPolicy;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};

const DAY: i64 = FAILURE_WINDOW_SECS;
const TOTP_STEP: i64 = 30;
const START: i64 = 1_800_000_000;
const CASES: u32 = 2_000;

// ---------------------------------------------------------------------------------------
// What a case is made of.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Totp,
    Sms,
}

/// What the user (or the attacker) types.
#[derive(Debug, Clone, Copy)]
enum Code {
    /// The right code now: an SMS code, or the current TOTP step.
    Right,
    /// An SMS code again, or the TOTP code of the previous step (still accepted).
    Previous,
    /// An SMS code again, or the TOTP code of the method's last used step (a replay: right
    /// while that step is the current or the previous one, wrong once older).
    Replay,
    /// An SMS code again, or the TOTP code of the step before the method's last used one
    /// (seen over the user's shoulder: right while in the window, refused as older).
    Older,
    /// A wrong code.
    Wrong,
}

#[derive(Debug, Clone, Copy)]
enum Action {
    /// An answer through the ordinary endpoints (the lock enforced). With `live`, `slot`
    /// counts among the open, unexpired challenges (a client answers the one it holds);
    /// without, among all of them (used, dead and expired ones too).
    Answer { slot: usize, code: Code, live: bool },
    /// `POST /v1/users/unlock` with a proof answered through this slot (only a proof
    /// challenge is settled, with the lock lifted for it).
    Unlock { slot: usize, code: Code, live: bool },
    /// A new challenge in this slot (refused while locked unless it is a proof).
    Reopen {
        slot: usize,
        kind: Kind,
        proof: bool,
    },
    /// `ghostkey user unlock`: guard and failure rows cleared.
    OperatorUnlock,
}

/// A case as drawn: numbers that [`Case::steps`] decodes. Drawing plain integers keeps the
/// run fast in a debug build, and each shrinks towards the simplest step (no wait, the
/// right code on the first challenge).
#[derive(Clone)]
struct Case {
    max_attempts: u32,
    lock_threshold: u32,
    backoff_base: i64,
    failures_per_day: u32,
    lifetime: i64,
    /// Out of 100 answers, how many are wrong: a user who mistypes, or a guesser.
    wrong_percent: u32,
    /// Whether most actions go to the first challenge.
    focused: bool,
    /// Whether the clock moves as [`decode_edge_wait`] says (else [`decode_wait`]).
    edge: bool,
    challenges: Vec<(Kind, bool)>,
    raw_steps: Vec<(u32, u32)>,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case")
            .field("max_attempts", &self.max_attempts)
            .field("lock_threshold", &self.lock_threshold)
            .field("backoff_base", &self.backoff_base)
            .field("failures_per_day", &self.failures_per_day)
            .field("lifetime", &self.lifetime)
            .field("wrong_percent", &self.wrong_percent)
            .field("focused", &self.focused)
            .field("edge", &self.edge)
            .field("challenges", &self.challenges)
            .field(
                "steps (wait, action)",
                &self
                    .steps()
                    .iter()
                    .map(|(w, a)| format!("{w:?} {a:?}"))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// How the clock moves before a step.
#[derive(Debug, Clone, Copy)]
enum Wait {
    /// By this many seconds (a few back: two concurrent requests that read the clock in
    /// one order and commit in the other).
    By(i64),
    /// To this many seconds from the moment the user's oldest counted failure is a day
    /// old (the edge of the failure budget's window), if that is ahead.
    ToBudgetEdge(i64),
}

/// Mostly seconds; sometimes past a lifetime or a back-off; sometimes hours, past the
/// longest back-off, to the last hour of the failure window's day or past it, or to the
/// very edge of that day; sometimes a few seconds back.
fn decode_wait(r: u32) -> Wait {
    let x = i64::from(r / 100);
    match r % 100 {
        0..78 => Wait::By(x % 30),
        78..85 => Wait::By(30 + x % 1_170),
        85..89 => Wait::By(1_200 + x % (4 * 3_600 - 1_200)),
        89..91 => Wait::By(23 * 3_600 + x % 3_600),
        91..92 => Wait::By(DAY + x % DAY),
        92..97 => Wait::ToBudgetEdge(x % 3 - 1),
        _ => Wait::By(-1 - x % 3),
    }
}

/// For the edge of the budget's day: within a second or at once, to the edge, in the last
/// hour before it, or a few seconds back.
fn decode_edge_wait(r: u32) -> Wait {
    let x = i64::from(r / 100);
    match r % 100 {
        0..50 => Wait::By(x % 2),
        50..60 => Wait::By(23 * 3_600 + x % 3_600),
        60..80 => Wait::ToBudgetEdge(x % 3 - 1),
        _ => Wait::By(-1 - x % 3),
    }
}

impl Case {
    fn code(&self, r: u32) -> Code {
        let right = 100 - self.wrong_percent;
        match r % 100 {
            n if n < right * 35 / 100 => Code::Right,
            n if n < right * 60 / 100 => Code::Previous,
            n if n < right * 85 / 100 => Code::Replay,
            n if n < right => Code::Older,
            _ => Code::Wrong,
        }
    }

    fn action(&self, r: u32) -> Action {
        // A focused case answers mostly the first challenge, so that one challenge sees
        // long runs of answers (caps above 3); otherwise the challenges interleave evenly.
        let pick = (r / 100) as usize;
        let slot = match (pick % 8, self.focused) {
            (7, true) => 1 + pick / 8 % 3,
            (_, true) => 0,
            (n, false) => n % 4,
        };
        let code = self.code(r / 800);
        let live = !(r / 9_600).is_multiple_of(5);
        match r % 100 {
            0..66 => Action::Answer { slot, code, live },
            66..78 => Action::Unlock { slot, code, live },
            78..98 => Action::Reopen {
                slot,
                kind: if (r / 800) % 3 != 2 {
                    Kind::Totp
                } else {
                    Kind::Sms
                },
                proof: (r / 1_600).is_multiple_of(2),
            },
            _ => Action::OperatorUnlock,
        }
    }

    fn steps(&self) -> Vec<(Wait, Action)> {
        self.raw_steps
            .iter()
            .map(|&(w, a)| {
                let wait = if self.edge {
                    decode_edge_wait(w)
                } else {
                    decode_wait(w)
                };
                (wait, self.action(a))
            })
            .collect()
    }
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![2 => Just(Kind::Totp), 1 => Just(Kind::Sms)]
}

fn case() -> impl Strategy<Value = Case> {
    (
        (
            1u32..=8,
            prop_oneof![1u32..=4, 5u32..=15],
            prop_oneof![2 => Just(0i64), 6 => 1i64..=8, 1 => 30i64..=600],
            prop_oneof![1u32..=6, 7u32..=20],
            60i64..=3_600,
            prop_oneof![Just(30u32), Just(50), Just(85)],
            any::<bool>(),
        ),
        prop::collection::vec((kind(), any::<bool>()), 1..=4),
        prop::collection::vec((any::<u32>(), any::<u32>()), 10..=80),
    )
        .prop_map(
            |(
                (
                    max_attempts,
                    lock_threshold,
                    backoff_base,
                    failures_per_day,
                    lifetime,
                    wrong_percent,
                    focused,
                ),
                challenges,
                raw_steps,
            )| Case {
                max_attempts,
                lock_threshold,
                backoff_base,
                failures_per_day,
                lifetime,
                wrong_percent,
                focused,
                edge: false,
                challenges,
                raw_steps,
            },
        )
}

/// Cases at the edge of the failure budget's day: no back-off (with one, a request that
/// read the clock before the last failure is told to wait), no lock before the budget, a
/// small budget spent within seconds, the clock at the edge and answers committed out of
/// clock order.
fn edge_case() -> impl Strategy<Value = Case> {
    (
        1u32..=8,
        2u32..=5,
        60i64..=3_600,
        prop_oneof![Just(50u32), Just(85)],
        any::<bool>(),
        prop::collection::vec((kind(), any::<bool>()), 1..=4),
        prop::collection::vec((any::<u32>(), any::<u32>()), 10..=80),
    )
        .prop_map(
            |(
                max_attempts,
                failures_per_day,
                lifetime,
                wrong_percent,
                focused,
                challenges,
                raw_steps,
            )| {
                Case {
                    max_attempts,
                    lock_threshold: 100,
                    backoff_base: 0,
                    failures_per_day,
                    lifetime,
                    wrong_percent,
                    focused,
                    edge: true,
                    challenges,
                    raw_steps,
                }
            },
        )
}

// ---------------------------------------------------------------------------------------
// The reference model: SECURITY.md's rules, written out plainly and independently of
// `settle`.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Expected {
    outcome: Outcome,
    wrongs: u32,
    used: bool,
    in_a_row: u32,
    wait_until: i64,
    locked_since: Option<i64>,
    step_recorded: Option<i64>,
}

#[derive(Debug, Clone, Copy)]
struct ModelChallenge {
    wrongs: u32,
    cap: u32,
    used: bool,
    expires: i64,
}

#[derive(Debug, Default)]
struct Model {
    /// Wrong answers since the last success or unlock.
    in_a_row: u32,
    /// No code is looked at before this.
    wait_until: i64,
    /// Since when the user is locked.
    locked_since: Option<i64>,
    /// When the user's failures happened (the store forgets those two days old whenever it
    /// writes a new one).
    failures: Vec<i64>,
    /// The TOTP method's newest accepted step.
    last_step: Option<i64>,
}

/// The documented back-off: `base`, doubled with each further failure, at most an hour.
fn model_backoff(base: i64, in_a_row: u32) -> i64 {
    if base == 0 || in_a_row == 0 {
        return 0;
    }
    let mut delay = base;
    for _ in 1..in_a_row {
        delay = (delay * 2).min(MAX_BACKOFF_SECS);
    }
    delay.min(MAX_BACKOFF_SECS)
}

impl Model {
    fn answer(
        &mut self,
        p: &AppPolicy,
        ch: &mut ModelChallenge,
        verdict: Verdict,
        now: i64,
        lifting: bool,
    ) -> Outcome {
        // A lock stops every check but the proof that lifts it.
        if self.locked_since.is_some() && !lifting {
            return Outcome::Locked;
        }
        // The failure budget stops every check, right or wrong, until its oldest failure
        // is a day old.
        let recent: Vec<i64> = self
            .failures
            .iter()
            .copied()
            .filter(|&t| t > now - DAY)
            .collect();
        if recent.len() as u32 >= p.user_failures_per_day {
            let oldest = recent.iter().copied().min().unwrap_or(now);
            return Outcome::BudgetSpent((oldest + DAY).max(now + 1));
        }
        if ch.used {
            return Outcome::AlreadyUsed;
        }
        if ch.wrongs >= ch.cap {
            return Outcome::Dead;
        }
        if now >= ch.expires {
            return Outcome::Expired;
        }
        if now < self.wait_until {
            return Outcome::Backoff(self.wait_until);
        }
        match verdict {
            Verdict::Correct { totp_step } => {
                if let (Some(step), Some(last)) = (totp_step, self.last_step) {
                    if step <= last {
                        return Outcome::StepReplayed;
                    }
                }
                ch.used = true;
                self.in_a_row = 0;
                self.wait_until = 0;
                self.locked_since = None;
                if let Some(step) = totp_step {
                    self.last_step = Some(self.last_step.map_or(step, |l| l.max(step)));
                }
                Outcome::Accepted
            }
            Verdict::Wrong | Verdict::Refused(_) => {
                ch.wrongs += 1;
                self.in_a_row += 1;
                let delay = model_backoff(p.user_backoff_base_secs, self.in_a_row);
                self.wait_until = if delay > 0 { now + delay } else { 0 };
                self.failures.retain(|&t| t > now - 2 * DAY);
                self.failures.push(now);
                if self.in_a_row >= p.user_lock_threshold {
                    self.locked_since.get_or_insert(now);
                    Outcome::WrongAndLocked
                } else if let Verdict::Refused(why) = verdict {
                    Outcome::Refused(why)
                } else {
                    Outcome::Wrong
                }
            }
        }
    }

    fn operator_unlock(&mut self) {
        self.in_a_row = 0;
        self.wait_until = 0;
        self.locked_since = None;
        self.failures.clear();
    }
}

// ---------------------------------------------------------------------------------------
// What the store keeps between requests, threaded as `settle_in` threads it.

struct Slot {
    challenge: Challenge,
    kind: Kind,
    proof: bool,
    model: ModelChallenge,
    accepted: u32,
}

struct Store {
    /// The guard as saved (its window is never saved: it is read from the rows).
    guard: Guard,
    /// The `user_failures` rows.
    rows: Vec<i64>,
    /// The TOTP method's `totp_last_step`.
    totp_last_step: Option<i64>,
    slots: Vec<Slot>,
    next_id: u32,
}

impl Store {
    fn window(&self, now: i64) -> FailureWindow {
        let recent = self.rows.iter().copied().filter(|&t| t > now - DAY);
        FailureWindow {
            count: recent.clone().count() as u32,
            oldest: recent.min(),
        }
    }

    /// The challenge an answer goes to, among the proof challenges only with `proof`: the
    /// `slot`-th open, unexpired one with `live` (when there is one), the `slot`-th of all
    /// otherwise.
    fn target(&self, slot: usize, live: bool, proof: bool, now: i64) -> Option<usize> {
        let all: Vec<usize> = (0..self.slots.len())
            .filter(|&i| !proof || self.slots[i].proof)
            .collect();
        let open: Vec<usize> = all
            .iter()
            .copied()
            .filter(|&i| {
                let ch = &self.slots[i].challenge;
                ch.state == ChallengeState::Open && now < ch.expires_at
            })
            .collect();
        let among = if live && !open.is_empty() { open } else { all };
        among.get(slot % among.len().max(1)).copied()
    }

    fn new_slot(&mut self, policy: &AppPolicy, kind: Kind, proof: bool, now: i64) -> Slot {
        self.next_id += 1;
        let challenge = Challenge {
            id: format!("ch_{}", self.next_id),
            app_id: "app".into(),
            user_id: "u".into(),
            method_id: match kind {
                Kind::Totp => "m_totp".into(),
                Kind::Sms => "m_sms".into(),
            },
            purpose: if proof {
                ChallengePurpose::Proof
            } else {
                ChallengePurpose::Recover
            },
            code: None,
            code_key_id: None,
            ceremony: None,
            attempts: 0,
            max_attempts: policy.max_attempts_per_challenge,
            state: ChallengeState::Open,
            created_at: now,
            expires_at: now + policy.code_lifetime_secs,
            opened_by: None,
        };
        Slot {
            model: ModelChallenge {
                wrongs: 0,
                cap: challenge.max_attempts,
                used: false,
                expires: challenge.expires_at,
            },
            challenge,
            kind,
            proof,
            accepted: 0,
        }
    }
}

/// The verdict the service's `judge` reaches before the transaction: a TOTP code matches
/// the current or the previous step at `now`, or nothing.
fn judge(kind: Kind, code: Code, last_step: Option<i64>, now: i64) -> Verdict {
    let current = now.div_euclid(TOTP_STEP);
    match (kind, code) {
        (_, Code::Wrong) => Verdict::Wrong,
        (Kind::Sms, _) => Verdict::Correct { totp_step: None },
        (Kind::Totp, Code::Right) => Verdict::Correct {
            totp_step: Some(current),
        },
        (Kind::Totp, Code::Previous) => Verdict::Correct {
            totp_step: Some(current - 1),
        },
        (Kind::Totp, Code::Replay | Code::Older) => {
            let older = i64::from(matches!(code, Code::Older));
            let step = last_step.map_or(current, |last| last - older);
            if step == current || step == current - 1 {
                Verdict::Correct {
                    totp_step: Some(step),
                }
            } else {
                Verdict::Wrong
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// What the run reached.

macro_rules! states {
    ($($name:ident: $min:expr, $edge_min:expr, $what:expr;)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
        #[allow(non_camel_case_types)]
        enum State { $($name,)* }
        const STATES: &[(State, [u32; 2], &str)] = &[$((State::$name, [$min, $edge_min], $what),)*];
    };
}

// Each state with the minimum number of cases (out of `CASES`) that must reach it in the
// interleaving run and in the run at the edge of the budget's day.
states! {
    accepted_sms: 450, 0, "an SMS code accepted";
    accepted_totp: 600, 0, "a TOTP code accepted";
    accepted_previous_step: 300, 0, "a TOTP code of the previous step accepted";
    accepted_after_other_failures: 400, 0, "a code accepted while another challenge's failures were on the guard";
    wrong: 1500, 1500, "a wrong code counted";
    cap_reached: 200, 0, "a challenge dead at its cap";
    cap_above_3_reached: 20, 0, "a challenge dead at a cap above 3";
    dead_refused: 150, 0, "an answer to a dead challenge refused";
    already_used: 500, 0, "an answer to a used challenge refused";
    expired: 600, 0, "an answer to an expired challenge refused";
    backoff_refused: 280, 0, "an answer refused in back-off";
    backoff_waited_out: 250, 0, "a check after a back-off ran out";
    lock_reached: 300, 0, "the user locked";
    lock_from_several_challenges: 150, 0, "a lock reached by failures on two challenges or more";
    locked_refused: 280, 0, "an answer refused while locked";
    reopen_refused_locked: 240, 0, "a new non-proof challenge refused while locked";
    lift_accepted: 70, 0, "a lock lifted by the user's proof";
    lift_wrong: 120, 0, "a wrong proof sent to unlock while locked";
    lift_refused_by_budget: 20, 0, "a proof to unlock refused because the budget is spent";
    operator_unlocked_lock: 120, 0, "a lock lifted by the operator";
    relocked: 100, 0, "a user locked again after an unlock";
    budget_spent: 200, 400, "a check refused because the day's failure budget is spent";
    budget_room_again: 100, 0, "a check after the budget had room again";
    step_replayed_same: 110, 0, "a TOTP step replayed (the same step) refused";
    step_replayed_older: 30, 0, "an older TOTP step refused after a newer one";
    step_replayed_across_challenges: 130, 0, "a TOTP step used on one challenge refused on another";
    clock_back: 400, 1500, "an answer whose clock read is earlier than the previous answer's";
    budget_edge: 40, 500, "a check within a second of a counted failure's 24 hours";
    edge_out_of_order: 0, 150, "a check whose 24 hours hold a failure a day older than one committed before it";
}

#[derive(Default)]
struct Tally {
    /// Per state: cases that reached it, events in all.
    cases: Vec<u32>,
    events: Vec<u64>,
    answers: u64,
    steps: u64,
}

impl Tally {
    fn add(&mut self, seen: &Seen) {
        if self.cases.is_empty() {
            self.cases = vec![0; STATES.len()];
            self.events = vec![0; STATES.len()];
        }
        for (i, n) in seen.events.iter().enumerate() {
            if *n > 0 {
                self.cases[i] += 1;
                self.events[i] += n;
            }
        }
        self.answers += seen.answers;
        self.steps += seen.steps;
    }
}

struct Seen {
    events: Vec<u64>,
    answers: u64,
    steps: u64,
}

impl Seen {
    fn hit(&mut self, state: State) {
        self.events[state as usize] += 1;
    }
}

// ---------------------------------------------------------------------------------------
// One case.

fn run_case(case: &Case) -> Result<Seen, TestCaseError> {
    let policy = AppPolicy {
        max_attempts_per_challenge: case.max_attempts,
        user_lock_threshold: case.lock_threshold,
        user_backoff_base_secs: case.backoff_base,
        user_failures_per_day: case.failures_per_day,
        code_lifetime_secs: case.lifetime,
        ..AppPolicy::default()
    };
    prop_assert!(policy.validate().is_ok(), "{:?}", policy.validate());
    let mut seen = Seen {
        events: vec![0; STATES.len()],
        answers: 0,
        steps: case.raw_steps.len() as u64,
    };
    let mut store = Store {
        guard: Guard::default(),
        rows: Vec::new(),
        totp_last_step: None,
        slots: Vec::new(),
        next_id: 0,
    };
    let mut model = Model::default();
    let mut now = START;
    for &(kind, proof) in &case.challenges {
        let slot = store.new_slot(&policy, kind, proof, now);
        store.slots.push(slot);
    }

    // The history the promises are checked against.
    let mut accepted_steps: BTreeSet<i64> = BTreeSet::new();
    let mut newest_step: Option<i64> = None;
    // Failure times since the operator last cleared them (never pruned).
    let mut epochs: Vec<Vec<i64>> = vec![Vec::new()];
    // Challenges whose failures make the current run of failures.
    let mut streak: BTreeSet<String> = BTreeSet::new();
    // Which challenge accepted each TOTP step.
    let mut step_owner: Vec<(i64, String)> = Vec::new();
    let mut unlocked_once = false;
    let mut budget_was_spent = false;
    let mut was_in_backoff = false;
    let mut latest_read = now;

    for (wait, action) in case.steps() {
        match wait {
            Wait::By(secs) => now += secs,
            Wait::ToBudgetEdge(secs) => {
                if let Some(oldest) = store.window(now).oldest {
                    now = now.max(oldest + DAY + secs);
                }
            }
        }
        let (slot_index, code, lifting) = match action {
            Action::OperatorUnlock => {
                if store.guard.locked_at.is_some() {
                    seen.hit(State::operator_unlocked_lock);
                    unlocked_once = true;
                }
                store.guard = Guard::default();
                store.rows.clear();
                model.operator_unlock();
                epochs.push(Vec::new());
                streak.clear();
                budget_was_spent = false;
                was_in_backoff = false;
                continue;
            }
            Action::Reopen { slot, kind, proof } => {
                if store.guard.locked_at.is_some() && !proof {
                    // `start_challenge` refuses it (only a proof challenge may be started
                    // while locked); the slot keeps its challenge.
                    seen.hit(State::reopen_refused_locked);
                    continue;
                }
                // A new challenge takes the place of a used, dead or expired one if there
                // is one, so that open challenges stay to be interleaved; up to four are
                // kept, then the oldest open one is dropped.
                let n = store.slots.len();
                let done = (0..n).map(|k| (slot + k) % n).find(|&i| {
                    let ch = &store.slots[i].challenge;
                    ch.state != ChallengeState::Open || now >= ch.expires_at
                });
                let new = store.new_slot(&policy, kind, proof, now);
                match done {
                    Some(i) => store.slots[i] = new,
                    None if n < 4 => store.slots.push(new),
                    None => {
                        store.slots.remove(0);
                        store.slots.push(new);
                    }
                }
                continue;
            }
            Action::Answer { slot, code, live } => match store.target(slot, live, false, now) {
                Some(i) => (i, code, false),
                None => continue,
            },
            Action::Unlock { slot, code, live } => match store.target(slot, live, true, now) {
                Some(i) => (i, code, true),
                // Without a proof challenge the request is refused before any check.
                None => continue,
            },
        };
        seen.answers += 1;
        if now < latest_read {
            seen.hit(State::clock_back);
        }
        latest_read = latest_read.max(now);

        let rule = if lifting {
            LockRule::Lift
        } else {
            LockRule::Enforce
        };
        let slot = &store.slots[slot_index];
        let ch = slot.challenge.clone();
        let kind = slot.kind;
        let verdict = judge(kind, code, store.totp_last_step, now);
        let mut guard = store.guard;
        guard.window = store.window(now);
        let last_step = match kind {
            Kind::Totp => store.totp_last_step,
            Kind::Sms => None,
        };
        let s: Settlement = settle_with(&ch, &guard, verdict, last_step, &policy, now, rule);

        // 1. The reference model agrees, field by field.
        let mut model_ch = slot.model;
        let model_outcome = {
            let saved_last = model.last_step;
            if kind == Kind::Sms {
                // The SMS method has no TOTP step; the model's last step is the TOTP one.
                model.last_step = None;
            }
            let o = model.answer(&policy, &mut model_ch, verdict, now, lifting);
            if kind == Kind::Sms {
                model.last_step = saved_last;
            }
            o
        };
        let expected = Expected {
            outcome: model_outcome,
            wrongs: model_ch.wrongs,
            used: model_ch.used,
            in_a_row: model.in_a_row,
            wait_until: model.wait_until,
            locked_since: model.locked_since,
            step_recorded: match (model_outcome, verdict) {
                (Outcome::Accepted, Verdict::Correct { totp_step }) => totp_step,
                _ => None,
            },
        };
        let got = Expected {
            outcome: s.outcome,
            wrongs: s.attempts,
            used: s.state == ChallengeState::Used,
            in_a_row: s.guard.failures,
            wait_until: s.guard.backoff_until,
            locked_since: s.guard.locked_at,
            step_recorded: s.totp_step,
        };
        prop_assert_eq!(
            got,
            expected,
            "settle and the model disagree at {}",
            now - START
        );
        prop_assert_eq!(
            s.state == ChallengeState::Dead,
            model_ch.wrongs >= model_ch.cap && !model_ch.used
        );

        // 2. The promises, on the state before the answer and the settlement.
        let locked_before = guard.locked_at.is_some();
        let spent_before = guard.window.count >= policy.user_failures_per_day;
        let checked = s.outcome == Outcome::Accepted || s.outcome.is_failure();
        prop_assert!(
            s.attempts <= ch.max_attempts,
            "more wrong answers than the cap"
        );
        prop_assert!(s.attempts >= ch.attempts, "attempts went down");
        prop_assert_eq!(
            s.attempts - ch.attempts,
            u32::from(s.outcome.is_failure()),
            "only a checked wrong code counts"
        );
        if ch.state != ChallengeState::Open {
            prop_assert_eq!(s.state, ch.state, "a used or dead challenge stays so");
        }
        if checked {
            // Nothing is checked on a used, dead or expired challenge, while locked (but
            // for the lifting proof), in back-off or with the budget spent.
            prop_assert_eq!(ch.state, ChallengeState::Open);
            prop_assert!(now < ch.expires_at, "checked after expiry");
            prop_assert!(!locked_before || lifting, "checked while locked");
            prop_assert!(now >= guard.backoff_until, "checked in back-off");
            prop_assert!(!spent_before, "checked with the budget spent");
        } else {
            // A refusal changes nothing.
            prop_assert_eq!(s.attempts, ch.attempts);
            prop_assert_eq!(s.state, ch.state);
            prop_assert_eq!(s.guard, guard);
            prop_assert_eq!(s.totp_step, None);
        }
        if locked_before && !lifting {
            prop_assert_eq!(s.outcome, Outcome::Locked, "a lock holds until lifted");
        }
        if locked_before && s.outcome != Outcome::Accepted {
            prop_assert!(s.guard.locked_at.is_some(), "a lock went without a success");
        }
        if s.outcome == Outcome::Accepted {
            prop_assert_eq!(s.state, ChallengeState::Used);
            prop_assert_eq!(s.guard.failures, 0);
            prop_assert_eq!(s.guard.locked_at, None);
            prop_assert_eq!(s.guard.window, guard.window, "a success reset the budget");
        }
        if s.outcome.is_failure() {
            prop_assert_eq!(
                s.outcome == Outcome::WrongAndLocked,
                s.guard.failures >= policy.user_lock_threshold,
                "locked exactly at the threshold"
            );
            prop_assert!(
                s.guard.backoff_until <= now + MAX_BACKOFF_SECS,
                "a back-off above the cap"
            );
        }
        if let Verdict::Correct {
            totp_step: Some(step),
        } = verdict
        {
            if s.outcome == Outcome::Accepted {
                prop_assert!(
                    accepted_steps.insert(step),
                    "TOTP step {} accepted twice",
                    step
                );
                prop_assert!(
                    newest_step.is_none_or(|n| step > n),
                    "an older step accepted"
                );
                newest_step = Some(step);
            }
        }

        // 3. Count what was reached.
        match s.outcome {
            Outcome::Accepted => {
                if guard.failures > ch.attempts {
                    seen.hit(State::accepted_after_other_failures);
                }
                match verdict {
                    Verdict::Correct {
                        totp_step: Some(step),
                    } => {
                        seen.hit(State::accepted_totp);
                        if step < now.div_euclid(TOTP_STEP) {
                            seen.hit(State::accepted_previous_step);
                        }
                        step_owner.push((step, ch.id.clone()));
                    }
                    _ => seen.hit(State::accepted_sms),
                }
                if lifting && locked_before {
                    seen.hit(State::lift_accepted);
                    unlocked_once = true;
                }
                streak.clear();
            }
            Outcome::Wrong | Outcome::WrongAndLocked | Outcome::Refused(_) => {
                seen.hit(State::wrong);
                streak.insert(ch.id.clone());
                if s.state == ChallengeState::Dead {
                    seen.hit(State::cap_reached);
                    if ch.max_attempts > 3 {
                        seen.hit(State::cap_above_3_reached);
                    }
                }
                if lifting && locked_before {
                    seen.hit(State::lift_wrong);
                }
                if s.outcome == Outcome::WrongAndLocked && !locked_before {
                    seen.hit(State::lock_reached);
                    if streak.len() >= 2 {
                        seen.hit(State::lock_from_several_challenges);
                    }
                    if unlocked_once {
                        seen.hit(State::relocked);
                    }
                }
            }
            Outcome::Dead => seen.hit(State::dead_refused),
            Outcome::AlreadyUsed => seen.hit(State::already_used),
            Outcome::Expired => seen.hit(State::expired),
            Outcome::Backoff(_) => seen.hit(State::backoff_refused),
            Outcome::Locked => seen.hit(State::locked_refused),
            Outcome::BudgetSpent(_) => {
                seen.hit(State::budget_spent);
                if lifting && locked_before {
                    seen.hit(State::lift_refused_by_budget);
                }
            }
            Outcome::StepReplayed => {
                if let Verdict::Correct {
                    totp_step: Some(step),
                } = verdict
                {
                    if Some(step) == store.totp_last_step {
                        seen.hit(State::step_replayed_same);
                    } else {
                        seen.hit(State::step_replayed_older);
                    }
                    if step_owner
                        .iter()
                        .any(|(s, owner)| *s >= step && *owner != ch.id)
                    {
                        seen.hit(State::step_replayed_across_challenges);
                    }
                }
            }
        }
        if checked
            && store
                .rows
                .iter()
                .any(|&t| (now - DAY - 1..=now - DAY + 1).contains(&t))
        {
            seen.hit(State::budget_edge);
        }
        let newest = store.rows.iter().copied().max().unwrap_or(now);
        if (checked || matches!(s.outcome, Outcome::BudgetSpent(_)))
            && store
                .rows
                .iter()
                .any(|&t| t > now - DAY && t <= newest - DAY)
        {
            seen.hit(State::edge_out_of_order);
        }
        if checked && budget_was_spent {
            seen.hit(State::budget_room_again);
            budget_was_spent = false;
        }
        if matches!(s.outcome, Outcome::BudgetSpent(_)) {
            budget_was_spent = true;
        }
        if checked && was_in_backoff {
            seen.hit(State::backoff_waited_out);
            was_in_backoff = false;
        }
        if matches!(s.outcome, Outcome::Backoff(_)) {
            was_in_backoff = true;
        }

        // 4. Write back what the store writes back.
        let slot = &mut store.slots[slot_index];
        slot.challenge.attempts = s.attempts;
        slot.challenge.state = s.state;
        slot.model = model_ch;
        if s.outcome == Outcome::Accepted {
            slot.accepted += 1;
            prop_assert!(slot.accepted <= 1, "a challenge accepted twice");
        }
        store.guard = Guard {
            window: FailureWindow::default(),
            ..s.guard
        };
        if s.outcome.is_failure() {
            store.rows.retain(|&t| t > now - 2 * DAY);
            store.rows.push(now);
            if let Some(epoch) = epochs.last_mut() {
                epoch.push(now);
            }
        }
        if let Some(step) = s.totp_step {
            if store.totp_last_step.is_none_or(|l| l < step) {
                store.totp_last_step = Some(step);
            }
        }
    }

    // 5. No 24 hours (between operator unlocks) hold more failures than the budget.
    for epoch in &mut epochs {
        epoch.sort_unstable();
        let mut first = 0;
        for last in 0..epoch.len() {
            while epoch[first] <= epoch[last] - DAY {
                first += 1;
            }
            let in_day = (last - first + 1) as u32;
            prop_assert!(
                in_day <= policy.user_failures_per_day,
                "{} failures in the 24 hours ending at {} (budget {})",
                in_day,
                epoch[last] - START,
                policy.user_failures_per_day
            );
        }
    }
    Ok(seen)
}

/// Runs `cases` cases of `strategy`, prints what they reached and fails if a state was
/// reached in fewer cases than its minimum in `column` of [`STATES`].
fn run(strategy: impl Strategy<Value = Case>, cases: u32, column: usize) {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/properties.proptest-regressions",
        ))),
        ..Config::default()
    });
    let tally = RefCell::new(Tally::default());
    let started = std::time::Instant::now();
    let result = runner.run(&strategy, |case| {
        let seen = run_case(&case)?;
        tally.borrow_mut().add(&seen);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let tally = tally.into_inner();
    println!(
        "{cases} cases, {} steps, {} answers settled, in {:.2?}",
        tally.steps,
        tally.answers,
        started.elapsed()
    );
    println!("{:>6} {:>7}  state", "cases", "events");
    let mut short = Vec::new();
    for (i, (state, mins, what)) in STATES.iter().enumerate() {
        let (reached, events, min) = (tally.cases[i], tally.events[i], mins[column]);
        println!("{reached:>6} {events:>7}  {what} ({state:?}, at least {min} cases)");
        let needed = (u64::from(min) * u64::from(cases) / u64::from(CASES)) as u32;
        if reached < needed {
            short.push(format!("{state:?}: {reached} cases, wanted {needed}"));
        }
    }
    assert!(
        short.is_empty(),
        "the generators no longer reach: {}",
        short.join("; ")
    );
}

// The minimums are for `CASES` cases: `PROPTEST_CASES` may ask for more, not fewer.
// `PROPTEST_RNG_SEED` replays a run.

#[test]
fn code_checks_keep_every_limit_under_any_interleaving() {
    run(case(), Config::default().cases.max(CASES), 0);
}

#[test]
fn the_failure_budget_holds_at_the_edge_of_its_day_with_answers_out_of_clock_order() {
    run(edge_case(), Config::default().cases.max(CASES), 1);
}
