"""The two halves of scripts/check-major-upgrade: `prepare` writes factors, spent codes and a
pending challenge into the old major's cluster and records what it did in a state file;
`verify`, run against the cluster pg_upgrade made of it (key file copied across), checks that
every factor still verifies, the replay guard still refuses each spent code, the pending
challenge can be answered and every secret decrypts (a key rotation re-seals them all).

    python tests/major_upgrade.py prepare|keyless|verify STATE_FILE   (PGHOST/PGPORT/PGUSER as for psql)
"""

import json
import sys
import time

from conftest import connect, new_factor, new_service, oathtool, verified_factor

DB = "upgrade"
# (alg, code_length, time_step, skew): every algorithm and length, and factors with a window
# (60 s steps, skew 2: a code stays acceptable for at least 120 s) wide enough to outlast
# pg_upgrade, so the replay check on them always means something.
SHAPES = [("sha1", 6, 30, 1), ("sha256", 8, 30, 1), ("sha512", 6, 30, 1),
          ("sha1", 6, 60, 2), ("sha256", 8, 60, 2), ("sha512", 6, 60, 2)]
WIDE = {"time_step": 60, "skew": 2}


def code_at(f, at):
    return oathtool(f["secret"], f["alg"], f["digits"], f["step"], at)


def challenge(conn, f, code):
    return conn.execute("SELECT status FROM totp.create_challenge(%s, %s, %s, %s)",
                        (f["service"], f["identity"], f["sid"], code)).fetchone()["status"]


def prepare(state_file):
    with connect("postgres") as admin:
        admin.execute(f"DROP DATABASE IF EXISTS {DB}")
        admin.execute(f"CREATE DATABASE {DB}")
    with connect(DB) as conn:
        conn.execute("CREATE EXTENSION totp_verify")
        svc = new_service(conn, "Before the upgrade")["sid"]
        factors = []
        for i, (alg, digits, step, skew) in enumerate(SHAPES * 2):
            identity = f"user-{i}"
            row = verified_factor(conn, svc, identity, alg=alg, code_length=digits, time_step=step, skew=skew)
            f = {"service": svc, "identity": identity, "sid": row["sid"], "secret": row["binding_secret"],
                 "alg": alg, "digits": digits, "step": step, "skew": skew}
            # Spend the current step: this code must stay refused after the upgrade.
            now = time.time()
            f["spent_code"], f["spent_step"] = code_at(f, now), int(now) // step
            assert challenge(conn, f, f["spent_code"]) == "approved"
            factors.append(f)
        unverified = new_factor(conn, svc, "user-unverified")
        answering = verified_factor(conn, svc, "user-challenge")
        pending = conn.execute("SELECT sid, status FROM totp.create_challenge(%s, %s, %s)",
                               (svc, "user-challenge", answering["sid"])).fetchone()
        assert pending["status"] == "pending"
        counts = conn.execute("SELECT (SELECT count(*) FROM totp.factors) AS factors, "
                              "(SELECT count(*) FROM totp.challenges) AS challenges, "
                              "(SELECT count(*) FROM totp.events) AS events").fetchone()
        version = conn.execute("SELECT current_setting('server_version_num')::int / 10000 AS v").fetchone()["v"]
    state = {"major": version, "factors": factors, "counts": counts,
             "unverified": {"service": svc, "identity": "user-unverified", "sid": unverified["sid"],
                            "secret": unverified["binding_secret"], "alg": "sha1", "digits": 6, "step": 30},
             "challenge": {"service": svc, "identity": "user-challenge", "sid": pending["sid"],
                           "secret": answering["binding_secret"], "alg": "sha1", "digits": 6, "step": 30}}
    with open(state_file, "w") as out:
        json.dump(state, out)
    print(f"prepared on PostgreSQL {version}: {len(factors)} verified factors with spent codes, "
          f"1 unverified factor, 1 pending challenge")


def keyless(state_file):
    """Before the key file is copied: the upgraded database refuses to verify (58P01) rather
    than make a new key, so the copy step is what keeps every secret readable."""
    import psycopg
    with open(state_file) as f:
        state = json.load(f)
    f = state["factors"][0]
    with connect(DB) as conn:
        try:
            challenge(conn, f, f["spent_code"])
        except psycopg.Error as err:
            assert err.sqlstate == "58P01", (err.sqlstate, str(err))
        else:
            raise AssertionError("verification worked without the key file")
    print("without the key file: 58P01, as documented")


def verify(state_file):
    with open(state_file) as f:
        state = json.load(f)
    with connect(DB) as conn:
        version = conn.execute("SELECT current_setting('server_version_num')::int / 10000 AS v").fetchone()["v"]
        assert version > state["major"], f"still PostgreSQL {version}: the upgrade did not happen"
        counts = conn.execute("SELECT (SELECT count(*) FROM totp.factors) AS factors, "
                              "(SELECT count(*) FROM totp.challenges) AS challenges, "
                              "(SELECT count(*) FROM totp.events) AS events").fetchone()
        assert counts == state["counts"], (counts, state["counts"])
        replay_checked = 0
        for f in state["factors"]:
            now = time.time()
            current = int(now) // f["step"]
            in_window = current - f["spent_step"] <= f["skew"]
            if f["step"] == WIDE["time_step"] and f["skew"] == WIDE["skew"]:
                assert in_window, "pg_upgrade outlasted the 120 s window: the replay check would prove nothing"
            if in_window:
                # Still inside the acceptance window, so only the replay guard can refuse it.
                assert challenge(conn, f, f["spent_code"]) == "pending", f"spent code accepted: {f['sid']}"
                replay_checked += 1
            # A code of a later step than the spent one approves (the secret decrypts) ...
            fresh_step = max(current, f["spent_step"] + 1)
            fresh = code_at(f, fresh_step * f["step"] + f["step"] / 2)
            assert challenge(conn, f, fresh) == "approved", f"factor {f['sid']} no longer verifies"
            # ... once.
            assert challenge(conn, f, fresh) == "pending"
        assert replay_checked >= len([s for s in state["factors"] if s["step"] == 60])

        u = state["unverified"]
        row = conn.execute("SELECT status FROM totp.verify_factor(%s, %s, %s, %s)",
                           (u["service"], u["identity"], u["sid"], code_at(u, time.time()))).fetchone()
        assert row["status"] == "verified"

        c = state["challenge"]
        row = conn.execute("SELECT status FROM totp.update_challenge(%s, %s, %s, %s)",
                           (c["service"], c["identity"], c["sid"], code_at(c, time.time()))).fetchone()
        assert row["status"] == "approved"

        # Every secret decrypts with the copied key file: a rotation re-seals them all.
        rotated = conn.execute("SELECT resealed, unreadable FROM totp.rotate_key()").fetchone()
        assert rotated == {"resealed": counts["factors"], "unreadable": 0}, rotated
    print(f"verified on PostgreSQL {version}: {len(state['factors'])} factors verify, "
          f"{replay_checked} spent codes refused, challenge approved, {rotated['resealed']} secrets re-sealed")


if __name__ == "__main__":
    {"prepare": prepare, "keyless": keyless, "verify": verify}[sys.argv[1]](sys.argv[2])
