//! RFC 4648 base32 (the alphabet authenticator apps use).
//!
//! Decoding is tolerant where users are sloppy (lower case, spaces, `=` padding, dashes that some
//! sites print between groups) and strict where sloppiness would hide a mistake: any other
//! character, or a length no encoder can produce, is refused.

use std::fmt;

const ALPHABET: base32::Alphabet = base32::Alphabet::Rfc4648 { padding: false };

/// Why a base32 string was refused. Never carries the input: it may be a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base32Error {
    /// A character outside A–Z, 2–7 (after case folding), at this 1-based position.
    InvalidCharacter { position: usize },
    /// A length (ignoring spaces and padding) that no encoding produces, e.g. 1, 3 or 6 mod 8.
    InvalidLength { length: usize },
}

impl fmt::Display for Base32Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Base32Error::InvalidCharacter { position } => {
                write!(f, "invalid base32 character at position {position}")
            }
            Base32Error::InvalidLength { length } => {
                write!(f, "invalid base32 length {length}")
            }
        }
    }
}

impl std::error::Error for Base32Error {}

/// Upper-case, unpadded RFC 4648 base32: the form `binding_secret` uses.
pub fn encode(bytes: &[u8]) -> String {
    base32::encode(ALPHABET, bytes)
}

/// Decodes base32, tolerating case, spaces, dashes and `=` padding.
pub fn decode(text: &str) -> Result<Vec<u8>, Base32Error> {
    let mut clean = String::with_capacity(text.len());
    for (i, c) in text.chars().enumerate() {
        match c {
            ' ' | '\t' | '-' | '=' => {}
            'a'..='z' | 'A'..='Z' | '2'..='7' => clean.push(c.to_ascii_uppercase()),
            _ => return Err(Base32Error::InvalidCharacter { position: i + 1 }),
        }
    }
    // Each 8 characters carry 5 bytes; a trailing group of 1, 3 or 6 characters is impossible.
    if matches!(clean.len() % 8, 1 | 3 | 6) {
        return Err(Base32Error::InvalidLength { length: clean.len() });
    }
    base32::decode(ALPHABET, &clean).ok_or(Base32Error::InvalidLength { length: clean.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4648 §10 test vectors.
    const RFC4648: [(&str, &str); 7] = [
        ("", ""),
        ("f", "MY======"),
        ("fo", "MZXQ===="),
        ("foo", "MZXW6==="),
        ("foob", "MZXW6YQ="),
        ("fooba", "MZXW6YTB"),
        ("foobar", "MZXW6YTBOI======"),
    ];

    #[test]
    fn rfc4648_vectors_both_ways() {
        for (plain, padded) in RFC4648 {
            assert_eq!(encode(plain.as_bytes()), padded.trim_end_matches('='));
            assert_eq!(decode(padded).unwrap(), plain.as_bytes());
            assert_eq!(decode(&padded.to_lowercase()).unwrap(), plain.as_bytes());
        }
    }

    #[test]
    fn tolerates_spaces_case_and_padding() {
        assert_eq!(decode("mzxw 6ytb oi==").unwrap(), b"foobar");
        assert_eq!(decode("GEZD-GNBV").unwrap(), decode("GEZDGNBV").unwrap());
    }

    #[test]
    fn refuses_bad_characters_and_lengths() {
        assert_eq!(decode("MZXW1"), Err(Base32Error::InvalidCharacter { position: 5 }));
        assert_eq!(decode("MZ8"), Err(Base32Error::InvalidCharacter { position: 3 }));
        assert_eq!(decode("MZXWé"), Err(Base32Error::InvalidCharacter { position: 5 }));
        assert_eq!(decode("M"), Err(Base32Error::InvalidLength { length: 1 }));
        assert_eq!(decode("MZX"), Err(Base32Error::InvalidLength { length: 3 }));
        assert_eq!(decode("MZXW6Y"), Err(Base32Error::InvalidLength { length: 6 }));
    }

    #[test]
    fn error_never_echoes_input() {
        let e = decode("SECRETSECRET!").unwrap_err().to_string();
        assert!(!e.contains("SECRET"), "{e}");
    }

    #[test]
    fn round_trips_every_length() {
        for n in 0..64u8 {
            let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(decode(&encode(&bytes)).unwrap(), bytes);
        }
    }
}
