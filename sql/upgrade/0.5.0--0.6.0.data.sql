-- Rows as totp_verify 0.5.0 has them, for scripts/check-upgrade (not shipped): a factor sealed
-- under the database's first key.
SELECT totp.create_service('Before 0.6.0', sid => 'VA00000000000000000000000000000006');
SELECT totp.create_factor('VA00000000000000000000000000000006', 'user-6', 'phone');
