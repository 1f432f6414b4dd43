//! The keys that seal secrets (SPEC §8), read from the key file once per backend.
//!
//! Each database has its own key file, `totp_verify-<keyring id>.key` in the data directory,
//! where the keyring id is a random name stored in `totp_private.keyring` (a name, never key
//! material). One file per database means a rotation or retirement in one database can never
//! remove a key another database still needs. A superuser may point `totp_verify.key_file` at
//! another file instead.
//!
//! Which key seals new secrets is the row of `totp_private.keys` in state `current`, not the
//! file's order. The file and the tables never disagree in a way that loses a secret:
//!
//! - **Files change only at commit.** Every change to a key file (first key, adoption after a
//!   restore, rotation, retirement) is staged in memory and written in the transaction's
//!   pre-commit step: temporary file, fsync, rename, fsync of the directory. A rollback, of the
//!   transaction or of the subtransaction that staged it, writes nothing; a failed write aborts
//!   the transaction. A crash after the write and before the commit leaves a file with a key the
//!   tables do not know (harmless, and the next `retire_keys` removes it) or without a key no
//!   secret used — never a file missing a key a committed secret needs.
//! - **Key changes serialize** on the keyring row (`FOR UPDATE`), held to the end of the
//!   transaction, past the pre-commit write.
//! - **A sealing holds its key.** Sealing takes `FOR KEY SHARE` on the current key's row until
//!   its transaction ends; retiring a key takes `FOR UPDATE` on it first, so it waits for every
//!   enrolment that may still commit a secret under that key, and then sees their rows.
//!
//! The first key is created on first use, but only while `totp_private.keys` is empty: once a
//! secret has been sealed, a missing file is an error that names the setting, never a silent new
//! key that would make every existing factor fail.
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
use pgrx::prelude::*;
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

/// A key file's new contents, written when the transaction commits.
struct Staged {
    subtransaction: pg_sys::SubTransactionId,
    path: PathBuf,
    keys: Vec<(i64, Key)>,
}

thread_local! {
    static LOADED: RefCell<Option<Loaded>> = const { RefCell::new(None) };
    static STAGED: RefCell<Vec<Staged>> = const { RefCell::new(Vec::new()) };
}

static KEYRING: Sql = Sql { text: "SELECT keyring_id, database_oid::int8 FROM totp_private.keyring", params: &[] };

static LOCK_KEYRING: Sql =
    Sql { text: "SELECT keyring_id FROM totp_private.keyring WHERE one_row FOR UPDATE", params: &[] };

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

// The lock keeps the key in the file until this transaction ends (see the module comment).
static CURRENT_FOR_SEALING: Sql =
    Sql { text: "SELECT key_id FROM totp_private.keys WHERE state = 'current' FOR KEY SHARE", params: &[] };

static CURRENT: Sql = Sql { text: "SELECT key_id FROM totp_private.keys WHERE state = 'current'", params: &[] };

static MAKE_CURRENT: Sql = Sql {
    text: "INSERT INTO totp_private.keys (key_id, state, date_created) VALUES ($1, 'current', pg_catalog.now()) \
           ON CONFLICT (key_id) DO UPDATE SET state = 'current'",
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

fn unavailable(path: &Path, why: impl std::fmt::Display) -> TotpError {
    TotpError::KeyFileUnavailable {
        reason: format!("Key file {} (setting totp_verify.key_file): {why}.", path.display()),
    }
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
        // Concurrent first uses wait here for the first to commit, then see its row.
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
    let won = db::exec(client, &ADOPT, &[arg(adopted_id.as_str()), arg(me)])?;
    if won.is_empty() {
        // Another backend of this database adopted first: use its file.
        let row = db::exec(client, &KEYRING, &[])?.first();
        return Ok(data_dir_file(&db::req::<String>(&row, 1)?));
    }
    let adopted = data_dir_file(&adopted_id);
    if source.exists() {
        stage(&adopted, read(&source)?.keys);
    }
    Ok(adopted)
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

/// Writes a key file atomically: temporary file (mode 0600), fsync, rename, fsync of the
/// directory, so a crash leaves either the old file or the new one.
fn write_file(path: &Path, keys: &[(i64, Key)]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let text = keyfile::render(keys);
    let result = (|| {
        let _ = fs::remove_file(&tmp);
        let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Stages `keys` as the new contents of the key file at `path`, written at commit.
pub fn stage(path: &Path, keys: Vec<(i64, Key)>) {
    // SAFETY: reads the current subtransaction's id.
    let subtransaction = unsafe { pg_sys::GetCurrentSubTransactionId() };
    STAGED.with(|staged| staged.borrow_mut().push(Staged { subtransaction, path: path.to_path_buf(), keys }));
}

/// The keys staged for `path` in this transaction, if any.
fn staged(path: &Path) -> Option<Vec<(i64, Key)>> {
    STAGED.with(|staged| staged.borrow().iter().rev().find(|s| s.path == path).map(|s| s.keys.clone()))
}

/// Drops the cached keys so the next use reads the file again.
fn forget() {
    LOADED.with(|cell| *cell.borrow_mut() = None);
}

/// Writes what the transaction staged, the last contents per file. An error aborts it.
fn write_staged() {
    let staged = STAGED.with(|staged| std::mem::take(&mut *staged.borrow_mut()));
    let mut written: Vec<&Path> = Vec::new();
    for entry in staged.iter().rev() {
        if written.contains(&entry.path.as_path()) {
            continue;
        }
        if let Err(e) = write_file(&entry.path, &entry.keys) {
            forget();
            let error: pgrx::pg_sys::panic::ErrorReport = unavailable(&entry.path, e).into();
            error.report(PgLogLevel::ERROR);
        }
        written.push(&entry.path);
    }
    if !written.is_empty() {
        forget();
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_transaction(event: pg_sys::XactEvent::Type, _arg: *mut std::ffi::c_void) {
    match event {
        pg_sys::XactEvent::XACT_EVENT_PRE_COMMIT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_PRE_COMMIT => write_staged(),
        pg_sys::XactEvent::XACT_EVENT_PRE_PREPARE if STAGED.with(|staged| !staged.borrow().is_empty()) => {
            STAGED.with(|staged| staged.borrow_mut().clear());
            pgrx::error!("cannot PREPARE a transaction that changes a totp_verify key file");
        }
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PARALLEL_ABORT => {
            STAGED.with(|staged| staged.borrow_mut().clear())
        }
        _ => {}
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subtransaction(
    event: pg_sys::SubXactEvent::Type,
    subtransaction: pg_sys::SubTransactionId,
    parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    STAGED.with(|staged| {
        let mut staged = staged.borrow_mut();
        match event {
            pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB => staged.retain(|s| s.subtransaction != subtransaction),
            pg_sys::SubXactEvent::SUBXACT_EVENT_COMMIT_SUB => {
                for s in staged.iter_mut().filter(|s| s.subtransaction == subtransaction) {
                    s.subtransaction = parent;
                }
            }
            _ => {}
        }
    });
}

/// Called from `_PG_init`: staged key files are written at commit and dropped on rollback.
pub fn init() {
    // SAFETY: registering backend-local callbacks once, at library load.
    unsafe {
        pg_sys::RegisterXactCallback(Some(on_transaction), std::ptr::null_mut());
        pg_sys::RegisterSubXactCallback(Some(on_subtransaction), std::ptr::null_mut());
    }
}

/// The keys of the file at `path`: as staged by this transaction, else from the backend's cache
/// unless the file changed, else read afresh.
pub fn keys_in(path: &Path) -> TotpResult<Vec<(i64, Key)>> {
    if let Some(keys) = staged(path) {
        return Ok(keys);
    }
    let fresh = LOADED.with(|cell| match cell.borrow().as_ref() {
        Some(loaded) if loaded.path == path => fs::metadata(path).map(|m| stamp(&m) == loaded.stamp).unwrap_or(false),
        _ => false,
    });
    if !fresh {
        let loaded = read(path)?;
        LOADED.with(|cell| *cell.borrow_mut() = Some(loaded));
    }
    Ok(LOADED.with(|cell| cell.borrow().as_ref().expect("loaded above").keys.clone()))
}

/// All keys of this database's key file, oldest first.
fn all(client: &mut SpiClient<'_>) -> TotpResult<Vec<(i64, Key)>> {
    keys_in(&key_file_path(client)?)
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
    find(&all(client)?, id).ok_or(TotpError::SecretUndecryptable { key_id: id })
}

/// Locks the keyring row for a key change, creating it first if needed; returns the key file.
pub fn lock_for_change(client: &mut SpiClient<'_>) -> TotpResult<PathBuf> {
    let path = key_file_path(client)?;
    // With totp_verify.key_file set, nothing else makes the keyring row; key changes must still
    // serialize on it (its keyring_id then names no file in use).
    // SAFETY: MyDatabaseId is set once the backend has connected to its database.
    let me = i64::from(unsafe { pg_sys::MyDatabaseId }.to_u32());
    db::exec(client, &CREATE_KEYRING, &[arg(random_keyring_id().as_str()), arg(me)])?;
    db::exec(client, &LOCK_KEYRING, &[])?;
    Ok(path)
}

// Whether totp.distribute() ran (the secrets are a distributed table). Asked only where Citus is
// installed: pg_dist_partition does not exist elsewhere.
static CITUS_INSTALLED: Sql =
    Sql { text: "SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus')", params: &[] };
static DISTRIBUTED: Sql = Sql {
    text: "SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition \
           WHERE logicalrelid = 'totp_private.factor_secrets'::pg_catalog.regclass)",
    params: &[],
};
static COORDINATOR: Sql = Sql { text: "SELECT pg_catalog.citus_is_coordinator()", params: &[] };

/// Whether this database's tables are distributed over Citus, and whether this node is the
/// coordinator (true where there is no Citus).
pub fn citus(client: &mut SpiClient<'_>) -> TotpResult<(bool, bool)> {
    let installed: bool = db::req(&db::exec(client, &CITUS_INSTALLED, &[])?.first(), 1)?;
    if !installed {
        return Ok((false, true));
    }
    let distributed: bool = db::req(&db::exec(client, &DISTRIBUTED, &[])?.first(), 1)?;
    let coordinator: bool = db::req(&db::exec(client, &COORDINATOR, &[])?.first(), 1)?;
    Ok((distributed, coordinator))
}

/// The current key's id, if the database has one yet.
pub fn current_id(client: &mut SpiClient<'_>) -> TotpResult<Option<i64>> {
    db::first(db::exec(client, &CURRENT, &[])?).map(|row| db::req(&row, 1)).transpose()
}

/// Makes the database's first key: the file's last key when the file exists (an administrator's
/// file, or one left by a crash), else a new key staged for commit. Under the keyring lock, so
/// concurrent first uses make one key.
fn first_key(client: &mut SpiClient<'_>) -> TotpResult<()> {
    let path = lock_for_change(client)?;
    if current_id(client)?.is_some() {
        return Ok(()); // another backend made it while this one waited for the lock
    }
    // On Citus the coordinator tells each node which key is current (totp.distribute(),
    // rotate_key()): guessing the file's last key could pick one the coordinator retires.
    if citus(client)?.0 {
        return Err(TotpError::NoCurrentKeyOnNode);
    }
    let existing = if staged(&path).is_some() || path.exists() { Some(keys_in(&path)?) } else { None };
    let id = match existing.as_deref().and_then(<[_]>::last) {
        Some((id, _)) => *id,
        None => {
            let used: i64 = db::req(&db::exec(client, &COUNT_KEYS, &[])?.first(), 1)?;
            if used > 0 || guc::key_file().is_some() {
                return Err(unavailable(
                    &path,
                    format!("the file does not exist, and {used} key(s) have sealed secrets in this database"),
                ));
            }
            let (id, key) = keyfile::generate();
            stage(&path, vec![(id, key)]);
            id
        }
    };
    db::exec(client, &MAKE_CURRENT, &[arg(id)])?;
    Ok(())
}

/// The current key, locked `FOR KEY SHARE` until this transaction ends so that no retirement
/// removes it while a secret sealed under it may still commit. Makes the first key if needed.
pub fn current_for_sealing(client: &mut SpiClient<'_>) -> TotpResult<(i64, Key)> {
    for _ in 0..2 {
        if let Some(row) = db::first(db::exec(client, &CURRENT_FOR_SEALING, &[])?) {
            let id: i64 = db::req(&row, 1)?;
            let path = key_file_path(client)?;
            return find(&keys_in(&path)?, id)
                .map(|key| (id, key))
                .ok_or_else(|| unavailable(&path, format!("the file lacks the current key {id}")));
        }
        first_key(client)?;
    }
    Err(TotpError::Internal("no current key after creating one".into()))
}

/// Seals a secret for `factor_sid` under the current key: (key id, sealed bytes).
pub fn seal(client: &mut SpiClient<'_>, factor_sid: &str, secret: &[u8]) -> TotpResult<(i64, Vec<u8>)> {
    let (id, key) = current_for_sealing(client)?;
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
