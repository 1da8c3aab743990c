//! The texts Ghostkey sends, encrypted for the outbox as soon as they are written.

use secrecy::{ExposeSecret, SecretString};

use ghostkey_proto::assertion::Purpose;

use crate::domain::challenge::ChallengePurpose;
use crate::domain::policy::MethodKind;
use crate::keys::ServerKeys;
use crate::store::{MessageKind, NewMessage};

fn seal(keys: &ServerKeys, kind: MessageKind, text: &str) -> NewMessage {
    NewMessage {
        kind,
        key_id: keys.key_id().to_owned(),
        body: keys.seal(text.as_bytes()),
        notice_kind: None,
    }
}

/// A security notice of `kind`: notices of one kind to one destination are coalesced
/// (see the outbox in the store).
fn notice(keys: &ServerKeys, kind: &'static str, text: &str) -> NewMessage {
    NewMessage {
        notice_kind: Some(kind),
        ..seal(keys, MessageKind::Notice, text)
    }
}

/// What a code authorises, named in its message so that the user knows what they agree to
/// when they type it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeAction {
    /// Confirming this destination as a way to recover the account.
    ConfirmMethod,
    /// Recovering the account on a new device.
    Recover,
    /// Approving a change to the recovery settings (methods, keys, a lock).
    ApproveChange,
    /// Stopping a recovery of the account.
    CancelRecovery,
}

impl CodeAction {
    /// The action a challenge's code authorises, from its purpose and the purpose of the
    /// assertion that opened it (a proof opened with `recover` serves only to cancel).
    pub fn of(purpose: ChallengePurpose, opened_by: Purpose) -> CodeAction {
        match (purpose, opened_by) {
            (ChallengePurpose::Confirm, _) => CodeAction::ConfirmMethod,
            (ChallengePurpose::Recover, _) => CodeAction::Recover,
            (ChallengePurpose::Proof, Purpose::Recover) => CodeAction::CancelRecovery,
            (ChallengePurpose::Proof, _) => CodeAction::ApproveChange,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            CodeAction::ConfirmMethod => "to confirm this as a way to recover your account",
            CodeAction::Recover => "to recover your account on a new device",
            CodeAction::ApproveChange => {
                "to approve a change to how your account is recovered (methods, keys or a lock)"
            }
            CodeAction::CancelRecovery => "to stop a recovery of your account",
        }
    }
}

/// A one-time code message, naming what the code authorises.
pub fn code(
    keys: &ServerKeys,
    app_name: &str,
    code: &SecretString,
    lifetime_secs: i64,
    action: CodeAction,
) -> NewMessage {
    let minutes = (lifetime_secs + 59) / 60;
    let text = format!(
        "{} is your {app_name} recovery verification code, {}. It expires in {minutes} \
         minutes. Never share it: nobody from {app_name} will ask you for it.",
        code.expose_secret(),
        action.describe()
    );
    seal(keys, MessageKind::Code, &text)
}

fn describe(kind: MethodKind, masked: Option<&str>) -> String {
    match (kind, masked) {
        (MethodKind::Passphrase, _) => "a passphrase".to_owned(),
        (MethodKind::Passkey, Some(m)) => format!("the {m}"),
        (MethodKind::Passkey, None) => "a passkey".to_owned(),
        (MethodKind::Totp, _) | (_, None) => "an authenticator app".to_owned(),
        (MethodKind::Sms, Some(m)) => format!("the phone number {m}"),
        (MethodKind::Email, Some(m)) => format!("the e-mail address {m}"),
    }
}

/// The notice sent to a user's other methods when a method is added.
pub fn method_added(
    keys: &ServerKeys,
    app_name: &str,
    kind: MethodKind,
    masked: Option<&str>,
) -> NewMessage {
    let text = format!(
        "{app_name} security notice: {} was added as a way to recover your account. \
         If this was not you, contact {app_name} now.",
        describe(kind, masked)
    );
    notice(keys, "method_added", &text)
}

/// The notice sent to a user's other methods when a method is removed.
pub fn method_removed(
    keys: &ServerKeys,
    app_name: &str,
    kind: MethodKind,
    masked: Option<&str>,
) -> NewMessage {
    let text = format!(
        "{app_name} security notice: {} was removed from the ways to recover your account. \
         If this was not you, contact {app_name} now.",
        describe(kind, masked)
    );
    notice(keys, "method_removed", &text)
}

/// Renders a Unix time for a message: UTC, to the minute.
fn utc(time: i64) -> String {
    let days = time.div_euclid(86_400);
    let secs = time.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60
    )
}

/// To the user's other methods: a recovery was started; the cancel code stops it.
pub fn recovery_started(
    keys: &ServerKeys,
    app_name: &str,
    kind: MethodKind,
    masked: Option<&str>,
    cancel_code: &SecretString,
) -> NewMessage {
    let text = format!(
        "{app_name} security notice: a recovery of your account was started, checked through {}. \
         If this was not you, stop it with the cancel code {} (in the {app_name} app, or any \
         Ghostkey client), then contact {app_name}. Nobody needs this code but you.",
        describe(kind, masked),
        cancel_code.expose_secret()
    );
    notice(keys, "recovery_started", &text)
}

/// To every method: the code was right, the release waits until `available_at`; the
/// cancel code stops it.
pub fn recovery_waiting(
    keys: &ServerKeys,
    app_name: &str,
    recovery_id: &str,
    available_at: i64,
    cancel_code: &SecretString,
) -> NewMessage {
    let text = format!(
        "{app_name} security notice: your account keys will be released to a new device on {} \
         (recovery {recovery_id}). If this was not you, stop it before then with the cancel code \
         {} (in the {app_name} app, or any Ghostkey client), then contact {app_name}.",
        utc(available_at),
        cancel_code.expose_secret()
    );
    notice(keys, "recovery_waiting", &text)
}

/// To the user's other methods: the keys were released.
pub fn recovery_released(keys: &ServerKeys, app_name: &str) -> NewMessage {
    let text = format!(
        "{app_name} security notice: your account keys were just released to a new device. \
         If this was not you, contact {app_name} now."
    );
    notice(keys, "recovery_released", &text)
}

/// To every method: the recovery was cancelled.
pub fn recovery_cancelled(keys: &ServerKeys, app_name: &str, recovery_id: &str) -> NewMessage {
    let text = format!(
        "{app_name} security notice: recovery {recovery_id} was cancelled; nothing was released."
    );
    notice(keys, "recovery_cancelled", &text)
}

/// To every method, as the user's rows go: the user was erased.
pub fn erased(keys: &ServerKeys, app_name: &str, by_operator: bool) -> NewMessage {
    let by = if by_operator {
        "by the recovery service's operator"
    } else {
        "at the request of {app_name}"
    };
    let by = by.replace("{app_name}", app_name);
    let text = format!(
        "{app_name} security notice: the recovery copy of your account keys and every way to \
         recover your account were erased {by}. Your account can no longer be recovered with \
         this phone number or address. If this was not you, contact {app_name} now."
    );
    notice(keys, "erased", &text)
}

/// To every method: the sealed keys were replaced.
pub fn virtual_device_replaced(keys: &ServerKeys, app_name: &str) -> NewMessage {
    let text = format!(
        "{app_name} security notice: the recovery copy of your account keys was replaced. \
         If this was not you, contact {app_name} now."
    );
    notice(keys, "virtual_device_replaced", &text)
}

/// To every method: too many wrong codes locked the account's recovery.
pub fn locked(keys: &ServerKeys, app_name: &str) -> NewMessage {
    let text = format!(
        "{app_name} security notice: after too many wrong verification codes, recovery of your \
         account is locked. Only a code sent to you (or from your authenticator app) unlocks it. \
         If you did not try to recover your account, someone else did: contact {app_name}."
    );
    notice(keys, "locked", &text)
}

/// To every method: a passkey answered with a signature counter that went backwards.
pub fn passkey_cloned(keys: &ServerKeys, app_name: &str) -> NewMessage {
    let text = format!(
        "{app_name} security notice: a passkey you use to recover your account answered with \
         a signature count lower than before, which happens when a copy of it is used. The \
         answer was refused. If you did not just try to recover your account, replace that \
         passkey and contact {app_name}."
    );
    notice(keys, "passkey_cloned", &text)
}

/// To every method: the lock was lifted.
pub fn unlocked(keys: &ServerKeys, app_name: &str, by_operator: bool) -> NewMessage {
    let by = if by_operator {
        "by the recovery service's operator"
    } else {
        "with a verification code"
    };
    let text = format!(
        "{app_name} security notice: recovery of your account was unlocked {by}. \
         If this was not you, contact {app_name} now."
    );
    notice(keys, "unlocked", &text)
}

/// To the first confirmed method: other methods added while enrolling were removed.
pub fn pending_methods_removed(keys: &ServerKeys, app_name: &str) -> NewMessage {
    let text = format!(
        "{app_name} security notice: this is now the way to recover your account. Other \
         verification methods that were added while you enrolled, and not confirmed, were \
         removed; adding one from now on needs a code sent here."
    );
    notice(keys, "pending_methods_removed", &text)
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_render_in_utc() {
        assert_eq!(super::utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(super::utc(1_800_000_000), "2027-01-15 08:00 UTC");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00 UTC");
    }
}
