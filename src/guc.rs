//! Settings, all under the reserved `totp_verify.` prefix.

use std::ffi::CString;

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// `totp_verify.key_file`: where the secret-sealing keys live. Empty means each database's own
/// `$PGDATA/totp_verify-<keyring id>.key`, created on first use. Superuser-only (PGC_SUSET), because
/// pointing it elsewhere decides which key material seals every factor.
pub static KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

pub fn init() {
    GucRegistry::define_string_guc(
        c"totp_verify.key_file",
        c"Path of the key file that seals TOTP secrets (default: one file per database in the data directory).",
        c"The file holds AES-256 keys, one per line; the last is current. It is created with mode 0600 \
          on first use when it does not exist and no secret has been sealed yet.",
        &KEY_FILE,
        GucContext::Suset,
        GucFlags::default(),
    );
    // Typos such as totp_verify.keyfile become errors instead of silently ignored settings.
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"totp_verify".as_ptr()) };
}

/// The configured key file path, if one is set.
pub fn key_file() -> Option<String> {
    KEY_FILE.get().and_then(|path| path.into_string().ok()).filter(|path| !path.is_empty())
}
