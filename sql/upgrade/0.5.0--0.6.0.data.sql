-- Rows as totp_verify 0.5.0 has them, for scripts/check-upgrade (not shipped). Written directly:
-- the installed library is 0.6.0's, whose calls read the partition tables that 0.5.0 lacks.
INSERT INTO totp_private.services (sid, friendly_name, date_created, date_updated)
VALUES ('VA00000000000000000000000000000006', 'Before 0.6.0', now(), now());
INSERT INTO totp_private.entities (identity, service_sid, sid, date_created, date_updated)
VALUES ('user-6', 'VA00000000000000000000000000000006', 'YE00000000000000000000000000000006', now(), now());
INSERT INTO totp_private.factors (identity, sid, service_sid, entity_sid, friendly_name, status, alg,
                                  code_length, time_step, skew, date_created, date_updated)
VALUES ('user-6', 'YF00000000000000000000000000000006', 'VA00000000000000000000000000000006',
        'YE00000000000000000000000000000006', 'phone', 'verified', 'sha1', 6, 30, 1, now(), now());
