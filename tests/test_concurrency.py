"""SPEC §3 "No replay" and "Concurrency" with real concurrent clients.

Every race opens its connections first (a module-wide pool of N real psycopg connections, each
warmed up so that its backend has already prepared its plans and loaded the key file), then
releases N threads together with a threading.Barrier, each sending its call on its own
connection. The outcomes are then checked against the rows (read as superuser, including the
private counters) and against the `totp_events` notifications.
"""

import base64
import collections
import concurrent.futures
import json
import re
import threading
import time
import uuid

import psycopg
import pytest

from conftest import EventReader, connect, new_factor, new_service, oathtool, rfc4226, wait_inside_step

N = 32  # sessions per race
HIGH = 100000  # "no limit" for the limits a test does not exercise


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def identity():
    return "user-" + uuid.uuid4().hex[:12]


def step_now(step=30):
    return int(time.time()) // step


def code_at(factor, step_index):
    """The factor's code for time step `step_index`, from oathtool (the user's app); codes
    shorter than oathtool allows come from conftest's independent RFC 4226 implementation."""
    step = factor["time_step"]
    if factor["code_length"] < 6:
        return rfc4226(secret_bytes(factor["binding_secret"]), step_index, factor["code_length"], factor["alg"])
    return oathtool(factor["binding_secret"], factor["alg"], factor["code_length"], step,
                    at=step_index * step + step / 2)


def secret_bytes(b32):
    return base64.b32decode(b32 + "=" * (-len(b32) % 8))


def wrong_codes(factor, count, around=None):
    """`count` codes that are right for no step within ±4 of now (so they are wrong whatever
    step the server is in while the test runs)."""
    digits = factor["code_length"]
    around = step_now(factor["time_step"]) if around is None else around
    raw = secret_bytes(factor["binding_secret"])
    right = {rfc4226(raw, s, digits, factor["alg"]) for s in range(around - 4, around + 5)}
    out, n = [], int(uuid.uuid4().int % 10 ** digits)
    while len(out) < count:
        code = str(n % 10 ** digits).zfill(digits)
        if code not in right:
            out.append(code)
        n += 7919
    return out


def twilio_code(err):
    m = re.search(r"\(Twilio (\d+)\)", err.diag.message_primary or "")
    return int(m.group(1)) if m else None


class Outcome:
    """One call's result: a row, or an error (SQLSTATE + Twilio code)."""

    def __init__(self, row=None, error=None):
        self.row, self.error = row, error

    @property
    def ok(self):
        return self.error is None

    @property
    def sqlstate(self):
        return None if self.ok else self.error.sqlstate

    @property
    def twilio(self):
        return None if self.ok else twilio_code(self.error)

    def __repr__(self):
        if self.ok:
            return f"<ok {dict(self.row) if self.row else None}>"
        return f"<err {self.sqlstate} {self.error}>"


def call(conn, sql, params):
    try:
        return Outcome(row=conn.execute(sql, params).fetchone())
    except psycopg.Error as e:
        return Outcome(error=e)


def race(pool, work, n=N, before=None, gate=None):
    """Runs work(i, conn) on n pooled connections at once: each thread first runs before(i, conn)
    (if given), then waits at a barrier; all are released together. Returns the n results.

    With gate=(gate_conn, monitor_conn, factor_sid), the factor row is first locked FOR UPDATE
    by gate_conn, and released only once monitor_conn sees all n backends waiting on that lock:
    all n calls are then provably inside the function, past their argument checks, at once.
    A fourth element, a callable, runs on gate_conn inside its transaction just before COMMIT."""
    assert n <= len(pool)
    barrier = threading.Barrier(n, timeout=60)

    def run(i):
        conn = pool[i]
        if before is not None:
            before(i, conn)
        barrier.wait()
        return work(i, conn)

    if gate is not None:
        gate_conn, monitor, factor_sid, *on_release = gate
        gate_conn.execute("BEGIN")
        gate_conn.execute("SELECT 1 FROM totp_private.factors WHERE sid = %s FOR UPDATE", (factor_sid,))
        pids = [c.info.backend_pid for c in pool[:n]]
    with concurrent.futures.ThreadPoolExecutor(max_workers=n) as ex:
        futures = [ex.submit(run, i) for i in range(n)]
        if gate is not None:
            try:
                deadline = time.time() + 30
                while True:
                    waiting = monitor.execute(
                        "SELECT count(*) AS n FROM pg_stat_activity WHERE pid = ANY(%s) AND wait_event_type = 'Lock'",
                        (pids,)).fetchone()["n"]
                    if waiting == n:
                        break
                    assert time.time() < deadline, f"only {waiting} of {n} sessions reached the lock"
                    time.sleep(0.01)
                for action in on_release:  # runs inside the gate's transaction, before COMMIT
                    action(gate_conn)
            finally:
                gate_conn.execute("COMMIT")
        return [f.result() for f in futures]


CREATE_CHALLENGE = "SELECT * FROM totp.create_challenge(%s, %s, %s, %s)"
UPDATE_CHALLENGE = "SELECT * FROM totp.update_challenge(%s, %s, %s, %s)"
VERIFY_FACTOR = "SELECT * FROM totp.verify_factor(%s, %s, %s, %s)"
CREATE_FACTOR = "SELECT * FROM totp.create_factor(%s, %s, %s)"


def enrol(conn, service_sid, ident, **kwargs):
    """Creates and verifies a factor with the code of the *previous* step (accepted with skew
    1), so the current and next steps are free for the test."""
    factor = new_factor(conn, service_sid, ident, **kwargs)
    step = factor["time_step"]
    wait_inside_step(step, 3)
    for _ in range(2):  # once more, at the new step, if a step boundary passed during the call
        before = step_now(step)
        row = conn.execute(VERIFY_FACTOR, (service_sid, ident, factor["sid"], code_at(factor, before - 1))).fetchone()
        if row["status"] == "verified" or step_now(step) == before:
            break
    assert row["status"] == "verified"
    return factor


def private_factor(admin, factor_sid):
    return admin.execute("SELECT * FROM totp_private.factors WHERE sid = %s", (factor_sid,)).fetchone()


def private_challenges(admin, factor_sid):
    return admin.execute(
        "SELECT * FROM totp_private.challenges WHERE factor_sid = %s ORDER BY date_created", (factor_sid,)
    ).fetchall()


def service_with_limits(admin, **limits):
    svc = new_service(admin, "Concurrency " + uuid.uuid4().hex[:6])["sid"]
    values = {"max_challenges_per_hour": HIGH, "max_challenges_per_day": HIGH,
              "max_factor_attempts": 5, "max_challenge_attempts": 5,
              "max_factors_per_entity": 100, "max_factor_creations_per_day": 100}
    values.update(limits)
    sets = ", ".join(f"{k} = %({k})s" for k in values)
    admin.execute(f"UPDATE totp_private.services SET {sets} WHERE sid = %(sid)s", {**values, "sid": svc})
    return svc


def drain_events(listener, wait=0.5):
    """The events (rows of totp.events) committed since the last read."""
    return listener.drain(wait)


def count_events(events, kind, **match):
    return sum(1 for e in events if e["type"] == kind and all(e.get(k) == v for k, v in match.items()))


def statuses(outcomes):
    return collections.Counter(o.row["status"] if o.ok else f"error {o.sqlstate}/{o.twilio}"
                               for o in outcomes)


# ---------------------------------------------------------------------------------------------
# Fixtures: one superuser connection, one listener, N warmed-up client connections
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def admin(db):
    with connect(db) as c:
        yield c


@pytest.fixture(scope="module")
def listener(db):
    reader = EventReader(db)
    yield reader
    reader.close()


@pytest.fixture(scope="module")
def gate_conn(db):
    with connect(db) as c:
        yield c


@pytest.fixture(scope="module")
def pool(db, admin):
    conns = [connect(db) for _ in range(N)]
    try:
        for c in conns:
            c.execute("SET statement_timeout = '60s'")
        # Warm-up: every backend prepares the statements of every call and opens a secret once,
        # so that the races below race on the factor row, not on first-call setup.
        svc = service_with_limits(admin, max_factor_attempts=HIGH, max_challenge_attempts=HIGH)
        ident = identity()
        verified = enrol(admin, svc, ident)
        unverified = new_factor(admin, svc, ident, friendly_name="warm")
        wrong = wrong_codes(verified, 1)[0]

        def warm(i, c):
            ch = c.execute(CREATE_CHALLENGE, (svc, ident, verified["sid"], wrong)).fetchone()
            c.execute(UPDATE_CHALLENGE, (svc, ident, ch["sid"], wrong)).fetchone()
            c.execute(VERIFY_FACTOR, (svc, ident, unverified["sid"], wrong)).fetchone()
            c.execute("SELECT totp.has_recent_approval(%s, %s, '1 minute')", (svc, ident)).fetchone()

        race(conns, warm)
        yield conns
    finally:
        for c in conns:
            c.close()


# ---------------------------------------------------------------------------------------------
# A. No replay, race-free
# ---------------------------------------------------------------------------------------------

ROUNDS = 4


def test_same_right_code_to_create_challenge_approves_exactly_once(admin, pool, listener, gate_conn):
    """32 sessions send the same right code for one factor: one approved, 31 pending. Each round
    has a new factor; within a round the next step's code (valid with skew 1) is raced too, and
    finally the first code is replayed by all 32 and approves nothing. Odd rounds are gated: all
    32 calls are parked on the factor's row lock before any may proceed."""
    svc = service_with_limits(admin)
    for rnd in range(ROUNDS):
        ident = identity()
        factor = enrol(admin, svc, ident)
        t = step_now(factor["time_step"])
        drain_events(listener, 0.05)
        for sub, step_index in enumerate([t, t + 1, t]):
            code = code_at(factor, step_index)
            outcomes = race(pool, lambda i, c: call(c, CREATE_CHALLENGE, (svc, ident, factor["sid"], code)),
                            gate=(gate_conn, admin, factor["sid"]) if rnd % 2 else None)
            assert all(o.ok for o in outcomes), [o for o in outcomes if not o.ok]
            got = statuses(outcomes)
            if sub < 2:
                assert got == {"approved": 1, "pending": N - 1}, got
                approved = next(o.row for o in outcomes if o.row["status"] == "approved")
                assert approved["date_responded"] is not None
            else:  # the replayed code of the first sub-round
                assert got == {"pending": N}, got
            for o in outcomes:
                if o.row["status"] == "pending":
                    assert o.row["date_responded"] is None
            # The replay guard remembers the newest step accepted.
            assert private_factor(admin, factor["sid"])["last_step"] == t + (1 if sub else 0)
            events = drain_events(listener)
            assert count_events(events, "challenge.approved", factor_sid=factor["sid"]) == (1 if sub < 2 else 0)

        rows = private_challenges(admin, factor["sid"])
        assert len(rows) == 3 * N
        assert collections.Counter(r["status"] for r in rows) == {"approved": 2, "pending": 3 * N - 2}
        # Pending ones were wrong codes as far as the counters go: one attempt each.
        assert all(r["failed_attempts"] == (0 if r["status"] == "approved" else 1) for r in rows)
        pf = private_factor(admin, factor["sid"])
        assert pf["challenges_in_hour"] == 3 * N and pf["challenges_in_day"] == 3 * N


def test_same_right_code_to_update_challenge_on_32_pending_challenges(admin, pool, listener, gate_conn):
    """32 different pending challenges of one factor answered at once with the same right code:
    exactly one approved. Then the 31 still pending are raced with the next step's code: one
    more approved; then with the first code again: none."""
    svc = service_with_limits(admin)
    for rnd in range(ROUNDS - 1):
        ident = identity()
        factor = enrol(admin, svc, ident)
        t = step_now(factor["time_step"])
        challenges = [admin.execute("SELECT * FROM totp.create_challenge(%s, %s, %s)",
                                    (svc, ident, factor["sid"])).fetchone()["sid"] for _ in range(N)]
        drain_events(listener, 0.05)
        pending = list(challenges)
        for sub, step_index in enumerate([t, t + 1, t]):
            code = code_at(factor, step_index)
            n = len(pending)
            outcomes = race(pool, lambda i, c: call(c, UPDATE_CHALLENGE, (svc, ident, pending[i], code)), n=n,
                            gate=(gate_conn, admin, factor["sid"]) if rnd % 2 == 0 else None)
            assert all(o.ok for o in outcomes), [o for o in outcomes if not o.ok]
            got = statuses(outcomes)
            expect = {"approved": 1, "pending": n - 1} if sub < 2 else {"pending": n}
            assert got == expect, got
            events = drain_events(listener)
            assert count_events(events, "challenge.approved", factor_sid=factor["sid"]) == (1 if sub < 2 else 0)
            pending = [o.row["sid"] for o in outcomes if o.row["status"] == "pending"]

        rows = {r["sid"]: r for r in private_challenges(admin, factor["sid"])}
        approved = [s for s, r in rows.items() if r["status"] == "approved"]
        assert len(approved) == 2
        # Attempts: the first approved one had none; the second one wrong once (sub-round 0);
        # the rest were wrong three times (two losing races and the replay).
        assert sorted(rows[s]["failed_attempts"] for s in approved) == [0, 1]
        assert all(r["failed_attempts"] == 3 for s, r in rows.items() if s not in approved)


def test_create_and_update_challenge_racing_with_one_code(admin, pool, gate_conn):
    """Half the sessions create a challenge with the code, half answer pending challenges with
    it: still exactly one approval in total."""
    svc = service_with_limits(admin)
    for rnd in range(ROUNDS - 1):
        ident = identity()
        factor = enrol(admin, svc, ident)
        code = code_at(factor, step_now(factor["time_step"]))
        pending = [admin.execute("SELECT * FROM totp.create_challenge(%s, %s, %s)",
                                 (svc, ident, factor["sid"])).fetchone()["sid"] for _ in range(N // 2)]

        def work(i, c):
            if i % 2:
                return call(c, CREATE_CHALLENGE, (svc, ident, factor["sid"], code))
            return call(c, UPDATE_CHALLENGE, (svc, ident, pending[i // 2], code))

        outcomes = race(pool, work, gate=(gate_conn, admin, factor["sid"]) if rnd % 2 == 0 else None)
        assert all(o.ok for o in outcomes), [o for o in outcomes if not o.ok]
        assert statuses(outcomes) == {"approved": 1, "pending": N - 1}
        rows = private_challenges(admin, factor["sid"])
        assert sum(r["status"] == "approved" for r in rows) == 1


def test_same_right_code_repeatable_read_callers(admin, pool):
    """Callers inside REPEATABLE READ transactions whose snapshots predate the race: exactly one
    is approved; each other either sees `pending` or gets a serialization failure (40001) and
    leaves nothing behind. Never two approvals."""
    svc = service_with_limits(admin)
    ident = identity()
    factor = enrol(admin, svc, ident)
    code = code_at(factor, step_now(factor["time_step"]))

    def begin(i, c):
        c.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        c.execute("SELECT count(*) FROM totp.services").fetchone()  # takes the snapshot now

    def work(i, c):
        out = call(c, CREATE_CHALLENGE, (svc, ident, factor["sid"], code))
        if out.ok:
            c.execute("COMMIT")
        else:
            c.execute("ROLLBACK")
        return out

    outcomes = race(pool, work, before=begin)
    assert all(c.info.transaction_status == psycopg.pq.TransactionStatus.IDLE for c in pool)
    approved = [o for o in outcomes if o.ok and o.row["status"] == "approved"]
    assert len(approved) == 1, statuses(outcomes)
    for o in outcomes:
        assert (o.ok and o.row["status"] in ("approved", "pending")) or o.sqlstate == "40001", o
    rows = private_challenges(admin, factor["sid"])
    assert len(rows) == sum(o.ok for o in outcomes)
    assert sum(r["status"] == "approved" for r in rows) == 1


def test_verify_factor_race_one_transition_and_code_consumed(admin, pool, listener, gate_conn):
    """32 sessions verify one new factor with the same right code: every call returns it
    `verified` but exactly one makes the transition (one factor.verified event, no failed
    attempt counted). The code it consumed then never approves a challenge; the next one does."""
    svc = service_with_limits(admin)
    for rnd in range(ROUNDS - 1):
        ident = identity()
        factor = new_factor(admin, svc, ident)
        wait_inside_step(factor["time_step"], 3)
        t = step_now(factor["time_step"])
        code = code_at(factor, t)
        drain_events(listener, 0.05)
        outcomes = race(pool, lambda i, c: call(c, VERIFY_FACTOR, (svc, ident, factor["sid"], code)),
                        gate=(gate_conn, admin, factor["sid"]) if rnd % 2 == 0 else None)
        assert all(o.ok for o in outcomes), [o for o in outcomes if not o.ok]
        assert statuses(outcomes) == {"verified": N}
        assert len({o.row["date_updated"] for o in outcomes}) == 1, "one transition, one date_updated"
        events = drain_events(listener)
        assert count_events(events, "factor.verified", factor_sid=factor["sid"]) == 1
        pf = private_factor(admin, factor["sid"])
        assert pf["status"] == "verified" and pf["last_step"] == t and pf["failed_verifications"] == 0

        # The consumed code, raced by all: nothing approved.
        outcomes = race(pool, lambda i, c: call(c, CREATE_CHALLENGE, (svc, ident, factor["sid"], code)))
        assert statuses(outcomes) == {"pending": N}
        # The next step's code: exactly one.
        code2 = code_at(factor, t + 1)
        outcomes = race(pool, lambda i, c: call(c, CREATE_CHALLENGE, (svc, ident, factor["sid"], code2)))
        assert statuses(outcomes) == {"approved": 1, "pending": N - 1}


def test_verify_factor_racing_create_challenge_with_the_same_code(admin, pool, listener, gate_conn):
    """Half verify the factor with a code while the other half create challenges with the same
    code: a challenge is refused (60318) while the factor is unverified and is `pending` (code
    consumed) after; none is ever approved."""
    svc = service_with_limits(admin)
    for rnd in range(ROUNDS - 1):
        ident = identity()
        factor = new_factor(admin, svc, ident)
        code = code_at(factor, step_now(factor["time_step"]))
        drain_events(listener, 0.05)

        def work(i, c):
            if i % 2:
                return ("verify", call(c, VERIFY_FACTOR, (svc, ident, factor["sid"], code)))
            return ("challenge", call(c, CREATE_CHALLENGE, (svc, ident, factor["sid"], code)))

        results = race(pool, work, gate=(gate_conn, admin, factor["sid"]) if rnd % 2 == 0 else None)
        verifies = [o for kind, o in results if kind == "verify"]
        challenges = [o for kind, o in results if kind == "challenge"]
        assert all(o.ok and o.row["status"] == "verified" for o in verifies), verifies
        for o in challenges:
            assert (o.ok and o.row["status"] == "pending") or (o.sqlstate == "55000" and o.twilio == 60318), o
        assert count_events(drain_events(listener), "factor.verified", factor_sid=factor["sid"]) == 1
        rows = private_challenges(admin, factor["sid"])
        assert len(rows) == sum(o.ok for o in challenges)
        assert all(r["status"] == "pending" for r in rows)


@pytest.mark.parametrize("limit", [HIGH, 5])
def test_one_right_code_among_wrong_ones_on_one_challenge(admin, pool, gate_conn, limit):
    """One session answers a pending challenge with the right code while 31 answer it with wrong
    ones, all parked on the factor lock and released together. Whatever the order, the state is
    consistent: wrong codes before the right one are `pending` and counted, the right one
    approves (unless the limit denied the challenge first), and every later call is refused
    with 60322 (approved) or 60308 (denied)."""
    svc = service_with_limits(admin, max_challenge_attempts=limit)
    ident = identity()
    factor = enrol(admin, svc, ident)
    right = code_at(factor, step_now(factor["time_step"]))
    wrong = wrong_codes(factor, N)
    ch = admin.execute("SELECT * FROM totp.create_challenge(%s, %s, %s)", (svc, ident, factor["sid"])).fetchone()
    lucky = N // 2
    outcomes = race(pool, lambda i, c: call(c, UPDATE_CHALLENGE,
                                            (svc, ident, ch["sid"], right if i == lucky else wrong[i])),
                    gate=(gate_conn, admin, factor["sid"]))
    row = next(r for r in private_challenges(admin, factor["sid"]) if r["sid"] == ch["sid"])
    got = statuses(outcomes)
    pending = got.get("pending", 0)
    assert row["failed_attempts"] == pending + got.get("denied", 0), got
    if row["status"] == "approved":
        assert outcomes[lucky].ok and outcomes[lucky].row["status"] == "approved", got
        assert got == collections.Counter({"approved": 1, "pending": pending, "error 55000/60322": N - 1 - pending}), got
        assert pending < limit
    else:
        assert row["status"] == "denied" and limit == 5, got
        assert outcomes[lucky].twilio == 60308, outcomes[lucky]
        assert got == {"pending": 4, "denied": 1, "error 54000/60308": N - 5}, got


@pytest.mark.parametrize("limit", [HIGH, 5])
def test_one_right_code_among_wrong_ones_verifying_a_factor(admin, pool, gate_conn, limit):
    """The same for verify_factor: wrong codes before the right one return `unverified` and are
    counted; the right one verifies (unless the limit was reached first: then it, and every
    later call, is 60310); calls after the transition return the verified row unchanged."""
    svc = service_with_limits(admin, max_factor_attempts=limit)
    ident = identity()
    factor = new_factor(admin, svc, ident)
    right = code_at(factor, step_now(factor["time_step"]))
    wrong = wrong_codes(factor, N)
    lucky = N // 2
    outcomes = race(pool, lambda i, c: call(c, VERIFY_FACTOR,
                                            (svc, ident, factor["sid"], right if i == lucky else wrong[i])),
                    gate=(gate_conn, admin, factor["sid"]))
    pf = private_factor(admin, factor["sid"])
    got = statuses(outcomes)
    unverified = got.get("unverified", 0)
    if pf["status"] == "verified":
        assert outcomes[lucky].ok and outcomes[lucky].row["status"] == "verified"
        assert got == collections.Counter({"unverified": unverified, "verified": N - unverified}), got
        assert unverified < limit
        assert pf["failed_verifications"] == 0, "reset by the verification, never counted after it"
    else:
        assert limit == 5 and outcomes[lucky].twilio == 60310, got
        assert got == {"unverified": 5, "error 54000/60310": N - 5}, got
        assert pf["failed_verifications"] == 5


@pytest.mark.parametrize("what", ["factor", "entity"])
def test_calls_parked_on_a_factor_that_is_deleted(admin, pool, gate_conn, what):
    """32 calls (challenge answers with the right code, challenge creations, verifications of
    the factor) wait on the factor's lock while it, or its whole entity, is deleted: every one
    ends as "not found" (P0002, 60390/60391 for the factor, 60392 for the entity), none
    approves anything, nothing is left behind."""
    svc = service_with_limits(admin)
    ident = identity()
    factor = enrol(admin, svc, ident)
    code = code_at(factor, step_now(factor["time_step"]))
    pending = [admin.execute("SELECT * FROM totp.create_challenge(%s, %s, %s)",
                             (svc, ident, factor["sid"])).fetchone()["sid"] for _ in range(N)]

    def work(i, c):
        if i % 3 == 0:
            return call(c, UPDATE_CHALLENGE, (svc, ident, pending[i], code))
        if i % 3 == 1:
            return call(c, CREATE_CHALLENGE, (svc, ident, factor["sid"], code))
        return call(c, VERIFY_FACTOR, (svc, ident, factor["sid"], code))

    def delete(g):
        if what == "factor":
            g.execute("SELECT totp.delete_factor(%s, %s, %s)", (svc, ident, factor["sid"]))
        else:
            g.execute("SELECT totp.delete_entity(%s, %s)", (svc, ident))

    outcomes = race(pool, work, gate=(gate_conn, admin, factor["sid"], delete))
    allowed = {60390, 60391} if what == "factor" else {60392}
    for o in outcomes:
        assert o.sqlstate == "P0002" and o.twilio in allowed, o
    assert private_challenges(admin, factor["sid"]) == []
    assert private_factor(admin, factor["sid"]) is None


def test_replay_guard_follows_a_time_step_change(admin):
    """SPEC §3: update_factor may change time_step; the factor then expects the codes of the new
    step, and the replay guard (the last step accepted, in units of the old step) must still let
    a fresh code through rather than refuse every code as a replay. The code sent is that of the
    next 60-second step (within skew 1), which starts after the consumed 30-second step ended.
    (Regression: last_step used to stay in 30-second units, so every 60-second code was refused.)"""
    svc = service_with_limits(admin)
    ident = identity()
    factor = enrol(admin, svc, ident)  # consumes a 30-second step (~5.9e7)
    admin.execute("SELECT * FROM totp.update_factor(%s, %s, %s, time_step => 60)", (svc, ident, factor["sid"]))
    factor = dict(factor, time_step=60)
    wait_inside_step(60, 3)
    code = code_at(factor, step_now(60) + 1)
    row = admin.execute(CREATE_CHALLENGE, (svc, ident, factor["sid"], code)).fetchone()
    assert row["status"] == "approved"
    # And that code is now consumed in the new units.
    again = admin.execute(CREATE_CHALLENGE, (svc, ident, factor["sid"], code)).fetchone()
    assert again["status"] == "pending"


# ---------------------------------------------------------------------------------------------
# Counters never lose an update; limits bite exactly at the limit
# ---------------------------------------------------------------------------------------------

K = 5  # calls per session in the counter races


def test_challenge_creation_counters_are_exact_under_load(admin, pool):
    svc = service_with_limits(admin)
    ident = identity()
    factor = enrol(admin, svc, ident)
    before = private_factor(admin, factor["sid"])
    codes = wrong_codes(factor, N * K)

    def work(i, c):
        return [call(c, CREATE_CHALLENGE, (svc, ident, factor["sid"], codes[i * K + k])) for k in range(K)]

    outcomes = [o for per in race(pool, work) for o in per]
    assert statuses(outcomes) == {"pending": N * K}
    after = private_factor(admin, factor["sid"])
    assert after["challenges_in_hour"] == before["challenges_in_hour"] + N * K
    assert after["challenges_in_day"] == before["challenges_in_day"] + N * K
    rows = private_challenges(admin, factor["sid"])
    assert len(rows) == N * K
    assert all(r["failed_attempts"] == 1 and r["status"] == "pending" for r in rows)
    assert after["last_step"] == before["last_step"], "wrong codes consume no step"


def test_challenge_failed_attempts_are_exact_under_load(admin, pool):
    """Every session sends K wrong codes to each of 4 shared pending challenges (in a different
    order): each challenge's failed_attempts is exactly N*K."""
    svc = service_with_limits(admin, max_challenge_attempts=HIGH)
    ident = identity()
    factor = enrol(admin, svc, ident)
    challenges = [admin.execute("SELECT * FROM totp.create_challenge(%s, %s, %s)",
                                (svc, ident, factor["sid"])).fetchone()["sid"] for _ in range(4)]
    codes = wrong_codes(factor, 8)

    def work(i, c):
        out = []
        for k in range(K):
            for j in range(4):
                sid = challenges[(i + j) % 4]
                out.append(call(c, UPDATE_CHALLENGE, (svc, ident, sid, codes[(i + k + j) % 8])))
        return out

    outcomes = [o for per in race(pool, work) for o in per]
    assert statuses(outcomes) == {"pending": N * K * 4}
    for row in private_challenges(admin, factor["sid"]):
        assert row["failed_attempts"] == N * K and row["status"] == "pending"
    # The public row agrees and the attempts counter is not visible there.
    public = admin.execute("SELECT * FROM totp.challenges WHERE factor_sid = %s", (factor["sid"],)).fetchall()
    assert len(public) == 4 and all("failed_attempts" not in r for r in public)


@pytest.mark.parametrize("created_wrong", [False, True])
def test_challenge_attempt_limit_60308_exactly_at_limit(admin, pool, listener, gate_conn, created_wrong):
    """Default limit 5. 32 sessions send one wrong code each to one pending challenge: the
    attempts that fit are `pending`, the 5th is `denied`, every later one is 60308. A challenge
    created with a wrong code already used one attempt."""
    svc = service_with_limits(admin)
    ident = identity()
    factor = enrol(admin, svc, ident)
    codes = wrong_codes(factor, N + 1)
    args = (svc, ident, factor["sid"]) + ((codes[N],) if created_wrong else ())
    sql = CREATE_CHALLENGE if created_wrong else "SELECT * FROM totp.create_challenge(%s, %s, %s)"
    ch = admin.execute(sql, args).fetchone()
    used = 1 if created_wrong else 0
    assert ch["status"] == "pending"
    drain_events(listener, 0.05)

    outcomes = race(pool, lambda i, c: call(c, UPDATE_CHALLENGE, (svc, ident, ch["sid"], codes[i])),
                    gate=(gate_conn, admin, factor["sid"]))
    for o in outcomes:
        assert o.ok or (o.sqlstate == "54000" and o.twilio == 60308), o
    assert statuses(outcomes) == {"pending": 4 - used, "denied": 1, "error 54000/60308": N - 5 + used}
    row = next(r for r in private_challenges(admin, factor["sid"]) if r["sid"] == ch["sid"])
    assert row["status"] == "denied" and row["failed_attempts"] == 5 and row["date_responded"] is not None
    assert count_events(drain_events(listener), "challenge.denied", challenge_sid=ch["sid"]) == 1
    # Even the right code is now refused with 60308.
    right = code_at(factor, step_now(factor["time_step"]))
    o = call(pool[0], UPDATE_CHALLENGE, (svc, ident, ch["sid"], right))
    assert o.sqlstate == "54000" and o.twilio == 60308


def test_failed_verifications_are_exact_under_load(admin, pool):
    svc = service_with_limits(admin, max_factor_attempts=HIGH)
    ident = identity()
    factor = new_factor(admin, svc, ident)
    codes = wrong_codes(factor, N * K)

    def work(i, c):
        return [call(c, VERIFY_FACTOR, (svc, ident, factor["sid"], codes[i * K + k])) for k in range(K)]

    outcomes = [o for per in race(pool, work) for o in per]
    assert statuses(outcomes) == {"unverified": N * K}
    pf = private_factor(admin, factor["sid"])
    assert pf["failed_verifications"] == N * K and pf["status"] == "unverified" and pf["last_step"] is None


@pytest.mark.parametrize("limit,per_session", [(5, 1), (40, 2)])
def test_factor_attempt_limit_60310_exactly_at_limit(admin, pool, gate_conn, limit, per_session):
    svc = service_with_limits(admin, max_factor_attempts=limit)
    ident = identity()
    factor = new_factor(admin, svc, ident)
    codes = wrong_codes(factor, N * per_session)

    def work(i, c):
        return [call(c, VERIFY_FACTOR, (svc, ident, factor["sid"], codes[i * per_session + k]))
                for k in range(per_session)]

    gate = (gate_conn, admin, factor["sid"]) if per_session == 1 else None
    outcomes = [o for per in race(pool, work, gate=gate) for o in per]
    for o in outcomes:
        assert (o.ok and o.row["status"] == "unverified") or (o.sqlstate == "54000" and o.twilio == 60310), o
    assert statuses(outcomes) == {"unverified": limit, "error 54000/60310": N * per_session - limit}
    assert private_factor(admin, factor["sid"])["failed_verifications"] == limit
    # Past the limit, verification is refused whatever the code.
    right = code_at(factor, step_now(factor["time_step"]))
    o = call(pool[0], VERIFY_FACTOR, (svc, ident, factor["sid"], right))
    assert o.sqlstate == "54000" and o.twilio == 60310


@pytest.mark.parametrize("window", ["hour", "day", "short-code day"])
def test_challenge_creation_limit_60312_exactly_at_limit(admin, pool, window):
    limits = {"hour": {"max_challenges_per_hour": 40}, "day": {"max_challenges_per_day": 30},
              "short-code day": {"max_short_code_challenges_per_day": 10}}[window]
    limit = next(iter(limits.values()))
    svc = service_with_limits(admin, **limits)
    ident = identity()
    factor = enrol(admin, svc, ident, **({"code_length": 4} if window.startswith("short") else {}))
    codes = wrong_codes(factor, 2 * N)

    def work(i, c):
        # one creation without a code, one with a wrong code: both count
        return [call(c, "SELECT * FROM totp.create_challenge(%s, %s, %s)", (svc, ident, factor["sid"])),
                call(c, CREATE_CHALLENGE, (svc, ident, factor["sid"], codes[i]))]

    outcomes = [o for per in race(pool, work) for o in per]
    for o in outcomes:
        assert (o.ok and o.row["status"] == "pending") or (o.sqlstate == "54000" and o.twilio == 60312), o
    assert statuses(outcomes) == {"pending": limit, "error 54000/60312": 2 * N - limit}
    pf = private_factor(admin, factor["sid"])
    assert pf["challenges_in_hour"] == limit and pf["challenges_in_day"] == limit
    assert len(private_challenges(admin, factor["sid"])) == limit


def test_challenge_creations_waiting_on_the_factor_count_on_the_row_they_get(admin, pool, gate_conn):
    """All N calls are provably waiting on the factor's lock while the gate's transaction
    creates 3 challenges and then, also before COMMIT, moves the hour window's start back to just
    under an hour ago with a count of 6. Each waiter must count on the row the gate committed, and
    on its predecessors' rows after that, not on the row it first saw: exactly 10 - 6 = 4 of them
    get a challenge, the rest 60312, and the hour count ends at 10 in the gate's window. A waiter
    counting on a stale row would start from another count (more or fewer than 4 pass) or in a
    new window."""
    svc = service_with_limits(admin, max_challenges_per_hour=10)
    ident = identity()
    factor = enrol(admin, svc, ident)
    codes = wrong_codes(factor, N + 3)
    starts = {}

    def make_three(c):
        for code in codes[N:]:
            assert c.execute(CREATE_CHALLENGE, (svc, ident, factor["sid"], code)).fetchone()["status"] == "pending"

    def move_window(c):
        starts["hour"] = c.execute(
            "UPDATE totp_private.factors SET challenge_hour_start = now() - interval '59 minutes', "
            "challenges_in_hour = 6 WHERE sid = %s RETURNING challenge_hour_start", (factor["sid"],)
        ).fetchone()["challenge_hour_start"]

    outcomes = race(pool, lambda i, c: call(c, CREATE_CHALLENGE, (svc, ident, factor["sid"], codes[i])),
                    gate=(gate_conn, admin, factor["sid"], make_three, move_window))
    assert statuses(outcomes) == {"pending": 4, "error 54000/60312": N - 4}
    pf = private_factor(admin, factor["sid"])
    assert pf["challenges_in_hour"] == 10 and pf["challenge_hour_start"] == starts["hour"]
    assert len(private_challenges(admin, factor["sid"])) == 3 + 4


def test_factors_per_entity_limit_60315_under_concurrent_creation(admin, pool):
    """32 sessions create factors for one new identity at once, limit 10 factors per entity:
    one entity, exactly 10 factors, 22 refusals with 60315."""
    svc = service_with_limits(admin, max_factors_per_entity=10)
    ident = identity()
    outcomes = race(pool, lambda i, c: call(c, CREATE_FACTOR, (svc, ident, f"phone {i}")))
    for o in outcomes:
        assert o.ok or (o.sqlstate == "54000" and o.twilio == 60315), o
    assert sum(o.ok for o in outcomes) == 10
    assert admin.execute("SELECT count(*) AS n FROM totp.entities WHERE service_sid = %s AND identity = %s",
                         (svc, ident)).fetchone()["n"] == 1
    assert admin.execute("SELECT count(*) AS n FROM totp_private.factors WHERE service_sid = %s AND identity = %s",
                         (svc, ident)).fetchone()["n"] == 10
    assert len({o.row["entity_sid"] for o in outcomes if o.ok}) == 1


def test_factor_creation_rate_limit_60326_under_concurrent_creation(admin, pool):
    svc = service_with_limits(admin, max_factor_creations_per_day=12)
    ident = identity()
    outcomes = race(pool, lambda i, c: call(c, CREATE_FACTOR, (svc, ident, f"phone {i}")))
    for o in outcomes:
        assert o.ok or (o.sqlstate == "54000" and o.twilio == 60326), o
    assert sum(o.ok for o in outcomes) == 12
    entity = admin.execute("SELECT * FROM totp.entities WHERE service_sid = %s AND identity = %s",
                           (svc, ident)).fetchone()
    assert entity["factors_created_in_window"] == 12
    assert admin.execute("SELECT count(*) AS n FROM totp_private.factors WHERE identity = %s",
                         (ident,)).fetchone()["n"] == 12
