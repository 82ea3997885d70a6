#!/usr/bin/env bash
# Static checks and tests of the deploy kit (Dockerfile, deploy/**), no Docker engine needed:
#
#   bash .ci/deploy-checks.sh
#
#   hadolint        Dockerfile
#   ShellCheck      .ci/container-test.sh, .ci/deploy-checks.sh
#   kubernetes-validate --strict   deploy/kubernetes/*.yaml (offline schemas), plus the
#                   kustomization's resource list
#   checkov         Dockerfile, deploy/kubernetes, deploy/circleci, deploy/sym (terraform);
#                   accepted findings carry skip comments, listed in docs/deploy.md
#   compose config  deploy/docker-compose.yml (when docker-compose / docker compose exists)
#   yamllint        deploy/ (deploy/.yamllint)
#   terraform fmt   deploy/sym (only when terraform is installed)
#   pytest          deploy/sym/tests (impl.py: signing, fallbacks, retries; e2e when configured)
#
# The Python tools live in a private virtualenv (checkov pins old boto3/botocore and would break
# other tools in the system Python). It is reused across runs and reinstalled only when
# deploy/requirements-checks.txt changes. Override its place with DEPLOY_CHECKS_VENV.
#
# Every check runs even after a failure; the exit status is non-zero if any failed.
set -Euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO}" || exit 1

# Kubernetes version to validate against: one whose schemas kubernetes-validate ships.
K8S_VERSION="${K8S_VERSION:-1.33.0}"
VENV="${DEPLOY_CHECKS_VENV:-${XDG_CACHE_HOME:-${HOME}/.cache}/sym-circleci-approver/deploy-checks-venv}"
REQUIREMENTS="deploy/requirements-checks.txt"

passed=0
failed=0
failed_names=()

# run NAME COMMAND...: runs one check, indents its output, records PASS/FAIL.
run() {
  local name=$1
  shift
  echo "----- ${name}: $*"
  local rc=0
  "$@" 2>&1 | sed 's/^/    /' || rc=$?
  # With pipefail, rc is the command's status unless sed itself failed.
  if [ "${rc}" -eq 0 ]; then
    passed=$((passed + 1))
    echo "PASS: ${name}"
  else
    failed=$((failed + 1))
    failed_names+=("${name}")
    echo "FAIL: ${name} (exit ${rc})"
  fi
}

# ---------------------------------------------------------------------------------------------
echo "----- tools: virtualenv ${VENV}"
stamp="${VENV}/.requirements.sha256"
want="$(sha256sum "${REQUIREMENTS}" | cut -d' ' -f1)"
if [ ! -x "${VENV}/bin/python" ] || [ "$(cat "${stamp}" 2>/dev/null)" != "${want}" ]; then
  rm -rf "${VENV}"
  python3 -m venv "${VENV}" &&
    "${VENV}/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip &&
    "${VENV}/bin/python" -m pip install --quiet --disable-pip-version-check -r "${REQUIREMENTS}" &&
    echo "${want}" >"${stamp}"
  rc=$?
  if [ "${rc}" -ne 0 ]; then
    echo "FAIL: installing the check tools from ${REQUIREMENTS} (pip exit ${rc})"
    echo "deploy-checks: 0 passed, 1 failed"
    exit 1
  fi
  echo "installed $(wc -l <"${REQUIREMENTS}") requirement lines"
else
  echo "up to date"
fi
export PATH="${VENV}/bin:${PATH}"

# ---------------------------------------------------------------------------------------------
run hadolint hadolint Dockerfile

run shellcheck shellcheck .ci/*.sh

k8s_manifests=()
for f in deploy/kubernetes/*.yaml deploy/kubernetes-replicas/*.yaml; do
  # kustomization.yaml is kustomize's own config, not an API object: no schema to validate.
  [ "$(basename "${f}")" = kustomization.yaml ] || k8s_manifests+=("${f}")
done
run kubernetes-validate kubernetes-validate --strict --kubernetes-version "${K8S_VERSION}" "${k8s_manifests[@]}"

check_kustomization() {
  python - <<'PY'
import pathlib, sys, yaml
base = pathlib.Path("deploy/kubernetes")
k = yaml.safe_load((base / "kustomization.yaml").read_text())
listed = set(k.get("resources", []))
missing = [r for r in listed if not (base / r).is_file()]
unlisted = sorted(p.name for p in base.glob("*.yaml") if p.name != "kustomization.yaml" and p.name not in listed)
print("resources:", ", ".join(sorted(listed)))
if missing or unlisted:
    print("missing files:", missing, "files not in kustomization:", unlisted)
    sys.exit(1)
PY
}
run kustomization-resources check_kustomization

# One run per target: mixing -f and -d in one checkov call repeats some reports and drops others.
# --skip-download: no calls to the vendor's platform (none is reachable in CI anyway).
checkov_quiet() { checkov --quiet --compact --skip-download "$@"; }
run checkov-dockerfile checkov_quiet --framework dockerfile -f Dockerfile
run checkov-kubernetes checkov_quiet --framework kubernetes -d deploy/kubernetes
run checkov-kubernetes-replicas checkov_quiet --framework kubernetes -d deploy/kubernetes-replicas
run checkov-circleci checkov_quiet --framework circleci_pipelines -d deploy/circleci
# The runtime-connector module comes from the Terraform registry, which is not reachable here;
# checkov scans this configuration without it (and says so in a warning).
run checkov-terraform checkov_quiet --framework terraform -d deploy/sym

compose_config() {
  local f
  if command -v docker-compose >/dev/null 2>&1; then
    for f in deploy/docker-compose.yml deploy/docker-compose.replicas.yml; do
      APPROVER_DB_PASSWORD=dummy docker-compose -f "${f}" config --quiet
    done
  elif docker compose version >/dev/null 2>&1; then
    for f in deploy/docker-compose.yml deploy/docker-compose.replicas.yml; do
      APPROVER_DB_PASSWORD=dummy docker compose -f "${f}" config --quiet
    done
  else
    echo "no docker-compose or docker compose plugin: compose file not validated"
  fi
}
run compose-config compose_config

run yamllint yamllint --strict -c deploy/.yamllint deploy/

terraform_fmt() {
  if ! command -v terraform >/dev/null 2>&1; then
    echo "terraform not installed: fmt check skipped"
    return 0
  fi
  # A TF_CLI_CONFIG_FILE pointing at a missing file only produces a warning; drop it.
  if [ -n "${TF_CLI_CONFIG_FILE:-}" ] && [ ! -f "${TF_CLI_CONFIG_FILE}" ]; then
    unset TF_CLI_CONFIG_FILE
  fi
  terraform fmt -check -diff -recursive deploy/sym
}
run terraform-fmt terraform_fmt

# The reference data the tests read lives in tests/fixtures/.
run pytest python -m pytest -q -p no:cacheprovider deploy/sym/tests

# ---------------------------------------------------------------------------------------------
if [ "${failed}" -gt 0 ]; then
  echo "failed: ${failed_names[*]}"
fi
echo "deploy-checks: ${passed} passed, ${failed} failed"
[ "${failed}" -eq 0 ]
