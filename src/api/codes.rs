//! The pure functions of SPEC §4: no table access, so they are safe anywhere (indexes,
//! generated columns, parallel queries) and need no privileges beyond EXECUTE.

use pgrx::datum::TimestampWithTimeZone;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use totp_core::otp::{self, Algorithm, MAX_DIGITS, MIN_DIGITS};
use totp_core::uri::KeyUri;
use totp_core::validate::{self, Invalid};

use crate::clock;
use crate::error::{TotpError, TotpResult};

/// The pure functions accept wider ranges than factors do (RFC 4226 allows 1–10 digits).
const DIGITS: (i32, i32) = (MIN_DIGITS as i32, MAX_DIGITS as i32);
const PERIOD: (i32, i32) = (1, 86_400);
const SECRET_BYTES: (i32, i32) = (validate::SECRET_MIN_BYTES as i32, validate::SECRET_MAX_BYTES as i32);

fn invalid(field: &'static str, rule: impl Into<String>) -> TotpError {
    TotpError::invalid_service(Invalid::new(field, rule))
}

fn digits_arg(digits: i32) -> TotpResult<u32> {
    validate::in_range("digits", digits, DIGITS).map_err(TotpError::invalid_service)
}

fn alg_arg(alg: &str) -> TotpResult<Algorithm> {
    alg.parse().map_err(|e: otp::UnknownAlgorithm| invalid("alg", e.to_string()))
}

/// RFC 4226 HOTP code of `secret` at `counter`.
#[pg_extern(immutable, strict, parallel_safe)]
fn hotp_code(
    secret: &[u8],
    counter: i64,
    digits: default!(i32, 6),
    alg: default!(&str, "'sha1'"),
) -> Result<String, ErrorReport> {
    let digits = digits_arg(digits)?;
    let alg = alg_arg(alg)?;
    let counter = u64::try_from(counter).map_err(|_| invalid("counter", "must not be negative"))?;
    Ok(otp::hotp(secret, counter, digits, alg))
}

/// RFC 6238 TOTP code of `secret` at time `at` (epoch 0). IMMUTABLE because the result depends
/// only on the arguments: the `now()` default is evaluated by the caller, not in here.
#[pg_extern(immutable, strict, parallel_safe)]
fn totp_code(
    secret: &[u8],
    at: default!(TimestampWithTimeZone, "now()"),
    time_step: default!(i32, 30),
    digits: default!(i32, 6),
    alg: default!(&str, "'sha1'"),
) -> Result<String, ErrorReport> {
    let step = validate::in_range("time_step", time_step, PERIOD).map_err(TotpError::invalid_service)?;
    let digits = digits_arg(digits)?;
    let alg = alg_arg(alg)?;
    if !at.is_finite() {
        return Err(invalid("at", "must be a finite time").into());
    }
    let code = otp::totp(secret, clock::unix_seconds(at.into_inner()), step, digits, alg)
        .ok_or_else(|| invalid("at", "must not be before 1970-01-01 (the TOTP epoch)"))?;
    Ok(code)
}

/// RFC 4648 base32, upper case, unpadded (the form authenticator apps print).
#[pg_extern(immutable, strict, parallel_safe)]
fn base32_encode(data: &[u8]) -> String {
    totp_core::base32::encode(data)
}

/// RFC 4648 base32 decoding; tolerates case, spaces, dashes and `=` padding.
#[pg_extern(immutable, strict, parallel_safe)]
fn base32_decode(text: &str) -> Result<Vec<u8>, ErrorReport> {
    Ok(totp_core::base32::decode(text).map_err(|e| invalid("base32 text", e.to_string()))?)
}

/// A new secret: base32 of `bytes` bytes from the OS CSPRNG (16–128; 20 is 160 bits).
#[pg_extern(volatile, strict, parallel_safe)]
fn generate_secret(bytes: default!(i32, 20)) -> Result<String, ErrorReport> {
    let n = validate::in_range("bytes", bytes, SECRET_BYTES).map_err(TotpError::invalid_service)?;
    Ok(totp_core::base32::encode(&totp_core::random::bytes(n as usize)))
}

/// A Key Uri Format `otpauth://totp/` URI, the same format as `binding_uri`. NULL secret or
/// account gives NULL; a NULL issuer leaves the issuer out.
#[pg_extern(immutable, parallel_safe)]
fn otpauth_uri(
    secret: Option<&str>,
    account: Option<&str>,
    issuer: default!(Option<&str>, "NULL"),
    alg: default!(Option<&str>, "'sha1'"),
    digits: default!(Option<i32>, 6),
    period: default!(Option<i32>, 30),
) -> Result<Option<String>, ErrorReport> {
    let (Some(secret), Some(account), Some(alg), Some(digits), Some(period)) = (secret, account, alg, digits, period)
    else {
        return Ok(None);
    };
    let secret = totp_core::base32::decode(secret).map_err(|e| invalid("secret", e.to_string()))?;
    if secret.is_empty() || secret.len() > validate::SECRET_MAX_BYTES {
        return Err(invalid("secret", format!("must carry 1 to {} bytes", validate::SECRET_MAX_BYTES)).into());
    }
    validate::friendly_name("account", account).map_err(TotpError::invalid_service)?;
    if let Some(issuer) = issuer {
        validate::friendly_name("issuer", issuer).map_err(TotpError::invalid_service)?;
    }
    let uri = KeyUri {
        secret: &totp_core::base32::encode(&secret),
        account,
        issuer,
        alg: alg_arg(alg)?,
        digits: digits_arg(digits)?,
        period: validate::in_range("period", period, PERIOD).map_err(TotpError::invalid_service)?,
    }
    .render();
    Ok(Some(uri))
}

/// A standalone SVG QR code of `text` (e.g. a `binding_uri`), so an application can show it
/// without a QR library. Medium error correction, a 4-module quiet zone, at least 256 px.
#[pg_extern(immutable, strict, parallel_safe)]
fn qr_svg(text: &str) -> Result<String, ErrorReport> {
    let code = qrcode::QrCode::with_error_correction_level(text.as_bytes(), qrcode::EcLevel::M)
        .map_err(|e| TotpError::invalid_service(Invalid::new("text", format!("cannot be a QR code: {e}"))))?;
    Ok(code.render::<qrcode::render::svg::Color>().min_dimensions(256, 256).quiet_zone(true).build())
}
