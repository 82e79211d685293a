//! `/status` figures and what a new WebSocket client is told at once.

use std::sync::Arc;
use std::time::Duration;

use lockstep_proto::telemetry::TelemetryReading;

use crate::helpers::*;

const WAIT: Duration = Duration::from_secs(10);

/// `total_readings` counts readings; transmitted/skipped count field values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_counts_readings() {
    let app = spawn_app(Backend::Sqlite).await;
    let full = TelemetryReading {
        vehicle_vin: vin(1),
        timestamp: 1_764_000_000_000,
        speed: Some(10.0),
        battery: Some(80.0),
        power: Some(2.0),
        heading: Some(90.0),
    };
    let speed_only = TelemetryReading {
        timestamp: 1_764_000_001_000,
        speed: Some(12.0),
        battery: None,
        power: None,
        heading: None,
        ..full.clone()
    };
    assert_eq!(app.post_seed(&full).await.status(), 200);
    assert_eq!(app.post_seed(&speed_only).await.status(), 200);
    let st = app.status().await;
    let c = &st["compression_stats"];
    assert_eq!(c["total_readings"], 2, "{c}");
    assert_eq!(c["fields_total"], 8, "{c}");
    assert_eq!(c["transmitted_readings"], 5, "{c}");
    assert_eq!(c["skipped_readings"], 3, "{c}");
    assert_eq!(st["supabase_enabled"], false);
}

/// `supabase_enabled` says whether ENABLE_SUPABASE put the data in
/// PostgreSQL, never true on SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supabase_enabled_only_with_postgres() {
    for (backend, expected) in [(Backend::Sqlite, false), (Backend::Postgres, true)] {
        let db = Arc::new(TestDb::new(backend).await);
        let data_dir = Arc::new(tempfile::tempdir().unwrap());
        let url = db.url();
        let s = lockstep_server::Settings::from_args_only([
            "lockstep-server",
            "--port",
            "0",
            "--database-url",
            &url,
            "--enable-supabase",
            "true",
            "--data-dir",
            data_dir.path().to_str().unwrap(),
        ])
        .unwrap();
        let app = start(lockstep_server::App::build(s).await.unwrap(), db, data_dir).await;
        assert_eq!(
            app.status().await["supabase_enabled"],
            expected,
            "{backend:?}"
        );
    }
}

/// A new client gets the recent log lines (here: from before it connected),
/// and a failed logger start says why in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_clients_get_recent_log_lines() {
    let db = Arc::new(TestDb::new(Backend::Sqlite).await);
    let app = spawn_app_with(db, &["--edge-bin", "/nonexistent/lockstep-edge"]).await;
    let resp = app
        .http
        .post(format!("{}/logger/start", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    // Both lines were published before this client connected.
    let mut ws = app.ws().await;
    ws.until(WAIT, "log", |m| m["data"]["message"] == "server started")
        .await;
    let m = ws
        .until(WAIT, "log", |m| {
            m["data"]["message"]
                .as_str()
                .is_some_and(|t| t.starts_with("Logger not started: "))
        })
        .await;
    assert!(
        m["data"]["message"]
            .as_str()
            .unwrap()
            .contains("/nonexistent/lockstep-edge"),
        "{m}"
    );
}
