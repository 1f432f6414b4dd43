//! validate::auth_payload: never panics; accepts exactly 3..=8 ASCII digits; a refusal never
//! echoes the payload. Also the code check behind it: for any secret, alg, digits and counter,
//! `hotp` gives `digits` ASCII digits and `match_step` finds exactly that step.
#![no_main]

use libfuzzer_sys::fuzz_target;
use totp_core::otp::{self, Algorithm, CodeParams};
use totp_core::validate;

fuzz_target!(|data: &[u8]| {
    let lossy = String::from_utf8_lossy(data);
    for text in [std::str::from_utf8(data).ok(), Some(lossy.as_ref())].into_iter().flatten() {
        let expected = (3..=8).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit());
        match validate::auth_payload(text) {
            Ok(()) => assert!(expected, "accepted {text:?}"),
            Err(e) => {
                assert!(!expected, "refused {text:?}");
                assert_eq!(e.field, "auth_payload");
                assert_eq!(e.rule, "must be 3 to 8 ASCII digits");
            }
        }
    }

    // The code path: first bytes choose the parameters, the rest is the secret.
    if data.len() < 10 {
        return;
    }
    let alg = [Algorithm::Sha1, Algorithm::Sha256, Algorithm::Sha512][data[0] as usize % 3];
    let digits = u32::from(data[1] % 10) + 1;
    let skew = u32::from(data[2] % 3);
    let counter = u64::from_le_bytes(data[2..10].try_into().unwrap());
    let secret = &data[10..];
    let code = otp::hotp(secret, counter, digits, alg);
    assert_eq!(code.len(), digits as usize);
    assert!(code.bytes().all(|b| b.is_ascii_digit()));
    let params = CodeParams { alg, digits, step_seconds: 30, skew };
    let found = otp::match_step(secret, &code, counter, None, params)
        .expect("a code matches its own step");
    assert!(found <= counter && counter - found <= u64::from(skew));
    // A replay of that step is refused; the wrong length never matches.
    let last = counter.saturating_add(u64::from(skew));
    assert_eq!(otp::match_step(secret, &code, counter, Some(last), params), None);
    assert_eq!(otp::match_step(secret, &format!("{code}0"), counter, None, params), None);
});
