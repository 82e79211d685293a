#!/usr/bin/env bash
# Where PostgreSQL spends its time per reading, statement by statement: a
# private PostgreSQL (initdb in a temporary directory, a free port,
# `pg_stat_statements` preloaded) takes one `lockstep-bench --spawn` run, then
# every statement's calls, execution time and WAL are printed per committed
# reading. The shared PostgreSQL is not touched (loading pg_stat_statements
# needs a restart).
#
#   bench/profile-postgres.sh                                   # seed form, 10 vehicles, 10 s
#   FORM=lockstep BATCH=100 V=100 C=20 bench/profile-postgres.sh
# Further arguments go to lockstep-bench.
# Environment: FORM (seed|lockstep), V (vehicles), C (connections), BATCH, D (seconds),
#              RAW=1 to measure the raw COPY reference too (its statement then shows),
#              OUT (target/profile), BUILD=0 to skip the release build,
#              BIN (directory of lockstep-server and lockstep-bench; target/release).
set -euo pipefail
FORM=${FORM:-seed}; V=${V:-10}; C=${C:-10}; BATCH=${BATCH:-100}; D=${D:-10}
RAWARG=(--no-raw-limit); [[ "${RAW:-0}" != 0 ]] && RAWARG=()
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
cd "$ROOT"
OUT=${OUT:-$ROOT/target/profile}
mkdir -p "$OUT"
if [[ "${BUILD:-1}" != 0 ]]; then cargo build --release -p lockstep-server -p lockstep-bench; fi
BIN=${BIN:-$ROOT/target/release}
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
RUN=$(mktemp -d)
chmod 755 "$RUN"
AS=()
# initdb refuses to run as root: the cluster belongs to the postgres user then.
if [[ $(id -u) == 0 ]]; then chown postgres "$RUN"; AS=(su postgres -c); fi
as_owner() { if [[ ${#AS[@]} -gt 0 ]]; then "${AS[@]}" "$*"; else bash -c "$*"; fi; }
cleanup() {
  as_owner "$PGBIN/pg_ctl -D $RUN/data -m immediate stop" >/dev/null 2>&1 || true
  rm -rf "$RUN"
}
trap cleanup EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_owner "$PGBIN/initdb -D $RUN/data -A trust -U postgres" >/dev/null
cat >> "$RUN/data/postgresql.conf" <<EOF
port = $PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$RUN'
shared_preload_libraries = 'pg_stat_statements'
pg_stat_statements.track = all
max_connections = 200
EOF
as_owner "$PGBIN/pg_ctl -D $RUN/data -l $RUN/log -w start" >/dev/null
ADMIN="postgres://postgres@127.0.0.1:$PORT/postgres"
psql "$ADMIN" -qc "CREATE EXTENSION pg_stat_statements"
psql "$ADMIN" -qAtc "SELECT pg_stat_statements_reset()" >/dev/null
echo "== lockstep-bench --spawn (private PostgreSQL on port $PORT; load average $(cut -d' ' -f1-3 /proc/loadavg))"
"$BIN/lockstep-bench" --spawn --store postgres --pg-admin-url "$ADMIN" --form "$FORM" --batch "$BATCH" \
  --vehicles "$V" --connections "$C" --duration "$D" "${RAWARG[@]}" --label profile-postgres "$@" \
  --json "$OUT/profile-postgres.json" | tee "$OUT/profile-postgres.txt"
READINGS=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["load"]["readings_committed"])' "$OUT/profile-postgres.json")
echo "== statements, per committed reading ($READINGS readings; execution time is wall-clock inside PostgreSQL)"
psql "$ADMIN" -P pager=off -c "
  SELECT calls,
         round((total_exec_time * 1000 / $READINGS)::numeric, 2) AS exec_us_per_reading,
         round((total_exec_time * 1000 / calls)::numeric, 1) AS exec_us_per_call,
         round(rows::numeric / calls, 1) AS rows_per_call,
         round(wal_bytes / $READINGS, 0) AS wal_bytes_per_reading,
         left(regexp_replace(query, '\s+', ' ', 'g'), 90) AS statement
  FROM pg_stat_statements
  WHERE query NOT LIKE '%pg_stat_statements%'
    AND query !~* '^\s*(CREATE|ALTER|DROP|DO|COMMENT)'
  ORDER BY total_exec_time DESC LIMIT 15" | tee "$OUT/profile-postgres-statements.txt"
