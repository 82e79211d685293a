//! Logger orchestration with a stand-in child (a shell script), so these
//! tests do not depend on lockstep-edge being built.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(10);

/// Writes an executable script; returns its path.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

// The trap comes first: once a line is printed, SIGTERM gives exit code 3
// (a SIGTERM before the trap would end the shell by the signal).
const POLITE: &str = r#"trap 'echo "edge got SIGTERM"; exit 3' TERM
echo "edge starting $*"
echo "WARN a line on stderr" >&2
while true; do sleep 0.05; done"#;

const STUBBORN: &str = r#"trap '' TERM
echo "edge ignoring SIGTERM"
while true; do sleep 0.05; done"#;

async fn logger_app(bin: &Path, extra: &[&str]) -> TestApp {
    let db = Arc::new(TestDb::new(Backend::Sqlite).await);
    let mut args = vec![
        "--edge-bin",
        bin.to_str().unwrap(),
        "--logger-grace-ms",
        "500",
    ];
    args.extend_from_slice(extra);
    spawn_app_with(db, &args).await
}

async fn post(app: &TestApp, path: &str, body: Option<Value>, token: Option<&str>) -> (u16, Value) {
    let mut req = app.http.post(format!("{}{path}", app.addr));
    if let Some(b) = body {
        req = req.json(&b);
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_stream_and_stop_over_rest_and_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let app = logger_app(&script(dir.path(), "edge", POLITE), &[]).await;
    let mut ws = app.ws().await;
    assert_eq!(ws.next_json(WAIT).await["type"], "history");

    let (code, body) = post(
        &app,
        "/logger/start",
        Some(json!({"vehicles": 2, "rate": 5})),
        None,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "started");
    let pid = body["pid"].as_u64().unwrap();
    let (code, body) = post(&app, "/logger/start", None, None).await;
    assert_eq!(
        (code, &body["status"], body["pid"].as_u64()),
        (409, &json!("already_running"), Some(pid))
    );
    let st = app.get_json("/logger/status").await;
    assert_eq!(
        (st["running"].as_bool(), st["pid"].as_u64()),
        (Some(true), Some(pid))
    );
    assert!(st["started_at_ms"].as_i64().unwrap() > 0);

    let expected = format!(
        "edge starting simulate --vehicles 2 --rate 5 --server http://127.0.0.1:{} --exit-with-parent --spool {}/edge-spool",
        app.port,
        app.data_dir.path().display()
    );
    // stdout and stderr are pumped independently: their lines may come in either order.
    let (mut out_level, mut err_level) = (None, None);
    while out_level.is_none() || err_level.is_none() {
        let m = ws
            .until(WAIT, "log", |m| m["data"]["source"] == "logger")
            .await;
        let msg = m["data"]["message"].as_str().unwrap();
        if msg == expected {
            out_level = Some(m["data"]["level"].clone());
        } else if msg.contains("stderr") {
            err_level = Some(m["data"]["level"].clone());
        }
    }
    assert_eq!(out_level.unwrap(), "info");
    assert_eq!(err_level.unwrap(), "warn");
    assert_eq!(app.status().await["logger"]["running"], true);

    let (code, body) = post(&app, "/logger/stop", None, None).await;
    assert_eq!(
        (code, body.clone()),
        (200, json!({"status": "stopped", "exit_code": 3}))
    );
    let (code, body) = post(&app, "/logger/stop", None, None).await;
    assert_eq!((code, body), (200, json!({"status": "not_running"})));
    let st = app.get_json("/logger/status").await;
    assert_eq!(st["running"], false);
    assert_eq!(st["pid"], Value::Null);
    assert_eq!(st["last_exit_code"], 3);
    assert!(st["last_run_s"].as_f64().unwrap() > 0.0);

    // The same over the WebSocket.
    ws.send_json(json!({"type": "start_logger", "vehicles": 1}))
        .await;
    // Running, and its first line printed (so its SIGTERM trap is set).
    let (mut running, mut printed) = (false, false);
    while !(running && printed) {
        let m = ws.next_json(WAIT).await;
        running |= m["type"] == "logger" && m["data"]["running"] == true;
        printed |= m["type"] == "log"
            && m["data"]["source"] == "logger"
            && m["data"]["message"]
                .as_str()
                .is_some_and(|t| t.starts_with("edge starting simulate --vehicles 1 "));
    }
    ws.send_json(json!({"type": "stop_logger"})).await;
    let m = ws
        .until(WAIT, "logger", |m| m["data"]["running"] == false)
        .await;
    assert_eq!(m["data"]["last_exit_code"], 3);

    // Bad options: 400, nothing started.
    let (code, body) = post(&app, "/logger/start", Some(json!({"vehicles": 0})), None).await;
    assert_eq!(code, 400, "{body}");
    let (code, _) = post(
        &app,
        "/logger/start",
        Some(json!({"replay": ["a.csv"]})),
        None,
    )
    .await;
    assert_eq!(code, 400);
    assert_eq!(app.get_json("/logger/status").await["running"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_needs_loopback_or_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let app = logger_app(
        &script(dir.path(), "edge", POLITE),
        &["--trust-loopback", "false", "--admin-token", "s3cret"],
    )
    .await;
    let (code, body) = post(&app, "/logger/start", None, None).await;
    assert_eq!(code, 403);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("LOCKSTEP_ADMIN_TOKEN")
    );
    assert_eq!(post(&app, "/logger/stop", None, Some("wrong")).await.0, 403);
    let mut ws = app.ws().await;
    ws.send_json(json!({"type": "start_logger"})).await;
    let m = ws
        .until(WAIT, "log", |m| m["data"]["level"] == "error")
        .await;
    assert!(m["data"]["message"].as_str().unwrap().contains("refused"));
    assert_eq!(app.get_json("/logger/status").await["running"], false);

    let (code, body) = post(&app, "/logger/start", None, Some("s3cret")).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        post(&app, "/logger/stop", None, Some("s3cret")).await.1["status"],
        "stopped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_grace_and_no_orphan_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let app = logger_app(&script(dir.path(), "edge", STUBBORN), &[]).await;
    let (_, body) = post(&app, "/logger/start", None, None).await;
    let pid = body["pid"].as_u64().unwrap();
    let (code, body) = post(&app, "/logger/stop", None, None).await;
    assert_eq!(
        (code, body),
        (200, json!({"status": "stopped", "exit_code": null})),
        "killed by SIGKILL: no exit code"
    );
    assert!(!Path::new(&format!("/proc/{pid}")).exists());

    let (_, body) = post(&app, "/logger/start", None, None).await;
    let pid = body["pid"].as_u64().unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    app.stop().await;
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "the logger was orphaned by shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_binary_is_a_clear_503() {
    let app = logger_app(Path::new("/nonexistent/lockstep-edge"), &[]).await;
    let (code, body) = post(&app, "/logger/start", None, None).await;
    assert_eq!(code, 503);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("LOCKSTEP_EDGE_BIN"),
        "{body}"
    );
}

/// The real `lockstep-edge` (built by `cargo build --workspace --bins`, or named by
/// LOCKSTEP_EDGE_BIN): started over the WebSocket, its readings reach the store and
/// the WebSocket, and it exits on its own with code 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_edge_started_over_websocket_delivers_readings() {
    let bin = std::env::var_os("LOCKSTEP_EDGE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // target/debug/deps/api-… → target/debug/lockstep-edge
            std::env::current_exe()
                .unwrap()
                .parent()
                .unwrap()
                .parent()
                .unwrap()
                .join("lockstep-edge")
        });
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p lockstep-edge` first (scripts/test.sh does)",
        bin.display()
    );
    let db = Arc::new(TestDb::new(Backend::Sqlite).await);
    let app = spawn_app_with(db, &["--edge-bin", bin.to_str().unwrap()]).await;
    let mut ws = app.ws().await;
    assert_eq!(ws.next_json(WAIT).await["type"], "history");

    ws.send_json(
        json!({"type": "start_logger", "vehicles": 2, "rate": 20, "duration_s": 1, "seed": 7}),
    )
    .await;
    ws.until(WAIT, "logger", |m| m["data"]["running"] == true)
        .await;
    let mut vins = std::collections::BTreeSet::new();
    let mut lines = Vec::new();
    let done = loop {
        let m = ws.next_json(Duration::from_secs(30)).await;
        match m["type"].as_str() {
            Some("telemetry") => {
                vins.insert(m["data"]["vehicle_vin"].as_str().unwrap().to_owned());
            }
            Some("log") if m["data"]["source"] == "logger" => {
                lines.push(m["data"]["message"].as_str().unwrap().to_owned())
            }
            Some("logger") if m["data"]["running"] == false => break m,
            _ => {}
        }
    };
    assert_eq!(
        done["data"]["last_exit_code"],
        0,
        "the edge exits cleanly after --duration; its output:\n{}",
        lines.join("\n")
    );
    assert_eq!(
        vins.len(),
        2,
        "telemetry of both simulated vehicles arrived on the WebSocket"
    );
    assert!(!lines.is_empty(), "the edge's output was forwarded");
    let stored = app.db.count("SELECT COUNT(*) FROM telemetry_data").await;
    let distinct = app.db.count("SELECT COUNT(*) FROM (SELECT DISTINCT vehicle_id, session_id, seq FROM telemetry_data)").await;
    assert!(
        stored >= 2 * 15,
        "about 2 × 20 readings stored, got {stored}"
    );
    assert_eq!(stored, distinct);
    assert_eq!(app.db.count("SELECT COUNT(*) FROM vehicles").await, 2);
}

/// On SIGTERM this child asks the server for `/status` (as a real edge sends
/// its spool) and records the HTTP code beside its spool directory.
const FLUSHING: &str = r#"while [ $# -gt 0 ]; do
  case "$1" in --server) url=$2 ;; --spool) spool=$2 ;; esac
  shift
done
trap 'curl -s -o /dev/null -w "%{http_code}" "$url/status" > "$spool.flushed"; exit 0' TERM
echo "edge flushing on SIGTERM"
while true; do sleep 0.05; done"#;

/// Shutdown stops the logger child first: while it exits it still reaches
/// the server (before, HTTP was closed under it and its spool stayed behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_the_logger_before_http() {
    let dir = tempfile::tempdir().unwrap();
    let app = logger_app(&script(dir.path(), "edge", FLUSHING), &[]).await;
    let mut ws = app.ws().await;
    let (code, body) = post(&app, "/logger/start", None, None).await;
    assert_eq!(code, 200, "{body}");
    ws.until(WAIT, "log", |m| {
        m["data"]["message"] == "edge flushing on SIGTERM"
    })
    .await;
    let data_dir = app.data_dir.clone(); // outlives the app
    let marker = data_dir.path().join("edge-spool.flushed");
    let _db = app.stop().await;
    let got = std::fs::read_to_string(&marker).expect("the child ran its SIGTERM handler");
    assert_eq!(got, "200", "the child reached the server while stopping");
}
