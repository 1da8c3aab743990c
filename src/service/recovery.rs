//! Recovery: start with a confirmed method, verify the code, release (at once or after the
//! app's waiting period), cancel; replace the sealed virtual device; erase a user.

use ghostkey_proto::api::{
    AnswerRequest, CancelRecoveryRequest, CancelWithCodeRequest, ChallengeView, EnrollmentState,
    RecoveryResponse, RecoveryState as WireRecoveryState, ReplaceVirtualDeviceRequest,
    StartRecoveryRequest,
};
use ghostkey_proto::assertion::Purpose;
use ghostkey_proto::{b64, sealed, ErrorCode};

use super::challenges::answering;
use super::methods::{
    challenge_view, load_user, load_user_unspent, masked, passphrase_params, UserContext,
};
use super::{
    authenticate, messages, parse_answer, parse_proof, refusal_at, Answer, Argon2Work, Caller,
    Ghostkey,
};
use secrecy::{ExposeSecret, SecretString};

use crate::clock::UnixTime;
use crate::domain::assertion::AssertionRules;
use crate::domain::cancel_code;
use crate::domain::challenge::{Challenge, ChallengePurpose, Verdict};
use crate::domain::limits::{address_limit, recovery_start_limit, Limit};
use crate::domain::method::{Method, MethodState};
use crate::domain::policy::{AppPolicy, MethodKind};
use crate::domain::recovery::{Recovery, RecoveryState};
use crate::error::Error;
use crate::store::{
    CancelCodeMac, ProofAnswer, RecoveryNotices, StartRecovery, Store, VerifiedRecovery,
};

/// A recovery's verify between its reads and its write: what the write needs.
struct PendingVerify {
    recovery_id: String,
    found: Option<(Challenge, Method, AppPolicy)>,
    app_name: String,
    unspent: Vec<Limit>,
}

/// Where a recovery's verify stands after its first trip to the blocking pool.
// Made and moved once per request: boxing a variant would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum VerifyStep {
    /// Written: the answer was judged inline.
    Done(VerifiedRecovery),
    /// The verdict needs an Argon2id computation first.
    Argon2(PendingVerify, Argon2Work),
}

fn response(recovery: &Recovery, sealed: Option<&[u8]>) -> RecoveryResponse {
    RecoveryResponse {
        recovery_id: recovery.challenge_id.clone(),
        state: match recovery.state {
            RecoveryState::Started => WireRecoveryState::Started,
            RecoveryState::Waiting => WireRecoveryState::Waiting,
            RecoveryState::Released => WireRecoveryState::Released,
            RecoveryState::Cancelled => WireRecoveryState::Cancelled,
        },
        available_at: match recovery.state {
            RecoveryState::Waiting => recovery.available_at,
            _ => None,
        },
        sealed_virtual_device: sealed.map(b64::encode),
    }
}

/// The method a recovery would use, if the user, the method and the app's policy allow it.
fn recovery_method(ctx: &UserContext, method_id: &str) -> Result<Method, Error> {
    if ctx.user.enrollment.state != EnrollmentState::Active {
        return Err(Error::new(ErrorCode::EnrollmentPending));
    }
    let method = ctx
        .user
        .methods
        .iter()
        .find(|m| m.id == method_id)
        .ok_or_else(|| Error::new(ErrorCode::MethodNotFound))?;
    if method.state != MethodState::Confirmed {
        return Err(Error::new(ErrorCode::MethodNotConfirmed));
    }
    if !ctx.app.policy.allowed_methods.contains(&method.kind) {
        return Err(Error::new(ErrorCode::MethodKindNotAllowed));
    }
    if ctx.user.guard.locked_at.is_some() {
        return Err(Error::new(ErrorCode::Locked));
    }
    Ok(method.clone())
}

impl Ghostkey {
    /// Starts a recovery with a confirmed method (`recover` assertion): sends the code (or
    /// expects a TOTP code) and tells the user's other methods. The whole use case is one
    /// trip to the blocking pool: the reads, the new code or ceremony, and the write.
    pub async fn start_recovery(
        &self,
        token: String,
        caller: Caller,
        request: StartRecoveryRequest,
    ) -> Result<ChallengeView, Error> {
        let now = self.now();
        let mac = self.caller_mac(caller);
        let this = self.clone();
        let (view, kind) = self
            .blocking(move |store, rules| {
                this.start_recovery_on(store, rules, &token, &mac, &request.method_id, now)
            })
            .await?;
        self.record_challenge("recover", kind);
        self.outbox_wake.notify_one();
        Ok(view)
    }

    fn start_recovery_on(
        &self,
        store: &dyn Store,
        rules: &AssertionRules,
        token: &str,
        address_mac: &[u8],
        method_id: &str,
        now: UnixTime,
    ) -> Result<(ChallengeView, MethodKind), Error> {
        let (ctx, address) =
            load_user_unspent(store, rules, token, &[Purpose::Recover], address_mac, now)?;
        let method = match recovery_method(&ctx, method_id) {
            Ok(method) => method,
            Err(refusal) => {
                return Err(Ghostkey::spend_refused_on(store, &[address], now, refusal))
            }
        };
        // A new SMS or e-mail code (a MAC, and a message to send): its unit is spent before
        // it, so that requests over the limit make no code. A TOTP or passphrase start has
        // none, and spends the unit in its own write.
        let unspent = if !method.kind.is_delivered() {
            vec![address]
        } else {
            store.take_limits(&[address], now)?;
            Vec::new()
        };
        let mut new = match self.new_challenge_on(
            store,
            &method,
            ChallengePurpose::Recover,
            ctx.assertion.purpose,
            &ctx.app,
            now,
        ) {
            Ok(new) => new,
            // A passkey start refused (the app's relying party unusable) still spends the
            // caller's unit, like every other refusal here.
            Err(refusal) if !unspent.is_empty() => {
                return Err(Ghostkey::spend_refused_on(store, &unspent, now, refusal))
            }
            Err(refusal) => return Err(refusal),
        };
        // However many assertions the app mints, a user sees few recovery starts a day.
        let user_mac = self.keys.destination_mac(
            "recovery-user",
            &format!("{}\0{}", ctx.app.id, ctx.assertion.user_id),
        );
        new.limits.push(recovery_start_limit(
            &user_mac,
            ctx.app.policy.recovery_starts_per_user_per_day,
        ));
        let masked_destination = masked(&self.keys, &method)?;
        let (cancel_code, cancel_mac) = self.new_cancel_code()?;
        let notice = messages::recovery_started(
            &self.keys,
            &ctx.app.name,
            method.kind,
            masked_destination.as_deref(),
            &cancel_code,
        );
        let view = challenge_view(
            &new.challenge,
            method.kind,
            masked_destination,
            passphrase_params(&self.keys, &method)?,
            new.webauthn.clone(),
        );
        store.start_recovery(
            &StartRecovery {
                assertion: &ctx.assertion,
                challenge: &new.challenge,
                message: new.message.as_ref(),
                limits: &new.limits,
                unspent: &unspent,
                notice: &notice,
                cancel_code: &cancel_mac,
            },
            now,
        )?;
        Ok((view, method.kind))
    }

    /// Verifies a recovery code. Right: the sealed virtual device is released now, or
    /// after the waiting period. An unknown recovery costs the same as a wrong code.
    /// One trip to the blocking pool, unless the answer needs an Argon2id computation (a
    /// passphrase, a code stored before schema version 7), which goes through the bounded
    /// pool between the reads and the write.
    pub async fn verify_recovery(
        &self,
        caller: Caller,
        recovery_id: String,
        request: AnswerRequest,
    ) -> Result<RecoveryResponse, Error> {
        let now = self.now();
        let answer = parse_answer(request.code.as_deref(), request.webauthn.as_ref(), "")?;
        let mac = self.caller_mac(caller);
        let this = self.clone();
        let step = self
            .blocking(move |store, _| {
                this.verify_recovery_on(store, recovery_id, &mac, answer, now)
            })
            .await?;
        let verified = match step {
            VerifyStep::Done(verified) => verified,
            VerifyStep::Argon2(pending, work) => {
                let verdict = self.judge_argon2(work).await?.verdict;
                let this = self.clone();
                self.blocking(move |store, _| {
                    this.finish_verify_recovery(store, pending, verdict, now)
                })
                .await?
            }
        };
        self.record_code(verified.settlement.outcome, "recover");
        if let Some(error) = verified.settlement.outcome.error(now) {
            return Err(error);
        }
        if verified.sealed.is_some() {
            self.metrics.inc("ghostkey_releases_total", &[]);
        }
        self.outbox_wake.notify_one();
        Ok(response(&verified.recovery, verified.sealed.as_deref()))
    }

    /// The reads, the spent units and the verdict of a recovery's verify; the write too
    /// unless the verdict needs an Argon2id computation.
    fn verify_recovery_on(
        &self,
        store: &dyn Store,
        recovery_id: String,
        address_mac: &[u8],
        answer: Answer,
        now: UnixTime,
    ) -> Result<VerifyStep, Error> {
        let ((found, app_name), limits) = answering(store, &recovery_id, address_mac, now)?;
        store.limits_allow(&limits, now)?;
        if let Some((ch, _, _)) = &found {
            if ch.purpose != ChallengePurpose::Recover {
                let refusal = Error::with_detail(ErrorCode::WrongChallenge, "not a recovery");
                return Err(Ghostkey::spend_refused_on(store, &limits, now, refusal));
            }
        }
        let judged = match self.judge_on(store, found.as_ref(), &answer, now) {
            Ok(judged) => judged,
            Err(refusal) => return Err(Ghostkey::spend_refused_on(store, &limits, now, refusal)),
        };
        // Where the caller's units are spent. An answer judged here and now (TOTP, a code
        // under a MAC, a passkey) leaves them to the verify's write (on SQLite in the same
        // transaction; PostgreSQL spends them in a short one of its own just before, see
        // `Store::verify_recovery`): a request over the limit has cost one cheap check,
        // whose verdict is then refused. An answer that needs an Argon2id computation (a passphrase verifier, a
        // code stored before schema version 7) spends them first, so that requests over
        // the limit never reach the pool and one address cannot queue more hashes than its
        // limit; so does an unknown id, whose only write they are.
        let unspent = if found.is_some() && judged.is_ok() {
            limits
        } else {
            store.take_limits(&limits, now)?;
            Vec::new()
        };
        let pending = PendingVerify {
            recovery_id,
            found,
            app_name,
            unspent,
        };
        Ok(match judged {
            Ok(judged) => VerifyStep::Done(self.finish_verify_recovery(
                store,
                pending,
                judged.verdict,
                now,
            )?),
            Err(work) => VerifyStep::Argon2(pending, work),
        })
    }

    /// The write of a recovery's verify, with its verdict.
    fn finish_verify_recovery(
        &self,
        store: &dyn Store,
        pending: PendingVerify,
        verdict: Verdict,
        now: UnixTime,
    ) -> Result<VerifiedRecovery, Error> {
        let PendingVerify {
            recovery_id,
            found,
            app_name,
            unspent,
        } = pending;
        let Some((_, _, policy)) = found else {
            // Unknown: its units are already spent (see `verify_recovery_on`).
            return Err(Error::new(ErrorCode::InvalidCode));
        };
        let released = messages::recovery_released(&self.keys, &app_name);
        let locked = messages::locked(&self.keys, &app_name);
        let cloned = messages::passkey_cloned(&self.keys, &app_name);
        let (cancel_code, waiting_cancel_mac) = self.new_cancel_code()?;
        let waiting = messages::recovery_waiting(
            &self.keys,
            &app_name,
            &recovery_id,
            now + policy.waiting_period_secs,
            &cancel_code,
        );
        Ok(store.verify_recovery(
            &recovery_id,
            &unspent,
            verdict,
            &RecoveryNotices {
                released: &released,
                waiting: &waiting,
                waiting_cancel_code: &waiting_cancel_mac,
                locked: &locked,
                cloned: &cloned,
            },
            now,
        )?)
    }

    /// Releases a recovery whose waiting period is over (`recover` assertion of its user).
    pub async fn release_recovery(
        &self,
        token: String,
        caller: Caller,
        recovery_id: String,
    ) -> Result<RecoveryResponse, Error> {
        let now = self.now();
        let mac = self.caller_mac(caller);
        let keys = std::sync::Arc::clone(&self.keys);
        let answer = self
            .blocking(move |store, rules| {
                let ctx = load_user(store, rules, &token, &[Purpose::Recover], &mac, now)?;
                let notice = messages::recovery_released(&keys, &ctx.app.name);
                let (recovery, sealed) =
                    store.release_recovery(&ctx.assertion, &recovery_id, &notice, now)?;
                Ok(response(&recovery, Some(&sealed)))
            })
            .await?;
        self.metrics.inc("ghostkey_releases_total", &[]);
        self.outbox_wake.notify_one();
        Ok(answer)
    }

    /// Cancels a recovery: a `manage` assertion alone, or a `recover` assertion with a
    /// proof through a confirmed method.
    pub async fn cancel_recovery(
        &self,
        token: String,
        caller: Caller,
        recovery_id: String,
        request: CancelRecoveryRequest,
    ) -> Result<RecoveryResponse, Error> {
        let now = self.now();
        let mac = self.caller_mac(caller);
        let proof_code = request.proof.as_ref().map(parse_proof).transpose()?;
        let proof_id = request.proof.as_ref().map(|p| p.challenge_id.clone());
        let (ctx, proof_found) = self
            .blocking(move |store, rules| {
                let ctx = load_user(
                    store,
                    rules,
                    &token,
                    &[Purpose::Manage, Purpose::Recover],
                    &mac,
                    now,
                )?;
                let found = match &proof_id {
                    Some(id) => store.challenge(id)?,
                    None => None,
                };
                Ok((ctx, found))
            })
            .await?;
        let proof = match (request.proof, proof_code) {
            (Some(p), Some(code)) => Some(ProofAnswer {
                verdict: self.judge(proof_found.as_ref(), &code, now).await?,
                challenge_id: p.challenge_id,
                locked_notice: messages::locked(&self.keys, &ctx.app.name),
                cloned_notice: messages::passkey_cloned(&self.keys, &ctx.app.name),
            }),
            _ => None,
        };
        if ctx.assertion.purpose != Purpose::Manage && proof.is_none() {
            return Err(Error::with_detail(
                ErrorCode::ProofRequired,
                "cancelling with a `recover` assertion needs a proof through a confirmed method",
            ));
        }
        let notice = messages::recovery_cancelled(&self.keys, &ctx.app.name, &recovery_id);
        let recovery = self
            .blocking(move |store, _| {
                store
                    .cancel_recovery(&ctx.assertion, proof.as_ref(), &recovery_id, &notice, now)
                    .map_err(|e| refusal_at(e, now))
            })
            .await?;
        self.outbox_wake.notify_one();
        Ok(response(&recovery, None))
    }

    /// A fresh cancel code and the form the store keeps of it.
    fn new_cancel_code(&self) -> Result<(SecretString, CancelCodeMac), Error> {
        let code = cancel_code::generate();
        let canonical = cancel_code::canonical(&code)?;
        let (key_id, mac) = self.keys.cancel_code_mac(canonical.expose_secret());
        Ok((code, CancelCodeMac { key_id, mac }))
    }

    /// Cancels a recovery with the cancel code a notice carried, and nothing else: no
    /// assertion, so the user stops a recovery without the app provider. A wrong code
    /// costs a unit of the caller's address limit, like any guess (the code has 100 bits).
    pub async fn cancel_recovery_with_code(
        &self,
        caller: Caller,
        request: CancelWithCodeRequest,
    ) -> Result<RecoveryResponse, Error> {
        let now = self.now();
        let canonical = cancel_code::parse(&request.cancel_code)?;
        // Under the current key, a retired one, or the form before schema version 8: a
        // rotation while a recovery waits must not void the code its user holds.
        let candidates = self
            .keys
            .cancel_code_mac_candidates(canonical.expose_secret());
        let mac = self.caller_mac(caller);
        let (found, app_name) = self
            .blocking(move |store, _| {
                let mut found = None;
                for candidate in candidates {
                    if let Some(recovery) = store.recovery_by_cancel_code(&candidate)? {
                        found = Some((recovery, candidate));
                        break;
                    }
                }
                let app = match &found {
                    Some((r, _)) => store.app(&r.app_id)?,
                    None => None,
                };
                // Under the recovery's app, or the default policy when the code is unknown.
                let (app_id, per_minute, name) = match app {
                    Some(app) => (app.id, app.policy.requests_per_address_per_minute, app.name),
                    None => (
                        String::new(),
                        AppPolicy::default().requests_per_address_per_minute,
                        String::new(),
                    ),
                };
                store.take_limits(&[address_limit(&app_id, &mac, per_minute)], now)?;
                Ok((found, name))
            })
            .await?;
        let Some((recovery, code_mac)) = found else {
            return Err(Error::new(ErrorCode::InvalidCode));
        };
        let notice = messages::recovery_cancelled(&self.keys, &app_name, &recovery.challenge_id);
        let recovery = self
            .blocking(move |store, _| Ok(store.cancel_recovery_by_code(&code_mac, &notice, now)?))
            .await?;
        self.outbox_wake.notify_one();
        Ok(response(&recovery, None))
    }

    /// Replaces the sealed virtual device (`manage` assertion and a proof), after the app
    /// provider rotated the user secret.
    pub async fn replace_virtual_device(
        &self,
        token: String,
        caller: Caller,
        request: ReplaceVirtualDeviceRequest,
    ) -> Result<(), Error> {
        let now = self.now();
        let blob = b64::decode(&request.sealed_virtual_device).map_err(|_| {
            Error::with_detail(
                ErrorCode::InvalidField,
                "`sealed_virtual_device` is not base64url without padding",
            )
        })?;
        sealed::parse(&blob).map_err(|e| match e {
            sealed::SealedFormatError::UnsupportedVersion(_) => {
                Error::with_detail(ErrorCode::UnsupportedSealedVersion, e.to_string())
            }
            _ => Error::with_detail(
                ErrorCode::InvalidField,
                format!("`sealed_virtual_device`: {e}"),
            ),
        })?;
        let proof_code = parse_proof(&request.proof)?;
        let mac = self.caller_mac(caller);
        let proof_id = request.proof.challenge_id.clone();
        let (ctx, proof_found) = self
            .blocking(move |store, rules| {
                let ctx = load_user(store, rules, &token, &[Purpose::Manage], &mac, now)?;
                Ok((ctx, store.challenge(&proof_id)?))
            })
            .await?;
        let proof = ProofAnswer {
            verdict: self.judge(proof_found.as_ref(), &proof_code, now).await?,
            challenge_id: request.proof.challenge_id,
            locked_notice: messages::locked(&self.keys, &ctx.app.name),
            cloned_notice: messages::passkey_cloned(&self.keys, &ctx.app.name),
        };
        let notice = messages::virtual_device_replaced(&self.keys, &ctx.app.name);
        self.blocking(move |store, _| {
            store
                .replace_virtual_device(&ctx.assertion, &proof, &blob, &notice, now)
                .map_err(|e| refusal_at(e, now))?;
            Ok(())
        })
        .await?;
        self.outbox_wake.notify_one();
        Ok(())
    }

    /// Erases the user (`manage` assertion): every method is told, then every row of
    /// theirs is deleted.
    pub async fn erase_user(&self, token: String, caller: Caller) -> Result<(), Error> {
        let now = self.now();
        let mac = self.caller_mac(caller);
        let keys = std::sync::Arc::clone(&self.keys);
        self.blocking(move |store, rules| {
            let assertion = authenticate(store, rules, &token, &[Purpose::Manage], now)?;
            let app = store
                .app(&assertion.app_id)?
                .ok_or_else(|| Error::internal("a verified assertion names a missing app"))?;
            store.take_limits(
                &[address_limit(
                    &app.id,
                    &mac,
                    app.policy.requests_per_address_per_minute,
                )],
                now,
            )?;
            let notice = messages::erased(&keys, &app.name, false);
            store.erase_user(
                &assertion.app_id,
                &assertion.user_id,
                Some(&assertion),
                &notice,
                now,
            )?;
            Ok(())
        })
        .await?;
        self.outbox_wake.notify_one();
        Ok(())
    }
}
