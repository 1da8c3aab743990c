//! A typed HTTP client for Ghostkey's `/v1` API.

#[cfg(not(target_arch = "wasm32"))]
use std::time::Duration;

use ghostkey_proto::api::{
    AddMethodRequest, AddMethodResponse, AnswerRequest, AnswerResponse, CancelRecoveryRequest,
    CancelWithCodeRequest, ChallengePurpose, ChallengeView, DevicePublicKeys, EnrollRequest,
    EnrollResponse, Health, MethodKind, MethodList, Proof, RecoveryResponse, RemoveMethodRequest,
    ReplaceVirtualDeviceRequest, StartChallengeRequest, StartRecoveryRequest, UnlockRequest,
    UnlockResponse,
};
use ghostkey_proto::{b64, ErrorCode, Problem};
use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use crate::error::ClientError;

/// A Ghostkey API client. Cheap to clone; reuse one per process.
#[derive(Debug, Clone)]
pub struct Client {
    base: Url,
    http: reqwest::Client,
}

impl Client {
    /// A client for the Ghostkey at `base_url` (such as `https://ghostkey.example.org`),
    /// with a 30-second timeout per request.
    ///
    /// In WebAssembly, requests go through the host's `fetch` (browser or Node), which
    /// has no per-request timeout of its own in reqwest; the host's network stack ends
    /// hung connections.
    pub fn new(base_url: &str) -> Result<Client, ClientError> {
        #[cfg(not(target_arch = "wasm32"))]
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
        #[cfg(target_arch = "wasm32")]
        let http = reqwest::Client::builder().build()?;
        Client::with_http(base_url, http)
    }

    /// A client over a caller-configured `reqwest::Client` (proxies, TLS roots, timeouts).
    pub fn with_http(base_url: &str, http: reqwest::Client) -> Result<Client, ClientError> {
        let base = Url::parse(base_url).map_err(|e| ClientError::BadUrl(e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(ClientError::BadUrl(
                "the scheme must be http or https".into(),
            ));
        }
        Ok(Client { base, http })
    }

    fn url(&self, path: &str) -> Result<Url, ClientError> {
        self.base
            .join(path)
            .map_err(|e| ClientError::BadUrl(e.to_string()))
    }

    /// Liveness: `GET /healthz`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        let res = self.http.get(self.url("/healthz")?).send().await?;
        answer(res, StatusCode::OK).await
    }

    /// Readiness: `GET /readyz`.
    pub async fn ready(&self) -> Result<Health, ClientError> {
        let res = self.http.get(self.url("/readyz")?).send().await?;
        answer(res, StatusCode::OK).await
    }

    /// `POST /v1/enrollments`: stores a sealed virtual device with an `enroll` assertion.
    pub async fn enroll(
        &self,
        assertion: &str,
        sealed_virtual_device: &[u8],
        virtual_device: &DevicePublicKeys,
        root_block: &[u8],
    ) -> Result<EnrollResponse, ClientError> {
        let body = EnrollRequest {
            sealed_virtual_device: b64::encode(sealed_virtual_device),
            virtual_device: virtual_device.clone(),
            root_block: b64::encode(root_block),
        };
        self.post("/v1/enrollments", assertion, &body, StatusCode::CREATED)
            .await
    }

    /// `POST /v1/methods`: adds a verification method. While the user has no confirmed
    /// method, use an `enroll` assertion and no proof; afterwards a `manage` assertion and
    /// a proof through a confirmed method. `destination` is the phone number (SMS) or the
    /// address (e-mail); `None` for TOTP.
    pub async fn add_method(
        &self,
        assertion: &str,
        kind: MethodKind,
        destination: Option<&str>,
        proof: Option<Proof>,
    ) -> Result<AddMethodResponse, ClientError> {
        let body = AddMethodRequest {
            kind,
            destination: destination.map(str::to_owned),
            passphrase: None,
            passkey: None,
            proof,
        };
        self.post("/v1/methods", assertion, &body, StatusCode::CREATED)
            .await
    }

    /// `POST /v1/methods` for a passphrase method: `setup` is the verifier derived with
    /// [`crate::passphrase::setup`] (the passphrase itself never leaves the device).
    /// Assertion and proof as for [`Client::add_method`]; confirm it with
    /// [`Client::answer`] and the verifier derived again from the passphrase typed again.
    pub async fn add_passphrase(
        &self,
        assertion: &str,
        setup: ghostkey_proto::api::PassphraseSetup,
        proof: Option<Proof>,
    ) -> Result<AddMethodResponse, ClientError> {
        let body = AddMethodRequest {
            kind: MethodKind::Passphrase,
            destination: None,
            passphrase: Some(setup),
            passkey: None,
            proof,
        };
        self.post("/v1/methods", assertion, &body, StatusCode::CREATED)
            .await
    }

    /// `POST /v1/methods` for a passkey method, with the name the user gives it (if any).
    /// The answer's challenge carries `webauthn` creation options: pass them to the
    /// authenticator (`navigator.credentials.create`, or any WebAuthn client) and confirm
    /// with [`Client::answer_webauthn`] and the new credential. Assertion and proof as for
    /// [`Client::add_method`].
    pub async fn add_passkey(
        &self,
        assertion: &str,
        name: Option<&str>,
        proof: Option<Proof>,
    ) -> Result<AddMethodResponse, ClientError> {
        let body = AddMethodRequest {
            kind: MethodKind::Passkey,
            destination: None,
            passphrase: None,
            passkey: Some(ghostkey_proto::api::PasskeySetup {
                name: name.map(str::to_owned),
            }),
            proof,
        };
        self.post("/v1/methods", assertion, &body, StatusCode::CREATED)
            .await
    }

    /// `GET /v1/methods`: the user's methods, masked (`manage` assertion).
    pub async fn list_methods(&self, assertion: &str) -> Result<MethodList, ClientError> {
        let res = self
            .http
            .get(self.url("/v1/methods")?)
            .bearer_auth(assertion)
            .send()
            .await?;
        answer(res, StatusCode::OK).await
    }

    /// `POST /v1/methods/{id}/remove`: removes a method (`manage` assertion and a proof).
    pub async fn remove_method(
        &self,
        assertion: &str,
        method_id: &str,
        proof: Proof,
    ) -> Result<(), ClientError> {
        let path = format!("/v1/methods/{}/remove", path_segment(method_id)?);
        let res = self
            .http
            .post(self.url(&path)?)
            .bearer_auth(assertion)
            .json(&RemoveMethodRequest { proof })
            .send()
            .await?;
        let status = res.status();
        if status == StatusCode::NO_CONTENT {
            return Ok(());
        }
        answer::<serde_json::Value>(res, StatusCode::NO_CONTENT)
            .await
            .map(|_| ())
    }

    /// `POST /v1/challenges`: a new code for a pending method (`confirm`), or a proof
    /// challenge on a confirmed method (`proof`).
    pub async fn start_challenge(
        &self,
        assertion: &str,
        method_id: &str,
        purpose: ChallengePurpose,
    ) -> Result<ChallengeView, ClientError> {
        let body = StartChallengeRequest {
            method_id: method_id.to_owned(),
            purpose,
        };
        self.post("/v1/challenges", assertion, &body, StatusCode::CREATED)
            .await
    }

    /// `POST /v1/challenges/{id}/answer`: the code the user typed, for a `confirm` challenge.
    pub async fn answer(
        &self,
        challenge_id: &str,
        code: &str,
    ) -> Result<AnswerResponse, ClientError> {
        let path = format!("/v1/challenges/{}/answer", path_segment(challenge_id)?);
        self.post_answer(&path, &AnswerRequest::with_code(code))
            .await
    }

    /// `POST /v1/challenges/{id}/answer` for a passkey method: the new credential
    /// (`RegisterPublicKeyCredential` JSON) the authenticator made from the challenge's
    /// `webauthn` creation options.
    pub async fn answer_webauthn(
        &self,
        challenge_id: &str,
        credential: serde_json::Value,
    ) -> Result<AnswerResponse, ClientError> {
        let path = format!("/v1/challenges/{}/answer", path_segment(challenge_id)?);
        self.post_answer(&path, &AnswerRequest::with_webauthn(credential))
            .await
    }

    /// `POST /v1/users/unlock`: lifts the user's lock (`manage` assertion) with the user's
    /// proof through a confirmed method (required once they have one).
    pub async fn unlock(
        &self,
        assertion: &str,
        proof: Option<Proof>,
    ) -> Result<UnlockResponse, ClientError> {
        self.post(
            "/v1/users/unlock",
            assertion,
            &UnlockRequest { proof },
            StatusCode::OK,
        )
        .await
    }

    /// `POST /v1/recoveries`: starts a recovery with a confirmed method (`recover`
    /// assertion). The code goes by SMS or e-mail; for TOTP, the user types their app's code.
    pub async fn start_recovery(
        &self,
        assertion: &str,
        method_id: &str,
    ) -> Result<ChallengeView, ClientError> {
        let body = StartRecoveryRequest {
            method_id: method_id.to_owned(),
        };
        self.post("/v1/recoveries", assertion, &body, StatusCode::CREATED)
            .await
    }

    /// `POST /v1/recoveries/{id}/verify`: the code the user typed. Released at once, or
    /// `waiting` until the app's waiting period ends.
    pub async fn verify_recovery(
        &self,
        recovery_id: &str,
        code: &str,
    ) -> Result<RecoveryResponse, ClientError> {
        let path = format!("/v1/recoveries/{}/verify", path_segment(recovery_id)?);
        self.post_answer(&path, &AnswerRequest::with_code(code))
            .await
    }

    /// `POST /v1/recoveries/{id}/verify` for a passkey method: the authenticator's
    /// assertion (`PublicKeyCredential` JSON) made from the challenge's `webauthn` request
    /// options.
    pub async fn verify_recovery_webauthn(
        &self,
        recovery_id: &str,
        assertion: serde_json::Value,
    ) -> Result<RecoveryResponse, ClientError> {
        let path = format!("/v1/recoveries/{}/verify", path_segment(recovery_id)?);
        self.post_answer(&path, &AnswerRequest::with_webauthn(assertion))
            .await
    }

    /// `POST /v1/recoveries/cancel`: cancels the recovery a notice's cancel code belongs
    /// to. No assertion: the user needs nothing from the app provider to do it.
    pub async fn cancel_recovery_with_code(
        &self,
        cancel_code: &str,
    ) -> Result<RecoveryResponse, ClientError> {
        let body = CancelWithCodeRequest {
            cancel_code: cancel_code.to_owned(),
        };
        let res = self
            .http
            .post(self.url("/v1/recoveries/cancel")?)
            .json(&body)
            .send()
            .await?;
        answer(res, StatusCode::OK).await
    }

    /// `POST /v1/recoveries/{id}/release`: after the waiting period (`recover` assertion).
    pub async fn release_recovery(
        &self,
        assertion: &str,
        recovery_id: &str,
    ) -> Result<RecoveryResponse, ClientError> {
        let path = format!("/v1/recoveries/{}/release", path_segment(recovery_id)?);
        self.post(&path, assertion, &serde_json::json!({}), StatusCode::OK)
            .await
    }

    /// `POST /v1/recoveries/{id}/cancel`: a `manage` assertion alone, or a `recover`
    /// assertion with a proof.
    pub async fn cancel_recovery(
        &self,
        assertion: &str,
        recovery_id: &str,
        proof: Option<Proof>,
    ) -> Result<RecoveryResponse, ClientError> {
        let path = format!("/v1/recoveries/{}/cancel", path_segment(recovery_id)?);
        self.post(
            &path,
            assertion,
            &CancelRecoveryRequest { proof },
            StatusCode::OK,
        )
        .await
    }

    /// `POST /v1/virtual-device/replace`: stores the virtual device sealed under a new
    /// user secret (`manage` assertion and a proof).
    pub async fn replace_virtual_device(
        &self,
        assertion: &str,
        sealed_virtual_device: &[u8],
        proof: Proof,
    ) -> Result<(), ClientError> {
        let body = ReplaceVirtualDeviceRequest {
            sealed_virtual_device: b64::encode(sealed_virtual_device),
            proof,
        };
        self.post_no_content("/v1/virtual-device/replace", assertion, &body)
            .await
    }

    /// `POST /v1/users/erase`: deletes everything Ghostkey holds for the user (`manage`).
    pub async fn erase_user(&self, assertion: &str) -> Result<(), ClientError> {
        self.post_no_content("/v1/users/erase", assertion, &serde_json::json!({}))
            .await
    }

    /// `POST /v1/chain/blocks`: appends a block to the assertion user's chain.
    pub async fn append_block(&self, assertion: &str, block: &[u8]) -> Result<(), ClientError> {
        let body = ghostkey_proto::api::AppendBlockRequest {
            block: b64::encode(block),
        };
        self.post_no_content("/v1/chain/blocks", assertion, &body)
            .await
    }

    /// `GET /v1/chains/{user_id}`: a user's chain (any assertion of the same app), as
    /// stored; verify it with [`ghostkey_proto::chain::verify_chain`] before trusting it.
    pub async fn chain(&self, assertion: &str, user_id: &str) -> Result<Vec<Vec<u8>>, ClientError> {
        let path = format!("/v1/chains/{}", path_segment(user_id)?);
        let res = self
            .http
            .get(self.url(&path)?)
            .bearer_auth(assertion)
            .send()
            .await?;
        let chain: ghostkey_proto::api::ChainResponse = answer(res, StatusCode::OK).await?;
        chain
            .blocks
            .iter()
            .map(|b| {
                b64::decode(b).map_err(|_| ClientError::Unexpected {
                    status: 200,
                    detail: "a block is not base64url".into(),
                })
            })
            .collect()
    }

    /// Posts an answer to a challenge's own URL: the challenge id is the handle, no
    /// assertion goes with it.
    async fn post_answer<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &AnswerRequest,
    ) -> Result<T, ClientError> {
        let res = self.http.post(self.url(path)?).json(body).send().await?;
        answer(res, StatusCode::OK).await
    }

    async fn post_no_content<B: Serialize>(
        &self,
        path: &str,
        assertion: &str,
        body: &B,
    ) -> Result<(), ClientError> {
        let res = self
            .http
            .post(self.url(path)?)
            .bearer_auth(assertion)
            .json(body)
            .send()
            .await?;
        if res.status() == StatusCode::NO_CONTENT {
            return Ok(());
        }
        answer::<serde_json::Value>(res, StatusCode::NO_CONTENT)
            .await
            .map(|_| ())
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        assertion: &str,
        body: &B,
        expected: StatusCode,
    ) -> Result<T, ClientError> {
        let res = self
            .http
            .post(self.url(path)?)
            .bearer_auth(assertion)
            .json(body)
            .send()
            .await?;
        answer(res, expected).await
    }
}

/// Ids go into paths: only their own alphabet, so nothing can change the path.
fn path_segment(id: &str) -> Result<&str, ClientError> {
    if !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(id)
    } else {
        Err(ClientError::BadUrl(format!("`{id}` is not a valid id")))
    }
}

async fn answer<T: DeserializeOwned>(
    res: reqwest::Response,
    expected: StatusCode,
) -> Result<T, ClientError> {
    let status = res.status();
    // Read before the body consumes the response. Only the delta-seconds form: Ghostkey
    // never sends an HTTP date.
    let retry_after = res
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let bytes = res.bytes().await?;
    if status == expected {
        return serde_json::from_slice(&bytes).map_err(|e| ClientError::Unexpected {
            status: status.as_u16(),
            detail: format!("body does not match the protocol: {e}"),
        });
    }
    match serde_json::from_slice::<Problem>(&bytes) {
        Ok(problem) => Err(ClientError::Api {
            code: ErrorCode::from_code(&problem.code),
            problem: Box::new(problem),
            retry_after,
        }),
        Err(_) => Err(ClientError::Unexpected {
            status: status.as_u16(),
            detail: "not a problem document".into(),
        }),
    }
}
