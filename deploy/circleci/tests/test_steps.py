"""The two approver steps of deploy/circleci/config.yml, run with bash against local HTTP servers.

    pytest deploy/circleci/tests

Each test takes the step's `command` and `environment` out of config.yml with PyYAML, fills in
the job parameters as CircleCI would (the workflow's values, else the job's defaults) and runs
it with `bash -eo pipefail` (CircleCI's default shell) and the curl and jq of this machine, as
cimg/base provides them. APPROVER_URL points at a local server scripted per test. The end-to-end
verdicts against the real service are tested on the service side.
"""

import http.server
import json
import re
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml

CONFIG = Path(__file__).resolve().parent.parent / "config.yml"
GATE_STEP = "Register this workflow's Sym gate with sym-circleci-approver"
VERDICT_STEP = "Check the approver's verdict for this workflow"
GATE_TOKEN = "gate-token-" + uuid.uuid4().hex
VERDICT_TOKEN = "verdict-token-" + uuid.uuid4().hex
RUN_ID = "2f0a9b2e-6c1d-4d8a-9e4b-7a1c3d5e6f70"


def load_step(job_name, step_name):
    """(command, environment) of a run step, parameters substituted from the workflow invocation."""
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    job = config["jobs"][job_name]
    params = {name: spec.get("default", "") for name, spec in job.get("parameters", {}).items()}
    for workflow in config["workflows"].values():
        for entry in workflow["jobs"]:
            if isinstance(entry, dict) and job_name in entry:
                params.update({k: v for k, v in entry[job_name].items() if k in params})
    for step in job["steps"]:
        run = step.get("run") if isinstance(step, dict) else None
        if isinstance(run, dict) and run.get("name") == step_name:
            env = {}
            for key, value in (run.get("environment") or {}).items():
                env[key] = re.sub(r"<<\s*parameters\.(\w+)\s*>>", lambda m: str(params[m.group(1)]), str(value))
            assert "<<" not in run["command"], "parameters inside the script would not be testable"
            return run["command"], env
    raise AssertionError("no step %r in job %s" % (step_name, job_name))


class Approver:
    """A local HTTP server answering from a script of (status, json body, headers); the last repeats."""

    def __init__(self, script):
        self.script = list(script)
        self.requests = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                outer.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                        "at": time.monotonic(),
                    }
                )
                status, payload, headers = outer.script[min(len(outer.requests), len(outer.script)) - 1]
                data = json.dumps(payload).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = answer  # noqa: N815 - http.server's naming
            do_POST = answer  # noqa: N815

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def approver():
    servers = []

    def start(*script):
        server = Approver([s if len(s) == 3 else (s[0], s[1], {}) for s in script])
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def closed_port_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return "http://127.0.0.1:%d" % s.getsockname()[1]


def run_step(job, step, url, tmp_path, extra_env=None):
    command, env = load_step(job, step)
    env.update(
        {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(tmp_path),
            "TMPDIR": str(tmp_path),
            "CIRCLE_WORKFLOW_ID": WORKFLOW_ID,
            "APPROVER_URL": url,
            "APPROVER_GATE_TOKEN": GATE_TOKEN,
            "APPROVER_VERDICT_TOKEN": VERDICT_TOKEN,
        }
    )
    env.update(extra_env or {})
    started = time.monotonic()
    result = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", command], env=env, capture_output=True, text=True, timeout=120
    )
    result.elapsed = time.monotonic() - started
    result.output = result.stdout + result.stderr
    assert GATE_TOKEN not in result.output and VERDICT_TOKEN not in result.output
    return result


WORKFLOW_ID = "5d3c1e7a-0b9f-4c2d-8e6a-1f2b3c4d5e6f"


# ------------------------------------------------------------------------------------------
# Gate registration (job register_sym_gate)
# ------------------------------------------------------------------------------------------


@pytest.fixture
def requests_file(tmp_path):
    """sym/requests.json as sym/request saves it: {<request_slug>: <Sym API answer with run_id>}."""
    path = tmp_path / "workspace" / "sym" / "requests.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"prod-deploy": {"run_id": RUN_ID, "message": "ok"}}), encoding="utf-8")
    return path


def register(url, tmp_path, requests_file, **env):
    extra = {"SYM_REQUESTS_FILE": str(requests_file), "APPROVER_GATE_BACKOFF": "0"}
    extra.update(env)
    return run_step("register_sym_gate", GATE_STEP, url, tmp_path, extra)


def test_gate_201_registers_with_the_run_id_from_the_workspace(approver, tmp_path, requests_file):
    server = approver((201, {"status": "registered"}))
    result = register(server.url, tmp_path, requests_file)
    assert result.returncode == 0, result.output
    (request,) = server.requests
    assert request["method"] == "POST" and request["path"] == "/v1/gates"
    assert request["headers"]["authorization"] == "Bearer " + GATE_TOKEN
    assert request["headers"]["content-type"] == "application/json"
    assert json.loads(request["body"]) == {
        "workflow_id": WORKFLOW_ID,
        "sym_run_id": RUN_ID,
        "hold_job_name": "wait_for_sym_approval",  # the workflow's value for the job parameter
    }


def test_gate_without_a_hold_job_name_leaves_the_field_out(approver, tmp_path, requests_file):
    server = approver((201, {}))
    result = register(server.url, tmp_path, requests_file, HOLD_JOB_NAME="")
    assert result.returncode == 0, result.output
    assert json.loads(server.requests[0]["body"]) == {"workflow_id": WORKFLOW_ID, "sym_run_id": RUN_ID}


def test_gate_200_same_registration_again_passes(approver, tmp_path, requests_file):
    server = approver((200, {"status": "already_registered"}))
    result = register(server.url, tmp_path, requests_file)
    assert result.returncode == 0, result.output
    assert "already registered" in result.output


def test_gate_409_fails_the_job_with_the_answer_printed(approver, tmp_path, requests_file):
    server = approver((409, {"error": "conflict", "detail": "workflow is gated by another Sym run"}))
    result = register(server.url, tmp_path, requests_file)
    assert result.returncode == 1
    assert "HTTP 409" in result.output and "workflow is gated by another Sym run" in result.output
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_gate_other_4xx_fail_at_once(approver, tmp_path, requests_file, status):
    server = approver((status, {"error": "nope", "detail": "refused %d" % status}), (201, {}))
    result = register(server.url, tmp_path, requests_file)
    assert result.returncode == 1
    assert "refused %d" % status in result.output
    assert len(server.requests) == 1


def test_gate_503_then_201_is_retried_after_retry_after(approver, tmp_path, requests_file):
    server = approver((503, {"error": "unavailable"}, {"Retry-After": "1"}), (201, {"status": "registered"}))
    result = register(server.url, tmp_path, requests_file)
    assert result.returncode == 0, result.output
    first, second = server.requests
    assert second["at"] - first["at"] >= 1.0
    assert first["body"] == second["body"]


def test_gate_429_then_201_is_retried(approver, tmp_path, requests_file):
    server = approver((429, {"error": "overloaded"}, {"Retry-After": "1"}), (201, {}))
    result = register(server.url, tmp_path, requests_file)
    assert result.returncode == 0, result.output
    assert len(server.requests) == 2


def test_gate_persistent_500_fails_after_the_attempts(approver, tmp_path, requests_file):
    server = approver((500, {"error": "internal", "detail": "database down"}))
    result = register(server.url, tmp_path, requests_file, APPROVER_GATE_ATTEMPTS="3")
    assert result.returncode == 1
    assert len(server.requests) == 3
    assert "failed after 3 attempts" in result.output and "HTTP 500" in result.output


def test_gate_unreachable_service_fails_after_the_attempts(tmp_path, requests_file):
    result = register(closed_port_url(), tmp_path, requests_file, APPROVER_GATE_ATTEMPTS="2")
    assert result.returncode == 1
    assert "no answer" in result.output


def test_gate_without_sym_requests_json_fails_before_calling(approver, tmp_path):
    server = approver((201, {}))
    result = register(server.url, tmp_path, tmp_path / "missing.json")
    assert result.returncode == 1 and "sym/request must run first" in result.output
    assert server.requests == []


def test_gate_without_a_run_id_for_the_slug_fails(approver, tmp_path, requests_file):
    requests_file.write_text(json.dumps({"other-slug": {"run_id": RUN_ID}}), encoding="utf-8")
    server = approver((201, {}))
    result = register(server.url, tmp_path, requests_file)
    assert result.returncode == 1 and "No run_id for request_slug prod-deploy" in result.output
    assert server.requests == []


# ------------------------------------------------------------------------------------------
# Verdict (first step of job deploy)
# ------------------------------------------------------------------------------------------


def verdict_answer(verdict, detail, via=None):
    return (200, {"workflow_id": WORKFLOW_ID, "verdict": verdict, "detail": detail, "via": via})


def check_verdict(url, tmp_path, **env):
    extra = {"APPROVER_VERDICT_POLL": "1"}
    extra.update(env)
    return run_step("deploy", VERDICT_STEP, url, tmp_path, extra)


def test_verdict_approved_passes(approver, tmp_path):
    server = approver(verdict_answer("approved", "approved by alice@example.com through Sym", "sym"))
    result = check_verdict(server.url, tmp_path)
    assert result.returncode == 0, result.output
    assert "approved (via sym): approved by alice@example.com through Sym" in result.output
    (request,) = server.requests
    assert request["method"] == "GET"
    assert request["path"] == "/v1/verdicts/%s?hold_job=wait_for_sym_approval" % WORKFLOW_ID
    assert request["headers"]["authorization"] == "Bearer " + VERDICT_TOKEN


def test_verdict_approved_for_a_rerun_passes(approver, tmp_path):
    server = approver(verdict_answer("approved", "rerun of an approved workflow", "rerun"))
    result = check_verdict(server.url, tmp_path)
    assert result.returncode == 0, result.output
    assert "via rerun" in result.output


def test_verdict_not_approved_fails_at_once(approver, tmp_path):
    server = approver(verdict_answer("not_approved", "hold job released outside Sym (UI click)"))
    result = check_verdict(server.url, tmp_path)
    assert result.returncode == 1
    assert "NOT approved: hold job released outside Sym (UI click)" in result.output
    assert len(server.requests) == 1


def test_verdict_pending_waits_then_fails_saying_why(approver, tmp_path):
    server = approver(verdict_answer("pending", "approval queued, CircleCI not called yet"))
    result = check_verdict(server.url, tmp_path, APPROVER_VERDICT_WAIT="2")
    assert result.returncode == 1
    assert result.elapsed >= 2
    assert len(server.requests) >= 2
    assert "Gave up after" in result.output and "APPROVER_VERDICT_WAIT=2" in result.output
    assert "pending: approval queued, CircleCI not called yet" in result.output


def test_verdict_pending_then_approved_passes(approver, tmp_path):
    server = approver(verdict_answer("pending", "queued"), verdict_answer("approved", "approved", "sym"))
    result = check_verdict(server.url, tmp_path, APPROVER_VERDICT_WAIT="30")
    assert result.returncode == 0, result.output
    assert len(server.requests) == 2
    assert server.requests[1]["at"] - server.requests[0]["at"] >= 1.0  # APPROVER_VERDICT_POLL


def test_verdict_401_fails_at_once(approver, tmp_path):
    server = approver((401, {"error": "unauthorized", "detail": "missing or invalid token"}, {}))
    result = check_verdict(server.url, tmp_path)
    assert result.returncode == 1
    assert "HTTP 401" in result.output and "missing or invalid token" in result.output
    assert len(server.requests) == 1


def test_verdict_404_when_verdicts_are_off_fails_at_once(approver, tmp_path):
    server = approver((404, {"error": "not_found", "detail": "verdicts are not enabled"}, {}))
    result = check_verdict(server.url, tmp_path)
    assert result.returncode == 1
    assert "HTTP 404" in result.output and "verdicts are not enabled" in result.output
    assert len(server.requests) == 1


def test_verdict_503_with_retry_after_then_approved_passes(approver, tmp_path):
    server = approver(
        (503, {"error": "store_unavailable", "detail": "store down"}, {"Retry-After": "1"}),
        verdict_answer("approved", "approved", "sym"),
    )
    result = check_verdict(server.url, tmp_path, APPROVER_VERDICT_WAIT="30", APPROVER_VERDICT_POLL="5")
    assert result.returncode == 0, result.output
    assert 1.0 <= server.requests[1]["at"] - server.requests[0]["at"] < 5  # Retry-After, not the poll
    assert "store down" in result.output


def test_verdict_persistent_500_fails_at_the_limit(approver, tmp_path):
    server = approver((500, {"error": "internal", "detail": "boom"}, {}))
    result = check_verdict(server.url, tmp_path, APPROVER_VERDICT_WAIT="2")
    assert result.returncode == 1
    assert "Gave up after" in result.output and "HTTP 500: boom" in result.output
    assert len(server.requests) >= 2


def test_verdict_unreachable_service_fails_at_the_limit(tmp_path):
    result = check_verdict(closed_port_url(), tmp_path, APPROVER_VERDICT_WAIT="1")
    assert result.returncode == 1
    assert "no answer from" in result.output


def test_verdict_hold_job_name_is_url_encoded(approver, tmp_path):
    server = approver(verdict_answer("approved", "ok", "sym"))
    result = check_verdict(server.url, tmp_path, HOLD_JOB_NAME="deploy gate/prod")
    assert result.returncode == 0, result.output
    assert server.requests[0]["path"] == "/v1/verdicts/%s?hold_job=deploy%%20gate%%2Fprod" % WORKFLOW_ID


def test_verdict_without_hold_job_name_asks_for_the_default(approver, tmp_path):
    server = approver(verdict_answer("approved", "ok", "sym"))
    result = check_verdict(server.url, tmp_path, HOLD_JOB_NAME="")
    assert result.returncode == 0, result.output
    assert server.requests[0]["path"] == "/v1/verdicts/%s" % WORKFLOW_ID


# ------------------------------------------------------------------------------------------
# The workflow's shape: Sym's tutorial order, plus the gate job
# ------------------------------------------------------------------------------------------


def test_workflow_follows_syms_tutorial_order():
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    assert config["orbs"]["sym"] == "sym/sym@1.3.1"
    (workflow,) = config["workflows"].values()
    jobs = {}
    for entry in workflow["jobs"]:
        name, spec = next(iter(entry.items())) if isinstance(entry, dict) else (entry, {})
        jobs[name] = spec or {}
    assert jobs["register_sym_gate"]["requires"] == ["sym/request"]
    assert jobs["wait_for_sym_approval"] == {"type": "approval", "requires": ["register_sym_gate"]}
    assert jobs["sym/validate"]["requires"] == ["wait_for_sym_approval"]
    assert jobs["sym/validate"]["request_slug"] == jobs["sym/request"]["request_slug"]
    assert jobs["register_sym_gate"]["request_slug"] == jobs["sym/request"]["request_slug"]
    assert jobs["deploy"]["requires"] == ["sym/validate"]
    deploy_steps = config["jobs"]["deploy"]["steps"]
    assert deploy_steps[0]["run"]["name"] == VERDICT_STEP  # before anything else runs
    text = CONFIG.read_text(encoding="utf-8")
    assert "docker run" not in text and "ADMIN_TOKEN" not in text and "setup_remote_docker" not in text
    for job in ("register_sym_gate", "deploy"):
        assert config["executors"][config["jobs"][job]["executor"]]["docker"][0]["image"].startswith("cimg/base:")
