-- Rows and grants as totp_verify 0.3.0 has them, for scripts/check-upgrade (not shipped). Written
-- directly: the library is already the new one, and 0.3.0's create_service lacks account_sid.
INSERT INTO totp_private.services (sid, friendly_name, totp_issuer, max_challenge_attempts, date_created, date_updated)
VALUES ('VA00000000000000000000000000000003', 'Upgraded', 'Acme', 3, now() - interval '1 day', now() - interval '1 day');
SELECT totp.create_entity('VA00000000000000000000000000000003', 'user-3');
-- An administrator may create services: the update keeps that.
CREATE ROLE totp_upgrade_admin_check;
GRANT EXECUTE ON FUNCTION totp.create_service(text, text, integer, integer, integer, text) TO totp_upgrade_admin_check;
