//! Several instances on one PostgreSQL and one Redis (`REDIS_URL`): one live
//! stream (every committed reading reaches every instance's WebSocket clients
//! exactly once, in order per vehicle; fleet-wide statistics), one logger for
//! the cluster, and what a Redis outage does. Each test has its own database
//! and Redis prefix; the outage test its own `redis-server`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(20);
const SHARED_REDIS: &str = "redis://127.0.0.1:6379";

/// A Redis key prefix no other test (or run) uses; what the servers left
/// under it on the shared Redis (the logger's status) is deleted when the test ends.
struct Prefix(String);

impl std::ops::Deref for Prefix {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let Ok(mut c) = redis::Client::open(SHARED_REDIS).and_then(|c| c.get_connection()) else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.0))
            .query(&mut c)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(&keys).query(&mut c);
        }
    }
}

fn prefix() -> Prefix {
    Prefix(format!("lockstep-test-{:016x}", rand::random::<u64>()))
}

async fn instance(db: &Arc<TestDb>, redis: &str, prefix: &str, extra: &[&str]) -> TestApp {
    let mut args = vec!["--redis-url", redis, "--redis-prefix", prefix];
    args.extend_from_slice(extra);
    spawn_app_with(db.clone(), &args).await
}

async fn until_status(app: &TestApp, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    eventually(WAIT, what, || async {
        let s = app.status().await;
        pred(&s).then_some(s)
    })
    .await
}

async fn bridged(app: &TestApp) {
    until_status(app, "the bridge to connect", |s| {
        s["cluster"]["redis_connected"] == true && s["status"] == "healthy"
    })
    .await;
}

/// Reads `ws` until it holds `n` readings in all (ignoring other messages
/// except `gap`s, which it returns too): readings per VIN as seqs, in arrival order.
async fn readings(ws: &mut Ws, n: usize) -> (HashMap<String, Vec<u64>>, Vec<Value>) {
    let mut got: HashMap<String, Vec<u64>> = HashMap::new();
    let mut gaps = Vec::new();
    let mut total = 0;
    while total < n {
        let m = ws.next_json(WAIT).await;
        match m["type"].as_str() {
            Some("telemetry") => {
                let vin = m["data"]["vehicle_vin"].as_str().unwrap().to_owned();
                got.entry(vin)
                    .or_default()
                    .push(m["data"]["seq"].as_u64().unwrap());
                total += 1;
            }
            Some("gap") => gaps.push(m),
            _ => {}
        }
    }
    (got, gaps)
}

async fn stored_seqs(db: &TestDb, vin: &str) -> Vec<u64> {
    db.query(&format!(
        "SELECT t.seq FROM telemetry_data t JOIN vehicles v ON v.id = t.vehicle_id \
         WHERE v.vin = '{vin}' ORDER BY t.id"
    ))
    .await
    .into_iter()
    .map(|r| r[0].as_deref().unwrap().parse().unwrap())
    .collect()
}

async fn history(ws: &mut Ws) {
    assert_eq!(ws.next_json(WAIT).await["type"], "history");
}

/// Two instances, readings posted to either: a client on each gets every
/// reading once, in order per vehicle, and both see the fleet's statistics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_live_stream() {
    let db = Arc::new(TestDb::new(Backend::Postgres).await);
    let p = prefix();
    let a = instance(&db, SHARED_REDIS, &p, &[]).await;
    let b = instance(&db, SHARED_REDIS, &p, &[]).await;
    bridged(&a).await;
    bridged(&b).await;
    let (mut ws_a, mut ws_b) = (a.ws().await, b.ws().await);
    history(&mut ws_a).await;
    history(&mut ws_b).await;

    let t0 = 1_764_000_000_000;
    let (v1, v2, v3) = (vin(1), vin(2), vin(3));
    let (mut e1, mut e2, mut e3) = (encoder(&v1, 11), encoder(&v2, 22), encoder(&v3, 33));
    // v1 on a, v2 on b, v3 on a then b then b (consecutive batches of one
    // vehicle committed by two instances).
    for round in 0..5 {
        let r = round * 10..round * 10 + 10;
        a.post_readings(&mut e1, r.clone(), t0).await;
        b.post_readings(&mut e2, r.clone(), t0).await;
    }
    a.post_readings(&mut e3, 0..10, t0).await;
    b.post_readings(&mut e3, 10..20, t0).await;
    b.post_readings(&mut e3, 20..30, t0).await;
    let total = 50 + 50 + 30;

    for (name, ws) in [("a", &mut ws_a), ("b", &mut ws_b)] {
        let (got, gaps) = readings(ws, total).await;
        assert!(gaps.is_empty(), "{name}: {gaps:?}");
        for v in [&v1, &v2, &v3] {
            assert_eq!(
                got[v.as_str()],
                stored_seqs(&db, v).await,
                "{name}: every stored reading of {v} once, in commit order"
            );
        }
    }
    // Nothing more (no late duplicate): the next message of each vehicle is
    // the next reading.
    a.post_readings(&mut e1, 50..51, t0).await;
    for ws in [&mut ws_a, &mut ws_b] {
        let (got, _) = readings(ws, 1).await;
        assert_eq!(got[v1.as_str()], [stored_seqs(&db, &v1).await[50]]);
    }

    // Fleet-wide statistics on both: over WebSocket and in /status.
    let total = total as u64 + 1;
    for (ws, app) in [(&mut ws_a, &a), (&mut ws_b, &b)] {
        let m = ws
            .until(WAIT, "compression_stats", |m| {
                m["data"]["total_readings"] == total
            })
            .await;
        assert_eq!(m["data"]["vehicles"].as_object().unwrap().len(), 3);
        let s = app.status().await;
        assert_eq!(s["compression_stats"]["total_readings"], total);
        assert_eq!(s["ws_out_of_order"], 0);
    }
}

/// A private redis-server stopped and restarted under two instances: ingest
/// never stops, `/status` is degraded then healthy, clients hear of the gap,
/// fan-out across instances comes back, statistics are the store's again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_degrades_then_recovers() {
    let mut redis = tokio::task::block_in_place(lockstep_testkit::PrivateRedis::start);
    let db = Arc::new(TestDb::new(Backend::Postgres).await);
    let p = prefix();
    let a = instance(&db, &redis.url(), &p, &[]).await;
    let b = instance(&db, &redis.url(), &p, &[]).await;
    bridged(&a).await;
    bridged(&b).await;
    let mut ws_b = b.ws().await;
    history(&mut ws_b).await;

    let t0 = 1_764_000_000_000;
    let (va, vb) = (vin(10), vin(11));
    let (mut ea, mut eb) = (encoder(&va, 1), encoder(&vb, 2));
    a.post_readings(&mut ea, 0..10, t0).await;
    let (got, _) = readings(&mut ws_b, 10).await;
    assert_eq!(
        got[va.as_str()].len(),
        10,
        "across instances before the outage"
    );

    tokio::task::block_in_place(|| redis.kill());
    // Ingest goes on at both (post_readings asserts 200).
    a.post_readings(&mut ea, 10..20, t0).await;
    b.post_readings(&mut eb, 0..10, t0).await;
    for app in [&a, &b] {
        until_status(app, "degraded while Redis is down", |s| {
            s["status"] == "degraded" && s["cluster"]["redis_connected"] == false
        })
        .await;
    }
    // b's client: told of the gap, and b's own readings still come.
    let gap = ws_b
        .until(WAIT, "gap", |m| m["data"]["reason"] == "bridge_down")
        .await;
    assert_eq!(gap["data"]["missed"], Value::Null);
    let mut own = Vec::new();
    while own.len() < 10 {
        let m = ws_b.until(WAIT, "telemetry", |_| true).await;
        if m["data"]["vehicle_vin"] == vb.as_str() {
            own.push(m["data"]["seq"].as_u64().unwrap());
        }
    }
    assert_eq!(own, stored_seqs(&db, &vb).await);
    b.post_readings(&mut eb, 10..20, t0).await;

    tokio::task::block_in_place(|| redis.start_again());
    bridged(&a).await;
    bridged(&b).await;
    // Fan-out across instances is back.
    a.post_readings(&mut ea, 20..30, t0).await;
    let expected: Vec<u64> = stored_seqs(&db, &va).await[20..30].to_vec();
    let mut seen = Vec::new();
    while seen.len() < 10 {
        let m = ws_b.until(WAIT, "telemetry", |_| true).await;
        if m["data"]["vehicle_vin"] == va.as_str() {
            seen.push(m["data"]["seq"].as_u64().unwrap());
        }
    }
    assert_eq!(
        seen, expected,
        "a's readings after the outage reach b's client"
    );
    // Statistics: the store's (reloaded after the outage) plus what came since.
    let stored = db.count("SELECT COUNT(*) FROM telemetry_data").await;
    assert_eq!(stored, 50);
    for app in [&a, &b] {
        until_status(app, "fleet-wide statistics after the outage", |s| {
            s["compression_stats"]["total_readings"] == 50
        })
        .await;
    }
}

/// Writes an executable script; returns its path.
fn script(dir: &Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("edge");
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

const POLITE: &str = r#"trap 'echo "edge got SIGTERM"; exit 3' TERM
echo "edge starting $*"
while true; do sleep 0.05; done"#;

async fn post(app: &TestApp, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = app.http.post(format!("{}{path}", app.addr));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// Started on one instance, the same status on both, stopped from the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_logger_for_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let bin = script(dir.path(), POLITE);
    let db = Arc::new(TestDb::new(Backend::Postgres).await);
    let p = prefix();
    let args = [
        "--edge-bin",
        bin.to_str().unwrap(),
        "--logger-grace-ms",
        "500",
        "--logger-lease-ms",
        "1000",
    ];
    let a = instance(&db, SHARED_REDIS, &p, &args).await;
    let b = instance(&db, SHARED_REDIS, &p, &args).await;
    bridged(&a).await;
    bridged(&b).await;
    let mut ws_b = b.ws().await;
    history(&mut ws_b).await;

    let (code, body) = post(&a, "/logger/start", Some(json!({"vehicles": 1}))).await;
    assert_eq!(code, 200, "{body}");
    let pid = body["pid"].as_u64().unwrap();
    // A second start on the other instance: the cluster's logger already runs.
    let (code, body) = post(&b, "/logger/start", None).await;
    assert_eq!((code, body["pid"].as_u64()), (409, Some(pid)), "{body}");
    for app in [&a, &b] {
        let st = eventually(WAIT, "the same status on both", || async {
            let st = app.get_json("/logger/status").await;
            (st["pid"].as_u64() == Some(pid)).then_some(st)
        })
        .await;
        assert_eq!(st["running"], true);
        assert_eq!(app.status().await["logger"]["pid"].as_u64(), Some(pid));
    }
    // b's client gets a's logger status and the child's output (operators:
    // loopback), in either order: b may learn the status from the lease after
    // the child's first line came through the bridge.
    let (mut status, mut output) = (false, false);
    let deadline = tokio::time::Instant::now() + WAIT;
    while !(status && output) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            !left.is_zero(),
            "within {WAIT:?}: logger status {status}, its output {output}"
        );
        let m = ws_b.next_json(left).await;
        status |= m["type"] == "logger" && m["data"]["pid"].as_u64() == Some(pid);
        output |= m["type"] == "log"
            && m["data"]["source"] == "logger"
            && m["data"]["message"]
                .as_str()
                .is_some_and(|t| t.starts_with("edge starting"));
    }

    // Stopped from the other instance.
    let (code, body) = post(&b, "/logger/stop", None).await;
    assert_eq!(
        (code, body),
        (200, json!({"status": "stopped", "exit_code": 3}))
    );
    for app in [&a, &b] {
        let st = app.get_json("/logger/status").await;
        assert_eq!(
            (st["running"].as_bool(), st["pid"].as_u64()),
            (Some(false), None),
            "{st}"
        );
    }
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z ")),
        "the child is gone"
    );
    let (code, body) = post(&a, "/logger/stop", None).await;
    assert_eq!((code, body["status"].clone()), (200, json!("not_running")));
}

/// The holder goes away: another instance takes the lease and runs the
/// logger with the same options.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logger_moves_when_its_instance_goes() {
    let dir = tempfile::tempdir().unwrap();
    let bin = script(dir.path(), POLITE);
    let db = Arc::new(TestDb::new(Backend::Postgres).await);
    let p = prefix();
    let args = [
        "--edge-bin",
        bin.to_str().unwrap(),
        "--logger-grace-ms",
        "500",
        "--logger-lease-ms",
        "1000",
    ];
    let a = instance(&db, SHARED_REDIS, &p, &args).await;
    let b = instance(&db, SHARED_REDIS, &p, &args).await;
    bridged(&a).await;
    bridged(&b).await;
    let (code, body) = post(&a, "/logger/start", Some(json!({"vehicles": 2}))).await;
    assert_eq!(code, 200, "{body}");
    let pid = body["pid"].as_u64().unwrap();
    a.stop().await;
    let st = eventually(WAIT, "b to take over the logger", || async {
        let st = b.get_json("/logger/status").await;
        (st["running"] == true && st["pid"].as_u64().is_some_and(|p| p != pid)).then_some(st)
    })
    .await;
    let new_pid = st["pid"].as_u64().unwrap();
    let cmdline = std::fs::read(format!("/proc/{new_pid}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("--vehicles\u{0}2"),
        "same options on the new holder"
    );
    let (code, body) = post(&b, "/logger/stop", None).await;
    assert_eq!((code, body["status"].clone()), (200, json!("stopped")));
}

/// The holder is SIGKILLed (a real server process): its lease expires and the
/// other instance starts the logger with the same options.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_loses_the_logger_to_another_instance() {
    let dir = tempfile::tempdir().unwrap();
    let bin = script(dir.path(), POLITE);
    let db = Arc::new(TestDb::new(Backend::Postgres).await);
    let p = prefix();
    let lease = ["--logger-lease-ms", "1000", "--logger-grace-ms", "500"];
    // The holder: the real binary, so that it can be killed outright.
    let port = lockstep_testkit::free_port();
    let data = tempfile::tempdir().unwrap();
    let mut holder = tokio::process::Command::new(env!("CARGO_BIN_EXE_lockstep-server"))
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--database-url", &db.url(), "--enable-supabase", "false"])
        .arg("--data-dir")
        .arg(data.path())
        .args(["--redis-url", SHARED_REDIS, "--redis-prefix", &*p])
        .arg("--edge-bin")
        .arg(&bin)
        .args(lease)
        .env_clear()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}");
    eventually(WAIT, "the holder's bridge to connect", || async {
        let s: Value = http
            .get(format!("{url}/status"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (s["cluster"]["redis_connected"] == true).then_some(())
    })
    .await;
    let mut args = vec!["--edge-bin", bin.to_str().unwrap()];
    args.extend_from_slice(&lease);
    let b = instance(&db, SHARED_REDIS, &p, &args).await;
    bridged(&b).await;

    let resp = http
        .post(format!("{url}/logger/start"))
        .json(&json!({"vehicles": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let pid = resp.json::<Value>().await.unwrap()["pid"].as_u64().unwrap();
    eventually(WAIT, "b to see the holder's logger", || async {
        (b.get_json("/logger/status").await["pid"].as_u64() == Some(pid)).then_some(())
    })
    .await;

    // The stand-in child ignores --exit-with-parent: its group is ended
    // here, through the system call, once the pid is known to be that
    // stand-in. (Debian's procps-ng 4.0.2 `kill -KILL -<pgid>` was seen
    // signalling every process on the machine.)
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&cmdline).contains(bin.to_str().unwrap()),
        "pid {pid} is the holder's stand-in logger"
    );
    let group = rustix::process::Pid::from_raw(i32::try_from(pid).unwrap()).expect("pid > 0");
    assert_eq!(
        rustix::process::getpgid(Some(group)).ok(),
        Some(group),
        "the logger leads its own process group"
    );
    holder.kill().await.unwrap();
    let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    let st = eventually(WAIT, "b to take the logger over", || async {
        let st = b.get_json("/logger/status").await;
        (st["running"] == true && st["pid"].as_u64().is_some_and(|p| p != pid)).then_some(st)
    })
    .await;
    let new_pid = st["pid"].as_u64().unwrap();
    let cmdline = std::fs::read(format!("/proc/{new_pid}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("--vehicles\u{0}3"),
        "same options on the new holder"
    );
    let (code, body) = post(&b, "/logger/stop", None).await;
    assert_eq!((code, body["status"].clone()), (200, json!("stopped")));
}
