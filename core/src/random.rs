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

/// A random (version 4, RFC 9562) UUID's 16 bytes: the ids of event rows, made here rather than
/// by `gen_random_uuid()` so that no volatile function runs inside the statements that write
/// per-identity rows (Citus refuses those in distributed modifications, SPEC §11).
pub fn uuid_v4() -> [u8; 16] {
    let mut id = [0u8; 16];
    fill(&mut id);
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_v4_has_its_version_and_variant() {
        for _ in 0..64 {
            let id = uuid_v4();
            assert_eq!(id[6] >> 4, 4);
            assert_eq!(id[8] >> 6, 0b10);
        }
        assert_ne!(uuid_v4(), uuid_v4());
    }
}
