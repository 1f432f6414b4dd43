-- Section 7: totp.verify_factor with a wrong code on one of the unverified factors
-- (n = :first + 1 .. :first + :nfactors).
\set n :first + random(1, :nfactors)
SELECT totp.verify_factor(:svc, 'u' || :n, 'YF' || lpad(to_hex(CAST(:n AS integer)), 32, '0'), '000000');
