//! The key file format (SPEC §8): one AES-256 key per line, `<key_id> <64 hex digits>`, the
//! last line being the current key. `#` starts a comment. The id is derived from the key, so a
//! replaced file can never pass off a different key under an id a row names.

use sha2::{Digest, Sha256};
use std::fmt;
use zeroize::Zeroizing;

use crate::sealed::KEY_BYTES;

pub type Key = Zeroizing<[u8; KEY_BYTES]>;

/// Why a key file was refused. Never holds key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyFileError {
    Empty,
    Malformed { line: usize },
    IdMismatch { line: usize },
}

impl fmt::Display for KeyFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyFileError::Empty => f.write_str("the key file holds no key"),
            KeyFileError::Malformed { line } => {
                write!(f, "line {line} of the key file is not \"<id> <64 hex digits>\"")
            }
            KeyFileError::IdMismatch { line } => {
                write!(f, "line {line} of the key file has an id that does not match its key")
            }
        }
    }
}

/// A key's id: the first 6 bytes of SHA-256("totp_verify key id" || key), as a positive integer.
pub fn key_id(key: &[u8; KEY_BYTES]) -> i64 {
    let digest = Sha256::new().chain_update(b"totp_verify key id").chain_update(key).finalize();
    let mut id = [0u8; 8];
    id[2..].copy_from_slice(&digest[..6]);
    i64::from_be_bytes(id)
}

/// A fresh random key and its id.
pub fn generate() -> (i64, Key) {
    let mut key = Zeroizing::new([0u8; KEY_BYTES]);
    crate::random::fill(key.as_mut());
    (key_id(&key), key)
}

/// Parses a key file; the last key is the current one.
pub fn parse(text: &str) -> Result<Vec<(i64, Key)>, KeyFileError> {
    let mut keys = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let number = index + 1;
        let mut parts = line.split_whitespace();
        let (Some(id), Some(hex), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(KeyFileError::Malformed { line: number });
        };
        if !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(KeyFileError::Malformed { line: number });
        }
        let id: i64 = id.parse().map_err(|_| KeyFileError::Malformed { line: number })?;
        let key = decode_hex(hex).ok_or(KeyFileError::Malformed { line: number })?;
        if key_id(&key) != id {
            return Err(KeyFileError::IdMismatch { line: number });
        }
        keys.push((id, key));
    }
    if keys.is_empty() {
        return Err(KeyFileError::Empty);
    }
    Ok(keys)
}

/// Renders keys in file form, oldest first, so the last is current.
pub fn render(keys: &[(i64, Key)]) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::from(
        "# totp_verify key file: \"<key id> <AES-256 key in hex>\", the last line is the current key.\n\
         # Keep it secret, back it up apart from the database, and copy it with a restore.\n",
    ));
    for (id, key) in keys {
        out.push_str(&id.to_string());
        out.push(' ');
        for b in key.iter() {
            out.push_str(&format!("{b:02x}"));
        }
        out.push('\n');
    }
    out
}

fn decode_hex(hex: &str) -> Option<Key> {
    if hex.len() != KEY_BYTES * 2 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut key = Zeroizing::new([0u8; KEY_BYTES]);
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let keys = vec![generate(), generate()];
        let text = render(&keys);
        let parsed = parse(&text).unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[1].0, keys[1].0);
        assert_eq!(*parsed[1].1, *keys[1].1);
    }

    #[test]
    fn refuses_bad_files() {
        assert_eq!(parse("# nothing\n").unwrap_err(), KeyFileError::Empty);
        assert_eq!(parse("12 abc\n").unwrap_err(), KeyFileError::Malformed { line: 1 });
        let plus = format!("1 +{}\n", "f".repeat(63));
        assert_eq!(parse(&plus).unwrap_err(), KeyFileError::Malformed { line: 1 });
        let (id, key) = generate();
        let good = render(&[(id, key)]);
        let swapped = good.replace(&id.to_string(), &(id + 1).to_string());
        assert_eq!(parse(&swapped).unwrap_err(), KeyFileError::IdMismatch { line: 3 });
    }
}
