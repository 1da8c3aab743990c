//! Challenges: starting one on an existing method, and answering one with a code.

use ghostkey_proto::api::{
    AnswerRequest, AnswerResponse, ChallengePurpose as WireChallengePurpose, ChallengeView,
    EnrollmentState, StartChallengeRequest,
};
use ghostkey_proto::assertion::Purpose;
use ghostkey_proto::ErrorCode;

use super::methods::{challenge_view, load_user, masked, method_view, passphrase_params};
use super::{messages, parse_answer, Caller, Ghostkey};
use crate::clock::UnixTime;
use crate::domain::challenge::{
    refused_before_check, Challenge, ChallengePurpose, ChallengeState, LockRule,
};
use crate::domain::limits::{address_limit, app_check_limit, Limit};
use crate::domain::method::Method;
use crate::domain::method::MethodState;
use crate::domain::policy::AppPolicy;
use crate::error::Error;
use crate::store::{AnswerNotices, StartChallenge, Store};

impl Ghostkey {
    /// Starts a challenge: `confirm` sends a new code for a pending method; `proof` checks
    /// a confirmed method before a change that needs one.
    pub async fn start_challenge(
        &self,
        token: String,
        caller: Caller,
        request: StartChallengeRequest,
    ) -> Result<ChallengeView, Error> {
        let now = self.now();
        let mac = self.caller_mac(caller);
        let ctx = self
            .blocking(move |store, rules| {
                load_user(
                    store,
                    rules,
                    &token,
                    &[Purpose::Enroll, Purpose::Manage, Purpose::Recover],
                    &mac,
                    now,
                )
            })
            .await?;
        let method = ctx
            .user
            .methods
            .iter()
            .find(|m| m.id == request.method_id)
            .ok_or_else(|| Error::new(ErrorCode::MethodNotFound))?
            .clone();
        let has_confirmed = ctx
            .user
            .methods
            .iter()
            .any(|m| m.state == MethodState::Confirmed);
        let by = ctx.assertion.purpose;
        let purpose = match request.purpose {
            WireChallengePurpose::Confirm => {
                if method.state == MethodState::Confirmed {
                    return Err(Error::with_detail(
                        ErrorCode::InvalidField,
                        "the method is already confirmed",
                    ));
                }
                // Once a method is confirmed, only the app provider's `manage` assertion
                // reaches the others.
                let allowed = if has_confirmed {
                    by == Purpose::Manage
                } else {
                    by != Purpose::Recover
                };
                if !allowed {
                    return Err(Error::with_detail(
                        ErrorCode::AssertionWrongPurpose,
                        "a new code for a pending method needs an `enroll` assertion, or `manage` once a method is confirmed",
                    ));
                }
                ChallengePurpose::Confirm
            }
            WireChallengePurpose::Proof => {
                if method.state != MethodState::Confirmed {
                    return Err(Error::new(ErrorCode::MethodNotConfirmed));
                }
                // `recover` is allowed so that a user can cancel a recovery by proof.
                if by == Purpose::Enroll {
                    return Err(Error::with_detail(
                        ErrorCode::AssertionWrongPurpose,
                        "a proof challenge needs a `manage` or `recover` assertion",
                    ));
                }
                ChallengePurpose::Proof
            }
            WireChallengePurpose::Recover => {
                return Err(Error::with_detail(
                    ErrorCode::WrongChallenge,
                    "start a recovery with POST /v1/recoveries",
                ))
            }
        };
        if !ctx.app.policy.allowed_methods.contains(&method.kind) {
            return Err(Error::new(ErrorCode::MethodKindNotAllowed));
        }
        let new = self
            .new_challenge(&method, purpose, ctx.assertion.purpose, &ctx.app, now)
            .await?;
        let view = challenge_view(
            &new.challenge,
            method.kind,
            masked(&self.keys, &method)?,
            passphrase_params(&self.keys, &method)?,
            new.webauthn.clone(),
        );
        self.blocking(move |store, _| {
            store.start_challenge(
                &StartChallenge {
                    assertion: &ctx.assertion,
                    challenge: &new.challenge,
                    message: new.message.as_ref(),
                    limits: &new.limits,
                },
                now,
            )?;
            Ok(())
        })
        .await?;
        self.record_challenge(request_purpose_name(purpose), method.kind);
        self.outbox_wake.notify_one();
        Ok(view)
    }

    /// Answers a `confirm` challenge. Proof challenges are answered inside the request
    /// they authorise. An unknown challenge costs the same work as a wrong code and gets
    /// the same answer.
    pub async fn answer(
        &self,
        caller: Caller,
        challenge_id: String,
        request: AnswerRequest,
    ) -> Result<AnswerResponse, Error> {
        let now = self.now();
        let code = parse_answer(request.code.as_deref(), request.webauthn.as_ref(), "")?;
        let (found, app_name) = self
            .challenge_for_answer(&challenge_id, caller, now)
            .await?;
        if let Some((ch, _, _)) = &found {
            if ch.purpose == ChallengePurpose::Proof {
                return Err(Error::with_detail(
                    ErrorCode::InvalidProof,
                    "a proof challenge is answered inside the request it authorises",
                ));
            }
            if ch.purpose == ChallengePurpose::Recover {
                return Err(Error::with_detail(
                    ErrorCode::WrongChallenge,
                    "a recovery code is verified with POST /v1/recoveries/{id}/verify",
                ));
            }
        }
        let judged = self.judge_answer(found.as_ref(), &code, now).await?;
        let registered = judged.registered.clone();
        let Some((ch, method, _)) = found else {
            return Err(Error::new(ErrorCode::InvalidCode));
        };
        let added = messages::method_added(
            &self.keys,
            &app_name,
            method.kind,
            masked(&self.keys, &method)?.as_deref(),
        );
        let locked = messages::locked(&self.keys, &app_name);
        let cloned = messages::passkey_cloned(&self.keys, &app_name);
        let pending_removed = messages::pending_methods_removed(&self.keys, &app_name);
        let answered = self
            .blocking(move |store, _| {
                let notices = AnswerNotices {
                    added: &added,
                    locked: &locked,
                    cloned: &cloned,
                    pending_removed: &pending_removed,
                };
                Ok(store.answer_challenge(
                    &challenge_id,
                    judged.verdict,
                    judged.registered.as_ref(),
                    &notices,
                    now,
                )?)
            })
            .await?;
        self.record_code(answered.settlement.outcome, "confirm");
        if let Some(error) = answered.settlement.outcome.error(now) {
            return Err(error);
        }
        debug_assert_eq!(answered.settlement.state, ChallengeState::Used);
        self.outbox_wake.notify_one();
        let mut method = method;
        if let Some(passkey) = registered {
            // Shown as what was registered (the authenticator model, or the name).
            method.key_id = passkey.key_id;
            method.secret = passkey.secret;
        }
        method.state = MethodState::Confirmed;
        method.confirmed_at = method.confirmed_at.or(Some(now));
        Ok(AnswerResponse {
            challenge_id: ch.id,
            purpose: WireChallengePurpose::Confirm,
            method: method_view(&self.keys, &method)?,
            enrollment_state: EnrollmentState::Active,
        })
    }
}

/// A challenge being answered, with its method, its app's policy and name; `None` when
/// no such challenge exists (which is answered like a wrong code, after the same work).
pub(crate) type Answering = (Option<(Challenge, Method, AppPolicy)>, String);

impl Ghostkey {
    /// Loads the challenge an answer is for and spends one unit of the caller's address
    /// limit (under the challenge's app, or the default policy when there is none).
    pub(crate) async fn challenge_for_answer(
        &self,
        id: &str,
        caller: Caller,
        now: UnixTime,
    ) -> Result<Answering, Error> {
        let mac = self.caller_mac(caller);
        let id = id.to_owned();
        self.blocking(move |store, _| {
            let (answering, limits) = answering(store, &id, &mac, now)?;
            store.take_limits(&limits, now)?;
            Ok(answering)
        })
        .await
    }
}

/// The challenge `id` with its method and policy, its app's name, and the limits the
/// answer spends: the caller's address limit under that app, and the app's ceiling on
/// checks (the default policy's, under no app, when there is no such challenge) unless the
/// answer will be refused before any check (a used, dead or expired challenge, a user
/// locked, in back-off or out of budget): those must not use up the other users' checks.
pub(crate) fn answering(
    store: &dyn Store,
    id: &str,
    address_mac: &[u8],
    now: UnixTime,
) -> Result<(Answering, Vec<Limit>), Error> {
    let found = store.challenge(id)?;
    let (app_id, policy) = match &found {
        Some((ch, _, policy)) => (ch.app_id.clone(), policy.clone()),
        None => (String::new(), AppPolicy::default()),
    };
    let checked = match &found {
        Some((ch, _, policy)) => {
            let guard = store.guard(&ch.app_id, &ch.user_id, now)?;
            refused_before_check(ch, &guard, policy, now, LockRule::Enforce).is_none()
        }
        None => true,
    };
    let mut limits = vec![address_limit(
        &app_id,
        address_mac,
        policy.requests_per_address_per_minute,
    )];
    if checked {
        limits.push(app_check_limit(
            &app_id,
            policy.code_checks_per_app_per_minute,
        ));
    }
    let app_name = match &found {
        Some(_) => store.app(&app_id)?.map(|a| a.name).unwrap_or_default(),
        None => String::new(),
    };
    Ok(((found, app_name), limits))
}

fn request_purpose_name(purpose: ChallengePurpose) -> &'static str {
    purpose.as_str()
}
