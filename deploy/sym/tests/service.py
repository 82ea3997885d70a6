"""The real sym-circleci-approver binary and its built-in fake CircleCI, for end-to-end tests.

The binary is APPROVER_BIN, else target/debug/sym-circleci-approver (what `cargo test` builds).
Without it the end-to-end tests are skipped, unless APPROVER_E2E_REQUIRED=1 (CI), where a missing
binary is a failure.
"""

import json
import os
import secrets
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO_ROOT

STARTUP_SECONDS = 30


def binary_path():
    return Path(os.environ.get("APPROVER_BIN") or REPO_ROOT / "target" / "debug" / "sym-circleci-approver")


def dev_binary_path(service_binary):
    """The developer binary (it has the fake CircleCI; the service binary has no test double):
    APPROVER_DEV_BIN, else `approver-dev` beside the service binary."""
    return Path(os.environ.get("APPROVER_DEV_BIN") or Path(service_binary).parent / "approver-dev")


def require_binary():
    path = binary_path()
    if path.is_file() and os.access(path, os.X_OK):
        return path
    message = "approver binary not found at %s (build it, or set APPROVER_BIN)" % path
    if os.environ.get("APPROVER_E2E_REQUIRED") == "1":
        pytest.fail(message)
    pytest.skip(message)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, headers=None, timeout=5):
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback only
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until(condition, timeout, what):
    """Poll condition() until it is truthy (returning its value) or fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %s s waiting for %s" % (timeout, what))
        time.sleep(0.05)


class ApproverService:
    def __init__(self, binary, workdir):
        self.binary = binary
        self.workdir = Path(workdir)
        self.secret = subprocess.run(
            [str(binary), "gen-secret"], check=True, capture_output=True, text=True
        ).stdout.strip()
        self.circleci_token = "e2e-" + secrets.token_hex(8)
        self.admin_token = "e2e-admin-" + secrets.token_hex(12)
        self.calls_file = self.workdir / "calls.jsonl"
        self.fake_port = free_port()
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.processes = []
        self.logs = []

    def spawn(self, name, args, env):
        log = open(self.workdir / (name + ".log"), "wb")  # noqa: SIM115 - closed in stop()
        self.logs.append(log)
        process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def start(self):
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("SYM_", "CIRCLECI_", "ADMIN_"))}
        self.spawn(
            "fake-circleci",
            [
                str(dev_binary_path(self.binary)), "fake-circleci", "--listen",
                "127.0.0.1:%d" % self.fake_port,
                "--any-workflow", "--token", self.circleci_token, "--calls-file", str(self.calls_file),
            ],
            base_env,
        )
        env = dict(base_env)
        env.update(
            {
                "SYM_WEBHOOK_SECRET": self.secret,
                "CIRCLECI_TOKEN": self.circleci_token,
                "CIRCLECI_API_URL": "http://127.0.0.1:%d/api/v2" % self.fake_port,
                "LISTEN_ADDR": "127.0.0.1:%d" % self.port,
                "DATABASE_URL": "sqlite://%s" % (self.workdir / "approver.db"),
                "ADMIN_TOKEN": self.admin_token,
                "LOG_FORMAT": "json",
            }
        )
        self.spawn("serve", [str(self.binary), "serve"], env)

        def ready():
            for process in self.processes:
                if process.poll() is not None:
                    raise AssertionError("%s exited early:\n%s" % (process.args[1], self.log_tail()))
            try:
                status, _ = http_get(self.url + "/readyz", timeout=1)
            except OSError:
                return False
            return status == 200

        wait_until(ready, STARTUP_SECONDS, "the approver service to answer /readyz")
        return self

    def stop(self):
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in self.logs:
            log.close()

    def log_tail(self, lines=30):
        out = []
        for name in ("serve", "fake-circleci"):
            path = self.workdir / (name + ".log")
            if path.exists():
                text = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
                out.append("----- %s\n%s" % (name, "\n".join(text)))
        return "\n".join(out)

    def calls(self, workflow_id, operation):
        """The fake CircleCI's recorded calls of one operation (list_jobs/approve/cancel) for a workflow."""
        if not self.calls_file.exists():
            return []
        needle = "/workflow/%s/" % workflow_id
        found = []
        for line in self.calls_file.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            call = json.loads(line)
            if call.get("operation") == operation and needle in call.get("path", ""):
                found.append(call)
        return found

    def approvals(self, workflow_id):
        """The service's audit API entries for a workflow (GET /v1/approvals?workflow_id=)."""
        status, body = http_get(
            "%s/v1/approvals?workflow_id=%s" % (self.url, workflow_id),
            headers={"Authorization": "Bearer " + self.admin_token},
        )
        assert status == 200, body
        return json.loads(body)["items"]


@pytest.fixture(scope="session")
def approver_service():
    binary = require_binary()
    with tempfile.TemporaryDirectory(prefix="sym-hook-e2e-") as workdir:
        service = ApproverService(binary, workdir).start()
        try:
            yield service
        finally:
            service.stop()
