"""SPEC §7/§8 against a real server with real clients: events read by a separate session (rows of
totp.events, woken by a payload-free NOTIFY), an application's own tables using the trigger functions and an RLS policy, a
pg_dump/pg_restore round trip run as separate processes, and COMMENT coverage for psql."""

import base64
import datetime as dt
import json
import os
import subprocess
import time
import uuid

import pytest
from psycopg import sql

from conftest import PG_BIN, EventReader, connect, oathtool, refused, new_service, new_factor, wait_inside_step, wrong_code

# Codes are judged against the server's current step: see conftest.pytest_pyfunc_call.
pytestmark = pytest.mark.step_bounded

CHANNEL = "totp_events"
EVENT_KEYS = {"id", "type", "service_sid", "entity_identity", "factor_sid", "challenge_sid", "date_created"}


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def secret_forms(binding_secret):
    """Every spelling of a secret that must never leak: base32 both cases and raw bytes in hex."""
    raw = base64.b32decode(binding_secret + "=" * (-len(binding_secret) % 8))
    return [binding_secret, binding_secret.lower(), raw.hex(), raw.hex().upper()]


def verify_prev_step(conn, service_sid, identity, factor):
    """verify_factor with a code of the previous step (skew 1), leaving the current step free.
    Returns the submitted code."""
    step = factor["time_step"]
    wait_inside_step(step)
    for _ in range(2):  # once more, at the new step, if a step boundary passed during the call
        before = int(time.time()) // step
        code = oathtool(factor["binding_secret"], factor["alg"], factor["code_length"], step, time.time() - step)
        row = conn.execute("SELECT * FROM totp.verify_factor(%s, %s, %s, %s)",
                           (service_sid, identity, factor["sid"], code)).fetchone()
        if row["status"] == "verified" or int(time.time()) // step == before:
            break
    assert row["status"] == "verified"
    return code


def approve(conn, service_sid, identity, factor, at=None):
    """create_challenge with a right code (current step unless `at`); returns (challenge, code)."""
    code = oathtool(factor["binding_secret"], factor["alg"], factor["code_length"], factor["time_step"], at)
    ch = conn.execute("SELECT * FROM totp.create_challenge(%s, %s, %s, %s)",
                      (service_sid, identity, factor["sid"], code)).fetchone()
    assert ch["status"] == "approved", ch
    return ch, code


def enrol_and_approve(conn, service_sid, identity):
    """A verified factor for `identity` and one approved challenge, like a user stepping up."""
    factor = new_factor(conn, service_sid, identity)
    verify_prev_step(conn, service_sid, identity, factor)
    ch, _ = approve(conn, service_sid, identity, factor)
    return factor, ch


def drain(listener, timeout=None):
    """The events committed since the last read (see conftest.EventReader: no timeout involved)."""
    return listener.drain()


def collect(listener, count, timeout=None):
    """The events committed so far; at least `count` of them."""
    got = listener.drain()
    assert len(got) >= count, f"expected {count} events, got {len(got)}"
    return got


def rows(conn, relation, order="sid"):
    return conn.execute(
        sql.SQL("SELECT * FROM {} ORDER BY {}").format(sql.SQL(relation), sql.SQL(order))
    ).fetchall()


# ---------------------------------------------------------------------------------------------
# 1. Events: rows of totp.events, transactional, without secrets or codes
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def listener(db):
    reader = EventReader(db)
    yield reader
    reader.close()


@pytest.fixture
def actor(db):
    """A client that runs its calls in explicit transactions (commit or rollback), with the
    payload-free wake-up turned on (totp_verify.notify, superuser, off by default)."""
    with connect(db, autocommit=False) as c:
        c.execute("SET totp_verify.notify = on")
        c.commit()
        yield c


def full_lifecycle(c, service_sid, identity):
    """In the caller's transaction: every event type once, in this order. Returns the factor,
    the challenge SIDs and every code submitted."""
    codes = []
    factor = new_factor(c, service_sid, identity)                              # factor.created
    codes.append(verify_prev_step(c, service_sid, identity, factor))           # factor.verified
    approved, code = approve(c, service_sid, identity, factor)                 # challenge.approved
    codes.append(code)
    pending = c.execute("SELECT * FROM totp.create_challenge(%s, %s, %s)",
                        (service_sid, identity, factor["sid"])).fetchone()
    assert pending["status"] == "pending"
    bad = wrong_code(oathtool(factor["binding_secret"]))
    # Wrong for every step in the window (T-1 .. T+1), so it is wrong however the clock moves.
    window = {oathtool(factor["binding_secret"], at=time.time() + k * 30) for k in (-1, 0, 1, 2)}
    while bad in window:
        bad = wrong_code(bad)
    for attempt in range(1, 6):                                                # challenge.denied
        ch = c.execute("SELECT * FROM totp.update_challenge(%s, %s, %s, %s)",
                       (service_sid, identity, pending["sid"], bad)).fetchone()
        assert ch["status"] == ("denied" if attempt == 5 else "pending"), (attempt, ch["status"])
    codes.append(bad)
    c.execute("SELECT totp.delete_factor(%s, %s, %s)", (service_sid, identity, factor["sid"]))  # factor.deleted
    return factor, approved["sid"], pending["sid"], codes


def test_rolled_back_transaction_sends_no_event(db, listener, actor):
    service = new_service(actor, "Events rollback")
    actor.commit()
    factor, _, _, _ = full_lifecycle(actor, service["sid"], "rollback-user")
    assert drain(listener, 0.5) == [], "an event was delivered before the end of the transaction"
    actor.rollback()
    assert drain(listener, 1.0) == [], "a rolled-back transaction delivered an event"
    # ... and the rollback really undid the calls.
    assert actor.execute("SELECT count(*) AS n FROM totp.entities WHERE identity = 'rollback-user'"
                         ).fetchone()["n"] == 0
    actor.rollback()
    # A rolled-back savepoint drops its events; the committed rest of the transaction sends its own
    # (which also shows the listener was hearing all along).
    kept = new_factor(actor, service["sid"], "kept-user")
    with actor.transaction(force_rollback=True):
        new_factor(actor, service["sid"], "savepoint-user")
    actor.commit()
    payloads = collect(listener, 1)
    assert [(p["type"], p["factor_sid"]) for p in payloads] == [("factor.created", kept["sid"])]


def test_events_arrive_at_commit_in_order_without_secrets_or_codes(db, listener, actor):
    service = new_service(actor, "Events")
    actor.commit()
    assert drain(listener, 0.2) == [], "create_service is not a Twilio event"
    identity = "event-user-1"
    factor, approved_sid, denied_sid, codes = full_lifecycle(actor, service["sid"], identity)
    assert drain(listener, 0.5) == [], "events must only be delivered at commit"
    before_commit = dt.datetime.now(dt.timezone.utc)
    actor.commit()
    wakeups_before = listener.wakeups
    notes = collect(listener, 5)
    assert listener.wakeups > wakeups_before, "no payload-free NOTIFY woke the listener at commit"
    payloads = notes
    assert [p["type"] for p in payloads] == [
        "factor.created", "factor.verified", "challenge.approved", "challenge.denied", "factor.deleted",
    ]
    challenge_of = {"challenge.approved": approved_sid, "challenge.denied": denied_sid}
    forbidden = secret_forms(factor["binding_secret"])
    for note, p in zip(notes, payloads):
        assert set(p) == EVENT_KEYS, p
        assert (p["challenge_sid"] is not None) == p["type"].startswith("challenge."), p
        assert p["service_sid"] == service["sid"]
        assert p["entity_identity"] == identity
        assert p["factor_sid"] == factor["sid"]
        if p["type"] in challenge_of:
            assert p["challenge_sid"] == challenge_of[p["type"]]
        date = p["date_created"]
        assert date.tzinfo is not None
        assert before_commit - dt.timedelta(minutes=2) < date <= dt.datetime.now(dt.timezone.utc)
        for s in forbidden:
            assert s not in json.dumps(p, default=str), "an event carries the secret"
        without_date = json.dumps({k: v for k, v in p.items() if k not in ("date_created", "id")})
        for code in codes:
            assert code not in without_date, "an event carries a submitted code"
    assert drain(listener, 0.3) == [], "more events than changes"


def test_denied_after_lowered_attempt_limit_and_each_commit_delivers(db, listener, actor):
    """The service's max_challenge_attempts (superuser UPDATE) decides when challenge.denied is
    sent; with one commit per call every event arrives right after its own commit."""
    service = new_service(actor, "Events limit")
    actor.execute("SELECT totp.update_service(%s, max_challenge_attempts => 2)", (service["sid"],))
    actor.commit()
    identity = "event-user-2"
    factor = new_factor(actor, service["sid"], identity)
    actor.commit()
    assert [n["type"] for n in collect(listener, 1)] == ["factor.created"]
    verify_prev_step(actor, service["sid"], identity, factor)
    actor.commit()
    assert [n["type"] for n in collect(listener, 1)] == ["factor.verified"]
    right = oathtool(factor["binding_secret"])
    bad = wrong_code(right)
    ch = actor.execute("SELECT * FROM totp.create_challenge(%s, %s, %s, %s)",
                       (service["sid"], identity, factor["sid"], bad)).fetchone()
    assert ch["status"] == "pending"
    actor.commit()
    assert drain(listener, 0.3) == [], "a wrong code that does not deny sends nothing"
    ch = actor.execute("SELECT * FROM totp.update_challenge(%s, %s, %s, %s)",
                       (service["sid"], identity, ch["sid"], bad)).fetchone()
    assert ch["status"] == "denied"
    assert drain(listener, 0.3) == []
    actor.commit()
    (note,) = collect(listener, 1)
    p = note
    assert p["type"] == "challenge.denied" and p["challenge_sid"] == ch["sid"]
    assert bad not in json.dumps({k: v for k, v in p.items() if k not in ("date_created", "id")})


# ---------------------------------------------------------------------------------------------
# 2. An application's own tables: forget_entity, require_approval, RLS with has_recent_approval
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def app(db):
    """users/payouts with the SPEC §7 triggers, and a service for them."""
    with connect(db) as c:
        service = new_service(c, "Payouts")
        va = service["sid"]
        c.execute("CREATE TABLE users (id int PRIMARY KEY, name text)")
        c.execute("CREATE TABLE payouts (id serial, user_id int REFERENCES users, amount numeric)")
        c.execute(sql.SQL(
            "CREATE TRIGGER users_forget AFTER DELETE ON users FOR EACH ROW "
            "EXECUTE FUNCTION totp.forget_entity({}, 'id')").format(sql.Literal(va)))
        c.execute(sql.SQL(
            "CREATE TRIGGER payouts_step_up BEFORE INSERT OR UPDATE OR DELETE ON payouts FOR EACH ROW "
            "EXECUTE FUNCTION totp.require_approval({}, 'user_id', '10 minutes')").format(sql.Literal(va)))
    return va


def count_identity(c, va, identity):
    return c.execute(
        """SELECT (SELECT count(*) FROM totp.entities WHERE service_sid = %(s)s AND identity = %(i)s) AS e,
                  (SELECT count(*) FROM totp.factors WHERE service_sid = %(s)s AND identity = %(i)s) AS f,
                  (SELECT count(*) FROM totp.challenges WHERE service_sid = %(s)s AND identity = %(i)s) AS c,
                  (SELECT count(*) FROM totp_private.factors WHERE identity = %(i)s) AS pf,
                  (SELECT count(*) FROM totp_private.challenges WHERE identity = %(i)s) AS pc""",
        {"s": va, "i": identity},
    ).fetchone()


def test_forget_entity_trigger_deletes_the_users_entity(conn, app):
    va = app
    conn.execute("INSERT INTO users VALUES (101, 'Ada'), (102, 'Bob'), (103, 'Cy')")
    enrol_and_approve(conn, va, "101")
    enrol_and_approve(conn, va, "102")
    assert dict(count_identity(conn, va, "101")) == {"e": 1, "f": 1, "c": 1, "pf": 1, "pc": 1}
    conn.execute("DELETE FROM users WHERE id = 101")
    assert dict(count_identity(conn, va, "101")) == {"e": 0, "f": 0, "c": 0, "pf": 0, "pc": 0}
    # Other users keep theirs; a user who never enrolled is deleted without complaint.
    assert dict(count_identity(conn, va, "102")) == {"e": 1, "f": 1, "c": 1, "pf": 1, "pc": 1}
    conn.execute("DELETE FROM users WHERE id = 103")
    assert conn.execute("SELECT count(*) AS n FROM users WHERE id IN (101, 103)").fetchone()["n"] == 0


def test_forget_entity_is_rolled_back_with_the_delete(conn, app):
    va = app
    conn.execute("INSERT INTO users VALUES (104, 'Dee')")
    enrol_and_approve(conn, va, "104")
    with conn.transaction(force_rollback=True):
        conn.execute("DELETE FROM users WHERE id = 104")
        assert count_identity(conn, va, "104")["e"] == 0
    assert dict(count_identity(conn, va, "104")) == {"e": 1, "f": 1, "c": 1, "pf": 1, "pc": 1}


def test_require_approval_trigger_step_up(conn, app):
    va = app
    conn.execute("INSERT INTO users VALUES (201, 'Eve'), (202, 'Fay')")
    # No approval at all: refused.
    with refused("42501"):
        conn.execute("INSERT INTO payouts (user_id, amount) VALUES (201, 10)")
    # Another user's approval does not count.
    enrol_and_approve(conn, va, "202")
    with refused("42501"):
        conn.execute("INSERT INTO payouts (user_id, amount) VALUES (201, 10)")
    # A pending challenge (no code) is not an approval either.
    factor = new_factor(conn, va, "201")
    verify_prev_step(conn, va, "201", factor)
    conn.execute("SELECT totp.create_challenge(%s, %s, %s)", (va, "201", factor["sid"]))
    with refused("42501"):
        conn.execute("INSERT INTO payouts (user_id, amount) VALUES (201, 10)")
    # Step-up: approve with a right code from the authenticator, then the write goes through.
    approve(conn, va, "201", factor)
    conn.execute("INSERT INTO payouts (user_id, amount) VALUES (201, 10)")
    conn.execute("UPDATE payouts SET amount = 11 WHERE user_id = 201")
    assert conn.execute("SELECT amount FROM payouts WHERE user_id = 201").fetchone()["amount"] == 11
    # Once the approval is older than the trigger's age, every kind of write is refused again.
    # (Test-only: the approvals are aged by moving their response time back, instead of
    # sleeping through a short age and hoping the writes above ran before it ended.)
    conn.execute("""UPDATE totp_private.challenges SET date_responded = date_responded - interval '11 minutes'
                    WHERE service_sid = %s AND identity = '201' AND status = 'approved'""", (va,))
    with refused("42501"):
        conn.execute("INSERT INTO payouts (user_id, amount) VALUES (201, 12)")
    with refused("42501"):
        conn.execute("UPDATE payouts SET amount = 13 WHERE user_id = 201")
    with refused("42501"):
        conn.execute("DELETE FROM payouts WHERE user_id = 201")
    assert conn.execute("SELECT count(*) AS n, max(amount) AS a FROM payouts WHERE user_id = 201"
                        ).fetchone() == {"n": 1, "a": 11}


@pytest.fixture
def reader_role(db, app):
    role = "eco_reader_" + uuid.uuid4().hex[:8]
    with connect(db) as c:
        c.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOBYPASSRLS").format(sql.Identifier(role)))
    yield role
    with connect(db) as c:
        c.execute(sql.SQL("DROP POLICY IF EXISTS payouts_step_up_read ON payouts"))
        c.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        c.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_rls_policy_with_has_recent_approval(db, conn, app, reader_role):
    va = app
    role = sql.Identifier(reader_role)
    conn.execute("INSERT INTO users VALUES (301, 'Gus'), (302, 'Hal')")
    # Rows put there by the owner, around the step-up trigger (triggers off for this transaction).
    with conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute("INSERT INTO payouts (user_id, amount) VALUES (301, 1), (301, 2), (302, 3)")
    conn.execute("ALTER TABLE payouts ENABLE ROW LEVEL SECURITY")
    conn.execute("ALTER TABLE payouts FORCE ROW LEVEL SECURITY")
    conn.execute(sql.SQL(
        "CREATE POLICY payouts_step_up_read ON payouts FOR SELECT TO {} "
        "USING (totp.has_recent_approval({}, user_id::text, '5 minutes'))").format(role, sql.Literal(va)))
    conn.execute(sql.SQL("GRANT SELECT ON payouts TO {}").format(role))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA totp TO {}").format(role))
    conn.execute(sql.SQL(
        "GRANT EXECUTE ON FUNCTION totp.has_recent_approval(text, text, interval) TO {}").format(role))
    try:
        with connect(db, user=reader_role) as reader:
            me = reader.execute("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
                                ).fetchone()
            assert me == {"rolsuper": False, "rolbypassrls": False}

            def visible():
                return sorted((r["user_id"], int(r["amount"])) for r in
                              reader.execute("SELECT user_id, amount FROM payouts WHERE user_id IN (301, 302)"))

            assert visible() == [], "rows visible without any approval"
            enrol_and_approve(conn, va, "301")
            assert visible() == [(301, 1), (301, 2)], "only the approved user's rows"
            enrol_and_approve(conn, va, "302")
            assert visible() == [(301, 1), (301, 2), (302, 3)]
            # The reader still cannot read a secret or the private tables.
            with refused("42501"):
                reader.execute("SELECT * FROM totp_private.factors")
    finally:
        conn.execute("ALTER TABLE payouts DISABLE ROW LEVEL SECURITY")
        conn.execute("ALTER TABLE payouts NO FORCE ROW LEVEL SECURITY")


# ---------------------------------------------------------------------------------------------
# 3. pg_dump / pg_restore as separate processes
# ---------------------------------------------------------------------------------------------

def run(*argv, **kwargs):
    return subprocess.run(list(argv), capture_output=True, env=os.environ.copy(), **kwargs)


@pytest.fixture(scope="module")
def dump_source():
    """A database with a spread of every kind of row, for the dump tests. Returns (name, facts)."""
    name = "t_eco_dump_" + uuid.uuid4().hex[:6]
    with connect("postgres") as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    facts = {}
    try:
        with connect(name) as c:
            c.execute("CREATE EXTENSION totp_verify")
            a = new_service(c, "Dump A", issuer="Acme Inc", skew=1)
            b = new_service(c, "Dump B", time_step=60, code_length=8)
            c.execute("UPDATE totp_private.services SET max_challenge_attempts = 1 WHERE sid = %s", (b["sid"],))
            # A verified factor with an approved and two pending challenges.
            f1 = new_factor(c, a["sid"], "alice", metadata='{"os": "ios"}')
            verify_prev_step(c, a["sid"], "alice", f1)
            approve(c, a["sid"], "alice", f1)
            pend = c.execute("SELECT * FROM totp.create_challenge(%s, 'alice', %s, details => %s, "
                             "hidden_details => %s)",
                             (a["sid"], f1["sid"], '{"message": "pay 10"}', '{"ip": "10.0.0.1"}')).fetchone()
            c.execute("SELECT * FROM totp.create_challenge(%s, 'alice', %s, %s)",
                      (a["sid"], f1["sid"], wrong_code(oathtool(f1["binding_secret"]))))
            # An unverified factor, a sha256 8-digit factor in service B, an entity without factors.
            f2 = new_factor(c, a["sid"], "alice", friendly_name="laptop")
            f3 = new_factor(c, b["sid"], "bob", alg="sha256")
            verify_prev_step(c, b["sid"], "bob", f3)
            denied = c.execute("SELECT * FROM totp.create_challenge(%s, 'bob', %s, %s)",
                               (b["sid"], f3["sid"], wrong_code(oathtool(f3["binding_secret"], "sha256", 8, 60),
                                                                 8))).fetchone()
            assert denied["status"] == "denied"
            c.execute("SELECT totp.create_entity(%s, 'carol')", (b["sid"],))
            facts.update(a=a, b=b, f1=f1, f2=f2, f3=f3, pending=pend)
        yield name, facts
    finally:
        with connect("postgres") as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def restored(dump_source, tmp_path_factory):
    """pg_dump -Fc of the source, pg_restore into a new database of the same cluster."""
    source, facts = dump_source
    path = tmp_path_factory.mktemp("dump") / "source.dump"
    out = run(f"{PG_BIN}/pg_dump", "-Fc", "-f", str(path), "-d", source)
    assert out.returncode == 0, out.stderr.decode()
    target = "t_eco_restored_" + uuid.uuid4().hex[:6]
    with connect("postgres") as admin:
        admin.execute(f'CREATE DATABASE "{target}"')
    try:
        listing = run(f"{PG_BIN}/pg_restore", "-l", str(path))
        assert listing.returncode == 0, listing.stderr.decode()
        out = run(f"{PG_BIN}/pg_restore", "--exit-on-error", "-d", target, str(path))
        yield source, target, facts, listing.stdout.decode(), out
    finally:
        with connect("postgres") as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')


def test_restore_runs_clean_and_creates_the_extension_from_the_dump(restored):
    source, target, _, listing, out = restored
    assert " EXTENSION - totp_verify" in listing, listing
    assert out.returncode == 0, out.stderr.decode()
    assert out.stderr.decode().strip() == ""
    with connect(target) as c:
        ext = c.execute("SELECT extversion, extnamespace::regnamespace::text AS ns FROM pg_extension "
                        "WHERE extname = 'totp_verify'").fetchone()
    with connect(source) as c:
        src = c.execute("SELECT extversion, extnamespace::regnamespace::text AS ns FROM pg_extension "
                        "WHERE extname = 'totp_verify'").fetchone()
    assert ext == src and ext["ns"] == "totp"


def test_restore_keeps_every_row(restored):
    source, target, facts, _, _ = restored
    with connect(source) as s, connect(target) as t:
        for relation, order in [("totp.services", "sid"), ("totp.entities", "service_sid, identity"),
                                ("totp.factors", "sid"), ("totp.challenges", "sid")]:
            before, after = rows(s, relation, order), rows(t, relation, order)
            assert before, relation
            assert after == before, relation
        private = [r["relname"] for r in s.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'totp_private'::regnamespace "
            "AND relkind = 'r' ORDER BY 1")]
        assert {"factors", "challenges", "keys"} <= set(private)
        for rel in private:
            q = sql.SQL("SELECT count(*) AS n FROM totp_private.{}").format(sql.Identifier(rel))
            n_before, n_after = s.execute(q).fetchone()["n"], t.execute(q).fetchone()["n"]
            assert n_after == n_before, rel
            full = sql.SQL("SELECT * FROM totp_private.{} ORDER BY 1, 2").format(sql.Identifier(rel))
            assert t.execute(full).fetchall() == s.execute(full).fetchall(), rel
        assert s.execute("SELECT count(*) AS n FROM totp.factors").fetchone()["n"] == 3
        assert s.execute("SELECT count(*) AS n FROM totp.challenges").fetchone()["n"] == 4
        assert s.execute("SELECT count(*) AS n FROM totp.entities").fetchone()["n"] == 3


def test_restored_factor_still_verifies_codes(restored):
    _, target, facts, _, _ = restored
    a, b, f1, f2, f3 = facts["a"], facts["b"], facts["f1"], facts["f2"], facts["f3"]
    with connect(target) as t:
        # The source approved the current step, so use the next one (skew 1 accepts T+1).
        nxt = time.time() + f1["time_step"]
        wrong = wrong_code(oathtool(f1["binding_secret"], at=nxt))
        ch = t.execute("SELECT * FROM totp.create_challenge(%s, 'alice', %s, %s)",
                       (a["sid"], f1["sid"], wrong)).fetchone()
        assert ch["status"] == "pending", "a wrong code must still be wrong after restore"
        ch, _ = approve(t, a["sid"], "alice", f1, at=nxt)
        assert ch["date_responded"] is not None
        # The pending challenge carried over can be answered too (wrong code: still pending).
        again = t.execute("SELECT * FROM totp.update_challenge(%s, 'alice', %s, %s)",
                          (a["sid"], facts["pending"]["sid"], wrong)).fetchone()
        assert again["status"] == "pending"
        # sha256, 8 digits, 60 s step, verified in the source at the previous step.
        approve(t, b["sid"], "bob", f3)
        # The unverified factor can still be registered with its secret after the restore.
        verify_prev_step(t, a["sid"], "alice", f2)


def test_plain_dump_contains_no_secret(dump_source):
    source, facts = dump_source
    out = run(f"{PG_BIN}/pg_dump", "-Fp", "-d", source)
    assert out.returncode == 0, out.stderr.decode()
    text = out.stdout.decode()
    assert "totp_private.factors" in text and facts["f1"]["sid"] in text, "the dump has the factor rows"
    for f in ("f1", "f2", "f3"):
        for form in secret_forms(facts[f]["binding_secret"]):
            assert form not in text, f"{f}: secret found in the dump"
    # Nor the key material that seals the secrets (SPEC §8: the key never lives in a table).
    with connect(source) as c:
        data_dir = c.execute("SHOW data_directory").fetchone()["data_directory"]
    key_file = os.path.join(data_dir, "totp_verify.key")
    if os.access(key_file, os.R_OK):
        with open(key_file) as fh:
            keys = [ln.split()[-1] for ln in fh if ln.strip() and not ln.startswith("#")]
        assert keys
        for k in keys:
            assert len(k) >= 32 and k.lower() not in text.lower()


# ---------------------------------------------------------------------------------------------
# 4. COMMENT coverage (SPEC §7 "psql")
# ---------------------------------------------------------------------------------------------

def test_every_table_view_column_function_has_a_comment(conn):
    missing = [r["what"] for r in conn.execute(
        """SELECT format('%s %s', CASE c.relkind WHEN 'v' THEN 'view' ELSE 'table' END, c.oid::regclass) AS what
             FROM pg_class c
            WHERE c.relnamespace = 'totp'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
              AND coalesce(btrim(obj_description(c.oid, 'pg_class')), '') = ''
           UNION ALL
           SELECT format('column %s.%I', c.oid::regclass, a.attname)
             FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
            WHERE c.relnamespace = 'totp'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
              AND a.attnum > 0 AND NOT a.attisdropped
              AND coalesce(btrim(col_description(c.oid, a.attnum)), '') = ''
           UNION ALL
           SELECT format('function %s', p.oid::regprocedure)
             FROM pg_proc p
            WHERE p.pronamespace = 'totp'::regnamespace
              AND coalesce(btrim(obj_description(p.oid, 'pg_proc')), '') = ''
           ORDER BY 1""")]
    assert missing == [], f"{len(missing)} objects without a COMMENT: {missing}"
