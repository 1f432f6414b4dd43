-- totp_verify 0.6.0 -> 0.7.0. Keeps every row; see README "Upgrading".
--
-- Issue 16 (performance): challenges no longer have a foreign key to their factor. Its check was
-- a query of its own in every challenge creation, although the factor row is already locked FOR
-- UPDATE there; the extension deletes a factor's challenges itself (see sql/bootstrap.sql).
-- Found by what it is, not by name: a database may have come through every version since 0.1.0.
DO $drop$
DECLARE
    fk name;
BEGIN
    FOR fk IN SELECT c.conname FROM pg_catalog.pg_constraint c
               WHERE c.conrelid = 'totp_private.challenges'::pg_catalog.regclass AND c.contype = 'f'
                 AND c.confrelid = 'totp_private.factors'::pg_catalog.regclass
    LOOP
        EXECUTE pg_catalog.format('ALTER TABLE totp_private.challenges DROP CONSTRAINT %I', fk);
    END LOOP;
END
$drop$;
