#!/usr/bin/env bash
# Where lockstep-server spends its CPU, counted in instructions (repeatable on a
# shared machine, unlike wall-clock profiles): the release server runs under
# `valgrind --tool=callgrind` on a fresh store while lockstep-bench sends a fixed
# number of readings; then the top functions (inclusive and self) are printed.
#
#   bench/profile-callgrind.sh                   # seed form, PostgreSQL, 3000 readings
#   FORM=lockstep STORE=sqlite N=20000 bench/profile-callgrind.sh
#   WS=100 bench/profile-callgrind.sh            # with 100 WebSocket subscribers
#   AUTH=1 bench/profile-callgrind.sh            # device tokens required, a fleet token sent
# Environment: FORM (seed|lockstep), STORE (postgres|sqlite), N (readings), V, C, BATCH, WS, AUTH,
#              OUT (target/profile), BUILD=0 to skip the release build,
#              BIN (directory of the lockstep-server and lockstep-bench to run; target/release).
set -euo pipefail
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
cd "$ROOT"
FORM=${FORM:-seed}; STORE=${STORE:-postgres}; N=${N:-3000}; V=${V:-10}; C=${C:-10}; BATCH=${BATCH:-100}; WS=${WS:-0}
OUT=${OUT:-$ROOT/target/profile}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)   # the server runs in its own directory
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
if [[ "${BUILD:-1}" != 0 ]]; then cargo build --release -p lockstep-server -p lockstep-bench; fi
BIN=${BIN:-$ROOT/target/release}
AUTH=${AUTH:-0}
NAME="$FORM-$STORE-n$N-ws$WS"; [[ "$AUTH" != 0 ]] && NAME="$NAME-auth"
RUN=$(mktemp -d)
PG_ADMIN=postgresql://postgres@127.0.0.1:5432/postgres
DB=""
cleanup() {
  [[ -n "${SPID:-}" ]] && kill "$SPID" 2>/dev/null && wait "$SPID" 2>/dev/null
  [[ -n "$DB" ]] && psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
  rm -rf "$RUN"
  return 0
}
trap cleanup EXIT
if [[ "$STORE" == postgres ]]; then
  DB="profile_$$"; psql "$PG_ADMIN" -qc "CREATE DATABASE $DB"
  URL="postgres://postgres@127.0.0.1:5432/$DB"
else
  URL="sqlite://$RUN/profile.db"
fi
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
DEVICE_AUTH=off; [[ "$AUTH" != 0 ]] && DEVICE_AUTH=required
(cd "$RUN" && exec env PORT="$PORT" LOCKSTEP_HOST=127.0.0.1 DATABASE_URL="$URL" LOCKSTEP_DATA_DIR="$RUN" RUST_LOG=warn \
  LOCKSTEP_DEVICE_AUTH="$DEVICE_AUTH" \
  LOCKSTEP_IP_REQUESTS_PER_S=0 LOCKSTEP_DEVICE_REQUESTS_PER_S=0 LOCKSTEP_DEVICE_READINGS_PER_S=0 \
  valgrind --tool=callgrind --callgrind-out-file="$OUT/$NAME.callgrind" "$BIN/lockstep-server") \
  > "$OUT/$NAME.log" 2>&1 &
SPID=$!
for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$PORT/status" >/dev/null && break; sleep 0.2; done
WSARGS=(); [[ "$WS" != 0 ]] && WSARGS=(--ws-clients "$WS")
if [[ "$AUTH" != 0 ]]; then
  # The bench's VINs all start with 5YJ3E1EA: one fleet token, made as an operator would.
  LOCKSTEP_BENCH_DEVICE_TOKEN=$(cd "$RUN" && DATABASE_URL="$URL" LOCKSTEP_DATA_DIR="$RUN" \
    "$BIN/lockstep-server" token create --vin-prefix 5YJ3E1EA --label profile | tail -n1)
  export LOCKSTEP_BENCH_DEVICE_TOKEN
fi
"$BIN/lockstep-bench" --url "http://127.0.0.1:$PORT" --server-pid "$SPID" --database-url "$URL" \
  --form "$FORM" --batch "$BATCH" --vehicles "$V" --connections "$C" --count "$N" --request-timeout 60 --no-raw-limit \
  "${WSARGS[@]}" --label "callgrind-$NAME" --json "$OUT/$NAME.json" | tee "$OUT/$NAME.txt"
kill -TERM "$SPID"; wait "$SPID" 2>/dev/null || true; SPID=""
echo "== top functions by inclusive instructions ($OUT/$NAME.callgrind)"
callgrind_annotate --inclusive=yes "$OUT/$NAME.callgrind" 2>/dev/null | head -60 | tee "$OUT/$NAME.inclusive.txt"
echo "== top functions by self instructions"
callgrind_annotate "$OUT/$NAME.callgrind" 2>/dev/null | head -50 | tee "$OUT/$NAME.self.txt"
