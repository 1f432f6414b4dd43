-- Section 7, after hand_load.sql: factors 1 .. :verified verified (as superuser, as
-- prepare_scale.sql does), :verified + 1 .. :verified + :unverified left unverified (for
-- verify_factor); one pending challenge per factor n <= :pending (SID 'YC' + n in hex, for
-- update_challenge), living 59 minutes; limits out of the way (attempts too, so that answered
-- challenges stay pending and unverified factors keep taking codes).
UPDATE totp_private.services SET max_challenges_per_hour = 1000000000, max_challenges_per_day = 1000000000,
       max_factor_attempts = 1000000000, max_challenge_attempts = 1000000000;
UPDATE totp_private.factors f SET status = 'verified', unverified_until = NULL
  FROM bench.f b WHERE b.identity = f.identity AND b.sid = f.sid AND b.n <= :verified;
INSERT INTO totp_private.challenges (identity, sid, service_sid, entity_sid, factor_sid, status,
       expiration_date, date_created, date_updated)
SELECT f.identity, 'YC' || lpad(to_hex(b.n), 32, '0'), f.service_sid, f.entity_sid, f.sid, 'pending',
       now() + interval '59 minutes', now(), now()
  FROM bench.f b JOIN totp_private.factors f ON f.identity = b.identity AND f.sid = b.sid
 WHERE b.n <= :pending;
VACUUM FULL totp_private.factors;

-- The hand-written flow's own tables: what a competent application keeps when it does TOTP
-- itself. One row per verified factor (the same secrets), and as many challenge rows of history
-- as the extension has challenges.
CREATE TABLE bench.app_factors (
    identity  text    PRIMARY KEY,
    secret    bytea   NOT NULL,
    last_step bigint,
    failed    integer NOT NULL DEFAULT 0
);
INSERT INTO bench.app_factors (identity, secret) SELECT identity, secret FROM bench.f WHERE n <= :verified;
CREATE TABLE bench.app_challenges (
    sid      text        PRIMARY KEY,
    identity text        NOT NULL,
    status   text        NOT NULL,
    created  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO bench.app_challenges (sid, identity, status, created)
SELECT 'YC' || md5(identity || random()::text), identity, 'approved', now() - interval '1 day'
  FROM bench.f WHERE n <= :pending;

-- Server time per call, inside one transaction (no client, no commit): `calls` calls of `kind`
-- on factors first_n .. first_n + calls - 1, from PL/pgSQL (each statement a cached SPI plan,
-- as the prepared statements of pgbench are), in microseconds per call. The arguments (and the
-- right codes) are built before the clock starts. The caller rolls back.
CREATE FUNCTION bench.hand_time(kind text, calls integer, first_n integer, svc text) RETURNS float8
LANGUAGE plpgsql AS $$
DECLARE
    ids   text[];
    fsids text[];
    csids text[];
    codes text[];
    nsids text[];      -- new challenge SIDs and event ids for stmts_*, made before the clock starts
    event_ids uuid[];
    t     timestamptz := now();
    step  bigint := floor(extract(epoch FROM now()) / 30);
    service   record;
    factor    record;
    challenge totp.challenges;
    t0    timestamptz;
    i     integer;
BEGIN
    SELECT array_agg('u' || g ORDER BY g), array_agg('YF' || lpad(to_hex(g), 32, '0') ORDER BY g),
           array_agg('YC' || lpad(to_hex(g), 32, '0') ORDER BY g),
           array_agg(totp.totp_code(substr(sha256(convert_to('bench-' || g, 'UTF8')), 1, 20)) ORDER BY g),
           array_agg('YC' || md5(random()::text || g) ORDER BY g), array_agg(gen_random_uuid() ORDER BY g)
      INTO ids, fsids, csids, codes, nsids, event_ids
      FROM generate_series(first_n, first_n + calls - 1) g;
    t0 := clock_timestamp();
    CASE kind
    WHEN 'hand_wrong' THEN
        FOR i IN 1 .. calls LOOP
            PERFORM secret, last_step FROM bench.app_factors WHERE identity = ids[i] FOR UPDATE;
            UPDATE bench.app_factors SET failed = failed + 1 WHERE identity = ids[i];
            INSERT INTO bench.app_challenges (sid, identity, status) VALUES (csids[i], ids[i], 'pending');
        END LOOP;
    WHEN 'hand_right' THEN
        FOR i IN 1 .. calls LOOP
            PERFORM secret, last_step FROM bench.app_factors WHERE identity = ids[i] FOR UPDATE;
            UPDATE bench.app_factors SET last_step = i, failed = 0 WHERE identity = ids[i];
            INSERT INTO bench.app_challenges (sid, identity, status) VALUES (csids[i], ids[i], 'approved');
        END LOOP;
    WHEN 'stmts_wrong', 'stmts_right' THEN
        -- The extension's own statements, without the extension: what create_challenge sends
        -- through SPI, copied from services::LOAD, factors::LOCK and challenges::INSERT /
        -- INSERT_WITH_EVENT (0.7.0), with the values its Rust code computes (windows, status,
        -- SIDs, event ids) given as plain values. Their cost is a floor no Rust change lowers.
        FOR i IN 1 .. calls LOOP
            SELECT s.friendly_name, s.totp_issuer, s.totp_time_step, s.totp_code_length, s.totp_skew,
                   s.max_factor_attempts, s.max_challenge_attempts, s.max_challenges_per_hour,
                   s.max_challenges_per_day, s.max_short_code_challenges_per_day, s.max_factors_per_entity,
                   s.max_factor_creations_per_day, t + s.challenge_ttl, t + s.max_challenge_ttl,
                   t + s.unverified_factor_ttl, p.part_no, p.part_count, pl.part_no
              INTO service
              FROM totp_private.services s
              LEFT JOIN totp_private.partition p ON true
              LEFT JOIN totp_private.placements pl ON pl.identity = ids[i]
             WHERE s.sid = svc;
            SELECT f.entity_sid, f.status, f.alg, f.code_length, f.time_step, f.skew, f.last_step,
                   f.failed_verifications, f.challenge_hour_start, f.challenges_in_hour,
                   f.challenge_day_start, f.challenges_in_day, s.key_id, s.sealed, f.unverified_until
              INTO factor
              FROM totp_private.factors f
              JOIN totp_private.factor_secrets s ON s.identity = f.identity AND s.factor_sid = f.sid
             WHERE f.identity = ids[i] AND f.sid = fsids[i] AND f.service_sid = svc AND s.identity = ids[i]
               AND (f.unverified_until IS NULL OR f.unverified_until > t)
               FOR UPDATE OF f;
            IF kind = 'stmts_wrong' THEN
                WITH u AS (UPDATE totp_private.factors AS f SET challenge_hour_start = t, challenges_in_hour = 1,
                             challenge_day_start = t, challenges_in_day = 1, last_step = COALESCE(NULL::bigint, f.last_step)
                            WHERE f.identity = ids[i] AND f.sid = fsids[i]),
                     c AS (INSERT INTO totp_private.challenges AS c (identity, sid, service_sid, entity_sid, factor_sid,
                             status, details, hidden_details, expiration_date, date_responded, date_created,
                             date_updated, failed_attempts)
                           VALUES (ids[i], nsids[i], svc, factor.entity_sid, fsids[i], 'pending', NULL, NULL,
                                   t + interval '5 minutes', NULL, t, t, 1) RETURNING c.*)
                SELECT ROW(c.sid, c.service_sid, c.entity_sid, c.identity, c.factor_sid, c.factor_type, c.status,
                           c.responded_reason, c.details, c.hidden_details, c.metadata, c.expiration_date,
                           c.date_responded, c.date_created, c.date_updated)::totp.challenges
                  INTO challenge FROM c;
            ELSE
                WITH u AS (UPDATE totp_private.factors AS f SET challenge_hour_start = t, challenges_in_hour = 1,
                             challenge_day_start = t, challenges_in_day = 1, last_step = COALESCE(step, f.last_step)
                            WHERE f.identity = ids[i] AND f.sid = fsids[i]),
                     c AS (INSERT INTO totp_private.challenges AS c (identity, sid, service_sid, entity_sid, factor_sid,
                             status, details, hidden_details, expiration_date, date_responded, date_created,
                             date_updated, failed_attempts)
                           VALUES (ids[i], nsids[i], svc, factor.entity_sid, fsids[i], 'approved', NULL, NULL,
                                   t + interval '5 minutes', t, t, t, 0) RETURNING c.*),
                     e AS (INSERT INTO totp_private.events (identity, id, type, service_sid, factor_sid, challenge_sid,
                             date_created)
                           SELECT c.identity, event_ids[i], 'challenge.approved', c.service_sid, c.factor_sid, c.sid, t FROM c)
                SELECT ROW(c.sid, c.service_sid, c.entity_sid, c.identity, c.factor_sid, c.factor_type, c.status,
                           c.responded_reason, c.details, c.hidden_details, c.metadata, c.expiration_date,
                           c.date_responded, c.date_created, c.date_updated)::totp.challenges
                  INTO challenge FROM c;
            END IF;
        END LOOP;
    WHEN 'cc_wrong' THEN
        FOR i IN 1 .. calls LOOP
            PERFORM totp.create_challenge(svc, ids[i], fsids[i], '000000');
        END LOOP;
    WHEN 'cc_right' THEN
        FOR i IN 1 .. calls LOOP
            PERFORM totp.create_challenge(svc, ids[i], fsids[i], codes[i]);
        END LOOP;
    WHEN 'vf_wrong' THEN
        FOR i IN 1 .. calls LOOP
            PERFORM totp.verify_factor(svc, ids[i], fsids[i], '000000');
        END LOOP;
    WHEN 'vf_right' THEN
        FOR i IN 1 .. calls LOOP
            PERFORM totp.verify_factor(svc, ids[i], fsids[i], codes[i]);
        END LOOP;
    WHEN 'uc_wrong' THEN
        FOR i IN 1 .. calls LOOP
            PERFORM totp.update_challenge(svc, ids[i], csids[i], '000000');
        END LOOP;
    WHEN 'uc_right' THEN
        FOR i IN 1 .. calls LOOP
            PERFORM totp.update_challenge(svc, ids[i], csids[i], codes[i]);
        END LOOP;
    END CASE;
    RETURN extract(epoch FROM clock_timestamp() - t0) * 1000000 / calls;
END
$$;

VACUUM ANALYZE;
CHECKPOINT;
