-- Rows and grants as totp_verify 0.2.0 has them, for scripts/check-upgrade (not shipped). Written
-- directly or through functions whose signature 0.3.0 keeps: the library is already the new one.
INSERT INTO totp_private.services (sid, friendly_name, totp_issuer, max_challenge_attempts, date_created, date_updated)
VALUES ('VA00000000000000000000000000000002', 'Upgraded', 'Acme', 3, now() - interval '1 day', now() - interval '1 day');
SELECT totp.create_entity('VA00000000000000000000000000000002', 'user-2');
-- An administrator may create services, an enrolment role create factors: the update keeps both.
CREATE ROLE totp_upgrade_admin_check;
GRANT EXECUTE ON FUNCTION totp.create_service(text, text, integer, integer, integer) TO totp_upgrade_admin_check;
CREATE ROLE totp_upgrade_enrol_check;
SELECT totp.grant_enrolment('totp_upgrade_enrol_check');
