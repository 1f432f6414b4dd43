//! base32: `decode` never panics on any text; `decode(encode(x)) == x`, also in every form
//! the decoder promises to tolerate (lower case, spaces, dashes, `=` padding).
#![no_main]

use libfuzzer_sys::fuzz_target;
use totp_core::base32::{decode, encode, Base32Error};

fn is_alphabet(b: u8) -> bool {
    b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)
}

fuzz_target!(|data: &[u8]| {
    // 1. Arbitrary text: never a panic; a success has the length the cleaned input implies,
    //    and re-encoding it decodes to the same bytes.
    let lossy = String::from_utf8_lossy(data);
    for text in [std::str::from_utf8(data).ok(), Some(lossy.as_ref())].into_iter().flatten() {
        match decode(text) {
            Ok(bytes) => {
                let kept = text
                    .chars()
                    .filter(|c| !matches!(c, ' ' | '\t' | '-' | '='))
                    .count();
                assert_eq!(bytes.len(), kept * 5 / 8, "decoded length of {text:?}");
                assert_eq!(decode(&encode(&bytes)).unwrap(), bytes);
            }
            Err(Base32Error::InvalidCharacter { position }) => {
                assert!(position >= 1 && position <= text.chars().count());
                let c = text.chars().nth(position - 1).unwrap();
                let tolerated = matches!(c, ' ' | '\t' | '-' | '=');
                let alphabet = c.is_ascii_alphabetic() || ('2'..='7').contains(&c);
                assert!(!tolerated && !alphabet, "refused {c:?}");
            }
            Err(Base32Error::InvalidLength { length }) => {
                assert!(matches!(length % 8, 1 | 3 | 6), "length {length} refused");
            }
        }
    }

    // 2. The bytes as a secret: encode is canonical base32 and round-trips in every form.
    let enc = encode(data);
    assert!(enc.bytes().all(is_alphabet), "{enc}");
    assert_eq!(enc.len(), (data.len() * 8).div_ceil(5));
    assert_eq!(decode(&enc).unwrap(), data);
    assert_eq!(decode(&enc.to_lowercase()).unwrap(), data);
    let padded = format!("{enc}{}", "=".repeat((8 - enc.len() % 8) % 8));
    assert_eq!(decode(&padded).unwrap(), data);
    let grouped: String = enc
        .as_bytes()
        .chunks(4)
        .map(|g| std::str::from_utf8(g).unwrap())
        .collect::<Vec<_>>()
        .join(if data.first().is_some_and(|b| b & 1 == 1) { " " } else { "-" });
    assert_eq!(decode(&grouped).unwrap(), data);
});
