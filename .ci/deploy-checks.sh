#!/usr/bin/env bash
# Static checks and tests of the deploy kit (Dockerfile, deploy/**), no Docker engine needed:
#
#   bash .ci/deploy-checks.sh
#
#   hadolint        Dockerfile
#   ShellCheck      .ci/*.sh, and the run steps of deploy/circleci/config.yml
#   kubernetes-validate --strict   deploy/kubernetes*/*.yaml (offline schemas)
#   kustomization   resources list every manifest but the Secret templates, and the rendered
#                   kit (kubectl kustomize, where kubectl exists) contains no Secret
#   checkov         Dockerfile, deploy/kubernetes*, deploy/circleci, deploy/sym (terraform);
#                   accepted findings carry skip comments, listed in docs/deploy.md
#   compose config  deploy/docker-compose*.yml (when docker-compose / docker compose exists)
#   yamllint        deploy/ (deploy/.yamllint)
#   CircleCI schema deploy/circleci/config.yml, and every workflow example in docs/deploy.md
#                   merged into it (check-jsonschema's vendored CircleCI schema)
#   retry contract  .ci/check-retry-contract.sh: no doc or kit file claims a retry by Sym
#   terraform fmt   deploy/sym (only when terraform is installed)
#   pytest          deploy/sym/tests (impl.py under RestrictedPython on the published sym-sdk,
#                   every handler, retries, the Terraform schema check, locals.tf evaluated by
#                   terraform console, and end to end against the real service binary) and
#                   deploy/circleci/tests (the gate and verdict steps against local servers, the
#                   job graphs of config.yml and the docs' examples)
#
# The end-to-end tests run the service binary APPROVER_BIN (default target/debug/
# sym-circleci-approver, built with `cargo build --locked` when missing).
#
# The Python tools live in private virtualenvs (checkov pins old boto3/botocore and would break
# other tools in the system Python; its bc-python-hcl2 and the tests' python-hcl2 both install
# a module named hcl2): one for the tools (deploy/requirements-checks.txt) and one for the tests
# (deploy/sym/tests/requirements.txt). Each is reused across runs and reinstalled only when its
# requirements file changes. Override their places with DEPLOY_CHECKS_VENV / DEPLOY_TESTS_VENV.
#
# Every check runs even after a failure; the exit status is non-zero if any failed.
set -Euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO}" || exit 1

# Kubernetes version to validate against: one whose schemas kubernetes-validate ships.
K8S_VERSION="${K8S_VERSION:-1.33.0}"
CACHE="${XDG_CACHE_HOME:-${HOME}/.cache}/sym-circleci-approver"
VENV="${DEPLOY_CHECKS_VENV:-${CACHE}/deploy-checks-venv}"
TESTS_VENV="${DEPLOY_TESTS_VENV:-${CACHE}/deploy-tests-venv}"
APPROVER_BIN="${APPROVER_BIN:-${REPO}/target/debug/sym-circleci-approver}"

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

# ensure_venv DIR REQUIREMENTS: (re)creates the virtualenv when the requirements changed.
ensure_venv() {
  local venv=$1 requirements=$2
  echo "----- tools: virtualenv ${venv} (${requirements})"
  local stamp="${venv}/.requirements.sha256" want
  want="$(sha256sum "${requirements}" | cut -d' ' -f1)"
  if [ -x "${venv}/bin/python" ] && [ "$(cat "${stamp}" 2>/dev/null)" = "${want}" ]; then
    echo "up to date"
    return 0
  fi
  rm -rf "${venv}"
  python3 -m venv "${venv}" &&
    "${venv}/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip &&
    "${venv}/bin/python" -m pip install --quiet --disable-pip-version-check -r "${requirements}" &&
    echo "${want}" >"${stamp}" &&
    echo "installed $(grep -cv '^#' "${requirements}") requirement lines"
}

# ---------------------------------------------------------------------------------------------
for pair in "${VENV}:deploy/requirements-checks.txt" "${TESTS_VENV}:deploy/sym/tests/requirements.txt"; do
  if ! ensure_venv "${pair%%:*}" "${pair#*:}"; then
    echo "FAIL: installing the tools from ${pair#*:}"
    echo "deploy-checks: 0 passed, 1 failed"
    exit 1
  fi
done
export PATH="${VENV}/bin:${PATH}"
TESTS_PY="${TESTS_VENV}/bin/python"

# ---------------------------------------------------------------------------------------------
run hadolint hadolint Dockerfile

run shellcheck shellcheck .ci/*.sh deploy/generic/*.sh

# The run steps of the CircleCI config are bash scripts too (CircleCI runs them with
# /bin/bash -eo pipefail): check each one as such.
shellcheck_circleci_steps() {
  local dir
  dir="$(mktemp -d)"
  "${TESTS_PY}" - "${dir}" <<'PY' || { rm -rf "${dir}"; return 1; }
import pathlib, re, sys, yaml
out = pathlib.Path(sys.argv[1])
config = yaml.safe_load(pathlib.Path("deploy/circleci/config.yml").read_text())
count = 0
for job_name, job in config["jobs"].items():
    for step in job.get("steps", []):
        run = step.get("run") if isinstance(step, dict) else None
        if isinstance(run, dict) and "\n" in run.get("command", ""):
            count += 1
            name = re.sub(r"\W+", "_", run["name"]).strip("_")
            exports = "".join("export %s=x\n" % key for key in (run.get("environment") or {}))
            (out / ("%s__%s.sh" % (job_name, name))).write_text("#!/bin/bash\n" + exports + run["command"])
print("%d multi-line run steps" % count)
PY
  shellcheck --shell=bash "${dir}"/*.sh
  local rc=$?
  rm -rf "${dir}"
  return "${rc}"
}
run shellcheck-circleci-steps shellcheck_circleci_steps

k8s_manifests=()
for f in deploy/kubernetes/*.yaml deploy/kubernetes-replicas/*.yaml; do
  # kustomization.yaml is kustomize's own config, not an API object: no schema to validate.
  [ "$(basename "${f}")" = kustomization.yaml ] || k8s_manifests+=("${f}")
done
run kubernetes-validate kubernetes-validate --strict --kubernetes-version "${K8S_VERSION}" "${k8s_manifests[@]}"

check_kustomization() {
  "${TESTS_PY}" - <<'PY' || return 1
import pathlib, sys, yaml
bad = False
for base in (pathlib.Path("deploy/kubernetes"), pathlib.Path("deploy/kubernetes-replicas")):
    k = yaml.safe_load((base / "kustomization.yaml").read_text())
    listed = set(k.get("resources", []))
    kinds = {p.name: yaml.safe_load(p.read_text()).get("kind") for p in base.glob("*.yaml") if p.name != "kustomization.yaml"}
    missing = sorted(r for r in listed if not (base / r).is_file())
    unlisted = sorted(n for n, kind in kinds.items() if n not in listed and kind != "Secret")
    secrets = sorted(n for n in listed if kinds.get(n) == "Secret")
    generators = k.get("secretGenerator")
    print("%s: %s" % (base, ", ".join(sorted(listed))))
    if missing or unlisted or secrets or generators:
        print("  missing files: %s, manifests not listed: %s, Secrets listed (apply -k would "
              "overwrite the real ones): %s, secretGenerator: %s" % (missing, unlisted, secrets, generators))
        bad = True
sys.exit(1 if bad else 0)
PY
  # The rendered kit, as `kubectl apply -k` would send it, must carry no Secret.
  if command -v kubectl >/dev/null 2>&1; then
    local dir
    for dir in deploy/kubernetes deploy/kubernetes-replicas; do
      kubectl kustomize "${dir}" >/dev/null || return 1
      if kubectl kustomize "${dir}" | grep -qE '^kind: Secret$'; then
        echo "${dir}: kubectl kustomize renders a Secret"
        return 1
      fi
      echo "${dir}: kubectl kustomize renders $(kubectl kustomize "${dir}" | grep -cE '^kind:') objects, no Secret"
    done
  else
    echo "kubectl not installed: rendered kustomization not checked"
  fi
}
run kustomization check_kustomization

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
  # The kits require these from the environment of `docker compose`; any value renders.
  local org_id=00000000-0000-4000-8000-000000000000
  if command -v docker-compose >/dev/null 2>&1; then
    for f in deploy/docker-compose.yml deploy/docker-compose.replicas.yml; do
      APPROVER_DB_PASSWORD=dummy CIRCLECI_OIDC_ORG_ID="${org_id}" docker-compose -f "${f}" config --quiet
    done
  elif docker compose version >/dev/null 2>&1; then
    for f in deploy/docker-compose.yml deploy/docker-compose.replicas.yml; do
      APPROVER_DB_PASSWORD=dummy CIRCLECI_OIDC_ORG_ID="${org_id}" docker compose -f "${f}" config --quiet
    done
  else
    echo "no docker-compose or docker compose plugin: compose file not validated"
  fi
}
run compose-config compose_config

run yamllint yamllint --strict -c deploy/.yamllint deploy/

run circleci-schema check-jsonschema --builtin-schema vendor.circle-ci deploy/circleci/config.yml

# The workflow examples in docs/deploy.md, each merged into config.yml (its jobs, the example's
# workflows), through the same schema.
circleci_doc_examples() {
  local dir rc=0
  dir="$(mktemp -d)"
  "${TESTS_PY}" deploy/circleci/tests/doc_examples.py "${dir}" &&
    check-jsonschema --builtin-schema vendor.circle-ci "${dir}"/*.yml || rc=$?
  rm -rf "${dir}"
  return "${rc}"
}
run circleci-schema-doc-examples circleci_doc_examples

run retry-contract bash .ci/check-retry-contract.sh

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

deploy_tests() {
  if [ ! -x "${APPROVER_BIN}" ]; then
    echo "building ${APPROVER_BIN} for the end-to-end tests"
    cargo build --locked || return 1
  fi
  # locals.tf is evaluated by terraform console wherever terraform is installed (as terraform fmt
  # above); without it those tests skip and say so.
  local terraform_required=0
  command -v terraform >/dev/null 2>&1 && terraform_required=1
  APPROVER_BIN="${APPROVER_BIN}" APPROVER_E2E_REQUIRED=1 DEPLOY_TERRAFORM_REQUIRED="${terraform_required}" \
    "${TESTS_PY}" -m pytest -q -p no:cacheprovider -rs deploy/sym/tests deploy/circleci/tests deploy/generic/tests
}
run pytest deploy_tests

# ---------------------------------------------------------------------------------------------
if [ "${failed}" -gt 0 ]; then
  echo "failed: ${failed_names[*]}"
fi
echo "deploy-checks: ${passed} passed, ${failed} failed"
[ "${failed}" -eq 0 ]
