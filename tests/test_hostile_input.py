"""Hostile input to every function of schema `totp` (SPEC §3–§5, §7).

Every function listed in pg_proc for schema totp is called with random and malicious arguments:
1 MB strings, control characters, NUL-free binary-ish text, non-ASCII (emoji, RTL overrides,
combining marks), SQL metacharacters, malformed SIDs, out-of-range numbers, NULL in each
position, bad JSON, and impossible expiration dates. Trigger functions are not called directly
but through real triggers on an application table.

What must hold, whatever the input:
- a refusal is an ERROR with a documented SQLSTATE (22023, P0002, 23505, 54000, 55000, 42501;
  22P02 for a bad literal cast and 42883 for a wrong argument type, both raised by Postgres
  before the function runs; for a regrole argument, 42704 / 42602 / 22003 from Postgres's own
  cast of a name that is no role) and never XX000;
- a setting update_service accepts leaves the service usable (every later call on it keeps to
  the SQLSTATEs above), and the grant functions grant to the role named and to no other;
- the backend survives (`SELECT 1` on the same connection after every call);
- NULL for a required argument of a state function is a clear 22023 naming the argument,
  never a silent NULL row;
- no caller-supplied secret, generated secret or submitted code appears in an error's
  message, detail or hint, nor in the server log ($PGHOST/server.log, where
  scripts/lib.sh cluster_start writes it) after the run.

The randomized part is hypothesis-style but dependency-free: `random.Random(1234)`, so every
run makes the same few thousand calls. Open bugs are pinned by `xfail(strict=True)` tests of
their own (search for "BUG:"); inputs that once broke the extension are regression tests (§12).

Run against a private cluster:
    source scripts/lib.sh && cluster_start hostile 5494
    PGHOST=$RUN_DIR/totp_verify-hostile PGPORT=5494 PGUSER=postgres \
        .venv/bin/pytest -q tests/test_hostile_input.py
"""

import datetime as dt
import json
import os
import random
import re
import time
import uuid
from dataclasses import dataclass, field

import psycopg
import pytest
from psycopg import sql
from psycopg.types.datetime import IntervalLoader

from conftest import connect, oathtool, rfc4226, verified_factor, wait_inside_step

SEED = 1234
RANDOM_CALLS = 3000

# SQLSTATEs an extension function may raise (README / SPEC §5).
ALLOWED = {"22023", "P0002", "23505", "54000", "55000", "42501"}

# Each argument of each function, as pg_proc spells it (name, type). The coverage test checks
# this against pg_proc, so a function added to schema totp without hostile coverage fails.
TRIGGERS = {"forget_entity", "require_approval"}
SIGNATURES = {
    "create_service": [("friendly_name", "text"), ("issuer", "text"), ("time_step", "integer"),
                       ("code_length", "integer"), ("skew", "integer"), ("sid", "text"),
                       ("account_sid", "text")],
    "update_service": [("sid", "text"), ("friendly_name", "text"), ("issuer", "text"),
                       ("time_step", "integer"), ("code_length", "integer"), ("skew", "integer"),
                       ("max_factor_attempts", "integer"), ("max_challenge_attempts", "integer"),
                       ("max_challenges_per_hour", "integer"), ("max_challenges_per_day", "integer"),
                       ("max_short_code_challenges_per_day", "integer"), ("max_factors_per_entity", "integer"),
                       ("max_factor_creations_per_day", "integer"), ("challenge_ttl", "interval"),
                       ("max_challenge_ttl", "interval"), ("unverified_factor_ttl", "interval"),
                       ("event_retention", "interval")],
    "delete_service": [("sid", "text")],
    "create_entity": [("service_sid", "text"), ("identity", "text")],
    "delete_entity": [("service_sid", "text"), ("identity", "text")],
    "create_factor": [("service_sid", "text"), ("identity", "text"), ("friendly_name", "text"),
                      ("secret", "text"), ("alg", "text"), ("code_length", "integer"),
                      ("time_step", "integer"), ("skew", "integer"), ("metadata", "jsonb"), ("sid", "text")],
    "verify_factor": [("service_sid", "text"), ("identity", "text"), ("factor_sid", "text"),
                      ("auth_payload", "text")],
    "update_factor": [("service_sid", "text"), ("identity", "text"), ("factor_sid", "text"),
                      ("friendly_name", "text"), ("alg", "text"), ("code_length", "integer"),
                      ("time_step", "integer"), ("skew", "integer"), ("metadata", "jsonb")],
    "delete_factor": [("service_sid", "text"), ("identity", "text"), ("factor_sid", "text")],
    "create_challenge": [("service_sid", "text"), ("identity", "text"), ("factor_sid", "text"),
                         ("auth_payload", "text"), ("expiration_date", "timestamp with time zone"),
                         ("details", "jsonb"), ("hidden_details", "jsonb")],
    "update_challenge": [("service_sid", "text"), ("identity", "text"), ("challenge_sid", "text"),
                         ("auth_payload", "text"), ("metadata", "jsonb")],
    "has_recent_approval": [("service_sid", "text"), ("identity", "text"), ("within", "interval")],
    "has_recent_approval_from_aged_factor": [("service_sid", "text"), ("identity", "text"), ("within", "interval"),
                                             ("min_factor_age", "interval")],
    "grant_enrolment": [("role", "regrole")],
    "grant_verification": [("role", "regrole")],
    "hotp_code": [("secret", "bytea"), ("counter", "bigint"), ("digits", "integer"), ("alg", "text")],
    "totp_code": [("secret", "bytea"), ("at", "timestamp with time zone"), ("time_step", "integer"),
                  ("digits", "integer"), ("alg", "text")],
    "base32_encode": [("data", "bytea")],
    "base32_decode": [("text", "text")],
    "generate_secret": [("bytes", "integer")],
    "otpauth_uri": [("secret", "text"), ("account", "text"), ("issuer", "text"), ("alg", "text"),
                    ("digits", "integer"), ("period", "integer")],
    "qr_svg": [("text", "text")],
    "rotate_key": [("batch_size", "integer"), ("key_id", "bigint")],
    "retire_keys": [],
    "add_key": [],
    "key_file_ids": [],
    "make_key_current": [("key_id", "bigint")],
    "distribute": [("shard_count", "integer")],
    "undistribute": [],
    "services_digest": [],
    "run_maintenance": [],
    "shard_hash": [("identity", "text")],
    "set_partition": [("part_no", "integer"), ("part_count", "integer")],
    "get_service": [("sid", "text")],
    "list_services": [],
    "get_entity": [("service_sid", "text"), ("identity", "text")],
    "get_factor": [("service_sid", "text"), ("identity", "text"), ("factor_sid", "text")],
    "list_factors": [("service_sid", "text"), ("identity", "text")],
    "get_challenge": [("service_sid", "text"), ("identity", "text"), ("challenge_sid", "text")],
    "list_challenges": [("service_sid", "text"), ("identity", "text"), ("factor_sid", "text"),
                        ("status", "text"), ("newest_first", "boolean")],
    "export_identity": [("identity", "text")],
    "release_identity": [("identity", "text"), ("part_no", "integer")],
    "import_identity": [("data", "jsonb")],
}

# How many trailing arguments have a DEFAULT (and may be left out of a call).
DEFAULTS = {"create_service": 6, "update_service": 16, "create_factor": 7, "update_factor": 6,
            "create_challenge": 4, "update_challenge": 1, "hotp_code": 2, "totp_code": 4,
            "generate_secret": 1, "otpauth_uri": 4, "rotate_key": 2, "distribute": 1,
            "list_challenges": 3}

# Arguments of state functions whose NULL must be a 22023 naming them (SPEC §3, brief).
REQUIRED = {
    "create_service": {"friendly_name"},
    "update_service": {"sid"},
    "delete_service": {"sid"},
    "create_entity": {"service_sid", "identity"},
    "delete_entity": {"service_sid", "identity"},
    "create_factor": {"service_sid", "identity", "friendly_name"},
    "verify_factor": {"service_sid", "identity", "factor_sid", "auth_payload"},
    "update_factor": {"service_sid", "identity", "factor_sid"},
    "delete_factor": {"service_sid", "identity", "factor_sid"},
    "create_challenge": {"service_sid", "identity", "factor_sid"},
    "update_challenge": {"service_sid", "identity", "challenge_sid", "auth_payload"},
    "has_recent_approval": {"service_sid", "within"},
    "has_recent_approval_from_aged_factor": {"service_sid", "within"},
    "rotate_key": {"batch_size"},
    "make_key_current": {"key_id"},
    "get_service": {"sid"},
    "get_entity": {"service_sid", "identity"},
    "get_factor": {"service_sid", "identity", "factor_sid"},
    "list_factors": {"service_sid", "identity"},
    "get_challenge": {"service_sid", "identity", "challenge_sid"},
    "list_challenges": {"service_sid", "identity"},
    "export_identity": {"identity"},
    "release_identity": {"identity", "part_no"},
    "import_identity": {"data"},
}
# Functions whose every argument is optional-by-NULL in their own way: STRICT pure functions
# (NULL in, NULL out), otpauth_uri (documented: NULL secret/account gives NULL).
STRICT = {"hotp_code", "totp_code", "base32_encode", "base32_decode", "generate_secret", "qr_svg",
          "retire_keys", "run_maintenance", "shard_hash"}

# Integer ranges (inclusive) each numeric argument accepts.
RANGES = {
    ("create_service", "time_step"): (20, 60), ("create_service", "code_length"): (3, 8),
    ("create_service", "skew"): (0, 2),
    ("update_service", "time_step"): (20, 60), ("update_service", "code_length"): (3, 8),
    ("update_service", "skew"): (0, 2),
    **{("update_service", limit): (1, 2 ** 31 - 1)
       for limit in ("max_factor_attempts", "max_challenge_attempts", "max_challenges_per_hour",
                     "max_challenges_per_day", "max_short_code_challenges_per_day", "max_factors_per_entity",
                     "max_factor_creations_per_day")},
    ("create_factor", "time_step"): (20, 60), ("create_factor", "code_length"): (3, 8),
    ("create_factor", "skew"): (0, 2),
    ("update_factor", "time_step"): (20, 60), ("update_factor", "code_length"): (3, 8),
    ("update_factor", "skew"): (0, 2),
    ("hotp_code", "digits"): (1, 10), ("hotp_code", "counter"): (0, 2 ** 63 - 1),
    ("totp_code", "time_step"): (1, 86_400), ("totp_code", "digits"): (1, 10),
    ("otpauth_uri", "digits"): (1, 10), ("otpauth_uri", "period"): (1, 86_400),
    ("generate_secret", "bytes"): (16, 128),
    ("rotate_key", "batch_size"): (1, 2 ** 31 - 1),
}
JSON_ARGS = [("create_factor", "metadata"), ("update_factor", "metadata"),
             ("create_challenge", "details"), ("create_challenge", "hidden_details"),
             ("update_challenge", "metadata")]
# Where a caller hands the extension a secret or a code.
SENSITIVE_ARGS = {"secret", "auth_payload"}
INT4 = (-2 ** 31, 2 ** 31 - 1)

# The grant functions (plpgsql, not SECURITY DEFINER; EXECUTE for superusers only). Their one
# argument is a regrole: Postgres casts the text, so a name that is no role is refused before the
# function runs, with one of these SQLSTATEs (undefined_object, invalid_name).
GRANTS = {"grant_enrolment", "grant_verification"}
NEEDS_CITUS = {"distribute", "undistribute"}
REGROLE_CAST_STATES = {"42704", "42602", "22003"}  # 22003: a number beyond the OID range
# The lifetimes update_service sets, and the longest each may be (None: no upper bound).
HOUR_MICROS = 3_600 * 10 ** 6
LIFETIMES = {"challenge_ttl": HOUR_MICROS, "max_challenge_ttl": HOUR_MICROS,
             "unverified_factor_ttl": 30 * 24 * HOUR_MICROS, "event_retention": 3660 * 24 * HOUR_MICROS}
# A service's settings as a new service has them (what reset_tuned_service restores).
SERVICE_DEFAULTS = {"max_factor_attempts": 5, "max_challenge_attempts": 5, "max_challenges_per_hour": 50,
                    "max_challenges_per_day": 100, "max_short_code_challenges_per_day": 10,
                    "max_factors_per_entity": 100, "max_factor_creations_per_day": 100,
                    "challenge_ttl": "5 minutes", "max_challenge_ttl": "60 minutes",
                    "unverified_factor_ttl": "24 hours", "event_retention": "7 days"}


# ---------------------------------------------------------------------------------------------
# hostile values


def _binaryish():
    """Every code point 1–255 once: NUL-free, mostly not printable, valid UTF-8 once encoded."""
    return "".join(chr(i) for i in range(1, 256))


HUGE = 1 << 20  # 1 MB
TEXT_HOSTILE = [
    ("empty", ""),
    ("space", " "),
    ("tab-newline", "\t\n"),
    ("huge-ascii", "x" * HUGE),
    ("huge-utf8", "é" * (HUGE // 2)),
    ("huge-digits", "7" * HUGE),
    ("huge-base32", "A" * HUGE),
    ("huge-emoji", "\U0001F510" * (HUGE // 4)),
    ("control", "\x01\x02\x07\x08\x1b[31mred\x1b[0m\x7f"),
    ("crlf", "line\r\nbreak"),
    ("c1-controls", "a\x85b\x9bc"),
    ("binaryish", _binaryish()),
    ("binaryish-short", "\x01\xff\xfe\x80\x7f\x1f"),
    ("emoji", "\U0001F510\U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466"),
    ("rtl-override", "\u202Egnp.exe"),
    ("arabic", "\u0645\u0631\u062D\u0628\u0627"),
    ("combining", "e" + "\u0301" * 80),
    ("zero-width", "\u200B\u200C\u200D\uFEFF"),
    ("fullwidth-digits", "\uFF11\uFF12\uFF13\uFF14\uFF15\uFF16"),
    ("devanagari-digits", "\u0967\u0968\u0969\u096A\u096B\u096C"),
    ("astral-max", "\U0010FFFF\U000E0001"),
    ("noncharacters", "\uFFFE\uFFFF"),
    ("sql-drop", "'; DROP TABLE totp.services; --"),
    ("sql-quote-or", "' OR '1'='1"),
    ("sql-dollar", "$$; SELECT pg_sleep(5); $$"),
    ("sql-comment", "/* */ -- \\"),
    ("sql-identifier", '"; DROP SCHEMA totp CASCADE; --'),
    ("sql-placeholder", "$1 $2 %s %(x)s"),
    ("format-string", "%s%s%s%n%x{0}{}"),
    ("backslashes", "\\x00\\\\\\'"),
    ("like-meta", "%_%_\\%"),
    ("json-ish", '{"a": [1, 2]}'),
    ("null-word", "NULL"),
    ("digits-6", "123456"),
    ("digits-9", "123456789"),
    ("digits-neg", "-12345"),
    ("digits-space", " 123456"),
    ("long-identity", "a" * 65),
    ("identity-dashes", "-a--b-"),
    ("identity-underscore", "user_1"),
    ("lower-alg", "sha1"),
    ("upper-alg", "SHA512"),
    ("bad-alg", "md5"),
    ("otpauth", "otpauth://totp/a:b?secret=GEZDGNBVGY3TQOJQ&issuer=a"),
]
INT_HOSTILE = [-2 ** 31, -2 ** 31 + 1, -1, 0, 1, 2, 3, 8, 9, 10, 11, 19, 20, 60, 61, 127, 128, 129,
               86_400, 86_401, 2 ** 31 - 1]
BIGINT_HOSTILE = [-2 ** 63, -1, 0, 1, 2 ** 31, 2 ** 53 + 1, 2 ** 63 - 1]
BYTEA_HOSTILE = [
    ("empty", b""), ("nul", b"\x00"), ("all-bytes", bytes(range(256))),
    ("huge", random.Random(SEED).randbytes(HUGE)),
]
JSON_HOSTILE = [
    ("empty-object", "{}"),
    ("array", "[]"),
    ("array-of-object", '[{"a": 1}]'),
    ("string", '"just a string"'),
    ("number", "42"),
    ("true", "true"),
    ("json-null", "null"),
    ("over-1024", json.dumps({"k": "x" * 1100})),
    ("huge", json.dumps({"k": "y" * HUGE})),
    ("many-keys", json.dumps({f"k{i}": i for i in range(300)})),
    ("nested-50", '{"a":' * 50 + "1" + "}" * 50),
    ("unicode-keys", json.dumps({"\U0001F510": "\u202E", "e\u0301": "\x01\x1f"}, ensure_ascii=False)),
    ("sql-in-json", json.dumps({"'; DROP TABLE totp.services; --": "$$"})),
    ("escaped-controls", json.dumps({"a": "\x01\x02\x7f"})),
    ("big-but-finite-number", '{"a": 1e300}'),
    ("beyond-f64", '{"a": 1e400, "b": -1e-400}'),
    ("nested-200", '{"a":' * 200 + "1" + "}" * 200),
    ("nested-array-2000", '{"a":' + "[" * 2000 + "]" * 2000 + "}"),
    ("big-integers", '{"a": 123456789012345678901234567890, "b": 18446744073709551616}'),
]
# Timestamps within ~30 years of the end of the timestamp range (294276 AD): Unix seconds of them
# overflow i64 in clock::unix_seconds (BUG, see test_timestamps_near_the_end_of_time).
LAST_TIMESTAMP = "294276-12-31 23:59:59+00"
TS_HOSTILE = ["infinity", "-infinity", "epoch", "1969-12-31 23:59:59+00", "2000-01-01 00:00:00+00",
              "4713-01-01 00:00:00+00 BC", "294276-12-31 23:59:59+00", "now"]
INTERVAL_HOSTILE = ["0", "-1 day", "1 microsecond", "5 minutes", "1000 years", "-1000 years",
                    "1 mon -30 days", "P1Y2M3DT4H5M6S", "200000 years", "-300000 years",
                    "178000000 years", "-178000000 years", "60 minutes", "60 minutes 1 microsecond",
                    "-1 mon 30 days 1 minute", "1 day -23 hours -1 minute", "-0.000001 seconds"]


def quote_role(name):
    """A role name as regrole input spells it: a double-quoted identifier."""
    return '"' + name.replace('"', '""') + '"'


def regrole_hostile(world):
    """(label, value) pairs for a regrole argument: every hostile text (no role has such a
    name), near misses of the module's grantee, and names that hold SQL. The two real roles are
    the module's own (dropped at its end); grants never land on any other role."""
    g, evil = world.grantee_role, world.evil_role
    # Digits that fit an OID are taken as one: those are REGROLE_DANGLING's business.
    values = [(f"text-{label}", v) for label, v in TEXT_HOSTILE
              if not (re.fullmatch(r"\s*\d{1,10}\s*", v) and int(v) < 2 ** 32)]
    values += [
        ("grantee", g), ("grantee-quoted", quote_role(g)), ("grantee-upper", g.upper()),
        ("grantee-quoted-upper", quote_role(g.upper())), ("grantee-space", g + " "),
        ("grantee-qualified", "pg_catalog." + g), ("grantee-comma", g + ", postgres"),
        ("grantee-semicolon", g + "; DROP SCHEMA totp CASCADE"),
        ("evil-quoted", quote_role(evil)), ("evil-unquoted", evil),
        ("evil-half-quoted", '"' + evil), ("nonexistent", "no_such_role_" + uuid.uuid4().hex[:8]),
        ("public", "public"), ("PUBLIC", "PUBLIC"), ("quoted-public", '"public"'),
        ("current-user", "CURRENT_USER"), ("session-user", "session_user"), ("none", "none"),
        ("long-64", "r" * 64), ("long-name", "r" * 200), ("quoted-empty", '""'),
        ("rtl-override", "\u202Eadmin"),
    ]
    return values


# regrole input that passes Postgres's cast but names no role: '-' and '0' are the invalid OID,
# a number is taken as an OID without a lookup. See test_grant_to_no_role_is_a_clean_error.
REGROLE_DANGLING = [("dash", "-"), ("zero", "0"), ("oid-max", "4294967295"), ("oid-dangling", "123456789")]


def malformed_sids(real):
    """Near misses of a real SID: wrong prefix, case, length, characters."""
    prefix, hexpart = real[:2], real[2:]
    out = [
        ("upper-all", real.upper()),
        ("upper-hex", prefix + hexpart.upper()),
        ("lower-prefix", prefix.lower() + hexpart),
        ("len-33", real[:-1]),
        ("len-35", real + "0"),
        ("non-hex", real[:-1] + "g"),
        ("leading-space", " " + real[:-1]),
        ("trailing-space", real + " "),
        ("trailing-newline", real[:-1] + "\n"),
        ("multibyte-34-bytes", prefix + "\u00e9" * 16),
        ("fullwidth", prefix + "\uFF10" * 32),
        ("sql", (prefix + "'; DROP TABLE totp.services; --").ljust(34, "-")),
        ("like-meta", prefix + "%" * 32),
        ("prefix-only", prefix),
    ]
    for other in ("VA", "YE", "YF", "YC", "XX"):
        if other != prefix:
            out.append((f"prefix-{other}", other + hexpart))
    return out


# ---------------------------------------------------------------------------------------------
# the world every call aims at, and the ledger of secrets and codes


@dataclass
class Ledger:
    """Secrets and codes handed to the server or returned by it. `public` holds values also
    sent where they may legitimately be echoed (an identity or a SID in a not-found DETAIL).

    Only distinctive values are checked globally (against every error and the server log):
    base32 secrets of 16+ characters (as sent and normalized) and the 8-digit canary codes
    of test_codes_and_secrets_are_not_echoed. Every other submitted code is checked against
    the errors of its own call: a random 6-digit string is bound to occur somewhere in a log
    full of random hex SIDs."""
    secrets: set = field(default_factory=set)
    canary_codes: set = field(default_factory=set)
    public: set = field(default_factory=set)

    def add_secret(self, text):
        if not isinstance(text, str) or not 16 <= len(text) <= 400:
            return
        if not re.fullmatch(r"[A-Za-z2-7 =\t-]+", text):
            return
        self.secrets.add(text)
        norm = re.sub(r"[ =\t-]", "", text).upper()
        if len(norm) >= 16:
            self.secrets.add(norm)

    def leaks(self, text):
        """Known secrets and canary codes that occur in `text` (whole runs; the log check
        below also looks inside longer runs)."""
        found = []
        for run_ in B32_RUN.findall(text):
            for form in (run_, run_.upper()):
                if form in self.secrets and form not in self.public:
                    found.append(form)
        for run_ in DIGIT_RUN.findall(text):
            if run_ in self.canary_codes and run_ not in self.public:
                found.append(run_)
        return found


B32_RUN = re.compile(r"[A-Za-z2-7]{16,}")
DIGIT_RUN = re.compile(r"[0-9]{6,}")
LEDGER = Ledger()


@dataclass
class World:
    db: str
    conn: psycopg.Connection
    service_sid: str
    identity: str
    factor_sid: str
    challenge_sid: str
    doomed_service_sid: str
    victim_identity: str
    victim_factor_identity: str
    victim_factor_sid: str
    tuned_service_sid: str
    grantee_role: str
    evil_role: str
    log_path: str
    log_offset: int
    rng: random.Random
    acl_at_start: set = field(default_factory=set)


@dataclass
class Outcome:
    sqlstate: str | None
    message: str = ""
    detail: str = ""
    hint: str = ""
    rows: list | None = None

    @property
    def ok(self):
        return self.sqlstate is None

    def text(self):
        return "\n".join(x for x in (self.message, self.detail, self.hint) if x)

    def __str__(self):
        if self.ok:
            return "OK"
        return f"{self.sqlstate}: {self.message} / {self.detail} / {self.hint}"


CALLS = [0]


def run(conn, query, params=(), sensitive=(), public=()):
    """Runs one call and checks the invariants every call must keep: the backend survives, no
    XX000, no sensitive value in the error. Returns the Outcome."""
    CALLS[0] += 1
    for value in public:
        if isinstance(value, str):
            LEDGER.public.add(value)
    try:
        cur = conn.execute(query, params)
        out = Outcome(None, rows=cur.fetchall() if cur.description is not None else [])
    except psycopg.Error as e:
        if e.sqlstate is None or conn.broken or conn.closed:
            pytest.fail(f"connection lost (backend crashed?) on {query!r}: {e!r}")
        d = e.diag
        out = Outcome(e.sqlstate, d.message_primary or "", d.message_detail or "", d.message_hint or "")
    try:
        alive = conn.execute("SELECT 1 AS one").fetchone()["one"]
    except psycopg.Error as e:  # pragma: no cover - the failure we look for
        pytest.fail(f"backend did not survive {query!r}: {e!r}")
    assert alive == 1
    assert out.sqlstate != "XX000", f"internal error on {query!r}: {out}"
    if not out.ok:
        text = out.text()
        for value in sensitive:
            if isinstance(value, str) and len(value.strip()) >= 6 and value not in public:
                assert value not in text, f"a submitted secret/code is echoed by {query!r}: {out}"
        leaked = LEDGER.leaks(text)
        assert not leaked, f"a known secret/code is echoed by {query!r}: {out}"
    return out


def call_sql(fn, names, named=False):
    types = dict(SIGNATURES[fn])
    parts = [(f"{n} => " if named else "") + f"%s::{types[n]}" for n in names]
    return f"SELECT * FROM totp.{fn}({', '.join(parts)})"


def invoke(world, fn, args, named=False, conn=None):
    """Calls totp.fn with `args` (name -> value, in signature order; may omit a tail of
    defaulted arguments, or any defaulted argument when named)."""
    names = list(args)
    sensitive, public = [], []
    for n, v in args.items():
        if n in SENSITIVE_ARGS:
            sensitive.append(v)
            if n == "secret" and isinstance(v, str):
                LEDGER.add_secret(v)
        elif isinstance(v, str) and len(v) <= 400:
            public.append(v)
    out = run(conn or world.conn, call_sql(fn, names, named), [args[n] for n in names], sensitive, public)
    if out.ok and fn == "create_factor":
        for row in out.rows:
            LEDGER.add_secret(row["binding_secret"])
    return out


def baseline(world, fn):
    """Arguments that make `fn` do its ordinary job on the world (or, for deletions, on
    resources set aside to be deleted)."""
    w = world
    now = dt.datetime.now(dt.timezone.utc)
    return {
        "create_service": {"friendly_name": "Hostile Co", "issuer": None, "time_step": None,
                           "code_length": None, "skew": None, "sid": None, "account_sid": None},
        # A service of its own: the limits and lifetimes it is given must not starve the
        # world's service (reset_tuned_service puts them back).
        "update_service": {"sid": w.tuned_service_sid, "friendly_name": None, "issuer": None,
                           "time_step": None, "code_length": None, "skew": None,
                           "max_factor_attempts": None, "max_challenge_attempts": None,
                           "max_challenges_per_hour": None, "max_challenges_per_day": None,
                           "max_short_code_challenges_per_day": None, "max_factors_per_entity": None,
                           "max_factor_creations_per_day": None, "challenge_ttl": None,
                           "max_challenge_ttl": None, "unverified_factor_ttl": None,
                           "event_retention": None},
        "delete_service": {"sid": w.doomed_service_sid},
        "create_entity": {"service_sid": w.service_sid, "identity": "entity-" + uuid.uuid4().hex[:10]},
        "delete_entity": {"service_sid": w.service_sid, "identity": w.victim_identity},
        "create_factor": {"service_sid": w.service_sid, "identity": "creator-" + uuid.uuid4().hex[:10],
                          "friendly_name": "phone", "secret": None, "alg": None, "code_length": None,
                          "time_step": None, "skew": None, "metadata": None, "sid": None},
        "verify_factor": {"service_sid": w.service_sid, "identity": w.identity,
                          "factor_sid": w.factor_sid, "auth_payload": "00000000"},
        "update_factor": {"service_sid": w.service_sid, "identity": w.identity,
                          "factor_sid": w.factor_sid, "friendly_name": None, "alg": None,
                          "code_length": None, "time_step": None, "skew": None, "metadata": None},
        "delete_factor": {"service_sid": w.service_sid, "identity": w.victim_factor_identity,
                          "factor_sid": w.victim_factor_sid},
        "create_challenge": {"service_sid": w.service_sid, "identity": w.identity,
                             "factor_sid": w.factor_sid, "auth_payload": None,
                             "expiration_date": None, "details": None, "hidden_details": None},
        "update_challenge": {"service_sid": w.service_sid, "identity": w.identity,
                             "challenge_sid": w.challenge_sid, "auth_payload": "00000000",
                             "metadata": None},
        "has_recent_approval": {"service_sid": w.service_sid, "identity": w.identity,
                                "within": "5 minutes"},
        "has_recent_approval_from_aged_factor": {"service_sid": w.service_sid, "identity": w.identity,
                                                 "within": "5 minutes", "min_factor_age": "1 minute"},
        "grant_enrolment": {"role": w.grantee_role},
        "grant_verification": {"role": w.grantee_role},
        "hotp_code": {"secret": b"12345678901234567890", "counter": 1, "digits": 6, "alg": "sha1"},
        "totp_code": {"secret": b"12345678901234567890", "at": now.isoformat(), "time_step": 30,
                      "digits": 6, "alg": "sha1"},
        "base32_encode": {"data": b"foobar"},
        "base32_decode": {"text": "MZXW6YTBOI"},
        "generate_secret": {"bytes": 20},
        "otpauth_uri": {"secret": "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ", "account": "alice",
                        "issuer": "Acme", "alg": "sha1", "digits": 6, "period": 30},
        "qr_svg": {"text": "otpauth://totp/Acme:alice?secret=GEZDGNBVGY3TQOJQ"},
        "rotate_key": {"batch_size": 1000, "key_id": None},
        "retire_keys": {},
        "add_key": {},
        "key_file_ids": {},
        "make_key_current": {"key_id": 1},  # not a key of the file: 55000, the refusal under test
        "distribute": {"shard_count": 32},  # no Citus here: 55000
        "undistribute": {},
        "services_digest": {},
        "run_maintenance": {},
        "shard_hash": {"identity": w.identity},
        # Never a partition here (the world's identity would be refused): a lone pair is 22023,
        # and two NULLs clear it (protect() keeps random calls to that).
        "set_partition": {"part_no": None, "part_count": None},
        "get_service": {"sid": w.service_sid},
        "list_services": {},
        "get_entity": {"service_sid": w.service_sid, "identity": w.identity},
        "get_factor": {"service_sid": w.service_sid, "identity": w.identity, "factor_sid": w.factor_sid},
        "list_factors": {"service_sid": w.service_sid, "identity": w.identity},
        "get_challenge": {"service_sid": w.service_sid, "identity": w.identity,
                          "challenge_sid": w.challenge_sid},
        "list_challenges": {"service_sid": w.service_sid, "identity": w.identity, "factor_sid": None,
                            "status": None, "newest_first": None},
        "export_identity": {"identity": w.identity},
        "release_identity": {"identity": w.identity, "part_no": 1},  # no partition here: 55000
        "import_identity": {"data": "{}"},  # not a document: 22023
    }[fn]


def returns_row(fn):
    return fn in {"create_service", "update_service", "create_entity", "create_factor",
                  "verify_factor", "update_factor", "create_challenge", "update_challenge",
                  "get_service", "get_entity", "get_factor", "get_challenge"}


def check_success_shape(fn, out, where):
    """A state function that succeeds returns its row, never a row of NULLs."""
    if out.ok and returns_row(fn):
        assert len(out.rows) == 1 and out.rows[0]["sid"] is not None, f"silent NULL row from {where}"


def hostile_values(world, fn, name, typ):
    """(label, value) pairs of the argument's type, including SID near-misses for SID args."""
    if typ == "text":
        values = list(TEXT_HOSTILE)
        real = baseline(world, fn).get(name)
        if fn == "create_factor" and name == "sid":
            values += malformed_sids(world.factor_sid)
        elif name in ("sid", "service_sid"):
            values += malformed_sids(world.service_sid)
        elif name == "factor_sid":
            values += malformed_sids(world.factor_sid)
        elif name == "challenge_sid":
            values += malformed_sids(world.challenge_sid)
        elif isinstance(real, str) and real:
            values.append(("baseline-upper", real.upper()))
        return values
    if typ == "integer":
        return [(str(v), v) for v in INT_HOSTILE]
    if typ == "bigint":
        return [(str(v), v) for v in BIGINT_HOSTILE]
    if typ == "bytea":
        return list(BYTEA_HOSTILE)
    if typ == "jsonb":
        return list(JSON_HOSTILE)
    if typ == "timestamp with time zone":
        return [(v, v) for v in TS_HOSTILE]
    if typ == "interval":
        return [(v, v) for v in INTERVAL_HOSTILE]
    if typ == "regrole":
        return regrole_hostile(world)
    if typ == "boolean":
        return [("true", True), ("false", False)]
    raise AssertionError(f"no hostile values for type {typ}")


# ---------------------------------------------------------------------------------------------
# fixtures


def _log_path():
    host = os.environ.get("PGHOST", "")
    return os.path.join(host, "server.log") if host.startswith("/") else ""


class LenientIntervalLoader(IntervalLoader):
    """Intervals beyond Python's timedelta (±999,999,999 days, e.g. '178000000 years', which
    update_service may store and return) come back as their text instead of failing the fetch."""

    def load(self, data):
        try:
            return super().load(data)
        except (psycopg.DataError, OverflowError):
            return bytes(data).decode()


def _make_world(db):
    conn = connect(db)
    conn.adapters.register_loader("interval", LenientIntervalLoader)
    conn.execute("SET statement_timeout = '30s'")
    log_path = _log_path()
    log_offset = os.path.getsize(log_path) if log_path and os.access(log_path, os.R_OK) else -1
    rng = random.Random(SEED)
    svc = conn.execute("SELECT * FROM totp.create_service('Hostile Co', issuer => 'Hostile')").fetchone()
    sid = svc["sid"]
    # A caller-supplied canary secret (32 base32 chars from the seeded RNG).
    canary = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(32))
    LEDGER.add_secret(canary)
    identity = "hostile-user"
    factor = verified_factor(conn, sid, identity, secret=canary)
    ch = conn.execute("SELECT * FROM totp.create_challenge(%s, %s, %s)", (sid, identity, factor["sid"])).fetchone()
    doomed = conn.execute("SELECT * FROM totp.create_service('Doomed')").fetchone()["sid"]
    conn.execute("SELECT * FROM totp.create_entity(%s, 'victim-entity')", (sid,))
    victim = conn.execute("SELECT * FROM totp.create_factor(%s, 'victim-factor', 'old phone')", (sid,)).fetchone()
    LEDGER.add_secret(victim["binding_secret"])
    tuned = conn.execute("SELECT * FROM totp.create_service('Tuned Co')").fetchone()["sid"]
    # Roles are cluster-wide: unique names, dropped when the module ends (drop_roles).
    suffix = uuid.uuid4().hex[:8]
    grantee = "hostile_grantee_" + suffix
    evil = 'hostile_evil"; DROP SCHEMA totp CASCADE; --' + suffix
    for role in (grantee, evil):
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    for value in (sid, identity, factor["sid"], ch["sid"], doomed, "victim-entity", "victim-factor",
                  victim["sid"], tuned, grantee, evil):
        LEDGER.public.add(value)
    return World(db=db, conn=conn, service_sid=sid, identity=identity, factor_sid=factor["sid"],
                 challenge_sid=ch["sid"], doomed_service_sid=doomed, victim_identity="victim-entity",
                 victim_factor_identity="victim-factor", victim_factor_sid=victim["sid"],
                 tuned_service_sid=tuned, grantee_role=grantee, evil_role=evil,
                 log_path=log_path, log_offset=log_offset, rng=rng, acl_at_start=acl(conn))


def drop_roles(conn, *roles):
    """Takes back whatever was granted to `roles` in this database, then drops them."""
    for role in roles:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture(scope="module")
def world(db):
    w = _make_world(db)
    try:
        yield w
    finally:
        drop_roles(w.conn, w.grantee_role, w.evil_role)
        w.conn.close()


def reset_tuned_service(world):
    """Puts the tuned service's limits and lifetimes back to a new service's."""
    names = list(SERVICE_DEFAULTS)
    world.conn.execute(call_sql("update_service", ["sid"] + names, named=True),
                       [world.tuned_service_sid] + [SERVICE_DEFAULTS[n] for n in names])


# Every privilege on the extension's schemas, relations and functions, as
# (object, grantee, privilege). Roles are shown by name; PUBLIC is "-".
ACL_SQL = """
    SELECT 'schema ' || n.nspname AS obj, a.grantee::regrole::text AS grantee, a.privilege_type AS priv
      FROM pg_namespace n, aclexplode(n.nspacl) a WHERE n.nspname IN ('totp', 'totp_private')
    UNION ALL
    SELECT 'relation ' || c.oid::regclass::text, a.grantee::regrole::text, a.privilege_type
      FROM pg_class c, aclexplode(c.relacl) a
     WHERE c.relnamespace IN ('totp'::regnamespace, 'totp_private'::regnamespace)
    UNION ALL
    SELECT 'function ' || p.oid::regprocedure::text, a.grantee::regrole::text, a.privilege_type
      FROM pg_proc p, aclexplode(p.proacl) a WHERE p.pronamespace = 'totp'::regnamespace
    UNION ALL
    SELECT 'type ' || t.oid::regtype::text, a.grantee::regrole::text, a.privilege_type
      FROM pg_type t, aclexplode(t.typacl) a
     WHERE t.typnamespace IN ('totp'::regnamespace, 'totp_private'::regnamespace)"""


def acl(conn):
    return {(r["obj"], r["grantee"], r["priv"]) for r in conn.execute(ACL_SQL)}


def granted_to(conn, role):
    """What `role` holds on the extension's objects: {(object, privilege)}."""
    name = conn.execute("SELECT %s::regrole::text AS n", (quote_role(role),)).fetchone()["n"]
    return {(o, p) for o, g, p in acl(conn) if g == name}


def other_grants(world):
    """Privileges on the extension's objects that were not there when the module started and
    are not held by the module's two roles: grants that landed on a role nobody named."""
    mine = {world.conn.execute("SELECT %s::regrole::text AS n", (quote_role(r),)).fetchone()["n"]
            for r in (world.grantee_role, world.evil_role)}
    return {t for t in acl(world.conn) if t[1] not in mine} - world.acl_at_start


def fresh_verified_factor(world, **kwargs):
    """A verified factor on a new identity of the world's service (no rate limit used yet).
    Its settings are explicit: the sweeps leave the service's defaults anywhere in range, and
    oathtool (which verifies it) reads 6 digits or more only."""
    identity = "fresh-" + uuid.uuid4().hex[:12]
    LEDGER.public.add(identity)
    kwargs = {"code_length": 6, "time_step": 30, "skew": 1, "alg": "sha1", **kwargs}
    f = verified_factor(world.conn, world.service_sid, identity, **kwargs)
    LEDGER.add_secret(f["binding_secret"])
    return identity, f


# ---------------------------------------------------------------------------------------------
# 1. nothing is missed


def test_every_function_of_schema_totp_is_covered(world):
    rows = world.conn.execute(
        """SELECT p.proname, p.prorettype = 'trigger'::regtype AS is_trigger,
                  coalesce(p.proargnames[1:p.pronargs], '{}') AS names, p.pronargdefaults,
                  array(SELECT format_type(t, NULL) FROM unnest(p.proargtypes) t) AS types
           FROM pg_proc p WHERE p.pronamespace = 'totp'::regnamespace ORDER BY 1""").fetchall()
    seen = {}
    for r in rows:
        assert r["proname"] not in seen, f"overloaded totp.{r['proname']}: cover each signature"
        seen[r["proname"]] = r
    triggers = {name for name, r in seen.items() if r["is_trigger"]}
    assert triggers == TRIGGERS, "trigger functions changed: cover them in the trigger tests"
    plain = {name: list(zip(r["names"], r["types"])) for name, r in seen.items() if not r["is_trigger"]}
    missing = set(plain) - set(SIGNATURES)
    assert not missing, f"functions without hostile coverage: {sorted(missing)}"
    assert set(SIGNATURES) - set(plain) == set(), "SIGNATURES names functions that are gone"
    for name, sig in plain.items():
        assert sig == SIGNATURES[name], f"totp.{name} signature changed: {sig}"
        assert seen[name]["pronargdefaults"] == DEFAULTS.get(name, 0), f"totp.{name} defaults changed"


# ---------------------------------------------------------------------------------------------
# 2. NULL in each argument position


NULL_CASES = [(fn, name) for fn, sig in SIGNATURES.items() for name, _ in sig]


@pytest.mark.parametrize("fn,name", NULL_CASES, ids=[f"{f}.{n}" for f, n in NULL_CASES])
def test_null_in_each_argument_position(world, fn, name):
    args = baseline(world, fn)
    args[name] = None
    for named in (False, True):
        out = invoke(world, fn, args, named=named)
        where = f"totp.{fn}({name} => NULL)"
        if name in REQUIRED.get(fn, ()):
            assert out.sqlstate == "22023", f"{where}: expected 22023, got {out}"
            assert f"{name} is required" in out.detail, f"{where}: unclear error {out}"
            assert re.search(r"\(Twilio 60(200|306)\)", out.message), f"{where}: no Twilio code {out}"
        elif fn in GRANTS:
            # A grant to nobody is a mistake, never a silent no-op. (Which SQLSTATE: see
            # test_grant_to_no_role_is_a_clean_error.)
            assert not out.ok, f"{where}: a NULL role was accepted"
            assert not other_grants(world), f"{where}: granted to {other_grants(world)}"
        elif fn in STRICT:
            assert out.ok, f"{where}: a STRICT function must return NULL, got {out}"
            assert all(v is None for row in out.rows for v in row.values()), f"{where}: {out.rows}"
        else:
            assert out.ok or out.sqlstate in ALLOWED, f"{where}: {out}"
            assert not (out.sqlstate == "22023" and f"{name} " in out.detail), \
                f"{where}: an optional argument's NULL was refused: {out}"
            check_success_shape(fn, out, where)


def test_has_recent_approval_null_identity_is_false(world):
    out = invoke(world, "has_recent_approval",
                 {"service_sid": world.service_sid, "identity": None, "within": "1 hour"})
    assert out.ok and out.rows[0]["has_recent_approval"] is False
    for age in (None, "0", "1 minute"):
        out = invoke(world, "has_recent_approval_from_aged_factor",
                     {"service_sid": world.service_sid, "identity": None, "within": "1 hour",
                      "min_factor_age": age})
        assert out.ok and out.rows[0]["has_recent_approval_from_aged_factor"] is False, out


def test_otpauth_uri_null_secret_or_account_is_null(world):
    for name in ("secret", "account"):
        args = baseline(world, "otpauth_uri")
        args[name] = None
        out = invoke(world, "otpauth_uri", args)
        assert out.ok and out.rows[0]["otpauth_uri"] is None


# ---------------------------------------------------------------------------------------------
# 3. malformed SIDs


SID_CASES = [(fn, name) for fn, sig in SIGNATURES.items() for name, _ in sig
             if name in ("sid", "service_sid", "factor_sid", "challenge_sid")]


@pytest.mark.parametrize("fn,name", SID_CASES, ids=[f"{f}.{n}" for f, n in SID_CASES])
def test_malformed_sids_are_invalid_argument(world, fn, name):
    real = {"sid": world.service_sid, "service_sid": world.service_sid,
            "factor_sid": world.factor_sid, "challenge_sid": world.challenge_sid}[name]
    twilio = "60200" if name in ("sid", "service_sid") else "60306"
    if (fn, name) == ("create_factor", "sid"):  # the factor's own SID, supplied by the caller
        real, twilio = world.factor_sid, "60306"
    failures = []
    for label, bad in malformed_sids(real) + [("empty", ""), ("sql", "'; DROP TABLE totp.services; --")]:
        args = baseline(world, fn)
        args[name] = bad
        out = invoke(world, fn, args)
        if out.sqlstate != "22023" or f"(Twilio {twilio})" not in out.message or name not in out.detail:
            failures.append(f"{label}: {out}")
    assert not failures, f"totp.{fn}({name}):\n" + "\n".join(failures)
    assert world.conn.execute("SELECT count(*) AS n FROM totp.services").fetchone()["n"] >= 1


def test_well_formed_but_unknown_sids_are_not_found(world):
    ghost_va = "VA" + "0" * 32
    ghost_yf = "YF" + "f" * 32
    ghost_yc = "YC" + "a" * 32
    w = world
    cases = [
        ("update_service", {"sid": ghost_va}, "20404"),
        ("delete_service", {"sid": ghost_va}, "20404"),
        ("create_entity", {"service_sid": ghost_va, "identity": "nobody-1"}, "20404"),
        ("delete_entity", {"service_sid": w.service_sid, "identity": "nobody-1"}, "60392"),
        ("verify_factor", {"service_sid": w.service_sid, "identity": w.identity, "factor_sid": ghost_yf,
                           "auth_payload": "12345678"}, "60390"),
        ("delete_factor", {"service_sid": w.service_sid, "identity": "nobody-1", "factor_sid": ghost_yf},
         "60392"),
        ("update_challenge", {"service_sid": w.service_sid, "identity": w.identity,
                              "challenge_sid": ghost_yc, "auth_payload": "12345678"}, "60391"),
        # A real factor under another identity is "not found" (SPEC §3 scope rule).
        ("verify_factor", {"service_sid": w.service_sid, "identity": w.victim_identity,
                           "factor_sid": w.factor_sid, "auth_payload": "87654321"}, "6039"),
    ]
    for fn, args, twilio in cases:
        out = invoke(world, fn, args)
        assert out.sqlstate == "P0002" and f"(Twilio {twilio}" in out.message, f"{fn}: {out}"


# ---------------------------------------------------------------------------------------------
# 4. out-of-range numbers


@pytest.mark.parametrize("fn,name", sorted(RANGES), ids=[f"{f}.{n}" for f, n in sorted(RANGES)])
def test_out_of_range_numbers_are_invalid_argument(world, fn, name):
    lo, hi = RANGES[(fn, name)]
    typ = dict(SIGNATURES[fn])[name]
    limits = (-2 ** 63, 2 ** 63 - 1) if typ == "bigint" else INT4
    probes = {lo - 1, hi + 1, -1, 0, 1, limits[0], limits[1], lo, hi}
    failures = []
    for value in sorted(v for v in probes if limits[0] <= v <= limits[1]):
        args = baseline(world, fn)
        if fn == "create_factor":
            args["identity"] = "range-" + uuid.uuid4().hex[:10]
        args[name] = value
        out = invoke(world, fn, args)
        if lo <= value <= hi:
            if fn == "rotate_key" and value > 1000:
                continue  # a huge batch is fine; one rotation with it is enough (below)
            if not (out.ok or out.sqlstate in {"54000"}):
                failures.append(f"{value} (in range) refused: {out}")
        elif out.sqlstate != "22023" or name not in out.detail:
            failures.append(f"{value}: expected 22023 naming {name}, got {out}")
    assert not failures, f"totp.{fn}({name}):\n" + "\n".join(failures)


def test_rotate_key_with_the_largest_batch(world):
    out = invoke(world, "rotate_key", {"batch_size": 2 ** 31 - 1})
    assert out.ok and len(out.rows) == 1


# Lifetimes (update_service's interval arguments): positive; the two challenge TTLs at most 60
# minutes, and challenge_ttl at most max_challenge_ttl (SPEC §6).
LIFETIME_PROBES = [
    ("0", False), ("-1 microsecond", False), ("-1 day", False), ("1 mon -30 days", False),
    ("-0.000001 seconds", False), ("-178000000 years", False), ("1 day -24 hours", False),
    ("1 microsecond", True), ("59 minutes", True), ("60 minutes", True), ("1 hour", True),
    ("60 minutes 1 microsecond", None), ("1 day", None), ("30 days", None), ("30 days 1 microsecond", None),
    ("3660 days", None), ("1 mon", False), ("1 year", False), ("1000 years", False), ("1 mon -30 days 1 minute", False),
]
# The microseconds of the probes whose acceptance depends on the lifetime's cap (None above).
PROBE_MICROS = {"60 minutes 1 microsecond": HOUR_MICROS + 1, "1 day": 24 * HOUR_MICROS,
                "30 days": 30 * 24 * HOUR_MICROS, "30 days 1 microsecond": 30 * 24 * HOUR_MICROS + 1,
                "3660 days": 3660 * 24 * HOUR_MICROS}


@pytest.mark.parametrize("name", sorted(LIFETIMES))
def test_out_of_range_lifetimes_are_invalid_argument(world, name):
    """None in LIFETIME_PROBES: accepted where the value is within the lifetime's cap. Months are
    refused everywhere (their length depends on the date)."""
    failures = []
    for value, ok in LIFETIME_PROBES:
        if ok is None:
            ok = PROBE_MICROS[value] <= LIFETIMES[name]
        args = {"sid": world.tuned_service_sid, name: value}
        if name == "challenge_ttl" and ok:
            args["max_challenge_ttl"] = "60 minutes"
        if name == "max_challenge_ttl" and ok:
            args["challenge_ttl"] = "1 microsecond"
        out = invoke(world, "update_service", args, named=True)
        stored = world.conn.execute(f"SELECT {name} = %s::interval AS same FROM totp.services WHERE sid = %s",
                                    (value, world.tuned_service_sid)).fetchone()["same"]
        reset_tuned_service(world)
        if ok and not out.ok:
            failures.append(f"{value} (in range) refused: {out}")
        elif ok and not stored:
            failures.append(f"{value} accepted but not stored")
        elif not ok and (out.sqlstate != "22023" or name not in out.detail or "(Twilio 60200)" not in out.message):
            failures.append(f"{value}: expected 22023 (Twilio 60200) naming {name}, got {out}")
        elif not ok and stored:
            failures.append(f"{value} refused but stored")
    assert not failures, f"totp.update_service({name}):\n" + "\n".join(failures)


@pytest.mark.parametrize("label,first,second,refused", [
    ("ttl-above-max-in-one-call", None, {"challenge_ttl": "2 minutes", "max_challenge_ttl": "1 minute"}, True),
    ("ttl-above-existing-max", {"max_challenge_ttl": "10 minutes"}, {"challenge_ttl": "11 minutes"}, True),
    ("max-below-existing-ttl", None, {"max_challenge_ttl": "4 minutes"}, True),  # challenge_ttl is 5 minutes
    ("max-below-ttl-by-1us", {"challenge_ttl": "10 minutes"}, {"max_challenge_ttl": "9 minutes 59.999999 seconds"},
     True),
    ("equal", None, {"challenge_ttl": "7 minutes", "max_challenge_ttl": "7 minutes"}, False),
    ("both-lowered", None, {"challenge_ttl": "1 minute", "max_challenge_ttl": "2 minutes"}, False),
    ("ttl-up-to-existing-max", {"max_challenge_ttl": "30 minutes"}, {"challenge_ttl": "30 minutes"}, False),
])
def test_challenge_ttl_is_at_most_max_challenge_ttl(world, label, first, second, refused):
    sid = world.tuned_service_sid
    try:
        if first:
            out = invoke(world, "update_service", {"sid": sid, **first}, named=True)
            assert out.ok, out
        before = world.conn.execute("SELECT challenge_ttl, max_challenge_ttl FROM totp.services WHERE sid = %s",
                                    (sid,)).fetchone()
        out = invoke(world, "update_service", {"sid": sid, **second}, named=True)
        after = world.conn.execute("SELECT challenge_ttl, max_challenge_ttl FROM totp.services WHERE sid = %s",
                                   (sid,)).fetchone()
        if refused:
            assert out.sqlstate == "22023" and "(Twilio 60200)" in out.message and "ttl" in out.detail, out
            assert after == before, f"a refused update changed the service: {before} -> {after}"
        else:
            assert out.ok, out
            assert out.rows[0]["challenge_ttl"] <= out.rows[0]["max_challenge_ttl"]
    finally:
        reset_tuned_service(world)


def _exercise_service(world, sid):
    """Enrols, verifies, challenges and maintains on service `sid`: every outcome must be a
    documented one. Returns the failures."""
    failures = []

    def check(what, out):
        if not (out.ok or out.sqlstate in ALLOWED):
            failures.append(f"{what}: {out}")
        return out

    identity = "usable-" + uuid.uuid4().hex[:10]
    LEDGER.public.add(identity)
    f = check("create_factor", invoke(world, "create_factor", {
        "service_sid": sid, "identity": identity, "friendly_name": "phone", "secret": None, "alg": "sha1",
        "code_length": 6, "time_step": 30, "skew": 1}))
    if f.ok:
        factor = f.rows[0]
        wait_inside_step(30)
        previous = oathtool(factor["binding_secret"], "sha1", 6, 30, time.time() - 30)
        check("verify_factor", invoke(world, "verify_factor", {
            "service_sid": sid, "identity": identity, "factor_sid": factor["sid"], "auth_payload": previous}))
        check("update_factor", invoke(world, "update_factor", {
            "service_sid": sid, "identity": identity, "factor_sid": factor["sid"], "friendly_name": "tablet"}))
        code = oathtool(factor["binding_secret"], "sha1", 6, 30)
        check("create_challenge+code", invoke(world, "create_challenge", {
            "service_sid": sid, "identity": identity, "factor_sid": factor["sid"], "auth_payload": code}))
        ch = check("create_challenge", invoke(world, "create_challenge", {
            "service_sid": sid, "identity": identity, "factor_sid": factor["sid"]}))
        if ch.ok:
            check("update_challenge", invoke(world, "update_challenge", {
                "service_sid": sid, "identity": identity, "challenge_sid": ch.rows[0]["sid"],
                "auth_payload": "000000"}))
    check("has_recent_approval", invoke(world, "has_recent_approval", {
        "service_sid": sid, "identity": identity, "within": "1 hour"}))
    for rel in ("services", "entities", "factors", "challenges", "events"):
        check(f"totp.{rel}", run(world.conn, f"SELECT * FROM totp.{rel} WHERE service_sid = %s"
                                 if rel != "services" else "SELECT * FROM totp.services WHERE sid = %s", (sid,)))
    check("run_maintenance", invoke(world, "run_maintenance", {}))
    return failures


def _bug(reason):
    return pytest.mark.xfail(strict=True, reason="BUG: " + reason)


# Hostile values the sweep and the random calls leave to a pinned BUG test of their own.
KNOWN_BUGS = set()


def test_timestamps_near_the_end_of_time(world):
    unix = int(world.conn.execute("SELECT extract(epoch FROM %s::timestamptz) AS e",
                                  (LAST_TIMESTAMP,)).fetchone()["e"])
    secret = b"12345678901234567890"
    out = invoke(world, "totp_code", {"secret": secret, "at": LAST_TIMESTAMP, "time_step": 30, "digits": 6,
                                      "alg": "sha1"})
    assert out.ok and out.rows[0]["totp_code"] == rfc4226(secret, unix // 30, 6), out


SETTING_CASES = (
    [(name, value) for name in sorted(LIFETIMES) for value in INTERVAL_HOSTILE + ["7000 years", "300000 years"]]
    + [(name, value) for (fn, name) in sorted(RANGES) if fn == "update_service" and name.startswith("max_")
       for value in (1, 2 ** 31 - 1)]
)




@pytest.mark.parametrize("name,value", [
    pytest.param(n, v) for n, v in SETTING_CASES], ids=[f"{n}={v}" for n, v in SETTING_CASES])
def test_accepted_settings_keep_the_service_usable(world, name, value):
    """A setting update_service accepts may make a service strict, never unusable: every later
    call on it (and run_maintenance, which serves every service) keeps to documented SQLSTATEs."""
    svc = world.conn.execute("SELECT * FROM totp.create_service('Usable Co')").fetchone()["sid"]
    LEDGER.public.add(svc)
    try:
        out = invoke(world, "update_service", {"sid": svc, name: value}, named=True)
        if not out.ok:
            assert out.sqlstate == "22023" and name in out.detail and "(Twilio 60200)" in out.message, out
            return
        failures = _exercise_service(world, svc)
        assert not failures, f"after update_service({name} => {value!r}):\n" + "\n".join(failures)
    finally:
        world.conn.execute("SELECT totp.delete_service(%s)", (svc,))


def test_lifetimes_mixing_months_and_days_keep_their_bounds(world):
    """Whatever the calendar says today, one of each pair below is a day off when a month is
    added to now() (no two consecutive months have 30 days)."""
    failures = []
    for name, pair in (("challenge_ttl", ("1 mon -30 days 1 minute", "-1 mon 30 days 1 minute")),
                       ("max_challenge_ttl", ("1 mon -30 days 10 minutes", "-1 mon 30 days 10 minutes"))):
        for value in pair:
            svc = world.conn.execute("SELECT * FROM totp.create_service('Calendar Co')").fetchone()["sid"]
            try:
                out = invoke(world, "update_service", {"sid": svc, name: value}, named=True)
                if not out.ok:
                    if out.sqlstate != "22023" or name not in out.detail:
                        failures.append(f"{name}={value}: {out}")
                    continue
                identity = "calendar-" + uuid.uuid4().hex[:8]
                LEDGER.public.add(identity)
                f = verified_factor(world.conn, svc, identity, code_length=6, time_step=30, skew=1)
                LEDGER.add_secret(f["binding_secret"])
                if name == "challenge_ttl":
                    row = world.conn.execute(
                        "SELECT expiration_date - date_created AS ttl FROM totp.create_challenge(%s, %s, %s)",
                        (svc, identity, f["sid"])).fetchone()
                    if not dt.timedelta(0) < row["ttl"] <= dt.timedelta(minutes=60):
                        failures.append(f"{name}={value}: a new challenge lives {row['ttl']}")
                else:
                    for ahead, ok in (("5 minutes", True), ("61 minutes", False)):
                        out = run(world.conn, "SELECT * FROM totp.create_challenge(%s, %s, %s, "
                                  "expiration_date => now() + %s::interval)", (svc, identity, f["sid"], ahead))
                        if out.ok != ok:
                            failures.append(f"{name}={value}: expiration_date {ahead} ahead: {out}")
            finally:
                world.conn.execute("SELECT totp.delete_service(%s)", (svc,))
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------------------------
# 5. bad JSON


@pytest.mark.parametrize("fn,name", JSON_ARGS, ids=[f"{f}.{n}" for f, n in JSON_ARGS])
def test_bad_json_is_invalid_argument(world, fn, name):
    bad = {"array": "[]", "array-of-object": '[{"a": 1}]', "string": '"s"', "number": "1",
           "true": "true", "json-null": "null", "over-1024": json.dumps({"k": "x" * 1017}),
           "huge": json.dumps({"k": "y" * HUGE})}
    failures = []
    for label, value in bad.items():
        args = baseline(world, fn)
        args[name] = value
        out = invoke(world, fn, args)
        if out.sqlstate != "22023" or name not in out.detail:
            failures.append(f"{label}: {out}")
    assert not failures, f"totp.{fn}({name}):\n" + "\n".join(failures)


@pytest.mark.parametrize("fn,name", JSON_ARGS, ids=[f"{f}.{n}" for f, n in JSON_ARGS])
def test_json_object_of_1024_characters_is_accepted(world, fn, name):
    identity, factor = fresh_verified_factor(world)
    args = baseline(world, fn)
    args.update({"identity": identity})
    if "factor_sid" in args:
        args["factor_sid"] = factor["sid"]
    if fn == "update_challenge":
        ch = world.conn.execute("SELECT * FROM totp.create_challenge(%s, %s, %s)",
                                (world.service_sid, identity, factor["sid"])).fetchone()
        args["challenge_sid"] = ch["sid"]
    # Characters of the jsonb text form (what ::text shows): {"k": "…"} is 9 + n; é counts as
    # one character, two bytes.
    args[name] = json.dumps({"k": "\u00e9" * 1015}, ensure_ascii=False)
    out = invoke(world, fn, args)
    assert out.ok, f"a 1024-character object was refused: {out}"
    check_success_shape(fn, out, f"{fn}.{name}")


# ---------------------------------------------------------------------------------------------
# 6. expiration dates


@pytest.mark.parametrize("expr", [
    "'infinity'::timestamptz", "'-infinity'::timestamptz", "'2000-01-01 00:00:00+00'::timestamptz",
    "now() - interval '1 second'", "now()", "now() + interval '61 minutes'",
    "now() + interval '60 minutes 1 second'", "now() + interval '1000 years'",
    "'294276-12-31 23:59:59+00'::timestamptz", "'4713-01-01 00:00:00+00 BC'::timestamptz",
])
def test_impossible_expiration_dates_are_invalid_argument(world, expr):
    identity, factor = fresh_verified_factor(world)
    q = f"SELECT * FROM totp.create_challenge(%s, %s, %s, expiration_date => {expr})"
    out = run(world.conn, q, (world.service_sid, identity, factor["sid"]))
    assert out.sqlstate == "22023" and "expiration_date" in out.detail, out


@pytest.mark.parametrize("expr", ["now() + interval '1 minute'", "now() + interval '59 minutes'"])
def test_expiration_dates_within_60_minutes_are_accepted(world, expr):
    identity, factor = fresh_verified_factor(world)
    q = f"SELECT * FROM totp.create_challenge(%s, %s, %s, expiration_date => {expr})"
    out = run(world.conn, q, (world.service_sid, identity, factor["sid"]))
    assert out.ok and out.rows[0]["status"] == "pending", out


# ---------------------------------------------------------------------------------------------
# 7. literal casts and wrong types (Postgres refuses before the function runs)


@pytest.mark.parametrize("expr,sqlstate", [
    ("totp.create_factor(%(s)s, 'u-1', 'p', metadata => '{bad'::jsonb)", "22P02"),
    ("totp.create_challenge(%(s)s, 'u-1', %(f)s, details => '[1,'::jsonb)", "22P02"),
    ("totp.create_service('x', time_step => 'thirty'::int)", "22P02"),
    ("totp.hotp_code('\\xZZ'::bytea, 1)", "22023"),  # Postgres's own code for a bad hex digit
    ("totp.hotp_code('\\x00'::bytea, '1e3'::bigint)", "22P02"),
    ("totp.generate_secret('2147483648'::int)", "22003"),
    ("totp.create_challenge(%(s)s, 'u-1', %(f)s, expiration_date => 'tomorrowish'::timestamptz)", "22007"),
    ("totp.has_recent_approval(%(s)s, 'u-1', 'forever'::interval)", "22007"),
    ("totp.has_recent_approval_from_aged_factor(%(s)s, 'u-1', '5 minutes', 'forever'::interval)", "22007"),
    ("totp.update_service(%(s)s, event_retention => 'a week'::interval)", "22007"),
    ("totp.update_service(%(s)s, max_factor_attempts => '2147483648'::int)", "22003"),
    ("totp.grant_enrolment('no_such_role_at_all'::regrole)", "42704"),
    ("totp.grant_verification('not a role'::regrole)", "42602"),
])
def test_bad_literal_casts(world, expr, sqlstate):
    out = run(world.conn, f"SELECT {expr}", {"s": world.service_sid, "f": world.factor_sid})
    assert out.sqlstate == sqlstate, out


@pytest.mark.parametrize("expr", [
    "totp.create_service(1)",
    "totp.create_service()",
    "totp.create_service('a', 'b', 30, 6, 1, NULL, NULL, 'extra')",
    "totp.create_service(friendly_name => 'x', bogus => 1)",
    "totp.hotp_code('abc'::text, 1)",
    "totp.hotp_code('\\x00'::bytea, 1.5)",
    "totp.totp_code('\\x00'::bytea, at => 'x'::text)",
    "totp.create_factor(%(s)s, 'u-1', 'p', metadata => '{}'::json)",
    "totp.create_challenge(%(s)s, 'u-1', %(f)s, expiration_date => 5)",
    "totp.has_recent_approval(%(s)s, 'u-1', 5)",
    "totp.generate_secret('20'::text)",
    "totp.rotate_key(1.5)",
    "totp.update_service(sid => 1::bigint)",
    "totp.base32_encode('abc'::text)",
    "totp.qr_svg(42)",
    "totp.grant_enrolment()",
    "totp.grant_enrolment('postgres'::text)",
    "totp.grant_verification(role => 'postgres'::name)",
    "totp.grant_verification(%(s)s::text, %(s)s::text)",
    "totp.has_recent_approval_from_aged_factor(%(s)s, 'u-1', '5 minutes'::interval)",  # no defaults
    "totp.has_recent_approval_from_aged_factor(%(s)s, 'u-1', '5 minutes'::interval, 5)",
    "totp.update_service(%(s)s, challenge_ttl => 300)",
    "totp.update_service(%(s)s, max_factor_attempts => 'five'::text)",
    "totp.update_service(%(s)s, bogus_ttl => '5 minutes'::interval)",
])
def test_wrong_argument_types(world, expr):
    out = run(world.conn, f"SELECT {expr}", {"s": world.service_sid, "f": world.factor_sid})
    assert out.sqlstate == "42883", out


# ---------------------------------------------------------------------------------------------
# 8. the systematic sweep: every argument of every function, every hostile value of its type


@pytest.mark.parametrize("fn", sorted(SIGNATURES))
def test_hostile_sweep(world, fn):
    failures = []
    calls = 0
    allowed = ALLOWED | (REGROLE_CAST_STATES if fn in GRANTS else set())
    for name, typ in SIGNATURES[fn]:
        for label, value in hostile_values(world, fn, name, typ):
            if (fn, name, value) in KNOWN_BUGS:
                continue
            args = baseline(world, fn)
            args[name] = value
            named = calls % 2 == 1
            out = invoke(world, fn, args, named=named)
            calls += 1
            where = f"{fn}({name}={label})"
            if not (out.ok or out.sqlstate in allowed):
                failures.append(f"{where}: {out}")
            if fn == "update_service":
                # Each call on its own: one hostile setting at a time (test_accepted_settings_
                # keep_the_service_usable checks what an accepted one does to later calls).
                reset_tuned_service(world)
            try:
                check_success_shape(fn, out, where)
            except AssertionError as e:
                failures.append(str(e))
    if not SIGNATURES[fn]:
        out = invoke(world, fn, {})
        # Without Citus, totp.undistribute() can only refuse (55000; test_distribute.py).
        if not (out.ok or (fn in NEEDS_CITUS and out.sqlstate == "55000")):
            failures.append(f"{fn}(): {out}")
    assert not failures, "\n".join(failures)
    # SQL text in arguments never ran: the extension's views and tables are all still there.
    n = world.conn.execute("SELECT count(*) AS n FROM pg_class WHERE relnamespace = 'totp'::regnamespace"
                           " AND relkind IN ('r', 'v')").fetchone()["n"]
    assert n == 5
    n = world.conn.execute("SELECT count(*) AS n FROM pg_class WHERE relnamespace = 'totp_private'::regnamespace"
                           " AND relkind = 'r'").fetchone()["n"]
    assert n == 10
    assert not other_grants(world), f"{fn} granted to other roles: {other_grants(world)}"


def test_sql_in_arguments_is_stored_as_data(world):
    name = "'; DROP TABLE totp.services; --"
    svc = invoke(world, "create_service", {"friendly_name": name, "issuer": "$$ || $$"})
    assert svc.ok and svc.rows[0]["friendly_name"] == name and svc.rows[0]["totp_issuer"] == "$$ || $$"
    f = invoke(world, "create_factor", {"service_sid": svc.rows[0]["sid"], "identity": "sql-1",
                                        "friendly_name": "a'b\"c;--"})
    assert f.ok
    uri = f.rows[0]["binding_uri"]
    assert uri.isascii() and "'" not in uri and '"' not in uri and " " not in uri


# ---------------------------------------------------------------------------------------------
# 9. randomized calls (hypothesis-style, fixed seed, no extra dependency)

B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


class Gen:
    """Random arguments: mostly near-valid, often hostile, sometimes NULL."""

    def __init__(self, rng, world):
        self.r = rng
        self.w = world
        self.small_text = [v for _, v in TEXT_HOSTILE if len(v) < 10_000]
        self.roles = [v for _, v in regrole_hostile(world) if len(v) < 10_000]

    def char(self):
        k = self.r.random()
        if k < 0.45:
            return chr(self.r.randint(0x20, 0x7E))
        if k < 0.55:
            return chr(self.r.randint(1, 0x1F))
        c = self.r.randint(0x80, 0xFFFF) if k < 0.8 else self.r.randint(0x10000, 0x10FFFF)
        return "\uFFFD" if 0xD800 <= c <= 0xDFFF else chr(c)

    def length(self):
        k = self.r.random()
        if k < 0.7:
            return self.r.randint(0, 40)
        if k < 0.95:
            return self.r.randint(40, 300)
        return self.r.randint(300, 20_000)

    def mutate(self, s):
        if not s:
            return self.char()
        s = list(s)
        for _ in range(self.r.randint(1, 3)):
            op = self.r.randrange(6)
            i = self.r.randrange(len(s)) if s else 0
            if op == 0 and s:
                s[i] = self.char()
            elif op == 1:
                s.insert(i, self.char())
            elif op == 2 and s:
                del s[i]
            elif op == 3 and s:
                s[i] = s[i].swapcase()
            elif op == 4:
                s = s + s[: self.r.randint(0, 3)]
            else:
                s = s[: max(0, len(s) - self.r.randint(1, 3))]
        return "".join(s)

    def sid(self, kind):
        hexpart = "".join(self.r.choice("0123456789abcdef") for _ in range(32))
        return kind + hexpart

    def text(self, name):
        r = self.r.random()
        real = {"service_sid": self.w.service_sid, "sid": self.w.service_sid,
                "factor_sid": self.w.factor_sid, "challenge_sid": self.w.challenge_sid,
                "identity": self.w.identity}.get(name)
        if r < 0.12 and real:
            return self.mutate(real)
        if r < 0.18 and name.endswith("sid"):
            return self.sid(self.r.choice(["VA", "YE", "YF", "YC"]))
        if r < 0.30:  # digits (codes), sometimes with a stray character
            s = "".join(self.r.choice("0123456789") for _ in range(self.r.randint(0, 12)))
            return self.mutate(s) if self.r.random() < 0.2 else s
        if r < 0.42:  # base32 secrets, tolerated noise, sometimes a bad character
            s = "".join(self.r.choice(B32 + B32.lower() + " =-") for _ in range(self.r.randint(0, 300)))
            return self.mutate(s) if self.r.random() < 0.3 else s
        if r < 0.52:  # identity-shaped
            groups = ["".join(self.r.choice("abcXYZ0189") for _ in range(self.r.randint(0, 12)))
                      for _ in range(self.r.randint(1, 6))]
            s = self.r.choice(["-", "_", " ", "--", "-"]).join(groups)
            return self.mutate(s) if self.r.random() < 0.2 else s
        if r < 0.60:
            return self.r.choice(["sha1", "sha256", "sha512", "SHA256", "Sha512", "sha3", "", "sha1 "])
        if r < 0.75:
            return self.r.choice(self.small_text)
        return "".join(self.char() for _ in range(self.length()))

    def integer(self):
        k = self.r.random()
        if k < 0.5:
            return self.r.choice(INT_HOSTILE)
        if k < 0.8:
            return self.r.randint(-5, 130)
        return self.r.randint(*INT4)

    def bigint(self):
        k = self.r.random()
        if k < 0.5:
            return self.r.choice(BIGINT_HOSTILE)
        return self.r.randint(-2 ** 63, 2 ** 63 - 1)

    def bytea(self):
        return self.r.randbytes(self.r.choice([0, 1, 10, 16, 20, 32, 64, 128, 129, 300]))

    def json_value(self, depth=0):
        k = self.r.random()
        if depth > 6 or k < 0.35:
            return self.r.choice([
                None, True, False, self.r.randint(-2 ** 53, 2 ** 53), self.r.random() * 1e10,
                self.r.randint(-10 ** 40, 10 ** 40),
                "".join(self.char() for _ in range(self.r.randint(0, 30))),
            ])
        if k < 0.7:
            return {"".join(self.char() for _ in range(self.r.randint(0, 8))): self.json_value(depth + 1)
                    for _ in range(self.r.randint(0, 5))}
        return [self.json_value(depth + 1) for _ in range(self.r.randint(0, 5))]

    def jsonb(self):
        k = self.r.random()
        if k < 0.1:
            return self.r.choice([v for _, v in JSON_HOSTILE if len(v) < 10_000])
        if k < 0.2:
            return json.dumps({"pad": "z" * self.r.randint(1000, 1100)})
        value = self.json_value(1) if k < 0.85 else self.json_value(0)
        return json.dumps(value, ensure_ascii=self.r.random() < 0.5)

    def timestamptz(self):
        if self.r.random() < 0.3:
            return self.r.choice(TS_HOSTILE)
        offset = self.r.choice([-86_400 * 365, -3_600, -1, 1, 60, 299, 301, 3_599, 3_601, 86_400])
        offset += self.r.uniform(-5, 5)
        return dt.datetime.fromtimestamp(time.time() + offset, dt.timezone.utc).isoformat()

    def interval(self):
        if self.r.random() < 0.3:
            return self.r.choice(INTERVAL_HOSTILE)
        if self.r.random() < 0.3:  # up to the interval type's own limit (±178,000,000 years)
            return f"{self.r.randint(-177_999_999, 177_999_999)} years"
        return f"{self.r.randint(-10 ** 9, 10 ** 9)} {self.r.choice(['seconds', 'days'])}"

    def regrole(self):
        if self.r.random() < 0.3:
            return self.mutate(self.w.grantee_role)
        return self.r.choice(self.roles)

    def value(self, name, typ):
        return {"text": lambda: self.text(name), "integer": self.integer, "bigint": self.bigint,
                "bytea": self.bytea, "jsonb": self.jsonb, "timestamp with time zone": self.timestamptz,
                "interval": self.interval, "regrole": self.regrole,
                "boolean": lambda: self.r.random() < 0.5}[typ]()


# How often each function is drawn. Key rotation and QR codes are slow paths, kept rare.
WEIGHTS = {fn: 10 for fn in SIGNATURES}
WEIGHTS.update({"rotate_key": 1, "retire_keys": 1, "run_maintenance": 1, "qr_svg": 3,
                "delete_service": 3, "generate_secret": 3, "grant_enrolment": 3, "grant_verification": 3})


def protect(world, fn, args):
    """Random deletions aim at the resources set aside for deletion, never the world's."""
    # A partition would refuse the world's identity in every later call: never set one.
    if fn == "set_partition":
        args["part_count"] = None
    if fn == "delete_service" and args["sid"] == world.service_sid:
        args["sid"] = world.doomed_service_sid
    if fn in ("delete_entity", "delete_factor") and args["identity"] == world.identity:
        args["identity"] = world.victim_factor_identity
    # Limits and lifetimes go to the tuned service, whose settings are reset after each call.
    if fn == "update_service" and args["sid"] == world.service_sid:
        args["sid"] = world.tuned_service_sid
    if fn == "totp_code" and (fn, "at", args.get("at")) in KNOWN_BUGS:
        args["at"] = "epoch"
    # BUG (test_grant_to_no_role_is_a_clean_error): a NULL role is a 42601 syntax error.
    if fn in GRANTS and "role" in args and args["role"] is None:
        args["role"] = world.grantee_role


def test_randomized_calls(world):
    rng = random.Random(SEED)
    gen = Gen(rng, world)
    fns = sorted(SIGNATURES)
    weights = [WEIGHTS[f] for f in fns]
    stats = {}
    failures = []
    started = time.monotonic()
    for i in range(RANDOM_CALLS):
        fn = rng.choices(fns, weights)[0]
        sig = SIGNATURES[fn]
        args = baseline(world, fn)
        # Perturb a few arguments and keep the rest valid, so calls reach the deeper paths
        # (table access, locking, code checks) and not only the first validation.
        names = [n for n, _ in sig]
        for name in rng.sample(names, min(len(names), rng.choice([0, 1, 1, 1, 1, 2, 2, 3, 4]))):
            typ = dict(sig)[name]
            args[name] = None if rng.random() < 0.12 else gen.value(name, typ)
        protect(world, fn, args)
        named = rng.random() < 0.5
        defaulted = [n for n, _ in sig[len(sig) - DEFAULTS.get(fn, 0):]]
        if named:  # a named call may leave out any defaulted argument
            for n in defaulted:
                if rng.random() < 0.3:
                    del args[n]
        elif defaulted and rng.random() < 0.3:  # a positional one, a tail of them
            for n in defaulted[rng.randrange(len(defaulted)):]:
                del args[n]
        out = invoke(world, fn, args, named=named)
        if fn == "update_service":
            reset_tuned_service(world)
        key = out.sqlstate or "ok"
        stats.setdefault(fn, {}).setdefault(key, 0)
        stats[fn][key] += 1
        if not (out.ok or out.sqlstate in ALLOWED | (REGROLE_CAST_STATES if fn in GRANTS else set())):
            failures.append(f"#{i} {fn}({ {k: (v[:40] + '…' if isinstance(v, str) and len(v) > 40 else v) for k, v in args.items() if not isinstance(v, bytes)} }): {out}")
        for name in REQUIRED.get(fn, ()):
            if name in args and args[name] is None and out.ok:
                failures.append(f"#{i} {fn}: NULL {name} accepted")
        try:
            check_success_shape(fn, out, f"#{i} {fn}")
        except AssertionError as e:
            failures.append(str(e))
    elapsed = time.monotonic() - started
    print(f"\n{RANDOM_CALLS} random calls in {elapsed:.1f}s")
    for fn in fns:
        print(f"  {fn:36} {stats.get(fn, {})}")
    assert not failures, "\n".join(failures[:30])
    assert not other_grants(world), f"random calls granted to other roles: {other_grants(world)}"


# ---------------------------------------------------------------------------------------------
# 10. a role without grants is refused everywhere (42501), whatever it sends


def test_role_without_grants_is_refused_everywhere(world):
    role = "hostile_" + uuid.uuid4().hex[:8]
    world.conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    try:
        with connect(world.db) as c:
            c.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
            for fn in sorted(SIGNATURES):
                out = invoke(world, fn, baseline(world, fn), conn=c)
                assert out.sqlstate == "42501", f"{fn} as {role}: {out}"
            for rel in ("services", "entities", "factors", "challenges", "events"):
                out = run(c, f"SELECT * FROM totp.{rel}")
                assert out.sqlstate == "42501", f"totp.{rel}: {out}"
            out = run(c, "SELECT * FROM totp_private.factor_secrets")
            assert out.sqlstate == "42501", out
    finally:
        world.conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


# ---------------------------------------------------------------------------------------------
# 10b. the grant functions: exactly the role named, a fixed set, nobody else


def _revoke_all(world):
    for role in (world.grantee_role, world.evil_role):
        world.conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))


def test_grant_functions_grant_a_fixed_set_to_the_named_role_only(world):
    _revoke_all(world)
    before = acl(world.conn)
    try:
        oid = world.conn.execute("SELECT %s::regrole::oid::text AS o", (quote_role(world.grantee_role),)
                                 ).fetchone()["o"]
        sets = {}
        for fn in sorted(GRANTS):
            for role, spelling in ((world.grantee_role, oid), (world.evil_role, quote_role(world.evil_role))):
                for named in (False, True):  # twice (positionally, by name): the second grants nothing new
                    out = invoke(world, fn, {"role": spelling}, named=named)
                    assert out.ok, f"{fn}({spelling!r}): {out}"
                sets[(fn, role)] = granted_to(world.conn, role)
            assert sets[(fn, world.grantee_role)] == sets[(fn, world.evil_role)], \
                f"{fn}: the set depends on the role's name"
            _revoke_all(world)
        # The SQL in the evil role's name never ran.
        n = world.conn.execute("SELECT count(*) AS n FROM pg_class WHERE relnamespace = 'totp'::regnamespace"
                               " AND relkind = 'v'").fetchone()["n"]
        assert n == 5
        assert not other_grants(world), other_grants(world)
        for fn in sorted(GRANTS):
            got = sets[(fn, world.grantee_role)]
            assert got, f"{fn} granted nothing"
            assert ("schema totp", "USAGE") in got
            forbidden = [(o, p) for o, p in got
                         if "totp_private" in o or o == "relation totp.events"
                         or p not in ("USAGE", "SELECT", "EXECUTE")
                         or any(f"totp.{x}(" in o for x in ("grant_enrolment", "grant_verification", "rotate_key",
                                                            "retire_keys", "run_maintenance", "update_service",
                                                            "create_service", "delete_service"))]
            assert not forbidden, f"{fn} grants too much: {sorted(forbidden)}"
        assert sets[("grant_enrolment", world.grantee_role)] != sets[("grant_verification", world.grantee_role)]
        # A role given a set cannot give itself the other one: EXECUTE on the grant functions is
        # for superusers only.
        invoke(world, "grant_enrolment", {"role": world.grantee_role})
        with connect(world.db) as c:
            c.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(world.grantee_role)))
            for fn in sorted(GRANTS):
                out = invoke(world, fn, {"role": world.grantee_role}, conn=c)
                assert out.sqlstate == "42501", f"{fn} as a granted role: {out}"
    finally:
        _revoke_all(world)
    assert acl(world.conn) == before, "revoking the module's roles did not restore the privileges"


@pytest.mark.parametrize("fn", sorted(GRANTS))
@pytest.mark.parametrize("label,role,sqlstate", [
    ("nonexistent", "no_such_role_" + uuid.uuid4().hex[:8], "42704"),
    ("public", "public", "42704"),
    ("quoted-public", '"public"', "42704"),
    ("empty", "", "42602"),
    ("sql", "x; DROP SCHEMA totp CASCADE; --", "42602"),
    ("qualified", "pg_catalog.postgres", "42602"),
    ("two-roles", "a, b", "42602"),
])
def test_grant_to_a_name_that_is_no_role_is_refused(world, fn, label, role, sqlstate):
    before = acl(world.conn)
    out = invoke(world, fn, {"role": role})
    assert out.sqlstate == sqlstate, f"{fn}({role!r}): {out}"
    assert acl(world.conn) == before


GRANT_TO_NOBODY = [("null", None)] + REGROLE_DANGLING


@pytest.mark.parametrize("fn", sorted(GRANTS))
def test_grant_to_no_role_grants_nothing(world, fn):
    """NULL, the invalid OID ('-', '0') and OIDs of no role are errors, and change nothing."""
    before = acl(world.conn)
    for label, role in GRANT_TO_NOBODY:
        out = invoke(world, fn, {"role": role})
        assert not out.ok, f"{fn}({label}) was accepted"
        assert acl(world.conn) == before, f"{fn}({label}) changed privileges"


@pytest.mark.parametrize("fn", sorted(GRANTS))
def test_grant_to_no_role_is_a_clean_error(world, fn):
    failures = []
    for label, role in GRANT_TO_NOBODY:
        out = invoke(world, fn, {"role": role})
        if out.sqlstate not in {"22023", "22004", "42704"}:
            failures.append(f"{label}: {out}")
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------------------------
# 10c. friendly names: no format characters, not blank


NAME_TARGETS = [("create_service", "friendly_name", "60200"), ("create_service", "issuer", "60200"),
                ("update_service", "friendly_name", "60200"), ("update_service", "issuer", "60200"),
                ("create_factor", "friendly_name", "60306"), ("update_factor", "friendly_name", "60306")]
NAMES_REFUSED = [("rlo", "\u202E"), ("zwsp", "\u200B"), ("bom", "\uFEFF"), ("space", " "),
                 ("rlo-inside", "Acme\u202Ekab"), ("zwsp-inside", "ph\u200Bone"), ("bom-first", "\uFEFFphone"),
                 ("lrm-last", "phone\u200E"), ("spaces", "   "), ("space-zwsp", " \u200B ")]
NAMES_ACCEPTED = [("accented", "Caf\u00e9 \u2615"), ("combining", "e\u0301clair"),
                  ("arabic", "\u0645\u0631\u062D\u0628\u0627"), ("inner-space", "Acme Bank")]


def _name_state(world, fn):
    if fn == "update_service":
        return world.conn.execute("SELECT friendly_name, totp_issuer FROM totp.services WHERE sid = %s",
                                  (world.tuned_service_sid,)).fetchone()
    if fn == "update_factor":
        return world.conn.execute("SELECT friendly_name FROM totp.factors WHERE sid = %s",
                                  (world.factor_sid,)).fetchone()
    return None


@pytest.mark.parametrize("fn,name,twilio", NAME_TARGETS, ids=[f"{f}.{n}" for f, n, _ in NAME_TARGETS])
def test_format_characters_and_blank_names_are_refused(world, fn, name, twilio):
    failures = []
    for label, value in NAMES_REFUSED:
        before = _name_state(world, fn)
        args = baseline(world, fn)
        args[name] = value
        out = invoke(world, fn, args)
        if out.sqlstate != "22023" or name not in out.detail or f"(Twilio {twilio})" not in out.message:
            failures.append(f"{label}: expected 22023 (Twilio {twilio}) naming {name}, got {out}")
        if _name_state(world, fn) != before:
            failures.append(f"{label}: a refused name was stored")
    for label, value in NAMES_ACCEPTED:
        args = baseline(world, fn)
        args[name] = value
        out = invoke(world, fn, args)
        column = {"issuer": "totp_issuer"}.get(name, name)
        if not out.ok:
            failures.append(f"{label} (a fine name) refused: {out}")
        elif out.rows[0][column] != value:
            failures.append(f"{label}: stored as {out.rows[0][column]!r}")
    assert not failures, f"totp.{fn}({name}):\n" + "\n".join(failures)


# ---------------------------------------------------------------------------------------------
# 11. trigger functions, called by real triggers


def _table(world, name, column_type="text"):
    world.conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(sql.Identifier(name)))
    world.conn.execute(sql.SQL("CREATE TABLE {} (id serial PRIMARY KEY, who {} )").format(
        sql.Identifier(name), sql.SQL(column_type)))


def _trigger(world, table, when_events, fn, args, level="ROW"):
    q = sql.SQL("CREATE TRIGGER t {} ON {} FOR EACH {} EXECUTE FUNCTION totp.{}({})").format(
        sql.SQL(when_events), sql.Identifier(table), sql.SQL(level), sql.Identifier(fn),
        sql.SQL(", ").join(sql.Literal(a) for a in args))
    world.conn.execute(q)


ROW_HOSTILE = [v for label, v in TEXT_HOSTILE] + [None]


def test_forget_entity_with_hostile_rows(world):
    sid = world.service_sid
    _table(world, "app_forget")
    _trigger(world, "app_forget", "AFTER DELETE", "forget_entity", [sid, "who"])
    world.conn.execute("SELECT * FROM totp.create_entity(%s, 'forget-me-1')", (sid,))
    LEDGER.public.add("forget-me-1")
    for v in ROW_HOSTILE + ["forget-me-1"]:
        out = run(world.conn, "INSERT INTO app_forget (who) VALUES (%s)", (v,), public=[v])
        assert out.ok, out
    out = run(world.conn, "DELETE FROM app_forget")
    assert out.ok, out
    n = world.conn.execute("SELECT count(*) AS n FROM totp.entities WHERE service_sid = %s AND identity = %s",
                           (sid, "forget-me-1")).fetchone()["n"]
    assert n == 0
    n = world.conn.execute("SELECT count(*) AS n FROM totp.entities WHERE service_sid = %s AND identity = %s",
                           (sid, world.identity)).fetchone()["n"]
    assert n == 1, "deleting hostile rows must not touch other identities"


def test_forget_entity_integer_identity_column(world):
    sid = world.service_sid
    _table(world, "app_forget_int", "bigint")
    _trigger(world, "app_forget_int", "AFTER DELETE", "forget_entity", [sid, "who"])
    world.conn.execute("SELECT * FROM totp.create_entity(%s, '9223372036854775807')", (sid,))
    world.conn.execute("INSERT INTO app_forget_int (who) VALUES (9223372036854775807), (-1), (0), (NULL)")
    out = run(world.conn, "DELETE FROM app_forget_int")
    assert out.ok, out
    n = world.conn.execute("SELECT count(*) AS n FROM totp.entities WHERE identity = '9223372036854775807'"
                           ).fetchone()["n"]
    assert n == 0


@pytest.mark.parametrize("label,args,events,level,sqlstate", [
    ("no-args", [], "AFTER DELETE", "ROW", "22023"),
    ("one-arg", ["VA" + "0" * 32], "AFTER DELETE", "ROW", "22023"),
    ("three-args", ["VA" + "0" * 32, "who", "x"], "AFTER DELETE", "ROW", "22023"),
    ("statement-level", ["VA" + "0" * 32, "who"], "AFTER DELETE", "STATEMENT", "22023"),
    ("on-insert", ["VA" + "0" * 32, "who"], "AFTER INSERT", "ROW", "22023"),
    ("missing-column", ["VA" + "0" * 32, "nope"], "AFTER DELETE", "ROW", "42703"),
    ("sql-in-column-arg", ["VA" + "0" * 32, "who'; DROP TABLE totp.services; --"], "AFTER DELETE", "ROW",
     "42703"),
    # Since 0.2.0 a malformed service SID is refused like require_approval's (was: ignored).
    ("sql-in-sid-arg", ["'; DROP TABLE totp.services; --", "who"], "AFTER DELETE", "ROW", "22023"),
    ("huge-sid-arg", ["x" * 100_000, "who"], "AFTER DELETE", "ROW", "22023"),
    ("emoji-column-arg", ["VA" + "0" * 32, "\U0001F510"], "AFTER DELETE", "ROW", "42703"),
])
def test_forget_entity_misconfigured(world, label, args, events, level, sqlstate):
    _table(world, "app_forget_bad")
    _trigger(world, "app_forget_bad", events, "forget_entity", args, level)
    out = run(world.conn, "INSERT INTO app_forget_bad (who) VALUES ('someone-1')")
    if not out.ok:
        assert events == "AFTER INSERT" and out.sqlstate == sqlstate, out
        return
    out = run(world.conn, "DELETE FROM app_forget_bad")
    assert out.sqlstate == sqlstate, f"{label}: {out}"
    assert world.conn.execute("SELECT count(*) AS n FROM totp.services").fetchone()["n"] >= 1


def test_require_approval_with_hostile_rows(world):
    sid = world.service_sid
    _table(world, "app_guarded")
    _trigger(world, "app_guarded", "BEFORE INSERT OR UPDATE OR DELETE", "require_approval",
             [sid, "who", "5 minutes"])
    for v in ROW_HOSTILE:
        out = run(world.conn, "INSERT INTO app_guarded (who) VALUES (%s)", (v,), public=[v])
        assert out.sqlstate == "42501", out
    # Positive control: an identity with a fresh approval may write.
    identity, factor = fresh_verified_factor(world)
    code = oathtool(factor["binding_secret"], factor["alg"], factor["code_length"], factor["time_step"])
    ch = invoke(world, "create_challenge", {"service_sid": sid, "identity": identity,
                                            "factor_sid": factor["sid"], "auth_payload": code})
    assert ch.ok and ch.rows[0]["status"] == "approved", ch
    out = run(world.conn, "INSERT INTO app_guarded (who) VALUES (%s)", (identity,))
    assert out.ok, out
    for v in ("x" * HUGE, "'; DROP TABLE totp.services; --", None):
        out = run(world.conn, "UPDATE app_guarded SET who = %s", (v,))
        assert out.sqlstate == "42501", out


@pytest.mark.parametrize("label,args,events,level,sqlstate", [
    ("two-args", ["VA" + "0" * 32, "who"], "BEFORE INSERT", "ROW", "22023"),
    ("after", ["VA" + "0" * 32, "who", "5 minutes"], "AFTER INSERT", "ROW", "22023"),
    ("statement-level", ["VA" + "0" * 32, "who", "5 minutes"], "BEFORE INSERT", "STATEMENT", "22023"),
    ("missing-column", ["VA" + "0" * 32, "nope", "5 minutes"], "BEFORE INSERT", "ROW", "42703"),
    ("malformed-sid", ["VA" + "0" * 31 + "G", "who", "5 minutes"], "BEFORE INSERT", "ROW", "22023"),
    ("sql-in-sid", ["'; DROP TABLE totp.services; --", "who", "5 minutes"], "BEFORE INSERT", "ROW", "22023"),
    ("negative-age", ["VA" + "0" * 32, "who", "-5 minutes"], "BEFORE INSERT", "ROW", "42501"),
    ("zero-age", ["VA" + "0" * 32, "who", "0"], "BEFORE INSERT", "ROW", "42501"),
])
def test_require_approval_misconfigured(world, label, args, events, level, sqlstate):
    _table(world, "app_guarded_bad")
    _trigger(world, "app_guarded_bad", events, "require_approval", args, level)
    out = run(world.conn, "INSERT INTO app_guarded_bad (who) VALUES ('someone-1')")
    assert out.sqlstate == sqlstate, f"{label}: {out}"


# ---------------------------------------------------------------------------------------------
# 12. inputs that once broke the extension (found by this file, fixed in 7d54953), and the
#     bugs still open, each pinned to the correct behaviour (open ones: strict xfail, "BUG:")


def _json_target(world, fn, name, value):
    identity, factor = fresh_verified_factor(world)
    args = baseline(world, fn)
    args["identity"] = identity
    if "factor_sid" in args:
        args["factor_sid"] = factor["sid"]
    if fn == "update_challenge":
        ch = world.conn.execute("SELECT * FROM totp.create_challenge(%s, %s, %s)",
                                (world.service_sid, identity, factor["sid"])).fetchone()
        args["challenge_sid"] = ch["sid"]
    args[name] = value
    return invoke(world, fn, args)


@pytest.mark.parametrize("fn,name", JSON_ARGS, ids=[f"{f}.{n}" for f, n in JSON_ARGS])
def test_json_number_beyond_f64_range_is_no_internal_error(world, fn, name):
    """Was XX000 'number out of range' (pgrx JsonB went through serde_json f64)."""
    out = _json_target(world, fn, name, '{"a": 1e400}')
    assert out.ok or out.sqlstate == "22023", out


@pytest.mark.parametrize("fn,name", JSON_ARGS, ids=[f"{f}.{n}" for f, n in JSON_ARGS])
def test_json_nested_200_levels_is_no_internal_error(world, fn, name):
    """Was XX000 'recursion limit exceeded' (serde_json stops at 128 levels)."""
    out = _json_target(world, fn, name, '{"a":' * 200 + "1" + "}" * 200)
    assert out.ok or out.sqlstate == "22023", out


def test_json_numbers_are_stored_exactly(world):
    """Was stored altered: 12345678901234567890123 as 12345678901234568000000."""
    doc = '{"big": 12345678901234567890123, "precise": 0.1000000000000000000001, "id": 9007199254740993}'
    out = _json_target(world, "create_factor", "metadata", doc)
    assert out.ok, out
    row = world.conn.execute("SELECT metadata::text AS m, metadata = %s::jsonb AS same FROM totp.factors "
                             "WHERE sid = %s", (doc, out.rows[0]["sid"])).fetchone()
    assert row["same"], f"stored {row['m']}"


@pytest.mark.parametrize("within", ["200000 years", "-300000 years", "178000000 years"])
def test_has_recent_approval_huge_interval(world, within):
    """Was 22008 'timestamp out of range' from now() - within."""
    out = invoke(world, "has_recent_approval",
                 {"service_sid": world.service_sid, "identity": world.identity, "within": within})
    assert out.ok or out.sqlstate == "22023", out
    for args in ({"within": within, "min_factor_age": "1 minute"}, {"within": "5 minutes", "min_factor_age": within},
                 {"within": within, "min_factor_age": within}):
        out = invoke(world, "has_recent_approval_from_aged_factor",
                     {"service_sid": world.service_sid, "identity": world.identity, **args})
        assert out.ok or out.sqlstate == "22023", f"{args}: {out}"


@pytest.mark.parametrize("age,expected", [
    (None, True), ("0", True), ("-1 day", True), ("-178000000 years", True), ("1 mon -30 days", True),
    ("1 hour", False), ("1000 years", False), ("200000 years", False), ("178000000 years", False),
])
def test_min_factor_age_with_hostile_ages(world, age, expected):
    """A fresh approval through a factor verified seconds ago: it counts when no age, or an age
    of zero or less, is asked for, and not when the factor must be older than it is."""
    identity, factor = fresh_verified_factor(world)
    code = oathtool(factor["binding_secret"], factor["alg"], factor["code_length"], factor["time_step"])
    ch = invoke(world, "create_challenge", {"service_sid": world.service_sid, "identity": identity,
                                            "factor_sid": factor["sid"], "auth_payload": code})
    assert ch.ok and ch.rows[0]["status"] == "approved", ch
    out = invoke(world, "has_recent_approval_from_aged_factor", {
        "service_sid": world.service_sid, "identity": identity, "within": "5 minutes", "min_factor_age": age})
    assert out.ok and out.rows[0]["has_recent_approval_from_aged_factor"] is expected, out
    for within in ("-1 day", "0", "-178000000 years"):
        out = invoke(world, "has_recent_approval_from_aged_factor", {
            "service_sid": world.service_sid, "identity": identity, "within": within, "min_factor_age": age})
        assert out.ok and out.rows[0]["has_recent_approval_from_aged_factor"] is False, f"within {within}: {out}"
    out = invoke(world, "has_recent_approval", {"service_sid": world.service_sid, "identity": identity,
                                                "within": "5 minutes"})
    assert out.ok and out.rows[0]["has_recent_approval"] is True, out


@pytest.mark.parametrize("max_age", ["forever", "200000 years"])
def test_require_approval_bad_max_age(world, max_age):
    """Was 22007 / 22008 from an unchecked TG_ARGV[2]::interval."""
    _table(world, "app_guarded_age")
    _trigger(world, "app_guarded_age", "BEFORE INSERT", "require_approval",
             [world.service_sid, "who", max_age])
    out = run(world.conn, "INSERT INTO app_guarded_age (who) VALUES (%s)", (world.identity,))
    assert out.sqlstate in {"22023", "42501"}, out


def test_null_service_argument_has_the_service_twilio_code(world):
    """Was 60306; a service argument, NULL or malformed, is Twilio 60200."""
    failures = []
    for fn in sorted(REQUIRED):
        for name in sorted(REQUIRED[fn]):
            if name in ("sid", "service_sid") or (fn == "create_service" and name == "friendly_name"):
                args = baseline(world, fn)
                args[name] = None
                out = invoke(world, fn, args)
                assert out.sqlstate == "22023", out
                if "(Twilio 60200)" not in out.message:
                    failures.append(f"{fn}({name} => NULL): {out.message}")
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------------------------------------
# 13. codes and secrets never reach an error or the server log


def test_codes_and_secrets_are_not_echoed(world):
    """Canaries: caller secrets (valid and invalid) and 6–8-digit codes sent where they are
    refused, wrong, or land on a resource that is not there."""
    rng = random.Random(SEED + 1)
    w = world
    ghost_yf = "YF" + "1" * 32
    for _ in range(40):
        secret = "".join(rng.choice(B32) for _ in range(rng.choice([16, 20, 26, 32, 40])))
        code = "".join(rng.choice("0123456789") for _ in range(8))
        LEDGER.canary_codes.add(code)
        bad_secret = secret[:-1] + rng.choice("0189!é")
        calls = [
            ("create_factor", {"service_sid": w.service_sid, "identity": "canary-1", "friendly_name": "x",
                               "secret": bad_secret}),
            ("create_factor", {"service_sid": "VA" + "0" * 32, "identity": "canary-1", "friendly_name": "x",
                               "secret": secret}),
            ("create_factor", {"service_sid": w.service_sid, "identity": "canary-1", "friendly_name": "",
                               "secret": secret}),
            ("otpauth_uri", {"secret": bad_secret, "account": "a"}),
            ("otpauth_uri", {"secret": secret, "account": "\x01"}),
            ("verify_factor", {"service_sid": w.service_sid, "identity": w.identity, "factor_sid": ghost_yf,
                               "auth_payload": code}),
            ("verify_factor", {"service_sid": w.service_sid, "identity": w.identity,
                               "factor_sid": w.factor_sid, "auth_payload": code + "x"}),
            ("create_challenge", {"service_sid": w.service_sid, "identity": w.identity,
                                  "factor_sid": w.factor_sid, "auth_payload": code}),
            ("update_challenge", {"service_sid": w.service_sid, "identity": w.identity,
                                  "challenge_sid": w.challenge_sid, "auth_payload": code}),
            ("update_challenge", {"service_sid": w.service_sid, "identity": w.identity,
                                  "challenge_sid": w.challenge_sid, "auth_payload": code[:6] + "\u0661"}),
        ]
        for fn, args in calls:
            out = invoke(world, fn, args, named=True)
            assert out.ok or out.sqlstate in ALLOWED, f"{fn}: {out}"
    assert len(LEDGER.secrets) > 50 and len(LEDGER.canary_codes) >= 40


def test_no_grant_landed_on_a_role_nobody_named(world):
    """After every grant call of the module: privileges only on the module's own roles (which
    the world fixture drops with everything granted to them)."""
    leaked = other_grants(world)
    assert not leaked, f"grants on roles nobody named: {sorted(leaked)[:10]}"


def test_server_log_has_no_secret_or_code(world):
    """Runs last: the part of the server log written during this module holds no secret and
    no code (statements travel with parameters, which the default log settings never print)."""
    if world.log_offset < 0:
        # A security check: never skipped. scripts/lib.sh clusters write a readable log.
        pytest.fail(f"server log not readable at {world.log_path!r} (cluster not from scripts/lib.sh?)")
    with open(world.log_path, "rb") as f:
        f.seek(world.log_offset)
        log = f.read().decode("utf-8", "replace")
    assert "ERROR" in log, "the log should at least hold this module's refusals"
    secrets = {x for x in LEDGER.secrets - LEDGER.public}
    codes = LEDGER.canary_codes - LEDGER.public
    assert len(secrets) > 50 and len(codes) >= 40
    # Every run of base32-looking letters and of digits in the log, then a substring search
    # of each secret and code inside those runs (a linear scan per value would be slow).
    letter_runs = {r.upper() for r in re.findall(r"[A-Za-z2-7]{16,}", log)}
    digit_runs = set(re.findall(r"[0-9]{8,}", log))
    leaked = sorted(x for x in secrets if any(x.upper() in r for r in letter_runs))
    leaked += sorted(x for x in secrets if re.search(r"[ =\t-]", x) and x in log)
    leaked += sorted(c for c in codes if any(c in r for r in digit_runs))
    assert not leaked, f"{len(leaked)} secrets/codes in {world.log_path}, e.g. {leaked[:3]}"
    assert "PANIC" not in log and "terminated by signal" not in log, "a backend crashed during the run"
    print(f"\n{CALLS[0]} calls checked; log scanned for {len(secrets)} secrets and {len(codes)} codes")
