//! Abuse limits: per device readings/requests (429 + Retry-After, nothing
//! stored), per client address on routes without a device identity,
//! WebSockets per address, and the batch size checked before decoding.

use std::sync::Arc;
use std::time::Duration;

use lockstep_proto::Message as _;
use serde_json::Value;

use crate::both_stores;
use crate::helpers::*;

both_stores!(device_over_its_readings_budget_gets_429);

async fn device_over_its_readings_budget_gets_429(backend: Backend) {
    let db = Arc::new(TestDb::new(backend).await);
    // 1 reading/s with a bucket of 20 (one full batch): a second batch of 20
    // needs ~20 s of refill, far more than this test takes.
    let app = spawn_app_with(
        db.clone(),
        &["--device-readings-per-s", "1", "--max-batch-readings", "20"],
    )
    .await;
    let t0 = 1_764_000_000_000;
    let mut enc = encoder(&vin(60), 0x60);
    let b0 = batch(&mut enc, 0..20, t0);
    let b1 = batch(&mut enc, 20..40, t0);
    assert_eq!(app.post_batch(&b0).await.status(), 200);
    let resp = app.post_batch(&b1).await;
    assert_eq!(resp.status(), 429);
    let wait: u32 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&wait), "Retry-After {wait}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "error");
    // Another vehicle has its own budget.
    let mut other = encoder(&vin(61), 0x61);
    assert_eq!(
        app.post_batch(&batch(&mut other, 0..20, t0)).await.status(),
        200
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM telemetry_data").await,
        40,
        "the refused batch stored nothing"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_count_is_checked_before_decoding() {
    let app = spawn_app_with(
        Arc::new(TestDb::new(Backend::Sqlite).await),
        &["--max-batch-readings", "100"],
    )
    .await;
    // count = 400,000 and then bytes that are not protobuf at all: a 413
    // (not a 400) shows the count was read before the body was decoded.
    let mut body = lockstep_proto::v1::Batch {
        vehicle_vin: vin(62),
        count: 400_000,
        ..Default::default()
    }
    .encode_to_vec();
    body.extend_from_slice(&[0x0f; 64]);
    let resp = app.post("/api/telemetry", BATCH, body).await;
    assert_eq!(resp.status(), 413);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("400000 readings"),
        "{v}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_budget_on_routes_without_a_device() {
    let app = spawn_app_with(
        Arc::new(TestDb::new(Backend::Sqlite).await),
        &["--ip-requests-per-s", "1"],
    )
    .await;
    // A bucket of 2 refilled at 1/s: twenty back-to-back reads hit the limit.
    let mut limited = None;
    for _ in 0..20 {
        let r = app
            .http
            .get(format!("{}/api/vehicles", app.addr))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status(), 200);
    }
    let r = limited.expect("a 429 among twenty requests at 1/s");
    assert!(r.headers().contains_key("retry-after"));
    // Device ingest is limited per device, not per address.
    let seed = lockstep_proto::telemetry::TelemetryReading {
        vehicle_vin: vin(63),
        timestamp: 1_764_000_000_000,
        speed: Some(3.0),
        ..Default::default()
    };
    assert_eq!(app.post_seed(&seed).await.status(), 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_per_address_are_capped() {
    let app = spawn_app_with(
        Arc::new(TestDb::new(Backend::Sqlite).await),
        &["--ws-per-ip", "1"],
    )
    .await;
    let url = format!("ws://127.0.0.1:{}/ws", app.port);
    let mut first = Ws::connect(&url).await;
    first.next_json(Duration::from_secs(10)).await;
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 429),
        other => panic!(
            "a second WebSocket from the address: {:?}",
            other.map(|_| ())
        ),
    }
    drop(first);
    // The slot is freed when the first client's task ends.
    eventually(Duration::from_secs(10), "a WebSocket slot again", || {
        let url = url.clone();
        async move {
            tokio_tungstenite::connect_async(&url)
                .await
                .ok()
                .map(|_| ())
        }
    })
    .await;
    app.stop().await;
}

both_stores!(vehicle_registry_is_bounded_and_state_reloads);

/// At most LOCKSTEP_MAX_VEHICLES vehicles stay in memory however many are
/// seen; an evicted vehicle continues its session and its seed form from the
/// state the store holds (no resync, no duplicate).
async fn vehicle_registry_is_bounded_and_state_reloads(backend: Backend) {
    let db = Arc::new(TestDb::new(backend).await);
    let app = spawn_app_with(
        db.clone(),
        &["--max-vehicles", "32", "--ip-requests-per-s", "0"],
    )
    .await;
    let t0 = 1_764_000_000_000;
    let a = vin(70);
    let mut enc = encoder(&a, 0x70);
    let b0 = batch(&mut enc, 0..20, t0);
    let b1 = batch(&mut enc, 20..40, t0);
    let seed = |v: &str, ts: i64| lockstep_proto::telemetry::TelemetryReading {
        vehicle_vin: v.to_owned(),
        timestamp: ts,
        speed: Some(5.0),
        ..Default::default()
    };
    assert_eq!(app.post_batch(&b0).await.status(), 200);
    assert_eq!(app.post_seed(&seed(&a, t0)).await.status(), 200);
    // 300 other vehicles: every shard (32, one vehicle each) sees several.
    for n in 0..300 {
        assert_eq!(app.post_seed(&seed(&vin(1000 + n), t0)).await.status(), 200);
    }
    let status = app.status().await;
    assert!(
        status["vehicles_in_memory"].as_u64().unwrap() <= 32,
        "{status}"
    );
    assert_eq!(
        app.post_batch(&b1).await.status(),
        200,
        "the session goes on"
    );
    let dup: Value = app.post_seed(&seed(&a, t0)).await.json().await.unwrap();
    assert_eq!(dup["status"], "success");
    assert_eq!(
        db.count(&format!(
            "SELECT COUNT(*) FROM telemetry_data t JOIN vehicles v ON v.id = t.vehicle_id WHERE v.vin = '{a}'"
        ))
        .await,
        41,
        "20 + 20 batch readings and one seed reading, the repeat not stored"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_vehicles_leave_memory() {
    let app = spawn_app_with(
        Arc::new(TestDb::new(Backend::Sqlite).await),
        &["--vehicle-idle-s", "3"],
    )
    .await;
    for n in 0..3 {
        let r = lockstep_proto::telemetry::TelemetryReading {
            vehicle_vin: vin(80 + n),
            timestamp: 1_764_000_000_000,
            speed: Some(1.0),
            ..Default::default()
        };
        assert_eq!(app.post_seed(&r).await.status(), 200);
    }
    assert!(app.status().await["vehicles_in_memory"].as_u64().unwrap() > 0);
    eventually(
        Duration::from_secs(10),
        "the idle vehicles evicted",
        || async { (app.status().await["vehicles_in_memory"] == 0).then_some(()) },
    )
    .await;
    app.stop().await;
}

/// The edge honours 429 + Retry-After and loses nothing: with a budget of
/// 2 requests/s (bursts of 4) its 10 batches are partly refused, kept
/// spooled, resent after the wait, and all 100 readings end up stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_waits_out_429_and_loses_nothing() {
    let app = spawn_app_with(
        Arc::new(TestDb::new(Backend::Sqlite).await),
        &["--device-requests-per-s", "2"],
    )
    .await;
    let server = format!("http://127.0.0.1:{}", app.port);
    let args = ["--batch-readings", "10", "--batch-delay-ms", "2000"];
    assert!(
        run_edge(&server, 100, &args).await,
        "the edge exits cleanly"
    );
    assert_eq!(
        app.db.count("SELECT COUNT(*) FROM telemetry_data").await,
        100
    );
    // The budget was really exceeded: the server answered 429 at least once.
    let metrics = app
        .http
        .get(format!("{server}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    let refused: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("lockstep_requests_total{")
                && l.contains(r#"route="/api/telemetry""#)
                && l.contains(r#"status="429""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(refused >= 1.0, "no 429 was answered:\n{metrics}");
    app.stop().await;
}
