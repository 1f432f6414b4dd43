-- Rows as totp_verify 0.6.0 makes them, for scripts/check-upgrade (not shipped): two verified
-- factors of one entity, the first with two pending challenges, the second with one; and the
-- same identity in a second service, with one challenge.
DO $data$
DECLARE
    secret constant text := 'JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP';
    svc constant text := 'VA00000000000000000000000000000007';
    f text;
BEGIN
    PERFORM totp.create_service('Before 0.7.0', sid => svc);
    FOREACH f IN ARRAY ARRAY['YF00000000000000000000000000000071', 'YF00000000000000000000000000000072'] LOOP
        PERFORM totp.create_factor(svc, 'user-7', 'phone', secret => secret, sid => f);
        PERFORM totp.verify_factor(svc, 'user-7', f, totp.totp_code(totp.base32_decode(secret)));
    END LOOP;
    FOREACH f IN ARRAY ARRAY['YF00000000000000000000000000000071', 'YF00000000000000000000000000000071',
                             'YF00000000000000000000000000000072'] LOOP
        PERFORM totp.create_challenge(svc, 'user-7', f);
    END LOOP;
    PERFORM totp.create_service('Before 0.7.0, too', sid => 'VA00000000000000000000000000000008');
    PERFORM totp.create_factor('VA00000000000000000000000000000008', 'user-7', 'phone', secret => secret,
                               sid => 'YF00000000000000000000000000000081');
    PERFORM totp.verify_factor('VA00000000000000000000000000000008', 'user-7', 'YF00000000000000000000000000000081',
                               totp.totp_code(totp.base32_decode(secret)));
    PERFORM totp.create_challenge('VA00000000000000000000000000000008', 'user-7', 'YF00000000000000000000000000000081');
END
$data$;
