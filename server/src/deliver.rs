//! Webhook delivery from the durable `totp.events` (SPEC §10): at least once, signed as Twilio
//! signs (`X-Twilio-Signature`), retried with exponential backoff.
//!
//! Each round (every `TOTP_VERIFY_WEBHOOK_POLL_MS`, default 250 ms):
//! 1. enqueue: events newer than the stored cursor (every 40th round: minus an overlap of 2
//!    minutes, for transactions that commit after a later one; so the overlap's rescan costs
//!    once per 10 s at the default poll, not every round) become one `totp_server.deliveries` row per
//!    enabled webhook of their service whose `event_types` take them (`*` = all), created no
//!    later than the event; the (event, webhook) key makes a repeat a no-op;
//! 2. claim due rows (`FOR UPDATE SKIP LOCKED`), leasing each (`TOTP_VERIFY_WEBHOOK_LEASE_MS`,
//!    default 60 s) by moving its next attempt;
//! 3. POST each, form-encoded; a 2xx marks it delivered, anything else schedules the next attempt
//!    `TOTP_VERIFY_WEBHOOK_RETRY_MS` × 2^(attempts−1) later (at most
//!    `TOTP_VERIFY_WEBHOOK_RETRY_MAX_MS`).
//!
//! Everything is in the database, so an event recorded while the server is down, or a delivery
//! cut short by a killed server (its lease runs out), is delivered later. The `uuid` is the
//! event's id (`totp.events.id`): the same on every attempt, so a receiver can drop repeats.

use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::error::ApiError;
use crate::form::date;
use crate::App;

pub struct Settings {
    pub poll: Duration,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    /// How long a claimed delivery is not claimed again: the time a killed server's delivery
    /// waits. With several servers on one database keep it above the 10 s request timeout.
    pub lease_ms: u64,
}

const ENQUEUE: &str = "
WITH c AS (SELECT seen FROM totp_server.cursor WHERE one FOR UPDATE),
new AS (SELECT e.id, e.type, e.service_sid, e.date_created FROM totp.events e, c
         WHERE e.date_created > c.seen - $1::text::interval
           AND EXISTS (SELECT 1 FROM totp_server.webhooks w WHERE w.status = 'enabled')),
ins AS (INSERT INTO totp_server.deliveries (event_id, webhook_sid, next_attempt, enqueued_at)
        SELECT n.id, w.sid, now(), now() FROM new n JOIN totp_server.webhooks w
            ON w.service_sid = n.service_sid AND w.status = 'enabled' AND n.date_created >= w.date_created
           AND (n.type = ANY (w.event_types) OR '*' = ANY (w.event_types))
        ON CONFLICT DO NOTHING RETURNING 1)
UPDATE totp_server.cursor SET seen = GREATEST(seen, (SELECT max(n.date_created) FROM new n)) WHERE one";

const CLAIM: &str = "
UPDATE totp_server.deliveries d SET attempts = d.attempts + 1, next_attempt = now() + $1::text::interval
  FROM (SELECT q.event_id, q.webhook_sid FROM totp_server.deliveries q
         WHERE q.delivered_at IS NULL AND q.next_attempt <= now()
         ORDER BY q.next_attempt LIMIT 32 FOR UPDATE SKIP LOCKED) p,
       totp_server.webhooks w, totp.events e
 WHERE d.event_id = p.event_id AND d.webhook_sid = p.webhook_sid AND w.sid = d.webhook_sid
   AND w.status = 'enabled' AND e.id = d.event_id
RETURNING d.event_id::text AS uuid, d.webhook_sid, d.attempts, w.webhook_url, w.account_sid, e.type,
          e.service_sid, e.entity_identity, e.factor_sid, e.challenge_sid, e.date_created";

const DELIVERED: &str =
    "UPDATE totp_server.deliveries SET delivered_at = now() WHERE event_id = $1::text::uuid AND webhook_sid = $2";
const RETRY: &str = "UPDATE totp_server.deliveries SET next_attempt = now() + $3::text::interval \
                     WHERE event_id = $1::text::uuid AND webhook_sid = $2";
// Delivered rows outlive the enqueue overlap; rows of events pruned by run_maintenance go too.
const PRUNE: &str = "DELETE FROM totp_server.deliveries \
                     WHERE delivered_at < now() - interval '1 hour' OR enqueued_at < now() - interval '8 days'";

/// Twilio's signature: base64(HMAC-SHA1(token, url + every parameter's name and value, sorted)).
pub fn signature(token: &str, url: &str, params: &[(&str, String)]) -> String {
    let mut sorted: Vec<_> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
    sorted.sort();
    sorted.dedup();
    let mut mac = Hmac::<Sha1>::new_from_slice(token.as_bytes()).expect("HMAC takes any key length");
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

pub fn spawn(app: App, settings: Settings) {
    tokio::spawn(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("totp-verify-server/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client");
        let mut rounds: u64 = 0;
        loop {
            if rounds.is_multiple_of(240) {
                if let Err(e) = crate::db::query(&app, PRUNE, &[]).await {
                    eprintln!("totp-verify-server: pruning deliveries: {}", e.message);
                }
            }
            let overlap = rounds.is_multiple_of(40);
            rounds += 1;
            match round(&app, &http, &settings, overlap).await {
                // A full batch: there may be more due right away.
                Ok(32) => continue,
                Ok(_) => {}
                Err(e) => eprintln!("totp-verify-server: webhook delivery round failed: {}", e.message),
            }
            tokio::time::sleep(settings.poll).await;
        }
    });
}

async fn round(app: &App, http: &reqwest::Client, settings: &Settings, overlap: bool) -> Result<usize, ApiError> {
    let overlap = if overlap { "2 minutes" } else { "0 seconds" };
    crate::db::query(app, ENQUEUE, &[&overlap]).await?;
    let due = crate::db::query(app, CLAIM, &[&format!("{} milliseconds", settings.lease_ms)]).await?;
    let count = due.len();
    let mut sends = tokio::task::JoinSet::new();
    for row in due {
        let (app, http) = (app.clone(), http.clone());
        let (base, max) = (settings.retry_base_ms, settings.retry_max_ms);
        sends.spawn(async move { send(&app, &http, row, base, max).await });
    }
    while let Some(done) = sends.join_next().await {
        if let Ok(Err(e)) = done {
            eprintln!("totp-verify-server: recording a delivery: {}", e.message);
        }
    }
    Ok(count)
}

async fn send(
    app: &App,
    http: &reqwest::Client,
    row: tokio_postgres::Row,
    base_ms: u64,
    max_ms: u64,
) -> Result<(), ApiError> {
    let uuid: String = row.get("uuid");
    let webhook: String = row.get("webhook_sid");
    let attempts: i32 = row.get("attempts");
    let url: String = row.get("webhook_url");
    let account: String = row.get("account_sid");
    let kind: String = row.get("type");
    let mut params: Vec<(&str, String)> = vec![
        ("uuid", uuid.clone()),
        ("type", kind),
        ("account_sid", account.clone()),
        ("service_sid", row.get("service_sid")),
        ("entity_identity", row.get("entity_identity")),
        ("factor_sid", row.get("factor_sid")),
        ("factor_type", "totp".into()),
        ("date_created", date(row.get("date_created")).as_str().unwrap_or_default().to_string()),
    ];
    if let Some(challenge) = row.get::<_, Option<String>>("challenge_sid") {
        params.push(("challenge_sid", challenge));
    }
    let outcome = match app.accounts.token(&account) {
        None => Err("the webhook's account is no longer in TOTP_VERIFY_ACCOUNTS".to_string()),
        Some(token) => {
            let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(params.iter()).finish();
            let sent = http
                .post(&url)
                .header("X-Twilio-Signature", signature(token, &url, &params))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err(format!("HTTP {}", r.status().as_u16())),
                Err(e) => Err(if e.is_timeout() { "timed out".into() } else { "unreachable".into() }),
            }
        }
    };
    match outcome {
        Ok(()) => crate::db::query(app, DELIVERED, &[&uuid, &webhook]).await.map(drop),
        Err(why) => {
            let exponent = (attempts.max(1) - 1).min(30) as u32;
            let wait = base_ms.saturating_mul(1u64 << exponent).min(max_ms);
            eprintln!("totp-verify-server: webhook {webhook}: event {uuid} not delivered ({why}), attempt {attempts}; next in {wait} ms");
            crate::db::query(app, RETRY, &[&uuid, &webhook, &format!("{wait} milliseconds")]).await.map(drop)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::signature;

    #[test]
    fn signature_sorts_parameters_and_covers_url_and_values() {
        let params = [("b", "2".to_string()), ("a", "1".to_string())];
        let reordered = [("a", "1".to_string()), ("b", "2".to_string())];
        let s = signature("token", "https://example.com/hook", &params);
        assert_eq!(s, signature("token", "https://example.com/hook", &reordered));
        assert_ne!(s, signature("token", "https://example.com/hook?x", &params));
        assert_ne!(s, signature("other", "https://example.com/hook", &params));
        assert_ne!(s, signature("token", "https://example.com/hook", &[("a", "1".into()), ("b", "3".into())]));
        assert_eq!(s.len(), 28); // base64 of the 20 bytes of HMAC-SHA1
    }
}
