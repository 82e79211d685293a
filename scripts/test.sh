#!/usr/bin/env bash
# Runs every test of the project: Rust (unit, property, conformance, black-box
# API against SQLite and the PostgreSQL on 127.0.0.1:5432, end-to-end with the
# real edge and server), the dashboard's unit tests, and the browser test in
# Debian's Chromium.
# Needs: cargo, Node >= 20.19 + npm, PostgreSQL reachable; starts Redis, NATS
# and Mosquitto when down; installs what else
# is missing (cargo-nextest, Debian's chromium) and fails loudly otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
  echo "FATAL: $*" >&2
  exit 1
}

command -v cargo >/dev/null || fail "cargo is not installed (https://rustup.rs)."
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "cargo-nextest is missing; installing it"
  cargo install --locked cargo-nextest || fail "could not install cargo-nextest."
fi
if [[ ! -x /usr/bin/chromium ]]; then
  echo "/usr/bin/chromium is missing; installing Debian's chromium"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } ||
    fail "could not install chromium (apt-get install -y chromium, as root); the browser test needs it."
fi
/usr/bin/chromium --version >/dev/null 2>&1 || fail "/usr/bin/chromium does not run."
if [[ ! -x /usr/sbin/nginx ]]; then
  echo "/usr/sbin/nginx is missing; installing Debian's nginx"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx >/dev/null; } ||
    fail "could not install nginx (apt-get install -y nginx, as root); the cluster tests put it in front of three servers."
fi
/usr/sbin/nginx -v >/dev/null 2>&1 || fail "/usr/sbin/nginx does not run."
# g++, libcurl and nlohmann-json for the C++ edge the end-to-end tests build.
./examples/cpp-edge/install-deps.sh || fail "could not install the C++ edge's build dependencies (examples/cpp-edge/install-deps.sh)."
command -v node >/dev/null && command -v npm >/dev/null || fail "Node >= 20.19 with npm is not installed."
node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' ||
  fail "Node $(node --version) is too old: dashboard/package.json needs >= 20.19."

if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "FATAL: PostgreSQL is not reachable on 127.0.0.1:5432; the store tests need it." >&2
  exit 1
fi

# Redis, NATS (JetStream) and Mosquitto on their standard ports: the cluster
# and sink tests use them. Started from Debian's packages when down (each
# test takes its own prefix, stream or topic, so a shared one is fine).
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ensure_service() {
  local name=$1 port=$2
  shift 2
  if ! port_open "$port"; then
    echo "$name is not on 127.0.0.1:$port; starting it"
    "$@" || true
    for _ in $(seq 1 30); do port_open "$port" && break; sleep 0.5; done
  fi
  port_open "$port" || fail "$name is not reachable on 127.0.0.1:$port; the cluster and sink tests need it."
}
ensure_service Redis 6379 redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
ensure_service NATS 4222 start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server
ensure_service Mosquitto 1883 mosquitto -d -c /etc/mosquitto/mosquitto.conf

# The dashboard bundle first, so the server's build script finds it fresh
# (and never runs npm itself in the middle of a parallel cargo build). Rebuilt
# only when the server's build script would call it stale (missing, the
# placeholder, or an input newer than it): rewriting dashboard/dist makes the
# next build of the server, which embeds it, compile again.
(
  cd dashboard
  npm ci --no-audit --no-fund
  inputs=(src public index.html package.json package-lock.json vite.config.ts tsconfig.json)
  if [[ ! -f dist/index.html ]] || grep -q lockstep-dashboard-placeholder dist/index.html ||
    [[ -n "$(find "${inputs[@]}" -newer dist/index.html -print -quit 2>/dev/null)" ]]; then
    npm run build
  else
    echo "dashboard/dist is up to date with its sources; not rebuilt"
  fi
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
  # Signing in when read auth is required (the page's form, and the cookie's flags), and the
  # history view against the real query API, in the same Chromium.
  export LOCKSTEP_SERVER_BIN="$PWD/../target/debug/lockstep-server"
  export LOCKSTEP_EDGE_BIN="$PWD/../target/debug/lockstep-edge"
  npm run e2e:login
  npm run e2e:login-cookie
  npm run e2e:history
)

# The OpenAPI document against the running server, bounded in time.
SCHEMATHESIS_TIME_S=120 scripts/schemathesis.sh
