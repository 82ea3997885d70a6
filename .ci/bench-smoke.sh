#!/usr/bin/env bash
# Smoke run of the benchmark (scripts/bench --quick): proves the harness works end to end,
# every row produced, JSON and SVG written. Numbers are not checked (a CI machine is no place
# for performance targets); only a broken harness fails this.
#
#   bash .ci/bench-smoke.sh
#
# SQLite always; PostgreSQL too when a cluster is available (APPROVER_TEST_POSTGRES_URL set, or
# PostgreSQL's server binaries installed: then .ci/postgres.sh's throwaway cluster is used).
# Installs wrk and webhook from Debian's packages when missing. Outputs go to a temporary
# folder (docs/benchmark.* are left alone). Builds the release binary unless APPROVER_BIN names
# one. About a minute on a 2-core machine, plus the build.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v webhook >/dev/null || missing+=(webhook)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "== bench-smoke: installing ${missing[*]} (Debian packages)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

if [ -z "${APPROVER_BIN:-}" ]; then
  echo "== bench-smoke: cargo build --release --locked"
  cargo build --release --locked
  APPROVER_BIN="${CARGO_TARGET_DIR:-target}/release/sym-circleci-approver"
fi
APPROVER_BIN=$(realpath "$APPROVER_BIN")
export APPROVER_BIN

OUT=$(mktemp -d /tmp/approver-bench-smoke.XXXXXX)
trap 'rm -rf "$OUT"' EXIT

postgres=off
if [ -n "${APPROVER_TEST_POSTGRES_URL:-}" ] ||
  find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -name initdb -path '*/bin/*' 2>/dev/null |
  grep -q .; then
  postgres=auto
fi
echo "== bench-smoke: scripts/bench --quick (PostgreSQL: $postgres)"
started=$SECONDS
# Exit 0: the harness worked (targets met or not); anything else: it broke.
python3 scripts/bench --quick --postgres "$postgres" --json "$OUT/benchmark.json" \
  --svg "$OUT/benchmark.svg" --workdir "$OUT"

# Every row is there and measured (PostgreSQL rows only when a cluster was used).
python3 - "$OUT/benchmark.json" "$postgres" <<'EOF'
import json
import sys

report = json.load(open(sys.argv[1]))
with_postgres = sys.argv[2] != "off"
rows = {r["id"]: r for r in report["rows"]}
expected = [
    "healthz_rps", "forged_rps", "forged_ratio", "sqlite_accepted_rps", "sqlite_drained",
    "latency_p50", "latency_p99", "idle_rss", "flood_p99", "flood_refused", "peer_forged_rps",
]
if with_postgres:
    expected += [
        "postgres_accepted_rps", "postgres_drained", "postgres_2_accepted_rps",
        "postgres_2_drained",
    ]
problems = [f"{i}: missing" for i in expected if i not in rows]
problems += [
    f"{i}: not measured ({rows[i]['notes']})"
    for i in expected
    if i in rows and not isinstance(rows[i]["value"], (int, float))
]
for key in ("cores", "kernel"):
    if not report["machine"].get(key):
        problems.append(f"machine.{key} missing")
if problems:
    sys.exit("bench-smoke: " + "; ".join(problems))
print(f"bench-smoke: {len(expected)} rows measured")
EOF
grep -q '<svg' "$OUT/benchmark.svg"
# The idle-gap probe docs/benchmark.md quotes: it runs and prints its three figures.
python3 scripts/cold-path --samples 10 --dir "$OUT" | grep -c '×)' | grep -qx 3
echo "== bench-smoke passed ($((SECONDS - started)) s)"
