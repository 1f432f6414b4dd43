//! Twilio's error body, `{"code", "message", "more_info", "status"}`, with Twilio's HTTP status,
//! mapped from the extension's SQLSTATE and the `(Twilio NNNNN)` in its message (README, Errors).
//! Nothing here carries a secret or a submitted code: the extension's messages never hold one,
//! and other database errors are reported without their text.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: u32,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: u32, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }

    /// A Twilio code with the HTTP status Twilio answers it with.
    pub fn twilio(code: u32, message: impl Into<String>) -> ApiError {
        ApiError::new(status_of(code), code, message)
    }

    /// 20404, Twilio's answer for a resource that is not there (or belongs to another account).
    pub fn not_found(path: &str) -> ApiError {
        ApiError::twilio(20404, format!("The requested resource {path} was not found"))
    }

    /// 60200 (service arguments) / 60306 (entity, factor, challenge arguments).
    pub fn invalid(code: u32, message: impl Into<String>) -> ApiError {
        ApiError::twilio(code, message)
    }

    pub fn unauthenticated() -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, 20003, "Authentication Error - invalid username")
    }

    fn internal() -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, 20500, "Internal Server Error")
    }

    fn unavailable() -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, 20503, "Service Unavailable")
    }
}

/// Twilio's HTTP status for a Twilio error code (README, "REST server errors").
pub fn status_of(code: u32) -> StatusCode {
    match code {
        20404 | 60390 | 60391 | 60392 => StatusCode::NOT_FOUND,
        60301 | 60317 => StatusCode::CONFLICT,
        60308 | 60310 | 60312 | 60326 | 20429 => StatusCode::TOO_MANY_REQUESTS,
        60318 | 60322 | 60323 | 20403 => StatusCode::FORBIDDEN,
        20003 => StatusCode::UNAUTHORIZED,
        20004 => StatusCode::METHOD_NOT_ALLOWED,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// `(Twilio NNNNN)` in an extension message, and the message without it.
fn split_twilio(message: &str) -> Option<(u32, &str)> {
    let start = message.rfind("(Twilio ")?;
    let rest = &message[start + "(Twilio ".len()..];
    let code = rest.strip_suffix(')')?.parse().ok()?;
    Some((code, message[..start].trim_end()))
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> ApiError {
        let Some(db) = e.as_db_error() else {
            eprintln!("totp-verify-server: database connection error: {e}");
            return ApiError::unavailable();
        };
        if let Some((code, message)) = split_twilio(db.message()) {
            return ApiError::twilio(code, message);
        }
        let sqlstate = db.code().code();
        match sqlstate {
            // Refusals the extension makes without a Twilio number (README, Errors).
            "42501" => ApiError::twilio(20403, "Forbidden"),
            "53400" | "55000" | "58P01" => {
                eprintln!("totp-verify-server: the database refused a request: SQLSTATE {sqlstate}: {}", db.message());
                ApiError::unavailable()
            }
            // Input the database refused (a JSON text it does not take, ...): the caller's.
            s if s.starts_with("22") => ApiError::invalid(60306, "Invalid parameter"),
            _ => {
                // SQLSTATE only: other errors may quote values.
                eprintln!("totp-verify-server: database error, SQLSTATE {sqlstate}");
                ApiError::internal()
            }
        }
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> ApiError {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            e => {
                eprintln!("totp-verify-server: no database connection: {e}");
                ApiError::unavailable()
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "code": self.code,
            "message": self.message,
            "more_info": format!("https://www.twilio.com/docs/errors/{}", self.code),
            "status": self.status.as_u16(),
        });
        (self.status, Json(body)).into_response()
    }
}

/// Paths this server does not serve.
pub async fn not_found_route(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(uri.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twilio_numbers_come_out_of_extension_messages() {
        assert_eq!(split_twilio("factor not found (Twilio 60390)"), Some((60390, "factor not found")));
        assert_eq!(split_twilio("totp_verify key file unavailable"), None);
        assert_eq!(status_of(60312), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(status_of(60392), StatusCode::NOT_FOUND);
        assert_eq!(status_of(60306), StatusCode::BAD_REQUEST);
    }
}
