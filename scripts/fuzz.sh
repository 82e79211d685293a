#!/usr/bin/env bash
# Builds the cargo-fuzz targets (the codec's decoders, the server's ingest body
# and WebSocket client messages) and runs each for a bounded time:
#   scripts/fuzz.sh [seconds per target, default 20]
# Starts from the committed seed corpus (fuzz/seeds/<target>/), keeps what it
# learns in fuzz/corpus/<target>/ (not committed), and fails on a crash; the
# crashing input is in fuzz/artifacts/<target>/ — copy it to
# fuzz/regressions/<target>/ so `tests/fuzz_regressions.rs` replays it, and fix.
# Prints each target's executions (libFuzzer's final stats) for
# docs/reliability.md. cargo-fuzz passes -Z flags, which the stable toolchain
# accepts with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-20}"
targets=(decode_batch decode_seed ingest_body ws_client_msg)
export RUSTC_BOOTSTRAP=1
# The server targets link lockstep-server: its embedded dashboard need not be rebuilt for them.
export LOCKSTEP_SKIP_DASHBOARD_BUILD=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing; installing it"
  cargo install --locked cargo-fuzz || { echo "FATAL: could not install cargo-fuzz" >&2; exit 1; }
fi

cargo fuzz build

for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  log="$(mktemp)"
  echo "== fuzzing $t for ${seconds}s"
  if ! cargo fuzz run "$t" "corpus/$t" "seeds/$t" "regressions/$t" -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "FATAL: $t crashed; the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)"
  grep -E '^(#[0-9]+ *DONE|Done [0-9]+ runs)' "$log" | tail -n1 || true
  echo "$t: ${runs:-?} executions in ${seconds}s, corpus $(find "corpus/$t" -type f | wc -l) inputs"
  rm -f "$log"
done
