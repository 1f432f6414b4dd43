//! The connection pool and statement execution: statements are prepared once per connection.

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use crate::config::Config;
use crate::error::ApiError;
use crate::App;

pub async fn pool(config: &Config) -> Result<Pool, String> {
    let manager =
        Manager::from_config(config.database.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    let pool =
        Pool::builder(manager).max_size(config.pool_size).build().map_err(|e| format!("connection pool: {e}"))?;
    // Fail at start, with a clear message, rather than on the first request.
    let client = pool.get().await.map_err(|e| format!("cannot connect to DATABASE_URL: {e}"))?;
    let found = client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_attribute WHERE attrelid = 'totp.services'::regclass AND attname = 'account_sid'",
            &[],
        )
        .await
        .map_err(|e| format!("DATABASE_URL: the totp_verify extension is not usable there ({e})"))?;
    if found.is_none() {
        return Err("DATABASE_URL: totp_verify is older than 0.4.0 (no totp.services.account_sid): ALTER EXTENSION totp_verify UPDATE".into());
    }
    client
        .batch_execute(crate::schema::SETUP)
        .await
        .map_err(|e| format!("cannot create the server's tables (schema totp_server): {e}"))?;
    Ok(pool)
}

pub type Params<'a> = [&'a (dyn ToSql + Sync)];

pub async fn query(app: &App, sql: &str, params: &Params<'_>) -> Result<Vec<Row>, ApiError> {
    let client = app.pool.get().await?;
    let statement = client.prepare_cached(sql).await?;
    Ok(client.query(&statement, params).await?)
}

pub async fn query_opt(app: &App, sql: &str, params: &Params<'_>) -> Result<Option<Row>, ApiError> {
    Ok(query(app, sql, params).await?.into_iter().next())
}
