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

-- ---- issue 16 (faster than doing it yourself) -------------------------------------------------
-- The tables every verification writes lose their CHECK constraints: Postgres re-reads and
-- re-plans a table's CHECK expressions in every statement that writes it (about a third of
-- create_challenge's time in 0.4.0). Only the extension writes them, and every value they held to
-- is checked in Rust before it is written (see sql/bootstrap.sql). Rows are unchanged.
ALTER TABLE totp_private.factors
    DROP CONSTRAINT factors_factor_type_check,
    DROP CONSTRAINT factors_status_check,
    DROP CONSTRAINT factors_alg_check,
    DROP CONSTRAINT factors_code_length_check,
    DROP CONSTRAINT factors_time_step_check,
    DROP CONSTRAINT factors_skew_check;
ALTER TABLE totp_private.challenges
    DROP CONSTRAINT challenges_factor_type_check,
    DROP CONSTRAINT challenges_status_check,
    DROP CONSTRAINT challenges_responded_reason_check;
ALTER TABLE totp_private.events
    DROP CONSTRAINT events_type_check;
-- ---- end of issue 16 ---------------------------------------------------------------------------
