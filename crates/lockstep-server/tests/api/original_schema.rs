//! Moving over from the original server: a PostgreSQL that holds its tables
//! (`vehicles`, `telemetry_data`, `compression_stats`) starts Lockstep with
//! every row kept — imported into Lockstep's schema, the originals moved
//! into `lockstep_legacy` — and keeps working (new vehicles, restarts).

use std::sync::Arc;

use lockstep_proto::telemetry::TelemetryReading;

use crate::helpers::*;

/// The tables of the original `schema.sql`, as its server created them.
const ORIGINAL_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS vehicles (
    id          SERIAL PRIMARY KEY,
    vin         TEXT NOT NULL UNIQUE,
    model       TEXT,
    year        INTEGER,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS telemetry_data (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    vehicle_id        INTEGER NOT NULL REFERENCES vehicles (id),
    "timestamp"       TIMESTAMPTZ NOT NULL,
    speed             DOUBLE PRECISION,
    battery           DOUBLE PRECISION,
    power             DOUBLE PRECISION,
    heading           DOUBLE PRECISION,
    predicted_fields  TEXT[] NOT NULL DEFAULT '{}',
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS telemetry_data_vehicle_time_idx
    ON telemetry_data (vehicle_id, "timestamp" DESC);
CREATE INDEX IF NOT EXISTS telemetry_data_time_idx
    ON telemetry_data ("timestamp" DESC);
CREATE TABLE IF NOT EXISTS compression_stats (
    date                  DATE PRIMARY KEY,
    total_readings        BIGINT NOT NULL DEFAULT 0,
    transmitted_readings  BIGINT NOT NULL DEFAULT 0,
    skipped_readings      BIGINT NOT NULL DEFAULT 0,
    compression_ratio     DOUBLE PRECISION NOT NULL DEFAULT 0,
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);
"#;

/// Rows as the original server wrote them: vehicle A with a repeated
/// timestamp (a retry it stored twice), vehicle B with predicted fields.
const ORIGINAL_ROWS: &str = r#"
INSERT INTO vehicles (vin, model, created_at) VALUES
    ('5YJ3E1EA000000701', 'Model 3', '2025-11-20 10:00:00+00'),
    ('5YJ3E1EA000000702', NULL, '2025-11-21 09:00:00+00');
INSERT INTO telemetry_data (vehicle_id, "timestamp", speed, battery, power, heading, predicted_fields, created_at) VALUES
    (1, '2025-11-20 10:00:01+00', 10, 90, 1.5, 45, '{}', '2025-11-20 10:00:01.2+00'),
    (1, '2025-11-20 10:00:02+00', 11, 90, 1.5, 45, '{battery,power,heading}', '2025-11-20 10:00:02.2+00'),
    (1, '2025-11-20 10:00:02+00', 11, 90, 1.5, 45, '{battery,power,heading}', '2025-11-20 10:00:02.9+00'),
    (2, '2025-11-21 09:00:01+00', 50, 70, NULL, NULL, '{battery}', '2025-11-21 09:00:01.5+00');
INSERT INTO compression_stats (date, total_readings, transmitted_readings, skipped_readings, compression_ratio) VALUES
    ('2025-11-20', 12, 6, 6, 50.0),
    ('2025-11-21', 2, 1, 1, 50.0);
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_the_original_server_keeps_every_row() {
    let db = Arc::new(TestDb::new(Backend::Postgres).await);
    let url = db.url();
    let client = lockstep_testkit::pg_connect(&url).await;
    client.batch_execute(ORIGINAL_SCHEMA).await.unwrap();
    client.batch_execute(ORIGINAL_ROWS).await.unwrap();

    let app = spawn_app_with(db.clone(), &[]).await;
    // The originals, untouched, beside Lockstep's tables.
    for (table, n) in [
        ("vehicles", 2),
        ("telemetry_data", 4),
        ("compression_stats", 2),
    ] {
        let sql = format!("SELECT COUNT(*) FROM lockstep_legacy.{table}");
        assert_eq!(db.count(&sql).await, n, "{table}");
    }
    // Every reading imported, values and transmitted fields as sent.
    assert_eq!(db.count("SELECT COUNT(*) FROM telemetry_data").await, 4);
    let rows = db
        .query(
            "SELECT v.vin, t.session_id, t.seq, t.ts, t.speed, t.battery, t.power, t.heading, t.transmitted_mask
             FROM telemetry_data t JOIN vehicles v ON v.id = t.vehicle_id ORDER BY t.seq",
        )
        .await;
    let s = |v: &str| Some(v.to_owned());
    assert_eq!(
        rows[1],
        [
            s("5YJ3E1EA000000701"),
            s("1"),
            s("2"),
            s("1763632802000"),
            s("11"),
            s("90"),
            s("1.5"),
            s("45"),
            s("1")
        ]
    );
    assert_eq!(rows[2][2], s("3"), "the repeated timestamp is kept");
    assert_eq!(
        rows[3],
        [
            s("5YJ3E1EA000000702"),
            s("1"),
            s("4"),
            s("1763715601000"),
            s("50"),
            s("70"),
            None,
            None,
            s("1")
        ]
    );
    assert_eq!(rows[0][8], s("15"), "all four sent");

    // The API sees them: per-vehicle readings, lifetime statistics.
    let vehicles = app.get_json("/api/vehicles").await;
    let readings: Vec<(String, u64)> = vehicles["vehicles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["vin"].as_str().unwrap().to_owned(),
                v["readings"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        readings,
        [
            ("5YJ3E1EA000000701".to_owned(), 3),
            ("5YJ3E1EA000000702".to_owned(), 1)
        ]
    );
    let stats = &app.status().await["compression_stats"];
    assert_eq!(
        (
            &stats["total_readings"],
            &stats["transmitted_readings"],
            &stats["skipped_readings"]
        ),
        (&4.into(), &(4 + 1 + 1 + 1).into(), &(3 + 3 + 1).into()),
        "{stats}"
    );

    // Ingest goes on: an imported vehicle and a new one (its id after the imported ones).
    for (vin, ts) in [
        ("5YJ3E1EA000000701", 1_764_000_000_000),
        ("5YJ3E1EA000000703", 1_764_000_000_000),
    ] {
        let r = TelemetryReading {
            vehicle_vin: vin.into(),
            timestamp: ts,
            speed: Some(20.0),
            ..Default::default()
        };
        assert_eq!(app.post_seed(&r).await.status(), 200, "{vin}");
    }
    assert_eq!(db.count("SELECT COUNT(*) FROM vehicles").await, 3);
    assert!(
        db.count("SELECT id FROM vehicles WHERE vin = '5YJ3E1EA000000703'")
            .await
            > 2
    );

    // A restart finds Lockstep's schema and imports nothing twice.
    let db = app.stop().await;
    let app = spawn_app_with(db.clone(), &[]).await;
    assert_eq!(db.count("SELECT COUNT(*) FROM telemetry_data").await, 6);
    assert_eq!(
        app.get_json("/api/vehicles").await["vehicles"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}
