-- Section 7: totp.create_challenge with a wrong code, called as an application calls it (its
-- identity and factor SID as parameters; bench_hand's factor SIDs are derived from n, so no
-- lookup table is read).
\set n random(1, :nfactors)
SELECT totp.create_challenge(:svc, 'u' || :n, 'YF' || lpad(to_hex(CAST(:n AS integer)), 32, '0'), '000000');
