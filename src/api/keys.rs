//! Key rotation (SPEC §8): `totp.rotate_key()` and `totp.retire_keys()`.
//!
//! Rotation writes a new current key to the key file, then re-seals every secret under it in
//! batches. Secrets live in `totp_private.factor_secrets`, apart from the factor rows that
//! verifications lock, so re-sealing never blocks a verification: until rotation commits, a
//! verification reads the previous ciphertext, which the previous key (still in the file)
//! opens. A key leaves the file only once no secret uses it — checked by `retire_keys()`, which
//! `rotate_key()` also runs first. These are housekeeping statements over all identities
//! (SPEC §9 allows that off the request path).

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use totp_core::keyfile;
use totp_core::sealed;

use crate::db::{self, arg, Sql, BYTEA, INT4, INT8, TEXT};
use crate::error::{TotpError, TotpResult};
use crate::keyring;

static KEY_IN_USE: Sql = Sql {
    text: "SELECT EXISTS (SELECT 1 FROM totp_private.factor_secrets WHERE key_id = $1)",
    params: &[INT8],
};

static MARK: Sql = Sql {
    text: "INSERT INTO totp_private.keys (key_id, state, date_created) VALUES ($1, $2, pg_catalog.now()) \
           ON CONFLICT (key_id) DO UPDATE SET state = EXCLUDED.state",
    params: &[INT8, TEXT],
};

static DEMOTE: Sql = Sql {
    text:
        "UPDATE totp_private.keys SET state = 'previous' WHERE state = 'current' AND key_id <> $1",
    params: &[INT8],
};

static BATCH: Sql = Sql {
    text: "SELECT identity, factor_sid, key_id, sealed FROM totp_private.factor_secrets \
           WHERE key_id <> $1 LIMIT $2 FOR UPDATE SKIP LOCKED",
    params: &[INT8, INT4],
};

static RESEAL: Sql = Sql {
    text: "UPDATE totp_private.factor_secrets SET key_id = $3, sealed = $4 \
           WHERE identity = $1 AND factor_sid = $2",
    params: &[TEXT, TEXT, INT8, BYTEA],
};

/// Removes from the key file every key but the current one that no secret uses.
fn retire_unused() -> TotpResult<Vec<i64>> {
    let keys = keyring::all()?;
    let current = keys.last().map(|(id, _)| *id);
    let mut kept = Vec::new();
    let mut retired = Vec::new();
    Spi::connect_mut(|client| -> TotpResult<()> {
        for (id, key) in keys {
            let in_use: bool = db::req(&db::exec(client, &KEY_IN_USE, &[arg(id)])?.first(), 1)?;
            if in_use || Some(id) == current {
                kept.push((id, key));
            } else {
                db::exec(client, &MARK, &[arg(id), arg("retired")])?;
                retired.push(id);
            }
        }
        Ok(())
    })?;
    if !retired.is_empty() {
        keyring::write_file(&keyring::key_file_path(), &kept)?;
    }
    Ok(retired)
}

/// Removes keys no secret uses any more from the key file; returns their ids. Run it after a
/// `rotate_key()` has committed (rotate_key itself runs it first).
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn retire_keys() -> Result<Vec<i64>, ErrorReport> {
    Ok(retire_unused()?)
}

/// Makes a new key current and re-seals every secret under it, `batch_size` rows at a time;
/// returns the new key's id, how many secrets were re-sealed, and the keys retired first.
#[pg_extern(volatile, parallel_unsafe, security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn rotate_key(
    batch_size: default!(i32, 1000),
) -> Result<
    TableIterator<
        'static,
        (
            name!(new_key_id, i64),
            name!(resealed, i64),
            name!(retired_key_ids, Vec<i64>),
        ),
    >,
    ErrorReport,
> {
    if batch_size < 1 {
        return Err(
            TotpError::invalid_service(totp_core::validate::Invalid::new(
                "batch_size",
                "must be positive",
            ))
            .into(),
        );
    }
    // Creates the key file if this database has none yet.
    Spi::connect_mut(|client| keyring::current(client).map(|_| ()))?;
    let retired = retire_unused()?;
    let mut keys = keyring::all()?;
    let (new_id, new_key) = keyfile::generate();
    keys.push((new_id, new_key.clone()));
    keyring::write_file(&keyring::key_file_path(), &keys)?;
    Spi::connect_mut(|client| -> TotpResult<()> {
        db::exec(client, &MARK, &[arg(new_id), arg("current")])?;
        db::exec(client, &DEMOTE, &[arg(new_id)])?;
        Ok(())
    })?;

    let mut resealed = 0i64;
    loop {
        // One SPI connection per batch bounds memory however many secrets there are.
        let done = Spi::connect_mut(|client| -> TotpResult<i64> {
            let rows: Vec<(String, String, i64, Vec<u8>)> =
                db::exec(client, &BATCH, &[arg(new_id), arg(batch_size)])?
                    .map(|row| -> TotpResult<_> {
                        Ok((
                            db::req_at(&row, 1)?,
                            db::req_at(&row, 2)?,
                            db::req_at(&row, 3)?,
                            db::req_at(&row, 4)?,
                        ))
                    })
                    .collect::<TotpResult<_>>()?;
            for (identity, factor_sid, key_id, old) in &rows {
                let secret = keyring::open(factor_sid, *key_id, old)?;
                let new = sealed::seal(&new_key, factor_sid.as_bytes(), &secret);
                db::exec(
                    client,
                    &RESEAL,
                    &[
                        arg(identity.as_str()),
                        arg(factor_sid.as_str()),
                        arg(new_id),
                        arg(new),
                    ],
                )?;
            }
            Ok(rows.len() as i64)
        })?;
        if done == 0 {
            break;
        }
        resealed += done;
    }
    Ok(TableIterator::once((new_id, resealed, retired)))
}
