//! A short smoke run of `lockstep-bench` against the real `lockstep-server`:
//! about 3 seconds per case, SQLite and PostgreSQL, seed and lockstep forms,
//! with a few WebSocket subscribers and idle clients. It checks that rows were
//! committed (counted in the store), that the JSON carries every figure, and
//! that nothing failed — so the harness cannot rot silently. The real
//! benchmark runs stay out of the test suite (see BENCHMARKS.md).
//!
//! Needs the server binary in the same target directory
//! (`cargo build -p lockstep-server`, or `cargo build --workspace --bins` as
//! scripts/test.sh does) and PostgreSQL on 127.0.0.1:5432 for the PostgreSQL
//! cases. A missing binary fails the test with instructions; it never passes silently.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// `target/<profile>/lockstep-server`: the test runs from `target/<profile>/deps/`.
fn server_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps layout");
    let bin = profile_dir.join("lockstep-server");
    assert!(
        bin.is_file(),
        "\n\n*** lockstep-bench smoke test: {} has not been built. ***\n\
         Build it first: `cargo build -p lockstep-server` (scripts/test.sh builds every binary).\n\
         This test fails instead of skipping so the benchmark harness cannot rot unnoticed.\n",
        bin.display()
    );
    bin
}

/// Every figure the JSON must carry (present; `null` allowed unless listed in `non_null`).
const KEYS: &[&str] = &[
    "/label",
    "/machine/nproc",
    "/machine/loadavg_start",
    "/machine/loadavg_end",
    "/config/form",
    "/server/pid",
    "/server/store",
    "/server/exit",
    "/fd_limit/soft_after",
    "/load/window_s",
    "/load/readings_acked",
    "/load/readings_committed",
    "/load/readings_per_s",
    "/load/requests_per_s",
    "/load/bytes_per_reading",
    "/load/skipped_fraction",
    "/ack_latency_ms/p50",
    "/ack_latency_ms/p99",
    "/ack_latency_ms/p999",
    "/errors",
    "/errors_total",
    "/ws/delivered",
    "/ws/expected",
    "/ws/fraction_delivered",
    "/ws/msgs_per_s",
    "/ws/latency_ms/p50",
    "/ws/latency_ms/p99",
    "/ws/lagged_dropped",
    "/idle_ws/connected",
    "/idle_ws/server_kib_per_client",
    "/server_proc/cpu_s",
    "/server_proc/cpu_us_per_reading",
    "/server_proc/rss_idle_kib",
    "/server_proc/rss_peak_kib",
    "/server_proc/vm_hwm_kib",
    "/postgres_proc/cpu_us_per_reading",
    "/bench_proc/cpu_us_per_reading",
    "/raw_limit/rows_per_s",
    "/raw_limit/method",
    "/ingest_over_raw",
    "/server_sql_limit",
    "/ingest_over_server_sql",
    "/server_status/status",
];

/// Figures that must have a value in every smoke run.
const NON_NULL: &[&str] = &[
    "/load/readings_committed",
    "/ack_latency_ms/p99",
    "/ws/fraction_delivered",
    "/ws/latency_ms/p99",
    "/server_proc/cpu_us_per_reading",
    "/server_proc/rss_peak_kib",
    "/raw_limit/rows_per_s",
    "/ingest_over_raw",
];

fn smoke(store: &str, form: &str) {
    smoke_with(store, form, &[]);
}

fn smoke_with(store: &str, form: &str, extra: &[&str]) -> Value {
    let server = server_binary();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_lockstep-bench"))
        .arg("--spawn")
        .arg(&server)
        .args([
            "--store",
            store,
            "--form",
            form,
            "--batch",
            "20",
            "--vehicles",
            "4",
            "--connections",
            "2",
        ])
        .args([
            "--duration",
            "3",
            "--ws-clients",
            "2",
            "--ws-latency-every",
            "1",
            "--idle-ws-clients",
            "20",
        ])
        .args(extra)
        .args(["--label", &format!("smoke-{store}-{form}")])
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run lockstep-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "lockstep-bench failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let text = std::fs::read_to_string(&json)
        .unwrap_or_else(|e| panic!("no JSON report ({e}):\n{stdout}\n{stderr}"));
    let r: Value = serde_json::from_str(&text).unwrap();
    let missing: Vec<&&str> = KEYS.iter().filter(|k| r.pointer(k).is_none()).collect();
    assert!(missing.is_empty(), "JSON lacks {missing:?}:\n{text}");
    let null: Vec<&&str> = NON_NULL
        .iter()
        .filter(|k| r.pointer(k).is_none_or(Value::is_null))
        .collect();
    assert!(null.is_empty(), "JSON has no value for {null:?}:\n{text}");

    let committed = r
        .pointer("/load/readings_committed")
        .and_then(Value::as_u64)
        .unwrap();
    let acked = r
        .pointer("/load/readings_acked")
        .and_then(Value::as_u64)
        .unwrap();
    assert!(committed > 0, "no readings committed:\n{stdout}");
    assert_eq!(
        committed, acked,
        "every acknowledged reading must be in the store:\n{stdout}"
    );
    assert_eq!(r["errors_total"], 0, "errors:\n{stdout}\n{stderr}");
    assert_eq!(r["server"]["store"], store);
    let delivered = r
        .pointer("/ws/fraction_delivered")
        .and_then(Value::as_f64)
        .unwrap();
    assert!(
        delivered > 0.99,
        "WebSocket subscribers got {delivered} of the readings:\n{stdout}"
    );
    assert_eq!(
        r.pointer("/idle_ws/connected").and_then(Value::as_u64),
        Some(20),
        "{stdout}"
    );
    assert!(
        stdout.contains("readings/s"),
        "no human table on stdout:\n{stdout}"
    );
    r
}

#[test]
fn sqlite_seed_form() {
    smoke("sqlite", "seed");
}

#[test]
fn sqlite_lockstep_form() {
    smoke("sqlite", "lockstep");
}

#[test]
fn postgres_seed_form() {
    smoke("postgres", "seed");
}

#[test]
fn postgres_lockstep_form() {
    smoke("postgres", "lockstep");
}

/// `--device-auth`: the server requires device credentials (the bench checks
/// that a request without a token gets 401 before the load) and every reading
/// is sent with the fleet token the bench created through `token create`.
#[test]
fn sqlite_seed_form_with_device_tokens() {
    let r = smoke_with("sqlite", "seed", &["--device-auth"]);
    assert_eq!(r["config"]["device_auth"], true);
    assert!(
        r["config"].get("device_token").is_none(),
        "the token must not be written to the report"
    );
}
