"""SPEC §7 "Privileges", the secret staying unreadable (§3), and pinned search_path, with real
login roles connecting as real clients.

Roles are cluster-wide: every role here has a per-module unique name and is dropped (after
DROP OWNED in the test database) when the module ends.
"""

import base64
import time
import uuid

import psycopg
import pytest
from psycopg import sql

from conftest import connect, new_service, oathtool, refused, wait_inside_step

# Codes are judged against the server's current step: see conftest.pytest_pyfunc_call.
pytestmark = pytest.mark.step_bounded

SUFFIX = uuid.uuid4().hex[:6]

RELATIONS = ["totp.services", "totp.entities", "totp.factors", "totp.challenges",
             "totp_private.factors", "totp_private.challenges", "totp_private.keys"]
PUBLIC_RELATIONS = ["totp.services", "totp.entities", "totp.factors", "totp.challenges"]

# What the README documents for an application role.
APP_FUNCTIONS = ["create_factor", "verify_factor", "create_challenge", "update_challenge", "update_factor",
                 "delete_factor", "create_entity", "delete_entity", "has_recent_approval"]
PURE_FUNCTIONS = ["hotp_code", "totp_code", "base32_encode", "base32_decode", "generate_secret",
                  "otpauth_uri", "qr_svg"]
TRIGGER_FUNCTIONS = ["forget_entity", "require_approval"]


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def admin(db):
    with connect(db) as c:
        yield c


@pytest.fixture(scope="module")
def roles(db, admin):
    """make_role(purpose) creates a LOGIN role with no grants; all are dropped at the end."""
    made = []

    def make_role(purpose):
        name = f"totp_{purpose}_{SUFFIX}"
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        made.append(name)
        return name

    yield make_role
    for name in made:
        ident = sql.Identifier(name)
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,))
        admin.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(ident))
        admin.execute(sql.SQL("DROP ROLE {}").format(ident))


def all_relations(admin):
    """The relations named in the brief plus every table, view, sequence or materialized view
    now in schemas totp and totp_private, so that new ones are covered automatically."""
    found = [r["name"] for r in admin.execute(
        """SELECT c.oid::regclass::text AS name FROM pg_class c
            WHERE c.relnamespace IN ('totp'::regnamespace, 'totp_private'::regnamespace)
              AND c.relkind IN ('r', 'v', 'm', 'S', 'f', 'p') ORDER BY 1""").fetchall()]
    assert set(RELATIONS) <= set(found), set(RELATIONS) - set(found)
    return found


def as_role(db, role):
    return connect(db, user=role)


def totp_functions(conn, names=None):
    """(regprocedure text, proname, [arg type]) of every function in schema totp."""
    rows = conn.execute(
        """SELECT p.oid::regprocedure::text AS signature, p.proname,
                  ARRAY(SELECT format_type(t, NULL) FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY a(t, n)
                        ORDER BY n) AS argtypes
             FROM pg_proc p WHERE p.pronamespace = 'totp'::regnamespace ORDER BY 1"""
    ).fetchall()
    return [r for r in rows if names is None or r["proname"] in names]


def null_call(fn):
    """A call with NULL arguments of the right types. Each NULL is a scalar subquery, so that the
    planner cannot fold a STRICT function's call to NULL before the executor checks EXECUTE."""
    args = ", ".join(f"(SELECT NULL::{t})" for t in fn["argtypes"])
    return f"SELECT totp.{fn['proname']}({args})"


def grant_documented(admin, role):
    """The grants the README documents for an application role."""
    r = sql.Identifier(role)
    admin.execute(sql.SQL("GRANT USAGE ON SCHEMA totp TO {}").format(r))
    admin.execute(sql.SQL("GRANT SELECT ON totp.services, totp.entities, totp.factors, totp.challenges TO {}")
                  .format(r))
    fns = totp_functions(admin, APP_FUNCTIONS + PURE_FUNCTIONS)
    assert {f["proname"] for f in fns} >= set(APP_FUNCTIONS)
    for fn in fns:
        admin.execute(sql.SQL("GRANT EXECUTE ON FUNCTION {} TO {}").format(sql.SQL(fn["signature"]), r))


def identity():
    return "user-" + uuid.uuid4().hex[:12]


def step_now(step=30):
    return int(time.time()) // step


def code_at(factor, step_index):
    step = factor["time_step"]
    return oathtool(factor["binding_secret"], factor["alg"], factor["code_length"], step,
                    at=step_index * step + step / 2)


def raw_secret(b32):
    return base64.b32decode(b32 + "=" * (-len(b32) % 8))


def full_sequence(conn, service_sid, ident):
    """Enrol and verify as a client does: create_entity, create_factor, verify_factor with an
    oathtool code, a challenge approved at once, a challenge answered with update_challenge,
    has_recent_approval, update_factor. Returns the new factor row (with binding_secret)."""
    entity = conn.execute("SELECT * FROM totp.create_entity(%s, %s)", (service_sid, ident)).fetchone()
    assert entity["sid"].startswith("YE")
    factor = conn.execute("SELECT * FROM totp.create_factor(%s, %s, %s)",
                          (service_sid, ident, "phone")).fetchone()
    assert factor["binding_uri"].startswith("otpauth://totp/")
    wait_inside_step(factor["time_step"], 3)
    t = step_now(factor["time_step"])
    row = conn.execute("SELECT * FROM totp.verify_factor(%s, %s, %s, %s)",
                       (service_sid, ident, factor["sid"], code_at(factor, t - 1))).fetchone()
    assert row["status"] == "verified"
    ch = conn.execute("SELECT * FROM totp.create_challenge(%s, %s, %s, %s)",
                      (service_sid, ident, factor["sid"], code_at(factor, t))).fetchone()
    assert ch["status"] == "approved"
    ch2 = conn.execute("SELECT * FROM totp.create_challenge(%s, %s, %s)",
                       (service_sid, ident, factor["sid"])).fetchone()
    assert ch2["status"] == "pending"
    replay = conn.execute("SELECT * FROM totp.update_challenge(%s, %s, %s, %s)",
                          (service_sid, ident, ch2["sid"], code_at(factor, t))).fetchone()
    assert replay["status"] == "pending"
    ok = conn.execute("SELECT * FROM totp.update_challenge(%s, %s, %s, %s, %s)",
                      (service_sid, ident, ch2["sid"], code_at(factor, t + 1), '{"ip": "10.0.0.1"}')).fetchone()
    assert ok["status"] == "approved"
    assert conn.execute("SELECT totp.has_recent_approval(%s, %s, '5 minutes') AS ok",
                        (service_sid, ident)).fetchone()["ok"] is True
    upd = conn.execute("SELECT * FROM totp.update_factor(%s, %s, %s, friendly_name => %s)",
                       (service_sid, ident, factor["sid"], "work phone")).fetchone()
    assert upd["friendly_name"] == "work phone"
    return factor


# ---------------------------------------------------------------------------------------------
# B. After CREATE EXTENSION, PUBLIC can do nothing
# ---------------------------------------------------------------------------------------------

def test_role_without_grants_is_refused_everything(db, admin, roles):
    nobody = roles("nobody")
    service = new_service(admin, "No grants")["sid"]
    fns = totp_functions(admin)
    assert len(fns) >= 20
    relations = all_relations(admin)
    with as_role(db, nobody) as c:
        for rel in relations:
            for stmt in (f"SELECT * FROM {rel} LIMIT 1", f"DELETE FROM {rel}", f"TRUNCATE {rel}"):
                with refused("42501"):
                    c.execute(stmt)
        with refused("42501"):
            c.execute("UPDATE totp.services SET max_factor_attempts = 1000")
        with refused("42501"):
            c.execute("INSERT INTO totp.entities (identity, service_sid, sid, date_created, date_updated) "
                      "VALUES ('x', %s, 'YE' || md5('x'), now(), now())", (service,))
        for fn in fns:
            with refused("42501"):
                c.execute(null_call(fn))
        # And with real arguments too, for the functions that would change state.
        with refused("42501"):
            c.execute("SELECT * FROM totp.create_factor(%s, 'alice', 'phone')", (service,))
        with refused("42501"):
            c.execute("SELECT totp.has_recent_approval(%s, 'alice', '1 hour')", (service,))
    # The catalog agrees: no privilege at all, for this role and hence for PUBLIC.
    rows = admin.execute(
        """SELECT p.oid::regprocedure::text AS f FROM pg_proc p
            WHERE p.pronamespace IN ('totp'::regnamespace, 'totp_private'::regnamespace)
              AND has_function_privilege(%s, p.oid, 'EXECUTE')""", (nobody,)).fetchall()
    assert rows == []
    for rel in relations:
        for priv in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"):
            assert not admin.execute("SELECT has_table_privilege(%s, %s, %s) AS p",
                                     (nobody, rel, priv)).fetchone()["p"], (rel, priv)
    for schema in ("totp", "totp_private"):
        for priv in ("USAGE", "CREATE"):
            assert not admin.execute("SELECT has_schema_privilege(%s, %s, %s) AS p",
                                     (nobody, schema, priv)).fetchone()["p"], (schema, priv)


def test_schema_usage_alone_grants_nothing(db, admin, roles):
    """USAGE on schema totp (the first documented grant) still gives no table and no function."""
    role = roles("usage")
    admin.execute(sql.SQL("GRANT USAGE ON SCHEMA totp TO {}").format(sql.Identifier(role)))
    with as_role(db, role) as c:
        for rel in all_relations(admin):
            with refused("42501"):
                c.execute(f"SELECT * FROM {rel} LIMIT 1")
        for fn in totp_functions(admin):
            with refused("42501") as info:
                c.execute(null_call(fn))
            assert "permission denied" in str(info.value)


# ---------------------------------------------------------------------------------------------
# B. The documented grants: enrol and verify end to end, never read a secret
# ---------------------------------------------------------------------------------------------

def test_documented_grants_enrol_and_verify_end_to_end(db, admin, roles):
    app = roles("app")
    grant_documented(admin, app)
    service = new_service(admin, "App grants")["sid"]
    ident = identity()
    with as_role(db, app) as c:
        factor = full_sequence(c, service, ident)
        # Plain SQL reads of the public relations work.
        assert c.execute("SELECT status FROM totp.factors WHERE sid = %s", (factor["sid"],)).fetchone()["status"] \
            == "verified"
        assert len(c.execute("SELECT * FROM totp.challenges WHERE factor_sid = %s", (factor["sid"],)).fetchall()) == 2
        assert c.execute("SELECT count(*) AS n FROM totp.entities WHERE identity = %s", (ident,)).fetchone()["n"] == 1
        assert c.execute("SELECT friendly_name FROM totp.services WHERE sid = %s", (service,)).fetchone()
        # Pure functions.
        assert c.execute("SELECT totp.hotp_code('12345678901234567890'::bytea, 0) AS c").fetchone()["c"] == "755224"
        assert len(c.execute("SELECT totp.generate_secret() AS s").fetchone()["s"]) == 32
        # Deletes.
        c.execute("SELECT totp.delete_factor(%s, %s, %s)", (service, ident, factor["sid"]))
        assert c.execute("SELECT count(*) AS n FROM totp.factors WHERE identity = %s", (ident,)).fetchone()["n"] == 0
        c.execute("SELECT totp.delete_entity(%s, %s)", (service, ident))
        # Not documented for the application: service management, maintenance, private tables,
        # writes to the tables.
        with refused("42501"):
            c.execute("SELECT * FROM totp.create_service('Mine')")
        with refused("42501"):
            c.execute("SELECT totp.delete_service(%s)", (service,))
        with refused("42501"):
            c.execute("SELECT * FROM totp.run_maintenance()")
        # Every relation in totp is a read-only view: writes are refused whatever is granted.
        with refused("55000"):
            c.execute("UPDATE totp.services SET max_factor_attempts = 100000")
        with refused("55000"):
            c.execute("DELETE FROM totp.entities")
        for rel in all_relations(admin):
            if rel.startswith("totp_private."):
                with refused("42501"):
                    c.execute(f"SELECT * FROM {rel}")


def scan_for_secrets(conn, secrets_b32, only=None):
    """Every relation the connected role may SELECT (any schema, catalogs included), every row,
    every column: looks for each secret in base32 (any case), as hex and base64 of its bytes,
    and for the raw bytes inside bytea columns. Returns (hits, relations scanned, errors).

    information_schema is left out: its views are projections of the pg_catalog relations,
    which are scanned directly, and some (element_types) take seconds each to compute."""
    raws = [raw_secret(s) for s in secrets_b32]
    needles_upper = [s.upper() for s in secrets_b32]
    needles_lower = [r.hex() for r in raws]
    needles_exact = [base64.b64encode(r).decode() for r in raws]
    rels = conn.execute(
        """SELECT c.oid, c.oid::regclass::text AS name FROM pg_class c
            WHERE c.relkind IN ('r', 'v', 'm', 'f', 'p')
              AND c.relnamespace <> 'information_schema'::regnamespace
              AND has_table_privilege(c.oid, 'SELECT')
              AND (%s::regclass[] IS NULL OR c.oid = ANY(%s::regclass[])) ORDER BY 1""", (only, only)).fetchall()
    hits, errors = [], []
    for rel in rels:
        bytea_cols = [r["attname"] for r in conn.execute(
            """SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped
                 AND atttypid = 'bytea'::regtype""", (rel["oid"],)).fetchall()]
        conds = [sql.SQL("EXISTS (SELECT 1 FROM unnest(%(u)s::text[]) n WHERE strpos(upper(t::text), n) > 0)"),
                 sql.SQL("EXISTS (SELECT 1 FROM unnest(%(l)s::text[]) n WHERE strpos(lower(t::text), n) > 0)"),
                 sql.SQL("EXISTS (SELECT 1 FROM unnest(%(e)s::text[]) n WHERE strpos(t::text, n) > 0)")]
        for col in bytea_cols:
            conds.append(sql.SQL("EXISTS (SELECT 1 FROM unnest(%(r)s::bytea[]) n WHERE position(n IN t.{c}) > 0)")
                         .format(c=sql.Identifier(col)))
        query = sql.SQL("SELECT count(*) AS n FROM {rel} t WHERE {cond}").format(
            rel=sql.SQL(rel["name"]), cond=sql.SQL(" OR ").join(conds))
        try:
            n = conn.execute(query, {"u": needles_upper, "l": needles_lower, "e": needles_exact,
                                     "r": raws}).fetchone()["n"]
        except psycopg.Error as e:
            errors.append((rel["name"], e.sqlstate, str(e)))
            continue
        if n:
            hits.append((rel["name"], n))
    return hits, [r["name"] for r in rels], errors


def test_no_relation_the_app_can_read_holds_a_secret(db, admin, roles):
    app = roles("reader")
    grant_documented(admin, app)
    service = new_service(admin, "Secret scan")["sid"]
    secrets = []
    with as_role(db, app) as c:
        for _ in range(3):
            secrets.append(full_sequence(c, service, identity())["binding_secret"])
    # One supplied by the caller (bound as a parameter), verified by the app.
    supplied = base64.b32encode(uuid.uuid4().bytes + uuid.uuid4().bytes[:4]).decode().rstrip("=")
    ident = identity()
    f = admin.execute("SELECT * FROM totp.create_factor(%s, %s, 'supplied', secret => %s)",
                      (service, ident, supplied)).fetchone()
    assert f["binding_secret"] == supplied
    with as_role(db, app) as c:
        wait_inside_step(30, 3)
        assert c.execute("SELECT * FROM totp.verify_factor(%s, %s, %s, %s)",
                         (service, ident, f["sid"], code_at(f, step_now()))).fetchone()["status"] == "verified"
    secrets.append(supplied)
    # The secrets are there (sealed), as the owner sees them.
    assert admin.execute("SELECT count(*) AS n FROM totp_private.factors WHERE service_sid = %s",
                         (service,)).fetchone()["n"] == 4

    def check(role_conn, label):
        hits, scanned, errors = scan_for_secrets(role_conn, secrets)
        assert set(PUBLIC_RELATIONS) <= set(scanned), label
        assert not any(r.startswith("totp_private.") for r in scanned), label
        assert not hits, f"{label}: secret readable in {hits}"
        assert not errors, f"{label}: {errors}"
        for rel in all_relations(admin):
            if rel.startswith("totp_private."):
                with refused("42501"):
                    role_conn.execute(f"SELECT * FROM {rel}")
        return scanned

    with as_role(db, app) as c:
        check(c, "documented grants")
    # The scan itself finds a secret where one is readable (a table of the owner's made readable).
    admin.execute("CREATE TABLE public.scan_canary AS SELECT %s::text AS s, %s::bytea AS b",
                  (secrets[0].lower(), raw_secret(secrets[1])))
    admin.execute(sql.SQL("GRANT SELECT ON public.scan_canary TO {}").format(sql.Identifier(app)))
    with as_role(db, app) as c:
        hits, _, _ = scan_for_secrets(c, secrets, only=["public.scan_canary", "totp.factors"])
        assert hits == [("scan_canary", 1)]
    admin.execute("DROP TABLE public.scan_canary")

    # The broadest grants a DBA might give on schema totp change nothing.
    r = sql.Identifier(app)
    admin.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA totp TO {}").format(r))
    admin.execute(sql.SQL("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA totp TO {}").format(r))
    with as_role(db, app) as c:
        # Every function is callable now (maintenance included); none gives a secret back either.
        assert c.execute("SELECT * FROM totp.run_maintenance()").fetchone() is not None
        check(c, "GRANT SELECT ON ALL TABLES + EXECUTE ON ALL FUNCTIONS IN SCHEMA totp")

    # Even a role that may read every table (pg_read_all_data reaches totp_private) sees only
    # ciphertext: the secret is sealed at rest (SPEC §8).
    reader = roles("allread")
    admin.execute(sql.SQL("GRANT pg_read_all_data TO {}").format(sql.Identifier(reader)))
    with as_role(db, reader) as c:
        hits, scanned, errors = scan_for_secrets(c, secrets)
        assert {"totp_private.factors", "totp_private.keys"} <= set(scanned)
        assert not hits, f"pg_read_all_data: secret readable in {hits}"
        # Some catalog views call superuser-only functions; only those may refuse.
        assert all(e[1] == "42501" and not e[0].startswith("totp") for e in errors), errors
        assert c.execute("SELECT count(*) AS n FROM totp_private.factors WHERE service_sid = %s",
                         (service,)).fetchone()["n"] == 4


def test_trigger_functions_need_execute(db, admin, roles):
    """CREATE TRIGGER with totp.forget_entity / totp.require_approval is refused (42501) to a role
    with the documented grants; granting EXECUTE on the trigger function allows it."""
    app = roles("trig")
    grant_documented(admin, app)
    r = sql.Identifier(app)
    schema = f"app_{SUFFIX}"
    admin.execute(sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(sql.Identifier(schema), r))
    service = new_service(admin, "Triggers")["sid"]
    ident = identity()
    with as_role(db, app) as c:
        c.execute(f"CREATE TABLE {schema}.users (id serial PRIMARY KEY, login text NOT NULL)")
        with refused("42501"):
            c.execute(f"CREATE TRIGGER forget AFTER DELETE ON {schema}.users FOR EACH ROW "
                      f"EXECUTE FUNCTION totp.forget_entity('{service}', 'login')")
        with refused("42501"):
            c.execute(f"CREATE TRIGGER stepup BEFORE INSERT OR UPDATE OR DELETE ON {schema}.users FOR EACH ROW "
                      f"EXECUTE FUNCTION totp.require_approval('{service}', 'login', '5 minutes')")

    admin.execute(sql.SQL("GRANT EXECUTE ON FUNCTION totp.forget_entity() TO {}").format(r))
    with as_role(db, app) as c:
        c.execute(f"CREATE TRIGGER forget AFTER DELETE ON {schema}.users FOR EACH ROW "
                  f"EXECUTE FUNCTION totp.forget_entity('{service}', 'login')")
        with refused("42501"):
            c.execute(f"CREATE TRIGGER stepup BEFORE INSERT OR UPDATE OR DELETE ON {schema}.users FOR EACH ROW "
                      f"EXECUTE FUNCTION totp.require_approval('{service}', 'login', '5 minutes')")
        c.execute(f"INSERT INTO {schema}.users (login) VALUES (%s)", (ident,))
        c.execute("SELECT * FROM totp.create_factor(%s, %s, 'phone')", (service, ident))
        assert c.execute("SELECT count(*) AS n FROM totp.entities WHERE identity = %s", (ident,)).fetchone()["n"] == 1
        c.execute(f"DELETE FROM {schema}.users WHERE login = %s", (ident,))
        assert c.execute("SELECT count(*) AS n FROM totp.entities WHERE identity = %s", (ident,)).fetchone()["n"] == 0
        assert c.execute("SELECT count(*) AS n FROM totp.factors WHERE identity = %s", (ident,)).fetchone()["n"] == 0

    admin.execute(sql.SQL("GRANT EXECUTE ON FUNCTION totp.require_approval() TO {}").format(r))
    ident2 = identity()
    with as_role(db, app) as c:
        c.execute(f"CREATE TRIGGER stepup BEFORE INSERT OR UPDATE OR DELETE ON {schema}.users FOR EACH ROW "
                  f"EXECUTE FUNCTION totp.require_approval('{service}', 'login', '5 minutes')")
        with refused("42501"):
            c.execute(f"INSERT INTO {schema}.users (login) VALUES (%s)", (ident2,))
        full_sequence(c, service, ident2)
        c.execute(f"INSERT INTO {schema}.users (login) VALUES (%s)", (ident2,))
        c.execute(f"DELETE FROM {schema}.users WHERE login = %s", (ident2,))
        assert c.execute("SELECT count(*) AS n FROM totp.entities WHERE identity = %s", (ident2,)).fetchone()["n"] == 0


# ---------------------------------------------------------------------------------------------
# C. search_path
# ---------------------------------------------------------------------------------------------

def test_security_definer_functions_pin_search_path(admin):
    rows = admin.execute(
        """SELECT p.oid::regprocedure::text AS f, p.prosecdef, p.proconfig FROM pg_proc p
             JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
             JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'totp_verify'
            ORDER BY 1""").fetchall()
    in_totp = admin.execute("SELECT count(*) AS n FROM pg_proc WHERE pronamespace = 'totp'::regnamespace"
                            ).fetchone()["n"]
    assert len(rows) >= in_totp, "every function of schema totp belongs to the extension"
    definers = [r for r in rows if r["prosecdef"]]
    assert {f"totp.{n}" for n in APP_FUNCTIONS + TRIGGER_FUNCTIONS} <= {r["f"].split("(")[0] for r in definers}
    for r in definers:
        settings = dict(s.split("=", 1) for s in (r["proconfig"] or []))
        assert "search_path" in settings, f"{r['f']} is SECURITY DEFINER without a pinned search_path"
        path = [p.strip().strip('"') for p in settings["search_path"].split(",")]
        assert path == ["pg_catalog", "pg_temp"], f"{r['f']}: search_path={settings['search_path']}"


EVIL_SQL = """
CREATE TABLE {evil}.hits (fn text NOT NULL, who name NOT NULL DEFAULT current_user);
CREATE FUNCTION {evil}.hit(fn text) RETURNS void LANGUAGE sql SECURITY INVOKER
    SET search_path = pg_catalog AS $$ INSERT INTO {evil}.hits (fn) VALUES (fn) $$;

CREATE FUNCTION {evil}.now() RETURNS timestamptz LANGUAGE plpgsql SET search_path = pg_catalog AS
    $$ BEGIN PERFORM {evil}.hit('now'); RETURN pg_catalog.now(); END $$;
CREATE FUNCTION {evil}.clock_timestamp() RETURNS timestamptz LANGUAGE plpgsql SET search_path = pg_catalog AS
    $$ BEGIN PERFORM {evil}.hit('clock_timestamp'); RETURN pg_catalog.clock_timestamp(); END $$;
CREATE FUNCTION {evil}.lower(text) RETURNS text LANGUAGE plpgsql SET search_path = pg_catalog AS
    $$ BEGIN PERFORM {evil}.hit('lower'); RETURN pg_catalog.lower($1); END $$;
CREATE FUNCTION {evil}.upper(text) RETURNS text LANGUAGE plpgsql SET search_path = pg_catalog AS
    $$ BEGIN PERFORM {evil}.hit('upper'); RETURN pg_catalog.upper($1); END $$;
CREATE FUNCTION {evil}.length(text) RETURNS integer LANGUAGE plpgsql SET search_path = pg_catalog AS
    $$ BEGIN PERFORM {evil}.hit('length'); RETURN pg_catalog.length($1); END $$;
CREATE FUNCTION {evil}.char_length(text) RETURNS integer LANGUAGE plpgsql SET search_path = pg_catalog AS
    $$ BEGIN PERFORM {evil}.hit('char_length'); RETURN pg_catalog.char_length($1); END $$;
CREATE FUNCTION {evil}.count_step(bigint) RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog AS
    $$ BEGIN PERFORM {evil}.hit('count'); RETURN $1 + 1; END $$;
CREATE FUNCTION {evil}.count_step(bigint, anyelement) RETURNS bigint LANGUAGE plpgsql SET search_path = pg_catalog AS
    $$ BEGIN PERFORM {evil}.hit('count'); RETURN $1 + 1; END $$;
CREATE AGGREGATE {evil}.count(*) (sfunc = {evil}.count_step, stype = bigint, initcond = '0');
CREATE AGGREGATE {evil}.count(anyelement) (sfunc = {evil}.count_step, stype = bigint, initcond = '0');
CREATE FUNCTION {evil}.pg_notify(text, text) RETURNS void LANGUAGE plpgsql SET search_path = pg_catalog AS
    $$ BEGIN PERFORM {evil}.hit('pg_notify'); PERFORM pg_catalog.pg_notify($1, $2); END $$;
CREATE FUNCTION {evil}.to_jsonb(anyelement) RETURNS jsonb LANGUAGE plpgsql SET search_path = pg_catalog AS
    $$ BEGIN PERFORM {evil}.hit('to_jsonb'); RETURN pg_catalog.to_jsonb($1); END $$;
CREATE FUNCTION {evil}.json_build_object(VARIADIC text[]) RETURNS json LANGUAGE plpgsql
    SET search_path = pg_catalog AS
    $$ BEGIN PERFORM {evil}.hit('json_build_object'); RETURN pg_catalog.json_build_object(VARIADIC $1); END $$;
CREATE FUNCTION {evil}.json_build_object(text, text, text, text, text, text, text, text, text, text, text,
                                         timestamptz) RETURNS json LANGUAGE plpgsql SET search_path = pg_catalog AS
    $$ BEGIN PERFORM {evil}.hit('json_build_object');
       RETURN pg_catalog.json_build_object($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12); END $$;
CREATE FUNCTION {evil}.json_strip_nulls(json) RETURNS json LANGUAGE plpgsql SET search_path = pg_catalog AS
    $$ BEGIN PERFORM {evil}.hit('json_strip_nulls'); RETURN pg_catalog.json_strip_nulls($1); END $$;
CREATE FUNCTION {evil}.format(text, VARIADIC text[]) RETURNS text LANGUAGE plpgsql SET search_path = pg_catalog AS
    $$ BEGIN PERFORM {evil}.hit('format'); RETURN pg_catalog.format($1, VARIADIC $2); END $$;
CREATE FUNCTION {evil}.texteq(text, text) RETURNS boolean LANGUAGE plpgsql SET search_path = pg_catalog AS
    $$ BEGIN PERFORM {evil}.hit('='); RETURN pg_catalog.texteq($1, $2); END $$;
CREATE OPERATOR {evil}.= (leftarg = text, rightarg = text, function = {evil}.texteq);
CREATE FUNCTION {evil}.jsonb_exists(jsonb, text) RETURNS boolean LANGUAGE plpgsql SET search_path = pg_catalog AS
    $$ BEGIN PERFORM {evil}.hit('?'); RETURN pg_catalog.jsonb_exists($1, $2); END $$;
CREATE OPERATOR {evil}.? (leftarg = jsonb, rightarg = text, function = {evil}.jsonb_exists);
CREATE FUNCTION {evil}.jsonb_field(jsonb, text) RETURNS text LANGUAGE plpgsql SET search_path = pg_catalog AS
    $$ BEGIN PERFORM {evil}.hit('->>'); RETURN pg_catalog.jsonb_object_field_text($1, $2); END $$;
CREATE OPERATOR {evil}.->> (leftarg = jsonb, rightarg = text, function = {evil}.jsonb_field);
"""


def test_caller_search_path_cannot_hijack_anything(db, admin, roles):
    """A caller with its own now(), lower(), length(), count(), pg_notify(), to_jsonb(),
    json_build_object(), format(), `=` on text, `?` and `->>` on jsonb, first in its search_path,
    runs enrol, verify, challenges, has_recent_approval and both trigger functions: none of its
    functions runs (they would log to evil.hits), everything succeeds."""
    app = roles("evil")
    grant_documented(admin, app)
    r = sql.Identifier(app)
    for fn in TRIGGER_FUNCTIONS:
        admin.execute(sql.SQL("GRANT EXECUTE ON FUNCTION totp.{}() TO {}").format(sql.Identifier(fn), r))
    evil, appschema = f"evil_{SUFFIX}", f"evilapp_{SUFFIX}"
    for schema in (evil, appschema):
        admin.execute(sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(sql.Identifier(schema), r))
    service = new_service(admin, "Hijack")["sid"]
    with as_role(db, app) as c:
        c.execute(EVIL_SQL.format(evil=evil))
        c.execute(f"CREATE TABLE {appschema}.users (id integer PRIMARY KEY, login text NOT NULL)")
        c.execute(f"CREATE TRIGGER stepup BEFORE INSERT OR UPDATE OR DELETE ON {appschema}.users FOR EACH ROW "
                  f"EXECUTE FUNCTION totp.require_approval('{service}', 'login', '5 minutes')")
        c.execute(f"CREATE TRIGGER forget AFTER DELETE ON {appschema}.users FOR EACH ROW "
                  f"EXECUTE FUNCTION totp.forget_entity('{service}', 'login')")

    def hits():
        return [(h["fn"], h["who"]) for h in admin.execute(f"SELECT * FROM {evil}.hits").fetchall()]

    ident, other = identity(), identity()
    with as_role(db, app) as c:
        c.execute(f"SET search_path = {evil}, public, pg_catalog")
        # Hostile but legitimate session settings too: output formats and zone must not matter.
        for setting, value in [("TimeZone", "Pacific/Kiritimati"), ("DateStyle", "ISO, DMY"),
                               ("IntervalStyle", "iso_8601"), ("bytea_output", "escape"),
                               ("extra_float_digits", "-15")]:
            c.execute(sql.SQL("SET {} = {}").format(sql.Identifier(setting), sql.Literal(value)))
        # Control: the caller's own unqualified calls do reach the impostors.
        c.execute("SELECT now(), lower('A'), length('abc'), 'a'::text = 'a'::text AS eq, "
                  "to_jsonb(1) ? 'x', '{\"a\": 1}'::jsonb ->> 'a'")
        c.execute("SELECT count(*) FROM (VALUES (1)) v")
        assert {h for h, _ in hits()} >= {"now", "lower", "length", "=", "to_jsonb", "?", "->>", "count"}
        admin.execute(f"TRUNCATE {evil}.hits")

        factor = full_sequence(c, service, ident)
        # The views, read under the hostile path (their definitions are bound at creation).
        c.execute("SELECT * FROM totp.factors").fetchall()
        c.execute("SELECT * FROM totp.challenges").fetchall()
        # Trigger functions: require_approval on insert/update/delete, forget_entity on delete.
        c.execute(f"INSERT INTO {appschema}.users (id, login) VALUES (1, %s)", (ident,))
        c.execute(f"UPDATE {appschema}.users SET id = 2 WHERE id = 1")
        c.execute(f"DELETE FROM {appschema}.users WHERE id = 2")
        # Refusals too: an identity without approval, an unverified factor, not-found paths.
        with refused("42501"):
            c.execute(f"INSERT INTO {appschema}.users (id, login) VALUES (3, %s)", (other,))
        assert c.execute("SELECT totp.has_recent_approval(%s, %s, '5 minutes') AS ok",
                         (service, other)).fetchone()["ok"] is False
        f2 = c.execute("SELECT * FROM totp.create_factor(%s, %s, %s)", (service, other, "phone")).fetchone()
        with refused("55000", 60318):
            c.execute("SELECT * FROM totp.create_challenge(%s, %s, %s)", (service, other, f2["sid"]))
        with refused("P0002", 60390):
            c.execute("SELECT * FROM totp.verify_factor(%s, %s, %s, '123456')", (service, other, factor["sid"]))
        c.execute("SELECT totp.delete_factor(%s, %s, %s)", (service, other, f2["sid"]))
        c.execute("SELECT totp.delete_entity(%s, %s)", (service, other))
        c.execute("SELECT totp.otpauth_uri(totp.generate_secret(), 'a', 'b')")
    assert hits() == []
    # And the trigger did its work: the deleted user's entity, factors and challenges are gone.
    for rel in ("totp.entities", "totp_private.factors", "totp_private.challenges"):
        assert admin.execute(f"SELECT count(*) AS n FROM {rel} WHERE identity IN (%s, %s)",
                             (ident, other)).fetchone()["n"] == 0, rel
