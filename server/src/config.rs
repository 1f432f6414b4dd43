//! Configuration from the environment (SPEC §10): `DATABASE_URL`, `TOTP_VERIFY_LISTEN`,
//! `TOTP_VERIFY_ACCOUNTS`, and optionally `TOTP_VERIFY_PUBLIC_URL`, `TOTP_VERIFY_POOL_SIZE` and
//! the webhook delivery timings `TOTP_VERIFY_WEBHOOK_{POLL,RETRY,RETRY_MAX,LEASE}_MS`.

use std::collections::HashMap;

/// Account SID -> auth token.
pub struct Accounts(HashMap<String, String>);

impl Accounts {
    /// `AC…:token[,AC…:token]`.
    pub fn parse(text: &str) -> Result<Accounts, String> {
        let mut accounts = HashMap::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (sid, token) = pair
                .split_once(':')
                .ok_or_else(|| "TOTP_VERIFY_ACCOUNTS: each entry is ACCOUNT_SID:TOKEN".to_string())?;
            if !is_account_sid(sid) {
                return Err(format!(
                    "TOTP_VERIFY_ACCOUNTS: {sid:?} is not an account SID (AC + 32 lower-case hex digits)"
                ));
            }
            if token.is_empty() {
                return Err(format!("TOTP_VERIFY_ACCOUNTS: the token of {sid} is empty"));
            }
            if accounts.insert(sid.to_string(), token.to_string()).is_some() {
                return Err(format!("TOTP_VERIFY_ACCOUNTS: {sid} is given twice"));
            }
        }
        if accounts.is_empty() {
            return Err("TOTP_VERIFY_ACCOUNTS is empty: give at least one ACCOUNT_SID:TOKEN".into());
        }
        Ok(Accounts(accounts))
    }

    /// The account's token.
    pub fn token(&self, sid: &str) -> Option<&str> {
        self.0.get(sid).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// `AC` + 32 lower-case hex digits, as the extension's `account_sid` column requires.
pub fn is_account_sid(sid: &str) -> bool {
    sid.len() == 34
        && sid.starts_with("AC")
        && sid[2..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

pub struct Config {
    pub database: tokio_postgres::Config,
    pub listen: String,
    pub accounts: Accounts,
    /// Scheme and host for the `url`s of responses when behind a proxy; else the request's Host.
    pub public_url: Option<String>,
    pub pool_size: usize,
    pub webhooks: crate::deliver::Settings,
}

/// A positive number of milliseconds from `name`, or `default`.
fn millis(name: &str, default: u64) -> Result<u64, String> {
    match std::env::var(name).ok().filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(v) => v.parse().ok().filter(|n| *n > 0).ok_or(format!("{name} must be a positive number of milliseconds")),
    }
}

impl Config {
    pub fn from_env() -> Result<Config, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let url = var("DATABASE_URL").ok_or("DATABASE_URL is not set (a libpq URI, e.g. postgresql:///app)")?;
        let database: tokio_postgres::Config =
            url.parse().map_err(|e| format!("DATABASE_URL is not a libpq connection string: {e}"))?;
        let listen = var("TOTP_VERIFY_LISTEN").unwrap_or_else(|| "127.0.0.1:8080".into());
        if std::net::ToSocketAddrs::to_socket_addrs(&listen).map_or(true, |mut a| a.next().is_none()) {
            return Err(format!("TOTP_VERIFY_LISTEN: {listen:?} is not host:port (e.g. 127.0.0.1:8080)"));
        }
        let accounts =
            Accounts::parse(&var("TOTP_VERIFY_ACCOUNTS").ok_or("TOTP_VERIFY_ACCOUNTS is not set (AC…:token pairs)")?)?;
        let public_url = var("TOTP_VERIFY_PUBLIC_URL").map(|u| u.trim_end_matches('/').to_string());
        if let Some(u) = &public_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(format!("TOTP_VERIFY_PUBLIC_URL: {u:?} must start with http:// or https://"));
            }
        }
        let pool_size = match var("TOTP_VERIFY_POOL_SIZE") {
            None => 16,
            Some(n) => n.parse().ok().filter(|n| *n > 0).ok_or("TOTP_VERIFY_POOL_SIZE must be a positive number")?,
        };
        let webhooks = crate::deliver::Settings {
            poll: std::time::Duration::from_millis(millis("TOTP_VERIFY_WEBHOOK_POLL_MS", 250)?),
            retry_base_ms: millis("TOTP_VERIFY_WEBHOOK_RETRY_MS", 1000)?,
            retry_max_ms: millis("TOTP_VERIFY_WEBHOOK_RETRY_MAX_MS", 600_000)?,
            lease_ms: millis("TOTP_VERIFY_WEBHOOK_LEASE_MS", 60_000)?,
        };
        Ok(Config { database, listen, accounts, public_url, pool_size, webhooks })
    }
}
