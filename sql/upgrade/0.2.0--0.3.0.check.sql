-- After ALTER EXTENSION UPDATE from 0.2.0: rows kept, grants given again, old calls and the new
-- arguments work (not shipped).
DO $check$
DECLARE
    svc record;
    factor record;
BEGIN
    ASSERT (SELECT max_challenge_attempts FROM totp.services WHERE sid = 'VA00000000000000000000000000000002') = 3,
        'service and its limits kept';
    ASSERT (SELECT count(*) FROM totp.entities WHERE identity = 'user-2') = 1, 'entity kept';
    ASSERT has_function_privilege('totp_upgrade_admin_check',
               'totp.create_service(text, text, integer, integer, integer, text)', 'EXECUTE'),
        'EXECUTE on create_service given again';
    ASSERT has_function_privilege('totp_upgrade_enrol_check',
               'totp.create_factor(text, text, text, text, text, integer, integer, integer, jsonb, text)', 'EXECUTE'),
        'EXECUTE on create_factor given again';
    ASSERT NOT has_function_privilege('totp_upgrade_enrol_check',
               'totp.create_service(text, text, integer, integer, integer, text)', 'EXECUTE'),
        'no grant where there was none';
    -- A 0.2.0 call, positional, still works.
    svc := totp.create_service('Old call', 'Issuer', 30, 6, 1);
    ASSERT svc.sid ~ '^VA[0-9a-f]{32}$', 'create_service without sid';
    -- The existing service named with its own settings is returned as it is.
    svc := totp.create_service('Upgraded', 'Acme', sid => 'VA00000000000000000000000000000002');
    ASSERT svc.date_created < now() - interval '12 hours', 'the existing service, not a new one';
    factor := totp.create_factor('VA00000000000000000000000000000002', 'user-2', 'phone',
                                 secret => 'JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP',
                                 sid => 'YF00000000000000000000000000000002');
    ASSERT factor.sid = 'YF00000000000000000000000000000002' AND factor.entity_sid =
           (SELECT sid FROM totp.entities WHERE identity = 'user-2'), 'create_factor with sid, on the old entity';
    ASSERT (SELECT status FROM totp.verify_factor('VA00000000000000000000000000000002', 'user-2', factor.sid,
               totp.totp_code(totp.base32_decode('JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP')))) = 'verified',
        'a code from the supplied secret verifies';
END
$check$;
-- Leave the schema as a fresh install has it, for the comparison that follows.
DROP OWNED BY totp_upgrade_admin_check, totp_upgrade_enrol_check;
DROP ROLE totp_upgrade_admin_check;
DROP ROLE totp_upgrade_enrol_check;
