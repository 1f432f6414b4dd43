//! keyfile::parse never panics on any text, and never accepts a key whose id does not match;
//! rendering keys and parsing them back gives the same ids and keys.
#![no_main]

use libfuzzer_sys::fuzz_target;
use totp_core::keyfile::{self, Key, KeyFileError};
use zeroize::Zeroizing;

fuzz_target!(|data: &[u8]| {
    let lossy = String::from_utf8_lossy(data);
    for text in [std::str::from_utf8(data).ok(), Some(lossy.as_ref())].into_iter().flatten() {
        match keyfile::parse(text) {
            Ok(keys) => {
                assert!(!keys.is_empty());
                for (id, key) in &keys {
                    assert_eq!(keyfile::key_id(key), *id, "an id that does not match its key");
                }
                let again = keyfile::parse(&keyfile::render(&keys)).expect("rendered file parses");
                assert_eq!(ids_and_keys(&again), ids_and_keys(&keys));
            }
            Err(KeyFileError::Malformed { line } | KeyFileError::IdMismatch { line }) => {
                assert!(line >= 1 && line <= text.lines().count().max(1));
            }
            Err(KeyFileError::Empty) => {}
        }
    }

    // The bytes as keys: render then parse is the identity.
    let keys: Vec<(i64, Key)> = data
        .chunks_exact(32)
        .map(|chunk| {
            let key: Key = Zeroizing::new(chunk.try_into().unwrap());
            (keyfile::key_id(&key), key)
        })
        .collect();
    if !keys.is_empty() {
        let parsed = keyfile::parse(&keyfile::render(&keys)).expect("rendered file parses");
        assert_eq!(ids_and_keys(&parsed), ids_and_keys(&keys));
    }
});

fn ids_and_keys(keys: &[(i64, Key)]) -> Vec<(i64, [u8; 32])> {
    keys.iter().map(|(id, key)| (*id, **key)).collect()
}
