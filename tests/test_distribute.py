"""What CI can test of the Citus support without Citus (SPEC §11): totp.distribute() and
totp.undistribute() refuse clearly, only superusers run them, and the rotation in stages that a
cluster needs — add_key(), rotate_key(key_id => ...), key_file_ids(), make_key_current() — works
on one node too, keeps every factor verifying, and is undone by a rollback. tests/citus_cluster.py
runs the rest against a real cluster."""

import time

import pytest

from conftest import connect, new_service, oathtool, refused, verified_factor


@pytest.fixture(scope="module")
def service(db):
    with connect(db) as c:
        return new_service(c, "Distribute")["sid"]


@pytest.fixture(scope="module")
def caller(db):
    """A role given EXECUTE on every function, as a careless DBA might."""
    with connect(db) as c:
        c.execute("DROP ROLE IF EXISTS totp_distribute_caller")
        c.execute("CREATE ROLE totp_distribute_caller")
        c.execute("GRANT USAGE ON SCHEMA totp TO totp_distribute_caller")
        c.execute("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA totp TO totp_distribute_caller")
    yield "totp_distribute_caller"
    with connect(db) as c:
        c.execute("DROP OWNED BY totp_distribute_caller")
        c.execute("DROP ROLE totp_distribute_caller")


def test_distribute_without_citus_refuses_and_changes_nothing(conn):
    before = conn.execute("SELECT count(*) AS n FROM pg_class WHERE relnamespace = 'totp_private'::regnamespace").fetchone()
    with refused("55000") as info:
        conn.execute("SELECT * FROM totp.distribute()")
    assert "Citus is not installed" in str(info.value)
    assert "CREATE EXTENSION citus" in info.value.diag.message_hint
    with refused("55000"):
        conn.execute("SELECT * FROM totp.undistribute()")
    after = conn.execute("SELECT count(*) AS n FROM pg_class WHERE relnamespace = 'totp_private'::regnamespace").fetchone()
    assert before == after


def test_only_superusers_distribute_or_manage_keys_whatever_is_granted(conn, caller):
    conn.execute(f"SET ROLE {caller}")
    try:
        for call in ("SELECT * FROM totp.distribute()", "SELECT * FROM totp.undistribute()",
                     "SELECT totp.add_key()", "SELECT totp.key_file_ids()", "SELECT totp.make_key_current(1)",
                     "SELECT * FROM totp.rotate_key(key_id => 1)"):
            with refused("42501"):
                conn.execute(call)
    finally:
        conn.execute("RESET ROLE")


def key_state(conn, key_id):
    row = conn.execute("SELECT state FROM totp_private.keys WHERE key_id = %s", (key_id,)).fetchone()
    return row and row["state"]


def approves(conn, service, identity, factor):
    """Whether a challenge with the factor's next-step code is approved (the secret opens)."""
    code = oathtool(factor["binding_secret"], at=time.time() + 30)
    return conn.execute("SELECT status FROM totp.create_challenge(%s, %s, %s, %s)",
                        (service, identity, factor["sid"], code)).fetchone()["status"] == "approved"


def test_a_rotation_in_stages_on_one_node(conn, service):
    factors = {f"stage-{i}": verified_factor(conn, service, f"stage-{i}") for i in range(3)}
    ids = conn.execute("SELECT totp.key_file_ids() AS ids").fetchone()["ids"]
    current = conn.execute("SELECT key_id FROM totp_private.keys WHERE state = 'current'").fetchone()["key_id"]
    assert ids[-1] == current

    # A rolled-back add_key leaves the file as it was.
    with conn.transaction(force_rollback=True):
        conn.execute("SELECT totp.add_key()")
    assert conn.execute("SELECT totp.key_file_ids() AS ids").fetchone()["ids"] == ids

    added = conn.execute("SELECT totp.add_key() AS id").fetchone()["id"]
    assert conn.execute("SELECT totp.key_file_ids() AS ids").fetchone()["ids"] == ids + [added]
    assert key_state(conn, added) == "added"
    # Still sealing under the current key, and retire_keys keeps the added one for its rotation.
    new = verified_factor(conn, service, "stage-new")
    assert conn.execute("SELECT key_id FROM totp_private.factor_secrets WHERE factor_sid = %s",
                        (new["sid"],)).fetchone()["key_id"] == current
    conn.execute("SELECT totp.retire_keys()")
    assert added in conn.execute("SELECT totp.key_file_ids() AS ids").fetchone()["ids"]

    with refused("55000"):  # not a key of the file
        conn.execute("SELECT * FROM totp.rotate_key(key_id => 12345)")
    with refused("55000"):
        conn.execute("SELECT totp.make_key_current(12345)")

    to_reseal = conn.execute("SELECT count(*) AS n FROM totp_private.factor_secrets WHERE key_id <> %s",
                             (added,)).fetchone()["n"]
    assert to_reseal >= 4
    r = conn.execute("SELECT * FROM totp.rotate_key(key_id => %s)", (added,)).fetchone()
    assert r["new_key_id"] == added and r["unreadable"] == 0 and r["resealed"] == to_reseal
    assert key_state(conn, added) == "current" and key_state(conn, current) == "previous"
    assert conn.execute("SELECT count(*) AS n FROM totp_private.factor_secrets WHERE key_id <> %s",
                        (added,)).fetchone()["n"] == 0
    assert conn.execute("SELECT totp.retire_keys() AS r").fetchone()["r"] == [current]
    assert conn.execute("SELECT totp.key_file_ids() AS ids").fetchone()["ids"][-1] == added
    assert current not in conn.execute("SELECT totp.key_file_ids() AS ids").fetchone()["ids"]
    factors["stage-new"] = new
    for identity, factor in factors.items():
        assert approves(conn, service, identity, factor), identity


def test_a_rolled_back_rotation_to_an_added_key_changes_nothing(conn, service):
    factor = verified_factor(conn, service, "stage-rollback")
    current = conn.execute("SELECT key_id FROM totp_private.keys WHERE state = 'current'").fetchone()["key_id"]
    added = conn.execute("SELECT totp.add_key() AS id").fetchone()["id"]
    with conn.transaction(force_rollback=True):
        conn.execute("SELECT * FROM totp.rotate_key(key_id => %s)", (added,))
    assert key_state(conn, current) == "current" and key_state(conn, added) == "added"
    assert conn.execute("SELECT DISTINCT key_id FROM totp_private.factor_secrets").fetchall() == [{"key_id": current}]
    assert approves(conn, service, "stage-rollback", factor)


def test_services_digest_follows_settings_not_dates(conn):
    digest = lambda: conn.execute("SELECT totp.services_digest() AS d").fetchone()["d"]
    before = digest()
    assert len(before) == 64
    sid = "VA" + "5" * 32
    conn.execute("SELECT totp.create_service('Digest', sid => %s)", (sid,))
    made = digest()
    assert made != before
    # The same settings again (a retried RUN ON ALL): the same digest.
    conn.execute("SELECT totp.create_service('Digest', sid => %s)", (sid,))
    conn.execute("UPDATE totp_private.services SET date_updated = now() + interval '1 day' WHERE sid = %s", (sid,))
    assert digest() == made
    conn.execute("SELECT totp.update_service(%s, max_challenge_attempts => 3)", (sid,))
    changed = digest()
    assert changed != made
    conn.execute("SELECT totp.update_service(%s, max_challenge_attempts => 5)", (sid,))
    assert digest() == made
    conn.execute("SELECT totp.delete_service(%s)", (sid,))
    assert digest() == before


def test_services_digest_does_not_depend_on_the_session(conn):
    conn.execute("SELECT totp.create_service('Styles', sid => %s)", ("VA" + "6" * 32,))
    digests = set()
    for style in ("postgres", "sql_standard", "iso_8601"):
        conn.execute(f"SET intervalstyle = {style}")
        digests.add(conn.execute("SELECT totp.services_digest() AS d").fetchone()["d"])
    conn.execute("RESET intervalstyle")
    assert len(digests) == 1


def test_create_challenge_checks_expiration_date_before_looking_for_the_factor(conn, service):
    # 20404, then the argument (22023), then the factor (60390): the order of 0.4.0, kept when the
    # statements were merged (a REST client gets 400, not 404, for a bad ExpirationDate).
    with refused("22023", 60306):
        conn.execute("SELECT * FROM totp.create_challenge(%s, 'nobody', %s, expiration_date => now() - interval '1 second')",
                     (service, "YF" + "0" * 32))
    with refused("P0002", 20404):
        conn.execute("SELECT * FROM totp.create_challenge(%s, 'nobody', %s, expiration_date => now() - interval '1 second')",
                     ("VA" + "0" * 32, "YF" + "0" * 32))


@pytest.mark.parametrize("column, value", [("skew", -1), ("skew", 3), ("code_length", 9), ("time_step", 0),
                                           ("status", "'bogus'")])
def test_a_factor_row_with_settings_out_of_range_is_refused_not_used(conn, service, column, value):
    """The hot tables have no CHECKs (issue 16); a row that arrives by another route (a restore,
    a superuser's UPDATE) with a skew of -1 must not widen the code window to billions of steps."""
    identity = f"corrupt-{column.replace('_', '')}-{str(value).strip(chr(39)).replace('-', 'minus')}"
    factor = verified_factor(conn, service, identity)
    conn.execute(f"UPDATE totp_private.factors SET {column} = {value} WHERE sid = %s", (factor["sid"],))
    code = oathtool(factor["binding_secret"], at=time.time() + 30)
    with refused("XX000") as info:
        conn.execute("SELECT * FROM totp.create_challenge(%s, %s, %s, %s)",
                     (service, identity, factor["sid"], code))
    assert "out of range" in str(info.value)
    assert conn.execute("SELECT count(*) AS n FROM totp.challenges WHERE factor_sid = %s",
                        (factor["sid"],)).fetchone()["n"] == 0
