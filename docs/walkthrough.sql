-- The enrol -> verify walk-through that `scripts/demo` runs (and the README shows).
-- oathtool plays the user's authenticator app.
\set ON_ERROR_STOP on
\set QUIET on
\pset null '(null)'
\pset expanded auto

-- 1. Once: a service. Unset TOTP settings mean Twilio's defaults (30 s, 6 digits, skew 1).
SELECT sid, friendly_name, totp_issuer, totp_time_step, totp_code_length, totp_skew
  FROM totp.create_service('Acme Bank', issuer => 'Acme') \gset service_
\echo service :service_sid

-- 2. Register: create a factor for the user (the entity is created on the way). The secret and
--    URI are returned this once; show the QR code to the user.
SELECT sid, status, alg, code_length, time_step, skew, binding_secret, binding_uri
  FROM totp.create_factor(:'service_sid', 'user-42', 'alice@example.com') \gset factor_
\echo factor :factor_sid is :factor_status
\echo binding_uri :factor_binding_uri

--    The QR code is a standalone SVG; a real scanner (zbarimg) reads it back.
\pset format unaligned
\pset tuples_only on
--    (Files go to $TOTP_WALKTHROUGH_DIR, a private directory scripts/demo makes; else to .)
SELECT totp.qr_svg(:'factor_binding_uri') \g |cat > "${TOTP_WALKTHROUGH_DIR:-.}/totp_walkthrough_qr.svg"
\pset format aligned
\pset tuples_only off
\! cd "${TOTP_WALKTHROUGH_DIR:-.}" && rsvg-convert totp_walkthrough_qr.svg -o totp_walkthrough_qr.png 2>/dev/null && zbarimg -q --raw totp_walkthrough_qr.png 2>/dev/null

-- 3. The user types the code from the app: the factor becomes verified.
\set code `oathtool --totp -b :'factor_binding_secret'`
SELECT sid, status FROM totp.verify_factor(:'service_sid', 'user-42', :'factor_sid', :'code');

-- 4. Later, at login: a challenge with the code. The code verify_factor used is spent (no
--    replay), so this one is refused exactly like a wrong code: pending, not an error.
SELECT status, date_responded FROM totp.create_challenge(:'service_sid', 'user-42', :'factor_sid', :'code');

--    The next code from the app (the following 30 s step; skew 1 accepts it now) approves.
\set code `oathtool --totp -b --now="$(date -u -d '+30 seconds' '+%Y-%m-%d %H:%M:%S UTC')" :'factor_binding_secret'`
SELECT status, date_responded IS NOT NULL AS responded
  FROM totp.create_challenge(:'service_sid', 'user-42', :'factor_sid', :'code');

-- 5. Refusals are errors with a SQLSTATE and Twilio's code.
\set ON_ERROR_STOP off
SELECT * FROM totp.create_challenge(:'service_sid', 'nobody', :'factor_sid');
\set ON_ERROR_STOP on
\set QUIET on

-- 6. Everything is plain SQL to read; the secret is in no relation an application can read.
SELECT identity, status, count(*) FROM totp.challenges GROUP BY 1, 2 ORDER BY 1, 2;

-- 7. Each change Twilio would send a webhook for is a row of totp.events, written in the same
-- transaction (readable only with a grant; no secret or code in it).
SELECT type, entity_identity, challenge_sid IS NOT NULL AS has_challenge FROM totp.events ORDER BY date_created;
