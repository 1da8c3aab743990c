//! Handlers: extract, call the service, answer. No logic of their own.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use ghostkey_proto::api::{EnrollRequest, Health};
use ghostkey_proto::ErrorCode;

use crate::error::Error;
use crate::service::Ghostkey;

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
    req: HttpRequest,
    body: web::Json<EnrollRequest>,
) -> Result<HttpResponse, Error> {
    let token = bearer(&req)?;
    let answer = service.enroll(token, body.into_inner()).await?;
    Ok(HttpResponse::Created().json(answer))
}

pub async fn not_found() -> Result<HttpResponse, Error> {
    Err(Error::new(ErrorCode::NotFound))
}

pub async fn method_not_allowed() -> Result<HttpResponse, Error> {
    Err(Error::new(ErrorCode::MethodNotAllowed))
}
