#!/usr/bin/env bash
# Server memory per WebSocket client after a full history (issue 16, target 4: <= 16 KiB).
#
# Starts a release lockstep-server on a fresh SQLite store, loads READINGS readings (seed form,
# 10 vehicles) so that every new client gets the full LOCKSTEP_HISTORY (100) readings, then
# connects CLIENTS subscribers (all vehicles, so each receives the whole history) and keeps them
# connected while 10 readings/s arrive. Prints the server's RSS before and with the clients and
# KiB per client = (RSS with clients - RSS before) / clients.
#
#   bench/ws-history-memory.sh               # 1,000 clients
#   CLIENTS=2000 bench/ws-history-memory.sh
# Environment: CLIENTS (1000), READINGS (2000), BUILD=0 to skip the release build, OUT (a JSON file to keep),
#              BIN (directory of lockstep-server and lockstep-bench; target/release).
set -euo pipefail
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
cd "$ROOT"
CLIENTS=${CLIENTS:-1000}
READINGS=${READINGS:-2000}
if [[ "${BUILD:-1}" != 0 ]]; then
  cargo build --release -p lockstep-server -p lockstep-bench
fi
BIN=${BIN:-$ROOT/target/release}
SERVER="$BIN/lockstep-server"
BENCH="$BIN/lockstep-bench"
D=$(mktemp -d)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ulimit -n "$(ulimit -Hn)" || true
(cd "$D" && PORT=$PORT LOCKSTEP_HOST=127.0.0.1 LOCKSTEP_DATA_DIR=$D LOCKSTEP_WS_PER_IP=$((CLIENTS + 100)) \
  LOCKSTEP_IP_REQUESTS_PER_S=100000 LOCKSTEP_DEVICE_REQUESTS_PER_S=100000 LOCKSTEP_DEVICE_READINGS_PER_S=10000000 RUST_LOG=warn exec "$SERVER" >"$D/server.log" 2>&1) &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$D"' EXIT
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$PORT/status" >/dev/null 2>&1 && break
  sleep 0.1
done
echo "load average $(cut -d' ' -f1-3 /proc/loadavg); server pid $PID on port $PORT; loading $READINGS readings"
"$BENCH" --url "http://127.0.0.1:$PORT" --server-pid "$PID" --database-url "sqlite://$D/lockstep.db" \
  --form seed --vehicles 10 --connections 10 --count "$READINGS" --no-raw-limit >/dev/null
J=$D/clients.json
"$BENCH" --url "http://127.0.0.1:$PORT" --server-pid "$PID" --database-url "sqlite://$D/lockstep.db" \
  --form seed --vehicles 10 --connections 10 --rate 10 --duration 3 --ws-clients "$CLIENTS" \
  --ws-latency-every 100 --no-raw-limit --json "$J" >/dev/null
[[ -n "${OUT:-}" ]] && cp "$J" "$OUT"
python3 - "$J" "$CLIENTS" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1])); n = int(sys.argv[2])
p, ws = r["server_proc"], r["ws"]
before, after = p["rss_idle_kib"], p["rss_after_ws_kib"]
print(f"clients {n}: connected {ws['connected']}, connect errors {ws['connect_errors']}, "
      f"closed early {ws['closed_early']}, delivered {ws['fraction_delivered']}")
print(f"server RSS before {before/1024:.1f} MiB -> with clients {after/1024:.1f} MiB "
      f"(peak {(p.get('rss_peak_kib') or 0)/1024:.1f} MiB)")
print(f"KiB/client after a full history: {(after - before)/n:.1f}")
EOF
echo "load average $(cut -d' ' -f1-3 /proc/loadavg)"
