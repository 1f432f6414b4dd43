//! HTTP Basic with an account SID and its token (Twilio's scheme); anything else is 401 / 20003.
//! Also where a request's absolute URLs start (`TOTP_VERIFY_PUBLIC_URL`, else its Host).

use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, HOST};
use axum::http::request::Parts;
use base64::Engine;

use crate::error::ApiError;
use crate::App;

/// The authenticated account and the base of the URLs in the response.
pub struct Ctx {
    pub account: String,
    pub base: String,
}

/// Equal without an early exit on the first differing byte.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
    same(expected.as_bytes(), token.as_bytes()).then(|| sid.to_string())
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
