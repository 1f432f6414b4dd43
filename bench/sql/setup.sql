-- Schema for the benchmark: the extensions, one service with rate limits out of the way, and
-- bench.f, the client's own table of "which factor is user n, and what is in their app".
-- (CREATE EXTENSION totp_verify is done by bench/run, which pins the library first.)
CREATE EXTENSION pgcrypto;            -- baselines of measurement 1 (public.hmac)
CREATE EXTENSION pg_stat_statements;  -- profile section (track=none except while profiling)
CREATE SCHEMA bench;

-- n -> identity, factor SID and the 20-byte secret the user's authenticator app holds.
CREATE TABLE bench.f (
    n        integer PRIMARY KEY,
    identity text    NOT NULL,
    sid      text    NOT NULL,
    secret   bytea   NOT NULL
);

-- The service every factor belongs to; limits raised so that rate limits never trigger.
CREATE TABLE bench.config AS SELECT sid AS svc FROM totp.create_service('bench');
-- (totp.services is a read-only view since issue 10: the superuser writes the private table.)
UPDATE totp_private.services SET max_challenges_per_hour = 1000000000, max_challenges_per_day = 1000000000,
                         max_factor_attempts = 1000000000;

-- The FLOOR of measurement 2: tables of the same shape as the extension's (same columns,
-- defaults, CHECK constraints, primary keys and secondary indexes; no foreign keys).
CREATE TABLE bench.floor_factors (LIKE totp_private.factors INCLUDING ALL);
CREATE TABLE bench.floor_challenges (LIKE totp_private.challenges INCLUDING ALL);
-- Section 6 (issue 10): what the event row costs, as one more INSERT into a table of the same
-- shape as totp_private.events (uuid primary key (identity, id), index on date_created).
CREATE TABLE bench.floor_events (LIKE totp_private.events INCLUDING ALL);

-- Measurement 4: `calls` create_challenge calls with a wrong code from this one session,
-- walking the factors n = start_n, start_n+1, ... (wrapping at nfactors), COMMIT every `batch`.
CREATE PROCEDURE bench.challenge_loop(svc text, calls integer, start_n integer, nfactors integer,
                                      batch integer DEFAULT 1000)
LANGUAGE plpgsql AS $$
DECLARE
    done integer := 0;
    lo   integer := start_n - 1;
    f    record;
BEGIN
    WHILE done < calls LOOP
        FOR f IN SELECT identity, sid FROM bench.f
                  WHERE n > lo AND n <= lo + least(batch, calls - done) ORDER BY n LOOP
            PERFORM totp.create_challenge(svc, f.identity, f.sid, '000000');
            done := done + 1;
        END LOOP;
        lo := lo + batch;
        IF lo >= nfactors THEN
            lo := 0;
        END IF;
        COMMIT;
    END LOOP;
END
$$;
