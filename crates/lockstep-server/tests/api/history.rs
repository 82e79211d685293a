//! Reading telemetry back: `GET /api/vehicles/{vin}/telemetry` pages,
//! buckets and CSV, and every refusal, on both stores.

use serde_json::Value;

use crate::both_stores;
use crate::helpers::*;

/// 2025-11-24T16:00:00Z, a whole hour: buckets of 10 s start at T0.
const T0: i64 = 1_764_000_000_000;

/// Every page of `path` (which has no cursor yet), following `next_cursor`;
/// `between` runs after the first page.
async fn all_pages(app: &TestApp, path: &str, between: impl AsyncFnOnce()) -> Vec<Value> {
    let mut between = Some(between);
    let mut readings = Vec::new();
    let mut next = path.to_owned();
    for page in 0.. {
        assert!(page < 100, "paging does not end");
        let body = app.ok_json(&next).await;
        readings.extend(body["readings"].as_array().unwrap().iter().cloned());
        if let Some(f) = between.take() {
            f().await;
        }
        match body["next_cursor"].as_str() {
            Some(c) => next = format!("{path}&cursor={c}"),
            None => break,
        }
    }
    readings
}

/// Pages cover a range once each, in timestamp order, also when readings
/// arrive between two pages; every field is what the database holds.
async fn pages_cover_the_range_once_under_concurrent_inserts(backend: Backend) {
    let app = spawn_app(backend).await;
    let (a, b) = (vin(31), vin(32));
    let mut enc = encoder(&a, 11);
    app.post_readings(&mut enc, 0..250, T0).await;
    app.post_readings(&mut encoder(&b, 12), 0..50, T0).await;

    let to = T0 + 1_000_000;
    let path = format!("/api/vehicles/{a}/telemetry?from={T0}&to={to}&limit=100");
    let readings = all_pages(&app, &path, async || {
        app.post_readings(&mut enc, 250..300, T0).await;
    })
    .await;
    let ts: Vec<i64> = readings
        .iter()
        .map(|r| r["timestamp"].as_i64().unwrap())
        .collect();
    let expected: Vec<i64> = (0..300).map(|k| T0 + k * 1000).collect();
    assert_eq!(ts, expected, "every reading once, ascending, none of {b}");

    // Values and transmitted lists as stored.
    let stored = app
        .db
        .query(&format!(
            "SELECT t.speed, t.latitude, t.transmitted_mask FROM telemetry_data t JOIN vehicles v ON v.id = t.vehicle_id
             WHERE v.vin = '{a}' AND t.ts = {}",
            T0 + 7000
        ))
        .await;
    let r = &readings[7];
    let close = |json: &Value, sql: &Option<String>| {
        let x = sql.as_deref().unwrap().parse::<f64>().unwrap();
        (json.as_f64().unwrap() - x).abs() < 1e-9
    };
    assert!(close(&r["speed"], &stored[0][0]), "{r} vs {stored:?}");
    assert!(close(&r["latitude"], &stored[0][1]), "{r} vs {stored:?}");
    let mask: u64 = stored[0][2].as_deref().unwrap().parse().unwrap();
    let cat = catalog();
    let names: Vec<&str> = cat.signals().iter().map(|s| s.name.as_str()).collect();
    let transmitted: Vec<&str> = (0..names.len())
        .filter(|i| mask & (1 << i) != 0)
        .map(|i| names[i])
        .collect();
    assert_eq!(r["transmitted"], serde_json::json!(transmitted));
    assert_eq!(
        readings[0]["transmitted"].as_array().unwrap().len(),
        7,
        "keyframe"
    );

    // from is inclusive, to exclusive; a page of the default size.
    let body = app
        .ok_json(&format!(
            "/api/vehicles/{a}/telemetry?from={}&to={}",
            T0 + 5000,
            T0 + 8000
        ))
        .await;
    let ts: Vec<i64> = body["readings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["timestamp"].as_i64().unwrap())
        .collect();
    assert_eq!(ts, [T0 + 5000, T0 + 6000, T0 + 7000]);
    assert_eq!(body["vin"], a.as_str());
    assert_eq!(body["next_cursor"], Value::Null);
}

/// `step` buckets agree with the raw readings aggregated here.
async fn buckets_match_the_raw_readings(backend: Backend) {
    let app = spawn_app(backend).await;
    let a = vin(33);
    app.post_readings(&mut encoder(&a, 5), 0..95, T0).await;
    let to = T0 + 95_000;
    let raw = all_pages(
        &app,
        &format!("/api/vehicles/{a}/telemetry?from={T0}&to={to}&limit=10000"),
        async || {},
    )
    .await;
    let body = app
        .ok_json(&format!(
            "/api/vehicles/{a}/telemetry?from={T0}&to={to}&step=10000"
        ))
        .await;
    assert_eq!(body["vin"], a.as_str());
    assert_eq!(body["step"], 10_000);
    let buckets = body["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 10);
    for (i, b) in buckets.iter().enumerate() {
        let start = T0 + i as i64 * 10_000;
        assert_eq!(b["timestamp"], start);
        let inside: Vec<&Value> = raw
            .iter()
            .filter(|r| (start..start + 10_000).contains(&r["timestamp"].as_i64().unwrap()))
            .collect();
        assert_eq!(b["count"], inside.len(), "bucket {i}");
        for s in catalog().signals() {
            let signal = s.name.as_str();
            let v: Vec<f64> = inside.iter().map(|r| r[signal].as_f64().unwrap()).collect();
            let min = v.iter().copied().fold(f64::INFINITY, f64::min);
            let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let agg = &b[signal];
            assert_eq!(
                agg["min"].as_f64().unwrap(),
                min,
                "{signal} min in bucket {i}"
            );
            assert_eq!(
                agg["max"].as_f64().unwrap(),
                max,
                "{signal} max in bucket {i}"
            );
            let got = agg["mean"].as_f64().unwrap();
            assert!(
                (got - mean).abs() <= 1e-9 * mean.abs().max(1.0),
                "{signal} mean {got} vs {mean}"
            );
        }
    }
    // A range that starts mid-bucket still uses epoch-aligned buckets.
    let body = app
        .ok_json(&format!(
            "/api/vehicles/{a}/telemetry?from={}&to={}&step=60000",
            T0 + 30_000,
            to
        ))
        .await;
    let counts: Vec<(i64, u64)> = body["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["timestamp"].as_i64().unwrap(),
                b["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(counts, [(T0, 30), (T0 + 60_000, 35)]);
}

/// `format=csv`: a header and one line per reading, streamed.
async fn csv_export_has_every_reading(backend: Backend) {
    let app = spawn_app(backend).await;
    let a = vin(34);
    app.post_readings(&mut encoder(&a, 9), 0..120, T0).await;
    let resp = app
        .get(&format!(
            "/api/vehicles/{a}/telemetry?from={T0}&to={}&format=csv",
            T0 + 100_000
        ))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/csv; charset=utf-8");
    let text = resp.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "timestamp,session_id,seq,speed,battery,power,heading,latitude,longitude,altitude,transmitted"
    );
    assert_eq!(lines.len(), 101);
    assert!(
        lines[1].starts_with(&format!("{T0},0000000000000009,0,")),
        "{}",
        lines[1]
    );
    assert!(lines[1].ends_with(",speed|battery|power|heading|latitude|longitude|altitude"));
    assert!(lines[100].starts_with(&format!("{},", T0 + 99_000)));
}

/// Refusals: JSON bodies that say what was wrong.
async fn bad_history_requests_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let a = vin(35);
    app.post_readings(&mut encoder(&a, 3), 0..5, T0).await;
    let base = format!("/api/vehicles/{a}/telemetry");
    let cases = [
        (
            format!("/api/vehicles/{}/telemetry?from=0&to=10", vin(36)),
            404,
            "no vehicle",
        ),
        (
            "/api/vehicles/NOTAVIN/telemetry?from=0&to=10".into(),
            422,
            "invalid vehicle_vin",
        ),
        (format!("{base}?to=10"), 400, "from"),
        (format!("{base}?from=10&to=10"), 400, "less than"),
        (format!("{base}?from=a&to=10"), 400, "integer"),
        (format!("{base}?from=0&to=10&limit=10001"), 400, "limit"),
        (format!("{base}?from=0&to=10&cursor=nope"), 400, "cursor"),
        (format!("{base}?from=0&to=10&step=-5"), 400, "step"),
        (
            format!("{base}?from=0&to={}&step=1000", T0),
            400,
            "larger step",
        ),
        (format!("{base}?from=0&to=10&format=xml"), 400, "format"),
    ];
    for (path, status, says) in cases {
        let resp = app.get(&path).await;
        assert_eq!(resp.status(), status, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["status"], "error");
        let msg = body["error"].as_str().unwrap();
        assert!(msg.contains(says), "{path}: {msg}");
    }
}

/// Whole-minute steps over whole-minute ranges read `telemetry_rollup`
/// (here one of its rows is altered after ingest, to tell the sources
/// apart); other steps still aggregate the raw rows.
async fn minute_steps_read_the_rollup(backend: Backend) {
    let app = spawn_app(backend).await;
    let a = vin(37);
    app.post_readings(&mut encoder(&a, 4), 0..60, T0).await;
    app.db
        .query(&format!(
            "UPDATE telemetry_rollup SET count = 999, speed_min = 1.0, speed_max = 2.0, speed_sum = 30.0, speed_n = 10,
                    battery_min = NULL, battery_max = NULL, battery_sum = 0, battery_n = 0
             WHERE vehicle_vin = '{a}' AND minute = {T0}"
        ))
        .await;
    let path = format!("/api/vehicles/{a}/telemetry?from={T0}&to={}", T0 + 60_000);
    let rolled = app.ok_json(&format!("{path}&step=60000")).await;
    let b = &rolled["buckets"][0];
    assert_eq!(b["timestamp"], T0);
    assert_eq!(b["count"], 999);
    assert_eq!(
        b["speed"],
        serde_json::json!({"min": 1.0, "max": 2.0, "mean": 3.0})
    );
    assert_eq!(b["battery"], Value::Null);
    let raw = app.ok_json(&format!("{path}&step=30000")).await;
    assert_eq!(raw["buckets"][0]["count"], 30);
}

both_stores!(
    minute_steps_read_the_rollup,
    pages_cover_the_range_once_under_concurrent_inserts,
    buckets_match_the_raw_readings,
    csv_export_has_every_reading,
    bad_history_requests_are_refused,
);
