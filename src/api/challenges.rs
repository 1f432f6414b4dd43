//! `totp.challenges`: the verify sequence (create a challenge with the code, or create it and
//! answer it with update_challenge) and `has_recent_approval` for policies.

use pgrx::datum::TimestampWithTimeZone;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
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

// The whole write of a challenge creation in one statement, one executor start-up: the factor's
// creation windows and replay guard ($15..$19; the factor is locked), the challenge row, and the
// new row as the view shows it (a new challenge is not yet expired). INSERT_WITH_EVENT also
// records its event ($13: challenge.approved or challenge.denied, $14 its id); a pending
// challenge (the common case, a wrong code) has none and runs INSERT, without the events table's
// start-up. Both take the same parameters.
macro_rules! insert_challenge {
    ($event:literal) => {
        concat!(
            "WITH u AS (UPDATE totp_private.factors AS f SET challenge_hour_start = $15, challenges_in_hour = $16, \
               challenge_day_start = $17, challenges_in_day = $18, last_step = COALESCE($19, f.last_step) \
               WHERE f.identity = $1 AND f.sid = $5), \
             c AS (INSERT INTO totp_private.challenges AS c (identity, sid, service_sid, entity_sid, factor_sid, \
               status, details, hidden_details, expiration_date, date_responded, date_created, \
               date_updated, failed_attempts) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12) RETURNING c.*)",
            $event,
            " SELECT ",
            challenge_row!(),
            " FROM c"
        )
    };
}

const INSERT_PARAMS: &[pgrx::pg_sys::PgOid] = &[
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
    TIMESTAMPTZ,
    INT4,
    TIMESTAMPTZ,
    INT4,
    INT8,
];

static INSERT: Sql = Sql { text: insert_challenge!(""), params: INSERT_PARAMS };

static INSERT_WITH_EVENT: Sql = Sql {
    text: insert_challenge!(
        ", e AS (INSERT INTO totp_private.events (identity, id, type, service_sid, factor_sid, challenge_sid, \
           date_created) \
           SELECT c.identity, $14, $13, c.service_sid, c.factor_sid, c.sid, $11 FROM c)"
    ),
    params: INSERT_PARAMS,
};

#[cfg(any(test, feature = "pg_test"))]
pub fn statements() -> Vec<(&'static str, &'static Sql)> {
    vec![
        ("challenges::INSERT", &INSERT),
        ("challenges::INSERT_WITH_EVENT", &INSERT_WITH_EVENT),
        ("challenges::LOCK", &LOCK),
        ("challenges::ANSWER", &ANSWER),
        ("challenges::DENY", &DENY),
        ("challenges::APPROVE", &APPROVE),
    ]
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
        // Error order as before the merged statements: 20404, then expiration_date, then 60392/60390.
        let service = super::services::load(client, service_sid, identity, now)?;
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
        let factor = factors::lock_factor(client, service_sid, identity, factor_sid, now)?;
        if !factor.verified {
            return Err(TotpError::FactorUnverified);
        }
        let [hour, day] = count_creation(&service, &factor, now)?;
        let accepted = match auth_payload {
            Some(payload) => factor.accepts(client, &service, payload, now)?,
            None => None,
        };
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
        let event = event_of(status);
        let inserted = db::exec(
            client,
            if event.is_some() { &INSERT_WITH_EVENT } else { &INSERT },
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
                arg(event.map(Event::name)),
                arg(event.map(|_| events::new_id())),
                arg(ts(hour.0)),
                arg(hour.1),
                arg(ts(day.0)),
                arg(day.1),
                arg(accepted),
            ],
        )?;
        let row: ChallengeRow = db::req(&inserted.first(), 1)?;
        if event.is_some() {
            events::wake();
        }
        Ok(row)
    })?)
}

/// Which challenges go with the rows a deletion took: challenges have no foreign key to their
/// factor (sql/bootstrap.sql), so each deletion of factors deletes their challenges itself,
/// right after the factor rows (the lock order of every call: factor, then challenge).
pub enum Owner<'a> {
    Factor {
        identity: &'a str,
        factor_sid: &'a str,
    },
    Entity {
        identity: &'a str,
        service_sid: &'a str,
    },
    Identity(&'a str),
    /// Every identity's challenges of the service: the one deletion that spans identities.
    Service(&'a str),
}

static DELETE_OF_FACTOR: Sql =
    Sql { text: "DELETE FROM totp_private.challenges WHERE identity = $1 AND factor_sid = $2", params: &[TEXT, TEXT] };
static DELETE_OF_ENTITY: Sql =
    Sql { text: "DELETE FROM totp_private.challenges WHERE identity = $1 AND service_sid = $2", params: &[TEXT, TEXT] };
static DELETE_OF_IDENTITY: Sql =
    Sql { text: "DELETE FROM totp_private.challenges WHERE identity = $1", params: &[TEXT] };
static DELETE_OF_SERVICE: Sql =
    Sql { text: "DELETE FROM totp_private.challenges WHERE service_sid = $1", params: &[TEXT] };

/// Deletes the challenges of factors just deleted.
pub fn delete_of(client: &mut SpiClient<'_>, owner: Owner<'_>) -> TotpResult<()> {
    match owner {
        Owner::Factor { identity, factor_sid } => {
            db::exec(client, &DELETE_OF_FACTOR, &[arg(identity), arg(factor_sid)])?
        }
        Owner::Entity { identity, service_sid } => {
            db::exec(client, &DELETE_OF_ENTITY, &[arg(identity), arg(service_sid)])?
        }
        Owner::Identity(identity) => db::exec(client, &DELETE_OF_IDENTITY, &[arg(identity)])?,
        Owner::Service(service_sid) => db::exec(client, &DELETE_OF_SERVICE, &[arg(service_sid)])?,
    };
    Ok(())
}

/// The event a challenge's new status makes, if any.
fn event_of(status: &str) -> Option<Event> {
    match status {
        "approved" => Some(Event::ChallengeApproved),
        "denied" => Some(Event::ChallengeDenied),
        _ => None,
    }
}

// The slow path of update_challenge's errors only: which of challenge and factor is missing.
static FIND: Sql = Sql {
    text: "SELECT factor_sid FROM totp_private.challenges \
           WHERE identity = $1 AND sid = $2 AND service_sid = $3",
    params: &[TEXT, TEXT, TEXT],
};

// The challenge's factor locked (with its secret, as factors::lock reads it), then the challenge
// locked, in one statement. Lock order is factor, then challenge, as in delete_factor and
// update_factor, so that they cannot deadlock: LockRows takes the row marks in the order the
// locking clauses name them (one clause each, to make that plain). A challenge older than the
// factor is not its: it was left by a factor of the same SID deleted by hand (challenges have no
// foreign key) and must not come back to life with a factor re-created under that SID (the same
// in RECENT_APPROVAL). The challenge's columns come last.
static LOCK: Sql = Sql {
    text: concat!(
        "SELECT ",
        factors::locked_factor_columns!(),
        ", c.factor_sid, c.status, c.expiration_date, c.failed_attempts \
         FROM totp_private.challenges c \
         JOIN totp_private.factors f ON f.identity = c.identity AND f.sid = c.factor_sid \
         JOIN totp_private.factor_secrets s ON s.identity = f.identity AND s.factor_sid = f.sid \
         WHERE c.identity = $1 AND c.sid = $2 AND c.service_sid = $3 AND f.identity = $1 \
           AND f.service_sid = $3 AND s.identity = $1 AND c.date_created >= f.date_created \
           AND (f.unverified_until IS NULL OR f.unverified_until > $4) \
         FOR UPDATE OF f FOR UPDATE OF c"
    ),
    params: &[TEXT, TEXT, TEXT, TIMESTAMPTZ],
};

// The answer in one statement: the challenge's new state and the row as the view shows it (an
// answered challenge is not pending, and a pending one was checked unexpired). APPROVE also sets
// the factor's replay guard to the accepted step ($8); APPROVE and DENY record the event ($10,
// $11 its id). All three take the same parameters; each runs only the tables it writes.
macro_rules! answer_challenge {
    ($($more:expr),*) => {
        concat!(
            "WITH c AS (UPDATE totp_private.challenges AS x SET status = $3, failed_attempts = $4, \
               date_responded = $5, metadata = COALESCE($6, x.metadata), date_updated = $7 \
               WHERE x.identity = $1 AND x.sid = $2 RETURNING x.*)",
            $($more,)*
            " SELECT ",
            challenge_row!(),
            " FROM c"
        )
    };
}

macro_rules! answer_event {
    () => {
        ", e AS (INSERT INTO totp_private.events (identity, id, type, service_sid, factor_sid, challenge_sid, \
           date_created) \
           SELECT c.identity, $11, $10, c.service_sid, c.factor_sid, c.sid, $7 FROM c)"
    };
}

const ANSWER_PARAMS: &[pgrx::pg_sys::PgOid] =
    &[TEXT, TEXT, TEXT, INT4, TIMESTAMPTZ, JSONB, TIMESTAMPTZ, INT8, TEXT, TEXT, UUID];

static ANSWER: Sql = Sql { text: answer_challenge!(), params: ANSWER_PARAMS };

static DENY: Sql = Sql { text: answer_challenge!(answer_event!()), params: ANSWER_PARAMS };

static APPROVE: Sql = Sql {
    text: answer_challenge!(
        ", u AS (UPDATE totp_private.factors AS f SET last_step = $8 WHERE f.identity = $1 AND f.sid = $9)",
        answer_event!()
    ),
    params: ANSWER_PARAMS,
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
        // The service first, in a statement of its own (see factors::lock: Citus's delegation).
        let service = super::services::load(client, service_sid, identity, now)?;
        let locked =
            db::exec(client, &LOCK, &[arg(identity), arg(challenge_sid), arg(service_sid), arg(now.timestamptz())])?;
        let Some(challenge) = db::first(locked) else {
            // Which is missing: the challenge, or its factor.
            let found = db::exec(client, &FIND, &[arg(identity), arg(challenge_sid), arg(service_sid)])?;
            let (kind, sid) = match db::first(found) {
                Some(found) => (SidKind::Factor, db::req::<String>(&found, 1)?),
                None => (SidKind::Challenge, challenge_sid.to_string()),
            };
            return Err(super::entities::missing(client, service_sid, identity, kind, &sid));
        };
        let at = factors::FACTOR_COLUMNS;
        let factor_sid: String = db::req(&challenge, at + 1)?;
        let factor = factors::locked_from_row(&challenge, identity, &factor_sid)?;
        let status: String = db::req(&challenge, at + 2)?;
        let expiration: TimestampWithTimeZone = db::req(&challenge, at + 3)?;
        let failed_attempts: i32 = db::req(&challenge, at + 4)?;
        match status.as_str() {
            "approved" => return Err(TotpError::ChallengeResponded { status }),
            "denied" => return Err(TotpError::ChallengeAttemptsExhausted { limit: service.max_challenge_attempts }),
            "expired" => return Err(TotpError::ChallengeExpired),
            _ if expiration.into_inner() <= now.micros => return Err(TotpError::ChallengeExpired),
            _ if failed_attempts >= service.max_challenge_attempts => {
                return Err(TotpError::ChallengeAttemptsExhausted { limit: service.max_challenge_attempts })
            }
            "pending" => {}
            // No CHECK on the table (see factors::locked_from_row): never answer an unknown state.
            _ => return Err(TotpError::Internal(format!("challenge {challenge_sid} has an unknown status"))),
        }
        let (status, failed_attempts, step) = match factor.accepts(client, &service, payload, now)? {
            Some(step) => ("approved", failed_attempts, Some(step)),
            None if failed_attempts + 1 >= service.max_challenge_attempts => ("denied", failed_attempts + 1, None),
            None => ("pending", failed_attempts + 1, None),
        };
        let responded = (status != "pending").then(|| now.timestamptz());
        let event = event_of(status);
        let statement = match status {
            "approved" => &APPROVE,
            "denied" => &DENY,
            _ => &ANSWER,
        };
        let answered = db::exec(
            client,
            statement,
            &[
                arg(identity),
                arg(challenge_sid),
                arg(status),
                arg(failed_attempts),
                arg(responded),
                arg(metadata),
                arg(now.timestamptz()),
                arg(step),
                arg(factor_sid.as_str()),
                arg(event.map(Event::name)),
                arg(event.map(|_| events::new_id())),
            ],
        )?;
        let row: ChallengeRow = db::req(&answered.first(), 1)?;
        if event.is_some() {
            events::wake();
        }
        Ok(row)
    })?)
}

// Measured from the statement's start, not the transaction's: a long transaction must not see an
// old approval as fresh. With $4, only approvals from factors verified at least $4 before the
// approval count (a factor enrolled by a compromised application role is not trusted at once).
static RECENT_APPROVAL: Sql = Sql {
    text: "SELECT EXISTS (SELECT 1 FROM totp_private.challenges c \
             JOIN totp_private.factors f ON f.identity = c.identity AND f.sid = c.factor_sid \
             WHERE c.identity = $1 AND c.service_sid = $2 AND c.status = 'approved' AND f.identity = $1 \
               AND c.date_created >= f.date_created \
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

static GET: Sql = Sql {
    text: concat!(
        "SELECT ",
        challenge_row!(),
        " FROM totp.challenges c WHERE c.identity = $1 AND c.sid = $2 AND c.service_sid = $3"
    ),
    params: &[TEXT, TEXT, TEXT],
};

/// One challenge of an identity (Twilio GET /Entities/{identity}/Challenges/{sid}), as the view
/// shows it (a pending challenge past its expiration_date reads `expired`), or 60392 / 60391.
#[pg_extern(stable, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn get_challenge(
    service_sid: Option<&str>,
    identity: Option<&str>,
    challenge_sid: Option<&str>,
) -> Result<pgrx::composite_type!('static, "totp.challenges"), ErrorReport> {
    let (service_sid, identity) = scope(service_sid, identity)?;
    let challenge_sid = sid_arg("challenge_sid", SidKind::Challenge, challenge_sid)?;
    let now = Now::read();
    Ok(Spi::connect_mut(|client| -> TotpResult<ChallengeRow> {
        super::services::load(client, service_sid, identity, now)?;
        match db::first(db::exec(client, &GET, &[arg(identity), arg(challenge_sid), arg(service_sid)])?) {
            Some(row) => db::req(&row, 1),
            None => Err(super::entities::missing(client, service_sid, identity, SidKind::Challenge, challenge_sid)),
        }
    })?)
}

macro_rules! list_challenges {
    ($order:literal) => {
        concat!(
            "SELECT ",
            challenge_row!(),
            " FROM totp.challenges c WHERE c.identity = $1 AND c.service_sid = $2 \
               AND ($3::text IS NULL OR c.factor_sid = $3) AND ($4::text IS NULL OR c.status = $4) \
             ORDER BY c.date_created ",
            $order,
            ", c.sid ",
            $order
        )
    };
}
static LIST_OLDEST_FIRST: Sql = Sql { text: list_challenges!("ASC"), params: &[TEXT, TEXT, TEXT, TEXT] };
static LIST_NEWEST_FIRST: Sql = Sql { text: list_challenges!("DESC"), params: &[TEXT, TEXT, TEXT, TEXT] };

/// The statuses a challenge can read as, for the list filter.
const STATUSES: [&str; 4] = ["pending", "approved", "denied", "expired"];

/// An identity's challenges in a service (Twilio GET /Entities/{identity}/Challenges), oldest
/// first as Twilio's default `Order=asc`, optionally of one factor and one status.
#[pg_extern(stable, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn list_challenges(
    service_sid: Option<&str>,
    identity: Option<&str>,
    factor_sid: default!(Option<&str>, "NULL"),
    status: default!(Option<&str>, "NULL"),
    newest_first: default!(Option<bool>, "false"),
) -> Result<SetOfIterator<'static, pgrx::composite_type!('static, "totp.challenges")>, ErrorReport> {
    let (service_sid, identity) = scope(service_sid, identity)?;
    let factor_sid = factor_sid.map(|sid| sid_arg("factor_sid", SidKind::Factor, Some(sid))).transpose()?;
    if status.is_some_and(|s| !STATUSES.contains(&s)) {
        return Err(TotpError::invalid(Invalid::new("status", "must be pending, approved, denied or expired")).into());
    }
    let list = if newest_first.unwrap_or(false) { &LIST_NEWEST_FIRST } else { &LIST_OLDEST_FIRST };
    let now = Now::read();
    let rows = Spi::connect_mut(|client| -> TotpResult<Vec<ChallengeRow>> {
        super::services::load(client, service_sid, identity, now)?;
        db::column(client, list, &[arg(identity), arg(service_sid), arg(factor_sid), arg(status)])
    })?;
    Ok(SetOfIterator::new(rows))
}
