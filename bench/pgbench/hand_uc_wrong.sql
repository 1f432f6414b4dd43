-- Section 7: totp.update_challenge with a wrong code on one of the pending challenges (one per
-- factor n, SID derived from n; max_challenge_attempts is raised so that they stay pending).
\set n random(1, :nfactors)
SELECT totp.update_challenge(:svc, 'u' || :n, 'YC' || lpad(to_hex(CAST(:n AS integer)), 32, '0'), '000000');
