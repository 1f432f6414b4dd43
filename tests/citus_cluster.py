"""The extension on a real Citus cluster (SPEC §11; README "Running on Citus"): totp.distribute(),
delegated calls as an application role, reads of the views on every node, two-phase commit over
two workers, the one-approval race, a rotation in stages with one key file per node, a shard
move, a node added later, and totp.undistribute() before DROP EXTENSION.

Citus is in no registry CI reaches, so this module runs only against a cluster you bring, and its
name keeps the suite from collecting it: `.venv/bin/pytest tests/citus_cluster.py` with the environment below (libpq URIs, postgresql://user@host:port/db; the test runs as root or as the owner of the
key files, which it rewrites):

    TOTP_VERIFY_CITUS_COORDINATOR  the coordinator's database (superuser), Citus created, workers
                                   added, totp_verify NOT created yet
    TOTP_VERIFY_CITUS_WORKERS      the workers' same database, space-separated, in any order
    TOTP_VERIFY_CITUS_KEY_FILES    each node's totp_verify.key_file, coordinator first, then the
                                   workers in the order above (one file per node, as on separate
                                   machines; the coordinator's must exist, holding one key)
    TOTP_VERIFY_CITUS_SPARE        optional: "DSN KEY_FILE" of a running node with Citus created,
                                   not yet added (the node-added-later test)
"""

import concurrent.futures
import os
import shutil
import threading
import time

import psycopg
import pytest
import pyotp

from conftest import refused, wait_inside_step, wrong_code

COORDINATOR = os.environ.get("TOTP_VERIFY_CITUS_COORDINATOR")
pytestmark = pytest.mark.skipif(not COORDINATOR, reason="no Citus cluster (TOTP_VERIFY_CITUS_COORDINATOR unset)")
WORKERS = os.environ.get("TOTP_VERIFY_CITUS_WORKERS", "").split()
KEY_FILES = os.environ.get("TOTP_VERIFY_CITUS_KEY_FILES", "").split()
SPARE = os.environ.get("TOTP_VERIFY_CITUS_SPARE", "").split()
APP = "totp_citus_app"


def connect(dsn, **kwargs):
    kwargs.setdefault("autocommit", True)
    from psycopg.rows import dict_row
    kwargs.setdefault("row_factory", dict_row)
    return psycopg.connect(dsn, **kwargs)


def as_app(dsn):
    return connect(dsn, user=APP)


def copy_key_file(to_paths):
    """What an operator does with scp: the coordinator's key file, byte for byte, on other nodes."""
    for path in to_paths:
        shutil.copyfile(KEY_FILES[0], path)
        shutil.copystat(KEY_FILES[0], path)
        stat = os.stat(KEY_FILES[0])
        os.chown(path, stat.st_uid, stat.st_gid)


def contents(conn):
    """Each per-user table's row count and an MD5 of its rows in key order."""
    out = {}
    for table, key in [("services", "sid"), ("entities", "identity, sid"), ("factors", "identity, sid"),
                       ("factor_secrets", "identity, factor_sid"), ("challenges", "identity, sid"),
                       ("events", "identity, id")]:
        row = conn.execute(f"SELECT count(*) AS n, md5(coalesce(string_agg(t::text, '|' ORDER BY {key}), '')) AS h "
                           f"FROM totp_private.{table} t").fetchone()
        out[table] = (row["n"], row["h"])
    return out


def current_keys(dsns):
    """Each node's current key (its own bookkeeping)."""
    keys = []
    for dsn in dsns:
        with connect(dsn) as n:
            row = n.execute("SELECT key_id FROM totp_private.keys WHERE state = 'current'").fetchone()
            keys.append(row and row["key_id"])
    return keys


def key_ids_in(path):
    return [int(line.split()[0]) for line in open(path) if line.strip() and not line.startswith("#")]


@pytest.fixture(scope="module")
def cluster():
    assert len(KEY_FILES) == len(WORKERS) + 1, "TOTP_VERIFY_CITUS_KEY_FILES: one per node"
    copy_key_file(KEY_FILES[1:])
    with connect(COORDINATOR) as c:
        c.execute("DROP SCHEMA IF EXISTS totp")
        c.execute(f"DROP ROLE IF EXISTS {APP}")
        c.execute(f"CREATE ROLE {APP} LOGIN")
        c.execute("CREATE EXTENSION totp_verify")
        c.execute(f"SELECT totp.grant_enrolment('{APP}'), totp.grant_verification('{APP}')")
        done = c.execute("SELECT * FROM totp.distribute(shard_count => 8)").fetchall()
        assert {r["object"] for r in done} >= {"totp_private.services", "totp_private.factors", "totp_private.events"}
        service = c.execute("SELECT sid FROM totp.create_service('Citus', 'Acme', sid => 'VA' || repeat('c', 32))").fetchone()["sid"]
    yield {"service": service}
    with connect(COORDINATOR) as c:
        before = contents(c)
        if c.execute("SELECT count(*) AS n FROM pg_dist_cleanup").fetchone()["n"]:
            with refused("55000"):  # the shard moves' leftovers would outlive DROP EXTENSION
                c.execute("SELECT * FROM totp.undistribute()")
            c.execute("CALL citus_cleanup_orphaned_resources()")
        c.execute("SELECT * FROM totp.undistribute()")
        assert c.execute("SELECT count(*) AS n FROM pg_dist_partition WHERE logicalrelid::text LIKE 'totp_private.%'").fetchone()["n"] == 0
        after = contents(c)
        assert after == before and before["factors"][0] > 0, (before, after)
        # On one node again, the views are the only way in for the application role.
        with as_app(COORDINATOR) as app:
            assert app.execute("SELECT count(*) AS n FROM totp.factors").fetchone()["n"] == before["factors"][0]
            with refused("42501"):
                app.execute("SELECT count(*) FROM totp_private.factors")
        c.execute("DROP EXTENSION totp_verify")
        # Citus creates the extension's schema ahead of the extension on every node, so it is not
        # a member and stays behind (with its grants).
        c.execute("DROP SCHEMA IF EXISTS totp")
        c.execute(f"DROP ROLE {APP}")
    # The extension took every shard with it: DROP EXTENSION of distributed members left some.
    for dsn in WORKERS:
        with connect(dsn) as w:
            left = w.execute("SELECT count(*) AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                             "WHERE n.nspname IN ('totp', 'totp_private')").fetchone()["n"]
            assert left == 0, f"{left} relations left on {dsn}"


def enrol(conn, service, identity):
    """create_factor + verify_factor as the application role: (factor sid, pyotp.TOTP)."""
    f = conn.execute("SELECT sid, binding_secret FROM totp.create_factor(%s, %s, 'phone')", (service, identity)).fetchone()
    totp = pyotp.TOTP(f["binding_secret"])
    wait_inside_step(30)
    status = conn.execute("SELECT status FROM totp.verify_factor(%s, %s, %s, %s)",
                          (service, identity, f["sid"], totp.now())).fetchone()["status"]
    assert status == "verified"
    return f["sid"], totp


def node_of(conn, identity):
    return conn.execute(
        "SELECT n.nodeport FROM pg_dist_shard s JOIN pg_dist_placement p USING (shardid) JOIN pg_dist_node n USING (groupid) "
        "WHERE s.shardid = get_shard_id_for_distribution_column('totp_private.factors', %s::text)", (identity,)).fetchone()["nodeport"]


def test_application_role_reads_the_views_on_every_node(cluster):
    """Right after the first distribute(): the reads need no second run."""
    service = cluster["service"]
    with as_app(COORDINATOR) as app:
        enrol(app, service, "reader-1")
    for dsn in [COORDINATOR] + WORKERS:
        with as_app(dsn) as app:
            n = app.execute("SELECT count(*) AS n FROM totp.factors WHERE identity = 'reader-1'").fetchone()["n"]
            assert n == 1, dsn
            assert app.execute("SELECT count(*) AS n FROM totp.challenges").fetchone()["n"] >= 0
            # What the view readers get on Citus stops at reading: never a secret, never a write.
            with refused("42501"):
                app.execute("SELECT * FROM totp_private.factor_secrets LIMIT 1")
            with refused("42501"):
                app.execute("UPDATE totp_private.factors SET failed_verifications = 0 WHERE identity = 'reader-1'")
            with refused("42501"):
                app.execute("SELECT * FROM totp.rotate_key()")


def test_distribute_again_changes_nothing(cluster):
    with connect(COORDINATOR) as c:
        again = c.execute("SELECT * FROM totp.distribute(shard_count => 8)").fetchall()
    actions = {(r["object"], r["action"]) for r in again}
    assert ("totp_private.services", "reference table already") in actions
    assert ("totp_private.factors", "distributed already") in actions
    assert ("totp.create_challenge(text,text,text,text,timestamp with time zone,jsonb,jsonb)", "delegated already") in actions
    assert not any(a.startswith(("made", "distributed by", "delegated by")) for _, a in actions), actions


def test_the_walk_through_as_an_application_role(cluster):
    service = cluster["service"]
    with as_app(COORDINATOR) as app:
        sid, totp = enrol(app, service, "walk-1")
        assert app.execute("SELECT status FROM totp.create_challenge(%s, 'walk-1', %s, %s)",
                           (service, sid, wrong_code(totp.now()))).fetchone()["status"] == "pending"
        wait_inside_step(30)
        code = totp.at(int(time.time()) + 30)  # the next step: the verified step is spent
        approved = app.execute("SELECT status FROM totp.create_challenge(%s, 'walk-1', %s, %s)",
                               (service, sid, code)).fetchone()["status"]
        assert approved == "approved"  # skew 1 accepts the next step, not yet spent
        assert app.execute("SELECT totp.has_recent_approval(%s, 'walk-1', '1 minute') AS ok", (service,)).fetchone()["ok"]
        again = app.execute("SELECT status FROM totp.create_challenge(%s, 'walk-1', %s, %s)",
                            (service, sid, code)).fetchone()["status"]
        assert again == "pending"  # the same code, spent: no replay
        with refused("P0002", 60390):
            app.execute("SELECT * FROM totp.create_challenge(%s, 'walk-1', %s, '123456')", (service, "YF" + "0" * 32))


def test_identities_spread_and_one_transaction_over_two_workers_commits(cluster):
    service = cluster["service"]
    with connect(COORDINATOR) as c:
        identities = [f"spread-{i}" for i in range(20)]
        nodes = {i: node_of(c, i) for i in identities}
        assert len(set(nodes.values())) >= 2, nodes
        a = next(i for i in identities if nodes[i] == nodes[identities[0]])
        b = next(i for i in identities if nodes[i] != nodes[a])
    with as_app(COORDINATOR) as app:
        # Two-phase commit: the events these calls record must not break PREPARE (no NOTIFY).
        with app.transaction():
            fa = app.execute("SELECT sid FROM totp.create_factor(%s, %s, 'phone')", (service, a)).fetchone()["sid"]
            fb = app.execute("SELECT sid FROM totp.create_factor(%s, %s, 'phone')", (service, b)).fetchone()["sid"]
    with connect(COORDINATOR) as c:
        events = c.execute("SELECT factor_sid FROM totp.events WHERE type = 'factor.created' AND factor_sid IN (%s, %s)",
                           (fa, fb)).fetchall()
        assert len(events) == 2


def test_every_verification_statement_runs_delegated(cluster):
    """The statements the verification path runs, each shape at least once on the cluster: a
    wrong verify_factor, a challenge created denied, and update_challenge answering pending,
    denied and approved."""
    service = cluster["service"]
    with as_app(COORDINATOR) as app:
        f = app.execute("SELECT sid, binding_secret FROM totp.create_factor(%s, 'shapes-1', 'phone')", (service,)).fetchone()
        totp = pyotp.TOTP(f["binding_secret"])
        wait_inside_step(30)
        assert app.execute("SELECT status FROM totp.verify_factor(%s, 'shapes-1', %s, %s)",
                           (service, f["sid"], wrong_code(totp.now()))).fetchone()["status"] == "unverified"
        assert app.execute("SELECT status FROM totp.verify_factor(%s, 'shapes-1', %s, %s)",
                           (service, f["sid"], totp.now())).fetchone()["status"] == "verified"
        wait_inside_step(30, margin=8)
        nxt = totp.at(int(time.time()) + 30)
        pending = app.execute("SELECT sid, status FROM totp.create_challenge(%s, 'shapes-1', %s)", (service, f["sid"])).fetchone()
        assert pending["status"] == "pending"
        assert app.execute("SELECT status FROM totp.update_challenge(%s, 'shapes-1', %s, %s)",
                           (service, pending["sid"], wrong_code(nxt))).fetchone()["status"] == "pending"
        assert app.execute("SELECT status FROM totp.update_challenge(%s, 'shapes-1', %s, %s)",
                           (service, pending["sid"], nxt)).fetchone()["status"] == "approved"
        doomed = app.execute("SELECT sid FROM totp.create_challenge(%s, 'shapes-1', %s)", (service, f["sid"])).fetchone()["sid"]
        statuses = [app.execute("SELECT status FROM totp.update_challenge(%s, 'shapes-1', %s, '000000')",
                                (service, doomed)).fetchone()["status"] for _ in range(5)]
        assert statuses[-1] == "denied", statuses
    with connect(COORDINATOR) as c:
        c.execute("SELECT totp.update_service(%s, max_challenge_attempts => 1)", (service,))
        try:
            with as_app(COORDINATOR) as app:
                denied = app.execute("SELECT status FROM totp.create_challenge(%s, 'shapes-1', %s, '000000')",
                                     (service, f["sid"])).fetchone()["status"]
                assert denied == "denied"
        finally:
            c.execute("SELECT totp.update_service(%s, max_challenge_attempts => 5)", (service,))
        events = {r["type"] for r in c.execute("SELECT type FROM totp.events WHERE factor_sid = %s", (f["sid"],))}
        assert events == {"factor.created", "factor.verified", "challenge.approved", "challenge.denied"}


def test_32_sessions_with_the_same_code_give_one_approval(cluster):
    service = cluster["service"]
    with as_app(COORDINATOR) as app:
        sid, totp = enrol(app, service, "race-1")
    wait_inside_step(30, margin=10)
    code = totp.at(int(time.time()) + 30)
    barrier = threading.Barrier(32, timeout=60)

    def one(_):
        with as_app(COORDINATOR) as conn:
            conn.execute("SELECT 1")
            barrier.wait()
            return conn.execute("SELECT status FROM totp.create_challenge(%s, 'race-1', %s, %s)",
                                (service, sid, code)).fetchone()["status"]

    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(one, range(32)))
    assert statuses.count("approved") == 1, statuses
    assert statuses.count("pending") == 31


def test_deleting_an_entity_and_a_service_and_maintenance(cluster):
    with connect(COORDINATOR) as c:
        other = c.execute("SELECT sid FROM totp.create_service('Doomed', sid => 'VA' || repeat('d', 32))").fetchone()["sid"]
        for i in range(6):
            c.execute("SELECT totp.create_factor(%s, %s, 'phone')", (other, f"doomed-{i}"))
        c.execute("SELECT totp.delete_entity(%s, 'doomed-0')", (other,))
        c.execute("SELECT totp.delete_service(%s)", (other,))
        assert c.execute("SELECT count(*) AS n FROM totp.factors WHERE service_sid = %s", (other,)).fetchone()["n"] == 0
        deleted = c.execute("SELECT count(*) AS n FROM totp.events WHERE service_sid = %s AND type = 'factor.deleted'",
                            (other,)).fetchone()["n"]
        assert deleted == 6
        c.execute("SELECT * FROM totp.run_maintenance()")


def test_a_staged_rotation_with_one_key_file_per_node(cluster):
    service = cluster["service"]
    with as_app(COORDINATOR) as app:
        factors = {f"rot-{i}": enrol(app, service, f"rot-{i}") for i in range(6)}
    with connect(COORDINATOR) as c:
        # Each node keeps its own bookkeeping; distribute() made the coordinator's key current on all.
        old = c.execute("SELECT key_id FROM totp_private.keys WHERE state = 'current'").fetchone()["key_id"]
        assert c.execute("SELECT DISTINCT key_id FROM totp_private.factor_secrets").fetchall() == [{"key_id": old}]
        with refused("55000"):  # a node must hold a key before any node seals under it
            c.execute("SELECT * FROM totp.rotate_key()")
    for dsn in WORKERS:  # key changes are the coordinator's
        with connect(dsn) as w:
            for call in ("SELECT totp.add_key()", "SELECT totp.retire_keys()", "SELECT * FROM totp.rotate_key(key_id => 1)"):
                with refused("55000"):
                    w.execute(call)
    with connect(COORDINATOR) as c:
        new = c.execute("SELECT totp.add_key() AS id").fetchone()["id"]
        assert key_ids_in(KEY_FILES[0])[-1] == new
        with refused("58P01") as info:  # not copied yet
            c.execute("SELECT * FROM totp.rotate_key(key_id => %s)", (new,))
        assert "missing from the key file" in info.value.diag.message_detail
        copy_key_file(KEY_FILES[1:])
        assert current_keys(WORKERS) == [old] * len(WORKERS)  # distribute() named it on every node
        r = c.execute("SELECT * FROM totp.rotate_key(key_id => %s)", (new,)).fetchone()
        assert current_keys([COORDINATOR] + WORKERS) == [new] * (len(WORKERS) + 1)
        assert r["new_key_id"] == new and r["resealed"] >= 6 and r["unreadable"] == 0
        assert c.execute("SELECT count(*) AS n FROM totp_private.factor_secrets WHERE key_id <> %s", (new,)).fetchone()["n"] == 0
        assert c.execute("SELECT totp.retire_keys() AS r").fetchone()["r"] == [old]
        assert old not in key_ids_in(KEY_FILES[0])
    # Workers still hold the old key (extra keys are harmless) and open every re-sealed secret.
    wait_inside_step(30, margin=5)
    with as_app(COORDINATOR) as app:
        for identity, (sid, totp) in factors.items():
            code = totp.at(int(time.time()) + 30)
            status = app.execute("SELECT status FROM totp.create_challenge(%s, %s, %s, %s)",
                                 (service, identity, sid, code)).fetchone()["status"]
            assert status == "approved", identity
    copy_key_file(KEY_FILES[1:])


def test_a_shard_move_keeps_identities_verifying(cluster):
    service = cluster["service"]
    with as_app(COORDINATOR) as app:
        sid, totp = enrol(app, service, "mover-1")
    with connect(COORDINATOR) as c:
        shard = c.execute("SELECT get_shard_id_for_distribution_column('totp_private.factors', 'mover-1'::text) AS s").fetchone()["s"]
        here = c.execute("SELECT n.nodename, n.nodeport FROM pg_dist_placement p JOIN pg_dist_node n USING (groupid) "
                         "WHERE p.shardid = %s", (shard,)).fetchone()
        there = c.execute("SELECT nodename, nodeport FROM pg_dist_node WHERE noderole = 'primary' AND groupid <> 0 "
                          "AND (nodename, nodeport) <> (%s, %s) ORDER BY nodeport LIMIT 1",
                          (here["nodename"], here["nodeport"])).fetchone()
        c.execute("SELECT citus_move_shard_placement(%s, %s, %s, %s, %s, 'block_writes')",
                  (shard, here["nodename"], here["nodeport"], there["nodename"], there["nodeport"]))
        assert node_of(c, "mover-1") == there["nodeport"]
    wait_inside_step(30, margin=5)
    with as_app(COORDINATOR) as app:
        status = app.execute("SELECT status FROM totp.create_challenge(%s, 'mover-1', %s, %s)",
                             (service, sid, totp.at(int(time.time()) + 30))).fetchone()["status"]
        assert status == "approved"


def test_a_node_added_later(cluster):
    assert len(SPARE) == 2, "TOTP_VERIFY_CITUS_SPARE: the DSN and key file of a node to add"
    dsn, key_file = SPARE
    service = cluster["service"]
    with connect(COORDINATOR) as c:
        host = psycopg.conninfo.conninfo_to_dict(dsn)
        c.execute("SELECT citus_add_node(%s, %s)", (host.get("host", "localhost"), int(host.get("port", 5432))))
        if os.path.exists(key_file):
            os.remove(key_file)
        with refused("58P01"):  # the new node has no key file yet: refused, never a key of its own
            c.execute("SELECT * FROM totp.distribute(shard_count => 8)")
        copy_key_file([key_file])
        c.execute("SELECT * FROM totp.distribute(shard_count => 8)")
        c.execute("SELECT citus_rebalance_start(shard_transfer_mode => 'block_writes')")
        c.execute("SELECT citus_rebalance_wait()")
        on_new = c.execute("SELECT count(*) AS n FROM pg_dist_placement p JOIN pg_dist_node n USING (groupid) "
                           "WHERE n.nodeport = %s", (int(host.get("port", 5432)),)).fetchone()["n"]
        assert on_new > 0
    with as_app(dsn) as app:  # the grants reached it
        assert app.execute("SELECT count(*) AS n FROM totp.factors").fetchone()["n"] > 0
    # It seals with the coordinator's current key, told by distribute(), not one of its own choice.
    assert len(set(current_keys([COORDINATOR, dsn] + WORKERS))) == 1
    with as_app(COORDINATOR) as app:
        for i in range(10):
            enrol(app, service, f"late-{i}")
