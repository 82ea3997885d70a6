#!/usr/bin/env bash
# The monitoring kit: Prometheus' own promtool checks the alert rules and runs their unit
# tests; the Grafana dashboard must be valid JSON whose store-wide gauges use max, not sum
# (every replica reports the same store).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v promtool >/dev/null 2>&1; then
  echo "== installing promtool (Debian's prometheus package)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    prometheus >/dev/null
fi
promtool --version | head -n 1
promtool check rules deploy/monitoring/alerts.yml
promtool test rules deploy/monitoring/alerts.test.yml

python3 - <<'PY'
import json, re, sys
dash = json.load(open("deploy/monitoring/grafana-dashboard.json"))
exprs = []
def walk(node):
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            exprs.append(node["expr"])
        for v in node.values():
            walk(v)
    elif isinstance(node, list):
        for v in node:
            walk(v)
walk(dash)
store_wide = ("sym_approver_pending_tasks", "sym_approver_oldest_pending_task_age_seconds")
bad = [e for e in exprs for g in store_wide if re.search(r"\bsum\s*\(\s*" + g, e)]
if bad:
    sys.exit("store-wide gauges must be aggregated with max, not sum: %s" % bad)
print("dashboard: %d queries, store-wide gauges use max" % len(exprs))
PY
