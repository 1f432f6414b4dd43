-- After ALTER EXTENSION UPDATE from 0.5.0: the rows written at 0.5.0 are read by the new read
-- functions, and the partition guard works on them (not shipped).
DO $check$
BEGIN
    ASSERT (SELECT count(*) FROM totp.list_factors('VA00000000000000000000000000000006', 'user-6')) = 1,
        'list_factors reads the factor made at 0.5.0';
    PERFORM totp.set_partition(totp.shard_hash('user-6') & 1, 2);
    ASSERT (SELECT status FROM totp.get_factor('VA00000000000000000000000000000006', 'user-6',
                                               'YF00000000000000000000000000000006')) = 'verified',
        'its home partition serves it';
    PERFORM totp.set_partition(1 - (totp.shard_hash('user-6') & 1), 2);
    BEGIN
        PERFORM totp.get_entity('VA00000000000000000000000000000006', 'user-6');
        ASSERT false, 'another partition refuses it';
    EXCEPTION WHEN object_not_in_prerequisite_state THEN
        NULL;
    END;
    PERFORM totp.set_partition(NULL, NULL);
END
$check$;
