-- The grant sets an application needs, shipped as functions so that a DBA gives exactly them
-- (SPEC §7; README "Privileges"). Two sets, so that a compromised verification role cannot enrol a
-- factor of its own choosing (and so cannot mint a step-up approval), and a compromised enrolment
-- role's new factors can be kept out of step-up checks with min_factor_age.
--
-- They are not SECURITY DEFINER: GRANT needs the caller to own the objects or hold the grant
-- option, so only the extension's owner or a superuser can run them, and EXECUTE is revoked
-- from PUBLIC in finalize.sql.

CREATE FUNCTION totp.grant_enrolment(role regrole) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF role IS NULL OR NOT EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.oid = role) THEN
        RAISE EXCEPTION 'invalid role (Twilio 60200)' USING ERRCODE = '22023',
            DETAIL = 'role must name an existing role.';
    END IF;
    EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA totp TO %s', role);
    EXECUTE pg_catalog.format('GRANT SELECT ON totp.services, totp.entities, totp.factors TO %s', role);
    EXECUTE pg_catalog.format(
        'GRANT EXECUTE ON FUNCTION totp.create_entity, totp.delete_entity, totp.create_factor, '
        'totp.verify_factor, totp.update_factor, totp.delete_factor, totp.qr_svg, totp.otpauth_uri, '
        'totp.get_service, totp.list_services, totp.get_entity, totp.get_factor, totp.list_factors, '
        'totp.shard_hash TO %s', role);
END
$$;

CREATE FUNCTION totp.grant_verification(role regrole) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF role IS NULL OR NOT EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.oid = role) THEN
        RAISE EXCEPTION 'invalid role (Twilio 60200)' USING ERRCODE = '22023',
            DETAIL = 'role must name an existing role.';
    END IF;
    EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA totp TO %s', role);
    EXECUTE pg_catalog.format('GRANT SELECT ON totp.services, totp.factors, totp.challenges TO %s', role);
    EXECUTE pg_catalog.format(
        'GRANT EXECUTE ON FUNCTION totp.create_challenge, totp.update_challenge, '
        'totp.has_recent_approval, totp.has_recent_approval_from_aged_factor, '
        'totp.get_service, totp.list_services, totp.get_factor, totp.list_factors, totp.get_challenge, '
        'totp.list_challenges, totp.shard_hash TO %s', role);
END
$$;
