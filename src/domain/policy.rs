//! Per-app abuse-limit policy (DESIGN.md §5), with its defaults and bounds.

use serde::{Deserialize, Serialize};

pub use ghostkey_proto::api::MethodKind;

/// The hard ceiling of [`AppPolicy::user_failures_per_day`]: whatever an app sets, nobody
/// gets more than this many wrong guesses at one user's codes in 24 hours.
pub const MAX_USER_FAILURES_PER_DAY: u32 = 20;

/// The hard ceiling of [`AppPolicy::recovery_starts_per_user_per_day`].
pub const MAX_RECOVERY_STARTS_PER_DAY: u32 = 20;

/// The per-app values of DESIGN.md §5.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppPolicy {
    /// Which verification methods users of this app may use.
    pub allowed_methods: Vec<MethodKind>,
    /// Digits of SMS and e-mail codes.
    pub code_digits: u32,
    /// Digits of TOTP codes.
    pub totp_digits: u32,
    /// Lifetime of SMS and e-mail codes, in seconds.
    pub code_lifetime_secs: i64,
    /// Wrong answers a challenge tolerates before it dies.
    pub max_attempts_per_challenge: u32,
    /// Failures per user after which the user is locked until a `manage` assertion or an
    /// operator lifts the lock.
    pub user_lock_threshold: u32,
    /// First back-off delay after a failure, doubled with each further failure, in seconds.
    pub user_backoff_base_secs: i64,
    /// Failed checks per user in any 24 hours, across every kind of challenge: once spent,
    /// no code of the user is checked until the oldest failure is 24 hours old. Nothing
    /// the app provider does resets it (at most [`MAX_USER_FAILURES_PER_DAY`]).
    pub user_failures_per_day: u32,
    /// Recoveries a user may start per UTC day (at most [`MAX_RECOVERY_STARTS_PER_DAY`]).
    pub recovery_starts_per_user_per_day: u32,
    /// Codes sent to one destination per hour.
    pub sends_per_destination_per_hour: u32,
    /// Codes sent to one destination per day.
    pub sends_per_destination_per_day: u32,
    /// Messages sent for this app per day, all users together.
    pub app_daily_send_budget: u32,
    /// Requests per client address per minute.
    pub requests_per_address_per_minute: u32,
    /// Code checks on the endpoints that need no assertion (`answer`, recovery `verify`)
    /// per minute for the whole app, every address together: a ceiling that many
    /// addresses cannot get around.
    pub code_checks_per_app_per_minute: u32,
    /// Delay between a correct recovery code and the release, in seconds (0: at once).
    pub waiting_period_secs: i64,
    /// The WebAuthn relying-party id of this app's passkey methods (a domain name its
    /// allowed web origins share, such as `example.org`); `None` until the operator sets
    /// it (`ghostkey app passkey set`): passkey methods need it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub passkey_rp_id: Option<String>,
}

impl Default for AppPolicy {
    fn default() -> AppPolicy {
        AppPolicy {
            allowed_methods: vec![MethodKind::Totp, MethodKind::Sms, MethodKind::Email],
            code_digits: 8,
            totp_digits: 6,
            code_lifetime_secs: 600,
            max_attempts_per_challenge: 3,
            user_lock_threshold: 10,
            user_backoff_base_secs: 2,
            user_failures_per_day: 10,
            recovery_starts_per_user_per_day: 5,
            sends_per_destination_per_hour: 5,
            sends_per_destination_per_day: 10,
            app_daily_send_budget: 10_000,
            requests_per_address_per_minute: 60,
            code_checks_per_app_per_minute: 600,
            waiting_period_secs: 0,
            passkey_rp_id: None,
        }
    }
}

/// A policy change: every field optional, `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyChange {
    /// See [`AppPolicy::allowed_methods`].
    pub allowed_methods: Option<Vec<MethodKind>>,
    /// See [`AppPolicy::code_digits`].
    pub code_digits: Option<u32>,
    /// See [`AppPolicy::totp_digits`].
    pub totp_digits: Option<u32>,
    /// See [`AppPolicy::code_lifetime_secs`].
    pub code_lifetime_secs: Option<i64>,
    /// See [`AppPolicy::max_attempts_per_challenge`].
    pub max_attempts_per_challenge: Option<u32>,
    /// See [`AppPolicy::user_lock_threshold`].
    pub user_lock_threshold: Option<u32>,
    /// See [`AppPolicy::user_backoff_base_secs`].
    pub user_backoff_base_secs: Option<i64>,
    /// See [`AppPolicy::user_failures_per_day`].
    pub user_failures_per_day: Option<u32>,
    /// See [`AppPolicy::recovery_starts_per_user_per_day`].
    pub recovery_starts_per_user_per_day: Option<u32>,
    /// See [`AppPolicy::sends_per_destination_per_hour`].
    pub sends_per_destination_per_hour: Option<u32>,
    /// See [`AppPolicy::sends_per_destination_per_day`].
    pub sends_per_destination_per_day: Option<u32>,
    /// See [`AppPolicy::app_daily_send_budget`].
    pub app_daily_send_budget: Option<u32>,
    /// See [`AppPolicy::requests_per_address_per_minute`].
    pub requests_per_address_per_minute: Option<u32>,
    /// See [`AppPolicy::code_checks_per_app_per_minute`].
    pub code_checks_per_app_per_minute: Option<u32>,
    /// See [`AppPolicy::waiting_period_secs`].
    pub waiting_period_secs: Option<i64>,
    /// See [`AppPolicy::passkey_rp_id`] (`Some(None)` clears it).
    pub passkey_rp_id: Option<Option<String>>,
}

fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    name: &str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<(), String> {
    if range.contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "{name} must be between {} and {} (got {value})",
            range.start(),
            range.end()
        ))
    }
}

impl AppPolicy {
    /// Applies a change and checks the result; the policy is unchanged on error.
    pub fn apply(&self, change: &PolicyChange) -> Result<AppPolicy, String> {
        let mut p = self.clone();
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = change.$f.clone() { p.$f = v; } )* };
        }
        set!(
            allowed_methods,
            code_digits,
            totp_digits,
            code_lifetime_secs,
            max_attempts_per_challenge,
            user_lock_threshold,
            user_backoff_base_secs,
            user_failures_per_day,
            recovery_starts_per_user_per_day,
            sends_per_destination_per_hour,
            sends_per_destination_per_day,
            app_daily_send_budget,
            requests_per_address_per_minute,
            code_checks_per_app_per_minute,
            waiting_period_secs,
            passkey_rp_id
        );
        p.validate()?;
        Ok(p)
    }

    /// Checks every value against its bounds.
    pub fn validate(&self) -> Result<(), String> {
        if self.allowed_methods.is_empty() {
            return Err("allowed_methods must name at least one method".into());
        }
        let mut seen = std::collections::HashSet::new();
        if !self.allowed_methods.iter().all(|m| seen.insert(*m)) {
            return Err("allowed_methods names a method twice".into());
        }
        in_range("code_digits", self.code_digits, 6..=10)?;
        in_range("totp_digits", self.totp_digits, 6..=8)?;
        in_range("code_lifetime_secs", self.code_lifetime_secs, 60..=3600)?;
        in_range(
            "max_attempts_per_challenge",
            self.max_attempts_per_challenge,
            1..=10,
        )?;
        in_range("user_lock_threshold", self.user_lock_threshold, 1..=100)?;
        in_range(
            "user_backoff_base_secs",
            self.user_backoff_base_secs,
            0..=600,
        )?;
        in_range(
            "user_failures_per_day",
            self.user_failures_per_day,
            1..=MAX_USER_FAILURES_PER_DAY,
        )?;
        in_range(
            "recovery_starts_per_user_per_day",
            self.recovery_starts_per_user_per_day,
            1..=MAX_RECOVERY_STARTS_PER_DAY,
        )?;
        in_range(
            "sends_per_destination_per_hour",
            self.sends_per_destination_per_hour,
            1..=100,
        )?;
        in_range(
            "sends_per_destination_per_day",
            self.sends_per_destination_per_day,
            1..=1000,
        )?;
        if self.sends_per_destination_per_day < self.sends_per_destination_per_hour {
            return Err(
                "sends_per_destination_per_day must be at least sends_per_destination_per_hour"
                    .into(),
            );
        }
        in_range(
            "app_daily_send_budget",
            self.app_daily_send_budget,
            1..=10_000_000,
        )?;
        in_range(
            "requests_per_address_per_minute",
            self.requests_per_address_per_minute,
            1..=100_000,
        )?;
        in_range(
            "code_checks_per_app_per_minute",
            self.code_checks_per_app_per_minute,
            1..=1_000_000,
        )?;
        in_range(
            "waiting_period_secs",
            self.waiting_period_secs,
            0..=30 * 24 * 3600,
        )?;
        if let Some(rp_id) = &self.passkey_rp_id {
            let normal = super::passkey::parse_rp_id(rp_id)?;
            if &normal != rp_id {
                return Err(format!(
                    "passkey_rp_id must be in its normal form ({normal})"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_those_of_the_design_and_valid() {
        let p = AppPolicy::default();
        p.validate().unwrap();
        assert_eq!(
            (p.code_digits, p.totp_digits, p.code_lifetime_secs),
            (8, 6, 600)
        );
        assert_eq!(p.max_attempts_per_challenge, 3);
        assert_eq!(p.waiting_period_secs, 0);
    }

    #[test]
    fn a_bad_change_names_the_value_and_changes_nothing() {
        let p = AppPolicy::default();
        let e = p
            .apply(&PolicyChange {
                code_digits: Some(3),
                ..Default::default()
            })
            .unwrap_err();
        assert!(e.contains("code_digits"), "{e}");
        let e = p
            .apply(&PolicyChange {
                allowed_methods: Some(vec![]),
                ..Default::default()
            })
            .unwrap_err();
        assert!(e.contains("allowed_methods"), "{e}");
        let q = p
            .apply(&PolicyChange {
                waiting_period_secs: Some(86400),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(q.waiting_period_secs, 86400);
        assert_eq!(q.code_digits, p.code_digits);
    }
}
