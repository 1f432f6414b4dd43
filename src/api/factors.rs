//! `totp.factors`: the register sequence (create, then verify with a code), update and delete
//! (Twilio /Entities/{identity}/Factors), and the locked factor row every verification works on.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use totp_core::otp::{self, Algorithm, CodeParams};
use totp_core::sid::{self, SidKind};
use totp_core::uri::KeyUri;
use totp_core::validate::{self, Invalid};
use zeroize::Zeroizing;

use super::challenges::{self, SHORT_CODE_MAX_LENGTH};
use super::events::{self, Event};
use super::services::Service;
use super::{json_object_arg, required, scope, sid_arg};
use crate::clock::{unix_seconds, Now, MICROS_PER_DAY};
use crate::db::{self, arg, Sql, BYTEA, INT4, INT8, JSONB, TEXT, TIMESTAMPTZ, UUID};
use crate::error::{TotpError, TotpResult};
use crate::guess_limit::{self, Budget, Refusal};
use crate::jsonb::Jsonb;
use crate::keyring;

type FactorRow = pgrx::composite_type!('static, "totp.factors");
type NewFactorRow = pgrx::composite_type!('static, "totp.new_factor");

/// Twilio's defaults when neither the call nor the service says: 30 s, 6 digits, skew 1.
const DEFAULT_TIME_STEP: i32 = 30;
const DEFAULT_CODE_LENGTH: i32 = 6;
const DEFAULT_SKEW: i32 = 1;
/// 160 bits, RFC 4226's recommendation and Twilio's 32-character secrets.
const GENERATED_SECRET_BYTES: usize = 20;

fn parse_alg(alg: Option<&str>) -> TotpResult<Option<Algorithm>> {
    alg.map(|a| a.parse::<Algorithm>().map_err(|e| TotpError::invalid(Invalid::new("alg", e.to_string())))).transpose()
}

// Creates the entity if needed and, either way, locks its row and counts this creation in the
// entity's 24-hour window: the lock serializes concurrent creations for one entity, so the
// factor count and the window counter cannot race. $5 is the window cutoff (now - 24 h),
// computed in Rust: timestamptz arithmetic is STABLE, and Citus takes only IMMUTABLE functions in
// ON CONFLICT DO UPDATE (SPEC §11).
static UPSERT_ENTITY: Sql = Sql {
    text: "INSERT INTO totp_private.entities AS e (identity, service_sid, sid, date_created, date_updated, \
             factor_window_start, factors_created_in_window) \
           VALUES ($1, $2, $3, $4, $4, $4, 1) \
           ON CONFLICT (identity, service_sid) DO UPDATE SET \
             factor_window_start = CASE WHEN e.factor_window_start > $5 \
                                        THEN e.factor_window_start ELSE $4 END, \
             factors_created_in_window = CASE WHEN e.factor_window_start > $5 \
                                        THEN e.factors_created_in_window + 1 ELSE 1 END \
           RETURNING e.sid, e.factors_created_in_window",
    params: &[TEXT, TEXT, TEXT, TIMESTAMPTZ, TIMESTAMPTZ],
};

// Unverified factors past their lifetime do not count: they are gone, whether or not
// run_maintenance has deleted them yet.
static COUNT_FACTORS: Sql = Sql {
    text: "SELECT pg_catalog.count(*) FROM totp_private.factors \
           WHERE identity = $1 AND entity_sid = $2 AND (unverified_until IS NULL OR unverified_until > $3)",
    params: &[TEXT, TEXT, TIMESTAMPTZ],
};

// A caller-supplied SID may already be taken in this identity: nothing is inserted then (60317).
static INSERT: Sql = Sql {
    text: "INSERT INTO totp_private.factors (identity, sid, service_sid, entity_sid, friendly_name, \
             alg, code_length, time_step, skew, metadata, date_created, date_updated, \
             unverified_until) \
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12) \
           ON CONFLICT (identity, sid) DO NOTHING RETURNING sid",
    params: &[TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, INT4, INT4, INT4, JSONB, TIMESTAMPTZ, TIMESTAMPTZ],
};

// An unverified factor past its lifetime is gone (SPEC §6) even before run_maintenance deletes
// it, so its SID may be given again.
static DELETE_GONE: Sql = Sql {
    text: "DELETE FROM totp_private.factors WHERE identity = $1 AND sid = $2 AND unverified_until <= $3",
    params: &[TEXT, TEXT, TIMESTAMPTZ],
};

static INSERT_SECRET: Sql = Sql {
    text: "INSERT INTO totp_private.factor_secrets (identity, factor_sid, key_id, sealed) \
           VALUES ($1, $2, $3, $4)",
    params: &[TEXT, TEXT, INT8, BYTEA],
};

/// The columns of a `totp.factors` row, in the view's order, of alias `f`: rows are built from
/// named columns, never a whole-row reference (`SELECT f`), which Citus cannot cast from a shard's
/// row type (SPEC §11).
macro_rules! factor_columns {
    () => {
        "f.sid, f.service_sid, f.entity_sid, f.identity, f.friendly_name, f.factor_type, f.status, f.alg, \
         f.code_length, f.time_step, f.skew, f.metadata, f.date_created, f.date_updated"
    };
}

// The binding travels as parameters, which no log records (unlike statement text).
static SELECT_NEW: Sql = Sql {
    text: concat!(
        "SELECT ROW(",
        factor_columns!(),
        ", $3, $4)::totp.new_factor FROM totp.factors f WHERE f.identity = $1 AND f.sid = $2"
    ),
    params: &[TEXT, TEXT, TEXT, TEXT],
};

static SELECT_ROW: Sql = Sql {
    text: concat!(
        "SELECT ROW(",
        factor_columns!(),
        ")::totp.factors FROM totp.factors f WHERE f.identity = $1 AND f.sid = $2"
    ),
    params: &[TEXT, TEXT],
};

/// The factor's public row (the `totp.factors` view).
pub fn row(client: &mut SpiClient<'_>, identity: &str, factor_sid: &str) -> TotpResult<FactorRow> {
    let table = db::exec(client, &SELECT_ROW, &[arg(identity), arg(factor_sid)])?;
    db::req(&table.first(), 1)
}

/// Creates a TOTP factor, and the entity if the identity is new. Returns the factor with
/// `binding_secret` and `binding_uri`, which nothing returns again. `secret` (base32) and `sid`
/// (YF...) let a migration keep what the application stored; a SID the identity already has is
/// 60317, never the existing factor (its secret is not shown twice).
#[allow(clippy::too_many_arguments)] // mirrors Twilio's parameters, all optional after the third
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn create_factor(
    service_sid: Option<&str>,
    identity: Option<&str>,
    friendly_name: Option<&str>,
    secret: default!(Option<&str>, "NULL"),
    alg: default!(Option<&str>, "NULL"),
    code_length: default!(Option<i32>, "NULL"),
    time_step: default!(Option<i32>, "NULL"),
    skew: default!(Option<i32>, "NULL"),
    metadata: default!(Option<Jsonb>, "NULL"),
    sid: default!(Option<&str>, "NULL"),
) -> Result<pgrx::composite_type!('static, "totp.new_factor"), ErrorReport> {
    let (service_sid, identity) = scope(service_sid, identity)?;
    let supplied_sid = sid.map(|sid| sid_arg("sid", SidKind::Factor, Some(sid))).transpose()?;
    let friendly_name = required("friendly_name", friendly_name)?;
    validate::friendly_name("friendly_name", friendly_name).map_err(TotpError::from)?;
    let alg = parse_alg(alg)?.unwrap_or(Algorithm::Sha1);
    validate::settings(time_step, code_length, skew).map_err(TotpError::from)?;
    json_object_arg("metadata", metadata)?;
    let secret: Zeroizing<Vec<u8>> = Zeroizing::new(match secret {
        Some(text) => validate::secret(text).map_err(TotpError::from)?,
        None => totp_core::random::bytes(GENERATED_SECRET_BYTES),
    });
    let now = Now::read();

    Ok(Spi::connect_mut(|client| -> TotpResult<NewFactorRow> {
        let service = super::services::load(client, service_sid, identity, now)?;
        let entity = db::exec(
            client,
            &UPSERT_ENTITY,
            &[
                arg(identity),
                arg(service_sid),
                arg(sid::generate(SidKind::Entity)),
                arg(now.timestamptz()),
                arg(now.ago(MICROS_PER_DAY)),
            ],
        )?
        .first();
        let entity_sid: String = db::req(&entity, 1)?;
        let created_in_window: i32 = db::req(&entity, 2)?;
        let factors =
            db::exec(client, &COUNT_FACTORS, &[arg(identity), arg(entity_sid.as_str()), arg(now.timestamptz())])?
                .first();
        let existing: i64 = db::req(&factors, 1)?;
        if existing >= i64::from(service.max_factors_per_entity) {
            return Err(TotpError::TooManyFactors { limit: service.max_factors_per_entity });
        }
        if created_in_window > service.max_factor_creations_per_day {
            return Err(TotpError::FactorCreationRateLimited { limit: service.max_factor_creations_per_day });
        }

        // Resolve and store the settings now: later service changes must not break codes
        // already in users' apps.
        let code_length = code_length.or(service.code_length).unwrap_or(DEFAULT_CODE_LENGTH);
        let time_step = time_step.or(service.time_step).unwrap_or(DEFAULT_TIME_STEP);
        let skew = skew.or(service.skew).unwrap_or(DEFAULT_SKEW);
        let factor_sid = match supplied_sid {
            Some(sid) => {
                db::exec(client, &DELETE_GONE, &[arg(identity), arg(sid), arg(now.timestamptz())])?;
                sid.to_string()
            }
            None => sid::generate(SidKind::Factor),
        };
        let (key_id, sealed) = keyring::seal(client, &factor_sid, &secret)?;
        let inserted = db::exec(
            client,
            &INSERT,
            &[
                arg(identity),
                arg(factor_sid.as_str()),
                arg(service_sid),
                arg(entity_sid.as_str()),
                arg(friendly_name),
                arg(alg.as_str()),
                arg(code_length),
                arg(time_step),
                arg(skew),
                arg(metadata),
                arg(now.timestamptz()),
                arg(service.unverified_until),
            ],
        )?;
        if inserted.is_empty() {
            return Err(TotpError::FactorExists { sid: factor_sid, identity: identity.to_string() });
        }
        db::exec(client, &INSERT_SECRET, &[arg(identity), arg(factor_sid.as_str()), arg(key_id), arg(sealed)])?;
        events::send(client, Event::FactorCreated, service_sid, identity, &factor_sid, None, now)?;

        let binding_secret = totp_core::base32::encode(&secret);
        let issuer = service.issuer.as_deref().unwrap_or(&service.friendly_name);
        let binding_uri = KeyUri {
            secret: &binding_secret,
            account: friendly_name,
            issuer: Some(issuer),
            alg,
            digits: code_length as u32,
            period: time_step as u32,
        }
        .render();
        let table = db::exec(
            client,
            &SELECT_NEW,
            &[arg(identity), arg(factor_sid.as_str()), arg(binding_secret.as_str()), arg(binding_uri)],
        )?;
        db::req(&table.first(), 1)
    })?)
}

/// A factor row locked `FOR UPDATE` for one verification: the lock serializes every code
/// check, counter and replay-guard update on this factor (SPEC §3 "Concurrency").
pub struct LockedFactor {
    pub identity: String,
    pub sid: String,
    pub entity_sid: String,
    pub verified: bool,
    /// When an unverified factor is gone (Postgres microseconds); None once verified.
    pub unverified_until: Option<i64>,
    pub code_length: i32,
    pub params: CodeParams,
    pub last_step: Option<i64>,
    pub failed_verifications: i32,
    pub challenge_hour_start: Option<i64>,
    pub challenges_in_hour: i32,
    pub challenge_day_start: Option<i64>,
    pub challenges_in_day: i32,
    key_id: i64,
    sealed: Vec<u8>,
}

// Locks the factor row only: the secret row is read as last committed, so a key rotation in
// progress never blocks a verification ($4: the call's clock). The service comes from its own
// statement first (see lock).
static LOCK: Sql = Sql {
    text: concat!(
        "SELECT ",
        locked_factor_columns!(),
        " FROM totp_private.factors f \
         JOIN totp_private.factor_secrets s ON s.identity = f.identity AND s.factor_sid = f.sid \
         WHERE f.identity = $1 AND f.sid = $2 AND f.service_sid = $3 AND s.identity = $1 \
           AND (f.unverified_until IS NULL OR f.unverified_until > $4) \
         FOR UPDATE OF f"
    ),
    params: &[TEXT, TEXT, TEXT, TIMESTAMPTZ],
};

/// The columns `locked_from_row` reads, of aliases `f` (the factor) and `s` (its secret): first in
/// this module's LOCK and in the challenge's, so that both are read by the same code.
macro_rules! locked_factor_columns {
    () => {
        "f.entity_sid, f.status, f.alg, f.code_length, f.time_step, f.skew, f.last_step, \
         f.failed_verifications, f.challenge_hour_start, f.challenges_in_hour, \
         f.challenge_day_start, f.challenges_in_day, s.key_id, s.sealed, f.unverified_until"
    };
}
pub(crate) use locked_factor_columns;

/// How many columns `locked_factor_columns!` names.
pub const FACTOR_COLUMNS: usize = 15;

fn micros(ts: Option<pgrx::datum::TimestampWithTimeZone>) -> Option<i64> {
    ts.map(|t| t.into_inner())
}

/// Locks the factor and reads its service, or reports 20404 / 60392 / 60390.
pub fn lock(
    client: &mut SpiClient<'_>,
    service_sid: &str,
    identity: &str,
    factor_sid: &str,
    now: Now,
) -> TotpResult<(Service, LockedFactor)> {
    // The service in a statement of its own: under Citus's delegation every statement must stay on
    // the identity's shard, and one that joins the services reference table to it does not
    // ("queries must filter by the distribution argument in the same colocation group").
    let service = super::services::load(client, service_sid, identity, now)?;
    Ok((service, lock_factor(client, service_sid, identity, factor_sid, now)?))
}

/// Locks the factor of a service already loaded (the caller checked what comes before the lock in
/// the error order), or reports 60392 / 60390.
pub fn lock_factor(
    client: &mut SpiClient<'_>,
    service_sid: &str,
    identity: &str,
    factor_sid: &str,
    now: Now,
) -> TotpResult<LockedFactor> {
    let table = db::exec(client, &LOCK, &[arg(identity), arg(factor_sid), arg(service_sid), arg(now.timestamptz())])?;
    let Some(row) = db::first(table) else {
        return Err(super::entities::missing(client, service_sid, identity, SidKind::Factor, factor_sid));
    };
    locked_from_row(&row, identity, factor_sid)
}

/// The `LockedFactor` of the current row, whose first columns are `locked_factor_columns!`.
pub fn locked_from_row(
    row: &pgrx::spi::SpiTupleTable<'_>,
    identity: &str,
    factor_sid: &str,
) -> TotpResult<LockedFactor> {
    let status: String = db::req(row, 2)?;
    let alg: String = db::req(row, 3)?;
    let code_length: i32 = db::req(row, 4)?;
    let time_step: i32 = db::req(row, 5)?;
    let skew: i32 = db::req(row, 6)?;
    // The table has no CHECKs (they cost every write; the extension validates what it writes),
    // but rows can arrive by other routes (a restore, a superuser's UPDATE): a skew of -1 cast
    // to u32 would widen the window to billions of steps. Refuse such a row outright.
    if validate::settings(Some(time_step), Some(code_length), Some(skew)).is_err()
        || !matches!(status.as_str(), "verified" | "unverified")
    {
        return Err(TotpError::Internal(format!("factor {factor_sid} has stored settings out of range")));
    }
    Ok(LockedFactor {
        identity: identity.to_string(),
        sid: factor_sid.to_string(),
        entity_sid: db::req(row, 1)?,
        verified: status == "verified",
        code_length,
        params: CodeParams {
            alg: alg.parse().map_err(|_| TotpError::Internal("stored alg is invalid".into()))?,
            digits: code_length as u32,
            step_seconds: time_step as u32,
            skew: skew as u32,
        },
        last_step: db::get(row, 7)?,
        failed_verifications: db::req(row, 8)?,
        challenge_hour_start: micros(db::get(row, 9)?),
        challenges_in_hour: db::req(row, 10)?,
        challenge_day_start: micros(db::get(row, 11)?),
        challenges_in_day: db::req(row, 12)?,
        key_id: db::req(row, 13)?,
        sealed: db::req(row, 14)?,
        unverified_until: micros(db::get(row, 15)?),
    })
}

impl LockedFactor {
    /// The wrong codes this factor may take per window, whatever the callers' transactions do:
    /// exactly what the committed counters allow (see `guess_limit`).
    fn guess_budget(&self, service: &Service) -> Budget {
        let times =
            |per: i32| (i64::from(per) * i64::from(service.max_challenge_attempts)).clamp(0, u32::MAX.into()) as u32;
        match self.unverified_until {
            Some(until) if !self.verified => {
                Budget::Unverified { limit: service.max_factor_attempts.max(0) as u32, until: unix_seconds(until) }
            }
            _ if self.code_length <= SHORT_CODE_MAX_LENGTH => {
                Budget::Verified { per_hour: None, per_day: times(service.max_short_code_challenges_per_day) }
            }
            _ => Budget::Verified {
                per_hour: Some(times(service.max_challenges_per_hour)),
                per_day: times(service.max_challenges_per_day),
            },
        }
    }

    /// The time step `payload` proves, if it is a right, fresh code now. Wrong length, wrong
    /// code and replayed code all give `None`, indistinguishably. Each check reserves a guess in
    /// shared memory first, which no rollback returns; a right code gives it back.
    pub fn accepts(
        &self,
        client: &mut SpiClient<'_>,
        service: &Service,
        payload: &str,
        now: Now,
    ) -> TotpResult<Option<i64>> {
        let secret = keyring::open(client, &self.sid, self.key_id, &self.sealed)?;
        let budget = self.guess_budget(service);
        let reservation = guess_limit::reserve(&self.identity, &self.sid, budget, now.unix_seconds()).map_err(
            |refusal| match refusal {
                Refusal::Exhausted { limit, window } => TotpError::GuessesExhausted {
                    twilio: if matches!(budget, Budget::Unverified { .. }) { 60310 } else { 60308 },
                    limit,
                    window,
                },
                Refusal::Full => TotpError::GuessSlotsFull,
                Refusal::NotLoaded => TotpError::GuessLimitsNotLoaded,
            },
        )?;
        let accepted = if payload.len() == self.code_length as usize {
            otp::time_step(now.unix_seconds(), self.params.step_seconds).and_then(|now_step| {
                let last = self.last_step.map(|s| s.max(0) as u64);
                otp::match_step(&secret, payload, now_step, last, self.params).map(|s| s as i64)
            })
        } else {
            None
        };
        if let (Some(_), Some(reservation)) = (accepted, reservation) {
            reservation.refund();
        }
        Ok(accepted)
    }
}

// The factor's new state, its factor.verified event ($5: its id, $6: its type) and its public
// row, in one statement: the verification path runs as few statements as it can. The row is the
// view's: the factor is verified, so none of the view's filter applies.
static VERIFIED: Sql = Sql {
    text: concat!(
        "WITH f AS (UPDATE totp_private.factors AS x SET status = 'verified', unverified_until = NULL, \
           last_step = $3, failed_verifications = 0, date_updated = $4, date_verified = $4 \
           WHERE x.identity = $1 AND x.sid = $2 RETURNING x.*), \
         e AS (INSERT INTO totp_private.events (identity, id, type, service_sid, factor_sid, date_created) \
           SELECT f.identity, $5, $6, f.service_sid, f.sid, $4 FROM f) \
         SELECT ROW(",
        factor_columns!(),
        ")::totp.factors FROM f"
    ),
    params: &[TEXT, TEXT, INT8, TIMESTAMPTZ, UUID, TEXT],
};

// The count and the public row in one statement; the factor is locked and not gone (LOCK's
// condition), so the view would show this row.
static VERIFICATION_FAILED: Sql = Sql {
    text: concat!(
        "WITH f AS (UPDATE totp_private.factors AS x SET failed_verifications = x.failed_verifications + 1 \
           WHERE x.identity = $1 AND x.sid = $2 RETURNING x.*) \
         SELECT ROW(",
        factor_columns!(),
        ")::totp.factors FROM f"
    ),
    params: &[TEXT, TEXT],
};

#[cfg(any(test, feature = "pg_test"))]
pub fn statements() -> Vec<(&'static str, &'static Sql)> {
    vec![
        ("factors::LOCK", &LOCK),
        ("factors::VERIFIED", &VERIFIED),
        ("factors::VERIFICATION_FAILED", &VERIFICATION_FAILED),
    ]
}

/// Verifies a new factor with a code from the user's app. A right code makes it `verified` and
/// is consumed; a wrong one returns the row still `unverified` and counts toward 60310.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn verify_factor(
    service_sid: Option<&str>,
    identity: Option<&str>,
    factor_sid: Option<&str>,
    auth_payload: Option<&str>,
) -> Result<pgrx::composite_type!('static, "totp.factors"), ErrorReport> {
    let (service_sid, identity) = scope(service_sid, identity)?;
    let factor_sid = sid_arg("factor_sid", SidKind::Factor, factor_sid)?;
    let payload = required("auth_payload", auth_payload)?;
    validate::auth_payload(payload).map_err(TotpError::from)?;
    let now = Now::read();
    Ok(Spi::connect_mut(|client| -> TotpResult<FactorRow> {
        let (service, factor) = lock(client, service_sid, identity, factor_sid, now)?;
        if factor.verified {
            return row(client, identity, factor_sid);
        }
        if factor.failed_verifications >= service.max_factor_attempts {
            return Err(TotpError::FactorAttemptsExhausted { limit: service.max_factor_attempts });
        }
        let table = match factor.accepts(client, &service, payload, now)? {
            Some(step) => {
                let table = db::exec(
                    client,
                    &VERIFIED,
                    &[
                        arg(identity),
                        arg(factor_sid),
                        arg(step),
                        arg(now.timestamptz()),
                        arg(events::new_id()),
                        arg(Event::FactorVerified.name()),
                    ],
                )?;
                events::wake();
                table
            }
            None => db::exec(client, &VERIFICATION_FAILED, &[arg(identity), arg(factor_sid)])?,
        };
        db::req(&table.first(), 1)
    })?)
}

// Steps of different lengths are not comparable, so each time_step keeps its own replay guard: a
// new time_step parks the current guard in replay_guards under the old length and takes up the
// guard last parked under the new one (none if the factor never had it). A code is thus never
// accepted twice for the same (time_step, step), whatever sequence of changes comes between,
// and the app's current code under a new time_step works at once. An unchanged time_step keeps
// the guard as it is. The parked guard {"<time_step>": <last_step>} is built from text with
// IMMUTABLE functions only (jsonb_build_object is STABLE, which Citus refuses in an UPDATE of a
// distributed table; both values are integers).
static UPDATE: Sql = Sql {
    text: "UPDATE totp_private.factors AS f SET \
             friendly_name = COALESCE($4, f.friendly_name), alg = COALESCE($5, f.alg), \
             code_length = COALESCE($6, f.code_length), time_step = COALESCE($7, f.time_step), \
             skew = COALESCE($8, f.skew), metadata = COALESCE($9, f.metadata), date_updated = $10, \
             last_step = CASE WHEN $7 IS NULL OR $7 = f.time_step THEN f.last_step \
                              ELSE (f.replay_guards ->> $7::text)::bigint END, \
             replay_guards = CASE WHEN $7 IS NULL OR $7 = f.time_step OR f.last_step IS NULL \
                                  THEN f.replay_guards \
                                  ELSE COALESCE(f.replay_guards, '{}'::jsonb) \
                                       || ('{\"' || f.time_step::text || '\": ' || f.last_step::text || '}')::jsonb END \
           WHERE f.identity = $1 AND f.sid = $2 AND f.service_sid = $3 \
           RETURNING f.sid",
    params: &[TEXT, TEXT, TEXT, TEXT, TEXT, INT4, INT4, INT4, JSONB, TIMESTAMPTZ],
};

// A pending challenge was created, and its attempts budgeted, under the old code settings: with
// shorter codes or a wider window its remaining attempts would be worth more guesses.
static EXPIRE_PENDING: Sql = Sql {
    text: "UPDATE totp_private.challenges SET status = 'expired', date_updated = $3 \
           WHERE identity = $1 AND factor_sid = $2 AND status = 'pending'",
    params: &[TEXT, TEXT, TIMESTAMPTZ],
};

/// Updates a factor's name, settings or metadata; NULL leaves a value as it is. Changing alg,
/// code_length or time_step changes the codes the factor expects.
#[allow(clippy::too_many_arguments)] // mirrors Twilio's parameters
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn update_factor(
    service_sid: Option<&str>,
    identity: Option<&str>,
    factor_sid: Option<&str>,
    friendly_name: default!(Option<&str>, "NULL"),
    alg: default!(Option<&str>, "NULL"),
    code_length: default!(Option<i32>, "NULL"),
    time_step: default!(Option<i32>, "NULL"),
    skew: default!(Option<i32>, "NULL"),
    metadata: default!(Option<Jsonb>, "NULL"),
) -> Result<pgrx::composite_type!('static, "totp.factors"), ErrorReport> {
    let (service_sid, identity) = scope(service_sid, identity)?;
    let factor_sid = sid_arg("factor_sid", SidKind::Factor, factor_sid)?;
    if let Some(name) = friendly_name {
        validate::friendly_name("friendly_name", name).map_err(TotpError::from)?;
    }
    let alg = parse_alg(alg)?;
    validate::settings(time_step, code_length, skew).map_err(TotpError::from)?;
    json_object_arg("metadata", metadata)?;
    let now = Now::read();
    Ok(Spi::connect_mut(|client| -> TotpResult<FactorRow> {
        // The lock orders this change after any verification in flight on the factor.
        let (_, factor) = lock(client, service_sid, identity, factor_sid, now)?;
        let codes_change = alg.is_some_and(|alg| alg != factor.params.alg)
            || code_length.is_some_and(|length| length != factor.code_length)
            || time_step.is_some_and(|step| step as u32 != factor.params.step_seconds)
            || skew.is_some_and(|skew| skew as u32 != factor.params.skew);
        let table = db::exec(
            client,
            &UPDATE,
            &[
                arg(identity),
                arg(factor_sid),
                arg(service_sid),
                arg(friendly_name),
                arg(alg.map(Algorithm::as_str)),
                arg(code_length),
                arg(time_step),
                arg(skew),
                arg(metadata),
                arg(now.timestamptz()),
            ],
        )?;
        if table.is_empty() {
            return Err(super::entities::missing(client, service_sid, identity, SidKind::Factor, factor_sid));
        }
        if codes_change {
            db::exec(client, &EXPIRE_PENDING, &[arg(identity), arg(factor_sid), arg(now.timestamptz())])?;
        }
        row(client, identity, factor_sid)
    })?)
}

static DELETE: Sql = Sql {
    text: "DELETE FROM totp_private.factors \
           WHERE identity = $1 AND sid = $2 AND service_sid = $3 \
             AND (unverified_until IS NULL OR unverified_until > $4) RETURNING sid",
    params: &[TEXT, TEXT, TEXT, TIMESTAMPTZ],
};

/// Deletes a factor and its challenges.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn delete_factor(
    service_sid: Option<&str>,
    identity: Option<&str>,
    factor_sid: Option<&str>,
) -> Result<(), ErrorReport> {
    let (service_sid, identity) = scope(service_sid, identity)?;
    let factor_sid = sid_arg("factor_sid", SidKind::Factor, factor_sid)?;
    let now = Now::read();
    Ok(Spi::connect_mut(|client| -> TotpResult<()> {
        super::services::load(client, service_sid, identity, now)?;
        let table =
            db::exec(client, &DELETE, &[arg(identity), arg(factor_sid), arg(service_sid), arg(now.timestamptz())])?;
        if table.is_empty() {
            return Err(super::entities::missing(client, service_sid, identity, SidKind::Factor, factor_sid));
        }
        challenges::delete_of(client, challenges::Owner::Factor { identity, factor_sid })?;
        events::send(client, Event::FactorDeleted, service_sid, identity, factor_sid, None, now)
    })?)
}

static GET: Sql = Sql {
    text: concat!(
        "SELECT ROW(",
        factor_columns!(),
        ")::totp.factors FROM totp.factors f WHERE f.identity = $1 AND f.sid = $2 AND f.service_sid = $3"
    ),
    params: &[TEXT, TEXT, TEXT],
};

static LIST: Sql = Sql {
    text: concat!(
        "SELECT ROW(",
        factor_columns!(),
        ")::totp.factors FROM totp.factors f WHERE f.identity = $1 AND f.service_sid = $2 \
         ORDER BY f.date_created, f.sid"
    ),
    params: &[TEXT, TEXT],
};

/// One factor of an identity (Twilio GET /Entities/{identity}/Factors/{sid}): the view's row, or
/// 60392 / 60390. Like the state functions it reads by identity, so a router can send it.
#[pg_extern(stable, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn get_factor(
    service_sid: Option<&str>,
    identity: Option<&str>,
    factor_sid: Option<&str>,
) -> Result<pgrx::composite_type!('static, "totp.factors"), ErrorReport> {
    let (service_sid, identity) = scope(service_sid, identity)?;
    let factor_sid = sid_arg("factor_sid", SidKind::Factor, factor_sid)?;
    let now = Now::read();
    Ok(Spi::connect_mut(|client| -> TotpResult<FactorRow> {
        super::services::load(client, service_sid, identity, now)?;
        match db::first(db::exec(client, &GET, &[arg(identity), arg(factor_sid), arg(service_sid)])?) {
            Some(row) => db::req(&row, 1),
            None => Err(super::entities::missing(client, service_sid, identity, SidKind::Factor, factor_sid)),
        }
    })?)
}

/// An identity's factors in a service, oldest first (Twilio GET /Entities/{identity}/Factors);
/// none for an identity the service has no entity for.
#[pg_extern(stable, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn list_factors(
    service_sid: Option<&str>,
    identity: Option<&str>,
) -> Result<SetOfIterator<'static, pgrx::composite_type!('static, "totp.factors")>, ErrorReport> {
    let (service_sid, identity) = scope(service_sid, identity)?;
    let now = Now::read();
    let rows = Spi::connect_mut(|client| -> TotpResult<Vec<FactorRow>> {
        super::services::load(client, service_sid, identity, now)?;
        db::column(client, &LIST, &[arg(identity), arg(service_sid)])
    })?;
    Ok(SetOfIterator::new(rows))
}
