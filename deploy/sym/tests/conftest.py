"""Shared helpers for the impl.py tests: import paths, a fake Sym event, a scripted HTTP server."""

import datetime
import http.server
import json
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

TESTS_DIR = Path(__file__).resolve().parent
SYM_DIR = TESTS_DIR.parent
REPO_ROOT = SYM_DIR.parent.parent

# The stand-in sym.sdk first, then deploy/sym for impl.py itself.
for path in (TESTS_DIR / "stubs", SYM_DIR):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: runs the real approver binary and its fake CircleCI")


def shared_reference_dir():
    """The reference data (Sym's schema and sample event, Standard Webhooks vectors) kept in the repo."""
    return REPO_ROOT / "tests" / "fixtures"


class FakeSecret:
    def __init__(self, value):
        self._value = value

    def retrieve_value(self):
        return self._value


class FakeIdentity:
    def __init__(self, service, service_id, user_id):
        self.service = service
        self.service_id = service_id
        self.user_id = user_id


class FakeUser:
    def __init__(self):
        self.first_name = "Alice"
        self.last_name = "Approver"
        self.email = "alice@example.com"
        self.username = "alice@example.com"
        self.srn = "acme:user:4f36af92-f3a6-4476-b7d4-f7ee82efe088:latest"
        self.identities = {"slack": [FakeIdentity("slack", "TABC123", "UABC123")]}

    def identity(self, service_type, service_id=None):
        found = self.identities.get(service_type) or [None]
        return found[0]


def make_event(
    secret="whsec_a4ayc/80/OGda4BO/1o/V0etpOqiLx1J",
    approver_url="http://127.0.0.1:9",
    workflow_id="7b2d6c1e-8f3a-4b5c-9d0e-1f2a3b4c5d6e",
    run_srn="acme:run:ci-approval:1.0.0:4e41814e-34b2-418c-9582-2d8bc610ea2a",
    event_type="approve",
    hold_job_name=None,
    budget_seconds=None,
):
    """An object shaped like sym.sdk.event.Event for the attributes impl.py reads.

    The SDK (sym-sdk 0.61, sym/sdk/event.py) puts the time on event.payload.timestamp and the
    prompt fields on event.payload.fields; event.user is the user who triggered the event.
    """
    fields = {
        "workflow_id": workflow_id,
        "workflow_url": "https://app.circleci.com/pipelines/gh/acme/api/42/workflows/" + str(workflow_id),
        "merging_user": "bob",
    }
    if hold_job_name is not None:
        fields["hold_job_name"] = hold_job_name
    flow_vars = {"approver_url": approver_url, "approvals_channel": "#ci-approvals"}
    if budget_seconds is not None:
        flow_vars["delivery_budget_seconds"] = str(budget_seconds)
    integration = SimpleNamespace(settings={"secrets": [FakeSecret(secret)]})
    user = FakeUser()
    return SimpleNamespace(
        srn="sym:event-spec:approval:1.0.0:" + event_type,
        name=event_type,
        run=SimpleNamespace(srn=run_srn),
        flow=SimpleNamespace(
            srn="acme:flow:ci-approval:1.0.0",
            vars=flow_vars,
            environment=SimpleNamespace(integrations={"approver": integration}),
        ),
        template=SimpleNamespace(srn="sym:template:approval:1.0.0"),
        channel=SimpleNamespace(type="slack"),
        payload=SimpleNamespace(
            fields=fields,
            timestamp=datetime.datetime(2026, 11, 22, 12, 0, 0, 123456, tzinfo=datetime.timezone.utc),
            user=user,
        ),
        user=user,
    )


class ScriptedServer:
    """A local HTTP server answering POSTs from a script (the last answer repeats).

    Each answer is a status code, or (status, {header: value}) for answers such as
    503 with Retry-After. Requests are recorded with their arrival time (time.monotonic()).
    """

    def __init__(self, statuses):
        self.statuses = list(statuses)
        self.requests = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                outer.requests.append(
                    {
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                        "at": time.monotonic(),
                    }
                )
                index = min(len(outer.requests), len(outer.statuses)) - 1
                answer = outer.statuses[index]
                status, extra = answer if isinstance(answer, tuple) else (answer, {})
                payload = json.dumps({"status": status}).encode()
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted_server():
    servers = []

    def start(statuses):
        server = ScriptedServer(statuses).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.__exit__(None, None, None)
