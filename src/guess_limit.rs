//! The guessing bound that no transaction pattern escapes (SPEC §3, "Guessing is bounded whatever
//! the caller's transaction does").
//!
//! The attempt counters on the factor and challenge rows are transactional: a caller that rolls
//! back (a web framework on error, or a `BEGIN ... EXCEPTION` block around each guess) would undo
//! them and guess for free. So every code check also reserves one guess in shared memory, which no
//! rollback undoes, and a right code gives its reservation back. Per factor the shared counters
//! allow, in fixed windows:
//!
//! - unverified: `max_factor_attempts` wrong codes for the factor's whole unverified life;
//! - verified, code_length >= 5: `max_challenges_per_hour x max_challenge_attempts` per hour and
//!   `max_challenges_per_day x max_challenge_attempts` per 24 hours;
//! - verified, code_length <= 4: `max_short_code_challenges_per_day x max_challenge_attempts` per
//!   24 hours.
//!
//! That is exactly the budget the committed counters allow, so a caller who commits never meets
//! these limits first, and one who rolls back gets no more.
//!
//! Shared memory needs `shared_preload_libraries = 'totp_verify'`. Without it, code checks are
//! refused (55000) unless a superuser sets `totp_verify.allow_unbounded_rollbacks = on`. The
//! counters live as long as the server: a restart (or the crash recovery of any backend) starts
//! them afresh, while the committed counters persist.
//!
//! Layout: `totp_verify.guess_slots` slots in `STRIPES` stripes, each behind its own LWLock; a
//! factor's slot is found by open addressing within its stripe. A factor is known by a keyed hash
//! of its identity and SID (HMAC-SHA-256 under a random key made at server start): callers may
//! choose factor SIDs (`create_factor(…, sid =>)`), so the SID's own bytes would let them pile
//! factors into one stripe and crowd others out (53400), and two identities may hold one SID. Only factors with wrong codes in
//! an open window hold a slot (a right code gives its reservation back, and a slot left counting
//! nothing is freed). A slot is reused only once every window it counts has ended, so nothing is
//! forgotten early; when the slots near a factor's home are all live, its code check is refused
//! (53400) rather than left uncounted.

use std::ffi::CStr;
use std::ptr;

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::guc;

const STRIPES: usize = 64;
/// Slots tried in a stripe before the stripe counts as full.
const PROBES: usize = 64;
const TRANCHE: &CStr = c"totp_verify guess limits";
const SEGMENT: &CStr = c"totp_verify guess limits";
const KEY_SEGMENT: &CStr = c"totp_verify guess limits key";
/// Room for the key's segment, alignment included.
const KEY_SEGMENT_BYTES: usize = 256;
const HOUR: i64 = 3_600;
const DAY: i64 = 86_400;

/// One factor's counters. Times are Unix seconds.
#[repr(C)]
#[derive(Clone, Copy)]
struct Slot {
    database: u32,
    in_use: u32,
    factor: [u8; 16],
    hour_start: i64,
    day_start: i64,
    /// The slot is kept at least until this moment (the end of the factor's unverified life).
    keep_until: i64,
    hour: u32,
    day: u32,
    unverified: u32,
    _pad: u32,
}

impl Slot {
    fn holds(&self, database: u32, factor: &[u8; 16]) -> bool {
        self.in_use != 0 && self.database == database && &self.factor == factor
    }

    /// Whether every window this slot counts has ended, so reusing it forgets nothing.
    fn spent(&self, now: i64) -> bool {
        self.in_use == 0 || (now >= self.keep_until && now - self.hour_start >= HOUR && now - self.day_start >= DAY)
    }
}

struct Shared {
    slots: *mut Slot,
    per_stripe: usize,
    locks: *mut pg_sys::LWLockPadded,
    /// The key of the factor keys (`factor_key`), random, made when the segment is.
    key: *const [u8; 32],
}

static mut SHARED: Option<Shared> = None;
#[cfg(not(feature = "pg14"))]
static mut PREV_REQUEST: pg_sys::shmem_request_hook_type = None;
static mut PREV_STARTUP: pg_sys::shmem_startup_hook_type = None;

fn per_stripe() -> usize {
    (guc::guess_slots() as usize).div_ceil(STRIPES).max(1)
}

fn segment_bytes() -> usize {
    per_stripe() * STRIPES * std::mem::size_of::<Slot>()
}

/// Called from `_PG_init`: asks for the shared memory when loaded by shared_preload_libraries.
pub fn init() {
    // SAFETY: reading a postmaster global during _PG_init.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    warn_if_parameters_are_logged();
    // SAFETY: hook chaining during _PG_init in the postmaster, before any backend exists.
    unsafe {
        #[cfg(not(feature = "pg14"))]
        {
            PREV_REQUEST = pg_sys::shmem_request_hook;
            pg_sys::shmem_request_hook = Some(request);
        }
        // PostgreSQL 14 has no shmem_request_hook: there the requests are made from _PG_init.
        #[cfg(feature = "pg14")]
        request_shared_memory();
        PREV_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(startup);
    }
}

/// The server logs the application's bind parameters (its secrets and codes) unless
/// `log_parameter_max_length = 0`; the extension cannot change that, but can say so at start.
fn warn_if_parameters_are_logged() {
    // SAFETY: reads a core setting by name; NULL when unknown.
    let value = unsafe { pg_sys::GetConfigOption(c"log_parameter_max_length".as_ptr(), true, false) };
    if value.is_null() {
        return;
    }
    // SAFETY: GetConfigOption returns a NUL-terminated string owned by the GUC machinery.
    let value = unsafe { CStr::from_ptr(value) }.to_string_lossy();
    if value != "0" {
        pgrx::log!(
            "totp_verify: log_parameter_max_length is {value}: with log_statement or log_min_duration_statement, \
             the server logs bind parameters, among them secrets and codes sent to totp functions; set it to 0"
        );
    }
}

#[cfg(not(feature = "pg14"))]
#[pg_guard]
unsafe extern "C-unwind" fn request() {
    // SAFETY: called by the postmaster in shmem_request_hook, the only time these may be called.
    unsafe {
        if let Some(previous) = PREV_REQUEST {
            previous();
        }
        request_shared_memory();
    }
}

/// The segment and the stripe locks; only while shared_preload_libraries is being processed.
unsafe fn request_shared_memory() {
    // SAFETY: the caller runs in the postmaster while preload libraries are processed.
    unsafe {
        pg_sys::RequestAddinShmemSpace(segment_bytes() + KEY_SEGMENT_BYTES);
        pg_sys::RequestNamedLWLockTranche(TRANCHE.as_ptr(), STRIPES as i32);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn startup() {
    // SAFETY: shmem_startup_hook, under AddinShmemInitLock as Postgres requires.
    unsafe {
        if let Some(previous) = PREV_STARTUP {
            previous();
        }
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock; // AddinShmemInitLock
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let bytes = segment_bytes();
        let mut found = false;
        let slots = pg_sys::ShmemInitStruct(SEGMENT.as_ptr(), bytes, &mut found).cast::<Slot>();
        if !found {
            ptr::write_bytes(slots.cast::<u8>(), 0, bytes);
        }
        let mut key_found = false;
        let key = pg_sys::ShmemInitStruct(KEY_SEGMENT.as_ptr(), 32, &mut key_found).cast::<[u8; 32]>();
        if !key_found {
            totp_core::random::fill(&mut *key);
        }
        let locks = pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr());
        SHARED = Some(Shared { slots, per_stripe: per_stripe(), locks, key });
        pg_sys::LWLockRelease(init_lock);
    }
}

/// Whether the shared counters exist (the library was preloaded).
pub fn available() -> bool {
    // SAFETY: SHARED is written once, in the postmaster before backends fork.
    unsafe { (*ptr::addr_of!(SHARED)).is_some() }
}

/// The guesses a factor may have in each window.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    /// An unverified factor: `limit` wrong codes until `until` (Unix seconds), its end of life.
    Unverified { limit: u32, until: i64 },
    /// A verified factor: wrong codes per hour (None: no hourly limit) and per 24 hours.
    Verified { per_hour: Option<u32>, per_day: u32 },
}

/// Why a guess was not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The factor used its budget in this window: `limit` per `window`.
    Exhausted { limit: u32, window: &'static str },
    /// Every slot of the factor's stripe counts a live window.
    Full,
    /// The library was not preloaded and the setting does not allow going without.
    NotLoaded,
}

/// A reserved guess: give it back with [`Reservation::refund`] when the code was right.
#[must_use]
pub struct Reservation {
    database: u32,
    factor: [u8; 16],
    kind: Budget,
}

/// A factor's name in the slots: HMAC-SHA-256(key, identity NUL SID), 16 bytes of it. Unpredictable
/// without the key, so no choice of SIDs steers factors into one stripe; and per identity, like
/// the factor's primary key.
fn factor_key(key: &[u8; 32], identity: &str, factor_sid: &str) -> [u8; 16] {
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(identity.as_bytes());
    mac.update(&[0]);
    mac.update(factor_sid.as_bytes());
    let digest = mac.finalize().into_bytes();
    digest[..16].try_into().expect("SHA-256 gives 32 bytes")
}

fn with_slot<T>(database: u32, factor: &[u8; 16], f: impl FnOnce(&mut [Slot]) -> T) -> T {
    // SAFETY: SHARED is set (checked by callers through available()), and the stripe's slots are
    // only touched under the stripe's LWLock, which the abort path releases on error.
    unsafe {
        let shared = (*ptr::addr_of!(SHARED)).as_ref().expect("guess limits are available");
        let mut hash = u64::from_le_bytes(factor[..8].try_into().expect("8 bytes"));
        hash ^= u64::from(database).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let stripe = (hash % STRIPES as u64) as usize;
        let lock = &raw mut (*shared.locks.add(stripe)).lock;
        let slots = std::slice::from_raw_parts_mut(shared.slots.add(stripe * shared.per_stripe), shared.per_stripe);
        pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let result = f(slots);
        pg_sys::LWLockRelease(lock);
        result
    }
}

/// Where the factor's slot is: within `PROBES` of its home. With `claim_at`, a spent slot there
/// is claimed for it when it has none.
fn find(slots: &mut [Slot], database: u32, factor: &[u8; 16], claim_at: Option<i64>) -> Option<usize> {
    let home = (u64::from_le_bytes(factor[8..].try_into().expect("8 bytes")) % slots.len() as u64) as usize;
    let mut free = None;
    for probe in 0..PROBES.min(slots.len()) {
        let index = (home + probe) % slots.len();
        if slots[index].holds(database, factor) {
            return Some(index);
        }
        if free.is_none() && claim_at.is_some_and(|now| slots[index].spent(now)) {
            free = Some(index);
        }
    }
    let (index, now) = (free?, claim_at?);
    slots[index] = Slot {
        database,
        in_use: 1,
        factor: *factor,
        hour_start: now,
        day_start: now,
        keep_until: now,
        hour: 0,
        day: 0,
        unverified: 0,
        _pad: 0,
    };
    Some(index)
}

/// Reserves one guess for the factor `factor_sid` of `identity` at `now` (Unix seconds), or refuses it.
pub fn reserve(identity: &str, factor_sid: &str, budget: Budget, now: i64) -> Result<Option<Reservation>, Refusal> {
    if !available() {
        return if guc::allow_unbounded_rollbacks() { Ok(None) } else { Err(Refusal::NotLoaded) };
    }
    // SAFETY: MyDatabaseId is set once the backend has connected.
    let database = unsafe { pg_sys::MyDatabaseId }.to_u32();
    // SAFETY: SHARED is set (available() above) and its key written before any backend runs.
    let factor = unsafe {
        let shared = (*ptr::addr_of!(SHARED)).as_ref().expect("guess limits are available");
        factor_key(&*shared.key, identity, factor_sid)
    };
    with_slot(database, &factor, |slots| {
        let index = find(slots, database, &factor, Some(now)).ok_or(Refusal::Full)?;
        let slot = &mut slots[index];
        match budget {
            Budget::Unverified { limit, until } => {
                slot.keep_until = slot.keep_until.max(until);
                if slot.unverified >= limit {
                    return Err(Refusal::Exhausted { limit, window: "unverified lifetime" });
                }
                slot.unverified += 1;
            }
            Budget::Verified { per_hour, per_day } => {
                if now - slot.hour_start >= HOUR {
                    (slot.hour_start, slot.hour) = (now, 0);
                }
                if now - slot.day_start >= DAY {
                    (slot.day_start, slot.day) = (now, 0);
                }
                if let Some(limit) = per_hour.filter(|limit| slot.hour >= *limit) {
                    return Err(Refusal::Exhausted { limit, window: "hour" });
                }
                if slot.day >= per_day {
                    return Err(Refusal::Exhausted { limit: per_day, window: "24 hours" });
                }
                slot.hour += 1;
                slot.day += 1;
            }
        }
        Ok(Some(Reservation { database, factor, kind: budget }))
    })
}

impl Reservation {
    /// Gives the guess back: the code was right, so it was no guess.
    pub fn refund(self) {
        with_slot(self.database, &self.factor, |slots| {
            let Some(index) = find(slots, self.database, &self.factor, None) else {
                return;
            };
            let slot = &mut slots[index];
            match self.kind {
                Budget::Unverified { .. } => slot.unverified = slot.unverified.saturating_sub(1),
                Budget::Verified { .. } => {
                    slot.hour = slot.hour.saturating_sub(1);
                    slot.day = slot.day.saturating_sub(1);
                }
            }
            // A slot that counts nothing remembers nothing: free it, so that only factors with
            // wrong codes in an open window hold slots (a new window opens at the next guess).
            if slot.hour == 0 && slot.day == 0 && slot.unverified == 0 {
                slot.in_use = 0;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factor_keys_depend_on_the_key_the_identity_and_the_sid() {
        let sid = "YF00112233445566778899aabbccddeeff";
        let key = factor_key(&[1; 32], "user-1", sid);
        assert_eq!(key, factor_key(&[1; 32], "user-1", sid));
        assert_ne!(key, factor_key(&[2; 32], "user-1", sid));
        assert_ne!(key, factor_key(&[1; 32], "user-2", sid));
        assert_ne!(key, factor_key(&[1; 32], "user-1", "YF00112233445566778899aabbccddeefe"));
        // The separator keeps ("a", "bYF…") and ("ab", "YF…") apart.
        assert_ne!(factor_key(&[1; 32], "a", "bc"), factor_key(&[1; 32], "ab", "c"));
    }
}
