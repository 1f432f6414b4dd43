-- Section 8 (BENCH_SECTIONS=router): create_challenge with a wrong code, the same statement
-- through the PL/Proxy router and straight to the partition it routes to.
\set n random(1, :nfactors)
SELECT totp.create_challenge(:svc, f.identity, f.sid, '000000') FROM bench_router.f f WHERE f.n = :n;
