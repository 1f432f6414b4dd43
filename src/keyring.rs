//! The keys that seal secrets (SPEC §8), read from the key file once per backend.
//!
//! The file is found through `totp_verify.key_file` or, by default, in the data directory. It
//! is created (mode 0600, exclusively) on first use only while `totp_private.keys` is empty: once
//! a secret has been sealed, a missing file is an error that names the setting, never a silent
//! new key that would make every existing factor fail.

use std::cell::RefCell;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

use totp_core::keyfile::{self, Key};
use totp_core::sealed;
use zeroize::Zeroizing;

use pgrx::spi::SpiClient;

use crate::db::{self, Sql, INT8};
use crate::error::{TotpError, TotpResult};
use crate::guc;

const DEFAULT_FILE_NAME: &str = "totp_verify.key";

struct Loaded {
    path: PathBuf,
    /// (modification time, length, inode) when read, to notice a rotation by another backend.
    stamp: (i64, u64, u64),
    keys: Vec<(i64, Key)>,
}

thread_local! {
    static LOADED: RefCell<Option<Loaded>> = const { RefCell::new(None) };
}

/// Where the key file is: the setting, or the default in the data directory.
pub fn key_file_path() -> PathBuf {
    match guc::key_file() {
        Some(path) => PathBuf::from(path),
        None => {
            // SAFETY: DataDir is set by the postmaster before any backend runs SQL.
            let data_dir = unsafe { std::ffi::CStr::from_ptr(pgrx::pg_sys::DataDir) };
            PathBuf::from(data_dir.to_string_lossy().into_owned()).join(DEFAULT_FILE_NAME)
        }
    }
}

fn unavailable(path: &std::path::Path, why: impl std::fmt::Display) -> TotpError {
    TotpError::KeyFileUnavailable {
        reason: format!(
            "Key file {} (setting totp_verify.key_file): {why}.",
            path.display()
        ),
    }
}

fn stamp(meta: &fs::Metadata) -> (i64, u64, u64) {
    (
        meta.mtime_nsec() + meta.mtime() * 1_000_000_000,
        meta.len(),
        meta.ino(),
    )
}

fn read(path: &std::path::Path) -> TotpResult<Loaded> {
    let meta = fs::metadata(path).map_err(|e| unavailable(path, e))?;
    let text = Zeroizing::new(fs::read_to_string(path).map_err(|e| unavailable(path, e))?);
    let keys = keyfile::parse(&text).map_err(|e| unavailable(path, e))?;
    Ok(Loaded {
        path: path.to_path_buf(),
        stamp: stamp(&meta),
        keys,
    })
}

/// Writes a new key file atomically (temporary file, fsync, rename), mode 0600.
pub fn write_file(path: &std::path::Path, keys: &[(i64, Key)]) -> TotpResult<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let text = keyfile::render(keys);
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
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

static COUNT_KEYS: Sql = Sql {
    text: "SELECT pg_catalog.count(*) FROM totp_private.keys",
    params: &[],
};

static RECORD_KEY: Sql = Sql {
    text: "INSERT INTO totp_private.keys (key_id, state, date_created) \
           VALUES ($1, 'current', pg_catalog.now()) ON CONFLICT (key_id) DO NOTHING",
    params: &[INT8],
};

fn create_first_key(client: &mut SpiClient<'_>, path: &std::path::Path) -> TotpResult<()> {
    let used: i64 = db::req(&db::exec(client, &COUNT_KEYS, &[])?.first(), 1)?;
    if used > 0 {
        return Err(unavailable(
            path,
            format!(
                "the file does not exist, but {used} key(s) have sealed secrets in this database"
            ),
        ));
    }
    let (id, key) = keyfile::generate();
    let text = keyfile::render(&[(id, key)]);
    // create_new: if two backends race, one creates and the other reads what it wrote.
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut file) => {
            file.write_all(text.as_bytes())
                .map_err(|e| unavailable(path, e))?;
            file.sync_all().map_err(|e| unavailable(path, e))?;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(unavailable(path, e)),
    }
}

/// Runs `f` over the loaded keys, (re)reading the file when it is not loaded, when the path
/// changed, or when `fresh` asks for a check that the file has not changed since.
fn with_keys<T>(fresh: bool, f: impl FnOnce(&[(i64, Key)]) -> T) -> TotpResult<T> {
    with_keys_creating(None, fresh, f)
}

/// As [`with_keys`]; with a client, a missing default key file is created first (see
/// [`create_first_key`]).
fn with_keys_creating<T>(
    client: Option<&mut SpiClient<'_>>,
    fresh: bool,
    f: impl FnOnce(&[(i64, Key)]) -> T,
) -> TotpResult<T> {
    let path = key_file_path();
    let stale = LOADED.with(|cell| match cell.borrow().as_ref() {
        None => true,
        Some(loaded) if loaded.path != path => true,
        Some(loaded) if fresh => fs::metadata(&path)
            .map(|m| stamp(&m) != loaded.stamp)
            .unwrap_or(true),
        Some(_) => false,
    });
    if stale {
        if let Some(client) = client.filter(|_| !path.exists() && guc::key_file().is_none()) {
            create_first_key(client, &path)?;
        }
        let loaded = read(&path)?;
        LOADED.with(|cell| *cell.borrow_mut() = Some(loaded));
    }
    Ok(LOADED.with(|cell| f(&cell.borrow().as_ref().expect("loaded above").keys)))
}

/// The current key (the file's last), checking first that the file has not been rotated, and
/// creating the file on first use.
pub fn current(client: &mut SpiClient<'_>) -> TotpResult<(i64, Key)> {
    with_keys_creating(Some(client), true, |keys| {
        let (id, key) = keys
            .last()
            .expect("a parsed key file holds at least one key");
        (*id, key.clone())
    })
}

/// All keys in the file, oldest first.
pub fn all() -> TotpResult<Vec<(i64, Key)>> {
    with_keys(true, |keys| keys.to_vec())
}

fn find(keys: &[(i64, Key)], id: i64) -> Option<Key> {
    keys.iter()
        .find(|(k, _)| *k == id)
        .map(|(_, key)| key.clone())
}

/// The key with this id: from the cache, else from a fresh read (another backend may have
/// rotated).
pub fn by_id(id: i64) -> TotpResult<Key> {
    if let Some(key) = with_keys(false, |keys| find(keys, id))? {
        return Ok(key);
    }
    forget();
    with_keys(false, |keys| find(keys, id))?.ok_or(TotpError::SecretUndecryptable { key_id: id })
}

/// Seals a secret for `factor_sid` under the current key: (key id, sealed bytes).
pub fn seal(
    client: &mut SpiClient<'_>,
    factor_sid: &str,
    secret: &[u8],
) -> TotpResult<(i64, Vec<u8>)> {
    let (id, key) = current(client)?;
    db::exec(client, &RECORD_KEY, &[db::arg(id)])?;
    Ok((id, sealed::seal(&key, factor_sid.as_bytes(), secret)))
}

/// Opens the secret of `factor_sid`; a wrong key or a moved ciphertext is an error, never a
/// wrong code.
pub fn open(factor_sid: &str, key_id: i64, sealed_secret: &[u8]) -> TotpResult<Zeroizing<Vec<u8>>> {
    let key = by_id(key_id)?;
    sealed::open(&key, factor_sid.as_bytes(), sealed_secret)
        .map_err(|_| TotpError::SecretUndecryptable { key_id })
}
