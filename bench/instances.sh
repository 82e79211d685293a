#!/usr/bin/env bash
# Issue 11's cluster benchmark: 1, 2 and 3 lockstep-server instances (release)
# on one PostgreSQL database, joined by the machine's Redis (127.0.0.1:6379,
# a prefix unique to the run; one instance runs with Redis too, so that every
# row pays the same bridge). For each instance count:
#   cap-N   closed loop, lockstep form (batches of 10), 20 vehicles, 20 connections
#           dealt round the instances: readings/s, server CPU per reading
#           (every instance summed), PostgreSQL CPU per reading;
#   seed-N  the same in the seed form (one reading per POST);
#   ws-N    1,000 readings/s offered (lockstep form, batches of 10) with 6
#           WebSocket subscribers dealt round the instances, each timing every
#           message: delivery p50/p99, and of it the readings another instance
#           ingested (cross-instance, through Redis).
#   rr-N    (N > 1) the seed form again with each vehicle's requests going round
#           the instances (nginx's per-request round robin): every request finds
#           its vehicle's cached state stale and reloads it.
# Writes $OUT/instances-<scenario>.{json,txt}.
#   bench/instances.sh              # all (about 4 minutes)
#   N_LIST="1 3" bench/instances.sh
# Environment: D (seconds per run, 10), OUT (bench/results), BUILD=0 to skip the build,
# REDIS (redis://127.0.0.1:6379).
set -euo pipefail
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
cd "$ROOT"
D=${D:-10}
OUT=${OUT:-$ROOT/bench/results}
N_LIST=${N_LIST:-1 2 3}
REDIS=${REDIS:-redis://127.0.0.1:6379}
mkdir -p "$OUT"
if [[ "${BUILD:-1}" != 0 ]]; then
  cargo build --release -p lockstep-server -p lockstep-bench
fi
BENCH="$ROOT/target/release/lockstep-bench"

run() {
  local name=$1; shift
  echo "== $name: lockstep-bench --spawn $*   (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  "$BENCH" --spawn --store postgres --redis-url "$REDIS" --no-raw-limit --label "$name" "$@" \
    --json "$OUT/instances-$name.json" | tee "$OUT/instances-$name.txt"
}

for n in $N_LIST; do
  run "cap-$n" --instances "$n" --form lockstep --batch 10 --vehicles 20 --connections 20 --duration "$D"
  run "seed-$n" --instances "$n" --form seed --vehicles 20 --connections 20 --duration "$D"
  run "ws-$n" --instances "$n" --form lockstep --batch 10 --vehicles 12 --connections 12 --rate 1000 \
    --ws-clients 6 --ws-latency-every 1 --duration "$D"
  if (( n > 1 )); then
    run "rr-$n" --instances "$n" --spread request --form seed --vehicles 20 --connections 20 --duration "$D"
  fi
done
