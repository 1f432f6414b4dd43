"""Issue 10, attacked as an attacker would: a role with exactly the shipped grant sets, a role with
no grants, and a role given ALL on every table and function of schema totp. Each test names the
finding it covers (each finding was reproduced against 0.1.0 when the issue was filed).

Concurrency is arranged, never hoped for: a session holds a transaction open at a known point,
the test waits until the other session is observed waiting on a lock (pg_stat_activity), and then
releases it."""

import base64
import threading
import time
import uuid

import psycopg
import psycopg.rows
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from conftest import PG_BIN, connect, oathtool, refused, verified_factor, new_factor, wait_inside_step, EventReader

SUFFIX = uuid.uuid4().hex[:8]


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def ident(prefix="u"):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def admin(db):
    with connect(db) as c:
        yield c


@pytest.fixture(scope="module")
def roles(admin):
    """make(purpose, setup) creates a LOGIN role; setup(admin, name) grants it what it needs."""
    made = []

    def make(purpose, setup=None):
        name = f"sec_{purpose}_{SUFFIX}"
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        made.append(name)
        if setup:
            setup(admin, name)
        return name

    yield make
    for name in made:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,))
        admin.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(name)))
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def broad(admin, name):
    """The grants the README says still read no secret: everything on schema totp."""
    for stmt in ("GRANT ALL ON SCHEMA totp TO {}", "GRANT ALL ON ALL TABLES IN SCHEMA totp TO {}",
                 "GRANT ALL ON ALL FUNCTIONS IN SCHEMA totp TO {}"):
        admin.execute(sql.SQL(stmt).format(sql.Identifier(name)))


def both_sets(admin, name):
    admin.execute("SELECT totp.grant_enrolment(%s), totp.grant_verification(%s)", (name, name))


def enrolment(admin, name):
    admin.execute("SELECT totp.grant_enrolment(%s)", (name,))


def verification(admin, name):
    admin.execute("SELECT totp.grant_verification(%s)", (name,))


def service(conn, **limits):
    svc = conn.execute("SELECT * FROM totp.create_service(%s)", (f"Sec {uuid.uuid4().hex[:6]}",)).fetchone()
    if limits:
        args = ", ".join(f"{k} => %({k})s" for k in limits)
        conn.execute(f"SELECT totp.update_service(%(sid)s, {args})", {"sid": svc["sid"], **limits})
    return svc["sid"]


def codes_around(factor, steps=range(-3, 4)):
    step = factor["time_step"]
    return {oathtool(factor["binding_secret"], factor["alg"], factor["code_length"], step, time.time() + k * step)
            for k in steps}


def wrong_codes(factor, count):
    """`count` codes that are wrong for every step anywhere near now."""
    right = codes_around(factor)
    digits = factor["code_length"]
    out, n = [], 0
    while len(out) < count:
        code = str((n * 7919 + 13) % 10 ** digits).zfill(digits)
        n += 1
        if code not in right and code not in out:
            out.append(code)
    return out


def pid_of(conn):
    return conn.execute("SELECT pg_backend_pid() AS p").fetchone()["p"]


def wait_until_waiting_on_lock(admin, pid, timeout=60):
    """Blocks until backend `pid` is observed waiting for a heavyweight lock."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = admin.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
        if row and row["wait_event_type"] == "Lock":
            return
        time.sleep(0.02)
    raise AssertionError(f"backend {pid} never waited on a lock")


class Background:
    """Runs `sql` on its own connection in a thread; .pid is known before it starts."""

    def __init__(self, db, statement, params=(), conn=None):
        self.conn = conn or connect(db)
        self.pid = pid_of(self.conn)
        self.result = self.error = None
        self.thread = threading.Thread(target=self._run, args=(statement, params), daemon=True)
        self.thread.start()

    def _run(self, statement, params):
        try:
            self.result = self.conn.execute(statement, params).fetchall()
        except psycopg.Error as e:
            self.error = e

    def join(self, timeout=120):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "background statement did not finish"
        self.conn.close()
        return self


def key_file_state(conn):
    """(name, contents) of this database's key file, read by the server as superuser."""
    keyring = conn.execute("SELECT keyring_id FROM totp_private.keyring").fetchone()
    if keyring is None:
        return None
    name = f"totp_verify-{keyring['keyring_id']}.key"
    return name, conn.execute("SELECT pg_read_binary_file(%s) AS b", (name,)).fetchone()["b"]


def key_files(conn):
    return {r["f"] for r in conn.execute(
        "SELECT f FROM pg_ls_dir('.') f WHERE f LIKE 'totp_verify-%%.key'").fetchall()}


def every_secret_opens(conn):
    """rotate_key opens every secret to re-seal it: none unreadable means every secret opens
    with the key file as it is on disk (a fresh backend, so no cached key helps)."""
    with connect(conn.info.dbname) as fresh:
        row = fresh.execute("SELECT * FROM totp.rotate_key()").fetchone()
        fresh.execute("SELECT totp.retire_keys()")
    return row


# ---------------------------------------------------------------------------------------------
# 1 (critical). No grant on schema totp reaches the owner's rights: TRIGGER, INSERT, UPDATE ...
# ---------------------------------------------------------------------------------------------

def test_trigger_privilege_cannot_run_code_as_the_owner(db, admin, roles):
    attacker = roles("broad", broad)
    with connect(db, user=attacker) as c:
        c.execute(sql.SQL("""CREATE FUNCTION pg_temp.escalate() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN EXECUTE 'ALTER ROLE {} SUPERUSER'; RETURN NULL; END $$""").format(sql.Identifier(attacker)))
        relations = [r["r"] for r in c.execute(
            "SELECT c.oid::regclass::text AS r FROM pg_class c WHERE c.relnamespace = 'totp'::regnamespace "
            "AND c.relkind IN ('r', 'v', 'p', 'm', 'f')").fetchall()]
        assert {"totp.services", "totp.entities", "totp.factors", "totp.challenges", "totp.events"} <= set(relations)
        attached = []
        for rel in relations:
            for when in ("BEFORE INSERT OR UPDATE OR DELETE", "AFTER INSERT OR UPDATE OR DELETE",
                         "INSTEAD OF INSERT OR UPDATE OR DELETE"):
                for level in ("ROW", "STATEMENT"):
                    name = f"t{len(attached)}_{uuid.uuid4().hex[:4]}"
                    try:
                        with c.transaction():
                            c.execute(f"CREATE TRIGGER {name} {when} ON {rel} FOR EACH {level} "
                                      "EXECUTE FUNCTION pg_temp.escalate()")
                        attached.append((rel, when, level))
                    except psycopg.Error:
                        pass
        # Triggers can be attached only to the views (every relation in totp is one), and they
        # fire only for writes to the views themselves, which the extension never makes.
        assert attached, "no trigger could be attached at all: the attack was not tried"
        kinds = {r["r"]: r["k"] for r in c.execute(
            "SELECT c.oid::regclass::text AS r, c.relkind AS k FROM pg_class c "
            "WHERE c.relnamespace = 'totp'::regnamespace").fetchall()}
        assert {kinds[rel] for rel, _, _ in attached} == {"v"}, attached
        # Every state change, by the attacker and by a superuser, with those triggers in place.
        svc = service(c)
        f = verified_factor(c, svc, "victim-1")
        c.execute("SELECT * FROM totp.create_challenge(%s, 'victim-1', %s)", (svc, f["sid"]))
        c.execute("SELECT * FROM totp.update_factor(%s, 'victim-1', %s, friendly_name => 'x')", (svc, f["sid"]))
        c.execute("SELECT totp.update_service(%s, friendly_name => 'renamed')", (svc,))
        admin.execute("SELECT * FROM totp.run_maintenance()")
        c.execute("SELECT totp.delete_entity(%s, 'victim-1')", (svc,))
        c.execute("SELECT totp.delete_service(%s)", (svc,))
    assert admin.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (attacker,)).fetchone()["rolsuper"] is False


def test_every_relation_in_totp_is_read_only_whatever_is_granted(db, admin, roles):
    """Finding 4: with ALL on the views a role could verify a factor without a code, shorten its
    codes, refresh an old approval and move approvals between services."""
    attacker = roles("writer", broad)
    svc = service(admin)
    f = new_factor(admin, svc, "writer-victim")
    with connect(db, user=attacker) as c:
        for stmt in (
            "UPDATE totp.factors SET status = 'verified', code_length = 3, skew = 2",
            "UPDATE totp.challenges SET date_responded = now(), status = 'approved'",
            "UPDATE totp.services SET max_challenge_attempts = 1000000",
            "UPDATE totp.entities SET identity = 'someone-else'",
            "DELETE FROM totp.factors", "DELETE FROM totp.events",
            "INSERT INTO totp.events (id, type, service_sid, entity_identity, factor_sid, date_created) "
            "VALUES (gen_random_uuid(), 'factor.verified', 'VAx', 'x', 'YFx', now())",
            "TRUNCATE totp.services",
        ):
            with pytest.raises(psycopg.Error) as info:
                c.execute(stmt)
            assert info.value.sqlstate in ("55000", "42809", "0A000"), (stmt, info.value.sqlstate, info.value)
    row = admin.execute("SELECT status, code_length FROM totp_private.factors WHERE sid = %s", (f["sid"],)).fetchone()
    assert (row["status"], row["code_length"]) == ("unverified", 6)
    views = admin.execute("SELECT c.relname, c.reloptions FROM pg_class c WHERE c.relnamespace = 'totp'::regnamespace "
                          "AND c.relkind IN ('r', 'v', 'm', 'p', 'f')").fetchall()
    assert all(v["reloptions"] and "security_barrier=true" in v["reloptions"] for v in views), views
    tables = admin.execute("SELECT count(*) AS n FROM pg_class WHERE relnamespace = 'totp'::regnamespace "
                           "AND relkind IN ('r', 'p')").fetchone()["n"]
    assert tables == 0, "a table in schema totp would take TRIGGER and UPDATE grants"


def test_leaky_function_sees_no_hidden_row(db, admin, roles):
    """Finding 13: a cheap leaky function in a WHERE clause must not see rows a view hides."""
    reader = roles("leaky", both_sets)
    svc = service(admin)
    hidden, shown = ident("hidden"), ident("shown")
    h = new_factor(admin, svc, hidden, metadata=Jsonb({"note": "hidden-meta"}))
    new_factor(admin, svc, shown)
    admin.execute("UPDATE totp_private.factors SET unverified_until = now() - interval '1 second' WHERE sid = %s",
                  (h["sid"],))
    notices = []
    with connect(db, user=reader) as c:
        c.add_notice_handler(lambda d: notices.append(d.message_primary))
        c.execute("""CREATE FUNCTION pg_temp.peek(text) RETURNS boolean LANGUAGE plpgsql COST 0.0000001 AS $$
                     BEGIN RAISE NOTICE 'peek %', $1; RETURN true; END $$""")
        rows = c.execute("SELECT sid FROM totp.factors WHERE pg_temp.peek(identity || ' ' || coalesce(metadata::text, ''))"
                         " AND service_sid = %s", (svc,)).fetchall()
    assert [r["sid"] for r in rows] != [] and h["sid"] not in {r["sid"] for r in rows}
    assert any(shown in n for n in notices), "the leaky function did not run at all (test is void)"
    assert not any(hidden in n or "hidden-meta" in n for n in notices), notices


# ---------------------------------------------------------------------------------------------
# 2, 3, 8, 12. Keys: superuser only (the caller), serialized, atomic, committed or not at all
# ---------------------------------------------------------------------------------------------

def test_key_management_checks_the_caller_not_the_owner(db, admin, roles):
    attacker = roles("keys", broad)
    bystander = roles("bystander")
    keys_before = admin.execute("SELECT key_id, state FROM totp_private.keys ORDER BY 1").fetchall()
    with connect(db, user=attacker) as c:
        for fn in ("SELECT * FROM totp.rotate_key()", "SELECT totp.retire_keys()"):
            with refused("42501"):
                c.execute(fn)
        # The grant sets run with the caller's rights: executing them grants nothing it lacks.
        c.execute("SELECT totp.grant_enrolment(%s), totp.grant_verification(%s)", (bystander, bystander))
    assert admin.execute("SELECT key_id, state FROM totp_private.keys ORDER BY 1").fetchall() == keys_before
    assert admin.execute("SELECT has_schema_privilege(%s, 'totp', 'USAGE') AS u", (bystander,)).fetchone()["u"] is False


@pytest.fixture
def keydb():
    """A database of its own, so that key files and keys are this test's alone."""
    name = f"keys_{uuid.uuid4().hex[:8]}"
    with connect("postgres") as c:
        c.execute(f'CREATE DATABASE "{name}"')
    with connect(name) as c:
        c.execute("CREATE EXTENSION totp_verify")
    yield name
    with connect("postgres") as c:
        c.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_first_key_is_written_only_when_its_transaction_commits(keydb):
    with connect(keydb) as admin:
        before = key_files(admin)
        svc = service(admin)
        with connect(keydb, autocommit=False) as c:
            new_factor(c, svc, "first-1")
            c.rollback()
        assert key_files(admin) == before, "a rolled-back first use left a key file"
        assert admin.execute("SELECT count(*) AS n FROM totp_private.keyring").fetchone()["n"] == 0
        with connect(keydb, autocommit=False) as c:
            with c.transaction():
                with c.transaction(force_rollback=True):
                    new_factor(c, svc, "first-2")
            c.commit()
        assert key_files(admin) == before, "a rolled-back savepoint left a key file"
        f = new_factor(admin, svc, "first-3")
        added = key_files(admin) - before
        assert len(added) == 1 and key_file_state(admin)[0] in added
        assert verify_now(admin, svc, "first-3", f)["status"] == "verified"


def verify_now(conn, svc, identity, f):
    """verify_factor with the current step's code; returns the row and that step's number."""
    wait_inside_step(f["time_step"], margin=3)
    step = int(time.time()) // f["time_step"]
    code = code_at_step(f, step)
    row = conn.execute("SELECT * FROM totp.verify_factor(%s, %s, %s, %s)", (svc, identity, f["sid"], code)).fetchone()
    row["step"] = step
    return row


def code_at_step(f, step):
    """The factor's code for time step `step` (valid while the clock is within skew of it)."""
    return oathtool(f["binding_secret"], f["alg"], f["code_length"], f["time_step"], step * f["time_step"] + 1)


def test_concurrent_key_changes_serialize_and_lose_nothing(keydb):
    """Finding 3: two rotate_key() at once, and rotate_key() with retire_keys(), destroyed every
    secret. Now the second waits for the first, and every secret still opens afterwards."""
    with connect(keydb) as admin:
        svc = service(admin)
        admin.execute("""SELECT totp.create_factor(%s, 'bulk-' || i, 'phone') FROM generate_series(1, 200) i""", (svc,))
        before = key_file_state(admin)
        first = connect(keydb, autocommit=False)
        first.execute("SELECT * FROM totp.rotate_key(batch_size => 50)")
        second = Background(keydb, "SELECT * FROM totp.rotate_key(batch_size => 50)")
        wait_until_waiting_on_lock(admin, second.pid)
        retire = Background(keydb, "SELECT totp.retire_keys() AS r")
        wait_until_waiting_on_lock(admin, retire.pid)
        # Both wait before touching the file, and the first writes it only when it commits: the
        # file on disk is still the one every committed secret was sealed against.
        assert key_file_state(admin) == before, "a key change wrote the key file before it committed"
        first.commit()
        first.close()
        second.join()
        retire.join()
        assert second.error is None and retire.error is None, (second.error, retire.error)
        assert second.result[0]["resealed"] == 200
        states = admin.execute("SELECT state, count(*) AS n FROM totp_private.keys GROUP BY 1").fetchall()
        assert {r["state"]: r["n"] for r in states}.get("current") == 1
        row = every_secret_opens(admin)
        assert (row["resealed"], row["unreadable"]) == (200, 0)


def test_a_rolled_back_or_failed_rotation_leaves_the_key_file_as_it_was(keydb):
    with connect(keydb) as admin:
        svc = service(admin)
        f = new_factor(admin, svc, "keep-1")
        name, contents = key_file_state(admin)
        with connect(keydb, autocommit=False) as c:
            c.execute("SELECT * FROM totp.rotate_key()")
            c.rollback()
        assert key_file_state(admin) == (name, contents), "a rolled-back rotation changed the key file"
        # A rotation that fails half way: it waits at its end for an enrolment in flight (which
        # holds the current key), and is cancelled there, after re-sealing everything.
        enrolling = connect(keydb, autocommit=False)
        late = new_factor(enrolling, svc, "late-1")
        rotation = Background(keydb, "SELECT * FROM totp.rotate_key()")
        wait_until_waiting_on_lock(admin, rotation.pid)
        admin.execute("SELECT pg_cancel_backend(%s)", (rotation.pid,))
        rotation.join()
        assert rotation.error is not None and rotation.error.sqlstate == "57014", rotation.error
        assert key_file_state(admin) == (name, contents), "a failed rotation changed the key file"
        enrolling.commit()
        enrolling.close()
        with connect(keydb) as fresh:
            assert verify_now(fresh, svc, "keep-1", f)["status"] == "verified"
            assert verify_now(fresh, svc, "late-1", late)["status"] == "verified"


def test_rotation_and_retirement_wait_for_an_open_enrolment(keydb):
    """Finding 8: retire_keys during an open enrolment lost that factor. The enrolment holds its
    key; rotation waits for it at its end and re-seals its secret; retirement then removes the
    old key, and the factor verifies from a new backend."""
    with connect(keydb) as admin:
        svc = service(admin)
        new_factor(admin, svc, "warm-1")
        enrolling = connect(keydb, autocommit=False)
        f = new_factor(enrolling, svc, "open-1")
        rotation = Background(keydb, "SELECT * FROM totp.rotate_key()")
        wait_until_waiting_on_lock(admin, rotation.pid)
        enrolling.commit()
        enrolling.close()
        rotation.join()
        assert rotation.error is None, rotation.error
        retired = admin.execute("SELECT totp.retire_keys() AS r").fetchone()["r"]
        assert len(retired) == 1
        used = {r["key_id"] for r in admin.execute("SELECT DISTINCT key_id FROM totp_private.factor_secrets")}
        assert used == {rotation.result[0]["new_key_id"]}
        # An enrolment open during retire_keys holds the current key, which retirement never removes.
        enrolling = connect(keydb, autocommit=False)
        g = new_factor(enrolling, svc, "open-2")
        assert admin.execute("SELECT totp.retire_keys() AS r").fetchone()["r"] == []
        enrolling.commit()
        enrolling.close()
        with connect(keydb) as fresh:
            assert verify_now(fresh, svc, "open-1", f)["status"] == "verified"
            assert verify_now(fresh, svc, "open-2", g)["status"] == "verified"


def test_key_file_errors_show_the_path_only_to_superusers(keydb, roles):
    with connect(keydb) as admin:
        svc = service(admin)
        new_factor(admin, svc, "k-1")
        app = roles("keyerr")
        both_sets(admin, app)
        admin.execute(sql.SQL("ALTER DATABASE {} SET totp_verify.key_file = '/nonexistent/secret-place.key'")
                      .format(sql.Identifier(keydb)))
    with connect(keydb, user=app) as c:
        with refused("58P01") as info:
            new_factor(c, svc, "k-2")
    err = info.value
    assert "nonexistent" not in str(err) and "secret-place" not in (err.diag.message_detail or "")
    assert "key(s)" not in (err.diag.message_detail or "")
    with connect(keydb) as admin:
        with refused("58P01") as info:
            new_factor(admin, svc, "k-3")
        assert "/nonexistent/secret-place.key" in info.value.diag.message_detail
        admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(app)))


# ---------------------------------------------------------------------------------------------
# 5. Guessing is bounded whatever the caller's transaction does
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def app(roles):
    return roles("app", both_sets)


def test_subtransaction_loop_cannot_guess_past_the_budget(db, admin, app):
    """The attack: a PL/pgSQL loop of BEGIN ... EXCEPTION blocks, each guess rolled back. With 2
    challenges per hour of 2 attempts each, the factor takes 4 wrong codes an hour, however
    they are rolled back; the 5th check is refused, even with the right code."""
    svc = service(admin, max_challenges_per_hour=2, max_challenge_attempts=2)
    with connect(db, user=app) as c:
        f = verified_factor(c, svc, "brute-1")
        guesses = wrong_codes(f, 20)
        with refused("54000", 60308):
            c.execute(sql.SQL("""DO $$
                DECLARE code text; BEGIN
                  FOREACH code IN ARRAY {codes}::text[] LOOP
                    BEGIN
                      PERFORM totp.create_challenge({svc}, 'brute-1', {f}, code);
                      RAISE EXCEPTION 'roll this guess back';
                    EXCEPTION WHEN raise_exception THEN NULL;
                    END;
                  END LOOP;
                END $$""").format(codes=sql.Literal(guesses), svc=sql.Literal(svc), f=sql.Literal(f["sid"])))
        right = oathtool(f["binding_secret"])
        with refused("54000", 60308):
            c.execute("SELECT * FROM totp.create_challenge(%s, 'brute-1', %s, %s)", (svc, f["sid"], right))
    counters = admin.execute("SELECT challenges_in_hour FROM totp_private.factors WHERE sid = %s", (f["sid"],)).fetchone()
    assert counters["challenges_in_hour"] == 0, "the rolled-back guesses left no committed trace"
    assert admin.execute("SELECT count(*) AS n FROM totp_private.challenges WHERE factor_sid = %s",
                         (f["sid"],)).fetchone()["n"] == 0


def test_rolled_back_transactions_count_and_right_codes_do_not(db, admin, app):
    """A web framework that rolls back every request that fails: each wrong code in its own
    rolled-back transaction still counts; a right code gives its guess back."""
    svc = service(admin, max_challenges_per_hour=2, max_challenge_attempts=2)
    with connect(db, user=app, autocommit=False) as c:
        f = verified_factor(c, svc, "brute-2")
        c.commit()
        bad = wrong_codes(f, 6)
        for code in bad[:3]:
            ch = c.execute("SELECT * FROM totp.create_challenge(%s, 'brute-2', %s, %s)", (svc, f["sid"], code)).fetchone()
            assert ch["status"] == "pending"
            c.rollback()
        right = oathtool(f["binding_secret"])
        ch = c.execute("SELECT * FROM totp.create_challenge(%s, 'brute-2', %s, %s)", (svc, f["sid"], right)).fetchone()
        assert ch["status"] == "approved"
        c.rollback()
        ch = c.execute("SELECT * FROM totp.create_challenge(%s, 'brute-2', %s, %s)", (svc, f["sid"], bad[3])).fetchone()
        assert ch["status"] == "pending", "the right code used up a guess"
        c.rollback()
        with refused("54000", 60308):
            c.execute("SELECT * FROM totp.create_challenge(%s, 'brute-2', %s, %s)", (svc, f["sid"], bad[4]))
        c.rollback()


def test_unverified_factor_takes_its_attempts_once_whatever_rolls_back(db, admin, app):
    svc = service(admin)  # max_factor_attempts 5
    with connect(db, user=app, autocommit=False) as c:
        f = new_factor(c, svc, "brute-3")
        c.commit()
        bad = wrong_codes(f, 7)
        for code in bad[:5]:
            row = c.execute("SELECT * FROM totp.verify_factor(%s, 'brute-3', %s, %s)", (svc, f["sid"], code)).fetchone()
            assert row["status"] == "unverified"
            c.rollback()
        with refused("54000", 60310):
            c.execute("SELECT * FROM totp.verify_factor(%s, 'brute-3', %s, %s)", (svc, f["sid"], bad[5]))
        c.rollback()
        with refused("54000", 60310):
            c.execute("SELECT * FROM totp.verify_factor(%s, 'brute-3', %s, %s)",
                      (svc, f["sid"], oathtool(f["binding_secret"])))
        c.rollback()
    failed = admin.execute("SELECT failed_verifications FROM totp_private.factors WHERE sid = %s", (f["sid"],)).fetchone()
    assert failed["failed_verifications"] == 0


# ---------------------------------------------------------------------------------------------
# 6, 7. No configuration change enlarges the budget or lets a code be accepted twice
# ---------------------------------------------------------------------------------------------

def test_update_factor_cannot_weaken_pending_challenges(db, admin, app):
    svc = service(admin)
    with connect(db, user=app) as c:
        f = verified_factor(c, svc, "weaken-1")
        pending = [c.execute("SELECT * FROM totp.create_challenge(%s, 'weaken-1', %s)", (svc, f["sid"])).fetchone()
                   for _ in range(3)]
        same = c.execute("SELECT * FROM totp.update_factor(%s, 'weaken-1', %s, friendly_name => 'renamed')",
                         (svc, f["sid"])).fetchone()
        assert same["code_length"] == 6
        assert {r["status"] for r in c.execute("SELECT status FROM totp.challenges WHERE factor_sid = %s",
                                                (f["sid"],))} == {"pending"}, "a rename must not expire challenges"
        c.execute("SELECT * FROM totp.update_factor(%s, 'weaken-1', %s, code_length => 3, skew => 2)", (svc, f["sid"]))
        assert {r["status"] for r in c.execute("SELECT status FROM totp.challenges WHERE factor_sid = %s",
                                                (f["sid"],))} == {"expired"}
        for ch in pending:
            with refused("55000", 60323):
                c.execute("SELECT * FROM totp.update_challenge(%s, 'weaken-1', %s, '123')", (svc, ch["sid"]))


def test_replay_guard_survives_time_step_round_trips(db, admin, app):
    svc = service(admin)
    with connect(db, user=app) as c:
        f = verified_factor(c, svc, "replay-1")
        wait_inside_step(30, margin=2)
        code = oathtool(f["binding_secret"])
        ch = c.execute("SELECT * FROM totp.create_challenge(%s, 'replay-1', %s, %s)", (svc, f["sid"], code)).fetchone()
        assert ch["status"] == "approved"
        for detour in (60, 20, 40):
            c.execute("SELECT totp.update_factor(%s, 'replay-1', %s, time_step => %s)", (svc, f["sid"], detour))
            c.execute("SELECT totp.update_factor(%s, 'replay-1', %s, time_step => 30)", (svc, f["sid"]))
            again = c.execute("SELECT * FROM totp.create_challenge(%s, 'replay-1', %s, %s)",
                              (svc, f["sid"], code)).fetchone()
            assert again["status"] == "pending", f"the code was accepted again after 30 -> {detour} -> 30"
        # The guard refuses only what was used: the next step's code is fresh.
        nxt = oathtool(f["binding_secret"], at=time.time() + 30)
        assert c.execute("SELECT * FROM totp.create_challenge(%s, 'replay-1', %s, %s)",
                         (svc, f["sid"], nxt)).fetchone()["status"] == "approved"
        # And a new time_step's current code works at once (its steps have their own guard).
        c.execute("SELECT totp.update_factor(%s, 'replay-1', %s, time_step => 60)", (svc, f["sid"]))
        wait_inside_step(60, margin=2)
        sixty = oathtool(f["binding_secret"], step=60)
        assert c.execute("SELECT * FROM totp.create_challenge(%s, 'replay-1', %s, %s)",
                         (svc, f["sid"], sixty)).fetchone()["status"] == "approved"


# ---------------------------------------------------------------------------------------------
# 9. Step-up against a compromised application role
# ---------------------------------------------------------------------------------------------

def test_grant_sets_separate_enrolment_from_verification(db, admin, roles):
    enroller = roles("enrol", enrolment)
    verifier = roles("verify", verification)
    svc = service(admin)
    with connect(db, user=enroller) as e:
        f = verified_factor(e, svc, "split-1")
        with refused("42501"):
            e.execute("SELECT * FROM totp.create_challenge(%s, 'split-1', %s)", (svc, f["sid"]))
    with connect(db, user=verifier) as v:
        with refused("42501"):
            v.execute("SELECT * FROM totp.create_factor(%s, 'split-2', 'attacker phone', %s)",
                      (svc, "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"))
        with refused("42501"):
            v.execute("SELECT * FROM totp.verify_factor(%s, 'split-1', %s, '123456')", (svc, f["sid"]))
        with refused("42501"):
            v.execute("SELECT * FROM totp.events")
        ch = v.execute("SELECT * FROM totp.create_challenge(%s, 'split-1', %s, %s)",
                       (svc, f["sid"], oathtool(f["binding_secret"]))).fetchone()
        assert ch["status"] == "approved"


def test_min_factor_age_keeps_a_freshly_enrolled_factor_out_of_step_up(db, admin, app):
    """The app role enrols a factor with a secret it chose, verifies it and approves a challenge:
    has_recent_approval is true, but not with min_factor_age, nor does the require_approval
    trigger with a fourth argument let the write through — until the factor is old enough."""
    svc = service(admin)
    schema = f"shop_{SUFFIX}"
    admin.execute(sql.SQL("CREATE SCHEMA {s}; CREATE TABLE {s}.payouts (user_id text, amount int)").format(
        s=sql.Identifier(schema)))
    admin.execute(sql.SQL("CREATE TRIGGER step_up BEFORE INSERT ON {s}.payouts FOR EACH ROW "
                          "EXECUTE FUNCTION totp.require_approval({svc}, 'user_id', '5 minutes', '1 day')").format(
        s=sql.Identifier(schema), svc=sql.Literal(svc)))
    admin.execute(sql.SQL("GRANT USAGE ON SCHEMA {s} TO {r}; GRANT INSERT ON {s}.payouts TO {r}").format(
        s=sql.Identifier(schema), r=sql.Identifier(app)))
    chosen = base64.b32encode(b"attacker-chosen-key!").decode()
    with connect(db, user=app) as c:
        f = new_factor(c, svc, "victim-9", secret=chosen)
        verified = verify_now(c, svc, "victim-9", f)
        assert verified["status"] == "verified"
        nxt = code_at_step(f, verified["step"] + 1)
        assert c.execute("SELECT * FROM totp.create_challenge(%s, 'victim-9', %s, %s)",
                         (svc, f["sid"], nxt)).fetchone()["status"] == "approved"
        check = "SELECT totp.has_recent_approval(%s, 'victim-9', '5 minutes') AS any, " \
                "totp.has_recent_approval_from_aged_factor(%s, 'victim-9', '5 minutes', '1 day') AS aged"
        assert c.execute(check, (svc, svc)).fetchone() == {"any": True, "aged": False}
        with refused("42501"):
            c.execute(sql.SQL("INSERT INTO {}.payouts VALUES ('victim-9', 100)").format(sql.Identifier(schema)))
    # A day later (the test moves the verification back instead of waiting), the factor counts.
    admin.execute("UPDATE totp_private.factors SET date_verified = date_verified - interval '25 hours' WHERE sid = %s",
                  (f["sid"],))
    with connect(db, user=app) as c:
        assert c.execute(check, (svc, svc)).fetchone() == {"any": True, "aged": True}
        c.execute(sql.SQL("INSERT INTO {}.payouts VALUES ('victim-9', 100)").format(sql.Identifier(schema)))
    admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def test_has_recent_approval_measures_from_the_statement_not_the_transaction(db, admin, app):
    """Finding 14: in a long transaction an approval 5 min 10 s old read as fresh."""
    svc = service(admin)
    f = verified_factor(admin, svc, "long-1")
    ch = admin.execute("SELECT * FROM totp.create_challenge(%s, 'long-1', %s, %s)",
                       (svc, f["sid"], oathtool(f["binding_secret"]))).fetchone()
    assert ch["status"] == "approved"
    with connect(db, user=app, autocommit=False) as c:
        c.execute("SELECT now()")  # the transaction starts here
        # The approval is now 5 minutes less one second old; 1.5 s later it is past 5 minutes.
        admin.execute("UPDATE totp_private.challenges SET date_responded = clock_timestamp() - interval '299 seconds' "
                      "WHERE sid = %s", (ch["sid"],))
        c.execute("SELECT pg_sleep(1.5)")
        assert c.execute("SELECT totp.has_recent_approval(%s, 'long-1', '5 minutes') AS r",
                         (svc,)).fetchone()["r"] is False
        c.rollback()


# ---------------------------------------------------------------------------------------------
# 10. No secret, code or hidden detail in the server log with the documented settings
# ---------------------------------------------------------------------------------------------

def server_log(admin):
    """The server's log file, read through the server as superuser (works for any OS user)."""
    path = admin.execute("SELECT current_setting('unix_socket_directories') AS d").fetchone()["d"].split(",")[0]
    return admin.execute("SELECT pg_read_file(%s) AS t", (path.strip() + "/server.log",)).fetchone()["t"]


def enrol_and_verify_logged(db, app, svc, marker):
    """Enrols with a caller-supplied secret, verifies, and answers a challenge with hidden
    details, as the app role over the extended protocol (bind parameters)."""
    secret = base64.b32encode(uuid.uuid4().bytes + b"1234").decode().rstrip("=")
    with connect(db, user=app) as c:
        f = new_factor(c, svc, ident("logged"), secret=secret)
        verified = verify_now(c, svc, f["identity"], f)
        ch = c.execute("SELECT * FROM totp.create_challenge(%s, %s, %s, hidden_details => %s)",
                       (svc, f["identity"], f["sid"], Jsonb({"marker": marker}))).fetchone()
        answer = code_at_step(f, verified["step"] + 1)
        row = c.execute("SELECT * FROM totp.update_challenge(%s, %s, %s, %s)",
                        (svc, f["identity"], ch["sid"], answer)).fetchone()
        assert row["status"] == "approved"
    return secret, answer


def reload_setting(db, admin, name, value):
    """Sets `name` server-wide and waits until a new session sees it."""
    admin.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
    admin.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with connect(db) as c:
            if c.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()[name] == str(value):
                return
        time.sleep(0.05)
    raise AssertionError(f"{name} = {value} never reached new sessions")


def test_documented_log_settings_keep_secrets_and_codes_out_of_the_log(db, admin, app):
    svc = service(admin)
    try:
        reload_setting(db, admin, "log_statement", "all")
        # Control: Postgres's default logs bind parameters, and so the secret (the test can fail).
        reload_setting(db, admin, "log_parameter_max_length", -1)
        start = len(server_log(admin))
        secret, _ = enrol_and_verify_logged(db, app, svc, "control-marker")
        logged = server_log(admin)[start:]
        assert secret in logged and "control-marker" in logged, "the control saw no parameters: test is void"
        # The documented setting.
        reload_setting(db, admin, "log_parameter_max_length", 0)
        start = len(server_log(admin))
        secret, answer = enrol_and_verify_logged(db, app, svc, "hidden-marker")
        logged = server_log(admin)[start:]
        assert "totp.create_factor" in logged, "log_statement = all did not log the calls"
        assert secret not in logged and secret.lower() not in logged
        assert "hidden-marker" not in logged
        assert f"'{answer}'" not in logged and "parameters:" not in logged
    finally:
        admin.execute("ALTER SYSTEM RESET log_statement")
        admin.execute("ALTER SYSTEM RESET log_parameter_max_length")
        admin.execute("SELECT pg_reload_conf()")


# ---------------------------------------------------------------------------------------------
# 11. Events: rows readable only with a grant; NOTIFY carries nothing; deletions recorded
# ---------------------------------------------------------------------------------------------

def test_events_need_a_grant_and_notify_carries_no_data(db, admin, roles, app):
    nosy = roles("nosy")
    admin.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(db), sql.Identifier(nosy)))
    svc = service(admin)
    # The wake-up is off by default (totp_verify.notify); a superuser turns it on for the app.
    admin.execute(sql.SQL("ALTER ROLE {} SET totp_verify.notify = on").format(sql.Identifier(app)))
    with connect(db, user=nosy) as listener:
        listener.execute("LISTEN totp_events")
        with connect(db, user=app) as c:
            f = verified_factor(c, svc, "listened-1")
        notes = list(listener.notifies(timeout=10.0, stop_after=1))
        assert notes, "no wake-up was sent"
        assert all(n.payload == "" for n in notes), [n.payload for n in notes]
        with refused("42501"):
            listener.execute("SELECT * FROM totp.events")
    rows = admin.execute("SELECT type FROM totp.events WHERE factor_sid = %s ORDER BY date_created", (f["sid"],))
    assert [r["type"] for r in rows] == ["factor.created", "factor.verified"]


def test_deleting_an_entity_or_service_records_every_factor_deleted(db, admin):
    svc = service(admin)
    reader = EventReader(db)
    try:
        a = [new_factor(admin, svc, "gone-1")["sid"] for _ in range(2)]
        b = [new_factor(admin, svc, "gone-2")["sid"] for _ in range(3)]
        reader.drain(0)
        admin.execute("SELECT totp.delete_entity(%s, 'gone-1')", (svc,))
        assert sorted(e["factor_sid"] for e in reader.drain(0.5) if e["type"] == "factor.deleted") == sorted(a)
        admin.execute("SELECT totp.delete_service(%s)", (svc,))
        assert sorted(e["factor_sid"] for e in reader.drain(0.5) if e["type"] == "factor.deleted") == sorted(b)
    finally:
        reader.close()
    # Pruned after the service's retention (the service is gone: the default 7 days).
    svc2 = service(admin, event_retention="1 second")
    new_factor(admin, svc2, "pruned-1")
    admin.execute("UPDATE totp_private.events SET date_created = date_created - interval '2 seconds' "
                  "WHERE service_sid = %s", (svc2,))
    pruned = admin.execute("SELECT * FROM totp.run_maintenance()").fetchone()["pruned_events"]
    assert pruned >= 1
    assert admin.execute("SELECT count(*) AS n FROM totp.events WHERE service_sid = %s", (svc2,)).fetchone()["n"] == 0
    assert admin.execute("SELECT count(*) AS n FROM totp.events WHERE service_sid = %s", (svc,)).fetchone()["n"] == 10


# ---------------------------------------------------------------------------------------------
# 15, 16. Misconfigured triggers and spoofing names are refused
# ---------------------------------------------------------------------------------------------

def test_forget_entity_with_a_malformed_service_sid_is_refused(db, admin):
    schema = f"app_{SUFFIX}"
    admin.execute(sql.SQL("CREATE SCHEMA {s}; CREATE TABLE {s}.users (id text)").format(s=sql.Identifier(schema)))
    admin.execute(sql.SQL("CREATE TRIGGER forget AFTER DELETE ON {s}.users FOR EACH ROW "
                          "EXECUTE FUNCTION totp.forget_entity('VA-not-a-sid', 'id')").format(s=sql.Identifier(schema)))
    admin.execute(sql.SQL("INSERT INTO {s}.users VALUES ('u-1')").format(s=sql.Identifier(schema)))
    with refused("22023", 60200):
        admin.execute(sql.SQL("DELETE FROM {s}.users").format(s=sql.Identifier(schema)))
    admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest.mark.parametrize("name", ["evil\u202egpj.exe", "pay\u200bpal", "\ufeffbank", " ", "\u3000"])
def test_friendly_names_refuse_format_characters_and_blanks(admin, name):
    with refused("22023", 60200):
        admin.execute("SELECT * FROM totp.create_service(%s)", (name,))
    svc = service(admin)
    with refused("22023", 60306):
        new_factor(admin, svc, "names-1", friendly_name=name)


# ---------------------------------------------------------------------------------------------
# 5, without shared_preload_libraries: code checks are refused rather than left unbounded
# ---------------------------------------------------------------------------------------------



def as_postgres(*cmd):
    """Runs a command as the postgres OS user (the scripts' way: root directly, others by sudo)."""
    import os
    import subprocess
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else ["sudo", "-n", "-u", "postgres"]
    subprocess.run(prefix + list(cmd), check=True, capture_output=True)


def throwaway_cluster(name, options):
    """A cluster of this test's own (as the postgres OS user): yields (socket dir, port)."""
    import os
    import socket
    import subprocess
    base = f"/var/tmp/totp_verify-{name}-{SUFFIX}"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    subprocess.run(prefix + ["mkdir", "-p", base], check=True)
    subprocess.run(prefix + ["chown", "postgres:postgres", base], check=True)
    as_postgres(f"{PG_BIN}/initdb", "-D", f"{base}/data", "-U", "postgres", "--auth=trust")
    as_postgres(f"{PG_BIN}/pg_ctl", "-D", f"{base}/data", "-l", f"{base}/server.log", "-w", "-o",
                f"-p {port} -k {base} -c listen_addresses='' -c fsync=off {options}", "start")
    try:
        yield base, port
    finally:
        as_postgres(f"{PG_BIN}/pg_ctl", "-D", f"{base}/data", "-m", "immediate", "-w", "stop")
        subprocess.run(prefix + ["rm", "-rf", base], check=True)


@pytest.fixture(scope="module")
def unpreloaded():
    """A cluster started without shared_preload_libraries."""
    yield from throwaway_cluster("nopreload", "")


@pytest.fixture
def crashable():
    """A cluster whose backends the test may kill -9 (the whole cluster restarts then)."""
    yield from throwaway_cluster("crash", "-c shared_preload_libraries=totp_verify")


def connect_to(host, port, autocommit=True):
    return psycopg.connect(host=host, port=port, user="postgres", dbname="postgres", autocommit=autocommit,
                           row_factory=psycopg.rows.dict_row)


def test_a_rotation_killed_mid_way_leaves_every_secret_readable(crashable):
    """A crash in the middle of a rotation (its backend killed with SIGKILL after re-sealing
    everything, while it waits for an enrolment): the server recovers, the key file is as before
    and every factor verifies."""
    import os
    import signal
    import subprocess
    host, port = crashable
    with connect_to(host, port) as c:
        c.execute("CREATE EXTENSION totp_verify")
        svc = service(c)
        factors = [new_factor(c, svc, f"crash-{i}") for i in range(20)]
        before = key_file_state(c)
    enrolling = connect_to(host, port, autocommit=False)
    new_factor(enrolling, svc, "crash-open")
    rotation = Background(None, "SELECT * FROM totp.rotate_key()", conn=connect_to(host, port))
    # A session from before the crash: the postmaster ends it once it has begun the crash restart,
    # and only from then on do new connections wait for recovery (before that they still reach
    # the old, about-to-be-reset server).
    sentinel = connect_to(host, port)
    with connect_to(host, port) as watcher:
        wait_until_waiting_on_lock(watcher, rotation.pid)
        prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
        subprocess.run(prefix + ["kill", "-9", str(rotation.pid)], check=True)
    rotation.thread.join(60)
    assert rotation.error is not None
    enrolling.close()
    deadline = time.monotonic() + 60
    while True:  # the crash restart has begun once the sentinel session is gone
        try:
            sentinel.execute("SELECT 1")
        except psycopg.OperationalError:
            break
        assert time.monotonic() < deadline, "the server did not restart after the crash"
        time.sleep(0.05)
    sentinel.close()
    while True:  # crash recovery: wait until the server accepts connections again
        try:
            with connect_to(host, port) as c:
                c.execute("SELECT 1")
            break
        except psycopg.OperationalError:
            assert time.monotonic() < deadline, "the server did not recover"
            time.sleep(0.1)
    with connect_to(host, port) as c:
        assert key_file_state(c) == before, "the killed rotation changed the key file"
        assert c.execute("SELECT count(*) AS n FROM totp.factors WHERE identity = 'crash-open'").fetchone()["n"] == 0
        for i, f in enumerate(factors[:5]):
            assert verify_now(c, svc, f"crash-{i}", f)["status"] == "verified"
        row = c.execute("SELECT * FROM totp.rotate_key()").fetchone()
        assert (row["resealed"], row["unreadable"]) == (20, 0)


def test_without_preload_code_checks_are_refused_unless_allowed(unpreloaded):
    host, port = unpreloaded
    with connect_to(host, port) as c:
        c.execute("CREATE EXTENSION totp_verify")
        svc = service(c)
        f = new_factor(c, svc, "nopre-1")
        code = oathtool(f["binding_secret"])
        with refused("55000"):
            c.execute("SELECT * FROM totp.verify_factor(%s, 'nopre-1', %s, %s)", (svc, f["sid"], code))
        # A superuser may accept the weaker behaviour explicitly; an ordinary role may not.
        c.execute("CREATE ROLE nopre_app LOGIN")
        c.execute("SELECT totp.grant_enrolment('nopre_app')")
        with psycopg.connect(host=host, port=port, user="nopre_app", dbname="postgres", autocommit=True) as app:
            # Set before the library is loaded, a placeholder takes the value, and loading the
            # library drops it (the setting is superuser-only): still refused.
            app.execute("SET totp_verify.allow_unbounded_rollbacks = on")
            with refused("55000"):
                app.execute("SELECT * FROM totp.verify_factor(%s, 'nopre-1', %s, %s)", (svc, f["sid"], code))
            with refused("42501"):
                app.execute("SET totp_verify.allow_unbounded_rollbacks = on")
        c.execute("SET totp_verify.allow_unbounded_rollbacks = on")
        row = c.execute("SELECT * FROM totp.verify_factor(%s, 'nopre-1', %s, %s)", (svc, f["sid"], code)).fetchone()
        assert row["status"] == "verified"
