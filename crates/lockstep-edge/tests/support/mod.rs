//! The in-test servers the sender tests run against: a lockstep server that
//! runs the real decoder and misbehaves on purpose (by request number and
//! batch), a seed-form server, and the helpers to run the edge against them.
//! Each test binary uses a part of it.
#![allow(dead_code)]

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
use lockstep_edge::sources;
use lockstep_edge::spool::Spool;
use tokio_util::sync::CancellationToken;

/// What the test server does with request number n (1-based, over all
/// vehicles and endpoints) carrying a given batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    None,
    /// 429 + Retry-After: 1, nothing stored.
    TooMany,
    /// 413, nothing stored.
    TooLarge,
    /// 401, nothing stored.
    Unauthorized,
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
pub type StoreKey = (String, u64, u64);

#[derive(Default)]
pub struct Inner {
    pub requests: u64,
    /// Requests per endpoint (see [`spawn_endpoint`]).
    pub by_endpoint: BTreeMap<usize, u64>,
    /// The `Authorization` header of every request.
    pub auth: Vec<Option<String>>,
    /// Readings answered 413, and how many readings those batches held.
    pub too_large: Vec<usize>,
    pub states: HashMap<(String, u64), SessionState>,
    /// (VIN, session, seq) → (timestamp, decoded values); a second store of the same key is a bug.
    pub stored: BTreeMap<StoreKey, (i64, Vec<Option<f64>>)>,
    pub double_stores: u64,
    /// Sessions that got a 409 and the seq their next batch must start at (with a keyframe).
    pub resync_expected: HashMap<(String, u64), u64>,
    pub resync_checks: Vec<bool>,
    /// When a session was told to come back after 1 s.
    pub retry_after_at: HashMap<(String, u64), Instant>,
    pub retry_after_checks: Vec<Duration>,
    pub conflicts: u64,
}

/// Decides the fault for request n carrying a batch.
pub type Faults = fn(u64, &CheckedBatch) -> Fault;

pub struct TestServer {
    pub catalog: Catalog,
    pub faults: Faults,
    pub inner: Mutex<Inner>,
}

pub fn json_reply(status: StatusCode, body: serde_json::Value) -> axum::response::Response {
    (
        status,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn telemetry(
    State((srv, endpoint)): State<(Arc<TestServer>, usize)>,
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
    *g.by_endpoint.entry(endpoint).or_default() += 1;
    let auth = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned());
    g.auth.push(auth);
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
    let fault = (srv.faults)(n, &cb);
    match fault {
        Fault::TooMany => {
            g.retry_after_at.insert(key, Instant::now());
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", "1")],
                r#"{"status":"error","error":"slow down"}"#,
            )
                .into_response();
        }
        Fault::TooLarge => {
            g.too_large.push(cb.len());
            return json_reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                serde_json::json!({"status": "error", "error": "the body is too large"}),
            );
        }
        Fault::Unauthorized => {
            return json_reply(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"status": "error", "error": "unknown device token"}),
            );
        }
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

/// The test server's routes, as endpoint `endpoint`.
pub fn router(srv: Arc<TestServer>, endpoint: usize) -> Router {
    Router::new()
        .route("/api/telemetry", post(telemetry))
        .with_state((srv, endpoint))
}

pub fn test_server(faults: Faults) -> Arc<TestServer> {
    Arc::new(TestServer {
        catalog: Catalog::default_v1(),
        faults,
        inner: Mutex::default(),
    })
}

/// A test server on a free port (endpoint 0).
pub async fn spawn_server(faults: Faults) -> (String, Arc<TestServer>, CancellationToken) {
    let srv = test_server(faults);
    let (url, stop) = spawn_endpoint(srv.clone(), 0).await;
    (url, srv, stop)
}

/// Another endpoint of `srv` (servers sharing one store and session state,
/// as a cluster does) on a free port; cancelling the token shuts it down.
pub async fn spawn_endpoint(srv: Arc<TestServer>, endpoint: usize) -> (String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let app = router(srv, endpoint);
    tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .into_future(),
    );
    (url, stop)
}

/// A URL nobody listens on.
pub fn dead_url() -> String {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}", dead.local_addr().unwrap())
}

/// Replays `trip` as fast as possible (a minute at most).
pub async fn replay(sh: Shared, trip: &sources::Trip) -> app::Summary {
    let fleet = Fleet::Replay {
        trips: vec![trip.clone()],
        retime: false,
    };
    tokio::time::timeout(Duration::from_secs(60), app::run(sh, fleet, true, 1.0))
        .await
        .expect("finishes")
        .unwrap()
}

pub fn config(server: &str) -> SenderConfig {
    SenderConfig {
        servers: vec![server.into()],
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

pub fn shared(cfg: SenderConfig, spool: &std::path::Path, cancel: CancellationToken) -> Shared {
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
pub fn assert_within_tolerance(catalog: &Catalog, actual: &[Option<f64>], got: &[Option<f64>]) {
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

/// Runs `fleet` to its end (a minute at most).
pub async fn run_fleet(sh: Shared, fleet: Fleet) -> anyhow::Result<app::Summary> {
    tokio::time::timeout(Duration::from_secs(60), app::run(sh, fleet, true, 1.0))
        .await
        .expect("finishes")
}

/// `vehicles` simulated vehicles, `seconds` readings each at 1 Hz.
pub fn simulated(vehicles: usize, seconds: usize, rng_seed: u64) -> Fleet {
    Fleet::Simulate {
        vehicles,
        rate_hz: 1.0,
        duration_s: Some(seconds as f64),
        rng_seed,
    }
}

/// A seed-form server: reconstructs with one seed predictor per VIN, stores
/// each timestamp once (a repeated one is answered 200, as a duplicate).
#[derive(Default)]
pub struct SeedServer {
    pub requests: u64,
    /// Request numbers answered 503 (Retry-After: 0).
    pub fail: Vec<u64>,
    pub predictors: HashMap<String, lockstep_codec::SeedPredictor>,
    pub last_ts: HashMap<String, i64>,
    pub stored: BTreeMap<(String, i64), [Option<f64>; 4]>,
}

async fn seed_handler(
    State(s): State<Arc<Mutex<SeedServer>>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    use lockstep_proto::telemetry::TelemetryReading;
    use prost::Message;
    assert_eq!(
        headers.get("content-type").unwrap(),
        lockstep_proto::CONTENT_TYPE_SEED
    );
    let r = TelemetryReading::decode(body).unwrap();
    let mut g = s.lock().unwrap();
    g.requests += 1;
    if g.fail.contains(&g.requests) {
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

/// A seed-form server on a free port answering 503 to the request numbers in `fail`.
pub async fn spawn_seed_server(fail: Vec<u64>) -> (String, Arc<Mutex<SeedServer>>) {
    let state = Arc::new(Mutex::new(SeedServer {
        fail,
        ..SeedServer::default()
    }));
    let app = Router::new()
        .route("/api/telemetry", post(seed_handler))
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, state)
}

/// Readings of every spooled batch.
pub fn spooled_readings(dir: &std::path::Path) -> usize {
    Spool::open(dir)
        .unwrap()
        .load_all()
        .unwrap()
        .0
        .iter()
        .map(|b| b.readings.len())
        .sum()
}

/// `n` sessions were told to come back after 1 s (503/429) and did not come back earlier.
pub fn assert_retry_after_honoured(g: &Inner, n: usize) {
    assert_eq!(g.retry_after_checks.len(), n, "{:?}", g.retry_after_checks);
    assert!(
        g.retry_after_checks
            .iter()
            .all(|d| *d >= Duration::from_millis(950)),
        "Retry-After honoured: {:?}",
        g.retry_after_checks
    );
}
