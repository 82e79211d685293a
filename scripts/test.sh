#!/usr/bin/env bash
# Runs every test of the project: Rust (unit, property, conformance, black-box
# API against SQLite and the PostgreSQL on 127.0.0.1:5432, end-to-end with the
# real edge and server), the dashboard's unit tests, and the browser test in
# Debian's Chromium.
# Needs: cargo + cargo-nextest, Node 20 + npm, PostgreSQL reachable,
# /usr/bin/chromium (`apt-get install -y chromium`).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "FATAL: PostgreSQL is not reachable on 127.0.0.1:5432; the store tests need it." >&2
  exit 1
fi

# The dashboard bundle first, so the server's build script finds it fresh
# (and never runs npm itself in the middle of a parallel cargo build).
(
  cd dashboard
  npm ci --no-audit --no-fund
  npm run build
)

# The end-to-end tests spawn the real binaries, so build them before testing.
LOCKSTEP_REQUIRE_DASHBOARD=1 cargo build --workspace --bins
LOCKSTEP_REQUIRE_DASHBOARD=1 cargo nextest run --workspace --no-fail-fast

(
  cd dashboard
  npm test
  LOCKSTEP_SERVER_BIN="$PWD/../target/debug/lockstep-server" \
  LOCKSTEP_EDGE_BIN="$PWD/../target/debug/lockstep-edge" \
    npm run e2e
  # The dashboard's login (read auth required) in the same Chromium.
  LOCKSTEP_SERVER_BIN="$PWD/../target/debug/lockstep-server" node e2e/login.e2e.mjs
)
