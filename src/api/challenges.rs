//! `totp.challenges`: the verify sequence (create a challenge with the code, or create it and
//! answer it with update_challenge) and `has_recent_approval` for policies.

use pgrx::datum::TimestampWithTimeZone;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use totp_core::sid::{self, SidKind};
use totp_core::validate::{self, Invalid};

use super::events::{self, Event};
use super::factors::{self, LockedFactor};
use super::services::Service;
use super::{json_object_arg, required, scope, sid_arg};
use crate::clock::{Now, MICROS_PER_DAY, MICROS_PER_HOUR};
use crate::db::{self, arg, Sql, INT4, INT8, JSONB, TEXT, TIMESTAMPTZ, UUID};
use crate::error::{TotpError, TotpResult};
use crate::jsonb::Jsonb;

type ChallengeRow = pgrx::composite_type!('static, "totp.challenges");

/// Twilio's short-code rule: factors of 4 digits or fewer get only the 24-hour limit, tighter.
pub const SHORT_CODE_MAX_LENGTH: i32 = 4;

/// A fixed window counter: (window start, count) after counting one more event at `now`.
fn count_in_window(start: Option<i64>, count: i32, now: Now, width: i64) -> (i64, i32) {
    match start {
        Some(start) if now.micros - start < width => (start, count + 1),
        _ => (now.micros, 1),
    }
}

/// The factor's challenge-creation windows after one more creation, or 60312.
fn count_creation(service: &Service, factor: &LockedFactor, now: Now) -> TotpResult<[(i64, i32); 2]> {
    let hour = count_in_window(factor.challenge_hour_start, factor.challenges_in_hour, now, MICROS_PER_HOUR);
    let day = count_in_window(factor.challenge_day_start, factor.challenges_in_day, now, MICROS_PER_DAY);
    let (hour_limit, day_limit) = if factor.code_length <= SHORT_CODE_MAX_LENGTH {
        (None, service.max_short_code_challenges_per_day)
    } else {
        (Some(service.max_challenges_per_hour), service.max_challenges_per_day)
    };
    if let Some(limit) = hour_limit.filter(|limit| hour.1 > *limit) {
        return Err(TotpError::ChallengeCreationRateLimited { limit, window: "hour" });
    }
    if day.1 > day_limit {
        return Err(TotpError::ChallengeCreationRateLimited { limit: day_limit, window: "24 hours" });
    }
    Ok([hour, day])
}

fn ts(micros: i64) -> TimestampWithTimeZone {
    TimestampWithTimeZone::try_from(micros).expect("window starts are finite")
}

static COUNT_CREATION: Sql = Sql {
    text: "UPDATE totp_private.factors SET challenge_hour_start = $3, challenges_in_hour = $4, \
             challenge_day_start = $5, challenges_in_day = $6, last_step = COALESCE($7, last_step) \
           WHERE identity = $1 AND sid = $2",
    params: &[TEXT, TEXT, TIMESTAMPTZ, INT4, TIMESTAMPTZ, INT4, INT8],
};

/// The columns of a `totp.challenges` row, in the view's order, as `ROW(...)::totp.challenges`
/// of alias `c`: rows are built from named columns, never a whole-row reference (`SELECT c`,
/// `RETURNING c`), which Citus cannot cast from a shard's row type (SPEC §11).
macro_rules! challenge_row {
    () => {
        "ROW(c.sid, c.service_sid, c.entity_sid, c.identity, c.factor_sid, c.factor_type, c.status, \
           c.responded_reason, c.details, c.hidden_details, c.metadata, c.expiration_date, \
           c.date_responded, c.date_created, c.date_updated)::totp.challenges"
    };
}

// Returns the new row as the view shows it (a new challenge is not yet expired), and records its
// event ($13: challenge.approved or challenge.denied; NULL for none; $14 its id) in the same
// statement: one executor start instead of two on the verification path.
static INSERT: Sql = Sql {
    text: concat!(
        "WITH c AS (INSERT INTO totp_private.challenges AS c (identity, sid, service_sid, entity_sid, factor_sid, \
           status, details, hidden_details, expiration_date, date_responded, date_created, \
           date_updated, failed_attempts) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12) RETURNING c.*), \
         e AS (INSERT INTO totp_private.events (identity, id, type, service_sid, factor_sid, challenge_sid, \
           date_created) \
           SELECT c.identity, $14, $13, c.service_sid, c.factor_sid, c.sid, $11 \
             FROM c WHERE $13 IS NOT NULL) \
         SELECT ",
        challenge_row!(),
        " FROM c"
    ),
    params: &[
        TEXT,
        TEXT,
        TEXT,
        TEXT,
        TEXT,
        TEXT,
        JSONB,
        JSONB,
        TIMESTAMPTZ,
        TIMESTAMPTZ,
        TIMESTAMPTZ,
        INT4,
        TEXT,
        UUID,
    ],
};

static SELECT_ROW: Sql = Sql {
    text: concat!("SELECT ", challenge_row!(), " FROM totp.challenges c WHERE c.identity = $1 AND c.sid = $2"),
    params: &[TEXT, TEXT],
};

fn row(client: &mut pgrx::spi::SpiClient<'_>, identity: &str, challenge_sid: &str) -> TotpResult<ChallengeRow> {
    let table = db::exec(client, &SELECT_ROW, &[arg(identity), arg(challenge_sid)])?;
    db::req(&table.first(), 1)
}

/// Creates a challenge for a verified factor. With a right `auth_payload` it is `approved` at
/// once; with a wrong one it is `pending` (one attempt used) and `update_challenge` may answer
/// it; without one it is `pending`.
#[allow(clippy::too_many_arguments)] // mirrors Twilio's parameters
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn create_challenge(
    service_sid: Option<&str>,
    identity: Option<&str>,
    factor_sid: Option<&str>,
    auth_payload: default!(Option<&str>, "NULL"),
    expiration_date: default!(Option<TimestampWithTimeZone>, "NULL"),
    details: default!(Option<Jsonb>, "NULL"),
    hidden_details: default!(Option<Jsonb>, "NULL"),
) -> Result<pgrx::composite_type!('static, "totp.challenges"), ErrorReport> {
    let (service_sid, identity) = scope(service_sid, identity)?;
    let factor_sid = sid_arg("factor_sid", SidKind::Factor, factor_sid)?;
    if let Some(payload) = auth_payload {
        validate::auth_payload(payload).map_err(TotpError::from)?;
    }
    json_object_arg("details", details)?;
    json_object_arg("hidden_details", hidden_details)?;
    let now = Now::read();
    Ok(Spi::connect_mut(|client| -> TotpResult<ChallengeRow> {
        let service = super::services::load(client, service_sid, now)?;
        let expiration_date = match expiration_date {
            None => service.default_expiry,
            Some(date) if !date.is_finite() || date.into_inner() <= now.micros => {
                return Err(Invalid::new("expiration_date", "must be in the future").into())
            }
            Some(date) if date.into_inner() > service.latest_expiry.into_inner() => {
                return Err(Invalid::new(
                    "expiration_date",
                    "must be at most the service's max_challenge_ttl (60 minutes) ahead",
                )
                .into())
            }
            Some(date) => date,
        };
        let factor = factors::lock(client, service_sid, identity, factor_sid, now)?;
        if !factor.verified {
            return Err(TotpError::FactorUnverified);
        }
        let [hour, day] = count_creation(&service, &factor, now)?;
        let accepted = match auth_payload {
            Some(payload) => factor.accepts(client, &service, payload, now)?,
            None => None,
        };
        db::exec(
            client,
            &COUNT_CREATION,
            &[arg(identity), arg(factor_sid), arg(ts(hour.0)), arg(hour.1), arg(ts(day.0)), arg(day.1), arg(accepted)],
        )?;
        let wrong = auth_payload.is_some() && accepted.is_none();
        let failed_attempts = i32::from(wrong);
        let status = if accepted.is_some() {
            "approved"
        } else if wrong && failed_attempts >= service.max_challenge_attempts {
            "denied"
        } else {
            "pending"
        };
        let responded = (status != "pending").then(|| now.timestamptz());
        let challenge_sid = sid::generate(SidKind::Challenge);
        let inserted = db::exec(
            client,
            &INSERT,
            &[
                arg(identity),
                arg(challenge_sid.as_str()),
                arg(service_sid),
                arg(factor.entity_sid.as_str()),
                arg(factor_sid),
                arg(status),
                arg(details),
                arg(hidden_details),
                arg(expiration_date),
                arg(responded),
                arg(now.timestamptz()),
                arg(failed_attempts),
                arg(event_of(status).map(Event::name)),
                arg(event_of(status).map(|_| events::new_id())),
            ],
        )?;
        let row: ChallengeRow = db::req(&inserted.first(), 1)?;
        if event_of(status).is_some() {
            events::wake(client)?;
        }
        Ok(row)
    })?)
}

/// The event a challenge's new status makes, if any.
fn event_of(status: &str) -> Option<Event> {
    match status {
        "approved" => Some(Event::ChallengeApproved),
        "denied" => Some(Event::ChallengeDenied),
        _ => None,
    }
}

fn announce(
    client: &mut pgrx::spi::SpiClient<'_>,
    status: &str,
    service_sid: &str,
    identity: &str,
    factor_sid: &str,
    challenge_sid: &str,
    now: Now,
) -> TotpResult<()> {
    match event_of(status) {
        Some(event) => events::send(client, event, service_sid, identity, factor_sid, Some(challenge_sid), now),
        None => Ok(()),
    }
}

static FIND: Sql = Sql {
    text: "SELECT factor_sid FROM totp_private.challenges \
           WHERE identity = $1 AND sid = $2 AND service_sid = $3",
    params: &[TEXT, TEXT, TEXT],
};

static LOCK: Sql = Sql {
    text: "SELECT status, expiration_date, failed_attempts FROM totp_private.challenges \
           WHERE identity = $1 AND sid = $2 FOR UPDATE",
    params: &[TEXT, TEXT],
};

static ANSWER: Sql = Sql {
    text: "UPDATE totp_private.challenges SET status = $3, failed_attempts = $4, \
             date_responded = $5, metadata = COALESCE($6, metadata), date_updated = $7 \
           WHERE identity = $1 AND sid = $2",
    params: &[TEXT, TEXT, TEXT, INT4, TIMESTAMPTZ, JSONB, TIMESTAMPTZ],
};

static CONSUME_STEP: Sql = Sql {
    text: "UPDATE totp_private.factors SET last_step = $3 WHERE identity = $1 AND sid = $2",
    params: &[TEXT, TEXT, INT8],
};

/// Answers a pending challenge with a code. Right: `approved`. Wrong: still `pending`, until
/// the service's max_challenge_attempts-th wrong code turns it `denied`. Answering an
/// approved (60322), denied (60308) or expired (60323) challenge is an error.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn update_challenge(
    service_sid: Option<&str>,
    identity: Option<&str>,
    challenge_sid: Option<&str>,
    auth_payload: Option<&str>,
    metadata: default!(Option<Jsonb>, "NULL"),
) -> Result<pgrx::composite_type!('static, "totp.challenges"), ErrorReport> {
    let (service_sid, identity) = scope(service_sid, identity)?;
    let challenge_sid = sid_arg("challenge_sid", SidKind::Challenge, challenge_sid)?;
    let payload = required("auth_payload", auth_payload)?;
    validate::auth_payload(payload).map_err(TotpError::from)?;
    json_object_arg("metadata", metadata)?;
    let now = Now::read();
    Ok(Spi::connect_mut(|client| -> TotpResult<ChallengeRow> {
        let service = super::services::load(client, service_sid, now)?;
        let found = db::exec(client, &FIND, &[arg(identity), arg(challenge_sid), arg(service_sid)])?;
        let Some(found) = db::first(found) else {
            return Err(super::entities::missing(client, service_sid, identity, SidKind::Challenge, challenge_sid));
        };
        let factor_sid: String = db::req(&found, 1)?;
        // Lock order is factor, then challenge, as in delete_factor's cascade: no deadlock.
        let factor = factors::lock(client, service_sid, identity, &factor_sid, now)?;
        let challenge = db::exec(client, &LOCK, &[arg(identity), arg(challenge_sid)])?.first();
        let status: String = db::req(&challenge, 1)?;
        let expiration: TimestampWithTimeZone = db::req(&challenge, 2)?;
        let failed_attempts: i32 = db::req(&challenge, 3)?;
        match status.as_str() {
            "approved" => return Err(TotpError::ChallengeResponded { status }),
            "denied" => return Err(TotpError::ChallengeAttemptsExhausted { limit: service.max_challenge_attempts }),
            "expired" => return Err(TotpError::ChallengeExpired),
            _ if expiration.into_inner() <= now.micros => return Err(TotpError::ChallengeExpired),
            _ if failed_attempts >= service.max_challenge_attempts => {
                return Err(TotpError::ChallengeAttemptsExhausted { limit: service.max_challenge_attempts })
            }
            _ => {}
        }
        let (status, failed_attempts) = match factor.accepts(client, &service, payload, now)? {
            Some(step) => {
                db::exec(client, &CONSUME_STEP, &[arg(identity), arg(factor_sid.as_str()), arg(step)])?;
                ("approved", failed_attempts)
            }
            None if failed_attempts + 1 >= service.max_challenge_attempts => ("denied", failed_attempts + 1),
            None => ("pending", failed_attempts + 1),
        };
        let responded = (status != "pending").then(|| now.timestamptz());
        db::exec(
            client,
            &ANSWER,
            &[
                arg(identity),
                arg(challenge_sid),
                arg(status),
                arg(failed_attempts),
                arg(responded),
                arg(metadata),
                arg(now.timestamptz()),
            ],
        )?;
        announce(client, status, service_sid, identity, &factor_sid, challenge_sid, now)?;
        row(client, identity, challenge_sid)
    })?)
}

// Measured from the statement's start, not the transaction's: a long transaction must not see an
// old approval as fresh. With $4, only approvals from factors verified at least $4 before the
// approval count (a factor enrolled by a compromised application role is not trusted at once).
static RECENT_APPROVAL: Sql = Sql {
    text: "SELECT EXISTS (SELECT 1 FROM totp_private.challenges c \
             JOIN totp_private.factors f ON f.identity = c.identity AND f.sid = c.factor_sid \
             WHERE c.identity = $1 AND c.service_sid = $2 AND c.status = 'approved' AND f.identity = $1 \
               AND c.date_responded > pg_catalog.statement_timestamp() - $3 * interval '1 microsecond' \
               AND ($4::int8 IS NULL \
                    OR f.date_verified <= c.date_responded - $4 * interval '1 microsecond'))",
    params: &[TEXT, TEXT, INT8, INT8],
};

/// Longer windows than this are treated as this: no approval is older, and `now() - within`
/// must stay a valid timestamp however large an interval a policy names.
const LONGEST_WINDOW_MICROS: i128 = 1_000 * 366 * 86_400 * 1_000_000;

/// Whether `identity` has a challenge approved within `within` (step-up checks in RLS policies
/// and triggers), measured from the start of the current statement. With `min_factor_age`, only
/// approvals through a factor that had been verified at least that long before count: an
/// application role that can enrol cannot mint a step-up approval with a factor of its own
/// making until that age has passed (and `factor.created` / `factor.verified` events have been
/// recorded for the user's app to notice). An identity that is NULL or could never be one (an
/// e-mail address, say) has no approvals, nor has any identity within a negative interval:
/// false, not an error, so a policy over rows of any shape keeps working.
#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn has_recent_approval_from_aged_factor(
    service_sid: Option<&str>,
    identity: Option<&str>,
    within: Option<pgrx::datum::Interval>,
    min_factor_age: Option<pgrx::datum::Interval>,
) -> Result<bool, ErrorReport> {
    let service_sid = sid_arg("service_sid", SidKind::Service, service_sid)?;
    let within = required("within", within)?.as_micros().min(LONGEST_WINDOW_MICROS);
    let min_factor_age = min_factor_age.map(|age| age.as_micros().clamp(0, LONGEST_WINDOW_MICROS) as i64);
    let Some(identity) = identity.filter(|i| validate::identity(i).is_ok()) else {
        return Ok(false);
    };
    if within < 0 {
        return Ok(false);
    }
    Ok(Spi::connect(|client| -> TotpResult<bool> {
        let table = db::query(
            client,
            &RECENT_APPROVAL,
            &[arg(identity), arg(service_sid), arg(within as i64), arg(min_factor_age)],
        )?;
        Ok(db::first(table).map(|row| db::req::<bool>(&row, 1)).transpose()?.unwrap_or(false))
    })?)
}

/// `has_recent_approval(service_sid, identity, within)`: any approval within `within` counts.
/// `min_factor_age` has a function of its own rather than a default here, so that policies written
/// against 0.1.0's three-argument function keep their dependency across the upgrade.
#[pg_extern(stable, parallel_safe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn has_recent_approval(
    service_sid: Option<&str>,
    identity: Option<&str>,
    within: Option<pgrx::datum::Interval>,
) -> Result<bool, ErrorReport> {
    has_recent_approval_from_aged_factor(service_sid, identity, within, None)
}
