//! The store goes away (PostgreSQL behind a TCP proxy the test closes):
//! ingest answers 503 + Retry-After and acknowledges nothing, `/status` is
//! degraded, and both recover by themselves when the database returns.
//! The machine's PostgreSQL is never touched.

use std::sync::Arc;
use std::time::Duration;

use lockstep_testkit::{PG_ADDR, Proxy};
use serde_json::Value;

use crate::helpers::*;

/// A server on `db` (PostgreSQL) reached through the proxy at `addr`, with
/// `Retry-After: 1` and the extra flags.
async fn app_via(db: &Arc<TestDb>, addr: &str, extra: &[&str]) -> TestApp {
    let TestDb::Postgres(pg) = &**db else {
        unreachable!()
    };
    let url = pg.url_via(addr);
    init_tracing();
    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    let mut args = vec![
        "--retry-after-s",
        "1",
        "--data-dir",
        data_dir.path().to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let app = lockstep_server::App::build(settings(&url, &args))
        .await
        .expect("builds through the proxy");
    start(app, db.clone(), data_dir).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_gives_503_then_recovers() {
    let db = Arc::new(TestDb::new(Backend::Postgres).await);
    let proxy = Proxy::start(PG_ADDR.into()).await;
    let app = app_via(&db, &proxy.addr, &[]).await;

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

/// PostgreSQL stops answering without closing anything (a black-holed
/// network path): ingest answers 503 + Retry-After within the store deadline
/// instead of hanging for as long as TCP waits, and recovers when it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_holed_postgres_gives_503_within_the_deadline() {
    let db = Arc::new(TestDb::new(Backend::Postgres).await);
    let proxy = Proxy::start(PG_ADDR.into()).await;
    let app = app_via(&db, &proxy.addr, &["--store-timeout-ms", "2000"]).await;

    let mut enc = encoder(&vin(42), 0x42);
    let t0 = 1_764_000_000_000;
    let b0 = batch(&mut enc, 0..20, t0);
    let b1 = batch(&mut enc, 20..40, t0);
    assert_eq!(app.post_batch(&b0).await.status(), 200);

    proxy.black_hole();
    // Upper bounds on waiting, generous for a loaded machine: 2 s configured.
    let resp = tokio::time::timeout(Duration::from_secs(10), app.post_batch(&b1))
        .await
        .expect("an answer while PostgreSQL is black-holed, not a hang");
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let seed = lockstep_proto::telemetry::TelemetryReading {
        vehicle_vin: vin(43),
        timestamp: t0,
        speed: Some(1.0),
        ..Default::default()
    };
    let resp = tokio::time::timeout(Duration::from_secs(10), app.post_seed(&seed))
        .await
        .expect("a new vehicle's state load ends too");
    assert_eq!(resp.status(), 503);
    let status = eventually(Duration::from_secs(10), "a degraded status", || async {
        Some(app.status().await).filter(|s| s["status"] == "degraded")
    })
    .await;
    assert_eq!(status["store"]["healthy"], false);

    proxy.restore();
    eventually(Duration::from_secs(30), "ingest to recover", || async {
        (app.post_batch(&b1).await.status() == 200).then_some(())
    })
    .await;
    assert_eq!(db.count("SELECT COUNT(*) FROM telemetry_data").await, 40);
}

/// A store that answers reads but takes no writes (as on a full disk; here
/// another process holds SQLite's write lock): `/status` turns degraded and
/// stays so while the health probe runs — the probe writes, so it does not
/// flip back to healthy — then recovers once writes go through again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_takes_no_writes_stays_degraded() {
    let db = Arc::new(TestDb::new(Backend::Sqlite).await);
    let app = spawn_app_with(db.clone(), &["--store-timeout-ms", "1000"]).await;
    let TestDb::Sqlite { path, .. } = &*db else {
        unreachable!()
    };
    let seed = |n: u32, ts: i64| lockstep_proto::telemetry::TelemetryReading {
        vehicle_vin: vin(n),
        timestamp: ts,
        speed: Some(1.0),
        ..Default::default()
    };
    let t0 = 1_764_000_000_000;
    assert_eq!(app.post_seed(&seed(44, t0)).await.status(), 200);

    let blocker = rusqlite::Connection::open(path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    assert_eq!(app.post_seed(&seed(44, t0 + 1)).await.status(), 503);
    eventually(Duration::from_secs(10), "a degraded status", || async {
        (app.status().await["status"] == "degraded").then_some(())
    })
    .await;
    // The probe runs every second while degraded: over 4 s it runs several
    // times, and must not report healthy while writes still fail.
    let until = tokio::time::Instant::now() + Duration::from_secs(4);
    while tokio::time::Instant::now() < until {
        assert_eq!(app.status().await["status"], "degraded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    blocker.execute_batch("ROLLBACK").unwrap();
    eventually(Duration::from_secs(10), "a healthy status", || async {
        (app.status().await["status"] == "healthy").then_some(())
    })
    .await;
    assert_eq!(app.post_seed(&seed(44, t0 + 1)).await.status(), 200);
}
