"""SPEC §4 pure functions through SQL: RFC vectors, base32, URIs read back by pyotp, secrets."""

import base64
import urllib.parse

import pyotp
import pytest

from conftest import refused

SEEDS = {
    "sha1": b"12345678901234567890",
    "sha256": b"12345678901234567890123456789012",
    "sha512": b"1234567890123456789012345678901234567890123456789012345678901234",
}
# RFC 6238 Appendix B: time -> (sha1, sha256, sha512), 8 digits, 30 s.
RFC6238 = {
    59: ("94287082", "46119246", "90693936"),
    1111111109: ("07081804", "68084774", "25091201"),
    1111111111: ("14050471", "67062674", "99943326"),
    1234567890: ("89005924", "91819424", "93441116"),
    2000000000: ("69279037", "90698825", "38618901"),
    20000000000: ("65353130", "77737706", "47863826"),
}
RFC4226 = ["755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583", "399871", "520489"]
RFC4648 = [("", ""), ("f", "MY======"), ("fo", "MZXQ===="), ("foo", "MZXW6==="), ("foob", "MZXW6YQ="),
           ("fooba", "MZXW6YTB"), ("foobar", "MZXW6YTBOI======")]


@pytest.mark.parametrize("t", sorted(RFC6238))
@pytest.mark.parametrize("i,alg", enumerate(["sha1", "sha256", "sha512"]))
def test_rfc6238_appendix_b(conn, t, i, alg):
    code = conn.execute(
        "SELECT totp.totp_code(%s, to_timestamp(%s), 30, 8, %s) AS c", (SEEDS[alg], t, alg)
    ).fetchone()["c"]
    assert code == RFC6238[t][i]


def test_rfc4226_appendix_d(conn):
    rows = conn.execute(
        "SELECT c, totp.hotp_code(%s, c) AS code FROM generate_series(0, 9) c ORDER BY c", (SEEDS["sha1"],)
    ).fetchall()
    assert [r["code"] for r in rows] == RFC4226


def test_totp_code_defaults_to_now(conn):
    secret = SEEDS["sha1"]
    row = conn.execute("SELECT totp.totp_code(%s) AS a, totp.totp_code(%s, now()) AS b", (secret, secret)).fetchone()
    assert row["a"] == row["b"] and len(row["a"]) == 6


@pytest.mark.parametrize("plain,encoded", RFC4648)
def test_base32_rfc4648_both_ways(conn, plain, encoded):
    row = conn.execute(
        "SELECT totp.base32_encode(%s) AS e, totp.base32_decode(%s) AS d, totp.base32_decode(lower(%s)) AS l",
        (plain.encode(), encoded, encoded),
    ).fetchone()
    assert row["e"] == encoded.rstrip("=")
    assert bytes(row["d"]) == plain.encode() == bytes(row["l"])


def test_base32_decode_tolerates_spaces_case_padding(conn):
    d = conn.execute("SELECT totp.base32_decode(' mzxw 6ytb oi====== ') AS d").fetchone()["d"]
    assert bytes(d) == b"foobar"


@pytest.mark.parametrize("bad", ["MZXW1", "MZ!W", "MZXW6YTBOÉ", "M", "MZX"])
def test_base32_decode_refuses_bad_input(conn, bad):
    with refused("22023") as info:
        conn.execute("SELECT totp.base32_decode(%s)", (bad,))
    assert bad not in str(info.value)


def test_pure_function_volatility_and_strictness(conn):
    rows = conn.execute(
        """SELECT p.proname, p.provolatile, p.proisstrict, p.proparallel FROM pg_proc p
           WHERE p.pronamespace = 'totp'::regnamespace AND p.proname = ANY(%s)""",
        (["hotp_code", "totp_code", "base32_encode", "base32_decode", "generate_secret", "otpauth_uri"],),
    ).fetchall()
    got = {r["proname"]: (r["provolatile"], r["proisstrict"], r["proparallel"]) for r in rows}
    assert got["hotp_code"] == ("i", True, "s")
    assert got["totp_code"] == ("i", True, "s")
    assert got["base32_encode"] == ("i", True, "s")
    assert got["base32_decode"] == ("i", True, "s")
    assert got["generate_secret"][0] == "v"
    assert got["otpauth_uri"][0] == "i"
    assert conn.execute("SELECT totp.hotp_code(NULL, 1) AS c").fetchone()["c"] is None


def test_generate_secret_is_32_chars_of_20_random_bytes(conn):
    rows = conn.execute("SELECT totp.generate_secret() AS s FROM generate_series(1, 2000)").fetchall()
    secrets = [r["s"] for r in rows]
    assert len(set(secrets)) == len(secrets)
    for s in secrets[:50]:
        assert len(s) == 32 and s == s.upper() and "=" not in s
        assert len(base64.b32decode(s)) == 20
    # Crude sanity check that bytes are not biased: every byte value appears across 40,000 bytes.
    seen = set(b for s in secrets for b in base64.b32decode(s))
    assert len(seen) == 256


# pyotp.parse_uri unquotes the whole URI before splitting it, so it cannot read back an issuer
# holding `:` or `&`, or anything holding `?`, `#` or `%`; those are checked with a strict
# RFC 3986 parse below instead.
PYOTP_ACCOUNTS = ["alice", "Alice Smith", "a:b&c", "Jöhn’s phone", "用户 1", "a b:c&d é"]
PYOTP_ISSUERS = ["Acme", "Ünïcode Co", "Big Co / EU"]
HOSTILE = ["Acme: R&D", "x?y=z#w", "100% sure", "a+b", "é:&?#%/+ ~"]


@pytest.mark.parametrize("alg", ["sha1", "sha256", "sha512"])
@pytest.mark.parametrize("account", PYOTP_ACCOUNTS)
@pytest.mark.parametrize("issuer", PYOTP_ISSUERS)
def test_otpauth_uri_reads_back_with_pyotp(conn, alg, account, issuer):
    secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
    uri = conn.execute(
        "SELECT totp.otpauth_uri(%s, %s, %s, %s, 8, 60) AS u", (secret, account, issuer, alg)
    ).fetchone()["u"]
    parsed = pyotp.parse_uri(uri)
    assert parsed.secret == secret
    assert parsed.name == account
    assert parsed.issuer == issuer
    assert parsed.digits == 8
    assert parsed.interval == 60
    assert parsed.digest().name == alg
    assert_key_uri_shape(uri, issuer, account, alg)


def assert_key_uri_shape(uri, issuer, account, alg):
    """Parameter order and encoding as SPEC §3 gives them, read with a strict RFC 3986 parse."""
    assert uri.startswith("otpauth://totp/")
    path, query = uri[len("otpauth://totp/"):].split("?", 1)
    assert "#" not in uri and " " not in uri and "+" not in uri.replace("%2B", "")
    pairs = [kv.split("=", 1) for kv in query.split("&")]
    assert [k for k, _ in pairs] == ["secret", "issuer", "algorithm", "digits", "period"]
    values = {k: urllib.parse.unquote(v) for k, v in pairs}
    assert values["issuer"] == issuer and values["algorithm"] == alg.upper()
    assert path.count(":") == 1, "the label has exactly one literal colon"
    label_issuer, label_account = path.split(":")
    assert urllib.parse.unquote(label_issuer) == issuer
    assert urllib.parse.unquote(label_account) == account
    assert label_issuer == values_raw(query, "issuer"), "label issuer equals issuer= parameter"


def values_raw(query, key):
    return dict(kv.split("=", 1) for kv in query.split("&"))[key]


@pytest.mark.parametrize("issuer", HOSTILE)
@pytest.mark.parametrize("account", HOSTILE)
def test_otpauth_uri_encodes_reserved_characters(conn, issuer, account):
    uri = conn.execute(
        "SELECT totp.otpauth_uri('GEZDGNBVGY3TQOJQ', %s, %s, 'sha256') AS u", (account, issuer)
    ).fetchone()["u"]
    assert_key_uri_shape(uri, issuer, account, "sha256")


def test_otpauth_uri_without_issuer_and_nulls(conn):
    row = conn.execute(
        "SELECT totp.otpauth_uri('mzxw6ytboi======', 'bob') AS u, totp.otpauth_uri(NULL, 'bob') AS n"
    ).fetchone()
    assert row["u"] == "otpauth://totp/bob?secret=MZXW6YTBOI&algorithm=SHA1&digits=6&period=30"
    assert row["n"] is None


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT totp.hotp_code('x'::bytea, -1)",
        "SELECT totp.hotp_code('x'::bytea, 1, 11)",
        "SELECT totp.hotp_code('x'::bytea, 1, 6, 'md5')",
        "SELECT totp.totp_code('x'::bytea, 'infinity')",
        "SELECT totp.totp_code('x'::bytea, '1969-12-31 23:59:59+00')",
        "SELECT totp.totp_code('x'::bytea, now(), 0)",
        "SELECT totp.generate_secret(8)",
        "SELECT totp.otpauth_uri('MZXW1', 'a')",
        "SELECT totp.otpauth_uri('MZXW6', '')",
    ],
)
def test_pure_functions_refuse_bad_arguments_with_22023(conn, sql):
    with refused("22023", 60200):
        conn.execute(sql)
