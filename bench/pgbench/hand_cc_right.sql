-- Section 7: totp.create_challenge with the right code. The code is computed in the statement
-- (totp_code over the factor's known secret, sha256('bench-' || n): one SHA-256 and one HMAC,
-- ~1 us, which the hand-written flow does on the client). Factors are walked in order, as in
-- challenge_right_seq.sql, so that no factor is asked twice within its 30-second step (a refused
-- replay); bench/run moves `start` on after each run over the pool n = :first + 1 .. :first + :nfactors
-- (factors that no other run of the section answers with a right code).
\set n :first + 1 + (:start + :client_id + :clients * :i) % :nfactors
\set i :i + 1
SELECT totp.create_challenge(:svc, 'u' || :n, 'YF' || lpad(to_hex(CAST(:n AS integer)), 32, '0'),
                             totp.totp_code(substr(sha256(convert_to('bench-' || :n, 'UTF8')), 1, 20)));
