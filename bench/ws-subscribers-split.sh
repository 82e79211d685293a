#!/usr/bin/env bash
# WebSocket fan-out with the subscribers in their own process (issue 16, target 4):
# CLIENTS (1000) subscribers to every vehicle, each should receive every reading, while a
# separate load process offers RATE (1000) readings/s (seed form, 10 vehicles, PostgreSQL)
# for D (10) seconds. Prints delivered %, delivery latency p50/p99, the server's CPU and the
# subscribers' CPU separately.
#
#   bench/ws-subscribers-split.sh
# Environment: CLIENTS, RATE, D, STORE (postgres | sqlite), BUILD=0 to skip the release build,
# PG (postgres://postgres@127.0.0.1:5432), OUT (dir for the JSON), BIN (directory of
# lockstep-server and lockstep-bench; target/release), SERVER_ENV (extra VAR=value words for
# the server, e.g. LOCKSTEP_WS_LINGER_MS=0).
set -euo pipefail
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
cd "$ROOT"
CLIENTS=${CLIENTS:-1000}
RATE=${RATE:-1000}
D=${D:-10}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
STORE=${STORE:-postgres}
if [[ "${BUILD:-1}" != 0 ]]; then
  cargo build --release -p lockstep-server -p lockstep-bench
fi
BIN=${BIN:-$ROOT/target/release}
SERVER="$BIN/lockstep-server"
BENCH="$BIN/lockstep-bench"
T=$(mktemp -d)
DB="lockstep_wssplit_$$_$(date +%s)"
if [[ "$STORE" == sqlite ]]; then
  URL="sqlite://$T/lockstep.db"
else
  psql "$PG/postgres" -qAtc "CREATE DATABASE $DB" >/dev/null
  URL="$PG/$DB"
fi
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ulimit -n "$(ulimit -Hn)" || true
(cd "$T" && PORT=$PORT LOCKSTEP_HOST=127.0.0.1 LOCKSTEP_DATA_DIR=$T DATABASE_URL=$URL \
  LOCKSTEP_WS_PER_IP=$((CLIENTS + 100)) LOCKSTEP_IP_REQUESTS_PER_S=100000 LOCKSTEP_DEVICE_REQUESTS_PER_S=100000 LOCKSTEP_DEVICE_READINGS_PER_S=10000000 RUST_LOG=warn \
  exec env ${SERVER_ENV:-} "$SERVER" >"$T/server.log" 2>&1) &
PID=$!
SUBS=
cleanup() {
  [[ -n "$SUBS" ]] && kill "$SUBS" 2>/dev/null || true
  kill "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  [[ "$STORE" == sqlite ]] || psql "$PG/postgres" -qAtc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT
for _ in $(seq 200); do
  curl -fsS "http://127.0.0.1:$PORT/status" >/dev/null 2>&1 && break
  sleep 0.1
done
echo "server pid $PID; load average $(cut -d' ' -f1-3 /proc/loadavg)"
rss() { awk '/^VmRSS/ {print $2}' "/proc/$PID/status"; }
RSS_IDLE=$(rss)
mkfifo "$T/subs.out"
"$BENCH" subscribers --url "http://127.0.0.1:$PORT" --clients "$CLIENTS" --latency-every 10 \
  --duration "$D" >"$T/subs.out" &
SUBS=$!
exec 3<"$T/subs.out"
read -r line <&3
[[ "$line" == ready ]] || { echo "subscribers did not start: $line"; exit 1; }
sleep 0.5
RSS_CONNECTED=$(rss)
"$BENCH" --url "http://127.0.0.1:$PORT" --server-pid "$PID" --database-url "$URL" --form seed \
  --vehicles 10 --connections 10 --rate "$RATE" --duration "$D" --no-raw-limit \
  --json "$T/load.json" --label ws-split >/dev/null
RSS_STREAMED=$(rss)
read -r subs_json <&3
wait "$SUBS"; SUBS=
echo "$subs_json" >"$T/subs.json"
[[ -n "${OUT:-}" ]] && cp "$T/load.json" "$OUT/ws-split-$STORE-load.json" && cp "$T/subs.json" "$OUT/ws-split-$STORE-subscribers.json"
python3 - "$T/load.json" "$T/subs.json" "$RSS_IDLE" "$RSS_CONNECTED" "$RSS_STREAMED" <<'EOF'
import json, sys
l = json.load(open(sys.argv[1])); s = json.load(open(sys.argv[2]))
idle, connected, streamed = (int(v) for v in sys.argv[3:6])
load, p = l["load"], l["server_proc"]
acked = load["readings_acked"]
expected = acked * s["clients"]
print(f"load: {load['readings_per_s']:.0f} readings/s ({acked} acknowledged), "
      f"ack p50/p99 {l['ack_latency_ms']['p50']}/{l['ack_latency_ms']['p99']} ms, errors {l['errors_total']}")
print(f"subscribers: {s['connected']} of {s['clients']} connected, delivered {s['telemetry']} of {expected} "
      f"= {100*s['telemetry']/max(expected,1):.2f} %, lagged {s['lagged_dropped']}, closed early {s['closed_early']}")
lat = s["latency_ms"]
print(f"delivery latency p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms")
cpu = p["cpu_s"] or 0
print(f"server CPU {cpu:.2f} s ({p['cpu_pct_of_core']:.1f} % of a core; kernel {p['sys_s']:.2f} s), "
      f"{1e6*cpu/max(s['telemetry'],1):.2f} µs per message delivered; "
      f"subscribers' process CPU {s['cpu_s']:.2f} s; load generator CPU {l['bench_proc']['cpu_s']:.2f} s")
n = max(s['connected'], 1)
print(f"server RSS {idle/1024:.1f} MiB before the subscribers, {connected/1024:.1f} MiB with them connected "
      f"({(connected-idle)/n:.1f} KiB each), {streamed/1024:.1f} MiB after the load ({(streamed-idle)/n:.1f} KiB each)")
print(f"load average {l['machine']['loadavg_start']} -> {l['machine']['loadavg_end']}")
EOF
