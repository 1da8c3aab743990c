//! The HTTP layer: routes, thin handlers, problem documents and request logs.

mod handlers;
mod logging;
mod problem;

use actix_web::web;

use crate::service::Ghostkey;

pub use problem::json_error_handler;

/// Registers every route on an actix-web app.
pub fn configure(
    service: Ghostkey,
    body_limit_bytes: usize,
) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(web::Data::new(service))
            .app_data(
                web::JsonConfig::default()
                    .limit(body_limit_bytes)
                    .content_type_required(true)
                    .error_handler(json_error_handler),
            )
            .app_data(web::PayloadConfig::default().limit(body_limit_bytes))
            .service(
                web::resource("/healthz")
                    .route(web::get().to(handlers::healthz))
                    .default_service(web::to(handlers::method_not_allowed)),
            )
            .service(
                web::resource("/readyz")
                    .route(web::get().to(handlers::readyz))
                    .default_service(web::to(handlers::method_not_allowed)),
            )
            .service(
                web::scope("/v1").service(
                    web::resource("/enrollments")
                        .route(web::post().to(handlers::enroll))
                        .default_service(web::to(handlers::method_not_allowed)),
                ),
            )
            .default_service(web::to(handlers::not_found));
    }
}

pub use logging::request_log;
