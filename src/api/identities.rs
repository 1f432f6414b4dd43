//! Moving an identity between PL/Proxy partitions (SPEC §11) with its factors, counters, replay
//! guards and challenges: `export_identity`, `release_identity` and `import_identity`.
//!
//! Superuser only, whatever EXECUTE says (not SECURITY DEFINER): an export holds the identity's
//! secrets in plaintext, because the destination seals them under its own key file, which the
//! source never sees. The document is as sensitive as the key file; keep it out of logs.
//!
//! A move: `release_identity(identity, to_part_no)` on the source exports the identity and, in
//! the same transaction, deletes its rows there and records where it went, so that the source
//! refuses further calls on it (55000) instead of taking writes the destination would miss; then
//! `import_identity(document)` on the destination. Until the import commits, calls on the
//! identity fail; none is lost. Events stay where they were recorded (deliverers read each
//! partition). The guessing bound's shared-memory windows start afresh on the destination, while
//! the counters on the rows move with them.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use totp_core::validate::{self, Invalid};
use totp_core::{base32, partition};

use super::{identity_arg, required};
use crate::db::{self, arg, Sql, BYTEA, INT4, INT8, TEXT};
use crate::error::{TotpError, TotpResult};
use crate::jsonb::Jsonb;
use crate::keyring;

/// The document's format; a later version that changes it bumps the number.
const FORMAT: &str = "totp_verify.identity.v1";

static SEALED: Sql = Sql {
    text: "SELECT factor_sid, key_id, sealed FROM totp_private.factor_secrets WHERE identity = $1 ORDER BY factor_sid",
    params: &[TEXT],
};

// Whole rows by column name: the document reads back into a database whose columns are in
// another order (an upgraded one) by jsonb_populate_recordset, which matches names.
static EXPORT: Sql = Sql {
    text: "SELECT pg_catalog.jsonb_build_object( \
             'format', $2::text, 'identity', $1::text, \
             'entities', COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.to_jsonb(e) ORDER BY e.service_sid) \
                                   FROM totp_private.entities e WHERE e.identity = $1), '[]'), \
             'factors', COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.to_jsonb(f) ORDER BY f.sid) \
                                  FROM totp_private.factors f WHERE f.identity = $1), '[]'), \
             'challenges', COALESCE((SELECT pg_catalog.jsonb_agg(pg_catalog.to_jsonb(c) ORDER BY c.sid) \
                                     FROM totp_private.challenges c WHERE c.identity = $1), '[]'), \
             'secrets', COALESCE((SELECT pg_catalog.jsonb_object_agg(s.sid, s.secret) \
                                  FROM ROWS FROM (pg_catalog.unnest($3::text[]), pg_catalog.unnest($4::text[])) AS s (sid, secret)), '{}') \
           )::text",
    params: &[TEXT, TEXT, TEXT_ARRAY, TEXT_ARRAY],
};
const TEXT_ARRAY: pgrx::pg_sys::PgOid = pgrx::pg_sys::PgOid::BuiltIn(pgrx::pg_sys::PgBuiltInOids::TEXTARRAYOID);

static PLACEMENT: Sql =
    Sql { text: "SELECT part_no FROM totp_private.placements WHERE identity = $1", params: &[TEXT] };

/// On a partition, refuses (55000, the guard of every identity-scoped call) an identity that
/// lives elsewhere, for instance one already released from here: its export would be empty, and
/// importing that would wipe the identity's copy on the destination. Returns this database's
/// `(part_no, part_count)`, if it is a partition.
fn guarded(client: &mut SpiClient<'_>, identity: &str) -> TotpResult<Option<(i32, i32)>> {
    let current = super::partitions::current(client)?;
    if let Some((here, part_count)) = current {
        let placement = match db::first(db::exec(client, &PLACEMENT, &[arg(identity)])?) {
            Some(row) => Some(db::req::<i32>(&row, 1)?),
            None => None,
        };
        super::partitions::guard(identity, Some(here), Some(part_count), placement)?;
    }
    Ok(current)
}

/// The identity's rows in every service as a document's text, its secrets opened.
fn export(client: &mut SpiClient<'_>, identity: &str) -> TotpResult<String> {
    let mut sids = Vec::new();
    let mut secrets = Vec::new();
    let sealed: Vec<(String, i64, Vec<u8>)> = db::exec(client, &SEALED, &[arg(identity)])?
        .map(|row| Ok((db::req_at(&row, 1)?, db::req_at(&row, 2)?, db::req_at(&row, 3)?)))
        .collect::<TotpResult<_>>()?;
    for (sid, key_id, ciphertext) in sealed {
        let secret = keyring::open(client, &sid, key_id, &ciphertext)?;
        secrets.push(base32::encode(&secret));
        sids.push(sid);
    }
    let table = db::exec(client, &EXPORT, &[arg(identity), arg(FORMAT), arg(sids), arg(secrets)])?;
    db::req(&table.first(), 1)
}

/// The identity's entities, factors (with their secrets in plaintext, base32), counters, replay
/// guards and challenges in every service, as a document `import_identity` takes. On a partition,
/// only for an identity that lives there (else 55000). Superuser only.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn export_identity(identity: Option<&str>) -> Result<Jsonb, ErrorReport> {
    super::require_superuser("export an identity")?;
    let identity = identity_arg(identity)?;
    let text = Spi::connect_mut(|client| -> TotpResult<String> {
        guarded(client, identity)?;
        export(client, identity)
    })?;
    Ok(Jsonb::from_text(&text))
}

static COUNT_FACTORS: Sql =
    Sql { text: "SELECT count(*) FROM totp_private.factors WHERE identity = $1", params: &[TEXT] };
// Cascades to factors and secrets (the challenges: delete_rows); records no event (the identity
// is moving, not deleted). Events already recorded stay.
static DELETE_ROWS: Sql = Sql { text: "DELETE FROM totp_private.entities WHERE identity = $1", params: &[TEXT] };

/// Deletes every row of `identity` here but its events.
fn delete_rows(client: &mut SpiClient<'_>, identity: &str) -> TotpResult<()> {
    db::exec(client, &DELETE_ROWS, &[arg(identity)])?;
    super::challenges::delete_of(client, super::challenges::Owner::Identity(identity))
}

static PLACE: Sql = Sql {
    text: "INSERT INTO totp_private.placements (identity, part_no) VALUES ($1, $2) \
           ON CONFLICT (identity) DO UPDATE SET part_no = EXCLUDED.part_no",
    params: &[TEXT, INT4],
};
static UNPLACE: Sql = Sql { text: "DELETE FROM totp_private.placements WHERE identity = $1", params: &[TEXT] };
// Waits for the identity's calls still running here (each holds its entity or factor row lock
// until it commits) and keeps new ones out until the release commits. The export after it is a
// new statement, so (READ COMMITTED, and SPI takes a new snapshot for each statement of a
// read-write call) it sees what those calls committed.
static LOCK_ROWS: Sql = Sql {
    text: "SELECT (SELECT count(*) FROM (SELECT FROM totp_private.entities e WHERE e.identity = $1 FOR UPDATE) le) \
                + (SELECT count(*) FROM (SELECT FROM totp_private.factors f WHERE f.identity = $1 FOR UPDATE) lf)",
    params: &[TEXT],
};

/// Records that `identity` lives on partition `home`: a placement row where that differs from
/// its hashed partition, none where it does not.
fn place(client: &mut SpiClient<'_>, identity: &str, home: i32, part_count: i32) -> TotpResult<()> {
    if home == partition::partition_of(identity, part_count) {
        db::exec(client, &UNPLACE, &[arg(identity)])?;
    } else {
        db::exec(client, &PLACE, &[arg(identity), arg(home)])?;
    }
    Ok(())
}

/// Moves an identity out of this partition: returns its export document, deletes its rows here
/// (no events) and records that it now lives on partition `part_no`, so this partition refuses
/// calls on it (55000). One transaction: the identity's entity and factor rows are locked first,
/// so calls still running on it finish (and are in the export) and no write here can follow the
/// export. Superuser only.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn release_identity(identity: Option<&str>, part_no: Option<i32>) -> Result<Jsonb, ErrorReport> {
    super::require_superuser("release an identity")?;
    let identity = identity_arg(identity)?;
    let to = required("part_no", part_no)?;
    let text = Spi::connect_mut(|client| -> TotpResult<String> {
        let Some((here, part_count)) = guarded(client, identity)? else {
            return Err(TotpError::NoPartition { what: "move identities" });
        };
        if !(0..part_count).contains(&to) || to == here {
            return Err(TotpError::invalid_service(Invalid::new(
                "part_no",
                format!("must be another partition, from 0 to {}", part_count - 1),
            )));
        }
        db::exec(client, &LOCK_ROWS, &[arg(identity)])?;
        let document = export(client, identity)?;
        delete_rows(client, identity)?;
        place(client, identity, to, part_count)?;
        Ok(document)
    })?;
    Ok(Jsonb::from_text(&text))
}

static HEADER: Sql = Sql {
    text: "SELECT $1->>'format', $1->>'identity', \
             (SELECT count(*) FROM pg_catalog.jsonb_array_elements(COALESCE($1->'entities', '[]')) e \
               WHERE e->>'identity' IS DISTINCT FROM $1->>'identity') \
           + (SELECT count(*) FROM pg_catalog.jsonb_array_elements(COALESCE($1->'factors', '[]')) f \
               WHERE f->>'identity' IS DISTINCT FROM $1->>'identity') \
           + (SELECT count(*) FROM pg_catalog.jsonb_array_elements(COALESCE($1->'challenges', '[]')) c \
               WHERE c->>'identity' IS DISTINCT FROM $1->>'identity'), \
             (SELECT min(e->>'service_sid') FROM pg_catalog.jsonb_array_elements(COALESCE($1->'entities', '[]')) e \
               WHERE NOT EXISTS (SELECT FROM totp_private.services s WHERE s.sid = e->>'service_sid')), \
             (SELECT count(*) FROM pg_catalog.jsonb_array_elements(COALESCE($1->'challenges', '[]')) c \
               WHERE NOT EXISTS (SELECT FROM pg_catalog.jsonb_array_elements(COALESCE($1->'factors', '[]')) f \
                                  WHERE f->>'sid' = c->>'factor_sid' AND f->>'service_sid' = c->>'service_sid' \
                                    AND f->>'status' = 'verified'))",
    params: &[crate::db::JSONB],
};
static SECRETS: Sql = Sql {
    text: "SELECT f->>'sid', $1->'secrets'->>(f->>'sid') \
           FROM pg_catalog.jsonb_array_elements(COALESCE($1->'factors', '[]')) f ORDER BY 1",
    params: &[crate::db::JSONB],
};
static INSERT_ENTITIES: Sql = Sql {
    text: "INSERT INTO totp_private.entities \
           SELECT * FROM pg_catalog.jsonb_populate_recordset(NULL::totp_private.entities, $1->'entities')",
    params: &[crate::db::JSONB],
};
static INSERT_FACTORS: Sql = Sql {
    text: "INSERT INTO totp_private.factors \
           SELECT * FROM pg_catalog.jsonb_populate_recordset(NULL::totp_private.factors, $1->'factors')",
    params: &[crate::db::JSONB],
};
static INSERT_CHALLENGES: Sql = Sql {
    text: "INSERT INTO totp_private.challenges \
           SELECT * FROM pg_catalog.jsonb_populate_recordset(NULL::totp_private.challenges, \
                                                              COALESCE($1->'challenges', '[]'))",
    params: &[crate::db::JSONB],
};
static INSERT_SECRET: Sql = Sql {
    text: "INSERT INTO totp_private.factor_secrets (identity, factor_sid, key_id, sealed) VALUES ($1, $2, $3, $4)",
    params: &[TEXT, TEXT, INT8, BYTEA],
};

fn invalid_document(rule: &str) -> TotpError {
    TotpError::invalid(Invalid::new("data", rule.to_string()))
}

/// Takes in an identity from `export_identity` / `release_identity`: replaces whatever rows the
/// identity has here (so a retried import is harmless), seals its secrets under this database's
/// current key, and, on a partition, records that the identity lives here. Returns the number of
/// factors. Records no event. Superuser only.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn import_identity(data: Option<Jsonb>) -> Result<i64, ErrorReport> {
    super::require_superuser("import an identity")?;
    let data = required("data", data)?;
    Ok(Spi::connect_mut(|client| -> TotpResult<i64> {
        let header = db::exec(client, &HEADER, &[arg(data)])?;
        let header = header.first();
        if db::get::<String>(&header, 1)?.as_deref() != Some(FORMAT) {
            return Err(invalid_document(
                "must be a document from totp.export_identity (format totp_verify.identity.v1)",
            ));
        }
        let identity: String = db::get(&header, 2)?.ok_or_else(|| invalid_document("must name its identity"))?;
        validate::identity(&identity)?;
        if db::req::<i64>(&header, 3)? != 0 {
            return Err(invalid_document("must hold rows of its identity only"));
        }
        if let Some(sid) = db::get::<String>(&header, 4)? {
            return Err(TotpError::ServiceNotFound { sid });
        }
        // Challenges have no foreign key to their factor: a document's must belong to its own
        // verified factors (only those have challenges).
        if db::req::<i64>(&header, 5)? != 0 {
            return Err(invalid_document("must hold challenges of its verified factors only"));
        }
        let secrets: Vec<(String, Option<String>)> = db::exec(client, &SECRETS, &[arg(data)])?
            .map(|row| Ok((db::req_at(&row, 1)?, row.get::<String>(2)?)))
            .collect::<TotpResult<_>>()?;
        delete_rows(client, &identity)?;
        db::exec(client, &INSERT_ENTITIES, &[arg(data)])?;
        db::exec(client, &INSERT_FACTORS, &[arg(data)])?;
        db::exec(client, &INSERT_CHALLENGES, &[arg(data)])?;
        for (sid, secret) in &secrets {
            let secret = secret.as_deref().ok_or_else(|| invalid_document("must hold every factor's secret"))?;
            let secret = zeroize::Zeroizing::new(
                base32::decode(secret).map_err(|_| invalid_document("must hold secrets in base32"))?,
            );
            let (key_id, sealed) = keyring::seal(client, sid, &secret)?;
            db::exec(client, &INSERT_SECRET, &[arg(identity.as_str()), arg(sid.as_str()), arg(key_id), arg(sealed)])?;
        }
        if let Some((here, part_count)) = super::partitions::current(client)? {
            place(client, &identity, here, part_count)?;
        }
        let count = db::exec(client, &COUNT_FACTORS, &[arg(identity.as_str())])?;
        db::req(&count.first(), 1)
    })?)
}
