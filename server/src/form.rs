//! Twilio's form bodies and query strings: `application/x-www-form-urlencoded` with dotted names
//! (`Totp.Issuer`, `Config.Alg`) and repeated keys (`Details.Fields`).

use std::time::SystemTime;

use crate::error::ApiError;

pub struct Form(Vec<(String, String)>);

impl Form {
    pub fn parse(bytes: &[u8]) -> Form {
        Form(form_urlencoded::parse(bytes).into_owned().collect())
    }

    pub fn query(uri: &axum::http::Uri) -> Form {
        Form::parse(uri.query().unwrap_or("").as_bytes())
    }

    /// The value of `key` (the last one, if repeated).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Every value of a repeated `key`, in order.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.0.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
    }

    /// An integer parameter; `code` is the Twilio error for a value that is not one.
    pub fn int(&self, key: &str, code: u32) -> Result<Option<i32>, ApiError> {
        self.get(key)
            .map(|v| {
                v.trim()
                    .parse()
                    .map_err(|_| ApiError::invalid(code, format!("Invalid parameter: {key} must be an integer")))
            })
            .transpose()
    }

    /// A JSON parameter (`Metadata`, `HiddenDetails`), checked to be JSON and passed on as text so
    /// that the extension stores it exactly as given. Its value is never quoted in an error.
    pub fn json(&self, key: &str) -> Result<Option<&str>, ApiError> {
        match self.get(key) {
            Some(v) if serde_json::from_str::<serde::de::IgnoredAny>(v).is_err() => {
                Err(ApiError::invalid(60306, format!("Invalid parameter: {key} must be JSON")))
            }
            v => Ok(v),
        }
    }

    /// A date-time parameter in Twilio's ISO 8601 form (`2021-01-01T00:00:00Z`).
    pub fn date(&self, key: &str) -> Result<Option<SystemTime>, ApiError> {
        self.get(key)
            .map(|v| {
                humantime::parse_rfc3339_weak(v.trim_end_matches('Z').trim_end_matches("+00:00")).map_err(|_| {
                    ApiError::invalid(
                        60306,
                        format!("Invalid parameter: {key} must be an ISO 8601 date (YYYY-MM-DDTHH:MM:SSZ)"),
                    )
                })
            })
            .transpose()
    }
}

/// Twilio's date format, `YYYY-MM-DDTHH:MM:SSZ`.
pub fn date(t: Option<SystemTime>) -> serde_json::Value {
    match t {
        Some(t) => humantime::format_rfc3339_seconds(t).to_string().into(),
        None => serde_json::Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_and_dotted_keys() {
        let form = Form::parse(b"Details.Fields=%7B%22a%22%3A1%7D&Details.Fields=2&Config.Alg=sha256&X=1&X=2");
        assert_eq!(form.all("Details.Fields"), vec!["{\"a\":1}", "2"]);
        assert_eq!(form.get("Config.Alg"), Some("sha256"));
        assert_eq!(form.get("X"), Some("2"));
        assert!(form.int("Config.Alg", 60306).is_err());
    }

    #[test]
    fn dates_round_trip_in_twilio_format() {
        let form = Form::parse(b"ExpirationDate=2030-01-02T03%3A04%3A05Z");
        let t = form.date("ExpirationDate").unwrap();
        assert_eq!(date(t), serde_json::Value::from("2030-01-02T03:04:05Z"));
        assert!(Form::parse(b"D=tomorrow").date("D").is_err());
    }
}
