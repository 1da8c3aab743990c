//! Verification methods: add (with a proof once one is confirmed), list, remove, and the
//! lifting of a user's lock by the app provider.

use ghostkey_proto::api::{
    AddMethodRequest, AddMethodResponse, ChallengePurpose as WireChallengePurpose, ChallengeView,
    MethodList, MethodState as WireMethodState, MethodView, PassphraseParams, RemoveMethodRequest,
    TotpProvisioning, UnlockRequest, UnlockResponse,
};
use ghostkey_proto::assertion::Purpose;
use ghostkey_proto::ErrorCode;
use secrecy::{ExposeSecret, SecretString};

use super::{authenticate, messages, parse_proof, refusal_at, Caller, Ghostkey};
use crate::clock::UnixTime;
use crate::domain::app::App;
use crate::domain::assertion::{AssertionRules, VerifiedAssertion};
use crate::domain::challenge::{Challenge, ChallengePurpose, ChallengeState};
use crate::domain::limits::{address_limit, send_limits, Limit};
use crate::domain::method::{
    mask_email, mask_phone, new_id, normalise_email, normalise_phone, rate_limit_form, Method,
    MethodState,
};
use crate::domain::policy::MethodKind;
use crate::domain::{code, totp};
use crate::error::Error;
use crate::keys::ServerKeys;
use crate::store::{
    AddMethod, NewMessage, ProofAnswer, RemoveMethod, Store, UnlockUser, UserRecord,
};

/// Most methods (pending included) a user may have.
pub const MAX_METHODS_PER_USER: usize = 10;

/// An authenticated request about one user: the assertion, the user and their app.
pub(crate) struct UserContext {
    pub assertion: VerifiedAssertion,
    pub user: UserRecord,
    pub app: App,
}

/// Verifies the assertion, spends one unit of the caller's address limit and loads the
/// user and their app.
pub(crate) fn load_user(
    store: &dyn Store,
    rules: &AssertionRules,
    token: &str,
    purposes: &[Purpose],
    address_mac: &[u8],
    now: UnixTime,
) -> Result<UserContext, Error> {
    let (assertion, app, address) =
        authenticate_caller(store, rules, token, purposes, address_mac, now)?;
    store.take_limits(&[address], now)?;
    let user = store
        .user(&assertion.app_id, &assertion.user_id)?
        .ok_or_else(|| Error::new(ErrorCode::NotEnrolled))?;
    Ok(UserContext {
        assertion,
        user,
        app,
    })
}

/// Like `load_user`, but the caller's address limit is only checked, and its unit
/// returned: the request's own write spends it (one transaction instead of two on the
/// recovery path), or `Ghostkey::spend_refused_on` when the request stops before that write.
pub(crate) fn load_user_unspent(
    store: &dyn Store,
    rules: &AssertionRules,
    token: &str,
    purposes: &[Purpose],
    address_mac: &[u8],
    now: UnixTime,
) -> Result<(UserContext, Limit), Error> {
    let (assertion, app, address) =
        authenticate_caller(store, rules, token, purposes, address_mac, now)?;
    store.limits_allow(std::slice::from_ref(&address), now)?;
    let Some(user) = store.user(&assertion.app_id, &assertion.user_id)? else {
        store.take_limits(&[address], now)?;
        return Err(Error::new(ErrorCode::NotEnrolled));
    };
    Ok((
        UserContext {
            assertion,
            user,
            app,
        },
        address,
    ))
}

/// Verifies the assertion and names the caller's address limit under its app.
fn authenticate_caller(
    store: &dyn Store,
    rules: &AssertionRules,
    token: &str,
    purposes: &[Purpose],
    address_mac: &[u8],
    now: UnixTime,
) -> Result<(VerifiedAssertion, App, Limit), Error> {
    let assertion = authenticate(store, rules, token, purposes, now)?;
    let app = store
        .app(&assertion.app_id)?
        .ok_or_else(|| Error::internal("a verified assertion names a missing app"))?;
    let address = address_limit(
        &app.id,
        address_mac,
        app.policy.requests_per_address_per_minute,
    );
    Ok((assertion, app, address))
}

/// The masked destination of a method, or a passkey's name (`None` for TOTP and
/// passphrase).
pub(crate) fn masked(keys: &ServerKeys, method: &Method) -> Result<Option<String>, Error> {
    let mask: fn(&SecretString) -> String = match method.kind {
        MethodKind::Totp | MethodKind::Passphrase => return Ok(None),
        MethodKind::Passkey => {
            let plain = keys
                .open(&method.key_id, &method.secret)
                .map_err(Error::internal)?;
            let secret =
                crate::domain::passkey::MethodSecret::decode(&plain).map_err(Error::internal)?;
            return Ok(Some(secret.masked()));
        }
        MethodKind::Sms => mask_phone,
        MethodKind::Email => mask_email,
    };
    let plain = keys
        .open(&method.key_id, &method.secret)
        .map_err(Error::internal)?;
    let text = String::from_utf8(plain.to_vec())
        .map_err(|_| Error::internal("stored destination is not UTF-8"))?;
    Ok(Some(mask(&SecretString::from(text))))
}

pub fn method_view(keys: &ServerKeys, method: &Method) -> Result<MethodView, Error> {
    Ok(MethodView {
        id: method.id.clone(),
        kind: method.kind,
        state: match method.state {
            MethodState::Pending => WireMethodState::Pending,
            MethodState::Confirmed => WireMethodState::Confirmed,
        },
        masked: masked(keys, method)?,
        created_at: method.created_at,
        confirmed_at: method.confirmed_at,
    })
}

/// The derivation parameters a passphrase method's challenges show (`None` for the other
/// kinds).
pub(crate) fn passphrase_params(
    keys: &ServerKeys,
    method: &Method,
) -> Result<Option<PassphraseParams>, Error> {
    if method.kind != MethodKind::Passphrase {
        return Ok(None);
    }
    let plain = keys
        .open(&method.key_id, &method.secret)
        .map_err(Error::internal)?;
    let stored = crate::domain::passphrase::Stored::decode(&plain)?;
    PassphraseParams::of_version(stored.version)
        .map(Some)
        .ok_or_else(|| Error::internal("a passphrase method has an unknown parameter version"))
}

pub(crate) fn challenge_view(
    ch: &Challenge,
    kind: MethodKind,
    masked: Option<String>,
    passphrase: Option<PassphraseParams>,
    webauthn: Option<serde_json::Value>,
) -> ChallengeView {
    ChallengeView {
        id: ch.id.clone(),
        purpose: match ch.purpose {
            ChallengePurpose::Confirm => WireChallengePurpose::Confirm,
            ChallengePurpose::Proof => WireChallengePurpose::Proof,
            ChallengePurpose::Recover => WireChallengePurpose::Recover,
        },
        method_id: ch.method_id.clone(),
        kind,
        masked,
        expires_at: ch.expires_at,
        max_attempts: ch.max_attempts,
        passphrase,
        webauthn,
    }
}

/// A new challenge on `method`; for SMS and e-mail, with a fresh code whose MAC it keeps,
/// the message that carries the code, and the send limits that message spends; for a
/// passkey, the WebAuthn options for the client (its ceremony state is in the challenge).
pub(crate) struct NewChallenge {
    pub challenge: Challenge,
    pub message: Option<NewMessage>,
    pub limits: Vec<Limit>,
    pub webauthn: Option<serde_json::Value>,
}

impl Ghostkey {
    pub(crate) fn caller_mac(&self, caller: Caller) -> Vec<u8> {
        self.keys.destination_mac(
            "client-address",
            &crate::domain::limits::address_key(caller.address),
        )
    }

    pub(crate) async fn new_challenge(
        &self,
        method: &Method,
        purpose: ChallengePurpose,
        opened_by: Purpose,
        app: &App,
        now: UnixTime,
    ) -> Result<NewChallenge, Error> {
        // Only a passkey's ceremony reads the store (its relying party, the user's other
        // credentials): one trip to the blocking pool for it, none for the other kinds.
        if method.kind == MethodKind::Passkey {
            let (this, method, app) = (self.clone(), method.clone(), app.clone());
            return self
                .blocking(move |store, _| {
                    this.new_challenge_on(store, &method, purpose, opened_by, &app, now)
                })
                .await;
        }
        self.new_challenge_with(method, purpose, opened_by, app, now, None)
    }

    /// [`Ghostkey::new_challenge`] inside a store call already on the blocking pool.
    pub(crate) fn new_challenge_on(
        &self,
        store: &dyn Store,
        method: &Method,
        purpose: ChallengePurpose,
        opened_by: Purpose,
        app: &App,
        now: UnixTime,
    ) -> Result<NewChallenge, Error> {
        let ceremony = match method.kind {
            MethodKind::Passkey => Some(self.passkey_ceremony_on(store, method, purpose, app)?),
            _ => None,
        };
        self.new_challenge_with(method, purpose, opened_by, app, now, ceremony)
    }

    /// A new challenge for `method`: its code and message (SMS, e-mail), or the passkey
    /// ceremony already started (state, options). No I/O.
    fn new_challenge_with(
        &self,
        method: &Method,
        purpose: ChallengePurpose,
        opened_by: Purpose,
        app: &App,
        now: UnixTime,
        ceremony: Option<(Vec<u8>, serde_json::Value)>,
    ) -> Result<NewChallenge, Error> {
        let policy = &app.policy;
        // TOTP and passphrase challenges have no code of their own: nothing is sent.
        let (message, hashed) = if !method.kind.is_delivered() {
            (None, None)
        } else {
            let code = code::generate(policy.code_digits);
            // HMAC-SHA256 under the current key's code MAC key, inline: no Argon2 pool.
            let stored = code::store(self.keys.code_mac_key(), &code);
            self.metrics.inc("ghostkey_code_hashes_total", &[]);
            let action = messages::CodeAction::of(purpose, opened_by);
            let message = messages::code(
                &self.keys,
                &app.name,
                &code,
                policy.code_lifetime_secs,
                action,
            );
            (Some(message), Some(stored))
        };
        let limits = match &method.destination_mac {
            Some(mac) => send_limits(
                &app.id,
                mac,
                policy.sends_per_destination_per_hour,
                policy.sends_per_destination_per_day,
                policy.app_daily_send_budget,
            ),
            None => Vec::new(),
        };
        Ok(NewChallenge {
            challenge: Challenge {
                id: new_id("ch_"),
                app_id: method.app_id.clone(),
                user_id: method.user_id.clone(),
                method_id: method.id.clone(),
                purpose,
                code: hashed,
                code_key_id: (hashed.is_some() || ceremony.is_some())
                    .then(|| self.keys.key_id().to_owned()),
                attempts: 0,
                max_attempts: policy.max_attempts_per_challenge,
                state: ChallengeState::Open,
                created_at: now,
                expires_at: now + policy.code_lifetime_secs,
                opened_by: Some(opened_by),
                ceremony: ceremony.as_ref().map(|(state, _)| self.keys.seal(state)),
            },
            message,
            limits,
            webauthn: ceremony.map(|(_, options)| options),
        })
    }

    /// Starts a passkey challenge's WebAuthn ceremony: a registration for `confirm`, an
    /// authentication with the method's credential otherwise. Returns the state to keep
    /// (plaintext, to encrypt) and the options for the client.
    fn passkey_ceremony_on(
        &self,
        store: &dyn Store,
        method: &Method,
        purpose: ChallengePurpose,
        app: &App,
    ) -> Result<(Vec<u8>, serde_json::Value), Error> {
        use crate::domain::passkey::{self, MethodSecret};
        let plain = self
            .keys
            .open(&method.key_id, &method.secret)
            .map_err(Error::internal)?;
        let secret = MethodSecret::decode(&plain).map_err(Error::internal)?;
        let keys = &self.keys;
        {
            let rp = super::passkey_rp(store, &app.policy, &app.id, &app.name)?;
            match (purpose, secret) {
                (ChallengePurpose::Confirm, _) => {
                    // The user's passkeys registered already are excluded: an authenticator
                    // holding one of them makes no second (it would add no second factor).
                    let mut exclude = Vec::new();
                    if let Some(user) = store.user(&method.app_id, &method.user_id)? {
                        for other in user
                            .methods
                            .iter()
                            .filter(|m| m.kind == MethodKind::Passkey)
                        {
                            let plain = keys
                                .open(&other.key_id, &other.secret)
                                .map_err(Error::internal)?;
                            if let MethodSecret::Registered(stored) =
                                MethodSecret::decode(&plain).map_err(Error::internal)?
                            {
                                exclude.push(stored.credential_id().to_vec());
                            }
                        }
                    }
                    // The authenticator shows the user id under the app's name; the user
                    // handle inside the credential is random (see domain::passkey).
                    let started = passkey::start_registration(&rp, &method.user_id, exclude)
                        .map_err(Error::internal)?;
                    Ok((started.state, started.options))
                }
                (_, MethodSecret::Registered(stored)) => {
                    let started =
                        passkey::start_authentication(&rp, &stored).map_err(Error::internal)?;
                    Ok((started.state, started.options))
                }
                (_, MethodSecret::Pending { .. }) => Err(Error::new(ErrorCode::MethodNotConfirmed)),
            }
        }
    }

    /// Adds a method to the assertion's user: pending until its first correct code.
    pub async fn add_method(
        &self,
        token: String,
        caller: Caller,
        request: AddMethodRequest,
    ) -> Result<AddMethodResponse, Error> {
        let now = self.now();
        // Every check of the input comes before anything is spent.
        let destination = match (request.kind, request.destination.as_deref()) {
            (MethodKind::Totp, None) => None,
            (MethodKind::Totp, Some(_)) => {
                return Err(Error::with_detail(
                    ErrorCode::InvalidField,
                    "`destination` must be absent for totp",
                ))
            }
            (MethodKind::Passphrase, None) => None,
            (MethodKind::Passphrase, Some(_)) => {
                return Err(Error::with_detail(
                    ErrorCode::InvalidField,
                    "`destination` must be absent for passphrase",
                ))
            }
            (MethodKind::Passkey, None) => None,
            (MethodKind::Passkey, Some(_)) => {
                return Err(Error::with_detail(
                    ErrorCode::InvalidField,
                    "`destination` must be absent for passkey",
                ))
            }
            (MethodKind::Sms, Some(d)) => Some(normalise_phone(d)?),
            (MethodKind::Email, Some(d)) => Some(normalise_email(d)?),
            (_, None) => {
                return Err(Error::with_detail(
                    ErrorCode::InvalidField,
                    "`destination` is required for sms and email",
                ))
            }
        };
        let passphrase = match (request.kind, request.passphrase.as_ref()) {
            (MethodKind::Passphrase, Some(p)) => Some((
                p.version,
                crate::domain::passphrase::parse_setup(p.version, &p.verifier)?,
            )),
            (MethodKind::Passphrase, None) => {
                return Err(Error::with_detail(
                    ErrorCode::InvalidField,
                    "`passphrase` (version and verifier) is required for passphrase",
                ))
            }
            (_, Some(_)) => {
                return Err(Error::with_detail(
                    ErrorCode::InvalidField,
                    "`passphrase` is only for the passphrase kind",
                ))
            }
            (_, None) => None,
        };
        let passkey_name = match (request.kind, request.passkey.as_ref()) {
            (MethodKind::Passkey, Some(setup)) => setup
                .name
                .as_deref()
                .map(crate::domain::passkey::parse_name)
                .transpose()
                .map_err(|e| {
                    Error::with_detail(ErrorCode::InvalidField, format!("`passkey.name`: {e}"))
                })?,
            (_, Some(_)) => {
                return Err(Error::with_detail(
                    ErrorCode::InvalidField,
                    "`passkey` is only for the passkey kind",
                ))
            }
            (_, None) => None,
        };
        let proof_code = request.proof.as_ref().map(parse_proof).transpose()?;
        let proof_id = request.proof.as_ref().map(|p| p.challenge_id.clone());
        let kind = request.kind;
        let mac = self.caller_mac(caller);
        let (ctx, proof_found) = self
            .blocking(move |store, rules| {
                let ctx = load_user(store, rules, &token, &[Purpose::Enroll, Purpose::Manage], &mac, now)?;
                let has_confirmed = ctx.user.methods.iter().any(|m| m.state == MethodState::Confirmed);
                if has_confirmed && ctx.assertion.purpose != Purpose::Manage {
                    return Err(Error::with_detail(
                        ErrorCode::AssertionWrongPurpose,
                        "once a method is confirmed, adding one needs a `manage` assertion and a proof",
                    ));
                }
                if has_confirmed && proof_id.is_none() {
                    return Err(Error::new(ErrorCode::ProofRequired));
                }
                if !ctx.app.policy.allowed_methods.contains(&kind) {
                    return Err(Error::new(ErrorCode::MethodKindNotAllowed));
                }
                if guard_locked(&ctx.user) {
                    return Err(Error::new(ErrorCode::Locked));
                }
                let proof_found = match &proof_id {
                    Some(id) => store.challenge(id)?,
                    None => None,
                };
                Ok((ctx, proof_found))
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

        let policy = &ctx.app.policy;
        let (secret, destination_mac, provisioning, masked) = match (&destination, kind) {
            (None, MethodKind::Passphrase) => {
                let (version, verifier) = passphrase.ok_or_else(|| {
                    Error::internal("a passphrase method without its checked verifier")
                })?;
                let stored = self.hash_passphrase(version, verifier).await?;
                (self.keys.seal(&stored.encode()), None, None, None)
            }
            (None, MethodKind::Passkey) => {
                let secret = crate::domain::passkey::MethodSecret::Pending { name: passkey_name };
                let masked = secret.masked();
                let plain = secret.encode().map_err(Error::internal)?;
                (self.keys.seal(&plain), None, None, Some(masked))
            }
            (None, _) => {
                let seed = totp::new_seed();
                let p = totp::provisioning(
                    &seed,
                    policy.totp_digits,
                    &ctx.app.name,
                    &ctx.assertion.user_id,
                )?;
                (self.keys.seal(&seed), None, Some(p), None)
            }
            (Some(d), kind) => {
                let masked = if kind == MethodKind::Sms {
                    mask_phone(d)
                } else {
                    mask_email(d)
                };
                let mac = self
                    .keys
                    .destination_mac(kind.as_str(), &rate_limit_form(kind, d.expose_secret()));
                (
                    self.keys.seal(d.expose_secret().as_bytes()),
                    Some(mac),
                    None,
                    Some(masked),
                )
            }
        };
        let method = Method {
            id: new_id("m_"),
            app_id: ctx.assertion.app_id.clone(),
            user_id: ctx.assertion.user_id.clone(),
            kind,
            state: MethodState::Pending,
            key_id: self.keys.key_id().to_owned(),
            secret,
            destination_mac: destination_mac.clone(),
            totp_last_step: None,
            created_at: now,
            confirmed_at: None,
        };
        let new = self
            .new_challenge(
                &method,
                ChallengePurpose::Confirm,
                ctx.assertion.purpose,
                &ctx.app,
                now,
            )
            .await?;
        let answer = AddMethodResponse {
            method: MethodView {
                id: method.id.clone(),
                kind,
                state: WireMethodState::Pending,
                masked: masked.clone(),
                created_at: now,
                confirmed_at: None,
            },
            challenge: challenge_view(
                &new.challenge,
                kind,
                masked,
                passphrase_params(&self.keys, &method)?,
                new.webauthn.clone(),
            ),
            totp: provisioning.map(|p| TotpProvisioning {
                otpauth_uri: p.uri.expose_secret().to_owned(),
                qr_png_base64: p.qr_png_base64.expose_secret().to_owned(),
            }),
        };
        self.blocking(move |store, _| {
            store
                .add_method(
                    &AddMethod {
                        assertion: &ctx.assertion,
                        proof: proof.as_ref(),
                        method: &method,
                        challenge: &new.challenge,
                        message: new.message.as_ref(),
                        limits: &new.limits,
                        max_methods: MAX_METHODS_PER_USER,
                    },
                    now,
                )
                .map_err(|e| refusal_at(e, now))?;
            Ok(())
        })
        .await?;
        self.record_challenge("confirm", kind);
        self.outbox_wake.notify_one();
        Ok(answer)
    }

    /// Lists the user's methods, destinations masked (`manage` assertion, or `recover` for a
    /// new device choosing how to prove itself).
    pub async fn list_methods(&self, token: String, caller: Caller) -> Result<MethodList, Error> {
        let now = self.now();
        let mac = self.caller_mac(caller);
        let ctx = self
            .blocking(move |store, rules| {
                let ctx = load_user(
                    store,
                    rules,
                    &token,
                    &[Purpose::Manage, Purpose::Recover],
                    &mac,
                    now,
                )?;
                store.consume_assertion(&ctx.assertion, now)?;
                Ok(ctx)
            })
            .await?;
        let methods = ctx
            .user
            .methods
            .iter()
            .map(|m| method_view(&self.keys, m))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MethodList { methods })
    }

    /// Removes a method, with a `manage` assertion and a proof; never the last confirmed one.
    pub async fn remove_method(
        &self,
        token: String,
        caller: Caller,
        method_id: String,
        request: RemoveMethodRequest,
    ) -> Result<(), Error> {
        let now = self.now();
        let proof_code = parse_proof(&request.proof)?;
        let mac = self.caller_mac(caller);
        let proof_id = request.proof.challenge_id.clone();
        let (ctx, proof_found) = self
            .blocking(move |store, rules| {
                let ctx = load_user(store, rules, &token, &[Purpose::Manage], &mac, now)?;
                let proof_found = store.challenge(&proof_id)?;
                Ok((ctx, proof_found))
            })
            .await?;
        let target = ctx
            .user
            .methods
            .iter()
            .find(|m| m.id == method_id)
            .ok_or_else(|| Error::new(ErrorCode::MethodNotFound))?;
        let notice = messages::method_removed(
            &self.keys,
            &ctx.app.name,
            target.kind,
            masked(&self.keys, target)?.as_deref(),
        );
        let proof = ProofAnswer {
            verdict: self.judge(proof_found.as_ref(), &proof_code, now).await?,
            challenge_id: request.proof.challenge_id,
            locked_notice: messages::locked(&self.keys, &ctx.app.name),
            cloned_notice: messages::passkey_cloned(&self.keys, &ctx.app.name),
        };
        self.blocking(move |store, _| {
            store
                .remove_method(
                    &RemoveMethod {
                        assertion: &ctx.assertion,
                        proof: &proof,
                        method_id: &method_id,
                        notice: &notice,
                    },
                    now,
                )
                .map_err(|e| refusal_at(e, now))?;
            Ok(())
        })
        .await?;
        self.outbox_wake.notify_one();
        Ok(())
    }

    /// Lifts the user's lock: a `manage` assertion and the user's own proof through a
    /// confirmed method (the app provider alone cannot lift it). The proof is checked
    /// despite the lock, within the failure budget and the back-off.
    pub async fn unlock(
        &self,
        token: String,
        caller: Caller,
        request: UnlockRequest,
    ) -> Result<UnlockResponse, Error> {
        let now = self.now();
        let proof_code = request.proof.as_ref().map(parse_proof).transpose()?;
        let mac = self.caller_mac(caller);
        let proof_id = request.proof.as_ref().map(|p| p.challenge_id.clone());
        let (ctx, proof_found) = self
            .blocking(move |store, rules| {
                let ctx = load_user(store, rules, &token, &[Purpose::Manage], &mac, now)?;
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
        let notice = messages::unlocked(&self.keys, &ctx.app.name, false);
        let was_locked = self
            .blocking(move |store, _| {
                store
                    .unlock_user(
                        &UnlockUser {
                            app_id: &ctx.assertion.app_id,
                            user_id: &ctx.assertion.user_id,
                            assertion: Some(&ctx.assertion),
                            proof: proof.as_ref(),
                            notice: &notice,
                        },
                        now,
                    )
                    .map_err(|e| refusal_at(e, now))
            })
            .await?;
        self.outbox_wake.notify_one();
        Ok(UnlockResponse { was_locked })
    }
}

fn guard_locked(user: &UserRecord) -> bool {
    user.guard.locked_at.is_some()
}
