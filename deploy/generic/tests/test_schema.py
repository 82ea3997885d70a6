"""The generic approval event's JSON Schema (docs/approval-event.schema.json) holds what the
service accepts and refuses what it refuses (src/inbound/generic_event.rs), and the shell
example builds bodies that match it."""

import json
import os
import subprocess
from pathlib import Path

import jsonschema
import pytest

ROOT = Path(__file__).resolve().parents[3]
SCHEMA = json.loads((ROOT / "docs/approval-event.schema.json").read_text())
SCRIPT = ROOT / "deploy/generic/send-approval.sh"
WF = "7b2d6c1e-8f3a-4b5c-9d0e-1f2a3b4c5d6e"


def valid(body):
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    return jsonschema.Draft202012Validator(SCHEMA).is_valid(body)


def test_a_full_and_a_minimal_approval_are_valid():
    assert valid({"request_id": "CHG-1", "decision": "approve", "workflow_id": WF, "approver": "a"})
    assert valid(
        {
            "request_id": "CHG-1",
            "decision": "deny",
            "workflow_id": WF,
            "approver": "a@example.com",
            "approver_name": "A",
            "hold_job_name": "deploy_gate_staging",
        }
    )


@pytest.mark.parametrize(
    "change",
    [
        {"decision": "maybe"},
        {"workflow_id": "../x"},
        {"request_id": ""},
        {"approver": "a\nb"},
        {"event": {"type": "approve"}},
    ],
)
def test_what_the_service_refuses_the_schema_refuses(change):
    body = {"request_id": "r", "decision": "approve", "workflow_id": WF, "approver": "a"}
    body.update(change)
    assert not valid(body)


def test_the_shell_example_signs_a_body_the_schema_accepts(tmp_path):
    """Runs the script with curl replaced by a recorder: the body it sends is valid, its
    signature verifies with the secret, and the secret is not on curl's command line."""
    import base64
    import hashlib
    import hmac

    recorder = tmp_path / "curl"
    recorder.write_text(
        "#!/usr/bin/env bash\n"
        'printf "%s\\n" "$@" > "$RECORD_ARGS"\n'
        "while [ $# -gt 0 ]; do\n"
        '  if [ "$1" = --data-binary ]; then printf "%s" "$2" > "$RECORD_BODY"; fi\n'
        "  shift\n"
        "done\n"
        'echo \'{"status":"queued"}\'\n'
    )
    recorder.chmod(0o755)
    secret_bytes = os.urandom(32)
    secret = "whsec_" + base64.b64encode(secret_bytes).decode().rstrip("=")
    env = dict(
        os.environ,
        PATH=f"{tmp_path}:{os.environ['PATH']}",
        APPROVER_URL="https://approver.example.com",
        APPROVER_WEBHOOK_SECRET=secret,
        RECORD_ARGS=str(tmp_path / "args"),
        RECORD_BODY=str(tmp_path / "body"),
    )
    out = subprocess.run(
        ["bash", str(SCRIPT), WF, "approve", 'Ann "the" O\\Brien', "deploy_gate_staging", "CHG-9"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "queued" in out.stdout
    body = (tmp_path / "body").read_text()
    sent = json.loads(body)
    assert valid(sent)
    assert sent == {
        "request_id": "CHG-9",
        "decision": "approve",
        "workflow_id": WF,
        "approver": 'Ann "the" O\\Brien',
        "hold_job_name": "deploy_gate_staging",
    }
    args = (tmp_path / "args").read_text().splitlines()
    assert "https://approver.example.com/webhooks/approval" in args
    headers = dict(a.split(": ", 1) for a in args if a.startswith("webhook-"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.{body}".encode()
    expected = base64.b64encode(hmac.new(secret_bytes, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == "v1," + expected
    assert secret not in "\n".join(args)
