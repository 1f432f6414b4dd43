-- Section 7: creates factors n = :a .. :b of bench_hand with totp.create_factor, set-based, as
-- load_factors.sql does, but with SIDs derived from n ('YF' + n in 32 hex digits), so that the
-- pgbench scripts pass identity and SID as an application would, without a lookup table.
INSERT INTO bench.f
SELECT g, 'u' || g, cf.sid, s.secret
  FROM generate_series(:a::int, :b::int) g,
       LATERAL (SELECT substr(sha256(convert_to('bench-' || g, 'UTF8')), 1, 20) AS secret) s,
       LATERAL totp.create_factor(:'svc', 'u' || g, 'bench', totp.base32_encode(s.secret),
                                  sid => 'YF' || lpad(to_hex(g), 32, '0')) cf;
