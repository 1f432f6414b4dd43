-- After ALTER EXTENSION UPDATE from 0.6.0: the challenges' foreign key is gone, and deleting a
-- factor still deletes its challenges, and only its own (not shipped).
DO $check$
BEGIN
    ASSERT NOT EXISTS (SELECT FROM pg_catalog.pg_constraint
                        WHERE conrelid = 'totp_private.challenges'::pg_catalog.regclass AND contype = 'f'),
        'challenges have no foreign key';
    ASSERT (SELECT count(*) FROM totp_private.challenges WHERE identity = 'user-7') = 4, 'the 0.6.0 challenges';
    PERFORM totp.delete_factor('VA00000000000000000000000000000007', 'user-7', 'YF00000000000000000000000000000071');
    ASSERT (SELECT pg_catalog.array_agg(factor_sid ORDER BY factor_sid) FROM totp_private.challenges
             WHERE identity = 'user-7')
           = ARRAY['YF00000000000000000000000000000072', 'YF00000000000000000000000000000081'],
        'delete_factor deletes its challenges only';
    PERFORM totp.delete_entity('VA00000000000000000000000000000007', 'user-7');
    ASSERT (SELECT pg_catalog.array_agg(factor_sid) FROM totp_private.challenges WHERE identity = 'user-7')
           = ARRAY['YF00000000000000000000000000000081'], 'delete_entity deletes its service''s challenges only';
    PERFORM totp.delete_service('VA00000000000000000000000000000008');
    ASSERT NOT EXISTS (SELECT FROM totp_private.challenges WHERE identity = 'user-7'),
        'delete_service deletes the rest';
END
$check$;
