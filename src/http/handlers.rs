//! Handlers: extract, call the service, answer. No logic of their own.

use actix_web::http::header::{self, HeaderValue};
use actix_web::ResponseError;
use actix_web::{web, HttpRequest, HttpResponse};
use ghostkey_proto::api::{
    AddMethodRequest, AnswerRequest, EnrollRequest, Health, RemoveMethodRequest,
    StartChallengeRequest, UnlockRequest,
};
use ghostkey_proto::api::{
    CancelRecoveryRequest, CancelWithCodeRequest, ReplaceVirtualDeviceRequest, StartRecoveryRequest,
};
use ghostkey_proto::ErrorCode;
use ipnet::IpNet;

use super::client_addr::client_address;
use crate::error::Error;
use crate::service::{Caller, Ghostkey};

fn caller(req: &HttpRequest, proxies: &[IpNet]) -> Caller {
    Caller {
        address: client_address(req, proxies),
    }
}

/// Path ids are random tokens of a fixed alphabet; anything else is refused before use.
fn path_id(value: &str) -> Result<String, Error> {
    if (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        Ok(value.to_owned())
    } else {
        Err(Error::with_detail(
            ErrorCode::InvalidField,
            "malformed id in the path",
        ))
    }
}

/// The assertion from `Authorization: Bearer <jwt>`.
fn bearer(req: &HttpRequest) -> Result<String, Error> {
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(|| Error::new(ErrorCode::MissingAssertion))?;
    let value = value.to_str().map_err(|_| {
        Error::with_detail(
            ErrorCode::InvalidAssertion,
            "the Authorization header is not ASCII",
        )
    })?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim().to_owned())
        }
        _ => Err(Error::with_detail(
            ErrorCode::MissingAssertion,
            "expected `Authorization: Bearer <assertion>`",
        )),
    }
}

#[utoipa::path(
    get,
    path = "/healthz",
    responses((status = 200, description = "Alive", body = ghostkey_proto::api::Health)),
)]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok".into(),
    })
}

#[utoipa::path(
    get,
    path = "/readyz",
    responses((status = 200, description = "Ready: the store answers", body = ghostkey_proto::api::Health)),
)]
pub async fn readyz(service: web::Data<Ghostkey>) -> Result<HttpResponse, Error> {
    match service.ready().await {
        Ok(()) => Ok(HttpResponse::Ok().json(Health {
            status: "ok".into(),
        })),
        Err(e) => {
            tracing::warn!(cause = ?e.cause, "not ready");
            Err(Error::new(ErrorCode::Unavailable))
        }
    }
}

#[utoipa::path(
    post,
    path = "/v1/enrollments",
    request_body = ghostkey_proto::api::EnrollRequest,
    responses((status = 201, description = "Stored, pending until a method is confirmed (`enroll` assertion)", body = ghostkey_proto::api::EnrollResponse)),
    security(("assertion" = []))
)]
pub async fn enroll(
    service: web::Data<Ghostkey>,
    proxies: web::Data<Vec<IpNet>>,
    req: HttpRequest,
    body: web::Json<EnrollRequest>,
) -> Result<HttpResponse, Error> {
    let token = bearer(&req)?;
    let answer = service
        .enroll(token, caller(&req, &proxies), body.into_inner())
        .await?;
    Ok(HttpResponse::Created().json(answer))
}

#[utoipa::path(
    post,
    path = "/v1/methods",
    request_body = ghostkey_proto::api::AddMethodRequest,
    responses((status = 201, description = "Pending method and its confirmation challenge (`enroll`; `manage` and a proof once a method is confirmed)", body = ghostkey_proto::api::AddMethodResponse)),
    security(("assertion" = []))
)]
pub async fn add_method(
    service: web::Data<Ghostkey>,
    proxies: web::Data<Vec<IpNet>>,
    req: HttpRequest,
    body: web::Json<AddMethodRequest>,
) -> Result<HttpResponse, Error> {
    let token = bearer(&req)?;
    let answer = service
        .add_method(token, caller(&req, &proxies), body.into_inner())
        .await?;
    Ok(HttpResponse::Created().json(answer))
}

#[utoipa::path(
    get,
    path = "/v1/methods",
    responses((status = 200, description = "The user's methods, masked (`manage` or `recover`)", body = ghostkey_proto::api::MethodList)),
    security(("assertion" = []))
)]
pub async fn list_methods(
    service: web::Data<Ghostkey>,
    proxies: web::Data<Vec<IpNet>>,
    req: HttpRequest,
) -> Result<HttpResponse, Error> {
    let token = bearer(&req)?;
    let answer = service.list_methods(token, caller(&req, &proxies)).await?;
    Ok(HttpResponse::Ok().json(answer))
}

#[utoipa::path(
    post,
    path = "/v1/methods/{method_id}/remove",
    params(("method_id" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,64}$", description = "The method")),
    request_body = ghostkey_proto::api::RemoveMethodRequest,
    responses((status = 204, description = "Removed (`manage` and a proof)")),
    security(("assertion" = []))
)]
pub async fn remove_method(
    service: web::Data<Ghostkey>,
    proxies: web::Data<Vec<IpNet>>,
    req: HttpRequest,
    method_id: web::Path<String>,
    body: web::Json<RemoveMethodRequest>,
) -> Result<HttpResponse, Error> {
    let token = bearer(&req)?;
    let method_id = path_id(&method_id)?;
    service
        .remove_method(token, caller(&req, &proxies), method_id, body.into_inner())
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(
    post,
    path = "/v1/challenges",
    request_body = ghostkey_proto::api::StartChallengeRequest,
    responses((status = 201, description = "Started", body = ghostkey_proto::api::ChallengeView)),
    security(("assertion" = []))
)]
pub async fn start_challenge(
    service: web::Data<Ghostkey>,
    proxies: web::Data<Vec<IpNet>>,
    req: HttpRequest,
    body: web::Json<StartChallengeRequest>,
) -> Result<HttpResponse, Error> {
    let token = bearer(&req)?;
    let answer = service
        .start_challenge(token, caller(&req, &proxies), body.into_inner())
        .await?;
    Ok(HttpResponse::Created().json(answer))
}

#[utoipa::path(
    post,
    path = "/v1/challenges/{challenge_id}/answer",
    params(("challenge_id" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,64}$", description = "The challenge")),
    request_body = ghostkey_proto::api::AnswerRequest,
    responses((status = 200, description = "Code accepted: the method is confirmed", body = ghostkey_proto::api::AnswerResponse)),
)]
pub async fn answer(
    service: web::Data<Ghostkey>,
    proxies: web::Data<Vec<IpNet>>,
    req: HttpRequest,
    challenge_id: web::Path<String>,
    body: web::Json<AnswerRequest>,
) -> Result<HttpResponse, Error> {
    let challenge_id = path_id(&challenge_id)?;
    let answer = service
        .answer(caller(&req, &proxies), challenge_id, body.into_inner())
        .await?;
    Ok(HttpResponse::Ok().json(answer))
}

#[utoipa::path(
    post,
    path = "/v1/users/unlock",
    request_body = ghostkey_proto::api::UnlockRequest,
    responses((status = 200, description = "Lock lifted (`manage` and the user's proof)", body = ghostkey_proto::api::UnlockResponse)),
    security(("assertion" = []))
)]
pub async fn unlock(
    service: web::Data<Ghostkey>,
    proxies: web::Data<Vec<IpNet>>,
    req: HttpRequest,
    body: web::Json<UnlockRequest>,
) -> Result<HttpResponse, Error> {
    let token = bearer(&req)?;
    let answer = service
        .unlock(token, caller(&req, &proxies), body.into_inner())
        .await?;
    Ok(HttpResponse::Ok().json(answer))
}

#[utoipa::path(
    post,
    path = "/v1/recoveries",
    request_body = ghostkey_proto::api::StartRecoveryRequest,
    responses((status = 201, description = "Recovery started (`recover`)", body = ghostkey_proto::api::ChallengeView)),
    security(("assertion" = []))
)]
pub async fn start_recovery(
    service: web::Data<Ghostkey>,
    proxies: web::Data<Vec<IpNet>>,
    req: HttpRequest,
    body: web::Json<StartRecoveryRequest>,
) -> Result<HttpResponse, Error> {
    let token = bearer(&req)?;
    let answer = service
        .start_recovery(token, caller(&req, &proxies), body.into_inner())
        .await?;
    Ok(HttpResponse::Created().json(answer))
}

#[utoipa::path(
    post,
    path = "/v1/recoveries/{recovery_id}/verify",
    params(("recovery_id" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,64}$", description = "The recovery")),
    request_body = ghostkey_proto::api::AnswerRequest,
    responses((status = 200, description = "Released, or waiting", body = ghostkey_proto::api::RecoveryResponse)),
)]
pub async fn verify_recovery(
    service: web::Data<Ghostkey>,
    proxies: web::Data<Vec<IpNet>>,
    req: HttpRequest,
    recovery_id: web::Path<String>,
    body: web::Json<AnswerRequest>,
) -> Result<HttpResponse, Error> {
    let recovery_id = path_id(&recovery_id)?;
    let answer = service
        .verify_recovery(caller(&req, &proxies), recovery_id, body.into_inner())
        .await?;
    Ok(HttpResponse::Ok().json(answer))
}

#[utoipa::path(
    post,
    path = "/v1/recoveries/{recovery_id}/release",
    params(("recovery_id" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,64}$", description = "The recovery")),
    responses((status = 200, description = "Released after the waiting period (`recover`)", body = ghostkey_proto::api::RecoveryResponse)),
    security(("assertion" = []))
)]
pub async fn release_recovery(
    service: web::Data<Ghostkey>,
    proxies: web::Data<Vec<IpNet>>,
    req: HttpRequest,
    recovery_id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let token = bearer(&req)?;
    let recovery_id = path_id(&recovery_id)?;
    let answer = service
        .release_recovery(token, caller(&req, &proxies), recovery_id)
        .await?;
    Ok(HttpResponse::Ok().json(answer))
}

#[utoipa::path(
    post,
    path = "/v1/recoveries/cancel",
    request_body = ghostkey_proto::api::CancelWithCodeRequest,
    responses((status = 200, description = "Cancelled with the cancel code of a notice (no assertion)", body = ghostkey_proto::api::RecoveryResponse))
)]
pub async fn cancel_recovery_with_code(
    service: web::Data<Ghostkey>,
    proxies: web::Data<Vec<IpNet>>,
    req: HttpRequest,
    body: web::Json<CancelWithCodeRequest>,
) -> Result<HttpResponse, Error> {
    let answer = service
        .cancel_recovery_with_code(caller(&req, &proxies), body.into_inner())
        .await?;
    Ok(HttpResponse::Ok().json(answer))
}

#[utoipa::path(
    post,
    path = "/v1/recoveries/{recovery_id}/cancel",
    params(("recovery_id" = String, Path, pattern = r"^[A-Za-z0-9_-]{1,64}$", description = "The recovery")),
    request_body = ghostkey_proto::api::CancelRecoveryRequest,
    responses((status = 200, description = "Cancelled (`manage`, or `recover` and a proof)", body = ghostkey_proto::api::RecoveryResponse)),
    security(("assertion" = []))
)]
pub async fn cancel_recovery(
    service: web::Data<Ghostkey>,
    proxies: web::Data<Vec<IpNet>>,
    req: HttpRequest,
    recovery_id: web::Path<String>,
    body: web::Json<CancelRecoveryRequest>,
) -> Result<HttpResponse, Error> {
    let token = bearer(&req)?;
    let recovery_id = path_id(&recovery_id)?;
    let answer = service
        .cancel_recovery(
            token,
            caller(&req, &proxies),
            recovery_id,
            body.into_inner(),
        )
        .await?;
    Ok(HttpResponse::Ok().json(answer))
}

#[utoipa::path(
    post,
    path = "/v1/virtual-device/replace",
    request_body = ghostkey_proto::api::ReplaceVirtualDeviceRequest,
    responses((status = 204, description = "Replaced (`manage` and a proof)")),
    security(("assertion" = []))
)]
pub async fn replace_virtual_device(
    service: web::Data<Ghostkey>,
    proxies: web::Data<Vec<IpNet>>,
    req: HttpRequest,
    body: web::Json<ReplaceVirtualDeviceRequest>,
) -> Result<HttpResponse, Error> {
    let token = bearer(&req)?;
    service
        .replace_virtual_device(token, caller(&req, &proxies), body.into_inner())
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(
    post,
    path = "/v1/users/erase",
    responses((status = 204, description = "Every row of the user deleted (`manage`)")),
    security(("assertion" = []))
)]
pub async fn erase_user(
    service: web::Data<Ghostkey>,
    proxies: web::Data<Vec<IpNet>>,
    req: HttpRequest,
) -> Result<HttpResponse, Error> {
    let token = bearer(&req)?;
    service.erase_user(token, caller(&req, &proxies)).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(
    post,
    path = "/v1/chain/blocks",
    request_body = ghostkey_proto::api::AppendBlockRequest,
    responses((status = 204, description = "Appended (`recover` or `manage` to admit, `manage` to revoke)")),
    security(("assertion" = []))
)]
pub async fn append_block(
    service: web::Data<Ghostkey>,
    proxies: web::Data<Vec<IpNet>>,
    req: HttpRequest,
    body: web::Json<ghostkey_proto::api::AppendBlockRequest>,
) -> Result<HttpResponse, Error> {
    let token = bearer(&req)?;
    service
        .append_block(token, caller(&req, &proxies), body.into_inner())
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[utoipa::path(
    get,
    path = "/v1/chains/{user_id}",
    params(("user_id" = String, Path, pattern = r"^[!-~]{1,128}$", description = "Whose chain")),
    responses((status = 200, description = "The chain as stored: verify it from the app's pinned keys", body = ghostkey_proto::api::ChainResponse)),
    security(("assertion" = []))
)]
pub async fn chain(
    service: web::Data<Ghostkey>,
    proxies: web::Data<Vec<IpNet>>,
    req: HttpRequest,
    user_id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let token = bearer(&req)?;
    let answer = service
        .chain(token, caller(&req, &proxies), user_id.into_inner())
        .await?;
    Ok(HttpResponse::Ok().json(answer))
}

/// `?to=` of `GET /dev/messages`.
#[derive(Debug, serde::Deserialize)]
struct DevMessagesQuery {
    to: Option<String>,
}

/// `GET /dev/messages`: in development, the messages the `dev-log` senders kept (newest
/// last), only those to `?to=` when given; in production, `development_only`.
pub async fn dev_messages(
    dev: web::Data<super::DevView>,
    req: HttpRequest,
) -> Result<HttpResponse, Error> {
    if dev.mode != crate::config::Mode::Development {
        return Err(Error::new(ErrorCode::DevelopmentOnly));
    }
    let query = web::Query::<DevMessagesQuery>::from_query(req.query_string()).map_err(|_| {
        Error::with_detail(ErrorCode::InvalidField, "the query string is malformed")
    })?;
    let messages = dev
        .messages
        .as_ref()
        .map(|view| view.messages(query.to.as_deref()))
        .unwrap_or_default();
    Ok(HttpResponse::Ok().json(serde_json::json!({ "messages": messages })))
}

pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(super::openapi::document())
}

pub async fn not_found() -> Result<HttpResponse, Error> {
    Err(Error::new(ErrorCode::NotFound))
}

pub async fn method_not_allowed(allow: &'static str) -> HttpResponse {
    let mut response = Error::new(ErrorCode::MethodNotAllowed).error_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}
