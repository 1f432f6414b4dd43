-- After ALTER EXTENSION UPDATE from 0.1.0: the rows are where 0.2.0 reads them (not shipped).
DO $check$
BEGIN
    ASSERT (SELECT max_challenge_attempts FROM totp.services WHERE sid = 'VA00000000000000000000000000000001') = 3,
        'service and its limits kept';
    ASSERT (SELECT count(*) FROM totp.entities WHERE identity = 'user-1') = 1, 'entity kept';
    ASSERT (SELECT status FROM totp.factors WHERE sid = 'YF00000000000000000000000000000001') = 'verified',
        'factor kept';
    ASSERT (SELECT date_verified FROM totp_private.factors WHERE sid = 'YF00000000000000000000000000000001')
           = (SELECT date_updated FROM totp_private.factors WHERE sid = 'YF00000000000000000000000000000001'),
        'date_verified filled in from date_updated';
    ASSERT totp.has_recent_approval('VA00000000000000000000000000000001', 'user-1', '5 minutes'),
        'the approval still counts';
    ASSERT NOT totp.has_recent_approval_from_aged_factor('VA00000000000000000000000000000001', 'user-1',
                                                         '5 minutes', '2 days'),
        'min_factor_age measured from date_updated errs on the strict side';
    ASSERT (SELECT count(*) FROM pg_policy WHERE polname = 'recent') = 1, 'the application''s policy kept';
    ASSERT has_function_privilege('totp_upgrade_admin_check', 'totp.update_service(text, text, text, integer, integer, integer, integer, integer, integer, integer, integer, integer, integer, interval, interval, interval, interval)', 'EXECUTE'),
        'EXECUTE on update_service given again';
END
$check$;
-- Leave the schema as a fresh install has it, for the comparison that follows.
REVOKE EXECUTE ON FUNCTION totp.update_service FROM totp_upgrade_admin_check;
DROP ROLE totp_upgrade_admin_check;
