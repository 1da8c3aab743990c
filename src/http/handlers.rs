//! Handlers: extract, call the service, answer. No logic of their own.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use ghostkey_proto::api::{
    AddMethodRequest, AnswerRequest, EnrollRequest, Health, RemoveMethodRequest,
    StartChallengeRequest,
};
use ghostkey_proto::api::{
    CancelRecoveryRequest, ReplaceVirtualDeviceRequest, StartRecoveryRequest,
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

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok".into(),
    })
}

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

pub async fn list_methods(
    service: web::Data<Ghostkey>,
    proxies: web::Data<Vec<IpNet>>,
    req: HttpRequest,
) -> Result<HttpResponse, Error> {
    let token = bearer(&req)?;
    let answer = service.list_methods(token, caller(&req, &proxies)).await?;
    Ok(HttpResponse::Ok().json(answer))
}

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

pub async fn unlock(
    service: web::Data<Ghostkey>,
    proxies: web::Data<Vec<IpNet>>,
    req: HttpRequest,
) -> Result<HttpResponse, Error> {
    let token = bearer(&req)?;
    let answer = service.unlock(token, caller(&req, &proxies)).await?;
    Ok(HttpResponse::Ok().json(answer))
}

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

pub async fn erase_user(
    service: web::Data<Ghostkey>,
    proxies: web::Data<Vec<IpNet>>,
    req: HttpRequest,
) -> Result<HttpResponse, Error> {
    let token = bearer(&req)?;
    service.erase_user(token, caller(&req, &proxies)).await?;
    Ok(HttpResponse::NoContent().finish())
}

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

pub async fn not_found() -> Result<HttpResponse, Error> {
    Err(Error::new(ErrorCode::NotFound))
}

pub async fn method_not_allowed() -> Result<HttpResponse, Error> {
    Err(Error::new(ErrorCode::MethodNotAllowed))
}
