//! Key rotation (SPEC §8): `totp.rotate_key()` and `totp.retire_keys()`.
//!
//! Rotation stages a new current key for the key file, then re-seals every secret under it in
//! batches. Secrets live in `totp_private.factor_secrets`, apart from the factor rows that
//! verifications lock, so re-sealing never blocks a verification: until rotation commits, a
//! verification reads the previous ciphertext, which the previous key (still in the file) opens.
//! A key leaves the file only once no secret uses it — checked by `retire_keys()`, which
//! `rotate_key()` also runs first. How the file and the tables stay in agreement through
//! rollbacks, crashes and concurrent enrolments is in `keyring`. These are housekeeping
//! statements over all identities (SPEC §9 allows that off the request path).
//!
//! Neither function is SECURITY DEFINER: they run with the caller's rights, so the superuser
//! check below is about the caller (inside a SECURITY DEFINER function owned by a superuser it
//! would always pass), and a role without rights on totp_private could not run them anyway.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;
use std::path::Path;
use totp_core::keyfile;
use totp_core::sealed;

use crate::db::{self, arg, Sql, BYTEA, INT4, INT8, TEXT};
use crate::error::{TotpError, TotpResult};
use crate::keyring;

static KEY_IN_USE: Sql =
    Sql { text: "SELECT EXISTS (SELECT 1 FROM totp_private.factor_secrets WHERE key_id = $1)", params: &[INT8] };

static MARK: Sql = Sql {
    text: "INSERT INTO totp_private.keys (key_id, state, date_created) VALUES ($1, $2, pg_catalog.now()) \
           ON CONFLICT (key_id) DO UPDATE SET state = EXCLUDED.state",
    params: &[INT8, TEXT],
};

// Waits for every enrolment holding the key (FOR KEY SHARE, see keyring) to end.
static LOCK_KEY: Sql =
    Sql { text: "SELECT key_id FROM totp_private.keys WHERE key_id = $1 FOR UPDATE", params: &[INT8] };

static LOCK_PREVIOUS: Sql =
    Sql { text: "SELECT key_id FROM totp_private.keys WHERE state = 'previous' FOR UPDATE", params: &[] };

// A rotation to one key supersedes every other added one: it becomes previous, and retirement
// takes it out of the file once unused (an added key never sealed anything).
static DEMOTE: Sql = Sql {
    text: "UPDATE totp_private.keys SET state = 'previous' WHERE state IN ('current', 'added') AND key_id <> $1",
    params: &[INT8],
};

// Keyset order, so that a row that cannot be re-sealed is passed once, not fetched forever. No
// lock here: Citus cannot lock rows of a query over many shards ("could not run distributed query
// with FOR UPDATE/SHARE"), so each candidate is then locked by its own key (LOCK_ONE), a query on
// one identity that any node routes to the shard holding it.
static CANDIDATES: Sql = Sql {
    text: "SELECT identity, factor_sid FROM totp_private.factor_secrets \
           WHERE key_id <> $1 AND (identity, factor_sid) > ($3, $4) \
           ORDER BY identity, factor_sid LIMIT $2",
    params: &[INT8, INT4, TEXT, TEXT],
};

// SKIP LOCKED: a row another transaction holds (an enrolment re-sealing, a delete) is left for the
// late sweep or the next rotation rather than waited for; a row already re-sealed is skipped.
static LOCK_ONE: Sql = Sql {
    text: "SELECT key_id, sealed FROM totp_private.factor_secrets \
           WHERE identity = $1 AND factor_sid = $2 AND key_id <> $3 FOR UPDATE SKIP LOCKED",
    params: &[TEXT, TEXT, INT8],
};

static RESEAL: Sql = Sql {
    text: "UPDATE totp_private.factor_secrets SET key_id = $3, sealed = $4 \
           WHERE identity = $1 AND factor_sid = $2",
    params: &[TEXT, TEXT, INT8, BYTEA],
};

static ADDED: Sql = Sql { text: "SELECT key_id FROM totp_private.keys WHERE state = 'added'", params: &[] };

static KEY_STATE: Sql = Sql { text: "SELECT state FROM totp_private.keys WHERE key_id = $1", params: &[INT8] };

// A command on every Citus worker, each in a transaction of its own: (node, succeeded, result).
static ON_WORKERS: Sql = Sql {
    text: "SELECT w.nodename || ':' || w.nodeport, w.success, w.result \
           FROM pg_catalog.run_command_on_workers($1) w ORDER BY 1",
    params: &[TEXT],
};

struct WorkerAnswer {
    node: String,
    success: bool,
    result: String,
}

fn on_workers(client: &mut SpiClient<'_>, command: &str) -> TotpResult<Vec<WorkerAnswer>> {
    db::exec(client, &ON_WORKERS, &[arg(command)])?
        .map(|row| {
            Ok(WorkerAnswer { node: db::req_at(&row, 1)?, success: db::req_at(&row, 2)?, result: db::req_at(&row, 3)? })
        })
        .collect()
}

/// Runs `command` on every worker; an error naming the workers where it failed, if any.
fn on_every_worker(client: &mut SpiClient<'_>, what: &'static str, command: &str) -> TotpResult<()> {
    let failed: Vec<String> = on_workers(client, command)?
        .into_iter()
        .filter(|answer| !answer.success)
        .map(|answer| format!("{}: {}", answer.node, answer.result))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(TotpError::WorkerFailed { what, nodes: failed.join("; ") })
    }
}

/// Whether the tables are distributed over Citus; key changes there are the coordinator's.
fn distributed(client: &mut SpiClient<'_>, what: &'static str) -> TotpResult<bool> {
    let (distributed, coordinator) = keyring::citus(client)?;
    if distributed && !coordinator {
        return Err(TotpError::KeyChangeOnWorker { what });
    }
    Ok(distributed)
}

/// Key files decide which key material seals every secret: only superusers may change them,
/// whatever EXECUTE has been granted (for instance by `GRANT EXECUTE ON ALL FUNCTIONS`). Key
/// changes must also run at READ COMMITTED: after waiting for an enrolment to end they must see
/// the secret it committed, which an older snapshot would not.
fn require_key_manager(what: &'static str) -> TotpResult<()> {
    super::require_superuser(what)?;
    // SAFETY: reads the transaction's isolation level.
    if unsafe { pgrx::pg_sys::XactIsoLevel } > pgrx::pg_sys::XACT_READ_COMMITTED as i32 {
        return Err(TotpError::KeyChangeIsolation { what });
    }
    Ok(())
}

/// Removes from the key file (at commit) every key but the current one that no secret uses,
/// after waiting for the enrolments that hold it.
fn retire_unused(client: &mut SpiClient<'_>, path: &Path, cluster: bool) -> TotpResult<Vec<i64>> {
    let keys = keyring::keys_in(path)?;
    // On Citus each worker has its own current key, and its own enrolments holding it: never
    // retire a key a worker seals with or waits to.
    let mut worker_keys: Vec<i64> = Vec::new();
    if cluster {
        for answer in on_workers(
            client,
            "SELECT pg_catalog.array_to_string(pg_catalog.array_agg(key_id), ',') FROM totp_private.keys \
             WHERE state IN ('current', 'added')",
        )? {
            if !answer.success {
                return Err(TotpError::WorkerFailed { what: "retire keys", nodes: answer.node });
            }
            for id in answer.result.split(',').filter(|id| !id.is_empty()) {
                worker_keys.push(id.parse().map_err(|_| TotpError::Internal(format!("key id {id:?} from a worker")))?);
            }
        }
    }
    // Before any secret is sealed there is no current row; the file's last key is kept then.
    let current = keyring::current_id(client)?.or_else(|| keys.last().map(|(id, _)| *id));
    // A key added for a staged rotation is waiting to become current, not unused.
    let added: Vec<i64> = db::column(client, &ADDED, &[])?;
    let mut kept = Vec::new();
    let mut retired = Vec::new();
    for (id, key) in keys {
        if Some(id) == current || added.contains(&id) || worker_keys.contains(&id) {
            kept.push((id, key));
            continue;
        }
        if cluster {
            // Waits on every worker for the enrolments still holding the key (each holds its key's
            // row FOR KEY SHARE on its own node), as LOCK_KEY does here.
            let lock = format!("SELECT count(*) FROM (SELECT FROM totp_private.keys WHERE key_id = {id} FOR UPDATE) k");
            on_every_worker(client, "retire keys", &lock)?;
        }
        db::exec(client, &LOCK_KEY, &[arg(id)])?;
        let in_use: bool = db::req(&db::exec(client, &KEY_IN_USE, &[arg(id)])?.first(), 1)?;
        if in_use {
            kept.push((id, key));
        } else {
            db::exec(client, &MARK, &[arg(id), arg("retired")])?;
            retired.push(id);
        }
    }
    if !retired.is_empty() {
        keyring::stage(path, kept);
    }
    Ok(retired)
}

/// Removes keys no secret uses any more from the key file; returns their ids. Run it after a
/// `rotate_key()` has committed (rotate_key itself runs it first).
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn retire_keys() -> Result<Vec<i64>, ErrorReport> {
    require_key_manager("retire keys")?;
    Ok(Spi::connect_mut(|client| {
        let path = keyring::lock_for_change(client)?;
        let cluster = distributed(client, "retire keys")?;
        retire_unused(client, &path, cluster)
    })?)
}

/// Re-seals, `batch_size` at a time, every secret not yet under `new_id`: (re-sealed, left
/// unreadable). A secret that does not open (its key file entry lost, or a ciphertext moved from
/// another row) is left as it is and counted: rotation is not the place to destroy evidence, and
/// its key stays in the file because a secret still names it.
fn reseal_all(new_id: i64, new_key: &keyfile::Key, batch_size: i32) -> TotpResult<(i64, i64)> {
    let (mut resealed, mut unreadable) = (0i64, 0i64);
    let mut after = (String::new(), String::new());
    loop {
        // One SPI connection per batch bounds memory however many secrets there are.
        let fetched = Spi::connect_mut(|client| -> TotpResult<usize> {
            let rows: Vec<(String, String)> = db::exec(
                client,
                &CANDIDATES,
                &[arg(new_id), arg(batch_size), arg(after.0.as_str()), arg(after.1.as_str())],
            )?
            .map(|row| -> TotpResult<_> { Ok((db::req_at(&row, 1)?, db::req_at(&row, 2)?)) })
            .collect::<TotpResult<_>>()?;
            for (identity, factor_sid) in &rows {
                let locked =
                    db::exec(client, &LOCK_ONE, &[arg(identity.as_str()), arg(factor_sid.as_str()), arg(new_id)])?;
                let Some(row) = db::first(locked) else { continue };
                let (key_id, old): (i64, Vec<u8>) = (db::req(&row, 1)?, db::req(&row, 2)?);
                let secret = match keyring::open(client, factor_sid, key_id, &old) {
                    Ok(secret) => secret,
                    Err(TotpError::SecretUndecryptable { .. }) => {
                        unreadable += 1;
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let new = sealed::seal(new_key, factor_sid.as_bytes(), &secret);
                db::exec(client, &RESEAL, &[arg(identity.as_str()), arg(factor_sid.as_str()), arg(new_id), arg(new)])?;
                resealed += 1;
            }
            if let Some(last) = rows.last() {
                after = last.clone();
            }
            Ok(rows.len())
        })?;
        if fetched == 0 {
            return Ok((resealed, unreadable));
        }
    }
}

/// Makes a new key current and re-seals every secret under it, `batch_size` rows at a time;
/// returns the new key's id, how many secrets were re-sealed, how many could not be opened
/// (left as they are), and the keys retired first. With `key_id`, the new key is one that
/// `add_key()` put in the key file beforehand: on Citus it must be, and every worker's key file
/// must hold it, so that no node is asked to open or seal under a key it does not have.
#[allow(clippy::type_complexity)] // pgrx reads the column names from this very signature
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn rotate_key(
    batch_size: default!(Option<i32>, 1000),
    key_id: default!(Option<i64>, "NULL"),
) -> Result<
    TableIterator<
        'static,
        (name!(new_key_id, i64), name!(resealed, i64), name!(unreadable, i64), name!(retired_key_ids, Vec<i64>)),
    >,
    ErrorReport,
> {
    require_key_manager("rotate keys")?;
    let batch_size = crate::api::required("batch_size", batch_size)?;
    if batch_size < 1 {
        return Err(
            TotpError::invalid_service(totp_core::validate::Invalid::new("batch_size", "must be positive")).into()
        );
    }
    let (new_id, new_key, retired) = Spi::connect_mut(|client| -> TotpResult<_> {
        let path = keyring::lock_for_change(client)?;
        keyring::current_for_sealing(client)?; // makes the first key if this database has none yet
        let cluster = distributed(client, "rotate keys")?;
        if cluster {
            let Some(id) = key_id else { return Err(TotpError::RotationNeedsAddedKey) };
            // The workers whose key file lacks the key, or that could not say.
            let lacking: Vec<String> = on_workers(client, &format!("SELECT {id} = ANY (totp.key_file_ids())"))?
                .into_iter()
                .filter(|answer| !answer.success || answer.result != "t")
                .map(|answer| answer.node)
                .collect();
            if !lacking.is_empty() {
                return Err(TotpError::KeyNotOnEveryNode { key_id: id, nodes: lacking.join(", ") });
            }
        }
        let retired = retire_unused(client, &path, cluster)?;
        let mut keys = keyring::keys_in(&path)?;
        let (new_id, new_key) = match key_id {
            Some(id) => {
                let key = keys.iter().find(|(k, _)| *k == id).map(|(_, key)| key.clone());
                let state: Option<String> =
                    db::first(db::exec(client, &KEY_STATE, &[arg(id)])?).map(|row| db::req(&row, 1)).transpose()?;
                match (key, state.as_deref()) {
                    // Added by add_key(), written into the file by an administrator, or a
                    // previous key made current again: the file holds it, so every node may.
                    (Some(key), None | Some("added" | "previous")) => (id, key),
                    (_, state) => return Err(TotpError::KeyNotAdded { key_id: id, state: state.map(str::to_owned) }),
                }
            }
            None => {
                let (id, key) = keyfile::generate();
                keys.push((id, key.clone()));
                keyring::stage(&path, keys);
                (id, key)
            }
        };
        if cluster {
            // Each worker keeps its own bookkeeping (see sql/distribute.sql): the key becomes
            // current there before the coordinator re-seals anything under it. Workers that made
            // it current stay so if another fails: safe, every node's file holds the key.
            on_every_worker(client, "rotate keys", &format!("SELECT totp.make_key_current({new_id})"))?;
        }
        db::exec(client, &MARK, &[arg(new_id), arg("current")])?;
        db::exec(client, &DEMOTE, &[arg(new_id)])?;
        Ok((new_id, new_key, retired))
    })?;

    let (resealed, _) = reseal_all(new_id, &new_key, batch_size)?;
    // Enrolments that read the previous key as current before this rotation made a new one may
    // still be sealing under it: wait for them (they hold it FOR KEY SHARE), then sweep again. New
    // enrolments seal under the new key once this commits; until then they wait here too.
    Spi::connect_mut(|client| db::exec(client, &LOCK_PREVIOUS, &[]).map(drop))?;
    let (late, unreadable) = reseal_all(new_id, &new_key, batch_size)?;
    let resealed = resealed + late;
    Ok(TableIterator::once((new_id, resealed, unreadable, retired)))
}

/// Adds a new key to the key file (at commit) without making it current, for a rotation in
/// stages: copy the file to every node, then `rotate_key(key_id => …)`. Returns its id.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn add_key() -> Result<i64, ErrorReport> {
    require_key_manager("add keys")?;
    Ok(Spi::connect_mut(|client| -> TotpResult<i64> {
        let path = keyring::lock_for_change(client)?;
        distributed(client, "add keys")?;
        keyring::current_for_sealing(client)?; // the first key comes first
        let mut keys = keyring::keys_in(&path)?;
        let (id, key) = keyfile::generate();
        keys.push((id, key));
        keyring::stage(&path, keys);
        db::exec(client, &MARK, &[arg(id), arg("added")])?;
        Ok(id)
    })?)
}

/// The ids of the keys in this database's key file (never the keys), oldest first: what
/// `totp.distribute()` and a staged rotation compare across nodes.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn key_file_ids() -> Result<Vec<i64>, ErrorReport> {
    require_key_manager("read key ids")?;
    Ok(Spi::connect_mut(|client| -> TotpResult<Vec<i64>> {
        let path = keyring::key_file_path(client)?;
        Ok(keyring::keys_in(&path)?.into_iter().map(|(id, _)| id).collect())
    })?)
}

/// Makes a key of this node's key file current here and waits for the enrolments still sealing
/// under the previous one; what `rotate_key()` on a Citus coordinator runs on every worker. The
/// secrets are re-sealed by the coordinator.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn make_key_current(key_id: Option<i64>) -> Result<(), ErrorReport> {
    require_key_manager("rotate keys")?;
    let id = crate::api::required("key_id", key_id)?;
    Ok(Spi::connect_mut(|client| -> TotpResult<()> {
        let path = keyring::lock_for_change(client)?;
        if !keyring::keys_in(&path)?.iter().any(|(k, _)| *k == id) {
            return Err(TotpError::KeyNotAdded { key_id: id, state: None });
        }
        db::exec(client, &MARK, &[arg(id), arg("current")])?;
        db::exec(client, &DEMOTE, &[arg(id)])?;
        db::exec(client, &LOCK_PREVIOUS, &[])?;
        Ok(())
    })?)
}
