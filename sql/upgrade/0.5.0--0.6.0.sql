-- totp_verify 0.5.0 -> 0.6.0. Keeps every row; see README "Upgrading".
--
-- PL/Proxy partitions (issue 15): the partition guard's tables (totp_private.partition,
-- totp_private.placements, both dumped by pg_dump), totp.shard_hash(), totp.set_partition(),
-- identity-scoped reads (get_service, list_services, get_entity, get_factor, list_factors,
-- get_challenge, list_challenges), and identity moves (export_identity, release_identity,
-- import_identity). On Citus, run SELECT * FROM totp.distribute() on the coordinator right after
-- the update: it makes the two new tables reference tables, as services are.

CREATE TABLE totp_private.partition (
    one_row                      boolean     NOT NULL PRIMARY KEY DEFAULT true CHECK (one_row),
    part_no                      integer     NOT NULL,
    part_count                   integer     NOT NULL,
    CHECK (part_count BETWEEN 1 AND 1024 AND part_count & (part_count - 1) = 0
           AND part_no >= 0 AND part_no < part_count)
);
CREATE TABLE totp_private.placements (
    identity                     text        NOT NULL PRIMARY KEY,
    part_no                      integer     NOT NULL CHECK (part_no >= 0)
);
SELECT pg_catalog.pg_extension_config_dump('totp_private.partition', '');
SELECT pg_catalog.pg_extension_config_dump('totp_private.placements', '');

CREATE FUNCTION totp.shard_hash(
	"identity" TEXT
) RETURNS INT
IMMUTABLE STRICT PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'shard_hash_wrapper';

CREATE FUNCTION totp.set_partition(
	"part_no" INT,
	"part_count" INT
) RETURNS VOID
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'set_partition_wrapper';

CREATE FUNCTION totp.get_service(
	"sid" TEXT
) RETURNS totp.services
STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'get_service_wrapper';

CREATE FUNCTION totp.list_services() RETURNS SETOF totp.services
STRICT STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'list_services_wrapper';

CREATE FUNCTION totp.get_entity(
	"service_sid" TEXT,
	"identity" TEXT
) RETURNS totp.entities
STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'get_entity_wrapper';

CREATE FUNCTION totp.get_factor(
	"service_sid" TEXT,
	"identity" TEXT,
	"factor_sid" TEXT
) RETURNS totp.factors
STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'get_factor_wrapper';

CREATE FUNCTION totp.list_factors(
	"service_sid" TEXT,
	"identity" TEXT
) RETURNS SETOF totp.factors
STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'list_factors_wrapper';

CREATE FUNCTION totp.get_challenge(
	"service_sid" TEXT,
	"identity" TEXT,
	"challenge_sid" TEXT
) RETURNS totp.challenges
STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'get_challenge_wrapper';

CREATE FUNCTION totp.list_challenges(
	"service_sid" TEXT,
	"identity" TEXT,
	"factor_sid" TEXT DEFAULT NULL,
	"status" TEXT DEFAULT NULL,
	"newest_first" bool DEFAULT false
) RETURNS SETOF totp.challenges
STABLE SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'list_challenges_wrapper';

CREATE FUNCTION totp.export_identity(
	"identity" TEXT
) RETURNS jsonb
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'export_identity_wrapper';

CREATE FUNCTION totp.release_identity(
	"identity" TEXT,
	"part_no" INT
) RETURNS jsonb
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'release_identity_wrapper';

CREATE FUNCTION totp.import_identity(
	"data" jsonb
) RETURNS bigint
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'import_identity_wrapper';
