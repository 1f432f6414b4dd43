-- The baseline of measurement 1: RFC 4226 HOTP written the way a user would without this
-- extension, in PL/pgSQL over pgcrypto's hmac() (pgcrypto must be installed in schema public).
--
--   HMAC-SHA1(secret, 8-byte big-endian counter)
--   dynamic truncation: offset = low nibble of the last byte, 31 bits from there
--   code = value mod 10^digits, left-padded with zeros
--
-- bench/run checks it against totp.hotp_code() over 10,000 counters and RFC 4226 Appendix D
-- before timing it.
CREATE OR REPLACE FUNCTION bench.plpgsql_hotp(secret bytea, counter bigint, digits int DEFAULT 6)
RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
AS $$
DECLARE
    h bytea;
    o int;
    v bigint;
BEGIN
    h := public.hmac(int8send(counter), secret, 'sha1');
    o := get_byte(h, length(h) - 1) & 15;
    v := ((get_byte(h, o) & 127)::bigint << 24)
       | (get_byte(h, o + 1) << 16)
       | (get_byte(h, o + 2) << 8)
       |  get_byte(h, o + 3);
    RETURN lpad((v % (10 ^ digits)::bigint)::text, digits, '0');
END
$$;
