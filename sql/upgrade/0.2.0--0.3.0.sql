-- totp_verify 0.2.0 -> 0.3.0 (issue 13, ready to distribute). Keeps every row; see README "Upgrading".
--
-- * create_service and create_factor take a caller-supplied sid (last argument, default NULL, so
--   existing calls keep working): services can be created identically on many nodes, and a
--   migration from Twilio keeps the factor SIDs applications stored.
-- * No table changes. The statements the library runs changed (no whole-row references, no
--   STABLE/VOLATILE functions in per-identity writes), which needs no SQL here.
-- Functions whose signature changes are dropped and created again; the EXECUTE grants they had
-- are given again (the DO blocks below), as 0.1.0 -> 0.2.0 does.

-- The roles that may execute a function about to be dropped, kept in a setting of this
-- transaction until the new function exists (cleared first: an update from 0.1.0 ran the
-- 0.1.0 -> 0.2.0 script, which uses the same settings, in this very transaction).
DO $keep$
BEGIN
    PERFORM pg_catalog.set_config('totp_verify_upgrade.grantees_' || name, '', true)
       FROM pg_catalog.unnest(ARRAY['create_service', 'create_factor']) AS name;
    PERFORM pg_catalog.set_config('totp_verify_upgrade.grantees_' || p.proname,
             pg_catalog.string_agg(pg_catalog.quote_ident(r.rolname), ','), true)
       FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a, pg_catalog.pg_roles r
      WHERE p.oid IN ('totp.create_service(text, text, integer, integer, integer)'::pg_catalog.regprocedure,
                      'totp.create_factor(text, text, text, text, text, integer, integer, integer, jsonb)'::pg_catalog.regprocedure)
        AND a.grantee = r.oid AND a.grantee <> p.proowner AND a.privilege_type = 'EXECUTE'
      GROUP BY p.proname;
END
$keep$;

DROP FUNCTION totp.create_service(text, text, integer, integer, integer);
CREATE FUNCTION totp.create_service(
	"friendly_name" TEXT,
	"issuer" TEXT DEFAULT NULL,
	"time_step" INT DEFAULT NULL,
	"code_length" INT DEFAULT NULL,
	"skew" INT DEFAULT NULL,
	"sid" TEXT DEFAULT NULL
) RETURNS totp.services
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'create_service_wrapper';

DROP FUNCTION totp.create_factor(text, text, text, text, text, integer, integer, integer, jsonb);
CREATE FUNCTION totp.create_factor(
	"service_sid" TEXT,
	"identity" TEXT,
	"friendly_name" TEXT,
	"secret" TEXT DEFAULT NULL,
	"alg" TEXT DEFAULT NULL,
	"code_length" INT DEFAULT NULL,
	"time_step" INT DEFAULT NULL,
	"skew" INT DEFAULT NULL,
	"metadata" jsonb DEFAULT NULL,
	"sid" TEXT DEFAULT NULL
) RETURNS totp.new_factor
VOLATILE SECURITY DEFINER PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'create_factor_wrapper';

DO $restore$
DECLARE
    name text;
    grantees text;
BEGIN
    FOREACH name IN ARRAY ARRAY['create_service', 'create_factor'] LOOP
        grantees := pg_catalog.current_setting('totp_verify_upgrade.grantees_' || name, true);
        IF grantees <> '' THEN
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION totp.%I TO %s', name, grantees);
        END IF;
    END LOOP;
END
$restore$;
