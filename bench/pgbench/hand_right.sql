-- Section 7, the HAND-WRITTEN flow with a right code: the application has checked the code
-- against the secret it read (client side, not server time) and records the accepted step
-- (its replay guard) instead of a failure.
\set n random(1, :nfactors)
\set r random(1, 9000000000000000000)
BEGIN;
SELECT secret, last_step FROM bench.app_factors WHERE identity = 'u' || :n FOR UPDATE;
UPDATE bench.app_factors SET last_step = :r, failed = 0 WHERE identity = 'u' || :n;
INSERT INTO bench.app_challenges (sid, identity, status) VALUES ('YC' || :r, 'u' || :n, 'approved');
END;
