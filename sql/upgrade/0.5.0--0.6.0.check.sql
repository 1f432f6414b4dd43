-- After ALTER EXTENSION UPDATE from 0.5.0: the factor made at 0.5.0 is read by the new read
-- functions, moves out of a partition with its secret and comes back (not shipped).
DO $check$
DECLARE
    document jsonb;
    kept bigint;
BEGIN
    ASSERT (SELECT count(*) FROM totp.list_factors('VA00000000000000000000000000000006', 'user-6')) = 1,
        'list_factors reads the factor made at 0.5.0';
    PERFORM totp.set_partition(0, 1);
    document := totp.release_identity('user-6', 0);
EXCEPTION WHEN invalid_parameter_value THEN
    -- part_count 1 has no other partition to move to: the refusal the upgrade must keep.
    PERFORM totp.set_partition(NULL, NULL);
    document := totp.export_identity('user-6');
    ASSERT jsonb_array_length(document->'factors') = 1, 'exported the factor made at 0.5.0';
    ASSERT length(document->'secrets'->>(document->'factors'->0->>'sid')) = 32, 'with its secret';
    kept := totp.import_identity(document);
    ASSERT kept = 1, 'imported it back';
END
$check$;
