//! totp_verify — Twilio Verify's TOTP model (services, entities, factors, challenges) inside
//! PostgreSQL. This file is the table of contents.
//!
//! - `core/` (crate `totp_core`): pure RFC 4226/6238/4648 logic, URIs, SIDs, validation and
//!   sealing, with no Postgres in it.
//! - [`api`]: the SQL surface, one module per SQL noun.
//! - [`error`]: every refusal, its SQLSTATE and Twilio code.
//! - [`guess_limit`]: the shared-memory count of wrong codes that no rollback undoes.
//! - [`keyring`]: the key file, changed only at commit.
//! - [`db`], [`clock`], [`guc`], [`jsonb`]: SPI plumbing, the one clock reading per call,
//!   settings, and exact `jsonb` arguments.
//! - `sql/`: the schema (`bootstrap.sql`), trigger functions (`triggers.sql`), the shipped grant
//!   sets (`grants.sql`), Citus distribution (`distribute.sql`), privileges (`finalize.sql`), and
//!   `COMMENT`s (`comments.sql`).

// SQL-facing functions return `Result<_, ErrorReport>` because that is how pgrx raises an ERROR
// with our SQLSTATE; the report is large, but it is built once, on the way out.
#![allow(clippy::result_large_err)]

use pgrx::prelude::*;

mod api;
mod clock;
mod db;
mod error;
mod guc;
mod guess_limit;
mod jsonb;
mod keyring;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../sql/bootstrap.sql", name = "bootstrap", bootstrap);
extension_sql_file!(
    "../sql/triggers.sql",
    name = "triggers",
    requires = [has_recent_approval, has_recent_approval_from_aged_factor, forget_identity]
);
extension_sql_file!("../sql/grants.sql", name = "grants", requires = ["triggers"]);
extension_sql_file!("../sql/distribute.sql", name = "distribute", requires = ["grants"]);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);
extension_sql_file!("../sql/comments.sql", name = "comments", requires = ["finalize"]);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    guc::init();
    guess_limit::init();
    keyring::init();
}

#[cfg(any(test, feature = "pg_test"))]
#[allow(clippy::module_inception)]
mod tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'totp_verify'"]
    }
}
