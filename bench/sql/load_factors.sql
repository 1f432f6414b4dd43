-- Creates factors n = :a .. :b with totp.create_factor, set-based, and records them in bench.f.
-- Secret of factor n: the first 20 bytes of sha256('bench-' || n), so the client side can
-- compute right codes. Run as one statement (one transaction) per batch.
INSERT INTO bench.f
SELECT g, 'u' || g, cf.sid, s.secret
  FROM generate_series(:a::int, :b::int) g,
       LATERAL (SELECT substr(sha256(convert_to('bench-' || g, 'UTF8')), 1, 20) AS secret) s,
       LATERAL totp.create_factor(:'svc', 'u' || g, 'bench', totp.base32_encode(s.secret)) cf;
