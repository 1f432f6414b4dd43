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
-- Trigger functions (sql/triggers.sql) and grant sets (sql/grants.sql), as in a fresh install.
-- Trigger functions for an application's own tables (SPEC §7). They read the identity from a
-- column of any type through its text form (to_jsonb(row) ->> column), so an integer primary
-- key works. SECURITY DEFINER so the application's role needs no rights on the extension's
-- tables, with search_path pinned and every name qualified.

CREATE OR REPLACE FUNCTION totp.forget_entity() RETURNS trigger
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

CREATE OR REPLACE FUNCTION totp.require_approval() RETURNS trigger
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

-- The grant sets an application needs, shipped as functions so that a DBA gives exactly them
-- (SPEC §7; README "Privileges"). Two sets, so that a compromised verification role cannot enrol a
-- factor of its own choosing (and so cannot mint a step-up approval), and a compromised enrolment
-- role's new factors can be kept out of step-up checks with min_factor_age.
--
-- They are not SECURITY DEFINER: GRANT needs the caller to own the objects or hold the grant
-- option, so only the extension's owner or a superuser can run them, and EXECUTE is revoked
-- from PUBLIC in finalize.sql.

CREATE OR REPLACE FUNCTION totp.grant_enrolment(role regrole) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF role IS NULL OR NOT EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.oid = role) THEN
        RAISE EXCEPTION 'invalid role (Twilio 60200)' USING ERRCODE = '22023',
            DETAIL = 'role must name an existing role.';
    END IF;
    EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA totp TO %s', role);
    EXECUTE pg_catalog.format('GRANT SELECT ON totp.services, totp.entities, totp.factors TO %s', role);
    EXECUTE pg_catalog.format(
        'GRANT EXECUTE ON FUNCTION totp.create_entity, totp.delete_entity, totp.create_factor, '
        'totp.verify_factor, totp.update_factor, totp.delete_factor, totp.qr_svg, totp.otpauth_uri, '
        'totp.get_service, totp.list_services, totp.get_entity, totp.get_factor, totp.list_factors, '
        'totp.shard_hash TO %s', role);
END
$$;

CREATE OR REPLACE FUNCTION totp.grant_verification(role regrole) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF role IS NULL OR NOT EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.oid = role) THEN
        RAISE EXCEPTION 'invalid role (Twilio 60200)' USING ERRCODE = '22023',
            DETAIL = 'role must name an existing role.';
    END IF;
    EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA totp TO %s', role);
    EXECUTE pg_catalog.format('GRANT SELECT ON totp.services, totp.factors, totp.challenges TO %s', role);
    EXECUTE pg_catalog.format(
        'GRANT EXECUTE ON FUNCTION totp.create_challenge, totp.update_challenge, '
        'totp.has_recent_approval, totp.has_recent_approval_from_aged_factor, '
        'totp.get_service, totp.list_services, totp.get_factor, totp.list_factors, totp.get_challenge, '
        'totp.list_challenges, totp.shard_hash TO %s', role);
END
$$;

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

CREATE OR REPLACE FUNCTION totp.distribute(shard_count integer DEFAULT 32)
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

CREATE OR REPLACE FUNCTION totp.undistribute()
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
CREATE OR REPLACE FUNCTION totp.services_digest() RETURNS text
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

-- Privileges and comments (sql/finalize.sql, sql/comments.sql), as in a fresh install.
-- Privileges (SPEC §7): after CREATE EXTENSION, PUBLIC can do nothing. Functions are
-- executable by PUBLIC by default in Postgres, so take that back; tables and views are not
-- granted to anyone, and the schemas give USAGE to no one but the owner. The README lists
-- the grants an application role needs.
REVOKE ALL ON SCHEMA totp FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA totp FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA totp FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA totp_private FROM PUBLIC;
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA totp_private FROM PUBLIC;

-- COMMENT on every relation, column and function, so \d+ and \df+ document the API (SPEC §7).

COMMENT ON SCHEMA totp IS 'totp_verify: Twilio Verify''s TOTP model (services, entities, factors, challenges); read-only views and functions';
COMMENT ON SCHEMA totp_private IS 'totp_verify internals: every table, secrets and counters; no role but the extension owner may use it';

COMMENT ON VIEW totp.services IS 'Verify services (Twilio VA...): TOTP defaults for new factors, and limits (change them with update_service)';
COMMENT ON COLUMN totp.services.sid IS 'Service SID: VA + 32 hex digits';
COMMENT ON COLUMN totp.services.friendly_name IS 'Name of the service; the issuer shown in authenticator apps unless totp_issuer is set (1-64 characters)';
COMMENT ON COLUMN totp.services.account_sid IS 'Twilio account (AC...) that owns the service in totp-verify-server; NULL for services created over SQL';
COMMENT ON COLUMN totp.services.totp_issuer IS 'Issuer shown in authenticator apps; NULL means friendly_name';
COMMENT ON COLUMN totp.services.totp_time_step IS 'Default time step in seconds for new factors (20-60); NULL means 30';
COMMENT ON COLUMN totp.services.totp_code_length IS 'Default code length for new factors (3-8); NULL means 6';
COMMENT ON COLUMN totp.services.totp_skew IS 'Default number of steps accepted either side of now for new factors (0-2); NULL means 1';
COMMENT ON COLUMN totp.services.max_factor_attempts IS 'Wrong codes allowed while verifying a factor before 60310 (Twilio: 5)';
COMMENT ON COLUMN totp.services.max_challenge_attempts IS 'Wrong codes on a challenge; the last turns it denied, more are refused with 60308 (Twilio: 5)';
COMMENT ON COLUMN totp.services.max_challenges_per_hour IS 'Challenges per factor per hour for code_length >= 5, else 60312 (Twilio: 50)';
COMMENT ON COLUMN totp.services.max_challenges_per_day IS 'Challenges per factor per 24 hours for code_length >= 5, else 60312 (Twilio: 100)';
COMMENT ON COLUMN totp.services.max_short_code_challenges_per_day IS 'Challenges per factor per 24 hours for code_length <= 4, else 60312 (Twilio: 10)';
COMMENT ON COLUMN totp.services.max_factors_per_entity IS 'Factors one entity may have, else 60315 (Twilio: 100)';
COMMENT ON COLUMN totp.services.max_factor_creations_per_day IS 'Factors created per entity per 24 hours, else 60326 (Twilio: 100)';
COMMENT ON COLUMN totp.services.challenge_ttl IS 'Default lifetime of a challenge (Twilio: 5 minutes)';
COMMENT ON COLUMN totp.services.max_challenge_ttl IS 'Longest lifetime a challenge may ask for (Twilio: 60 minutes, the maximum)';
COMMENT ON COLUMN totp.services.unverified_factor_ttl IS 'How long an unverified factor lives before it is gone (Twilio: up to 24 hours)';
COMMENT ON COLUMN totp.services.event_retention IS 'How long run_maintenance keeps the service''s rows of totp.events (default 7 days)';
COMMENT ON COLUMN totp.services.date_created IS 'When the service was created';
COMMENT ON COLUMN totp.services.date_updated IS 'When the service was last updated';

COMMENT ON VIEW totp.entities IS 'Verify entities (Twilio YE...): one per (identity, service); created by create_entity or implicitly by create_factor';
COMMENT ON COLUMN totp.entities.identity IS 'The application''s user key: 1-64 ASCII letters and digits in dash-separated groups; the distribution key';
COMMENT ON COLUMN totp.entities.service_sid IS 'The service the entity belongs to';
COMMENT ON COLUMN totp.entities.sid IS 'Entity SID: YE + 32 hex digits';
COMMENT ON COLUMN totp.entities.date_created IS 'When the entity was created';
COMMENT ON COLUMN totp.entities.date_updated IS 'When the entity was last updated';
COMMENT ON COLUMN totp.entities.factor_window_start IS 'Start of the current 24-hour window of factor creations (limit 60326)';
COMMENT ON COLUMN totp.entities.factors_created_in_window IS 'Factors created in the current 24-hour window (limit 60326)';

COMMENT ON VIEW totp.factors IS 'Verify TOTP factors (Twilio YF...), never the secret; unverified factors past their lifetime are not shown';
COMMENT ON COLUMN totp.factors.sid IS 'Factor SID: YF + 32 hex digits';
COMMENT ON COLUMN totp.factors.service_sid IS 'The service the factor belongs to';
COMMENT ON COLUMN totp.factors.entity_sid IS 'The entity the factor belongs to';
COMMENT ON COLUMN totp.factors.identity IS 'The entity''s identity';
COMMENT ON COLUMN totp.factors.friendly_name IS 'Account name shown in authenticator apps (1-64 characters)';
COMMENT ON COLUMN totp.factors.factor_type IS 'Always totp';
COMMENT ON COLUMN totp.factors.status IS 'unverified until verify_factor accepts a code, then verified';
COMMENT ON COLUMN totp.factors.alg IS 'HMAC hash: sha1, sha256 or sha512';
COMMENT ON COLUMN totp.factors.code_length IS 'Digits per code (3-8)';
COMMENT ON COLUMN totp.factors.time_step IS 'Seconds per code (20-60)';
COMMENT ON COLUMN totp.factors.skew IS 'Steps accepted either side of now (0-2)';
COMMENT ON COLUMN totp.factors.metadata IS 'Application data, a JSON object of at most 1024 characters';
COMMENT ON COLUMN totp.factors.date_created IS 'When the factor was created';
COMMENT ON COLUMN totp.factors.date_updated IS 'When the factor was last changed';

COMMENT ON VIEW totp.challenges IS 'Verify challenges (Twilio YC...); a pending challenge past its expiration_date reads as expired';
COMMENT ON COLUMN totp.challenges.sid IS 'Challenge SID: YC + 32 hex digits';
COMMENT ON COLUMN totp.challenges.service_sid IS 'The service the challenge belongs to';
COMMENT ON COLUMN totp.challenges.entity_sid IS 'The entity the challenge belongs to';
COMMENT ON COLUMN totp.challenges.identity IS 'The entity''s identity';
COMMENT ON COLUMN totp.challenges.factor_sid IS 'The factor the challenge verifies';
COMMENT ON COLUMN totp.challenges.factor_type IS 'Always totp';
COMMENT ON COLUMN totp.challenges.status IS 'pending, approved (right code), denied (attempts exhausted) or expired';
COMMENT ON COLUMN totp.challenges.responded_reason IS 'Twilio''s responded_reason: always none for TOTP';
COMMENT ON COLUMN totp.challenges.details IS 'Application details, a JSON object of at most 1024 characters';
COMMENT ON COLUMN totp.challenges.hidden_details IS 'Application details not meant for the end user, a JSON object of at most 1024 characters';
COMMENT ON COLUMN totp.challenges.metadata IS 'Application data set by update_challenge, a JSON object of at most 1024 characters';
COMMENT ON COLUMN totp.challenges.expiration_date IS 'When the challenge expires (default 5 minutes after creation, at most 60)';
COMMENT ON COLUMN totp.challenges.date_responded IS 'When the challenge was approved or denied';
COMMENT ON COLUMN totp.challenges.date_created IS 'When the challenge was created';
COMMENT ON COLUMN totp.challenges.date_updated IS 'When the challenge was last changed';

COMMENT ON VIEW totp.events IS 'Twilio webhook events, one row per event, written with the change they report; needs its own SELECT grant';
COMMENT ON COLUMN totp.events.id IS 'Unique event id (the webhook uuid)';
COMMENT ON COLUMN totp.events.type IS 'factor.created, factor.verified, factor.deleted, challenge.approved or challenge.denied';
COMMENT ON COLUMN totp.events.service_sid IS 'The service of the event';
COMMENT ON COLUMN totp.events.entity_identity IS 'The identity of the entity the event is about';
COMMENT ON COLUMN totp.events.factor_sid IS 'The factor the event is about';
COMMENT ON COLUMN totp.events.challenge_sid IS 'The challenge, for challenge events; else NULL';
COMMENT ON COLUMN totp.events.date_created IS 'When the change happened';

COMMENT ON TYPE totp.new_factor IS 'What create_factor returns: the factor plus binding_secret and binding_uri, shown this once';

COMMENT ON TABLE totp_private.services IS 'Services as stored; read them through the totp.services view';
COMMENT ON TABLE totp_private.entities IS 'Entities as stored; read them through the totp.entities view';
COMMENT ON TABLE totp_private.events IS 'Events as stored; read them through the totp.events view';
COMMENT ON TABLE totp_private.keyring IS 'The name of this database''s key file and the database it belongs to';
COMMENT ON TABLE totp_private.factors IS 'Factors with their replay guard and attempt and rate counters';
COMMENT ON COLUMN totp_private.factors.replay_guards IS 'Replay guards of the other time_steps the factor has had, by step length';
COMMENT ON COLUMN totp_private.factors.date_verified IS 'When verify_factor accepted the factor (for has_recent_approval''s min_factor_age)';
COMMENT ON COLUMN totp_private.factors.unverified_until IS 'An unverified factor is gone after this moment; NULL once verified';
COMMENT ON COLUMN totp_private.factors.last_step IS 'Last time step accepted (replay guard, RFC 6238 section 5.2)';
COMMENT ON COLUMN totp_private.factors.failed_verifications IS 'Wrong codes submitted to verify_factor (limit 60310)';
COMMENT ON COLUMN totp_private.factors.challenge_hour_start IS 'Start of the current hour window of challenge creations (limit 60312)';
COMMENT ON COLUMN totp_private.factors.challenges_in_hour IS 'Challenges created in the current hour window';
COMMENT ON COLUMN totp_private.factors.challenge_day_start IS 'Start of the current 24-hour window of challenge creations (limit 60312)';
COMMENT ON COLUMN totp_private.factors.challenges_in_day IS 'Challenges created in the current 24-hour window';
COMMENT ON TABLE totp_private.factor_secrets IS 'Each factor''s secret sealed with AES-256-GCM, the factor SID as associated data';
COMMENT ON COLUMN totp_private.factor_secrets.key_id IS 'Id of the key (in the key file) that sealed this secret';
COMMENT ON COLUMN totp_private.factor_secrets.sealed IS 'nonce (12 bytes) || ciphertext || tag (16 bytes)';
COMMENT ON TABLE totp_private.challenges IS 'Challenges as stored; read them through the totp.challenges view';
COMMENT ON COLUMN totp_private.challenges.failed_attempts IS 'Wrong codes submitted for this challenge (limit 60308)';
COMMENT ON TABLE totp_private.partition IS 'PL/Proxy: this database''s partition number and the number of partitions (set_partition)';
COMMENT ON TABLE totp_private.placements IS 'PL/Proxy: identities moved off their hashed partition, and the partition each lives on now';
COMMENT ON TABLE totp_private.keys IS 'Ids and states of the keys that have sealed secrets here; never key material';

DO $comments$
DECLARE
    f record;
BEGIN
    FOR f IN
        SELECT p.oid::pg_catalog.regprocedure AS signature, c.comment
          FROM (VALUES
            ('hotp_code', 'RFC 4226 HOTP code of secret at counter'),
            ('totp_code', 'RFC 6238 TOTP code of secret at a time (default now)'),
            ('base32_encode', 'RFC 4648 base32, upper case, unpadded'),
            ('base32_decode', 'RFC 4648 base32 decoding; tolerates case, spaces, dashes and = padding'),
            ('generate_secret', 'base32 of CSPRNG bytes (default 20: 160 bits)'),
            ('otpauth_uri', 'Key Uri Format otpauth://totp/ URI, the format of binding_uri'),
            ('qr_svg', 'Standalone SVG QR code of a text, e.g. a binding_uri'),
            ('create_service', 'Create a Verify service (Twilio POST /Services); with sid, idempotent: same settings return it, others are 23505'),
            ('update_service', 'Update a service; NULL leaves a setting unchanged (Twilio POST /Services/{sid})'),
            ('delete_service', 'Delete a service and everything in it'),
            ('create_entity', 'Create an entity for an identity (Twilio POST /Entities); 60301 if it exists'),
            ('delete_entity', 'Delete an entity with its factors and challenges'),
            ('create_factor', 'Create a TOTP factor (and the entity if new); returns binding_secret and binding_uri this once; sid and secret may be supplied (migrations)'),
            ('verify_factor', 'Verify a new factor with a code: verified, or still unverified for a wrong code'),
            ('update_factor', 'Update a factor''s name, settings or metadata; NULL leaves a value unchanged'),
            ('delete_factor', 'Delete a factor and its challenges'),
            ('create_challenge', 'Create a challenge: approved with a right auth_payload, else pending'),
            ('update_challenge', 'Answer a pending challenge with a code: approved, pending, or denied after the last attempt'),
            ('has_recent_approval', 'Whether an identity has a challenge approved within an interval (for RLS and triggers)'),
            ('has_recent_approval_from_aged_factor', 'Like has_recent_approval, counting only approvals through a factor verified at least min_factor_age before them'),
            ('run_maintenance', 'Expire overdue pending challenges, delete unverified factors past their lifetime, prune old events'),
            ('grant_enrolment', 'Grant a role what enrolment needs: create/verify/update/delete factors and entities'),
            ('grant_verification', 'Grant a role what verification needs: create/update challenges and has_recent_approval'),
            ('rotate_key', 'Make a new sealing key (or one added by add_key, key_id) current and re-seal every secret under it'),
            ('add_key', 'Add a new key to the key file without making it current (a rotation in stages, as on Citus)'),
            ('make_key_current', 'Make a key of this node''s key file current here (what rotate_key runs on each Citus worker)'),
            ('key_file_ids', 'The ids of the keys in this database''s key file (never the keys)'),
            ('distribute', 'Citus: make services a reference table, distribute every per-user table by identity, delegate identity-scoped functions, name the current key on every node; rerun after adding nodes'),
            ('services_digest', 'SHA-256 of every service''s SID and settings (not dates): equal on nodes that agree'),
            ('undistribute', 'Citus: turn the tables back into local tables and stop delegating (before DROP EXTENSION)'),
            ('retire_keys', 'Remove keys no secret uses from the key file'),
            ('forget_entity', 'Trigger: AFTER DELETE on an application table, delete the identity''s entity (args: service_sid, identity column)'),
            ('require_approval', 'Trigger: BEFORE writes, refuse (42501) unless the identity has a recent approval (args: service_sid, identity column, max age [, min factor age])'),
            ('shard_hash', 'PL/Proxy routing hash: the first 4 bytes of SHA-256 of the identity''s UTF-8, big-endian int4'),
            ('set_partition', 'PL/Proxy: make this database partition part_no of part_count (a power of 2); NULLs: a lone node'),
            ('get_service', 'A service''s row (Twilio GET /Services/{sid})'),
            ('list_services', 'Every service, oldest first (Twilio GET /Services)'),
            ('get_entity', 'An identity''s entity in a service (Twilio GET /Entities/{identity})'),
            ('get_factor', 'One factor of an identity (Twilio GET /Entities/{identity}/Factors/{sid})'),
            ('list_factors', 'An identity''s factors in a service, oldest first'),
            ('get_challenge', 'One challenge of an identity (Twilio GET /Entities/{identity}/Challenges/{sid})'),
            ('list_challenges', 'An identity''s challenges in a service, optionally of one factor and status, oldest first unless newest_first'),
            ('export_identity', 'Superuser: an identity''s rows in every service with its secrets in plaintext, for import_identity'),
            ('release_identity', 'Superuser, PL/Proxy: export an identity, delete it here and record the partition it moves to'),
            ('import_identity', 'Superuser: take in an exported identity, sealing its secrets under this database''s key'),
            ('forget_identity', 'What the forget_entity trigger runs: delete an identity''s entity, recording factor.deleted events')
          ) AS c(name, comment)
          JOIN pg_catalog.pg_proc p ON p.proname = c.name
           AND p.pronamespace IN ('totp'::pg_catalog.regnamespace, 'totp_private'::pg_catalog.regnamespace)
    LOOP
        EXECUTE pg_catalog.format('COMMENT ON FUNCTION %s IS %L', f.signature, f.comment);
    END LOOP;
END
$comments$;
