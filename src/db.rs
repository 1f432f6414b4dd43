//! SPI plumbing: statements prepared once per backend and reused, and typed row access.
//!
//! Every statement names its relations schema-qualified and, on per-user tables, filters on
//! `identity = $1` (SPEC §9). Plans are kept with SPI_keepplan, so a verification costs
//! executions, not parses; Postgres's plan cache revalidates them after DDL.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::{PgBuiltInOids, PgOid};
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiTupleTable};
use pgrx::{FromDatum, IntoDatum};

use crate::error::{TotpError, TotpResult};

/// A statement and its parameter types.
pub struct Sql {
    pub text: &'static str,
    pub params: &'static [PgOid],
}

pub const TEXT: PgOid = PgOid::BuiltIn(PgBuiltInOids::TEXTOID);
pub const INT4: PgOid = PgOid::BuiltIn(PgBuiltInOids::INT4OID);
pub const INT8: PgOid = PgOid::BuiltIn(PgBuiltInOids::INT8OID);
pub const BYTEA: PgOid = PgOid::BuiltIn(PgBuiltInOids::BYTEAOID);
pub const JSONB: PgOid = PgOid::BuiltIn(PgBuiltInOids::JSONBOID);
pub const TIMESTAMPTZ: PgOid = PgOid::BuiltIn(PgBuiltInOids::TIMESTAMPTZOID);
pub const INTERVAL: PgOid = PgOid::BuiltIn(PgBuiltInOids::INTERVALOID);
pub const UUID: PgOid = PgOid::BuiltIn(PgBuiltInOids::UUIDOID);

thread_local! {
    static PLANS: RefCell<HashMap<usize, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

// Every statement this backend has run, for the #[pg_test] that checks their shapes.
#[cfg(any(test, feature = "pg_test"))]
thread_local! {
    pub static EXECUTED: RefCell<Vec<&'static Sql>> = const { RefCell::new(Vec::new()) };
}

fn plan(client: &SpiClient<'_>, sql: &'static Sql) -> TotpResult<Rc<OwnedPreparedStatement>> {
    #[cfg(any(test, feature = "pg_test"))]
    EXECUTED.with(|done| {
        let mut done = done.borrow_mut();
        if !done.iter().any(|seen| std::ptr::eq(*seen, sql)) {
            done.push(sql);
        }
    });
    // Keyed by the address of the static text: each statement is one `static`.
    let key = sql.text.as_ptr() as usize;
    if let Some(plan) = PLANS.with(|plans| plans.borrow().get(&key).cloned()) {
        return Ok(plan);
    }
    let plan = Rc::new(client.prepare_mut(sql.text, sql.params)?.keep());
    PLANS.with(|plans| plans.borrow_mut().insert(key, plan.clone()));
    Ok(plan)
}

/// Executes `sql` (read-write) with `args`.
pub fn exec<'conn>(
    client: &mut SpiClient<'conn>,
    sql: &'static Sql,
    args: &[DatumWithOid<'_>],
) -> TotpResult<SpiTupleTable<'conn>> {
    let plan = plan(client, sql)?;
    Ok(client.update(&*plan, None, args)?)
}

/// Executes `sql` read-only (for STABLE functions).
pub fn query<'conn>(
    client: &SpiClient<'conn>,
    sql: &'static Sql,
    args: &[DatumWithOid<'_>],
) -> TotpResult<SpiTupleTable<'conn>> {
    let plan = plan(client, sql)?;
    Ok(client.select(&*plan, None, args)?)
}

/// The first column of every row of `sql`'s result (read-write), which the query declares NOT NULL.
pub fn column<T: FromDatum + IntoDatum>(
    client: &mut SpiClient<'_>,
    sql: &'static Sql,
    args: &[DatumWithOid<'_>],
) -> TotpResult<Vec<T>> {
    exec(client, sql, args)?.map(|row| req_at(&row, 1)).collect()
}

/// The first row of a result, if any.
pub fn first(table: SpiTupleTable<'_>) -> Option<SpiTupleTable<'_>> {
    if table.is_empty() {
        None
    } else {
        Some(table.first())
    }
}

/// Column `ordinal` (1-based) of the current row; NULL is `None`.
pub fn get<T: FromDatum + IntoDatum>(row: &SpiTupleTable<'_>, ordinal: usize) -> TotpResult<Option<T>> {
    Ok(row.get::<T>(ordinal)?)
}

/// Column `ordinal` of the current row, which the schema declares NOT NULL.
pub fn req<T: FromDatum + IntoDatum>(row: &SpiTupleTable<'_>, ordinal: usize) -> TotpResult<T> {
    row.get::<T>(ordinal)?.ok_or_else(|| TotpError::Internal(format!("column {ordinal} is unexpectedly NULL")))
}

/// Shorthand for a parameter.
pub fn arg<'a, T: IntoDatum>(value: T) -> DatumWithOid<'a> {
    DatumWithOid::from(value)
}

/// Column `ordinal` of a row from an iterated result, which the schema declares NOT NULL.
pub fn req_at<T: FromDatum + IntoDatum>(row: &pgrx::spi::SpiHeapTupleData<'_>, ordinal: usize) -> TotpResult<T> {
    row.get::<T>(ordinal)?.ok_or_else(|| TotpError::Internal(format!("column {ordinal} is unexpectedly NULL")))
}
