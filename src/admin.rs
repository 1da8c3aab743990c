//! Operator commands that act directly on the database (`ghostkey app ...`).

use serde::Serialize;

use crate::clock::UnixTime;
use crate::domain::app::{
    new_app_id, parse_public_key, validate_app_name, validate_kid, App, AppKey,
};
use crate::domain::audit::AuditHead;
use crate::domain::origin::normalise_origin;
use crate::domain::policy::{AppPolicy, PolicyChange};
use crate::store::{Store, StoreError};

/// What an admin command reports when it cannot do what was asked.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AdminError(pub String);

fn explain(e: StoreError, app_id: &str, kid: Option<&str>) -> AdminError {
    let kid = kid.unwrap_or("");
    AdminError(match e {
        StoreError::UnknownApp => format!("no app with id `{app_id}` (see `ghostkey app list`)"),
        StoreError::UnknownKey => format!("app `{app_id}` has no key `{kid}`"),
        StoreError::KeyExists => {
            format!("app `{app_id}` already has a key `{kid}`; choose another key id")
        }
        StoreError::KeyAlreadyRevoked => {
            format!("key `{kid}` of app `{app_id}` is already revoked")
        }
        other => other.to_string(),
    })
}

/// An app as the admin commands show it.
#[derive(Debug, Clone, Serialize)]
pub struct AppReport {
    /// The app id.
    pub id: String,
    /// The name.
    pub name: String,
    /// Registration time.
    pub created_at: UnixTime,
    /// Policy.
    pub policy: AppPolicy,
    /// Keys.
    pub keys: Vec<KeyReport>,
    /// Web origins allowed to call the API for this app from a browser (CORS).
    pub allowed_origins: Vec<String>,
    /// Enrolled users.
    pub users: u64,
    /// Audit events in the last 24 hours.
    pub events_last_24h: u64,
    /// When the app last did anything.
    pub last_activity: Option<UnixTime>,
}

/// A key as the admin commands show it.
#[derive(Debug, Clone, Serialize)]
pub struct KeyReport {
    /// Key id.
    pub kid: String,
    /// Public key, base64url.
    pub public_key: String,
    /// When added.
    pub created_at: UnixTime,
    /// When revoked.
    pub revoked_at: Option<UnixTime>,
}

fn report(
    app: App,
    keys: Vec<AppKey>,
    allowed_origins: Vec<String>,
    activity: (u64, u64, Option<UnixTime>),
) -> AppReport {
    AppReport {
        allowed_origins,
        users: activity.0,
        events_last_24h: activity.1,
        last_activity: activity.2,
        id: app.id,
        name: app.name,
        created_at: app.created_at,
        policy: app.policy,
        keys: keys
            .into_iter()
            .map(|k| KeyReport {
                kid: k.kid,
                public_key: ghostkey_proto::b64::encode(k.public_key),
                created_at: k.created_at,
                revoked_at: k.revoked_at,
            })
            .collect(),
    }
}

/// Registers an app with its first key, with the default policy; returns the new app id.
pub fn add_app(
    store: &dyn Store,
    name: &str,
    kid: &str,
    public_key: &str,
    now: UnixTime,
) -> Result<String, AdminError> {
    validate_app_name(name).map_err(AdminError)?;
    validate_kid(kid).map_err(AdminError)?;
    let public_key = parse_public_key(public_key).map_err(AdminError)?;
    let app = App {
        id: new_app_id(),
        name: name.trim().to_owned(),
        created_at: now,
        policy: AppPolicy::default(),
    };
    let key = AppKey {
        kid: kid.to_owned(),
        public_key,
        created_at: now,
        revoked_at: None,
    };
    store
        .create_app(&app, &key)
        .map_err(|e| explain(e, &app.id, Some(kid)))?;
    Ok(app.id)
}

/// Every app with its keys and recent activity.
pub fn list_apps(store: &dyn Store, now: UnixTime) -> Result<Vec<AppReport>, AdminError> {
    let apps = store.list_apps().map_err(|e| AdminError(e.to_string()))?;
    apps.into_iter()
        .map(|app| {
            let keys = store
                .app_keys(&app.id)
                .map_err(|e| explain(e, &app.id, None))?;
            let origins = store
                .app_origins(&app.id)
                .map_err(|e| explain(e, &app.id, None))?;
            let activity = store
                .app_activity(&app.id, now - 86_400)
                .map_err(|e| explain(e, &app.id, None))?;
            Ok(report(app, keys, origins, activity))
        })
        .collect()
}

/// One app with its keys.
pub fn show_app(store: &dyn Store, app_id: &str, now: UnixTime) -> Result<AppReport, AdminError> {
    let app = store
        .app(app_id)
        .map_err(|e| explain(e, app_id, None))?
        .ok_or_else(|| explain(StoreError::UnknownApp, app_id, None))?;
    let keys = store
        .app_keys(app_id)
        .map_err(|e| explain(e, app_id, None))?;
    let origins = store
        .app_origins(app_id)
        .map_err(|e| explain(e, app_id, None))?;
    let activity = store
        .app_activity(app_id, now - 86_400)
        .map_err(|e| explain(e, app_id, None))?;
    Ok(report(app, keys, origins, activity))
}

/// Allows a web origin to call the API for an app from a browser (CORS). Returns the
/// origin in its normal form and whether it was added (`false`: it already was allowed;
/// nothing changes).
pub fn add_origin(
    store: &dyn Store,
    app_id: &str,
    origin: &str,
    now: UnixTime,
) -> Result<(String, bool), AdminError> {
    let origin = normalise_origin(origin).map_err(AdminError)?;
    let added = store
        .add_app_origin(app_id, &origin, now)
        .map_err(|e| explain(e, app_id, None))?;
    Ok((origin, added))
}

/// Stops allowing a web origin for an app. Returns the origin in its normal form; an
/// origin the app does not allow is an error (a typo would otherwise pass unnoticed).
pub fn remove_origin(
    store: &dyn Store,
    app_id: &str,
    origin: &str,
    now: UnixTime,
) -> Result<String, AdminError> {
    let normal = normalise_origin(origin).map_err(AdminError)?;
    let removed = store
        .remove_app_origin(app_id, &normal, now)
        .map_err(|e| explain(e, app_id, None))?;
    if !removed {
        return Err(AdminError(format!(
            "app `{app_id}` does not allow origin `{normal}` (see `ghostkey app origins list {app_id}`)"
        )));
    }
    Ok(normal)
}

/// The web origins an app allows.
pub fn list_origins(store: &dyn Store, app_id: &str) -> Result<Vec<String>, AdminError> {
    store
        .app(app_id)
        .map_err(|e| explain(e, app_id, None))?
        .ok_or_else(|| explain(StoreError::UnknownApp, app_id, None))?;
    store
        .app_origins(app_id)
        .map_err(|e| explain(e, app_id, None))
}

/// Sets (or with `None` clears) the WebAuthn relying-party id of an app's passkeys.
/// Returns the id in its normal form and the allowed origins passkeys work from (those
/// whose host is the id or a subdomain of it).
pub fn set_passkey_rp_id(
    store: &dyn Store,
    app_id: &str,
    rp_id: Option<&str>,
    now: UnixTime,
) -> Result<(Option<String>, Vec<String>), AdminError> {
    let rp_id = rp_id
        .map(crate::domain::passkey::parse_rp_id)
        .transpose()
        .map_err(AdminError)?;
    let change = PolicyChange {
        passkey_rp_id: Some(rp_id.clone()),
        ..PolicyChange::default()
    };
    set_policy(store, app_id, &change, now)?;
    let fitting = match &rp_id {
        Some(id) => list_origins(store, app_id)?
            .into_iter()
            .filter(|o| crate::domain::passkey::origin_fits(id, o))
            .collect(),
        None => Vec::new(),
    };
    Ok((rp_id, fitting))
}

/// Adds a key to an app (to rotate: add the new key, switch the app provider, revoke the old).
pub fn add_key(
    store: &dyn Store,
    app_id: &str,
    kid: &str,
    public_key: &str,
    now: UnixTime,
) -> Result<(), AdminError> {
    validate_kid(kid).map_err(AdminError)?;
    let public_key = parse_public_key(public_key).map_err(AdminError)?;
    let key = AppKey {
        kid: kid.to_owned(),
        public_key,
        created_at: now,
        revoked_at: None,
    };
    store
        .add_app_key(app_id, &key)
        .map_err(|e| explain(e, app_id, Some(kid)))
}

/// Revokes a key; assertions it signed are refused from now on. Returns how many active
/// keys the app has left.
pub fn revoke_key(
    store: &dyn Store,
    app_id: &str,
    kid: &str,
    now: UnixTime,
) -> Result<usize, AdminError> {
    store
        .revoke_app_key(app_id, kid, now)
        .map_err(|e| explain(e, app_id, Some(kid)))?;
    let keys = store
        .app_keys(app_id)
        .map_err(|e| explain(e, app_id, None))?;
    Ok(keys.iter().filter(|k| k.revoked_at.is_none()).count())
}

/// Changes some policy values; the others keep their current value.
pub fn set_policy(
    store: &dyn Store,
    app_id: &str,
    change: &PolicyChange,
    now: UnixTime,
) -> Result<AppPolicy, AdminError> {
    let app = store
        .app(app_id)
        .map_err(|e| explain(e, app_id, None))?
        .ok_or_else(|| explain(StoreError::UnknownApp, app_id, None))?;
    let policy = app.policy.apply(change).map_err(AdminError)?;
    store
        .set_app_policy(app_id, &policy, now)
        .map_err(|e| explain(e, app_id, None))?;
    Ok(policy)
}

/// Lifts a user's lock and clears their failures and failure budget (operator action,
/// audited, notified to every confirmed method of the user). Returns whether the user was
/// locked.
pub fn unlock_user(
    store: &dyn Store,
    keys: &crate::keys::ServerKeys,
    app_id: &str,
    user_id: &str,
    now: UnixTime,
) -> Result<bool, AdminError> {
    let app = store
        .app(app_id)
        .map_err(|e| explain(e, app_id, None))?
        .ok_or_else(|| AdminError(format!("no app `{app_id}`")))?;
    let notice = crate::service::messages::unlocked(keys, &app.name, true);
    store
        .unlock_user(
            &crate::store::UnlockUser {
                app_id,
                user_id,
                assertion: None,
                proof: None,
                notice: &notice,
            },
            now,
        )
        .map_err(|e| match e {
            StoreError::NotEnrolled => {
                AdminError(format!("app `{app_id}` has no enrolled user `{user_id}`"))
            }
            other => explain(other, app_id, None),
        })
}

/// Deletes every row of a user (operator action, e.g. on an erasure request that reached
/// the operator rather than the app provider), after queueing a farewell notice to each of
/// their confirmed SMS and e-mail methods.
pub fn erase_user(
    store: &dyn Store,
    keys: &crate::keys::ServerKeys,
    app_id: &str,
    user_id: &str,
    now: UnixTime,
) -> Result<(), AdminError> {
    let app = store
        .app(app_id)
        .map_err(|e| explain(e, app_id, None))?
        .ok_or_else(|| AdminError(format!("no app `{app_id}`")))?;
    let notice = crate::service::messages::erased(keys, &app.name, true);
    store
        .erase_user(app_id, user_id, None, &notice, now)
        .map_err(|e| match e {
            StoreError::NotEnrolled => {
                AdminError(format!("app `{app_id}` has no enrolled user `{user_id}`"))
            }
            other => explain(other, app_id, None),
        })
}

/// A user as the operator sees them: state, methods masked, lock, recoveries, chain.
#[derive(Debug, Clone, Serialize)]
pub struct UserReport {
    /// The app.
    pub app_id: String,
    /// The user.
    pub user_id: String,
    /// `pending` or `active`.
    pub state: ghostkey_proto::api::EnrollmentState,
    /// When enrolled.
    pub enrolled_at: UnixTime,
    /// Methods, destinations masked.
    pub methods: Vec<ghostkey_proto::api::MethodView>,
    /// Failures since the last success.
    pub failures: u32,
    /// When locked, if locked.
    pub locked_at: Option<UnixTime>,
    /// Recoveries not yet released or cancelled: id, state, release time.
    pub open_recoveries: Vec<(String, String, Option<UnixTime>)>,
    /// Recoveries released so far.
    pub releases: usize,
    /// Blocks in the device chain.
    pub chain_blocks: usize,
}

/// Everything about one user an operator may see (no secret, destinations masked).
pub fn show_user(
    store: &dyn Store,
    keys: &crate::keys::ServerKeys,
    app_id: &str,
    user_id: &str,
) -> Result<UserReport, AdminError> {
    use crate::domain::recovery::RecoveryState;
    let user = store
        .user(app_id, user_id)
        .map_err(|e| explain(e, app_id, None))?
        .ok_or_else(|| AdminError(format!("app `{app_id}` has no enrolled user `{user_id}`")))?;
    let methods = user
        .methods
        .iter()
        .map(|m| {
            crate::service::methods::method_view(keys, m).map_err(|e| AdminError(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let recoveries = store
        .user_recoveries(app_id, user_id)
        .map_err(|e| explain(e, app_id, None))?;
    let chain = store
        .chain(app_id, user_id)
        .map_err(|e| explain(e, app_id, None))?;
    Ok(UserReport {
        app_id: app_id.to_owned(),
        user_id: user_id.to_owned(),
        state: user.enrollment.state,
        enrolled_at: user.enrollment.created_at,
        methods,
        failures: user.guard.failures,
        locked_at: user.guard.locked_at,
        open_recoveries: recoveries
            .iter()
            .filter(|r| matches!(r.state, RecoveryState::Started | RecoveryState::Waiting))
            .map(|r| {
                (
                    r.challenge_id.clone(),
                    r.state.as_str().to_owned(),
                    r.available_at,
                )
            })
            .collect(),
        releases: recoveries
            .iter()
            .filter(|r| r.state == RecoveryState::Released)
            .count(),
        chain_blocks: chain.len(),
    })
}

/// Batch size when reading the audit log.
const AUDIT_BATCH: usize = 1000;

/// What `audit verify` found in an intact log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditVerified {
    /// Events in the log.
    pub events: i64,
    /// Its last event, to note off-host and pass back later as an anchor.
    pub head: AuditHead,
    /// Events committed but not yet linked into the chain (PostgreSQL links them within
    /// seconds of their commit): not covered by this verification yet.
    pub unlinked: u64,
    /// When the oldest of them happened.
    pub oldest_unlinked_at: Option<UnixTime>,
}

/// Recomputes the whole audit chain and checks that it still passes through the head the
/// store recorded (read first, so events appended meanwhile do not matter) and through
/// every `anchor` (heads noted earlier, off-host). Returns the first broken link, or the
/// point the chain no longer reaches.
pub fn verify_audit(store: &dyn Store, anchors: &[AuditHead]) -> Result<AuditVerified, AdminError> {
    let recorded = store
        .audit_head()
        .map_err(|e| AdminError(e.to_string()))?
        .ok_or_else(|| {
            AdminError(
                "the audit log's head record is missing: the log was tampered with".to_owned(),
            )
        })?;
    let points: Vec<(&str, AuditHead)> = std::iter::once(("the recorded head", recorded))
        .chain(anchors.iter().map(|a| ("the anchor", *a)))
        .collect();
    let mut hash_at: Vec<Option<[u8; 32]>> = vec![None; points.len()];
    let mut prev = [0u8; 32];
    let mut next_seq = 1;
    loop {
        let events = store
            .audit_events(next_seq - 1, AUDIT_BATCH)
            .map_err(|e| AdminError(e.to_string()))?;
        if events.is_empty() {
            break;
        }
        prev = crate::domain::audit::verify(&events, prev, next_seq).map_err(|broken| {
            AdminError(format!(
                "{broken}: the log was altered at or after this event"
            ))
        })?;
        for e in &events {
            for (i, (_, point)) in points.iter().enumerate() {
                if point.seq == e.seq {
                    hash_at[i] = Some(e.hash);
                }
            }
        }
        next_seq += events.len() as i64;
    }
    let events = next_seq - 1;
    for ((what, point), found) in points.iter().zip(hash_at) {
        crate::domain::audit::check_passes_through(point, events, found)
            .map_err(|missed| AdminError(format!("{missed} ({what} is {})", point.to_text())))?;
    }
    let (unlinked, oldest_unlinked_at) = store
        .audit_unlinked()
        .map_err(|e| AdminError(e.to_string()))?;
    Ok(AuditVerified {
        events,
        head: AuditHead {
            seq: events,
            hash: prev,
        },
        unlinked,
        oldest_unlinked_at,
    })
}

/// Writes the audit log as JSON lines.
pub fn export_audit(store: &dyn Store, out: &mut dyn std::io::Write) -> Result<i64, AdminError> {
    let mut after = 0;
    loop {
        let events = store
            .audit_events(after, AUDIT_BATCH)
            .map_err(|e| AdminError(e.to_string()))?;
        if events.is_empty() {
            return Ok(after);
        }
        for e in &events {
            let line = serde_json::to_string(e).map_err(|e| AdminError(e.to_string()))?;
            writeln!(out, "{line}").map_err(|e| AdminError(e.to_string()))?;
            after = e.seq;
        }
    }
}

/// What a key rotation did and what still needs the retired keys.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RotationReport {
    /// The current key.
    pub current: String,
    /// Methods re-encrypted under it.
    pub methods: u64,
    /// Queued messages re-encrypted under it.
    pub messages: u64,
    /// Per retired key: (id, methods, queued messages, live codes) still under it; live
    /// codes are open challenges' codes and cancel codes that can still stop a recovery.
    pub retired: Vec<(String, u64, u64, u64)>,
}

/// Re-encrypts every value under a retired key with the current key, `batch` at a time,
/// while the server runs (each row is replaced only if still under the key it was read
/// under). Destination MACs are recomputed under the current key.
pub fn rotate_keys(
    store: &dyn Store,
    keys: &crate::keys::ServerKeys,
    batch: usize,
    now: UnixTime,
) -> Result<RotationReport, AdminError> {
    use crate::domain::policy::MethodKind;
    let err = |e: StoreError| AdminError(e.to_string());
    let current = keys.key_id().to_owned();
    let mut report = RotationReport {
        current: current.clone(),
        ..RotationReport::default()
    };
    loop {
        let methods = store
            .methods_under_other_keys(&current, batch)
            .map_err(err)?;
        if methods.is_empty() {
            break;
        }
        let mut progressed = false;
        for m in methods {
            let plain = keys.open(&m.key_id, &m.secret).map_err(|e| {
                AdminError(format!(
                    "method {}: {e} (add that key to `keys.retired_key_files`)",
                    m.id
                ))
            })?;
            let mac = match m.kind {
                MethodKind::Totp | MethodKind::Passphrase | MethodKind::Passkey => None,
                kind => {
                    let text = String::from_utf8(plain.to_vec())
                        .map_err(|_| AdminError(format!("method {}: not UTF-8", m.id)))?;
                    Some(keys.destination_mac(
                        kind.as_str(),
                        &crate::domain::method::rate_limit_form(kind, &text),
                    ))
                }
            };
            if store
                .rekey_method(
                    &m.id,
                    &m.key_id,
                    &current,
                    &keys.seal(&plain),
                    mac.as_deref(),
                )
                .map_err(err)?
            {
                report.methods += 1;
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
    loop {
        let messages = store
            .messages_under_other_keys(&current, batch)
            .map_err(err)?;
        if messages.is_empty() {
            break;
        }
        let mut progressed = false;
        for (id, key_id, body) in messages {
            let plain = keys
                .open(&key_id, &body)
                .map_err(|e| AdminError(format!("queued message {id}: {e}")))?;
            if store
                .rekey_message(id, &key_id, &current, &keys.seal(&plain))
                .map_err(err)?
            {
                report.messages += 1;
                progressed = true;
            }
        }
        if !progressed {
            break;
        }
    }
    for id in keys.retired_ids() {
        let (methods, messages, challenges) = store.key_usage(&id, now).map_err(err)?;
        report.retired.push((id, methods, messages, challenges));
    }
    Ok(report)
}
