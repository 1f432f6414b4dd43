//! `totp.services`: create, update, delete (Twilio POST/DELETE /Services), and the lookup of a
//! service's defaults and limits that every per-user call starts with.

use pgrx::datum::{Interval, TimestampWithTimeZone};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use totp_core::sid::{self, SidKind};
use totp_core::validate::{self, Invalid};

use super::sid_arg;
use crate::clock::Now;
use crate::db::{self, arg, Sql, INT4, INTERVAL, TEXT, TIMESTAMPTZ};
use crate::error::{TotpError, TotpResult};

type ServiceRow = pgrx::composite_type!('static, "totp.services");

/// Checks the optional TOTP settings a service may carry (Twilio 60200).
fn check_settings(
    issuer: Option<&str>,
    time_step: Option<i32>,
    code_length: Option<i32>,
    skew: Option<i32>,
) -> TotpResult<()> {
    if let Some(issuer) = issuer {
        validate::friendly_name("issuer", issuer).map_err(TotpError::invalid_service)?;
    }
    validate::settings(time_step, code_length, skew).map_err(TotpError::invalid_service)
}

// A caller-supplied SID may be taken: nothing is inserted then, and create_service compares.
static INSERT: Sql = Sql {
    text: "INSERT INTO totp_private.services AS s (sid, friendly_name, totp_issuer, totp_time_step, \
             totp_code_length, totp_skew, account_sid, date_created, date_updated) \
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) ON CONFLICT (sid) DO NOTHING RETURNING s.sid",
    params: &[TEXT, TEXT, TEXT, INT4, INT4, INT4, TEXT, TIMESTAMPTZ],
};

// Whether an existing service has the settings create_service was given ($2..$7; NULL for unset).
static SAME_SETTINGS: Sql = Sql {
    text: "SELECT s.friendly_name = $2, s.totp_issuer IS NOT DISTINCT FROM $3, \
             s.totp_time_step IS NOT DISTINCT FROM $4, s.totp_code_length IS NOT DISTINCT FROM $5, \
             s.totp_skew IS NOT DISTINCT FROM $6, s.account_sid IS NOT DISTINCT FROM $7 \
           FROM totp_private.services s WHERE s.sid = $1",
    params: &[TEXT, TEXT, TEXT, INT4, INT4, INT4, TEXT],
};

// Named columns, never a whole-row reference (`SELECT s`), which Citus cannot cast from a
// shard's row type (SPEC §11).
macro_rules! service_row {
    () => {
        "ROW(s.sid, s.friendly_name, s.totp_issuer, s.totp_time_step, s.totp_code_length, s.totp_skew, \
             s.max_factor_attempts, s.max_challenge_attempts, s.max_challenges_per_hour, \
             s.max_challenges_per_day, s.max_short_code_challenges_per_day, s.max_factors_per_entity, \
             s.max_factor_creations_per_day, s.challenge_ttl, s.max_challenge_ttl, \
             s.unverified_factor_ttl, s.event_retention, s.date_created, s.date_updated, s.account_sid)::totp.services"
    };
}

static SELECT_ROW: Sql =
    Sql { text: concat!("SELECT ", service_row!(), " FROM totp.services s WHERE s.sid = $1"), params: &[TEXT] };

/// The service's public row (the `totp.services` view).
fn row(client: &mut SpiClient<'_>, sid: &str) -> TotpResult<ServiceRow> {
    let table = db::exec(client, &SELECT_ROW, &[arg(sid)])?;
    match db::first(table) {
        Some(row) => db::req(&row, 1),
        None => Err(TotpError::ServiceNotFound { sid: sid.to_string() }),
    }
}

/// The settings of `create_service` in which service `sid` differs from `args` (its SAME_SETTINGS
/// parameters), or `None` when there is no such service.
fn differing_settings(
    client: &mut SpiClient<'_>,
    args: &[pgrx::datum::DatumWithOid<'_>],
) -> TotpResult<Option<Vec<&'static str>>> {
    let Some(same) = db::first(db::exec(client, &SAME_SETTINGS, args)?) else {
        return Ok(None);
    };
    let mut differs = Vec::new();
    for (ordinal, field) in
        ["friendly_name", "issuer", "time_step", "code_length", "skew", "account_sid"].into_iter().enumerate()
    {
        if !db::req::<bool>(&same, ordinal + 1)? {
            differs.push(field);
        }
    }
    Ok(Some(differs))
}

/// Creates a service. Unset TOTP settings stay NULL and mean Twilio's defaults (30 s, 6, 1).
/// With `sid` (VA...), the caller names it, so that nodes can create the same service: a SID
/// that exists with the same settings returns that service unchanged; with other settings it is
/// 23505. `account_sid` (AC...) names the Twilio account that owns the service in
/// totp-verify-server; services created over SQL leave it NULL.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn create_service(
    friendly_name: Option<&str>,
    issuer: default!(Option<&str>, "NULL"),
    time_step: default!(Option<i32>, "NULL"),
    code_length: default!(Option<i32>, "NULL"),
    skew: default!(Option<i32>, "NULL"),
    sid: default!(Option<&str>, "NULL"),
    account_sid: default!(Option<&str>, "NULL"),
) -> Result<pgrx::composite_type!('static, "totp.services"), ErrorReport> {
    if let Some(account) = account_sid {
        validate::account_sid(account).map_err(TotpError::invalid_service)?;
    }
    let friendly_name =
        friendly_name.ok_or_else(|| TotpError::invalid_service(Invalid::new("friendly_name", "is required")))?;
    validate::friendly_name("friendly_name", friendly_name).map_err(TotpError::invalid_service)?;
    check_settings(issuer, time_step, code_length, skew)?;
    let sid = match sid {
        Some(sid) => sid_arg("sid", SidKind::Service, Some(sid))?.to_string(),
        None => sid::generate(SidKind::Service),
    };
    let now = Now::read();
    Ok(Spi::connect_mut(|client| -> TotpResult<ServiceRow> {
        let settings = || {
            [
                arg(sid.as_str()),
                arg(friendly_name),
                arg(issuer),
                arg(time_step),
                arg(code_length),
                arg(skew),
                arg(account_sid),
            ]
        };
        let [a1, a2, a3, a4, a5, a6, a7] = settings();
        if db::exec(client, &INSERT, &[a1, a2, a3, a4, a5, a6, a7, arg(now.timestamptz())])?.is_empty() {
            // The SID exists (or a concurrent call just committed it): the same call again gets the
            // same service; anything else is a conflict.
            match differing_settings(client, &settings())? {
                Some(differs) if differs.is_empty() => {}
                Some(differs) => return Err(TotpError::ServiceExists { sid, differs }),
                None => return Err(TotpError::Internal(format!("service {sid} was deleted concurrently"))),
            }
        }
        row(client, &sid)
    })?)
}

// The lifetimes must keep challenge_ttl <= max_challenge_ttl, whichever of them changes: a row
// that would break that is not updated, and the caller is told which rule.
static UPDATE: Sql = Sql {
    text: "UPDATE totp_private.services AS s SET \
             friendly_name = COALESCE($2, s.friendly_name), \
             totp_issuer = COALESCE($3, s.totp_issuer), \
             totp_time_step = COALESCE($4, s.totp_time_step), \
             totp_code_length = COALESCE($5, s.totp_code_length), \
             totp_skew = COALESCE($6, s.totp_skew), \
             date_updated = $7, \
             max_factor_attempts = COALESCE($8, s.max_factor_attempts), \
             max_challenge_attempts = COALESCE($9, s.max_challenge_attempts), \
             max_challenges_per_hour = COALESCE($10, s.max_challenges_per_hour), \
             max_challenges_per_day = COALESCE($11, s.max_challenges_per_day), \
             max_short_code_challenges_per_day = COALESCE($12, s.max_short_code_challenges_per_day), \
             max_factors_per_entity = COALESCE($13, s.max_factors_per_entity), \
             max_factor_creations_per_day = COALESCE($14, s.max_factor_creations_per_day), \
             challenge_ttl = COALESCE($15, s.challenge_ttl), \
             max_challenge_ttl = COALESCE($16, s.max_challenge_ttl), \
             unverified_factor_ttl = COALESCE($17, s.unverified_factor_ttl), \
             event_retention = COALESCE($18, s.event_retention) \
           WHERE s.sid = $1 AND COALESCE($15, s.challenge_ttl) <= COALESCE($16, s.max_challenge_ttl) \
           RETURNING s.sid",
    params: &[
        TEXT,
        TEXT,
        TEXT,
        INT4,
        INT4,
        INT4,
        TIMESTAMPTZ,
        INT4,
        INT4,
        INT4,
        INT4,
        INT4,
        INT4,
        INT4,
        INTERVAL,
        INTERVAL,
        INTERVAL,
        INTERVAL,
    ],
};

static EXISTS: Sql = Sql { text: "SELECT 1 FROM totp_private.services WHERE sid = $1", params: &[TEXT] };

/// The longest a challenge may live (Twilio's maximum).
const MAX_CHALLENGE_TTL_MICROS: i128 = 60 * 60 * 1_000_000;
const DAY_MICROS: i128 = 86_400 * 1_000_000;
/// An unverified factor lives at most 30 days (Twilio: 24 hours, the default).
const MAX_UNVERIFIED_FACTOR_TTL_MICROS: i128 = 30 * DAY_MICROS;
/// Events are kept at most 10 years.
const MAX_EVENT_RETENTION_MICROS: i128 = 3_660 * DAY_MICROS;

/// A limit: a positive count (Twilio 60200 otherwise).
fn positive(field: &'static str, value: Option<i32>) -> TotpResult<()> {
    match value {
        Some(value) if value < 1 => Err(TotpError::invalid_service(Invalid::new(field, "must be positive"))),
        _ => Ok(()),
    }
}

/// A lifetime: positive and at most `max` microseconds, in days, hours, minutes and seconds only.
/// Months are refused because their length depends on the date they are added to (a cap checked
/// with 30-day months would let `1 mon -30 days 1 minute` live a day in December), and so are
/// negative parts, which would let a mixed value pass the cap the same way.
fn lifetime(field: &'static str, value: Option<Interval>, max: i128, max_text: &str) -> TotpResult<()> {
    let Some(value) = value else {
        return Ok(());
    };
    let refuse = |rule: String| Err(TotpError::invalid_service(Invalid::new(field, rule)));
    if value.months() != 0 || value.days() < 0 || value.micros() < 0 {
        return refuse("must be in days, hours, minutes and seconds, none negative".into());
    }
    let micros = value.as_micros();
    if micros <= 0 {
        return refuse("must be positive".into());
    }
    if micros > max {
        return refuse(format!("must be at most {max_text}"));
    }
    Ok(())
}

/// Updates a service; NULL leaves a setting as it is. Factors keep the settings they were
/// created with (they are already in users' apps). The limits of SPEC §6 are changed here:
/// `totp.services` is a read-only view.
#[allow(clippy::too_many_arguments)] // mirrors Twilio's parameters and the limits of SPEC §6
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn update_service(
    sid: Option<&str>,
    friendly_name: default!(Option<&str>, "NULL"),
    issuer: default!(Option<&str>, "NULL"),
    time_step: default!(Option<i32>, "NULL"),
    code_length: default!(Option<i32>, "NULL"),
    skew: default!(Option<i32>, "NULL"),
    max_factor_attempts: default!(Option<i32>, "NULL"),
    max_challenge_attempts: default!(Option<i32>, "NULL"),
    max_challenges_per_hour: default!(Option<i32>, "NULL"),
    max_challenges_per_day: default!(Option<i32>, "NULL"),
    max_short_code_challenges_per_day: default!(Option<i32>, "NULL"),
    max_factors_per_entity: default!(Option<i32>, "NULL"),
    max_factor_creations_per_day: default!(Option<i32>, "NULL"),
    challenge_ttl: default!(Option<Interval>, "NULL"),
    max_challenge_ttl: default!(Option<Interval>, "NULL"),
    unverified_factor_ttl: default!(Option<Interval>, "NULL"),
    event_retention: default!(Option<Interval>, "NULL"),
) -> Result<pgrx::composite_type!('static, "totp.services"), ErrorReport> {
    let sid = sid_arg("sid", SidKind::Service, sid)?;
    if let Some(name) = friendly_name {
        validate::friendly_name("friendly_name", name).map_err(TotpError::invalid_service)?;
    }
    check_settings(issuer, time_step, code_length, skew)?;
    for (field, value) in [
        ("max_factor_attempts", max_factor_attempts),
        ("max_challenge_attempts", max_challenge_attempts),
        ("max_challenges_per_hour", max_challenges_per_hour),
        ("max_challenges_per_day", max_challenges_per_day),
        ("max_short_code_challenges_per_day", max_short_code_challenges_per_day),
        ("max_factors_per_entity", max_factors_per_entity),
        ("max_factor_creations_per_day", max_factor_creations_per_day),
    ] {
        positive(field, value)?;
    }
    lifetime("challenge_ttl", challenge_ttl, MAX_CHALLENGE_TTL_MICROS, "60 minutes")?;
    lifetime("max_challenge_ttl", max_challenge_ttl, MAX_CHALLENGE_TTL_MICROS, "60 minutes")?;
    lifetime("unverified_factor_ttl", unverified_factor_ttl, MAX_UNVERIFIED_FACTOR_TTL_MICROS, "30 days")?;
    lifetime("event_retention", event_retention, MAX_EVENT_RETENTION_MICROS, "3660 days")?;
    let now = Now::read();
    Ok(Spi::connect_mut(|client| -> TotpResult<ServiceRow> {
        let table = db::exec(
            client,
            &UPDATE,
            &[
                arg(sid),
                arg(friendly_name),
                arg(issuer),
                arg(time_step),
                arg(code_length),
                arg(skew),
                arg(now.timestamptz()),
                arg(max_factor_attempts),
                arg(max_challenge_attempts),
                arg(max_challenges_per_hour),
                arg(max_challenges_per_day),
                arg(max_short_code_challenges_per_day),
                arg(max_factors_per_entity),
                arg(max_factor_creations_per_day),
                arg(challenge_ttl),
                arg(max_challenge_ttl),
                arg(unverified_factor_ttl),
                arg(event_retention),
            ],
        )?;
        if table.is_empty() {
            if db::exec(client, &EXISTS, &[arg(sid)])?.is_empty() {
                return Err(TotpError::ServiceNotFound { sid: sid.to_string() });
            }
            return Err(TotpError::invalid_service(Invalid::new("challenge_ttl", "must be at most max_challenge_ttl")));
        }
        row(client, sid)
    })?)
}

static DELETE: Sql = Sql { text: "DELETE FROM totp_private.services WHERE sid = $1 RETURNING sid", params: &[TEXT] };

/// Deletes a service and its entities, factors (by cascade) and challenges, recording a
/// `factor.deleted` for each factor.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn delete_service(sid: Option<&str>) -> Result<(), ErrorReport> {
    let sid = sid_arg("sid", SidKind::Service, sid)?;
    let now = Now::read();
    Ok(Spi::connect_mut(|client| -> TotpResult<()> {
        super::events::service_deleted(client, sid, now)?;
        let table = db::exec(client, &DELETE, &[arg(sid)])?;
        if table.is_empty() {
            return Err(TotpError::ServiceNotFound { sid: sid.to_string() });
        }
        super::challenges::delete_of(client, super::challenges::Owner::Service(sid))
    })?)
}

/// What a per-user call needs from its service: defaults, limits, and deadlines from now.
pub struct Service {
    pub friendly_name: String,
    pub issuer: Option<String>,
    pub time_step: Option<i32>,
    pub code_length: Option<i32>,
    pub skew: Option<i32>,
    pub max_factor_attempts: i32,
    pub max_challenge_attempts: i32,
    pub max_challenges_per_hour: i32,
    pub max_challenges_per_day: i32,
    pub max_short_code_challenges_per_day: i32,
    pub max_factors_per_entity: i32,
    pub max_factor_creations_per_day: i32,
    /// now + challenge_ttl: a new challenge's default expiration_date.
    pub default_expiry: TimestampWithTimeZone,
    /// now + max_challenge_ttl: the latest expiration_date a caller may ask for.
    pub latest_expiry: TimestampWithTimeZone,
    /// now + unverified_factor_ttl: when a factor created now is gone unless verified.
    pub unverified_until: TimestampWithTimeZone,
}

// The partition guard (PL/Proxy) rides on this statement, which every identity-scoped call runs
// anyway: this database's (part_no, part_count) and the identity's placement after a move. Both
// tables are empty unless a PL/Proxy partition set them; on Citus they are reference tables like
// services, so the statement stays a join of reference tables that a delegated call may run.
static LOAD: Sql = Sql {
    text: "SELECT s.friendly_name, s.totp_issuer, s.totp_time_step, s.totp_code_length, s.totp_skew, \
             s.max_factor_attempts, s.max_challenge_attempts, s.max_challenges_per_hour, \
             s.max_challenges_per_day, s.max_short_code_challenges_per_day, s.max_factors_per_entity, \
             s.max_factor_creations_per_day, $2 + s.challenge_ttl, $2 + s.max_challenge_ttl, \
             $2 + s.unverified_factor_ttl, p.part_no, p.part_count, pl.part_no \
           FROM totp_private.services s \
           LEFT JOIN totp_private.partition p ON true \
           LEFT JOIN totp_private.placements pl ON pl.identity = $3 \
           WHERE s.sid = $1",
    params: &[TEXT, TIMESTAMPTZ, TEXT],
};

/// Loads a service for a call on `identity`, or 20404; under PL/Proxy, refuses (55000) an
/// identity whose rows live on another partition.
pub fn load(client: &mut SpiClient<'_>, sid: &str, identity: &str, now: Now) -> TotpResult<Service> {
    let table = db::exec(client, &LOAD, &[arg(sid), arg(now.timestamptz()), arg(identity)])?;
    let row = db::first(table).ok_or_else(|| TotpError::ServiceNotFound { sid: sid.to_string() })?;
    super::partitions::guard(identity, db::get(&row, 16)?, db::get(&row, 17)?, db::get(&row, 18)?)?;
    Ok(Service {
        friendly_name: db::req(&row, 1)?,
        issuer: db::get(&row, 2)?,
        time_step: db::get(&row, 3)?,
        code_length: db::get(&row, 4)?,
        skew: db::get(&row, 5)?,
        max_factor_attempts: db::req(&row, 6)?,
        max_challenge_attempts: db::req(&row, 7)?,
        max_challenges_per_hour: db::req(&row, 8)?,
        max_challenges_per_day: db::req(&row, 9)?,
        max_short_code_challenges_per_day: db::req(&row, 10)?,
        max_factors_per_entity: db::req(&row, 11)?,
        max_factor_creations_per_day: db::req(&row, 12)?,
        default_expiry: db::req(&row, 13)?,
        latest_expiry: db::req(&row, 14)?,
        unverified_until: db::req(&row, 15)?,
    })
}

/// A service's row (Twilio GET /Services/{sid}), or 20404. Services are the same on every node of
/// a distributed deployment, so a router may ask any partition.
#[pg_extern(stable, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn get_service(sid: Option<&str>) -> Result<pgrx::composite_type!('static, "totp.services"), ErrorReport> {
    let sid = sid_arg("sid", SidKind::Service, sid)?;
    Ok(Spi::connect_mut(|client| row(client, sid))?)
}

static LIST: Sql = Sql {
    text: concat!("SELECT ", service_row!(), " FROM totp.services s ORDER BY s.date_created, s.sid"),
    params: &[],
};

/// Every service, oldest first (Twilio GET /Services).
#[pg_extern(stable, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn list_services() -> Result<SetOfIterator<'static, pgrx::composite_type!('static, "totp.services")>, ErrorReport> {
    let rows = Spi::connect_mut(|client| db::column::<ServiceRow>(client, &LIST, &[]))?;
    Ok(SetOfIterator::new(rows))
}
