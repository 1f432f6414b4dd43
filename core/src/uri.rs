//! The Key Uri Format (`otpauth://totp/...`) that authenticator apps scan.
//!
//! Parameter order and spelling follow Twilio's `binding.uri`:
//! `otpauth://totp/{issuer}:{account}?secret=…&issuer=…&algorithm=SHA1&digits=6&period=30`.

use crate::otp::Algorithm;

/// Percent-encodes UTF-8, keeping only RFC 3986 unreserved characters. A space becomes `%20`
/// (never `+`) and a `:` inside an issuer or account is encoded, so the label's one literal `:`
/// is unambiguous.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What goes into a `binding_uri`. `secret` is already normalized base32 (upper case, unpadded).
#[derive(Debug, Clone)]
pub struct KeyUri<'a> {
    pub secret: &'a str,
    pub account: &'a str,
    pub issuer: Option<&'a str>,
    pub alg: Algorithm,
    pub digits: u32,
    pub period: u32,
}

impl KeyUri<'_> {
    /// The URI. Without an issuer the label is the account alone and `issuer=` is omitted.
    pub fn render(&self) -> String {
        let account = percent_encode(self.account);
        let mut uri = String::from("otpauth://totp/");
        match self.issuer {
            Some(issuer) => {
                let issuer = percent_encode(issuer);
                uri.push_str(&format!("{issuer}:{account}?secret={}&issuer={issuer}", self.secret));
            }
            None => uri.push_str(&format!("{account}?secret={}", self.secret)),
        }
        uri.push_str(&format!("&algorithm={}&digits={}&period={}", self.alg.uri_name(), self.digits, self.period));
        uri
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twilio_example_shape() {
        let uri = KeyUri {
            secret: "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ",
            account: "John’s Phone",
            issuer: Some("test-issuer"),
            alg: Algorithm::Sha1,
            digits: 6,
            period: 30,
        }
        .render();
        assert_eq!(
            uri,
            "otpauth://totp/test-issuer:John%E2%80%99s%20Phone?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &issuer=test-issuer&algorithm=SHA1&digits=6&period=30"
        );
    }

    #[test]
    fn colons_and_ampersands_are_encoded() {
        let uri = KeyUri {
            secret: "MZXW6",
            account: "a:b&c d",
            issuer: Some("Acme: R&D"),
            alg: Algorithm::Sha512,
            digits: 8,
            period: 60,
        }
        .render();
        assert_eq!(
            uri,
            "otpauth://totp/Acme%3A%20R%26D:a%3Ab%26c%20d?secret=MZXW6&issuer=Acme%3A%20R%26D\
             &algorithm=SHA512&digits=8&period=60"
        );
    }

    #[test]
    fn no_issuer() {
        let uri =
            KeyUri { secret: "MZXW6", account: "alice", issuer: None, alg: Algorithm::Sha256, digits: 6, period: 30 }
                .render();
        assert_eq!(uri, "otpauth://totp/alice?secret=MZXW6&algorithm=SHA256&digits=6&period=30");
    }
}
