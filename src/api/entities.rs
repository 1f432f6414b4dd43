//! `totp.entities`: create and delete (Twilio POST/DELETE /Entities), and the "which is
//! missing, the entity or the resource?" check behind 60392 versus 60390/60391.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use totp_core::sid::{self, SidKind};

use super::scope;
use crate::clock::Now;
use crate::db::{self, arg, Sql, TEXT, TIMESTAMPTZ};
use crate::error::{TotpError, TotpResult};

type EntityRow = pgrx::composite_type!('static, "totp.entities");

macro_rules! entity_row {
    () => {
        "ROW(e.identity, e.service_sid, e.sid, e.date_created, e.date_updated, e.factor_window_start, \
           e.factors_created_in_window)::totp.entities"
    };
}

static INSERT: Sql = Sql {
    text: concat!(
        "INSERT INTO totp_private.entities AS e (identity, service_sid, sid, date_created, date_updated) \
         VALUES ($1, $2, $3, $4, $4) ON CONFLICT (identity, service_sid) DO NOTHING RETURNING ",
        entity_row!()
    ),
    params: &[TEXT, TEXT, TEXT, TIMESTAMPTZ],
};

/// Creates an entity; an identity the service already has is 60301.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn create_entity(
    service_sid: Option<&str>,
    identity: Option<&str>,
) -> Result<pgrx::composite_type!('static, "totp.entities"), ErrorReport> {
    let (service_sid, identity) = scope(service_sid, identity)?;
    let now = Now::read();
    Ok(Spi::connect_mut(|client| -> TotpResult<EntityRow> {
        super::services::load(client, service_sid, identity, now)?;
        let table = db::exec(
            client,
            &INSERT,
            &[arg(identity), arg(service_sid), arg(sid::generate(SidKind::Entity)), arg(now.timestamptz())],
        )?;
        match db::first(table) {
            Some(row) => db::req(&row, 1),
            None => Err(TotpError::EntityExists { identity: identity.to_string() }),
        }
    })?)
}

static DELETE: Sql = Sql {
    text: "DELETE FROM totp_private.entities WHERE identity = $1 AND service_sid = $2 RETURNING sid",
    params: &[TEXT, TEXT],
};

/// Deletes the entity with its factors and challenges, recording a `factor.deleted` for each
/// factor; false when the service has no such entity.
fn forget(client: &mut SpiClient<'_>, service_sid: &str, identity: &str, now: Now) -> TotpResult<bool> {
    super::events::entity_deleted(client, service_sid, identity, now)?;
    let deleted = !db::exec(client, &DELETE, &[arg(identity), arg(service_sid)])?.is_empty();
    super::challenges::delete_of(client, super::challenges::Owner::Entity { identity, service_sid })?;
    Ok(deleted)
}

/// Deletes an entity and its factors (by cascade) and challenges.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn delete_entity(service_sid: Option<&str>, identity: Option<&str>) -> Result<(), ErrorReport> {
    let (service_sid, identity) = scope(service_sid, identity)?;
    let now = Now::read();
    Ok(Spi::connect_mut(|client| -> TotpResult<()> {
        super::services::load(client, service_sid, identity, now)?;
        if !forget(client, service_sid, identity, now)? {
            return Err(not_found(identity));
        }
        Ok(())
    })?)
}

static GET: Sql = Sql {
    text: concat!("SELECT ", entity_row!(), " FROM totp.entities e WHERE e.identity = $1 AND e.service_sid = $2"),
    params: &[TEXT, TEXT],
};

/// An identity's entity in a service (Twilio GET /Entities/{identity}), or 60392.
#[pg_extern(stable, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn get_entity(
    service_sid: Option<&str>,
    identity: Option<&str>,
) -> Result<pgrx::composite_type!('static, "totp.entities"), ErrorReport> {
    let (service_sid, identity) = scope(service_sid, identity)?;
    let now = Now::read();
    Ok(Spi::connect_mut(|client| -> TotpResult<EntityRow> {
        super::services::load(client, service_sid, identity, now)?;
        match db::first(db::exec(client, &GET, &[arg(identity), arg(service_sid)])?) {
            Some(row) => db::req(&row, 1),
            None => Err(not_found(identity)),
        }
    })?)
}

/// Internal functions, in the schema no role but the owner may use.
#[pg_schema]
mod totp_private {
    use pgrx::pg_sys::panic::ErrorReport;
    use pgrx::prelude::*;
    use totp_core::sid::SidKind;

    use crate::clock::Now;

    /// What the `totp.forget_entity()` trigger runs for a deleted application row: the entity of
    /// that identity goes, if there is one. An identity that could never be valid has no entity;
    /// a malformed service SID in the trigger's arguments is refused (60200), not ignored.
    #[pg_extern(volatile, parallel_unsafe, security_definer)]
    #[search_path(pg_catalog, pg_temp)]
    fn forget_identity(service_sid: Option<&str>, identity: Option<&str>) -> Result<bool, ErrorReport> {
        let service_sid = crate::api::sid_arg("service_sid", SidKind::Service, service_sid)?;
        let Some(identity) = identity.filter(|i| totp_core::validate::identity(i).is_ok()) else {
            return Ok(false);
        };
        let now = Now::read();
        Ok(Spi::connect_mut(|client| super::forget(client, service_sid, identity, now))?)
    }
}

/// 60392 for this identity.
pub fn not_found(identity: &str) -> TotpError {
    TotpError::NotFound { kind: SidKind::Entity, identity: identity.to_string(), sid: None }
}

static EXISTS: Sql =
    Sql { text: "SELECT 1 FROM totp_private.entities WHERE identity = $1 AND service_sid = $2", params: &[TEXT, TEXT] };

/// The error for a factor or challenge that was not found: 60392 when the entity itself is
/// missing, else the resource's own code.
pub fn missing(
    client: &mut SpiClient<'_>,
    service_sid: &str,
    identity: &str,
    kind: SidKind,
    resource_sid: &str,
) -> TotpError {
    match db::exec(client, &EXISTS, &[arg(identity), arg(service_sid)]) {
        Ok(table) if table.is_empty() => not_found(identity),
        Ok(_) => TotpError::NotFound { kind, identity: identity.to_string(), sid: Some(resource_sid.to_string()) },
        Err(e) => e,
    }
}
