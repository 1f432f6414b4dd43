//! The server's own tables, in schema `totp_server` (created at start when missing): webhooks
//! (Twilio's resource; not part of the extension, which knows nothing of HTTP) and the delivery
//! queue that makes webhook delivery at-least-once from `totp.events`.

pub const SETUP: &str = "
-- CREATE SCHEMA IF NOT EXISTS checks the CREATE privilege on the database even when the schema
-- exists: a schema made beforehand for the server's role must do without it.
DO $setup$ BEGIN
    IF pg_catalog.to_regnamespace('totp_server') IS NULL THEN CREATE SCHEMA totp_server; END IF;
END $setup$;
CREATE TABLE IF NOT EXISTS totp_server.webhooks (
    sid           text        PRIMARY KEY CHECK (sid ~ '^YW[0-9a-f]{32}$'),
    service_sid   text        NOT NULL,
    account_sid   text        NOT NULL,
    friendly_name text        NOT NULL CHECK (char_length(friendly_name) BETWEEN 1 AND 64),
    event_types   text[]      NOT NULL,
    status        text        NOT NULL CHECK (status IN ('enabled', 'disabled')),
    version       text        NOT NULL CHECK (version IN ('v1', 'v2')),
    webhook_url   text        NOT NULL,
    date_created  timestamptz NOT NULL,
    date_updated  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS webhooks_service ON totp_server.webhooks (service_sid, date_created, sid);
-- One row per (event, webhook) to deliver; kept a while after delivery so that the overlap of
-- the next scans of totp.events does not enqueue it again.
CREATE TABLE IF NOT EXISTS totp_server.deliveries (
    event_id      uuid        NOT NULL,
    webhook_sid   text        NOT NULL,
    attempts      integer     NOT NULL DEFAULT 0,
    next_attempt  timestamptz NOT NULL,
    enqueued_at   timestamptz NOT NULL,
    delivered_at  timestamptz,
    PRIMARY KEY (event_id, webhook_sid)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON totp_server.deliveries (next_attempt) WHERE delivered_at IS NULL;
-- The latest totp.events.date_created enqueued.
CREATE TABLE IF NOT EXISTS totp_server.cursor (
    one  boolean     PRIMARY KEY DEFAULT true CHECK (one),
    seen timestamptz NOT NULL
);
INSERT INTO totp_server.cursor (one, seen) VALUES (true, '-infinity') ON CONFLICT DO NOTHING;
";
