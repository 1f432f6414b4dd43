//! Challenges: POST/GET .../Entities/{identity}/Challenges, GET/POST .../Challenges/{sid}.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::Uri;
use serde_json::{json, Value};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::{check_owned, created, entity_url, ok, Reply};
use crate::auth::Ctx;
use crate::db;
use crate::error::ApiError;
use crate::form::{date, Form};
use crate::page::PageReq;
use crate::App;

const COLS: &str = "x.sid, x.service_sid, x.entity_sid, x.identity, x.factor_sid, x.status, x.responded_reason, \
                    x.details, x.hidden_details, x.metadata, x.factor_type, x.expiration_date, x.date_responded, \
                    x.date_created, x.date_updated, s.account_sid";
const OWNED: &str = "WHERE s.sid = $1 AND s.account_sid = $2";

fn render(ctx: &Ctx, row: &Row) -> Value {
    let service: String = row.get("service_sid");
    let identity: String = row.get("identity");
    let sid: String = row.get("sid");
    let url = format!("{}/Challenges/{sid}", entity_url(ctx, &service, &identity));
    json!({
        "sid": sid,
        "account_sid": row.get::<_, Option<String>>("account_sid"),
        "service_sid": service,
        "entity_sid": row.get::<_, String>("entity_sid"),
        "identity": identity,
        "factor_sid": row.get::<_, String>("factor_sid"),
        "date_created": date(row.get("date_created")),
        "date_updated": date(row.get("date_updated")),
        "date_responded": date(row.get("date_responded")),
        "expiration_date": date(row.get("expiration_date")),
        "status": row.get::<_, String>("status"),
        "responded_reason": row.get::<_, String>("responded_reason"),
        "details": row.get::<_, Option<Value>>("details"),
        "hidden_details": row.get::<_, Option<Value>>("hidden_details"),
        "metadata": row.get::<_, Option<Value>>("metadata"),
        "factor_type": row.get::<_, String>("factor_type"),
        "url": url,
        "links": {
            "notifications": format!("{url}/Notifications"),
        },
    })
}

/// `Details.Message` and `Details.Fields` (each a JSON `{"label", "value"}`) as Twilio stores
/// them: `{"message": ..., "fields": [...]}`.
fn details(form: &Form) -> Result<Option<String>, ApiError> {
    let message = form.get("Details.Message");
    let fields = form.all("Details.Fields");
    if message.is_none() && fields.is_empty() {
        return Ok(None);
    }
    let fields = fields
        .into_iter()
        .map(|f| {
            serde_json::from_str::<Value>(f)
                .map_err(|_| ApiError::invalid(60306, "Invalid parameter: each Details.Fields must be JSON"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut details = json!({ "message": message });
    if !fields.is_empty() {
        details["fields"] = Value::Array(fields);
    }
    Ok(Some(details.to_string()))
}

pub async fn create(
    State(app): State<App>,
    ctx: Ctx,
    Path((service, identity)): Path<(String, String)>,
    uri: Uri,
    body: Bytes,
) -> Reply {
    let form = Form::parse(&body);
    let factor_sid = form.get("FactorSid");
    let auth_payload = form.get("AuthPayload");
    let expiration = form.date("ExpirationDate")?;
    let details = details(&form)?;
    let hidden = form.json("HiddenDetails")?;
    let sql = format!(
        "SELECT {COLS} FROM totp.services s CROSS JOIN LATERAL totp.create_challenge(s.sid, $3, $4, \
         auth_payload => $5, expiration_date => $6, details => $7::text::jsonb, hidden_details => $8::text::jsonb) x {OWNED}"
    );
    let params: [&(dyn ToSql + Sync); 8] =
        [&service, &ctx.account, &identity, &factor_sid, &auth_payload, &expiration, &details, &hidden];
    let row = db::query_opt(&app, &sql, &params).await?.ok_or_else(|| ApiError::not_found(uri.path()))?;
    created(render(&ctx, &row))
}

pub async fn fetch(
    State(app): State<App>,
    ctx: Ctx,
    Path((service, identity, sid)): Path<(String, String, String)>,
    uri: Uri,
) -> Reply {
    let sql = format!(
        "SELECT {COLS} FROM totp.services s JOIN totp.challenges x ON x.service_sid = s.sid {OWNED} \
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
    let metadata = form.json("Metadata")?;
    let sql = format!(
        "SELECT {COLS} FROM totp.services s CROSS JOIN LATERAL totp.update_challenge(s.sid, $3, $4, $5, \
         metadata => $6::text::jsonb) x {OWNED}"
    );
    let params: [&(dyn ToSql + Sync); 6] =
        [&service, &ctx.account, &identity, &sid, &form.get("AuthPayload"), &metadata];
    let row = db::query_opt(&app, &sql, &params).await?.ok_or_else(|| ApiError::not_found(uri.path()))?;
    ok(render(&ctx, &row))
}

pub async fn list(
    State(app): State<App>,
    ctx: Ctx,
    Path((service, identity)): Path<(String, String)>,
    uri: Uri,
) -> Reply {
    let query = Form::query(&uri);
    let page = PageReq::from(&query)?;
    let factor_sid = query.get("FactorSid");
    let status = query.get("Status");
    if let Some(s) = status {
        if !["pending", "expired", "approved", "denied"].contains(&s) {
            return Err(ApiError::invalid(
                60306,
                "Invalid parameter: Status must be pending, expired, approved or denied",
            ));
        }
    }
    let order = match query.get("Order") {
        None | Some("asc") => "ASC",
        Some("desc") => "DESC",
        Some(_) => return Err(ApiError::invalid(60306, "Invalid parameter: Order must be asc or desc")),
    };
    let sql = format!(
        "SELECT {COLS} FROM totp.services s JOIN totp.challenges x ON x.service_sid = s.sid {OWNED} \
         AND x.identity = $3 AND ($4::text IS NULL OR x.factor_sid = $4) AND ($5::text IS NULL OR x.status = $5) \
         ORDER BY x.date_created {order}, x.sid {order} LIMIT $6 OFFSET $7"
    );
    let params: [&(dyn ToSql + Sync); 7] =
        [&service, &ctx.account, &identity, &factor_sid, &status, &page.limit(), &page.offset];
    let rows = db::query(&app, &sql, &params).await?;
    if rows.is_empty() {
        check_owned(&app, &ctx, &service, uri.path()).await?;
    }
    let items = rows.iter().map(|r| render(&ctx, r)).collect();
    let mut filters = Vec::new();
    for key in ["FactorSid", "Status", "Order"] {
        if let Some(v) = query.get(key) {
            filters.push((key, v));
        }
    }
    let list_url = format!("{}/Challenges", entity_url(&ctx, &service, &identity));
    ok(page.body("challenges", items, &list_url, &filters))
}
