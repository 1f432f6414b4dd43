//! Twilio-style SIDs: a two-letter prefix and 32 lower-case hex characters of CSPRNG output.
//!
//! Random SIDs (never sequences) let the tables distribute by identity later (SPEC §9).

/// The resource kinds and their SID prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidKind {
    Service,
    Entity,
    Factor,
    Challenge,
}

impl SidKind {
    pub fn prefix(self) -> &'static str {
        match self {
            SidKind::Service => "VA",
            SidKind::Entity => "YE",
            SidKind::Factor => "YF",
            SidKind::Challenge => "YC",
        }
    }

    /// The resource's name in messages ("service", "factor", ...).
    pub fn noun(self) -> &'static str {
        match self {
            SidKind::Service => "service",
            SidKind::Entity => "entity",
            SidKind::Factor => "factor",
            SidKind::Challenge => "challenge",
        }
    }
}

pub const SID_LEN: usize = 34;

/// A new SID of `kind` from 16 CSPRNG bytes.
pub fn generate(kind: SidKind) -> String {
    let mut sid = String::with_capacity(SID_LEN);
    sid.push_str(kind.prefix());
    sid.push_str(&crate::random::hex(16));
    sid
}

/// Whether `text` is a well-formed SID of `kind` (prefix + 32 lower-case hex).
pub fn is_valid(kind: SidKind, text: &str) -> bool {
    text.len() == SID_LEN
        && text.starts_with(kind.prefix())
        && text[2..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn generated_sids_are_well_formed_and_distinct() {
        let mut seen = HashSet::new();
        for kind in [SidKind::Service, SidKind::Entity, SidKind::Factor, SidKind::Challenge] {
            for _ in 0..1000 {
                let sid = generate(kind);
                assert!(is_valid(kind, &sid), "{sid}");
                assert!(seen.insert(sid));
            }
        }
    }

    #[test]
    fn malformed_sids_are_refused() {
        let good = generate(SidKind::Factor);
        assert!(!is_valid(SidKind::Challenge, &good));
        assert!(!is_valid(SidKind::Factor, &good.to_uppercase()));
        assert!(!is_valid(SidKind::Factor, &good[..33]));
        assert!(!is_valid(SidKind::Factor, "YF0123456789abcdef0123456789abcdeg"));
        assert!(!is_valid(SidKind::Factor, "YFé123456789abcdef0123456789abcde"));
        assert!(!is_valid(SidKind::Factor, ""));
    }
}
