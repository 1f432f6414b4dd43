//! Twilio Verify v2's TOTP resources under `/v2/Services`, one module each. Every statement that
//! touches a service's resources starts from `totp.services s WHERE s.sid = $1 AND
//! s.account_sid = $2`, so another account's service (or one created over SQL) is 20404, and the
//! extension's function runs only for the caller's own service (a LATERAL call runs once per row
//! of `s`, so not at all when there is none).

mod challenges;
mod entities;
mod factors;
mod services;
mod webhooks;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;

use crate::auth::Ctx;
use crate::db;
use crate::error::ApiError;
use crate::App;

pub fn routes() -> Router<App> {
    const ENTITY: &str = "/v2/Services/{service}/Entities/{identity}";
    Router::new()
        .route("/v2/Services", get(services::list).post(services::create))
        .route("/v2/Services/{service}", get(services::fetch).post(services::update).delete(services::delete))
        .route("/v2/Services/{service}/Entities", get(entities::list).post(entities::create))
        .route(ENTITY, get(entities::fetch).delete(entities::delete))
        .route(&format!("{ENTITY}/Factors"), get(factors::list).post(factors::create))
        .route(&format!("{ENTITY}/Factors/{{sid}}"), get(factors::fetch).post(factors::update).delete(factors::delete))
        .route(&format!("{ENTITY}/Challenges"), get(challenges::list).post(challenges::create))
        .route(&format!("{ENTITY}/Challenges/{{sid}}"), get(challenges::fetch).post(challenges::update))
        .route("/v2/Services/{service}/Webhooks", get(webhooks::list).post(webhooks::create))
        .route(
            "/v2/Services/{service}/Webhooks/{sid}",
            get(webhooks::fetch).post(webhooks::update).delete(webhooks::delete),
        )
        .method_not_allowed_fallback(|| async { ApiError::twilio(20004, "Method not allowed") })
}

pub type Reply = Result<Response, ApiError>;

pub fn created(body: Value) -> Reply {
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub fn ok(body: Value) -> Reply {
    Ok(Json(body).into_response())
}

pub fn deleted(rows: usize, path: &str) -> Reply {
    if rows == 0 {
        return Err(ApiError::not_found(path));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A list that came back empty: 20404 unless the service is the caller's.
pub async fn check_owned(app: &App, ctx: &Ctx, service: &str, path: &str) -> Result<(), ApiError> {
    let sql = "SELECT 1 FROM totp.services s WHERE s.sid = $1 AND s.account_sid = $2";
    match db::query_opt(app, sql, &[&service, &ctx.account]).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found(path)),
    }
}

/// `{base}/v2/Services/{service}`.
pub fn service_url(ctx: &Ctx, service: &str) -> String {
    format!("{}/v2/Services/{service}", ctx.base)
}

/// `{base}/v2/Services/{service}/Entities/{identity}`.
pub fn entity_url(ctx: &Ctx, service: &str, identity: &str) -> String {
    format!("{}/Entities/{identity}", service_url(ctx, service))
}
