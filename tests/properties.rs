//! Property test: for any interleaving of right and wrong answers, expiry and back-off,
//! a challenge never counts more wrong answers than its cap, accepts at most once, and
//! never accepts once dead, expired or locked.

use ghostkey::domain::challenge::{
    settle, Challenge, ChallengePurpose, ChallengeState, Guard, Outcome, Verdict,
};
use ghostkey::domain::policy::AppPolicy;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn attempt_counters_never_exceed_their_caps(
        steps in prop::collection::vec((any::<bool>(), 0i64..900), 1..40),
        max_attempts in 1u32..6,
        lock_threshold in 1u32..12,
        backoff in 0i64..5,
    ) {
        let policy = AppPolicy {
            max_attempts_per_challenge: max_attempts,
            user_lock_threshold: lock_threshold,
            user_backoff_base_secs: backoff,
            ..AppPolicy::default()
        };
        let start = 1_800_000_000;
        let mut ch = Challenge {
            id: "ch".into(), app_id: "a".into(), user_id: "u".into(), method_id: "m".into(),
            purpose: ChallengePurpose::Recover, code: None, code_key_id: None, attempts: 0,
            max_attempts, state: ChallengeState::Open, created_at: start, expires_at: start + 600,
            opened_by: None,
        };
        let mut guard = Guard::default();
        let mut now = start;
        let mut accepted = 0;
        let mut wrong_counted = 0;
        for (right, wait) in steps {
            now += wait;
            let before = (ch.state, guard.locked_at.is_some(), now >= ch.expires_at, now < guard.backoff_until);
            let verdict = if right { Verdict::Correct { totp_step: None } } else { Verdict::Wrong };
            let s = settle(&ch, &guard, verdict, None, &policy, now);
            if s.outcome == Outcome::Accepted {
                accepted += 1;
                // Only an open, live, unlocked challenge outside back-off accepts.
                prop_assert_eq!(before, (ChallengeState::Open, false, false, false));
            }
            if matches!(s.outcome, Outcome::Wrong | Outcome::WrongAndLocked) {
                wrong_counted += 1;
            }
            prop_assert!(s.attempts <= max_attempts);
            prop_assert!(s.attempts >= ch.attempts, "attempts never go down");
            if ch.state != ChallengeState::Open {
                prop_assert_eq!(s.state, ch.state, "a used or dead challenge stays so");
            }
            ch.attempts = s.attempts;
            ch.state = s.state;
            guard = s.guard;
        }
        prop_assert!(accepted <= 1);
        prop_assert!(wrong_counted <= max_attempts);
        prop_assert_eq!(ch.attempts, wrong_counted);
    }
}
