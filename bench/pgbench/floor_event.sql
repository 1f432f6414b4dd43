-- Section 6 (issue 10): the floor (floor.sql) plus one event row, the extension's
-- challenge.approved INSERT, into bench.floor_events (LIKE totp_private.events INCLUDING ALL:
-- uuid primary key (identity, id), index on date_created, the type CHECK). Same one statement,
-- so the difference from floor.sql is the cost of the row itself.
\set n random(1, :nfactors)
WITH u AS (
    UPDATE bench.floor_factors ff
       SET challenge_hour_start = now(), challenges_in_hour = ff.challenges_in_hour + 1,
           challenge_day_start = now(), challenges_in_day = ff.challenges_in_day + 1,
           last_step = ff.last_step
      FROM bench.f f
     WHERE f.n = :n AND ff.identity = f.identity AND ff.sid = f.sid
    RETURNING ff.identity, ff.sid, ff.service_sid, ff.entity_sid),
c AS (
    INSERT INTO bench.floor_challenges (identity, sid, service_sid, entity_sid, factor_sid, status,
           expiration_date, date_responded, date_created, date_updated, failed_attempts)
    SELECT u.identity, 'YC' || replace(gen_random_uuid()::text, '-', ''), u.service_sid,
           u.entity_sid, u.sid, 'pending', now() + interval '5 minutes', NULL, now(), now(), 1
      FROM u
    RETURNING *),
e AS (
    INSERT INTO bench.floor_events (identity, id, type, service_sid, factor_sid, challenge_sid, date_created)
    SELECT c.identity, gen_random_uuid(), 'challenge.approved', c.service_sid, c.factor_sid, c.sid, now()
      FROM c)
SELECT * FROM c;
