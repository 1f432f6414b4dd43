//! HTTP Basic with an account SID and its token (Twilio's scheme); anything else is 401 / 20003.
//! Also where a request's absolute URLs start (`TOTP_VERIFY_PUBLIC_URL`, else its Host).

use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, HOST};
use axum::http::request::Parts;
use base64::Engine;
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::App;

/// The authenticated account and the base of the URLs in the response.
pub struct Ctx {
    pub account: String,
    pub base: String,
}

fn account(app: &App, parts: &Parts) -> Option<String> {
    let header = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = header.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (sid, token) = decoded.split_once(':')?;
    let expected = app.accounts.token(sid)?;
    // Constant time in the token's bytes (subtle), so timing does not reveal a prefix.
    bool::from(expected.as_bytes().ct_eq(token.as_bytes())).then(|| sid.to_string())
}

impl FromRequestParts<App> for Ctx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Ctx, ApiError> {
        let account = account(app, parts).ok_or_else(ApiError::unauthenticated)?;
        let base = match &app.public_url {
            Some(url) => url.to_string(),
            None => {
                let host = parts.headers.get(HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
                format!("http://{host}")
            }
        };
        Ok(Ctx { account, base })
    }
}
