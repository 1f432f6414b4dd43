-- totp_verify_router 0.1.0: the totp_verify API on a PL/Proxy router database (README "Sharding
-- with PL/Proxy"). totp_verify is NOT installed here: every call runs on one partition (a database
-- with totp_verify and totp.set_partition(n, count)), chosen by identity, or on every partition.
--
-- The cluster is the SQL/MED server `totp_cluster` (FOREIGN DATA WRAPPER plproxy, options p0..pN
-- with libpq strings, N+1 a power of 2); each router role needs a USER MAPPING naming the
-- partition role it runs as (with the matching grant set there) and USAGE on the server.
--
-- Schema totp: the same function names, argument names, types and defaults as the extension's;
-- composite types with the names and columns of the partitions' views (PL/Proxy matches result
-- columns by name and sends values as text). Schema totp_router: routing (placements,
-- partition_of), per-partition helpers, merged lists and identity moves.
--
-- PL/Proxy rules kept here: proxies are VOLATILE; RUN ON ALL only for SETOF; a non-SETOF proxy
-- needs exactly one row back; no proxy calls another proxy of the same cluster while running;
-- call them as SELECT * FROM f(...), never SELECT (f(...)).* (that runs f once per column).

\echo Use "CREATE EXTENSION totp_verify_router" to load this file. \quit

CREATE SCHEMA totp;
CREATE SCHEMA totp_router;
REVOKE ALL ON SCHEMA totp, totp_router FROM PUBLIC;

-- ---------------------------------------------------------------------------------------------
-- Row types: the partitions' views and OUT records, column for column.

CREATE TYPE totp.services AS (
    sid text, friendly_name text, totp_issuer text, totp_time_step integer, totp_code_length integer,
    totp_skew integer, max_factor_attempts integer, max_challenge_attempts integer,
    max_challenges_per_hour integer, max_challenges_per_day integer,
    max_short_code_challenges_per_day integer, max_factors_per_entity integer,
    max_factor_creations_per_day integer, challenge_ttl interval, max_challenge_ttl interval,
    unverified_factor_ttl interval, event_retention interval, date_created timestamptz,
    date_updated timestamptz, account_sid text
);
CREATE TYPE totp.entities AS (
    identity text, service_sid text, sid text, date_created timestamptz, date_updated timestamptz,
    factor_window_start timestamptz, factors_created_in_window integer
);
CREATE TYPE totp.factors AS (
    sid text, service_sid text, entity_sid text, identity text, friendly_name text, factor_type text,
    status text, alg text, code_length integer, time_step integer, skew integer, metadata jsonb,
    date_created timestamptz, date_updated timestamptz
);
CREATE TYPE totp.new_factor AS (
    sid text, service_sid text, entity_sid text, identity text, friendly_name text,
    factor_type text, status text, alg text, code_length integer, time_step integer, skew integer,
    metadata jsonb, date_created timestamptz, date_updated timestamptz,
    binding_secret text, binding_uri text
);
CREATE TYPE totp.challenges AS (
    sid text, service_sid text, entity_sid text, identity text, factor_sid text, factor_type text,
    status text, responded_reason text, details jsonb, hidden_details jsonb, metadata jsonb,
    expiration_date timestamptz, date_responded timestamptz, date_created timestamptz,
    date_updated timestamptz
);
CREATE TYPE totp.events AS (
    id uuid, type text, service_sid text, entity_identity text, factor_sid text, challenge_sid text,
    date_created timestamptz
);

-- ---------------------------------------------------------------------------------------------
-- Routing.

-- The partitions' documented hash (the same SQL as totp_verify's totp.shard_hash): the first 32
-- bits of SHA-256 over the identity's UTF-8 bytes, as a signed int4. An identity lives on
-- partition shard_hash(identity) & (part_count - 1), PL/Proxy's RUN ON rule.
CREATE FUNCTION totp.shard_hash(identity text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS
$$ SELECT ('x' || pg_catalog.left(pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(identity, 'UTF8')), 'hex'), 8))::bit(32)::pg_catalog.int4 $$;

-- Identities moved off their hash partition (totp_router.move_identity). moving_to is set while
-- a move runs: calls for that identity are refused (55000) until it finishes.
CREATE TABLE totp_router.placements (
    identity     text        NOT NULL PRIMARY KEY,
    part_no      integer     NOT NULL CHECK (part_no >= 0),
    moving_to    integer     CHECK (moving_to >= 0),
    date_updated timestamptz NOT NULL DEFAULT pg_catalog.now()
);
SELECT pg_catalog.pg_extension_config_dump('totp_router.placements', '');

-- How many partitions the cluster `totp_cluster` has (its p0..pN options).
CREATE FUNCTION totp_router.part_count() RETURNS integer
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
SELECT pg_catalog.count(*)::integer
  FROM pg_catalog.pg_foreign_server s, pg_catalog.unnest(s.srvoptions) o
 WHERE s.srvname = 'totp_cluster' AND o ~ '^p(artition_)?[0-9]+='
$$;

-- The partition an identity's calls go to: its placement, else its hash (PL/Proxy masks it with
-- part_count - 1). A NULL identity goes to partition 0, which refuses it as one node would
-- (22023). SECURITY DEFINER: it reads one placement row; callers get no grant on the table.
CREATE FUNCTION totp_router.partition_of(identity text) RETURNS integer
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p totp_router.placements;
BEGIN
    IF partition_of.identity IS NULL THEN
        RETURN 0;
    END IF;
    SELECT * INTO p FROM totp_router.placements pl WHERE pl.identity = partition_of.identity;
    IF FOUND THEN
        IF p.moving_to IS NOT NULL THEN
            RAISE EXCEPTION 'identity is being moved between partitions'
                USING ERRCODE = '55000',
                      DETAIL = pg_catalog.format('totp_router.move_identity is moving it from partition %s to %s.', p.part_no, p.moving_to),
                      HINT = 'Retry when the move has finished.';
        END IF;
        RETURN p.part_no;
    END IF;
    RETURN totp.shard_hash(partition_of.identity);
END
$$;

-- A new service SID: VA + 32 lower-case hex digits from the CSPRNG behind gen_random_uuid()
-- (pg_strong_random), hashed from two UUIDs' 244 random bits.
CREATE FUNCTION totp_router.new_service_sid() RETURNS text
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
SELECT 'VA' || pg_catalog.left(pg_catalog.encode(pg_catalog.sha256(
           pg_catalog.uuid_send(pg_catalog.gen_random_uuid()) || pg_catalog.uuid_send(pg_catalog.gen_random_uuid())), 'hex'), 32)
$$;

-- ---------------------------------------------------------------------------------------------
-- Identity-scoped state functions: one partition each, the extension's exact signatures.

CREATE FUNCTION totp.create_entity(service_sid text, identity text) RETURNS totp.entities
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON totp_router.partition_of(identity); $$;

CREATE FUNCTION totp.delete_entity(service_sid text, identity text) RETURNS void
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON totp_router.partition_of(identity); $$;

CREATE FUNCTION totp.create_factor(service_sid text, identity text, friendly_name text,
    secret text DEFAULT NULL, alg text DEFAULT NULL, code_length integer DEFAULT NULL,
    time_step integer DEFAULT NULL, skew integer DEFAULT NULL, metadata jsonb DEFAULT NULL,
    sid text DEFAULT NULL) RETURNS totp.new_factor
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON totp_router.partition_of(identity); $$;

CREATE FUNCTION totp.verify_factor(service_sid text, identity text, factor_sid text, auth_payload text)
RETURNS totp.factors
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON totp_router.partition_of(identity); $$;

CREATE FUNCTION totp.update_factor(service_sid text, identity text, factor_sid text,
    friendly_name text DEFAULT NULL, alg text DEFAULT NULL, code_length integer DEFAULT NULL,
    time_step integer DEFAULT NULL, skew integer DEFAULT NULL, metadata jsonb DEFAULT NULL)
RETURNS totp.factors
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON totp_router.partition_of(identity); $$;

CREATE FUNCTION totp.delete_factor(service_sid text, identity text, factor_sid text) RETURNS void
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON totp_router.partition_of(identity); $$;

CREATE FUNCTION totp.create_challenge(service_sid text, identity text, factor_sid text,
    auth_payload text DEFAULT NULL, expiration_date timestamptz DEFAULT NULL,
    details jsonb DEFAULT NULL, hidden_details jsonb DEFAULT NULL) RETURNS totp.challenges
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON totp_router.partition_of(identity); $$;

CREATE FUNCTION totp.update_challenge(service_sid text, identity text, challenge_sid text,
    auth_payload text, metadata jsonb DEFAULT NULL) RETURNS totp.challenges
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON totp_router.partition_of(identity); $$;

-- STABLE on the partitions; a proxy must be VOLATILE. One round trip per call (per row in a
-- policy).
CREATE FUNCTION totp.has_recent_approval(service_sid text, identity text, within interval) RETURNS boolean
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON totp_router.partition_of(identity); $$;

CREATE FUNCTION totp.has_recent_approval_from_aged_factor(service_sid text, identity text,
    within interval, min_factor_age interval) RETURNS boolean
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON totp_router.partition_of(identity); $$;

-- ---------------------------------------------------------------------------------------------
-- Identity-scoped reads (totp_verify 0.6.0's read functions, over the partitions' views).

CREATE FUNCTION totp.get_entity(service_sid text, identity text) RETURNS totp.entities
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON totp_router.partition_of(identity); $$;

CREATE FUNCTION totp.get_factor(service_sid text, identity text, factor_sid text) RETURNS totp.factors
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON totp_router.partition_of(identity); $$;

CREATE FUNCTION totp.list_factors(service_sid text, identity text) RETURNS SETOF totp.factors
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON totp_router.partition_of(identity); $$;

CREATE FUNCTION totp.get_challenge(service_sid text, identity text, challenge_sid text) RETURNS totp.challenges
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON totp_router.partition_of(identity); $$;

CREATE FUNCTION totp.list_challenges(service_sid text, identity text, factor_sid text DEFAULT NULL,
    status text DEFAULT NULL, newest_first boolean DEFAULT false) RETURNS SETOF totp.challenges
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON totp_router.partition_of(identity); $$;

-- ---------------------------------------------------------------------------------------------
-- Services: the same rows on every partition. The SID is minted here when the caller gives
-- none, then every partition gets the call with it (RUN ON ALL). Partitions commit one by one:
-- a failure on one leaves the others changed, so every change is retried with the same SID and
-- arguments until all partitions agree (create_service with a SID and update_service are
-- idempotent; totp.services_digest_all() shows whether they agree).

CREATE FUNCTION totp_router.create_service_all(friendly_name text, issuer text, time_step integer,
    code_length integer, skew integer, sid text, account_sid text) RETURNS SETOF totp.services
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON ALL; TARGET totp.create_service; $$;

CREATE FUNCTION totp_router.update_service_all(sid text, friendly_name text, issuer text,
    time_step integer, code_length integer, skew integer, max_factor_attempts integer,
    max_challenge_attempts integer, max_challenges_per_hour integer, max_challenges_per_day integer,
    max_short_code_challenges_per_day integer, max_factors_per_entity integer,
    max_factor_creations_per_day integer, challenge_ttl interval, max_challenge_ttl interval,
    unverified_factor_ttl interval, event_retention interval) RETURNS SETOF totp.services
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON ALL; TARGET totp.update_service; $$;

CREATE FUNCTION totp_router.delete_service_on(part_no integer, sid text) RETURNS void
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON part_no; SELECT totp.delete_service($2); $$;

CREATE FUNCTION totp_router.services_digest_on(part_no integer) RETURNS text
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON part_no; SELECT totp.services_digest(); $$;

-- A partition failed during a RUN ON ALL change: the same error (SQLSTATE, message with its
-- Twilio code, detail), with a hint naming the SID to retry with.
CREATE FUNCTION totp_router.reraise_for_retry(sqlstate text, message text, detail text, hint text, what text, sid text)
RETURNS void LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = sqlstate, MESSAGE = message, DETAIL = coalesce(detail, ''),
        HINT = pg_catalog.concat_ws(' ', nullif(hint, ''),
            pg_catalog.format('Partitions commit separately: other partitions may have applied this %s; fix the cause and retry it with sid => %L until every partition agrees (totp.services_digest_all()).', what, sid));
END
$$;

-- The row every partition returned, once they agree on everything but the dates (each
-- partition dates its own copy); the earliest copy's dates.
CREATE FUNCTION totp_router.agreed_service(copies totp.services[], what text, sid text) RETURNS totp.services
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer := totp_router.part_count();
    distinct_settings integer;
    result totp.services;
BEGIN
    SELECT pg_catalog.count(DISTINCT pg_catalog.to_jsonb(c) - 'date_created' - 'date_updated')
      INTO distinct_settings FROM pg_catalog.unnest(copies) c;
    IF coalesce(pg_catalog.cardinality(copies), 0) <> n OR distinct_settings <> 1 THEN
        RAISE EXCEPTION 'partitions disagree on service %', sid
            USING ERRCODE = '55000',
                  DETAIL = pg_catalog.format('%s answered on %s of %s partitions with %s different settings.',
                                             what, coalesce(pg_catalog.cardinality(copies), 0), n, distinct_settings),
                  HINT = 'Retry update_service with every setting (or create_service with the same sid) until totp.services_digest_all() agrees.';
    END IF;
    SELECT c.* INTO result FROM pg_catalog.unnest(copies) c ORDER BY c.date_created, c.date_updated LIMIT 1;
    RETURN result;
END
$$;

CREATE FUNCTION totp.create_service(friendly_name text, issuer text DEFAULT NULL, time_step integer DEFAULT NULL,
    code_length integer DEFAULT NULL, skew integer DEFAULT NULL, sid text DEFAULT NULL,
    account_sid text DEFAULT NULL) RETURNS totp.services
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_sid text := coalesce(create_service.sid, totp_router.new_service_sid());
    copies totp.services[];
    e_state text; e_msg text; e_detail text; e_hint text;
BEGIN
    BEGIN
        copies := ARRAY(SELECT c FROM totp_router.create_service_all(friendly_name, issuer, time_step,
                            code_length, skew, v_sid, account_sid) c);
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS e_state = RETURNED_SQLSTATE, e_msg = MESSAGE_TEXT,
                                e_detail = PG_EXCEPTION_DETAIL, e_hint = PG_EXCEPTION_HINT;
        PERFORM totp_router.reraise_for_retry(e_state, e_msg, e_detail, e_hint, 'create_service', v_sid);
    END;
    RETURN totp_router.agreed_service(copies, 'create_service', v_sid);
END
$$;

CREATE FUNCTION totp.update_service(sid text, friendly_name text DEFAULT NULL, issuer text DEFAULT NULL,
    time_step integer DEFAULT NULL, code_length integer DEFAULT NULL, skew integer DEFAULT NULL,
    max_factor_attempts integer DEFAULT NULL, max_challenge_attempts integer DEFAULT NULL,
    max_challenges_per_hour integer DEFAULT NULL, max_challenges_per_day integer DEFAULT NULL,
    max_short_code_challenges_per_day integer DEFAULT NULL, max_factors_per_entity integer DEFAULT NULL,
    max_factor_creations_per_day integer DEFAULT NULL, challenge_ttl interval DEFAULT NULL,
    max_challenge_ttl interval DEFAULT NULL, unverified_factor_ttl interval DEFAULT NULL,
    event_retention interval DEFAULT NULL) RETURNS totp.services
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    copies totp.services[];
    e_state text; e_msg text; e_detail text; e_hint text;
BEGIN
    BEGIN
        copies := ARRAY(SELECT c FROM totp_router.update_service_all(sid, friendly_name, issuer, time_step,
                            code_length, skew, max_factor_attempts, max_challenge_attempts,
                            max_challenges_per_hour, max_challenges_per_day, max_short_code_challenges_per_day,
                            max_factors_per_entity, max_factor_creations_per_day, challenge_ttl,
                            max_challenge_ttl, unverified_factor_ttl, event_retention) c);
    EXCEPTION WHEN OTHERS THEN
        GET STACKED DIAGNOSTICS e_state = RETURNED_SQLSTATE, e_msg = MESSAGE_TEXT,
                                e_detail = PG_EXCEPTION_DETAIL, e_hint = PG_EXCEPTION_HINT;
        PERFORM totp_router.reraise_for_retry(e_state, e_msg, e_detail, e_hint, 'update_service', sid);
    END;
    RETURN totp_router.agreed_service(copies, 'update_service', sid);
END
$$;

-- Deletes the service on every partition, one at a time; a partition that answers 20404 has
-- already deleted it (an earlier, partly failed call). 20404 from every partition is 20404; any
-- other failure is raised after every partition was tried, naming the ones left: retry.
CREATE FUNCTION totp.delete_service(sid text) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer := totp_router.part_count();
    absent integer := 0;
    failed integer[] := '{}';
    e_state text; e_msg text; e_detail text; e_hint text;
    f_state text; f_msg text; f_detail text;
BEGIN
    FOR p IN 0 .. n - 1 LOOP
        BEGIN
            PERFORM totp_router.delete_service_on(p, sid);
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS e_state = RETURNED_SQLSTATE, e_msg = MESSAGE_TEXT,
                                    e_detail = PG_EXCEPTION_DETAIL, e_hint = PG_EXCEPTION_HINT;
            IF e_state = 'P0002' AND e_msg LIKE '%(Twilio 20404)%' THEN
                absent := absent + 1;
                f_msg := coalesce(f_msg, e_msg); f_detail := coalesce(f_detail, e_detail);
            ELSE
                failed := failed || p;
                IF f_state IS NULL THEN
                    f_state := e_state; f_msg := e_msg; f_detail := e_detail;
                END IF;
            END IF;
        END;
    END LOOP;
    IF pg_catalog.cardinality(failed) > 0 THEN
        RAISE EXCEPTION USING ERRCODE = f_state, MESSAGE = f_msg, DETAIL = coalesce(f_detail, ''),
            HINT = pg_catalog.format('delete_service failed on partitions %s of %s (the others deleted it or never had it); retry it.', failed, n);
    END IF;
    IF absent = n THEN
        RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = f_msg, DETAIL = coalesce(f_detail, '');
    END IF;
END
$$;

CREATE FUNCTION totp.get_service(sid text) RETURNS totp.services
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON 0; $$;

CREATE FUNCTION totp.list_services() RETURNS SETOF totp.services
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON 0; $$;

-- Per partition, its totp.services_digest(): equal everywhere when the partitions agree.
CREATE FUNCTION totp.services_digest_all() RETURNS TABLE (part_no integer, digest text)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    FOR p IN 0 .. totp_router.part_count() - 1 LOOP
        part_no := p;
        digest := totp_router.services_digest_on(p);
        RETURN NEXT;
    END LOOP;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Housekeeping on every partition, one at a time, a row per partition. A failure on one
-- partition is raised after the others ran (each committed on its own): retry.

CREATE FUNCTION totp_router.run_maintenance_on(part_no integer,
    OUT expired_challenges bigint, OUT deleted_factors bigint, OUT pruned_events bigint)
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON part_no;
SELECT expired_challenges, deleted_factors, pruned_events FROM totp.run_maintenance(); $$;

CREATE FUNCTION totp_router.rotate_key_on(part_no integer, batch_size integer,
    OUT new_key_id bigint, OUT resealed bigint, OUT unreadable bigint, OUT retired_key_ids bigint[])
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON part_no;
SELECT new_key_id, resealed, unreadable, retired_key_ids FROM totp.rotate_key($2); $$;

CREATE FUNCTION totp_router.retire_keys_on(part_no integer) RETURNS bigint[]
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON part_no; SELECT totp.retire_keys(); $$;

CREATE FUNCTION totp_router.raise_failures(what text, failed integer[], f_state text, f_msg text, f_detail text)
RETURNS void LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF pg_catalog.cardinality(failed) > 0 THEN
        RAISE EXCEPTION USING ERRCODE = f_state, MESSAGE = f_msg, DETAIL = coalesce(f_detail, ''),
            HINT = pg_catalog.format('%s failed on partitions %s; the other partitions ran it and committed. Retry it.', what, failed);
    END IF;
END
$$;

CREATE FUNCTION totp.run_maintenance_all()
RETURNS TABLE (part_no integer, expired_challenges bigint, deleted_factors bigint, pruned_events bigint)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    failed integer[] := '{}'; f_state text; f_msg text; f_detail text;
BEGIN
    FOR p IN 0 .. totp_router.part_count() - 1 LOOP
        BEGIN
            SELECT p, m.expired_challenges, m.deleted_factors, m.pruned_events
              INTO part_no, expired_challenges, deleted_factors, pruned_events
              FROM totp_router.run_maintenance_on(p) m;
            RETURN NEXT;
        EXCEPTION WHEN OTHERS THEN
            failed := failed || p;
            IF f_state IS NULL THEN
                GET STACKED DIAGNOSTICS f_state = RETURNED_SQLSTATE, f_msg = MESSAGE_TEXT, f_detail = PG_EXCEPTION_DETAIL;
            END IF;
        END;
    END LOOP;
    PERFORM totp_router.raise_failures('run_maintenance', failed, f_state, f_msg, f_detail);
END
$$;

-- Each partition has its own key file and rotates its own keys (superuser on the partitions:
-- the caller's user mapping must name a superuser there).
CREATE FUNCTION totp.rotate_key_all(batch_size integer DEFAULT 1000)
RETURNS TABLE (part_no integer, new_key_id bigint, resealed bigint, unreadable bigint, retired_key_ids bigint[])
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    failed integer[] := '{}'; f_state text; f_msg text; f_detail text;
BEGIN
    FOR p IN 0 .. totp_router.part_count() - 1 LOOP
        BEGIN
            SELECT p, r.new_key_id, r.resealed, r.unreadable, r.retired_key_ids
              INTO part_no, new_key_id, resealed, unreadable, retired_key_ids
              FROM totp_router.rotate_key_on(p, batch_size) r;
            RETURN NEXT;
        EXCEPTION WHEN OTHERS THEN
            failed := failed || p;
            IF f_state IS NULL THEN
                GET STACKED DIAGNOSTICS f_state = RETURNED_SQLSTATE, f_msg = MESSAGE_TEXT, f_detail = PG_EXCEPTION_DETAIL;
            END IF;
        END;
    END LOOP;
    PERFORM totp_router.raise_failures('rotate_key', failed, f_state, f_msg, f_detail);
END
$$;

CREATE FUNCTION totp.retire_keys_all() RETURNS TABLE (part_no integer, retired_key_ids bigint[])
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    failed integer[] := '{}'; f_state text; f_msg text; f_detail text;
BEGIN
    FOR p IN 0 .. totp_router.part_count() - 1 LOOP
        BEGIN
            part_no := p;
            retired_key_ids := totp_router.retire_keys_on(p);
            RETURN NEXT;
        EXCEPTION WHEN OTHERS THEN
            failed := failed || p;
            IF f_state IS NULL THEN
                GET STACKED DIAGNOSTICS f_state = RETURNED_SQLSTATE, f_msg = MESSAGE_TEXT, f_detail = PG_EXCEPTION_DETAIL;
            END IF;
        END;
    END LOOP;
    PERFORM totp_router.raise_failures('retire_keys', failed, f_state, f_msg, f_detail);
END
$$;

-- ---------------------------------------------------------------------------------------------
-- Lists across partitions: every partition is asked (RUN ON ALL, in parallel) for its first
-- max_rows rows after the key, and the router merges them, orders and cuts. Each such call
-- scans every partition (each with its own index or scan), so it costs part_count queries.

CREATE FUNCTION totp_router.list_entities_part(service_sid text, after_identity text, max_rows integer)
RETURNS SETOF totp.entities
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON ALL;
SELECT e.identity, e.service_sid, e.sid, e.date_created, e.date_updated, e.factor_window_start, e.factors_created_in_window
  FROM totp.entities e
 WHERE e.service_sid = $1 AND ($2::text IS NULL OR e.identity COLLATE pg_catalog."C" > $2::text COLLATE pg_catalog."C")
 ORDER BY e.identity COLLATE pg_catalog."C" LIMIT $3; $$;

-- A service's entities in identity order (byte order, COLLATE "C", on the partitions and here
-- alike, whatever collation each database has: a page boundary means the same everywhere),
-- keyset-paged: pass the last identity of a page as after_identity for the next.
CREATE FUNCTION totp_router.list_entities(service_sid text, after_identity text DEFAULT NULL, max_rows integer DEFAULT 50)
RETURNS SETOF totp.entities
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
SELECT DISTINCT ON (e.identity COLLATE pg_catalog."C") e.*
  FROM totp_router.list_entities_part(service_sid, after_identity, greatest(least(max_rows, 1000), 1)) e
 ORDER BY e.identity COLLATE pg_catalog."C", e.date_updated DESC
 LIMIT greatest(least(max_rows, 1000), 1)
$$;

CREATE FUNCTION totp_router.list_challenges_part(service_sid text, status text, before_date timestamptz,
    before_sid text, max_rows integer) RETURNS SETOF totp.challenges
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON ALL;
SELECT c.sid, c.service_sid, c.entity_sid, c.identity, c.factor_sid, c.factor_type, c.status,
       c.responded_reason, c.details, c.hidden_details, c.metadata, c.expiration_date,
       c.date_responded, c.date_created, c.date_updated
  FROM totp.challenges c
 WHERE c.service_sid = $1 AND ($2::text IS NULL OR c.status = $2)
   AND ($3::timestamptz IS NULL OR (c.date_created, c.sid) < ($3, coalesce($4, '')))
 ORDER BY c.date_created DESC, c.sid DESC LIMIT $5; $$;

-- A service's challenges across every identity, newest first, keyset-paged by
-- (date_created, sid): pass the last row's date_created and sid for the next page. During or
-- after a failed move an identity's rows are on two partitions: each challenge once (by SID, the
-- copy updated last), before the order and the limit.
CREATE FUNCTION totp_router.list_challenges_all(service_sid text, status text DEFAULT NULL,
    before_date timestamptz DEFAULT NULL, before_sid text DEFAULT NULL, max_rows integer DEFAULT 50)
RETURNS SETOF totp.challenges
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
SELECT c.* FROM (SELECT DISTINCT ON (p.sid) p.*
                   FROM totp_router.list_challenges_part(service_sid, status, before_date, before_sid,
                                                         greatest(least(max_rows, 1000), 1)) p
                  ORDER BY p.sid, p.date_updated DESC) c
 ORDER BY c.date_created DESC, c.sid DESC
 LIMIT greatest(least(max_rows, 1000), 1)
$$;

CREATE FUNCTION totp_router.find_challenge_part(service_sid text, challenge_sid text) RETURNS SETOF totp.challenges
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON ALL;
SELECT c.sid, c.service_sid, c.entity_sid, c.identity, c.factor_sid, c.factor_type, c.status,
       c.responded_reason, c.details, c.hidden_details, c.metadata, c.expiration_date,
       c.date_responded, c.date_created, c.date_updated
  FROM totp.challenges c WHERE c.service_sid = $1 AND c.sid = $2; $$;

-- A challenge by SID alone, without its identity: asks every partition (60391 when none has it).
CREATE FUNCTION totp_router.find_challenge(service_sid text, challenge_sid text) RETURNS totp.challenges
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    result totp.challenges;
BEGIN
    SELECT c.* INTO result FROM totp_router.find_challenge_part(service_sid, challenge_sid) c
     ORDER BY c.date_updated DESC LIMIT 1;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'challenge not found (Twilio 60391)' USING ERRCODE = 'P0002',
            DETAIL = pg_catalog.format('No challenge %s in service %s on any partition.', challenge_sid, service_sid);
    END IF;
    RETURN result;
END
$$;

CREATE FUNCTION totp_router.events_part(after_date timestamptz, after_id uuid, max_rows integer) RETURNS SETOF totp.events
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON ALL;
SELECT e.id, e.type, e.service_sid, e.entity_identity, e.factor_sid, e.challenge_sid, e.date_created
  FROM totp.events e
 WHERE $1::timestamptz IS NULL OR (e.date_created, e.id) > ($1, coalesce($2, '00000000-0000-0000-0000-000000000000'::uuid))
 ORDER BY e.date_created, e.id LIMIT $3; $$;

-- Every partition's events (totp.events on each), oldest first, keyset-paged by
-- (date_created, id), for inspection. Each partition dates its own events with its own clock
-- and commits on its own, so an event can commit on one partition behind a key already passed
-- here: not for delivery (deliver from each partition's totp.events with a cursor per partition).
CREATE FUNCTION totp_router.events_all(after_date timestamptz DEFAULT NULL, after_id uuid DEFAULT NULL,
    max_rows integer DEFAULT 100) RETURNS SETOF totp.events
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
SELECT e.* FROM totp_router.events_part(after_date, after_id, greatest(least(max_rows, 1000), 1)) e
 ORDER BY e.date_created, e.id LIMIT greatest(least(max_rows, 1000), 1)
$$;

-- ---------------------------------------------------------------------------------------------
-- Moving an identity to another partition (superuser): totp_verify's export_identity,
-- import_identity and release_identity on the partitions.

CREATE FUNCTION totp_router.export_on(part_no integer, identity text) RETURNS jsonb
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON part_no; SELECT totp.export_identity($2); $$;

CREATE FUNCTION totp_router.import_on(part_no integer, data jsonb) RETURNS bigint
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON part_no; SELECT totp.import_identity($2); $$;

-- On the source, in one transaction: the identity's document, its rows deleted, the partition
-- refusing it from then on (55000).
CREATE FUNCTION totp_router.release_on(on_part integer, identity text, part_no integer) RETURNS jsonb
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON on_part; SELECT totp.release_identity($2, $3); $$;

-- Waits on the source partition for calls of this identity still running there (they hold the
-- entity or factor row lock), so what they commit is in the export.
CREATE FUNCTION totp_router.drain_on(part_no integer, identity text) RETURNS bigint
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON part_no;
SELECT (SELECT pg_catalog.count(*) FROM (SELECT 1 FROM totp_private.entities e WHERE e.identity = $2 FOR UPDATE) a)
     + (SELECT pg_catalog.count(*) FROM (SELECT 1 FROM totp_private.factors f WHERE f.identity = $2 FOR UPDATE) b); $$;

-- CALL totp_router.move_identity('user-42', 3): moves the identity's rows (every service) to
-- partition to_part_no, keeping factors, secrets (re-sealed there), counters, replay guards and
-- challenges. Steps:
--   1. mark the identity as moving and commit: router calls for it are refused (55000) from now
--      until step 4;
--   2. wait on the source for calls of it still running there; export it and import the copy
--      on the destination (the source keeps its rows);
--   3. release it on the source (one transaction there: the final document, its rows deleted,
--      the source refusing it from then on); import that document again if it differs;
--   4. record the new placement and commit: router calls go to the destination.
-- Idempotent: the same CALL finishes a failed move (after step 3 the source refuses the export,
-- and the destination has the copy); while a move to partition X is unfinished, a CALL naming
-- another partition is refused (55000): finish the move to X first. Call it outside a transaction block (it commits between
-- steps). Superuser on the router, mapped to a superuser on the partitions.
-- (No SET search_path: a procedure with one cannot commit; every name is qualified.)
CREATE PROCEDURE totp_router.move_identity(identity text, to_part_no integer, INOUT factors bigint DEFAULT NULL)
LANGUAGE plpgsql AS $$
DECLARE
    n integer := totp_router.part_count();
    pl totp_router.placements;
    cur integer;
    copy jsonb;
    final jsonb;
    e_state text;
    e_msg text;
BEGIN
    IF NOT coalesce((SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user), false) THEN
        RAISE EXCEPTION 'must be superuser to move identities' USING ERRCODE = '42501';
    END IF;
    IF move_identity.identity IS NULL OR to_part_no IS NULL OR to_part_no < 0 OR to_part_no >= n THEN
        RAISE EXCEPTION 'invalid move (Twilio 60306)' USING ERRCODE = '22023',
            DETAIL = pg_catalog.format('identity must be given and to_part_no must be 0 to %s.', n - 1);
    END IF;
    SELECT * INTO pl FROM totp_router.placements p WHERE p.identity = move_identity.identity;
    IF pl.moving_to IS NOT NULL AND pl.moving_to OPERATOR(pg_catalog.<>) to_part_no THEN
        -- An unfinished move may already have released the identity on its source: only the
        -- same CALL can finish it (moving it elsewhere would export nothing from the source).
        RAISE EXCEPTION 'identity is being moved to partition %', pl.moving_to
            USING ERRCODE = '55000',
                  DETAIL = pg_catalog.format('An unfinished move of it from partition %s to %s is recorded in totp_router.placements.', pl.part_no, pl.moving_to),
                  HINT = pg_catalog.format('Finish that move first: CALL totp_router.move_identity(%L, %s); then move it to partition %s.', move_identity.identity, pl.moving_to, to_part_no);
    END IF;
    cur := coalesce(pl.part_no, totp.shard_hash(move_identity.identity) & (n - 1));
    IF cur <> to_part_no THEN
        INSERT INTO totp_router.placements AS p (identity, part_no, moving_to)
        VALUES (move_identity.identity, cur, to_part_no)
        ON CONFLICT ON CONSTRAINT placements_pkey DO UPDATE SET moving_to = excluded.moving_to, date_updated = pg_catalog.now();
        COMMIT;
        BEGIN
            PERFORM totp_router.drain_on(cur, move_identity.identity);
            copy := totp_router.export_on(cur, move_identity.identity);
        EXCEPTION WHEN object_not_in_prerequisite_state THEN
            -- Released by an earlier attempt (step 3 ran): the destination has the rows.
            GET STACKED DIAGNOSTICS e_msg = MESSAGE_TEXT;
            -- The message ends with the partition's number ("... REMOTE ERROR: identity belongs to
            -- partition 1"): no trailing wildcard, or target 1 would match partition 12.
            IF e_msg NOT LIKE '%identity belongs to partition ' OPERATOR(pg_catalog.||) to_part_no::text THEN
                RAISE;
            END IF;
        END;
        IF copy IS NOT NULL THEN
            factors := totp_router.import_on(to_part_no, copy);
            final := totp_router.release_on(cur, move_identity.identity, to_part_no);
            IF final IS DISTINCT FROM copy THEN
                factors := totp_router.import_on(to_part_no, final);
            END IF;
        END IF;
    END IF;
    INSERT INTO totp_router.placements AS p (identity, part_no, moving_to)
    VALUES (move_identity.identity, to_part_no, NULL)
    ON CONFLICT ON CONSTRAINT placements_pkey DO UPDATE SET part_no = excluded.part_no, moving_to = NULL, date_updated = pg_catalog.now();
    COMMIT;
END
$$;

-- ---------------------------------------------------------------------------------------------
-- For the application's own tables on the router (same arguments as the extension's). They run
-- with the caller's rights (not SECURITY DEFINER): the role whose statements fire them needs
-- EXECUTE on the proxies they call (delete_entity: the enrolment set; has_recent_approval*: the
-- verification set). What is and is not atomic: README "Sharding with PL/Proxy".

-- AFTER DELETE ... FOR EACH ROW (or a DEFERRABLE INITIALLY DEFERRED constraint trigger, which
-- runs at the router's commit): deletes that identity's entity on its partition. The remote
-- delete commits on its own, at once: a router rollback does not bring the entity back.
CREATE FUNCTION totp.forget_entity() RETURNS trigger
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    row_json jsonb;
    entity_identity text;
    e_msg text;
BEGIN
    IF TG_NARGS <> 2 OR TG_OP <> 'DELETE' OR TG_LEVEL <> 'ROW' OR TG_WHEN <> 'AFTER' THEN
        RAISE EXCEPTION 'totp.forget_entity() must be an AFTER DELETE ... FOR EACH ROW trigger with arguments (service_sid, identity_column) (Twilio 60200)'
            USING ERRCODE = '22023';
    END IF;
    IF TG_ARGV[0] IS NULL OR TG_ARGV[0] !~ '^VA[0-9a-f]{32}$' THEN
        RAISE EXCEPTION 'invalid service_sid (Twilio 60200)' USING ERRCODE = '22023',
            DETAIL = 'service_sid must be VA followed by 32 lower-case hex digits.';
    END IF;
    row_json := pg_catalog.to_jsonb(OLD);
    IF NOT row_json ? TG_ARGV[1] THEN
        RAISE EXCEPTION 'column "%" not found in %.%', TG_ARGV[1], TG_TABLE_SCHEMA, TG_TABLE_NAME
            USING ERRCODE = '42703';
    END IF;
    entity_identity := row_json ->> TG_ARGV[1];
    IF entity_identity IS NOT NULL THEN
        BEGIN
            PERFORM totp.delete_entity(TG_ARGV[0], entity_identity);
        EXCEPTION
            WHEN no_data_found THEN NULL;             -- no such entity (or service): nothing to forget
            WHEN invalid_parameter_value THEN         -- an identity that could never be valid has no entity
                GET STACKED DIAGNOSTICS e_msg = MESSAGE_TEXT;
                IF e_msg LIKE '%(Twilio 60200)%' THEN
                    RAISE;
                END IF;
        END;
    END IF;
    RETURN OLD;
END
$$;

-- BEFORE ... FOR EACH ROW: the write needs a challenge approved within max_age for the row's
-- identity (before and after), asked of its partition; else 42501.
CREATE FUNCTION totp.require_approval() RETURNS trigger
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
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

-- ---------------------------------------------------------------------------------------------
-- User mappings: superusers only. A mapping names the partition role a router role connects as,
-- and PostgreSQL lets any role with USAGE on the server (every role of the grant sets below)
-- CREATE, ALTER or DROP its own: OPTIONS (SET user 'postgres') would give an application role
-- superuser connections to the partitions. This event trigger refuses those commands (42501)
-- to everyone else, before they run.

CREATE FUNCTION totp_router.refuse_user_mapping_changes() RETURNS event_trigger
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT coalesce((SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user), false) THEN
        RAISE EXCEPTION 'permission denied to % (totp_verify_router: user mappings are for superusers only)', pg_catalog.lower(tg_tag)
            USING ERRCODE = '42501',
                  DETAIL = 'A user mapping names the partition role a router role connects as; only a superuser may create, change or drop one.',
                  HINT = 'Ask a superuser on the router to set the mapping.';
    END IF;
END
$$;

CREATE EVENT TRIGGER totp_router_user_mappings ON ddl_command_start
    WHEN TAG IN ('CREATE USER MAPPING', 'ALTER USER MAPPING', 'DROP USER MAPPING')
    EXECUTE FUNCTION totp_router.refuse_user_mapping_changes();

-- ---------------------------------------------------------------------------------------------
-- Grant sets on the router, mirroring the extension's. They give EXECUTE on the router's
-- functions (and what routing needs: USAGE on totp_router, partition_of, USAGE on the
-- server). The partitions decide what the call may do: map the role (CREATE USER MAPPING FOR
-- role SERVER totp_cluster OPTIONS (user '…')) to a partition role with the same grant set there.

CREATE FUNCTION totp_router.grant_routing(role regrole) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF role IS NULL OR NOT EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.oid = role) THEN
        RAISE EXCEPTION 'invalid role (Twilio 60200)' USING ERRCODE = '22023',
            DETAIL = 'role must name an existing role.';
    END IF;
    EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA totp, totp_router TO %s', role);
    EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION totp_router.partition_of, totp_router.part_count, totp.shard_hash TO %s', role);
    IF EXISTS (SELECT FROM pg_catalog.pg_foreign_server WHERE srvname = 'totp_cluster') THEN
        EXECUTE pg_catalog.format('GRANT USAGE ON FOREIGN SERVER totp_cluster TO %s', role);
    END IF;
END
$$;

CREATE FUNCTION totp.grant_enrolment(role regrole) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM totp_router.grant_routing(role);
    EXECUTE pg_catalog.format(
        'GRANT EXECUTE ON FUNCTION totp.create_entity, totp.delete_entity, totp.create_factor, '
        'totp.verify_factor, totp.update_factor, totp.delete_factor, '
        'totp.get_service, totp.list_services, totp.get_entity, totp.get_factor, totp.list_factors, '
        'totp_router.list_entities, totp_router.list_entities_part TO %s', role);
END
$$;

CREATE FUNCTION totp.grant_verification(role regrole) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM totp_router.grant_routing(role);
    EXECUTE pg_catalog.format(
        'GRANT EXECUTE ON FUNCTION totp.create_challenge, totp.update_challenge, '
        'totp.has_recent_approval, totp.has_recent_approval_from_aged_factor, '
        'totp.get_service, totp.list_services, totp.get_factor, totp.list_factors, '
        'totp.get_challenge, totp.list_challenges, '
        'totp_router.list_challenges_all, totp_router.list_challenges_part, '
        'totp_router.find_challenge, totp_router.find_challenge_part TO %s', role);
END
$$;

-- Service administration: create/update/delete_service, their agreement check, maintenance.
-- (Key rotation and identity moves need a superuser, on the router and on the partitions.)
CREATE FUNCTION totp.grant_service_admin(role regrole) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM totp_router.grant_routing(role);
    EXECUTE pg_catalog.format(
        'GRANT EXECUTE ON FUNCTION totp.create_service, totp.update_service, totp.delete_service, '
        'totp.get_service, totp.list_services, totp.services_digest_all, totp.run_maintenance_all, '
        'totp_router.create_service_all, totp_router.update_service_all, totp_router.delete_service_on, '
        'totp_router.services_digest_on, totp_router.run_maintenance_on, totp_router.new_service_sid, '
        'totp_router.agreed_service, totp_router.reraise_for_retry, totp_router.raise_failures TO %s', role);
END
$$;

-- PUBLIC gets nothing.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA totp, totp_router FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE totp_router.move_identity FROM PUBLIC;
REVOKE ALL ON TABLE totp_router.placements FROM PUBLIC;

COMMENT ON SCHEMA totp IS 'totp_verify_router: the totp_verify API routed by identity to PL/Proxy partitions (cluster totp_cluster)';
COMMENT ON SCHEMA totp_router IS 'totp_verify_router internals: placements, routing, per-partition helpers, merged lists, identity moves';
COMMENT ON FUNCTION totp.shard_hash(text) IS 'The partitions'' routing hash: first 32 bits of SHA-256(identity as UTF-8) as int4; partition = hash & (part_count - 1)';
COMMENT ON FUNCTION totp_router.partition_of(text) IS 'The partition an identity''s calls go to: its placement (moved identities), else totp.shard_hash';
COMMENT ON TABLE totp_router.placements IS 'Identities moved off their hash partition by totp_router.move_identity';
COMMENT ON FUNCTION totp.services_digest_all() IS 'Each partition''s totp.services_digest(): equal when the partitions agree on every service';
COMMENT ON FUNCTION totp_router.list_entities(text, text, integer) IS 'A service''s entities across partitions in identity order, keyset-paged (asks every partition)';
COMMENT ON FUNCTION totp_router.list_challenges_all(text, text, timestamptz, text, integer) IS 'A service''s challenges across partitions, newest first, keyset-paged by (date_created, sid) (asks every partition)';
COMMENT ON FUNCTION totp_router.find_challenge(text, text) IS 'A challenge by SID without its identity (asks every partition)';
COMMENT ON FUNCTION totp_router.events_all(timestamptz, uuid, integer) IS 'Every partition''s totp.events, oldest first, keyset-paged by (date_created, id) (asks every partition); for inspection, not for delivery (deliver from each partition with a cursor per partition)';
COMMENT ON PROCEDURE totp_router.move_identity(text, integer, bigint) IS 'Moves an identity (every service) to another partition keeping factors, counters and replay guards; retryable; superuser';
