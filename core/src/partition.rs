//! Routing identities to PL/Proxy partitions (SPEC §11): a documented, endian-independent hash
//! that the router computes in plain SQL too, and the partition rule PL/Proxy applies to it.

use sha2::{Digest, Sha256};

/// The most partitions a deployment may declare.
pub const MAX_PARTITIONS: i32 = 1024;

/// `totp.shard_hash(identity)`: the first 4 bytes of SHA-256 over the identity's UTF-8 bytes,
/// read as a big-endian signed 32-bit integer. In SQL:
/// `('x' || left(encode(sha256(convert_to(identity, 'UTF8')), 'hex'), 8))::bit(32)::int4`.
/// Not `hashtext()`, which is internal to Postgres and has changed between majors.
pub fn shard_hash(identity: &str) -> i32 {
    let digest = Sha256::digest(identity.as_bytes());
    i32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// The partition PL/Proxy's `RUN ON shard_hash(identity)` picks among `part_count` (a power of 2).
pub fn partition_of(identity: &str, part_count: i32) -> i32 {
    shard_hash(identity) & (part_count - 1)
}

/// Why a `(part_no, part_count)` pair is refused, if it is.
pub fn check(part_no: i32, part_count: i32) -> Result<(), &'static str> {
    if !(1..=MAX_PARTITIONS).contains(&part_count) || part_count & (part_count - 1) != 0 {
        return Err("part_count must be a power of 2 from 1 to 1024");
    }
    if !(0..part_count).contains(&part_no) {
        return Err("part_no must be from 0 to part_count - 1");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_the_documented_prefix_of_sha256() {
        // sha256("") = e3b0c442..., sha256("abc") = ba7816bf... (FIPS 180-2 test vectors).
        assert_eq!(shard_hash(""), 0xe3b0c442_u32 as i32);
        assert_eq!(shard_hash("abc"), 0xba7816bf_u32 as i32);
        // UTF-8 bytes, not code points: "é" is c3 a9.
        assert_eq!(shard_hash("é"), {
            let d = Sha256::digest([0xc3, 0xa9]);
            i32::from_be_bytes([d[0], d[1], d[2], d[3]])
        });
    }

    #[test]
    fn partition_is_the_low_bits_of_the_hash() {
        assert_eq!(partition_of("abc", 4), (0xba7816bf_u32 & 3) as i32);
        assert_eq!(partition_of("", 1), 0);
        for n in 0..200 {
            let p = partition_of(&format!("user-{n}"), 8);
            assert!((0..8).contains(&p));
        }
    }

    #[test]
    fn partitions_spread_identities() {
        let mut counts = [0; 4];
        for n in 0..4000 {
            counts[partition_of(&format!("user-{n}"), 4) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (850..1150).contains(&c)), "{counts:?}");
    }

    #[test]
    fn check_refuses_what_routing_cannot_use() {
        assert!(check(0, 1).is_ok());
        assert!(check(3, 4).is_ok());
        assert!(check(1023, 1024).is_ok());
        assert!(check(0, 0).is_err());
        assert!(check(0, 3).is_err());
        assert!(check(0, 2048).is_err());
        assert!(check(4, 4).is_err());
        assert!(check(-1, 4).is_err());
    }
}
