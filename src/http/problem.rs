//! Errors as RFC 9457 problem documents.

use actix_web::error::JsonPayloadError;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use ghostkey_proto::error::PROBLEM_CONTENT_TYPE;
use ghostkey_proto::{ErrorCode, Problem};

use crate::error::Error;

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        if let Some(cause) = &self.cause {
            tracing::error!(code = %self.code, cause = %cause, "request failed");
        }
        let mut problem = Problem::new(self.code, self.detail.clone());
        problem.retry_after = self.retry_after;
        problem.available_at = self.available_at;
        let mut response = HttpResponse::build(self.status_code());
        if let Some(seconds) = self.retry_after {
            response.insert_header((actix_web::http::header::RETRY_AFTER, seconds.to_string()));
        }
        response.content_type(PROBLEM_CONTENT_TYPE).json(problem)
    }
}

/// Turns JSON extraction failures into problem documents whose detail never echoes a
/// value from the body (it may be a phone number or an address), only a field name and
/// a position.
pub fn json_error_handler(err: JsonPayloadError, _req: &HttpRequest) -> actix_web::Error {
    let error = match &err {
        JsonPayloadError::OverflowKnownLength { limit, .. }
        | JsonPayloadError::Overflow { limit } => Error::with_detail(
            ErrorCode::BodyTooLarge,
            format!("the limit is {limit} bytes"),
        ),
        JsonPayloadError::ContentType => Error::new(ErrorCode::UnsupportedMediaType),
        JsonPayloadError::Deserialize(e) => {
            Error::with_detail(ErrorCode::MalformedBody, describe_json_error(e))
        }
        _ => Error::new(ErrorCode::MalformedBody),
    };
    error.into()
}

fn describe_json_error(e: &serde_json::Error) -> String {
    let message = e.to_string();
    // serde names unknown and missing fields between backticks; those names are ours or
    // the client's own keys, never values.
    for prefix in ["unknown field `", "missing field `"] {
        if let Some(rest) = message.strip_prefix(prefix) {
            if let Some(end) = rest.find('`') {
                let field: String = rest[..end]
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(64)
                    .collect();
                return format!(
                    "{}{field}` at line {} column {}",
                    prefix,
                    e.line(),
                    e.column()
                );
            }
        }
    }
    let what = match e.classify() {
        serde_json::error::Category::Syntax => "invalid JSON syntax",
        serde_json::error::Category::Eof => "unexpected end of JSON",
        serde_json::error::Category::Data => "a value has the wrong type or format",
        serde_json::error::Category::Io => "the body could not be read",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        phone: u32,
    }

    #[test]
    fn json_errors_name_fields_but_never_echo_values() {
        let e = serde_json::from_str::<Body>(r#"{"phone": "+33612345678"}"#).unwrap_err();
        let d = describe_json_error(&e);
        assert!(!d.contains("3361"), "{d}");
        let e = serde_json::from_str::<Body>(r#"{"phone": 1, "extra": 2}"#).unwrap_err();
        assert!(describe_json_error(&e).starts_with("unknown field `extra`"));
        let e = serde_json::from_str::<Body>(r#"{}"#).unwrap_err();
        assert!(describe_json_error(&e).starts_with("missing field `phone`"));
    }
}
