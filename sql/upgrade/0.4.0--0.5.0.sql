-- totp_verify 0.4.0 -> 0.5.0. Keeps every row; see README "Upgrading".
--
-- Citus (issue 13): totp.distribute() / totp.undistribute() (sql/distribute.sql, appended below)
-- and key rotation in stages: totp.add_key() puts a key in the key file without making it
-- current, totp.rotate_key(batch_size, key_id) makes such a key current, totp.key_file_ids() lists
-- a key file's ids, totp.make_key_current() is what rotate_key runs on each Citus worker. The key
-- bookkeeping gains the state 'added'. rotate_key is superuser-only, so
-- it is dropped and created again without carrying grants.

ALTER TABLE totp_private.keys DROP CONSTRAINT keys_state_check;
ALTER TABLE totp_private.keys
    ADD CONSTRAINT keys_state_check CHECK (state IN ('current', 'previous', 'retired', 'added'));

DROP FUNCTION totp.rotate_key(integer);
CREATE FUNCTION totp.rotate_key(
	"batch_size" INT DEFAULT 1000,
	"key_id" bigint DEFAULT NULL
) RETURNS TABLE (
	"new_key_id" bigint,
	"resealed" bigint,
	"unreadable" bigint,
	"retired_key_ids" bigint[]
)
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'rotate_key_wrapper';

CREATE FUNCTION totp.add_key() RETURNS bigint
STRICT VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'add_key_wrapper';

CREATE FUNCTION totp.key_file_ids() RETURNS bigint[]
STRICT VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'key_file_ids_wrapper';

CREATE FUNCTION totp.make_key_current("key_id" bigint) RETURNS VOID
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'make_key_current_wrapper';
