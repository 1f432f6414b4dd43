"""The SQL API called the way an application would: positional arguments, then named ones
(`=>`), one row back. Shared by the client tests."""

import uuid


def ident(prefix="user"):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def call(conn, fn, *args, **named):
    parts = ["%s"] * len(args) + [f"{k} => %s" for k in named]
    return conn.execute(f"SELECT * FROM totp.{fn}({', '.join(parts)})", [*args, *named.values()]).fetchone()


def service(conn, name="Acme", **kwargs):
    return call(conn, "create_service", name, **kwargs)


def factor(conn, svc, identity, name="phone", **kwargs):
    return call(conn, "create_factor", svc["sid"], identity, name, **kwargs)


def verify(conn, svc, identity, f, code):
    return call(conn, "verify_factor", svc["sid"], identity, f["sid"], code)


def challenge(conn, svc, identity, f, code=None, **kwargs):
    if code is not None:
        kwargs["auth_payload"] = code
    return call(conn, "create_challenge", svc["sid"], identity, f["sid"], **kwargs)


def answer(conn, svc, identity, ch, code, **kwargs):
    return call(conn, "update_challenge", svc["sid"], identity, ch["sid"], code, **kwargs)
