#!/usr/bin/env bash
# The Sym flow's impl.py, compiled and run under RestrictedPython on the published sym-sdk,
# against the real service and its built-in fake CircleCI: the sandboxed after_request must be
# accepted (200 "bound", or "ignored" from a service without the request binding) and release
# nothing, after_approve must get the hold job approved (one approve call at the fake), a repeat
# must be a duplicate, a deny must be recorded and a wrong secret refused
# (deploy/sym/tests/test_sandbox.py, tests marked e2e). .ci/deploy-checks.sh runs them too, with
# everything else; this is the focused run.
#
# Uses the binary APPROVER_BIN (default: the debug binary `cargo test` built; built here when
# missing) and the tests' virtualenv that .ci/deploy-checks.sh made (run that first).
set -Eeuo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO}"
export APPROVER_BIN="${APPROVER_BIN:-${REPO}/target/debug/sym-circleci-approver}"
VENV="${DEPLOY_TESTS_VENV:-${XDG_CACHE_HOME:-${HOME}/.cache}/sym-circleci-approver/deploy-tests-venv}"
[ -x "${APPROVER_BIN}" ] || cargo build --locked
PY="${VENV}/bin/python"
if [ ! -x "${PY}" ]; then
  echo "no ${PY}: run .ci/deploy-checks.sh first (it makes the tests' virtualenv)" >&2
  exit 1
fi
APPROVER_E2E_REQUIRED=1 "${PY}" -m pytest -q -p no:cacheprovider -m e2e deploy/sym/tests
