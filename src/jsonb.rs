//! `jsonb` arguments kept as the caller's datum.
//!
//! pgrx's `JsonB` goes through `serde_json::Value`, which turns numbers into f64 (so
//! `{"n": 12345678901234567890}` would be stored altered, and `1e400` fails) and refuses
//! nesting deeper than 128 levels. A TOTP extension must store an application's metadata
//! exactly as given, so these arguments stay Postgres datums end to end; the 60306 checks
//! (an object, at most 1024 characters) use Postgres's own `jsonb_typeof` and `jsonb_out`.

use std::ffi::CStr;

use pgrx::callconv::{Arg, ArgAbi, BoxRet, FcInfo};
use pgrx::pg_sys;
use pgrx::pgrx_sql_entity_graph::metadata::{
    ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable, TypeOrigin,
};
use pgrx::{direct_function_call, FromDatum, IntoDatum};

/// A non-NULL `jsonb` argument, valid for the duration of the call.
#[derive(Debug, Clone, Copy)]
pub struct Jsonb(pg_sys::Datum);

impl Jsonb {
    /// Whether the document is a JSON object.
    pub fn is_object(self) -> bool {
        // SAFETY: the datum is a jsonb argument of the current call.
        let kind = unsafe { direct_function_call::<String>(pg_sys::jsonb_typeof, &[Some(self.0)]) };
        kind.as_deref() == Some("object")
    }

    /// Characters of its text form (what `::text` shows).
    pub fn text_chars(self) -> usize {
        // SAFETY: as above; jsonb_out returns a palloc'd C string in the current context.
        unsafe {
            let text =
                direct_function_call::<&CStr>(pg_sys::jsonb_out, &[Some(self.0)]).expect("jsonb_out returns a string");
            let chars = text.to_string_lossy().chars().count();
            pg_sys::pfree(text.as_ptr() as *mut _);
            chars
        }
    }
}

impl FromDatum for Jsonb {
    unsafe fn from_polymorphic_datum(datum: pg_sys::Datum, is_null: bool, _: pg_sys::Oid) -> Option<Self> {
        (!is_null).then_some(Jsonb(datum))
    }
}

impl IntoDatum for Jsonb {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(self.0)
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

unsafe impl<'fcx> ArgAbi<'fcx> for Jsonb {
    unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
        // SAFETY: the caller (pgrx) only calls this for a non-NULL jsonb argument.
        unsafe { arg.unbox_arg_using_from_datum().expect("a non-NULL jsonb argument") }
    }
}

unsafe impl SqlTranslatable for Jsonb {
    const TYPE_IDENT: &'static str = pgrx::pgrx_resolved_type!(Jsonb);
    const TYPE_ORIGIN: TypeOrigin = TypeOrigin::External;
    const ARGUMENT_SQL: Result<SqlMappingRef, ArgumentError> = Ok(SqlMappingRef::literal("jsonb"));
    const RETURN_SQL: Result<ReturnsRef, ReturnsError> = Ok(ReturnsRef::One(SqlMappingRef::literal("jsonb")));
}

impl Jsonb {
    /// A document parsed from its text form in the current memory context, so that it outlives
    /// the SPI connection the text came from (a datum read through SPI does not).
    pub fn from_text(text: &str) -> Self {
        let text = std::ffi::CString::new(text).expect("jsonb text has no NUL");
        // SAFETY: jsonb_in parses a C string and returns a palloc'd jsonb; it raises an ERROR on
        // malformed input, which the callers' text (jsonb_out's own) never is.
        let datum = unsafe {
            direct_function_call::<pg_sys::Datum>(pg_sys::jsonb_in, &[Some(pg_sys::Datum::from(text.as_ptr()))])
        };
        Jsonb(datum.expect("jsonb_in returns a document"))
    }
}

// SAFETY: the datum is a jsonb made in the function's memory context (`from_text`), so it lives
// until the caller has copied the result.
unsafe impl BoxRet for Jsonb {
    unsafe fn box_into<'fcx>(self, fcinfo: &mut FcInfo<'fcx>) -> pgrx::datum::Datum<'fcx> {
        unsafe { fcinfo.return_raw_datum(self.0) }
    }
}
