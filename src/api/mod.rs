//! The SQL surface, one module per SQL noun (SPEC §3, §4, §7).
//!
//! State functions are `SECURITY DEFINER` with `search_path` pinned to `pg_catalog, pg_temp`:
//! they read `totp_private` on the caller's behalf, and a caller's schema cannot shadow anything
//! they call. Required arguments are `Option` in Rust so that NULL is a clear 22023 error
//! instead of a STRICT function's silent NULL row.

pub mod challenges;
pub mod codes;
pub mod entities;
pub mod events;
pub mod factors;
pub mod identities;
pub mod keys;
pub mod maintenance;
pub mod partitions;
pub mod services;

use totp_core::sid::{self, SidKind};
use totp_core::validate::{self, Invalid};

use crate::error::{TotpError, TotpResult};
use crate::jsonb::Jsonb;

/// The statements of the verification path, by name, for the #[pg_test] that checks that its
/// run executed (and so shape-checked) every one of them.
#[cfg(any(test, feature = "pg_test"))]
pub fn verification_statements() -> Vec<(&'static str, &'static crate::db::Sql)> {
    let mut all = challenges::statements();
    all.extend(factors::statements());
    all
}

/// A required argument: NULL is an invalid-argument error naming it.
pub fn required<T>(field: &'static str, value: Option<T>) -> TotpResult<T> {
    value.ok_or_else(|| TotpError::required(field))
}

/// A SID argument of `kind`: required and well-formed. The service SID is Twilio 60200's
/// business; the others 60306.
pub fn sid_arg<'a>(field: &'static str, kind: SidKind, value: Option<&'a str>) -> TotpResult<&'a str> {
    let value = match (kind, value) {
        (SidKind::Service, None) => return Err(TotpError::invalid_service(Invalid::new(field, "is required"))),
        (_, value) => required(field, value)?,
    };
    if sid::is_valid(kind, value) {
        return Ok(value);
    }
    let invalid = Invalid::new(field, format!("must be {} followed by 32 lower-case hex digits", kind.prefix()));
    Err(match kind {
        SidKind::Service => TotpError::invalid_service(invalid),
        _ => TotpError::invalid(invalid),
    })
}

/// The (service SID, identity) pair every per-user call starts with.
pub fn scope<'a>(service_sid: Option<&'a str>, identity: Option<&'a str>) -> TotpResult<(&'a str, &'a str)> {
    let service_sid = sid_arg("service_sid", SidKind::Service, service_sid)?;
    Ok((service_sid, identity_arg(identity)?))
}

/// An identity argument: required and valid.
pub fn identity_arg(identity: Option<&str>) -> TotpResult<&str> {
    let identity = required("identity", identity)?;
    validate::identity(identity)?;
    Ok(identity)
}

/// A JSON argument that must be an object of at most 1024 characters (its `::text` form).
pub fn json_object_arg(field: &'static str, value: Option<Jsonb>) -> TotpResult<()> {
    if let Some(json) = value {
        let is_object = json.is_object();
        // Only measure objects: the length of a huge scalar is not worth computing to refuse it.
        let chars = if is_object { json.text_chars() } else { 0 };
        validate::json_object(field, is_object, chars)?;
    }
    Ok(())
}

/// Refuses a caller that is not a superuser, whatever EXECUTE has been granted (for instance by
/// `GRANT EXECUTE ON ALL FUNCTIONS`). Only for functions that are not SECURITY DEFINER, where the
/// current user is the caller.
pub fn require_superuser(what: &'static str) -> TotpResult<()> {
    // SAFETY: superuser() reads the current user's role.
    if unsafe { pgrx::pg_sys::superuser() } {
        Ok(())
    } else {
        Err(TotpError::SuperuserRequired { what })
    }
}
