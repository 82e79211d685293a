//! Storage that grows: the per-minute rollup maintained as data lands, the
//! retention (PostgreSQL: day partitions dropped; SQLite: rows deleted in
//! batches), and the migration of an unpartitioned PostgreSQL table.

use std::sync::Arc;

use lockstep_server::StoreConfig;
use lockstep_server::store::{self, Maintenance, Store};
use serde_json::Value;

use crate::both_stores;
use crate::helpers::*;

/// 2025-11-24T16:00:00Z.
const T0: i64 = 1_764_000_000_000;
const DAY: i64 = 86_400_000;
const MINUTE: i64 = 60_000;

/// The store of `db`, opened directly (the server that used it is stopped).
async fn open_store(db: &TestDb) -> Arc<dyn Store> {
    let config = match db {
        TestDb::Sqlite { path, .. } => StoreConfig::Sqlite(path.clone()),
        TestDb::Postgres(pg) => StoreConfig::Postgres(pg.url()),
    };
    store::open(
        &config,
        2,
        &lockstep_server::model::Signals::from_catalog(&catalog()),
    )
    .await
    .expect("the store opens")
}

/// The buckets of a GET, as (start, count, per-signal aggregates).
fn buckets(body: &Value) -> &Vec<Value> {
    body["buckets"].as_array().expect("buckets")
}

/// Bucket queries over whole minutes read `telemetry_rollup`, kept as the
/// readings land (small batches through the pipelined insert, a large one
/// through COPY); they equal the raw computation over the same range.
async fn rollup_buckets_equal_the_raw_buckets(backend: Backend) {
    let app = spawn_app(backend).await;
    let a = vin(41);
    let mut enc = encoder(&a, 21);
    // 2 h at 1 Hz: 200-reading batches, then one of 1200 (the COPY path).
    app.post_readings(&mut enc, 0..6000, T0).await;
    let resp = app.post_batch(&batch(&mut enc, 6000..7200, T0)).await;
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);

    let rolled_up = app
        .db
        .count(&format!(
            "SELECT SUM(count) FROM telemetry_rollup WHERE vehicle_vin = '{a}'"
        ))
        .await;
    assert_eq!(rolled_up, 7200, "every reading counted once in the rollup");
    let minutes = app
        .db
        .count(&format!(
            "SELECT COUNT(*) FROM telemetry_rollup WHERE vehicle_vin = '{a}'"
        ))
        .await;
    assert_eq!(minutes, 120);

    let to = T0 + 7200 * 1000;
    for step in [MINUTE, 10 * MINUTE, 60 * MINUTE] {
        // `from` one ms early is not minute-aligned: the raw rows answer.
        let rollup = app
            .ok_json(&format!(
                "/api/vehicles/{a}/telemetry?from={T0}&to={to}&step={step}"
            ))
            .await;
        let raw = app
            .ok_json(&format!(
                "/api/vehicles/{a}/telemetry?from={}&to={to}&step={step}",
                T0 - 1
            ))
            .await;
        let (r, w) = (buckets(&rollup), buckets(&raw));
        assert_eq!(r.len() as i64, 7200 * 1000 / step, "step {step}");
        assert_eq!(r.len(), w.len(), "step {step}");
        for (x, y) in r.iter().zip(w) {
            assert_eq!(x["timestamp"], y["timestamp"]);
            assert_eq!(x["count"], y["count"], "step {step} at {}", x["timestamp"]);
            for s in catalog().signals() {
                let (p, q) = (&x[s.name.as_str()], &y[s.name.as_str()]);
                assert_eq!(p["min"], q["min"], "{} min, step {step}", s.name);
                assert_eq!(p["max"], q["max"], "{} max, step {step}", s.name);
                // The sums are added in another order: equal to rounding.
                let (m, n) = (p["mean"].as_f64().unwrap(), q["mean"].as_f64().unwrap());
                assert!(
                    (m - n).abs() <= 1e-9 * n.abs().max(1.0),
                    "{} mean {m} vs {n}, step {step}",
                    s.name
                );
            }
        }
    }
}

/// Readings of three days (40, 10 and 0 days before T0); a run with
/// retention 30 days at T0 removes the oldest day's readings and rollup
/// minutes and nothing else: on PostgreSQL by dropping its partition.
async fn retention_removes_only_the_old_days(backend: Backend) {
    let app = spawn_app(backend).await;
    let a = vin(42);
    let days = [T0 - 40 * DAY, T0 - 10 * DAY, T0];
    for (i, t0) in days.iter().enumerate() {
        app.post_readings(&mut encoder(&a, 31 + i as u64), 0..150, *t0)
            .await;
    }
    let db = app.stop().await;
    let store = open_store(&db).await;
    let now = T0 + 3_600_000;

    // Without a retention: nothing is removed (PostgreSQL: the days get their partitions).
    let first = store
        .maintain(Maintenance {
            now_ms: now,
            retention_days: None,
            days_ahead: 2,
        })
        .await
        .expect("maintenance");
    assert_eq!(
        (
            first.partitions_dropped,
            first.rows_deleted,
            first.rollup_deleted
        ),
        (0, 0, 0)
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM telemetry_data").await, 450);
    let partitions = |db: Arc<TestDb>| async move {
        let mut names: Vec<String> = db
            .query(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = 'telemetry_data'::regclass",
            )
            .await
            .into_iter()
            .map(|r| r[0].clone().unwrap())
            .collect();
        names.sort();
        names
    };
    if backend == Backend::Postgres {
        let names = partitions(db.clone()).await;
        for day in [
            "telemetry_20251015",
            "telemetry_20251114",
            "telemetry_20251124",
        ] {
            assert!(names.iter().any(|n| n == day), "{day} in {names:?}");
        }
        assert_eq!(
            db.count("SELECT COUNT(*) FROM telemetry_default").await,
            0,
            "the default partition was emptied into the days"
        );
    }

    let second = store
        .maintain(Maintenance {
            now_ms: now,
            retention_days: Some(30),
            days_ahead: 2,
        })
        .await
        .expect("maintenance");
    // 150 readings at 1 Hz from a whole minute: 3 minutes.
    assert_eq!(second.rollup_deleted, 3);
    match backend {
        Backend::Postgres => {
            assert_eq!((second.partitions_dropped, second.rows_deleted), (1, 0));
            let names = partitions(db.clone()).await;
            assert!(
                !names.iter().any(|n| n == "telemetry_20251015"),
                "{names:?}"
            );
            assert!(names.iter().any(|n| n == "telemetry_20251114"), "{names:?}");
        }
        Backend::Sqlite => assert_eq!(second.rows_deleted, 150),
    }
    let cutoff = days[0] + DAY;
    assert_eq!(
        db.count(&format!(
            "SELECT COUNT(*) FROM telemetry_data WHERE ts < {cutoff}"
        ))
        .await,
        0
    );
    assert_eq!(db.count("SELECT COUNT(*) FROM telemetry_data").await, 300);
    assert_eq!(
        db.count(&format!(
            "SELECT COUNT(*) FROM telemetry_rollup WHERE minute < {cutoff}"
        ))
        .await,
        0
    );
    assert_eq!(
        db.count("SELECT SUM(count) FROM telemetry_rollup").await,
        300
    );
    drop(store);

    // The server reads what is left, and takes new readings.
    let app = spawn_app_with(db, &[]).await;
    for (t0, expected) in [(days[0], 0), (days[1], 150), (days[2], 150)] {
        let body = app
            .ok_json(&format!(
                "/api/vehicles/{a}/telemetry?from={t0}&to={}&limit=1000",
                t0 + DAY
            ))
            .await;
        assert_eq!(
            body["readings"].as_array().unwrap().len(),
            expected,
            "day {t0}"
        );
    }
    app.post_readings(&mut encoder(&a, 39), 0..10, T0 + 600_000)
        .await;
    assert_eq!(
        app.db.count("SELECT COUNT(*) FROM telemetry_data").await,
        310
    );
}

both_stores!(
    rollup_buckets_equal_the_raw_buckets,
    retention_removes_only_the_old_days,
);

/// Today's unpartitioned layout (migrations 1 to 4), frozen here as a
/// database of the previous release holds it.
fn v4_schema() -> String {
    let cols: String = catalog()
        .signals()
        .iter()
        .map(|s| format!("\"{}\" DOUBLE PRECISION, ", s.name))
        .collect();
    format!(
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now());
         INSERT INTO schema_migrations (version) VALUES (1), (2), (3), (4);
         CREATE TABLE vehicles (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, vin TEXT NOT NULL UNIQUE,
             model TEXT, year INTEGER, first_seen BIGINT NOT NULL, last_seen BIGINT NOT NULL,
             resyncs BIGINT NOT NULL DEFAULT 0);
         CREATE TABLE telemetry_data (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
             vehicle_id BIGINT NOT NULL REFERENCES vehicles (id), session_id BIGINT NOT NULL,
             seq BIGINT NOT NULL, ts BIGINT NOT NULL, {cols}transmitted_mask BIGINT NOT NULL,
             keyframe BOOLEAN NOT NULL, UNIQUE (vehicle_id, session_id, seq));
         CREATE TABLE compression_stats (vehicle_id BIGINT NOT NULL REFERENCES vehicles (id), day DATE NOT NULL,
             readings BIGINT NOT NULL DEFAULT 0, fields_total BIGINT NOT NULL DEFAULT 0,
             fields_transmitted BIGINT NOT NULL DEFAULT 0, fields_skipped BIGINT NOT NULL DEFAULT 0,
             bytes_received BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (vehicle_id, day));
         CREATE TABLE sessions (vehicle_id BIGINT NOT NULL REFERENCES vehicles (id), session_id BIGINT NOT NULL,
             next_seq BIGINT NOT NULL, state BYTEA NOT NULL, updated_at BIGINT NOT NULL,
             PRIMARY KEY (vehicle_id, session_id));
         CREATE TABLE sink_cursors (sink TEXT PRIMARY KEY, position BIGINT NOT NULL, holder TEXT NOT NULL,
             lease_until BIGINT NOT NULL, updated_at BIGINT NOT NULL);
         CREATE TABLE health_probe (id INTEGER PRIMARY KEY, checked_at BIGINT NOT NULL);
         CREATE INDEX telemetry_vehicle_ts ON telemetry_data (vehicle_id, ts, session_id, seq);
         CREATE INDEX telemetry_vehicle_keyframe ON telemetry_data (vehicle_id, ts) WHERE keyframe;"
    )
}

/// A database in the unpartitioned layout, holding rows of two vehicles over
/// five days (2025-11-22 to 26) (some deleted, so ids have holes), migrates at the server's
/// start: every row is still there with its id, in its day's partition, and
/// readable through the history API; the rollup covers them; new readings
/// get larger ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioning_migration_keeps_every_row() {
    let db = Arc::new(TestDb::new(Backend::Postgres).await);
    db.query(&v4_schema()).await;
    let (a, b) = (vin(43), vin(44));
    let names: Vec<String> = catalog()
        .signals()
        .iter()
        .map(|s| format!("\"{}\"", s.name))
        .collect();
    let values: Vec<String> = (0..names.len())
        .map(|i| format!("g * {}.5", i + 1))
        .collect();
    db.query(&format!(
        "INSERT INTO vehicles (vin, first_seen, last_seen) VALUES ('{a}', {T0}, {T0}), ('{b}', {T0}, {T0});
         -- vehicle 1, session 5: one reading every 7 minutes over four days
         INSERT INTO telemetry_data (vehicle_id, session_id, seq, ts, {n}, transmitted_mask, keyframe)
         SELECT 1, 5, g, {start} + g * 420000, {v}, 127, g % 100 = 0 FROM generate_series(0, 800) g;
         -- vehicle 2, the seed form (session 0, seq = ts)
         INSERT INTO telemetry_data (vehicle_id, session_id, seq, ts, {n}, transmitted_mask, keyframe)
         SELECT 2, 0, {start} + g * 3600000, {start} + g * 3600000, {v}, 3, false FROM generate_series(0, 99) g;
         DELETE FROM telemetry_data WHERE id % 97 = 0;",
        n = names.join(", "),
        v = values.join(", "),
        start = T0 - 2 * DAY,
    ))
    .await;
    let snapshot = "SELECT id, vehicle_id, session_id, seq, ts, speed, transmitted_mask, keyframe
                    FROM telemetry_data ORDER BY id";
    let before = db.query(snapshot).await;
    assert_eq!(before.len(), 901 - 901 / 97);

    let app = spawn_app_with(db.clone(), &[]).await;
    let after = db.query(snapshot).await;
    assert_eq!(after, before, "every row, with its id and values");
    assert_eq!(
        db.query("SELECT relkind::text FROM pg_class WHERE relname = 'telemetry_data'")
            .await[0][0]
            .as_deref(),
        Some("p"),
        "partitioned"
    );
    assert_eq!(
        db.count(
            "SELECT COUNT(*) FROM pg_constraint WHERE contype = 'f' AND conrelid IN (
                 SELECT 'telemetry_data'::regclass
                 UNION ALL SELECT inhrelid FROM pg_inherits WHERE inhparent = 'telemetry_data'::regclass)"
        )
        .await,
        0,
        "no per-row foreign key check on readings"
    );
    // Rows live in their day's partition, none in the default one.
    let spread = db
        .query(
            "SELECT tableoid::regclass::text, COUNT(*) FROM telemetry_data GROUP BY 1 ORDER BY 1",
        )
        .await;
    let days: Vec<&str> = spread.iter().map(|r| r[0].as_deref().unwrap()).collect();
    assert_eq!(
        days,
        [
            "telemetry_20251122",
            "telemetry_20251123",
            "telemetry_20251124",
            "telemetry_20251125",
            "telemetry_20251126"
        ]
    );
    assert_eq!(
        db.count("SELECT SUM(count) FROM telemetry_rollup").await as usize,
        before.len(),
        "the rollup covers the migrated rows"
    );

    // The history API pages through every migrated row of vehicle 1.
    let (from, to) = (T0 - 3 * DAY, T0 + 4 * DAY);
    let mut seen = 0;
    let mut next = format!("/api/vehicles/{a}/telemetry?from={from}&to={to}&limit=300");
    loop {
        let body = app.ok_json(&next).await;
        seen += body["readings"].as_array().unwrap().len();
        match body["next_cursor"].as_str() {
            Some(c) => {
                next =
                    format!("/api/vehicles/{a}/telemetry?from={from}&to={to}&limit=300&cursor={c}")
            }
            None => break,
        }
    }
    let stored_a = before
        .iter()
        .filter(|r| r[1].as_deref() == Some("1"))
        .count();
    assert_eq!(seen, stored_a);
    // Bucket queries from the rollup agree with the raw rows.
    let rolled = app
        .ok_json(&format!(
            "/api/vehicles/{b}/telemetry?from={from}&to={to}&step={}",
            6 * 3_600_000
        ))
        .await;
    let raw = app
        .ok_json(&format!(
            "/api/vehicles/{b}/telemetry?from={}&to={to}&step={}",
            from + 1,
            6 * 3_600_000
        ))
        .await;
    assert_eq!(rolled["buckets"], raw["buckets"]);

    // New readings: ids above the migrated ones, stored once even if resent.
    let max_before: i64 = before.last().unwrap()[0]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    let mut enc = encoder(&a, 77);
    let again = batch(&mut enc, 0..20, T0);
    for _ in 0..2 {
        let resp = app.post_batch(&again).await;
        assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    }
    assert_eq!(
        db.count(&format!(
            "SELECT COUNT(*) FROM telemetry_data WHERE id > {max_before} AND session_id = 77"
        ))
        .await,
        20
    );
    assert_eq!(
        db.count("SELECT SUM(count) FROM telemetry_rollup").await as usize,
        before.len() + 20
    );
    app.stop().await;
}
