//! The keys that seal secrets (SPEC §8), read from the key file once per backend.
//!
//! Each database has its own key file, `totp_verify-<keyring id>.key` in the data directory,
//! where the keyring id is a random name stored in `totp_private.keyring` (a name, never key
//! material). One file per database means a rotation or retirement in one database can never
//! remove a key another database still needs. A superuser may point `totp_verify.key_file` at
//! another file instead.
//!
//! The file is created (mode 0600, exclusively) on first use, but only while
//! `totp_private.keys` is empty: once a secret has been sealed, a missing file is an error that
//! names the setting, never a silent new key that would make every existing factor fail.
//!
//! A database restored from a dump (into this cluster or another) carries the keyring row of
//! its source. On first use it notices the row names another database, copies the source's
//! key file to a file of its own, and adopts that; from then on the two are independent.

use std::cell::RefCell;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use pgrx::pg_sys;
use pgrx::spi::SpiClient;
use totp_core::keyfile::{self, Key};
use totp_core::sealed;
use zeroize::Zeroizing;

use crate::db::{self, arg, Sql, INT8, TEXT};
use crate::error::{TotpError, TotpResult};
use crate::guc;

struct Loaded {
    /// The `totp_verify.key_file` setting the file was found through (None: the default).
    setting: Option<String>,
    path: PathBuf,
    /// (modification time, length, inode) when read, to notice a rotation by another backend.
    stamp: (i64, u64, u64),
    keys: Vec<(i64, Key)>,
}

thread_local! {
    static LOADED: RefCell<Option<Loaded>> = const { RefCell::new(None) };
}

static KEYRING: Sql = Sql { text: "SELECT keyring_id, database_oid::int8 FROM totp_private.keyring", params: &[] };

static CREATE_KEYRING: Sql = Sql {
    text: "INSERT INTO totp_private.keyring (keyring_id, database_oid) VALUES ($1, $2::oid) \
           ON CONFLICT (one_row) DO NOTHING",
    params: &[TEXT, INT8],
};

static ADOPT: Sql = Sql {
    text: "UPDATE totp_private.keyring SET keyring_id = $1, database_oid = $2::oid \
           WHERE database_oid <> $2::oid RETURNING keyring_id",
    params: &[TEXT, INT8],
};

static COUNT_KEYS: Sql = Sql { text: "SELECT pg_catalog.count(*) FROM totp_private.keys", params: &[] };

static RECORD_KEY: Sql = Sql {
    text: "INSERT INTO totp_private.keys (key_id, state, date_created) \
           VALUES ($1, 'current', pg_catalog.now()) ON CONFLICT (key_id) DO NOTHING",
    params: &[INT8],
};

fn data_dir_file(keyring_id: &str) -> PathBuf {
    // SAFETY: DataDir is set by the postmaster before any backend runs SQL.
    let data_dir = unsafe { std::ffi::CStr::from_ptr(pg_sys::DataDir) };
    PathBuf::from(data_dir.to_string_lossy().into_owned()).join(format!("totp_verify-{keyring_id}.key"))
}

fn random_keyring_id() -> String {
    totp_core::random::hex(16)
}

/// Where this database's key file is: the setting, or its own file in the data directory
/// (adopting a file of its own first if it was restored from another database).
pub fn key_file_path(client: &mut SpiClient<'_>) -> TotpResult<PathBuf> {
    if let Some(path) = guc::key_file() {
        return Ok(PathBuf::from(path));
    }
    // SAFETY: MyDatabaseId is set once the backend has connected to its database.
    let me = i64::from(unsafe { pg_sys::MyDatabaseId }.to_u32());
    let mut found = db::first(db::exec(client, &KEYRING, &[])?);
    if found.is_none() {
        db::exec(client, &CREATE_KEYRING, &[arg(random_keyring_id().as_str()), arg(me)])?;
        found = db::first(db::exec(client, &KEYRING, &[])?);
    }
    let row = found.ok_or_else(|| TotpError::Internal("totp_private.keyring is empty".into()))?;
    let keyring_id: String = db::req(&row, 1)?;
    let owner: i64 = db::req(&row, 2)?;
    if owner == me {
        return Ok(data_dir_file(&keyring_id));
    }
    let source = data_dir_file(&keyring_id);
    let adopted_id = random_keyring_id();
    let adopted = data_dir_file(&adopted_id);
    if source.exists() {
        copy_private(&source, &adopted)?;
    }
    let won = db::exec(client, &ADOPT, &[arg(adopted_id.as_str()), arg(me)])?;
    if won.is_empty() {
        // Another backend of this database adopted first: use its file.
        let _ = fs::remove_file(&adopted);
        let row = db::exec(client, &KEYRING, &[])?.first();
        return Ok(data_dir_file(&db::req::<String>(&row, 1)?));
    }
    Ok(adopted)
}

fn copy_private(from: &Path, to: &Path) -> TotpResult<()> {
    let text = Zeroizing::new(fs::read(from).map_err(|e| unavailable(from, e))?);
    let mut file =
        fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(to).map_err(|e| unavailable(to, e))?;
    file.write_all(&text).and_then(|_| file.sync_all()).map_err(|e| unavailable(to, e))
}

fn unavailable(path: &Path, why: impl std::fmt::Display) -> TotpError {
    TotpError::KeyFileUnavailable {
        reason: format!("Key file {} (setting totp_verify.key_file): {why}.", path.display()),
    }
}

fn stamp(meta: &fs::Metadata) -> (i64, u64, u64) {
    (meta.mtime_nsec() + meta.mtime() * 1_000_000_000, meta.len(), meta.ino())
}

fn read(path: &Path) -> TotpResult<Loaded> {
    let meta = fs::metadata(path).map_err(|e| unavailable(path, e))?;
    let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| unavailable(path, e))?);
    let keys = keyfile::parse(&text).map_err(|e| unavailable(path, e))?;
    Ok(Loaded { setting: guc::key_file(), path: path.to_path_buf(), stamp: stamp(&meta), keys })
}

/// Writes a new key file atomically (temporary file, fsync, rename), mode 0600.
pub fn write_file(path: &Path, keys: &[(i64, Key)]) -> TotpResult<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let text = keyfile::render(keys);
    let result = (|| {
        let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        unavailable(path, e)
    })?;
    forget();
    Ok(())
}

/// Drops the cached keys so the next use reads the file again.
pub fn forget() {
    LOADED.with(|cell| *cell.borrow_mut() = None);
}

fn create_first_key(client: &mut SpiClient<'_>, path: &Path) -> TotpResult<()> {
    let used: i64 = db::req(&db::exec(client, &COUNT_KEYS, &[])?.first(), 1)?;
    if used > 0 {
        return Err(unavailable(
            path,
            format!("the file does not exist, but {used} key(s) have sealed secrets in this database"),
        ));
    }
    let (id, key) = keyfile::generate();
    let text = keyfile::render(&[(id, key)]);
    // create_new: if two backends race, one creates and the other reads what it wrote.
    match fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(mut file) => file.write_all(text.as_bytes()).and_then(|_| file.sync_all()).map_err(|e| unavailable(path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(unavailable(path, e)),
    }
}

/// Loads this database's key file (creating it on first use) unless the cache already holds
/// it unchanged, then runs `f` over the keys.
fn with_keys<T>(client: &mut SpiClient<'_>, f: impl FnOnce(&[(i64, Key)]) -> T) -> TotpResult<T> {
    let path = key_file_path(client)?;
    let stale = LOADED.with(|cell| match cell.borrow().as_ref() {
        Some(loaded) if loaded.path == path => fs::metadata(&path).map(|m| stamp(&m) != loaded.stamp).unwrap_or(true),
        _ => true,
    });
    if stale {
        if !path.exists() && guc::key_file().is_none() {
            create_first_key(client, &path)?;
        }
        let loaded = read(&path)?;
        LOADED.with(|cell| *cell.borrow_mut() = Some(loaded));
    }
    Ok(LOADED.with(|cell| f(&cell.borrow().as_ref().expect("loaded above").keys)))
}

/// The current key (the file's last).
pub fn current(client: &mut SpiClient<'_>) -> TotpResult<(i64, Key)> {
    with_keys(client, |keys| {
        let (id, key) = keys.last().expect("a parsed key file holds at least one key");
        (*id, key.clone())
    })
}

/// All keys in the file, oldest first.
pub fn all(client: &mut SpiClient<'_>) -> TotpResult<Vec<(i64, Key)>> {
    with_keys(client, |keys| keys.to_vec())
}

fn find(keys: &[(i64, Key)], id: i64) -> Option<Key> {
    keys.iter().find(|(k, _)| *k == id).map(|(_, key)| key.clone())
}

/// The key with this id: from the backend's cache (the verification path touches neither the
/// file nor the keyring row) unless `totp_verify.key_file` changed, else from a fresh read.
pub fn by_id(client: &mut SpiClient<'_>, id: i64) -> TotpResult<Key> {
    let setting = guc::key_file();
    let cached = LOADED.with(|cell| {
        cell.borrow().as_ref().filter(|loaded| loaded.setting == setting).and_then(|loaded| find(&loaded.keys, id))
    });
    if let Some(key) = cached {
        return Ok(key);
    }
    with_keys(client, |keys| find(keys, id))?.ok_or(TotpError::SecretUndecryptable { key_id: id })
}

/// Seals a secret for `factor_sid` under the current key: (key id, sealed bytes).
pub fn seal(client: &mut SpiClient<'_>, factor_sid: &str, secret: &[u8]) -> TotpResult<(i64, Vec<u8>)> {
    let (id, key) = current(client)?;
    db::exec(client, &RECORD_KEY, &[arg(id)])?;
    Ok((id, sealed::seal(&key, factor_sid.as_bytes(), secret)))
}

/// Opens the secret of `factor_sid`; a wrong key or a moved ciphertext is an error, never a
/// wrong code.
pub fn open(
    client: &mut SpiClient<'_>,
    factor_sid: &str,
    key_id: i64,
    sealed_secret: &[u8],
) -> TotpResult<Zeroizing<Vec<u8>>> {
    let key = by_id(client, key_id)?;
    sealed::open(&key, factor_sid.as_bytes(), sealed_secret).map_err(|_| TotpError::SecretUndecryptable { key_id })
}
