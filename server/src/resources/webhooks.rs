//! Webhooks: POST/GET /v2/Services/{sid}/Webhooks, GET/POST/DELETE .../Webhooks/{sid}. Stored
//! by the server (`totp_server.webhooks`); delivered by `crate::deliver`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::Uri;
use serde_json::{json, Value};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::{check_owned, created, deleted, ok, service_url, Reply};
use crate::auth::Ctx;
use crate::db;
use crate::error::ApiError;
use crate::form::{date, Form};
use crate::page::PageReq;
use crate::App;

const COLS: &str = "x.sid, x.service_sid, x.account_sid, x.friendly_name, x.event_types, x.status, x.version, \
                    x.webhook_url, x.date_created, x.date_updated";
pub const EVENT_TYPES: [&str; 6] =
    ["*", "factor.created", "factor.verified", "factor.deleted", "challenge.approved", "challenge.denied"];

fn render(ctx: &Ctx, row: &Row) -> Value {
    let service: String = row.get("service_sid");
    let sid: String = row.get("sid");
    json!({
        "sid": sid,
        "service_sid": service,
        "account_sid": row.get::<_, String>("account_sid"),
        "friendly_name": row.get::<_, String>("friendly_name"),
        "event_types": row.get::<_, Vec<String>>("event_types"),
        "status": row.get::<_, String>("status"),
        "version": row.get::<_, String>("version"),
        "webhook_url": row.get::<_, String>("webhook_url"),
        "webhook_method": "POST",
        "date_created": date(row.get("date_created")),
        "date_updated": date(row.get("date_updated")),
        "url": format!("{}/Webhooks/{sid}", service_url(ctx, &service)),
    })
}

/// The webhook's settings from a form; `None` where the form leaves one out.
struct Settings<'a> {
    friendly_name: Option<&'a str>,
    event_types: Option<Vec<String>>,
    url: Option<&'a str>,
    status: Option<&'a str>,
    version: Option<&'a str>,
}

fn settings(form: &Form) -> Result<Settings<'_>, ApiError> {
    let bad = |what: &str| ApiError::invalid(60306, format!("Invalid parameter: {what}"));
    let friendly_name = form.get("FriendlyName");
    if friendly_name.is_some_and(|n| n.trim().is_empty() || n.chars().count() > 64) {
        return Err(bad("FriendlyName must be 1 to 64 characters"));
    }
    let types = form.all("EventTypes");
    let event_types = if types.is_empty() {
        None
    } else {
        if let Some(t) = types.iter().find(|t| !EVENT_TYPES.contains(t)) {
            return Err(bad(&format!("EventTypes: {t:?} is not one of {}", EVENT_TYPES.join(", "))));
        }
        Some(types.into_iter().map(String::from).collect())
    };
    let url = form.get("WebhookUrl");
    if url.is_some_and(|u| {
        !(u.starts_with("http://") || u.starts_with("https://")) || u.parse::<axum::http::Uri>().is_err()
    }) {
        return Err(bad("WebhookUrl must be an http:// or https:// URL"));
    }
    let status = form.get("Status");
    if status.is_some_and(|s| s != "enabled" && s != "disabled") {
        return Err(bad("Status must be enabled or disabled"));
    }
    let version = form.get("Version");
    if version.is_some_and(|v| v != "v1" && v != "v2") {
        return Err(bad("Version must be v1 or v2"));
    }
    Ok(Settings { friendly_name, event_types, url, status, version })
}

pub async fn create(State(app): State<App>, ctx: Ctx, Path(service): Path<String>, uri: Uri, body: Bytes) -> Reply {
    let form = Form::parse(&body);
    let s = settings(&form)?;
    let (Some(name), Some(types), Some(url)) = (s.friendly_name, &s.event_types, s.url) else {
        return Err(ApiError::invalid(
            60306,
            "Invalid parameter: FriendlyName, EventTypes and WebhookUrl are required",
        ));
    };
    let sql = format!(
        "INSERT INTO totp_server.webhooks AS x (sid, service_sid, account_sid, friendly_name, event_types, status, \
         version, webhook_url, date_created, date_updated) \
         SELECT 'YW' || replace(gen_random_uuid()::text, '-', ''), s.sid, s.account_sid, $3, $4, $5, $6, $7, \
         now(), now() FROM totp.services s WHERE s.sid = $1 AND s.account_sid = $2 RETURNING {COLS}"
    );
    let params: [&(dyn ToSql + Sync); 7] =
        [&service, &ctx.account, &name, types, &s.status.unwrap_or("enabled"), &s.version.unwrap_or("v2"), &url];
    let row = db::query_opt(&app, &sql, &params).await?.ok_or_else(|| ApiError::not_found(uri.path()))?;
    created(render(&ctx, &row))
}

const OWNED: &str = "FROM totp.services s JOIN totp_server.webhooks x ON x.service_sid = s.sid \
                     WHERE s.sid = $1 AND s.account_sid = $2";

pub async fn fetch(State(app): State<App>, ctx: Ctx, Path((service, sid)): Path<(String, String)>, uri: Uri) -> Reply {
    let sql = format!("SELECT {COLS} {OWNED} AND x.sid = $3");
    let row = db::query_opt(&app, &sql, &[&service, &ctx.account, &sid])
        .await?
        .ok_or_else(|| ApiError::not_found(uri.path()))?;
    ok(render(&ctx, &row))
}

pub async fn update(
    State(app): State<App>,
    ctx: Ctx,
    Path((service, sid)): Path<(String, String)>,
    uri: Uri,
    body: Bytes,
) -> Reply {
    let form = Form::parse(&body);
    let s = settings(&form)?;
    let sql = format!(
        "UPDATE totp_server.webhooks x SET friendly_name = COALESCE($4, x.friendly_name), \
         event_types = COALESCE($5, x.event_types), status = COALESCE($6, x.status), version = COALESCE($7, x.version), \
         webhook_url = COALESCE($8, x.webhook_url), date_updated = now() \
         FROM totp.services s WHERE s.sid = $1 AND s.account_sid = $2 AND x.service_sid = s.sid AND x.sid = $3 \
         RETURNING {COLS}"
    );
    let params: [&(dyn ToSql + Sync); 8] =
        [&service, &ctx.account, &sid, &s.friendly_name, &s.event_types, &s.status, &s.version, &s.url];
    let row = db::query_opt(&app, &sql, &params).await?.ok_or_else(|| ApiError::not_found(uri.path()))?;
    ok(render(&ctx, &row))
}

pub async fn delete(State(app): State<App>, ctx: Ctx, Path((service, sid)): Path<(String, String)>, uri: Uri) -> Reply {
    let sql = "DELETE FROM totp_server.webhooks x USING totp.services s \
               WHERE s.sid = $1 AND s.account_sid = $2 AND x.service_sid = s.sid AND x.sid = $3 RETURNING x.sid";
    deleted(db::query(&app, sql, &[&service, &ctx.account, &sid]).await?.len(), uri.path())
}

pub async fn list(State(app): State<App>, ctx: Ctx, Path(service): Path<String>, uri: Uri) -> Reply {
    let page = PageReq::from(&Form::query(&uri))?;
    let sql = format!("SELECT {COLS} {OWNED} ORDER BY x.date_created, x.sid LIMIT $3 OFFSET $4");
    let rows = db::query(&app, &sql, &[&service, &ctx.account, &page.limit(), &page.offset]).await?;
    if rows.is_empty() {
        check_owned(&app, &ctx, &service, uri.path()).await?;
    }
    let items = rows.iter().map(|r| render(&ctx, r)).collect();
    ok(page.body("webhooks", items, &format!("{}/Webhooks", service_url(&ctx, &service)), &[]))
}
