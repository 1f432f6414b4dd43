-- After ALTER EXTENSION UPDATE from 0.4.0: the key bookkeeping takes the new state, and a
-- rotation in stages re-seals the factor sealed before the update (not shipped).
DO $check$
DECLARE
    added bigint;
    rotated record;
BEGIN
    ASSERT (SELECT count(*) FROM totp_private.keys WHERE state = 'current') = 1, 'the current key kept';
    added := totp.add_key();
    ASSERT (SELECT state FROM totp_private.keys WHERE key_id = added) = 'added', 'add_key after the update';
    SELECT * INTO rotated FROM totp.rotate_key(key_id => added);
    ASSERT rotated.new_key_id = added AND rotated.resealed = 1 AND rotated.unreadable = 0,
        'the factor sealed at 0.4.0 re-sealed under the added key';
    ASSERT (SELECT key_id FROM totp_private.factor_secrets WHERE identity = 'user-5') = added, 'sealed under it';
END
$check$;
