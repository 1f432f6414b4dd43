//! Twilio's webhook events as rows of `totp.events` (SPEC §7).
//!
//! Each event is a row written in the transaction that made the change, so it exists exactly
//! when the change commits, and it is readable only by roles granted SELECT on `totp.events`
//! (NOTIFY payloads would reach any role that can LISTEN). A payload-free `NOTIFY totp_events`
//! may wake listeners (setting `totp_verify.notify`); Postgres folds a transaction's identical
//! notifications into one. Rows name resources and a date, never a secret or a code.

use pgrx::spi::SpiClient;

use crate::clock::Now;
use crate::db::{self, arg, Sql, TEXT, TIMESTAMPTZ, UUID};
use crate::error::TotpResult;
use crate::guc;

#[derive(Debug, Clone, Copy)]
pub enum Event {
    FactorCreated,
    FactorVerified,
    FactorDeleted,
    ChallengeApproved,
    ChallengeDenied,
}

impl Event {
    pub fn name(self) -> &'static str {
        match self {
            Event::FactorCreated => "factor.created",
            Event::FactorVerified => "factor.verified",
            Event::FactorDeleted => "factor.deleted",
            Event::ChallengeApproved => "challenge.approved",
            Event::ChallengeDenied => "challenge.denied",
        }
    }
}

// The id comes from Rust (`new_id`): no volatile function in a per-identity write (SPEC §11).
static RECORD: Sql = Sql {
    text: "INSERT INTO totp_private.events (identity, id, type, service_sid, factor_sid, challenge_sid, \
             date_created) VALUES ($1, $7, $2, $3, $4, $5, $6)",
    params: &[TEXT, TEXT, TEXT, TEXT, TEXT, TIMESTAMPTZ, UUID],
};

/// A new event id (the webhook's `uuid`): a random version-4 UUID.
pub fn new_id() -> pgrx::datum::Uuid {
    pgrx::datum::Uuid::from_bytes(totp_core::random::uuid_v4())
}

// The factors a deletion removes, each with its factor.deleted event. Unverified factors past
// their lifetime are already gone (no event was due for them then, nor now). These two keep
// gen_random_uuid(), one per row of an INSERT ... SELECT (how the deletion events distribute is
// issue 13's events item, not settled here).
pub(crate) static RECORD_ENTITY_DELETION: Sql = Sql {
    text: "INSERT INTO totp_private.events (identity, id, type, service_sid, factor_sid, date_created) \
           SELECT f.identity, pg_catalog.gen_random_uuid(), 'factor.deleted', f.service_sid, f.sid, $3 \
             FROM totp_private.factors f \
            WHERE f.identity = $1 AND f.service_sid = $2 \
              AND (f.unverified_until IS NULL OR f.unverified_until > $3)",
    params: &[TEXT, TEXT, TIMESTAMPTZ],
};

// Spans identities: deleting a service is administration, not a per-user request (SPEC §9).
pub(crate) static RECORD_SERVICE_DELETION: Sql = Sql {
    text: "INSERT INTO totp_private.events (identity, id, type, service_sid, factor_sid, date_created) \
           SELECT f.identity, pg_catalog.gen_random_uuid(), 'factor.deleted', f.service_sid, f.sid, $2 \
             FROM totp_private.factors f \
            WHERE f.service_sid = $1 AND (f.unverified_until IS NULL OR f.unverified_until > $2)",
    params: &[TEXT, TIMESTAMPTZ],
};

/// Sends the payload-free wake-up if `totp_verify.notify` is on: what `pg_notify('totp_events',
/// '')` does, called directly rather than through a statement of its own (which cost an approval
/// an executor start-up). Postgres queues it and sends it at commit, or drops it at rollback.
pub fn wake() {
    if guc::notify() {
        use pgrx::IntoDatum;
        // SAFETY: pg_notify is a built-in taking two non-NULL text arguments and returning void;
        // pgrx guards the call, so an ERROR it raises becomes this call's.
        unsafe {
            pgrx::fcinfo::direct_function_call_as_datum(
                pgrx::pg_sys::pg_notify,
                &["totp_events".into_datum(), "".into_datum()],
            );
        }
    }
}

/// Records `event` in this transaction.
pub fn send(
    client: &mut SpiClient<'_>,
    event: Event,
    service_sid: &str,
    identity: &str,
    factor_sid: &str,
    challenge_sid: Option<&str>,
    now: Now,
) -> TotpResult<()> {
    db::exec(
        client,
        &RECORD,
        &[
            arg(identity),
            arg(event.name()),
            arg(service_sid),
            arg(factor_sid),
            arg(challenge_sid),
            arg(now.timestamptz()),
            arg(new_id()),
        ],
    )?;
    wake();
    Ok(())
}

/// Records a `factor.deleted` for every factor of the entity, before it is deleted.
pub fn entity_deleted(client: &mut SpiClient<'_>, service_sid: &str, identity: &str, now: Now) -> TotpResult<()> {
    record_deletions(client, &RECORD_ENTITY_DELETION, &[arg(identity), arg(service_sid), arg(now.timestamptz())])
}

/// Records a `factor.deleted` for every factor of the service, before it is deleted.
pub fn service_deleted(client: &mut SpiClient<'_>, service_sid: &str, now: Now) -> TotpResult<()> {
    record_deletions(client, &RECORD_SERVICE_DELETION, &[arg(service_sid), arg(now.timestamptz())])
}

/// Runs one of the deletion statements above; wakes listeners if it recorded anything.
fn record_deletions(
    client: &mut SpiClient<'_>,
    sql: &'static Sql,
    args: &[pgrx::datum::DatumWithOid<'_>],
) -> TotpResult<()> {
    if !db::exec(client, sql, args)?.is_empty() {
        wake();
    }
    Ok(())
}
