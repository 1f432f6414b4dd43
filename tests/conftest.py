"""Shared fixtures for the client tests: a fresh database per test module with the extension
created, connections as real clients (psycopg), and a real authenticator (oathtool).

The cluster comes from scripts/test (PGHOST/PGPORT/PGUSER); the server runs as `postgres`.
"""

import contextlib
import datetime as dt
import hashlib
import hmac
import os
import re
import struct
import subprocess
import time
import uuid
import warnings

import psycopg
import pytest
from psycopg.rows import dict_row


# The PostgreSQL the extension was installed into (scripts/lib.sh's TOTP_VERIFY_PG_CONFIG), for
# the tests that run its programs or start clusters of their own.
PG_BIN = subprocess.run(
    [os.environ.get("TOTP_VERIFY_PG_CONFIG", "/usr/lib/postgresql/15/bin/pg_config"), "--bindir"],
    check=True, capture_output=True, text=True,
).stdout.strip()


def connect(dbname, **kwargs):
    kwargs.setdefault("autocommit", True)
    kwargs.setdefault("row_factory", dict_row)
    return psycopg.connect(dbname=dbname, **kwargs)


@pytest.fixture(scope="module")
def db(request):
    """A new database with `CREATE EXTENSION totp_verify`, dropped after the module."""
    name = "t_" + re.sub(r"\W", "_", request.module.__name__)[-40:] + "_" + uuid.uuid4().hex[:6]
    with connect("postgres") as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    with connect(name) as c:
        c.execute("CREATE EXTENSION totp_verify")
    yield name
    with connect("postgres") as admin:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def conn(db):
    with connect(db) as c:
        yield c


@contextlib.contextmanager
def refused(sqlstate, twilio=None):
    """Asserts the block raises an ERROR with this SQLSTATE and Twilio code in the message."""
    with pytest.raises(psycopg.Error) as info:
        yield info
    err = info.value
    assert err.sqlstate == sqlstate, f"expected {sqlstate}, got {err.sqlstate}: {err}"
    if twilio is not None:
        assert f"(Twilio {twilio})" in err.diag.message_primary, err.diag.message_primary


def oathtool(secret_b32, alg="sha1", digits=6, step=30, at=None):
    """A code from oathtool, the authenticator app of these tests."""
    at = at if at is not None else time.time()
    when = dt.datetime.fromtimestamp(at, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    out = subprocess.run(
        ["oathtool", f"--totp={alg.upper()}", "-b", "-d", str(digits), "-s", f"{step}s",
         "--now", when, secret_b32],
        check=True, capture_output=True, text=True,
    )
    return out.stdout.strip()


def rfc4226(secret: bytes, counter: int, digits: int, alg: str = "sha1") -> str:
    """An independent RFC 4226 implementation (Python's hmac), for code lengths oathtool refuses."""
    digest = hmac.new(secret, struct.pack(">Q", counter), getattr(hashlib, alg)).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10 ** digits).zfill(digits)


def wait_inside_step(step, margin=3):
    """Sleeps past a step boundary if one is due within `margin` seconds, so a code computed
    now is still current when the server checks it (needed where skew is 0)."""
    left = step - (time.time() % step)
    if left < margin:
        time.sleep(left + 0.2)


STEPS = (20, 30, 45, 60)  # every time_step the client tests use


def _step_indices(t, steps=STEPS):
    return tuple(int(t) // s for s in steps)


def quiet_moment(window=8.0, steps=STEPS):
    """The first moment from now at which no boundary of any of `steps` falls within `window`
    seconds."""
    t = time.time()
    while True:
        boundary = min((int(t) // s + 1) * s for s in steps)
        if boundary - t >= window:
            return t
        t = boundary + 0.05


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Tests marked `step_bounded` judge codes against the server's current TOTP step, so they
    mean something only if no step boundary passed while they ran. Such a test that fails
    while a boundary (of any step in STEPS) passed runs once more, from a moment chosen so that
    no boundary falls within the next 8 seconds; a failure without a boundary, or a second
    failure, fails the test. No test hopes to finish before the next boundary."""
    if pyfuncitem.get_closest_marker("step_bounded") is None:
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    before = _step_indices(time.time())
    try:
        pyfuncitem.obj(**args)
        return True
    except (AssertionError, pytest.fail.Exception, psycopg.Error):
        if _step_indices(time.time()) == before:
            raise
    delay = quiet_moment() - time.time()
    warnings.warn(f"{pyfuncitem.nodeid}: a step boundary passed during a failing run; reran it {delay:.1f} s later")
    time.sleep(max(0.0, delay))
    pyfuncitem.obj(**args)
    return True


def pytest_configure(config):
    config.addinivalue_line("markers", "step_bounded: rerun once, away from a step boundary, if a boundary "
                                       "passed during a failing run (conftest.pytest_pyfunc_call)")


def wrong_code(right, digits=6):
    return str((int(right) + 1) % 10 ** digits).zfill(digits)


def new_service(conn, name="Acme", **kwargs):
    args = ", ".join(f"{k} => %({k})s" for k in kwargs)
    sql = f"SELECT * FROM totp.create_service(%(name)s{', ' + args if args else ''})"
    return conn.execute(sql, {"name": name, **kwargs}).fetchone()


def new_factor(conn, service_sid, identity, friendly_name="phone", **kwargs):
    args = "".join(f", {k} => %({k})s" for k in kwargs)
    sql = f"SELECT * FROM totp.create_factor(%(s)s, %(i)s, %(n)s{args})"
    return conn.execute(sql, {"s": service_sid, "i": identity, "n": friendly_name, **kwargs}).fetchone()


def verified_factor(conn, service_sid, identity, **kwargs):
    """Creates a factor and verifies it with a code of the *previous* step (accepted with skew
    >= 1), leaving the current and next steps free for challenges."""
    factor = new_factor(conn, service_sid, identity, **kwargs)
    step, digits, alg = factor["time_step"], factor["code_length"], factor["alg"]
    wait_inside_step(step, margin=1)
    for _ in range(2):  # once more, at the new step, if a step boundary passed during the call
        before = int(time.time()) // step
        at = time.time() - (step if factor["skew"] >= 1 else 0)
        code = oathtool(factor["binding_secret"], alg, digits, step, at)
        row = conn.execute(
            "SELECT * FROM totp.verify_factor(%s, %s, %s, %s)", (service_sid, identity, factor["sid"], code)
        ).fetchone()
        if row["status"] == "verified" or int(time.time()) // step == before:
            break
    assert row["status"] == "verified"
    return factor


_SKIPPED = []


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        _SKIPPED.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    """No test may skip silently (several are security checks): a skip fails the run unless
    TOTP_VERIFY_ALLOW_SKIPS=1. Pinned bugs use xfail(strict=True), which is not a skip."""
    if _SKIPPED and not os.environ.get("TOTP_VERIFY_ALLOW_SKIPS") and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    if _SKIPPED and not os.environ.get("TOTP_VERIFY_ALLOW_SKIPS"):
        terminalreporter.write_line(
            f"FAILED: {len(_SKIPPED)} test(s) skipped, and no test may skip: {', '.join(_SKIPPED[:5])}", red=True)


def pytest_report_header(config):
    return f"cluster: host={os.environ.get('PGHOST')} port={os.environ.get('PGPORT')}"


class EventReader:
    """A webhook deliverer's view of SPEC §7 events: it LISTENs for the payload-free
    `totp_events` wake-up and reads the rows of `totp.events` committed since its last read.
    `drain()` returns the new events, oldest first, as dicts, with no timeout involved: rows of a
    committed transaction are visible to the next query, and a commit signals the listening backend
    before the committing client hears back, so after two round trips on the listening connection
    every wake-up of a transaction committed before the call has been handed to the handler.
    Every wake-up must carry no payload."""

    COLUMNS = "id::text AS id, type, service_sid, entity_identity, factor_sid, challenge_sid, date_created"

    def __init__(self, dbname):
        self.conn = connect(dbname)
        self.conn.execute("LISTEN totp_events")
        self.notes = []
        self.conn.add_notify_handler(self.notes.append)
        self.seen = {r["id"] for r in self.conn.execute("SELECT id::text AS id FROM totp.events")}
        self.wakeups = 0

    def drain(self, timeout=None):
        """`timeout` is accepted for old callers and ignored."""
        self.conn.execute("SELECT 1")
        self.conn.execute("SELECT 1")
        for note in self.notes:
            assert note.channel == "totp_events" and note.payload == "", f"a notification carries data: {note}"
            self.wakeups += 1
        self.notes.clear()
        rows = self.conn.execute(
            f"SELECT {self.COLUMNS} FROM totp.events ORDER BY date_created, type").fetchall()
        new = [r for r in rows if r["id"] not in self.seen]
        self.seen.update(r["id"] for r in new)
        return new

    def close(self):
        self.conn.close()


@pytest.fixture
def events(db):
    reader = EventReader(db)
    yield reader
    reader.close()
