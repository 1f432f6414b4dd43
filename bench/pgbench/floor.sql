-- Measurement 2/3, the FLOOR: the row work of create_challenge with no TOTP logic, in one
-- statement (one round trip, like the function call): the same bench.f lookup, one indexed
-- UPDATE of the factor row by (identity, sid) setting the same counter columns, and one INSERT
-- of a challenge row into a table of the same shape (same CHECKs and indexes, no FKs).
\set n random(1, :nfactors)
WITH u AS (
    UPDATE bench.floor_factors ff
       SET challenge_hour_start = now(), challenges_in_hour = ff.challenges_in_hour + 1,
           challenge_day_start = now(), challenges_in_day = ff.challenges_in_day + 1,
           last_step = ff.last_step
      FROM bench.f f
     WHERE f.n = :n AND ff.identity = f.identity AND ff.sid = f.sid
    RETURNING ff.identity, ff.sid, ff.service_sid, ff.entity_sid)
INSERT INTO bench.floor_challenges (identity, sid, service_sid, entity_sid, factor_sid, status,
       expiration_date, date_responded, date_created, date_updated, failed_attempts)
SELECT u.identity, 'YC' || replace(gen_random_uuid()::text, '-', ''), u.service_sid,
       u.entity_sid, u.sid, 'pending', now() + interval '5 minutes', NULL, now(), now(), 1
  FROM u
RETURNING *;
