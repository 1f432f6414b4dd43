-- After loading :n factors: mark them verified directly (as superuser), copy them into the
-- floor's table, and top both challenge tables up to :n rows of history (challenges approved a
-- day ago), so that each scale has as many challenges as factors.
UPDATE totp_private.factors SET status = 'verified', unverified_until = NULL
 WHERE status = 'unverified';
VACUUM FULL totp_private.factors;

TRUNCATE bench.floor_factors;
INSERT INTO bench.floor_factors SELECT * FROM totp_private.factors;

INSERT INTO totp_private.challenges (identity, sid, service_sid, entity_sid, factor_sid, status,
       expiration_date, date_responded, date_created, date_updated)
SELECT f.identity, 'YC' || md5(f.sid || random()::text), f.service_sid, f.entity_sid, f.sid, 'approved',
       now() - interval '1 day' + interval '5 minutes', now() - interval '1 day',
       now() - interval '1 day', now() - interval '1 day'
  FROM totp_private.factors f
 ORDER BY f.identity, f.sid
 LIMIT greatest(0, :n - (SELECT count(*) FROM totp_private.challenges));

INSERT INTO bench.floor_challenges (identity, sid, service_sid, entity_sid, factor_sid, status,
       expiration_date, date_responded, date_created, date_updated)
SELECT f.identity, 'YC' || md5(f.sid || random()::text), f.service_sid, f.entity_sid, f.sid, 'approved',
       now() - interval '1 day' + interval '5 minutes', now() - interval '1 day',
       now() - interval '1 day', now() - interval '1 day'
  FROM bench.floor_factors f
 ORDER BY f.identity, f.sid
 LIMIT greatest(0, :n - (SELECT count(*) FROM bench.floor_challenges));

-- The floor's event table holds as many rows as the extension's (the factor.created events of
-- the load and any others), so that its indexes are as deep.
TRUNCATE bench.floor_events;
INSERT INTO bench.floor_events SELECT * FROM totp_private.events;

VACUUM ANALYZE;
CHECKPOINT;
