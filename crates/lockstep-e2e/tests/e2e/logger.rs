//! The server starts the real edge logger over the WebSocket and stops it
//! again. The server crate's own test (`the_real_edge_started_over_websocket_delivers_readings`)
//! runs the server in-process on SQLite and lets the edge end by `duration_s`;
//! this one runs both binaries on PostgreSQL and stops the logger with
//! `stop_logger` (SIGTERM → the edge flushes, prints its summary, exits 0), then
//! checks that the WebSocket's telemetry and the store hold the same readings,
//! as many as the edge says were acknowledged.

use std::collections::BTreeSet;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

type Key = (String, String, u64);

struct Ws(
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
);

impl Ws {
    /// The next JSON text message before `deadline`.
    async fn next(&mut self, deadline: Instant, waiting_for: &str) -> Value {
        loop {
            let m = tokio::time::timeout_at(deadline, self.0.next())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {waiting_for}"))
                .expect("the WebSocket stays open")
                .expect("a WebSocket message");
            if let Message::Text(t) = m {
                return serde_json::from_str(&t).expect("JSON");
            }
        }
    }

    async fn send(&mut self, v: Value) {
        self.0
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }
}

/// What the test has seen on the WebSocket.
#[derive(Default)]
struct Seen {
    telemetry: BTreeSet<Key>,
    vins: BTreeSet<String>,
    lines: Vec<String>,
    logger: Option<Value>,
}

impl Seen {
    fn take(&mut self, m: &Value) {
        let d = &m["data"];
        match m["type"].as_str() {
            Some("telemetry") => {
                let vin = d["vehicle_vin"].as_str().unwrap().to_owned();
                self.vins.insert(vin.clone());
                let key = (
                    vin,
                    d["session_id"].as_str().unwrap().to_owned(),
                    d["seq"].as_u64().unwrap(),
                );
                assert!(self.telemetry.insert(key), "the same reading twice: {m}");
            }
            Some("log") if d["source"] == "logger" => {
                self.lines.push(d["message"].as_str().unwrap().to_owned())
            }
            Some("logger") => self.logger = Some(d.clone()),
            Some("lagged") => panic!("the test's WebSocket client lagged: {m}"),
            _ => {}
        }
    }
}

async fn stored_keys(db: &Db) -> BTreeSet<Key> {
    db.query(
        "SELECT v.vin, t.session_id, t.seq FROM telemetry_data t JOIN vehicles v ON v.id = t.vehicle_id",
    )
    .await
    .into_iter()
    .map(|r| {
        let sid: i64 = r[1].as_deref().unwrap().parse().unwrap();
        (
            r[0].clone().unwrap(),
            format!("{:016x}", sid as u64),
            r[2].as_deref().unwrap().parse().unwrap(),
        )
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logger_started_and_stopped_over_websocket() {
    let db = Db::postgres().await;
    let mut server = Server::start(&db.url(), &[]).await;
    let (stream, _) =
        tokio_tungstenite::connect_async(format!("ws://127.0.0.1:{}/ws", server.port))
            .await
            .expect("WebSocket connect");
    let mut ws = Ws(stream);
    let deadline = Instant::now() + Duration::from_secs(10);
    assert_eq!(ws.next(deadline, "history").await["type"], "history");

    ws.send(json!({"type": "start_logger", "vehicles": 3, "rate": 5}))
        .await;
    let mut seen = Seen::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(seen.vins.len() == 3 && seen.telemetry.len() >= 30) {
        let m = ws.next(deadline, "telemetry of 3 vehicles").await;
        seen.take(&m);
    }
    let pid = seen.logger.as_ref().expect("a logger message")["pid"].clone();
    assert!(pid.as_u64().is_some(), "the logger runs: {pid}");
    assert_eq!(server.status().await.unwrap()["logger"]["running"], true);
    let stored = db.readings().await;
    assert!(
        stored >= seen.telemetry.len() as i64,
        "telemetry is published after commit: {stored} stored, {} seen",
        seen.telemetry.len()
    );

    ws.send(json!({"type": "stop_logger"})).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.logger.as_ref().is_none_or(|l| l["running"] != false) {
        let m = ws.next(deadline, "the logger to stop").await;
        seen.take(&m);
    }
    let logger = seen.logger.clone().unwrap();
    let output = seen.lines.join("\n");
    assert_eq!(
        logger["last_exit_code"], 0,
        "the edge exits 0 after SIGTERM: {logger}; its output:\n{output}"
    );
    assert!(logger["last_run_s"].as_f64().unwrap() > 0.0, "{logger}");
    let summary = Summary::parse(&output);
    println!("{}", summary.text);
    assert!(
        output.contains("stopped before the end"),
        "the summary says it was stopped:\n{output}"
    );
    assert_eq!(summary.spool_left, 0, "the edge flushed everything");
    assert_eq!(summary.acknowledged, summary.produced);

    // Every committed reading is published; the last ones may follow the exit message.
    let stored = stored_keys(&db).await;
    assert_eq!(
        stored.len() as u64,
        summary.acknowledged,
        "stored = acknowledged"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.telemetry.len() < stored.len() {
        let m = ws.next(deadline, "telemetry of every stored reading").await;
        seen.take(&m);
    }
    assert_eq!(
        seen.telemetry, stored,
        "the WebSocket showed exactly the stored readings"
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM vehicles").await, 3);
    println!(
        "logger test: {} readings of 3 vehicles stored and streamed, {} output lines forwarded",
        stored.len(),
        seen.lines.len()
    );
    let st = server.stop().await;
    assert!(
        st.success(),
        "the server shuts down cleanly on SIGTERM: {st}"
    );
}

/// POSTs a logger control request (the test is a loopback peer: no token needed).
async fn control(server: &Server, path: &str, body: Option<Value>) -> Value {
    let mut req = server.http.post(format!("{}{path}", server.base()));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    assert_eq!(resp.status(), 200, "{path}");
    resp.json().await.expect("JSON")
}

/// The dashboard's flow: the server replays a recorded trip through its
/// logger, is told to stop half-way, and to start the same replay again. The
/// second run resumes after what the first one spooled (the spool lives in the
/// server's data directory): every reading exactly once, within tolerance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logger_replay_stopped_and_started_again_resumes() {
    let db = Db::postgres().await;
    let (vin, trip) = expected_trip(SHORT_TRIP);
    let total = trip.readings.len() as i64;
    // The server replays only from its replay directory (LOCKSTEP_REPLAY_DIR).
    let replays = testdata("twizy-ev");
    let server = Server::start(&db.url(), &["--replay-dir", replays.to_str().unwrap()]).await;
    let start = json!({"replay": [SHORT_TRIP], "format": "twizy", "speed": 200});

    let started = control(&server, "/logger/start", Some(start.clone())).await;
    assert_eq!(started["status"], "started", "{started}");
    wait_for_readings(&db, 200).await;
    let stopped = control(&server, "/logger/stop", None).await;
    assert_eq!(
        stopped,
        json!({"status": "stopped", "exit_code": 0}),
        "SIGTERM: the edge flushes and exits 0"
    );
    let at_stop = db.readings().await;
    assert!(
        at_stop < total,
        "the replay finished before the stop ({at_stop} of {total}): slow it down"
    );

    let started = control(&server, "/logger/start", Some(start)).await;
    assert_eq!(started["status"], "started", "{started}");
    let status = eventually(Duration::from_secs(60), "the second run to end", || async {
        let st = server.logger_status().await?;
        (st["running"] == false).then_some(st)
    })
    .await;
    assert_eq!(
        status["last_exit_code"],
        0,
        "{status}; server log:\n{}",
        server.log()
    );
    let log = server.log();
    assert!(
        log.contains("resumed T3_04_22_2021_1.csv after"),
        "the second run resumed; server log:\n{log}"
    );
    println!(
        "logger replay: {at_stop} rows at the stop, {} at the end (of {total})",
        db.readings().await
    );
    assert_trip_stored(&db, &vin, &trip).await;
}

/// Kills, when dropped, a logger the server started for this test if it is
/// still alive (a regression of finding F3 must not leave an orphan behind). Identified by the PID the
/// server reported and by its command line, so a reused PID is left alone.
struct LoggerGuard(u32);

impl LoggerGuard {
    fn alive(&self) -> bool {
        std::fs::read(format!("/proc/{}/cmdline", self.0)).is_ok_and(|c| {
            // The server's built-in logger runs as `lockstep-server edge …`.
            let c = String::from_utf8_lossy(&c);
            c.contains("lockstep-edge") || c.contains("\0edge\0")
        })
    }
}

impl Drop for LoggerGuard {
    fn drop(&mut self) {
        if self.alive()
            && let Some(pid) = rustix::process::Pid::from_raw(self.0 as i32)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

/// The server is SIGKILLed while its logger runs, then started again: the
/// logger must not keep running unsupervised — either it ends by itself, or
/// the restarted server knows it (`/logger/status`) and can stop it. (Finding
/// F3, fixed by the edge's `--exit-with-parent`, which the server passes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_server_leaves_no_unsupervised_logger() {
    let db = Db::postgres().await;
    let mut server = Server::start(&db.url(), &[]).await;
    let started = control(
        &server,
        "/logger/start",
        Some(json!({"vehicles": 1, "rate": 5})),
    )
    .await;
    let logger = LoggerGuard(started["pid"].as_u64().expect("a pid") as u32);
    wait_for_readings(&db, 5).await;
    server.kill();
    server.spawn().await;

    let status = eventually(
        Duration::from_secs(15),
        "the logger to end, or the restarted server to know it",
        || async {
            let st = server.logger_status().await?;
            (!logger.alive() || st["pid"].as_u64() == Some(logger.0.into())).then_some(st)
        },
    )
    .await;
    if logger.alive() {
        let stopped = control(&server, "/logger/stop", None).await;
        assert_eq!(stopped["status"], "stopped", "{status} {stopped}");
        assert!(!logger.alive(), "stopped by the restarted server");
    }
}
