//! A typed HTTP client for Ghostkey's `/v1` API.

use std::time::Duration;

use ghostkey_proto::api::{DevicePublicKeys, EnrollRequest, EnrollResponse, Health};
use ghostkey_proto::{b64, ErrorCode, Problem};
use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::sealed::SealError;

/// What went wrong with a call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Ghostkey refused the request with a problem document. `code` is `None` only for a
    /// code newer than this library; `problem.code` still holds it.
    #[error("ghostkey refused the request: {} ({})", problem.code, problem.title)]
    Api {
        /// The typed code.
        code: Option<ErrorCode>,
        /// The whole problem document.
        problem: Problem,
    },
    /// The request did not reach Ghostkey or the answer did not arrive.
    #[error("transport: {0}")]
    Transport(#[from] reqwest::Error),
    /// Ghostkey answered something that is not part of the protocol.
    #[error("unexpected answer (HTTP {status}): {detail}")]
    Unexpected {
        /// The HTTP status.
        status: u16,
        /// What was wrong with it.
        detail: String,
    },
    /// A sealed virtual device could not be made or opened.
    #[error(transparent)]
    Format(#[from] SealError),
    /// The base URL is unusable.
    #[error("bad base URL: {0}")]
    BadUrl(String),
}

impl ClientError {
    /// The stable error code, if Ghostkey answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => *code,
            _ => None,
        }
    }
}

/// A Ghostkey API client. Cheap to clone; reuse one per process.
#[derive(Debug, Clone)]
pub struct Client {
    base: Url,
    http: reqwest::Client,
}

impl Client {
    /// A client for the Ghostkey at `base_url` (such as `https://ghostkey.example.org`),
    /// with a 30-second timeout per request.
    pub fn new(base_url: &str) -> Result<Client, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()?;
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
    ) -> Result<EnrollResponse, ClientError> {
        let body = EnrollRequest {
            sealed_virtual_device: b64::encode(sealed_virtual_device),
            virtual_device: virtual_device.clone(),
        };
        self.post("/v1/enrollments", assertion, &body, StatusCode::CREATED)
            .await
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

async fn answer<T: DeserializeOwned>(
    res: reqwest::Response,
    expected: StatusCode,
) -> Result<T, ClientError> {
    let status = res.status();
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
            problem,
        }),
        Err(_) => Err(ClientError::Unexpected {
            status: status.as_u16(),
            detail: "not a problem document".into(),
        }),
    }
}
