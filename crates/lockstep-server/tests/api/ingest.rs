//! Both wire forms end to end: acknowledgement bodies, values in the store
//! within tolerance, dedupe of retries, restart resume.

use std::sync::Arc;

use lockstep_codec::SeedPredictor;
use lockstep_codec::seed::SEED_TOLERANCES;
use serde_json::Value;

use crate::both_stores;
use crate::helpers::*;

both_stores!(
    seed_form_is_reconstructed_stored_and_deduplicated,
    lockstep_form_is_stored_within_tolerance_and_deduplicated,
    restart_resumes_the_session
);

const T0: i64 = 1_764_000_000_000;

async fn seed_form_is_reconstructed_stored_and_deduplicated(backend: Backend) {
    let app = spawn_app(backend).await;
    let v = vin(1);
    let mut edge = SeedPredictor::default();
    let mut actual = Vec::new();
    let (mut sent_tx, mut sent_skip) = (0, 0);
    for k in 0..60 {
        let r = drive(k, T0);
        let a = [
            r.values[0].unwrap(),
            r.values[1].unwrap(),
            r.values[2].unwrap(),
            r.values[3].unwrap(),
        ];
        let wire = edge.encode(&v, r.timestamp_ms, a, SEED_TOLERANCES);
        let resp = app.post_seed(&wire).await;
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["status"], "success");
        let (tx, skip) = (
            body["transmitted_fields"].as_u64().unwrap(),
            body["skipped_fields"].as_u64().unwrap(),
        );
        let ratio = body["compression_ratio"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&ratio));
        assert!(
            body.get("session_id").is_none(),
            "the seed form's answer keeps the seed's shape"
        );
        sent_tx += tx;
        sent_skip += skip;
        actual.push((r.timestamp_ms, a, wire));
    }
    assert!(sent_skip > 0, "the predictor skipped some fields");

    // A retry of an already stored reading: acknowledged, not stored twice.
    let resp = app.post_seed(&actual[10].2).await;
    assert_eq!(resp.status(), 200);

    let rows = app.db.query("SELECT t.ts, t.speed, t.battery, t.power, t.heading, t.session_id, t.seq, t.latitude FROM telemetry_data t ORDER BY t.ts").await;
    assert_eq!(rows.len(), 60);
    for (row, (ts, a, _)) in rows.iter().zip(&actual) {
        assert_eq!(row[0].as_deref().unwrap().parse::<i64>().unwrap(), *ts);
        for i in 0..4 {
            let stored: f64 = row[1 + i].as_deref().unwrap().parse().unwrap();
            assert!(
                (stored - a[i]).abs() <= SEED_TOLERANCES[i] + 1e-9,
                "field {i} at {ts}: stored {stored}, actual {}",
                a[i]
            );
        }
        assert_eq!(row[5].as_deref(), Some("0"), "seed rows have session 0");
        assert_eq!(
            row[6].as_deref().unwrap().parse::<i64>().unwrap(),
            *ts,
            "seed rows use the timestamp as seq"
        );
        assert_eq!(row[7], None);
    }
    app.stats_written().await;
    let stats = app.db.query("SELECT SUM(readings), SUM(fields_transmitted), SUM(fields_skipped) FROM compression_stats").await;
    assert_eq!(stats[0][0].as_deref(), Some("60"));
    assert_eq!(
        stats[0][1].as_deref().unwrap().parse::<u64>().unwrap(),
        sent_tx
    );
    assert_eq!(
        stats[0][2].as_deref().unwrap().parse::<u64>().unwrap(),
        sent_skip
    );

    let status = app.status().await;
    assert_eq!(status["status"], "healthy");
    assert_eq!(status["vehicles"], 1);
    assert_eq!(
        status["compression_stats"]["skipped_readings"]
            .as_u64()
            .unwrap(),
        sent_skip
    );
    let vehicles = app.get_json("/api/vehicles").await;
    assert_eq!(vehicles["vehicles"][0]["vin"], v.as_str());
    assert_eq!(vehicles["vehicles"][0]["readings"], 60);
    assert_eq!(vehicles["next_cursor"], Value::Null);
}

async fn lockstep_form_is_stored_within_tolerance_and_deduplicated(backend: Backend) {
    let app = spawn_app(backend).await;
    let cat = catalog();
    let v = vin(2);
    let session = 0x0123_4567_89ab_cdef_u64;
    let mut enc = encoder(&v, session);
    // The last batch is larger than the PostgreSQL store's small-batch limit
    // (256 rows), so both of its insert paths are checked.
    let ranges = [0..50, 50..100, 100..150, 150..450];
    let total = 450;
    let batches: Vec<_> = ranges
        .iter()
        .map(|r| batch(&mut enc, r.clone(), T0))
        .collect();
    let mut skipped = 0;
    for (range, batch) in ranges.iter().zip(&batches) {
        let resp = app.post_batch(batch).await;
        assert_eq!(resp.status(), 200);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["session_id"], "0123456789abcdef");
        assert_eq!(body["first_seq"], range.start as u64);
        assert_eq!(body["last_seq"], range.end as u64 - 1);
        assert_eq!(body["duplicate"], false);
        skipped += body["skipped_fields"].as_u64().unwrap();
    }
    assert!(skipped > 0, "the codec skipped fields");

    // Retry of an acknowledged batch: duplicate, nothing stored.
    let resp = app.post_batch(&batches[1]).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["duplicate"], true);
    assert_eq!(
        app.db.count("SELECT COUNT(*) FROM telemetry_data").await,
        total
    );

    let cols = "seq, ts, speed, battery, power, heading, latitude, longitude, altitude, transmitted_mask, keyframe, session_id";
    let rows = app
        .db
        .query(&format!("SELECT {cols} FROM telemetry_data ORDER BY seq"))
        .await;
    assert_eq!(rows.len(), total as usize);
    let f = |s: &Option<String>| s.as_deref().unwrap().parse::<f64>().unwrap();
    for (k, row) in rows.iter().enumerate() {
        let r = drive(k, T0);
        assert_eq!(f(&row[0]) as usize, k);
        assert_eq!(f(&row[1]) as i64, r.timestamp_ms);
        for (ch, sig) in cat.signals().iter().enumerate() {
            if matches!(sig.name.as_str(), "latitude" | "longitude") {
                continue;
            }
            let (stored, actual) = (f(&row[2 + ch]), r.values[ch].unwrap());
            let mut err = (stored - actual).abs();
            if sig.name == "heading" {
                err = err.min(360.0 - err);
            }
            // The documented bound (docs/protocol.md, section 5), against the raw
            // value; the only slack is the rounding of this subtraction.
            let rounding = 4.0 * f64::EPSILON * stored.abs().max(actual.abs());
            assert!(
                err <= sig.tolerance() + rounding,
                "{} at seq {k}: stored {stored}, actual {actual}",
                sig.name
            );
        }
        // Position: the documented 2-D distance (`dist2`, between quantised
        // positions) within the tolerance.
        let q = |v: f64| (v * 1e7).round() as i64;
        let stored = (q(f(&row[6])), q(f(&row[7])));
        let actual = (q(r.values[4].unwrap()), q(r.values[5].unwrap()));
        let d2 = lockstep_codec::fixed::dist2_mm(actual, stored);
        let tol = i128::from(cat.signals()[4].tolerance_q);
        assert!(
            d2 <= tol * tol,
            "position at seq {k} off by {} mm",
            (d2 as f64).sqrt()
        );
    }
    assert_eq!(
        rows[0][10].as_deref().map(|k| k == "1" || k == "t"),
        Some(true),
        "the first reading is a keyframe"
    );
    assert_ne!(rows[0][9].as_deref(), Some("0"));
    assert_eq!(
        rows[0][11].as_deref().unwrap().parse::<i64>().unwrap(),
        session as i64
    );
    assert_eq!(app.db.count("SELECT COUNT(*) FROM sessions").await, 1);
    app.stats_written().await;
    assert_eq!(
        app.db
            .count("SELECT SUM(readings) FROM compression_stats")
            .await,
        total
    );
}

async fn restart_resumes_the_session(backend: Backend) {
    let db = Arc::new(TestDb::new(backend).await);
    let v = vin(3);
    let mut enc = encoder(&v, 77);
    let first = batch(&mut enc, 0..30, T0);
    let second = batch(&mut enc, 30..60, T0);

    let app = spawn_app_with(db.clone(), &[]).await;
    assert_eq!(app.post_batch(&first).await.status(), 200);
    let db = app.stop().await;

    // A new process: the session's codec state comes from the store.
    let app = spawn_app_with(db, &[]).await;
    let resp = app.post_batch(&second).await;
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    assert_eq!(
        app.post_batch(&first).await.json::<Value>().await.unwrap()["duplicate"],
        true
    );
    assert_eq!(
        app.db.count("SELECT COUNT(*) FROM telemetry_data").await,
        60
    );
}
