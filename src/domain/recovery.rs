//! Recovery (DESIGN.md §3, "Recover"): after a correct code on a `recover` challenge, the
//! sealed virtual device is released at once, or after the app's waiting period unless
//! someone cancels it first. Pure decisions; the store applies them in one transaction.

use ghostkey_proto::ErrorCode;

use crate::clock::UnixTime;
use crate::error::Error;

/// Where a recovery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryState {
    /// Waiting for the code.
    Started,
    /// Code verified; the release waits until `available_at`.
    Waiting,
    /// Released (once).
    Released,
    /// Cancelled; never releases.
    Cancelled,
}

impl RecoveryState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryState::Started => "started",
            RecoveryState::Waiting => "waiting",
            RecoveryState::Released => "released",
            RecoveryState::Cancelled => "cancelled",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<RecoveryState> {
        match s {
            "started" => Some(RecoveryState::Started),
            "waiting" => Some(RecoveryState::Waiting),
            "released" => Some(RecoveryState::Released),
            "cancelled" => Some(RecoveryState::Cancelled),
            _ => None,
        }
    }
}

/// A stored recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The `recover` challenge it was started with (also the recovery's id).
    pub challenge_id: String,
    /// The app.
    pub app_id: String,
    /// The user.
    pub user_id: String,
    /// The method used.
    pub method_id: String,
    /// Where it stands.
    pub state: RecoveryState,
    /// When the release becomes available (set once the code is verified).
    pub available_at: Option<UnixTime>,
    /// When it was released.
    pub released_at: Option<UnixTime>,
    /// When it was cancelled.
    pub cancelled_at: Option<UnixTime>,
    /// When it was started.
    pub created_at: UnixTime,
}

/// What a correct code does: release now, or wait `waiting_period_secs`.
pub fn after_verified_code(waiting_period_secs: i64, now: UnixTime) -> (RecoveryState, UnixTime) {
    if waiting_period_secs <= 0 {
        (RecoveryState::Released, now)
    } else {
        (RecoveryState::Waiting, now + waiting_period_secs)
    }
}

/// Whether a release may happen now; the error says why not.
pub fn check_release(recovery: &Recovery, now: UnixTime) -> Result<(), Error> {
    match recovery.state {
        RecoveryState::Started => Err(Error::new(ErrorCode::RecoveryNotVerified)),
        RecoveryState::Cancelled => Err(Error::new(ErrorCode::RecoveryCancelled)),
        RecoveryState::Released => Err(Error::new(ErrorCode::AlreadyReleased)),
        RecoveryState::Waiting => match recovery.available_at {
            Some(at) if now >= at => Ok(()),
            Some(at) => Err(Error::release_pending(at, now)),
            None => Err(Error::internal("a waiting recovery has no release time")),
        },
    }
}

/// Whether a recovery may be cancelled now.
pub fn check_cancel(recovery: &Recovery) -> Result<(), Error> {
    match recovery.state {
        RecoveryState::Started | RecoveryState::Waiting => Ok(()),
        RecoveryState::Cancelled => Err(Error::new(ErrorCode::RecoveryCancelled)),
        RecoveryState::Released => Err(Error::new(ErrorCode::AlreadyReleased)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recovery(state: RecoveryState, available_at: Option<UnixTime>) -> Recovery {
        Recovery {
            challenge_id: "ch".into(),
            app_id: "a".into(),
            user_id: "u".into(),
            method_id: "m".into(),
            state,
            available_at,
            released_at: None,
            cancelled_at: None,
            created_at: 0,
        }
    }

    #[test]
    fn a_waiting_period_delays_the_release_until_its_end() {
        assert_eq!(after_verified_code(0, 100), (RecoveryState::Released, 100));
        assert_eq!(
            after_verified_code(3600, 100),
            (RecoveryState::Waiting, 3700)
        );
        let waiting = recovery(RecoveryState::Waiting, Some(3700));
        let err = check_release(&waiting, 3699).unwrap_err();
        assert_eq!(
            (err.code, err.available_at, err.retry_after),
            (ErrorCode::ReleasePending, Some(3700), Some(1))
        );
        assert!(check_release(&waiting, 3700).is_ok());
    }

    #[test]
    fn only_a_verified_uncancelled_unreleased_recovery_releases() {
        for (state, code) in [
            (RecoveryState::Started, ErrorCode::RecoveryNotVerified),
            (RecoveryState::Cancelled, ErrorCode::RecoveryCancelled),
            (RecoveryState::Released, ErrorCode::AlreadyReleased),
        ] {
            assert_eq!(
                check_release(&recovery(state, Some(0)), 10)
                    .unwrap_err()
                    .code,
                code
            );
        }
        assert!(check_cancel(&recovery(RecoveryState::Waiting, Some(5))).is_ok());
        assert_eq!(
            check_cancel(&recovery(RecoveryState::Released, None))
                .unwrap_err()
                .code,
            ErrorCode::AlreadyReleased
        );
    }
}
