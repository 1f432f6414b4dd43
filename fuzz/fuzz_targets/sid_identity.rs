//! sid::is_valid for every kind, validate::identity and validate::friendly_name: never panic,
//! and agree with independent oracles written here from SPEC §1 and §5.
#![no_main]

use libfuzzer_sys::fuzz_target;
use totp_core::sid::{self, SidKind};
use totp_core::validate;

const KINDS: [SidKind; 4] = [SidKind::Service, SidKind::Entity, SidKind::Factor, SidKind::Challenge];

fn sid_oracle(kind: SidKind, text: &str) -> bool {
    let chars: Vec<char> = text.chars().collect();
    chars.len() == 34
        && chars[..2].iter().collect::<String>() == kind.prefix()
        && chars[2..].iter().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
}

fn identity_oracle(text: &str) -> bool {
    let n = text.chars().count();
    (1..=64).contains(&n)
        && text
            .split('-')
            .all(|g| !g.is_empty() && g.chars().all(|c| c.is_ascii_alphanumeric()))
}

fn name_oracle(text: &str) -> bool {
    let n = text.chars().count();
    (1..=64).contains(&n) && !text.chars().any(char::is_control)
}

fuzz_target!(|data: &[u8]| {
    let lossy = String::from_utf8_lossy(data);
    let mut texts: Vec<String> = vec![lossy.to_string()];
    if let Ok(t) = std::str::from_utf8(data) {
        texts.push(t.to_string());
        // Also as the tail of each real prefix, so the 32-character body is reached often.
        for kind in KINDS {
            texts.push(format!("{}{t}", kind.prefix()));
        }
    }
    for text in &texts {
        for kind in KINDS {
            assert_eq!(sid::is_valid(kind, text), sid_oracle(kind, text), "{kind:?} {text:?}");
        }
        let id = validate::identity(text);
        assert_eq!(id.is_ok(), identity_oracle(text), "identity {text:?}");
        if let Err(e) = id {
            // A fixed rule: nothing of the input in it.
            assert_eq!(
                e.rule,
                "must be 1 to 64 ASCII letters and digits in dash-separated groups"
            );
        }
        for field in ["friendly_name", "issuer", "account"] {
            assert_eq!(validate::friendly_name(field, text).is_ok(), name_oracle(text), "{text:?}");
        }
    }
    // A generated SID is valid for its own kind only.
    let kind = KINDS[data.first().copied().unwrap_or(0) as usize % 4];
    let s = sid::generate(kind);
    for other in KINDS {
        assert_eq!(sid::is_valid(other, &s), other == kind);
    }
});
