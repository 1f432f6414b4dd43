-- Profile section: create_challenge's five statements in PL/pgSQL, no TOTP logic (sql/variants.sql).
\set n random(1, :nfactors)
SELECT bench.challenge_steps(:svc, f.identity, f.sid, '000000') FROM bench.f f WHERE f.n = :n;
