"""Sym flow implementation for sym-circleci-approver.

Three events of a Sym request reach the sym-circleci-approver service, each as a signed webhook:

  * after_request: the request exists (its message is in the approvals channel). The `request`
    event binds this Sym run to the CircleCI workflow and hold job it was made for, so the
    service's gate reconciler only ever releases that hold job for this run. A failed delivery
    does not block the request (approvals still arrive through after_approve); it says in the
    request's thread that recovery by the reconciler will not work for this request.
  * after_approve: the `approve` event; the service approves the workflow's hold job.
  * after_deny: the `deny` event; the service records it (and cancels the workflow with its
    ON_DENY=cancel setting).

Each delivery is what Sym's own HTTP strategy would send:
  * body: a Sym log entry, schema_version 4, whose `id` is stable for this run and event type
    (uuid5 of "<run srn>#<event type>"), so a repeated hook is a duplicate the service acts on once;
  * headers: Standard Webhooks v1 (webhook-id, webhook-timestamp,
    webhook-signature = "v1," + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))), the key being
    the base64-decoded part of the "whsec_..." secret.

Sym runs this file in a RestrictedPython environment and allows imports from sym.sdk, requests,
json and datetime only (docs.symops.com/docs/python-sdk, "Restrictions Apply"); no name or
attribute may start with "_". So SHA-256, SHA-1 (for uuid5), HMAC and base64 are written out below
in plain Python, using only the builtins of RestrictedPython's safe_builtins (no bytes(), list(),
dict(), getattr(), min(), max(), ...), no classes, no augmented assignment and no tuple unpacking.
tests/test_sandbox.py runs every handler in such a sandbox against the published sym-sdk;
tests/test_impl.py checks the primitives against the standard library.

Delivery policy (the hook's own retries: Sym documents no second run of a failed hook):
  * 2xx: done. 4xx other than 429: final, nothing is retried (wrong secret, bad workflow id...).
  * 429 and 503: retried after the server's Retry-After (seconds or HTTP date), else back-off.
  * other 5xx, timeouts, connection errors: retried with doubling back-off (1 s, 2 s, 4 s, 8 s...).
  * everything within DELIVERY_BUDGET_SECONDS (30 s, flow variable delivery_budget_seconds, e.g.
    "30s"); a wait that would end past the budget is not started.
  * when an approve or deny delivery finally fails, the approver is told in Slack (DM and the
    request's thread) that the deploy was NOT released, why, and which path will still release
    it; the hook then raises, so Sym's error logger records it too.

Configuration (deploy/sym/main.tf):
  * event.flow.vars["approver_url"]: the service's base URL (https://...), no trailing slash;
  * event.flow.vars["approvals_channel"]: Slack channel for requests;
  * event.flow.vars["delivery_budget_seconds"]: optional, total time for one delivery (1-300 s,
    written "30s" so the Terraform provider does not warn about an integer-looking string);
  * the webhook secret: first secret of the environment's "approver" custom integration.

Prompt fields: workflow_id (required, a UUID), workflow_url, merging_user and hold_job_name
(optional: which approval job to release; the service approves only names in its
HOLD_JOB_NAMES). All are forwarded in the event's "fields"; an empty hold_job_name is left out.
"""

import datetime
import json

import requests

from sym.sdk.annotations import hook, reducer
from sym.sdk.integrations import slack
from sym.sdk.notifications import Notification
from sym.sdk.request_permission import PermissionLevel, RequestPermission
from sym.sdk.templates import ApprovalTemplate

SCHEMA_VERSION = 4
WEBHOOK_PATH = "/webhooks/sym"
INTEGRATION_NAME = "approver"
DEFAULT_TEMPLATE_SRN = "sym:template:approval:1.0.0"
DEFAULT_APPROVALS_CHANNEL = "#ci-approvals"

# Fixed namespace for the stable log-entry ids: uuid5(namespace, "<run srn>#<event type>").
# Changing it would make every in-flight run's repeated deliveries look like new events.
EVENT_ID_NAMESPACE = "3f0c6d3e-5b8e-4e0f-9a57-6a2b6f1c9d41"

# Delivery policy (see the module docstring).
DELIVERY_BUDGET_SECONDS = 30.0
DELIVERY_BUDGET_MIN_SECONDS = 1.0
DELIVERY_BUDGET_MAX_SECONDS = 300.0
DELIVERY_CONNECT_TIMEOUT_SECONDS = 5.0
DELIVERY_READ_TIMEOUT_SECONDS = 10.0
DELIVERY_BACKOFF_SECONDS = 1.0
DELIVERY_BACKOFF_MAX_SECONDS = 8.0

# CircleCI job names are short; anything longer (or multi-line) is not a job name.
HOLD_JOB_NAME_MAX = 128

MASK32 = 0xFFFFFFFF

SHA256_K = (
    0x428A2F98, 0x71374491, 0xB5C0FBCF, 0xE9B5DBA5, 0x3956C25B, 0x59F111F1, 0x923F82A4, 0xAB1C5ED5,
    0xD807AA98, 0x12835B01, 0x243185BE, 0x550C7DC3, 0x72BE5D74, 0x80DEB1FE, 0x9BDC06A7, 0xC19BF174,
    0xE49B69C1, 0xEFBE4786, 0x0FC19DC6, 0x240CA1CC, 0x2DE92C6F, 0x4A7484AA, 0x5CB0A9DC, 0x76F988DA,
    0x983E5152, 0xA831C66D, 0xB00327C8, 0xBF597FC7, 0xC6E00BF3, 0xD5A79147, 0x06CA6351, 0x14292967,
    0x27B70A85, 0x2E1B2138, 0x4D2C6DFC, 0x53380D13, 0x650A7354, 0x766A0ABB, 0x81C2C92E, 0x92722C85,
    0xA2BFE8A1, 0xA81A664B, 0xC24B8B70, 0xC76C51A3, 0xD192E819, 0xD6990624, 0xF40E3585, 0x106AA070,
    0x19A4C116, 0x1E376C08, 0x2748774C, 0x34B0BCB5, 0x391C0CB3, 0x4ED8AA4A, 0x5B9CCA4F, 0x682E6FF3,
    0x748F82EE, 0x78A5636F, 0x84C87814, 0x8CC70208, 0x90BEFFFA, 0xA4506CEB, 0xBEF9A3F7, 0xC67178F2,
)
SHA256_H0 = (0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19)
SHA1_H0 = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0)

B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
B64_INDEX = {B64_ALPHABET[i]: i for i in range(64)}


# --------------------------------------------------------------------------------------------
# Small helpers that stand in for builtins the sandbox does not have
# --------------------------------------------------------------------------------------------


def read(getter, default=None):
    """getter() (e.g. lambda: event.run.srn), or default when it raises or gives None.

    The sandbox has no getattr(); SDK versions differ in which attributes exist, and SDK
    properties may raise when their data is absent.
    """
    try:
        value = getter()
    except Exception:  # noqa: BLE001 - any missing attribute or key means "not there"
        return default
    if value is None:
        return default
    return value


def to_ints(data):
    """A str (as UTF-8), bytes or list of ints, as a list of ints 0-255."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    return [b for b in data]


def ints_to_bytes(values):
    """A list of ints 0-255 as bytes (the sandbox has no bytes()/bytearray())."""
    return "".join([chr(v) for v in values]).encode("latin-1")


def is_mapping(value):
    return callable(read(lambda: value.keys)) and callable(read(lambda: value.get))


def is_sequence(value):
    return (not isinstance(value, str)) and callable(read(lambda: value.index)) and callable(
        read(lambda: value.count)
    )


# --------------------------------------------------------------------------------------------
# SHA-256 (FIPS 180-4), SHA-1 (for uuid5 only, RFC 4122), HMAC (RFC 2104), base64 (RFC 4648)
# --------------------------------------------------------------------------------------------


def rotr(x, n):
    return ((x >> n) | (x << (32 - n))) & MASK32


def rotl(x, n):
    return ((x << n) | (x >> (32 - n))) & MASK32


def md_pad(data):
    """Merkle-Damgard padding shared by SHA-1 and SHA-256: 0x80, zeros, 64-bit big-endian length."""
    bit_length = (len(data) * 8) & 0xFFFFFFFFFFFFFFFF
    zeros = (55 - len(data)) % 64
    length = [(bit_length >> (8 * (7 - i))) & 0xFF for i in range(8)]
    return data + [0x80] + [0] * zeros + length


def block_words(padded, offset):
    """The sixteen big-endian 32-bit words of the 64-byte block at offset."""
    return [
        (padded[offset + 4 * i] << 24)
        | (padded[offset + 4 * i + 1] << 16)
        | (padded[offset + 4 * i + 2] << 8)
        | padded[offset + 4 * i + 3]
        for i in range(16)
    ]


def words_to_ints(words):
    out = []
    for w in words:
        out.extend([(w >> 24) & 0xFF, (w >> 16) & 0xFF, (w >> 8) & 0xFF, w & 0xFF])
    return out


def sha256_ints(data):
    """SHA-256 of a list of ints, as a list of 32 ints."""
    h = [x for x in SHA256_H0]
    padded = md_pad(data)
    for offset in range(0, len(padded), 64):
        w = block_words(padded, offset)
        for i in range(16, 64):
            x = w[i - 15]
            y = w[i - 2]
            s0 = rotr(x, 7) ^ rotr(x, 18) ^ (x >> 3)
            s1 = rotr(y, 17) ^ rotr(y, 19) ^ (y >> 10)
            w.append((w[i - 16] + s0 + w[i - 7] + s1) & MASK32)
        a = h[0]
        b = h[1]
        c = h[2]
        d = h[3]
        e = h[4]
        f = h[5]
        g = h[6]
        hh = h[7]
        for i in range(64):
            s1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)
            ch = (e & f) ^ ((~e) & g)
            t1 = (hh + s1 + ch + SHA256_K[i] + w[i]) & MASK32
            s0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)
            maj = (a & b) ^ (a & c) ^ (b & c)
            t2 = (s0 + maj) & MASK32
            hh = g
            g = f
            f = e
            e = (d + t1) & MASK32
            d = c
            c = b
            b = a
            a = (t1 + t2) & MASK32
        h = [
            (h[0] + a) & MASK32,
            (h[1] + b) & MASK32,
            (h[2] + c) & MASK32,
            (h[3] + d) & MASK32,
            (h[4] + e) & MASK32,
            (h[5] + f) & MASK32,
            (h[6] + g) & MASK32,
            (h[7] + hh) & MASK32,
        ]
    return words_to_ints(h)


def sha1_ints(data):
    """SHA-1 of a list of ints, as a list of 20 ints. Only for uuid5; never for signing."""
    h = [x for x in SHA1_H0]
    padded = md_pad(data)
    for offset in range(0, len(padded), 64):
        w = block_words(padded, offset)
        for i in range(16, 80):
            w.append(rotl(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1))
        a = h[0]
        b = h[1]
        c = h[2]
        d = h[3]
        e = h[4]
        for i in range(80):
            if i < 20:
                f = (b & c) | ((~b) & d)
                k = 0x5A827999
            elif i < 40:
                f = b ^ c ^ d
                k = 0x6ED9EBA1
            elif i < 60:
                f = (b & c) | (b & d) | (c & d)
                k = 0x8F1BBCDC
            else:
                f = b ^ c ^ d
                k = 0xCA62C1D6
            temp = (rotl(a, 5) + (f & MASK32) + e + k + w[i]) & MASK32
            e = d
            d = c
            c = rotl(b, 30)
            b = a
            a = temp
        h = [
            (h[0] + a) & MASK32,
            (h[1] + b) & MASK32,
            (h[2] + c) & MASK32,
            (h[3] + d) & MASK32,
            (h[4] + e) & MASK32,
        ]
    return words_to_ints(h)


def sha256(data):
    """SHA-256 of str (UTF-8), bytes or a list of ints, as bytes."""
    return ints_to_bytes(sha256_ints(to_ints(data)))


def sha1(data):
    return ints_to_bytes(sha1_ints(to_ints(data)))


def hmac_sha256_ints(key, message):
    key = to_ints(key)
    if len(key) > 64:
        key = sha256_ints(key)
    key = key + [0] * (64 - len(key))
    inner = sha256_ints([k ^ 0x36 for k in key] + to_ints(message))
    return sha256_ints([k ^ 0x5C for k in key] + inner)


def hmac_sha256(key, message):
    """HMAC-SHA256 (RFC 2104); keys longer than the 64-byte block are hashed first. Bytes."""
    return ints_to_bytes(hmac_sha256_ints(key, message))


def b64encode(data):
    """Standard base64 with padding (RFC 4648) of str, bytes or a list of ints, as str."""
    data = to_ints(data)
    out = []
    for i in range(0, len(data), 3):
        n = len(data) - i
        b0 = data[i]
        b1 = data[i + 1] if n > 1 else 0
        b2 = data[i + 2] if n > 2 else 0
        v = (b0 << 16) | (b1 << 8) | b2
        out.append(
            B64_ALPHABET[(v >> 18) & 63]
            + B64_ALPHABET[(v >> 12) & 63]
            + (B64_ALPHABET[(v >> 6) & 63] if n > 1 else "=")
            + (B64_ALPHABET[v & 63] if n > 2 else "=")
        )
    return "".join(out)


def b64decode(text):
    """Standard base64 (padding optional) to bytes; ValueError on any other character."""
    text = str(text).strip().rstrip("=")
    if len(text) % 4 == 1:
        raise ValueError("invalid base64 length")
    out = []
    acc = 0
    bits = 0
    for ch in text:
        if ch not in B64_INDEX:
            raise ValueError("invalid base64 character")
        acc = ((acc << 6) | B64_INDEX[ch]) & 0xFFFFFF
        bits = bits + 6
        if bits >= 8:
            bits = bits - 8
            out.append((acc >> bits) & 0xFF)
    return ints_to_bytes(out)


def uuid5(namespace, name):
    """RFC 4122 name-based UUID (SHA-1, version 5), as the canonical string."""
    hexdigits = str(namespace).replace("-", "").lower()
    ns = [int(hexdigits[i:i + 2], 16) for i in range(0, 32, 2)]
    digest = sha1_ints(ns + to_ints(name))
    version = (digest[6] & 0x0F) | 0x50
    variant = (digest[8] & 0x3F) | 0x80
    digest = digest[0:6] + [version] + digest[7:8] + [variant] + digest[9:16]
    h = "".join(["%02x" % b for b in digest])
    return "-".join([h[0:8], h[8:12], h[12:16], h[16:20], h[20:32]])


# --------------------------------------------------------------------------------------------
# Time (the sandbox has no `time` module; datetime is allowed)
# --------------------------------------------------------------------------------------------


def now_utc():
    return datetime.datetime.now(datetime.timezone.utc)


def now_seconds():
    return int(now_utc().timestamp())


def seconds_since(start):
    return (now_utc() - start).total_seconds()


def wait_seconds(seconds):
    """Wait by watching the clock: without `time`, there is no sleep() in the sandbox."""
    deadline = now_utc() + datetime.timedelta(seconds=seconds)
    while now_utc() < deadline:
        pass


def retry_after_seconds(value):
    """Retry-After as seconds to wait (delta-seconds or HTTP date, RFC 9110), or None."""
    text = str(value or "").strip()
    if not text:
        return None
    if text.isdigit():
        return float(int(text))
    try:
        when = datetime.datetime.strptime(text, "%a, %d %b %Y %H:%M:%S GMT")
    except ValueError:
        return None
    seconds = (when.replace(tzinfo=datetime.timezone.utc) - now_utc()).total_seconds()
    return seconds if seconds > 0 else 0.0


# --------------------------------------------------------------------------------------------
# Standard Webhooks signing
# --------------------------------------------------------------------------------------------


def secret_key(secret):
    """The HMAC key of a Standard Webhooks secret: base64 after an optional "whsec_" prefix."""
    secret = str(secret).strip()
    if secret.startswith("whsec_"):
        secret = secret[len("whsec_"):]
    return b64decode(secret)


def sign(secret, msg_id, timestamp, body):
    """The webhook-signature header value for one delivery attempt."""
    signed = to_ints("%s.%s." % (msg_id, timestamp)) + to_ints(body)
    return "v1," + b64encode(hmac_sha256_ints(secret_key(secret), signed))


# --------------------------------------------------------------------------------------------
# The Sym log entry (schema_version 4)
# --------------------------------------------------------------------------------------------


def stable_event_id(run_srn, event_type):
    """Same run and event type -> same id, so a repeated delivery is deduplicated."""
    return uuid5(EVENT_ID_NAMESPACE, "%s#%s" % (run_srn, event_type))


def event_fields(event):
    """The request's prompt fields (event.payload.fields), as a dict."""
    fields = read(lambda: event.payload.fields, {})
    if not is_mapping(fields):
        return {}
    return fields


def flow_vars(event):
    flow_variables = read(lambda: event.flow.vars, {})
    if not is_mapping(flow_variables):
        return {}
    return flow_variables


def iso_timestamp(value):
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return value.isoformat()
    if isinstance(value, str) and value:
        return value
    return now_utc().isoformat()


def channel_kind(event):
    """Map the SDK's channel type onto the schema's enum (slack, sdk, internal)."""
    kind = str(read(lambda: event.channel.type, "")).lower()
    if kind == "slack":
        return "slack"
    if kind == "sdk" or kind == "api":
        return "sdk"
    return "internal"


def json_value(value):
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if is_mapping(value):
        return {str(k): json_value(value[k]) for k in value.keys()}
    if is_sequence(value):
        return [json_value(v) for v in value]
    return str(value)


def user_reference(user, org):
    """The user as an SRN-like string: the runtime's user SRN when it has one, else built from the
    user's id (sym-sdk declares User.id, a UUID) in the run's organization."""
    srn = str(read(lambda: user.srn, ""))
    if srn:
        return srn
    user_id = str(read(lambda: user.id, ""))
    if user_id and org:
        return "%s:user:%s:latest" % (org, user_id)
    return "user:" + str(read(lambda: user.username, "") or "unknown")


def actor(user, org=""):
    first = str(read(lambda: user.first_name, ""))
    last = str(read(lambda: user.last_name, ""))
    username = str(read(lambda: user.username, "") or read(lambda: user.email, "") or "unknown")
    name = (first + " " + last).strip() or username
    candidates = [read(lambda: user.identity("slack"))]
    identities = read(lambda: user.identities, {})
    if is_mapping(identities):
        for key in identities.keys():
            candidates.extend(identities[key] or [])
    identity = None
    for candidate in candidates:
        service = read(lambda: candidate.service)
        external_id = read(lambda: candidate.service_id)
        if service and external_id:
            identity = {"service": str(service), "external_id": str(external_id)}
            user_id = read(lambda: candidate.user_id)
            if user_id:
                identity["user_id"] = str(user_id)
            break
    if identity is None:
        identity = {"service": "sym", "external_id": username}
    return {
        "user": user_reference(user, org),
        "name": name,
        "username": username,
        "identity": identity,
    }


def forwarded_fields(event):
    """The prompt fields as JSON values; an empty hold_job_name is left out (service default)."""
    fields = event_fields(event)
    out = {}
    for key in fields.keys():
        value = json_value(fields[key])
        if str(key) == "hold_job_name":
            value = str(value or "").strip()
            if not value:
                continue
        out[str(key)] = value
    return out


def build_log_entry(event, event_type):
    """The schema_version 4 log entry for this event, as a dict."""
    run_srn = str(read(lambda: event.run.srn, ""))
    if not run_srn:
        raise ValueError("the event has no run SRN; cannot build a stable id")
    return {
        "id": stable_event_id(run_srn, event_type),
        "meta": {"schema_version": SCHEMA_VERSION},
        "state": {"status": "completed", "errors": []},
        "run": {"srn": run_srn, "flow": str(read(lambda: event.flow.srn, ""))},
        "event": {
            "srn": str(read(lambda: event.srn, "") or "sym:event-spec:approval:1.0.0:" + event_type),
            "type": event_type,
            "template": str(read(lambda: event.template.srn, "") or DEFAULT_TEMPLATE_SRN),
            "timestamp": iso_timestamp(read(lambda: event.payload.timestamp)),
            "channel": channel_kind(event),
        },
        "actor": actor(read(lambda: event.user), run_srn.split(":")[0]),
        "fields": forwarded_fields(event),
        "type": "event",
    }


# --------------------------------------------------------------------------------------------
# Delivery
# --------------------------------------------------------------------------------------------



def describe_exception(exc):
    detail = str(exc)
    if len(detail) > 200:
        detail = detail[:200] + "..."
    if isinstance(exc, requests.Timeout):
        return "timed out (%s)" % detail
    if isinstance(exc, requests.ConnectionError):
        return "connection failed (%s)" % detail
    return "request failed (%s)" % detail


def short_body(response):
    text = str(read(lambda: response.text, "")).strip()
    if len(text) > 300:
        text = text[:300] + "..."
    return text


def delivery_budget(event):
    """Total seconds for one delivery: flow variable delivery_budget_seconds ("30s", or a plain
    number as older configurations wrote it), else the default; clamped to 1-300 s."""
    raw = str(flow_vars(event).get("delivery_budget_seconds") or "").strip().lower()
    if raw.endswith("s"):
        raw = raw[:-1].strip()
    if raw == "":
        return DELIVERY_BUDGET_SECONDS
    try:
        budget = float(raw)
    except ValueError:
        return DELIVERY_BUDGET_SECONDS
    if budget != budget:  # NaN
        return DELIVERY_BUDGET_SECONDS
    if budget < DELIVERY_BUDGET_MIN_SECONDS:
        return DELIVERY_BUDGET_MIN_SECONDS
    if budget > DELIVERY_BUDGET_MAX_SECONDS:
        return DELIVERY_BUDGET_MAX_SECONDS
    return budget


def attempt_delivery(url, secret, entry, budget_seconds=None):
    """POST the signed entry until a 2xx, a final 4xx, or the time budget runs out.

    Returns {"ok": True, "response": <2xx response>} or {"ok": False, "final": <the service
    refused it>, "problem": <why>}. Every attempt carries the same webhook-id and body (the
    service deduplicates on them) and a fresh timestamp and signature (so a late attempt is not
    refused as too old).
    """
    budget = DELIVERY_BUDGET_SECONDS if budget_seconds is None else budget_seconds
    event_type = str(entry["event"]["type"])
    body = json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    msg_id = "msg_" + str(entry["id"]).replace("-", "")
    started = now_utc()
    backoff = DELIVERY_BACKOFF_SECONDS
    attempt = 0
    while True:
        attempt = attempt + 1
        remaining = budget - seconds_since(started)
        read_timeout = DELIVERY_READ_TIMEOUT_SECONDS
        if remaining < read_timeout:
            read_timeout = remaining if remaining > 0.5 else 0.5
        connect_timeout = DELIVERY_CONNECT_TIMEOUT_SECONDS
        if read_timeout < connect_timeout:
            connect_timeout = read_timeout
        timestamp = now_seconds()
        headers = {
            "content-type": "application/json",
            "user-agent": "sym-circleci-approver-hook/3",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, msg_id, timestamp, body),
        }
        wait = backoff
        hinted = False
        try:
            response = requests.post(url, data=body, headers=headers, timeout=(connect_timeout, read_timeout))
        except requests.RequestException as exc:
            problem = describe_exception(exc)
        else:
            status = response.status_code
            if status >= 200 and status < 300:
                return {"ok": True, "response": response}
            problem = "HTTP %d" % status
            text = short_body(response)
            if text:
                problem = problem + ": " + text
            if status == 429 or status == 503:
                hint = retry_after_seconds(read(lambda: response.headers.get("retry-after")))
                if hint is not None:
                    wait = hint
                    hinted = True
            elif status < 500:
                return {
                    "ok": False,
                    "final": True,
                    "problem": "the approver service refused the %s event (final, not retried): %s"
                    % (event_type, problem),
                }
        if hinted is False:
            backoff = backoff * 2
            if backoff > DELIVERY_BACKOFF_MAX_SECONDS:
                backoff = DELIVERY_BACKOFF_MAX_SECONDS
        elapsed = seconds_since(started)
        if elapsed + wait >= budget:
            if hinted:
                problem = problem + "; it asked to retry after %d s" % int(wait)
            return {
                "ok": False,
                "final": False,
                "problem": "the approver service did not accept the %s event within the hook's %d s budget "
                "(%d attempts; last: %s)" % (event_type, int(budget), attempt, problem),
            }
        wait_seconds(wait)


def deliver(url, secret, entry, budget_seconds=None):
    """attempt_delivery, raising RuntimeError with the reason when it fails."""
    outcome = attempt_delivery(url, secret, entry, budget_seconds)
    if outcome["ok"]:
        return outcome["response"]
    raise RuntimeError(outcome["problem"])


def approver_url(event):
    base = str(flow_vars(event).get("approver_url") or "").strip().rstrip("/")
    if not base:
        raise ValueError("flow variable approver_url is not set (deploy/sym/main.tf)")
    return base + WEBHOOK_PATH


def webhook_secret(event):
    integrations = read(lambda: event.flow.environment.integrations, {})
    integration = integrations.get(INTEGRATION_NAME) if is_mapping(integrations) else None
    if integration is None:
        raise ValueError(
            "the Sym environment has no %r integration: add approver_id = <terraform output "
            "approver_integration_id> to its integrations (docs/deploy.md)" % INTEGRATION_NAME
        )
    secrets = read(lambda: integration.settings["secrets"], [])
    if len(secrets) == 0:
        raise ValueError("the %r integration has no secret (deploy/sym/main.tf secret_ids_json)" % INTEGRATION_NAME)
    value = secrets[0].retrieve_value()
    if not value:
        raise ValueError("the approver webhook secret is empty (fill the Secrets Manager secret)")
    return value


def send_outcome(event, event_type):
    """Build, sign and deliver one event; the outcome as attempt_delivery returns it.

    A configuration problem (no approver_url, no approver integration, an empty secret, no run
    SRN) is a final failure too: every event of this request meets it until it is fixed.
    """
    try:
        entry = build_log_entry(event, event_type)
        url = approver_url(event)
        secret = webhook_secret(event)
    except Exception as exc:  # noqa: BLE001 - reported to the people involved, then handled per hook
        return {"ok": False, "final": True, "problem": str(exc)}
    return attempt_delivery(url, secret, entry, delivery_budget(event))


def send_event(event, event_type):
    """Deliver one event; the 2xx response, or RuntimeError with the reason."""
    outcome = send_outcome(event, event_type)
    if outcome["ok"]:
        return outcome["response"]
    raise RuntimeError(outcome["problem"])


def is_uuid(value):
    text = str(value or "").strip().lower()
    parts = text.split("-")
    if [len(p) for p in parts] != [8, 4, 4, 4, 12]:
        return False
    for c in "".join(parts):
        if c not in "0123456789abcdef":
            return False
    return True


def hold_job_problem(value):
    """Why an optional hold_job_name cannot be a CircleCI job name, or None when it is fine."""
    if value is None:
        return None
    text = str(value)
    if text.strip() == "":
        return None
    if len(text) > HOLD_JOB_NAME_MAX:
        return "hold_job_name is longer than %d characters" % HOLD_JOB_NAME_MAX
    for c in text:
        if ord(c) < 32 or ord(c) == 127:
            return "hold_job_name contains a control character"
    return None


def request_problem(event):
    """Why this request could never release a hold job (on_request denies it), or None."""
    fields = event_fields(event)
    if not is_uuid(fields.get("workflow_id")):
        return "workflow_id must be a CircleCI workflow UUID"
    return hold_job_problem(fields.get("hold_job_name"))


# --------------------------------------------------------------------------------------------
# Telling people in Slack
# --------------------------------------------------------------------------------------------

# What the people involved can do when the hook could not tell the service, per CircleCI's docs
# (docs/deploy.md cites each): a workflow waiting on a hold job is not terminal, so it cannot be
# rerun until it is canceled; "Rerun workflow from failed" does not rerun successful jobs (such
# as sym/request), so only "Rerun workflow from start" opens a new Sym request.
RERUN_ADVICE = (
    "in CircleCI cancel the workflow (it cannot be rerun while it waits on the hold job), then choose "
    '"Rerun workflow from start": its sym/request opens a new Sym request to approve. ("Rerun workflow '
    'from failed" would not: it does not rerun the successful sym/request.)'
)


def describe_request(event):
    fields = event_fields(event)
    workflow = str(fields.get("workflow_url") or fields.get("workflow_id") or "(unknown workflow)")
    hold_job = str(fields.get("hold_job_name") or "").strip()
    if hold_job:
        return "CircleCI workflow %s (hold job `%s`)" % (workflow, hold_job)
    return "CircleCI workflow %s" % workflow


def secret_hint(problem):
    if "HTTP 401" in problem:
        return " (HTTP 401: the webhook secret in Sym and the service's SYM_WEBHOOK_SECRET differ)"
    return ""


def approve_failure_message(event, outcome):
    problem = outcome["problem"]
    head = ":warning: Deploy NOT released yet. Your approval of %s did not reach sym-circleci-approver: %s%s." % (
        describe_request(event),
        problem,
        secret_hint(problem),
    )
    if outcome["final"]:
        return (
            head + " The service refused it, so it will not release the hold job for this request. "
            "Fix the cause, then " + RERUN_ADVICE
        )
    return (
        head + " What still releases the hold job: if this workflow registered its gate (its "
        "register_sym_gate job passed) and this thread has no warning that the service missed the "
        "request, nothing to do: the service will release it when it is back (its reconciler reads this "
        "request's approval from Sym). Otherwise, " + RERUN_ADVICE
    )


def deny_failure_message(event, event_type, outcome):
    problem = outcome["problem"]
    return (
        ":warning: The %s of %s did not reach sym-circleci-approver: %s%s. Nothing was released and "
        "nothing was canceled: the workflow still waits on its hold job. If its gate is registered, the "
        "service closes it when it reads the decision from Sym (and cancels the workflow when it runs "
        "with ON_DENY=cancel); otherwise cancel the workflow in CircleCI if it should not wait."
        % (event_type, describe_request(event), problem, secret_hint(problem))
    )


def request_failure_message(event, outcome):
    problem = outcome["problem"]
    if outcome["final"]:
        return (
            ":warning: sym-circleci-approver refused this request for %s: %s%s. It has no record of which "
            "workflow this request gates, so its reconciler will not release the hold job for it, and an "
            "approval will meet the same refusal until the cause is fixed. Fix it, then %s"
            % (describe_request(event), problem, secret_hint(problem), RERUN_ADVICE)
        )
    return (
        ":warning: sym-circleci-approver did not receive this request for %s: %s. Approving still "
        "works while the service is up (the approval is delivered on its own), but recovery by the "
        "service's reconciler will not work for this request: if the approval cannot be delivered "
        "either, the hold job stays on hold; then %s" % (describe_request(event), problem, RERUN_ADVICE)
    )


def tell_in_slack(event, text, direct=True):
    """Reply in the request's thread, and DM the user who acted (unless direct is False).

    Returns how many messages went out; a Slack failure never hides the delivery problem.
    """
    sent = 0
    user = read(lambda: event.user)
    if direct and user is not None:
        try:
            slack.send_message(user, text)
            sent = sent + 1
        except Exception:  # noqa: BLE001 - a Slack problem must not hide the delivery error
            pass
    try:
        slack.send_thread_message(text)
        sent = sent + 1
    except Exception:  # noqa: BLE001
        pass
    return sent


# --------------------------------------------------------------------------------------------
# Sym handlers
# --------------------------------------------------------------------------------------------


@reducer
def get_permissions(event):
    """Members and admins may approve or deny; nobody approves their own request.

    Replaces the deprecated get_approvers (docs.symops.com/docs/migrating-from-get_approvers);
    allow_self_approval is get_approvers' allow_self.
    """
    return RequestPermission(
        webapp_view=PermissionLevel.ADMIN,
        approve_deny=PermissionLevel.MEMBER,
        allow_self_approval=False,
    )


@reducer
def get_request_notifications(event):
    """Requests go to the approvals channel (flow variable approvals_channel)."""
    channel = str(flow_vars(event).get("approvals_channel") or DEFAULT_APPROVALS_CHANNEL).strip()
    return [Notification(destinations=[slack.channel(channel)])]


@hook
def on_request(event):
    """Refuse requests that could never release a hold job."""
    problem = request_problem(event)
    if problem is not None:
        return ApprovalTemplate.deny(reason=problem)
    return None


@hook
def after_request(event):
    """Bind this run to its workflow and hold job at the service (the reconciler's guard).

    A failed delivery never blocks the request: the hook says so in the request's thread and
    returns normally.
    """
    if request_problem(event) is not None:
        return None  # denied by on_request: there is no workflow to bind
    outcome = send_outcome(event, "request")
    if outcome["ok"] is False:
        tell_in_slack(event, request_failure_message(event, outcome), direct=False)
    return None


@hook
def after_approve(event):
    """Tell the approver service; it approves the workflow's hold job exactly once."""
    outcome = send_outcome(event, "approve")
    if outcome["ok"] is False:
        tell_in_slack(event, approve_failure_message(event, outcome))
        raise RuntimeError(outcome["problem"])
    return None


@hook
def after_deny(event):
    """Tell the approver service too, so it can cancel the workflow (its ON_DENY setting)."""
    if request_problem(event) is not None:
        return None  # denied by on_request above: there is no workflow to act on
    outcome = send_outcome(event, "deny")
    if outcome["ok"] is False:
        tell_in_slack(event, deny_failure_message(event, "deny", outcome))
        raise RuntimeError(outcome["problem"])
    return None
