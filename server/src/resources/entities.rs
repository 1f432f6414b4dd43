//! Entities: POST/GET /v2/Services/{sid}/Entities, GET/DELETE .../Entities/{identity}.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::Uri;
use serde_json::{json, Value};
use tokio_postgres::Row;

use super::{check_owned, created, deleted, entity_url, ok, service_url, Reply};
use crate::auth::Ctx;
use crate::db;
use crate::error::ApiError;
use crate::form::{date, Form};
use crate::page::PageReq;
use crate::App;

const COLS: &str = "x.sid, x.identity, x.service_sid, x.date_created, x.date_updated, s.account_sid";

fn render(ctx: &Ctx, row: &Row) -> Value {
    let service: String = row.get("service_sid");
    let identity: String = row.get("identity");
    let url = entity_url(ctx, &service, &identity);
    json!({
        "sid": row.get::<_, String>("sid"),
        "identity": identity,
        "account_sid": row.get::<_, Option<String>>("account_sid"),
        "service_sid": service,
        "date_created": date(row.get("date_created")),
        "date_updated": date(row.get("date_updated")),
        "url": url,
        "links": {
            "factors": format!("{url}/Factors"),
            "new_factors": format!("{url}/Factors"),
            "challenges": format!("{url}/Challenges"),
        },
    })
}

pub async fn create(State(app): State<App>, ctx: Ctx, Path(service): Path<String>, uri: Uri, body: Bytes) -> Reply {
    let form = Form::parse(&body);
    let sql = format!(
        "SELECT {COLS} FROM totp.services s CROSS JOIN LATERAL totp.create_entity(s.sid, $3) x \
         WHERE s.sid = $1 AND s.account_sid = $2"
    );
    let row = db::query_opt(&app, &sql, &[&service, &ctx.account, &form.get("Identity")])
        .await?
        .ok_or_else(|| ApiError::not_found(uri.path()))?;
    created(render(&ctx, &row))
}

pub async fn fetch(
    State(app): State<App>,
    ctx: Ctx,
    Path((service, identity)): Path<(String, String)>,
    uri: Uri,
) -> Reply {
    let sql = format!(
        "SELECT {COLS} FROM totp.services s JOIN totp.entities x ON x.service_sid = s.sid \
         WHERE s.sid = $1 AND s.account_sid = $2 AND x.identity = $3"
    );
    let row = db::query_opt(&app, &sql, &[&service, &ctx.account, &identity])
        .await?
        .ok_or_else(|| ApiError::not_found(uri.path()))?;
    ok(render(&ctx, &row))
}

pub async fn delete(
    State(app): State<App>,
    ctx: Ctx,
    Path((service, identity)): Path<(String, String)>,
    uri: Uri,
) -> Reply {
    let sql = "SELECT 1 FROM totp.services s CROSS JOIN LATERAL totp.delete_entity(s.sid, $3) d \
               WHERE s.sid = $1 AND s.account_sid = $2";
    deleted(db::query(&app, sql, &[&service, &ctx.account, &identity]).await?.len(), uri.path())
}

pub async fn list(State(app): State<App>, ctx: Ctx, Path(service): Path<String>, uri: Uri) -> Reply {
    let page = PageReq::from(&Form::query(&uri))?;
    let sql = format!(
        "SELECT {COLS} FROM totp.services s JOIN totp.entities x ON x.service_sid = s.sid \
         WHERE s.sid = $1 AND s.account_sid = $2 ORDER BY x.date_created, x.sid LIMIT $3 OFFSET $4"
    );
    let rows = db::query(&app, &sql, &[&service, &ctx.account, &page.limit(), &page.offset]).await?;
    if rows.is_empty() {
        check_owned(&app, &ctx, &service, uri.path()).await?;
    }
    let items = rows.iter().map(|r| render(&ctx, r)).collect();
    ok(page.body("entities", items, &format!("{}/Entities", service_url(&ctx, &service)), &[]))
}
