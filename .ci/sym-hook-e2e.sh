#!/usr/bin/env bash
# The Sym flow's impl.py against the real running service: the after_approve hook must get a
# 202 and the fake CircleCI exactly one approve call. Uses the debug binary `cargo test` built
# and the virtualenv .ci/deploy-checks.sh made (run those first).
set -Eeuo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO}"
BIN="${APPROVER_BIN:-${REPO}/target/debug/sym-circleci-approver}"
VENV="${DEPLOY_CHECKS_VENV:-${XDG_CACHE_HOME:-${HOME}/.cache}/sym-circleci-approver/deploy-checks-venv}"
[ -x "${BIN}" ] || cargo build --locked
PY="${VENV}/bin/python"; [ -x "${PY}" ] || PY=python3

WORK="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "${p}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "${WORK}"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
FAKE_PORT="$(free_port)"
SVC_PORT="$(free_port)"
WORKFLOW="$(python3 -c 'import uuid;print(uuid.uuid4())')"
SECRET="$("${BIN}" gen-secret)"
TOKEN="e2e-token-$(python3 -c 'import secrets;print(secrets.token_hex(8))')"

"${BIN}" fake-circleci --listen "127.0.0.1:${FAKE_PORT}" --workflow-id "${WORKFLOW}" \
  --token "${TOKEN}" --calls-file "${WORK}/calls.jsonl" >"${WORK}/fake.log" 2>&1 &
pids+=($!)
SYM_WEBHOOK_SECRET="${SECRET}" CIRCLECI_TOKEN="${TOKEN}" \
  CIRCLECI_API_URL="http://127.0.0.1:${FAKE_PORT}/api/v2" LISTEN_ADDR="127.0.0.1:${SVC_PORT}" \
  DATABASE_URL="sqlite://${WORK}/approver.db" LOG_FORMAT=json \
  "${BIN}" serve >"${WORK}/serve.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 100); do
  LISTEN_ADDR="127.0.0.1:${SVC_PORT}" "${BIN}" healthcheck >/dev/null 2>&1 && break
  sleep 0.1
done

if APPROVER_E2E_URL="http://127.0.0.1:${SVC_PORT}" APPROVER_E2E_SECRET="${SECRET}" \
  APPROVER_E2E_CALLS_FILE="${WORK}/calls.jsonl" APPROVER_E2E_WORKFLOW_ID="${WORKFLOW}" \
  "${PY}" -m pytest -q -p no:cacheprovider deploy/sym/tests -k e2e; then
  echo "sym hook e2e: 1 passed, 0 failed"
else
  echo "----- service log"; tail -30 "${WORK}/serve.log"
  echo "sym hook e2e: 0 passed, 1 failed"
  exit 1
fi
