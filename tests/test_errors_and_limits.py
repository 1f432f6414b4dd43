"""SPEC §5 errors and §6 limits, provoked by a client: every refusal's SQLSTATE and Twilio code,
scoping (a SID used with another identity or service is "not found"), argument rules, that no
submitted code or secret reaches a message, each limit (at Twilio's defaults and lowered), the
lifetimes of challenges and unverified factors, and totp.run_maintenance().

Limits are lowered with `UPDATE totp_private.services SET ...` (the tests run as superuser) where the
default would only make a test slower; at least one test per limit runs at the default.
"""

import base64
import contextlib
import datetime as dt
import re
import time
import uuid

import psycopg
import pytest
from psycopg.types.json import Jsonb

from calls import answer, call, challenge, factor, ident, service, verify
from conftest import oathtool, rfc4226, wait_inside_step

# Codes are judged against the server's current step: see conftest.pytest_pyfunc_call.
pytestmark = pytest.mark.step_bounded

SID_RE = re.compile(r"(VA|YE|YF|YC)[0-9a-fA-F]{32}")


# ---------------------------------------------------------------------------------------------
# helpers


def sid(prefix):
    return prefix + uuid.uuid4().hex


def secret_bytes(b32):
    clean = b32.replace(" ", "").replace("=", "").upper()
    return base64.b32decode(clean + "=" * (-len(clean) % 8))


def fresh_code(f, offset=0, margin=1.5):
    """The authenticator's code `offset` steps from now (oathtool for 6-8 digits, the
    independent RFC 4226 below), computed right before it is sent."""
    step, digits, alg = f["time_step"], f["code_length"], f["alg"]
    wait_inside_step(step, margin)
    at = time.time() + offset * step
    if digits >= 6:
        return oathtool(f["binding_secret"], alg, digits, step, at)
    return rfc4226(secret_bytes(f["binding_secret"]), int(at) // step, digits, alg)


def surely_wrong(f):
    """A well-formed code that is the right code at no step near now."""
    near = set()
    for k in range(-3, 4):
        at = time.time() + k * f["time_step"]
        near.add(rfc4226(secret_bytes(f["binding_secret"]), int(at) // f["time_step"], f["code_length"], f["alg"]))
    digits = f["code_length"]
    for n in range(10 ** digits):
        code = str((n * 7919 + 424242) % 10 ** digits).zfill(digits)
        if code not in near:
            return code
    raise AssertionError


def verified(conn, svc, identity, **kwargs):
    f = factor(conn, svc, identity, **kwargs)
    assert verify(conn, svc, identity, f, fresh_code(f, -1))["status"] == "verified"
    return f


def set_limits(conn, svc, **limits):
    """Test-only: change a service's limit columns (SPEC §6: each limit is a column)."""
    sets = ", ".join(f"{k} = %({k})s" for k in limits)
    conn.execute(f"UPDATE totp_private.services SET {sets} WHERE sid = %(sid)s", {**limits, "sid": svc["sid"]})


def leak_text(err):
    d = err.diag
    parts = [str(err), d.message_primary, d.message_detail, d.message_hint, d.context,
             d.internal_query, d.statement_position]
    # SIDs are random hex and may contain any digit string by chance; they are not secrets.
    return SID_RE.sub("<sid>", "\n".join(p or "" for p in parts))


@contextlib.contextmanager
def refused_clean(sqlstate, twilio, *hidden):
    """An ERROR with this SQLSTATE and Twilio code (one of them, if a set), whose message,
    detail, hint and context contain none of `hidden` (codes, secrets)."""
    with pytest.raises(psycopg.Error) as info:
        yield info
    err = info.value
    assert err.sqlstate == sqlstate, f"expected {sqlstate}, got {err.sqlstate}: {err}"
    codes = twilio if isinstance(twilio, (set, frozenset, tuple, list)) else {twilio}
    found = re.findall(r"\(Twilio (\d+)\)", err.diag.message_primary or "")
    assert found and int(found[0]) in codes, f"expected Twilio {codes}: {err.diag.message_primary}"
    text = leak_text(err)
    for h in hidden:
        if h:
            assert h not in text, f"{h!r} leaked into: {text}"


INVALID = "22023"
EITHER = {60200, 60306}


@pytest.fixture
def svc(conn):
    return service(conn, "Errors")


@pytest.fixture
def alice(conn, svc):
    """A verified factor of a fresh identity in `svc`: (identity, factor)."""
    identity = ident("alice")
    return identity, verified(conn, svc, identity)


# ---------------------------------------------------------------------------------------------
# 20404 service not found


SERVICE_CALLS = [
    ("update_service", lambda s, i, f, c: (s,)),
    ("delete_service", lambda s, i, f, c: (s,)),
    ("create_entity", lambda s, i, f, c: (s, i)),
    ("delete_entity", lambda s, i, f, c: (s, i)),
    ("create_factor", lambda s, i, f, c: (s, i, "phone")),
    ("verify_factor", lambda s, i, f, c: (s, i, f, "123456")),
    ("update_factor", lambda s, i, f, c: (s, i, f)),
    ("delete_factor", lambda s, i, f, c: (s, i, f)),
    ("create_challenge", lambda s, i, f, c: (s, i, f)),
    ("update_challenge", lambda s, i, f, c: (s, i, c, "123456")),
]


@pytest.mark.parametrize("fn,args", SERVICE_CALLS, ids=[c[0] for c in SERVICE_CALLS])
def test_20404_service_not_found(conn, alice, fn, args):
    identity, f = alice
    with refused_clean("P0002", 20404, "123456"):
        call(conn, fn, *args(sid("VA"), identity, f["sid"], sid("YC")))


# ---------------------------------------------------------------------------------------------
# 60392 / 60390 / 60391 not found, and scoping


ENTITY_CALLS = [
    ("delete_entity", lambda s, i, f, c: (s, i)),
    ("verify_factor", lambda s, i, f, c: (s, i, f, "123456")),
    ("update_factor", lambda s, i, f, c: (s, i, f)),
    ("delete_factor", lambda s, i, f, c: (s, i, f)),
    ("create_challenge", lambda s, i, f, c: (s, i, f)),
    ("update_challenge", lambda s, i, f, c: (s, i, c, "123456")),
]


@pytest.mark.parametrize("fn,args", ENTITY_CALLS, ids=[c[0] for c in ENTITY_CALLS])
def test_60392_entity_not_found(conn, svc, alice, fn, args):
    _, f = alice
    ch = challenge(conn, svc, alice[0], f)
    nobody = ident("nobody")
    with refused_clean("P0002", 60392, "123456"):
        call(conn, fn, *args(svc["sid"], nobody, f["sid"], ch["sid"]))
    # Only create_factor creates an entity implicitly.
    assert conn.execute("SELECT count(*) AS n FROM totp.entities WHERE identity = %s",
                        (nobody,)).fetchone()["n"] == 0


FACTOR_CALLS = [
    ("verify_factor", lambda s, i, f: (s, i, f, "123456")),
    ("update_factor", lambda s, i, f: (s, i, f, "renamed")),
    ("delete_factor", lambda s, i, f: (s, i, f)),
    ("create_challenge", lambda s, i, f: (s, i, f)),
]


@pytest.mark.parametrize("fn,args", FACTOR_CALLS, ids=[c[0] for c in FACTOR_CALLS])
def test_60390_factor_not_found_and_scoped(conn, svc, alice, fn, args):
    identity, f = alice
    # An unknown factor SID for a known identity.
    with refused_clean("P0002", 60390, "123456"):
        call(conn, fn, *args(svc["sid"], identity, sid("YF")))
    # Alice's factor used with Bob's identity (Bob exists in the same service).
    bob = ident("bob")
    call(conn, "create_entity", svc["sid"], bob)
    with refused_clean("P0002", 60390, "123456"):
        call(conn, fn, *args(svc["sid"], bob, f["sid"]))
    # Alice's factor used with another service, where Alice also exists.
    other = service(conn, "Other")
    call(conn, "create_entity", other["sid"], identity)
    with refused_clean("P0002", 60390, "123456"):
        call(conn, fn, *args(other["sid"], identity, f["sid"]))
    # Nothing happened to it.
    row = conn.execute("SELECT * FROM totp.factors WHERE sid = %s", (f["sid"],)).fetchone()
    assert row is not None and row["friendly_name"] == "phone" and row["identity"] == identity
    assert conn.execute("SELECT count(*) AS n FROM totp.challenges WHERE factor_sid = %s",
                        (f["sid"],)).fetchone()["n"] == 0


def test_60391_challenge_not_found_and_scoped(conn, svc, alice):
    identity, f = alice
    ch = challenge(conn, svc, identity, f)
    code = fresh_code(f, 0)
    with refused_clean("P0002", 60391, code):
        call(conn, "update_challenge", svc["sid"], identity, sid("YC"), code)
    bob = ident("bob")
    factor(conn, svc, bob)  # Bob exists (implicit entity)
    with refused_clean("P0002", 60391, code):
        call(conn, "update_challenge", svc["sid"], bob, ch["sid"], code)
    other = service(conn, "Other")
    call(conn, "create_entity", other["sid"], identity)
    with refused_clean("P0002", 60391, code):
        call(conn, "update_challenge", other["sid"], identity, ch["sid"], code)
    # The right scope still answers it with the same code: the refusals consumed nothing.
    assert answer(conn, svc, identity, ch, code)["status"] == "approved"


# ---------------------------------------------------------------------------------------------
# 60200 / 60306 invalid arguments


@pytest.mark.parametrize("kwargs", [
    {"name": ""}, {"name": "x" * 65}, {"issuer": ""}, {"issuer": "i" * 65},
    {"time_step": 19}, {"time_step": 61}, {"code_length": 2}, {"code_length": 9},
    {"skew": -1}, {"skew": 3},
], ids=lambda k: "-".join(f"{a}={str(b)[:6]}" for a, b in k.items()))
def test_60200_service_arguments(conn, kwargs):
    kwargs = dict(kwargs)
    name = kwargs.pop("name", None)
    with refused_clean(INVALID, 60200):
        service(conn, "Fine" if name is None else name, **kwargs)
    ok = service(conn, "Fine")
    update = kwargs if name is None else {"friendly_name": name}
    with refused_clean(INVALID, 60200):
        call(conn, "update_service", ok["sid"], **update)
    assert conn.execute("SELECT friendly_name FROM totp.services WHERE sid = %s",
                        (ok["sid"],)).fetchone()["friendly_name"] == "Fine"


def test_service_argument_bounds_accepted(conn):
    for ts, cl, sk in ((20, 3, 0), (60, 8, 2)):
        row = service(conn, "n" * 64, issuer="i" * 64, time_step=ts, code_length=cl, skew=sk)
        assert (row["totp_time_step"], row["totp_code_length"], row["totp_skew"]) == (ts, cl, sk)


def test_name_lengths_count_characters_not_bytes(conn, svc):
    assert service(conn, "é" * 64, issuer="用" * 64)["friendly_name"] == "é" * 64
    with refused_clean(INVALID, 60200):
        service(conn, "é" * 65)
    identity = ident()
    assert factor(conn, svc, identity, "ü" * 64)["friendly_name"] == "ü" * 64
    with refused_clean(INVALID, 60306):
        factor(conn, svc, identity, "ü" * 65)


@pytest.mark.parametrize("kwargs", [
    {"name": ""}, {"name": "x" * 65}, {"time_step": 19}, {"time_step": 61},
    {"code_length": 2}, {"code_length": 9}, {"skew": -1}, {"skew": 3},
    {"alg": "md5"}, {"alg": "sha384"}, {"alg": ""}, {"alg": "sha-1"},
], ids=lambda k: "-".join(f"{a}={str(b)[:6]}" for a, b in k.items()))
def test_60306_factor_arguments(conn, svc, alice, kwargs):
    identity, f = alice
    kwargs = dict(kwargs)
    name = kwargs.pop("name", "phone")
    with refused_clean(INVALID, 60306):
        factor(conn, svc, identity, name, **kwargs)
    with refused_clean(INVALID, 60306):
        call(conn, "update_factor", svc["sid"], identity, f["sid"], friendly_name=name, **kwargs)


def test_factor_argument_bounds_accepted(conn, svc):
    identity = ident()
    for ts, cl, sk, alg in ((20, 3, 0, "sha1"), (60, 8, 2, "sha512"), (45, 5, 1, "sha256")):
        row = factor(conn, svc, identity, "n" * 64, time_step=ts, code_length=cl, skew=sk, alg=alg)
        assert (row["time_step"], row["code_length"], row["skew"], row["alg"]) == (ts, cl, sk, alg)


MALFORMED = {
    "VA": ["VA123", "va" + "a" * 32, "VA" + "A" * 32, "VA" + "g" * 32, "YF" + "a" * 32, "VA" + "a" * 33, ""],
    "YF": ["YF123", "yf" + "a" * 32, "YF" + "F" * 32, "YC" + "a" * 32, "YF" + "a" * 31, " YF" + "a" * 32],
    "YC": ["YC123", "YC" + "A" * 32, "YF" + "a" * 32, "YC" + "a" * 31 + "z"],
}


def test_malformed_sids(conn, svc, alice):
    identity, f = alice
    ch = challenge(conn, svc, identity, f)
    for bad in MALFORMED["VA"]:
        for fn, args in [("update_service", (bad,)), ("delete_service", (bad,)),
                         ("create_entity", (bad, identity)), ("create_factor", (bad, identity, "p")),
                         ("verify_factor", (bad, identity, f["sid"], "123456")),
                         ("create_challenge", (bad, identity, f["sid"])),
                         ("update_challenge", (bad, identity, ch["sid"], "123456"))]:
            with refused_clean(INVALID, EITHER, "123456"):
                call(conn, fn, *args)
    for bad in MALFORMED["YF"]:
        for fn, args in [("verify_factor", (svc["sid"], identity, bad, "123456")),
                         ("update_factor", (svc["sid"], identity, bad)),
                         ("delete_factor", (svc["sid"], identity, bad)),
                         ("create_challenge", (svc["sid"], identity, bad))]:
            with refused_clean(INVALID, 60306, "123456"):
                call(conn, fn, *args)
    for bad in MALFORMED["YC"]:
        with refused_clean(INVALID, 60306, "123456"):
            call(conn, "update_challenge", svc["sid"], identity, bad, "123456")


BAD_IDENTITIES = ["", "a" * 65, "a--b", "-ab", "ab-", "a b", "user@example.com", "üser", "a_b",
                  "a.b", "ab\n", " ab", "a/b", "-"]


def test_identity_rules(conn, svc, alice):
    _, f = alice
    for bad in BAD_IDENTITIES:
        for fn, args in [("create_entity", (svc["sid"], bad)), ("delete_entity", (svc["sid"], bad)),
                         ("create_factor", (svc["sid"], bad, "p")),
                         ("verify_factor", (svc["sid"], bad, f["sid"], "123456")),
                         ("create_challenge", (svc["sid"], bad, f["sid"]))]:
            with refused_clean(INVALID, 60306):
                call(conn, fn, *args)
    for good in ["42", "a" * 64, "A-1-b2", "ff8cc8a1-5f3a-4f0e-9b3e-1f2d3c4b5a69"]:
        assert call(conn, "create_entity", svc["sid"], good)["identity"] == good


BAD_PAYLOADS = ["12", "", "123456789", "12a456", "12345 ", " 123456", "１２３４５６", "+12345",
                "-12345", "12.345", "1234567890123", "12\n3456"]


def test_payload_shape(conn, svc, alice):
    identity, f = alice
    unverified = factor(conn, svc, identity, "new")
    ch = challenge(conn, svc, identity, f)
    for bad in BAD_PAYLOADS:
        hidden = bad.strip() if len(bad.strip()) >= 6 else None
        with refused_clean(INVALID, 60306, hidden):
            call(conn, "verify_factor", svc["sid"], identity, unverified["sid"], bad)
        with refused_clean(INVALID, 60306, hidden):
            call(conn, "create_challenge", svc["sid"], identity, f["sid"], bad)
        with refused_clean(INVALID, 60306, hidden):
            call(conn, "update_challenge", svc["sid"], identity, ch["sid"], bad)
    # None of the refusals counted as an attempt: the challenge is still pending and unused,
    # and the unverified factor still has all its attempts.
    for _ in range(4):
        assert answer(conn, svc, identity, ch, surely_wrong(f))["status"] == "pending"
    for _ in range(4):
        assert verify(conn, svc, identity, unverified, surely_wrong(unverified))["status"] == "unverified"
    assert verify(conn, svc, identity, unverified, fresh_code(unverified))["status"] == "verified"


def test_secret_rules_and_no_leak(conn, svc):
    identity = ident()
    short = base64.b32encode(bytes(range(40, 55))).decode()  # 120 bits
    for bad in [short, short.lower(), "NOT BASE32 AT ALL!", "ABCDEFGH01890189ABCDEFGHABCDEFGH",
                "ABCDEFGHABCDEFGHABCDEFGHABCDEFGHA", "", "====", "中文中文中文中文中文中文中文中文中文中文"]:
        hidden = bad.rstrip("=") if len(bad) >= 8 else None
        with refused_clean(INVALID, 60306, hidden):
            factor(conn, svc, identity, secret=bad)
    exactly_128 = base64.b32encode(bytes(range(60, 76))).decode()
    assert factor(conn, svc, identity, secret=exactly_128)["binding_secret"] == exactly_128.rstrip("=")


BAD_JSON = [Jsonb([]), Jsonb([1, 2]), Jsonb("text"), Jsonb(1), Jsonb(None), Jsonb(True),
            Jsonb({"k": "x" * 1100}), Jsonb({f"k{i}": i for i in range(200)})]


def test_json_arguments(conn, svc, alice):
    identity, f = alice
    ch = challenge(conn, svc, identity, f)
    for bad in BAD_JSON:
        with refused_clean(INVALID, 60306):
            factor(conn, svc, identity, metadata=bad)
        with refused_clean(INVALID, 60306):
            call(conn, "update_factor", svc["sid"], identity, f["sid"], metadata=bad)
        with refused_clean(INVALID, 60306):
            challenge(conn, svc, identity, f, details=bad)
        with refused_clean(INVALID, 60306):
            challenge(conn, svc, identity, f, hidden_details=bad)
        with refused_clean(INVALID, 60306):
            answer(conn, svc, identity, ch, "123456", metadata=bad)
    # 1000 two-byte characters: ~1010 characters (within the limit) but ~2010 bytes.
    wide = {"k": "é" * 1000}
    assert factor(conn, svc, identity, metadata=Jsonb(wide))["metadata"] == wide
    good = {"k": "x" * 900, "nested": {"a": [1, 2, 3]}}
    assert factor(conn, svc, identity, metadata=Jsonb(good))["metadata"] == good
    assert challenge(conn, svc, identity, f, details=Jsonb(good), hidden_details=Jsonb({}))["details"] == good
    assert call(conn, "update_factor", svc["sid"], identity, f["sid"], metadata=Jsonb(good))["metadata"] == good


def test_null_required_arguments(conn, svc, alice):
    identity, f = alice
    s = svc["sid"]
    ch = challenge(conn, svc, identity, f)
    cases = [
        ("create_service", (None,)),
        ("update_service", (None,)), ("delete_service", (None,)),
        ("create_entity", (None, identity)), ("create_entity", (s, None)),
        ("delete_entity", (None, identity)), ("delete_entity", (s, None)),
        ("create_factor", (None, identity, "p")), ("create_factor", (s, None, "p")),
        ("create_factor", (s, identity, None)),
        ("verify_factor", (None, identity, f["sid"], "123456")),
        ("verify_factor", (s, None, f["sid"], "123456")),
        ("verify_factor", (s, identity, None, "123456")),
        ("verify_factor", (s, identity, f["sid"], None)),
        ("update_factor", (s, None, f["sid"])), ("update_factor", (s, identity, None)),
        ("delete_factor", (s, identity, None)), ("delete_factor", (None, identity, f["sid"])),
        ("create_challenge", (s, identity, None)), ("create_challenge", (s, None, f["sid"])),
        ("create_challenge", (None, identity, f["sid"])),
        ("update_challenge", (s, identity, ch["sid"], None)),
        ("update_challenge", (s, identity, None, "123456")),
        ("update_challenge", (s, None, ch["sid"], "123456")),
    ]
    for fn, args in cases:
        with refused_clean(INVALID, EITHER):
            conn.execute(f"SELECT * FROM totp.{fn}({', '.join(['%s::text'] * len(args))})", args)
    # Nothing was created or changed by a refused call.
    assert conn.execute("SELECT count(*) AS n FROM totp.services").fetchone()["n"] >= 1
    assert conn.execute("SELECT status FROM totp.challenges WHERE sid = %s", (ch["sid"],)).fetchone()["status"] == "pending"


def test_expiration_date_rules(conn, svc, alice):
    identity, f = alice
    now = dt.datetime.now(dt.timezone.utc)
    for bad in [now - dt.timedelta(seconds=1), now - dt.timedelta(days=1),
                now + dt.timedelta(minutes=60, seconds=5), now + dt.timedelta(days=1)]:
        with refused_clean(INVALID, 60306):
            challenge(conn, svc, identity, f, expiration_date=bad)
    with refused_clean(INVALID, 60306):
        conn.execute("SELECT * FROM totp.create_challenge(%s, %s, %s, expiration_date => 'infinity')",
                     (svc["sid"], identity, f["sid"]))
    # Defaults to 5 minutes after creation; up to 60 minutes is accepted.
    ch = challenge(conn, svc, identity, f)
    assert ch["expiration_date"] - ch["date_created"] == dt.timedelta(minutes=5)
    late = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=59, seconds=55)
    assert challenge(conn, svc, identity, f, expiration_date=late)["expiration_date"] == late


# ---------------------------------------------------------------------------------------------
# 60301, 60318, 60322, 60323


def test_60301_entity_exists(conn, svc):
    identity = ident()
    row = call(conn, "create_entity", svc["sid"], identity)
    assert row["sid"].startswith("YE") and row["service_sid"] == svc["sid"]
    with refused_clean("23505", 60301):
        call(conn, "create_entity", svc["sid"], identity)
    implicit = ident()
    factor(conn, svc, implicit)
    with refused_clean("23505", 60301):
        call(conn, "create_entity", svc["sid"], implicit)
    # The same identity in another service is another entity.
    other = service(conn, "Other")
    assert call(conn, "create_entity", other["sid"], identity)["sid"] != row["sid"]


def test_60318_challenge_on_unverified_factor(conn, svc):
    identity = ident()
    f = factor(conn, svc, identity)
    code = fresh_code(f)
    with refused_clean("55000", 60318, code, f["binding_secret"]):
        challenge(conn, svc, identity, f, code)
    with refused_clean("55000", 60318):
        challenge(conn, svc, identity, f)
    # The code was not consumed by the refused call: it still verifies the factor.
    assert verify(conn, svc, identity, f, code)["status"] == "verified"


def test_60322_challenge_already_responded(conn, svc, alice):
    identity, f = alice
    code = fresh_code(f, 0)
    ch = challenge(conn, svc, identity, f, code)
    assert ch["status"] == "approved"
    later = fresh_code(f, 1)
    for payload in (later, code, surely_wrong(f)):
        with refused_clean("55000", 60322, payload):
            answer(conn, svc, identity, ch, payload)
    # The refused call consumed nothing: the later code still approves a new challenge.
    assert challenge(conn, svc, identity, f, later)["status"] == "approved"


def test_60323_expired_challenge_and_view(conn, svc, alice):
    identity, f = alice
    ch = challenge(conn, svc, identity, f)
    conn.execute("UPDATE totp_private.challenges SET expiration_date = now() - interval '1 second' "
                 "WHERE sid = %s", (ch["sid"],))
    # Without run_maintenance: stored pending, read expired.
    assert conn.execute("SELECT status FROM totp_private.challenges WHERE sid = %s",
                        (ch["sid"],)).fetchone()["status"] == "pending"
    assert conn.execute("SELECT status FROM totp.challenges WHERE sid = %s",
                        (ch["sid"],)).fetchone()["status"] == "expired"
    code = fresh_code(f, 0)
    with refused_clean("55000", 60323, code):
        answer(conn, svc, identity, ch, code)
    with refused_clean("55000", 60323):
        answer(conn, svc, identity, ch, surely_wrong(f))
    # The right code was not consumed by the refusal.
    done = challenge(conn, svc, identity, f, code)
    assert done["status"] == "approved"
    # An answered challenge past its expiration_date stays what it was.
    conn.execute("UPDATE totp_private.challenges SET expiration_date = now() - interval '1 second' "
                 "WHERE sid = %s", (done["sid"],))
    assert conn.execute("SELECT status FROM totp.challenges WHERE sid = %s",
                        (done["sid"],)).fetchone()["status"] == "approved"


def test_challenge_ttl_is_a_service_setting(conn):
    svc = service(conn, "TTL")
    identity = ident()
    f = verified(conn, svc, identity)
    set_limits(conn, svc, challenge_ttl=dt.timedelta(minutes=2), max_challenge_ttl=dt.timedelta(minutes=10))
    ch = challenge(conn, svc, identity, f)
    assert ch["expiration_date"] - ch["date_created"] == dt.timedelta(minutes=2)
    with refused_clean(INVALID, 60306):
        challenge(conn, svc, identity, f,
                  expiration_date=dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=11))


# ---------------------------------------------------------------------------------------------
# 60310 factor verification attempts


def test_60310_five_wrong_codes_then_even_the_right_one_refused(conn, svc):
    identity = ident()
    f = factor(conn, svc, identity)
    for _ in range(5):
        assert verify(conn, svc, identity, f, surely_wrong(f))["status"] == "unverified"
    code = fresh_code(f)
    with refused_clean("54000", 60310, code, f["binding_secret"]):
        verify(conn, svc, identity, f, code)
    with refused_clean("54000", 60310):
        verify(conn, svc, identity, f, surely_wrong(f))
    assert conn.execute("SELECT status FROM totp.factors WHERE sid = %s", (f["sid"],)).fetchone()["status"] == "unverified"


def test_four_wrong_codes_still_allow_verification(conn, svc):
    identity = ident()
    f = factor(conn, svc, identity)
    for _ in range(4):
        assert verify(conn, svc, identity, f, surely_wrong(f))["status"] == "unverified"
    assert verify(conn, svc, identity, f, fresh_code(f))["status"] == "verified"
    # Once verified, verify_factor returns the row unchanged, whatever the payload.
    row = verify(conn, svc, identity, f, surely_wrong(f))
    assert row["status"] == "verified"


def test_60310_lowered_limit(conn):
    svc = service(conn, "Two tries")
    set_limits(conn, svc, max_factor_attempts=2)
    identity = ident()
    f = factor(conn, svc, identity)
    for _ in range(2):
        assert verify(conn, svc, identity, f, surely_wrong(f))["status"] == "unverified"
    with refused_clean("54000", 60310):
        verify(conn, svc, identity, f, fresh_code(f))
    # Per factor: a new factor of the same identity starts afresh.
    g = factor(conn, svc, identity, "second")
    assert verify(conn, svc, identity, g, fresh_code(g))["status"] == "verified"


# ---------------------------------------------------------------------------------------------
# 60308 challenge attempts


def test_60308_fifth_wrong_code_denies_then_refused(conn, svc, alice):
    identity, f = alice
    ch = challenge(conn, svc, identity, f)
    for i in range(4):
        row = answer(conn, svc, identity, ch, surely_wrong(f))
        assert row["status"] == "pending" and row["date_responded"] is None, i
    row = answer(conn, svc, identity, ch, surely_wrong(f))
    assert row["status"] == "denied"
    assert conn.execute("SELECT status FROM totp.challenges WHERE sid = %s", (ch["sid"],)).fetchone()["status"] == "denied"
    code = fresh_code(f, 0)
    with refused_clean("54000", 60308, code):
        answer(conn, svc, identity, ch, code)
    with refused_clean("54000", 60308):
        answer(conn, svc, identity, ch, surely_wrong(f))
    # The factor itself is not locked: a new challenge approves with the code the refusal saw.
    assert challenge(conn, svc, identity, f, code)["status"] == "approved"


def test_wrong_code_at_creation_counts_as_an_attempt(conn, svc, alice):
    identity, f = alice
    ch = challenge(conn, svc, identity, f, surely_wrong(f))
    assert ch["status"] == "pending"
    statuses = [answer(conn, svc, identity, ch, surely_wrong(f))["status"] for _ in range(4)]
    assert statuses == ["pending", "pending", "pending", "denied"]


def test_60308_lowered_limit_one_attempt(conn):
    svc = service(conn, "One try")
    set_limits(conn, svc, max_challenge_attempts=1)
    identity = ident()
    f = verified(conn, svc, identity)
    ch = challenge(conn, svc, identity, f, surely_wrong(f))
    assert ch["status"] == "denied"
    with refused_clean("54000", 60308):
        answer(conn, svc, identity, ch, fresh_code(f, 0))
    ch = challenge(conn, svc, identity, f)
    assert answer(conn, svc, identity, ch, surely_wrong(f))["status"] == "denied"


# ---------------------------------------------------------------------------------------------
# 60312 challenge creation rate


def test_60312_default_50_per_hour(conn):
    svc = service(conn, "Hourly")
    identity = ident()
    f = verified(conn, svc, identity)
    s = conn.execute("SELECT * FROM totp.services WHERE sid = %s", (svc["sid"],)).fetchone()
    assert (s["max_challenges_per_hour"], s["max_challenges_per_day"], s["max_short_code_challenges_per_day"]) == (50, 100, 10)
    for _ in range(49):
        challenge(conn, svc, identity, f)
    code = fresh_code(f, 0)
    assert challenge(conn, svc, identity, f, code)["status"] == "approved"  # the 50th, with a code
    later = fresh_code(f, 1)
    with refused_clean("54000", 60312, later):
        challenge(conn, svc, identity, f, later)
    with refused_clean("54000", 60312):
        challenge(conn, svc, identity, f)
    # Per factor: another factor of the same entity is not limited.
    g = verified(conn, svc, identity, name="second")
    assert challenge(conn, svc, identity, g, fresh_code(g, 1))["status"] == "approved"


def test_60312_default_100_per_day(conn):
    svc = service(conn, "Daily")
    set_limits(conn, svc, max_challenges_per_hour=1000)
    identity = ident()
    f = verified(conn, svc, identity)
    for _ in range(100):
        challenge(conn, svc, identity, f)
    with refused_clean("54000", 60312):
        challenge(conn, svc, identity, f)


def test_60312_lowered_hour_and_day(conn):
    svc = service(conn, "Lowered")
    set_limits(conn, svc, max_challenges_per_hour=3)
    identity = ident()
    f = verified(conn, svc, identity)
    for _ in range(3):
        challenge(conn, svc, identity, f)
    with refused_clean("54000", 60312):
        challenge(conn, svc, identity, f)
    set_limits(conn, svc, max_challenges_per_hour=50, max_challenges_per_day=4)
    g = verified(conn, svc, identity, name="g")
    for _ in range(4):
        challenge(conn, svc, identity, g)
    with refused_clean("54000", 60312):
        challenge(conn, svc, identity, g)


@pytest.mark.parametrize("digits", [3, 4])
def test_60312_short_codes_10_per_day_and_no_hourly_limit(conn, digits):
    svc = service(conn, f"Short {digits}")
    set_limits(conn, svc, max_challenges_per_hour=2)  # does not apply to code_length <= 4
    identity = ident()
    f = verified(conn, svc, identity, code_length=digits)
    for _ in range(10):
        challenge(conn, svc, identity, f)
    with refused_clean("54000", 60312):
        challenge(conn, svc, identity, f)


@pytest.mark.parametrize("window", ["hour", "day"])
def test_60312_windows_are_fixed_and_restart_when_over(conn, window):
    """The creation windows are fixed: a full window that started less than its width ago still
    refuses, and leaves the counters as they were; one that started longer ago restarts at this
    call with a count of 1. The window's start is moved back by hand (superuser)."""
    svc = service(conn, f"Fixed {window}")
    set_limits(conn, svc, max_challenges_per_hour=3, max_challenges_per_day=3)
    identity = ident()
    f = verified(conn, svc, identity)
    for _ in range(3):
        challenge(conn, svc, identity, f)
    start, count = f"challenge_{window}_start", f"challenges_in_{window}"
    width = {"hour": "1 hour", "day": "1 day"}[window]
    other = {"hour": "day", "day": "hour"}[window]

    def counters():
        return conn.execute("SELECT challenge_hour_start, challenges_in_hour, challenge_day_start, "
                            "challenges_in_day FROM totp_private.factors WHERE sid = %s", (f["sid"],)).fetchone()

    # The other window is out of the way (restarted on the next call), this one full but current.
    conn.execute(f"UPDATE totp_private.factors SET challenge_{other}_start = now() - interval '1 day 1 hour', "
                 f"{start} = now() - interval '{width}' + interval '1 minute' WHERE sid = %s", (f["sid"],))
    held = counters()
    with refused_clean("54000", 60312):
        challenge(conn, svc, identity, f)
    assert counters() == held, "a refused creation counts nothing"
    # Started just over a window ago: a new window from this call.
    conn.execute(f"UPDATE totp_private.factors SET {start} = now() - interval '{width}' - interval '1 minute' "
                 f"WHERE sid = %s", (f["sid"],))
    before = conn.execute("SELECT now() AS t").fetchone()["t"]
    assert challenge(conn, svc, identity, f)["status"] == "pending"
    after = counters()
    assert after[count] == 1 and after[start] >= before
    assert after[f"challenges_in_{other}"] == 1 and after[f"challenge_{other}_start"] >= before
    # The next creations count in the new windows, up to the limit again.
    challenge(conn, svc, identity, f)
    challenge(conn, svc, identity, f)
    full = counters()
    assert full[count] == 3 and full[start] == after[start]
    with refused_clean("54000", 60312):
        challenge(conn, svc, identity, f)


def test_60312_code_length_5_has_the_hourly_limit(conn):
    svc = service(conn, "Five")
    set_limits(conn, svc, max_challenges_per_hour=2)
    identity = ident()
    f = verified(conn, svc, identity, code_length=5)
    for _ in range(2):
        challenge(conn, svc, identity, f)
    with refused_clean("54000", 60312):
        challenge(conn, svc, identity, f)


# ---------------------------------------------------------------------------------------------
# 60315 factors per entity, 60326 factor creations per 24 h


def test_60315_default_100_factors_per_entity(conn):
    svc = service(conn, "Hundred")
    set_limits(conn, svc, max_factor_creations_per_day=1000)  # isolate the per-entity limit
    identity = ident()
    for i in range(100):
        factor(conn, svc, identity, f"f{i}")
    with refused_clean("54000", 60315):
        factor(conn, svc, identity, "f100")
    # Per entity: another identity is not limited; deleting one frees a place.
    factor(conn, svc, ident(), "other")
    victim = conn.execute("SELECT sid FROM totp.factors WHERE identity = %s LIMIT 1", (identity,)).fetchone()
    call(conn, "delete_factor", svc["sid"], identity, victim["sid"])
    assert factor(conn, svc, identity, "f100")["status"] == "unverified"


def test_60315_lowered_counts_verified_and_unverified(conn):
    svc = service(conn, "Three")
    set_limits(conn, svc, max_factors_per_entity=3)
    identity = ident()
    verified(conn, svc, identity)
    factor(conn, svc, identity, "b")
    factor(conn, svc, identity, "c")
    with refused_clean("54000", 60315):
        factor(conn, svc, identity, "d")


def test_60326_default_100_creations_per_day(conn):
    svc = service(conn, "Churn")
    set_limits(conn, svc, max_factors_per_entity=1000)  # isolate the creation-rate limit
    identity = ident()
    for i in range(100):
        factor(conn, svc, identity, f"f{i}")
    with refused_clean("54000", 60326):
        factor(conn, svc, identity, "f100")


def test_refused_creation_is_not_counted(conn):
    svc = service(conn, "Refused")
    set_limits(conn, svc, max_factors_per_entity=2, max_factor_creations_per_day=3)
    identity = ident()
    a = factor(conn, svc, identity, "a")
    factor(conn, svc, identity, "b")
    for _ in range(3):
        with refused_clean("54000", 60315):
            factor(conn, svc, identity, "c")
    call(conn, "delete_factor", svc["sid"], identity, a["sid"])
    factor(conn, svc, identity, "c")  # the 3rd creation: the refusals did not count
    call(conn, "delete_factor", svc["sid"], identity, conn.execute(
        "SELECT sid FROM totp.factors WHERE identity = %s AND friendly_name = 'c'", (identity,)).fetchone()["sid"])
    with refused_clean("54000", 60326):
        factor(conn, svc, identity, "d")


def test_60326_lowered_counts_deleted_factors(conn):
    svc = service(conn, "Churn 3")
    set_limits(conn, svc, max_factor_creations_per_day=3)
    identity = ident()
    made = [factor(conn, svc, identity, f"f{i}") for i in range(3)]
    call(conn, "delete_factor", svc["sid"], identity, made[0]["sid"])
    call(conn, "delete_factor", svc["sid"], identity, made[1]["sid"])
    with refused_clean("54000", 60326):
        factor(conn, svc, identity, "again")
    # Per entity.
    assert factor(conn, svc, ident(), "other")["status"] == "unverified"


# ---------------------------------------------------------------------------------------------
# unverified factor lifetime, run_maintenance


def test_unverified_factor_past_lifetime_is_gone(conn, svc):
    identity = ident()
    keep = verified(conn, svc, identity)
    gone = factor(conn, svc, identity, "stale")
    fresh = factor(conn, svc, identity, "fresh")
    row = conn.execute("SELECT date_created, unverified_until FROM totp_private.factors WHERE sid = %s",
                       (gone["sid"],)).fetchone()
    assert row["unverified_until"] - row["date_created"] == dt.timedelta(hours=24)
    assert conn.execute("SELECT unverified_until FROM totp_private.factors WHERE sid = %s",
                        (keep["sid"],)).fetchone()["unverified_until"] is None
    conn.execute("UPDATE totp_private.factors SET unverified_until = now() - interval '1 second' "
                 "WHERE sid = %s", (gone["sid"],))
    listed = {r["sid"] for r in conn.execute("SELECT sid FROM totp.factors WHERE identity = %s", (identity,))}
    assert listed == {keep["sid"], fresh["sid"]}
    code = fresh_code(gone)
    for fn, args in [("verify_factor", (code,)), ("update_factor", ("x",)), ("delete_factor", ()),
                     ("create_challenge", ())]:
        with refused_clean("P0002", 60390, code, gone["binding_secret"]):
            call(conn, fn, svc["sid"], identity, gone["sid"], *args)


def test_run_maintenance_counts(conn):
    conn.execute("SELECT * FROM totp.run_maintenance()")  # whatever earlier tests left
    svc = service(conn, "Maint")
    a, b = ident("a"), ident("b")
    fa, fb = verified(conn, svc, a), verified(conn, svc, b)
    overdue = [challenge(conn, svc, a, fa), challenge(conn, svc, b, fb)]
    current = challenge(conn, svc, a, fa)
    approved = challenge(conn, svc, b, fb, fresh_code(fb, 0))
    stale = factor(conn, svc, a, "stale")
    live = factor(conn, svc, b, "live")
    conn.execute("UPDATE totp_private.challenges SET expiration_date = now() - interval '1 second' "
                 "WHERE sid = ANY(%s)", ([c["sid"] for c in overdue] + [approved["sid"]],))
    conn.execute("UPDATE totp_private.factors SET unverified_until = now() - interval '1 second' "
                 "WHERE sid = %s", (stale["sid"],))

    row = conn.execute("SELECT * FROM totp.run_maintenance()").fetchone()
    assert (row["expired_challenges"], row["deleted_factors"]) == (2, 1)
    assert conn.execute("SELECT count(*) AS n FROM totp_private.factor_secrets WHERE factor_sid = %s",
                        (stale["sid"],)).fetchone()["n"] == 0
    statuses = {r["sid"]: r["status"] for r in conn.execute(
        "SELECT sid, status FROM totp_private.challenges WHERE service_sid = %s", (svc["sid"],))}
    assert statuses == {overdue[0]["sid"]: "expired", overdue[1]["sid"]: "expired",
                        current["sid"]: "pending", approved["sid"]: "approved"}
    left = {r["sid"] for r in conn.execute("SELECT sid FROM totp_private.factors WHERE service_sid = %s",
                                           (svc["sid"],))}
    assert left == {fa["sid"], fb["sid"], live["sid"]}
    with refused_clean("55000", 60323):
        answer(conn, svc, a, overdue[0], surely_wrong(fa))

    row = conn.execute("SELECT * FROM totp.run_maintenance()").fetchone()
    assert (row["expired_challenges"], row["deleted_factors"]) == (0, 0)
