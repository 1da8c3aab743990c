//! Cross-origin requests from browser pages (CORS), per app.
//!
//! Each app lists the web origins whose pages may call the API for it (`ghostkey app
//! origins add`). A request without an `Origin` header (servers, the CLI) is not looked at.
//! With one:
//!
//! - a preflight (`OPTIONS` with `Access-Control-Request-Method`) carries no credentials,
//!   so no app is known: it is allowed when some app allows the origin;
//! - an actual request about a known app (the `iss` its assertion claims, or the app of
//!   the challenge or recovery in its path) from an origin that app does not allow is
//!   refused before its handler runs (`origin_not_allowed`, no CORS header): it changes
//!   nothing, counts nothing. From an allowed origin, the answer (success or problem)
//!   carries the CORS headers;
//! - a request whose app cannot be told (no usable assertion, an unknown id, the cancel
//!   code route, `/dev/messages`) runs as usual, with the CORS headers only when some app
//!   allows the origin.
//!
//! `null` and anything that is not a valid origin are never allowed. Credentials
//! (cookies) are never allowed, nor `*`. The decision itself is [`decide`], without I/O;
//! the middleware [`cors`] reads what it needs from the store on the blocking pool.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse, ResponseError};
use ghostkey_proto::ErrorCode;

use crate::domain::origin::normalise_origin;
use crate::error::Error;
use crate::service::Ghostkey;
use crate::store::{OriginStanding, OriginSubject};

/// `Access-Control-Allow-Methods` of an allowed preflight.
pub const ALLOW_METHODS: &str = "GET, POST";
/// `Access-Control-Allow-Headers` of an allowed preflight: only these, whatever the
/// preflight asks for.
pub const ALLOW_HEADERS: &str = "authorization, content-type";
/// `Access-Control-Max-Age` of an allowed preflight, in seconds.
pub const MAX_AGE_SECS: &str = "600";
/// `Access-Control-Expose-Headers` of an allowed answer.
pub const EXPOSE_HEADERS: &str = "retry-after";

/// How a route finds the app a request is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// The request carries an assertion: its (unverified) `iss`.
    Assertion,
    /// `/v1/challenges/{id}/answer`, `/v1/recoveries/{id}/verify`: the app of that
    /// challenge (a recovery's id is its challenge's).
    Challenge(&'a str),
    /// No app can be told before the handler: `/v1/recoveries/cancel` (the app hides
    /// behind the cancel code in the body) and `/dev/messages`.
    Anonymous,
}

/// The CORS rules of a path, or `None` for a path browser pages have no business calling
/// (health checks, the OpenAPI document, unknown paths): those are left alone.
pub fn classify<'a>(path: &'a str) -> Option<Route<'a>> {
    if path == "/dev/messages" {
        return Some(Route::Anonymous);
    }
    let rest = path.strip_prefix("/v1/")?;
    let segments: Vec<&str> = rest.split('/').collect();
    let id_ok = |id: &str| {
        (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    };
    let challenge = |id: &'a str| {
        if id_ok(id) {
            Route::Challenge(id)
        } else {
            // The handler refuses the id (`invalid_field`).
            Route::Anonymous
        }
    };
    match segments.as_slice() {
        ["enrollments"]
        | ["methods"]
        | ["methods", _, "remove"]
        | ["challenges"]
        | ["chain", "blocks"]
        | ["chains", _]
        | ["recoveries"]
        | ["recoveries", _, "release"]
        | ["virtual-device", "replace"]
        | ["users", "erase"]
        | ["users", "unlock"] => Some(Route::Assertion),
        ["recoveries", "cancel"] => Some(Route::Anonymous),
        ["recoveries", _, "cancel"] => Some(Route::Assertion),
        ["challenges", id, "answer"] | ["recoveries", id, "verify"] => Some(challenge(id)),
        _ => None,
    }
}

/// What to do with a request that carries an `Origin` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// A preflight from an origin some app allows: 204 with the CORS headers.
    PreflightAllowed,
    /// A preflight from any other origin: refused, without a CORS header.
    PreflightRefused,
    /// Refused before the handler: `origin_not_allowed`, without a CORS header.
    Refuse,
    /// The handler runs; its answer carries the CORS headers when `cors`.
    Pass {
        /// Add the CORS headers.
        cors: bool,
    },
}

/// The decision for a request with an `Origin` header: `preflight` tells a preflight,
/// `valid` whether the header is a valid origin at all (`null` is not), `standing` what
/// the store knows of it.
pub fn decide(preflight: bool, valid: bool, standing: OriginStanding) -> Decision {
    let for_app = valid && standing.allowed_for_app;
    let for_any = valid && (standing.allowed_for_any || standing.allowed_for_app);
    if preflight {
        return if for_any {
            Decision::PreflightAllowed
        } else {
            Decision::PreflightRefused
        };
    }
    if standing.app_known {
        if for_app {
            Decision::Pass { cors: true }
        } else {
            Decision::Refuse
        }
    } else {
        Decision::Pass { cors: for_any }
    }
}

/// The app an assertion claims, read without trusting it (the handler verifies it).
fn claimed_app(req: &ServiceRequest) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let iss = crate::domain::assertion::inspect(token.trim()).ok()?.iss;
    ghostkey_proto::assertion::is_valid_identifier(&iss, 1, 128).then_some(iss)
}

/// What the request is about, as far as the store can tell.
enum Subject {
    App(String),
    Challenge(String),
    Unknown,
}

/// The CORS middleware, for `actix_web::middleware::from_fn` (see the module's text).
pub async fn cors<B: MessageBody>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    // No `Origin`: a server or the CLI; nothing to do, nothing read.
    let Some(origin) = req.headers().get(header::ORIGIN).cloned() else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    };
    let Some(route) = classify(req.path()) else {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    };
    let preflight = req.method() == Method::OPTIONS
        && req
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    let normal = origin.to_str().ok().and_then(|o| normalise_origin(o).ok());
    let subject = match (preflight, route) {
        // A preflight carries no credentials: no app is known.
        (true, _) | (false, Route::Anonymous) => Subject::Unknown,
        (false, Route::Assertion) => claimed_app(&req).map_or(Subject::Unknown, Subject::App),
        (false, Route::Challenge(id)) => Subject::Challenge(id.to_owned()),
    };
    let standing = match (&normal, req.app_data::<web::Data<Ghostkey>>()) {
        // An invalid origin (`null` included) is allowed nowhere; only whether the app is
        // known matters, and only to an actual request.
        (None, _) if preflight || matches!(subject, Subject::Unknown) => {
            Ok(OriginStanding::default())
        }
        (_, Some(service)) => {
            let key = normal.clone().unwrap_or_default();
            service
                .blocking(move |store, _| {
                    let about = match &subject {
                        Subject::App(id) => OriginSubject::App(id),
                        Subject::Challenge(id) => OriginSubject::Challenge(id),
                        Subject::Unknown => OriginSubject::Unknown,
                    };
                    Ok(store.origin_standing(about, &key)?)
                })
                .await
        }
        (_, None) => Err(Error::internal("the CORS layer has no service")),
    };
    let standing = match standing {
        Ok(standing) => standing,
        Err(e) => return Ok(answer(req, e.error_response())),
    };
    match decide(preflight, normal.is_some(), standing) {
        Decision::PreflightAllowed => {
            let mut response = HttpResponse::NoContent().finish();
            let headers = response.headers_mut();
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(ALLOW_METHODS),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(ALLOW_HEADERS),
            );
            headers.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static(MAX_AGE_SECS),
            );
            Ok(answer(req, response))
        }
        Decision::PreflightRefused | Decision::Refuse => {
            let refusal = Error::new(ErrorCode::OriginNotAllowed).error_response();
            Ok(answer(req, refusal))
        }
        Decision::Pass { cors: false } => {
            let mut response = next.call(req).await?;
            vary_origin(response.headers_mut());
            Ok(response.map_into_left_body())
        }
        Decision::Pass { cors: true } => match next.call(req).await {
            Ok(mut response) => {
                allow(response.headers_mut(), origin);
                Ok(response.map_into_left_body())
            }
            // An error that escaped the handler (handlers and extractors answer theirs
            // themselves) still answers with the headers.
            Err(e) => {
                let mut response = e.error_response();
                allow(response.headers_mut(), origin);
                Err(actix_web::error::InternalError::from_response(e, response).into())
            }
        },
    }
}

/// Answers in place of the handler (a preflight, a refusal, a failed store read).
fn answer<B>(req: ServiceRequest, response: HttpResponse) -> ServiceResponse<EitherBody<B>> {
    let mut response = req.into_response(response).map_into_right_body();
    vary_origin(response.headers_mut());
    response
}

/// The headers of an allowed answer.
fn allow(headers: &mut actix_web::http::header::HeaderMap, origin: HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSE_HEADERS),
    );
    vary_origin(headers);
}

/// Every answer to a request with an `Origin` depends on it.
fn vary_origin(headers: &mut actix_web::http::header::HeaderMap) {
    headers.append(header::VARY, HeaderValue::from_static("origin"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standing(app_known: bool, for_app: bool, for_any: bool) -> OriginStanding {
        OriginStanding {
            app_known,
            allowed_for_app: for_app,
            allowed_for_any: for_any,
        }
    }

    #[test]
    fn an_origin_of_another_app_is_refused_for_a_known_app() {
        // Allowed at app B only; the request is about app A.
        assert_eq!(
            decide(false, true, standing(true, false, true)),
            Decision::Refuse
        );
        // An app with no origin at all refuses every browser page.
        assert_eq!(
            decide(false, true, standing(true, false, false)),
            Decision::Refuse
        );
    }

    #[test]
    fn an_invalid_origin_is_never_allowed_whatever_the_store_says() {
        for s in [
            standing(true, true, true),
            standing(false, false, true),
            standing(false, false, false),
        ] {
            assert_ne!(
                decide(false, false, s),
                Decision::Pass { cors: true },
                "{s:?}"
            );
            assert_eq!(decide(true, false, s), Decision::PreflightRefused, "{s:?}");
        }
        assert_eq!(
            decide(false, false, standing(true, true, true)),
            Decision::Refuse
        );
        assert_eq!(
            decide(false, false, standing(false, false, true)),
            Decision::Pass { cors: false }
        );
    }

    #[test]
    fn preflights_need_an_origin_some_app_allows() {
        assert_eq!(
            decide(true, true, standing(false, false, true)),
            Decision::PreflightAllowed
        );
        assert_eq!(
            decide(true, true, standing(false, false, false)),
            Decision::PreflightRefused
        );
    }

    #[test]
    fn actual_requests_pass_with_headers_only_when_allowed() {
        assert_eq!(
            decide(false, true, standing(true, true, true)),
            Decision::Pass { cors: true }
        );
        // Unknown app: headers when some app allows the origin, none otherwise.
        assert_eq!(
            decide(false, true, standing(false, false, true)),
            Decision::Pass { cors: true }
        );
        assert_eq!(
            decide(false, true, standing(false, false, false)),
            Decision::Pass { cors: false }
        );
    }

    #[test]
    fn the_claimed_app_is_read_from_a_bearer_assertion_only() {
        use actix_web::test::TestRequest;
        let key = ghostkey_client::AppSigningKey::generate("k1");
        let token = key
            .mint(
                &ghostkey_client::kit::AssertionRequest {
                    app_id: "app_0123456789abcdef01234567",
                    user_id: "alice",
                    audience: "ghostkey-test",
                    purpose: ghostkey_proto::assertion::Purpose::Manage,
                },
                1_700_000_000,
                60,
            )
            .unwrap();
        let with = |value: &str| {
            TestRequest::default()
                .insert_header((header::AUTHORIZATION, value.to_owned()))
                .to_srv_request()
        };
        assert_eq!(
            claimed_app(&with(&format!("Bearer {token}"))).as_deref(),
            Some("app_0123456789abcdef01234567")
        );
        assert_eq!(
            claimed_app(&with(&format!("bearer  {token} "))).as_deref(),
            Some("app_0123456789abcdef01234567")
        );
        for refused in [
            format!("Basic {token}"),
            token.clone(),
            "Bearer ".to_owned(),
            "Bearer not.a.jwt".to_owned(),
            format!("Bearer {}", "a".repeat(5000)),
        ] {
            assert_eq!(claimed_app(&with(&refused)), None, "{refused:.20}");
        }
        assert_eq!(claimed_app(&TestRequest::default().to_srv_request()), None);
    }

    #[test]
    fn routes_are_classified_by_how_their_app_is_found() {
        use Route::*;
        let cases: &[(&str, Option<Route<'_>>)] = &[
            ("/v1/enrollments", Some(Assertion)),
            ("/v1/methods", Some(Assertion)),
            ("/v1/methods/m_1/remove", Some(Assertion)),
            ("/v1/challenges", Some(Assertion)),
            ("/v1/challenges/ch_1/answer", Some(Challenge("ch_1"))),
            ("/v1/challenges/ch.1/answer", Some(Anonymous)),
            ("/v1/recoveries", Some(Assertion)),
            ("/v1/recoveries/cancel", Some(Anonymous)),
            ("/v1/recoveries/ch_2/verify", Some(Challenge("ch_2"))),
            ("/v1/recoveries/ch_2/release", Some(Assertion)),
            ("/v1/recoveries/ch_2/cancel", Some(Assertion)),
            ("/v1/chain/blocks", Some(Assertion)),
            ("/v1/chains/alice", Some(Assertion)),
            ("/v1/virtual-device/replace", Some(Assertion)),
            ("/v1/users/erase", Some(Assertion)),
            ("/v1/users/unlock", Some(Assertion)),
            ("/dev/messages", Some(Anonymous)),
            ("/v1/openapi.json", None),
            ("/healthz", None),
            ("/readyz", None),
            ("/v1/nothing", None),
            ("/v1/challenges/ch_1/answer/extra", None),
            ("/v2/methods", None),
            ("/dev/messages/x", None),
        ];
        for (path, want) in cases {
            assert_eq!(classify(path), *want, "{path}");
        }
    }
}
