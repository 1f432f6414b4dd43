-- totp_verify schema: the relations of SPEC §2, keyed by identity for scale-out (SPEC §9).
--
-- Layout: every table lives in totp_private; schema totp holds only read-only views, types and
-- functions.
--   totp_private.services         configuration and limits (read-mostly, no counters)
--   totp_private.entities         one row per (identity, service)
--   totp_private.factors          factors, their counters and replay guards
--   totp_private.factor_secrets   each factor's sealed secret
--   totp_private.challenges       challenges and their attempt counters
--   totp_private.events           the webhook events, durable rows
--   totp.services, totp.entities, totp.factors, totp.challenges, totp.events
--                                 views: what applications read; never a secret
--
-- Why every table is private: no grant a DBA may give on schema totp may reach the owner's
-- rights or change state (SPEC §2). A table in totp would take `GRANT ALL ON ALL TABLES IN
-- SCHEMA totp`: UPDATE would rewrite limits, and TRIGGER would attach a caller's function that
-- runs as the owner whenever a SECURITY DEFINER function writes the table. No role but the
-- extension owner has USAGE on totp_private; the views and the SECURITY DEFINER functions read
-- it on the caller's behalf.
--
-- Why the views are read-only by construction: an auto-updatable view would let a role given
-- INSERT/UPDATE/DELETE on it write the private table through the owner's rights. Each view
-- selects from its table plus a one-row, no-column subquery (`read_only`): a view with two FROM
-- items is never auto-updatable, whatever is granted, and the planner removes the empty item, so
-- queries on the views plan as on the tables. Each is a security_barrier, so a caller's leaky
-- function in a WHERE clause cannot see the rows the view hides.
--
-- Why views for factors and challenges: an unverified factor past its lifetime is gone, and a
-- pending challenge past its expiration_date is expired, whether or not maintenance has run
-- (SPEC §6). The views compute that at read time from the stored deadline.
--
-- No sequences, no triggers, no advisory locks (SPEC §9): SIDs come from the CSPRNG in Rust,
-- and concurrency is row locks on the factor row.

CREATE SCHEMA totp_private;
REVOKE ALL ON SCHEMA totp_private FROM PUBLIC;

CREATE TABLE totp_private.services (
    sid                          text        NOT NULL PRIMARY KEY CHECK (sid ~ '^VA[0-9a-f]{32}$'),
    friendly_name                text        NOT NULL CHECK (char_length(friendly_name) BETWEEN 1 AND 64),
    totp_issuer                  text        CHECK (char_length(totp_issuer) BETWEEN 1 AND 64),
    totp_time_step               integer     CHECK (totp_time_step BETWEEN 20 AND 60),
    totp_code_length             integer     CHECK (totp_code_length BETWEEN 3 AND 8),
    totp_skew                    integer     CHECK (totp_skew BETWEEN 0 AND 2),
    -- Limits (SPEC §6), Twilio's defaults. update_service changes them.
    max_factor_attempts          integer     NOT NULL DEFAULT 5   CHECK (max_factor_attempts > 0),
    max_challenge_attempts       integer     NOT NULL DEFAULT 5   CHECK (max_challenge_attempts > 0),
    max_challenges_per_hour      integer     NOT NULL DEFAULT 50  CHECK (max_challenges_per_hour > 0),
    max_challenges_per_day       integer     NOT NULL DEFAULT 100 CHECK (max_challenges_per_day > 0),
    max_short_code_challenges_per_day integer NOT NULL DEFAULT 10 CHECK (max_short_code_challenges_per_day > 0),
    max_factors_per_entity       integer     NOT NULL DEFAULT 100 CHECK (max_factors_per_entity > 0),
    max_factor_creations_per_day integer     NOT NULL DEFAULT 100 CHECK (max_factor_creations_per_day > 0),
    challenge_ttl                interval    NOT NULL DEFAULT '5 minutes',
    max_challenge_ttl            interval    NOT NULL DEFAULT '60 minutes',
    unverified_factor_ttl        interval    NOT NULL DEFAULT '24 hours' CHECK (unverified_factor_ttl > '0'),
    date_created                 timestamptz NOT NULL,
    date_updated                 timestamptz NOT NULL,
    -- How long run_maintenance keeps the service's rows of totp.events. (Columns added after
    -- 0.1.0 come last, where ALTER TABLE ADD COLUMN puts them in an upgraded database.)
    event_retention              interval    NOT NULL DEFAULT '7 days' CHECK (event_retention > '0'),
    -- The Twilio account (AC...) that created the service through totp-verify-server (0.4.0);
    -- NULL for services created over SQL.
    account_sid                  text        CHECK (account_sid ~ '^AC[0-9a-f]{32}$'),
    CHECK (challenge_ttl > '0' AND challenge_ttl <= max_challenge_ttl AND max_challenge_ttl <= '60 minutes')
);

CREATE TABLE totp_private.entities (
    identity                     text        NOT NULL,
    service_sid                  text        NOT NULL REFERENCES totp_private.services (sid) ON DELETE CASCADE,
    sid                          text        NOT NULL CHECK (sid ~ '^YE[0-9a-f]{32}$'),
    date_created                 timestamptz NOT NULL,
    date_updated                 timestamptz NOT NULL,
    -- Factor creations in the current 24-hour window (60326). A counter, not a scan.
    factor_window_start          timestamptz,
    factors_created_in_window    integer     NOT NULL DEFAULT 0,
    PRIMARY KEY (identity, service_sid),
    UNIQUE (identity, sid)
);
CREATE INDEX entities_service_sid ON totp_private.entities (service_sid);

-- Only the extension's SECURITY DEFINER functions write totp_private, and they generate the
-- SIDs: the per-user tables skip regular-expression CHECKs, which every UPDATE and INSERT on
-- the verification path would otherwise evaluate. Since 0.5.0 the tables every verification
-- writes (factors, challenges, events) have no CHECK constraints at all: Postgres re-reads
-- and re-plans a table's CHECK expressions in every statement that writes it (about a third of
-- create_challenge's time in 0.4.0), and every value they held to is written from Rust, checked
-- there (validate::settings for code_length, time_step and skew, Algorithm for alg, fixed
-- strings for the statuses, types and responded_reason). The comments below name the values.
CREATE TABLE totp_private.factors (
    identity                     text        NOT NULL,
    sid                          text        NOT NULL,
    service_sid                  text        NOT NULL REFERENCES totp_private.services (sid) ON DELETE CASCADE,
    entity_sid                   text        NOT NULL,
    friendly_name                text        NOT NULL,
    factor_type                  text        NOT NULL DEFAULT 'totp',        -- 'totp'
    status                       text        NOT NULL DEFAULT 'unverified',  -- 'unverified', 'verified'
    alg                          text        NOT NULL,                       -- 'sha1', 'sha256', 'sha512'
    code_length                  integer     NOT NULL,                       -- 3 .. 8
    time_step                    integer     NOT NULL,                       -- 20 .. 60
    skew                         integer     NOT NULL,                       -- 0 .. 2
    metadata                     jsonb,
    date_created                 timestamptz NOT NULL,
    date_updated                 timestamptz NOT NULL,
    -- An unverified factor is gone after this moment (NULL once verified).
    unverified_until             timestamptz,
    -- Replay guard: the last time step accepted, by verify_factor or a challenge (RFC 6238 §5.2),
    -- counted in steps of the current time_step.
    last_step                    bigint,
    -- Wrong codes submitted to verify_factor (60310).
    failed_verifications         integer     NOT NULL DEFAULT 0,
    -- Challenge creations in the current hour and 24-hour windows (60312).
    challenge_hour_start         timestamptz,
    challenges_in_hour           integer     NOT NULL DEFAULT 0,
    challenge_day_start          timestamptz,
    challenges_in_day            integer     NOT NULL DEFAULT 0,
    -- The replay guards of the other time_steps this factor has had ({"30": step, ...}): steps of
    -- different lengths are not comparable, so each length keeps its own guard, and a time_step
    -- changed there and back finds its old guard again.
    replay_guards                jsonb,
    -- When verify_factor accepted the factor's first code (NULL while unverified).
    date_verified                timestamptz,
    PRIMARY KEY (identity, sid),
    FOREIGN KEY (identity, entity_sid) REFERENCES totp_private.entities (identity, sid) ON DELETE CASCADE
);
CREATE INDEX factors_service_sid ON totp_private.factors (service_sid);
CREATE INDEX factors_unverified_until ON totp_private.factors (unverified_until)
    WHERE unverified_until IS NOT NULL;

-- The secret of each factor, sealed with AES-256-GCM under key key_id, the factor SID as
-- associated data. Apart from the factor row so that key rotation rewrites these rows without
-- locking the factor rows verifications lock: a verification reads the last committed
-- ciphertext, which the old key (kept until unused) still opens.
CREATE TABLE totp_private.factor_secrets (
    identity                     text        NOT NULL,
    factor_sid                   text        NOT NULL,
    key_id                       bigint      NOT NULL,
    sealed                       bytea       NOT NULL,
    PRIMARY KEY (identity, factor_sid),
    FOREIGN KEY (identity, factor_sid) REFERENCES totp_private.factors (identity, sid) ON DELETE CASCADE
);
CREATE INDEX factor_secrets_key_id ON totp_private.factor_secrets (key_id);

-- No foreign key to totp.services: a second one would make every challenge lock the (one,
-- shared) service row FOR KEY SHARE; delete_service deletes the service's challenges itself.
CREATE TABLE totp_private.challenges (
    identity                     text        NOT NULL,
    sid                          text        NOT NULL,
    service_sid                  text        NOT NULL,
    entity_sid                   text        NOT NULL,
    factor_sid                   text        NOT NULL,
    factor_type                  text        NOT NULL DEFAULT 'totp',  -- 'totp'
    status                       text        NOT NULL,                 -- 'pending', 'approved', 'denied', 'expired'
    responded_reason             text        NOT NULL DEFAULT 'none',  -- 'none', 'not_needed', 'not_requested'
    details                      jsonb,
    hidden_details               jsonb,
    metadata                     jsonb,
    expiration_date              timestamptz NOT NULL,
    date_responded               timestamptz,
    date_created                 timestamptz NOT NULL,
    date_updated                 timestamptz NOT NULL,
    -- Wrong codes submitted for this challenge (60308).
    failed_attempts              integer     NOT NULL DEFAULT 0,
    PRIMARY KEY (identity, sid)
);
-- No foreign key to the factor (0.7.0, issue 16): its check was a query of its own in every
-- challenge creation (8 % of create_challenge), although every statement that writes a challenge
-- has just locked the factor row FOR UPDATE, which is stronger than the check's FOR KEY SHARE.
-- Its cascade is explicit instead: delete_factor, delete_entity, delete_service and
-- release/import_identity delete the challenges after the factor rows (the lock order of every
-- call: factor, then challenge; delete_service by service_sid, a scan of this table, as the one
-- call that spans identities). Unverified factors, which run_maintenance and create_factor
-- delete, never have challenges (create_challenge refuses them; import_identity refuses
-- challenges of factors it does not bring). Where the factor matters (update_challenge,
-- has_recent_approval) the factor is joined and a challenge older than it is ignored, so that
-- challenges left by a factor deleted by hand stay inert even if its SID is used again.
-- No index on (identity, factor_sid): deleting a factor finds its challenges through the
-- primary key's identity prefix (an identity has few challenges), and every index here is one
-- more random B-tree insertion per challenge.
CREATE INDEX challenges_pending_expiry ON totp_private.challenges (expiration_date)
    WHERE status = 'pending';
CREATE INDEX challenges_approved ON totp_private.challenges (identity, service_sid, date_responded)
    WHERE status = 'approved';

-- The name of this database's key file, totp_verify-<keyring_id>.key in the data directory, and
-- the database it belongs to (a restored copy adopts a file of its own; see src/keyring.rs).
CREATE TABLE totp_private.keyring (
    one_row                      boolean     NOT NULL PRIMARY KEY DEFAULT true CHECK (one_row),
    keyring_id                   text        NOT NULL CHECK (keyring_id ~ '^[0-9a-f]{32}$'),
    database_oid                 oid         NOT NULL
);
-- Its one row is written on first use, not here, so that a restore's copy of the source's row
-- does not collide with a fresh one.

-- Which keys have sealed secrets in this database. Only ids and states, never key material
-- (SPEC §8: the key never lives in a table); lets rotation and a missing key file be told apart.
CREATE TABLE totp_private.keys (
    key_id                       bigint      NOT NULL PRIMARY KEY,
    -- current: seals new secrets; previous: still in the key file for secrets not yet re-sealed;
    -- retired: removed from the key file once no secret used it; added: put in the key file by
    -- add_key() and waiting to become current (a rotation in stages, as on Citus).
    state                        text        NOT NULL CHECK (state IN ('current', 'previous', 'retired', 'added')),
    date_created                 timestamptz NOT NULL
);

-- The webhook events of SPEC §7, written in the transaction that made the change and pruned by
-- run_maintenance after the service's event_retention. It carries identity, the distribution key, like
-- every per-user table; no foreign keys, so the events of a deleted entity or service stay deliverable.
CREATE TABLE totp_private.events (
    identity                     text        NOT NULL,
    id                           uuid        NOT NULL,
    -- 'factor.created', 'factor.verified', 'factor.deleted', 'challenge.approved', 'challenge.denied'
    type                         text        NOT NULL,
    service_sid                  text        NOT NULL,
    factor_sid                   text        NOT NULL,
    challenge_sid                text,
    date_created                 timestamptz NOT NULL
);
-- No primary key: id is a random UUID (unique by construction), and a key on (identity, id)
-- would cost every approval a random B-tree insertion. Deliverers and run_maintenance read by
-- date, whose index grows at its right edge; per-identity reads use it with the identity filter.
CREATE INDEX events_date_created ON totp_private.events (date_created);
-- totp-verify-server lists an account's services in creation order.
CREATE INDEX services_account ON totp_private.services (account_sid, date_created, sid) WHERE account_sid IS NOT NULL;

-- PL/Proxy (SPEC §11): this database's place among a router's partitions, set by
-- totp.set_partition(); no row on a lone node or on Citus. Every identity-scoped call refuses an
-- identity that belongs elsewhere: placements[identity] if it was moved, else
-- totp.shard_hash(identity) & (part_count - 1), the partition PL/Proxy's RUN ON picks.
CREATE TABLE totp_private.partition (
    one_row                      boolean     NOT NULL PRIMARY KEY DEFAULT true CHECK (one_row),
    part_no                      integer     NOT NULL,
    part_count                   integer     NOT NULL,
    CHECK (part_count BETWEEN 1 AND 1024 AND part_count & (part_count - 1) = 0
           AND part_no >= 0 AND part_no < part_count)
);
-- Identities moved off their hashed partition (release_identity / import_identity), on the
-- source and the destination alike: where each lives now.
CREATE TABLE totp_private.placements (
    identity                     text        NOT NULL PRIMARY KEY,
    part_no                      integer     NOT NULL CHECK (part_no >= 0)
);

CREATE VIEW totp.services WITH (security_barrier) AS
SELECT s.sid, s.friendly_name, s.totp_issuer, s.totp_time_step, s.totp_code_length, s.totp_skew,
       s.max_factor_attempts, s.max_challenge_attempts, s.max_challenges_per_hour,
       s.max_challenges_per_day, s.max_short_code_challenges_per_day, s.max_factors_per_entity,
       s.max_factor_creations_per_day, s.challenge_ttl, s.max_challenge_ttl,
       s.unverified_factor_ttl, s.event_retention, s.date_created, s.date_updated, s.account_sid
  FROM totp_private.services s, (SELECT) AS read_only;

CREATE VIEW totp.entities WITH (security_barrier) AS
SELECT e.identity, e.service_sid, e.sid, e.date_created, e.date_updated, e.factor_window_start,
       e.factors_created_in_window
  FROM totp_private.entities e, (SELECT) AS read_only;

CREATE VIEW totp.factors WITH (security_barrier) AS
SELECT f.sid, f.service_sid, f.entity_sid, f.identity, f.friendly_name, f.factor_type, f.status,
       f.alg, f.code_length, f.time_step, f.skew, f.metadata, f.date_created, f.date_updated
  FROM totp_private.factors f, (SELECT) AS read_only
 WHERE f.unverified_until IS NULL OR f.unverified_until > pg_catalog.now();

CREATE VIEW totp.challenges WITH (security_barrier) AS
SELECT c.sid, c.service_sid, c.entity_sid, c.identity, c.factor_sid, c.factor_type,
       CASE WHEN c.status = 'pending' AND c.expiration_date <= pg_catalog.now()
            THEN 'expired' ELSE c.status END AS status,
       c.responded_reason, c.details, c.hidden_details, c.metadata, c.expiration_date,
       c.date_responded, c.date_created, c.date_updated
  FROM totp_private.challenges c, (SELECT) AS read_only;

CREATE VIEW totp.events WITH (security_barrier) AS
SELECT e.id, e.type, e.service_sid, e.identity AS entity_identity, e.factor_sid, e.challenge_sid,
       e.date_created
  FROM totp_private.events e, (SELECT) AS read_only;

-- What create_factor returns: the factor's columns plus the binding, shown this once.
CREATE TYPE totp.new_factor AS (
    sid text, service_sid text, entity_sid text, identity text, friendly_name text,
    factor_type text, status text, alg text, code_length integer, time_step integer, skew integer,
    metadata jsonb, date_created timestamptz, date_updated timestamptz,
    binding_secret text, binding_uri text
);

-- pg_dump keeps every row (SPEC §7). Secrets are dumped sealed; the key file is not in the dump.
SELECT pg_catalog.pg_extension_config_dump('totp_private.services', '');
SELECT pg_catalog.pg_extension_config_dump('totp_private.entities', '');
SELECT pg_catalog.pg_extension_config_dump('totp_private.events', '');
SELECT pg_catalog.pg_extension_config_dump('totp_private.factors', '');
SELECT pg_catalog.pg_extension_config_dump('totp_private.factor_secrets', '');
SELECT pg_catalog.pg_extension_config_dump('totp_private.challenges', '');
SELECT pg_catalog.pg_extension_config_dump('totp_private.keys', '');
SELECT pg_catalog.pg_extension_config_dump('totp_private.keyring', '');
SELECT pg_catalog.pg_extension_config_dump('totp_private.partition', '');
SELECT pg_catalog.pg_extension_config_dump('totp_private.placements', '');
