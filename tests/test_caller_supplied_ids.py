"""Caller-supplied SIDs and secrets (issue 13 item 7, SPEC §11), and the statement shapes Citus
needs (items 1 and 2): `create_service(…, sid =>)` is idempotent for the same settings and 23505
for others; `create_factor(…, sid =>, secret =>)` keeps a migrated factor's SID and secret, and
a SID the identity already has is 60317; malformed SIDs are refused; a supplied secret never
reaches an error, an event or the server log; no SQL of the extension uses a whole-row
reference. (Upgrading from 0.2.0 is checked by scripts/check-upgrade with
sql/upgrade/0.2.0--0.3.0.{data,check}.sql.)"""

import os
import pathlib
import re
import threading
import time
import uuid

import psycopg
import pyotp
import pytest

from calls import call, ident
from conftest import connect, oathtool, refused, wait_inside_step

ROOT = pathlib.Path(__file__).resolve().parent.parent


def service_sid():
    return "VA" + uuid.uuid4().hex


def factor_sid():
    return "YF" + uuid.uuid4().hex


def log_offset():
    path = os.path.join(os.environ.get("PGHOST", ""), "server.log")
    if not os.access(path, os.R_OK):
        # A security check: never skipped. scripts/lib.sh clusters write a readable log.
        pytest.fail(f"server log not readable at {path!r} (cluster not from scripts/lib.sh?)")
    return path, os.path.getsize(path)


def log_since(path, offset):
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read().decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------
# create_service(…, sid =>)


def test_service_sid_is_idempotent_for_the_same_settings(conn):
    sid = service_sid()
    first = call(conn, "create_service", "Acme", issuer="Acme Inc", time_step=45, code_length=7, skew=2, sid=sid)
    assert first["sid"] == sid
    assert (first["totp_issuer"], first["totp_time_step"], first["totp_code_length"], first["totp_skew"]) == \
        ("Acme Inc", 45, 7, 2)
    # The same call again, named or positional, returns the same row unchanged.
    again = call(conn, "create_service", "Acme", issuer="Acme Inc", time_step=45, code_length=7, skew=2, sid=sid)
    assert again == first
    positional = call(conn, "create_service", "Acme", "Acme Inc", 45, 7, 2, sid)
    assert positional == first
    assert conn.execute("SELECT count(*) AS n FROM totp.services WHERE sid = %s", (sid,)).fetchone()["n"] == 1
    # Unset settings are settings too: NULL on both sides is the same.
    bare = service_sid()
    assert call(conn, "create_service", "Bare", sid=bare) == call(conn, "create_service", "Bare", sid=bare)


@pytest.mark.parametrize("change, field", [
    ({"name": "Other"}, "friendly_name"),
    ({"issuer": "Other Inc"}, "issuer"),
    ({"issuer": None}, "issuer"),
    ({"time_step": 30}, "time_step"),
    ({"code_length": None}, "code_length"),
    ({"skew": 1}, "skew"),
])
def test_service_sid_with_other_settings_is_23505(conn, change, field):
    sid = service_sid()
    settings = {"name": "Acme", "issuer": "Acme Inc", "time_step": 45, "code_length": 7, "skew": 2}
    first = call(conn, "create_service", settings.pop("name"), **settings, sid=sid)
    args = {"name": "Acme", **settings, **change}
    with refused("23505") as info:
        call(conn, "create_service", args.pop("name"), **args, sid=sid)
    assert info.value.diag.message_primary == "service already exists with other settings"
    assert info.value.diag.message_detail == f"Service {sid} exists with a different {field}."
    assert conn.execute("SELECT * FROM totp.services WHERE sid = %s", (sid,)).fetchone() == first


def test_service_sid_several_differences_are_all_named(conn):
    sid = service_sid()
    call(conn, "create_service", "Acme", sid=sid)
    with refused("23505") as info:
        call(conn, "create_service", "Other", issuer="X", skew=0, sid=sid)
    assert info.value.diag.message_detail == f"Service {sid} exists with a different friendly_name, issuer, skew."


def test_service_limits_are_update_services_and_do_not_change_idempotency(conn):
    """Every limit of totp.services is an argument of update_service; create_service compares only
    the settings it takes, so a node that replays the creation after the limits were tuned gets
    the tuned service back."""
    columns = [r["column_name"] for r in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'totp' "
        "AND table_name = 'services' ORDER BY ordinal_position")]
    args = conn.execute(
        "SELECT proargnames FROM pg_proc WHERE oid = 'totp.update_service'::regproc").fetchone()["proargnames"]
    settable = set(args) | {"totp_" + a for a in args}
    # account_sid (0.4.0) is the owner, not a setting: fixed when the service is created.
    unsettable = [c for c in columns if c not in settable and c not in ("date_created", "date_updated", "account_sid")]
    assert unsettable == [], f"columns of totp.services that update_service cannot set: {unsettable}"
    limits = [c for c in columns if c.startswith("max_") or c.endswith("_ttl") or c == "event_retention"]
    assert len(limits) >= 11, limits

    sid = service_sid()
    call(conn, "create_service", "Tuned", sid=sid)
    values = {c: 3 for c in limits if c.startswith("max_") and not c.endswith("_ttl")}
    values.update(challenge_ttl="2 minutes", max_challenge_ttl="10 minutes", unverified_factor_ttl="2 hours",
                  event_retention="30 days")
    parts = ", ".join(f"{k} => %({k})s" for k in values)
    tuned = conn.execute(f"SELECT * FROM totp.update_service(%(sid)s, {parts})", {"sid": sid, **values}).fetchone()
    assert all(tuned[c] == 3 for c in values if not c.endswith("_ttl") and c != "event_retention")
    assert str(tuned["challenge_ttl"]) == "0:02:00" and str(tuned["unverified_factor_ttl"]) == "2:00:00"
    assert call(conn, "create_service", "Tuned", sid=sid) == tuned


def race(db, first_name, second_name):
    """`first_name` creates a SID in an open transaction; `second_name` creates the same SID in
    another session, which waits (the unique index) until the first commits. Returns the
    second's row or error."""
    sid = service_sid()
    result = {}
    with connect(db, autocommit=False) as first, connect(db) as second, connect(db) as watcher:
        call(first, "create_service", first_name, sid=sid)

        def create():
            try:
                result["value"] = call(second, "create_service", second_name, sid=sid)
            except psycopg.Error as e:
                result["value"] = e

        pid = second.info.backend_pid
        t = threading.Thread(target=create)
        t.start()
        deadline = time.monotonic() + 60
        while watcher.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                              (pid,)).fetchone()["wait_event_type"] != "Lock":
            assert t.is_alive(), f"the second creation did not wait for the first: {result}"
            assert time.monotonic() < deadline, "the second creation never waited for the first"
            time.sleep(0.01)
        first.commit()
        t.join(60)
        assert not t.is_alive()
        assert watcher.execute("SELECT count(*) AS n FROM totp.services WHERE sid = %s", (sid,)).fetchone()["n"] == 1
    return sid, result["value"]


def test_concurrent_creations_of_one_sid_give_one_service(db):
    sid, row = race(db, "Acme", "Acme")
    assert row["sid"] == sid and row["friendly_name"] == "Acme"
    sid, error = race(db, "Acme", "Other")
    assert isinstance(error, psycopg.Error) and error.sqlstate == "23505", error


# ---------------------------------------------------------------------------------------------
# malformed SIDs


MALFORMED = [
    "{p}" + "0" * 31,                 # too short
    "{p}" + "0" * 33,                 # too long
    "{p}" + "ABCDEF" + "0" * 26,      # upper-case hex (SIDs are lower case)
    "{p}" + "g" + "0" * 31,           # not hex
    " {p}" + "0" * 31,                # padded
    "{other}" + "0" * 32,             # another resource's prefix
    "",
]


@pytest.mark.parametrize("pattern", MALFORMED)
def test_malformed_service_sid_is_60200(conn, pattern):
    sid = pattern.format(p="VA", other="YF")
    before = conn.execute("SELECT count(*) AS n FROM totp.services").fetchone()["n"]
    with refused("22023", 60200) as info:
        call(conn, "create_service", "Acme", sid=sid)
    assert info.value.diag.message_primary.startswith("invalid sid")
    assert conn.execute("SELECT count(*) AS n FROM totp.services").fetchone()["n"] == before


@pytest.mark.parametrize("pattern", MALFORMED)
def test_malformed_factor_sid_is_60306(conn, pattern):
    svc = call(conn, "create_service", "Acme")
    identity = ident()
    with refused("22023", 60306) as info:
        call(conn, "create_factor", svc["sid"], identity, "phone", sid=pattern.format(p="YF", other="YC"))
    assert info.value.diag.message_primary.startswith("invalid sid")
    assert conn.execute("SELECT count(*) AS n FROM totp.entities WHERE identity = %s",
                        (identity,)).fetchone()["n"] == 0


# ---------------------------------------------------------------------------------------------
# create_factor(…, sid =>, secret =>)


@pytest.mark.step_bounded
def test_supplied_sid_and_secret_enrol_and_verify(conn):
    """A factor migrated from Twilio: its SID and secret are kept, and codes from the secret
    (oathtool, pyotp) verify it and approve challenges."""
    svc = call(conn, "create_service", "Migrated", sid=service_sid())
    identity, sid, secret = ident(), factor_sid(), pyotp.random_base32(32)
    # Sloppy input is tolerated and normalised: lower case, spaces, padding.
    sloppy = " ".join(secret[i:i + 4] for i in range(0, 32, 4)).lower() + "===="
    f = call(conn, "create_factor", svc["sid"], identity, "phone", secret=sloppy, sid=sid)
    assert f["sid"] == sid and f["status"] == "unverified" and f["binding_secret"] == secret
    assert f"secret={secret}&" in f["binding_uri"]
    wait_inside_step(30, margin=1)
    code = oathtool(secret, at=time.time() - 30)  # the previous step (skew 1)
    assert call(conn, "verify_factor", svc["sid"], identity, sid, code)["status"] == "verified"
    ch = call(conn, "create_challenge", svc["sid"], identity, sid, auth_payload=pyotp.TOTP(secret).now())
    assert ch["status"] == "approved" and ch["factor_sid"] == sid
    assert conn.execute("SELECT sid FROM totp.factors WHERE identity = %s", (identity,)).fetchall() == [{"sid": sid}]


def test_supplied_secret_must_be_base32_of_at_least_128_bits(conn):
    svc = call(conn, "create_service", "Acme")
    for bad, rule in (("JBSWY3DPEHPK3PXP", "at least 128 bits"),       # 80 bits
                      ("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PX1", "not base32"),
                      ("A" * 260, "at most 128 bytes")):
        with refused("22023", 60306) as info:
            call(conn, "create_factor", svc["sid"], ident(), "phone", secret=bad, sid=factor_sid())
        assert rule in info.value.diag.message_detail
    # 128 bits exactly is enough.
    f = call(conn, "create_factor", svc["sid"], ident(), "phone", secret="A" * 26, sid=factor_sid())
    assert f["binding_secret"] == "A" * 26


def test_duplicate_factor_sid_is_60317_and_changes_nothing(conn, events):
    svc = call(conn, "create_service", "Acme")
    other = call(conn, "create_service", "Other")
    identity, sid = ident(), factor_sid()
    f = call(conn, "create_factor", svc["sid"], identity, "phone", sid=sid)
    events.drain()
    before = conn.execute("SELECT * FROM totp.factors WHERE identity = %s", (identity,)).fetchall()
    for target, name in ((svc, "phone"), (svc, "tablet"), (other, "phone")):
        with refused("23505", 60317) as info:
            call(conn, "create_factor", target["sid"], identity, name, sid=sid)
        assert info.value.diag.message_primary == "factor already exists (Twilio 60317)"
        assert info.value.diag.message_detail == f'Factor {sid} already exists for identity "{identity}".'
    assert conn.execute("SELECT * FROM totp.factors WHERE identity = %s", (identity,)).fetchall() == before
    assert conn.execute("SELECT count(*) AS n FROM totp.entities WHERE identity = %s",
                        (identity,)).fetchone()["n"] == 1, "the failed call in the other service left no entity"
    assert events.drain() == []
    # SIDs are checked within the identity (a check across identities would touch every node):
    # the same SID under another identity is another factor.
    g = call(conn, "create_factor", svc["sid"], ident(), "phone", sid=sid)
    assert g["sid"] == sid and g["identity"] != f["identity"]


@pytest.mark.step_bounded
def test_one_sid_in_two_identities_does_not_share_a_guessing_budget(conn):
    """The shared-memory guess counts are per (identity, SID): wrong codes spent on one identity's
    factor leave the other identity's factor with the same SID its own budget."""
    svc = call(conn, "create_service", "Acme")
    sid, secret = factor_sid(), pyotp.random_base32(32)
    spent, fresh = ident(), ident()
    for identity in (spent, fresh):
        call(conn, "create_factor", svc["sid"], identity, "phone", secret=secret, sid=sid)
    wait_inside_step(30, margin=2)
    right = pyotp.TOTP(secret).now()
    wrong = str((int(right) + 500000) % 1000000).zfill(6)
    for _ in range(5):
        assert call(conn, "verify_factor", svc["sid"], spent, sid, wrong)["status"] == "unverified"
    with refused("54000", 60310):
        call(conn, "verify_factor", svc["sid"], spent, sid, wrong)
    assert call(conn, "verify_factor", svc["sid"], fresh, sid, wrong)["status"] == "unverified"
    assert call(conn, "verify_factor", svc["sid"], fresh, sid, right)["status"] == "verified"


def test_sid_of_an_unverified_factor_past_its_lifetime_may_be_given_again(conn):
    svc = call(conn, "create_service", "Acme")
    identity, sid = ident(), factor_sid()
    old = call(conn, "create_factor", svc["sid"], identity, "old phone", sid=sid)
    # Its lifetime is over (set, not slept through); run_maintenance has not run.
    conn.execute("UPDATE totp_private.factors SET unverified_until = now() - interval '1 second' "
                 "WHERE identity = %s AND sid = %s", (identity, sid))
    new = call(conn, "create_factor", svc["sid"], identity, "new phone", sid=sid)
    assert new["sid"] == sid and new["friendly_name"] == "new phone"
    assert new["binding_secret"] != old["binding_secret"]
    assert conn.execute("SELECT count(*) AS n FROM totp_private.factors WHERE identity = %s",
                        (identity,)).fetchone()["n"] == 1


def test_supplied_secret_never_reaches_errors_events_or_the_log(db, events):
    path, offset = log_offset()
    secrets = [pyotp.random_base32(32) for _ in range(4)]
    texts = []
    with connect(db) as conn:
        svc = call(conn, "create_service", "Acme")
        identity, sid = ident(), factor_sid()
        call(conn, "create_factor", svc["sid"], identity, "phone", secret=secrets[0], sid=sid)
        attempts = [
            dict(secret=secrets[1], sid=sid),                          # duplicate SID: 60317
            dict(secret=secrets[2][:16]),                              # too short
            dict(secret=secrets[3][:31] + "1"),                        # not base32
            dict(secret=secrets[3], sid="YF" + "X" * 32),              # malformed SID
            dict(secret=secrets[3], alg="md5"),                        # another argument wrong
            dict(secret=secrets[3], metadata=psycopg.types.json.Jsonb([1])),
        ]
        for args in attempts:
            with pytest.raises(psycopg.Error) as info:
                call(conn, "create_factor", svc["sid"], identity, "phone", **args)
            d = info.value.diag
            texts += [d.message_primary or "", d.message_detail or "", d.message_hint or "", str(info.value)]
        with pytest.raises(psycopg.Error) as info:
            call(conn, "create_factor", "VA" + "0" * 32, identity, "phone", secret=secrets[3])  # 20404
        texts.append(str(info.value))
        rows = conn.execute("SELECT e::text AS row FROM totp.events e").fetchall()
        texts += [r["row"] for r in rows]
    assert len(texts) >= 25 and rows, "errors and events were collected"
    log = log_since(path, offset)
    assert "ERROR" in log and "60317" in log, "the log holds this test's refusals"
    for secret in secrets:
        for form in {secret, secret[:16], secret[:31], secret.lower()}:
            assert not any(form in t for t in texts), "a supplied secret reached an error or event"
            assert form not in log, "a supplied secret reached the server log"


# ---------------------------------------------------------------------------------------------
# whole-row references (issue 13 item 1): what Citus cannot cast from a shard's row type
# (the #[pg_test] statements_have_shapes_citus_accepts checks the analyzed statements too)


KEYWORDS = {"select", "from", "where", "and", "or", "on", "set", "values", "returning", "join", "as", "not",
            "limit", "order", "group", "for", "update", "with", "union", "all", "distinct", "case", "when",
            "then", "else", "end", "is", "null", "in", "exists", "using", "into", "default", "do", "nothing",
            "conflict", "left", "inner", "cross", "lateral", "only", "by", "offset"}


def aliases(text):
    """Names a statement gives its relations: `… AS x` and `schema.table x`."""
    names = set(re.findall(r"\bAS\s+([a-z_]\w*)", text, re.I))
    names |= set(re.findall(r"\b[a-z_]\w*\.[a-z_]\w*\s+([a-z_]\w*)", text, re.I))
    return {n for n in names if n.lower() not in KEYWORDS}


def whole_row_references(text):
    """Uses of a relation's alias as a value — `SELECT s FROM …`, `RETURNING s`, `f(s)`, `s::text`
    — rather than of its columns (`s.sid`, or `s.*`, which Postgres expands into columns)."""
    found = []
    for alias in aliases(text):
        a = re.escape(alias)
        pattern = rf"(?:\bSELECT|\bRETURNING|\(|,)\s*{a}\s*(?=\bFROM\b|$|[,);\"]|::)"
        found += [m.group(0) for m in re.finditer(pattern, text, re.I)]
    return found


def test_the_whole_row_scan_finds_what_it_looks_for():
    for bad in ("INSERT INTO totp_private.services AS s (sid) VALUES ($1) RETURNING s",
                "UPDATE totp_private.factors AS f SET x = 1 RETURNING f",
                "SELECT s FROM totp.services s WHERE s.sid = $1", "SELECT f FROM totp.factors AS f",
                "SELECT ROW(c.sid, c)::t FROM totp.challenges c", "SELECT e::text FROM totp.events e",
                "SELECT pg_catalog.to_jsonb(e) FROM totp.entities e"):
        assert whole_row_references(bad), bad
    for fine in ("INSERT INTO totp_private.services AS s (sid) VALUES ($1) RETURNING s.sid",
                 "INSERT INTO totp_private.entities AS e (sid) VALUES ($1) RETURNING e.sid, e.factors_created_in_window",
                 "SELECT ROW(s.sid, s.friendly_name)::totp.services FROM totp.services s",
                 "WITH c AS (INSERT INTO totp_private.challenges AS c (sid) VALUES ($1) RETURNING c.*) "
                 "SELECT ROW(c.sid)::totp.challenges FROM c",
                 "DELETE FROM totp_private.services WHERE sid = $1 RETURNING sid",
                 "SELECT count(*) FROM totp_private.factors WHERE identity = $1"):
        assert not whole_row_references(fine), fine


def rust_statements():
    """The SQL text of every `text: "…"` statement in src/ (line continuations joined)."""
    out = []
    for path in sorted((ROOT / "src").rglob("*.rs")):
        if path.name == "tests.rs":  # the pg_tests hold deliberately bad statements
            continue
        source = path.read_text()
        joined = re.sub(r"\\\n\s*", "", source)
        for m in re.finditer(r'"((?:[^"\\]|\\.)*)"', joined):
            text = m.group(1)
            if re.search(r"\b(SELECT|INSERT|UPDATE|DELETE|RETURNING)\b", text):
                out.append((path.name, text))
    return out


def test_no_rust_statement_uses_a_whole_row_reference():
    statements = rust_statements()
    assert len(statements) > 40, "the scan found the extension's statements"
    # Identity moves (identities.rs) read whole rows into their document on purpose, so that a
    # database whose columns are in another order reads them back by name. They are superuser-only
    # and PL/Proxy's: Citus moves shards and never runs them.
    moves = [(name, text) for name, text in statements if name == "identities.rs"]
    assert moves and all("to_jsonb" in text for _, text in moves if whole_row_references(text))
    bad = [(name, text) for name, text in statements if whole_row_references(text) and name != "identities.rs"]
    assert bad == []


def test_no_installed_sql_uses_a_whole_row_reference_to_a_table(conn):
    """Functions written in SQL or PL/pgSQL, and the views, of the installed extension. (The
    trigger functions' to_jsonb(OLD/NEW) reads the application's own row, not a table of the
    extension.)"""
    bodies = conn.execute(
        "SELECT p.oid::regprocedure::text AS name, p.prosrc AS body FROM pg_proc p "
        "JOIN pg_language l ON l.oid = p.prolang "
        "WHERE p.pronamespace IN ('totp'::regnamespace, 'totp_private'::regnamespace) "
        "AND l.lanname IN ('sql', 'plpgsql') "
        "UNION ALL SELECT c.oid::regclass::text, pg_get_viewdef(c.oid) FROM pg_class c "
        "WHERE c.relnamespace IN ('totp'::regnamespace, 'totp_private'::regnamespace) AND c.relkind = 'v'"
    ).fetchall()
    assert len(bodies) >= 9, [b["name"] for b in bodies]
    bad = [(b["name"], whole_row_references(b["body"])) for b in bodies if whole_row_references(b["body"])]
    assert bad == []
