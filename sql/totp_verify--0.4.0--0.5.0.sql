-- totp_verify 0.4.0 -> 0.5.0. Keeps every row; see README "Upgrading".

-- ---- issue 16 (faster than doing it yourself) -------------------------------------------------
-- The tables every verification writes lose their CHECK constraints: Postgres re-reads and
-- re-plans a table's CHECK expressions in every statement that writes it (about a third of
-- create_challenge's time in 0.4.0). Only the extension writes them, and every value they held to
-- is checked in Rust before it is written (see sql/bootstrap.sql). Rows are unchanged.
ALTER TABLE totp_private.factors
    DROP CONSTRAINT factors_factor_type_check,
    DROP CONSTRAINT factors_status_check,
    DROP CONSTRAINT factors_alg_check,
    DROP CONSTRAINT factors_code_length_check,
    DROP CONSTRAINT factors_time_step_check,
    DROP CONSTRAINT factors_skew_check;
ALTER TABLE totp_private.challenges
    DROP CONSTRAINT challenges_factor_type_check,
    DROP CONSTRAINT challenges_status_check,
    DROP CONSTRAINT challenges_responded_reason_check;
ALTER TABLE totp_private.events
    DROP CONSTRAINT events_type_check;
-- ---- end of issue 16 ---------------------------------------------------------------------------
-- Trigger functions (sql/triggers.sql) and grant sets (sql/grants.sql), as in a fresh install.
-- Trigger functions for an application's own tables (SPEC §7). They read the identity from a
-- column of any type through its text form (to_jsonb(row) ->> column), so an integer primary
-- key works. SECURITY DEFINER so the application's role needs no rights on the extension's
-- tables, with search_path pinned and every name qualified.

CREATE OR REPLACE FUNCTION totp.forget_entity() RETURNS trigger
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    row_json jsonb;
    entity_identity text;
BEGIN
    IF TG_NARGS <> 2 OR TG_OP <> 'DELETE' OR TG_LEVEL <> 'ROW' THEN
        RAISE EXCEPTION 'totp.forget_entity() must be an AFTER DELETE ... FOR EACH ROW trigger with arguments (service_sid, identity_column) (Twilio 60200)'
            USING ERRCODE = '22023';
    END IF;
    row_json := pg_catalog.to_jsonb(OLD);
    IF NOT row_json ? TG_ARGV[1] THEN
        RAISE EXCEPTION 'column "%" not found in %.%', TG_ARGV[1], TG_TABLE_SCHEMA, TG_TABLE_NAME
            USING ERRCODE = '42703';
    END IF;
    entity_identity := row_json ->> TG_ARGV[1];
    -- Checks the service SID (60200 when malformed) even for a NULL identity, so a misconfigured
    -- trigger fails at its first use instead of silently keeping every entity; records the
    -- factor.deleted events.
    PERFORM totp_private.forget_identity(TG_ARGV[0], entity_identity);
    RETURN OLD;
END
$$;

CREATE OR REPLACE FUNCTION totp.require_approval() RETURNS trigger
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    max_age interval;
    min_factor_age interval;
    identities text[];
    entity_identity text;
BEGIN
    IF TG_NARGS NOT IN (3, 4) OR TG_WHEN <> 'BEFORE' OR TG_LEVEL <> 'ROW' THEN
        RAISE EXCEPTION 'totp.require_approval() must be a BEFORE ... FOR EACH ROW trigger with arguments (service_sid, identity_column, max_age [, min_factor_age]) (Twilio 60200)'
            USING ERRCODE = '22023';
    END IF;
    BEGIN
        max_age := TG_ARGV[2]::interval;
        IF TG_NARGS = 4 THEN
            min_factor_age := TG_ARGV[3]::interval;
        END IF;
    EXCEPTION WHEN data_exception THEN
        RAISE EXCEPTION 'totp.require_approval(): max_age and min_factor_age must be intervals (Twilio 60200)'
            USING ERRCODE = '22023';
    END;
    -- Every identity the write touches must have stepped up: the row's owner before and after.
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        IF NOT pg_catalog.to_jsonb(NEW) ? TG_ARGV[1] THEN
            RAISE EXCEPTION 'column "%" not found in %.%', TG_ARGV[1], TG_TABLE_SCHEMA, TG_TABLE_NAME
                USING ERRCODE = '42703';
        END IF;
        identities := identities || (pg_catalog.to_jsonb(NEW) ->> TG_ARGV[1]);
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        identities := identities || (pg_catalog.to_jsonb(OLD) ->> TG_ARGV[1]);
    END IF;
    FOREACH entity_identity IN ARRAY identities LOOP
        IF entity_identity IS NULL
           OR NOT (CASE WHEN min_factor_age IS NULL
                        THEN totp.has_recent_approval(TG_ARGV[0], entity_identity, max_age)
                        ELSE totp.has_recent_approval_from_aged_factor(TG_ARGV[0], entity_identity, max_age, min_factor_age)
                   END) THEN
            RAISE EXCEPTION 'step-up approval required'
                USING ERRCODE = '42501',
                      DETAIL = pg_catalog.format('%s on %I.%I needs a challenge approved within %s for this identity%s.',
                                                 TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME, max_age,
                                                 CASE WHEN min_factor_age IS NULL THEN ''
                                                      ELSE ', through a factor verified at least ' || min_factor_age::text || ' before' END),
                      HINT = 'Approve a challenge with totp.create_challenge or totp.update_challenge first.';
        END IF;
    END LOOP;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END
$$;

-- The grant sets an application needs, shipped as functions so that a DBA gives exactly them
-- (SPEC §7; README "Privileges"). Two sets, so that a compromised verification role cannot enrol a
-- factor of its own choosing (and so cannot mint a step-up approval), and a compromised enrolment
-- role's new factors can be kept out of step-up checks with min_factor_age.
--
-- They are not SECURITY DEFINER: GRANT needs the caller to own the objects or hold the grant
-- option, so only the extension's owner or a superuser can run them, and EXECUTE is revoked
-- from PUBLIC in finalize.sql.

CREATE OR REPLACE FUNCTION totp.grant_enrolment(role regrole) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF role IS NULL OR NOT EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.oid = role) THEN
        RAISE EXCEPTION 'invalid role (Twilio 60200)' USING ERRCODE = '22023',
            DETAIL = 'role must name an existing role.';
    END IF;
    EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA totp TO %s', role);
    EXECUTE pg_catalog.format('GRANT SELECT ON totp.services, totp.entities, totp.factors TO %s', role);
    EXECUTE pg_catalog.format(
        'GRANT EXECUTE ON FUNCTION totp.create_entity, totp.delete_entity, totp.create_factor, '
        'totp.verify_factor, totp.update_factor, totp.delete_factor, totp.qr_svg, totp.otpauth_uri TO %s', role);
END
$$;

CREATE OR REPLACE FUNCTION totp.grant_verification(role regrole) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF role IS NULL OR NOT EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.oid = role) THEN
        RAISE EXCEPTION 'invalid role (Twilio 60200)' USING ERRCODE = '22023',
            DETAIL = 'role must name an existing role.';
    END IF;
    EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA totp TO %s', role);
    EXECUTE pg_catalog.format('GRANT SELECT ON totp.services, totp.factors, totp.challenges TO %s', role);
    EXECUTE pg_catalog.format(
        'GRANT EXECUTE ON FUNCTION totp.create_challenge, totp.update_challenge, '
        'totp.has_recent_approval, totp.has_recent_approval_from_aged_factor TO %s', role);
END
$$;

-- Privileges and comments (sql/finalize.sql, sql/comments.sql), as in a fresh install.
-- Privileges (SPEC §7): after CREATE EXTENSION, PUBLIC can do nothing. Functions are
-- executable by PUBLIC by default in Postgres, so take that back; tables and views are not
-- granted to anyone, and the schemas give USAGE to no one but the owner. The README lists
-- the grants an application role needs.
REVOKE ALL ON SCHEMA totp FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA totp FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA totp FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA totp_private FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA totp_private FROM PUBLIC;

-- COMMENT on every relation, column and function, so \d+ and \df+ document the API (SPEC §7).

COMMENT ON SCHEMA totp IS 'totp_verify: Twilio Verify''s TOTP model (services, entities, factors, challenges); read-only views and functions';
COMMENT ON SCHEMA totp_private IS 'totp_verify internals: every table, secrets and counters; no role but the extension owner may use it';

COMMENT ON VIEW totp.services IS 'Verify services (Twilio VA...): TOTP defaults for new factors, and limits (change them with update_service)';
COMMENT ON COLUMN totp.services.sid IS 'Service SID: VA + 32 hex digits';
COMMENT ON COLUMN totp.services.friendly_name IS 'Name of the service; the issuer shown in authenticator apps unless totp_issuer is set (1-64 characters)';
COMMENT ON COLUMN totp.services.account_sid IS 'Twilio account (AC...) that owns the service in totp-verify-server; NULL for services created over SQL';
COMMENT ON COLUMN totp.services.totp_issuer IS 'Issuer shown in authenticator apps; NULL means friendly_name';
COMMENT ON COLUMN totp.services.totp_time_step IS 'Default time step in seconds for new factors (20-60); NULL means 30';
COMMENT ON COLUMN totp.services.totp_code_length IS 'Default code length for new factors (3-8); NULL means 6';
COMMENT ON COLUMN totp.services.totp_skew IS 'Default number of steps accepted either side of now for new factors (0-2); NULL means 1';
COMMENT ON COLUMN totp.services.max_factor_attempts IS 'Wrong codes allowed while verifying a factor before 60310 (Twilio: 5)';
COMMENT ON COLUMN totp.services.max_challenge_attempts IS 'Wrong codes on a challenge; the last turns it denied, more are refused with 60308 (Twilio: 5)';
COMMENT ON COLUMN totp.services.max_challenges_per_hour IS 'Challenges per factor per hour for code_length >= 5, else 60312 (Twilio: 50)';
COMMENT ON COLUMN totp.services.max_challenges_per_day IS 'Challenges per factor per 24 hours for code_length >= 5, else 60312 (Twilio: 100)';
COMMENT ON COLUMN totp.services.max_short_code_challenges_per_day IS 'Challenges per factor per 24 hours for code_length <= 4, else 60312 (Twilio: 10)';
COMMENT ON COLUMN totp.services.max_factors_per_entity IS 'Factors one entity may have, else 60315 (Twilio: 100)';
COMMENT ON COLUMN totp.services.max_factor_creations_per_day IS 'Factors created per entity per 24 hours, else 60326 (Twilio: 100)';
COMMENT ON COLUMN totp.services.challenge_ttl IS 'Default lifetime of a challenge (Twilio: 5 minutes)';
COMMENT ON COLUMN totp.services.max_challenge_ttl IS 'Longest lifetime a challenge may ask for (Twilio: 60 minutes, the maximum)';
COMMENT ON COLUMN totp.services.unverified_factor_ttl IS 'How long an unverified factor lives before it is gone (Twilio: up to 24 hours)';
COMMENT ON COLUMN totp.services.event_retention IS 'How long run_maintenance keeps the service''s rows of totp.events (default 7 days)';
COMMENT ON COLUMN totp.services.date_created IS 'When the service was created';
COMMENT ON COLUMN totp.services.date_updated IS 'When the service was last updated';

COMMENT ON VIEW totp.entities IS 'Verify entities (Twilio YE...): one per (identity, service); created by create_entity or implicitly by create_factor';
COMMENT ON COLUMN totp.entities.identity IS 'The application''s user key: 1-64 ASCII letters and digits in dash-separated groups; the distribution key';
COMMENT ON COLUMN totp.entities.service_sid IS 'The service the entity belongs to';
COMMENT ON COLUMN totp.entities.sid IS 'Entity SID: YE + 32 hex digits';
COMMENT ON COLUMN totp.entities.date_created IS 'When the entity was created';
COMMENT ON COLUMN totp.entities.date_updated IS 'When the entity was last updated';
COMMENT ON COLUMN totp.entities.factor_window_start IS 'Start of the current 24-hour window of factor creations (limit 60326)';
COMMENT ON COLUMN totp.entities.factors_created_in_window IS 'Factors created in the current 24-hour window (limit 60326)';

COMMENT ON VIEW totp.factors IS 'Verify TOTP factors (Twilio YF...), never the secret; unverified factors past their lifetime are not shown';
COMMENT ON COLUMN totp.factors.sid IS 'Factor SID: YF + 32 hex digits';
COMMENT ON COLUMN totp.factors.service_sid IS 'The service the factor belongs to';
COMMENT ON COLUMN totp.factors.entity_sid IS 'The entity the factor belongs to';
COMMENT ON COLUMN totp.factors.identity IS 'The entity''s identity';
COMMENT ON COLUMN totp.factors.friendly_name IS 'Account name shown in authenticator apps (1-64 characters)';
COMMENT ON COLUMN totp.factors.factor_type IS 'Always totp';
COMMENT ON COLUMN totp.factors.status IS 'unverified until verify_factor accepts a code, then verified';
COMMENT ON COLUMN totp.factors.alg IS 'HMAC hash: sha1, sha256 or sha512';
COMMENT ON COLUMN totp.factors.code_length IS 'Digits per code (3-8)';
COMMENT ON COLUMN totp.factors.time_step IS 'Seconds per code (20-60)';
COMMENT ON COLUMN totp.factors.skew IS 'Steps accepted either side of now (0-2)';
COMMENT ON COLUMN totp.factors.metadata IS 'Application data, a JSON object of at most 1024 characters';
COMMENT ON COLUMN totp.factors.date_created IS 'When the factor was created';
COMMENT ON COLUMN totp.factors.date_updated IS 'When the factor was last changed';

COMMENT ON VIEW totp.challenges IS 'Verify challenges (Twilio YC...); a pending challenge past its expiration_date reads as expired';
COMMENT ON COLUMN totp.challenges.sid IS 'Challenge SID: YC + 32 hex digits';
COMMENT ON COLUMN totp.challenges.service_sid IS 'The service the challenge belongs to';
COMMENT ON COLUMN totp.challenges.entity_sid IS 'The entity the challenge belongs to';
COMMENT ON COLUMN totp.challenges.identity IS 'The entity''s identity';
COMMENT ON COLUMN totp.challenges.factor_sid IS 'The factor the challenge verifies';
COMMENT ON COLUMN totp.challenges.factor_type IS 'Always totp';
COMMENT ON COLUMN totp.challenges.status IS 'pending, approved (right code), denied (attempts exhausted) or expired';
COMMENT ON COLUMN totp.challenges.responded_reason IS 'Twilio''s responded_reason: always none for TOTP';
COMMENT ON COLUMN totp.challenges.details IS 'Application details, a JSON object of at most 1024 characters';
COMMENT ON COLUMN totp.challenges.hidden_details IS 'Application details not meant for the end user, a JSON object of at most 1024 characters';
COMMENT ON COLUMN totp.challenges.metadata IS 'Application data set by update_challenge, a JSON object of at most 1024 characters';
COMMENT ON COLUMN totp.challenges.expiration_date IS 'When the challenge expires (default 5 minutes after creation, at most 60)';
COMMENT ON COLUMN totp.challenges.date_responded IS 'When the challenge was approved or denied';
COMMENT ON COLUMN totp.challenges.date_created IS 'When the challenge was created';
COMMENT ON COLUMN totp.challenges.date_updated IS 'When the challenge was last changed';

COMMENT ON VIEW totp.events IS 'Twilio webhook events, one row per event, written with the change they report; needs its own SELECT grant';
COMMENT ON COLUMN totp.events.id IS 'Unique event id (the webhook uuid)';
COMMENT ON COLUMN totp.events.type IS 'factor.created, factor.verified, factor.deleted, challenge.approved or challenge.denied';
COMMENT ON COLUMN totp.events.service_sid IS 'The service of the event';
COMMENT ON COLUMN totp.events.entity_identity IS 'The identity of the entity the event is about';
COMMENT ON COLUMN totp.events.factor_sid IS 'The factor the event is about';
COMMENT ON COLUMN totp.events.challenge_sid IS 'The challenge, for challenge events; else NULL';
COMMENT ON COLUMN totp.events.date_created IS 'When the change happened';

COMMENT ON TYPE totp.new_factor IS 'What create_factor returns: the factor plus binding_secret and binding_uri, shown this once';

COMMENT ON TABLE totp_private.services IS 'Services as stored; read them through the totp.services view';
COMMENT ON TABLE totp_private.entities IS 'Entities as stored; read them through the totp.entities view';
COMMENT ON TABLE totp_private.events IS 'Events as stored; read them through the totp.events view';
COMMENT ON TABLE totp_private.keyring IS 'The name of this database''s key file and the database it belongs to';
COMMENT ON TABLE totp_private.factors IS 'Factors with their replay guard and attempt and rate counters';
COMMENT ON COLUMN totp_private.factors.replay_guards IS 'Replay guards of the other time_steps the factor has had, by step length';
COMMENT ON COLUMN totp_private.factors.date_verified IS 'When verify_factor accepted the factor (for has_recent_approval''s min_factor_age)';
COMMENT ON COLUMN totp_private.factors.unverified_until IS 'An unverified factor is gone after this moment; NULL once verified';
COMMENT ON COLUMN totp_private.factors.last_step IS 'Last time step accepted (replay guard, RFC 6238 section 5.2)';
COMMENT ON COLUMN totp_private.factors.failed_verifications IS 'Wrong codes submitted to verify_factor (limit 60310)';
COMMENT ON COLUMN totp_private.factors.challenge_hour_start IS 'Start of the current hour window of challenge creations (limit 60312)';
COMMENT ON COLUMN totp_private.factors.challenges_in_hour IS 'Challenges created in the current hour window';
COMMENT ON COLUMN totp_private.factors.challenge_day_start IS 'Start of the current 24-hour window of challenge creations (limit 60312)';
COMMENT ON COLUMN totp_private.factors.challenges_in_day IS 'Challenges created in the current 24-hour window';
COMMENT ON TABLE totp_private.factor_secrets IS 'Each factor''s secret sealed with AES-256-GCM, the factor SID as associated data';
COMMENT ON COLUMN totp_private.factor_secrets.key_id IS 'Id of the key (in the key file) that sealed this secret';
COMMENT ON COLUMN totp_private.factor_secrets.sealed IS 'nonce (12 bytes) || ciphertext || tag (16 bytes)';
COMMENT ON TABLE totp_private.challenges IS 'Challenges as stored; read them through the totp.challenges view';
COMMENT ON COLUMN totp_private.challenges.failed_attempts IS 'Wrong codes submitted for this challenge (limit 60308)';
COMMENT ON TABLE totp_private.keys IS 'Ids and states of the keys that have sealed secrets here; never key material';

DO $comments$
DECLARE
    f record;
BEGIN
    FOR f IN
        SELECT p.oid::pg_catalog.regprocedure AS signature, c.comment
          FROM (VALUES
            ('hotp_code', 'RFC 4226 HOTP code of secret at counter'),
            ('totp_code', 'RFC 6238 TOTP code of secret at a time (default now)'),
            ('base32_encode', 'RFC 4648 base32, upper case, unpadded'),
            ('base32_decode', 'RFC 4648 base32 decoding; tolerates case, spaces, dashes and = padding'),
            ('generate_secret', 'base32 of CSPRNG bytes (default 20: 160 bits)'),
            ('otpauth_uri', 'Key Uri Format otpauth://totp/ URI, the format of binding_uri'),
            ('qr_svg', 'Standalone SVG QR code of a text, e.g. a binding_uri'),
            ('create_service', 'Create a Verify service (Twilio POST /Services); with sid, idempotent: same settings return it, others are 23505'),
            ('update_service', 'Update a service; NULL leaves a setting unchanged (Twilio POST /Services/{sid})'),
            ('delete_service', 'Delete a service and everything in it'),
            ('create_entity', 'Create an entity for an identity (Twilio POST /Entities); 60301 if it exists'),
            ('delete_entity', 'Delete an entity with its factors and challenges'),
            ('create_factor', 'Create a TOTP factor (and the entity if new); returns binding_secret and binding_uri this once; sid and secret may be supplied (migrations)'),
            ('verify_factor', 'Verify a new factor with a code: verified, or still unverified for a wrong code'),
            ('update_factor', 'Update a factor''s name, settings or metadata; NULL leaves a value unchanged'),
            ('delete_factor', 'Delete a factor and its challenges'),
            ('create_challenge', 'Create a challenge: approved with a right auth_payload, else pending'),
            ('update_challenge', 'Answer a pending challenge with a code: approved, pending, or denied after the last attempt'),
            ('has_recent_approval', 'Whether an identity has a challenge approved within an interval (for RLS and triggers)'),
            ('has_recent_approval_from_aged_factor', 'Like has_recent_approval, counting only approvals through a factor verified at least min_factor_age before them'),
            ('run_maintenance', 'Expire overdue pending challenges, delete unverified factors past their lifetime, prune old events'),
            ('grant_enrolment', 'Grant a role what enrolment needs: create/verify/update/delete factors and entities'),
            ('grant_verification', 'Grant a role what verification needs: create/update challenges and has_recent_approval'),
            ('rotate_key', 'Make a new sealing key current and re-seal every secret under it'),
            ('retire_keys', 'Remove keys no secret uses from the key file'),
            ('forget_entity', 'Trigger: AFTER DELETE on an application table, delete the identity''s entity (args: service_sid, identity column)'),
            ('require_approval', 'Trigger: BEFORE writes, refuse (42501) unless the identity has a recent approval (args: service_sid, identity column, max age [, min factor age])'),
            ('forget_identity', 'What the forget_entity trigger runs: delete an identity''s entity, recording factor.deleted events')
          ) AS c(name, comment)
          JOIN pg_catalog.pg_proc p ON p.proname = c.name
           AND p.pronamespace IN ('totp'::pg_catalog.regnamespace, 'totp_private'::pg_catalog.regnamespace)
    LOOP
        EXECUTE pg_catalog.format('COMMENT ON FUNCTION %s IS %L', f.signature, f.comment);
    END LOOP;
END
$comments$;
