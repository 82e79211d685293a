#!/usr/bin/env bash
# The lockstep-bench scenario matrix of BENCHMARKS.md, on release builds.
# Each scenario starts its own lockstep-server on a fresh store (SQLite file or a
# uniquely named PostgreSQL database on 127.0.0.1:5432, dropped after) and writes
# $OUT/<name>.json and $OUT/<name>.txt (the human table).
#
#   bench/run-scenarios.sh                 # every scenario (about 6-8 minutes on 2 cores)
#   bench/run-scenarios.sh seed-pg ws-1000 # only these
#   D=10 bench/run-scenarios.sh            # shorter runs
# Environment: D (seconds per scenario, 15), OUT (bench/results, committed with the command in bench/results/README.md), BUILD=0 to skip the build.
set -euo pipefail
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
cd "$ROOT"
D=${D:-15}
OUT=${OUT:-$ROOT/bench/results}
mkdir -p "$OUT"
if [[ "${BUILD:-1}" != 0 ]]; then
  cargo build --release -p lockstep-server -p lockstep-bench
fi
BENCH="$ROOT/target/release/lockstep-bench"

# name | arguments
SCENARIOS=(
  "seed-pg-10v|--store postgres --form seed --vehicles 10 --connections 10 --duration $D"
  "seed-pg-100v|--store postgres --form seed --vehicles 100 --connections 100 --duration $D"
  "seed-sqlite-100v|--store sqlite --form seed --vehicles 100 --connections 100 --duration $D"
  "lockstep-pg-b100|--store postgres --form lockstep --batch 100 --vehicles 100 --connections 20 --duration $D"
  "lockstep-sqlite-b100|--store sqlite --form lockstep --batch 100 --vehicles 100 --connections 20 --duration $D"
  "seed-pg-ws100|--store postgres --form seed --vehicles 10 --connections 10 --ws-clients 100 --duration $D"
  "ws-1000-all-1k|--store postgres --form seed --vehicles 10 --connections 10 --rate 1000 --ws-clients 1000 --ws-latency-every 20 --duration $D"
  "ws-1000-per-vehicle-1k|--store postgres --form seed --vehicles 1000 --connections 50 --rate 1000 --ws-clients 1000 --ws-per-vehicle --ws-latency-every 10 --duration $D"
  "idle-10k|--store postgres --form seed --vehicles 10 --connections 10 --rate 100 --idle-ws-clients 10000 --duration $D"
)

want=("$@")
for entry in "${SCENARIOS[@]}"; do
  name=${entry%%|*}; args=${entry#*|}
  if (( ${#want[@]} )) && [[ ! " ${want[*]} " == *" $name "* ]]; then continue; fi
  echo "== $name: lockstep-bench --spawn $args   (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  # shellcheck disable=SC2086
  "$BENCH" --spawn --label "$name" $args --json "$OUT/$name.json" | tee "$OUT/$name.txt"
done
