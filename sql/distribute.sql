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
    current_key bigint;
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

    -- DDL on the reference tables after DDL on the distributed ones that reference them (the
    -- grants of a rerun) needs one connection per node.
    PERFORM pg_catalog.set_config('citus.multi_shard_modify_mode', 'sequential', true);

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

    -- Key changes wait while the cluster takes shape (a rotation half-way through distribution
    -- would seal under a key the workers lack), on the keyring row as every key change does.
    INSERT INTO totp_private.keyring (keyring_id, database_oid)
    VALUES (pg_catalog.replace(pg_catalog.gen_random_uuid()::text, '-', ''),
            (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()))
    ON CONFLICT (one_row) DO NOTHING;
    PERFORM FROM totp_private.keyring FOR UPDATE;
    -- Every node seals with the coordinator's current key: a node never picks one itself (its
    -- file's last line may be a key the coordinator later retires).
    SELECT k.key_id INTO current_key FROM totp_private.keys k WHERE k.state = 'current';
    IF current_key IS NULL THEN
        current_key := (totp.key_file_ids())[pg_catalog.cardinality(totp.key_file_ids())];
        PERFORM totp.make_key_current(current_key);
    END IF;
    FOR node IN EXECUTE 'SELECT nodename, nodeport, result FROM pg_catalog.run_command_on_workers('
                        'pg_catalog.format(''SELECT totp.make_key_current(%s)'', $1::pg_catalog.int8)) WHERE NOT success'
        USING current_key
    LOOP
        RAISE EXCEPTION 'worker %:% could not make key % current', node.nodename, node.nodeport, current_key
            USING ERRCODE = '55000', DETAIL = node.result;
    END LOOP;
    object := 'keys'; action := pg_catalog.format('key %s current on every node', current_key); RETURN NEXT;

    -- Citus runs a query's shard tasks with the caller's own rights on the worker, so a role that
    -- reads a view needs USAGE on totp_private there and SELECT on the table behind the view
    -- (never factor_secrets). USAGE first, here on the coordinator (it reaches the workers through
    -- the replay below); the table grants after the replay, which they would otherwise block
    -- (GRANT on a distributed table holds locks on the shards until this transaction ends).
    FOR holder IN
        SELECT DISTINCT a.grantee::regrole AS role
          FROM pg_catalog.pg_class v, pg_catalog.aclexplode(v.relacl) a
         WHERE v.relnamespace = 'totp'::regnamespace AND v.relkind = 'v' AND a.privilege_type = 'SELECT'
           AND a.grantee <> 0 AND a.grantee <> v.relowner
         ORDER BY 1
    LOOP
        EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA totp_private TO %s', holder.role);
    END LOOP;

    -- Grants on the extension's own objects made before they were distributed (the grant sets,
    -- or by hand), or before a node was added, do not all reach the workers (USAGE on the schemas
    -- never does): replay every one there. First, before this transaction holds any lock on a
    -- worker: run_command_on_workers uses connections of its own, which would wait for them.
    FOR holder IN
        SELECT g.command FROM (
            SELECT pg_catalog.format('GRANT %s ON SCHEMA %I TO %s', a.privilege_type, n.nspname, a.grantee::regrole) AS command
              FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) a
             WHERE n.nspname IN ('totp', 'totp_private') AND a.grantee <> 0 AND a.grantee <> n.nspowner
            UNION ALL
            SELECT pg_catalog.format('GRANT %s ON %s TO %s', a.privilege_type, c.oid::regclass, a.grantee::regrole)
              FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
             WHERE c.relnamespace IN ('totp'::regnamespace, 'totp_private'::regnamespace) AND c.relkind IN ('r', 'v')
               AND a.grantee <> 0 AND a.grantee <> c.relowner
            UNION ALL
            SELECT pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %s', p.oid::regprocedure, a.grantee::regrole)
              FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
             WHERE p.pronamespace = 'totp'::regnamespace AND a.privilege_type = 'EXECUTE'
               AND a.grantee <> 0 AND a.grantee <> p.proowner) g
         ORDER BY 1
    LOOP
        -- A worker refuses DDL on a distributed object unless told it is not to be propagated.
        FOR node IN EXECUTE 'SELECT nodename, nodeport, result FROM pg_catalog.run_command_on_workers($1) WHERE NOT success'
            USING 'SET citus.enable_ddl_propagation = off; ' || holder.command
        LOOP
            RAISE EXCEPTION 'worker %:% refused a grant', node.nodename, node.nodeport USING ERRCODE = '55000',
                DETAIL = pg_catalog.format('%s: %s', holder.command, node.result);
        END LOOP;
    END LOOP;
    object := 'grants'; action := 'replayed on every worker'; RETURN NEXT;

    -- The tables behind the views, kept in step with the view grants: given where a view is
    -- readable, taken back where it no longer is. GRANT and REVOKE on a distributed or reference
    -- table reach its shards; on a table about to be distributed, its shards copy them.
    FOR holder IN
        SELECT a.grantee::regrole AS role, c.relname AS tbl
          FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
         WHERE c.relnamespace = 'totp_private'::regnamespace AND c.relkind = 'r' AND a.privilege_type = 'SELECT'
           AND a.grantee <> 0 AND a.grantee <> c.relowner
        EXCEPT
        SELECT a.grantee::regrole, v.relname
          FROM pg_catalog.pg_class v, pg_catalog.aclexplode(v.relacl) a
         WHERE v.relnamespace = 'totp'::regnamespace AND v.relkind = 'v' AND a.privilege_type = 'SELECT'
    LOOP
        EXECUTE pg_catalog.format('REVOKE SELECT ON totp_private.%I FROM %s', holder.tbl, holder.role);
        object := 'totp_private.' || holder.tbl; action := pg_catalog.format('SELECT revoked from %s', holder.role);
        RETURN NEXT;
    END LOOP;
    FOR holder IN
        SELECT DISTINCT a.grantee::regrole AS role, v.relname AS view
          FROM pg_catalog.pg_class v, pg_catalog.aclexplode(v.relacl) a
         WHERE v.relnamespace = 'totp'::regnamespace AND v.relkind = 'v' AND a.privilege_type = 'SELECT'
           AND a.grantee <> 0 AND a.grantee <> v.relowner
           AND v.relname IN ('services', 'entities', 'factors', 'challenges', 'events')
         ORDER BY 1, 2
    LOOP
        EXECUTE pg_catalog.format('GRANT SELECT ON totp_private.%I TO %s', holder.view, holder.role);
        object := 'totp_private.' || holder.view; action := pg_catalog.format('SELECT granted to %s', holder.role);
        RETURN NEXT;
    END LOOP;


    -- Services are read by every call on every node: a reference table. The switch keeps Citus
    -- from converting the per-user tables, which reference services, to Citus local tables on the
    -- way. The key bookkeeping (totp_private.keys) stays each node's own: an enrolment locks its
    -- key's row until it commits, and a row lock on a reference table is a cluster-wide lock that
    -- deadlocks one transaction enrolling identities on two workers. rotate_key() keeps the nodes
    -- in step instead. The PL/Proxy partition guard's two tables (empty on Citus) are joined to
    -- services by the statement every call runs first, so they are reference tables too.
    PERFORM pg_catalog.set_config('citus.enable_local_reference_table_foreign_keys', 'off', true);
    FOREACH tbl IN ARRAY ARRAY['totp_private.services', 'totp_private.partition', 'totp_private.placements'] LOOP
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
            IF tbl = colocation THEN
                EXECUTE 'SELECT pg_catalog.create_distributed_table($1, ''identity'', shard_count => $2, colocate_with => ''none'')'
                    USING tbl::regclass, shard_count;
                action := pg_catalog.format('distributed by identity (%s shards)', shard_count);
            ELSE
                EXECUTE 'SELECT pg_catalog.create_distributed_table($1, ''identity'', colocate_with => $2)'
                    USING tbl::regclass, colocation;
                action := 'distributed by identity, colocated with ' || colocation;
            END IF;
            object := tbl; RETURN NEXT;
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

    -- The coordinator's own copies of the rows (Citus leaves them on disk, sealed secrets among
    -- them) go, children first.
    FOREACH tbl IN ARRAY ARRAY['totp_private.events', 'totp_private.challenges', 'totp_private.factor_secrets',
                               'totp_private.factors', 'totp_private.entities', 'totp_private.services',
                               'totp_private.partition', 'totp_private.placements'] LOOP
        EXECUTE 'SELECT pg_catalog.truncate_local_data_after_distributing_table($1)' USING tbl::regclass;
    END LOOP;
END
$$;

CREATE FUNCTION totp.undistribute()
RETURNS TABLE (object text, action text)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    -- Parents before children (foreign keys), as rows are written back.
    tables CONSTANT text[] := ARRAY['services', 'entities', 'factors', 'factor_secrets', 'challenges', 'events',
                                    'partition', 'placements'];
    moved text[] := '{}';
    name text;
    fn regprocedure;
    tbl regclass;
    holder record;
BEGIN
    IF NOT pg_catalog.current_setting('is_superuser')::boolean THEN
        RAISE EXCEPTION 'must be superuser to undistribute totp_verify' USING ERRCODE = '42501';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'Citus is not installed in this database' USING ERRCODE = '55000';
    END IF;
    -- A shard move leaves its source behind until Citus cleans up; those tables would outlive
    -- DROP EXTENSION. The cleanup is a procedure, which a function cannot call.
    IF EXISTS (SELECT FROM pg_catalog.pg_dist_cleanup WHERE object_name LIKE 'totp\_private.%') THEN
        RAISE EXCEPTION 'shard moves left totp_verify shards to clean up' USING ERRCODE = '55000',
            HINT = 'CALL citus_cleanup_orphaned_resources(); then run totp.undistribute() again.';
    END IF;
    -- Dropping shards of tables that reference the reference tables needs one connection per node.
    PERFORM pg_catalog.set_config('citus.multi_shard_modify_mode', 'sequential', true);
    -- No more delegation. Citus has no call that undoes create_distributed_function for an
    -- extension's function, so its metadata row goes, on every node (the function stays, as every
    -- member of the extension does). First, before this transaction holds locks on the workers
    -- (run_command_on_workers' own connections would wait for them); the workers' part commits at
    -- once, so after a failure further down a rerun finishes it.
    FOR fn IN
        SELECT o.objid::regprocedure FROM pg_catalog.pg_dist_object o, pg_catalog.pg_proc p
         WHERE o.classid = 'pg_catalog.pg_proc'::regclass AND o.objid = p.oid
           AND p.pronamespace = 'totp'::regnamespace AND o.distribution_argument_index IS NOT NULL
         ORDER BY 1
    LOOP
        PERFORM 1 FROM pg_catalog.run_command_on_workers(pg_catalog.format(
            'DELETE FROM pg_catalog.pg_dist_object WHERE classid = %L::regclass AND objid = %L::regprocedure',
            'pg_catalog.pg_proc', fn::text)) w
         WHERE NOT w.success;
        IF FOUND THEN
            RAISE EXCEPTION 'a worker could not stop delegating %', fn USING ERRCODE = '55000';
        END IF;
        DELETE FROM pg_catalog.pg_dist_object WHERE classid = 'pg_catalog.pg_proc'::regclass AND objid = fn::oid;
        object := fn::text; action := 'no longer delegated'; RETURN NEXT;
    END LOOP;
    ALTER FUNCTION totp.delete_service(text) RESET citus.multi_shard_modify_mode;
    -- Back to local tables, rows and all. undistribute_table cannot alter an extension's table, so
    -- this does what Citus's own DROP TABLE trigger does (metadata off the workers, shards dropped,
    -- pg_dist_partition row removed; Citus keeps extension-owned tables on the workers), around a
    -- copy of the rows: read through the cluster first, written back into the now local tables.
    -- No writes while the rows are copied and the shards dropped: a call committing in between
    -- would be lost, or a deletion half undone. Reads go on.
    LOCK TABLE totp_private.services, totp_private.entities, totp_private.factors, totp_private.factor_secrets,
               totp_private.challenges, totp_private.events, totp_private.partition,
               totp_private.placements IN EXCLUSIVE MODE;
    FOREACH name IN ARRAY tables LOOP
        IF EXISTS (SELECT FROM pg_catalog.pg_dist_partition WHERE logicalrelid = ('totp_private.' || name)::regclass) THEN
            EXECUTE pg_catalog.format('CREATE TEMP TABLE %I ON COMMIT DROP AS SELECT * FROM totp_private.%I',
                                      'totp_undistribute_' || name, name);
            moved := moved || name;
        END IF;
    END LOOP;
    FOR i IN REVERSE pg_catalog.cardinality(moved)..1 LOOP
        name := moved[i];
        tbl := ('totp_private.' || name)::regclass;
        PERFORM pg_catalog.master_remove_distributed_table_metadata_from_workers(tbl, 'totp_private', name);
        PERFORM pg_catalog.citus_drop_all_shards(tbl, 'totp_private', name, drop_shards_metadata_only := false);
        PERFORM pg_catalog.master_remove_partition_metadata(tbl, 'totp_private', name);
    END LOOP;
    -- The coordinator's tables still hold the rows they had when they were distributed. DELETE,
    -- children first: Citus still takes these for distributed tables in a TRUNCATE this transaction.
    FOR i IN REVERSE pg_catalog.cardinality(moved)..1 LOOP
        EXECUTE pg_catalog.format('DELETE FROM totp_private.%I', moved[i]);
    END LOOP;
    FOREACH name IN ARRAY moved LOOP
        EXECUTE pg_catalog.format('INSERT INTO totp_private.%I SELECT * FROM pg_temp.%I', name, 'totp_undistribute_' || name);
        object := 'totp_private.' || name; action := 'local table'; RETURN NEXT;
    END LOOP;
    -- On one node the views are the only way in: what distribute() gave view readers goes.
    FOR holder IN
        SELECT DISTINCT a.grantee::regrole AS role
          FROM pg_catalog.pg_class c, pg_catalog.aclexplode(c.relacl) a
         WHERE c.relnamespace = 'totp_private'::regnamespace AND a.grantee <> 0 AND a.grantee <> c.relowner
        UNION
        SELECT a.grantee::regrole
          FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) a
         WHERE n.nspname = 'totp_private' AND a.grantee <> 0 AND a.grantee <> n.nspowner
    LOOP
        EXECUTE pg_catalog.format('REVOKE ALL ON ALL TABLES IN SCHEMA totp_private FROM %s', holder.role);
        EXECUTE pg_catalog.format('REVOKE ALL ON SCHEMA totp_private FROM %s', holder.role);
        object := 'totp_private'; action := pg_catalog.format('grants revoked from %s', holder.role); RETURN NEXT;
    END LOOP;
END
$$;

-- Whether nodes agree on their services (SPEC §11): a SHA-256 over every service's SID and
-- settings in SID order — not the dates, which each node sets when its copy was made. Equal on
-- nodes that hold the same services with the same settings (PL/Proxy partitions after RUN ON ALL;
-- on Citus, services are one reference table). SECURITY DEFINER: it reads totp_private. The
-- interval style is pinned: the digest must not depend on a session's setting.
CREATE FUNCTION totp.services_digest() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET intervalstyle = 'iso_8601' AS $$
SELECT pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(
           coalesce(pg_catalog.string_agg(pg_catalog.jsonb_build_array(
               s.sid, s.friendly_name, s.totp_issuer, s.totp_time_step, s.totp_code_length, s.totp_skew,
               s.max_factor_attempts, s.max_challenge_attempts, s.max_challenges_per_hour, s.max_challenges_per_day,
               s.max_short_code_challenges_per_day, s.max_factors_per_entity, s.max_factor_creations_per_day,
               s.challenge_ttl, s.max_challenge_ttl, s.unverified_factor_ttl, s.event_retention, s.account_sid)::text,
               E'\n' ORDER BY s.sid), ''),
           'UTF8')), 'hex')
  FROM totp_private.services s
$$;
