//! The server's clock, read once per call and passed to every statement as a parameter.
//!
//! One reading per call keeps a call self-consistent (the step it checks, the dates it writes,
//! the deadlines it compares), and passing it as a parameter keeps volatile functions out of
//! UPDATE statements (a Citus rule, SPEC §9). It is the wall clock, not the transaction start:
//! a TOTP step must be judged at the moment the code arrives.

use pgrx::datum::TimestampWithTimeZone;
use pgrx::pg_sys;

/// Seconds between the Unix epoch and Postgres's epoch (2000-01-01).
const PG_EPOCH_UNIX_SECONDS: i64 = 946_684_800;
const MICROS_PER_SECOND: i64 = 1_000_000;
pub const MICROS_PER_HOUR: i64 = 3_600 * MICROS_PER_SECOND;
pub const MICROS_PER_DAY: i64 = 24 * MICROS_PER_HOUR;

#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Postgres timestamp: microseconds since 2000-01-01 UTC.
    pub micros: i64,
}

impl Now {
    pub fn read() -> Self {
        // SAFETY: GetCurrentTimestamp only reads the system clock.
        Now { micros: unsafe { pg_sys::GetCurrentTimestamp() } }
    }

    pub fn timestamptz(self) -> TimestampWithTimeZone {
        TimestampWithTimeZone::try_from(self.micros).expect("the clock is a finite timestamp")
    }

    /// The moment `micros` microseconds before now: a window's cutoff, passed as a parameter
    /// because timestamptz arithmetic in SQL is STABLE (see the module comment).
    pub fn ago(self, micros: i64) -> TimestampWithTimeZone {
        TimestampWithTimeZone::try_from(self.micros - micros).expect("the clock is far from the timestamp limits")
    }

    pub fn unix_seconds(self) -> i64 {
        unix_seconds(self.micros)
    }
}

/// Unix seconds (floored) of a Postgres timestamp.
pub fn unix_seconds(pg_micros: i64) -> i64 {
    // Seconds first: adding the epoch offset in microseconds overflows near the end of the
    // timestamp range (the offset is a whole number of seconds, so the result is the same).
    pg_micros.div_euclid(MICROS_PER_SECOND) + PG_EPOCH_UNIX_SECONDS
}
