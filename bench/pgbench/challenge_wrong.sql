-- Measurement 2/3: answer a challenge with a wrong code (the common case under attack, and
-- the path that must commit the failed-attempt counters). One statement, one round trip.
\set n random(1, :nfactors)
SELECT totp.create_challenge(:svc, f.identity, f.sid, '000000') FROM bench.f f WHERE f.n = :n;
