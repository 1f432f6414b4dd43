-- Trigger functions for an application's own tables (SPEC §7). They read the identity from a
-- column of any type through its text form (to_jsonb(row) ->> column), so an integer primary
-- key works. SECURITY DEFINER so the application's role needs no rights on the extension's
-- tables, with search_path pinned and every name qualified.

CREATE FUNCTION totp.forget_entity() RETURNS trigger
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    row_json jsonb;
    entity_identity text;
BEGIN
    IF TG_NARGS <> 2 OR TG_OP <> 'DELETE' OR TG_LEVEL <> 'ROW' THEN
        RAISE EXCEPTION 'totp.forget_entity() must be an AFTER DELETE ... FOR EACH ROW trigger with arguments (service_sid, identity_column) (Twilio 60200)'
            USING ERRCODE = '22023';
    END IF;
    row_json := pg_catalog.to_jsonb(OLD);
    IF NOT row_json ? TG_ARGV[1] THEN
        RAISE EXCEPTION 'column "%" not found in %.%', TG_ARGV[1], TG_TABLE_SCHEMA, TG_TABLE_NAME
            USING ERRCODE = '42703';
    END IF;
    entity_identity := row_json ->> TG_ARGV[1];
    -- Checks the service SID (60200 when malformed) even for a NULL identity, so a misconfigured
    -- trigger fails at its first use instead of silently keeping every entity; records the
    -- factor.deleted events.
    PERFORM totp_private.forget_identity(TG_ARGV[0], entity_identity);
    RETURN OLD;
END
$$;

CREATE FUNCTION totp.require_approval() RETURNS trigger
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    max_age interval;
    min_factor_age interval;
    identities text[];
    entity_identity text;
BEGIN
    IF TG_NARGS NOT IN (3, 4) OR TG_WHEN <> 'BEFORE' OR TG_LEVEL <> 'ROW' THEN
        RAISE EXCEPTION 'totp.require_approval() must be a BEFORE ... FOR EACH ROW trigger with arguments (service_sid, identity_column, max_age [, min_factor_age]) (Twilio 60200)'
            USING ERRCODE = '22023';
    END IF;
    BEGIN
        max_age := TG_ARGV[2]::interval;
        IF TG_NARGS = 4 THEN
            min_factor_age := TG_ARGV[3]::interval;
        END IF;
    EXCEPTION WHEN data_exception THEN
        RAISE EXCEPTION 'totp.require_approval(): max_age and min_factor_age must be intervals (Twilio 60200)'
            USING ERRCODE = '22023';
    END;
    -- Every identity the write touches must have stepped up: the row's owner before and after.
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        IF NOT pg_catalog.to_jsonb(NEW) ? TG_ARGV[1] THEN
            RAISE EXCEPTION 'column "%" not found in %.%', TG_ARGV[1], TG_TABLE_SCHEMA, TG_TABLE_NAME
                USING ERRCODE = '42703';
        END IF;
        identities := identities || (pg_catalog.to_jsonb(NEW) ->> TG_ARGV[1]);
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        identities := identities || (pg_catalog.to_jsonb(OLD) ->> TG_ARGV[1]);
    END IF;
    FOREACH entity_identity IN ARRAY identities LOOP
        IF entity_identity IS NULL
           OR NOT (CASE WHEN min_factor_age IS NULL
                        THEN totp.has_recent_approval(TG_ARGV[0], entity_identity, max_age)
                        ELSE totp.has_recent_approval_from_aged_factor(TG_ARGV[0], entity_identity, max_age, min_factor_age)
                   END) THEN
            RAISE EXCEPTION 'step-up approval required'
                USING ERRCODE = '42501',
                      DETAIL = pg_catalog.format('%s on %I.%I needs a challenge approved within %s for this identity%s.',
                                                 TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME, max_age,
                                                 CASE WHEN min_factor_age IS NULL THEN ''
                                                      ELSE ', through a factor verified at least ' || min_factor_age::text || ' before' END),
                      HINT = 'Approve a challenge with totp.create_challenge or totp.update_challenge first.';
        END IF;
    END LOOP;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END
$$;
