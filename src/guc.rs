//! Settings, all under the reserved `totp_verify.` prefix.

use std::ffi::CString;

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// `totp_verify.key_file`: where the secret-sealing keys live. Empty means each database's own
/// `$PGDATA/totp_verify-<keyring id>.key`, created on first use. Superuser-only (PGC_SUSET), because
/// pointing it elsewhere decides which key material seals every factor.
pub static KEY_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// `totp_verify.guess_slots`: factors whose wrong codes shared memory can count at once (see
/// `guess_limit`). Read at server start.
pub static GUESS_SLOTS: GucSetting<i32> = GucSetting::<i32>::new(131_072);

/// `totp_verify.allow_unbounded_rollbacks`: lets code checks run without the shared counters
/// (library not preloaded), so that wrong codes in rolled-back transactions go uncounted.
/// Superuser-only: it weakens the guessing bound of every factor.
pub static ALLOW_UNBOUNDED_ROLLBACKS: GucSetting<bool> = GucSetting::<bool>::new(false);

/// `totp_verify.notify`: whether a change that records events also sends a payload-free
/// `NOTIFY totp_events` to wake listeners. Off by default: every committing NOTIFY takes the
/// server-wide notification queue lock (one run of bench/run section 6 measured 22 % of
/// create_challenge's throughput, a later one noise), and under Citus NOTIFY breaks two-phase
/// commit. Deliverers can poll totp.events.
pub static NOTIFY: GucSetting<bool> = GucSetting::<bool>::new(false);

pub fn init() {
    GucRegistry::define_string_guc(
        c"totp_verify.key_file",
        c"Path of the key file that seals TOTP secrets (default: one file per database in the data directory).",
        c"The file holds AES-256 keys, one per line. It is created with mode 0600 on first use when it \
          does not exist and no secret has been sealed yet.",
        &KEY_FILE,
        GucContext::Suset,
        GucFlags::default(),
    );
    // A server-start setting can only be defined while the postmaster preloads the library;
    // loaded later (not preloaded), the library has no shared memory for it to size anyway.
    // SAFETY: reads a postmaster global during _PG_init.
    if unsafe { pgrx::pg_sys::process_shared_preload_libraries_in_progress } {
        define_guess_slots();
    }
    GucRegistry::define_bool_guc(
        c"totp_verify.allow_unbounded_rollbacks",
        c"Check codes even without shared_preload_libraries, when rolled-back wrong codes go uncounted.",
        c"Off by default: without the shared counters, a caller that rolls back guesses for free.",
        &ALLOW_UNBOUNDED_ROLLBACKS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"totp_verify.notify",
        c"Send a payload-free NOTIFY totp_events when events are recorded (default off).",
        c"Listeners then read totp.events, which needs a grant; the notification carries no data.",
        &NOTIFY,
        GucContext::Suset,
        GucFlags::default(),
    );
    // Typos such as totp_verify.keyfile become errors instead of silently ignored settings
    // (PostgreSQL 14 can only warn about them).
    // SAFETY: called once from _PG_init, after this prefix's settings are defined.
    #[cfg(not(feature = "pg14"))]
    unsafe {
        pgrx::pg_sys::MarkGUCPrefixReserved(c"totp_verify".as_ptr())
    };
    #[cfg(feature = "pg14")]
    unsafe {
        pgrx::pg_sys::EmitWarningsOnPlaceholders(c"totp_verify".as_ptr())
    };
}

fn define_guess_slots() {
    GucRegistry::define_int_guc(
        c"totp_verify.guess_slots",
        c"Factors whose wrong codes shared memory counts at once (needs shared_preload_libraries).",
        c"A factor takes a slot at its first wrong code and keeps it until its counting windows end.",
        &GUESS_SLOTS,
        1_024,
        16_777_216,
        GucContext::Postmaster,
        GucFlags::default(),
    );
}

/// The configured key file path, if one is set.
pub fn key_file() -> Option<String> {
    KEY_FILE.get().and_then(|path| path.into_string().ok()).filter(|path| !path.is_empty())
}

pub fn guess_slots() -> i32 {
    GUESS_SLOTS.get()
}

pub fn allow_unbounded_rollbacks() -> bool {
    ALLOW_UNBOUNDED_ROLLBACKS.get()
}

pub fn notify() -> bool {
    NOTIFY.get()
}
