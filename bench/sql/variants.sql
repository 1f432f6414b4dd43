-- Attribution of measurement 2 (profile section of bench/run): variants between the floor and
-- totp.create_challenge, each on the floor's tables, with no TOTP logic (no decryption, no HMAC).
--
-- floor + FKs: bench/run copies the foreign keys of totp_private.challenges (read from the
-- catalog, references to totp_private.factors turned into bench.floor_factors) onto the floor's
-- challenge table for that variant only (NOT VALID: checked for new rows, no validation scan).

-- The statements create_challenge runs (as of commit 55745b2), in the same order, from a
-- SECURITY DEFINER function with a pinned search_path (as the extension's): service lookup, factor
-- row locked FOR UPDATE joined with its sealed secret, UPDATE of the counters, INSERT of the
-- challenge RETURNING the row.
CREATE FUNCTION bench.challenge_steps(svc text, ident text, fsid text, payload text)
RETURNS bench.floor_challenges
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t   timestamptz := clock_timestamp();
    s   record;
    f   record;
    csid text := 'YC' || replace(gen_random_uuid()::text, '-', '');
    r   bench.floor_challenges;
BEGIN
    SELECT friendly_name, totp_issuer, totp_time_step, totp_code_length, totp_skew,
           max_factor_attempts, max_challenge_attempts, max_challenges_per_hour,
           max_challenges_per_day, max_short_code_challenges_per_day, max_factors_per_entity,
           max_factor_creations_per_day, t + challenge_ttl AS expiry, t + max_challenge_ttl,
           t + unverified_factor_ttl
      INTO s FROM totp.services WHERE services.sid = svc;
    IF NOT FOUND THEN RAISE EXCEPTION 'service not found'; END IF;
    SELECT ff.entity_sid, ff.status, ff.alg, ff.code_length, ff.time_step, ff.skew, ff.last_step,
           ff.failed_verifications, ff.challenge_hour_start, ff.challenges_in_hour,
           ff.challenge_day_start, ff.challenges_in_day, fs.key_id, fs.sealed
      INTO f
      FROM bench.floor_factors ff
      JOIN totp_private.factor_secrets fs ON fs.identity = ff.identity AND fs.factor_sid = ff.sid
     WHERE ff.identity = ident AND ff.sid = fsid AND ff.service_sid = svc AND fs.identity = ident
       AND (ff.unverified_until IS NULL OR ff.unverified_until > t)
       FOR UPDATE OF ff;
    IF NOT FOUND THEN RAISE EXCEPTION 'factor not found'; END IF;
    UPDATE bench.floor_factors
       SET challenge_hour_start = t, challenges_in_hour = f.challenges_in_hour + 1,
           challenge_day_start = t, challenges_in_day = f.challenges_in_day + 1,
           last_step = COALESCE(NULL, last_step)
     WHERE identity = ident AND floor_factors.sid = fsid;
    INSERT INTO bench.floor_challenges (identity, sid, service_sid, entity_sid, factor_sid, status,
           details, hidden_details, expiration_date, date_responded, date_created, date_updated,
           failed_attempts)
    VALUES (ident, csid, svc, f.entity_sid, fsid, 'pending', NULL, NULL, s.expiry, NULL, t, t, 1)
    RETURNING * INTO r;
    RETURN r;
END
$$;

-- The same work in two statements: service, factor and secret in one locking SELECT; UPDATE and
-- INSERT in one statement whose RETURNING is the result row.
CREATE FUNCTION bench.challenge_merged(svc text, ident text, fsid text, payload text)
RETURNS bench.floor_challenges
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t   timestamptz := clock_timestamp();
    f   record;
    r   bench.floor_challenges;
BEGIN
    SELECT ff.entity_sid, ff.status, ff.alg, ff.code_length, ff.time_step, ff.skew, ff.last_step,
           ff.failed_verifications, ff.challenge_hour_start, ff.challenges_in_hour,
           ff.challenge_day_start, ff.challenges_in_day, fs.key_id, fs.sealed,
           sv.max_challenge_attempts, sv.max_challenges_per_hour, sv.max_challenges_per_day,
           t + sv.challenge_ttl AS expiry
      INTO f
      FROM bench.floor_factors ff
      JOIN totp_private.factor_secrets fs ON fs.identity = ff.identity AND fs.factor_sid = ff.sid
      JOIN totp.services sv ON sv.sid = ff.service_sid
     WHERE ff.identity = ident AND ff.sid = fsid AND ff.service_sid = svc AND fs.identity = ident
       AND (ff.unverified_until IS NULL OR ff.unverified_until > t)
       FOR UPDATE OF ff;
    IF NOT FOUND THEN RAISE EXCEPTION 'factor not found'; END IF;
    WITH u AS (
        UPDATE bench.floor_factors
           SET challenge_hour_start = t, challenges_in_hour = f.challenges_in_hour + 1,
               challenge_day_start = t, challenges_in_day = f.challenges_in_day + 1,
               last_step = COALESCE(NULL, last_step)
         WHERE identity = ident AND sid = fsid)
    INSERT INTO bench.floor_challenges (identity, sid, service_sid, entity_sid, factor_sid, status,
           details, hidden_details, expiration_date, date_responded, date_created, date_updated,
           failed_attempts)
    VALUES (ident, 'YC' || replace(gen_random_uuid()::text, '-', ''), svc, f.entity_sid, fsid,
            'pending', NULL, NULL, f.expiry, NULL, t, t, 1)
    RETURNING * INTO r;
    RETURN r;
END
$$;
