"""Sharded with PL/Proxy (issue 15; README "Sharding with PL/Proxy"): totp_verify on 4 partitions
on 2 servers behind a router database with totp_verify_router, as `scripts/sharded start` makes
it. Reads ROUTER_DSN and PARTITION_DSNS (space-separated libpq URIs, p0..p3); without them the
module fails under CI=true and skips otherwise (and conftest fails a run with skips).

Covers: the walk-through through the router with the app roles; a large part of the existing
contract tests (test_sequences, test_errors_and_limits) run again through the router, unchanged
(imported below with a `db` fixture that points them at the router); the routing hash on router
and partitions; the partition guard, also after pg_dump/pg_restore; every error's pass-through;
the 32-session race; partial failure and retry convergence of create/update/delete_service by
digest; a partition moved by dump/restore to the other server; identity moves; merged lists,
housekeeping, router-side triggers and privileges. No sleep arranges an overlap: the race is
parked on a row lock held on the partition and observed in pg_stat_activity.
"""

import concurrent.futures
import hashlib
import os
import subprocess
import threading
import time
import uuid

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

import test_errors_and_limits as tel
import test_sequences as tseq
from calls import call, ident
from conftest import PG_BIN, oathtool, refused, verified_factor, wait_inside_step

ROUTER_DSN = os.environ.get("ROUTER_DSN")
PARTITION_DSNS = os.environ.get("PARTITION_DSNS", "").split()
PARTS = 4


def _require_setup():
    if ROUTER_DSN and len(PARTITION_DSNS) == PARTS:
        return
    msg = "ROUTER_DSN and PARTITION_DSNS (4 partitions) are not set: run scripts/sharded start"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg)
    pytest.skip(msg)


def rconnect(**kwargs):
    """A connection to the router (as postgres unless user= is given)."""
    kwargs.setdefault("autocommit", True)
    kwargs.setdefault("row_factory", dict_row)
    return psycopg.connect(ROUTER_DSN, **kwargs)


def router_partition_dsn(n):
    """Partition n's libpq string as the router's server `totp_cluster` has it now (a test
    moves a partition to the other server), as postgres."""
    with rconnect() as r:
        opts = r.execute(
            "SELECT split_part(o, '=', 1) AS k, substr(o, strpos(o, '=') + 1) AS v "
            "FROM pg_foreign_server s, unnest(s.srvoptions) o WHERE s.srvname = 'totp_cluster'").fetchall()
    return {o["k"]: o["v"] for o in opts}[f"p{n}"] + " user=postgres"


def pconnect(n, **kwargs):
    kwargs.setdefault("autocommit", True)
    kwargs.setdefault("row_factory", dict_row)
    return psycopg.connect(router_partition_dsn(n), **kwargs)


def home(identity):
    return int.from_bytes(hashlib.sha256(identity.encode()).digest()[:4], "big", signed=True) & (PARTS - 1)


def identity_on(part_no, prefix="user"):
    while True:
        i = ident(prefix)
        if home(i) == part_no:
            return i


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def db():
    """The router's database, for the imported contract tests: conftest's `conn` and
    `connect(db)` reach it through PGHOST/PGPORT/PGUSER, pointed at the router for this module."""
    _require_setup()
    params = conninfo_to_dict(ROUTER_DSN)
    saved = {k: os.environ.get(k) for k in ("PGHOST", "PGPORT", "PGUSER")}
    os.environ.update(PGHOST=params["host"], PGPORT=str(params["port"]), PGUSER=params.get("user", "postgres"))
    yield params["dbname"]
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def router(db):
    with rconnect() as c:
        yield c


@pytest.fixture
def as_role(db):
    opened = []

    def open_as(user):
        c = rconnect(user=user)
        opened.append(c)
        return c

    yield open_as
    for c in opened:
        c.close()


@pytest.fixture
def svc(router):
    return call(router, "create_service", "Sharded " + uuid.uuid4().hex[:6], issuer="Acme")


# ---------------------------------------------------------------------------------------------
# The contract tests, through the router. These are the tests of test_sequences and
# test_errors_and_limits that use only the state functions (no views, no totp_private, no pure
# functions, none of which the router database has); here they run with this module's `db`.

CONTRACT_TESTS = {
    tseq: [
        "test_short_codes_checked_with_independent_rfc4226", "test_other_lengths_are_wrong_codes_not_errors",
        "test_leading_zeros_count", "test_code_consumed_by_verify_factor_never_approves_a_challenge",
        "test_approved_code_cannot_approve_a_second_challenge", "test_code_approved_by_update_challenge_cannot_be_reused",
        "test_replayed_codes_count_as_wrong_attempts", "test_steps_older_than_the_last_accepted_are_refused",
        "test_concurrent_same_code_exactly_one_approved", "test_skew_window_on_verify_factor",
        "test_default_skew_is_one", "test_issuer_falls_back_to_friendly_name_and_follows_updates",
        "test_caller_secret_under_128_bits_refused", "test_binding_uri_percent_encodes_issuer_and_account",
        "test_update_factor_settings_take_effect", "test_update_factor_with_the_same_time_step_keeps_the_replay_guard",
    ],
    tel: [
        "test_20404_service_not_found", "test_60391_challenge_not_found_and_scoped",
        "test_name_lengths_count_characters_not_bytes", "test_60306_factor_arguments",
        "test_factor_argument_bounds_accepted", "test_malformed_sids", "test_identity_rules", "test_payload_shape",
        "test_secret_rules_and_no_leak", "test_json_arguments", "test_expiration_date_rules",
        "test_60301_entity_exists", "test_60318_challenge_on_unverified_factor",
        "test_60322_challenge_already_responded", "test_four_wrong_codes_still_allow_verification",
        "test_wrong_code_at_creation_counts_as_an_attempt",
    ],
}
for _module, _names in CONTRACT_TESTS.items():
    for _name in _names:
        globals()[f"{_name}__via_router"] = pytest.mark.step_bounded(getattr(_module, _name))
alice = tel.alice  # the fixture those tests use (their `svc` is this module's: a service made through the router)


# ---------------------------------------------------------------------------------------------
# Walk-through, routing, hash


@pytest.mark.step_bounded
def test_walkthrough_through_the_router_with_the_app_roles(as_role):
    admin, enrol, verify = as_role("totp_admin"), as_role("app_enrol"), as_role("app_verify")
    svc = call(admin, "create_service", "Acme Bank", issuer="Acme")
    identity = ident()
    f = call(enrol, "create_factor", svc["sid"], identity, "alice@example.com")
    assert f["status"] == "unverified" and f["binding_uri"].startswith("otpauth://totp/Acme:alice%40example.com?secret=")
    wait_inside_step(30, margin=2)
    now = time.time()
    previous, current = oathtool(f["binding_secret"], at=now - 30), oathtool(f["binding_secret"], at=now)
    assert call(enrol, "verify_factor", svc["sid"], identity, f["sid"], previous)["status"] == "verified"
    ch = call(verify, "create_challenge", svc["sid"], identity, f["sid"], previous)
    assert ch["status"] == "pending"  # the code verify_factor used is spent
    ok = call(verify, "create_challenge", svc["sid"], identity, f["sid"], current)
    assert ok["status"] == "approved" and ok["date_responded"] is not None
    replay = call(verify, "update_challenge", svc["sid"], identity, ch["sid"], current)
    assert replay["status"] == "pending"  # replay refused like a wrong code
    with refused("P0002", 60392):
        call(verify, "create_challenge", svc["sid"], "nobody", f["sid"])
    # Reads through the router, by identity.
    assert call(verify, "get_factor", svc["sid"], identity, f["sid"])["status"] == "verified"
    listed = verify.execute("SELECT sid, status FROM totp.list_challenges(%s, %s)", (svc["sid"], identity)).fetchall()
    assert [(r["sid"], r["status"]) for r in listed] == [(ch["sid"], "pending"), (ok["sid"], "approved")]
    assert call(verify, "has_recent_approval", svc["sid"], identity, "5 minutes")["has_recent_approval"] is True
    # The rows are on the identity's partition, and only there.
    for n in range(PARTS):
        with pconnect(n) as p:
            rows = p.execute("SELECT count(*) AS n FROM totp.factors WHERE identity = %s", (identity,)).fetchone()["n"]
            assert rows == (1 if n == home(identity) else 0)


def test_shard_hash_is_the_same_on_router_partitions_and_in_python(router):
    identities = [ident() for _ in range(200)] + [
        "", "a", "user-1", "Ünïcödé", "日本語のユーザー", "emoji-😀", "x" * 64, "ñ" * 100, "tab\there", "0"]
    rows = router.execute("SELECT i, totp.shard_hash(i) AS h FROM unnest(%s::text[]) i", (identities,)).fetchall()
    on_router = {r["i"]: r["h"] for r in rows}
    for i in identities:
        assert on_router[i] == int.from_bytes(hashlib.sha256(i.encode()).digest()[:4], "big", signed=True)
    for n in range(PARTS):
        with pconnect(n) as p:
            rows = p.execute("SELECT i, totp.shard_hash(i) AS h FROM unnest(%s::text[]) i", (identities,)).fetchall()
            assert {r["i"]: r["h"] for r in rows} == on_router


def test_identities_spread_over_every_partition_and_land_on_their_hash(router, svc):
    identities = [ident() for _ in range(40)]
    for i in identities:
        call(router, "create_entity", svc["sid"], i)
    for n in range(PARTS):
        with pconnect(n) as p:
            here = {r["identity"] for r in p.execute(
                "SELECT identity FROM totp.entities WHERE service_sid = %s", (svc["sid"],))}
        assert here == {i for i in identities if home(i) == n}
        assert here, f"no identity of 40 landed on partition {n}"


# ---------------------------------------------------------------------------------------------
# The partition guard


def test_a_call_on_the_wrong_partition_is_refused_and_the_right_one_works(router, svc):
    identity = identity_on(1)
    with pconnect(2) as wrong, pconnect(1) as right:
        for fn, args in [("create_entity", (svc["sid"], identity)),
                         ("create_factor", (svc["sid"], identity, "phone")),
                         ("get_entity", (svc["sid"], identity)),
                         ("list_factors", (svc["sid"], identity))]:
            with refused("55000") as info:
                call(wrong, fn, *args)
            assert info.value.diag.message_primary.startswith("identity belongs to partition 1")
        assert call(right, "create_entity", svc["sid"], identity)["identity"] == identity
    assert call(router, "get_entity", svc["sid"], identity)["identity"] == identity


def test_set_partition_survives_pg_dump_and_pg_restore(router, svc, tmp_path):
    on1, on3 = identity_on(1), identity_on(3)
    f = verified_factor(router, svc["sid"], on1)
    copy = "p1_copy_" + uuid.uuid4().hex[:6]
    src = conninfo_to_dict(router_partition_dsn(1))
    dump = tmp_path / "p1.dump"
    subprocess.run([f"{PG_BIN}/pg_dump", "-Fc", "-f", str(dump), "-d", router_partition_dsn(1)], check=True)
    with pconnect(1) as p:
        key_file = p.execute("SELECT current_setting('totp_verify.key_file') AS k").fetchone()["k"]
        p.execute(f'CREATE DATABASE "{copy}"')
        p.execute(f"ALTER DATABASE \"{copy}\" SET totp_verify.key_file = '{key_file}'")
    try:
        subprocess.run([f"{PG_BIN}/pg_restore", "-d", f"host={src['host']} port={src['port']} user=postgres dbname={copy}",
                        str(dump)], check=True)
        with psycopg.connect(f"host={src['host']} port={src['port']} user=postgres dbname={copy}",
                             autocommit=True, row_factory=dict_row) as c:
            with refused("55000") as info:
                call(c, "create_entity", svc["sid"], on3)
            assert info.value.diag.message_primary.startswith("identity belongs to partition 3")
            assert call(c, "get_factor", svc["sid"], on1, f["sid"])["status"] == "verified"
    finally:
        with pconnect(1) as p:
            p.execute(f'DROP DATABASE IF EXISTS "{copy}" WITH (FORCE)')


# ---------------------------------------------------------------------------------------------
# Errors pass through: SQLSTATE and Twilio code as on one node


def errors_world(router):
    """A service with low limits and the objects each failing call of README "Errors" needs."""
    sid = "VA" + uuid.uuid4().hex
    svc = call(router, "create_service", "Errors", sid=sid)
    call(router, "update_service", sid, max_factors_per_entity=2, max_factor_attempts=1,
         max_challenge_attempts=1, max_challenges_per_hour=2)
    w = {"svc": sid}
    w["alice"] = ident("alice")
    w["f"] = verified_factor(router, sid, w["alice"])
    w["unverified_identity"] = ident("unv")
    w["uf"] = call(router, "create_factor", sid, w["unverified_identity"], "u")
    return svc, w


def test_every_error_passes_through_with_its_sqlstate_and_twilio_code(router, as_role):
    svc, w = errors_world(router)
    s, a, f = w["svc"], w["alice"], w["f"]
    unknown_va, unknown_yf, unknown_yc = "VA" + uuid.uuid4().hex, "YF" + uuid.uuid4().hex, "YC" + uuid.uuid4().hex
    wrong = "000000" if oathtool(f["binding_secret"]) != "000000" else "111111"

    # Arrange the states the refusals need, through the router.
    call(router, "create_factor", s, a, "second")                          # alice now has 2 factors (the max)
    lim = ident("lim")                                                       # 60326: one creation a day
    svc2 = call(router, "create_service", "Creations")
    call(router, "update_service", svc2["sid"], max_factor_creations_per_day=1)
    f2 = call(router, "create_factor", svc2["sid"], lim, "one")
    call(router, "delete_factor", svc2["sid"], lim, f2["sid"])
    unv2 = ident("attempts")                                                 # 60310: one wrong code allowed
    uf2 = call(router, "create_factor", s, unv2, "u2")
    assert call(router, "verify_factor", s, unv2, uf2["sid"], wrong)["status"] == "unverified"
    denied = call(router, "create_challenge", s, a, f["sid"], wrong)         # 60308: one attempt, now denied
    assert denied["status"] == "denied"
    limited = ident("rate")                                                  # 60312: 2 challenges an hour
    lf = verified_factor(router, s, limited)
    call(router, "create_challenge", s, limited, lf["sid"])
    call(router, "create_challenge", s, limited, lf["sid"])
    resp_id = ident("resp")                                                  # 60322, 60323
    rf = verified_factor(router, s, resp_id)
    wait_inside_step(30, margin=2)
    approved = call(router, "create_challenge", s, resp_id, rf["sid"], oathtool(rf["binding_secret"]))
    assert approved["status"] == "approved"
    exp_id = ident("exp")
    ef = verified_factor(router, s, exp_id)
    pending = call(router, "create_challenge", s, exp_id, ef["sid"])
    call(router, "update_factor", s, exp_id, ef["sid"], code_length=8)      # expires pending challenges

    cases = [  # (label, twilio, sqlstate, identity (None: a service call), fn, args, kwargs)
        ("20404", 20404, "P0002", a, "create_factor", (unknown_va, a, "x"), {}),
        ("20404 get_service", 20404, "P0002", None, "get_service", (unknown_va,), {}),
        ("60392", 60392, "P0002", "nobody-1", "create_challenge", (s, "nobody-1", f["sid"]), {}),
        ("60390", 60390, "P0002", a, "verify_factor", (s, a, unknown_yf, "123456"), {}),
        ("60390 get_factor", 60390, "P0002", a, "get_factor", (s, a, unknown_yf), {}),
        ("60391", 60391, "P0002", a, "update_challenge", (s, a, unknown_yc, "123456"), {}),
        ("60391 get_challenge", 60391, "P0002", a, "get_challenge", (s, a, unknown_yc), {}),
        ("60200 create_service", 60200, "22023", None, "create_service", ("",), {}),
        ("60200 update_service", 60200, "22023", None, "update_service", (s,), {"time_step": 10}),
        ("60200 malformed VA", 60200, "22023", a, "create_entity", ("VA-not-a-sid", a), {}),
        ("60306 alg", 60306, "22023", a, "create_factor", (s, a, "x"), {"alg": "md5"}),
        ("60306 identity", 60306, "22023", "bad identity!", "create_entity", (s, "bad identity!"), {}),
        ("60306 payload", 60306, "22023", a, "create_challenge", (s, a, f["sid"]), {"auth_payload": "12a456"}),
        ("60306 NULL", 60306, "22023", None, "create_entity", (s, None), {}),
        ("60301", 60301, "23505", a, "create_entity", (s, a), {}),
        ("60317", 60317, "23505", resp_id, "create_factor", (s, resp_id, "dup"), {"sid": rf["sid"], "secret": "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"}),
        ("23505 service settings", None, "23505", None, "create_service", ("Other name",), {"sid": s}),
        ("60315", 60315, "54000", a, "create_factor", (s, a, "third"), {}),
        ("60326", 60326, "54000", lim, "create_factor", (svc2["sid"], lim, "two"), {}),
        ("60310", 60310, "54000", unv2, "verify_factor", (s, unv2, uf2["sid"], wrong), {}),
        ("60308", 60308, "54000", a, "update_challenge", (s, a, denied["sid"], wrong), {}),
        ("60312", 60312, "54000", limited, "create_challenge", (s, limited, lf["sid"]), {}),
        ("60318", 60318, "55000", w["unverified_identity"], "create_challenge", (s, w["unverified_identity"], w["uf"]["sid"]), {}),
        ("60322", 60322, "55000", resp_id, "update_challenge", (s, resp_id, approved["sid"], wrong), {}),
        ("60323", 60323, "55000", exp_id, "update_challenge", (s, exp_id, pending["sid"], "12345678"), {}),
    ]
    for label, twilio, sqlstate, identity, fn, args, kwargs in cases:
        with refused(sqlstate, twilio) as via_router:
            call(router, fn, *args, **kwargs)
        part = home(identity) if identity is not None else 0
        with pconnect(part) as p:
            with refused(sqlstate, twilio) as direct:
                call(p, fn, *args, **kwargs)
        r, d = via_router.value, direct.value
        assert r.sqlstate == d.sqlstate, label
        assert d.diag.message_primary in r.diag.message_primary, (label, r.diag.message_primary)
        for text in (str(r), r.diag.message_detail or "", r.diag.message_hint or ""):
            assert wrong not in text and "JBSWY3DP" not in text, (label, text)
    # Privileges are the router's own: no grant is 42501 before any partition is asked.
    with refused("42501"):
        call(as_role("app_verify"), "create_factor", s, a, "x")
    with refused("42501"):
        call(as_role("app_enrol"), "update_service", s, friendly_name="x")


# ---------------------------------------------------------------------------------------------
# 32 sessions through the router, the same right code: exactly one approval


@pytest.mark.step_bounded
def test_32_router_sessions_with_the_same_code_give_exactly_one_approval(router, svc):
    n = 32
    identity = ident("race")
    f = verified_factor(router, svc["sid"], identity)
    part = home(identity)
    wait_inside_step(30, margin=4)
    code = oathtool(f["binding_secret"])
    sessions = [rconnect(user="app_verify") for _ in range(n)]
    for c in sessions:  # each router session has its connection to the partition open
        c.execute("SELECT * FROM totp.get_factor(%s, %s, %s)", (svc["sid"], identity, f["sid"]))
    barrier = threading.Barrier(n + 1)
    blocker = pconnect(part, autocommit=False)
    watcher = pconnect(part)
    try:
        blocker.execute("SELECT 1 FROM totp_private.factors WHERE identity = %s AND sid = %s FOR UPDATE",
                        (identity, f["sid"]))

        def attempt(c):
            barrier.wait()
            return call(c, "create_challenge", svc["sid"], identity, f["sid"], code)["status"]

        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            futures = [pool.submit(attempt, c) for c in sessions]
            barrier.wait()
            deadline = time.monotonic() + 60
            while True:  # observe all 32 parked on the factor's row lock, then let them go
                waiting = watcher.execute(
                    "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = current_database() "
                    "AND usename = 'app_verify' AND wait_event_type = 'Lock'").fetchone()["n"]
                if waiting == n:
                    break
                assert time.monotonic() < deadline, f"only {waiting} of {n} sessions reached the lock"
                time.sleep(0.05)
            blocker.rollback()
            statuses = [fu.result(timeout=60) for fu in futures]
    finally:
        blocker.close()
        watcher.close()
        for c in sessions:
            c.close()
    assert sorted(statuses) == ["approved"] + ["pending"] * (n - 1)
    rows = router.execute("SELECT status FROM totp.list_challenges(%s, %s)", (svc["sid"], identity)).fetchall()
    assert sorted(r["status"] for r in rows) == ["approved"] + ["pending"] * (n - 1)


# ---------------------------------------------------------------------------------------------
# Services on every partition: partial failure, retry, convergence (by digest)


def digests(router):
    return [r["digest"] for r in router.execute("SELECT * FROM totp.services_digest_all() ORDER BY part_no")]


def test_create_service_fails_on_one_partition_then_a_retry_converges(router):
    sid = "VA" + uuid.uuid4().hex
    with pconnect(2) as p2:  # a conflicting service made directly on partition 2
        call(p2, "create_service", "Squatter", sid=sid)
    with refused("23505") as info:
        call(router, "create_service", "Real", issuer="Acme", sid=sid)
    assert "service already exists with other settings" in info.value.diag.message_primary
    assert sid in info.value.diag.message_hint and "retry" in info.value.diag.message_hint
    # The other partitions committed it, or some did not (observed: it depends on timing what
    # PL/Proxy's RUN ON ALL leaves done on the others when one fails): the partitions disagree.
    assert digests(router)[2] not in digests(router)[:2] + digests(router)[3:]
    for n in (0, 1, 3):
        with pconnect(n) as p:
            rows = p.execute("SELECT friendly_name FROM totp.services WHERE sid = %s", (sid,)).fetchall()
            assert rows in ([], [{"friendly_name": "Real"}])
    with pconnect(2) as p2:
        p2.execute("SELECT totp.delete_service(%s)", (sid,))
    row = call(router, "create_service", "Real", issuer="Acme", sid=sid)   # the retry
    assert row["sid"] == sid and row["friendly_name"] == "Real"
    assert len(set(digests(router))) == 1
    assert call(router, "create_service", "Real", issuer="Acme", sid=sid)["sid"] == sid  # idempotent


def test_update_service_fails_on_one_partition_then_a_retry_with_every_setting_converges(router, svc):
    sid = svc["sid"]
    with pconnect(3) as p3:  # partition 3 alone has a lower max_challenge_ttl
        call(p3, "update_service", sid, max_challenge_ttl="10 minutes")
    with refused("22023", 60200) as info:
        call(router, "update_service", sid, challenge_ttl="30 minutes", max_challenges_per_hour=7)
    assert "retry" in info.value.diag.message_hint
    d = digests(router)
    assert d[3] not in d[:3]  # the others took the change, or some did not (timing)
    # A later change that succeeds everywhere is refused as long as the partitions disagree.
    with refused("55000") as info:
        call(router, "update_service", sid, friendly_name="Renamed")
    assert info.value.diag.message_primary.startswith("partitions disagree on service")
    row = call(router, "update_service", sid, friendly_name="Renamed", max_challenge_ttl="60 minutes",
               challenge_ttl="30 minutes", max_challenges_per_hour=7)
    assert row["challenge_ttl"].total_seconds() == 1800 and row["max_challenges_per_hour"] == 7
    assert len(set(digests(router))) == 1
    assert call(router, "get_service", sid)["friendly_name"] == "Renamed"


def test_delete_service_fails_on_one_partition_then_a_retry_finishes_it(router):
    svc = call(router, "create_service", "Doomed")
    identity = identity_on(1)
    verified_factor(router, svc["sid"], identity)
    with pconnect(1) as p1:
        p1.execute("REVOKE EXECUTE ON FUNCTION totp.delete_service FROM totp_admin")
    try:
        with rconnect(user="totp_admin") as admin:
            with refused("42501") as info:
                admin.execute("SELECT totp.delete_service(%s)", (svc["sid"],))
            assert "partitions {1}" in info.value.diag.message_hint
            d = digests(router)
            assert d[0] == d[2] == d[3] != d[1]
            with pconnect(1) as p1:
                p1.execute("GRANT EXECUTE ON FUNCTION totp.delete_service TO totp_admin")
            admin.execute("SELECT totp.delete_service(%s)", (svc["sid"],))  # 20404 on 0, 2, 3 counts as done
            assert len(set(digests(router))) == 1
            with refused("P0002", 20404):
                admin.execute("SELECT totp.delete_service(%s)", (svc["sid"],))
    finally:
        with pconnect(1) as p1:
            p1.execute("GRANT EXECUTE ON FUNCTION totp.delete_service TO totp_admin")
    with refused("P0002", 20404):
        call(router, "get_factor", svc["sid"], identity, "YF" + uuid.uuid4().hex)


# ---------------------------------------------------------------------------------------------
# Moves: a partition to the other server (dump/restore), an identity to another partition


def step_code(f, step_offset, at=None):
    at = time.time() if at is None else at
    return oathtool(f["binding_secret"], at=at + step_offset * 30)


@pytest.mark.step_bounded
def test_a_partition_moved_to_the_other_server_by_dump_and_restore_keeps_factors_verifying(router, svc, tmp_path):
    identity = identity_on(2)
    f = verified_factor(router, svc["sid"], identity)
    wait_inside_step(30, margin=6)
    now = time.time()
    used = step_code(f, 0, now)
    assert call(router, "create_challenge", svc["sid"], identity, f["sid"], used)["status"] == "approved"
    old = conninfo_to_dict(router_partition_dsn(2))
    others = {conninfo_to_dict(router_partition_dsn(n))["host"]: conninfo_to_dict(router_partition_dsn(n))
              for n in (0, 1)}
    target = next(v for h, v in others.items() if h != old["host"])
    dump = tmp_path / "p2.dump"
    with pconnect(2) as p:
        key_file = p.execute("SELECT current_setting('totp_verify.key_file') AS k").fetchone()["k"]
    subprocess.run([f"{PG_BIN}/pg_dump", "-Fc", "-f", str(dump), "-d", router_partition_dsn(2)], check=True)
    tdsn = f"host={target['host']} port={target['port']} user=postgres"
    with psycopg.connect(tdsn + " dbname=postgres", autocommit=True) as t:
        t.execute("DROP DATABASE IF EXISTS p2 WITH (FORCE)")
        t.execute("CREATE DATABASE p2")
        t.execute(f"ALTER DATABASE p2 SET totp_verify.key_file = '{key_file}'")
    subprocess.run([f"{PG_BIN}/pg_restore", "-d", tdsn + " dbname=p2", str(dump)], check=True)
    with psycopg.connect(f"host={old['host']} port={old['port']} user=postgres dbname=postgres", autocommit=True) as o:
        # The router cannot reach the old copy: its connections there end, the database is renamed.
        o.execute("ALTER DATABASE p2 WITH ALLOW_CONNECTIONS false")
        o.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'p2'")
        o.execute("ALTER DATABASE p2 RENAME TO p2_moved_away")
    try:
        router.execute(f"ALTER SERVER totp_cluster OPTIONS (SET p2 'host={target['host']} port={target['port']} dbname=p2')")
        with rconnect() as fresh:
            assert call(fresh, "create_challenge", svc["sid"], identity, f["sid"], used)["status"] == "pending"
            assert call(fresh, "create_challenge", svc["sid"], identity, f["sid"], step_code(f, 1, now))["status"] == "approved"
            with refused("55000"):  # the guard came along
                with pconnect(2) as p:
                    call(p, "create_entity", svc["sid"], identity_on(0))
        # A session that was open before the repointing follows it too.
        assert call(router, "get_factor", svc["sid"], identity, f["sid"])["status"] == "verified"
    finally:
        with psycopg.connect(f"host={old['host']} port={old['port']} user=postgres dbname=postgres", autocommit=True) as o:
            o.execute("DROP DATABASE p2_moved_away WITH (FORCE)")


@pytest.mark.step_bounded
def test_an_identity_move_keeps_factors_counters_and_the_replay_guard(router, svc):
    identity = ident("mover")
    src = home(identity)
    dst = (src + 1) % PARTS
    f = verified_factor(router, svc["sid"], identity)
    wait_inside_step(30, margin=8)
    now = time.time()
    used = step_code(f, 0, now)
    wrong = "000000" if used != "000000" else "111111"
    assert call(router, "create_challenge", svc["sid"], identity, f["sid"], used)["status"] == "approved"
    pend = call(router, "create_challenge", svc["sid"], identity, f["sid"], wrong)
    assert pend["status"] == "pending"  # one wrong attempt counted on it
    with pconnect(src) as p:
        before = p.execute("SELECT last_step, failed_verifications, challenges_in_hour, replay_guards "
                           "FROM totp_private.factors WHERE identity = %s", (identity,)).fetchone()
        pend_before = p.execute("SELECT failed_attempts FROM totp_private.challenges WHERE sid = %s",
                                (pend["sid"],)).fetchone()
    moved = router.execute("CALL totp_router.move_identity(%s, %s)", (identity, dst)).fetchone()
    assert moved["factors"] == 1
    assert router.execute("SELECT totp_router.partition_of(%s) & 3 AS p", (identity,)).fetchone()["p"] == dst
    with pconnect(dst) as p:
        after = p.execute("SELECT last_step, failed_verifications, challenges_in_hour, replay_guards "
                          "FROM totp_private.factors WHERE identity = %s", (identity,)).fetchone()
        assert after == before
        assert p.execute("SELECT failed_attempts FROM totp_private.challenges WHERE sid = %s",
                         (pend["sid"],)).fetchone() == pend_before
    with pconnect(src) as p:
        assert p.execute("SELECT count(*) AS n FROM totp_private.factors WHERE identity = %s",
                         (identity,)).fetchone()["n"] == 0
        with refused("55000") as info:
            call(p, "get_entity", svc["sid"], identity)
        assert info.value.diag.message_primary.startswith(f"identity belongs to partition {dst}")
    # Through the router: the same factor; the code used before the move is still refused.
    assert call(router, "get_factor", svc["sid"], identity, f["sid"])["status"] == "verified"
    assert call(router, "update_challenge", svc["sid"], identity, pend["sid"], used)["status"] == "pending"
    assert call(router, "update_challenge", svc["sid"], identity, pend["sid"], step_code(f, 1, now))["status"] == "approved"
    # Idempotent: the same CALL again changes nothing; a move left half-done (marked moving) is
    # refused until the same CALL finishes it.
    router.execute("CALL totp_router.move_identity(%s, %s)", (identity, dst))
    router.execute("UPDATE totp_router.placements SET moving_to = %s WHERE identity = %s", (src, identity))
    with refused("55000") as info:
        call(router, "get_factor", svc["sid"], identity, f["sid"])
    assert "being moved" in info.value.diag.message_primary
    router.execute("CALL totp_router.move_identity(%s, %s)", (identity, src))  # back home
    assert call(router, "get_factor", svc["sid"], identity, f["sid"])["status"] == "verified"
    assert call(router, "create_challenge", svc["sid"], identity, f["sid"], step_code(f, 1, now))["status"] == "pending"
    with pconnect(dst) as p:
        with refused("55000"):
            call(p, "get_entity", svc["sid"], identity)


def factor_state(part, identity):
    with pconnect(part) as p:
        return p.execute("SELECT sid, last_step, failed_verifications, challenges_in_hour, replay_guards "
                         "FROM totp_private.factors WHERE identity = %s ORDER BY sid", (identity,)).fetchall()


def challenge_state(part, identity):
    with pconnect(part) as p:
        return p.execute("SELECT sid, status, failed_attempts FROM totp_private.challenges "
                         "WHERE identity = %s ORDER BY sid", (identity,)).fetchall()


@pytest.mark.step_bounded
def test_a_move_that_failed_after_the_release_is_finished_by_the_same_call(router, svc):
    """The retry path of move_identity: a move that stopped after step 3 (the source released the
    identity, the destination imported it, the placement still says moving) is finished by the
    same CALL, with the counters and replay guard the destination has."""
    identity = ident("retry")
    src = home(identity)
    dst = (src + 1) % PARTS
    f = verified_factor(router, svc["sid"], identity)
    wait_inside_step(30, margin=8)
    now = time.time()
    used = step_code(f, 0, now)
    wrong = "000000" if used != "000000" else "111111"
    assert call(router, "create_challenge", svc["sid"], identity, f["sid"], used)["status"] == "approved"
    pend = call(router, "create_challenge", svc["sid"], identity, f["sid"], wrong)
    before, challenges_before = factor_state(src, identity), challenge_state(src, identity)
    # Steps 1 to 3 by hand, as the procedure runs them; then the move "fails" before step 4.
    router.execute("INSERT INTO totp_router.placements (identity, part_no, moving_to) VALUES (%s, %s, %s)",
                   (identity, src, dst))
    with pconnect(src) as s, pconnect(dst) as d:
        copy = s.execute("SELECT totp.export_identity(%s) AS d", (identity,)).fetchone()["d"]
        d.execute("SELECT totp.import_identity(%s)", (psycopg.types.json.Jsonb(copy),))
        final = s.execute("SELECT totp.release_identity(%s, %s) AS d", (identity, dst)).fetchone()["d"]
        d.execute("SELECT totp.import_identity(%s)", (psycopg.types.json.Jsonb(final),))
    with refused("55000") as info:
        call(router, "get_factor", svc["sid"], identity, f["sid"])
    assert "being moved" in info.value.diag.message_primary
    moved = router.execute("CALL totp_router.move_identity(%s, %s)", (identity, dst)).fetchone()
    assert moved["factors"] is None  # nothing left to copy: the source had released it
    assert router.execute("SELECT part_no, moving_to FROM totp_router.placements WHERE identity = %s",
                          (identity,)).fetchone() == {"part_no": dst, "moving_to": None}
    assert factor_state(dst, identity) == before and before
    assert challenge_state(dst, identity) == challenges_before
    assert factor_state(src, identity) == []
    # Through the router, on the destination: the code used before the move is still spent.
    assert call(router, "update_challenge", svc["sid"], identity, pend["sid"], used)["status"] == "pending"
    assert call(router, "update_challenge", svc["sid"], identity, pend["sid"], step_code(f, 1, now))["status"] == "approved"


def test_a_move_elsewhere_is_refused_while_a_move_is_unfinished(router, svc):
    identity = ident("stuck")
    src = home(identity)
    x, y = (src + 1) % PARTS, (src + 2) % PARTS
    f = verified_factor(router, svc["sid"], identity)
    router.execute("INSERT INTO totp_router.placements (identity, part_no, moving_to) VALUES (%s, %s, %s)",
                   (identity, src, x))
    for target in (y, src):
        with refused("55000") as info:
            router.execute("CALL totp_router.move_identity(%s, %s)", (identity, target))
        assert info.value.diag.message_primary == f"identity is being moved to partition {x}"
        assert f"CALL totp_router.move_identity('{identity}', {x})" in info.value.diag.message_hint
    assert router.execute("SELECT part_no, moving_to FROM totp_router.placements WHERE identity = %s",
                          (identity,)).fetchone() == {"part_no": src, "moving_to": x}
    with pconnect(y) as p:
        assert p.execute("SELECT count(*) AS n FROM totp_private.factors WHERE identity = %s",
                         (identity,)).fetchone()["n"] == 0
    # Finishing the move to x, then moving on to y, works.
    router.execute("CALL totp_router.move_identity(%s, %s)", (identity, x))
    router.execute("CALL totp_router.move_identity(%s, %s)", (identity, y))
    assert router.execute("SELECT part_no, moving_to FROM totp_router.placements WHERE identity = %s",
                          (identity,)).fetchone() == {"part_no": y, "moving_to": None}
    assert call(router, "get_factor", svc["sid"], identity, f["sid"])["status"] == "verified"


def test_a_move_does_not_take_another_partitions_number_for_its_target(router, svc):
    """The retry check matches "identity belongs to partition 1" exactly: a source that says the
    identity belongs to partition 12 is not a finished move to partition 1."""
    identity = identity_on(0, "twelve")
    f = verified_factor(router, svc["sid"], identity)
    with pconnect(0) as p:
        p.execute("INSERT INTO totp_private.placements (identity, part_no) VALUES (%s, 12)", (identity,))
    try:
        with refused("55000") as info:
            router.execute("CALL totp_router.move_identity(%s, 1)", (identity,))
        assert info.value.diag.message_primary.endswith("identity belongs to partition 12")
        assert router.execute("SELECT part_no, moving_to FROM totp_router.placements WHERE identity = %s",
                              (identity,)).fetchone() == {"part_no": 0, "moving_to": 1}
    finally:
        with pconnect(0) as p:
            p.execute("DELETE FROM totp_private.placements WHERE identity = %s", (identity,))
        router.execute("DELETE FROM totp_router.placements WHERE identity = %s", (identity,))
    assert call(router, "get_factor", svc["sid"], identity, f["sid"])["status"] == "verified"
    with pconnect(1) as p:
        assert p.execute("SELECT count(*) AS n FROM totp_private.factors WHERE identity = %s",
                         (identity,)).fetchone()["n"] == 0


def test_merged_lists_show_a_half_moved_identity_once(router, svc):
    """A move that stopped after its copy (step 2) leaves the identity's rows on two partitions:
    the merged lists show each row once."""
    identity = ident("half")
    src = home(identity)
    dst = (src + 1) % PARTS
    f = verified_factor(router, svc["sid"], identity)
    ch = call(router, "create_challenge", svc["sid"], identity, f["sid"])
    with pconnect(src) as s, pconnect(dst) as d:
        copy = s.execute("SELECT totp.export_identity(%s) AS d", (identity,)).fetchone()["d"]
        d.execute("SELECT totp.import_identity(%s)", (psycopg.types.json.Jsonb(copy),))
    try:
        rows = router.execute("SELECT sid FROM totp_router.list_challenges_all(%s)", (svc["sid"],)).fetchall()
        assert [r["sid"] for r in rows] == [ch["sid"]]
        rows = router.execute("SELECT sid FROM totp_router.list_challenges_all(%s, max_rows => 1)",
                              (svc["sid"],)).fetchall()
        assert [r["sid"] for r in rows] == [ch["sid"]]
        rows = router.execute("SELECT identity FROM totp_router.list_entities(%s)", (svc["sid"],)).fetchall()
        assert [r["identity"] for r in rows] == [identity]
        assert router.execute("SELECT sid FROM totp_router.find_challenge(%s, %s)",
                              (svc["sid"], ch["sid"])).fetchone()["sid"] == ch["sid"]
    finally:
        with pconnect(dst) as d:  # undo the copy: released back to its home, dst refuses it again
            d.execute("SELECT totp.release_identity(%s, %s)", (identity, src))
    assert call(router, "get_factor", svc["sid"], identity, f["sid"])["status"] == "verified"


def test_user_mappings_are_for_superusers_only(router, as_role):
    """Any role with USAGE on the server may manage its own user mapping in PostgreSQL: the
    router's event trigger refuses it, so an application role cannot map itself to a partition
    superuser."""
    app = as_role("app_verify")
    statements = [
        "ALTER USER MAPPING FOR app_verify SERVER totp_cluster OPTIONS (SET user 'postgres')",
        "ALTER USER MAPPING FOR CURRENT_USER SERVER totp_cluster OPTIONS (ADD password 'x')",
        "DROP USER MAPPING FOR app_verify SERVER totp_cluster",
        "CREATE USER MAPPING FOR totp_admin SERVER totp_cluster OPTIONS (user 'postgres')",
    ]

    def mapping():
        return router.execute("SELECT umoptions FROM pg_user_mappings WHERE srvname = 'totp_cluster' "
                              "AND usename = 'app_verify'").fetchone()
    try:
        for sql in statements:
            with refused("42501") as info:
                app.execute(sql)
            assert "user mappings are for superusers only" in info.value.diag.message_primary, sql
        assert mapping() == {"umoptions": ["user=app_verify"]}
    finally:  # (before the fix the first statement took effect)
        if mapping() is None:
            router.execute("CREATE USER MAPPING FOR app_verify SERVER totp_cluster OPTIONS (user 'app_verify')")
        router.execute("ALTER USER MAPPING FOR app_verify SERVER totp_cluster OPTIONS (SET user 'app_verify')")
    # A superuser still manages them; the trigger is an extension member with a pinned path.
    router.execute("ALTER USER MAPPING FOR app_verify SERVER totp_cluster OPTIONS (SET user 'app_verify')")
    trigger = router.execute(
        "SELECT t.evtevent, t.evttags, p.proconfig, d.deptype FROM pg_event_trigger t "
        "JOIN pg_proc p ON p.oid = t.evtfoid "
        "JOIN pg_depend d ON d.classid = 'pg_event_trigger'::regclass AND d.objid = t.oid "
        "AND d.refclassid = 'pg_extension'::regclass "
        "WHERE t.evtname = 'totp_router_user_mappings'").fetchone()
    assert trigger == {"evtevent": "ddl_command_start",
                       "evttags": ["CREATE USER MAPPING", "ALTER USER MAPPING", "DROP USER MAPPING"],
                       "proconfig": ["search_path=pg_catalog, pg_temp"], "deptype": "e"}
    ok = rconnect(user="app_verify")
    try:
        assert ok.execute("SELECT count(*) AS n FROM totp.list_services()").fetchone()["n"] >= 0
    finally:
        ok.close()


# ---------------------------------------------------------------------------------------------
# Merged lists, housekeeping, router-side triggers, privileges


def test_list_entities_pages_across_partitions_in_identity_order(router, svc):
    identities = sorted(ident("page") for _ in range(13))
    for i in identities:
        call(router, "create_entity", svc["sid"], i)
    seen, after = [], None
    while True:
        page = [r["identity"] for r in router.execute(
            "SELECT identity FROM totp_router.list_entities(%s, after_identity => %s, max_rows => 5)",
            (svc["sid"], after))]
        if not page:
            break
        seen += page
        after = page[-1]
    oracle = []
    for n in range(PARTS):
        with pconnect(n) as p:
            oracle += [r["identity"] for r in p.execute(
                "SELECT identity FROM totp.entities WHERE service_sid = %s", (svc["sid"],))]
    assert seen == sorted(oracle, key=lambda s: s.encode()) and set(seen) == set(identities)


def test_list_entities_pages_in_byte_order_whatever_the_collation(router, svc):
    """Mixed case and digits, whose order differs between collations: pages follow byte order
    (COLLATE "C" on the partitions' comparison and order and on the router's merge)."""
    stem = uuid.uuid4().hex[:6]
    identities = [f"{p}-{stem}" for p in ("Zed", "alpha", "Beta", "beta", "0zero", "ALPHA", "a1", "A-1", "z9", "Z")]
    for i in identities:
        call(router, "create_entity", svc["sid"], i)
    seen, after = [], None
    while True:
        page = [r["identity"] for r in router.execute(
            "SELECT identity FROM totp_router.list_entities(%s, after_identity => %s, max_rows => 3)",
            (svc["sid"], after))]
        if not page:
            break
        seen += page
        after = page[-1]
    assert seen == sorted(identities, key=lambda s: s.encode())
    for fn in ("totp_router.list_entities", "totp_router.list_entities_part"):
        src = router.execute("SELECT prosrc FROM pg_proc WHERE oid = %s::regproc", (fn,)).fetchone()["prosrc"]
        assert src.count('COLLATE pg_catalog."C"') >= 2, fn


def test_list_challenges_all_and_find_challenge(router, svc):
    made = []
    for _ in range(6):
        i = ident("lc")
        f = call(router, "create_factor", svc["sid"], i, "x")
        call(router, "verify_factor", svc["sid"], i, f["sid"], oathtool(f["binding_secret"], at=time.time() - 30))
        made.append(call(router, "create_challenge", svc["sid"], i, f["sid"]))
    rows = router.execute("SELECT sid, date_created FROM totp_router.list_challenges_all(%s, max_rows => 4)",
                          (svc["sid"],)).fetchall()
    last = rows[-1]
    rest = router.execute("SELECT sid FROM totp_router.list_challenges_all(%s, before_date => %s, before_sid => %s)",
                          (svc["sid"], last["date_created"], last["sid"])).fetchall()
    expected = sorted(made, key=lambda c: (c["date_created"], c["sid"]), reverse=True)
    assert [r["sid"] for r in rows] + [r["sid"] for r in rest] == [c["sid"] for c in expected]
    assert call(router, "get_service", svc["sid"])["sid"] == svc["sid"]
    found = router.execute("SELECT * FROM totp_router.find_challenge(%s, %s)", (svc["sid"], made[0]["sid"])).fetchone()
    assert found["identity"] == made[0]["identity"]
    with refused("P0002", 60391):
        router.execute("SELECT * FROM totp_router.find_challenge(%s, %s)", (svc["sid"], "YC" + uuid.uuid4().hex))


@pytest.mark.step_bounded
def test_housekeeping_on_every_partition(router, svc):
    identity = ident("keys")
    f = verified_factor(router, svc["sid"], identity)
    m = router.execute("SELECT * FROM totp.run_maintenance_all() ORDER BY part_no").fetchall()
    assert [r["part_no"] for r in m] == list(range(PARTS))
    r = router.execute("SELECT * FROM totp.rotate_key_all() ORDER BY part_no").fetchall()
    assert [x["part_no"] for x in r] == list(range(PARTS)) and all(x["unreadable"] == 0 for x in r)
    assert r[home(identity)]["resealed"] >= 1
    assert [x["part_no"] for x in router.execute("SELECT * FROM totp.retire_keys_all() ORDER BY part_no")] == list(range(PARTS))
    wait_inside_step(30, margin=2)
    assert call(router, "create_challenge", svc["sid"], identity, f["sid"], oathtool(f["binding_secret"]))["status"] == "approved"
    with refused("42501"):
        call(rconnect(user="totp_admin"), "rotate_key_all")


@pytest.mark.step_bounded
def test_router_side_triggers_for_application_tables(router, svc):
    t = "app_" + uuid.uuid4().hex[:8]
    router.execute(f"CREATE TABLE {t}_users (id text PRIMARY KEY)")
    router.execute(f"CREATE TRIGGER forget AFTER DELETE ON {t}_users FOR EACH ROW "
                   f"EXECUTE FUNCTION totp.forget_entity('{svc['sid']}', 'id')")
    router.execute(f"CREATE TABLE {t}_payouts (user_id text, amount int)")
    router.execute(f"CREATE TRIGGER step_up BEFORE INSERT ON {t}_payouts FOR EACH ROW "
                   f"EXECUTE FUNCTION totp.require_approval('{svc['sid']}', 'user_id', '5 minutes')")
    try:
        identity = ident("app")
        f = verified_factor(router, svc["sid"], identity)
        router.execute(f"INSERT INTO {t}_users VALUES (%s), ('never-enrolled'), ('not a valid identity!')", (identity,))
        with refused("42501"):
            router.execute(f"INSERT INTO {t}_payouts VALUES (%s, 1)", (identity,))
        wait_inside_step(30, margin=2)
        assert call(router, "create_challenge", svc["sid"], identity, f["sid"], oathtool(f["binding_secret"]))["status"] == "approved"
        router.execute(f"INSERT INTO {t}_payouts VALUES (%s, 1)", (identity,))
        # Not atomic: the partition's delete commits at once; the router's rollback keeps the
        # application row but not the entity.
        with router.transaction():
            router.execute(f"DELETE FROM {t}_users WHERE id = %s", (identity,))
            with refused("P0002", 60392):
                call(router, "get_entity", svc["sid"], identity)
            raise psycopg.Rollback()
        assert router.execute(f"SELECT count(*) AS n FROM {t}_users WHERE id = %s", (identity,)).fetchone()["n"] == 1
        with refused("P0002", 60392):
            call(router, "get_entity", svc["sid"], identity)
        router.execute(f"DELETE FROM {t}_users")  # rows without an entity, or never valid: nothing to forget
    finally:
        router.execute(f"DROP TABLE {t}_users, {t}_payouts")


def test_public_gets_nothing_on_the_router(router):
    role = "nobody_" + uuid.uuid4().hex[:6]
    router.execute(f"CREATE ROLE {role} LOGIN")
    try:
        with rconnect(user=role) as c:
            for sql in ["SELECT * FROM totp.create_challenge('VA' || repeat('0', 32), 'x', 'YF' || repeat('0', 32))",
                        "SELECT * FROM totp.list_services()", "SELECT totp_router.partition_of('x')",
                        "SELECT * FROM totp_router.placements"]:
                with refused("42501"):
                    c.execute(sql)
        leaks = router.execute(
            "SELECT p.oid::regprocedure::text AS f FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname IN ('totp', 'totp_router') AND has_function_privilege(%s, p.oid, 'EXECUTE')",
            (role,)).fetchall()
        assert leaks == []
    finally:
        router.execute(f"DROP ROLE {role}")


ROUTER_CATALOG = """
SELECT 'function ' || p.oid::regprocedure::text AS object,
       pg_get_functiondef(p.oid) || coalesce(p.proacl::text, '(default acl)')
         || coalesce(obj_description(p.oid, 'pg_proc'), '') AS definition
  FROM pg_proc p WHERE p.pronamespace IN ('totp'::regnamespace, 'totp_router'::regnamespace)
UNION ALL
SELECT 'event trigger ' || e.evtname, e.evtevent || e.evttags::text || e.evtfoid::regproc::text || e.evtenabled::text
  FROM pg_event_trigger e
UNION ALL
SELECT 'relation ' || c.oid::regclass::text, c.relkind::text || coalesce(c.relacl::text, '')
  FROM pg_class c WHERE c.relnamespace IN ('totp'::regnamespace, 'totp_router'::regnamespace)
UNION ALL
SELECT 'schema ' || n.nspname, coalesce(n.nspacl::text, '') || coalesce(obj_description(n.oid, 'pg_namespace'), '')
  FROM pg_namespace n WHERE n.nspname IN ('totp', 'totp_router')
ORDER BY 1
"""


def test_router_upgrade_from_0_1_0_gives_the_fresh_0_2_0(router):
    """totp_verify_router 0.1.0 shipped (stop 20); ALTER EXTENSION ... UPDATE must give exactly
    what a fresh install of the current version gives: every function's definition, ACL and
    comment, the user-mapping event trigger, relations and schemas."""
    names = [f"rupgrade_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    with rconnect() as r:
        for name in names:
            r.execute(f"CREATE DATABASE {name}")
    try:
        catalogs = []
        for name, steps in zip(names, (["CREATE EXTENSION totp_verify_router VERSION '0.1.0' CASCADE",
                                         "ALTER EXTENSION totp_verify_router UPDATE"],
                                        ["CREATE EXTENSION totp_verify_router CASCADE"])):
            with rconnect(dbname=name) as c:
                for step in steps:
                    c.execute(step)
                assert c.execute("SELECT extversion FROM pg_extension WHERE extname = 'totp_verify_router'"
                                 ).fetchone()["extversion"] == "0.2.0"
                catalogs.append(c.execute(ROUTER_CATALOG).fetchall())
        upgraded, fresh = catalogs
        assert [r["object"] for r in upgraded] == [r["object"] for r in fresh]
        differs = [u["object"] for u, f in zip(upgraded, fresh) if u["definition"] != f["definition"]]
        assert differs == []
        assert any(r["object"] == "event trigger totp_router_user_mappings" for r in fresh)
    finally:
        with rconnect() as r:
            for name in names:
                r.execute(f"DROP DATABASE IF EXISTS {name}")
