#!/usr/bin/env bash
# Container test: proves the runtime image on this machine's Docker engine.
#
#   bash .ci/container-test.sh
#
# What it does, in order (each check prints PASS/FAIL; the last line is the tally):
#   - fails loudly if no Docker engine answers (never a silent pass);
#   - builds the binary statically on the host (or takes APPROVER_BIN) and checks it is static;
#   - builds the image through the Dockerfile's `prebuilt` stage (nothing is pulled) and checks
#     its size (<= 25 MB) and its configured user;
#   - starts a fake CircleCI on the host (`approver-dev fake-circleci`, built beside the binary);
#   - runs the container --read-only, non-root, with a named data volume, the webhook secret as an
#     environment variable and the CircleCI token as a mounted secret file (CIRCLECI_TOKEN_FILE);
#   - waits for Docker to report it healthy (<= 30 s);
#   - sends a signed approve event from the host (`send-event`) and waits for exactly one approve
#     call at the fake CircleCI;
#   - checks the main process runs as a non-root uid (from the host, via /proc: no docker exec,
#     the image has no shell anyway);
#   - `docker stop`: exit code 0 within the grace period;
#   - starts a new container on the same volume, redelivers the same event: 200 (duplicate) and
#     still exactly one approve call.
#
# Environment:
#   APPROVER_BIN   use this static binary instead of running cargo (e.g. a binary CI built already)
#   APPROVER_DEV_BIN  the developer binary for the fake CircleCI (default: approver-dev beside it)
#   IMAGE          tag for the test image (default sym-circleci-approver:container-test)
#   KEEP_IMAGE=1   keep the image afterwards (default: removed)
#   STOP_GRACE     seconds `docker stop` waits before SIGKILL (default 10, Docker's default)
#
# Assumed CLI of the binaries (the service's contract; fake-circleci is approver-dev's):
#   gen-secret                      prints whsec_<base64>
#   send-event --url U --type approve --workflow-id W --event-id E --webhook-id M
#                                   signs with SYM_WEBHOOK_SECRET, posts, prints the HTTP status
#                                   and body, exits 0 on 2xx
#   fake-circleci --listen A --workflow-id W --token T --calls-file F
#                                   serves GET /api/v2/workflow/W/job (hold job on_hold) and
#                                   POST /api/v2/workflow/W/approve/<id>; one JSON line per request
#                                   appended to F
set -Eeuo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="${IMAGE:-sym-circleci-approver:container-test}"
STOP_GRACE="${STOP_GRACE:-10}"
MAX_IMAGE_BYTES=$((25 * 1000 * 1000))   # 25 MB, as `docker images` counts
HEALTHY_WITHIN=30
TARGET_TRIPLE=x86_64-unknown-linux-gnu

RUN_ID="ct-$$-$(date +%s)"
C1="sym-approver-${RUN_ID}-a"
C2="sym-approver-${RUN_ID}-b"
VOLUME="sym-approver-${RUN_ID}-data"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sym-approver-${RUN_ID}.XXXXXX")"
FAKE_PID=""

passed=0
failed=0
pass() { passed=$((passed + 1)); echo "PASS: $*"; }
fail() { failed=$((failed + 1)); echo "FAIL: $*"; }
info() { echo "----- $*"; }

summary() {
  echo "container: ${passed} passed, ${failed} failed"
  [ "${failed}" -eq 0 ]
}

# A check whose failure makes every later step meaningless: report, tally and stop.
abort() {
  fail "$*"
  echo "container test aborted: later checks cannot run" >&2
  summary || true
  exit 1
}

dump_logs() {
  local c
  for c in "$@"; do
    if docker container inspect "${c}" >/dev/null 2>&1; then
      echo "----- docker logs ${c} (last 60 lines)"
      docker logs --tail 60 "${c}" 2>&1 | sed 's/^/    /' || true
    fi
  done
  if [ -s "${WORK}/fake-circleci.log" ]; then
    echo "----- fake CircleCI log"
    sed 's/^/    /' "${WORK}/fake-circleci.log" | tail -n 30
  fi
}

cleanup() {
  local rc=$?
  set +e
  if [ -n "${FAKE_PID}" ] && kill -0 "${FAKE_PID}" 2>/dev/null; then
    kill "${FAKE_PID}" 2>/dev/null
    wait "${FAKE_PID}" 2>/dev/null
  fi
  docker rm -f "${C1}" "${C2}" >/dev/null 2>&1
  docker volume rm -f "${VOLUME}" >/dev/null 2>&1
  if [ "${KEEP_IMAGE:-0}" != 1 ]; then
    docker image rm -f "${IMAGE}" >/dev/null 2>&1
  fi
  rm -rf "${WORK}"
  exit "${rc}"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ----------------------------------------------------------------------------------------------
info "Docker engine"
if ! docker_info="$(docker info --format '{{.ServerVersion}} storage={{.Driver}}' 2>&1)"; then
  echo "${docker_info}" >&2
  echo "!!!!! NO DOCKER ENGINE ANSWERS: the container test cannot run and FAILS (it never passes silently)" >&2
  abort "docker info: no Docker engine answers"
fi
pass "docker engine answers (server ${docker_info})"

# ----------------------------------------------------------------------------------------------
info "static binary"
if [ -n "${APPROVER_BIN:-}" ]; then
  BIN="$(cd "$(dirname "${APPROVER_BIN}")" && pwd)/$(basename "${APPROVER_BIN}")"
  echo "using APPROVER_BIN=${BIN}"
else
  # Fully static glibc binary: scratch has no loader and no libc. An explicit --target keeps
  # build scripts and proc-macros dynamic; the output lands in target/<triple>/release.
  (cd "${REPO}" && RUSTFLAGS="-C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs" \
    cargo build --release --locked --target "${TARGET_TRIPLE}") ||
    abort "cargo build of the static binary failed"
  BIN="${CARGO_TARGET_DIR:-${REPO}/target}/${TARGET_TRIPLE}/release/sym-circleci-approver"
fi
[ -x "${BIN}" ] || abort "no executable binary at ${BIN}"
# The fake CircleCI runs on the host from the developer binary built beside it (the service
# binary in the image carries no test double).
DEV_BIN="${APPROVER_DEV_BIN:-$(dirname "${BIN}")/approver-dev}"
[ -x "${DEV_BIN}" ] || abort "no executable developer binary at ${DEV_BIN} (cargo build --release builds it)"

file_out="$(file -b "${BIN}")"
ldd_out="$(ldd "${BIN}" 2>&1 || true)"
echo "file: ${file_out}"
echo "ldd:  ${ldd_out}"
if [[ "${file_out}" =~ static(-pie)?[[:space:]]linked|statically[[:space:]]linked ]] &&
  [[ ! "${ldd_out}" =~ "=>" ]]; then
  pass "binary is statically linked"
else
  abort "binary is not statically linked (it would not start in a scratch image)"
fi

# ----------------------------------------------------------------------------------------------
info "image (prebuilt stage, nothing pulled)"
# A separate, minimal build context: only the three inputs the prebuilt stage copies. The repo
# itself (and its target/) never goes to the daemon; the Dockerfile is passed with -f.
ctx="${WORK}/context"
mkdir -p "${ctx}/prebuilt/data"
chmod 0750 "${ctx}/prebuilt/data"
cp "${BIN}" "${ctx}/prebuilt/sym-circleci-approver"
chmod 0755 "${ctx}/prebuilt/sym-circleci-approver"
ca_bundle=/etc/ssl/certs/ca-certificates.crt
[ -s "${ca_bundle}" ] || abort "host CA bundle ${ca_bundle} missing (apt-get install ca-certificates)"
cp "${ca_bundle}" "${ctx}/prebuilt/ca-certificates.crt"
chmod 0644 "${ctx}/prebuilt/ca-certificates.crt"

revision="$(git -C "${REPO}" rev-parse HEAD 2>/dev/null || echo unknown)"
version="$(sed -n 's/^version *= *"\(.*\)"/\1/p' "${REPO}/Cargo.toml" | head -n 1)"
if docker build --target prebuilt -f "${REPO}/Dockerfile" -t "${IMAGE}" \
  --build-arg "VERSION=${version:-unknown}" \
  --build-arg "REVISION=${revision}" \
  --build-arg "CREATED=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  "${ctx}" >"${WORK}/build.log" 2>&1; then
  pass "image ${IMAGE} built from the prebuilt stage"
else
  sed 's/^/    /' "${WORK}/build.log"
  abort "docker build --target prebuilt failed"
fi

size_bytes="$(docker image inspect -f '{{.Size}}' "${IMAGE}")"
size_mb="$(awk -v b="${size_bytes}" 'BEGIN { printf "%.1f", b / 1000000 }')"
echo "image size: ${size_bytes} bytes (${size_mb} MB)"
if [ "${size_bytes}" -le "${MAX_IMAGE_BYTES}" ]; then
  pass "image size ${size_mb} MB <= 25 MB"
else
  fail "image size ${size_mb} MB > 25 MB"
fi

# ----------------------------------------------------------------------------------------------
info "fake CircleCI on the host"
WORKFLOW_ID="$(python3 -c 'import uuid; print(uuid.uuid4())')"
EVENT_ID="$(python3 -c 'import uuid; print(uuid.uuid4())')"
CIRCLE_TOKEN="ct-token-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
CALLS="${WORK}/circleci-calls.jsonl"
: >"${CALLS}"

# Containers reach the host through the default bridge's gateway (what host-gateway maps to).
# Listening only there (not on every interface) keeps the fake off other networks.
gateway="$(docker network inspect bridge -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}' 2>/dev/null || true)"
if [ -z "${gateway}" ]; then # IPAM often omits it for the default bridge: read docker0 itself
  gateway="$(ip -4 -o addr show dev docker0 2>/dev/null | awk '{ split($4, a, "/"); print a[1]; exit }' || true)"
fi
listen_ip="${gateway:-0.0.0.0}"
FAKE_PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])')"

# The developer binary's `fake-circleci`: see the contract in the header.
"${DEV_BIN}" fake-circleci --listen "${listen_ip}:${FAKE_PORT}" --workflow-id "${WORKFLOW_ID}" \
  --token "${CIRCLE_TOKEN}" --calls-file "${CALLS}" >"${WORK}/fake-circleci.log" 2>&1 &
FAKE_PID=$!
probe_ip="${listen_ip/0.0.0.0/127.0.0.1}"
for _ in $(seq 1 50); do
  if (exec 3<>"/dev/tcp/${probe_ip}/${FAKE_PORT}") 2>/dev/null; then break; fi
  kill -0 "${FAKE_PID}" 2>/dev/null || break
  sleep 0.1
done
kill -0 "${FAKE_PID}" 2>/dev/null || { dump_logs; abort "fake CircleCI did not start"; }
echo "fake CircleCI: http://${listen_ip}:${FAKE_PORT}/api/v2 (workflow ${WORKFLOW_ID})"

# Counts the approve calls the fake recorded (POST .../workflow/<id>/approve/<request id>) and
# prints "<all> <accepted>": accepted ones carried the right token and got a 2xx (fields the
# fake writes as token_ok and status; lines without them count as accepted).
approve_call_counts() {
  python3 - "${CALLS}" <<'PY'
import json, sys
total = accepted = 0
with open(sys.argv[1], encoding="utf-8") as f:
    for line in f:
        line = line.strip()
        if not line:
            continue
        try:
            call = json.loads(line)
        except ValueError:
            continue
        if not isinstance(call, dict):
            continue
        is_approve = call.get("operation") == "approve" or "/approve/" in str(call.get("path", ""))
        if not is_approve or str(call.get("method", "POST")).upper() != "POST":
            continue
        total += 1
        status = call.get("status", 202)
        if call.get("token_ok", True) is not False and isinstance(status, int) and 200 <= status < 300:
            accepted += 1
print(total, accepted)
PY
}
approve_calls() { approve_call_counts | cut -d' ' -f1; }

# ----------------------------------------------------------------------------------------------
info "secrets and container"
SECRET="$("${BIN}" gen-secret | tr -d '[:space:]')"
[[ "${SECRET}" == whsec_* ]] || abort "gen-secret printed no whsec_ secret"
export SYM_WEBHOOK_SECRET="${SECRET}"   # passed by name below: never on a command line
token_file="${WORK}/circleci_token"
printf '%s\n' "${CIRCLE_TOKEN}" >"${token_file}"
chmod 0444 "${token_file}"   # readable by the container's uid 10001

docker volume create "${VOLUME}" >/dev/null
HOST_PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
WEBHOOK_URL="http://127.0.0.1:${HOST_PORT}/webhooks/sym"

start_container() {
  docker run -d --name "$1" \
    --read-only \
    --tmpfs /tmp:rw,noexec,nosuid,size=16m \
    --cap-drop ALL \
    --security-opt no-new-privileges \
    --stop-timeout "${STOP_GRACE}" \
    -v "${VOLUME}:/data" \
    -v "${token_file}:/run/secrets/circleci_token:ro" \
    -e SYM_WEBHOOK_SECRET \
    -e CIRCLECI_TOKEN_FILE=/run/secrets/circleci_token \
    -e "CIRCLECI_API_URL=http://host.docker.internal:${FAKE_PORT}/api/v2" \
    -e CIRCLECI_ALLOW_INSECURE_HTTP=true \
    -e RUST_LOG=info \
    --add-host host.docker.internal:host-gateway \
    -p "127.0.0.1:${HOST_PORT}:8080" \
    "${IMAGE}" serve >/dev/null
}

# Polls Docker's own health status (the image's HEALTHCHECK runs `healthcheck` inside).
wait_healthy() {
  local c=$1 t0 status running
  t0=$(date +%s)
  while :; do
    status="$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "${c}" 2>/dev/null || echo gone)"
    running="$(docker inspect -f '{{.State.Running}}' "${c}" 2>/dev/null || echo false)"
    if [ "${status}" = healthy ]; then
      echo "healthy after $(($(date +%s) - t0)) s"
      return 0
    fi
    if [ "${running}" != true ] || [ $(($(date +%s) - t0)) -ge "${HEALTHY_WITHIN}" ]; then
      echo "health: ${status}, running: ${running}, after $(($(date +%s) - t0)) s"
      return 1
    fi
    sleep 1
  done
}

send_event() {
  "${BIN}" send-event --url "${WEBHOOK_URL}" --type approve --workflow-id "${WORKFLOW_ID}" \
    --event-id "${EVENT_ID}" --webhook-id "msg_${EVENT_ID}" 2>&1
}

# Waits up to $1 s for at least one approve call, then a little longer so that a second
# (duplicate) call would have time to show up, and prints the final count.
settle_approve_calls() {
  local limit=$1 n
  for _ in $(seq 1 "${limit}"); do
    n="$(approve_calls)"
    [ "${n}" -ge 1 ] && break
    sleep 1
  done
  sleep 3
  approve_call_counts
}

start_container "${C1}" || { dump_logs "${C1}"; abort "docker run failed"; }
ro="$(docker inspect -f '{{.HostConfig.ReadonlyRootfs}}' "${C1}")"
echo "container ${C1}: read-only root filesystem=${ro}, volume ${VOLUME} at /data"

if wait_healthy "${C1}"; then
  pass "Docker reports the container healthy within ${HEALTHY_WITHIN} s"
else
  dump_logs "${C1}"
  abort "container not healthy within ${HEALTHY_WITHIN} s"
fi

# ----------------------------------------------------------------------------------------------
info "signed approve event -> one approve call"
if out="$(send_event)"; then rc=0; else rc=$?; fi
echo "send-event (exit ${rc}): ${out}"
read -r n ok < <(settle_approve_calls 20)
echo "approve calls at the fake CircleCI: ${n} (accepted with the right token: ${ok})"
if [ "${rc}" -eq 0 ] && [[ "${out}" =~ (^|[^0-9])202([^0-9]|$) ]] && [ "${n}" -eq 1 ] && [ "${ok}" -eq 1 ]; then
  pass "approve event accepted (202); exactly one approve call, authenticated with the token file"
else
  dump_logs "${C1}"
  fail "approve event: want exit 0, 202 and one accepted approve call; got exit ${rc}, ${n} call(s), ${ok} accepted"
fi

# ----------------------------------------------------------------------------------------------
info "non-root"
user="$(docker inspect -f '{{.Config.User}}' "${C1}")"
pid="$(docker inspect -f '{{.State.Pid}}' "${C1}")"
uids="$(awk '/^Uid:/ { print $2, $3, $4, $5 }' "/proc/${pid}/status" 2>/dev/null || true)"
echo "Config.User=${user}; /proc/${pid}/status Uid (real effective saved fs): ${uids:-unreadable}"
uid_cfg="${user%%:*}"
if [[ "${uid_cfg}" =~ ^[0-9]+$ ]] && [ "${uid_cfg}" -ne 0 ] && [ -n "${uids}" ] &&
  ! [[ " ${uids} " =~ " 0 " ]]; then
  pass "main process runs as non-root uid ${uids%% *} (Config.User ${user})"
else
  fail "process is root or unknown (Config.User '${user}', Uid '${uids}')"
fi

# ----------------------------------------------------------------------------------------------
info "graceful stop"
t0="$(date +%s%N)"
docker stop -t "${STOP_GRACE}" "${C1}" >/dev/null
elapsed_ms=$((($(date +%s%N) - t0) / 1000000))
exit_code="$(docker inspect -f '{{.State.ExitCode}}' "${C1}")"
echo "docker stop took ${elapsed_ms} ms (grace ${STOP_GRACE} s), exit code ${exit_code}"
if [ "${exit_code}" = 0 ] && [ "${elapsed_ms}" -lt $((STOP_GRACE * 1000)) ]; then
  pass "SIGTERM: exit code 0 after ${elapsed_ms} ms, within the ${STOP_GRACE} s grace period"
else
  dump_logs "${C1}"
  fail "docker stop: exit code ${exit_code} after ${elapsed_ms} ms (want 0 within ${STOP_GRACE} s)"
fi
docker rm "${C1}" >/dev/null

# ----------------------------------------------------------------------------------------------
info "restart on the same volume, redeliver the same event"
start_container "${C2}" || { dump_logs "${C2}"; abort "docker run (second container) failed"; }
wait_healthy "${C2}" || { dump_logs "${C2}"; abort "second container not healthy within ${HEALTHY_WITHIN} s"; }
if out="$(send_event)"; then rc=0; else rc=$?; fi
echo "send-event again (exit ${rc}): ${out}"
read -r n ok < <(settle_approve_calls 1)
echo "approve calls at the fake CircleCI: ${n} (accepted: ${ok})"
if [ "${rc}" -eq 0 ] && [[ "${out}" =~ (^|[^0-9])200([^0-9]|$) ]] && [ "${n}" -eq 1 ]; then
  pass "redelivery after restart on the same volume: 200 (duplicate), still exactly one approve call"
else
  dump_logs "${C2}"
  fail "redelivery: want exit 0, 200 and still one approve call; got exit ${rc}, ${n} call(s)"
fi

summary
