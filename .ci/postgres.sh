#!/usr/bin/env bash
# The integration suite on PostgreSQL, and the multi-replica tests.
#
#   .ci/postgres.sh                 install PostgreSQL if missing (Debian packages), start a
#                                   throwaway cluster on 127.0.0.1, run `cargo test --test api`
#                                   against it (a database per test) and the query plans
#                                   (`--test plans`), then the replica tests
#                                   (two service processes on one database, PostgreSQL restarts),
#                                   then the chaos suite's PostgreSQL seeds (three replicas)
#   .ci/postgres.sh -- CMD ARGS…    the same throwaway cluster, but run CMD instead (with
#                                   APPROVER_TEST_POSTGRES_URL and APPROVER_TEST_PG_CTL set)
#
# The suite runs with APPROVER_REQUIRE_POSTGRES=1: a test that needs PostgreSQL and finds no
# APPROVER_TEST_POSTGRES_URL (or, to restart it, APPROVER_TEST_PG_CTL) fails rather than
# skipping (without the variable, such a test prints a SKIPPED line and passes).
#
# The cluster (trust auth, loopback only, a free port, fsync off: it is thrown away) lives in a
# temporary folder and is stopped and deleted on exit, whatever happens. Nothing else on the
# machine is touched: an already running PostgreSQL is left alone (and so is the `main` cluster
# Debian's package may create when it is installed here).
# APPROVER_TEST_PG_FSYNC=on keeps fsync on (for the load run: a fair comparison with SQLite,
# which syncs every commit).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

started=$SECONDS
log() { printf '== postgres.sh [%3ss] %s\n' "$((SECONDS - started))" "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

pg_bindir() {
  local dir
  dir=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null |
    sort -V | tail -n 1 || true)
  if [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then echo "$dir"; fi
}

# --- 1. PostgreSQL server binaries (Debian packages), installed once ---------------------------
PGBIN=$(pg_bindir)
if [ -z "$PGBIN" ]; then
  log "installing PostgreSQL from Debian's packages"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    postgresql >/dev/null
  PGBIN=$(pg_bindir)
  if [ -z "$PGBIN" ]; then
    echo "postgres.sh: PostgreSQL installed, but no initdb/pg_ctl under /usr/lib/postgresql" >&2
    exit 1
  fi
fi
log "using $("$PGBIN/postgres" --version)"

# initdb refuses to run as root: as root, the cluster belongs to the `postgres` system user
# (created by the package); otherwise to whoever runs this.
if [ "$(id -u)" -eq 0 ]; then
  RUN_AS=(runuser -u postgres --)
else
  RUN_AS=()
fi

# --- 2. A throwaway cluster on a free loopback port ---------------------------------------------
WORK=$(mktemp -d /tmp/approver-pg.XXXXXX)
chmod 755 "$WORK"
DATA=$WORK/data
PGLOG=$WORK/postgres.log
if [ "$(id -u)" -eq 0 ]; then chown postgres: "$WORK"; fi

PG_CTL=("${RUN_AS[@]}" "$PGBIN/pg_ctl" -D "$DATA" -l "$PGLOG" -w -t 60)
cleanup() {
  local rc=$?
  if [ -f "$DATA/postmaster.pid" ]; then
    "${PG_CTL[@]}" stop -m immediate >/dev/null 2>&1 || true
  fi
  if [ "$rc" -ne 0 ] && [ -f "$PGLOG" ]; then
    echo "----- last lines of the PostgreSQL log -----" >&2
    tail -n 30 "$PGLOG" >&2 || true
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"${RUN_AS[@]}" "$PGBIN/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 \
  --locale=C.UTF-8 >/dev/null

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
PORT=
for _ in $(seq 1 20); do
  candidate=$((20000 + RANDOM % 30000))
  if ! port_free "$candidate"; then continue; fi
  # Settings live in the cluster's own config, so a plain `pg_ctl start` (the restart test)
  # brings it back identically.
  cat >"$WORK/port.conf" <<EOF
port = $candidate
EOF
  chmod 644 "$WORK/port.conf"
  if ! grep -q "approver test cluster" "$DATA/postgresql.conf"; then
    "${RUN_AS[@]}" tee -a "$DATA/postgresql.conf" >/dev/null <<EOF
# --- approver test cluster ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '$WORK'
max_connections = 400
fsync = ${APPROVER_TEST_PG_FSYNC:-off}
full_page_writes = ${APPROVER_TEST_PG_FSYNC:-off}
synchronous_commit = on
include = '$WORK/port.conf'
EOF
  fi
  if "${PG_CTL[@]}" start >/dev/null 2>&1; then
    PORT=$candidate
    break
  fi
  log "port $candidate did not work; trying another"
done
if [ -z "$PORT" ]; then
  echo "postgres.sh: could not start PostgreSQL on any port" >&2
  exit 1
fi
log "PostgreSQL listening on 127.0.0.1:$PORT (data in $DATA)"

export APPROVER_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$PORT/postgres"
# How the replica tests stop and start this server (`$APPROVER_TEST_PG_CTL stop -m fast`).
printf -v APPROVER_TEST_PG_CTL '%q ' "${PG_CTL[@]}"
export APPROVER_TEST_PG_CTL

# --- 3. Run -------------------------------------------------------------------------------------
if [ "${1:-}" = "--" ]; then
  shift
  log "running: $*"
  "$@"
  exit $?
fi

# From here on a test that needs PostgreSQL (the suite's backend, the replica tests, the chaos
# suite's PostgreSQL seeds) fails when it cannot have it, instead of being skipped.
export APPROVER_REQUIRE_POSTGRES=1

# The whole integration suite, one database per test. The replica tests restart this server,
# so they run on their own afterwards (APPROVER_TEST_PG_CTL is withheld from this first run, so
# nothing in it can restart the server under the other tests).
log "integration suite on PostgreSQL: cargo test --locked --test api"
env -u APPROVER_TEST_PG_CTL cargo test --locked --test api -- --skip replicas::
log "query plans on PostgreSQL: cargo test --locked --test plans"
env -u APPROVER_TEST_PG_CTL cargo test --locked --test plans
log "multi-replica tests (two processes, one database; PostgreSQL restarts)"
cargo test --locked --test api replicas:: -- --test-threads=1
# Three replicas under faults (pauses, kills, SIGTERMs, PostgreSQL restarts, network cuts
# through the test's proxy, CircleCI faults), CI's fixed seeds; it restarts this server too.
log "chaos suite on PostgreSQL: cargo test --locked --test chaos chaos_postgres"
cargo test --locked --test chaos chaos_postgres -- --exact --ignored
log "PostgreSQL run passed"
