-- Profile section: the same work merged into two statements, no TOTP logic (sql/variants.sql).
\set n random(1, :nfactors)
SELECT bench.challenge_merged(:svc, f.identity, f.sid, '000000') FROM bench.f f WHERE f.n = :n;
