//! The HTTP layer: routes, thin handlers, problem documents and request logs.

mod client_addr;
pub mod cors;
mod handlers;
mod logging;
pub mod openapi;
mod problem;
pub mod refused_clients;

use std::sync::Arc;

use actix_web::web;
use ipnet::IpNet;

use crate::service::Ghostkey;

pub use cors::cors;
pub use problem::json_error_handler;
pub use refused_clients::{refused_clients_wait, RefusedClients};

/// What `GET /dev/messages` serves: the mode (production refuses the route whatever else
/// is set) and, in development, the messages the `dev-log` senders kept.
#[derive(Debug, Clone)]
pub struct DevView {
    /// The configured mode.
    pub mode: crate::config::Mode,
    /// The kept messages (`None`: no `dev-log` sender, or production).
    pub messages: Option<crate::delivery::dev_log::DevMessages>,
}

/// Any other method on a known resource: 405, with the `Allow` header RFC 9110 requires.
fn other_methods(allow: &'static str) -> actix_web::Route {
    web::to(move || handlers::method_not_allowed(allow))
}

/// Registers every route on an actix-web app.
pub fn configure(
    service: Ghostkey,
    body_limit_bytes: usize,
    trusted_proxies: Arc<Vec<IpNet>>,
    refused_clients: Arc<RefusedClients>,
    dev: DevView,
) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(web::Data::new(service))
            .app_data(web::Data::from(trusted_proxies))
            .app_data(web::Data::from(refused_clients))
            .app_data(web::Data::new(dev))
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
                    .default_service(other_methods("GET")),
            )
            .service(
                web::resource("/readyz")
                    .route(web::get().to(handlers::readyz))
                    .default_service(other_methods("GET")),
            )
            // Development only, outside the `/v1` API and its document: production
            // answers `development_only`.
            .service(
                web::resource("/dev/messages")
                    .route(web::get().to(handlers::dev_messages))
                    .default_service(other_methods("GET")),
            )
            .service(
                web::scope("/v1")
                    .service(
                        web::resource("/openapi.json")
                            .route(web::get().to(handlers::openapi))
                            .default_service(other_methods("GET")),
                    )
                    .service(
                        web::resource("/enrollments")
                            .route(web::post().to(handlers::enroll))
                            .default_service(other_methods("POST")),
                    )
                    .service(
                        web::resource("/methods")
                            .route(web::post().to(handlers::add_method))
                            .route(web::get().to(handlers::list_methods))
                            .default_service(other_methods("GET, POST")),
                    )
                    .service(
                        web::resource("/methods/{method_id}/remove")
                            .route(web::post().to(handlers::remove_method))
                            .default_service(other_methods("POST")),
                    )
                    .service(
                        web::resource("/challenges")
                            .route(web::post().to(handlers::start_challenge))
                            .default_service(other_methods("POST")),
                    )
                    .service(
                        web::resource("/challenges/{challenge_id}/answer")
                            .route(web::post().to(handlers::answer))
                            .default_service(other_methods("POST")),
                    )
                    .service(
                        web::resource("/chain/blocks")
                            .route(web::post().to(handlers::append_block))
                            .default_service(other_methods("POST")),
                    )
                    .service(
                        web::resource("/chains/{user_id}")
                            .route(web::get().to(handlers::chain))
                            .default_service(other_methods("GET")),
                    )
                    .service(
                        web::resource("/recoveries")
                            .route(web::post().to(handlers::start_recovery))
                            .default_service(other_methods("POST")),
                    )
                    .service(
                        web::resource("/recoveries/cancel")
                            .route(web::post().to(handlers::cancel_recovery_with_code))
                            .default_service(other_methods("POST")),
                    )
                    .service(
                        web::resource("/recoveries/{recovery_id}/verify")
                            .route(web::post().to(handlers::verify_recovery))
                            .default_service(other_methods("POST")),
                    )
                    .service(
                        web::resource("/recoveries/{recovery_id}/release")
                            .route(web::post().to(handlers::release_recovery))
                            .default_service(other_methods("POST")),
                    )
                    .service(
                        web::resource("/recoveries/{recovery_id}/cancel")
                            .route(web::post().to(handlers::cancel_recovery))
                            .default_service(other_methods("POST")),
                    )
                    .service(
                        web::resource("/virtual-device/replace")
                            .route(web::post().to(handlers::replace_virtual_device))
                            .default_service(other_methods("POST")),
                    )
                    .service(
                        web::resource("/users/erase")
                            .route(web::post().to(handlers::erase_user))
                            .default_service(other_methods("POST")),
                    )
                    .service(
                        web::resource("/users/unlock")
                            .route(web::post().to(handlers::unlock))
                            .default_service(other_methods("POST")),
                    ),
            )
            .default_service(web::to(handlers::not_found));
    }
}

pub use logging::request_log;
