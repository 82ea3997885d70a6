"""Shared helpers for the impl.py tests: import paths, Sym's runtime (sym_runtime.py, on the
published sym-sdk), a scripted HTTP server."""

import http.server
import json
import sys
import threading
import time
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
SYM_DIR = TESTS_DIR.parent
REPO_ROOT = SYM_DIR.parent.parent

# deploy/sym for impl.py itself; sym.sdk is the published package (requirements.txt).
if str(SYM_DIR) not in sys.path:
    sys.path.insert(0, str(SYM_DIR))

from sym_runtime import Runtime, make_event  # noqa: E402,F401 - re-exported for the tests


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: runs the real approver binary and its fake CircleCI")


def shared_reference_dir():
    """The reference data (Sym's schema and sample event, Standard Webhooks vectors) kept in the repo."""
    return REPO_ROOT / "tests" / "fixtures"


@pytest.fixture
def runtime(monkeypatch):
    """Sym's runtime side of the SDK (Slack, template transitions), recording every call."""
    return Runtime().install(monkeypatch)


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
