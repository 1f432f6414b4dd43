//! `totp-verify-server`: Twilio Verify v2's TOTP REST API (SPEC §10) over the totp_verify
//! extension. Every request becomes one call of the extension's SQL functions (or one read of its
//! views); no TOTP logic lives here.
//!
//! Layout: `config` (environment), `auth` (HTTP Basic, the account), `error` (Twilio's error
//! body, mapped from SQLSTATE + "(Twilio NNNNN)"), `form` (Twilio's form bodies and query
//! strings), `page` (Twilio's list paging), `db` (the pool and statements), `resources/` (one
//! module per Twilio resource: routes, SQL and JSON shape), `schema` (the server's own tables:
//! webhooks and their delivery queue), `deliver` (webhook delivery from `totp.events`).

mod auth;
mod config;
mod db;
mod deliver;
mod error;
mod form;
mod page;
mod resources;
mod schema;

use std::process::ExitCode;
use std::sync::Arc;

use axum::Router;

/// What every handler gets: the pool, the accounts, and the public URL override.
#[derive(Clone)]
pub struct App {
    pub pool: deadpool_postgres::Pool,
    pub accounts: Arc<config::Accounts>,
    pub public_url: Option<Arc<str>>,
}

fn router(app: App) -> Router {
    resources::routes().fallback(error::not_found_route).with_state(app)
}

#[tokio::main]
async fn main() -> ExitCode {
    let config = match config::Config::from_env() {
        Ok(config) => config,
        Err(message) => {
            eprintln!("totp-verify-server: {message}");
            return ExitCode::from(2);
        }
    };
    let pool = match db::pool(&config).await {
        Ok(pool) => pool,
        Err(message) => {
            eprintln!("totp-verify-server: {message}");
            return ExitCode::from(1);
        }
    };
    let listener = match tokio::net::TcpListener::bind(&config.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("totp-verify-server: cannot listen on {}: {e}", config.listen);
            return ExitCode::from(1);
        }
    };
    let app = App { pool, accounts: Arc::new(config.accounts), public_url: config.public_url.map(Arc::from) };
    deliver::spawn(app.clone(), config.webhooks);
    eprintln!(
        "totp-verify-server: listening on http://{} ({} account(s))",
        listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        app.accounts.len()
    );
    // Responses go out in one write; without TCP_NODELAY a keep-alive client can wait on
    // Nagle's algorithm and delayed ACKs.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let served = axum::serve(listener, router(app)).with_graceful_shutdown(shutdown()).await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("totp-verify-server: {e}");
            ExitCode::from(1)
        }
    }
}

/// Ends on SIGINT or SIGTERM.
async fn shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}
