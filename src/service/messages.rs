//! The texts Ghostkey sends, encrypted for the outbox as soon as they are written.

use secrecy::{ExposeSecret, SecretString};

use crate::domain::policy::MethodKind;
use crate::keys::ServerKeys;
use crate::store::{MessageKind, NewMessage};

fn seal(keys: &ServerKeys, kind: MessageKind, text: &str) -> NewMessage {
    NewMessage {
        kind,
        key_id: keys.key_id().to_owned(),
        body: keys.seal(text.as_bytes()),
    }
}

/// A one-time code message.
pub fn code(
    keys: &ServerKeys,
    app_name: &str,
    code: &SecretString,
    lifetime_secs: i64,
) -> NewMessage {
    let minutes = (lifetime_secs + 59) / 60;
    let text = format!(
        "{} is your {app_name} recovery verification code. It expires in {minutes} minutes. \
         Never share it: nobody from {app_name} will ask you for it.",
        code.expose_secret()
    );
    seal(keys, MessageKind::Code, &text)
}

fn describe(kind: MethodKind, masked: Option<&str>) -> String {
    match (kind, masked) {
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
    seal(keys, MessageKind::Notice, &text)
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
    seal(keys, MessageKind::Notice, &text)
}
