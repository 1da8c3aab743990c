//! One structured log line per request: method, route template, status, duration.
//! Never the path's values, the query, a header or the body.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;

/// Request-log middleware, for `actix_web::middleware::from_fn`.
pub async fn request_log(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    // A fixed label, never the client's string: it can be any token of any length.
    let method = crate::metrics::method_label(req.method().as_str());
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "(unmatched)".to_owned());
    let metrics = req
        .app_data::<actix_web::web::Data<crate::service::Ghostkey>>()
        .map(|service| service.metrics());
    let response = next.call(req).await;
    let status = match &response {
        Ok(res) => res.status().as_u16(),
        Err(e) => e.as_response_error().status_code().as_u16(),
    };
    if let Some(metrics) = metrics {
        metrics.observe_request(method, &route, status, started.elapsed().as_secs_f64());
    }
    tracing::info!(
        target: "ghostkey::request",
        method = %method,
        route = %route,
        status,
        duration_ms = started.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
    response
}
