//! Factors: POST/GET .../Entities/{identity}/Factors, GET/POST/DELETE .../Factors/{sid}.
//! POST .../Factors/{sid} with `AuthPayload` verifies the factor (`totp.verify_factor`); with
//! `FriendlyName` or `Config.*` it updates it (`totp.update_factor`); with both, it does both.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::Uri;
use serde_json::{json, Value};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::{check_owned, created, deleted, entity_url, ok, Reply};
use crate::auth::Ctx;
use crate::db;
use crate::error::ApiError;
use crate::form::{date, Form};
use crate::page::PageReq;
use crate::App;

const COLS: &str = "x.sid, x.service_sid, x.entity_sid, x.identity, x.friendly_name, x.status, x.factor_type, \
                    x.alg, x.code_length, x.time_step, x.skew, x.metadata, x.date_created, x.date_updated, s.account_sid";
const OWNED: &str = "WHERE s.sid = $1 AND s.account_sid = $2";

fn render(ctx: &Ctx, row: &Row) -> Value {
    let service: String = row.get("service_sid");
    let identity: String = row.get("identity");
    let sid: String = row.get("sid");
    json!({
        "sid": sid,
        "account_sid": row.get::<_, Option<String>>("account_sid"),
        "service_sid": service,
        "entity_sid": row.get::<_, String>("entity_sid"),
        "identity": identity,
        "date_created": date(row.get("date_created")),
        "date_updated": date(row.get("date_updated")),
        "friendly_name": row.get::<_, String>("friendly_name"),
        "status": row.get::<_, String>("status"),
        "factor_type": row.get::<_, String>("factor_type"),
        "config": {
            "alg": row.get::<_, String>("alg"),
            "skew": row.get::<_, i32>("skew"),
            "code_length": row.get::<_, i32>("code_length"),
            "time_step": row.get::<_, i32>("time_step"),
        },
        "metadata": row.get::<_, Option<Value>>("metadata"),
        "url": format!("{}/Factors/{sid}", entity_url(ctx, &service, &identity)),
    })
}

/// `FriendlyName` and `Config.*`, for create and update.
struct Config<'a> {
    friendly_name: Option<&'a str>,
    alg: Option<&'a str>,
    code_length: Option<i32>,
    time_step: Option<i32>,
    skew: Option<i32>,
}

fn config(form: &Form) -> Result<Config<'_>, ApiError> {
    Ok(Config {
        friendly_name: form.get("FriendlyName"),
        alg: form.get("Config.Alg"),
        code_length: form.int("Config.CodeLength", 60306)?,
        time_step: form.int("Config.TimeStep", 60306)?,
        skew: form.int("Config.Skew", 60306)?,
    })
}

pub async fn create(
    State(app): State<App>,
    ctx: Ctx,
    Path((service, identity)): Path<(String, String)>,
    uri: Uri,
    body: Bytes,
) -> Reply {
    let form = Form::parse(&body);
    match form.get("FactorType") {
        Some("totp") => {}
        Some("push") | Some("passkeys") => {
            return Err(ApiError::invalid(60369, "Factor type invalid or not provided: this server serves totp only"))
        }
        _ => return Err(ApiError::invalid(60369, "Factor type invalid or not provided")),
    }
    let c = config(&form)?;
    let secret = form.get("Binding.Secret");
    let metadata = form.json("Metadata")?;
    let sql = format!(
        "SELECT {COLS}, x.binding_secret, x.binding_uri FROM totp.services s CROSS JOIN LATERAL \
         totp.create_factor(s.sid, $3, $4, secret => $5, alg => $6, code_length => $7, time_step => $8, skew => $9, \
         metadata => $10::text::jsonb) x {OWNED}"
    );
    let params: [&(dyn ToSql + Sync); 10] = [
        &service,
        &ctx.account,
        &identity,
        &c.friendly_name,
        &secret,
        &c.alg,
        &c.code_length,
        &c.time_step,
        &c.skew,
        &metadata,
    ];
    let row = db::query_opt(&app, &sql, &params).await?.ok_or_else(|| ApiError::not_found(uri.path()))?;
    let mut body = render(&ctx, &row);
    // The only response that ever holds the secret (Twilio's new_factor).
    body["binding"] = json!({
        "secret": row.get::<_, String>("binding_secret"),
        "uri": row.get::<_, String>("binding_uri"),
    });
    body["options"] = Value::Null;
    created(body)
}

pub async fn fetch(
    State(app): State<App>,
    ctx: Ctx,
    Path((service, identity, sid)): Path<(String, String, String)>,
    uri: Uri,
) -> Reply {
    let sql = format!(
        "SELECT {COLS} FROM totp.services s JOIN totp.factors x ON x.service_sid = s.sid {OWNED} \
         AND x.identity = $3 AND x.sid = $4"
    );
    let row = db::query_opt(&app, &sql, &[&service, &ctx.account, &identity, &sid])
        .await?
        .ok_or_else(|| ApiError::not_found(uri.path()))?;
    ok(render(&ctx, &row))
}

pub async fn update(
    State(app): State<App>,
    ctx: Ctx,
    Path((service, identity, sid)): Path<(String, String, String)>,
    uri: Uri,
    body: Bytes,
) -> Reply {
    let form = Form::parse(&body);
    let c = config(&form)?;
    let auth_payload = form.get("AuthPayload");
    let changes = c.friendly_name.is_some()
        || c.alg.is_some()
        || c.code_length.is_some()
        || c.time_step.is_some()
        || c.skew.is_some();
    let mut row = None;
    if changes || auth_payload.is_none() {
        let sql = format!(
            "SELECT {COLS} FROM totp.services s CROSS JOIN LATERAL totp.update_factor(s.sid, $3, $4, \
             friendly_name => $5, alg => $6, code_length => $7, time_step => $8, skew => $9) x {OWNED}"
        );
        let params: [&(dyn ToSql + Sync); 9] =
            [&service, &ctx.account, &identity, &sid, &c.friendly_name, &c.alg, &c.code_length, &c.time_step, &c.skew];
        row = Some(db::query_opt(&app, &sql, &params).await?.ok_or_else(|| ApiError::not_found(uri.path()))?);
    }
    if let Some(payload) = auth_payload {
        let sql = format!(
            "SELECT {COLS} FROM totp.services s CROSS JOIN LATERAL totp.verify_factor(s.sid, $3, $4, $5) x {OWNED}"
        );
        row = Some(
            db::query_opt(&app, &sql, &[&service, &ctx.account, &identity, &sid, &payload])
                .await?
                .ok_or_else(|| ApiError::not_found(uri.path()))?,
        );
    }
    let row = row.ok_or_else(|| ApiError::not_found(uri.path()))?;
    ok(render(&ctx, &row))
}

pub async fn delete(
    State(app): State<App>,
    ctx: Ctx,
    Path((service, identity, sid)): Path<(String, String, String)>,
    uri: Uri,
) -> Reply {
    let sql = format!("SELECT 1 FROM totp.services s CROSS JOIN LATERAL totp.delete_factor(s.sid, $3, $4) d {OWNED}");
    deleted(db::query(&app, &sql, &[&service, &ctx.account, &identity, &sid]).await?.len(), uri.path())
}

pub async fn list(
    State(app): State<App>,
    ctx: Ctx,
    Path((service, identity)): Path<(String, String)>,
    uri: Uri,
) -> Reply {
    let page = PageReq::from(&Form::query(&uri))?;
    let sql = format!(
        "SELECT {COLS} FROM totp.services s JOIN totp.factors x ON x.service_sid = s.sid {OWNED} \
         AND x.identity = $3 ORDER BY x.date_created, x.sid LIMIT $4 OFFSET $5"
    );
    let rows = db::query(&app, &sql, &[&service, &ctx.account, &identity, &page.limit(), &page.offset]).await?;
    if rows.is_empty() {
        check_owned(&app, &ctx, &service, uri.path()).await?;
    }
    let items = rows.iter().map(|r| render(&ctx, r)).collect();
    ok(page.body("factors", items, &format!("{}/Factors", entity_url(&ctx, &service, &identity)), &[]))
}
