//! PL/Proxy partitions (SPEC §11): `totp.shard_hash`, `totp.set_partition`, and the guard every
//! identity-scoped call passes through (`services::load` reads what it needs).
//!
//! A partition knows its `(part_no, part_count)` from `totp_private.partition`, a one-row table
//! that pg_dump keeps, so a restored partition still refuses identities that are not its own. An
//! identity moved away from its hashed partition (`identities`) has a row in
//! `totp_private.placements` on both partitions, naming where it lives now.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use totp_core::partition;
use totp_core::validate::Invalid;

use crate::db::{self, arg, Sql, INT4};
use crate::error::{TotpError, TotpResult};

/// `shard_hash(identity) & (part_count - 1)`: the partition a PL/Proxy router sends `identity`
/// to. The router's own SQL copy of this function must agree (README "Sharding with PL/Proxy").
#[pg_extern(immutable, strict, parallel_safe)]
#[search_path(pg_catalog, pg_temp)]
fn shard_hash(identity: &str) -> i32 {
    partition::shard_hash(identity)
}

/// Refuses a call on `identity` in a partition that does not hold it: its placement after a move
/// if it has one, else its hashed partition. No partition set (one node, Citus): no guard.
pub fn guard(identity: &str, part_no: Option<i32>, part_count: Option<i32>, placement: Option<i32>) -> TotpResult<()> {
    let (Some(part_no), Some(part_count)) = (part_no, part_count) else {
        return Ok(());
    };
    let home = placement.unwrap_or_else(|| partition::partition_of(identity, part_count));
    if home == part_no {
        Ok(())
    } else {
        Err(TotpError::WrongPartition { home, part_no, part_count })
    }
}

static SET: Sql = Sql {
    text: "INSERT INTO totp_private.partition (part_no, part_count) VALUES ($1, $2) \
           ON CONFLICT (one_row) DO UPDATE SET part_no = EXCLUDED.part_no, part_count = EXCLUDED.part_count",
    params: &[INT4, INT4],
};
static CLEAR: Sql = Sql { text: "DELETE FROM totp_private.partition", params: &[] };

/// Makes this database partition `part_no` of `part_count` (a power of 2) behind a PL/Proxy
/// router; `(NULL, NULL)` makes it a lone node again. Superuser only.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn set_partition(part_no: Option<i32>, part_count: Option<i32>) -> Result<(), ErrorReport> {
    super::require_superuser("set the partition")?;
    Ok(Spi::connect_mut(|client| -> TotpResult<()> {
        match (part_no, part_count) {
            (None, None) => db::exec(client, &CLEAR, &[])?,
            (Some(part_no), Some(part_count)) => {
                partition::check(part_no, part_count)
                    .map_err(|rule| TotpError::invalid_service(Invalid::new("part_no, part_count", rule)))?;
                db::exec(client, &SET, &[arg(part_no), arg(part_count)])?
            }
            _ => {
                return Err(TotpError::invalid_service(Invalid::new(
                    "part_no, part_count",
                    "must both be given, or both be NULL",
                )))
            }
        };
        Ok(())
    })?)
}

static CURRENT: Sql = Sql { text: "SELECT part_no, part_count FROM totp_private.partition", params: &[] };

/// This database's `(part_no, part_count)`, if it is a partition.
pub fn current(client: &mut pgrx::spi::SpiClient<'_>) -> TotpResult<Option<(i32, i32)>> {
    match db::first(db::exec(client, &CURRENT, &[])?) {
        Some(row) => Ok(Some((db::req(&row, 1)?, db::req(&row, 2)?))),
        None => Ok(None),
    }
}
