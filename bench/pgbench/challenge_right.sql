-- Measurement 2/3: answer a challenge with the code the user's app shows now. The code is
-- computed by totp.totp_code in the same statement (one HMAC, ~0.3 us: see measurement 1).
-- If this factor already accepted this time step (drawn twice within 30 s), the code is a
-- replay and is refused like a wrong one: the challenge stays pending. bench/run counts both.
\set n random(1, :nfactors)
SELECT totp.create_challenge(:svc, f.identity, f.sid, totp.totp_code(f.secret)) FROM bench.f f WHERE f.n = :n;
