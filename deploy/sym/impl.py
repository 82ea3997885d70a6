"""Sym flow implementation for sym-circleci-approver.

When an approver approves (or denies) a CircleCI deploy request in Slack, the after_approve
(after_deny) hook sends the event to the sym-circleci-approver service, which approves the
workflow's `wait_for_sym_approval` hold job (or cancels the workflow, per its ON_DENY setting).

The delivery is exactly what Sym's own HTTP strategy would send:
  * body: a Sym log entry, schema_version 4, whose `id` is stable for this run and event type
    (uuid5), so a retried hook is a duplicate that the service approves only once;
  * headers: Standard Webhooks v1 (webhook-id, webhook-timestamp,
    webhook-signature = "v1," + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))), the key being
    the base64-decoded part of the "whsec_..." secret.

Sym runs flow code in a restricted Python that may only import sym.sdk, requests, json and
datetime. hmac, hashlib, base64, uuid and time are used when importable; otherwise this file
falls back to the small pure-Python SHA-1, SHA-256, HMAC, base64 and sleep below (tested against
the standard library in tests/test_impl.py).

Configuration (deploy/sym/main.tf):
  * event.flow.vars["approver_url"]: the service's base URL (https://...), no trailing slash;
  * event.flow.vars["approvals_channel"]: Slack channel for requests;
  * the webhook secret: first secret of the environment's "approver" custom integration.
"""

import datetime
import json

import requests

from sym.sdk.annotations import hook, reducer
from sym.sdk.integrations import slack
from sym.sdk.templates import ApprovalTemplate

try:  # pragma: no branch - which branch runs depends on the sandbox
    import hashlib as _hashlib
    import hmac as _hmac
except ImportError:  # restricted runtime
    _hashlib = None
    _hmac = None

try:
    import base64 as _base64
except ImportError:
    _base64 = None

try:
    import uuid as _uuid
except ImportError:
    _uuid = None

try:
    import time as _time
except ImportError:
    _time = None


SCHEMA_VERSION = 4
WEBHOOK_PATH = "/webhooks/sym"
INTEGRATION_NAME = "approver"
DEFAULT_TEMPLATE_SRN = "sym:template:approval:1.0.0"

# Fixed namespace for the stable log-entry ids: uuid5(namespace, "<run srn>#<event type>").
# Changing it would make every in-flight run's retries look like new events.
EVENT_ID_NAMESPACE = "3f0c6d3e-5b8e-4e0f-9a57-6a2b6f1c9d41"

# Delivery policy: a few attempts with doubling back-off, enough to ride out a restart of the
# service (a Kubernetes Recreate rollout takes a few seconds), bounded so the hook ends quickly.
DELIVERY_ATTEMPTS = 4
DELIVERY_TIMEOUT_SECONDS = 10
DELIVERY_BACKOFF_SECONDS = 1.0


class DeliveryError(RuntimeError):
    """The service refused the event (4xx) or could not be reached after all attempts."""


# --------------------------------------------------------------------------------------------
# Pure-Python fallbacks (used only where the standard modules cannot be imported)
# --------------------------------------------------------------------------------------------

_MASK32 = 0xFFFFFFFF

_SHA256_K = (
    0x428A2F98, 0x71374491, 0xB5C0FBCF, 0xE9B5DBA5, 0x3956C25B, 0x59F111F1, 0x923F82A4, 0xAB1C5ED5,
    0xD807AA98, 0x12835B01, 0x243185BE, 0x550C7DC3, 0x72BE5D74, 0x80DEB1FE, 0x9BDC06A7, 0xC19BF174,
    0xE49B69C1, 0xEFBE4786, 0x0FC19DC6, 0x240CA1CC, 0x2DE92C6F, 0x4A7484AA, 0x5CB0A9DC, 0x76F988DA,
    0x983E5152, 0xA831C66D, 0xB00327C8, 0xBF597FC7, 0xC6E00BF3, 0xD5A79147, 0x06CA6351, 0x14292967,
    0x27B70A85, 0x2E1B2138, 0x4D2C6DFC, 0x53380D13, 0x650A7354, 0x766A0ABB, 0x81C2C92E, 0x92722C85,
    0xA2BFE8A1, 0xA81A664B, 0xC24B8B70, 0xC76C51A3, 0xD192E819, 0xD6990624, 0xF40E3585, 0x106AA070,
    0x19A4C116, 0x1E376C08, 0x2748774C, 0x34B0BCB5, 0x391C0CB3, 0x4ED8AA4A, 0x5B9CCA4F, 0x682E6FF3,
    0x748F82EE, 0x78A5636F, 0x84C87814, 0x8CC70208, 0x90BEFFFA, 0xA4506CEB, 0xBEF9A3F7, 0xC67178F2,
)


def _rotr(x, n):
    return ((x >> n) | (x << (32 - n))) & _MASK32


def _rotl(x, n):
    return ((x << n) | (x >> (32 - n))) & _MASK32


def _md_pad(data):
    """Merkle-Damgard padding shared by SHA-1 and SHA-256 (64-byte blocks, big-endian length)."""
    bit_length = (len(data) * 8) & 0xFFFFFFFFFFFFFFFF
    padded = bytearray(data)
    padded.append(0x80)
    while len(padded) % 64 != 56:
        padded.append(0)
    padded += bit_length.to_bytes(8, "big")
    return bytes(padded)


def pure_sha256(data):
    """SHA-256 (FIPS 180-4) of bytes, in pure Python."""
    h = [0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19]
    padded = _md_pad(bytes(data))
    for offset in range(0, len(padded), 64):
        w = [int.from_bytes(padded[offset + 4 * i:offset + 4 * i + 4], "big") for i in range(16)]
        for i in range(16, 64):
            s0 = _rotr(w[i - 15], 7) ^ _rotr(w[i - 15], 18) ^ (w[i - 15] >> 3)
            s1 = _rotr(w[i - 2], 17) ^ _rotr(w[i - 2], 19) ^ (w[i - 2] >> 10)
            w.append((w[i - 16] + s0 + w[i - 7] + s1) & _MASK32)
        a, b, c, d, e, f, g, hh = h
        for i in range(64):
            s1 = _rotr(e, 6) ^ _rotr(e, 11) ^ _rotr(e, 25)
            ch = (e & f) ^ (~e & g)
            t1 = (hh + s1 + ch + _SHA256_K[i] + w[i]) & _MASK32
            s0 = _rotr(a, 2) ^ _rotr(a, 13) ^ _rotr(a, 22)
            maj = (a & b) ^ (a & c) ^ (b & c)
            t2 = (s0 + maj) & _MASK32
            hh, g, f, e, d, c, b, a = g, f, e, (d + t1) & _MASK32, c, b, a, (t1 + t2) & _MASK32
        h = [(x + y) & _MASK32 for x, y in zip(h, (a, b, c, d, e, f, g, hh))]
    return b"".join(x.to_bytes(4, "big") for x in h)


def pure_sha1(data):
    """SHA-1 of bytes, in pure Python. Only for uuid5 (RFC 4122 names it); never for signing."""
    h = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0]
    padded = _md_pad(bytes(data))
    for offset in range(0, len(padded), 64):
        w = [int.from_bytes(padded[offset + 4 * i:offset + 4 * i + 4], "big") for i in range(16)]
        for i in range(16, 80):
            w.append(_rotl(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1))
        a, b, c, d, e = h
        for i in range(80):
            if i < 20:
                f, k = (b & c) | (~b & d), 0x5A827999
            elif i < 40:
                f, k = b ^ c ^ d, 0x6ED9EBA1
            elif i < 60:
                f, k = (b & c) | (b & d) | (c & d), 0x8F1BBCDC
            else:
                f, k = b ^ c ^ d, 0xCA62C1D6
            temp = (_rotl(a, 5) + (f & _MASK32) + e + k + w[i]) & _MASK32
            a, b, c, d, e = temp, a, _rotl(b, 30), c, d
        h = [(x + y) & _MASK32 for x, y in zip(h, (a, b, c, d, e))]
    return b"".join(x.to_bytes(4, "big") for x in h)


def pure_hmac_sha256(key, message):
    """HMAC-SHA256 (RFC 2104) in pure Python; keys longer than the 64-byte block are hashed."""
    key = bytes(key)
    if len(key) > 64:
        key = pure_sha256(key)
    key = key.ljust(64, b"\x00")
    inner = pure_sha256(bytes(b ^ 0x36 for b in key) + bytes(message))
    return pure_sha256(bytes(b ^ 0x5C for b in key) + inner)


_B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_INDEX = {c: i for i, c in enumerate(_B64_ALPHABET)}


def pure_b64encode(data):
    """Standard base64 with padding (RFC 4648), as str."""
    data = bytes(data)
    out = []
    for i in range(0, len(data), 3):
        chunk = data[i:i + 3]
        n = int.from_bytes(chunk.ljust(3, b"\x00"), "big")
        chars = [_B64_ALPHABET[(n >> shift) & 63] for shift in (18, 12, 6, 0)]
        if len(chunk) < 3:
            chars[len(chunk) + 1:] = "=" * (3 - len(chunk))
        out.append("".join(chars))
    return "".join(out)


def pure_b64decode(text):
    """Standard base64 (padding optional) to bytes; ValueError on any other character."""
    text = text.strip().rstrip("=")
    if len(text) % 4 == 1:
        raise ValueError("invalid base64 length")
    out = bytearray()
    acc = 0
    bits = 0
    for ch in text:
        if ch not in _B64_INDEX:
            raise ValueError("invalid base64 character")
        acc = (acc << 6) | _B64_INDEX[ch]
        bits += 6
        if bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
    return bytes(out)


def pure_uuid5(namespace, name):
    """RFC 4122 name-based UUID (SHA-1, version 5), as the canonical string."""
    ns_bytes = bytes.fromhex(namespace.replace("-", ""))
    digest = bytearray(pure_sha1(ns_bytes + name.encode("utf-8"))[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = bytes(digest).hex()
    return "-".join((h[0:8], h[8:12], h[12:16], h[16:20], h[20:32]))


def _busy_sleep(seconds):
    """time.sleep stand-in for a sandbox without `time` (datetime is allowed)."""
    deadline = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds)
    while datetime.datetime.now(datetime.timezone.utc) < deadline:
        pass


# --------------------------------------------------------------------------------------------
# What the rest of the file uses: the standard library where it exists
# --------------------------------------------------------------------------------------------


def hmac_sha256(key, message):
    if _hmac is not None and _hashlib is not None:
        return _hmac.new(bytes(key), bytes(message), _hashlib.sha256).digest()
    return pure_hmac_sha256(key, message)


def b64encode(data):
    if _base64 is not None:
        return _base64.b64encode(bytes(data)).decode("ascii")
    return pure_b64encode(data)


def b64decode(text):
    if _base64 is not None:
        text = text.strip().rstrip("=")
        # validate=True: refuse non-alphabet characters, as the pure decoder does.
        return _base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    return pure_b64decode(text)


def uuid5(namespace, name):
    if _uuid is not None:
        return str(_uuid.uuid5(_uuid.UUID(namespace), name))
    return pure_uuid5(namespace, name)


def sleep(seconds):
    if _time is not None:
        _time.sleep(seconds)
    else:
        _busy_sleep(seconds)


def now_seconds():
    return int(datetime.datetime.now(datetime.timezone.utc).timestamp())


# --------------------------------------------------------------------------------------------
# Standard Webhooks signing
# --------------------------------------------------------------------------------------------


def secret_key(secret):
    """The HMAC key of a Standard Webhooks secret: base64 after an optional "whsec_" prefix."""
    secret = secret.strip()
    if secret.startswith("whsec_"):
        secret = secret[len("whsec_"):]
    return b64decode(secret)


def sign(secret, msg_id, timestamp, body):
    """The webhook-signature header value for one delivery attempt."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    signed = ("%s.%s." % (msg_id, timestamp)).encode("utf-8") + body
    return "v1," + b64encode(hmac_sha256(secret_key(secret), signed))


# --------------------------------------------------------------------------------------------
# The Sym log entry (schema_version 4)
# --------------------------------------------------------------------------------------------


def stable_event_id(run_srn, event_type):
    """Same run and event type -> same id, so Sym's retries of this hook deduplicate."""
    return uuid5(EVENT_ID_NAMESPACE, "%s#%s" % (run_srn, event_type))


def _get(obj, *path, default=None):
    """obj.a.b... tolerant of missing attributes (SDK versions differ) and of dicts."""
    for name in path:
        if obj is None:
            return default
        if isinstance(obj, dict):
            obj = obj.get(name)
        else:
            try:
                obj = getattr(obj, name)
            except Exception:  # noqa: BLE001 - SDK properties may raise when data is absent
                return default
    return default if obj is None else obj


def _iso_timestamp(value):
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return value.isoformat()
    if isinstance(value, str) and value:
        return value
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


def _channel(event):
    """Map the SDK's channel type onto the schema's enum (slack, sdk, internal)."""
    kind = str(_get(event, "channel", "type", default="") or "").lower()
    if kind == "slack":
        return "slack"
    if kind in ("sdk", "api"):
        return "sdk"
    return "internal"


def _json_value(value):
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    return str(value)


def _actor(user):
    first = str(_get(user, "first_name", default="") or "")
    last = str(_get(user, "last_name", default="") or "")
    username = str(_get(user, "username", default="") or _get(user, "email", default="") or "unknown")
    name = (first + " " + last).strip() or username
    identity = None
    slack_identity = None
    try:
        slack_identity = user.identity("slack") if user is not None else None
    except Exception:  # noqa: BLE001
        slack_identity = None
    candidates = [slack_identity]
    identities = _get(user, "identities", default={}) or {}
    if isinstance(identities, dict):
        for values in identities.values():
            candidates.extend(values or [])
    for candidate in candidates:
        service = _get(candidate, "service")
        external_id = _get(candidate, "service_id")
        if service and external_id:
            identity = {"service": str(service), "external_id": str(external_id)}
            user_id = _get(candidate, "user_id")
            if user_id:
                identity["user_id"] = str(user_id)
            break
    if identity is None:
        identity = {"service": "sym", "external_id": username}
    return {
        "user": str(_get(user, "srn", default="") or "user:" + username),
        "name": name,
        "username": username,
        "identity": identity,
    }


def build_log_entry(event, event_type):
    """The schema_version 4 log entry for this event, as a dict."""
    run_srn = str(_get(event, "run", "srn", default=""))
    if not run_srn:
        raise ValueError("the event has no run SRN; cannot build a stable id")
    fields = _get(event, "payload", "fields", default={}) or {}
    return {
        "id": stable_event_id(run_srn, event_type),
        "meta": {"schema_version": SCHEMA_VERSION},
        "state": {"status": "completed", "errors": []},
        "run": {"srn": run_srn, "flow": str(_get(event, "flow", "srn", default=""))},
        "event": {
            "srn": str(_get(event, "srn", default="") or "sym:event-spec:approval:1.0.0:" + event_type),
            "type": event_type,
            "template": str(_get(event, "template", "srn", default="") or DEFAULT_TEMPLATE_SRN),
            "timestamp": _iso_timestamp(_get(event, "meta", "timestamp")),
            "channel": _channel(event),
        },
        "actor": _actor(_get(event, "user")),
        "fields": {str(k): _json_value(v) for k, v in dict(fields).items()},
        "type": "event",
    }


# --------------------------------------------------------------------------------------------
# Delivery
# --------------------------------------------------------------------------------------------


def deliver(
    url,
    secret,
    entry,
    attempts=DELIVERY_ATTEMPTS,
    timeout=DELIVERY_TIMEOUT_SECONDS,
    backoff=DELIVERY_BACKOFF_SECONDS,
    session=None,
):
    """POST the signed entry; retry connection errors and 5xx; return the 2xx response.

    Every attempt carries the same webhook-id and body (so the service can deduplicate) and a
    fresh timestamp and signature (so a late retry is not refused as too old). 4xx answers are
    final: the request itself is wrong (bad signature, unknown workflow), and repeating it
    would not help.
    """
    body = json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    msg_id = "msg_" + str(entry["id"]).replace("-", "")
    http = session or requests
    last_error = "no attempt made"
    for attempt in range(1, attempts + 1):
        timestamp = now_seconds()
        headers = {
            "content-type": "application/json",
            "user-agent": "sym-circleci-approver-hook/1",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, msg_id, timestamp, body),
        }
        try:
            response = http.post(url, data=body, headers=headers, timeout=timeout)
        except requests.RequestException as exc:
            last_error = "attempt %d: %s" % (attempt, exc.__class__.__name__)
        else:
            status = response.status_code
            if 200 <= status < 300:
                return response
            if status < 500:
                raise DeliveryError(
                    "approver refused the %s event with HTTP %d: %s"
                    % (entry["event"]["type"], status, (response.text or "")[:200])
                )
            last_error = "attempt %d: HTTP %d" % (attempt, status)
        if attempt < attempts:
            sleep(backoff * (2 ** (attempt - 1)))
    raise DeliveryError("approver unreachable after %d attempts (%s)" % (attempts, last_error))


def approver_url(event):
    base = str(_get(event, "flow", "vars", default={}).get("approver_url") or "").rstrip("/")
    if not base:
        raise ValueError("flow variable approver_url is not set (deploy/sym/main.tf)")
    return base + WEBHOOK_PATH


def webhook_secret(event):
    integration = event.flow.environment.integrations[INTEGRATION_NAME]
    value = integration.settings["secrets"][0].retrieve_value()
    if not value:
        raise ValueError("the approver webhook secret is empty (fill the Secrets Manager secret)")
    return value


def send_event(event, event_type):
    entry = build_log_entry(event, event_type)
    return deliver(approver_url(event), webhook_secret(event), entry)


def _is_uuid(value):
    text = str(value or "").strip().lower()
    parts = text.split("-")
    if [len(p) for p in parts] != [8, 4, 4, 4, 12]:
        return False
    return all(c in "0123456789abcdef" for c in "".join(parts))


# --------------------------------------------------------------------------------------------
# Sym handlers
# --------------------------------------------------------------------------------------------


@reducer
def get_approvers(event):
    """Route requests to the approvals channel (flow variable approvals_channel)."""
    channel = _get(event, "flow", "vars", default={}).get("approvals_channel") or "#ci-approvals"
    return slack.channel(channel, allow_self=False)


@hook
def on_request(event):
    """Refuse requests that could never release a hold job (no CircleCI workflow id)."""
    workflow_id = _get(event, "payload", "fields", default={}).get("workflow_id")
    if not _is_uuid(workflow_id):
        return ApprovalTemplate.deny(reason="workflow_id must be a CircleCI workflow UUID")
    return None


@hook
def after_approve(event):
    """Tell the approver service; it approves the workflow's hold job exactly once."""
    send_event(event, "approve")


@hook
def after_deny(event):
    """Tell the approver service too, so it can cancel the workflow (its ON_DENY setting)."""
    if not _is_uuid(_get(event, "payload", "fields", default={}).get("workflow_id")):
        return  # denied by on_request above: there is no workflow to act on
    send_event(event, "deny")
