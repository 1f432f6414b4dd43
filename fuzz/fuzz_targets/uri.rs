//! uri::percent_encode and KeyUri::render: the output is ASCII; with an issuer the label has
//! exactly one literal ':'; every field read back through a strict percent-decoder (written
//! here, independent of the crate) is what went in; parameters come in Twilio's order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use totp_core::otp::Algorithm;
use totp_core::uri::{percent_encode, KeyUri};

/// account, issuer, secret bytes, alg selector, digits, period.
type Input = (String, Option<String>, Vec<u8>, u8, u32, u32);

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 3986 percent-decoding, strict: only unreserved characters and `%XX` (upper-case hex, as
/// the encoder promises) may appear. Returns None on anything else.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                if !hex.iter().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b)) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 3;
            }
            b if unreserved(b) => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

fuzz_target!(|input: Input| {
    let (account, issuer, secret_bytes, alg, digits, period) = input;
    // percent_encode alone.
    for text in [Some(&account), issuer.as_ref()].into_iter().flatten() {
        let enc = percent_encode(text);
        assert!(enc.is_ascii(), "{enc:?}");
        assert!(!enc.contains(':') && !enc.contains('&') && !enc.contains(' ') && !enc.contains('+'));
        assert_eq!(percent_decode(&enc).as_deref(), Some(text.as_str()), "{enc:?}");
        // Unreserved characters are kept as they are, everything else is %XX of UTF-8.
        let expected_len: usize = text.bytes().map(|b| if unreserved(b) { 1 } else { 3 }).sum();
        assert_eq!(enc.len(), expected_len);
    }

    let secret = totp_core::base32::encode(&secret_bytes);
    let alg = [Algorithm::Sha1, Algorithm::Sha256, Algorithm::Sha512][alg as usize % 3];
    let uri = KeyUri {
        secret: &secret,
        account: &account,
        issuer: issuer.as_deref(),
        alg,
        digits,
        period,
    }
    .render();
    assert!(uri.is_ascii(), "{uri:?}");
    assert!(!uri.contains(' ') && !uri.contains('#'), "{uri:?}");

    let rest = uri.strip_prefix("otpauth://totp/").expect("scheme and type");
    let (label, query) = rest.split_once('?').expect("one '?'");
    assert!(!query.contains('?'));
    let params: Vec<(&str, &str)> = query
        .split('&')
        .map(|kv| kv.split_once('=').expect("key=value"))
        .collect();
    let keys: Vec<&str> = params.iter().map(|(k, _)| *k).collect();

    match &issuer {
        Some(issuer) => {
            assert_eq!(label.matches(':').count(), 1, "label {label:?}");
            let (i, a) = label.split_once(':').unwrap();
            assert_eq!(percent_decode(i).as_deref(), Some(issuer.as_str()));
            assert_eq!(percent_decode(a).as_deref(), Some(account.as_str()));
            assert_eq!(keys, ["secret", "issuer", "algorithm", "digits", "period"]);
            assert_eq!(percent_decode(params[1].1).as_deref(), Some(issuer.as_str()));
        }
        None => {
            assert_eq!(label.matches(':').count(), 0, "label {label:?}");
            assert_eq!(percent_decode(label).as_deref(), Some(account.as_str()));
            assert_eq!(keys, ["secret", "algorithm", "digits", "period"]);
        }
    }
    let value = |key: &str| params.iter().find(|(k, _)| *k == key).unwrap().1;
    assert_eq!(value("secret"), secret);
    assert_eq!(totp_core::base32::decode(value("secret")).unwrap(), secret_bytes);
    assert_eq!(value("algorithm"), alg.uri_name());
    assert_eq!(value("digits"), digits.to_string());
    assert_eq!(value("period"), period.to_string());
});
