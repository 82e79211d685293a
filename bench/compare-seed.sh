#!/usr/bin/env bash
# Side by side with the seed design: the baseline's own load generator
# (loadgen.py, seed wire form, one reading per POST) against
#   1. the seed Python server (FastAPI + asyncpg, ../shared/baseline/seed-python), then
#   2. lockstep-server (seed form, PostgreSQL),
# on the same machine and the same PostgreSQL (127.0.0.1:5432, user postgres, trust),
# one after the other, each on a fresh database that is dropped afterwards.
# loadgen gets --server-pid (server CPU and RSS from /proc) and --pg-pid.
#
# Runs only if the baseline folder exists beside the repository; exits 0 otherwise.
#
# Environment (defaults in brackets):
#   D [20]  measured seconds     W [3]  warm-up seconds     V [10] vehicles   C [10] connections
#   K [0]   WebSocket subscribers (loadgen -K)             RATE [0] readings/s per vehicle (0 = closed loop)
#   EXTRA   more loadgen options, e.g. "--check"
#   LOCKSTEP_SERVER_BIN [target/release/lockstep-server]  (built if missing: cargo build --release -p lockstep-server)
#   PG_ADMIN_URL [postgresql://postgres@127.0.0.1:5432/postgres]
#   CACHE   where the baseline copy and its venv live [${XDG_CACHE_HOME:-~/.cache}/lockstep-bench]
#   OUT     where the two loadgen reports go [target/compare-seed]
#   ONLY    "python" or "lockstep" to run one side
set -euo pipefail

ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
BASE="$ROOT/../shared/baseline/seed-python"
if [[ ! -d "$BASE" ]]; then
  echo "compare-seed: no baseline at $BASE — nothing to compare, skipped."
  exit 0
fi
BASE=$(cd "$BASE" && pwd)

D=${D:-20}; W=${W:-3}; V=${V:-10}; C=${C:-10}; K=${K:-0}; RATE=${RATE:-0}; EXTRA=${EXTRA:-}
PG_ADMIN_URL=${PG_ADMIN_URL:-postgresql://postgres@127.0.0.1:5432/postgres}
PG_BASE=${PG_ADMIN_URL%/*}
CACHE=${CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lockstep-bench}
OUT=${OUT:-$ROOT/target/compare-seed}
BIN=${LOCKSTEP_SERVER_BIN:-$ROOT/target/release/lockstep-server}
ONLY=${ONLY:-}
mkdir -p "$CACHE" "$OUT"
OUT=$(cd "$OUT" && pwd)

say() { echo "compare-seed: $*" >&2; }
psql_admin() { psql "$PG_ADMIN_URL" -v ON_ERROR_STOP=1 -qAt "$@"; }

# --- the baseline, copied (the shared folder is read-only) and its venv -----------------
SRC="$CACHE/seed-python"
rm -rf "$SRC"; cp -r "$BASE" "$SRC"; chmod -R u+w "$SRC"; rm -f "$SRC/.env"
VENV="$CACHE/venv"
REQ_HASH=$(sha256sum "$SRC/requirements.txt" | cut -c1-16)
if [[ ! -f "$VENV/.req-$REQ_HASH" ]]; then
  say "creating the Python venv in $VENV (PyPI)"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  # grpcio-tools only regenerates telemetry_pb2.py (committed in the baseline): not needed to run.
  grep -v '^grpcio-tools' "$SRC/requirements.txt" > "$CACHE/requirements-run.txt"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$CACHE/requirements-run.txt"
  touch "$VENV/.req-$REQ_HASH"
fi
PY="$VENV/bin/python"

if [[ "$ONLY" != "python" && ! -x "$BIN" ]]; then
  say "building lockstep-server (release)"
  (cd "$ROOT" && cargo build --release -p lockstep-server)
fi
BIN=$(realpath "$BIN")

free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_status() { # url pid
  for _ in $(seq 1 150); do
    curl -sf "$1/status" >/dev/null && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.2
  done
  return 1
}

# --- databases (fresh, dropped at exit), the server PIDs to stop ----------------------------
TAG="cmpseed_$$_$(date +%s)"
DBS=(); PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [[ -n "$p" ]] && kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
  for db in "${DBS[@]:-}"; do [[ -n "$db" ]] && psql_admin -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1; done
  return 0
}
trap cleanup EXIT
new_db() { psql_admin -c "CREATE DATABASE $1"; DBS+=("$1"); }

# postmaster PID, for loadgen's PostgreSQL CPU figure
CKPT=$(psql_admin -c "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")
PG_PID=$(ps -o ppid= -p "$CKPT" | tr -d ' ')

loadgen() { # name url server_pid
  local name=$1 url=$2 pid=$3
  say "$name: loadgen -V $V -C $C -D $D --warmup $W -K $K --rate $RATE $EXTRA   (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
  (cd "$SRC" && "$PY" loadgen.py --url "$url" -V "$V" -C "$C" -D "$D" --warmup "$W" -K "$K" --rate "$RATE" \
      --server-pid "$pid" --pg-pid "$PG_PID" --json-out "$OUT/$name.json" $EXTRA > "$OUT/$name.stdout")
  tail -n1 "$OUT/$name.stdout" >/dev/null || true
}

rows() { psql "$PG_BASE/$1" -qAt -c 'SELECT count(*) FROM telemetry_data'; }

# --- 1. the seed Python server -----------------------------------------------------------
if [[ "$ONLY" != "lockstep" ]]; then
  db="${TAG}_py"; new_db "$db"
  psql "$PG_BASE/$db" -v ON_ERROR_STOP=1 -q -f "$SRC/schema.sql"
  port=$(free_port)
  (cd "$SRC" && exec env DATABASE_URL="$PG_BASE/$db" "$VENV/bin/uvicorn" server:app --host 127.0.0.1 --port "$port" --workers 1) \
    > "$OUT/seed-python.server.log" 2>&1 &
  pid=$!; PIDS+=("$pid")
  wait_status "http://127.0.0.1:$port" "$pid" || { say "the seed Python server did not start:"; tail "$OUT/seed-python.server.log" >&2; exit 1; }
  sleep 1
  loadgen seed-python "http://127.0.0.1:$port" "$pid"
  echo "$(rows "$db")" > "$OUT/seed-python.rows"
  kill "$pid"; wait "$pid" 2>/dev/null || true
fi

# --- 2. lockstep-server, seed form, PostgreSQL -------------------------------------------
if [[ "$ONLY" != "python" ]]; then
  db="${TAG}_rs"; new_db "$db"
  port=$(free_port)
  RUNDIR=$(mktemp -d)   # no .env from the repository
  # The abuse limits off, as in lockstep-bench: loadgen's closed loop exceeds the default
  # per-device budget and would measure 429 answers, not the server (the seed server has none).
  (cd "$RUNDIR" && exec env PORT="$port" LOCKSTEP_HOST=127.0.0.1 DATABASE_URL="$PG_BASE/$db" LOCKSTEP_DATA_DIR="$RUNDIR" RUST_LOG=warn \
    LOCKSTEP_IP_REQUESTS_PER_S=0 LOCKSTEP_DEVICE_REQUESTS_PER_S=0 LOCKSTEP_DEVICE_READINGS_PER_S=0 "$BIN") \
    > "$OUT/lockstep-server.server.log" 2>&1 &
  pid=$!; PIDS+=("$pid")
  wait_status "http://127.0.0.1:$port" "$pid" || { say "lockstep-server did not start:"; tail "$OUT/lockstep-server.server.log" >&2; exit 1; }
  sleep 1
  loadgen lockstep-server "http://127.0.0.1:$port" "$pid"
  echo "$(rows "$db")" > "$OUT/lockstep-server.rows"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$RUNDIR"
fi

# --- side by side -------------------------------------------------------------------------
"$PY" - "$OUT" <<'PYEOF'
import json, os, sys
out = sys.argv[1]
runs = [(n, os.path.join(out, n + ".json")) for n in ("seed-python", "lockstep-server")]
runs = [(n, json.load(open(p)), open(os.path.join(out, n + ".rows")).read().strip()) for n, p in runs if os.path.exists(p)]
def g(d, *ks):
    for k in ks:
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return d
def fmt(v, nd=1):
    return "-" if v is None else (f"{v:,.{nd}f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v))
rows = []
for name, r, stored in runs:
    rps = r["records_per_s"]
    cpu = r["cpu_pct"]
    per = lambda k: (cpu[k] / 100.0 / rps * 1e6) if rps else None   # µs of CPU per record
    p = r["server_proc"]
    rows.append({
        "server": name,
        "records/s": fmt(rps),
        "p50 / p99 ms": f'{fmt(g(r, "http_latency", "p50_ms"), 2)} / {fmt(g(r, "http_latency", "p99_ms"), 2)}',
        "errors": fmt(sum(r["errors"].values())),
        "server CPU µs/record": fmt(per("server"), 1),
        "PostgreSQL CPU µs/record": fmt(per("postgres"), 1),
        "loadgen CPU µs/record": fmt(per("loadgen"), 1),
        "server CPU %": fmt(cpu["server"]),
        "RSS idle → max MiB": f'{fmt(g(p, "rss_idle_kb") and p["rss_idle_kb"] / 1024)} → {fmt(g(p, "rss_max_kb") and p["rss_max_kb"] / 1024)}',
        "rows stored": stored,
        "WS msgs/s, delivered %": "-" if "ws" not in r else f'{fmt(r["ws"]["msgs_per_s"])}, {fmt(r["ws"]["delivered_pct"], 2)} %',
        "WS p50 / p99 ms": "-" if "ws" not in r else f'{fmt(g(r, "ws", "latency", "p50_ms"), 2)} / {fmt(g(r, "ws", "latency", "p99_ms"), 2)}',
        "load avg start → end": f'{r["loadavg_start"][0]:.2f} → {r["loadavg_end"][0]:.2f}',
    })
if not rows:
    sys.exit("no results")
keys = list(rows[0].keys())
w0 = max(len(k) for k in keys)
ws = [max(len(row["server"]), max(len(str(row[k])) for k in keys)) for row in rows]
for k in keys:
    print(f"{k:<{w0}}  " + "  ".join(f"{str(row[k]):>{w}}" for row, w in zip(rows, ws)))
if len(rows) == 2:
    a, b = runs[0][1], runs[1][1]
    ca = a["cpu_pct"]["server"] / 100 / a["records_per_s"] if a["records_per_s"] else None
    cb = b["cpu_pct"]["server"] / 100 / b["records_per_s"] if b["records_per_s"] else None
    if ca and cb:
        print(f"\nserver CPU per record: lockstep-server uses {cb / ca:.3f}× the seed server's ({ca / cb:.0f}× less)")
print("\nreports: " + ", ".join(os.path.join(out, n + ".json") for n, _, _ in runs))
PYEOF
