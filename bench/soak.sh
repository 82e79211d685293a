#!/usr/bin/env bash
# Soak (issue 16, target 6; not part of CI): SOAK_S seconds (default 600) at half the measured
# capacity on PostgreSQL with WS_CLIENTS (100) WebSocket subscribers. Prints SOAK PASS or SOAK FAIL.
#
#   1. starts a release lockstep-server on a fresh PostgreSQL database (dropped at the end);
#   2. measures its capacity: CAP_S seconds closed loop, seed form, VEHICLES vehicles
#      (skip with RATE=<readings/s>);
#   3. runs the soak at half of it with the subscribers connected, sampling the server's RSS
#      every 5 s;
#   4. passes when: no request failed, every acknowledged reading is in telemetry_data (rows
#      counted in the database, before and after), the subscribers received every reading and
#      none was disconnected, and RSS at the end is within 10 % of RSS after the first 10 % of
#      the run (the warm-up: pools, buffers and caches fill up first).
#
#   SOAK_S=120 bench/soak.sh
# Environment: SOAK_S (600), VEHICLES (100), WS_CLIENTS (100), CAP_S (10), RATE (measured / 2),
# PG (postgres://postgres@127.0.0.1:5432), BUILD=0 to skip the release build, OUT (directory for the JSON).
set -euo pipefail
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
cd "$ROOT"
SOAK_S=${SOAK_S:-600}
VEHICLES=${VEHICLES:-100}
WS_CLIENTS=${WS_CLIENTS:-100}
CAP_S=${CAP_S:-10}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
if [[ "${BUILD:-1}" != 0 ]]; then
  cargo build --release -p lockstep-server -p lockstep-bench
fi
SERVER="$ROOT/target/release/lockstep-server"
BENCH="$ROOT/target/release/lockstep-bench"
D=$(mktemp -d)
DB="lockstep_soak_$$_$(date +%s)"
psql "$PG/postgres" -qAtc "CREATE DATABASE $DB" >/dev/null
URL="$PG/$DB"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(cd "$D" && PORT=$PORT LOCKSTEP_HOST=127.0.0.1 LOCKSTEP_DATA_DIR=$D DATABASE_URL=$URL \
  LOCKSTEP_WS_PER_IP=$((WS_CLIENTS + 100)) LOCKSTEP_IP_REQUESTS_PER_S=100000 LOCKSTEP_DEVICE_REQUESTS_PER_S=100000 LOCKSTEP_DEVICE_READINGS_PER_S=10000000 RUST_LOG=warn \
  exec "$SERVER" >"$D/server.log" 2>&1) &
PID=$!
SAMPLER=
cleanup() {
  [[ -n "$SAMPLER" ]] && kill "$SAMPLER" 2>/dev/null || true
  kill "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  psql "$PG/postgres" -qAtc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null || true
  rm -rf "$D"
}
trap cleanup EXIT
for _ in $(seq 200); do
  curl -fsS "http://127.0.0.1:$PORT/status" >/dev/null 2>&1 && break
  sleep 0.1
done
kill -0 "$PID" || { cat "$D/server.log"; exit 1; }
echo "soak: server pid $PID, database $DB, load average $(cut -d' ' -f1-3 /proc/loadavg)"
common=(--url "http://127.0.0.1:$PORT" --server-pid "$PID" --database-url "$URL" --form seed
  --vehicles "$VEHICLES" --connections "$VEHICLES" --no-raw-limit)

if [[ -z "${RATE:-}" ]]; then
  "$BENCH" "${common[@]}" --duration "$CAP_S" --json "$D/capacity.json" --label soak-capacity >/dev/null
  CAP=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["load"]["readings_per_s"]))' "$D/capacity.json")
  RATE=$((CAP / 2))
  echo "capacity: $CAP readings/s closed loop ($VEHICLES vehicles, $CAP_S s); soak at $RATE readings/s"
fi

rss() { awk '/^VmRSS/ {print $2}' "/proc/$PID/status"; }
( while kill -0 "$PID" 2>/dev/null; do echo "$(date +%s) $(rss)"; sleep 5; done ) >"$D/rss.txt" &
SAMPLER=$!
echo "soak: $SOAK_S s at $RATE readings/s, $WS_CLIENTS subscribers (all vehicles); started $(date -u +%H:%M:%S) UTC"
"$BENCH" "${common[@]}" --rate "$RATE" --duration "$SOAK_S" --ws-clients "$WS_CLIENTS" \
  --ws-latency-every 10 --request-timeout 10 --json "$D/soak.json" --label soak >"$D/soak.txt"
kill "$SAMPLER" 2>/dev/null || true
SAMPLER=
[[ -n "${OUT:-}" ]] && mkdir -p "$OUT" && cp "$D/soak.json" "$OUT/soak-${SOAK_S}s.json" && cp "$D/rss.txt" "$OUT/soak-${SOAK_S}s-rss.txt"
python3 - "$D/soak.json" "$D/rss.txt" "$SOAK_S" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1])); soak_s = float(sys.argv[3])
samples = [tuple(map(int, l.split())) for l in open(sys.argv[2]) if len(l.split()) == 2]
t0 = samples[0][0]
warm = [kib for t, kib in samples if t - t0 >= 0.1 * soak_s]
start, end = (warm[0], warm[-1]) if warm else (samples[0][1], samples[-1][1])
load, ws, p = r["load"], r["ws"], r["server_proc"]
acked, committed = load["readings_acked"], load["readings_committed"]
errors = r["errors_total"]
drift = (end - start) / start
print(f"readings: {load['readings_sent']} sent, {acked} acknowledged, {committed} stored; "
      f"{load['readings_per_s']:.0f}/s; ack p50/p99 {r['ack_latency_ms']['p50']}/{r['ack_latency_ms']['p99']} ms")
print(f"errors: {errors} {r['errors']}")
print(f"websocket: {ws['connected']} of {ws['clients']} connected, delivered {ws['delivered']} of {ws['expected']}, "
      f"lagged {ws['lagged_dropped']}, closed early {ws['closed_early']}, p99 {ws['latency_ms']['p99']} ms")
print(f"server RSS after warm-up {start/1024:.1f} MiB, at the end {end/1024:.1f} MiB ({drift*100:+.1f} %); "
      f"peak {max(k for _, k in samples)/1024:.1f} MiB; CPU {p['cpu_us_per_reading']:.1f} µs/reading "
      f"({p['cpu_pct_of_core']:.1f} % of a core)")
print(f"load average {r['machine']['loadavg_start']} -> {r['machine']['loadavg_end']}")
fails = []
if errors: fails.append(f"{errors} errors")
if committed is None or committed < acked: fails.append(f"stored {committed} < acknowledged {acked}")
if ws["connected"] < ws["clients"] or ws["closed_early"]: fails.append("subscribers lost")
if ws["delivered"] < ws["expected"]: fails.append(f"delivered {ws['delivered']} < {ws['expected']}")
if abs(drift) > 0.10: fails.append(f"RSS drift {drift*100:+.1f} %")
print("SOAK PASS" if not fails else "SOAK FAIL: " + "; ".join(fails))
sys.exit(1 if fails else 0)
EOF
