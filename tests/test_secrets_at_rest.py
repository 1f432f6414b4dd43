"""SPEC §8: secrets sealed at rest, bound to their row, keys in a file, online rotation."""

import base64
import pathlib
import shutil
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
    tmp_path = pathlib.Path(tempfile.mkdtemp(dir="/var/tmp", prefix="totp_verify-keyfile-"))
    tmp_path.chmod(0o755)
    try:
        _missing_or_replaced_key_file(db, service, tmp_path)
    finally:
        shutil.rmtree(tmp_path)


def _missing_or_replaced_key_file(db, service, tmp_path):
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
        with connect(db) as c:
            preloaded = "totp_verify" in c.execute("SHOW shared_preload_libraries").fetchone()[
                "shared_preload_libraries"]
        with connect(db, user="keyless") as c:
            if preloaded:  # scripts/lib.sh clusters: the parameter exists from the start
                with refused("42501"):
                    c.execute("SET totp_verify.key_file = '/tmp/x'")
            else:  # set before the library is loaded, the placeholder is dropped when it loads
                c.execute("SET totp_verify.key_file = '/tmp/x'")
                c.execute("SELECT totp.generate_secret()")
                assert c.execute("SHOW totp_verify.key_file").fetchone()["totp_verify.key_file"] == ""
    finally:
        with connect(db) as c:
            c.execute("DROP OWNED BY keyless")
            c.execute("DROP ROLE keyless")


def wait_for_lock_wait(conn, pid, what, event=None, timeout=60):
    """Waits until backend `pid` is blocked on a heavyweight lock (an observed state, not a
    sleep); fails loudly after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute("SELECT wait_event_type, wait_event, state FROM pg_stat_activity WHERE pid = %s",
                           (pid,)).fetchone()
        if row and row["wait_event_type"] == "Lock" and event in (None, row["wait_event"]):
            return row
        time.sleep(0.01)
    raise AssertionError(f"{what}: backend {pid} never waited on a lock within {timeout} s: {row}")


GATE_LOCK = 1_180_011  # an advisory lock key only this test uses


def test_rotation_while_four_sessions_verify(db, service):
    """4 sessions keep verifying codes while rotate_key re-seals every secret: every
    verification that should approve does, none waits on the rotation, and afterwards every
    secret is under the new key; the old key then leaves the file.

    The overlap is arranged, not hoped for: a trigger (test-only) on totp_private.factor_secrets
    makes the rotation stop, mid-way through re-sealing, on an advisory lock this test holds.
    With the rotation parked there (some secrets re-sealed but uncommitted, a batch row-locked),
    all verifications run, with a statement_timeout so one that waited on the rotation fails
    instead of hanging; only then is the rotation released."""
    sessions, per_session, bulk = 4, 40, 200
    with connect(db) as c:
        old_keys = {r["key_id"] for r in c.execute("SELECT DISTINCT key_id FROM totp_private.factor_secrets")}
        factors = [[verified_factor(c, service, f"rot-{s}-{i}", secret=SECRET) for i in range(per_session)]
                   for s in range(sessions)]
        # More than one batch of 50 before the gate ('bulk-' sorts before 'rot-').
        c.execute("SELECT count(*) FROM generate_series(1, %s) g, LATERAL totp.create_factor(%s, 'bulk-' || g, 'x')",
                  (bulk, service))
    gate_sid = factors[2][0]["sid"]  # keyset order: bulk-*, rot-0-*, rot-1-* are re-sealed before it
    results, errors = [], []
    rotation = {}

    def verifier(s, start):
        try:
            with connect(db) as c:
                c.execute("SET statement_timeout = '20s'")
                start.wait(timeout=60)
                for i, f in enumerate(factors[s]):
                    code = rfc4226(SECRET_BYTES, int(time.time()) // 30, 6)
                    try:
                        row = c.execute("SELECT status FROM totp.create_challenge(%s, %s, %s, %s)",
                                        (service, f"rot-{s}-{i}", f["sid"], code)).fetchone()
                        results.append(row["status"])
                    except psycopg.Error as e:  # a statement_timeout here means it waited on the rotation
                        errors.append(str(e))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))

    def rotator():
        try:
            with connect(db) as c:
                rotation["pid"] = c.execute("SELECT pg_backend_pid() AS p").fetchone()["p"]
                rotation["row"] = c.execute("SELECT * FROM totp.rotate_key(50)").fetchone()
        except Exception as e:  # pragma: no cover - reported below
            rotation["error"] = repr(e)

    with connect(db) as gate:
        gate.execute("SELECT pg_advisory_lock(%s)", (GATE_LOCK,))
        gate.execute(f"""CREATE FUNCTION public.rotation_gate() RETURNS trigger LANGUAGE plpgsql AS
                         $$BEGIN PERFORM pg_catalog.pg_advisory_xact_lock({GATE_LOCK}); RETURN NEW; END$$""")
        gate.execute(f"""CREATE TRIGGER rotation_gate BEFORE UPDATE ON totp_private.factor_secrets FOR EACH ROW
                         WHEN (OLD.factor_sid = '{gate_sid}') EXECUTE FUNCTION public.rotation_gate()""")
        try:
            rot = threading.Thread(target=rotator)
            rot.start()
            deadline = time.monotonic() + 30
            while "pid" not in rotation and "error" not in rotation and time.monotonic() < deadline:
                time.sleep(0.01)
            assert "pid" in rotation, rotation
            wait_for_lock_wait(gate, rotation["pid"], "rotate_key at the gate", event="advisory")
            # The rotation is parked mid-way: run every verification now.
            start = threading.Barrier(sessions)
            threads = [threading.Thread(target=verifier, args=(s, start)) for s in range(sessions)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
                assert not t.is_alive(), "a verifier hung"
            # Still parked: every verification above overlapped the rotation.
            row = gate.execute("SELECT wait_event_type, wait_event FROM pg_stat_activity WHERE pid = %s",
                               (rotation["pid"],)).fetchone()
            assert (row["wait_event_type"], row["wait_event"]) == ("Lock", "advisory"), \
                f"the rotation left the gate early: {row}"
        finally:
            gate.execute("SELECT pg_advisory_unlock(%s)", (GATE_LOCK,))
            rot.join(timeout=120)
            gate.execute("DROP TRIGGER rotation_gate ON totp_private.factor_secrets")
            gate.execute("DROP FUNCTION public.rotation_gate()")
    assert not rot.is_alive(), "rotate_key did not finish once released"
    assert "error" not in rotation, rotation["error"]

    assert not errors, f"a verification failed or waited for the rotation: {errors[:3]}"
    assert results == ["approved"] * (sessions * per_session)
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
