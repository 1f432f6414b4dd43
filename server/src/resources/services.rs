//! Services: POST/GET /v2/Services, GET/POST/DELETE /v2/Services/{sid}.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::Uri;
use serde_json::{json, Value};
use tokio_postgres::Row;

use super::{created, deleted, ok, service_url, Reply};
use crate::auth::Ctx;
use crate::db;
use crate::error::ApiError;
use crate::form::{date, Form};
use crate::page::PageReq;
use crate::App;

const COLS: &str = "x.sid, x.account_sid, x.friendly_name, x.totp_issuer, x.totp_time_step, x.totp_code_length, \
                    x.totp_skew, x.date_created, x.date_updated";

/// Twilio's service resource; what is not TOTP has Twilio's default (false, null).
fn render(ctx: &Ctx, row: &Row) -> Value {
    let sid: String = row.get("sid");
    let url = service_url(ctx, &sid);
    json!({
        "sid": sid,
        "account_sid": row.get::<_, Option<String>>("account_sid"),
        "friendly_name": row.get::<_, String>("friendly_name"),
        "code_length": 6,
        "lookup_enabled": false,
        "psd2_enabled": false,
        "skip_sms_to_landlines": false,
        "dtmf_input_required": false,
        "tts_name": null,
        "do_not_share_warning_enabled": false,
        "custom_code_enabled": false,
        "push": null,
        "totp": {
            "issuer": row.get::<_, Option<String>>("totp_issuer"),
            "time_step": row.get::<_, Option<i32>>("totp_time_step"),
            "code_length": row.get::<_, Option<i32>>("totp_code_length"),
            "skew": row.get::<_, Option<i32>>("totp_skew"),
        },
        "default_template_sid": null,
        "whatsapp": null,
        "passkeys": null,
        "verify_event_subscription_enabled": false,
        "date_created": date(row.get("date_created")),
        "date_updated": date(row.get("date_updated")),
        "url": url,
        "links": {
            "entities": format!("{url}/Entities"),
            "webhooks": format!("{url}/Webhooks"),
        },
    })
}

struct Settings<'a> {
    friendly_name: Option<&'a str>,
    issuer: Option<&'a str>,
    time_step: Option<i32>,
    code_length: Option<i32>,
    skew: Option<i32>,
}

fn settings(form: &Form) -> Result<Settings<'_>, ApiError> {
    Ok(Settings {
        friendly_name: form.get("FriendlyName"),
        issuer: form.get("Totp.Issuer"),
        time_step: form.int("Totp.TimeStep", 60200)?,
        code_length: form.int("Totp.CodeLength", 60200)?,
        skew: form.int("Totp.Skew", 60200)?,
    })
}

pub async fn create(State(app): State<App>, ctx: Ctx, body: Bytes) -> Reply {
    let form = Form::parse(&body);
    let s = settings(&form)?;
    let sql = format!(
        "SELECT {COLS} FROM totp.create_service($1, issuer => $2, time_step => $3, code_length => $4, skew => $5, \
         account_sid => $6) x"
    );
    let row =
        db::query_opt(&app, &sql, &[&s.friendly_name, &s.issuer, &s.time_step, &s.code_length, &s.skew, &ctx.account])
            .await?
            .ok_or_else(|| ApiError::not_found("/v2/Services"))?;
    created(render(&ctx, &row))
}

pub async fn fetch(State(app): State<App>, ctx: Ctx, Path(service): Path<String>, uri: Uri) -> Reply {
    let sql = format!("SELECT {COLS} FROM totp.services x WHERE x.sid = $1 AND x.account_sid = $2");
    let row =
        db::query_opt(&app, &sql, &[&service, &ctx.account]).await?.ok_or_else(|| ApiError::not_found(uri.path()))?;
    ok(render(&ctx, &row))
}

pub async fn update(State(app): State<App>, ctx: Ctx, Path(service): Path<String>, uri: Uri, body: Bytes) -> Reply {
    let form = Form::parse(&body);
    let s = settings(&form)?;
    let sql = format!(
        "SELECT {COLS} FROM totp.services s CROSS JOIN LATERAL totp.update_service(s.sid, friendly_name => $3, \
         issuer => $4, time_step => $5, code_length => $6, skew => $7) x WHERE s.sid = $1 AND s.account_sid = $2"
    );
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] =
        [&service, &ctx.account, &s.friendly_name, &s.issuer, &s.time_step, &s.code_length, &s.skew];
    let row = db::query_opt(&app, &sql, &params).await?.ok_or_else(|| ApiError::not_found(uri.path()))?;
    ok(render(&ctx, &row))
}

pub async fn delete(State(app): State<App>, ctx: Ctx, Path(service): Path<String>, uri: Uri) -> Reply {
    let sql = "SELECT 1 FROM totp.services s CROSS JOIN LATERAL totp.delete_service(s.sid) d \
               WHERE s.sid = $1 AND s.account_sid = $2";
    deleted(db::query(&app, sql, &[&service, &ctx.account]).await?.len(), uri.path())
}

pub async fn list(State(app): State<App>, ctx: Ctx, uri: Uri) -> Reply {
    let page = PageReq::from(&Form::query(&uri))?;
    let sql = format!(
        "SELECT {COLS} FROM totp.services x WHERE x.account_sid = $1 ORDER BY x.date_created, x.sid LIMIT $2 OFFSET $3"
    );
    let rows = db::query(&app, &sql, &[&ctx.account, &page.limit(), &page.offset]).await?;
    let items = rows.iter().map(|r| render(&ctx, r)).collect();
    ok(page.body("services", items, &format!("{}/v2/Services", ctx.base), &[]))
}
