#!/usr/bin/env bash
# Runs every test of the project: Rust (unit, property, black-box API against
# SQLite and the PostgreSQL on 127.0.0.1:5432, end-to-end with the real edge),
# the dashboard's unit tests, and the browser test in Debian's Chromium.
# Needs: cargo + cargo-nextest, Node 20 + npm, PostgreSQL reachable, /usr/bin/chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "FATAL: PostgreSQL is not reachable on 127.0.0.1:5432; the store tests need it." >&2
  exit 1
fi

# The end-to-end tests spawn the real binaries, so build them first.
cargo build --workspace --bins
cargo nextest run --workspace --no-fail-fast

if [[ -f dashboard/package.json ]]; then
  (
    cd dashboard
    [[ -d node_modules ]] || npm ci --no-audit --no-fund
    npm test
    LOCKSTEP_SERVER_BIN="$PWD/../target/debug/lockstep-server" \
    LOCKSTEP_EDGE_BIN="$PWD/../target/debug/lockstep-edge" \
      npm run e2e
  )
fi
