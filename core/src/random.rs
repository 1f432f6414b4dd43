//! The only source of randomness: the operating system's CSPRNG.

use std::fmt::Write;

use rand::rngs::SysRng;
use rand::TryRng;

/// Fills `buf` from the OS CSPRNG (getrandom(2)).
///
/// Failure of the OS generator is not something a caller can recover from and must never be
/// papered over with a weaker generator, so it aborts the call (pgrx turns the panic into an ERROR).
pub fn fill(buf: &mut [u8]) {
    SysRng.try_fill_bytes(buf).expect("the operating system's random number generator failed");
}

/// `n` bytes from the OS CSPRNG.
pub fn bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    fill(&mut v);
    v
}

/// `n` bytes from the OS CSPRNG as lower-case hex (`2n` characters): SIDs, keyring ids.
pub fn hex(n: usize) -> String {
    let mut out = String::with_capacity(2 * n);
    for b in bytes(n) {
        write!(out, "{b:02x}").expect("writing to a String cannot fail");
    }
    out
}
