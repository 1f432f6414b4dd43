//! The argument rules of SPEC §5, as pure checks. Messages name the rule, never echo the value
//! (a payload or secret must not reach a log).

use std::fmt;

use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// A refused argument: which one, and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: &'static str,
    pub rule: String,
}

impl Invalid {
    pub fn new(field: &'static str, rule: impl Into<String>) -> Self {
        Invalid { field, rule: rule.into() }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.field, self.rule)
    }
}

pub type Checked<T> = Result<T, Invalid>;

pub const NAME_MAX_CHARS: usize = 64;
pub const IDENTITY_MAX_CHARS: usize = 64;
pub const JSON_MAX_CHARS: usize = 1024;
pub const TIME_STEP: (i32, i32) = (20, 60);
pub const CODE_LENGTH: (i32, i32) = (3, 8);
pub const SKEW: (i32, i32) = (0, 2);
pub const PAYLOAD_CHARS: (usize, usize) = (3, 8);
/// RFC 4226 §4 R6: a shared secret MUST be at least 128 bits.
pub const SECRET_MIN_BYTES: usize = 16;
/// Secrets longer than a SHA-512 block add nothing (HMAC hashes them first).
pub const SECRET_MAX_BYTES: usize = 128;

/// A friendly name: 1–64 characters, not all blank, with no control or format characters. The
/// name ends up in an authenticator app's label and in the application's screens: a control
/// character breaks them, and a format character (U+202E right-to-left override, U+200B
/// zero-width space, U+FEFF ...) makes one name look like another.
pub fn friendly_name(field: &'static str, name: &str) -> Checked<()> {
    let chars = name.chars().count();
    if chars == 0 || chars > NAME_MAX_CHARS {
        return Err(Invalid::new(field, format!("must be 1 to {NAME_MAX_CHARS} characters")));
    }
    if name.chars().any(char::is_control) {
        return Err(Invalid::new(field, "must not contain control characters"));
    }
    if name.chars().any(|c| c.general_category() == GeneralCategory::Format) {
        return Err(Invalid::new(field, "must not contain format characters (such as U+202E or U+200B)"));
    }
    if name.chars().all(char::is_whitespace) {
        return Err(Invalid::new(field, "must not be blank"));
    }
    Ok(())
}

/// An identity: 1–64 ASCII letters and digits in dash-separated groups (`user-42`, `42`).
pub fn identity(identity: &str) -> Checked<()> {
    let rule = || {
        Invalid::new(
            "identity",
            format!("must be 1 to {IDENTITY_MAX_CHARS} ASCII letters and digits in dash-separated groups"),
        )
    };
    if identity.is_empty() || identity.len() > IDENTITY_MAX_CHARS {
        return Err(rule());
    }
    let groups_ok =
        identity.split('-').all(|group| !group.is_empty() && group.bytes().all(|b| b.is_ascii_alphanumeric()));
    if groups_ok {
        Ok(())
    } else {
        Err(rule())
    }
}

/// An integer setting within an inclusive range.
pub fn in_range(field: &'static str, value: i32, (min, max): (i32, i32)) -> Checked<u32> {
    if value < min || value > max {
        return Err(Invalid::new(field, format!("must be between {min} and {max}")));
    }
    Ok(value as u32)
}

/// The optional TOTP settings of a service or factor: each within Twilio's range when given.
pub fn settings(time_step: Option<i32>, code_length: Option<i32>, skew: Option<i32>) -> Checked<()> {
    for (field, value, range) in
        [("time_step", time_step, TIME_STEP), ("code_length", code_length, CODE_LENGTH), ("skew", skew, SKEW)]
    {
        if let Some(value) = value {
            in_range(field, value, range)?;
        }
    }
    Ok(())
}

/// The shape of an `auth_payload`: 3–8 ASCII digits. A well-shaped payload of another length
/// than the factor's `code_length` is simply a wrong code.
pub fn auth_payload(payload: &str) -> Checked<()> {
    let (min, max) = PAYLOAD_CHARS;
    if payload.len() < min || payload.len() > max || !payload.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Invalid::new("auth_payload", format!("must be {min} to {max} ASCII digits")));
    }
    Ok(())
}

/// A Twilio account SID, as totp-verify-server stores it on its services: `AC` + 32 lower-case
/// hex digits.
pub fn account_sid(sid: &str) -> Checked<()> {
    let hex = sid.strip_prefix("AC").unwrap_or("");
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(Invalid::new("account_sid", "must be AC followed by 32 lower-case hex digits"));
    }
    Ok(())
}

/// A caller-supplied secret: base32 of 128 bits or more.
pub fn secret(text: &str) -> Checked<Vec<u8>> {
    let bytes = crate::base32::decode(text).map_err(|e| Invalid::new("secret", format!("is not base32: {e}")))?;
    if bytes.len() < SECRET_MIN_BYTES {
        return Err(Invalid::new("secret", "must carry at least 128 bits (26 base32 characters)"));
    }
    if bytes.len() > SECRET_MAX_BYTES {
        return Err(Invalid::new("secret", format!("must carry at most {SECRET_MAX_BYTES} bytes")));
    }
    Ok(bytes)
}

/// A JSON document's text form: must be an object of at most 1024 characters.
pub fn json_object(field: &'static str, is_object: bool, text_len: usize) -> Checked<()> {
    if !is_object {
        return Err(Invalid::new(field, "must be a JSON object"));
    }
    if text_len > JSON_MAX_CHARS {
        return Err(Invalid::new(field, format!("must be at most {JSON_MAX_CHARS} characters")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_sids() {
        assert!(account_sid(&format!("AC{}", "0123456789abcdef".repeat(2))).is_ok());
        for bad in [
            "",
            "AC",
            &format!("AC{}", "A".repeat(32)),
            &format!("VA{}", "a".repeat(32)),
            &format!("AC{}", "a".repeat(33)),
        ] {
            assert!(account_sid(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn identities() {
        for ok in ["42", "user-42", "ff8cc8a1-5f3a-4f0e-9b3e-1f2d3c4b5a69", &"a".repeat(64)] {
            assert!(identity(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "a--b", "a b", "a_b", "é", "a'b", &"a".repeat(65), "a\nb"] {
            assert!(identity(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names() {
        assert!(friendly_name("friendly_name", "John’s phone").is_ok());
        assert!(friendly_name("friendly_name", &"é".repeat(64)).is_ok());
        assert!(friendly_name("friendly_name", &"é".repeat(65)).is_err());
        assert!(friendly_name("friendly_name", "").is_err());
        assert!(friendly_name("friendly_name", "a\u{7}b").is_err());
        for spoof in ["evil\u{202E}gpj.exe", "pay\u{200B}pal", "\u{FEFF}bank", "a\u{2066}b"] {
            assert!(friendly_name("friendly_name", spoof).is_err(), "{spoof:?}");
        }
        for blank in [" ", "   ", "\u{3000}", "\u{A0}"] {
            assert!(friendly_name("friendly_name", blank).is_err(), "{blank:?}");
        }
        assert!(friendly_name("friendly_name", "Ünïcødé 名前 ✓").is_ok());
    }

    #[test]
    fn payloads() {
        assert!(auth_payload("012345").is_ok());
        assert!(auth_payload("12").is_err());
        assert!(auth_payload("123456789").is_err());
        assert!(auth_payload("12345a").is_err());
        assert!(auth_payload("１２３４５６").is_err());
        let e = auth_payload("98765x").unwrap_err().to_string();
        assert!(!e.contains("98765"), "{e}");
    }

    #[test]
    fn secrets() {
        assert_eq!(secret("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ").unwrap(), b"12345678901234567890");
        assert!(secret("GEZDGNBVGY3TQOJQ").is_err(), "80 bits is too short");
        assert!(secret("gezd gnbv gy3t qojq gezd gnbv gy3t qojq====").is_ok());
        assert!(secret("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJ1").is_err());
    }

    #[test]
    fn ranges() {
        assert_eq!(in_range("skew", 2, SKEW), Ok(2));
        assert!(in_range("skew", 3, SKEW).is_err());
        assert!(in_range("time_step", 19, TIME_STEP).is_err());
    }
}
