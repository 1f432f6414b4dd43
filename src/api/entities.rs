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

static INSERT: Sql = Sql {
    text: "INSERT INTO totp.entities AS e (identity, service_sid, sid, date_created, date_updated) \
           VALUES ($1, $2, $3, $4, $4) ON CONFLICT (identity, service_sid) DO NOTHING RETURNING e",
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
        super::services::load(client, service_sid, now)?;
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
    text: "DELETE FROM totp.entities WHERE identity = $1 AND service_sid = $2 RETURNING sid",
    params: &[TEXT, TEXT],
};

/// Deletes an entity and, by cascade, its factors and challenges.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn delete_entity(service_sid: Option<&str>, identity: Option<&str>) -> Result<(), ErrorReport> {
    let (service_sid, identity) = scope(service_sid, identity)?;
    let now = Now::read();
    Ok(Spi::connect_mut(|client| -> TotpResult<()> {
        super::services::load(client, service_sid, now)?;
        let table = db::exec(client, &DELETE, &[arg(identity), arg(service_sid)])?;
        if table.is_empty() {
            return Err(not_found(identity));
        }
        Ok(())
    })?)
}

/// 60392 for this identity.
pub fn not_found(identity: &str) -> TotpError {
    TotpError::NotFound { kind: SidKind::Entity, identity: identity.to_string(), sid: None }
}

static EXISTS: Sql =
    Sql { text: "SELECT 1 FROM totp.entities WHERE identity = $1 AND service_sid = $2", params: &[TEXT, TEXT] };

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
