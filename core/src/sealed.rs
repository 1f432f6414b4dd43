//! Secrets at rest: AES-256-GCM with the factor SID as associated data (SPEC §8).
//!
//! A sealed secret is `nonce (12 bytes) || ciphertext || tag (16 bytes)`. Binding the SID as
//! associated data means a ciphertext copied onto another factor fails authentication instead
//! of verifying that factor's codes.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use zeroize::Zeroizing;

pub const KEY_BYTES: usize = 32;
const NONCE_BYTES: usize = 12;

/// Why a sealed secret could not be opened: wrong key, wrong row, or tampering. Deliberately
/// carries nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenFailed;

/// Seals `secret` for the row named by `aad` under `key`, with a fresh random nonce.
pub fn seal(key: &[u8; KEY_BYTES], aad: &[u8], secret: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(key.into());
    let mut nonce = [0u8; NONCE_BYTES];
    crate::random::fill(&mut nonce);
    let ciphertext = cipher
        .encrypt(&Nonce::from(nonce), Payload { msg: secret, aad })
        .expect("AES-GCM encryption of a short secret cannot fail");
    let mut out = Vec::with_capacity(NONCE_BYTES + ciphertext.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    out
}

/// Opens a sealed secret; the plaintext is wiped from memory when dropped.
pub fn open(key: &[u8; KEY_BYTES], aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenFailed> {
    if sealed.len() < NONCE_BYTES + 16 {
        return Err(OpenFailed);
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_BYTES);
    let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| OpenFailed)?;
    let cipher = Aes256Gcm::new(key.into());
    cipher.decrypt(&Nonce::from(nonce), Payload { msg: ciphertext, aad }).map(Zeroizing::new).map_err(|_| OpenFailed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_binding() {
        let key = [7u8; KEY_BYTES];
        let sealed = seal(&key, b"YFaaaa", b"12345678901234567890");
        assert!(!sealed.windows(20).any(|w| w == b"12345678901234567890"));
        assert_eq!(open(&key, b"YFaaaa", &sealed).unwrap().as_slice(), b"12345678901234567890");
        assert_eq!(open(&key, b"YFbbbb", &sealed), Err(OpenFailed), "moved to another row");
        assert_eq!(open(&[8u8; KEY_BYTES], b"YFaaaa", &sealed), Err(OpenFailed), "wrong key");
        let mut tampered = sealed.clone();
        tampered[20] ^= 1;
        assert_eq!(open(&key, b"YFaaaa", &tampered), Err(OpenFailed));
        assert_eq!(open(&key, b"YFaaaa", &sealed[..10]), Err(OpenFailed));
    }

    #[test]
    fn nonces_differ() {
        let key = [1u8; KEY_BYTES];
        assert_ne!(seal(&key, b"x", b"s"), seal(&key, b"x", b"s"));
    }
}
