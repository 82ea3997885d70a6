"""Tests for deploy/sym/impl.py (the Sym flow's hooks), run with the stand-in sym.sdk in stubs/.

    pytest deploy/sym/tests

The end-to-end test at the bottom runs only when a real service is up; see its docstring.
"""

import base64
import builtins
import hashlib
import hmac
import importlib.util
import json
import os
import random
import socket
import time
import uuid
from pathlib import Path

import pytest

from conftest import SYM_DIR, make_event, shared_reference_dir

import impl

RNG_SEED = 20261124


def expected_signature(secret, msg_id, timestamp, body):
    """Independent Standard Webhooks signer (stdlib only) to check impl against."""
    raw = secret[len("whsec_"):] if secret.startswith("whsec_") else secret
    key = base64.b64decode(raw + "=" * (-len(raw) % 4))
    mac = hmac.new(key, b"%s.%s.%s" % (msg_id.encode(), str(timestamp).encode(), body), hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def load_impl_without(blocked):
    """A fresh copy of impl.py imported while the named stdlib modules cannot be imported."""
    real_import = builtins.__import__

    def guarded_import(name, *args, **kwargs):
        if name.split(".")[0] in blocked:
            raise ImportError("blocked for this test: " + name)
        return real_import(name, *args, **kwargs)

    spec = importlib.util.spec_from_file_location("impl_restricted", SYM_DIR / "impl.py")
    module = importlib.util.module_from_spec(spec)
    builtins.__import__ = guarded_import
    try:
        spec.loader.exec_module(module)
    finally:
        builtins.__import__ = real_import
    return module


# ------------------------------------------------------------------------------------------
# Pure-Python primitives agree with the standard library
# ------------------------------------------------------------------------------------------

# Lengths around the 64-byte block and the 55/56-byte padding boundary, plus random ones.
BOUNDARY_LENGTHS = [0, 1, 2, 3, 31, 32, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 1000]


def _random_lengths(rng, count, upper):
    return BOUNDARY_LENGTHS + [rng.randrange(0, upper) for _ in range(count - len(BOUNDARY_LENGTHS))]


def test_pure_sha256_matches_hashlib():
    rng = random.Random(RNG_SEED)
    for n in _random_lengths(rng, 300, 400):
        data = rng.randbytes(n)
        assert impl.pure_sha256(data) == hashlib.sha256(data).digest(), n


def test_pure_sha1_matches_hashlib():
    rng = random.Random(RNG_SEED + 1)
    for n in _random_lengths(rng, 200, 400):
        data = rng.randbytes(n)
        assert impl.pure_sha1(data) == hashlib.sha1(data).digest(), n


def test_pure_hmac_sha256_matches_stdlib():
    rng = random.Random(RNG_SEED + 2)
    key_lengths = [0, 1, 16, 24, 32, 63, 64, 65, 100, 128, 129, 200, 1000]
    cases = 0
    for i in range(400):
        # Cover keys shorter than, equal to and longer than the 64-byte block (hashed first).
        key = rng.randbytes(key_lengths[i % len(key_lengths)] if i < 130 else rng.randrange(0, 300))
        msg = rng.randbytes(rng.randrange(0, 600))
        assert impl.pure_hmac_sha256(key, msg) == hmac.new(key, msg, hashlib.sha256).digest(), (len(key), len(msg))
        cases += 1
    assert cases == 400


def test_pure_base64_matches_stdlib():
    rng = random.Random(RNG_SEED + 3)
    for n in _random_lengths(rng, 400, 200):
        data = rng.randbytes(n)
        encoded = base64.b64encode(data).decode()
        assert impl.pure_b64encode(data) == encoded
        assert impl.pure_b64decode(encoded) == data
        assert impl.pure_b64decode(encoded.rstrip("=")) == data  # unpadded input is accepted


@pytest.mark.parametrize("bad", ["%%%", "abc!", "a", "ab-c", "ab_c", "ab c="])
def test_pure_base64_refuses_garbage(bad):
    with pytest.raises(ValueError):
        impl.pure_b64decode(bad)
    with pytest.raises(ValueError):  # and so does the stdlib-backed path
        impl.b64decode(bad)


def test_pure_uuid5_matches_uuid_module():
    rng = random.Random(RNG_SEED + 4)
    for _ in range(200):
        namespace = str(uuid.UUID(bytes=rng.randbytes(16)))
        name = "".join(rng.choice("abcXYZ:-_0123456789é🚀") for _ in range(rng.randrange(0, 80)))
        assert impl.pure_uuid5(namespace, name) == str(uuid.uuid5(uuid.UUID(namespace), name))


# ------------------------------------------------------------------------------------------
# Signatures: the Standard Webhooks vectors from tests/fixtures
# ------------------------------------------------------------------------------------------


def _vector_cases():
    path = shared_reference_dir() / "standard-webhooks-vectors.json"
    if not path.is_file():
        raise FileNotFoundError(
            "%s not found (it is part of the repository)" % path
        )
    return json.loads(path.read_text(encoding="utf-8"))["cases"]


# Cases whose signature is right for their own (id, timestamp, body) but which a verifier refuses
# for the timestamp alone: the signer must still reproduce them.
TIMING_ONLY = {"too-old", "too-new"}


@pytest.mark.parametrize("case", _vector_cases(), ids=lambda c: c["name"])
@pytest.mark.parametrize("variant", ["stdlib", "pure"])
def test_signature_matches_standard_webhooks_vectors(case, variant):
    module = impl if variant == "stdlib" else load_impl_without({"hmac", "hashlib", "base64"})
    headers = case["headers"]
    offered = headers.get("webhook-signature", "").split(" ")
    body = case["body"].encode("utf-8")
    ours = set()
    for secret in case["secrets"]:
        try:
            timestamp = int(headers["webhook-timestamp"])
        except ValueError:
            timestamp = headers["webhook-timestamp"]
        ours.add(module.sign(secret, headers["webhook-id"], timestamp, body))
    matches = any(sig in offered for sig in ours)
    assert matches == (case["valid"] or case["name"] in TIMING_ONLY), case["why"]


def test_restricted_runtime_uses_the_fallbacks_end_to_end():
    restricted = load_impl_without({"hmac", "hashlib", "base64", "uuid", "time"})
    assert restricted._hmac is None and restricted._base64 is None
    assert restricted._uuid is None and restricted._time is None
    rng = random.Random(RNG_SEED + 5)
    for _ in range(50):
        secret = "whsec_" + base64.b64encode(rng.randbytes(rng.choice([24, 32, 64, 100]))).decode()
        body = rng.randbytes(rng.randrange(0, 300))
        ts = rng.randrange(0, 2**33)
        assert restricted.sign(secret, "msg_x", ts, body) == expected_signature(secret, "msg_x", ts, body)
    assert restricted.stable_event_id("a:run:b:1.0.0:c", "approve") == impl.stable_event_id("a:run:b:1.0.0:c", "approve")
    started = time.monotonic()
    restricted.sleep(0.05)
    assert time.monotonic() - started >= 0.05


# ------------------------------------------------------------------------------------------
# The log entry
# ------------------------------------------------------------------------------------------


def test_log_entry_has_the_schema_v4_shape_of_the_sample():
    sample = json.loads((shared_reference_dir() / "sym-approve-event.json").read_text(encoding="utf-8"))
    entry = impl.build_log_entry(make_event(), "approve")
    for key in ("meta", "state", "run", "fields", "type"):
        assert entry[key] == sample[key], key
    assert entry["event"] == sample["event"]
    assert entry["actor"] == sample["actor"]
    assert str(uuid.UUID(entry["id"])) == entry["id"]

    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((shared_reference_dir() / "sym-log-entry.schema.json").read_text(encoding="utf-8"))
    jsonschema.validate(entry, schema, format_checker=jsonschema.FormatChecker())


def test_log_entry_id_is_stable_per_run_and_event_type():
    a = impl.build_log_entry(make_event(), "approve")["id"]
    assert a == impl.build_log_entry(make_event(), "approve")["id"]  # Sym retries the hook
    assert a != impl.build_log_entry(make_event(), "deny")["id"]
    other_run = make_event(run_srn="acme:run:ci-approval:1.0.0:0a5c2d6e-0000-4000-8000-000000000001")
    assert a != impl.build_log_entry(other_run, "approve")["id"]


def test_missing_sdk_details_fall_back_instead_of_failing():
    event = make_event()
    del event.channel, event.srn, event.template
    event.meta = None
    event.user.identities = {}
    entry = impl.build_log_entry(event, "approve")
    assert entry["event"]["channel"] == "internal"
    assert entry["event"]["template"] == impl.DEFAULT_TEMPLATE_SRN
    assert entry["actor"]["identity"] == {"service": "sym", "external_id": "alice@example.com"}


# ------------------------------------------------------------------------------------------
# Delivery and retries (against a local stub server)
# ------------------------------------------------------------------------------------------

SECRET = "whsec_a4ayc/80/OGda4BO/1o/V0etpOqiLx1J"


def _assert_signed(request):
    h = request["headers"]
    assert h["webhook-signature"] == expected_signature(SECRET, h["webhook-id"], h["webhook-timestamp"], request["body"])
    assert h["content-type"] == "application/json"


def test_retries_503_then_succeeds_on_202(scripted_server):
    server = scripted_server([503, 202])
    entry = impl.build_log_entry(make_event(), "approve")
    response = impl.deliver(server.url + "/webhooks/sym", SECRET, entry, backoff=0.01)
    assert response.status_code == 202
    assert len(server.requests) == 2
    first, second = server.requests
    assert first["path"] == second["path"] == "/webhooks/sym"
    # Same message id and body on every attempt: the service deduplicates on them.
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"]
    assert first["body"] == second["body"]
    assert json.loads(first["body"]) == entry
    for request in server.requests:
        _assert_signed(request)


def test_gives_up_after_repeated_5xx(scripted_server):
    server = scripted_server([500, 502, 503, 504])
    entry = impl.build_log_entry(make_event(), "approve")
    with pytest.raises(impl.DeliveryError, match="HTTP 504"):
        impl.deliver(server.url + "/webhooks/sym", SECRET, entry, attempts=4, backoff=0.01)
    assert len(server.requests) == 4


@pytest.mark.parametrize("status", [400, 401, 413, 422])
def test_does_not_retry_4xx(scripted_server, status):
    server = scripted_server([status, 202])
    entry = impl.build_log_entry(make_event(), "approve")
    with pytest.raises(impl.DeliveryError, match="HTTP %d" % status):
        impl.deliver(server.url + "/webhooks/sym", SECRET, entry, backoff=0.01)
    assert len(server.requests) == 1


def test_retries_connection_errors_then_gives_up():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    entry = impl.build_log_entry(make_event(), "approve")
    started = time.monotonic()
    with pytest.raises(impl.DeliveryError, match="after 3 attempts"):
        impl.deliver("http://127.0.0.1:%d/webhooks/sym" % port, SECRET, entry, attempts=3, backoff=0.05)
    assert time.monotonic() - started >= 0.05 + 0.1  # it backed off between attempts


def test_after_approve_hook_posts_the_signed_entry(scripted_server):
    server = scripted_server([202])
    event = make_event(approver_url=server.url + "/")  # a trailing slash is tolerated
    impl.after_approve(event)
    (request,) = server.requests
    assert request["path"] == "/webhooks/sym"
    _assert_signed(request)
    body = json.loads(request["body"])
    assert body["event"]["type"] == "approve"
    assert body["fields"]["workflow_id"] == "7b2d6c1e-8f3a-4b5c-9d0e-1f2a3b4c5d6e"
    assert request["headers"]["webhook-id"] == "msg_" + body["id"].replace("-", "")


def test_after_deny_hook_sends_a_deny_event(scripted_server):
    server = scripted_server([202])
    impl.after_deny(make_event(approver_url=server.url, event_type="deny"))
    (request,) = server.requests
    assert json.loads(request["body"])["event"]["type"] == "deny"


def test_on_request_denies_requests_without_a_workflow_uuid(scripted_server):
    assert impl.on_request(make_event()) is None
    outcome = impl.on_request(make_event(workflow_id="not-a-uuid"))
    assert outcome.name == "deny"
    # ...and the deny that follows has nothing to send.
    server = scripted_server([202])
    impl.after_deny(make_event(approver_url=server.url, workflow_id="not-a-uuid"))
    assert server.requests == []


def test_get_approvers_routes_to_the_configured_channel():
    channel = impl.get_approvers(make_event())
    assert channel.name == "#ci-approvals" and channel.allow_self is False


# ------------------------------------------------------------------------------------------
# End to end, against the real running service and its fake CircleCI
# ------------------------------------------------------------------------------------------

E2E_VARS = ("APPROVER_E2E_URL", "APPROVER_E2E_SECRET", "APPROVER_E2E_CALLS_FILE")


def _approve_calls(calls_file, workflow_id):
    """The fake CircleCI's recorded approve calls (POST .../workflow/<id>/approve/...) as dicts."""
    path = Path(calls_file)
    if not path.exists():
        return []
    needle = "/workflow/%s/approve/" % workflow_id
    calls = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if needle not in line:
            continue
        try:
            call = json.loads(line)
        except ValueError:
            continue
        if isinstance(call, dict) and str(call.get("method", "POST")).upper() == "POST":
            calls.append(call)
    return calls


@pytest.mark.skipif(
    not all(os.environ.get(v) for v in E2E_VARS),
    reason="end-to-end test: set %s (and APPROVER_E2E_WORKFLOW_ID)" % ", ".join(E2E_VARS),
)
def test_e2e_hook_against_running_service():
    """The real hook code against the real service.

    APPROVER_E2E_URL          the service's base URL, e.g. http://127.0.0.1:8080
    APPROVER_E2E_SECRET       a webhook secret the service accepts (whsec_...)
    APPROVER_E2E_CALLS_FILE   the fake CircleCI's --calls-file
    APPROVER_E2E_WORKFLOW_ID  the fake CircleCI's --workflow-id (the hold job it serves)
    """
    workflow_id = os.environ.get("APPROVER_E2E_WORKFLOW_ID")
    assert workflow_id, "APPROVER_E2E_WORKFLOW_ID must name the workflow the fake CircleCI serves"
    base = os.environ["APPROVER_E2E_URL"].rstrip("/")
    if base.endswith(impl.WEBHOOK_PATH):
        base = base[: -len(impl.WEBHOOK_PATH)]
    calls_file = os.environ["APPROVER_E2E_CALLS_FILE"]
    before = len(_approve_calls(calls_file, workflow_id))

    # A fresh run, so the service has never seen this event id.
    event = make_event(
        secret=os.environ["APPROVER_E2E_SECRET"],
        approver_url=base,
        workflow_id=workflow_id,
        run_srn="acme:run:ci-approval:1.0.0:%s" % uuid.uuid4(),
    )
    response = impl.send_event(event, "approve")
    assert response.status_code == 202, response.text

    deadline = time.monotonic() + 20
    while len(_approve_calls(calls_file, workflow_id)) < before + 1 and time.monotonic() < deadline:
        time.sleep(0.25)
    calls = _approve_calls(calls_file, workflow_id)
    assert len(calls) == before + 1, "want one new approve call at the fake CircleCI, got %d" % (len(calls) - before)
    # Fields the fake records: the call carried the right token and CircleCI accepted it.
    assert calls[-1].get("token_ok", True) is not False, calls[-1]
    assert 200 <= int(calls[-1].get("status", 202)) < 300, calls[-1]

    # Sym retrying the hook (same run, same event type) must not approve again.
    impl.after_approve(event)
    time.sleep(3)
    assert len(_approve_calls(calls_file, workflow_id)) == before + 1, "a redelivered event approved twice"
