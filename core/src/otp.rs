//! RFC 4226 (HOTP) and RFC 6238 (TOTP), and the window match that enforces "no replay".

use std::fmt;
use std::str::FromStr;

use hmac::{Hmac, KeyInit, Mac};
use subtle::ConstantTimeEq;

/// The HMAC hash of a factor (`alg`). Twilio offers exactly these three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

impl Algorithm {
    /// The spelling stored in `totp.factors.alg`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha1 => "sha1",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// The spelling the Key Uri Format wants in `algorithm=`.
    pub fn uri_name(self) -> &'static str {
        match self {
            Algorithm::Sha1 => "SHA1",
            Algorithm::Sha256 => "SHA256",
            Algorithm::Sha512 => "SHA512",
        }
    }
}

/// An `alg` that is not one of sha1, sha256, sha512.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownAlgorithm;

impl fmt::Display for UnknownAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("alg must be one of sha1, sha256, sha512")
    }
}

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;

    /// Case-insensitive, so `SHA256` (the URI spelling) is accepted too.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "sha1" => Ok(Algorithm::Sha1),
            "sha256" => Ok(Algorithm::Sha256),
            "sha512" => Ok(Algorithm::Sha512),
            _ => Err(UnknownAlgorithm),
        }
    }
}

/// Digits the pure functions accept. HOTP's 31-bit truncation has at most 10 decimal digits.
pub const MIN_DIGITS: u32 = 1;
pub const MAX_DIGITS: u32 = 10;

fn hmac<M: Mac + KeyInit>(key: &[u8], message: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <M as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// RFC 4226 §5.3 dynamic truncation, as an unpadded number (31 bits).
pub fn hotp_value(secret: &[u8], counter: u64, alg: Algorithm) -> u32 {
    let message = counter.to_be_bytes();
    let digest = match alg {
        Algorithm::Sha1 => hmac::<Hmac<sha1::Sha1>>(secret, &message),
        Algorithm::Sha256 => hmac::<Hmac<sha2::Sha256>>(secret, &message),
        Algorithm::Sha512 => hmac::<Hmac<sha2::Sha512>>(secret, &message),
    };
    let offset = (digest[digest.len() - 1] & 0x0f) as usize;
    u32::from_be_bytes([digest[offset] & 0x7f, digest[offset + 1], digest[offset + 2], digest[offset + 3]])
}

/// The HOTP code for `counter`: `digits` decimal digits, left-padded with zeros.
///
/// `digits` must be within [`MIN_DIGITS`]..=[`MAX_DIGITS`]; callers validate it first.
pub fn hotp(secret: &[u8], counter: u64, digits: u32, alg: Algorithm) -> String {
    debug_assert!((MIN_DIGITS..=MAX_DIGITS).contains(&digits));
    let value = u64::from(hotp_value(secret, counter, alg)) % 10u64.pow(digits);
    format!("{value:0width$}", width = digits as usize)
}

/// The RFC 6238 time step containing `unix_seconds` (epoch T0 = 0), or `None` before the epoch.
pub fn time_step(unix_seconds: i64, step_seconds: u32) -> Option<u64> {
    if unix_seconds < 0 || step_seconds == 0 {
        return None;
    }
    Some(unix_seconds as u64 / u64::from(step_seconds))
}

/// The TOTP code at `unix_seconds`, or `None` before the epoch.
pub fn totp(secret: &[u8], unix_seconds: i64, step_seconds: u32, digits: u32, alg: Algorithm) -> Option<String> {
    time_step(unix_seconds, step_seconds).map(|t| hotp(secret, t, digits, alg))
}

/// What a factor needs to check a code.
#[derive(Debug, Clone, Copy)]
pub struct CodeParams {
    pub alg: Algorithm,
    pub digits: u32,
    pub step_seconds: u32,
    pub skew: u32,
}

/// Finds the time step a submitted code belongs to, refusing replays.
///
/// Accepts steps `now_step - skew ..= now_step + skew` that are later than `last_accepted` (the
/// step consumed by the previous success, RFC 6238 §5.2). Returns the earliest such step whose
/// code equals `payload`, so a code is never "spent" further ahead than needed.
///
/// Every step of the window is computed and compared in constant time whatever matches, so
/// timing reveals neither whether nor where the code matched. A payload of the wrong length
/// can never match (callers validate the shape first; this is a second line).
pub fn match_step(
    secret: &[u8],
    payload: &str,
    now_step: u64,
    last_accepted: Option<u64>,
    params: CodeParams,
) -> Option<u64> {
    let skew = u64::from(params.skew);
    let first = now_step.saturating_sub(skew);
    let last = now_step.saturating_add(skew);
    let mut found: Option<u64> = None;
    for step in first..=last {
        let candidate = hotp(secret, step, params.digits, params.alg);
        let equal: bool = candidate.as_bytes().ct_eq(payload.as_bytes()).into();
        let fresh = last_accepted.is_none_or(|last| step > last);
        if equal && fresh && found.is_none() {
            found = Some(step);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_SHA1: &[u8] = b"12345678901234567890";
    const SEED_SHA256: &[u8] = b"12345678901234567890123456789012";
    const SEED_SHA512: &[u8] = b"1234567890123456789012345678901234567890123456789012345678901234";

    /// RFC 6238 Appendix B: (time, sha1, sha256, sha512), 8 digits, 30-second steps.
    pub const RFC6238: [(i64, &str, &str, &str); 6] = [
        (59, "94287082", "46119246", "90693936"),
        (1111111109, "07081804", "68084774", "25091201"),
        (1111111111, "14050471", "67062674", "99943326"),
        (1234567890, "89005924", "91819424", "93441116"),
        (2000000000, "69279037", "90698825", "38618901"),
        (20000000000, "65353130", "77737706", "47863826"),
    ];

    /// RFC 4226 Appendix D: counters 0..=9, 6 digits, SHA-1.
    pub const RFC4226: [&str; 10] =
        ["755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583", "399871", "520489"];

    #[test]
    fn rfc4226_appendix_d() {
        for (counter, expected) in RFC4226.iter().enumerate() {
            assert_eq!(hotp(SEED_SHA1, counter as u64, 6, Algorithm::Sha1), *expected);
        }
    }

    #[test]
    fn rfc6238_appendix_b() {
        for (t, sha1, sha256, sha512) in RFC6238 {
            assert_eq!(totp(SEED_SHA1, t, 30, 8, Algorithm::Sha1).unwrap(), sha1, "sha1 @ {t}");
            assert_eq!(totp(SEED_SHA256, t, 30, 8, Algorithm::Sha256).unwrap(), sha256, "sha256 @ {t}");
            assert_eq!(totp(SEED_SHA512, t, 30, 8, Algorithm::Sha512).unwrap(), sha512, "sha512 @ {t}");
        }
    }

    #[test]
    fn ten_digits_keep_leading_zeros() {
        // counter 1 truncates to 1094287082: 10 digits; counter 0 to 1284755224.
        assert_eq!(hotp(SEED_SHA1, 1, 10, Algorithm::Sha1), "1094287082");
        assert_eq!(hotp(SEED_SHA1, 1, 1, Algorithm::Sha1), "2");
        assert_eq!(totp(SEED_SHA1, 1111111109, 30, 8, Algorithm::Sha1).unwrap().len(), 8);
    }

    #[test]
    fn before_epoch_has_no_step() {
        assert_eq!(time_step(-1, 30), None);
        assert_eq!(time_step(59, 30), Some(1));
    }

    #[test]
    fn algorithm_names() {
        assert_eq!("SHA256".parse::<Algorithm>().unwrap(), Algorithm::Sha256);
        assert!("md5".parse::<Algorithm>().is_err());
        assert_eq!(Algorithm::Sha512.uri_name(), "SHA512");
    }

    fn params(skew: u32) -> CodeParams {
        CodeParams { alg: Algorithm::Sha1, digits: 6, step_seconds: 30, skew }
    }

    #[test]
    fn window_accepts_skew_and_refuses_beyond() {
        let now = 1000u64;
        for offset in -2i64..=2 {
            let step = (now as i64 + offset) as u64;
            let code = hotp(SEED_SHA1, step, 6, Algorithm::Sha1);
            let got = match_step(SEED_SHA1, &code, now, None, params(1));
            if offset.abs() <= 1 {
                assert_eq!(got, Some(step), "offset {offset}");
            } else {
                assert_eq!(got, None, "offset {offset}");
            }
        }
    }

    #[test]
    fn window_refuses_replayed_and_older_steps() {
        let now = 1000u64;
        let code = hotp(SEED_SHA1, now, 6, Algorithm::Sha1);
        assert_eq!(match_step(SEED_SHA1, &code, now, Some(999), params(1)), Some(now));
        assert_eq!(match_step(SEED_SHA1, &code, now, Some(now), params(1)), None);
        assert_eq!(match_step(SEED_SHA1, &code, now, Some(now + 1), params(1)), None);
    }

    #[test]
    fn wrong_shapes_never_match() {
        let code = hotp(SEED_SHA1, 5, 6, Algorithm::Sha1);
        assert_eq!(match_step(SEED_SHA1, &code[..5], 5, None, params(0)), None);
        assert_eq!(match_step(SEED_SHA1, &format!("{code}0"), 5, None, params(0)), None);
    }
}
