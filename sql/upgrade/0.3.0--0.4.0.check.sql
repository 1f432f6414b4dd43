-- After ALTER EXTENSION UPDATE from 0.3.0: rows kept (no account), the grant given again, old
-- calls and the new argument work (not shipped).
DO $check$
DECLARE
    svc record;
BEGIN
    ASSERT (SELECT max_challenge_attempts FROM totp.services WHERE sid = 'VA00000000000000000000000000000003') = 3,
        'service and its limits kept';
    ASSERT (SELECT account_sid FROM totp.services WHERE sid = 'VA00000000000000000000000000000003') IS NULL,
        'a service made before 0.4.0 has no account';
    ASSERT (SELECT count(*) FROM totp.entities WHERE identity = 'user-3') = 1, 'entity kept';
    ASSERT has_function_privilege('totp_upgrade_admin_check',
               'totp.create_service(text, text, integer, integer, integer, text, text)', 'EXECUTE'),
        'EXECUTE on create_service given again';
    svc := totp.create_service('Old call', 'Issuer', 30, 6, 1);
    ASSERT svc.sid ~ '^VA[0-9a-f]{32}$' AND svc.account_sid IS NULL, 'create_service as 0.3.0 called it';
    svc := totp.create_service('Upgraded', 'Acme', sid => 'VA00000000000000000000000000000003');
    ASSERT svc.date_created < now() - interval '12 hours', 'the existing service, not a new one';
    svc := totp.create_service('Owned', account_sid => 'AC0123456789abcdef0123456789abcdef');
    ASSERT svc.account_sid = 'AC0123456789abcdef0123456789abcdef', 'create_service with account_sid';
END
$check$;
-- Leave the schema as a fresh install has it, for the comparison that follows.
DROP OWNED BY totp_upgrade_admin_check;
DROP ROLE totp_upgrade_admin_check;
