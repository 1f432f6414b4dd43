"""totp-verify-server (SPEC §10, issue 14) driven by the official `twilio` Python SDK.

The module starts the server binary itself (built by scripts/test, path in
TOTP_VERIFY_SERVER_BIN) against this module's database, on a free port, and stops it at the end.
The SDK is pointed at it the way SPEC §10 says: `client.verify.base_url = "http://HOST:PORT"`
(twilio 9.13: `Client.verify` is a `twilio.base.domain.Domain` whose `base_url` attribute every
request URL is built from, `Domain.absolute_url`). Response bodies are also fetched raw and
validated against the schemas of Twilio's OpenAPI description (tests/openapi/twilio_verify_v2.openapi.json, MIT).
"""

import http.server
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

import jsonschema
import pyotp
import pytest
import requests
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from conftest import connect, refused, wait_inside_step

ROOT = Path(__file__).resolve().parent.parent
OPENAPI = Path(os.environ.get("TOTP_VERIFY_OPENAPI", ROOT / "tests" / "openapi" / "twilio_verify_v2.openapi.json"))
SERVER_BIN = os.environ.get("TOTP_VERIFY_SERVER_BIN") or str(
    Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "totp-verify-server")

ACCOUNT_A = "AC" + "a1" * 16
TOKEN_A = "token-of-a"
ACCOUNT_B = "AC" + "b2" * 16
TOKEN_B = "token-of-b"
DATE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def database_url(db, user=None):
    # A libpq URI; the socket directory goes in the host parameter.
    return (f"postgresql://{user or os.environ.get('PGUSER', 'postgres')}@/{db}"
            f"?host={os.environ['PGHOST']}&port={os.environ.get('PGPORT', '5432')}")


class Server:
    def __init__(self, db, tmp_path, user=None):
        assert os.access(SERVER_BIN, os.X_OK), f"{SERVER_BIN} is not built (scripts/test builds it)"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.log_path = tmp_path / "server.log"
        self.log = open(self.log_path, "wb")
        env = dict(os.environ, DATABASE_URL=database_url(db, user), TOTP_VERIFY_LISTEN=f"127.0.0.1:{self.port}",
                   TOTP_VERIFY_ACCOUNTS=f"{ACCOUNT_A}:{TOKEN_A},{ACCOUNT_B}:{TOKEN_B}",
                   TOTP_VERIFY_WEBHOOK_POLL_MS="50", TOTP_VERIFY_WEBHOOK_RETRY_MS="200",
                   TOTP_VERIFY_WEBHOOK_RETRY_MAX_MS="5000", TOTP_VERIFY_WEBHOOK_LEASE_MS="1500")
        self.proc = subprocess.Popen([SERVER_BIN], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, f"server exited: {self.log_path.read_text()}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "server did not listen within 30 s"
                time.sleep(0.05)

    def stop(self):
        self.proc.terminate()
        assert self.proc.wait(timeout=10) == 0, "server did not exit cleanly on SIGTERM"
        self.log.close()

    def kill(self):
        """SIGKILL: no shutdown, whatever the server was doing."""
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.log.close()

    def client(self, account=ACCOUNT_A, token=TOKEN_A):
        client = Client(account, token)
        client.verify.base_url = self.base
        return client

    def raw(self, method, path, data=None, auth=(ACCOUNT_A, TOKEN_A), params=None):
        url = path if path.startswith("http") else self.base + path
        r = requests.request(method, url, data=data, auth=auth, params=params, timeout=30)
        return r.status_code, (r.json() if r.content else None)


@pytest.fixture(scope="module")
def server(db, tmp_path_factory):
    s = Server(db, tmp_path_factory.mktemp("rest"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def schemas():
    spec = json.loads(OPENAPI.read_text())
    components = spec["components"]["schemas"]

    def convert(node):
        """OpenAPI 3.0 `nullable` and `$ref` into plain JSON Schema."""
        if isinstance(node, list):
            return [convert(n) for n in node]
        if not isinstance(node, dict):
            return node
        if "$ref" in node:
            out = convert(components[node["$ref"].rsplit("/", 1)[1]])
        else:
            out = {k: convert(v) for k, v in node.items() if k not in ("nullable", "x-twilio", "example")}
        if node.get("nullable"):
            out = {"anyOf": [out, {"type": "null"}]}
        return out

    out = {name: convert(s) for name, s in components.items() if name.startswith("verify.v2.service")}
    # The list bodies: the 200 response schema of each list operation, by its key.
    for path, ops in spec["paths"].items():
        schema = ops.get("get", {}).get("responses", {}).get("200", {}).get("content", {}).get(
            "application/json", {}).get("schema", {})
        keys = [k for k in schema.get("properties", {}) if k != "meta"]
        if "meta" in schema.get("properties", {}) and len(keys) == 1:
            out["list:" + keys[0]] = convert(schema)
    return out


def check_shape(schemas, name, body):
    """Valid against Twilio's schema, with every property of it present and nothing else."""
    schema = schemas[name]
    jsonschema.validate(body, schema)
    assert set(body) == set(schema["properties"]), (name, set(body) ^ set(schema["properties"]))
    for key in ("date_created", "date_updated", "date_responded", "expiration_date"):
        if body.get(key) is not None:
            assert DATE.match(body[key]), (key, body[key])


def check_list(schemas, key, body):
    """A list body valid against Twilio's list schema, its meta complete and its URLs absolute."""
    schema = schemas["list:" + key]
    jsonschema.validate(body, schema)
    assert set(body) == {key, "meta"} and body["meta"]["key"] == key
    meta_props = schema["properties"]["meta"]
    meta_props = meta_props.get("properties") or meta_props["anyOf"][0]["properties"]
    assert set(body["meta"]) == set(meta_props), set(body["meta"]) ^ set(meta_props)
    for name in ("first_page_url", "previous_page_url", "url", "next_page_url"):
        assert body["meta"][name] is None or body["meta"][name].startswith("http://127.0.0.1:"), body["meta"]


def check_error(status, body, http, code):
    assert status == http, (status, body)
    assert body == {"code": code, "message": body["message"], "status": http,
                    "more_info": f"https://www.twilio.com/docs/errors/{code}"}, body
    assert isinstance(body["message"], str) and body["message"]


class sdk_refused:
    """Asserts the block raises the SDK's TwilioRestException with this HTTP status and code."""

    def __init__(self, http, code):
        self.http, self.code = http, code

    def __enter__(self):
        return self

    def __exit__(self, kind, err, tb):
        assert kind is TwilioRestException, f"expected HTTP {self.http} / {self.code}, got {kind}: {err}"
        assert (err.status, err.code) == (self.http, self.code), (err.status, err.code, err.msg)
        return True


def code_at(secret, step_offset=0, **kwargs):
    totp = pyotp.TOTP(secret, **kwargs)
    return totp.at(time.time() + step_offset * totp.interval)


# --- the quickstart -----------------------------------------------------------------------

@pytest.mark.step_bounded
def test_twilio_quickstart_enrols_and_verifies_with_the_sdk(server, schemas, db):
    client = server.client()
    service = client.verify.v2.services.create(friendly_name="Acme Bank", totp_issuer="Acme")
    assert service.sid.startswith("VA") and service.account_sid == ACCOUNT_A
    assert service.totp == {"issuer": "Acme", "time_step": None, "code_length": None, "skew": None}
    entity = client.verify.v2.services(service.sid).entities.create(identity="user-42")
    assert entity.identity == "user-42" and entity.sid.startswith("YE")
    factor = client.verify.v2.services(service.sid).entities("user-42").new_factors.create(
        friendly_name="alice@example.com", factor_type="totp")
    assert factor.status == "unverified" and factor.factor_type == "totp"
    assert factor.config == {"alg": "sha1", "skew": 1, "code_length": 6, "time_step": 30}
    secret = factor.binding["secret"]
    uri = pyotp.parse_uri(factor.binding["uri"])
    assert uri.secret == secret and uri.issuer == "Acme" and uri.name == "alice@example.com"

    # A wrong code is a result, not an error (Twilio since 2021-10-27).
    wrong = "000000" if code_at(secret) != "000000" else "111111"
    f = client.verify.v2.services(service.sid).entities("user-42").factors(factor.sid).update(auth_payload=wrong)
    assert f.status == "unverified"
    code = code_at(secret)
    f = client.verify.v2.services(service.sid).entities("user-42").factors(factor.sid).update(auth_payload=code)
    assert f.status == "verified"

    # The code verification used is spent; the app's next code approves.
    c = client.verify.v2.services(service.sid).entities("user-42").challenges.create(
        factor_sid=factor.sid, auth_payload=code)
    assert c.status == "pending" and c.date_responded is None
    c = client.verify.v2.services(service.sid).entities("user-42").challenges.create(
        factor_sid=factor.sid, auth_payload=code_at(secret, 1))
    assert c.status == "approved" and c.date_responded is not None and c.factor_type == "totp"

    # The same rows as SQL sees them: the account is stored on the service.
    with connect(db) as conn:
        row = conn.execute("SELECT account_sid FROM totp.services WHERE sid = %s", (service.sid,)).fetchone()
        assert row["account_sid"] == ACCOUNT_A
        assert conn.execute("SELECT status FROM totp.challenges WHERE sid = %s", (c.sid,)).fetchone()["status"] == "approved"

    # Every body has Twilio's shape.
    base = f"/v2/Services/{service.sid}"
    for path, name in [(base, "verify.v2.service"),
                       (f"{base}/Entities/user-42", "verify.v2.service.entity"),
                       (f"{base}/Entities/user-42/Factors/{factor.sid}", "verify.v2.service.entity.factor"),
                       (f"{base}/Entities/user-42/Challenges/{c.sid}", "verify.v2.service.entity.challenge")]:
        status, body = server.raw("GET", path)
        assert status == 200, body
        check_shape(schemas, name, body)
        assert body["url"] == server.base + path
        assert "binding" not in body and secret not in json.dumps(body)


@pytest.mark.step_bounded
def test_create_bodies_have_twilio_shapes_and_statuses(server, schemas):
    status, svc = server.raw("POST", "/v2/Services", {"FriendlyName": "Shapes", "Totp.TimeStep": "60",
                                                       "Totp.CodeLength": "8", "Totp.Skew": "2"})
    assert status == 201
    check_shape(schemas, "verify.v2.service", svc)
    assert svc["totp"] == {"issuer": None, "time_step": 60, "code_length": 8, "skew": 2}
    base = f"/v2/Services/{svc['sid']}"
    status, entity = server.raw("POST", f"{base}/Entities", {"Identity": "shape-1"})
    assert status == 201
    check_shape(schemas, "verify.v2.service.entity", entity)
    secret = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
    status, factor = server.raw("POST", f"{base}/Entities/shape-1/Factors", {
        "FactorType": "totp", "FriendlyName": "phone", "Binding.Secret": secret, "Config.Alg": "sha256",
        "Config.CodeLength": "7", "Config.TimeStep": "45", "Config.Skew": "0", "Metadata": '{"os": "android"}'})
    assert status == 201, factor
    check_shape(schemas, "verify.v2.service.entity.new_factor", factor)
    assert factor["binding"]["secret"] == secret and factor["options"] is None
    assert factor["config"] == {"alg": "sha256", "skew": 0, "code_length": 7, "time_step": 45}
    assert factor["metadata"] == {"os": "android"}
    totp = dict(digits=7, interval=45, digest="sha256")
    wait_inside_step(45, margin=5)  # skew 0: the code must still be current when checked
    status, verified = server.raw("POST", f"{base}/Entities/shape-1/Factors/{factor['sid']}",
                                  {"AuthPayload": code_at(secret, **totp)})
    assert (status, verified["status"]) == (200, "verified")
    check_shape(schemas, "verify.v2.service.entity.factor", verified)
    status, challenge = server.raw("POST", f"{base}/Entities/shape-1/Challenges", {
        "FactorSid": factor["sid"], "ExpirationDate": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 600)),
        "Details.Message": "Log in?", "Details.Fields": ['{"label": "IP", "value": "10.0.0.1"}'],
        "HiddenDetails": '{"ip": "10.0.0.1"}'})
    assert status == 201, challenge
    check_shape(schemas, "verify.v2.service.entity.challenge", challenge)
    assert challenge["status"] == "pending" and challenge["responded_reason"] == "none"
    assert challenge["details"] == {"message": "Log in?", "fields": [{"label": "IP", "value": "10.0.0.1"}]}
    assert challenge["hidden_details"] == {"ip": "10.0.0.1"}
    status, answered = server.raw("POST", f"{base}/Entities/shape-1/Challenges/{challenge['sid']}",
                                  {"AuthPayload": code_at(secret, **totp),
                                   "Metadata": '{"via": "rest"}'})
    # The verification's code is spent (no replay), so the same step's code leaves it pending.
    assert (status, answered["status"]) == (200, "pending")
    check_shape(schemas, "verify.v2.service.entity.challenge", answered)
    # Delete answers 204 with no body, and the factor is gone.
    status, body = server.raw("DELETE", f"{base}/Entities/shape-1/Factors/{factor['sid']}")
    assert (status, body) == (204, None)
    status, body = server.raw("GET", f"{base}/Entities/shape-1/Factors/{factor['sid']}")
    check_error(status, body, 404, 20404)


def test_service_update_fetch_and_delete_through_the_sdk(server):
    client = server.client()
    svc = client.verify.v2.services.create(friendly_name="Before")
    updated = client.verify.v2.services(svc.sid).update(friendly_name="After", totp_time_step=45, totp_skew=0)
    assert updated.friendly_name == "After" and updated.totp["time_step"] == 45 and updated.totp["skew"] == 0
    assert client.verify.v2.services(svc.sid).fetch().friendly_name == "After"
    client.verify.v2.services(svc.sid).entities.create(identity="gone-1")
    assert client.verify.v2.services(svc.sid).entities("gone-1").delete() is True
    with sdk_refused(404, 20404):
        client.verify.v2.services(svc.sid).entities("gone-1").fetch()
    assert client.verify.v2.services(svc.sid).delete() is True
    with sdk_refused(404, 20404):
        client.verify.v2.services(svc.sid).fetch()


# --- paging -------------------------------------------------------------------------------

def test_lists_page_as_twilio_does_and_the_sdk_walks_every_page(server, schemas):
    client = server.client()
    svc = client.verify.v2.services.create(friendly_name="Paging")
    identities = [f"page-{i:02d}" for i in range(7)]
    for identity in identities:
        client.verify.v2.services(svc.sid).entities.create(identity=identity)
    listed = client.verify.v2.services(svc.sid).entities.list(page_size=3)
    assert [e.identity for e in listed] == identities
    assert [e.identity for e in client.verify.v2.services(svc.sid).entities.list(limit=4, page_size=3)] == identities[:4]

    path = f"/v2/Services/{svc.sid}/Entities"
    status, page = server.raw("GET", path, params={"PageSize": 3})
    assert status == 200 and len(page["entities"]) == 3
    meta = page["meta"]
    assert meta["key"] == "entities" and meta["page"] == 0 and meta["page_size"] == 3
    assert meta["previous_page_url"] is None
    assert meta["first_page_url"] == f"{server.base}{path}?PageSize=3&Page=0"
    pages = [page]
    while pages[-1]["meta"]["next_page_url"]:
        assert pages[-1]["meta"]["next_page_url"].startswith(server.base + path + "?")
        status, nxt = server.raw("GET", pages[-1]["meta"]["next_page_url"])
        assert status == 200
        pages.append(nxt)
    assert [len(p["entities"]) for p in pages] == [3, 3, 1]
    for p in pages:
        check_list(schemas, "entities", p)
        for item in p["entities"]:
            check_shape(schemas, "verify.v2.service.entity", item)
    assert pages[2]["meta"]["page"] == 2 and pages[2]["meta"]["previous_page_url"] is not None
    status, back = server.raw("GET", pages[2]["meta"]["previous_page_url"])
    assert back["entities"] == pages[1]["entities"]
    # The default page is 50; more than 1000 is refused.
    status, page = server.raw("GET", path)
    assert page["meta"]["page_size"] == 50 and len(page["entities"]) == 7 and page["meta"]["next_page_url"] is None
    for bad in ("0", "1001", "ten"):
        check_error(*server.raw("GET", path, params={"PageSize": bad}), 400, 60306)
    check_error(*server.raw("GET", path, params={"PageToken": "nonsense"}), 400, 60306)


@pytest.mark.step_bounded
def test_challenge_list_filters_by_factor_and_status_and_orders(server, db, schemas):
    client = server.client()
    svc = client.verify.v2.services.create(friendly_name="Challenges")
    entity = client.verify.v2.services(svc.sid).entities("list-1")
    sids = {}
    for name in ("a", "b"):
        f = entity.new_factors.create(friendly_name=name, factor_type="totp")
        entity.factors(f.sid).update(auth_payload=code_at(f.binding["secret"]))
        sids[name] = f.sid
    made = [entity.challenges.create(factor_sid=sids[n]).sid for n in ("a", "b", "a", "a")]
    for_a = entity.challenges.list(factor_sid=sids["a"], page_size=2)
    assert [c.sid for c in for_a] == [made[0], made[2], made[3]]
    assert [c.sid for c in entity.challenges.list(factor_sid=sids["a"], order="desc")] == [made[3], made[2], made[0]]
    assert [c.sid for c in entity.challenges.list(status="pending")] == made
    assert entity.challenges.list(status="approved") == []
    status, page = server.raw("GET", f"/v2/Services/{svc.sid}/Entities/list-1/Challenges",
                              params={"FactorSid": sids["a"], "PageSize": 2, "Order": "desc"})
    check_list(schemas, "challenges", page)
    status, factors = server.raw("GET", f"/v2/Services/{svc.sid}/Entities/list-1/Factors")
    check_list(schemas, "factors", factors)
    assert [f["sid"] for f in factors["factors"]] == [sids["a"], sids["b"]]
    for f in factors["factors"]:
        check_shape(schemas, "verify.v2.service.entity.factor", f)
    status, services = server.raw("GET", "/v2/Services", params={"PageSize": 1000})
    check_list(schemas, "services", services)
    assert svc.sid in [s["sid"] for s in services["services"]]
    assert f"FactorSid={sids['a']}" in page["meta"]["next_page_url"] and "Order=desc" in page["meta"]["next_page_url"]
    check_error(*server.raw("GET", f"/v2/Services/{svc.sid}/Entities/list-1/Challenges", params={"Order": "up"}),
                400, 60306)
    check_error(*server.raw("GET", f"/v2/Services/{svc.sid}/Entities/list-1/Challenges", params={"Status": "ok"}),
                400, 60306)


# --- errors -------------------------------------------------------------------------------

def test_authentication_is_basic_with_an_account_and_its_token(server):
    for auth in (None, (ACCOUNT_A, TOKEN_B), (ACCOUNT_A, ""), ("AC" + "c3" * 16, TOKEN_A), (ACCOUNT_A, TOKEN_A + "x")):
        check_error(*server.raw("GET", "/v2/Services", auth=auth), 401, 20003)
    r = requests.get(server.base + "/v2/Services", headers={"Authorization": "Bearer " + TOKEN_A}, timeout=10)
    check_error(r.status_code, r.json(), 401, 20003)
    with sdk_refused(401, 20003):  # (list() raises the SDK's page error, TwilioException, on any status)
        server.client(ACCOUNT_A, "wrong").verify.v2.services.create(friendly_name="Not made")
    assert server.raw("GET", "/v2/Services", auth=(ACCOUNT_B, TOKEN_B))[0] == 200


@pytest.mark.step_bounded
def test_every_refusal_has_twilio_code_status_and_body(server, db):
    client = server.client()
    svc = client.verify.v2.services.create(friendly_name="Errors")
    base = f"/v2/Services/{svc.sid}"
    missing = "VA" + "0" * 32
    check_error(*server.raw("GET", f"/v2/Services/{missing}"), 404, 20404)
    check_error(*server.raw("POST", f"/v2/Services/{missing}/Entities", {"Identity": "x-1"}), 404, 20404)
    check_error(*server.raw("GET", "/v2/Nothing"), 404, 20404)
    check_error(*server.raw("PUT", "/v2/Services"), 405, 20004)
    # Invalid arguments: 400 with the extension's Twilio number.
    check_error(*server.raw("POST", "/v2/Services", {"FriendlyName": "X", "Totp.TimeStep": "90"}), 400, 60200)
    check_error(*server.raw("POST", "/v2/Services", {"FriendlyName": "X", "Totp.Skew": "two"}), 400, 60200)
    check_error(*server.raw("POST", "/v2/Services", {}), 400, 60200)
    check_error(*server.raw("POST", f"{base}/Entities", {"Identity": "not an identity"}), 400, 60306)
    check_error(*server.raw("POST", f"{base}/Entities/e-1/Factors", {"FriendlyName": "p", "FactorType": "push"}),
                400, 60369)
    bad_secret = "NOT-BASE32-0189"
    status, body = server.raw("POST", f"{base}/Entities/e-1/Factors",
                              {"FriendlyName": "p", "FactorType": "totp", "Binding.Secret": bad_secret})
    check_error(status, body, 400, 60306)
    assert bad_secret not in json.dumps(body)
    check_error(*server.raw("POST", f"{base}/Entities/e-1/Factors",
                            {"FriendlyName": "p", "FactorType": "totp", "Metadata": "{not json"}), 400, 60306)
    # Conflicts and not-found from the extension.
    client.verify.v2.services(svc.sid).entities.create(identity="e-1")
    check_error(*server.raw("POST", f"{base}/Entities", {"Identity": "e-1"}), 409, 60301)
    check_error(*server.raw("POST", f"{base}/Entities/nobody/Challenges", {"FactorSid": "YF" + "0" * 32}), 404, 60392)
    check_error(*server.raw("POST", f"{base}/Entities/e-1/Factors/YF{'0' * 32}", {"AuthPayload": "123456"}),
                404, 60390)
    check_error(*server.raw("POST", f"{base}/Entities/e-1/Challenges/YC{'0' * 32}", {"AuthPayload": "123456"}),
                404, 60391)
    factor = client.verify.v2.services(svc.sid).entities("e-1").new_factors.create(friendly_name="p", factor_type="totp")
    secret = factor.binding["secret"]
    fpath = f"{base}/Entities/e-1/Factors/{factor.sid}"
    # 60318: a challenge on an unverified factor is forbidden.
    check_error(*server.raw("POST", f"{base}/Entities/e-1/Challenges", {"FactorSid": factor.sid}), 403, 60318)
    check_error(*server.raw("POST", fpath, {"AuthPayload": "12x456"}), 400, 60306)
    # 60310: the 6th wrong code on a factor's verification is rate limited; no code is echoed.
    wrong = next(w for w in ("000000", "111111", "222222") if w not in {code_at(secret, d) for d in (-1, 0, 1)})
    for _ in range(5):
        assert server.raw("POST", fpath, {"AuthPayload": wrong})[1]["status"] == "unverified"
    status, body = server.raw("POST", fpath, {"AuthPayload": wrong})
    check_error(status, body, 429, 60310)
    assert wrong not in json.dumps(body)
    with sdk_refused(429, 60310):
        client.verify.v2.services(svc.sid).entities("e-1").factors(factor.sid).update(auth_payload=wrong)

    # Challenge errors on a verified factor: 60312 (creation limit), 60322 (answered), 60308.
    f2 = client.verify.v2.services(svc.sid).entities("e-1").new_factors.create(friendly_name="q", factor_type="totp")
    s2 = f2.binding["secret"]
    assert client.verify.v2.services(svc.sid).entities("e-1").factors(f2.sid).update(
        auth_payload=code_at(s2)).status == "verified"
    with connect(db) as conn:
        conn.execute("SELECT totp.update_service(%s, max_challenges_per_hour => 3, max_challenge_attempts => 2)",
                     (svc.sid,))
    cpath = f"{base}/Entities/e-1/Challenges"
    status, approved = server.raw("POST", cpath, {"FactorSid": f2.sid, "AuthPayload": code_at(s2, 1)})
    assert (status, approved["status"]) == (201, "approved")
    check_error(*server.raw("POST", f"{cpath}/{approved['sid']}", {"AuthPayload": code_at(s2, 1)}), 403, 60322)
    wrong2 = next(w for w in ("000000", "111111", "222222") if w not in {code_at(s2, d) for d in (-1, 0, 1, 2)})
    status, pending = server.raw("POST", cpath, {"FactorSid": f2.sid})
    assert server.raw("POST", f"{cpath}/{pending['sid']}", {"AuthPayload": wrong2})[1]["status"] == "pending"
    assert server.raw("POST", f"{cpath}/{pending['sid']}", {"AuthPayload": wrong2})[1]["status"] == "denied"
    check_error(*server.raw("POST", f"{cpath}/{pending['sid']}", {"AuthPayload": wrong2}), 429, 60308)
    server.raw("POST", cpath, {"FactorSid": f2.sid})
    check_error(*server.raw("POST", cpath, {"FactorSid": f2.sid}), 429, 60312)
    check_error(*server.raw("POST", cpath, {"FactorSid": f2.sid, "ExpirationDate": "soon"}), 400, 60306)


def test_accounts_see_only_their_own_services(server, db):
    a, b = server.client(), server.client(ACCOUNT_B, TOKEN_B)
    mine = a.verify.v2.services.create(friendly_name="Of A")
    a.verify.v2.services(mine.sid).entities.create(identity="iso-1")
    theirs = b.verify.v2.services.create(friendly_name="Of B")
    assert theirs.account_sid == ACCOUNT_B
    with connect(db) as conn:
        over_sql = conn.execute("SELECT sid, account_sid FROM totp.create_service('Over SQL')").fetchone()
    assert over_sql["account_sid"] is None
    listed_a = {s.sid for s in a.verify.v2.services.list()}
    listed_b = {s.sid for s in b.verify.v2.services.list()}
    assert mine.sid in listed_a and theirs.sid in listed_b
    assert mine.sid not in listed_b and theirs.sid not in listed_a
    assert over_sql["sid"] not in listed_a | listed_b
    for sid in (mine.sid, over_sql["sid"]):
        with sdk_refused(404, 20404):
            b.verify.v2.services(sid).fetch()
        with sdk_refused(404, 20404):
            b.verify.v2.services(sid).update(friendly_name="Taken")
        check_error(*server.raw("GET", f"/v2/Services/{sid}/Entities", auth=(ACCOUNT_B, TOKEN_B)), 404, 20404)
        with sdk_refused(404, 20404):
            b.verify.v2.services(sid).entities.create(identity="iso-2")
        with sdk_refused(404, 20404):
            b.verify.v2.services(sid).entities("iso-1").new_factors.create(friendly_name="x", factor_type="totp")
        with sdk_refused(404, 20404):
            b.verify.v2.services(sid).entities("iso-1").delete()
        with sdk_refused(404, 20404):
            b.verify.v2.services(sid).delete()
    # Nothing B tried changed A's service.
    assert a.verify.v2.services(mine.sid).fetch().friendly_name == "Of A"
    assert [e.identity for e in a.verify.v2.services(mine.sid).entities.list()] == ["iso-1"]
    with connect(db) as conn:
        assert conn.execute("SELECT count(*) AS n FROM totp.entities WHERE identity = 'iso-2'").fetchone()["n"] == 0


def test_create_service_account_sid_over_sql(conn):
    row = conn.execute("SELECT * FROM totp.create_service('Owned', account_sid => %s)", (ACCOUNT_A,)).fetchone()
    assert row["account_sid"] == ACCOUNT_A
    for bad in ("AC123", "ac" + "a1" * 16, "AC" + "A1" * 16, "VA" + "a1" * 16):
        with refused("22023", 60200):
            conn.execute("SELECT totp.create_service('Owned', account_sid => %s)", (bad,))
    sid = "VA" + "5e" * 16
    conn.execute("SELECT totp.create_service('Owned', sid => %s, account_sid => %s)", (sid, ACCOUNT_A))
    # Replaying the creation returns it; another account may not claim it.
    conn.execute("SELECT totp.create_service('Owned', sid => %s, account_sid => %s)", (sid, ACCOUNT_A))
    with refused("23505"):
        conn.execute("SELECT totp.create_service('Owned', sid => %s, account_sid => %s)", (sid, ACCOUNT_B))


def test_the_server_log_holds_no_secret_or_code(server):
    client = server.client()
    svc = client.verify.v2.services.create(friendly_name="Logs")
    factor = client.verify.v2.services(svc.sid).entities("log-1").new_factors.create(
        friendly_name="p", factor_type="totp", binding_secret="KRSXG5CTMVRXEZLUKRSXG5CTMVRXEZLU")
    code = code_at(factor.binding["secret"])
    client.verify.v2.services(svc.sid).entities("log-1").factors(factor.sid).update(auth_payload=code)
    server.raw("POST", f"/v2/Services/{svc.sid}/Entities/log-1/Factors",
               {"FactorType": "totp", "FriendlyName": "p", "Binding.Secret": "SHORTSECRET"})
    log = server.log_path.read_bytes()
    assert b"listening on" in log
    for needle in ("KRSXG5CTMVRXEZLU", "SHORTSECRET", code):
        assert needle.encode() not in log


def test_bad_configuration_exits_non_zero_with_a_clear_message(db):
    assert os.access(SERVER_BIN, os.X_OK), f"{SERVER_BIN} is not built"
    good = dict(os.environ, DATABASE_URL=database_url(db), TOTP_VERIFY_LISTEN=f"127.0.0.1:{free_port()}",
                TOTP_VERIFY_ACCOUNTS=f"{ACCOUNT_A}:{TOKEN_A}")
    for change, words in [({"TOTP_VERIFY_ACCOUNTS": ""}, "TOTP_VERIFY_ACCOUNTS"),
                          ({"TOTP_VERIFY_ACCOUNTS": "ACnope:x"}, "account SID"),
                          ({"TOTP_VERIFY_LISTEN": "localhost"}, "TOTP_VERIFY_LISTEN"),
                          ({"TOTP_VERIFY_LISTEN": "no-such-host.invalid:8080"}, "TOTP_VERIFY_LISTEN"),
                          ({"DATABASE_URL": ""}, "DATABASE_URL"),
                          ({"DATABASE_URL": database_url("no_such_database_here")}, "cannot connect")]:
        r = subprocess.run([SERVER_BIN], env={**good, **change}, capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and words in r.stderr, (change, r.returncode, r.stderr)


# --- webhooks -----------------------------------------------------------------------------

class Receiver:
    """A webhook receiver: records every POST (its signature and parameters) and answers 503
    while told to fail."""

    def __init__(self):
        self.received = []
        self.fail_next = 0
        self.fail_all = False
        self.hold = False  # answer nothing until `released` is set
        self.released = threading.Event()
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                params = dict(urllib.parse.parse_qsl(body, keep_blank_values=True))
                with receiver.lock:
                    held = receiver.hold
                    failing = held or receiver.fail_all or receiver.fail_next > 0
                    receiver.fail_next -= 1 if receiver.fail_next > 0 else 0
                    receiver.received.append({"at": time.monotonic(), "path": self.path, "params": params,
                                              "signature": self.headers.get("X-Twilio-Signature"),
                                              "ok": not failing, "held": held})
                if held:
                    receiver.released.wait(30)
                self.send_response(503 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hooks/verify?tenant=acme"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def delivered(self):
        with self.lock:
            return [r for r in self.received if r["ok"]]

    def wait_for(self, predicate, what, timeout=60):
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"not within {timeout} s: {what}; received {self.received}"
            time.sleep(0.05)

    def close(self):
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def enrol(client, service_sid, identity):
    """A verified factor: (factor, secret)."""
    entity = client.verify.v2.services(service_sid).entities(identity)
    factor = entity.new_factors.create(friendly_name=identity, factor_type="totp")
    secret = factor.binding["secret"]
    assert entity.factors(factor.sid).update(auth_payload=code_at(secret)).status == "verified"
    return factor, secret


def events_of(db, service_sid):
    with connect(db) as conn:
        return conn.execute("SELECT id::text AS id, type, factor_sid, challenge_sid FROM totp.events "
                            "WHERE service_sid = %s ORDER BY date_created", (service_sid,)).fetchall()


def test_webhooks_are_created_fetched_listed_updated_and_deleted(server, schemas):
    client = server.client()
    svc = client.verify.v2.services.create(friendly_name="Hooks")
    hooks = client.verify.v2.services(svc.sid).webhooks
    made = hooks.create(friendly_name="all", event_types=["*"], webhook_url="https://example.com/a")
    assert made.sid.startswith("YW") and made.status == "enabled" and made.version == "v2"
    assert made.event_types == ["*"] and made.webhook_method == "POST" and made.account_sid == ACCOUNT_A
    second = hooks.create(friendly_name="some", event_types=["factor.created", "challenge.approved"],
                          webhook_url="https://example.com/b", status="disabled", resource_version="v1")
    assert [w.sid for w in hooks.list(page_size=1)] == [made.sid, second.sid]
    updated = hooks(second.sid).update(status="enabled", event_types=["challenge.denied"])
    assert (updated.status, updated.event_types, updated.version) == ("enabled", ["challenge.denied"], "v1")
    assert hooks(second.sid).fetch().event_types == ["challenge.denied"]
    status, body = server.raw("GET", f"/v2/Services/{svc.sid}/Webhooks/{made.sid}")
    assert status == 200
    check_shape(schemas, "verify.v2.service.webhook", body)
    status, page = server.raw("GET", f"/v2/Services/{svc.sid}/Webhooks")
    check_list(schemas, "webhooks", page)
    assert hooks(made.sid).delete() is True
    with sdk_refused(404, 20404):
        hooks(made.sid).fetch()
    base = f"/v2/Services/{svc.sid}/Webhooks"
    check_error(*server.raw("POST", base, {"FriendlyName": "x", "EventTypes": "factor.exploded",
                                           "WebhookUrl": "https://example.com"}), 400, 60306)
    check_error(*server.raw("POST", base, {"FriendlyName": "x", "EventTypes": "*"}), 400, 60306)
    check_error(*server.raw("POST", base, {"FriendlyName": "x", "EventTypes": "*", "WebhookUrl": "ftp://x"}), 400, 60306)
    other = (ACCOUNT_B, TOKEN_B)
    check_error(*server.raw("GET", f"{base}/{second.sid}", auth=other), 404, 20404)
    check_error(*server.raw("POST", base, {"FriendlyName": "x", "EventTypes": "*", "WebhookUrl": "https://e.com"},
                            auth=other), 404, 20404)
    check_error(*server.raw("DELETE", f"{base}/{second.sid}", auth=other), 404, 20404)


@pytest.mark.step_bounded
def test_events_are_delivered_signed_as_twilio_signs(server, db, receiver):
    client = server.client()
    svc = client.verify.v2.services.create(friendly_name="Delivered")
    client.verify.v2.services(svc.sid).webhooks.create(
        friendly_name="mine", webhook_url=receiver.url,
        event_types=["factor.created", "factor.verified", "challenge.approved"])
    factor, secret = enrol(client, svc.sid, "hook-1")
    client.verify.v2.services(svc.sid).entities("hook-1").challenges.create(
        factor_sid=factor.sid, auth_payload=code_at(secret, 1))
    receiver.wait_for(lambda: len(receiver.delivered()) >= 3, "3 deliveries")
    validator, impostor = RequestValidator(TOKEN_A), RequestValidator(TOKEN_B)
    for r in receiver.received:
        assert r["path"] == "/hooks/verify?tenant=acme"
        assert validator.validate(receiver.url, r["params"], r["signature"]), r
        assert not impostor.validate(receiver.url, r["params"], r["signature"])
        tampered = dict(r["params"], factor_sid="YF" + "0" * 32)
        assert not validator.validate(receiver.url, tampered, r["signature"])
    events = {e["id"]: e for e in events_of(db, svc.sid)}
    got = {r["params"]["uuid"]: r["params"] for r in receiver.delivered()}
    assert len(got) == len(receiver.delivered()) == 3, "one delivery per event, each with its own uuid"
    assert {p["type"] for p in got.values()} == {"factor.created", "factor.verified", "challenge.approved"}
    for uuid, p in got.items():
        assert events[uuid]["type"] == p["type"] and events[uuid]["factor_sid"] == p["factor_sid"] == factor.sid
        assert (p["account_sid"], p["service_sid"], p["entity_identity"], p["factor_type"]) == \
            (ACCOUNT_A, svc.sid, "hook-1", "totp")
        assert DATE.match(p["date_created"])
        assert (p.get("challenge_sid") is not None) == p["type"].startswith("challenge.")
        assert secret not in json.dumps(p)
    # An event type the webhook did not ask for is not sent: factor.deleted comes before the
    # factor.created that follows it, and only the latter arrives.
    client.verify.v2.services(svc.sid).entities("hook-1").factors(factor.sid).delete()
    later = client.verify.v2.services(svc.sid).entities("hook-1").new_factors.create(
        friendly_name="later", factor_type="totp")
    receiver.wait_for(lambda: any(r["params"]["factor_sid"] == later.sid for r in receiver.delivered()),
                      "the later factor.created")
    assert "factor.deleted" not in {r["params"]["type"] for r in receiver.received}


def test_a_failing_receiver_gets_the_event_again_later_with_backoff(server, db, receiver):
    client = server.client()
    svc = client.verify.v2.services.create(friendly_name="Retries")
    client.verify.v2.services(svc.sid).webhooks.create(friendly_name="all", webhook_url=receiver.url, event_types=["*"])
    receiver.fail_next = 4
    factor = client.verify.v2.services(svc.sid).entities("retry-1").new_factors.create(
        friendly_name="p", factor_type="totp")
    receiver.wait_for(lambda: len(receiver.delivered()) == 1, "delivery after 4 failures")
    attempts = [r for r in receiver.received if r["params"]["factor_sid"] == factor.sid]
    assert [r["ok"] for r in attempts] == [False, False, False, False, True]
    assert len({r["params"]["uuid"] for r in attempts}) == 1  # one event, one uuid, every attempt
    gaps = [b["at"] - a["at"] for a, b in zip(attempts, attempts[1:])]
    # The waits are 200, 400, 800, 1600 ms (TOTP_VERIFY_WEBHOOK_RETRY_MS=200), scheduled after each
    # failed answer: lower bounds only, whatever the machine's speed adds.
    assert all(gap >= least for gap, least in zip(gaps, (0.19, 0.38, 0.76, 1.52))), gaps


def test_nothing_is_lost_when_the_server_is_killed_or_was_down(receiver, tmp_path):
    """Failed deliveries, a delivery in flight when the server is SIGKILLed (its lease,
    TOTP_VERIFY_WEBHOOK_LEASE_MS=1500, runs out) and an event made while it is down all arrive
    once the server runs again."""
    name = "t_rest_killed_" + uuid.uuid4().hex[:6]
    with connect("postgres") as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        with connect(name) as c:
            c.execute("CREATE EXTENSION totp_verify")
        first = Server(name, tmp_path / "first")
        client = first.client()
        svc = client.verify.v2.services.create(friendly_name="Killed")
        client.verify.v2.services(svc.sid).webhooks.create(friendly_name="all", webhook_url=receiver.url,
                                                           event_types=["*"])
        receiver.fail_all = True
        before = client.verify.v2.services(svc.sid).entities("kill-1").new_factors.create(
            friendly_name="before", factor_type="totp")
        receiver.wait_for(lambda: len(receiver.received) >= 2, "two failed attempts")
        # Then the receiver stops answering: the server is killed while it waits for an answer.
        with receiver.lock:
            receiver.fail_all, receiver.hold = False, True
        mid = client.verify.v2.services(svc.sid).entities("kill-1").new_factors.create(
            friendly_name="mid", factor_type="totp")
        receiver.wait_for(lambda: any(r["held"] and r["params"]["factor_sid"] == mid.sid for r in receiver.received),
                          "the delivery in flight")
        first.kill()
        with receiver.lock:
            receiver.hold = False
        receiver.released.set()
        # While the server is down: an event made over SQL.
        with connect(name) as c:
            down = c.execute("SELECT sid FROM totp.create_factor(%s, 'kill-2', 'down')", (svc.sid,)).fetchone()["sid"]
        second = Server(name, tmp_path / "second")
        try:
            receiver.wait_for(
                lambda: {before.sid, mid.sid, down} <= {r["params"]["factor_sid"] for r in receiver.delivered()},
                "every event delivered after the restart")
        finally:
            second.stop()
        assert all(RequestValidator(TOKEN_A).validate(receiver.url, r["params"], r["signature"])
                   for r in receiver.received)
    finally:
        with connect("postgres") as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_the_documented_grants_are_enough_for_the_server(server, db, tmp_path):
    """README, REST server: the grant sets, service administration, the events, and a
    totp_server schema the role owns (made for it beforehand: no CREATE on the database)."""
    role = "rest_app_" + uuid.uuid4().hex[:6]
    with connect(db) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute("SELECT totp.grant_enrolment(%s), totp.grant_verification(%s)", (role, role))
        conn.execute(f"GRANT EXECUTE ON FUNCTION totp.create_service, totp.update_service, totp.delete_service TO {role}")
        conn.execute(f"GRANT SELECT ON totp.events TO {role}")
        conn.execute(f"REVOKE CREATE ON DATABASE \"{db}\" FROM PUBLIC")
        exists = conn.execute("SELECT to_regnamespace('totp_server') IS NOT NULL AS e").fetchone()["e"]
        assert exists, "the module's server made schema totp_server"
        conn.execute(f"ALTER SCHEMA totp_server OWNER TO {role}")
        for table in ("webhooks", "deliveries", "cursor"):
            conn.execute(f"ALTER TABLE totp_server.{table} OWNER TO {role}")
    app = Server(db, tmp_path / "role", user=role)
    try:
        client = app.client()
        svc = client.verify.v2.services.create(friendly_name="As a role")
        factor, secret = enrol(client, svc.sid, "role-1")
        assert client.verify.v2.services(svc.sid).entities("role-1").challenges.create(
            factor_sid=factor.sid, auth_payload=code_at(secret, 1)).status == "approved"
        assert [c.status for c in client.verify.v2.services(svc.sid).entities("role-1").challenges.list()] == ["approved"]
        client.verify.v2.services(svc.sid).webhooks.create(friendly_name="w", event_types=["*"],
                                                           webhook_url="http://127.0.0.1:9/none")
        assert client.verify.v2.services(svc.sid).entities("role-1").delete() is True
        assert client.verify.v2.services(svc.sid).delete() is True
    finally:
        app.stop()
        with connect(db) as conn:
            for table in ("webhooks", "deliveries", "cursor"):
                conn.execute(f"ALTER TABLE totp_server.{table} OWNER TO postgres")
            conn.execute("ALTER SCHEMA totp_server OWNER TO postgres")
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def test_an_event_committed_after_a_later_one_is_still_delivered(server, db, receiver):
    """The cursor passes an event whose transaction is still open; the overlap rescan finds it
    once it commits."""
    client = server.client()
    svc = client.verify.v2.services.create(friendly_name="Late")
    client.verify.v2.services(svc.sid).webhooks.create(friendly_name="all", webhook_url=receiver.url, event_types=["*"])
    with connect(db, autocommit=False) as slow:
        late = slow.execute("SELECT sid FROM totp.create_factor(%s, 'late-1', 'late')", (svc.sid,)).fetchone()["sid"]
        early = client.verify.v2.services(svc.sid).entities("late-2").new_factors.create(
            friendly_name="early", factor_type="totp")
        receiver.wait_for(lambda: any(r["params"]["factor_sid"] == early.sid for r in receiver.delivered()),
                          "the later event, committed first")
        with connect(db) as conn:
            seen = conn.execute("SELECT seen FROM totp_server.cursor").fetchone()["seen"]
            made = conn.execute("SELECT date_created FROM totp.events WHERE factor_sid = %s", (early.sid,)).fetchone()
        assert seen >= made["date_created"], "the cursor passed the open transaction's event"
        slow.commit()
    receiver.wait_for(lambda: any(r["params"]["factor_sid"] == late for r in receiver.delivered()),
                      "the event committed late")
