#!/usr/bin/env bash
# What device tokens cost on the hot path: each scenario runs without and with
# `--device-auth` (the server requires device credentials; lockstep-bench sends a
# fleet token made with `lockstep-server token create` on every request),
# alternating off, on, off, on … so both sides see the same machine. Prints one
# line per run and the JSON files in $OUT.
#
#   bench/auth-cost.sh                    # 2 rounds of every scenario, 15 s each
#   R=3 D=10 bench/auth-cost.sh seed-pg-10v
# Environment: R (rounds, 2), D (seconds per run, 15), OUT (bench/results/auth-cost),
#              BUILD=0 to skip the release build.
set -euo pipefail
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
cd "$ROOT"
R=${R:-2}; D=${D:-15}
OUT=${OUT:-$ROOT/bench/results/auth-cost}
mkdir -p "$OUT"
if [[ "${BUILD:-1}" != 0 ]]; then
  cargo build --release -p lockstep-server -p lockstep-bench
fi
BENCH="$ROOT/target/release/lockstep-bench"

# name | arguments (one request per reading in the seed form: the check's worst case)
SCENARIOS=(
  "seed-pg-10v|--store postgres --form seed --vehicles 10 --connections 10"
  "seed-pg-100v|--store postgres --form seed --vehicles 100 --connections 100"
  "lockstep-pg-b10|--store postgres --form lockstep --batch 10 --vehicles 20 --connections 20"
)

want=("$@")
for entry in "${SCENARIOS[@]}"; do
  name=${entry%%|*}; args=${entry#*|}
  if (( ${#want[@]} )) && [[ ! " ${want[*]} " == *" $name "* ]]; then continue; fi
  for round in $(seq 1 "$R"); do
    for auth in off on; do
      flag=(); [[ $auth == on ]] && flag=(--device-auth)
      file="$OUT/$name-auth-$auth-$round"
      load0=$(cut -d' ' -f1 /proc/loadavg)
      # shellcheck disable=SC2086
      "$BENCH" --spawn --label "$name-auth-$auth" $args --duration "$D" --no-raw-limit "${flag[@]}" \
        --json "$file.json" > "$file.txt"
      load1=$(cut -d' ' -f1 /proc/loadavg)
      python3 - "$file.json" "$name" "$auth" "$round" "$load0" "$load1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
name, auth, rnd, l0, l1 = sys.argv[2:]
f = lambda p: (lambda v: "-" if v is None else f"{v:,.1f}")(
    __import__("functools").reduce(lambda o, k: o.get(k) if isinstance(o, dict) else None, p.split("/"), r))
print(f"{name:16} round {rnd} auth {auth:3}: {f('load/readings_per_s'):>9} readings/s, "
      f"server {f('server_proc/cpu_us_per_reading'):>6} µs, PostgreSQL {f('postgres_proc/cpu_us_per_reading'):>6} µs "
      f"per reading, ack p99 {f('ack_latency_ms/p99')} ms, errors {r['errors_total']} (load {l0} → {l1})")
PY
    done
  done
done
