//! The OpenAPI 3.1 document of the API, generated from the handlers' annotations and the
//! wire types; served at `/v1/openapi.json`, printed by `ghostkey openapi`, and committed
//! as `docs/openapi.json` (a test fails when the two differ).
//!
//! Every operation lists exactly the statuses it can answer, each error status with the
//! stable codes behind it ([`operation_errors`]), never a range such as `4XX`: a client
//! (and the conformance stage, `.ci/conformance.sh`) can tell a wrong status from a
//! documented one.

use ghostkey_proto::ErrorCode;
use utoipa::openapi::header::Header;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::Response;
use utoipa::openapi::schema::{Object, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr};
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
    // The refusals' body; `ExactStatuses` refers to it for every error status.
    components(schemas(ghostkey_proto::Problem)),
    modifiers(&AssertionAuth, &ExactStatuses)
)]
struct ApiDoc;

/// The errors of a request body (`web::Json`), checked before anything else.
const BODY: &[ErrorCode] = &[
    ErrorCode::UnsupportedMediaType,
    ErrorCode::BodyTooLarge,
    ErrorCode::MalformedBody,
];

/// The errors of the assertion (docs/PROTOCOL.md §2.4), `assertion_replayed` included.
const ASSERTION: &[ErrorCode] = &[
    ErrorCode::MissingAssertion,
    ErrorCode::InvalidAssertion,
    ErrorCode::AssertionAlgorithmRefused,
    ErrorCode::AssertionUnknownIssuer,
    ErrorCode::AssertionUnknownKey,
    ErrorCode::AssertionKeyRevoked,
    ErrorCode::AssertionBadSignature,
    ErrorCode::AssertionWrongAudience,
    ErrorCode::AssertionExpired,
    ErrorCode::AssertionLifetimeTooLong,
    ErrorCode::AssertionIssuedInFuture,
    ErrorCode::AssertionWrongPurpose,
    ErrorCode::AssertionReplayed,
];

/// A browser page's origin that the app the request is about does not allow
/// (`src/http/cors.rs`): on every operation whose app is known before its handler runs
/// (the assertion's `iss`, or the challenge or recovery in the path).
const ORIGIN: &[ErrorCode] = &[ErrorCode::OriginNotAllowed];

/// The errors of a code check (`Outcome::error` in `domain::challenge`), a passkey's
/// response included (`passkey_rejected`, `authenticator_cloned`, and
/// `method_kind_not_allowed` when the app's passkey relying party is no longer usable).
const CODE: &[ErrorCode] = &[
    ErrorCode::InvalidCode,
    ErrorCode::PasskeyRejected,
    ErrorCode::AuthenticatorCloned,
    ErrorCode::MethodKindNotAllowed,
    ErrorCode::CodeExpired,
    ErrorCode::TooManyAttempts,
    ErrorCode::CodeAlreadyUsed,
    ErrorCode::UserBackoff,
    ErrorCode::FailureBudgetExhausted,
    ErrorCode::Locked,
];

/// The errors of a proof: the code errors of its challenge (listed apart), and
/// `invalid_proof` (no proof challenge of the assertion's user and app, one opened for
/// another purpose, or one on a method that is not confirmed).
const PROOF: &[ErrorCode] = &[ErrorCode::InvalidProof];

/// Every error code the operation `operation_id` can answer (from its handler, its service
/// function and its store transaction), or `None` for an operation this table does not know
/// (the document then keeps the handler's own responses, and `tests/openapi.rs` fails).
///
/// `internal` (500) is on every operation that reaches the store, which can fail on any of
/// them (I/O, a full disk, a blocking task that died); `unavailable` (503, `Retry-After`)
/// where an Argon2 hash may be shed (a new SMS or e-mail code, or a code or proof
/// checked), on `readyz`, whose whole point it is, and on every `/v1` operation for a
/// client that keeps sending after a 429 while the line of such requests is full
/// ([`refused_clients`](super::refused_clients)).
pub fn operation_errors(operation_id: &str) -> Option<Vec<ErrorCode>> {
    use ErrorCode as E;
    let (parts, own): (&[&[ErrorCode]], &[ErrorCode]) = match operation_id {
        "healthz" => (&[], &[]),
        "readyz" => (&[], &[E::Unavailable]),
        "enroll" => (
            &[BODY, ASSERTION, ORIGIN],
            &[
                E::AddressRateLimited,
                E::InvalidField,
                E::UnsupportedSealedVersion,
                E::InvalidBlock,
                E::AlreadyEnrolled,
                E::Internal,
            ],
        ),
        "add_method" => (
            &[BODY, ASSERTION, PROOF, CODE, ORIGIN],
            &[
                E::InvalidField,
                E::InvalidPhoneNumber,
                E::InvalidEmailAddress,
                E::AddressRateLimited,
                E::NotEnrolled,
                E::ProofRequired,
                E::MethodKindNotAllowed,
                E::TooManyMethods,
                E::DestinationRateLimited,
                E::AppSendBudgetExhausted,
                E::Unavailable,
                E::Internal,
            ],
        ),
        "list_methods" | "erase_user" => (
            &[ASSERTION, ORIGIN],
            &[E::AddressRateLimited, E::NotEnrolled, E::Internal],
        ),
        "remove_method" => (
            &[BODY, ASSERTION, PROOF, CODE, ORIGIN],
            &[
                E::InvalidField,
                E::AddressRateLimited,
                E::NotEnrolled,
                E::MethodNotFound,
                E::LastMethod,
                E::Unavailable,
                E::Internal,
            ],
        ),
        "start_challenge" => (
            &[BODY, ASSERTION, ORIGIN],
            &[
                E::AddressRateLimited,
                E::NotEnrolled,
                E::MethodNotFound,
                E::InvalidField,
                E::MethodNotConfirmed,
                E::WrongChallenge,
                E::MethodKindNotAllowed,
                E::Locked,
                E::DestinationRateLimited,
                E::AppSendBudgetExhausted,
                E::Internal,
            ],
        ),
        // `method_not_found`: the challenge's method was removed (or its user erased)
        // between the read and the write.
        "answer" => (
            &[BODY, CODE, ORIGIN],
            &[
                E::InvalidField,
                E::AddressRateLimited,
                E::AppRateLimited,
                E::InvalidProof,
                E::WrongChallenge,
                E::MethodNotFound,
                E::Unavailable,
                E::Internal,
            ],
        ),
        "unlock" => (
            &[BODY, ASSERTION, PROOF, CODE, ORIGIN],
            &[
                E::InvalidField,
                E::AddressRateLimited,
                E::NotEnrolled,
                E::ProofRequired,
                E::Unavailable,
                E::Internal,
            ],
        ),
        "start_recovery" => (
            &[BODY, ASSERTION, ORIGIN],
            &[
                E::AddressRateLimited,
                E::NotEnrolled,
                E::EnrollmentPending,
                E::MethodNotFound,
                E::MethodNotConfirmed,
                E::MethodKindNotAllowed,
                E::Locked,
                E::DestinationRateLimited,
                E::AppSendBudgetExhausted,
                E::RecoveryRateLimited,
                E::Internal,
            ],
        ),
        // `recovery_not_found`: the user was erased between the read and the write.
        "verify_recovery" => (
            &[BODY, CODE, ORIGIN],
            &[
                E::InvalidField,
                E::AddressRateLimited,
                E::AppRateLimited,
                E::WrongChallenge,
                E::RecoveryCancelled,
                E::RecoveryNotFound,
                E::Unavailable,
                E::Internal,
            ],
        ),
        "release_recovery" => (
            &[ASSERTION, ORIGIN],
            &[
                E::InvalidField,
                E::AddressRateLimited,
                E::NotEnrolled,
                E::RecoveryNotFound,
                E::RecoveryNotVerified,
                E::RecoveryCancelled,
                E::AlreadyReleased,
                E::ReleasePending,
                E::Internal,
            ],
        ),
        "cancel_recovery" => (
            &[BODY, ASSERTION, PROOF, CODE, ORIGIN],
            &[
                E::InvalidField,
                E::AddressRateLimited,
                E::NotEnrolled,
                E::ProofRequired,
                E::RecoveryNotFound,
                E::RecoveryCancelled,
                E::AlreadyReleased,
                E::Unavailable,
                E::Internal,
            ],
        ),
        "cancel_recovery_with_code" => (
            &[BODY],
            &[
                E::InvalidField,
                E::AddressRateLimited,
                E::InvalidCode,
                E::RecoveryCancelled,
                E::AlreadyReleased,
                E::Internal,
            ],
        ),
        "replace_virtual_device" => (
            &[BODY, ASSERTION, PROOF, CODE, ORIGIN],
            &[
                E::InvalidField,
                E::UnsupportedSealedVersion,
                E::AddressRateLimited,
                E::NotEnrolled,
                E::Unavailable,
                E::Internal,
            ],
        ),
        "append_block" => (
            &[BODY, ASSERTION, ORIGIN],
            &[
                E::InvalidField,
                E::AddressRateLimited,
                E::NotEnrolled,
                E::InvalidBlock,
                E::ChainBlockReplayed,
                E::ChainFork,
                E::Internal,
            ],
        ),
        "chain" => (
            &[ASSERTION, ORIGIN],
            &[
                E::InvalidField,
                E::AddressRateLimited,
                E::ChainNotFound,
                E::Internal,
            ],
        ),
        _ => return None,
    };
    let shed_after_429: &[ErrorCode] = match operation_id {
        "healthz" | "readyz" => &[],
        _ => &[E::Unavailable],
    };
    let wanted: Vec<ErrorCode> = parts
        .iter()
        .flat_map(|p| p.iter())
        .chain(own)
        .chain(shed_after_429)
        .copied()
        .collect();
    // In the order of the error table, each once.
    Some(
        ErrorCode::ALL
            .iter()
            .copied()
            .filter(|c| wanted.contains(c))
            .collect(),
    )
}

/// Adds to each operation one response per status it can answer, naming the codes behind
/// it (the handlers' annotations give only the successes).
struct ExactStatuses;

impl Modify for ExactStatuses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            for operation in [&mut item.get, &mut item.post].into_iter().flatten() {
                exact_statuses(operation);
            }
        }
    }
}

fn exact_statuses(operation: &mut Operation) {
    let Some(id) = operation.operation_id.clone() else {
        return;
    };
    let Some(errors) = operation_errors(&id) else {
        return;
    };
    let responses = &mut operation.responses.responses;
    responses.retain(|status, _| !status.contains('X'));
    let mut statuses: Vec<u16> = errors.iter().map(|c| c.http_status()).collect();
    statuses.sort_unstable();
    statuses.dedup();
    for status in statuses {
        let codes: Vec<String> = errors
            .iter()
            .filter(|c| c.http_status() == status)
            .map(|c| format!("`{}`", c.as_str()))
            .collect();
        let mut response = Response::new(format!("Refused: {}", codes.join(", ")));
        if status >= 500 {
            response.description = format!("Server-side: {}", codes.join(", "));
        }
        response.content.insert(
            ghostkey_proto::error::PROBLEM_CONTENT_TYPE.to_owned(),
            RefOr::T(Content::new(Some(RefOr::Ref(Ref::from_schema_name(
                "Problem",
            ))))),
        );
        // Limits, shed Argon2 work and a pending release say when to try again.
        let retry = status == 429
            || (status == 503 && id != "readyz")
            || (status == 409 && errors.contains(&ErrorCode::ReleasePending));
        if retry {
            let mut header = Header::new(Object::with_type(Type::Integer));
            header.description =
                Some("Seconds to wait before trying again (`retry_after` in the body)".to_owned());
            response
                .headers
                .insert("Retry-After".to_owned(), RefOr::T(header));
        }
        responses.insert(status.to_string(), RefOr::T(response));
    }
}

/// The document, as pretty JSON.
pub fn document() -> String {
    let mut doc = ApiDoc::openapi();
    // The version of the document is the API's, not the crate's build.
    doc.info.version = "1".to_owned();
    doc.to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
