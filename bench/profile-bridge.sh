#!/usr/bin/env bash
# What receiving another instance's readings through the Redis bridge costs, counted in
# instructions (repeatable on a shared machine): two release lockstep-server instances on one
# PostgreSQL database and the machine's Redis, instance A under `valgrind --tool=callgrind`,
# instance B ingesting N readings (lockstep form) from lockstep-bench. A has no WebSocket client
# and ingests nothing: what it spends is the bridge's receiving side (and its idle timers).
# Prints A's instructions per reading received: in total, in the bridge's tasks, in
# BridgeHandle::receive, and in the Redis client's reply parser.
#
#   bench/profile-bridge.sh                  # 20,000 readings, batches of 10, 10 vehicles
#   N=50000 BIN=/tmp/before bench/profile-bridge.sh
# Environment: N (readings), BATCH (10), V (10), OUT (target/profile), BUILD=0 to skip the
#              release build, BIN (directory of lockstep-server and lockstep-bench; target/release),
#              REDIS (redis://127.0.0.1:6379).
set -euo pipefail
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
cd "$ROOT"
N=${N:-20000}; BATCH=${BATCH:-10}; V=${V:-10}
REDIS=${REDIS:-redis://127.0.0.1:6379}
OUT=${OUT:-$ROOT/target/profile}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
command -v valgrind >/dev/null || { echo "valgrind is not installed (apt-get install valgrind)" >&2; exit 1; }
if [[ "${BUILD:-1}" != 0 ]]; then cargo build --release -p lockstep-server -p lockstep-bench; fi
BIN=${BIN:-$ROOT/target/release}
NAME="bridge-n$N-b$BATCH"
RUN=$(mktemp -d)
PG_ADMIN=postgresql://postgres@127.0.0.1:5432/postgres
DB="profile_bridge_$$"
PREFIX="profile-bridge-$$"
APID=""; BPID=""
cleanup() {
  for p in $APID $BPID; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  psql "$PG_ADMIN" -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1
  rm -rf "$RUN"
  return 0
}
trap cleanup EXIT
psql "$PG_ADMIN" -qc "CREATE DATABASE $DB"
URL="postgres://postgres@127.0.0.1:5432/$DB"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
APORT=$(free_port); BPORT=$(free_port)
serve() { # dir port [wrapper...]; run in a subshell, which becomes the server
  local dir=$1 port=$2; shift 2
  mkdir -p "$dir" && cd "$dir"
  exec env PORT="$port" LOCKSTEP_HOST=127.0.0.1 DATABASE_URL="$URL" LOCKSTEP_DATA_DIR="$dir" \
    REDIS_URL="$REDIS" LOCKSTEP_REDIS_PREFIX="$PREFIX" RUST_LOG=warn LOCKSTEP_DEVICE_AUTH=off \
    LOCKSTEP_IP_REQUESTS_PER_S=100000 LOCKSTEP_DEVICE_REQUESTS_PER_S=100000 LOCKSTEP_DEVICE_READINGS_PER_S=10000000 \
    "$@" "$BIN/lockstep-server"
}
connected() { curl -sf "http://127.0.0.1:$1/status" | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["cluster"]["redis_connected"] else 1)'; }
field() { curl -sf "http://127.0.0.1:$1/status" | python3 -c "import json,sys; print(json.load(sys.stdin)['cluster']['$2'])"; }
wait_for() { # what command...
  local what=$1; shift
  for _ in $(seq 1 600); do "$@" 2>/dev/null && return 0; sleep 0.2; done
  echo "timed out waiting for $what" >&2; exit 1
}

(serve "$RUN/a" "$APORT" valgrind --tool=callgrind --callgrind-out-file="$OUT/$NAME.callgrind") > "$OUT/$NAME.a.log" 2>&1 &
APID=$!
wait_for "instance A (under callgrind) to join the bridge" connected "$APORT"
(serve "$RUN/b" "$BPORT") > "$OUT/$NAME.b.log" 2>&1 &
BPID=$!
wait_for "instance B to join the bridge" connected "$BPORT"
echo "load average $(cut -d' ' -f1-3 /proc/loadavg); A (callgrind) on $APORT, B on $BPORT; $N readings to B"
"$BIN/lockstep-bench" --url "http://127.0.0.1:$BPORT" --server-pid "$BPID" --database-url "$URL" \
  --form lockstep --batch "$BATCH" --vehicles "$V" --connections "$V" --count "$N" --request-timeout 60 \
  --no-raw-limit --label "bridge-$NAME" --json "$OUT/$NAME.json" > "$OUT/$NAME.txt"
PUBLISHED=$(field "$BPORT" frames_published)
arrived() { [[ "$(field "$APORT" frames_received)" -ge "$PUBLISHED" ]]; }
wait_for "A to receive B's $PUBLISHED frames" arrived
echo "B published $PUBLISHED frames; A received $(field "$APORT" frames_received), missed $(field "$APORT" messages_missed)"
kill -TERM "$APID"; wait "$APID" 2>/dev/null || true; APID=""
callgrind_annotate --inclusive=yes "$OUT/$NAME.callgrind" 2>/dev/null > "$OUT/$NAME.inclusive.txt"
python3 - "$OUT/$NAME.inclusive.txt" "$N" <<'EOF'
import re, sys
text = open(sys.argv[1]).read()
n = int(sys.argv[2])
total = int(re.search(r"([\d,]+) \(100\.0%\)\s+PROGRAM TOTALS", text).group(1).replace(",", ""))
def inclusive(pattern):
    best = 0
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+\S*?:(.*)", line)
        if m and re.search(pattern, m.group(2)):
            best = max(best, int(m.group(1).replace(",", "")))
    return best
task = inclusive(r"bridge::Bridge::run::\{\{closure\}\}")
recv = inclusive(r"BridgeHandle::receive")
redis = inclusive(r"ValueCodec as tokio_util::codec::decoder::Decoder>::decode")
print(f"instance A, {n} readings received, instructions per reading: {total / n:,.0f} in total "
      f"(start-up and idle timers included), {task / n:,.0f} in the bridge's tasks, of it "
      f"{recv / n:,.0f} in BridgeHandle::receive; {redis / n:,.0f} in the Redis client's parser")
EOF
