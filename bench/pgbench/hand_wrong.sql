-- Section 7, the HAND-WRITTEN flow: what an application writes instead of the extension when
-- it computes the code itself (pyotp, otplib) over a minimal table of its own: one transaction,
-- the factor row locked, the failed-attempt counter bumped, a challenge row inserted. A wrong
-- code. Prepared statements (-M prepared), as a competent application would run them.
\set n random(1, :nfactors)
\set r random(1, 9000000000000000000)
BEGIN;
SELECT secret, last_step FROM bench.app_factors WHERE identity = 'u' || :n FOR UPDATE;
UPDATE bench.app_factors SET failed = failed + 1 WHERE identity = 'u' || :n;
INSERT INTO bench.app_challenges (sid, identity, status) VALUES ('YC' || :r, 'u' || :n, 'pending');
END;
