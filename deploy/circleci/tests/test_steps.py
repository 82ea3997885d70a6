"""The two approver steps of deploy/circleci/config.yml, run with bash against local HTTP servers.

    pytest deploy/circleci/tests

Each test takes the step's `command` and `environment` out of config.yml with PyYAML, fills in
the job parameters as CircleCI would (the workflow's values, else the job's defaults) and runs
it with `bash -eo pipefail` (CircleCI's default shell) and the curl and jq of this machine, as
cimg/base provides them. APPROVER_URL points at a local server scripted per test. The end-to-end
verdicts against the real service are tested on the service side.

Authentication: the job's OIDC token (CIRCLE_OIDC_TOKEN_V2) by default; with
APPROVER_OIDC_AUDIENCE, a token from `circleci run oidc get --claims '{"aud": ...}'` (a fake
`circleci` on PATH here, recording its arguments); the static tokens only with APPROVER_AUTH=static.
curl itself is wrapped on PATH to record its arguments and the mode of the header file it reads:
no token may appear on a command line or in the output, and the header file must be mode 600.
"""

import http.server
import json
import re
import shutil
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
# Stand-ins for CircleCI's OIDC tokens (JWTs; their content is the service's business).
OIDC_TOKEN = "eyJhbGciOiJSUzI1NiJ9.oidc-v2-" + uuid.uuid4().hex + ".sig"
AUDIENCE_TOKEN = "eyJhbGciOiJSUzI1NiJ9.custom-aud-" + uuid.uuid4().hex + ".sig"
ALL_TOKENS = (GATE_TOKEN, VERDICT_TOKEN, OIDC_TOKEN, AUDIENCE_TOKEN)
REAL_CURL = shutil.which("curl")
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


FAKE_CURL = """#!/bin/bash
# Records curl's arguments (NUL-separated) and the mode of every @file it is given, then runs curl.
printf '%%s\\0' "$@" >>"${STEP_LOG_DIR}/curl.argv"
for arg in "$@"; do
  case "${arg}" in @*) stat -c '%%a' "${arg#@}" >>"${STEP_LOG_DIR}/curl.modes" ;; esac
done
exec %s "$@"
"""

FAKE_CIRCLECI = """#!/bin/bash
# The job's `circleci` command, as far as `circleci run oidc get` goes.
printf '%%s\\0' "$@" >>"${STEP_LOG_DIR}/circleci.argv"
if [ -n "${FAKE_CIRCLECI_FAIL:-}" ]; then echo "oidc: not available" >&2; exit 1; fi
printf '%%s\\n' "%s"
"""


def tool_dir(tmp_path, with_circleci):
    """A PATH directory with the recording curl (and the fake circleci when asked)."""
    bin_dir = tmp_path / ("bin-cli" if with_circleci else "bin")
    if not bin_dir.exists():
        bin_dir.mkdir()
        (bin_dir / "curl").write_text(FAKE_CURL % REAL_CURL, encoding="utf-8")
        (bin_dir / "curl").chmod(0o755)
        if with_circleci:
            (bin_dir / "circleci").write_text(FAKE_CIRCLECI % AUDIENCE_TOKEN, encoding="utf-8")
            (bin_dir / "circleci").chmod(0o755)
    return bin_dir


def run_step(job, step, url, tmp_path, extra_env=None, with_circleci=False):
    command, env = load_step(job, step)
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    for name in ("curl.argv", "curl.modes", "circleci.argv"):
        (logs / name).write_text("", encoding="utf-8")
    env.update(
        {
            "PATH": "%s:/usr/local/bin:/usr/bin:/bin" % tool_dir(tmp_path, with_circleci),
            "HOME": str(tmp_path),
            "TMPDIR": str(tmp_path),
            "STEP_LOG_DIR": str(logs),
            "CIRCLE_WORKFLOW_ID": WORKFLOW_ID,
            "CIRCLE_OIDC_TOKEN_V2": OIDC_TOKEN,
            "APPROVER_URL": url,
            # Present in the context but unused unless APPROVER_AUTH=static opts in.
            "APPROVER_GATE_TOKEN": GATE_TOKEN,
            "APPROVER_VERDICT_TOKEN": VERDICT_TOKEN,
        }
    )
    env.update(extra_env or {})
    env = {k: v for k, v in env.items() if v is not None}
    started = time.monotonic()
    result = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", command], env=env, capture_output=True, text=True, timeout=120
    )
    result.elapsed = time.monotonic() - started
    result.output = result.stdout + result.stderr
    result.curl_argv = [a for a in (logs / "curl.argv").read_text(encoding="utf-8").split("\0") if a]
    result.header_modes = (logs / "curl.modes").read_text(encoding="utf-8").split()
    result.circleci_argv = [a for a in (logs / "circleci.argv").read_text(encoding="utf-8").split("\0") if a]
    for token in ALL_TOKENS:
        assert token not in result.output, "a token was printed"
        assert all(token not in arg for arg in result.curl_argv), "a token was on curl's command line"
    assert all(mode == "600" for mode in result.header_modes), result.header_modes
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
    assert request["headers"]["authorization"] == "Bearer " + OIDC_TOKEN  # the job's OIDC token by default
    assert result.header_modes == ["600"]
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
    server = approver((409, {"error": "gate_conflict", "detail": "this hold job is gated by another Sym run"}))
    result = register(server.url, tmp_path, requests_file)
    assert result.returncode == 1
    assert "HTTP 409" in result.output and "this hold job is gated by another Sym run" in result.output
    assert "already gated by another Sym request" in result.output
    assert len(server.requests) == 1


@pytest.mark.parametrize("status", [400, 404, 422])
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
# Authentication, both steps: OIDC by default, a custom audience, the static opt-in, 401/403
# ------------------------------------------------------------------------------------------

STEPS = {
    "gate": ("register_sym_gate", GATE_STEP, (201, {"status": "registered"}), GATE_TOKEN),
    "verdict": ("deploy", VERDICT_STEP, (200, {"verdict": "approved", "detail": "ok", "via": "sym"}), VERDICT_TOKEN),
}


def run_auth(name, approver, tmp_path, requests_file, answer=None, with_circleci=False, **env):
    job, step, ok, _ = STEPS[name]
    server = approver(answer or ok)
    extra = {"SYM_REQUESTS_FILE": str(requests_file), "APPROVER_GATE_BACKOFF": "0", "APPROVER_VERDICT_POLL": "1"}
    extra.update(env)
    return server, run_step(job, step, server.url, tmp_path, extra, with_circleci=with_circleci)


@pytest.mark.parametrize("name", sorted(STEPS))
def test_custom_audience_token_comes_from_circleci_run_oidc_get(approver, tmp_path, requests_file, name):
    server, result = run_auth(
        name, approver, tmp_path, requests_file, with_circleci=True, APPROVER_OIDC_AUDIENCE="approver.example.com"
    )
    assert result.returncode == 0, result.output
    assert result.circleci_argv == ["run", "oidc", "get", "--claims", '{"aud":"approver.example.com"}']
    (request,) = server.requests
    assert request["headers"]["authorization"] == "Bearer " + AUDIENCE_TOKEN
    assert result.header_modes == ["600"]


@pytest.mark.parametrize("name", sorted(STEPS))
def test_custom_audience_without_a_circleci_command_fails_before_calling(approver, tmp_path, requests_file, name):
    server, result = run_auth(name, approver, tmp_path, requests_file, APPROVER_OIDC_AUDIENCE="approver.example.com")
    assert result.returncode == 1 and "no circleci command" in result.output
    assert server.requests == []


@pytest.mark.parametrize("name", sorted(STEPS))
def test_a_failing_circleci_run_oidc_get_fails_before_calling(approver, tmp_path, requests_file, name):
    server, result = run_auth(
        name, approver, tmp_path, requests_file, with_circleci=True,
        APPROVER_OIDC_AUDIENCE="approver.example.com", FAKE_CIRCLECI_FAIL="1",
    )
    assert result.returncode == 1 and "gave no token for audience approver.example.com" in result.output
    assert server.requests == []


@pytest.mark.parametrize("name", sorted(STEPS))
def test_no_oidc_token_fails_and_points_at_the_static_fallback(approver, tmp_path, requests_file, name):
    server, result = run_auth(name, approver, tmp_path, requests_file, CIRCLE_OIDC_TOKEN_V2=None)
    assert result.returncode == 1
    assert "CIRCLE_OIDC_TOKEN_V2 is empty" in result.output and "APPROVER_AUTH=static" in result.output
    assert server.requests == []


@pytest.mark.parametrize("name", sorted(STEPS))
def test_static_tokens_only_when_opted_in(approver, tmp_path, requests_file, name):
    _, _, _, static = STEPS[name]
    server, result = run_auth(name, approver, tmp_path, requests_file, APPROVER_AUTH="static")
    assert result.returncode == 0, result.output
    (request,) = server.requests
    assert request["headers"]["authorization"] == "Bearer " + static
    assert result.header_modes == ["600"]
    variable = "APPROVER_GATE_TOKEN" if name == "gate" else "APPROVER_VERDICT_TOKEN"
    server, result = run_auth(name, approver, tmp_path, requests_file, APPROVER_AUTH="static", **{variable: None})
    assert result.returncode == 1 and ("needs %s" % variable) in result.output
    assert server.requests == []


@pytest.mark.parametrize("name", sorted(STEPS))
def test_an_unknown_auth_mode_fails(approver, tmp_path, requests_file, name):
    server, result = run_auth(name, approver, tmp_path, requests_file, APPROVER_AUTH="token")
    assert result.returncode == 1 and "APPROVER_AUTH must be oidc" in result.output
    assert server.requests == []


@pytest.mark.parametrize("name", sorted(STEPS))
def test_401_is_final_and_says_which_token_was_refused(approver, tmp_path, requests_file, name):
    answer = (401, {"error": "unauthorized", "detail": "token expired"})
    server, result = run_auth(name, approver, tmp_path, requests_file, answer=answer)
    assert result.returncode == 1 and len(server.requests) == 1
    assert "refused this job's oidc token (HTTP 401" in result.output and "token expired" in result.output
    assert "CIRCLECI_OIDC_ORG_ID" in result.output
    server, result = run_auth(name, approver, tmp_path, requests_file, answer=answer, APPROVER_AUTH="static")
    assert result.returncode == 1 and "refused this job's static token (HTTP 401" in result.output
    assert ("APPROVER_GATE_TOKEN" if name == "gate" else "APPROVER_VERDICT_TOKEN") in result.output


@pytest.mark.parametrize("name", sorted(STEPS))
def test_403_is_final_and_names_the_three_reasons(approver, tmp_path, requests_file, name):
    answer = (403, {"error": "forbidden", "detail": "the token is for pipeline 9f8e7d6c"})
    server, result = run_auth(name, approver, tmp_path, requests_file, answer=answer)
    assert result.returncode == 1 and len(server.requests) == 1
    assert "HTTP 403" in result.output and "the token is for pipeline 9f8e7d6c" in result.output
    for reason in ("another", "pipeline", "not in ALLOWED_PROJECTS", "SSH rerun"):
        assert reason in result.output


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
    assert request["headers"]["authorization"] == "Bearer " + OIDC_TOKEN  # the job's OIDC token by default
    assert result.header_modes == ["600"]


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
    # The static tokens are read only in the APPROVER_AUTH=static branch of each script.
    for job, step in (("register_sym_gate", GATE_STEP), ("deploy", VERDICT_STEP)):
        command, _ = load_step(job, step)
        start = re.search(r"^\s*static\)$", command, re.M).start()
        static_branch = command[start:command.index(";;", start)]
        outside = command.replace(static_branch, "")
        assert "APPROVER_GATE_TOKEN:-" not in outside and "APPROVER_VERDICT_TOKEN:-" not in outside
        assert 'token="${CIRCLE_OIDC_TOKEN_V2:-}"' in command
    for job in ("register_sym_gate", "deploy"):
        assert config["executors"][config["jobs"][job]["executor"]]["docker"][0]["image"].startswith("cimg/base:")
