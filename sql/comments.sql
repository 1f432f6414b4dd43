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
COMMENT ON TABLE totp_private.partition IS 'PL/Proxy: this database''s partition number and the number of partitions (set_partition)';
COMMENT ON TABLE totp_private.placements IS 'PL/Proxy: identities moved off their hashed partition, and the partition each lives on now';
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
            ('rotate_key', 'Make a new sealing key (or one added by add_key, key_id) current and re-seal every secret under it'),
            ('add_key', 'Add a new key to the key file without making it current (a rotation in stages, as on Citus)'),
            ('make_key_current', 'Make a key of this node''s key file current here (what rotate_key runs on each Citus worker)'),
            ('key_file_ids', 'The ids of the keys in this database''s key file (never the keys)'),
            ('distribute', 'Citus: make services a reference table, distribute every per-user table by identity, delegate identity-scoped functions, name the current key on every node; rerun after adding nodes'),
            ('services_digest', 'SHA-256 of every service''s SID and settings (not dates): equal on nodes that agree'),
            ('undistribute', 'Citus: turn the tables back into local tables and stop delegating (before DROP EXTENSION)'),
            ('retire_keys', 'Remove keys no secret uses from the key file'),
            ('forget_entity', 'Trigger: AFTER DELETE on an application table, delete the identity''s entity (args: service_sid, identity column)'),
            ('require_approval', 'Trigger: BEFORE writes, refuse (42501) unless the identity has a recent approval (args: service_sid, identity column, max age [, min factor age])'),
            ('shard_hash', 'PL/Proxy routing hash: the first 4 bytes of SHA-256 of the identity''s UTF-8, big-endian int4'),
            ('set_partition', 'PL/Proxy: make this database partition part_no of part_count (a power of 2); NULLs: a lone node'),
            ('get_service', 'A service''s row (Twilio GET /Services/{sid})'),
            ('list_services', 'Every service, oldest first (Twilio GET /Services)'),
            ('get_entity', 'An identity''s entity in a service (Twilio GET /Entities/{identity})'),
            ('get_factor', 'One factor of an identity (Twilio GET /Entities/{identity}/Factors/{sid})'),
            ('list_factors', 'An identity''s factors in a service, oldest first'),
            ('get_challenge', 'One challenge of an identity (Twilio GET /Entities/{identity}/Challenges/{sid})'),
            ('list_challenges', 'An identity''s challenges in a service, optionally of one factor and status, oldest first unless newest_first'),
            ('export_identity', 'Superuser: an identity''s rows in every service with its secrets in plaintext, for import_identity'),
            ('release_identity', 'Superuser, PL/Proxy: export an identity, delete it here and record the partition it moves to'),
            ('import_identity', 'Superuser: take in an exported identity, sealing its secrets under this database''s key'),
            ('forget_identity', 'What the forget_entity trigger runs: delete an identity''s entity, recording factor.deleted events')
          ) AS c(name, comment)
          JOIN pg_catalog.pg_proc p ON p.proname = c.name
           AND p.pronamespace IN ('totp'::pg_catalog.regnamespace, 'totp_private'::pg_catalog.regnamespace)
    LOOP
        EXECUTE pg_catalog.format('COMMENT ON FUNCTION %s IS %L', f.signature, f.comment);
    END LOOP;
END
$comments$;
