//! The store goes away (PostgreSQL behind a TCP proxy the test closes):
//! ingest answers 503 + Retry-After and acknowledges nothing, `/status` is
//! degraded, and both recover by themselves when the database returns.
//! The machine's PostgreSQL is never touched.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_gives_503_then_recovers() {
    let db = Arc::new(TestDb::new(Backend::Postgres).await);
    let proxy = Proxy::start(lockstep_testkit::PG_ADDR.into()).await;
    let TestDb::Postgres(pg) = &*db else {
        unreachable!()
    };
    let url = pg.url_via(&proxy.addr);
    init_tracing();
    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    let args = [
        "--retry-after-s",
        "1",
        "--data-dir",
        data_dir.path().to_str().unwrap(),
    ];
    let app = lockstep_server::App::build(settings(&url, &args))
        .await
        .expect("builds through the proxy");
    let app = start(app, db.clone(), data_dir).await;

    let mut enc = encoder(&vin(40), 0x40);
    let t0 = 1_764_000_000_000;
    let b0 = batch(&mut enc, 0..20, t0);
    let b1 = batch(&mut enc, 20..40, t0);
    assert_eq!(app.post_batch(&b0).await.status(), 200);

    proxy.close();
    let resp = app.post_batch(&b1).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "error");
    let seed = lockstep_proto::telemetry::TelemetryReading {
        vehicle_vin: vin(41),
        timestamp: t0,
        speed: Some(1.0),
        ..Default::default()
    };
    assert_eq!(
        app.post_seed(&seed).await.status(),
        503,
        "a new vehicle's state cannot be loaded either"
    );
    let status = eventually(Duration::from_secs(10), "a degraded status", || async {
        Some(app.status().await).filter(|s| s["status"] == "degraded")
    })
    .await;
    assert_eq!(status["store"]["healthy"], false);
    assert_eq!(status["store"]["kind"], "postgres");
    assert_eq!(
        app.http
            .get(format!("{}/api/vehicles", app.addr))
            .send()
            .await
            .unwrap()
            .status(),
        503
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM telemetry_data").await,
        20,
        "nothing acknowledged, nothing stored"
    );

    proxy.reopen();
    // The edge retries the same batch: the failed attempt left the session state untouched.
    eventually(Duration::from_secs(20), "ingest to recover", || async {
        (app.post_batch(&b1).await.status() == 200).then_some(())
    })
    .await;
    assert_eq!(app.post_seed(&seed).await.status(), 200);
    eventually(Duration::from_secs(10), "a healthy status", || async {
        (app.status().await["status"] == "healthy").then_some(())
    })
    .await;
    assert_eq!(db.count("SELECT COUNT(*) FROM telemetry_data").await, 41);
}
