"""Unit tests for deploy/sym/impl.py (the Sym flow's hooks), imported as plain Python with the
published sym-sdk, on events built from the SDK's abstract classes (sym_runtime.py). The same
file run inside RestrictedPython, every handler, the retry paths and the end-to-end run against
the real service are in test_sandbox.py.

    pytest deploy/sym/tests
"""

import ast
import base64
import datetime
import hashlib
import hmac
import importlib
import importlib.metadata
import json
import random
import re
import uuid

import pytest
from sym.sdk.event import Payload
from sym.sdk.user import User

import sym_runtime
from conftest import SYM_DIR, TESTS_DIR, make_event, shared_reference_dir

import impl

RNG_SEED = 20261124


def expected_signature(secret, msg_id, timestamp, body):
    """Independent Standard Webhooks signer (stdlib only) to check impl against."""
    raw = secret[len("whsec_"):] if secret.startswith("whsec_") else secret
    key = base64.b64decode(raw + "=" * (-len(raw) % 4))
    mac = hmac.new(key, b"%s.%s.%s" % (msg_id.encode(), str(timestamp).encode(), body), hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


# ------------------------------------------------------------------------------------------
# The plain-Python primitives agree with the standard library
# ------------------------------------------------------------------------------------------

# Lengths around the 64-byte block and the 55/56-byte padding boundary, plus random ones.
BOUNDARY_LENGTHS = [0, 1, 2, 3, 31, 32, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 1000]


def random_lengths(rng, count, upper):
    return BOUNDARY_LENGTHS + [rng.randrange(0, upper) for _ in range(count - len(BOUNDARY_LENGTHS))]


def test_sha256_matches_hashlib():
    rng = random.Random(RNG_SEED)
    for n in random_lengths(rng, 200, 400):
        data = rng.randbytes(n)
        assert impl.sha256(data) == hashlib.sha256(data).digest(), n
    assert impl.sha256("é") == hashlib.sha256("é".encode()).digest()


def test_sha1_matches_hashlib():
    rng = random.Random(RNG_SEED + 1)
    for n in random_lengths(rng, 150, 400):
        data = rng.randbytes(n)
        assert impl.sha1(data) == hashlib.sha1(data).digest(), n  # noqa: S324 - checking uuid5's SHA-1


def test_hmac_sha256_matches_stdlib():
    rng = random.Random(RNG_SEED + 2)
    key_lengths = [0, 1, 16, 24, 32, 63, 64, 65, 100, 128, 129, 200, 1000]
    for i in range(260):
        # Keys shorter than, equal to and longer than the 64-byte block (hashed first).
        key = rng.randbytes(key_lengths[i % len(key_lengths)] if i < 130 else rng.randrange(0, 300))
        msg = rng.randbytes(rng.randrange(0, 600))
        assert impl.hmac_sha256(key, msg) == hmac.new(key, msg, hashlib.sha256).digest(), (len(key), len(msg))


def test_base64_matches_stdlib():
    rng = random.Random(RNG_SEED + 3)
    for n in random_lengths(rng, 300, 200):
        data = rng.randbytes(n)
        encoded = base64.b64encode(data).decode()
        assert impl.b64encode(data) == encoded
        assert impl.b64decode(encoded) == data
        assert impl.b64decode(encoded.rstrip("=")) == data  # unpadded input is accepted


@pytest.mark.parametrize("bad", ["%%%", "abc!", "a", "ab-c", "ab_c", "ab c="])
def test_base64_refuses_garbage(bad):
    with pytest.raises(ValueError):
        impl.b64decode(bad)


def test_uuid5_matches_uuid_module():
    rng = random.Random(RNG_SEED + 4)
    for _ in range(150):
        namespace = str(uuid.UUID(bytes=rng.randbytes(16)))
        name = "".join(rng.choice("abcXYZ:-_0123456789é🚀") for _ in range(rng.randrange(0, 80)))
        assert impl.uuid5(namespace, name) == str(uuid.uuid5(uuid.UUID(namespace), name))


def test_retry_after_accepts_seconds_and_http_dates():
    assert impl.retry_after_seconds("7") == 7.0
    assert impl.retry_after_seconds(" 0 ") == 0.0
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=30)
    hinted = impl.retry_after_seconds(soon.strftime("%a, %d %b %Y %H:%M:%S GMT"))
    assert 25 <= hinted <= 30
    assert impl.retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: now
    for garbage in (None, "", "soon", "-3", "1.5"):
        assert impl.retry_after_seconds(garbage) is None


def test_delivery_budget_comes_from_the_flow_variable_within_bounds():
    assert impl.delivery_budget(make_event()) == impl.DELIVERY_BUDGET_SECONDS == 30.0
    assert impl.delivery_budget(make_event(budget="12s")) == 12.0  # what main.tf writes
    assert impl.delivery_budget(make_event(budget=" 2.5S ")) == 2.5
    assert impl.delivery_budget(make_event(budget="12")) == 12.0  # older configurations
    assert impl.delivery_budget(make_event(budget="0s")) == 1.0
    assert impl.delivery_budget(make_event(budget="100000s")) == 300.0
    for garbage in ("soon", "s", "nan", "-"):
        assert impl.delivery_budget(make_event(budget=garbage)) == 30.0, garbage


# ------------------------------------------------------------------------------------------
# Signatures: the Standard Webhooks vectors from tests/fixtures
# ------------------------------------------------------------------------------------------


def vector_cases():
    path = shared_reference_dir() / "standard-webhooks-vectors.json"
    if not path.is_file():
        raise FileNotFoundError("%s not found (it is part of the repository)" % path)
    return json.loads(path.read_text(encoding="utf-8"))["cases"]


# Cases whose signature is right for their own (id, timestamp, body) but which a verifier refuses
# for the timestamp alone: the signer must still reproduce them.
TIMING_ONLY = {"too-old", "too-new"}


@pytest.mark.parametrize("case", vector_cases(), ids=lambda c: c["name"])
def test_signature_matches_standard_webhooks_vectors(case):
    headers = case["headers"]
    offered = headers.get("webhook-signature", "").split(" ")
    body = case["body"].encode("utf-8")
    ours = set()
    for secret in case["secrets"]:
        try:
            timestamp = int(headers["webhook-timestamp"])
        except ValueError:
            timestamp = headers["webhook-timestamp"]
        try:
            ours.add(impl.sign(secret, headers["webhook-id"], timestamp, body))
        except ValueError:
            pass  # a secret that is not base64 signs nothing
    matches = any(sig in offered for sig in ours)
    assert matches == (case["valid"] or case["name"] in TIMING_ONLY), case["why"]


def test_signatures_match_an_independent_signer():
    rng = random.Random(RNG_SEED + 5)
    for _ in range(40):
        secret = "whsec_" + base64.b64encode(rng.randbytes(rng.choice([24, 32, 64, 100]))).decode()
        body = rng.randbytes(rng.randrange(0, 300))
        ts = rng.randrange(0, 2**33)
        assert impl.sign(secret, "msg_x", ts, body) == expected_signature(secret, "msg_x", ts, body)


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


def test_hold_job_name_is_forwarded_in_fields_and_left_out_when_empty():
    entry = impl.build_log_entry(make_event(hold_job_name=" deploy_gate_staging "), "approve")
    assert entry["fields"]["hold_job_name"] == "deploy_gate_staging"
    for empty in ("", "   ", None):
        event = make_event()
        event.payload.fields["hold_job_name"] = empty
        assert "hold_job_name" not in impl.build_log_entry(event, "approve")["fields"]


def test_log_entry_id_is_stable_per_run_and_event_type():
    a = impl.build_log_entry(make_event(), "approve")["id"]
    assert a == impl.build_log_entry(make_event(), "approve")["id"]  # a repeated hook
    assert a != impl.build_log_entry(make_event(), "deny")["id"]
    other_run = make_event(run_srn="acme:run:ci-approval:1.0.0:0a5c2d6e-0000-4000-8000-000000000001")
    assert a != impl.build_log_entry(other_run, "approve")["id"]


class SparseEvent(sym_runtime.FakeEvent):
    """What a runtime may hand over when data is absent: properties that raise or give None."""

    @property
    def channel(self):
        raise AttributeError("no channel")

    @property
    def template(self):
        raise AttributeError("no template")


def test_missing_sdk_details_fall_back_instead_of_failing():
    full = make_event(
        user=sym_runtime.FakeUser(identities={}, first_name=None, last_name=None), timestamp=None
    )
    event = SparseEvent(
        name="approve", payload=full.payload, flow=full.flow, run=full.run, channel=None, template=None, meta=full.meta
    )
    entry = impl.build_log_entry(event, "approve")
    assert entry["event"]["channel"] == "internal"
    assert entry["event"]["template"] == impl.DEFAULT_TEMPLATE_SRN
    assert entry["actor"]["identity"] == {"service": "sym", "external_id": "alice@example.com"}
    assert entry["actor"]["name"] == "alice@example.com"
    assert entry["actor"]["user"] == "acme:user:%s:latest" % sym_runtime.DEFAULT_USER_ID  # from User.id
    assert datetime.datetime.fromisoformat(entry["event"]["timestamp"]).tzinfo is not None


def test_after_approve_posts_the_signed_entry(scripted_server):
    server = scripted_server([202])
    event = make_event(approver_url=server.url + "/")  # a trailing slash is tolerated
    impl.after_approve(event)
    (request,) = server.requests
    assert request["path"] == "/webhooks/sym"
    h = request["headers"]
    assert h["webhook-signature"] == expected_signature(
        "whsec_a4ayc/80/OGda4BO/1o/V0etpOqiLx1J", h["webhook-id"], h["webhook-timestamp"], request["body"]
    )
    assert h["content-type"] == "application/json"
    body = json.loads(request["body"])
    assert body["event"]["type"] == "approve"
    assert h["webhook-id"] == "msg_" + body["id"].replace("-", "")


# ------------------------------------------------------------------------------------------
# The SDK impl.py is written against is the published one
# ------------------------------------------------------------------------------------------


def test_every_sym_sdk_name_impl_imports_exists_in_the_published_package():
    tree = ast.parse((SYM_DIR / "impl.py").read_text(encoding="utf-8"))
    checked = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module.split(".")[0] == "sym":
            module = importlib.import_module(node.module)
            assert module.__file__ and "site-packages" in module.__file__, module.__file__
            for alias in node.names:
                assert hasattr(module, alias.name), "%s has no %s" % (node.module, alias.name)
                checked.append("%s.%s" % (node.module, alias.name))
    assert "sym.sdk.request_permission.RequestPermission" in checked and len(checked) == 7


def test_the_installed_sym_sdk_is_the_pinned_one():
    pinned = re.search(r"^sym-sdk==(\S+)$", (TESTS_DIR / "requirements.txt").read_text(), re.M).group(1)
    assert importlib.metadata.version("sym-sdk") == pinned == "0.61.0"
    assert not (TESTS_DIR / "stubs").exists()  # no stand-in shadows the real package


def test_a_runtime_double_missing_an_sdk_property_fails_at_construction():
    class Incomplete(sym_runtime.Complete, Payload):  # no `user`: Payload declares it
        @property
        def timestamp(self):
            return None

        @property
        def fields(self):
            return {}

        @property
        def srn(self):
            return None

    with pytest.raises(TypeError, match="user"):
        Incomplete("sym:event-spec:approval:1.0.0:approve")
    with pytest.raises(TypeError):  # ABCMeta-based SDK classes refuse as well
        User()
