"""SPEC §8: secrets sealed at rest, bound to their row, keys in a file, online rotation."""

import base64
import pathlib
import tempfile
import threading
import time

import psycopg
import pytest

from conftest import connect, refused, rfc4226, verified_factor

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"  # caller-supplied, so the test knows what to look for
SECRET_BYTES = base64.b32decode(SECRET)


@pytest.fixture(scope="module")
def service(db):
    with connect(db) as c:
        sid = c.execute("SELECT sid FROM totp.create_service('Vault')").fetchone()["sid"]
        c.execute("UPDATE totp_private.services SET max_challenges_per_hour = 1000000, max_challenges_per_day = 1000000 "
                  "WHERE sid = %s", (sid,))
        return sid


def every_relation_text(conn):
    """Every row of every ordinary table in the database, as text and as hex of bytea columns."""
    rels = conn.execute(
        """SELECT c.oid::regclass::text AS rel FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')"""
    ).fetchall()
    assert any(r["rel"] == "totp_private.factor_secrets" for r in rels)
    for r in rels:
        for row in conn.execute(f"SELECT t::text AS t FROM {r['rel']} t").fetchall():
            yield r["rel"], row["t"]


def test_no_relation_holds_a_secret_in_plaintext(conn, service):
    factor = conn.execute("SELECT * FROM totp.create_factor(%s, 'plain-1', 'p', secret => %s)",
                          (service, SECRET)).fetchone()
    generated = conn.execute("SELECT * FROM totp.create_factor(%s, 'plain-2', 'p')", (service,)).fetchone()
    needles = {
        SECRET, SECRET.lower(), SECRET_BYTES.hex(), generated["binding_secret"],
        base64.b32decode(generated["binding_secret"]).hex(),
    }
    assert factor["binding_secret"] == SECRET
    for rel, text in every_relation_text(conn):
        for needle in needles:
            assert needle not in text and needle not in text.upper(), f"secret found in {rel}"
    sealed = conn.execute("SELECT sealed FROM totp_private.factor_secrets WHERE factor_sid = %s",
                          (factor["sid"],)).fetchone()["sealed"]
    assert len(sealed) == 12 + len(SECRET_BYTES) + 16, "nonce + ciphertext + tag"


def test_ciphertext_moved_to_another_factor_is_an_error_not_a_verification(conn, service):
    a = conn.execute("SELECT * FROM totp.create_factor(%s, 'move-1', 'a', secret => %s)", (service, SECRET)).fetchone()
    b = conn.execute("SELECT * FROM totp.create_factor(%s, 'move-2', 'b')", (service,)).fetchone()
    conn.execute(
        """UPDATE totp_private.factor_secrets t SET sealed = s.sealed, key_id = s.key_id
           FROM totp_private.factor_secrets s WHERE s.factor_sid = %s AND t.factor_sid = %s""",
        (a["sid"], b["sid"]))
    code = rfc4226(SECRET_BYTES, int(time.time()) // 30, 6)
    with refused("XX001") as info:
        conn.execute("SELECT * FROM totp.verify_factor(%s, 'move-2', %s, %s)", (service, b["sid"], code))
    assert "cannot be decrypted" in info.value.diag.message_primary
    assert code not in str(info.value) and SECRET not in str(info.value)
    # The factor the ciphertext belongs to still works.
    row = conn.execute("SELECT status FROM totp.verify_factor(%s, 'move-1', %s, %s)",
                       (service, a["sid"], code)).fetchone()
    assert row["status"] == "verified"
    # Rotation leaves the tampered row alone and says so, rather than failing or "repairing" it.
    rotated = conn.execute("SELECT * FROM totp.rotate_key()").fetchone()
    assert rotated["unreadable"] == 1 and rotated["resealed"] >= 1
    with refused("XX001"):
        conn.execute("SELECT * FROM totp.verify_factor(%s, 'move-2', %s, %s)", (service, b["sid"], code))
    conn.execute("SELECT totp.delete_factor(%s, 'move-2', %s)", (service, b["sid"]))


def test_missing_or_replaced_key_file_is_a_clear_error(db, service):
    # The server runs as `postgres`: the replacement file must be readable by it.
    tmp_path = pathlib.Path(tempfile.mkdtemp(dir="/var/tmp"))
    tmp_path.chmod(0o755)
    with connect(db) as c:
        f = c.execute("SELECT * FROM totp.create_factor(%s, 'keyfile-1', 'k', secret => %s)",
                      (service, SECRET)).fetchone()
        code = rfc4226(SECRET_BYTES, int(time.time()) // 30, 6)
        c.execute("SET totp_verify.key_file = '/nonexistent/totp.key'")
        with refused("58P01") as info:
            c.execute("SELECT * FROM totp.verify_factor(%s, 'keyfile-1', %s, %s)", (service, f["sid"], code))
        assert "totp_verify.key_file" in info.value.diag.message_detail
        # A different key file: the row's key is not in it.
        other = tmp_path / "other.key"
        other.write_text("# another cluster's key file\n")
        c.execute("RESET totp_verify.key_file")
        key_id, = c.execute("SELECT key_id FROM totp_private.factor_secrets WHERE factor_sid = %s",
                            (f["sid"],)).fetchone().values()
        replacement = generate_key_file(c)
        other.write_text(replacement)
        other.chmod(0o644)
        c.execute(f"SET totp_verify.key_file = '{other}'")
        with refused("XX001") as info:
            c.execute("SELECT * FROM totp.verify_factor(%s, 'keyfile-1', %s, %s)", (service, f["sid"], code))
        assert str(key_id) in info.value.diag.message_detail
        assert "totp_verify.key_file" in info.value.diag.message_detail
        # Putting the right file back restores service, with no wrong-code attempts counted.
        c.execute("RESET totp_verify.key_file")
        row = c.execute("SELECT status FROM totp.verify_factor(%s, 'keyfile-1', %s, %s)",
                        (service, f["sid"], code)).fetchone()
        assert row["status"] == "verified"


def generate_key_file(conn):
    """A syntactically valid key file holding one fresh key (id derived as the extension does)."""
    import hashlib
    import os
    key = os.urandom(32)
    digest = hashlib.sha256(b"totp_verify key id" + key).digest()
    key_id = int.from_bytes(b"\0\0" + digest[:6], "big")
    return f"{key_id} {key.hex()}\n"


def test_only_superuser_may_point_the_key_file_elsewhere(db):
    with connect(db) as c:
        c.execute("DROP ROLE IF EXISTS keyless")
        c.execute("CREATE ROLE keyless LOGIN")
        c.execute("GRANT USAGE ON SCHEMA totp TO keyless")
        c.execute("GRANT EXECUTE ON FUNCTION totp.generate_secret(integer) TO keyless")
    try:
        with connect(db, user="keyless") as c:
            c.execute("SELECT totp.generate_secret()")  # loads the library in this session
            with refused("42501"):
                c.execute("SET totp_verify.key_file = '/tmp/x'")
        # The library is preloaded (shared_preload_libraries), so a new session knows the setting
        # from its start and refuses it at once.
        with connect(db, user="keyless") as c:
            with refused("42501"):
                c.execute("SET totp_verify.key_file = '/tmp/x'")
    finally:
        with connect(db) as c:
            c.execute("DROP OWNED BY keyless")
            c.execute("DROP ROLE keyless")


def test_rotation_while_four_sessions_verify(db, service):
    """4 sessions keep verifying codes while rotate_key re-seals every secret: every
    verification that should approve does, none waits on the rotation, and afterwards every
    secret is under the new key; the old key then leaves the file."""
    sessions, per_session, bulk = 4, 40, 3000
    with connect(db) as c:
        old_keys = {r["key_id"] for r in c.execute("SELECT DISTINCT key_id FROM totp_private.factor_secrets")}
        factors = [[verified_factor(c, service, f"rot-{s}-{i}", secret=SECRET) for i in range(per_session)]
                   for s in range(sessions)]
        # Make the rotation long enough to overlap the verifications.
        c.execute("SELECT count(*) FROM generate_series(1, %s) g, LATERAL totp.create_factor(%s, 'bulk-' || g, 'x')",
                  (bulk, service))
    results, latencies, errors = [], [], []
    rotation = {}
    start = threading.Barrier(sessions + 1)

    def verifier(s):
        with connect(db) as c:
            start.wait()
            for i, f in enumerate(factors[s]):
                code = rfc4226(SECRET_BYTES, int(time.time()) // 30, 6)
                t0 = time.monotonic()
                try:
                    row = c.execute("SELECT status FROM totp.create_challenge(%s, %s, %s, %s)",
                                    (service, f"rot-{s}-{i}", f["sid"], code)).fetchone()
                    results.append((t0, row["status"]))
                except psycopg.Error as e:  # pragma: no cover - reported below
                    errors.append(str(e))
                latencies.append(time.monotonic() - t0)

    def rotator():
        with connect(db) as c:
            start.wait()
            time.sleep(0.05)
            rotation["start"] = time.monotonic()
            rotation["row"] = c.execute("SELECT * FROM totp.rotate_key(50)").fetchone()
            rotation["end"] = time.monotonic()

    threads = [threading.Thread(target=verifier, args=(s,)) for s in range(sessions)]
    threads.append(threading.Thread(target=rotator))
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert not errors, errors[:3]
    assert [s for _, s in results] == ["approved"] * (sessions * per_session)
    during = [t for t, _ in results if rotation["start"] <= t <= rotation["end"]]
    assert during, "no verification overlapped the rotation; make it longer"
    assert max(latencies) < (rotation["end"] - rotation["start"]), "a verification waited for the rotation"
    row = rotation["row"]
    assert row["resealed"] >= bulk + sessions * per_session
    with connect(db) as c:
        keys = {r["key_id"] for r in c.execute("SELECT DISTINCT key_id FROM totp_private.factor_secrets")}
        assert keys == {row["new_key_id"]}
        retired = c.execute("SELECT totp.retire_keys() AS r").fetchone()["r"]
        assert set(retired) >= old_keys - {row["new_key_id"]}
        states = dict(c.execute("SELECT key_id, state FROM totp_private.keys").fetchall() and
                      [(r["key_id"], r["state"]) for r in c.execute("SELECT key_id, state FROM totp_private.keys")])
        assert states[row["new_key_id"]] == "current"
        assert all(states[k] == "retired" for k in retired)
        # Still verifies after the old key left the file (the next step's code, skew 1).
        f = factors[0][0]
        code = rfc4226(SECRET_BYTES, int(time.time()) // 30 + 1, 6)
        status = c.execute("SELECT status FROM totp.create_challenge(%s, 'rot-0-0', %s, %s)",
                           (service, f["sid"], code)).fetchone()["status"]
        assert status == "approved"
