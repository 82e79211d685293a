//! The sender against a tiny in-test server that runs the real decoder and
//! misbehaves on purpose: 503 with Retry-After, a lost acknowledgement, a
//! forgotten session (409 resync), and an outage across an edge restart.
//! Whatever happens, every reading must be stored exactly once, within
//! tolerance, and a resync must re-send from a keyframe.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use lockstep_codec::{BatchOutcome, Catalog, CheckedBatch, DecodeError, SessionState};
use lockstep_edge::app::{self, Fleet};
use lockstep_edge::sender::{SenderConfig, Shared};
use lockstep_edge::sim::{Vehicle, sim_vin};
use lockstep_edge::sources::{self, Format};
use lockstep_edge::spool::Spool;
use tokio_util::sync::CancellationToken;

/// What the test server does with request number n (1-based, over all vehicles).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    None,
    /// 503 + Retry-After: 1, nothing stored.
    Unavailable,
    /// Store the batch but answer 503 (the acknowledgement is lost).
    LostAck,
    /// Forget the session's state first (a server that lost it): the decoder answers 409.
    ForgetSession,
    /// 409 catalog_mismatch: fatal for the edge.
    CatalogMismatch,
}

/// (VIN, session id, seq).
type StoreKey = (String, u64, u64);

#[derive(Default)]
struct Inner {
    requests: u64,
    states: HashMap<(String, u64), SessionState>,
    /// (VIN, session, seq) → (timestamp, decoded values); a second store of the same key is a bug.
    stored: BTreeMap<StoreKey, (i64, Vec<Option<f64>>)>,
    double_stores: u64,
    /// Sessions that got a 409 and the seq their next batch must start at (with a keyframe).
    resync_expected: HashMap<(String, u64), u64>,
    resync_checks: Vec<bool>,
    /// When a session was told to come back after 1 s.
    retry_after_at: HashMap<(String, u64), Instant>,
    retry_after_checks: Vec<Duration>,
    conflicts: u64,
}

struct TestServer {
    catalog: Catalog,
    faults: fn(u64) -> Fault,
    inner: Mutex<Inner>,
}

fn json_reply(status: StatusCode, body: serde_json::Value) -> axum::response::Response {
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn telemetry(
    State(srv): State<Arc<TestServer>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    assert_eq!(
        headers.get("content-type").unwrap(),
        lockstep_proto::CONTENT_TYPE_BATCH
    );
    let cb = match CheckedBatch::parse(&srv.catalog, &body) {
        Ok(cb) => cb,
        Err(e) => {
            return json_reply(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"status": "error", "error": e.to_string()}),
            );
        }
    };
    let mut g = srv.inner.lock().unwrap();
    g.requests += 1;
    let n = g.requests;
    let key = (cb.vin().to_string(), cb.session_id());
    if let Some(at) = g.retry_after_at.remove(&key) {
        let waited = at.elapsed();
        g.retry_after_checks.push(waited);
    }
    if let Some(seq) = g.resync_expected.remove(&key) {
        let ok = cb.starts_with_keyframe() && cb.first_seq() == seq;
        g.resync_checks.push(ok);
    }
    let fault = (srv.faults)(n);
    match fault {
        Fault::Unavailable => {
            g.retry_after_at.insert(key, Instant::now());
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [("retry-after", "1")],
                r#"{"status":"error","error":"the store is unavailable"}"#,
            )
                .into_response();
        }
        Fault::ForgetSession => {
            g.states.remove(&key);
        }
        Fault::CatalogMismatch => {
            return json_reply(
                StatusCode::CONFLICT,
                serde_json::json!({"status": "error", "error": "catalog mismatch", "resync_required": true, "kind": "catalog_mismatch", "next_seq": null}),
            );
        }
        _ => {}
    }
    match cb.decode(&srv.catalog, g.states.get(&key)) {
        Ok(BatchOutcome::Fresh { readings, state }) => {
            for r in &readings {
                if g.stored
                    .insert(
                        (key.0.clone(), key.1, r.seq),
                        (r.timestamp_ms, r.values.clone()),
                    )
                    .is_some()
                {
                    g.double_stores += 1;
                }
            }
            g.states.insert(key.clone(), state);
            if fault == Fault::LostAck {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [("retry-after", "0")],
                    "{}",
                )
                    .into_response();
            }
            json_reply(
                StatusCode::OK,
                serde_json::json!({"status": "success", "first_seq": cb.first_seq(), "last_seq": cb.last_seq(), "duplicate": false}),
            )
        }
        Ok(BatchOutcome::Duplicate) => json_reply(
            StatusCode::OK,
            serde_json::json!({"status": "success", "duplicate": true}),
        ),
        Err(e) if e.resync_required() => {
            g.conflicts += 1;
            let next = g.states.get(&key).map(SessionState::next_seq);
            // The edge must come back from its first unacknowledged reading (= our next, or
            // the batch's own start when we have no state) with a keyframe.
            g.resync_expected
                .insert(key, next.unwrap_or(cb.first_seq()));
            let kind = match e {
                DecodeError::UnknownSession { .. } => "unknown_session",
                DecodeError::Gap { .. } => "gap",
                DecodeError::Overlap { .. } => "overlap",
                DecodeError::ChecksumMismatch { .. } => "checksum_mismatch",
                _ => "catalog_mismatch",
            };
            json_reply(
                StatusCode::CONFLICT,
                serde_json::json!({"status": "error", "error": e.to_string(), "resync_required": true, "kind": kind, "next_seq": next}),
            )
        }
        Err(e) => json_reply(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"status": "error", "error": e.to_string()}),
        ),
    }
}

async fn spawn_server(
    faults: fn(u64) -> Fault,
) -> (String, Arc<TestServer>, tokio::task::JoinHandle<()>) {
    let srv = Arc::new(TestServer {
        catalog: Catalog::default_v1(),
        faults,
        inner: Mutex::default(),
    });
    let app = Router::new()
        .route("/api/telemetry", post(telemetry))
        .with_state(srv.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let h = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (url, srv, h)
}

/// Replays `trip` as fast as possible (a minute at most).
async fn replay(sh: Shared, trip: &sources::Trip) -> app::Summary {
    let fleet = Fleet::Replay {
        trips: vec![trip.clone()],
        retime: false,
    };
    tokio::time::timeout(Duration::from_secs(60), app::run(sh, fleet, true, 1.0))
        .await
        .expect("finishes")
        .unwrap()
}

fn config(server: &str) -> SenderConfig {
    SenderConfig {
        server: server.into(),
        max_batch_readings: 20,
        max_unacked_batches: 4,
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        grace: Duration::from_millis(300),
        request_timeout: Duration::from_secs(5),
        resume_cursor: true,
        ..SenderConfig::default()
    }
}

fn shared(cfg: SenderConfig, spool: &std::path::Path, cancel: CancellationToken) -> Shared {
    Shared::new(
        cfg,
        Arc::new(Catalog::default_v1()),
        Spool::open(spool).unwrap(),
        cancel,
        None,
    )
    .unwrap()
}

/// Checks stored values against what was sent: the documented bound
/// (docs/protocol.md, section 5) per channel, the position as the `dist2`
/// distance between quantised positions. The only slack is the rounding of
/// the comparison's own subtraction.
fn assert_within_tolerance(catalog: &Catalog, actual: &[Option<f64>], got: &[Option<f64>]) {
    let pos = catalog.position().expect("a position");
    let q = |v: f64| (v * 1e7).round() as i64;
    for (c, sig) in catalog.signals().iter().enumerate() {
        match (actual[c], got[c]) {
            (None, None) => {}
            (Some(_), Some(_)) if c == pos.lon => {}
            (Some(a), Some(g)) if c == pos.lat => {
                let (alon, glon) = (actual[pos.lon].unwrap(), got[pos.lon].unwrap());
                let d2 = lockstep_codec::fixed::dist2_mm((q(a), q(alon)), (q(g), q(glon)));
                let tol = i128::from(sig.tolerance_q);
                assert!(d2 <= tol * tol, "position: {a},{alon} vs {g},{glon}");
            }
            (Some(a), Some(g)) => {
                let mut d = (a - g).abs();
                if sig.name == "heading" {
                    d = d.min(360.0 - d);
                }
                let rounding = 4.0 * f64::EPSILON * a.abs().max(g.abs());
                assert!(d <= sig.tolerance() + rounding, "{}: {a} vs {g}", sig.name);
            }
            (a, g) => panic!("{}: null mismatch {a:?} vs {g:?}", sig.name),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_through_503_lost_acks_and_resyncs() {
    let (url, srv, _h) = spawn_server(|n| match n {
        2 | 9 => Fault::Unavailable,
        4 => Fault::LostAck,
        6 | 13 => Fault::ForgetSession,
        _ => Fault::None,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (vehicles, seconds) = (2usize, 300usize);
    let sh = shared(config(&url), dir.path(), CancellationToken::new());
    let fleet = Fleet::Simulate {
        vehicles,
        rate_hz: 1.0,
        duration_s: Some(seconds as f64),
        seed: 11,
    };
    let summary = tokio::time::timeout(Duration::from_secs(60), app::run(sh, fleet, true, 1.0))
        .await
        .expect("finishes")
        .unwrap();
    println!("{summary}");

    let g = srv.inner.lock().unwrap();
    assert_eq!(g.double_stores, 0);
    assert_eq!(summary.stats.readings, (vehicles * seconds) as u64);
    assert_eq!(summary.stats.readings_acked, (vehicles * seconds) as u64);
    assert_eq!(summary.spool_left, 0);
    assert!(summary.stats.retries >= 3, "{:?}", summary.stats);
    assert!(summary.stats.resyncs >= 2, "{:?}", summary.stats);
    assert!(
        summary.stats.duplicates >= 1,
        "the lost ack came back as a duplicate: {:?}",
        summary.stats
    );
    assert!(g.conflicts >= 2);
    assert!(
        !g.resync_checks.is_empty() && g.resync_checks.iter().all(|&ok| ok),
        "resyncs restart at the first unacknowledged seq with a keyframe: {:?}",
        g.resync_checks
    );
    assert!(
        g.retry_after_checks
            .iter()
            .all(|d| *d >= Duration::from_millis(950)),
        "Retry-After honoured: {:?}",
        g.retry_after_checks
    );
    assert_eq!(g.retry_after_checks.len(), 2);

    // Every reading exactly once, in tolerance of what the simulator produced.
    let catalog = Catalog::default_v1();
    for i in 0..vehicles {
        let vin = sim_vin(11, i).to_string();
        let rows: Vec<_> = g.stored.iter().filter(|(k, _)| k.0 == vin).collect();
        assert_eq!(
            rows.len(),
            seconds,
            "{vin}: one session, every reading once"
        );
        let mut v = Vehicle::new(11, i, 0, 1000);
        for (seq, (k, (_, got))) in rows.into_iter().enumerate() {
            assert_eq!(k.2, seq as u64);
            assert_within_tolerance(&catalog, &v.next_reading().values, got);
        }
    }
    assert_eq!(g.stored.len(), vehicles * seconds);
    // The spool is empty once everything is acknowledged.
    assert_eq!(Spool::open(dir.path()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_across_an_edge_restart_loses_nothing() {
    // A recorded drive, written as a generic CSV.
    let dir = tempfile::tempdir().unwrap();
    let csv_path = dir.path().join("drive.csv");
    let mut v = Vehicle::new(5, 0, 1_600_000_000_000, 1000);
    let readings: Vec<_> = (0..250).map(|_| v.next_reading()).collect();
    let mut text =
        String::from("timestamp_ms,speed,battery,power,heading,latitude,longitude,altitude\n");
    for r in &readings {
        let cells: Vec<String> = r
            .values
            .iter()
            .map(|x| x.map_or(String::new(), |x| format!("{x}")))
            .collect();
        text += &format!("{},{}\n", r.timestamp_ms, cells.join(","));
    }
    std::fs::write(&csv_path, text).unwrap();
    let trip = sources::load(Format::Csv, &csv_path).unwrap();
    assert_eq!(trip.readings.len(), 250);
    let spool_dir = dir.path().join("spool");

    // Run 1: nobody listens on this port. The edge retries, spools, and is stopped.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let cancel = CancellationToken::new();
    let sh = shared(config(&dead_url), &spool_dir, cancel.clone());
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        c2.cancel();
    });
    let s1 = replay(sh, &trip).await;
    println!("run 1:\n{s1}");
    assert!(s1.cancelled);
    assert_eq!(s1.stats.readings_acked, 0);
    assert!(s1.spool_left > 0, "batches stay spooled");
    assert!(s1.stats.retries > 0);
    let spooled_readings: usize = Spool::open(&spool_dir)
        .unwrap()
        .load_all()
        .unwrap()
        .0
        .iter()
        .map(|b| b.readings.len())
        .sum();
    assert_eq!(
        spooled_readings as u64, s1.stats.readings,
        "everything produced is spooled"
    );

    // Run 2: a server now (which loses the session's state once, while the
    // spooled batches of run 1 are delivered); the same replay is started again.
    let (url, srv, _h) = spawn_server(|n| {
        if n == 2 {
            Fault::ForgetSession
        } else {
            Fault::None
        }
    })
    .await;
    let sh = shared(config(&url), &spool_dir, CancellationToken::new());
    let s2 = replay(sh, &trip).await;
    println!("run 2:\n{s2}");
    assert_eq!(
        s2.recovered.readings_acked, s1.stats.readings,
        "the spool is delivered first"
    );
    assert_eq!(
        s2.resumed.len(),
        1,
        "the replay resumes after the spooled readings"
    );
    assert_eq!(s2.stats.readings + s1.stats.readings, 250);
    assert_eq!(s2.spool_left, 0);
    assert_eq!(
        s2.recovered.resyncs, 1,
        "a spooled session resyncs from its raw readings"
    );

    let g = srv.inner.lock().unwrap();
    assert_eq!(g.double_stores, 0);
    assert_eq!(
        g.resync_checks,
        vec![true],
        "re-sent from a keyframe at the first unacknowledged seq"
    );
    // Two sessions (one per run) of the same VIN: together, every recorded reading exactly once.
    assert_eq!(g.stored.len(), 250);
    let sessions: std::collections::BTreeSet<u64> = g.stored.keys().map(|k| k.1).collect();
    assert_eq!(sessions.len(), 2);
    let by_ts: BTreeMap<i64, &Vec<Option<f64>>> =
        g.stored.values().map(|(ts, v)| (*ts, v)).collect();
    assert_eq!(by_ts.len(), 250, "no timestamp stored twice");
    let catalog = Catalog::default_v1();
    for r in &readings {
        let got = by_ts
            .get(&r.timestamp_ms)
            .unwrap_or_else(|| panic!("reading at {} missing", r.timestamp_ms));
        assert_within_tolerance(&catalog, &r.values, got);
    }
}

/// The seed form: one `TelemetryReading` per POST, reconstructed with a
/// per-vehicle seed predictor; a 503 on the way must not lose a reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_wire_sends_every_reading_once() {
    use lockstep_codec::SeedPredictor;
    use lockstep_proto::telemetry::TelemetryReading;
    use prost::Message;

    #[derive(Default)]
    struct Seed {
        requests: u64,
        predictors: HashMap<String, SeedPredictor>,
        last_ts: HashMap<String, i64>,
        stored: BTreeMap<(String, i64), [Option<f64>; 4]>,
    }
    async fn handler(
        State(s): State<Arc<Mutex<Seed>>>,
        headers: HeaderMap,
        body: Bytes,
    ) -> axum::response::Response {
        assert_eq!(
            headers.get("content-type").unwrap(),
            lockstep_proto::CONTENT_TYPE_SEED
        );
        let r = TelemetryReading::decode(body).unwrap();
        let mut g = s.lock().unwrap();
        g.requests += 1;
        if g.requests == 3 {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [("retry-after", "0")],
                "{}",
            )
                .into_response();
        }
        if g.last_ts
            .get(&r.vehicle_vin)
            .is_some_and(|&t| r.timestamp <= t)
        {
            return json_reply(StatusCode::OK, serde_json::json!({"status": "success"}));
        }
        g.last_ts.insert(r.vehicle_vin.clone(), r.timestamp);
        let rec = g
            .predictors
            .entry(r.vehicle_vin.clone())
            .or_default()
            .reconstruct(&r);
        g.stored
            .insert((r.vehicle_vin.clone(), r.timestamp), rec.values);
        json_reply(StatusCode::OK, serde_json::json!({"status": "success"}))
    }
    let state = Arc::new(Mutex::new(Seed::default()));
    let app = Router::new()
        .route("/api/telemetry", post(handler))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let cfg = SenderConfig {
        seed_wire: true,
        ..config(&url)
    };
    let sh = shared(cfg, dir.path(), CancellationToken::new());
    let fleet = Fleet::Simulate {
        vehicles: 2,
        rate_hz: 1.0,
        duration_s: Some(60.0),
        seed: 4,
    };
    let summary = tokio::time::timeout(Duration::from_secs(60), app::run(sh, fleet, true, 1.0))
        .await
        .unwrap()
        .unwrap();
    println!("{summary}");
    assert_eq!(summary.stats.readings_acked, 120);
    assert!(summary.stats.retries >= 1);
    let g = state.lock().unwrap();
    assert_eq!(g.stored.len(), 120);
    let catalog = Catalog::default_v1();
    for i in 0..2 {
        let vin = sim_vin(4, i).to_string();
        let mut v = Vehicle::new(4, i, 0, 1000);
        let rows: Vec<_> = g
            .stored
            .iter()
            .filter(|(k, _)| k.0 == vin)
            .map(|(_, v)| v)
            .collect();
        assert_eq!(rows.len(), 60);
        for got in rows {
            let r = v.next_reading();
            for (c, g) in got.iter().enumerate() {
                let (a, b) = (r.values[c].unwrap(), g.unwrap());
                assert!(
                    (a - b).abs() <= catalog.signals()[c].tolerance() + 1e-9,
                    "{c}: {a} vs {b}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_mismatch_is_fatal_and_keeps_the_spool() {
    let (url, _srv, _h) = spawn_server(|_| Fault::CatalogMismatch).await;
    let dir = tempfile::tempdir().unwrap();
    let sh = shared(config(&url), dir.path(), CancellationToken::new());
    let fleet = Fleet::Simulate {
        vehicles: 1,
        rate_hz: 1.0,
        duration_s: Some(30.0),
        seed: 2,
    };
    let err = tokio::time::timeout(Duration::from_secs(30), app::run(sh, fleet, true, 1.0))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("different signal catalog"),
        "{err:#}"
    );
    assert!(
        Spool::open(dir.path()).unwrap().count() > 0,
        "nothing acknowledged, nothing dropped"
    );
}
