-- totp_verify 0.3.0 -> 0.4.0 (issue 14, the Twilio-compatible REST server). Keeps every row; see
-- README "Upgrading".
--
-- * Services gain account_sid: the Twilio account (AC...) that created the service through
--   totp-verify-server, NULL for services created over SQL (every service that exists now).
-- * create_service takes it as a last argument account_sid (default NULL, so existing calls,
--   positional or named, keep working). It is dropped and created again with the EXECUTE grants
--   it had given again (the DO blocks below), as 0.2.0 -> 0.3.0 does.

ALTER TABLE totp_private.services
    ADD COLUMN account_sid text CHECK (account_sid ~ '^AC[0-9a-f]{32}$');
CREATE INDEX services_account ON totp_private.services (account_sid, date_created, sid) WHERE account_sid IS NOT NULL;

-- The new column comes last, where it is in a fresh install.
CREATE OR REPLACE VIEW totp.services WITH (security_barrier) AS
SELECT s.sid, s.friendly_name, s.totp_issuer, s.totp_time_step, s.totp_code_length, s.totp_skew,
       s.max_factor_attempts, s.max_challenge_attempts, s.max_challenges_per_hour,
       s.max_challenges_per_day, s.max_short_code_challenges_per_day, s.max_factors_per_entity,
       s.max_factor_creations_per_day, s.challenge_ttl, s.max_challenge_ttl,
       s.unverified_factor_ttl, s.event_retention, s.date_created, s.date_updated, s.account_sid
  FROM totp_private.services s, (SELECT) AS read_only;

-- The roles that may execute create_service, kept in a setting of this transaction until the new
-- function exists (cleared first: an update from an older version ran other scripts, which use
-- the same settings, in this very transaction).
DO $keep$
BEGIN
    PERFORM pg_catalog.set_config('totp_verify_upgrade.grantees_create_service', '', true);
    PERFORM pg_catalog.set_config('totp_verify_upgrade.grantees_' || p.proname,
             pg_catalog.string_agg(pg_catalog.quote_ident(r.rolname), ','), true)
       FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a, pg_catalog.pg_roles r
      WHERE p.oid = 'totp.create_service(text, text, integer, integer, integer, text)'::pg_catalog.regprocedure
        AND a.grantee = r.oid AND a.grantee <> p.proowner AND a.privilege_type = 'EXECUTE'
      GROUP BY p.proname;
END
$keep$;

DROP FUNCTION totp.create_service(text, text, integer, integer, integer, text);
CREATE FUNCTION totp.create_service(
	"friendly_name" TEXT,
	"issuer" TEXT DEFAULT NULL,
	"time_step" INT DEFAULT NULL,
	"code_length" INT DEFAULT NULL,
	"skew" INT DEFAULT NULL,
	"sid" TEXT DEFAULT NULL,
	"account_sid" TEXT DEFAULT NULL
) RETURNS totp.services
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'create_service_wrapper';

DO $restore$
DECLARE
    grantees text := pg_catalog.current_setting('totp_verify_upgrade.grantees_create_service', true);
BEGIN
    IF grantees <> '' THEN
        EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION totp.create_service TO %s', grantees);
    END IF;
END
$restore$;
