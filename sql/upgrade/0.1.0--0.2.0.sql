-- totp_verify 0.1.0 -> 0.2.0 (issue 10, security). Keeps every row; see README "Upgrading".
--
-- * services and entities move to totp_private behind read-only security_barrier views, like
--   every table (a TRIGGER or UPDATE grant on schema totp must not reach the owner's rights);
-- * events become rows of totp_private.events (NOTIFY carries no payload any more);
-- * factors gain per-time_step replay guards and date_verified;
-- * rotate_key/retire_keys run with the caller's rights (the superuser check is the caller's);
-- * update_service takes every limit, run_maintenance reports pruned events, and a
--   four-argument has_recent_approval counts only aged factors.
-- Functions whose signature changes are dropped and created again; the EXECUTE grants they had
-- are given again (the DO blocks below).

ALTER TABLE totp.services SET SCHEMA totp_private;
ALTER TABLE totp.entities SET SCHEMA totp_private;
-- Their column comments now belong to the views (comments.sql below), as in a fresh install.
DO $uncomment$
DECLARE
    col record;
BEGIN
    FOR col IN SELECT a.attrelid::pg_catalog.regclass AS rel, a.attname
                 FROM pg_catalog.pg_attribute a
                WHERE a.attrelid IN ('totp_private.services'::pg_catalog.regclass,
                                     'totp_private.entities'::pg_catalog.regclass)
                  AND a.attnum > 0 AND NOT a.attisdropped LOOP
        EXECUTE pg_catalog.format('COMMENT ON COLUMN %s.%I IS NULL', col.rel, col.attname);
    END LOOP;
END
$uncomment$;
ALTER TABLE totp_private.services
    ADD COLUMN event_retention interval NOT NULL DEFAULT '7 days' CHECK (event_retention > '0');
ALTER TABLE totp_private.factors ADD COLUMN replay_guards jsonb, ADD COLUMN date_verified timestamptz;
-- 0.1.0 did not record when a factor was verified; its last update is no earlier than that, so
-- min_factor_age measured from it errs on the strict side.
UPDATE totp_private.factors SET date_verified = date_updated WHERE status = 'verified';

CREATE TABLE totp_private.events (
    identity                     text        NOT NULL,
    id                           uuid        NOT NULL,
    type                         text        NOT NULL CHECK (type IN ('factor.created', 'factor.verified',
                                     'factor.deleted', 'challenge.approved', 'challenge.denied')),
    service_sid                  text        NOT NULL,
    factor_sid                   text        NOT NULL,
    challenge_sid                text,
    date_created                 timestamptz NOT NULL
);
-- No primary key: id is a random UUID (unique by construction), and a key on (identity, id)
-- would cost every approval a random B-tree insertion. Deliverers and run_maintenance read by
-- date, whose index grows at its right edge; per-identity reads use it with the identity filter.
CREATE INDEX events_date_created ON totp_private.events (date_created);
SELECT pg_catalog.pg_extension_config_dump('totp_private.events', '');

CREATE VIEW totp.services WITH (security_barrier) AS
SELECT s.sid, s.friendly_name, s.totp_issuer, s.totp_time_step, s.totp_code_length, s.totp_skew,
       s.max_factor_attempts, s.max_challenge_attempts, s.max_challenges_per_hour,
       s.max_challenges_per_day, s.max_short_code_challenges_per_day, s.max_factors_per_entity,
       s.max_factor_creations_per_day, s.challenge_ttl, s.max_challenge_ttl,
       s.unverified_factor_ttl, s.event_retention, s.date_created, s.date_updated
  FROM totp_private.services s, (SELECT) AS read_only;

CREATE VIEW totp.entities WITH (security_barrier) AS
SELECT e.identity, e.service_sid, e.sid, e.date_created, e.date_updated, e.factor_window_start,
       e.factors_created_in_window
  FROM totp_private.entities e, (SELECT) AS read_only;

CREATE OR REPLACE VIEW totp.factors WITH (security_barrier) AS
SELECT f.sid, f.service_sid, f.entity_sid, f.identity, f.friendly_name, f.factor_type, f.status,
       f.alg, f.code_length, f.time_step, f.skew, f.metadata, f.date_created, f.date_updated
  FROM totp_private.factors f, (SELECT) AS read_only
 WHERE f.unverified_until IS NULL OR f.unverified_until > pg_catalog.now();

CREATE OR REPLACE VIEW totp.challenges WITH (security_barrier) AS
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

-- The roles that may execute a function about to be dropped, kept in a setting of this
-- transaction until the new function exists.
DO $keep$
BEGIN
    PERFORM pg_catalog.set_config('totp_verify_upgrade.grantees_' || p.proname,
             pg_catalog.string_agg(pg_catalog.quote_ident(r.rolname), ','), true)
       FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a, pg_catalog.pg_roles r
      WHERE p.oid IN ('totp.update_service(text, text, text, integer, integer, integer)'::pg_catalog.regprocedure,
                      'totp.run_maintenance()'::pg_catalog.regprocedure,
                      'totp.create_service(text, text, integer, integer, integer)'::pg_catalog.regprocedure,
                      'totp.create_entity(text, text)'::pg_catalog.regprocedure)
        AND a.grantee = r.oid AND a.grantee <> p.proowner AND a.privilege_type = 'EXECUTE'
      GROUP BY p.proname;
END
$keep$;

DROP FUNCTION totp.update_service(text, text, text, integer, integer, integer);
CREATE FUNCTION totp.update_service(
	"sid" TEXT,
	"friendly_name" TEXT DEFAULT NULL,
	"issuer" TEXT DEFAULT NULL,
	"time_step" INT DEFAULT NULL,
	"code_length" INT DEFAULT NULL,
	"skew" INT DEFAULT NULL,
	"max_factor_attempts" INT DEFAULT NULL,
	"max_challenge_attempts" INT DEFAULT NULL,
	"max_challenges_per_hour" INT DEFAULT NULL,
	"max_challenges_per_day" INT DEFAULT NULL,
	"max_short_code_challenges_per_day" INT DEFAULT NULL,
	"max_factors_per_entity" INT DEFAULT NULL,
	"max_factor_creations_per_day" INT DEFAULT NULL,
	"challenge_ttl" interval DEFAULT NULL,
	"max_challenge_ttl" interval DEFAULT NULL,
	"unverified_factor_ttl" interval DEFAULT NULL,
	"event_retention" interval DEFAULT NULL
) RETURNS totp.services
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'update_service_wrapper';

DROP FUNCTION totp.run_maintenance();
CREATE FUNCTION totp.run_maintenance() RETURNS TABLE (
	"expired_challenges" bigint,
	"deleted_factors" bigint,
	"pruned_events" bigint
)
STRICT VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'run_maintenance_wrapper';

-- The new return types: the services and entities views' rows.
DROP FUNCTION totp.create_service(text, text, integer, integer, integer);
CREATE FUNCTION totp.create_service(
	"friendly_name" TEXT,
	"issuer" TEXT DEFAULT NULL,
	"time_step" INT DEFAULT NULL,
	"code_length" INT DEFAULT NULL,
	"skew" INT DEFAULT NULL
) RETURNS totp.services
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'create_service_wrapper';

DROP FUNCTION totp.create_entity(text, text);
CREATE FUNCTION totp.create_entity(
	"service_sid" TEXT,
	"identity" TEXT
) RETURNS totp.entities
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'create_entity_wrapper';

DO $restore$
DECLARE
    name text;
    grantees text;
BEGIN
    FOREACH name IN ARRAY ARRAY['update_service', 'run_maintenance', 'create_service', 'create_entity'] LOOP
        grantees := pg_catalog.current_setting('totp_verify_upgrade.grantees_' || name, true);
        IF grantees <> '' THEN
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION totp.%I TO %s', name, grantees);
        END IF;
    END LOOP;
END
$restore$;

CREATE FUNCTION totp.has_recent_approval_from_aged_factor(
	"service_sid" TEXT,
	"identity" TEXT,
	"within" interval,
	"min_factor_age" interval
) RETURNS bool
STABLE SECURITY DEFINER PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'has_recent_approval_from_aged_factor_wrapper';

CREATE FUNCTION totp_private.forget_identity(
	"service_sid" TEXT,
	"identity" TEXT
) RETURNS bool
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'forget_identity_wrapper';

ALTER FUNCTION totp.rotate_key(integer) SECURITY INVOKER;
ALTER FUNCTION totp.retire_keys() SECURITY INVOKER;

