-- Section 6 (issue 10): every call answers with the right code, so every challenge is approved
-- (guess reserved and refunded, event row written, NOTIFY). Factors are walked in order rather
-- than drawn at random, so that no factor is asked twice within its 30-second step (which would
-- be a refused replay): client c takes start + c, start + c + clients, ...; bench/run moves
-- `start` on after each run. pgbench variables persist from one transaction to the next.
\set n 1 + (:start + :client_id + :clients * :i) % :nfactors
\set i :i + 1
SELECT totp.create_challenge(:svc, f.identity, f.sid, totp.totp_code(f.secret)) FROM bench.f f WHERE f.n = :n;
