//! Twilio's webhook events as `NOTIFY totp_events` (SPEC §7).
//!
//! NOTIFY is transactional: a listener hears an event only if the change commits. Payloads name
//! resources and a date, never a secret or a code.

use pgrx::spi::SpiClient;

use crate::clock::Now;
use crate::db::{self, arg, Sql, TEXT, TIMESTAMPTZ};
use crate::error::TotpResult;

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

static NOTIFY: Sql = Sql {
    text: "SELECT pg_catalog.pg_notify('totp_events', pg_catalog.json_strip_nulls(pg_catalog.json_build_object(\
             'type', $1, 'service_sid', $2, 'entity_identity', $3, 'factor_sid', $4, \
             'challenge_sid', $5, 'date', $6))::text)",
    params: &[TEXT, TEXT, TEXT, TEXT, TEXT, TIMESTAMPTZ],
};

/// Queues `event` for delivery at commit.
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
        &NOTIFY,
        &[
            arg(event.name()),
            arg(service_sid),
            arg(identity),
            arg(factor_sid),
            arg(challenge_sid),
            arg(now.timestamptz()),
        ],
    )?;
    Ok(())
}
