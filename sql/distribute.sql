-- Citus (SPEC §11; README "Running on Citus"): totp.distribute() and totp.undistribute(), run by a
-- superuser on the coordinator after CREATE EXTENSION, and again after citus_add_node or after
-- granting view reads by hand.
--
-- Why these are functions of the extension and not a README recipe: the recipe has steps that
-- must not be forgotten (the reference-table foreign-key switch, colocation, delegation with
-- force_delegation, delete_service's sequential mode, the reads the views need on every node, one
-- key file on every node), and a rerun after adding a node must do exactly the missing ones.
--
-- Plain PL/pgSQL, not SECURITY DEFINER: distributing tables needs the owner's rights, which the
-- superuser check below makes explicit. Citus's functions are called through EXECUTE, so that
-- the functions exist (and refuse clearly) in a database without Citus.

CREATE FUNCTION totp.distribute(shard_count integer DEFAULT 32)
RETURNS TABLE (object text, action text)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    colocation CONSTANT text := 'totp_private.entities';
    tbl text;
    fn regprocedure;
    node record;
    holder record;
    missing bigint[];
BEGIN
    IF NOT pg_catalog.current_setting('is_superuser')::boolean THEN
        RAISE EXCEPTION 'must be superuser to distribute totp_verify' USING ERRCODE = '42501';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'Citus is not installed in this database' USING ERRCODE = '55000',
            DETAIL = 'totp.distribute() distributes the extension''s tables over a Citus cluster.',
            HINT = 'Add citus to shared_preload_libraries on every node, CREATE EXTENSION citus, add the workers, then run totp.distribute() on the coordinator.';
    END IF;
    IF shard_count IS NULL OR shard_count NOT BETWEEN 1 AND 64000 THEN
        RAISE EXCEPTION 'invalid shard_count (Twilio 60200)' USING ERRCODE = '22023',
            DETAIL = 'shard_count must be between 1 and 64000.';
    END IF;
    EXECUTE 'SELECT pg_catalog.citus_is_coordinator()' INTO STRICT node;
    IF NOT node.citus_is_coordinator THEN
        RAISE EXCEPTION 'totp.distribute() runs on the Citus coordinator' USING ERRCODE = '55000';
    END IF;

    -- One key story for the cluster: every node reads the same key file (totp_verify.key_file),
    -- and it holds every key a secret may name. Per-database files in each data directory would
    -- give each node keys of its own (XX001 after a shard move or on a new node).
    IF pg_catalog.current_setting('totp_verify.key_file') = '' THEN
        RAISE EXCEPTION 'totp_verify.key_file is not set on the coordinator' USING ERRCODE = '55000',
            DETAIL = 'On Citus every node must read the same key file.',
            HINT = 'Set totp_verify.key_file in postgresql.conf of every node to a copy of one key file, reload, and run totp.distribute() again.';
    END IF;
    FOR node IN EXECUTE
        'SELECT nodename, nodeport, success, result FROM pg_catalog.run_command_on_workers('
        '$c$SELECT pg_catalog.array_to_string(totp.key_file_ids(), '','')$c$)'
    LOOP
        IF NOT node.success THEN
            RAISE EXCEPTION 'worker %:% cannot read its key file', node.nodename, node.nodeport
                USING ERRCODE = '58P01', DETAIL = node.result,
                HINT = 'Copy the coordinator''s key file to every worker and point totp_verify.key_file at it.';
        END IF;
        SELECT pg_catalog.array_agg(k.key_id ORDER BY k.key_id) INTO missing
          FROM pg_catalog.unnest(totp.key_file_ids()) AS k(key_id)
         WHERE k.key_id::text <> ALL (pg_catalog.string_to_array(node.result, ','));
        IF missing IS NOT NULL THEN
            RAISE EXCEPTION 'the key file of worker %:% lacks keys the coordinator''s has', node.nodename, node.nodeport
                USING ERRCODE = '58P01', DETAIL = pg_catalog.format('Missing key ids: %s.', missing),
                HINT = 'Copy the coordinator''s key file to every worker.';
        END IF;
    END LOOP;

    -- Services and the key bookkeeping are read by every call on every node: reference tables.
    -- The switch keeps Citus from converting the per-user tables, which reference services, to
    -- Citus local tables on the way.
    PERFORM pg_catalog.set_config('citus.enable_local_reference_table_foreign_keys', 'off', true);
    FOREACH tbl IN ARRAY ARRAY['totp_private.services', 'totp_private.keys'] LOOP
        IF EXISTS (SELECT FROM pg_catalog.pg_dist_partition WHERE logicalrelid = tbl::regclass) THEN
            object := tbl; action := 'reference table already'; RETURN NEXT;
        ELSE
            EXECUTE 'SELECT pg_catalog.create_reference_table($1)' USING tbl::regclass;
            object := tbl; action := 'made a reference table'; RETURN NEXT;
        END IF;
    END LOOP;
    -- Every per-user table, by identity, in one colocation group: a call's rows are on one node.
    FOREACH tbl IN ARRAY ARRAY['totp_private.entities', 'totp_private.factors', 'totp_private.factor_secrets',
                               'totp_private.challenges', 'totp_private.events'] LOOP
        IF EXISTS (SELECT FROM pg_catalog.pg_dist_partition WHERE logicalrelid = tbl::regclass) THEN
            object := tbl; action := 'distributed already'; RETURN NEXT;
        ELSE
            EXECUTE 'SELECT pg_catalog.create_distributed_table($1, ''identity'', shard_count => $2, colocate_with => $3)'
                USING tbl::regclass, shard_count, CASE WHEN tbl = colocation THEN 'none' ELSE colocation END;
            object := tbl; action := pg_catalog.format('distributed by identity (%s shards)', shard_count); RETURN NEXT;
        END IF;
    END LOOP;

    -- Every identity-scoped function runs on the node that holds the identity, whole.
    FOR fn IN
        SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = 'totp'::regnamespace AND p.proargnames[2] = 'identity'
           AND p.proname IN ('create_entity', 'delete_entity', 'create_factor', 'verify_factor', 'update_factor',
                             'delete_factor', 'create_challenge', 'update_challenge', 'has_recent_approval',
                             'has_recent_approval_from_aged_factor')
         ORDER BY p.proname
    LOOP
        IF EXISTS (SELECT FROM pg_catalog.pg_dist_object o
                    WHERE o.classid = 'pg_catalog.pg_proc'::regclass AND o.objid = fn::oid
                      AND o.distribution_argument_index IS NOT NULL AND o.force_delegation) THEN
            object := fn::text; action := 'delegated already'; RETURN NEXT;
        ELSE
            EXECUTE 'SELECT pg_catalog.create_distributed_function($1, ''identity'', colocate_with => $2, force_delegation => true)'
                USING fn, colocation;
            object := fn::text; action := 'delegated by identity'; RETURN NEXT;
        END IF;
    END LOOP;
    -- delete_service cascades from the services reference table after recording events on many
    -- shards: Citus needs one connection per node for that.
    ALTER FUNCTION totp.delete_service(text) SET citus.multi_shard_modify_mode = 'sequential';
    object := 'totp.delete_service(text)'; action := 'sequential multi-shard mode'; RETURN NEXT;

    -- Citus runs a query's shard tasks with the caller's own rights on the worker, so a role that
    -- reads a view needs SELECT on the table behind it (never factor_secrets) and USAGE on
    -- totp_private. Replayed for every role that reads a view now; GRANT on a distributed or
    -- reference table reaches its shards on every node.
    FOR holder IN
        SELECT DISTINCT a.grantee::regrole AS role, v.relname AS view
          FROM pg_catalog.pg_class v, pg_catalog.aclexplode(v.relacl) a
         WHERE v.relnamespace = 'totp'::regnamespace AND v.relkind = 'v' AND a.privilege_type = 'SELECT'
           AND a.grantee <> 0 AND a.grantee <> v.relowner
           AND v.relname IN ('services', 'entities', 'factors', 'challenges', 'events')
         ORDER BY 1, 2
    LOOP
        EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA totp_private TO %s', holder.role);
        EXECUTE pg_catalog.format('GRANT SELECT ON totp_private.%I TO %s', holder.view, holder.role);
        object := 'totp_private.' || holder.view; action := pg_catalog.format('SELECT granted to %s', holder.role);
        RETURN NEXT;
    END LOOP;
END
$$;

CREATE FUNCTION totp.undistribute()
RETURNS TABLE (object text, action text)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    fn regprocedure;
    tbl regclass;
BEGIN
    IF NOT pg_catalog.current_setting('is_superuser')::boolean THEN
        RAISE EXCEPTION 'must be superuser to undistribute totp_verify' USING ERRCODE = '42501';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'Citus is not installed in this database' USING ERRCODE = '55000';
    END IF;
    -- Delegation first: a delegated function must not outlive its colocation group.
    FOR fn IN
        SELECT o.objid::regprocedure FROM pg_catalog.pg_dist_object o, pg_catalog.pg_proc p
         WHERE o.classid = 'pg_catalog.pg_proc'::regclass AND o.objid = p.oid
           AND p.pronamespace = 'totp'::regnamespace AND o.distribution_argument_index IS NOT NULL
         ORDER BY 1
    LOOP
        EXECUTE 'SELECT pg_catalog.create_distributed_function($1)' USING fn;
        object := fn::text; action := 'no longer delegated'; RETURN NEXT;
    END LOOP;
    ALTER FUNCTION totp.delete_service(text) RESET citus.multi_shard_modify_mode;
    -- Back to local tables, rows and all; cascading through the foreign keys takes the whole graph.
    FOR tbl IN
        SELECT d.logicalrelid FROM pg_catalog.pg_dist_partition d, pg_catalog.pg_class c
         WHERE d.logicalrelid = c.oid AND c.relnamespace = 'totp_private'::regnamespace
         ORDER BY d.partmethod, c.relname
    LOOP
        IF EXISTS (SELECT FROM pg_catalog.pg_dist_partition WHERE logicalrelid = tbl) THEN
            EXECUTE 'SELECT pg_catalog.undistribute_table($1, cascade_via_foreign_keys => true)' USING tbl;
        END IF;
        object := tbl::text; action := 'local table'; RETURN NEXT;
    END LOOP;
END
$$;
