"""SPEC §3 end to end, as a client sees it: the register and verify sequences with a real
authenticator (oathtool reads `binding_secret`), replay protection, skew windows, service
defaults and factor overrides, the binding, positional and named calls, and cascading deletes.

Codes of 3-5 digits (which oathtool refuses) come from conftest.rfc4226, an independent
RFC 4226 implementation, over a caller-supplied secret.
"""

import base64
import concurrent.futures
import datetime as dt
import hashlib
import re
import threading
import time
import urllib.parse

import pytest
from psycopg.types.json import Jsonb

from calls import answer, call, challenge, factor, ident, service, verify
from conftest import connect, oathtool, refused, rfc4226, wait_inside_step

# Codes are judged against the server's current step: see conftest.pytest_pyfunc_call.
pytestmark = pytest.mark.step_bounded

ALGS = ["sha1", "sha256", "sha512"]
BASE32_32 = re.compile(r"^[A-Z2-7]{32}$")


# ---------------------------------------------------------------------------------------------
# helpers


def secret_bytes(b32):
    """The bytes of a base32 secret, as an authenticator app would decode them."""
    clean = b32.replace(" ", "").replace("=", "").upper()
    return base64.b32decode(clean + "=" * (-len(clean) % 8))


def code_at(factor, at, secret=None):
    """The code an authenticator shows at unix time `at` for this factor: oathtool for 6-8
    digits (cross-checked with the Python RFC 4226), the Python RFC 4226 below 6 digits."""
    step, digits, alg = factor["time_step"], factor["code_length"], factor["alg"]
    raw = secret_bytes(secret or factor["binding_secret"])
    independent = rfc4226(raw, int(at) // step, digits, alg)
    if digits >= 6:
        code = oathtool(secret or factor["binding_secret"], alg, digits, step, at)
        assert code == independent, "oathtool and the Python RFC 4226 disagree"
        return code
    return independent


def fresh_code(factor, offset=0, secret=None, margin=1.5):
    """The code of the step `offset` steps away from the current one, computed just before it
    is sent: first moves past a step boundary that is due within `margin` seconds, so the
    server judges it against the same current step."""
    wait_inside_step(factor["time_step"], margin)
    return code_at(factor, time.time() + offset * factor["time_step"], secret)


def window_codes(factor, reach=3, secret=None):
    now = time.time()
    return {code_at(factor, now + k * factor["time_step"], secret) for k in range(-reach, reach + 1)}


def surely_wrong(factor, secret=None):
    """A well-formed code that is right at no step near now (matters for 3-digit codes)."""
    near = window_codes(factor, secret=secret)
    digits = factor["code_length"]
    for n in range(10 ** digits):
        code = str((n * 7919 + 12345) % 10 ** digits).zfill(digits)
        if code not in near:
            return code
    raise AssertionError("no wrong code")


def verified(conn, svc, identity, secret=None, offset=-1, **kwargs):
    """A factor verified with the code of step `offset` (default: the previous one, so the
    current and later steps stay free for challenges)."""
    if secret is not None:
        kwargs["secret"] = secret
    f = factor(conn, svc, identity, **kwargs)
    row = verify(conn, svc, identity, f, fresh_code(f, offset, secret))
    assert row["status"] == "verified"
    return f


def superuser(conn, sql, params=()):
    """Test-only manipulation of the extension's private tables (the tests run as superuser)."""
    return conn.execute(sql, params)


# ---------------------------------------------------------------------------------------------
# 1. both sequences with a real authenticator

COMBOS = [(6, 30), (7, 20), (8, 60), (6, 60), (8, 20), (7, 45)]


@pytest.mark.parametrize("digits,step", COMBOS, ids=[f"{d}d-{s}s" for d, s in COMBOS])
@pytest.mark.parametrize("alg", ALGS)
def test_register_and_verify_sequences_with_oathtool(conn, alg, digits, step):
    svc = service(conn, f"Seq {alg} {digits} {step}")
    identity = ident()
    assert conn.execute("SELECT count(*) AS n FROM totp.entities WHERE service_sid = %s",
                        (svc["sid"],)).fetchone()["n"] == 0

    # Register: create_factor (implicit entity) -> the app reads binding_secret -> verify_factor.
    f = factor(conn, svc, identity, "Jane's phone", alg=alg, code_length=digits, time_step=step)
    assert f["status"] == "unverified"
    assert (f["alg"], f["code_length"], f["time_step"], f["skew"]) == (alg, digits, step, 1)
    assert f["factor_type"] == "totp"
    assert BASE32_32.match(f["binding_secret"])
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(f["binding_uri"]).query)
    assert query["secret"] == [f["binding_secret"]]
    assert query["algorithm"] == [alg.upper()] and query["digits"] == [str(digits)]
    assert query["period"] == [str(step)]
    entity = conn.execute("SELECT * FROM totp.entities WHERE service_sid = %s AND identity = %s",
                          (svc["sid"], identity)).fetchone()
    assert entity is not None and entity["sid"] == f["entity_sid"]

    row = verify(conn, svc, identity, f, fresh_code(f, -1))
    assert row["status"] == "verified" and row["sid"] == f["sid"]
    assert "binding_secret" not in row
    view = conn.execute("SELECT * FROM totp.factors WHERE sid = %s", (f["sid"],)).fetchone()
    assert view["status"] == "verified"

    # Verify, one step: create_challenge with the code -> approved, date_responded set.
    ch = challenge(conn, svc, identity, f, fresh_code(f, 0))
    assert ch["status"] == "approved"
    assert ch["date_responded"] is not None
    assert ch["factor_sid"] == f["sid"] and ch["identity"] == identity
    assert ch["entity_sid"] == f["entity_sid"] and ch["service_sid"] == svc["sid"]
    assert ch["factor_type"] == "totp"

    # Verify, two steps: create_challenge without a code -> pending; update_challenge -> approved.
    ch2 = challenge(conn, svc, identity, f)
    assert ch2["status"] == "pending" and ch2["date_responded"] is None
    ch2 = answer(conn, svc, identity, ch2, fresh_code(f, 1))
    assert ch2["status"] == "approved" and ch2["date_responded"] is not None
    view = conn.execute("SELECT status, date_responded FROM totp.challenges WHERE sid = %s",
                        (ch2["sid"],)).fetchone()
    assert view["status"] == "approved" and view["date_responded"] == ch2["date_responded"]


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("digits", [3, 4, 5])
def test_short_codes_checked_with_independent_rfc4226(conn, alg, digits):
    svc = service(conn, "Short")
    identity = ident()
    raw = bytes(range(1, 21))
    secret = base64.b32encode(raw).decode()
    f = factor(conn, svc, identity, secret=secret, alg=alg, code_length=digits, time_step=30)
    assert f["code_length"] == digits and f["binding_secret"] == secret
    assert f"digits={digits}" in f["binding_uri"]

    # A wrong code first (right at no step near now): still unverified, no error.
    row = verify(conn, svc, identity, f, surely_wrong(f))
    assert row["status"] == "unverified"
    # The code of the previous step, from Python's RFC 4226 over the caller's secret bytes.
    wait_inside_step(30, 1.5)
    code = rfc4226(raw, int(time.time()) // 30 - 1, digits, alg)
    assert verify(conn, svc, identity, f, code)["status"] == "verified"

    ch = challenge(conn, svc, identity, f, fresh_code(f, 0))
    assert ch["status"] == "approved" and ch["date_responded"] is not None
    ch2 = challenge(conn, svc, identity, f)
    assert answer(conn, svc, identity, ch2, surely_wrong(f))["status"] == "pending"
    assert answer(conn, svc, identity, ch2, fresh_code(f, 1))["status"] == "approved"


def test_other_lengths_are_wrong_codes_not_errors(conn):
    """A well-shaped payload (3-8 digits) of another length than code_length is a wrong code:
    the challenge stays pending, no error."""
    svc = service(conn, "Lengths")
    identity = ident()
    f = verified(conn, svc, identity, code_length=8)
    ch = challenge(conn, svc, identity, f)
    right = fresh_code(f, 1)
    for payload in (right[:3], right[:6], right[:7], right[1:]):
        assert answer(conn, svc, identity, ch, payload)["status"] == "pending"
    assert answer(conn, svc, identity, ch, fresh_code(f, 1))["status"] == "approved"


def test_leading_zeros_count(conn):
    """A code that starts with 0 is accepted with its zero, refused without it."""
    svc = service(conn, "Zero")
    identity = ident()
    wait_inside_step(30, 5)
    now_step = int(time.time()) // 30
    for i in range(10000):
        raw = hashlib.sha1(f"zero-{i}".encode()).digest()
        code = rfc4226(raw, now_step, 6, "sha1")
        if code.startswith("0") and len(code.lstrip("0")) >= 3:
            break
    f = factor(conn, svc, identity, secret=base64.b32encode(raw).decode())
    assert verify(conn, svc, identity, f, code.lstrip("0"))["status"] == "unverified"
    assert verify(conn, svc, identity, f, code)["status"] == "verified"


# ---------------------------------------------------------------------------------------------
# 2. replay


def public(ch):
    return {k: ch[k] for k in ("status", "responded_reason", "date_responded", "details",
                                "hidden_details", "metadata", "factor_sid", "identity")}


def test_code_consumed_by_verify_factor_never_approves_a_challenge(conn):
    svc = service(conn, "Replay 1")
    identity = ident()
    f = factor(conn, svc, identity)
    code = fresh_code(f, 0)
    assert verify(conn, svc, identity, f, code)["status"] == "verified"

    replayed = challenge(conn, svc, identity, f, code)  # no error
    wrong = challenge(conn, svc, identity, f, surely_wrong(f))
    assert replayed["status"] == "pending" and replayed["date_responded"] is None
    assert public(replayed) == public(wrong), "a replayed code looks exactly like a wrong one"

    pending = challenge(conn, svc, identity, f)
    again = answer(conn, svc, identity, pending, code)
    assert again["status"] == "pending" and again["date_responded"] is None


def test_approved_code_cannot_approve_a_second_challenge(conn):
    svc = service(conn, "Replay 2")
    identity = ident()
    f = verified(conn, svc, identity)
    code = fresh_code(f, 1)
    first = challenge(conn, svc, identity, f, code)
    assert first["status"] == "approved"

    second = challenge(conn, svc, identity, f, code)
    wrong = challenge(conn, svc, identity, f, surely_wrong(f))
    assert second["status"] == "pending" and public(second) == public(wrong)

    third = challenge(conn, svc, identity, f)
    answered = answer(conn, svc, identity, third, code)
    wrong_answer = answer(conn, svc, identity, challenge(conn, svc, identity, f), surely_wrong(f))
    assert answered["status"] == "pending" and public(answered) == public(wrong_answer)


def test_code_approved_by_update_challenge_cannot_be_reused(conn):
    svc = service(conn, "Replay 3")
    identity = ident()
    f = verified(conn, svc, identity)
    a = challenge(conn, svc, identity, f)
    b = challenge(conn, svc, identity, f)
    code = fresh_code(f, 0)
    assert answer(conn, svc, identity, a, code)["status"] == "approved"
    row = answer(conn, svc, identity, b, code)
    assert row["status"] == "pending" and row["date_responded"] is None
    assert challenge(conn, svc, identity, f, code)["status"] == "pending"


def test_replayed_codes_count_as_wrong_attempts(conn):
    """Indistinguishable also in the counters: 5 replays deny a challenge like 5 wrong codes."""
    svc = service(conn, "Replay 4")
    identity = ident()
    f = factor(conn, svc, identity)
    code = fresh_code(f, 0)
    assert verify(conn, svc, identity, f, code)["status"] == "verified"
    ch = challenge(conn, svc, identity, f)
    statuses = [answer(conn, svc, identity, ch, code)["status"] for _ in range(5)]
    assert statuses == ["pending"] * 4 + ["denied"]


def test_steps_older_than_the_last_accepted_are_refused(conn):
    svc = service(conn, "Replay 5")
    identity = ident()
    f = factor(conn, svc, identity, skew=2, time_step=60)
    wait_inside_step(60, 10)  # the whole test inside one step: "+1" must keep meaning T+1
    assert verify(conn, svc, identity, f, fresh_code(f, 1))["status"] == "verified"
    # Steps -2, -1, 0 and +1 are inside the window but not later than the accepted +1.
    for k in (-2, -1, 0, 1):
        assert challenge(conn, svc, identity, f, fresh_code(f, k))["status"] == "pending", k
    assert challenge(conn, svc, identity, f, fresh_code(f, 2))["status"] == "approved"


def test_concurrent_same_code_exactly_one_approved(db, conn):
    svc = service(conn, "Race")
    identity = ident()
    f = verified(conn, svc, identity)
    n = 8
    barrier = threading.Barrier(n)
    code = fresh_code(f, 1, margin=4)

    def attempt(_):
        with connect(db) as c:
            barrier.wait()
            return challenge(c, svc, identity, f, code)["status"]

    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        statuses = list(pool.map(attempt, range(n)))
    assert sorted(statuses) == ["approved"] + ["pending"] * (n - 1)


# ---------------------------------------------------------------------------------------------
# 3. skew


def skew_setup(conn, s, source):
    """A service and the factor arguments giving the factor skew `s`, from `source`."""
    if source == "service":
        return service(conn, f"Skew {s}", skew=s, time_step=30), {}
    # The service says something else: the factor's argument wins.
    return service(conn, f"Skew {s}", skew=(s + 1) % 3, time_step=30), {"skew": s}


@pytest.mark.parametrize("source", ["service", "factor"])
@pytest.mark.parametrize("s", [0, 1, 2])
def test_skew_window_on_verify_factor(conn, s, source):
    svc, kwargs = skew_setup(conn, s, source)
    identity = ident()
    # One fresh factor per probe, so the replay guard never interferes.
    for k in range(-(s + 1), s + 2):
        f = factor(conn, svc, identity, f"k{k}", **kwargs)
        assert f["skew"] == s
        row = verify(conn, svc, identity, f, fresh_code(f, k))
        expected = "verified" if abs(k) <= s else "unverified"
        assert row["status"] == expected, f"skew {s}, offset {k}"


@pytest.mark.parametrize("source", ["service", "factor"])
@pytest.mark.parametrize("s", [0, 1, 2])
def test_skew_window_on_challenges(conn, s, source):
    svc, kwargs = skew_setup(conn, s, source)
    identity = ident()
    f = verified(conn, svc, identity, offset=0, **kwargs)
    # Test-only: forget the step verify_factor consumed, so -s can be probed on a challenge.
    superuser(conn, "UPDATE totp_private.factors SET last_step = NULL WHERE sid = %s", (f["sid"],))
    # Refusals first (they do not move the replay guard), then the farthest past step, then
    # the farthest future one.
    assert challenge(conn, svc, identity, f, fresh_code(f, -(s + 1)))["status"] == "pending"
    assert challenge(conn, svc, identity, f, fresh_code(f, s + 1))["status"] == "pending"
    assert challenge(conn, svc, identity, f, fresh_code(f, -s))["status"] == "approved"
    if s:
        pending = challenge(conn, svc, identity, f)
        assert answer(conn, svc, identity, pending, fresh_code(f, s))["status"] == "approved"


def test_default_skew_is_one(conn):
    svc = service(conn, "Skew default")
    identity = ident()
    for k, expected in ((-2, "unverified"), (-1, "verified"), (1, "verified"), (2, "unverified")):
        f = factor(conn, svc, identity, f"k{k}")
        assert f["skew"] == 1
        assert verify(conn, svc, identity, f, fresh_code(f, k))["status"] == expected, k


# ---------------------------------------------------------------------------------------------
# 4. defaults, overrides, binding


def test_twilio_defaults_when_neither_service_nor_factor_says(conn):
    svc = service(conn, "Plain Co")
    assert (svc["totp_issuer"], svc["totp_time_step"], svc["totp_code_length"], svc["totp_skew"]) == (
        None, None, None, None)
    f = factor(conn, svc, ident(), "phone")
    assert (f["alg"], f["time_step"], f["code_length"], f["skew"]) == ("sha1", 30, 6, 1)
    assert f["binding_uri"] == (
        f"otpauth://totp/Plain%20Co:phone?secret={f['binding_secret']}&issuer=Plain%20Co"
        "&algorithm=SHA1&digits=6&period=30")


def test_service_defaults_and_factor_overrides_resolved_at_creation(conn):
    svc = service(conn, "Acme Bank", issuer="AcmeIssuer", time_step=45, code_length=8, skew=2)
    assert (svc["totp_issuer"], svc["totp_time_step"], svc["totp_code_length"], svc["totp_skew"]) == (
        "AcmeIssuer", 45, 8, 2)
    identity = ident()
    inherited = factor(conn, svc, identity, "inherits", alg="sha256")
    assert (inherited["time_step"], inherited["code_length"], inherited["skew"]) == (45, 8, 2)
    assert inherited["binding_uri"] == (
        f"otpauth://totp/AcmeIssuer:inherits?secret={inherited['binding_secret']}&issuer=AcmeIssuer"
        "&algorithm=SHA256&digits=8&period=45")
    overridden = factor(conn, svc, identity, "overrides", time_step=20, code_length=7, skew=0)
    assert (overridden["time_step"], overridden["code_length"], overridden["skew"]) == (20, 7, 0)
    mixed = factor(conn, svc, identity, "mixed", time_step=60)
    assert (mixed["time_step"], mixed["code_length"], mixed["skew"]) == (60, 8, 2)

    # The service changes; the factors keep what their apps were given.
    updated = call(conn, "update_service", svc["sid"], issuer="NewIssuer", time_step=20,
                   code_length=6, skew=0, friendly_name="Acme 2")
    assert (updated["totp_issuer"], updated["totp_time_step"], updated["totp_code_length"],
            updated["totp_skew"], updated["friendly_name"]) == ("NewIssuer", 20, 6, 0, "Acme 2")
    assert updated["date_updated"] >= svc["date_updated"]
    rows = {r["sid"]: r for r in conn.execute(
        "SELECT * FROM totp.factors WHERE service_sid = %s", (svc["sid"],)).fetchall()}
    assert (rows[inherited["sid"]]["time_step"], rows[inherited["sid"]]["code_length"],
            rows[inherited["sid"]]["skew"], rows[inherited["sid"]]["alg"]) == (45, 8, 2, "sha256")
    assert (rows[overridden["sid"]]["time_step"], rows[overridden["sid"]]["code_length"],
            rows[overridden["sid"]]["skew"]) == (20, 7, 0)
    assert (rows[mixed["sid"]]["time_step"], rows[mixed["sid"]]["code_length"]) == (60, 8)
    # ... and their codes still verify with the settings they were created with (skew 2
    # accepts the code two 45 s steps back).
    row = verify(conn, svc, identity, inherited, fresh_code(inherited, -2))
    assert row["status"] == "verified"

    later = factor(conn, svc, identity, "later")
    assert (later["time_step"], later["code_length"], later["skew"]) == (20, 6, 0)
    assert "otpauth://totp/NewIssuer:later?" in later["binding_uri"]
    assert "&issuer=NewIssuer&" in later["binding_uri"]


def test_issuer_falls_back_to_friendly_name_and_follows_updates(conn):
    svc = service(conn, "Fallback Inc")
    identity = ident()
    f = factor(conn, svc, identity, "laptop")
    assert f["binding_uri"].startswith("otpauth://totp/Fallback%20Inc:laptop?")
    assert "&issuer=Fallback%20Inc&" in f["binding_uri"]
    call(conn, "update_service", svc["sid"], friendly_name="Renamed")
    g = factor(conn, svc, identity, "tablet")
    assert g["binding_uri"].startswith("otpauth://totp/Renamed:tablet?")
    call(conn, "update_service", svc["sid"], issuer="Iss")
    h = factor(conn, svc, identity, "watch")
    assert h["binding_uri"].startswith("otpauth://totp/Iss:watch?") and "&issuer=Iss&" in h["binding_uri"]


def test_update_service_with_nulls_leaves_settings(conn):
    svc = service(conn, "Keep", issuer="Iss", time_step=40, code_length=7, skew=0)
    same = call(conn, "update_service", svc["sid"])
    for col in ("friendly_name", "totp_issuer", "totp_time_step", "totp_code_length", "totp_skew"):
        assert same[col] == svc[col], col


def test_binding_secret_is_32_upper_base32_of_160_random_bits(conn):
    svc = service(conn, "Secrets")
    identity = ident()
    secrets = [factor(conn, svc, identity, f"f{i}")["binding_secret"] for i in range(20)]
    assert len(set(secrets)) == 20
    for s in secrets:
        assert BASE32_32.match(s), s
        assert len(secret_bytes(s)) == 20
    # Shown once: no relation in schema totp has the secret.
    cols = conn.execute(
        """SELECT table_name, column_name FROM information_schema.columns
           WHERE table_schema = 'totp'""").fetchall()
    assert not [c for c in cols if "secret" in c["column_name"]]
    for rel in ("factors", "challenges", "entities", "services"):
        text = str(conn.execute(f"SELECT * FROM totp.{rel}").fetchall())
        assert not any(s in text for s in secrets)


def test_caller_secret_tolerates_case_spaces_and_padding(conn):
    svc = service(conn, "Own secret")
    identity = ident()
    raw = bytes(range(100, 116))  # 16 bytes: exactly 128 bits, 26 base32 chars + 6 padding
    canonical = base64.b32encode(raw).decode()
    assert canonical.endswith("======")
    sloppy = " ".join(canonical.lower()[i:i + 4] for i in range(0, len(canonical), 4))
    assert " " in sloppy and "=" in sloppy and sloppy != sloppy.upper()
    f = factor(conn, svc, identity, secret=sloppy)
    assert f["binding_secret"] == canonical.rstrip("=")
    assert f"secret={canonical.rstrip('=')}&" in f["binding_uri"]
    # Codes from the caller's bytes verify.
    wait_inside_step(30, 1.5)
    code = rfc4226(raw, int(time.time()) // 30, 6, "sha1")
    assert verify(conn, svc, identity, f, code)["status"] == "verified"


def test_caller_secret_under_128_bits_refused(conn):
    svc = service(conn, "Short secret")
    short = base64.b32encode(bytes(range(15))).decode()  # 120 bits
    with refused("22023", 60306) as info:
        factor(conn, svc, ident(), secret=short)
    assert short.rstrip("=") not in str(info.value)
    assert short.rstrip("=") not in (info.value.diag.message_detail or "")


def test_binding_uri_percent_encodes_issuer_and_account(conn):
    svc = service(conn, "Acme: R&D")
    f = factor(conn, svc, ident(), "Jane's a:b phone")
    assert f["binding_uri"] == (
        "otpauth://totp/Acme%3A%20R%26D:Jane%27s%20a%3Ab%20phone"
        f"?secret={f['binding_secret']}&issuer=Acme%3A%20R%26D&algorithm=SHA1&digits=6&period=30")


def test_verify_factor_on_verified_factor_returns_row_unchanged(conn):
    svc = service(conn, "Twice")
    identity = ident()
    f = verified(conn, svc, identity)
    before = conn.execute("SELECT * FROM totp.factors WHERE sid = %s", (f["sid"],)).fetchone()
    for payload in (fresh_code(f, 0), "000000", "123"):
        assert verify(conn, svc, identity, f, payload) == before
    # The code shown to the verified factor above was not consumed: it approves a challenge.
    assert challenge(conn, svc, identity, f, fresh_code(f, 0))["status"] == "approved"


UPDATES = [{"code_length": 8}, {"alg": "sha512"}, {"time_step": 20}, {"time_step": 60},
           {"alg": "sha256", "code_length": 7, "time_step": 45}]


@pytest.mark.parametrize("change", UPDATES, ids=["code_length=8", "alg=sha512", "time_step=20",
                                                 "time_step=60", "sha256-7-45"])
def test_update_factor_settings_take_effect(conn, change):
    """update_factor (Twilio POST /Factors/{sid} with Config) changes the codes the factor
    expects: a code from an app holding the new settings approves the next challenge."""
    svc = service(conn, "Reconfigure")
    identity = ident()
    f = verified(conn, svc, identity)  # sha1, 6 digits, 30 s
    row = call(conn, "update_factor", svc["sid"], identity, f["sid"], **change)
    assert all(row[k] == v for k, v in change.items())
    g = {**f, **change}
    assert challenge(conn, svc, identity, g, fresh_code(g, 0))["status"] == "approved"


def test_update_factor_with_the_same_time_step_keeps_the_replay_guard(conn):
    """Restating the time_step a factor already has must not move its replay guard back."""
    svc = service(conn, "Restate")
    identity = ident()
    f = verified(conn, svc, identity)
    code = fresh_code(f, 0)
    assert challenge(conn, svc, identity, f, code)["status"] == "approved"
    call(conn, "update_factor", svc["sid"], identity, f["sid"], time_step=30)
    assert challenge(conn, svc, identity, f, code)["status"] == "pending"


# ---------------------------------------------------------------------------------------------
# every function, positionally and by name


def test_every_function_positionally_and_by_name(conn):
    # create_service / update_service
    s1 = conn.execute("SELECT * FROM totp.create_service(%s, %s, %s, %s, %s)",
                      ("Pos", "PosIssuer", 30, 6, 1)).fetchone()
    s2 = conn.execute(
        "SELECT * FROM totp.create_service(friendly_name => %s, issuer => %s, time_step => %s, "
        "code_length => %s, skew => %s)", ("Named", "NamedIssuer", 30, 6, 1)).fetchone()
    assert s1["totp_issuer"] == "PosIssuer" and s2["totp_issuer"] == "NamedIssuer"
    u1 = conn.execute("SELECT * FROM totp.update_service(%s, %s, %s, %s, %s, %s)",
                      (s1["sid"], "Pos2", "PI2", 40, 7, 2)).fetchone()
    assert (u1["friendly_name"], u1["totp_issuer"], u1["totp_time_step"], u1["totp_code_length"],
            u1["totp_skew"]) == ("Pos2", "PI2", 40, 7, 2)
    u2 = conn.execute(
        "SELECT * FROM totp.update_service(sid => %s, friendly_name => %s, issuer => %s, "
        "time_step => %s, code_length => %s, skew => %s)",
        (s2["sid"], "Named2", "NI2", 30, 6, 1)).fetchone()
    assert (u2["friendly_name"], u2["totp_issuer"]) == ("Named2", "NI2")
    u2 = conn.execute("SELECT * FROM totp.update_service(skew => %s, sid => %s)", (0, s2["sid"])).fetchone()
    assert u2["totp_skew"] == 0 and u2["totp_time_step"] == 30

    # create_entity / delete_entity
    e1 = conn.execute("SELECT * FROM totp.create_entity(%s, %s)", (s1["sid"], "pos-1")).fetchone()
    e2 = conn.execute("SELECT * FROM totp.create_entity(identity => %s, service_sid => %s)",
                      ("named-1", s2["sid"])).fetchone()
    assert e1["identity"] == "pos-1" and e2["identity"] == "named-1" and e2["service_sid"] == s2["sid"]
    conn.execute("SELECT totp.delete_entity(%s, %s)", (s1["sid"], "pos-1"))
    conn.execute("SELECT totp.delete_entity(identity => %s, service_sid => %s)", ("named-1", s2["sid"]))
    assert conn.execute("SELECT count(*) AS n FROM totp.entities WHERE identity IN ('pos-1', 'named-1')"
                        ).fetchone()["n"] == 0

    # create_factor / verify_factor / update_factor
    secret = base64.b32encode(bytes(range(20))).decode()
    f1 = conn.execute("SELECT * FROM totp.create_factor(%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                      (s1["sid"], "pos-2", "pos phone", secret, "sha256", 8, 20, 1,
                       Jsonb({"os": "ios"}))).fetchone()
    assert (f1["alg"], f1["code_length"], f1["time_step"], f1["skew"], f1["metadata"]) == (
        "sha256", 8, 20, 1, {"os": "ios"})
    assert f1["binding_secret"] == secret
    f2 = conn.execute(
        "SELECT * FROM totp.create_factor(metadata => %s, skew => %s, time_step => %s, "
        "code_length => %s, alg => %s, secret => %s, friendly_name => %s, identity => %s, "
        "service_sid => %s)",
        (Jsonb({"os": "android"}), 1, 30, 6, "sha512", secret, "named phone", "named-2", s2["sid"])).fetchone()
    assert (f2["alg"], f2["code_length"], f2["time_step"], f2["metadata"], f2["identity"]) == (
        "sha512", 6, 30, {"os": "android"}, "named-2")

    v1 = conn.execute("SELECT * FROM totp.verify_factor(%s, %s, %s, %s)",
                      (s1["sid"], "pos-2", f1["sid"], fresh_code(f1, -1))).fetchone()
    v2 = conn.execute(
        "SELECT * FROM totp.verify_factor(auth_payload => %s, factor_sid => %s, identity => %s, "
        "service_sid => %s)", (fresh_code(f2, -1), f2["sid"], "named-2", s2["sid"])).fetchone()
    assert v1["status"] == v2["status"] == "verified"

    uf1 = conn.execute("SELECT * FROM totp.update_factor(%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                       (s1["sid"], "pos-2", f1["sid"], "renamed", None, None, None, 2,
                        Jsonb({"k": 1}))).fetchone()
    assert (uf1["friendly_name"], uf1["skew"], uf1["metadata"], uf1["alg"]) == ("renamed", 2, {"k": 1}, "sha256")
    uf2 = conn.execute(
        "SELECT * FROM totp.update_factor(factor_sid => %s, identity => %s, service_sid => %s, "
        "friendly_name => %s, skew => %s)", (f2["sid"], "named-2", s2["sid"], "renamed2", 0)).fetchone()
    assert (uf2["friendly_name"], uf2["skew"], uf2["alg"], uf2["code_length"]) == ("renamed2", 0, "sha512", 6)
    f1 = {**f1, "skew": 2}
    f2 = {**f2, "skew": 0}

    # create_challenge / update_challenge
    exp = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=10)
    c1 = conn.execute("SELECT * FROM totp.create_challenge(%s, %s, %s, %s, %s, %s, %s)",
                      (s1["sid"], "pos-2", f1["sid"], None, exp, Jsonb({"message": "Hi"}),
                       Jsonb({"ip": "1.2.3.4"}))).fetchone()
    assert c1["status"] == "pending" and c1["expiration_date"] == exp
    assert c1["details"] == {"message": "Hi"} and c1["hidden_details"] == {"ip": "1.2.3.4"}
    c2 = conn.execute(
        "SELECT * FROM totp.create_challenge(hidden_details => %s, details => %s, expiration_date => %s, "
        "factor_sid => %s, identity => %s, service_sid => %s)",
        (Jsonb({"h": 1}), Jsonb({"d": 2}), exp, f2["sid"], "named-2", s2["sid"])).fetchone()
    assert c2["status"] == "pending" and c2["details"] == {"d": 2} and c2["hidden_details"] == {"h": 1}
    c3 = conn.execute("SELECT * FROM totp.create_challenge(service_sid => %s, identity => %s, "
                      "factor_sid => %s, auth_payload => %s)",
                      (s1["sid"], "pos-2", f1["sid"], fresh_code(f1, 0))).fetchone()
    assert c3["status"] == "approved"

    a1 = conn.execute("SELECT * FROM totp.update_challenge(%s, %s, %s, %s, %s)",
                      (s1["sid"], "pos-2", c1["sid"], fresh_code(f1, 1), Jsonb({"m": 1}))).fetchone()
    assert a1["status"] == "approved" and a1["metadata"] == {"m": 1}
    a2 = conn.execute(
        "SELECT * FROM totp.update_challenge(metadata => %s, auth_payload => %s, challenge_sid => %s, "
        "identity => %s, service_sid => %s)",
        (Jsonb({"m": 2}), fresh_code(f2, 0), c2["sid"], "named-2", s2["sid"])).fetchone()
    assert a2["status"] == "approved" and a2["metadata"] == {"m": 2}

    # delete_factor / delete_service
    conn.execute("SELECT totp.delete_factor(%s, %s, %s)", (s1["sid"], "pos-2", f1["sid"]))
    conn.execute("SELECT totp.delete_factor(factor_sid => %s, identity => %s, service_sid => %s)",
                 (f2["sid"], "named-2", s2["sid"]))
    assert conn.execute("SELECT count(*) AS n FROM totp.factors WHERE sid IN (%s, %s)",
                        (f1["sid"], f2["sid"])).fetchone()["n"] == 0
    conn.execute("SELECT totp.delete_service(%s)", (s1["sid"],))
    conn.execute("SELECT totp.delete_service(sid => %s)", (s2["sid"],))
    assert conn.execute("SELECT count(*) AS n FROM totp.services WHERE sid IN (%s, %s)",
                        (s1["sid"], s2["sid"])).fetchone()["n"] == 0


# ---------------------------------------------------------------------------------------------
# 7. cascading deletes


def counts(conn, where, params):
    return {
        rel: conn.execute(f"SELECT count(*) AS n FROM {rel} WHERE {where}", params).fetchone()["n"]
        for rel in ("totp.entities", "totp.factors", "totp.challenges",
                    "totp_private.factors", "totp_private.challenges")
    }


def secrets_of(conn, identities):
    """Sealed secrets stored for these identities (test-only look into the private schema)."""
    return conn.execute("SELECT count(*) AS n FROM totp_private.factor_secrets WHERE identity = ANY(%s)",
                        (list(identities),)).fetchone()["n"]


def populated(conn, name):
    """A service with two identities, each with a verified and an unverified factor and
    challenges; returns (service, identities, factors by identity)."""
    svc = service(conn, name)
    people = [ident("a"), ident("b")]
    factors = {}
    for p in people:
        f = verified(conn, svc, p)
        u = factor(conn, svc, p, "spare")
        challenge(conn, svc, p, f)
        challenge(conn, svc, p, f, fresh_code(f, 0))
        factors[p] = (f, u)
    return svc, people, factors


def test_delete_service_cascades(conn):
    svc, people, _ = populated(conn, "Del svc")
    other, other_people, _ = populated(conn, "Keep svc")
    before = counts(conn, "service_sid = %s", (svc["sid"],))
    assert before == {"totp.entities": 2, "totp.factors": 4, "totp.challenges": 4,
                      "totp_private.factors": 4, "totp_private.challenges": 4}
    assert secrets_of(conn, people) == 4
    call(conn, "delete_service", svc["sid"])
    assert set(counts(conn, "service_sid = %s", (svc["sid"],)).values()) == {0}
    assert secrets_of(conn, people) == 0, "sealed secrets left behind"
    assert secrets_of(conn, other_people) == 4
    assert counts(conn, "service_sid = %s", (other["sid"],)) == before
    with refused("P0002", 20404):
        call(conn, "create_entity", svc["sid"], people[0])


def test_delete_entity_cascades(conn):
    svc, (a, b), factors = populated(conn, "Del entity")
    call(conn, "delete_entity", svc["sid"], a)
    assert set(counts(conn, "identity = %s", (a,)).values()) == {0}
    assert secrets_of(conn, [a]) == 0 and secrets_of(conn, [b]) == 2
    assert counts(conn, "identity = %s", (b,)) == {
        "totp.entities": 1, "totp.factors": 2, "totp.challenges": 2,
        "totp_private.factors": 2, "totp_private.challenges": 2}
    with refused("P0002", 60392):
        call(conn, "verify_factor", svc["sid"], a, factors[a][0]["sid"], "123456")


def test_challenges_of_a_factor_deleted_by_hand_are_inert(conn):
    """Challenges have no foreign key to their factor (0.7.0): the extension deletes them itself
    (the tests above). A factor deleted by hand leaves its challenges, which must be inert: the
    pending one cannot be answered, even with the right code, and the approved one no longer
    counts for has_recent_approval (README: Behaviour)."""
    svc = service(conn, "Hand delete")
    person = ident()
    f = verified(conn, svc, person)
    pending = challenge(conn, svc, person, f)
    approved = challenge(conn, svc, person, f, fresh_code(f, 0))
    assert approved["status"] == "approved"
    assert conn.execute("SELECT totp.has_recent_approval(%s, %s, '5 minutes') AS ok",
                        (svc["sid"], person)).fetchone()["ok"]
    superuser(conn, "DELETE FROM totp_private.factors WHERE identity = %s AND sid = %s", (person, f["sid"]))
    left = conn.execute("SELECT sid FROM totp_private.challenges WHERE identity = %s ORDER BY sid",
                        (person,)).fetchall()
    assert sorted(r["sid"] for r in left) == sorted([pending["sid"], approved["sid"]])
    with refused("P0002", 60390):
        answer(conn, svc, person, pending, fresh_code(f, 1))
    assert not conn.execute("SELECT totp.has_recent_approval(%s, %s, '5 minutes') AS ok",
                            (svc["sid"], person)).fetchone()["ok"]
    assert conn.execute("SELECT status FROM totp_private.challenges WHERE identity = %s AND sid = %s",
                        (person, pending["sid"])).fetchone()["status"] == "pending"
    # A factor created again under the same SID does not adopt them: the old pending challenge
    # cannot be answered with the new factor's code, nor does the old approval count.
    again = verified(conn, svc, person, sid=f["sid"])
    assert again["sid"] == f["sid"]
    with refused("P0002", 60390):
        answer(conn, svc, person, pending, fresh_code(again, 0))
    assert not conn.execute("SELECT totp.has_recent_approval(%s, %s, '5 minutes') AS ok",
                            (svc["sid"], person)).fetchone()["ok"]


def test_delete_factor_cascades(conn):
    svc, (a, b), factors = populated(conn, "Del factor")
    f, u = factors[a]
    call(conn, "delete_factor", svc["sid"], a, f["sid"])
    assert conn.execute("SELECT count(*) AS n FROM totp.challenges WHERE factor_sid = %s",
                        (f["sid"],)).fetchone()["n"] == 0
    assert conn.execute("SELECT count(*) AS n FROM totp_private.challenges WHERE factor_sid = %s",
                        (f["sid"],)).fetchone()["n"] == 0
    assert conn.execute("SELECT count(*) AS n FROM totp.factors WHERE identity = %s",
                        (a,)).fetchone()["n"] == 1  # the spare remains
    assert counts(conn, "identity = %s", (b,))["totp.challenges"] == 2
    with refused("P0002", 60390):
        call(conn, "create_challenge", svc["sid"], a, f["sid"])
    assert secrets_of(conn, [a]) == 1
    call(conn, "delete_factor", svc["sid"], a, u["sid"])
    assert secrets_of(conn, [a]) == 0
    assert conn.execute("SELECT count(*) AS n FROM totp_private.factors WHERE identity = %s",
                        (a,)).fetchone()["n"] == 0
