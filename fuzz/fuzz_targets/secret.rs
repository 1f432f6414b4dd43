//! validate::secret: never panics; accepts exactly base32 of 16..=128 bytes; a refusal names a
//! rule and never echoes the input (it may be a secret).
#![no_main]

use libfuzzer_sys::fuzz_target;
use totp_core::validate::{self, SECRET_MAX_BYTES, SECRET_MIN_BYTES};

fn rule_is_fixed(rule: &str) -> bool {
    // The only shapes a refusal may take: no room for a piece of the input.
    let digits_tail = |prefix: &str| {
        rule.strip_prefix(prefix)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    digits_tail("is not base32: invalid base32 character at position ")
        || digits_tail("is not base32: invalid base32 length ")
        || rule == "must carry at least 128 bits (26 base32 characters)"
        || rule == format!("must carry at most {SECRET_MAX_BYTES} bytes")
}

fuzz_target!(|data: &[u8]| {
    let lossy = String::from_utf8_lossy(data);
    for text in [std::str::from_utf8(data).ok(), Some(lossy.as_ref())].into_iter().flatten() {
        let decoded = totp_core::base32::decode(text);
        match validate::secret(text) {
            Ok(bytes) => {
                assert!((SECRET_MIN_BYTES..=SECRET_MAX_BYTES).contains(&bytes.len()));
                assert_eq!(Ok(bytes), decoded);
            }
            Err(e) => {
                assert_eq!(e.field, "secret");
                assert!(rule_is_fixed(&e.rule), "unexpected rule {:?}", e.rule);
                if let Ok(bytes) = decoded {
                    assert!(!(SECRET_MIN_BYTES..=SECRET_MAX_BYTES).contains(&bytes.len()));
                }
            }
        }
    }
    // Every in-range byte string is accepted back from its own encoding.
    if (SECRET_MIN_BYTES..=SECRET_MAX_BYTES).contains(&data.len()) {
        let enc = totp_core::base32::encode(data);
        assert_eq!(validate::secret(&enc).unwrap(), data);
    }
});
