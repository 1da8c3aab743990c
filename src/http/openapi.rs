//! The OpenAPI 3.1 document of the API, generated from the handlers' annotations and the
//! wire types; served at `/v1/openapi.json`, printed by `ghostkey openapi`, and committed
//! as `docs/openapi.json` (a test fails when the two differ).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::handlers;

struct AssertionAuth;

impl Modify for AssertionAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "assertion",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT (EdDSA): the app provider's assertion, single use")
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Ghostkey",
        description = "Recovery of E2EE virtual devices with split-knowledge custody. Formats, flows and error codes: docs/PROTOCOL.md.",
        license(name = "AGPL-3.0-or-later")
    ),
    paths(
        handlers::healthz,
        handlers::readyz,
        handlers::enroll,
        handlers::add_method,
        handlers::list_methods,
        handlers::remove_method,
        handlers::start_challenge,
        handlers::answer,
        handlers::unlock,
        handlers::start_recovery,
        handlers::verify_recovery,
        handlers::release_recovery,
        handlers::cancel_recovery,
        handlers::cancel_recovery_with_code,
        handlers::replace_virtual_device,
        handlers::erase_user,
        handlers::append_block,
        handlers::chain,
    ),
    modifiers(&AssertionAuth)
)]
struct ApiDoc;

/// The document, as pretty JSON.
pub fn document() -> String {
    let mut doc = ApiDoc::openapi();
    // The version of the document is the API's, not the crate's build.
    doc.info.version = "1".to_owned();
    doc.to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
