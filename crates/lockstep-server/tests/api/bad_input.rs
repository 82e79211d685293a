//! Every bad input gets the right 4xx, a JSON body naming the problem, and
//! nothing is stored; the server keeps serving.

use lockstep_proto::telemetry::TelemetryReading;
use serde_json::Value;

use crate::both_stores;
use crate::helpers::*;

both_stores!(
    bad_requests_get_4xx_and_store_nothing,
    resync_cases_get_409,
    cors_allows_only_the_allow_list,
    garbage_never_yields_a_server_error,
);

const T0: i64 = 1_764_000_000_000;

async fn expect_error(resp: reqwest::Response, status: u16, needle: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status);
    let body: Value = resp.json().await.expect("a JSON error body");
    assert_eq!(body["status"], "error");
    let msg = body["error"].as_str().unwrap().to_owned();
    assert!(
        msg.to_lowercase().contains(&needle.to_lowercase()),
        "{msg:?} should mention {needle:?}"
    );
    body
}

async fn bad_requests_get_4xx_and_store_nothing(backend: Backend) {
    // A small body limit: an oversized body then fits in the socket buffers, so the
    // client reads the early 413 instead of racing the server's close.
    let db = std::sync::Arc::new(TestDb::new(backend).await);
    let app = spawn_app_with(db, &["--body-limit", "4096", "--max-batch-readings", "200"]).await;
    let good = TelemetryReading {
        vehicle_vin: vin(1),
        timestamp: T0,
        speed: Some(10.0),
        ..Default::default()
    };
    use lockstep_proto::Message as _;

    expect_error(
        app.post("/api/telemetry", "text/plain", good.encode_to_vec())
            .await,
        415,
        "unsupported media type",
    )
    .await;
    let resp = app
        .http
        .post(format!("{}/api/telemetry", app.addr))
        .body(good.encode_to_vec())
        .send()
        .await
        .unwrap();
    expect_error(resp, 415, "no Content-Type").await;
    expect_error(
        app.post("/api/telemetry", SEED, vec![0xff, 0xff, 0xff])
            .await,
        400,
        "TelemetryReading",
    )
    .await;
    expect_error(
        app.post("/api/telemetry", BATCH, vec![0x0a, 0x80]).await,
        400,
        "lockstep.v1.Batch",
    )
    .await;
    expect_error(
        app.post("/api/telemetry", SEED, vec![0u8; 5000]).await,
        413,
        "limit",
    )
    .await;
    let bad_vin = TelemetryReading {
        vehicle_vin: "SHORT".into(),
        ..good.clone()
    };
    expect_error(app.post_seed(&bad_vin).await, 422, "17 characters").await;
    let lower = TelemetryReading {
        vehicle_vin: vin(1).to_lowercase(),
        ..good.clone()
    };
    expect_error(app.post_seed(&lower).await, 422, "vehicle_vin").await;
    let no_vin = TelemetryReading {
        vehicle_vin: String::new(),
        ..good.clone()
    };
    expect_error(app.post_seed(&no_vin).await, 422, "vehicle_vin").await;
    let nan = TelemetryReading {
        speed: Some(f64::NAN),
        ..good.clone()
    };
    expect_error(app.post_seed(&nan).await, 400, "finite").await;

    let mut enc = encoder(&vin(1), 5);
    let mut b = batch(&mut enc, 0..5, T0);
    b.vehicle_vin = "5YJ3E1EA00000000I".into();
    expect_error(app.post_batch(&b).await, 422, "vehicle_vin").await;
    // More readings than one request may carry (the test server allows 200).
    let big = batch(&mut encoder(&vin(1), 5), 0..201, T0);
    expect_error(app.post_batch(&big).await, 413, "at most 200").await;
    let mut b = batch(&mut encoder(&vin(1), 5), 0..5, T0);
    b.count = 0;
    expect_error(app.post_batch(&b).await, 400, "count").await;
    let mut b = batch(&mut encoder(&vin(1), 5), 0..5, T0);
    b.values.truncate(2);
    expect_error(app.post_batch(&b).await, 400, "values").await;
    let mut b = batch(&mut encoder(&vin(1), 5), 0..5, T0);
    b.values.push(1);
    expect_error(app.post_batch(&b).await, 400, "left over").await;

    // Unknown endpoint, wrong method: JSON 404 / 405 — never 500.
    assert_eq!(
        app.http
            .get(format!("{}/nope", app.addr))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        app.http
            .get(format!("{}/api/telemetry", app.addr))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );

    assert_eq!(app.db.count("SELECT COUNT(*) FROM telemetry_data").await, 0);
    assert_eq!(app.db.count("SELECT COUNT(*) FROM vehicles").await, 0);
    assert_eq!(
        app.post_seed(&good).await.status(),
        200,
        "the server keeps serving"
    );
    assert_eq!(app.db.count("SELECT COUNT(*) FROM telemetry_data").await, 1);
}

async fn resync_cases_get_409(backend: Backend) {
    let app = spawn_app(backend).await;
    let v = vin(9);
    let mut enc = encoder(&v, 0xfeed);
    let b0 = batch(&mut enc, 0..10, T0);
    let b1 = batch(&mut enc, 10..20, T0);
    let b2 = batch(&mut enc, 20..30, T0);

    // Unknown session without a keyframe.
    let body = expect_error(app.post_batch(&b1).await, 409, "unknown session").await;
    assert_eq!(body["resync_required"], true);
    assert_eq!(body["kind"], "unknown_session");
    assert_eq!(body["next_seq"], Value::Null);

    // Catalog mismatch.
    let mut other = b0.clone();
    other.catalog_hash ^= 1;
    let body = expect_error(app.post_batch(&other).await, 409, "catalog").await;
    assert_eq!(body["kind"], "catalog_mismatch");

    assert_eq!(app.post_batch(&b0).await.status(), 200);
    // Gap: batch 2 before batch 1.
    let body = expect_error(app.post_batch(&b2).await, 409, "gap").await;
    assert_eq!(body["kind"], "gap");
    assert_eq!(body["next_seq"], 10);

    // Overlap: starts inside the accepted range, ends after it.
    let mut enc2 = encoder(&v, 0xfeed);
    let _ = batch(&mut enc2, 0..5, T0);
    let overlap = batch(&mut enc2, 5..15, T0);
    let body = expect_error(app.post_batch(&overlap).await, 409, "overlap").await;
    assert_eq!(body["kind"], "overlap");
    assert_eq!(body["next_seq"], 10);

    // Checksum mismatch: the edge claims a different state.
    let mut bad = b1.clone();
    bad.state_checksum = Some(bad.state_checksum.unwrap() ^ 0xdead_beef);
    let body = expect_error(app.post_batch(&bad).await, 409, "checksum").await;
    assert_eq!(body["kind"], "checksum_mismatch");
    assert_eq!(body["next_seq"], 10);

    assert_eq!(
        app.db.count("SELECT COUNT(*) FROM telemetry_data").await,
        10,
        "refused batches store nothing"
    );
    // The session continues from the state the refusals left untouched.
    assert_eq!(app.post_batch(&b1).await.status(), 200);
    assert_eq!(app.post_batch(&b2).await.status(), 200);

    // Resync: the edge rewinds and resends from a keyframe.
    let mut enc3 = encoder(&v, 0xbeef);
    let _lost = batch(&mut enc3, 0..10, T0);
    let later = batch(&mut enc3, 10..20, T0);
    let body = expect_error(app.post_batch(&later).await, 409, "keyframe").await;
    assert_eq!(body["kind"], "unknown_session");
    enc3.rewind(10);
    let resent = batch(&mut enc3, 10..20, T0);
    let resp = app.post_batch(&resent).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        app.db.count("SELECT COUNT(*) FROM telemetry_data").await,
        40
    );
}

/// CORS: the default allow-list holds the server's own origin and localhost dev
/// ports; other origins get no CORS headers.
async fn cors_allows_only_the_allow_list(backend: Backend) {
    let app = spawn_app(backend).await;
    let preflight = |origin: String| {
        app.http
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/api/telemetry", app.addr),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    for origin in [
        format!("http://localhost:{}", app.port),
        "http://127.0.0.1:5173".to_owned(),
    ] {
        let resp = preflight(origin.clone()).await.unwrap();
        assert_eq!(
            resp.headers()
                .get("access-control-allow-origin")
                .map(|v| v.to_str().unwrap()),
            Some(origin.as_str())
        );
    }
    let resp = preflight("https://evil.example".into()).await.unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none());
}

/// Random and mutated bodies on both forms: only 200/400/409/422, never a 500,
/// and the server keeps serving.
async fn garbage_never_yields_a_server_error(backend: Backend) {
    use lockstep_proto::Message as _;
    use rand::{Rng, SeedableRng};
    let app = spawn_app(backend).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x010c_57e9);
    let mut enc = encoder(&vin(70), 70);
    let valid = batch(&mut enc, 0..30, T0).encode_to_vec();
    let seed = TelemetryReading {
        vehicle_vin: vin(71),
        timestamp: T0,
        speed: Some(5.0),
        heading: Some(1.0),
        ..Default::default()
    }
    .encode_to_vec();
    for i in 0..300 {
        let (ct, body) = match i % 3 {
            0 => {
                let n = rng.random_range(0..200);
                (
                    if rng.random() { SEED } else { BATCH },
                    (0..n).map(|_| rng.random::<u8>()).collect::<Vec<u8>>(),
                )
            }
            1 => {
                let mut b = valid.clone();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..b.len());
                    b[at] ^= 1 << rng.random_range(0..8);
                }
                (BATCH, b)
            }
            _ => {
                let mut b = seed.clone();
                let at = rng.random_range(0..b.len());
                b[at] = rng.random();
                (SEED, b)
            }
        };
        let resp = app.post("/api/telemetry", ct, body.clone()).await;
        let status = resp.status().as_u16();
        assert!(
            matches!(status, 200 | 400 | 409 | 422),
            "body {body:02x?} as {ct} gave {status}"
        );
        let json: Value = resp.json().await.expect("a JSON body");
        assert!(
            json["status"] == "success" || json["error"].as_str().is_some_and(|e| !e.is_empty())
        );
    }
    assert_eq!(app.status().await["status"], "healthy");
    assert_eq!(
        app.post_batch(&batch(&mut encoder(&vin(72), 1), 0..3, T0))
            .await
            .status(),
        200
    );
}
