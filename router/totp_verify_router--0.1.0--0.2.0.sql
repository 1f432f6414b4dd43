-- totp_verify_router 0.1.0 -> 0.2.0 (ALTER EXTENSION totp_verify_router UPDATE), after a review:
--  - user mappings are for superusers only (an event trigger refuses the rest, 42501);
--  - move_identity refuses a second target while a move is unfinished, and its retry check
--    matches the partition number exactly;
--  - list_challenges_all keeps each challenge once while an identity is on two partitions;
--  - list_entities pages in byte order (COLLATE "C") whatever the databases' collations;
--  - events_all is documented as for inspection, not delivery.
-- Every object is as totp_verify_router--0.2.0.sql creates it (tests/test_sharded.py compares).

CREATE OR REPLACE FUNCTION totp_router.list_entities_part(service_sid text, after_identity text, max_rows integer)
RETURNS SETOF totp.entities
LANGUAGE plproxy VOLATILE AS $$ CLUSTER 'totp_cluster'; RUN ON ALL;
SELECT e.identity, e.service_sid, e.sid, e.date_created, e.date_updated, e.factor_window_start, e.factors_created_in_window
  FROM totp.entities e
 WHERE e.service_sid = $1 AND ($2::text IS NULL OR e.identity COLLATE pg_catalog."C" > $2::text COLLATE pg_catalog."C")
 ORDER BY e.identity COLLATE pg_catalog."C" LIMIT $3; $$;

-- A service's entities in identity order (byte order, COLLATE "C", on the partitions and here
-- alike, whatever collation each database has: a page boundary means the same everywhere),
-- keyset-paged: pass the last identity of a page as after_identity for the next.
CREATE OR REPLACE FUNCTION totp_router.list_entities(service_sid text, after_identity text DEFAULT NULL, max_rows integer DEFAULT 50)
RETURNS SETOF totp.entities
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
SELECT DISTINCT ON (e.identity COLLATE pg_catalog."C") e.*
  FROM totp_router.list_entities_part(service_sid, after_identity, greatest(least(max_rows, 1000), 1)) e
 ORDER BY e.identity COLLATE pg_catalog."C", e.date_updated DESC
 LIMIT greatest(least(max_rows, 1000), 1)
$$;

-- A service's challenges across every identity, newest first, keyset-paged by
-- (date_created, sid): pass the last row's date_created and sid for the next page. During or
-- after a failed move an identity's rows are on two partitions: each challenge once (by SID, the
-- copy updated last), before the order and the limit.
CREATE OR REPLACE FUNCTION totp_router.list_challenges_all(service_sid text, status text DEFAULT NULL,
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

-- Every partition's events (totp.events on each), oldest first, keyset-paged by
-- (date_created, id), for inspection. Each partition dates its own events with its own clock
-- and commits on its own, so an event can commit on one partition behind a key already passed
-- here: not for delivery (deliver from each partition's totp.events with a cursor per partition).
CREATE OR REPLACE FUNCTION totp_router.events_all(after_date timestamptz DEFAULT NULL, after_id uuid DEFAULT NULL,
    max_rows integer DEFAULT 100) RETURNS SETOF totp.events
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
SELECT e.* FROM totp_router.events_part(after_date, after_id, greatest(least(max_rows, 1000), 1)) e
 ORDER BY e.date_created, e.id LIMIT greatest(least(max_rows, 1000), 1)
$$;

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
CREATE OR REPLACE PROCEDURE totp_router.move_identity(identity text, to_part_no integer, INOUT factors bigint DEFAULT NULL)
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

REVOKE EXECUTE ON FUNCTION totp_router.refuse_user_mapping_changes() FROM PUBLIC;

COMMENT ON FUNCTION totp_router.events_all(timestamptz, uuid, integer) IS 'Every partition''s totp.events, oldest first, keyset-paged by (date_created, id) (asks every partition); for inspection, not for delivery (deliver from each partition with a cursor per partition)';
COMMENT ON PROCEDURE totp_router.move_identity(text, integer, bigint) IS 'Moves an identity (every service) to another partition keeping factors, counters and replay guards; retryable; superuser';
