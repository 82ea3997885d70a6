#!/usr/bin/env python3
"""Load run: accepted deliveries per second, per backend. A benchmark, not a test.

Starts the release binary (and the built-in fake CircleCI) on loopback, sends N signed Sym
approve deliveries (each a new Sym event, so each one is a durable insert of a delivery and its
task) from C concurrent HTTP/1.1 keep-alive clients, and prints accepted deliveries per second
and latency percentiles. The worker runs as in production meanwhile: every event names its own
workflow, which the built-in fake CircleCI does not know (it serves one), so each task is
claimed, tried (404), recorded and rescheduled with backoff over and over during the run; the
store serves those reads and writes too, as it would while CircleCI is slow to show workflows.

Only the Python standard library; everything stays on 127.0.0.1; the run is bounded by
--deliveries and --max-seconds.

    cargo build --release
    python3 scripts/load-test.py --backend sqlite
    # PostgreSQL: a throwaway cluster (fsync on, like SQLite's synchronous=FULL, for a fair run)
    APPROVER_TEST_PG_FSYNC=on .ci/postgres.sh -- python3 scripts/load-test.py --backend all
"""

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "load-test-circleci-token"


def log(msg):
    print(f"[load-test] {msg}", file=sys.stderr, flush=True)


class Proc:
    """A child process whose stdout goes to a file we can search."""

    def __init__(self, name, args, env, workdir):
        self.name = name
        self.out_path = os.path.join(workdir, f"{name}.out")
        self.out = open(self.out_path, "wb")
        self.proc = subprocess.Popen(
            args, env=env, stdout=self.out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    def wait_for_line(self, predicate, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with open(self.out_path, "rb") as f:
                for raw in f:
                    found = predicate(raw.decode("utf-8", "replace"))
                    if found:
                        return found
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited:\n{open(self.out_path).read()[-3000:]}")
            time.sleep(0.05)
        raise SystemExit(f"{self.name}: expected line not seen within {timeout}s")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()


def listening_addr(line):
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if isinstance(event, dict) and event.get("message") == "listening":
        return event.get("addr")
    return None


def sign(key, webhook_id, timestamp, body):
    mac = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def approve_body(event_id, workflow_id):
    now = datetime.now(timezone.utc).isoformat()
    return json.dumps(
        {
            "id": event_id,
            "meta": {"schema_version": 4},
            "state": {"status": "completed", "errors": []},
            "run": {
                "srn": f"acme:run:ci-approval:1.0.0:{uuid.uuid4()}",
                "flow": "acme:flow:ci-approval:1.0.0",
            },
            "event": {
                "srn": "sym:event-spec:approval:1.0.0:approve",
                "type": "approve",
                "template": "sym:template:approval:1.0.0",
                "timestamp": now,
                "channel": "slack",
            },
            "actor": {
                "user": f"acme:user:{uuid.uuid4()}:latest",
                "name": "Load Test",
                "username": "load@example.com",
                "identity": {"service": "slack", "external_id": "T0", "user_id": "U0"},
            },
            "fields": {
                "workflow_id": workflow_id,
                "workflow_url": f"https://app.circleci.com/pipelines/workflows/{workflow_id}",
                "merging_user": "load",
            },
            "type": "event",
        }
    ).encode()


def sender(addrs, key, jobs, results, lock, stop_at):
    """One client: a keep-alive connection per replica, deliveries round-robin."""
    conns = [http.client.HTTPConnection(*a.rsplit(":", 1), timeout=30) for a in addrs]
    n = 0
    while time.monotonic() < stop_at:
        with lock:
            if jobs[0] <= 0:
                break
            jobs[0] -= 1
        body = approve_body(str(uuid.uuid4()), str(uuid.uuid4()))
        webhook_id = f"msg_{uuid.uuid4().hex}"
        ts = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": sign(key, webhook_id, ts, body),
        }
        i = n % len(conns)
        n += 1
        started = time.perf_counter()
        try:
            conns[i].request("POST", "/webhooks/sym", body=body, headers=headers)
            response = conns[i].getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException):
            conns[i].close()
            conns[i] = http.client.HTTPConnection(*addrs[i].rsplit(":", 1), timeout=30)
            status = 0
        took = time.perf_counter() - started
        with lock:
            results.append((status, took))
    for c in conns:
        c.close()


def run_load(addrs, key, deliveries, concurrency, max_seconds):
    results, lock = [], threading.Lock()
    jobs = [deliveries]
    started = time.monotonic()
    threads = [
        threading.Thread(
            target=sender,
            args=(addrs, key, jobs, results, lock, started + max_seconds),
        )
        for _ in range(concurrency)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.monotonic() - started


def circleci_calls(addr):
    """The worker's CircleCI calls so far (from /metrics): shows it was busy during the run."""
    conn = http.client.HTTPConnection(*addr.rsplit(":", 1), timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    total = 0
    for line in text.splitlines():
        if line.startswith("sym_approver_circleci_requests_total{"):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def psql(admin_url, sql):
    subprocess.run(
        ["psql", admin_url, "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def measure(label, backend, replicas, args, binary, workdir):
    key = secrets.token_bytes(32)
    secret = "whsec_" + base64.b64encode(key).decode()
    fake_workflow = str(uuid.uuid4())
    drop = None
    if backend == "sqlite":
        db_url = f"sqlite://{workdir}/{label}/approver.db"
    else:
        admin = args.postgres_url
        name = f"approver_load_{uuid.uuid4().hex[:12]}"
        psql(admin, f"CREATE DATABASE {name}")
        drop = lambda: psql(admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # noqa: E731
        db_url = admin.rsplit("/", 1)[0] + "/" + name

    base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    procs = []
    try:
        fake = Proc(
            f"{label}-fake",
            [binary, "fake-circleci", "--workflow-id", fake_workflow],
            dict(base_env, CIRCLECI_TOKEN=TOKEN),
            workdir,
        )
        procs.append(fake)
        api = fake.wait_for_line(
            lambda l: l.split("listening on ", 1)[1].strip() if "listening on " in l else None
        )
        env = dict(
            base_env,
            SYM_WEBHOOK_SECRET=secret,
            CIRCLECI_TOKEN=TOKEN,
            CIRCLECI_API_URL=api,
            DATABASE_URL=db_url,
            LISTEN_ADDR="127.0.0.1:0",
            LOG_FORMAT="json",
            RUST_LOG="info",
            MAX_CONCURRENT_REQUESTS="1024",
        )
        addrs = []
        for r in range(replicas):
            p = Proc(f"{label}-replica{r}", [binary, "serve"], env, workdir)
            procs.append(p)
            addrs.append(p.wait_for_line(listening_addr))

        # Warm-up (connections, caches), then the measured run.
        run_load(addrs, key, min(200, args.deliveries), args.concurrency, 30)
        results, elapsed = run_load(
            addrs, key, args.deliveries, args.concurrency, args.max_seconds
        )
        worker_calls = sum(circleci_calls(a) for a in addrs)
    finally:
        for p in reversed(procs):
            p.stop()
        if drop:
            drop()

    accepted = [t for s, t in results if s == 202]
    others = {}
    for s, _ in results:
        if s != 202:
            others[s] = others.get(s, 0) + 1
    lat = sorted(accepted) or [0.0]
    row = {
        "backend": label,
        "replicas": replicas,
        "sent": len(results),
        "accepted": len(accepted),
        "other_statuses": others,
        "seconds": round(elapsed, 2),
        "accepted_per_second": round(len(accepted) / elapsed, 1) if elapsed else 0.0,
        "p50_ms": round(statistics.median(lat) * 1000, 1),
        "p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000, 1),
        "worker_circleci_calls": worker_calls,
    }
    log(json.dumps(row))
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "all"], default="sqlite")
    parser.add_argument("--deliveries", type=int, default=3000, help="measured deliveries per run")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent HTTP clients")
    parser.add_argument("--max-seconds", type=float, default=120, help="time bound per run")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("APPROVER_TEST_POSTGRES_URL"),
        help="admin URL of a PostgreSQL server (a database is made and dropped per run)",
    )
    parser.add_argument(
        "--binary", default=os.path.join(ROOT, "target", "release", "sym-circleci-approver")
    )
    args = parser.parse_args()
    if not 1 <= args.deliveries <= 100_000 or not 1 <= args.concurrency <= 256:
        parser.error("--deliveries must be 1..100000 and --concurrency 1..256")
    if not os.access(args.binary, os.X_OK):
        parser.error(f"{args.binary} missing: run `cargo build --release` first")

    plans = []
    if args.backend in ("sqlite", "all"):
        plans.append(("sqlite", "sqlite", 1))
    if args.backend in ("postgres", "all"):
        if not args.postgres_url:
            parser.error("PostgreSQL needs --postgres-url or APPROVER_TEST_POSTGRES_URL")
        if shutil.which("psql") is None:
            parser.error("psql is needed to create the benchmark database")
        plans.append(("postgres", "postgres", 1))
        plans.append(("postgres-2-replicas", "postgres", 2))

    workdir = tempfile.mkdtemp(prefix="approver-load.", dir=os.path.join(ROOT, "target"))
    try:
        rows = [measure(label, backend, n, args, args.binary, workdir) for label, backend, n in plans]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"\n{args.deliveries} deliveries, {args.concurrency} concurrent clients, {os.cpu_count()} CPUs\n")
    print(
        "| backend | replicas | accepted | other answers | seconds | accepted/s | p50 ms | p99 ms "
        "| worker CircleCI calls |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        others = ", ".join(f"{k}: {v}" for k, v in sorted(r["other_statuses"].items())) or "none"
        print(
            f"| {r['backend']} | {r['replicas']} | {r['accepted']} | {others} | {r['seconds']} "
            f"| {r['accepted_per_second']} | {r['p50_ms']} | {r['p99_ms']} "
            f"| {r['worker_circleci_calls']} |"
        )


if __name__ == "__main__":
    main()
