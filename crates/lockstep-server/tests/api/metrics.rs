//! `/metrics` moves by exactly what was ingested, per server.

use std::time::Duration;

use crate::helpers::*;

const T0: i64 = 1_764_000_000_000;

/// The value of the sample `name` whose labels include every `labels` pair (0 if absent).
pub(crate) fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

pub(crate) async fn metrics(app: &TestApp) -> String {
    let resp = app.get("/metrics").await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    resp.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_by_exactly_what_was_ingested() {
    let app = spawn_app(Backend::Sqlite).await;
    let other = spawn_app(Backend::Sqlite).await;
    let before = metrics(&app).await;
    let v = vin(61);
    let mut enc = encoder(&v, 3);
    app.post_readings(&mut enc, 0..40, T0).await;
    // The same batch again: acknowledged as a duplicate, not stored twice.
    let again = batch(&mut encoder(&v, 3), 0..40, T0);
    assert_eq!(app.post_batch(&again).await.status(), 200);
    // A gap: 409, counted as a resync.
    let _lost = batch(&mut enc, 40..45, T0);
    assert_eq!(
        app.post_batch(&batch(&mut enc, 45..50, T0)).await.status(),
        409
    );
    let seed = lockstep_proto::telemetry::TelemetryReading {
        vehicle_vin: vin(62),
        timestamp: T0,
        speed: Some(10.0),
        battery: Some(80.0),
        power: Some(5.0),
        heading: Some(90.0),
    };
    assert_eq!(app.post_seed(&seed).await.status(), 200);

    let after = metrics(&app).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    let stored = [("outcome", "stored")];
    assert_eq!(
        delta("lockstep_readings_total", &[("form", "batch"), stored[0]]),
        40.0
    );
    assert_eq!(
        delta("lockstep_readings_total", &[("form", "seed"), stored[0]]),
        1.0
    );
    assert_eq!(
        delta(
            "lockstep_readings_total",
            &[("form", "batch"), ("outcome", "duplicate")]
        ),
        40.0
    );
    assert_eq!(
        delta(
            "lockstep_readings_total",
            &[("form", "batch"), ("outcome", "refused")]
        ),
        5.0
    );
    assert_eq!(delta("lockstep_resyncs_total", &[("kind", "gap")]), 1.0);
    // Every non-null stored field, once: 40 readings × 7 signals + 4 seed values.
    assert_eq!(delta("lockstep_fields_total", &[]), 40.0 * 7.0 + 4.0);
    app.stats_written().await;
    let stats = app
        .db
        .query("SELECT SUM(fields_transmitted) FROM compression_stats")
        .await;
    let transmitted: f64 = stats[0][0].as_deref().unwrap().parse().unwrap();
    assert_eq!(
        delta("lockstep_fields_total", &[("transmitted", "true")]),
        transmitted
    );
    assert_eq!(
        delta(
            "lockstep_requests_total",
            &[("route", "/api/telemetry"), ("status", "200")]
        ),
        3.0,
        "the 40 readings (one request), the duplicate, the seed"
    );
    assert_eq!(
        delta(
            "lockstep_requests_total",
            &[("route", "/api/telemetry"), ("status", "409")]
        ),
        1.0
    );
    assert!(delta("lockstep_commit_rows_count", &[]) >= 1.0);
    assert_eq!(delta("lockstep_commit_rows_sum", &[]), 41.0);
    assert_eq!(sample(&after, "lockstep_store_up", &[]), 1.0);
    assert_eq!(sample(&after, "lockstep_logger_running", &[]), 0.0);
    assert!(sample(&after, "process_resident_memory_bytes", &[]) > 0.0);
    assert_eq!(sample(&after, "lockstep_build_info", &[]), 1.0);

    // The other server in this process counted nothing of it.
    let theirs = metrics(&other).await;
    assert_eq!(sample(&theirs, "lockstep_readings_total", &[]), 0.0);

    let mut ws = app.ws().await;
    ws.next_json(Duration::from_secs(10)).await;
    let text = metrics(&app).await;
    assert_eq!(sample(&text, "lockstep_ws_clients", &[]), 1.0);
    assert!(sample(&text, "lockstep_ws_messages_total", &[]) >= 2.0);
}
