"""PL/Proxy partitions inside the extension (SPEC §11; README "Sharding with PL/Proxy"): the routing
hash, the partition guard on every identity-scoped call, the identity-scoped read functions, and
moving an identity between partitions with its factors, counters and replay guard. Two databases
of one cluster stand in for two partitions (each has its own key file); the router itself is tested
in tests/test_sharded.py."""

import concurrent.futures
import hashlib
import subprocess
import time
import uuid

import psycopg
import pytest
from psycopg import sql

from calls import ident
from conftest import (PG_BIN, connect, new_factor, new_service, oathtool, refused, verified_factor,
                      wait_inside_step, wrong_code)

SERVICE = "VA" + "5" * 32
PARTS = 4


def shard_hash(identity):
    """The documented hash, computed independently (Python's hashlib)."""
    return int.from_bytes(hashlib.sha256(identity.encode()).digest()[:4], "big", signed=True)


def home(identity, count=PARTS):
    return shard_hash(identity) & (count - 1)


def identity_on(part, count=PARTS, prefix="user"):
    while True:
        i = ident(prefix)
        if home(i, count) == part:
            return i


@pytest.fixture(scope="module")
def partitions():
    """Two databases, partitions 0 and 1 of 4, holding the same service."""
    names = [f"t_part{n}_{uuid.uuid4().hex[:6]}" for n in range(2)]
    with connect("postgres") as admin:
        for name in names:
            admin.execute(f'CREATE DATABASE "{name}"')
    for n, name in enumerate(names):
        with connect(name) as c:
            c.execute("CREATE EXTENSION totp_verify")
            new_service(c, "Partitioned", sid=SERVICE)
            c.execute("SELECT totp.set_partition(%s, %s)", (n, PARTS))
    yield names
    with connect("postgres") as admin:
        for name in names:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def p0(partitions):
    with connect(partitions[0]) as c:
        yield c


@pytest.fixture
def p1(partitions):
    with connect(partitions[1]) as c:
        yield c


def test_shard_hash_is_the_documented_sha256_prefix(conn):
    identities = [f"user-{n}" for n in range(300)] + ["", "é", "用户-1", "emoji-🙂", "a b", "x" * 256]
    rows = conn.execute(
        "SELECT i, totp.shard_hash(i) AS h, "
        "('x' || left(encode(sha256(convert_to(i, 'UTF8')), 'hex'), 8))::bit(32)::int4 AS s "
        "FROM unnest(%s::text[]) AS i", (identities,)).fetchall()
    assert len(rows) == len(identities)
    for row in rows:
        assert row["h"] == row["s"] == shard_hash(row["i"]), row
    fn = conn.execute("SELECT provolatile, proisstrict, proparallel FROM pg_proc "
                      "WHERE oid = 'totp.shard_hash(text)'::regprocedure").fetchone()
    assert (fn["provolatile"], fn["proisstrict"], fn["proparallel"]) == ("i", True, "s")


def test_set_partition_checks_its_arguments_and_is_for_superusers(conn, db):
    for part_no, part_count in [(0, 3), (0, 0), (4, 4), (-1, 4), (0, 2048)]:
        with refused("22023", 60200):
            conn.execute("SELECT totp.set_partition(%s, %s)", (part_no, part_count))
    with refused("22023", 60200):
        conn.execute("SELECT totp.set_partition(1, NULL)")
    role = "part_setter_" + uuid.uuid4().hex[:6]
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA totp TO {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA totp TO {}").format(sql.Identifier(role)))
        with connect(db, user=role) as c:
            for call in ["SELECT totp.set_partition(0, 2)", "SELECT totp.set_partition(NULL, NULL)",
                         "SELECT totp.export_identity('alice')", "SELECT totp.release_identity('alice', 1)",
                         "SELECT totp.import_identity('{}'::jsonb)"]:
                with refused("42501"):
                    c.execute(call)
        assert conn.execute("SELECT count(*) AS n FROM totp_private.partition").fetchone()["n"] == 0
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def every_identity_call(svc, identity, factor_sid, challenge_sid):
    """Every identity-scoped function, with arguments that pass validation."""
    return [
        ("create_entity", "SELECT * FROM totp.create_entity(%s, %s)", (svc, identity)),
        ("delete_entity", "SELECT totp.delete_entity(%s, %s)", (svc, identity)),
        ("create_factor", "SELECT * FROM totp.create_factor(%s, %s, 'phone')", (svc, identity)),
        ("verify_factor", "SELECT * FROM totp.verify_factor(%s, %s, %s, '123456')", (svc, identity, factor_sid)),
        ("update_factor", "SELECT * FROM totp.update_factor(%s, %s, %s, friendly_name => 'x')",
         (svc, identity, factor_sid)),
        ("delete_factor", "SELECT totp.delete_factor(%s, %s, %s)", (svc, identity, factor_sid)),
        ("create_challenge", "SELECT * FROM totp.create_challenge(%s, %s, %s, '123456')", (svc, identity, factor_sid)),
        ("update_challenge", "SELECT * FROM totp.update_challenge(%s, %s, %s, '123456')",
         (svc, identity, challenge_sid)),
        ("get_entity", "SELECT * FROM totp.get_entity(%s, %s)", (svc, identity)),
        ("get_factor", "SELECT * FROM totp.get_factor(%s, %s, %s)", (svc, identity, factor_sid)),
        ("list_factors", "SELECT * FROM totp.list_factors(%s, %s)", (svc, identity)),
        ("get_challenge", "SELECT * FROM totp.get_challenge(%s, %s, %s)", (svc, identity, challenge_sid)),
        ("list_challenges", "SELECT * FROM totp.list_challenges(%s, %s)", (svc, identity)),
    ]


def test_every_identity_scoped_call_refuses_an_identity_of_another_partition(p0):
    foreign = identity_on(2)
    calls = every_identity_call(SERVICE, foreign, "YF" + "0" * 32, "YC" + "0" * 32)
    assert len(calls) == 13
    for name, statement, args in calls:
        with refused("55000") as info:
            p0.execute(statement, args)
        assert info.value.diag.message_primary == "identity belongs to partition 2", name
        assert "partition 0 of 4" in info.value.diag.message_detail, name
    assert p0.execute("SELECT count(*) AS n FROM totp_private.entities WHERE identity = %s",
                      (foreign,)).fetchone()["n"] == 0


def test_the_guard_does_not_stand_in_the_way_of_the_home_partition(p0):
    mine = identity_on(0)
    factor = verified_factor(p0, SERVICE, mine)
    assert p0.execute("SELECT status FROM totp.get_factor(%s, %s, %s)",
                      (SERVICE, mine, factor["sid"])).fetchone()["status"] == "verified"


def test_a_lone_node_has_no_guard(conn):
    svc = new_service(conn)["sid"]
    for part in range(PARTS):
        new_factor(conn, svc, identity_on(part))
    assert conn.execute("SELECT count(DISTINCT identity) AS n FROM totp.factors "
                        "WHERE service_sid = %s", (svc,)).fetchone()["n"] == PARTS


def test_clearing_the_partition_lifts_the_guard_and_setting_it_again_restores_it(conn):
    svc = new_service(conn)["sid"]
    foreign = identity_on(1, count=2)
    conn.execute("SELECT totp.set_partition(0, 2)")
    try:
        with refused("55000"):
            new_factor(conn, svc, foreign)
        conn.execute("SELECT totp.set_partition(NULL, NULL)")
        new_factor(conn, svc, foreign)
        conn.execute("SELECT totp.set_partition(1, 2)")
        new_factor(conn, svc, foreign)
    finally:
        conn.execute("SELECT totp.set_partition(NULL, NULL)")


def test_reads_return_the_views_rows_and_twilio_errors(p0):
    mine = identity_on(0)
    factor = verified_factor(p0, SERVICE, mine)
    other = new_factor(p0, SERVICE, mine, "tablet")
    entity = p0.execute("SELECT * FROM totp.get_entity(%s, %s)", (SERVICE, mine)).fetchone()
    assert entity == p0.execute("SELECT * FROM totp.entities WHERE identity = %s", (mine,)).fetchone()
    listed = p0.execute("SELECT * FROM totp.list_factors(%s, %s)", (SERVICE, mine)).fetchall()
    assert [f["sid"] for f in listed] == [factor["sid"], other["sid"]]
    assert listed == p0.execute("SELECT * FROM totp.factors WHERE identity = %s ORDER BY date_created, sid",
                                (mine,)).fetchall()
    assert "binding_secret" not in listed[0]
    wait_inside_step(30)
    code = oathtool(factor["binding_secret"])
    pending = p0.execute("SELECT * FROM totp.create_challenge(%s, %s, %s)", (SERVICE, mine, factor["sid"])).fetchone()
    approved = p0.execute("SELECT * FROM totp.create_challenge(%s, %s, %s, %s)",
                          (SERVICE, mine, factor["sid"], code)).fetchone()
    assert approved["status"] == "approved"
    got = p0.execute("SELECT * FROM totp.get_challenge(%s, %s, %s)", (SERVICE, mine, pending["sid"])).fetchone()
    assert got == p0.execute("SELECT * FROM totp.challenges WHERE sid = %s", (pending["sid"],)).fetchone()

    def listed_sids(**kw):
        named = "".join(f", {k} => %({k})s" for k in kw)
        return [r["sid"] for r in p0.execute(f"SELECT * FROM totp.list_challenges(%(s)s, %(i)s{named})",
                                             {"s": SERVICE, "i": mine, **kw}).fetchall()]
    assert listed_sids() == [pending["sid"], approved["sid"]]
    assert listed_sids(newest_first=True) == [approved["sid"], pending["sid"]]
    assert listed_sids(status="approved") == [approved["sid"]]
    assert listed_sids(status="pending", factor_sid=factor["sid"]) == [pending["sid"]]
    assert listed_sids(factor_sid=other["sid"]) == []
    with refused("22023", 60306):
        listed_sids(status="open")
    services = p0.execute("SELECT sid FROM totp.list_services()").fetchall()
    assert SERVICE in [s["sid"] for s in services]
    assert p0.execute("SELECT * FROM totp.get_service(%s)", (SERVICE,)).fetchone() == \
        p0.execute("SELECT * FROM totp.services WHERE sid = %s", (SERVICE,)).fetchone()
    with refused("P0002", 20404):
        p0.execute("SELECT * FROM totp.get_service(%s)", ("VA" + "0" * 32,))
    with refused("P0002", 20404):
        p0.execute("SELECT * FROM totp.get_factor(%s, %s, %s)", ("VA" + "0" * 32, mine, factor["sid"]))
    nobody = identity_on(0)
    with refused("P0002", 60392):
        p0.execute("SELECT * FROM totp.get_entity(%s, %s)", (SERVICE, nobody))
    with refused("P0002", 60392):
        p0.execute("SELECT * FROM totp.get_factor(%s, %s, %s)", (SERVICE, nobody, factor["sid"]))
    with refused("P0002", 60390):
        p0.execute("SELECT * FROM totp.get_factor(%s, %s, %s)", (SERVICE, mine, "YF" + "0" * 32))
    with refused("P0002", 60391):
        p0.execute("SELECT * FROM totp.get_challenge(%s, %s, %s)", (SERVICE, mine, "YC" + "0" * 32))
    with refused("22023", 60306):
        p0.execute("SELECT * FROM totp.get_factor(%s, %s, 'not-a-sid')", (SERVICE, mine))
    assert p0.execute("SELECT count(*) AS n FROM totp.list_factors(%s, %s)", (SERVICE, nobody)).fetchone()["n"] == 0


def test_reads_need_the_grant_sets(partitions):
    db = partitions[0]
    mine = identity_on(0)
    roles = {kind: f"part_{kind}_{uuid.uuid4().hex[:6]}" for kind in ("enrolment", "verification", "none")}
    with connect(db) as c:
        factor = verified_factor(c, SERVICE, mine)
        for kind, role in roles.items():
            c.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
            if kind != "none":
                c.execute(f"SELECT totp.grant_{kind}(%s)", (role,))
        challenge = c.execute("SELECT * FROM totp.create_challenge(%s, %s, %s)",
                              (SERVICE, mine, factor["sid"])).fetchone()
    try:
        reads = {
            "get_service": ("SELECT * FROM totp.get_service(%s)", (SERVICE,)),
            "get_entity": ("SELECT * FROM totp.get_entity(%s, %s)", (SERVICE, mine)),
            "get_factor": ("SELECT * FROM totp.get_factor(%s, %s, %s)", (SERVICE, mine, factor["sid"])),
            "list_factors": ("SELECT * FROM totp.list_factors(%s, %s)", (SERVICE, mine)),
            "get_challenge": ("SELECT * FROM totp.get_challenge(%s, %s, %s)", (SERVICE, mine, challenge["sid"])),
            "list_challenges": ("SELECT * FROM totp.list_challenges(%s, %s)", (SERVICE, mine)),
            "shard_hash": ("SELECT totp.shard_hash(%s)", (mine,)),
        }
        allowed = {
            "enrolment": {"get_service", "get_entity", "get_factor", "list_factors", "shard_hash"},
            "verification": {"get_service", "get_factor", "list_factors", "get_challenge", "list_challenges",
                             "shard_hash"},
            "none": set(),
        }
        for kind, role in roles.items():
            with connect(db, user=role) as c:
                for name, (statement, args) in reads.items():
                    if name in allowed[kind]:
                        assert c.execute(statement, args).fetchall(), (kind, name)
                    else:
                        with refused("42501"):
                            c.execute(statement, args)
    finally:
        with connect(db) as c:
            for role in roles.values():
                c.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                c.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def import_document(conn, document):
    """import_identity(document): the number of factors imported."""
    return conn.execute("SELECT totp.import_identity(%s) AS n", (psycopg.types.json.Jsonb(document),)).fetchone()["n"]


def move(source, destination, identity, to):
    document = source.execute("SELECT totp.release_identity(%s, %s) AS d", (identity, to)).fetchone()["d"]
    return document, import_document(destination, document)


@pytest.mark.step_bounded
def test_a_moved_identity_keeps_factors_counters_and_replay_guard(p0, p1):
    mine = identity_on(0)
    factor = verified_factor(p0, SERVICE, mine)
    unverified = new_factor(p0, SERVICE, mine, "tablet")
    p0.execute("SELECT * FROM totp.verify_factor(%s, %s, %s, %s)",
               (SERVICE, mine, unverified["sid"], wrong_code(oathtool(unverified["binding_secret"]))))
    wait_inside_step(30)
    code = oathtool(factor["binding_secret"])
    approved = p0.execute("SELECT * FROM totp.create_challenge(%s, %s, %s, %s)",
                          (SERVICE, mine, factor["sid"], code)).fetchone()
    assert approved["status"] == "approved"
    before = p0.execute("SELECT last_step, failed_verifications, challenges_in_day, sid FROM totp_private.factors "
                        "WHERE identity = %s ORDER BY sid", (mine,)).fetchall()
    p0_key = p0.execute("SELECT key_id FROM totp_private.keys WHERE state = 'current'").fetchone()["key_id"]

    document, imported = move(p0, p1, mine, 1)
    assert imported == 2
    assert set(document["secrets"]) == {factor["sid"], unverified["sid"]}
    # The source refuses the identity now; nothing of it is left there, and no event was recorded.
    with refused("55000") as info:
        p0.execute("SELECT * FROM totp.list_factors(%s, %s)", (SERVICE, mine))
    assert info.value.diag.message_primary == "identity belongs to partition 1"
    for table in ("entities", "factors", "factor_secrets", "challenges"):
        assert p0.execute(f"SELECT count(*) AS n FROM totp_private.{table} WHERE identity = %s",
                          (mine,)).fetchone()["n"] == 0, table
    assert p0.execute("SELECT count(*) AS n FROM totp.events WHERE entity_identity = %s AND type = 'factor.deleted'",
                      (mine,)).fetchone()["n"] == 0
    # The destination holds it, sealed under its own key, with the same counters and guard.
    after = p1.execute("SELECT last_step, failed_verifications, challenges_in_day, sid FROM totp_private.factors "
                       "WHERE identity = %s ORDER BY sid", (mine,)).fetchall()
    assert after == before
    keys = p1.execute("SELECT DISTINCT s.key_id FROM totp_private.factor_secrets s WHERE identity = %s",
                      (mine,)).fetchall()
    p1_key = p1.execute("SELECT key_id FROM totp_private.keys WHERE state = 'current'").fetchone()["key_id"]
    assert [k["key_id"] for k in keys] == [p1_key] and p1_key != p0_key
    assert p1.execute("SELECT * FROM totp.get_challenge(%s, %s, %s)",
                      (SERVICE, mine, approved["sid"])).fetchone()["status"] == "approved"
    # The code used before the move is still spent; the factor still verifies with the next one.
    replay = p1.execute("SELECT * FROM totp.create_challenge(%s, %s, %s, %s)",
                        (SERVICE, mine, factor["sid"], code)).fetchone()
    assert replay["status"] == "pending"
    next_code = oathtool(factor["binding_secret"], at=time.time() + 30)
    answered = p1.execute("SELECT * FROM totp.update_challenge(%s, %s, %s, %s)",
                          (SERVICE, mine, replay["sid"], next_code)).fetchone()
    assert answered["status"] == "approved"
    # A retried import replaces what the first one wrote: same rows, nothing doubled.
    assert import_document(p1, document) == 2
    assert p1.execute("SELECT placements.part_no FROM totp_private.placements WHERE identity = %s",
                      (mine,)).fetchone()["part_no"] == 1


@pytest.mark.step_bounded
def test_release_waits_for_a_call_in_flight_and_its_document_has_what_that_call_committed(partitions, p0, p1):
    """A call on the identity that holds its factor row lock when release_identity starts: the
    release waits for it, and its document (what the destination gets) carries the counters and
    replay guard that call committed and the challenge it made. Arranged with the lock: session A
    has the call done but not committed; B's release is observed waiting on A's lock."""
    mine = identity_on(0)
    factor = verified_factor(p0, SERVICE, mine)
    wait_inside_step(30, margin=6)
    code = oathtool(factor["binding_secret"])
    before = p0.execute("SELECT last_step FROM totp_private.factors WHERE sid = %s",
                        (factor["sid"],)).fetchone()["last_step"]
    a = connect(partitions[0], autocommit=False)
    b = connect(partitions[0])
    try:
        approved = a.execute("SELECT * FROM totp.create_challenge(%s, %s, %s, %s)",
                             (SERVICE, mine, factor["sid"], code)).fetchone()
        assert approved["status"] == "approved"
        a_last_step = a.execute("SELECT last_step FROM totp_private.factors WHERE sid = %s",
                                (factor["sid"],)).fetchone()["last_step"]
        assert a_last_step > before
        a_pid, b_pid = a.info.backend_pid, b.info.backend_pid
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            released = pool.submit(lambda: b.execute("SELECT totp.release_identity(%s, 1) AS d",
                                                     (mine,)).fetchone()["d"])
            deadline = time.monotonic() + 30
            while True:  # B is parked on A's row lock (observed, not assumed)
                row = p0.execute("SELECT wait_event_type, pg_blocking_pids(pid) AS blockers "
                                 "FROM pg_stat_activity WHERE pid = %s", (b_pid,)).fetchone()
                if row["wait_event_type"] == "Lock" and a_pid in row["blockers"]:
                    break
                assert not released.done(), f"the release did not wait for the call in flight: {released.result()}"
                assert time.monotonic() < deadline, f"the release never waited on the call's lock: {row}"
                time.sleep(0.02)
            waiting = p0.execute("SELECT count(*) AS n FROM pg_locks WHERE pid = %s AND NOT granted",
                                 (b_pid,)).fetchone()["n"]
            assert waiting >= 1
            a.commit()
            document = released.result(timeout=30)
    finally:
        a.close()
        b.close()
    moved = {f["sid"]: f for f in document["factors"]}
    assert moved[factor["sid"]]["last_step"] == a_last_step
    assert approved["sid"] in {c["sid"] for c in document["challenges"]}
    assert {c["sid"]: c["status"] for c in document["challenges"]}[approved["sid"]] == "approved"
    # What the destination gets from that document keeps the code spent.
    assert import_document(p1, document) == 1
    replay = p1.execute("SELECT * FROM totp.create_challenge(%s, %s, %s, %s)",
                        (SERVICE, mine, factor["sid"], code)).fetchone()
    assert replay["status"] == "pending"
    assert p1.execute("SELECT status FROM totp.get_challenge(%s, %s, %s)",
                      (SERVICE, mine, approved["sid"])).fetchone()["status"] == "approved"


def test_export_and_release_refuse_an_identity_that_lives_elsewhere(p0, p1):
    """After a release the source refuses the identity's export (55000), as every other call:
    an empty document imported on the destination would wipe the identity there."""
    mine = identity_on(0)
    new_factor(p0, SERVICE, mine)
    move(p0, p1, mine, 1)
    for statement in ("SELECT totp.export_identity(%s)", "SELECT totp.release_identity(%s, 2)"):
        with refused("55000") as info:
            p0.execute(statement, (mine,))
        assert info.value.diag.message_primary == "identity belongs to partition 1"
    foreign = identity_on(3)
    with refused("55000"):
        p0.execute("SELECT totp.export_identity(%s)", (foreign,))
    assert p1.execute("SELECT count(*) AS n FROM totp.list_factors(%s, %s)", (SERVICE, mine)).fetchone()["n"] == 1


def test_moving_back_home_drops_the_placement(p0, p1):
    mine = identity_on(0)
    new_factor(p0, SERVICE, mine)
    move(p0, p1, mine, 1)
    document, imported = move(p1, p0, mine, 0)
    assert imported == 1
    assert p0.execute("SELECT count(*) AS n FROM totp_private.placements WHERE identity = %s",
                      (mine,)).fetchone()["n"] == 0
    # Home again: neither partition needs a placement; the hash routes it, and p1 refuses it.
    assert p1.execute("SELECT count(*) AS n FROM totp_private.placements WHERE identity = %s",
                      (mine,)).fetchone()["n"] == 0
    assert p0.execute("SELECT count(*) AS n FROM totp.list_factors(%s, %s)", (SERVICE, mine)).fetchone()["n"] == 1
    with refused("55000"):
        p1.execute("SELECT * FROM totp.list_factors(%s, %s)", (SERVICE, mine))


def test_imports_refuse_documents_they_cannot_trust(p0, p1):
    mine = identity_on(0)
    new_factor(p0, SERVICE, mine)
    document = p0.execute("SELECT totp.export_identity(%s) AS d", (mine,)).fetchone()["d"]
    assert len(document["factors"]) == 1  # export alone keeps the identity where it is
    assert p0.execute("SELECT count(*) AS n FROM totp.list_factors(%s, %s)", (SERVICE, mine)).fetchone()["n"] == 1
    with refused("22023"):
        import_document(p1, {**document, "format": "something else"})
    stray = dict(document, factors=[dict(document["factors"][0], identity="someone-else")])
    with refused("22023"):
        import_document(p1, stray)
    with refused("22023"):
        import_document(p1, dict(document, secrets={}))
    with refused("22023"):
        import_document(p1, dict(document, secrets={document["factors"][0]["sid"]: "not base32 !"}))
    missing_service = dict(document, entities=[dict(document["entities"][0], service_sid="VA" + "9" * 32)])
    with refused("P0002", 20404):
        import_document(p1, missing_service)
    assert p1.execute("SELECT count(*) AS n FROM totp_private.entities WHERE identity = %s",
                      (mine,)).fetchone()["n"] == 0


def test_imports_refuse_challenges_of_factors_the_document_does_not_hold(p0, p1):
    """Challenges have no foreign key to their factor (0.7.0): a document's challenges must
    belong to its own verified factors, else a challenge could wait for a factor of its SID."""
    mine = identity_on(0)
    factor = verified_factor(p0, SERVICE, mine)
    unverified = new_factor(p0, SERVICE, mine, "tablet")
    p0.execute("SELECT * FROM totp.create_challenge(%s, %s, %s)", (SERVICE, mine, factor["sid"]))
    document = p0.execute("SELECT totp.export_identity(%s) AS d", (mine,)).fetchone()["d"]
    assert len(document["challenges"]) == 1
    for factor_sid in (unverified["sid"], "YF" + "0" * 32):
        with refused("22023") as info:
            import_document(p1, dict(document, challenges=[dict(document["challenges"][0], factor_sid=factor_sid)]))
        assert "challenges of its verified factors only" in info.value.diag.message_detail
    assert import_document(p1, document) == 2


def test_release_needs_a_partition_and_another_target(conn, p0):
    with refused("55000"):
        conn.execute("SELECT totp.release_identity('alice', 1)")
    mine = identity_on(0)
    for target in (0, 4, -1):
        with refused("22023"):
            p0.execute("SELECT totp.release_identity(%s, %s)", (mine, target))


def test_dump_and_restore_keep_the_partition_and_placements(partitions, p0, p1, tmp_path):
    mine = identity_on(0)
    new_factor(p0, SERVICE, mine)
    move(p0, p1, mine, 1)
    path = tmp_path / "p0.dump"
    out = subprocess.run([f"{PG_BIN}/pg_dump", "-Fc", "-f", str(path), "-d", partitions[0]], capture_output=True)
    assert out.returncode == 0, out.stderr.decode()
    target = "t_part_restored_" + uuid.uuid4().hex[:6]
    with connect("postgres") as admin:
        admin.execute(f'CREATE DATABASE "{target}"')
    try:
        out = subprocess.run([f"{PG_BIN}/pg_restore", "--exit-on-error", "-d", target, str(path)],
                             capture_output=True)
        assert out.returncode == 0, out.stderr.decode()
        with connect(target) as c:
            assert c.execute("SELECT part_no, part_count FROM totp_private.partition").fetchone() == \
                {"part_no": 0, "part_count": PARTS}
            assert c.execute("SELECT part_no FROM totp_private.placements WHERE identity = %s",
                             (mine,)).fetchone()["part_no"] == 1
            with refused("55000"):
                c.execute("SELECT * FROM totp.create_entity(%s, %s)", (SERVICE, identity_on(3)))
            with refused("55000"):
                c.execute("SELECT * FROM totp.create_entity(%s, %s)", (SERVICE, mine))
            c.execute("SELECT * FROM totp.create_entity(%s, %s)", (SERVICE, identity_on(0)))
    finally:
        with connect("postgres") as admin:
            admin.execute(f'DROP DATABASE "{target}" WITH (FORCE)')
