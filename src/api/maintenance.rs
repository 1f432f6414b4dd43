//! `totp.run_maintenance()`: tidies what the views already hide, and prunes old events. Nothing
//! depends on it having run (an overdue challenge reads as expired, an unverified factor past its
//! lifetime is not found), so a scheduler such as pg_cron may call it as often or as rarely as
//! it likes.
//!
//! This is the one function that spans identities: housekeeping, run per node when
//! distributed (SPEC §9), never on a request path.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

use crate::clock::Now;
use crate::db::{self, arg, Sql, TIMESTAMPTZ};
use crate::error::TotpResult;

static EXPIRE_CHALLENGES: Sql = Sql {
    text: "UPDATE totp_private.challenges SET status = 'expired', date_updated = $1 \
           WHERE status = 'pending' AND expiration_date <= $1",
    params: &[TIMESTAMPTZ],
};

static DELETE_UNVERIFIED: Sql =
    Sql { text: "DELETE FROM totp_private.factors WHERE unverified_until <= $1", params: &[TIMESTAMPTZ] };

// Events outlive their service's deletion (webhooks must still deliver them); they are then kept
// for the default retention.
pub(crate) static PRUNE_EVENTS: Sql = Sql {
    text: "DELETE FROM totp_private.events e \
           WHERE e.date_created < $1 - COALESCE((SELECT s.event_retention FROM totp_private.services s \
                                                  WHERE s.sid = e.service_sid), interval '7 days')",
    params: &[TIMESTAMPTZ],
};

/// Marks overdue pending challenges `expired`, deletes unverified factors past their lifetime,
/// and deletes events older than their service's `event_retention`; returns how many of each.
#[allow(clippy::type_complexity)] // pgrx reads the column names from this very signature
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn run_maintenance() -> Result<
    TableIterator<'static, (name!(expired_challenges, i64), name!(deleted_factors, i64), name!(pruned_events, i64))>,
    ErrorReport,
> {
    let now = Now::read();
    let counts = Spi::connect_mut(|client| -> TotpResult<(i64, i64, i64)> {
        // Factors before challenges: the lock order of every call (a deletion holding a factor
        // and waiting for its challenge must not meet maintenance holding it the other way).
        let deleted = db::exec(client, &DELETE_UNVERIFIED, &[arg(now.timestamptz())])?.len();
        let expired = db::exec(client, &EXPIRE_CHALLENGES, &[arg(now.timestamptz())])?.len();
        let pruned = db::exec(client, &PRUNE_EVENTS, &[arg(now.timestamptz())])?.len();
        Ok((expired as i64, deleted as i64, pruned as i64))
    })?;
    Ok(TableIterator::once(counts))
}
