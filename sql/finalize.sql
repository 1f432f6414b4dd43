-- Privileges (SPEC §7): after CREATE EXTENSION, PUBLIC can do nothing. Functions are
-- executable by PUBLIC by default in Postgres, so take that back; tables and views are not
-- granted to anyone, and the schemas give USAGE to no one but the owner. The README lists
-- the grants an application role needs.
REVOKE ALL ON SCHEMA totp FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA totp FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA totp FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA totp_private FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA totp_private FROM PUBLIC;
