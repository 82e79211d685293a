//! Vehicles and statistics: the paged list, one vehicle's detail, PATCH of
//! model/year, resyncs counted durably, daily and fleet statistics.

use futures_util::StreamExt as _;
use serde_json::{Value, json};

use crate::both_stores;
use crate::helpers::*;

const T0: i64 = 1_764_000_000_000;

/// The admin token the PATCH tests' servers take (PATCH is an admin route).
const ADMIN: &str = "vehicles-test-admin-token";

async fn patch(app: &TestApp, vin: &str, content_type: &str, body: &str) -> reqwest::Response {
    app.http
        .patch(format!("{}/api/vehicles/{vin}", app.addr))
        .bearer_auth(ADMIN)
        .header("content-type", content_type)
        .body(body.to_owned())
        .send()
        .await
        .expect("request")
}

/// The list pages by VIN; the detail and PATCH agree with it; PATCH refuses
/// what it does not take.
async fn vehicles_are_paged_described_and_patched(backend: Backend) {
    let db = std::sync::Arc::new(TestDb::new(backend).await);
    let app = spawn_app_with(db, &["--admin-token", ADMIN]).await;
    for n in [43, 41, 42] {
        app.post_readings(&mut encoder(&vin(n), n.into()), 0..10, T0)
            .await;
    }
    app.stats_written().await;
    let first = app.ok_json("/api/vehicles?limit=2").await;
    let vins: Vec<&str> = first["vehicles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["vin"].as_str().unwrap())
        .collect();
    assert_eq!(vins, [vin(41), vin(42)]);
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let second = app
        .ok_json(&format!("/api/vehicles?limit=2&cursor={cursor}"))
        .await;
    assert_eq!(second["vehicles"][0]["vin"], vin(43).as_str());
    assert_eq!(second["next_cursor"], Value::Null);
    let v = &second["vehicles"][0];
    assert_eq!(
        (v["readings"].clone(), v["model"].clone(), v["year"].clone()),
        (json!(10), Value::Null, Value::Null)
    );
    assert!(v["first_seen_ms"].as_i64().unwrap() <= v["last_seen_ms"].as_i64().unwrap());
    for bad in ["limit=0", "limit=1001", "limit=x", "cursor=zz"] {
        let resp = app.get(&format!("/api/vehicles?{bad}")).await;
        assert_eq!(resp.status(), 400, "{bad}");
    }

    let v41 = vin(41);
    let detail = app.ok_json(&format!("/api/vehicles/{v41}")).await;
    assert_eq!(detail["vin"], v41.as_str());
    assert_eq!(detail["readings"], 10);
    assert_eq!(detail["sessions"], 1);
    assert_eq!(detail["resyncs"], 0);
    assert_eq!(detail["last_keyframe_ms"], T0);
    assert_eq!(detail["model"], Value::Null);

    let resp = patch(
        &app,
        &v41,
        "application/json",
        r#"{"model":"Model 3","year":2024}"#,
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        (body["model"].clone(), body["year"].clone()),
        (json!("Model 3"), json!(2024))
    );
    assert_eq!(body["readings"], 10);
    // An absent field stays; null clears.
    let body: Value = patch(&app, &v41, "application/json", r#"{"year":null}"#)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (body["model"].clone(), body["year"].clone()),
        (json!("Model 3"), Value::Null)
    );
    let listed = app.ok_json("/api/vehicles").await;
    assert_eq!(listed["vehicles"][0]["model"], "Model 3");
    let stored = app
        .db
        .query(&format!(
            "SELECT model, year FROM vehicles WHERE vin = '{v41}'"
        ))
        .await;
    assert_eq!(stored, [[Some("Model 3".to_owned()), None]]);

    let long = format!(r#"{{"model":"{}"}}"#, "x".repeat(65));
    let refused = [
        (
            v41.clone(),
            "text/plain",
            r#"{"year":2020}"#.to_owned(),
            415,
        ),
        (
            v41.clone(),
            "application/json",
            r#"{"year":1800}"#.into(),
            422,
        ),
        (v41.clone(), "application/json", long, 422),
        (
            v41.clone(),
            "application/json",
            r#"{"colour":"red"}"#.into(),
            422,
        ),
        (v41.clone(), "application/json", "not json".into(), 422),
        (vin(49), "application/json", r#"{"year":2020}"#.into(), 404),
        (
            "NOTAVIN".into(),
            "application/json",
            r#"{"year":2020}"#.into(),
            422,
        ),
    ];
    for (v, ct, body, status) in refused {
        let resp = patch(&app, &v, ct, &body).await;
        assert_eq!(resp.status(), status, "{v} {ct} {body}");
        let e: Value = resp.json().await.unwrap();
        assert_eq!(e["status"], "error", "{body}");
    }
    assert_eq!(
        app.get(&format!("/api/vehicles/{}", vin(49)))
            .await
            .status(),
        404
    );
    assert_eq!(app.get("/api/vehicles/NOTAVIN").await.status(), 422);
}

/// A batch refused with 409 (a gap) counts one resync, stored with the vehicle.
async fn resyncs_are_counted_durably(backend: Backend) {
    let app = spawn_app(backend).await;
    let v = vin(44);
    let mut enc = encoder(&v, 77);
    app.post_readings(&mut enc, 0..10, T0).await;
    let _lost = batch(&mut enc, 10..20, T0);
    let resp = app.post_batch(&batch(&mut enc, 20..30, T0)).await;
    assert_eq!(resp.status(), 409);
    let detail = app.ok_json(&format!("/api/vehicles/{v}")).await;
    assert_eq!(detail["resyncs"], 1);
    let db = app.stop().await;
    assert_eq!(
        db.count(&format!("SELECT resyncs FROM vehicles WHERE vin = '{v}'"))
            .await,
        1
    );
}

/// Daily statistics per vehicle and fleet totals match what was ingested.
async fn statistics_per_day_and_for_the_fleet(backend: Backend) {
    let app = spawn_app(backend).await;
    let (a, b) = (vin(45), vin(46));
    app.post_readings(&mut encoder(&a, 1), 0..30, T0).await;
    app.post_readings(&mut encoder(&b, 2), 0..20, T0).await;
    app.stats_written().await;
    let today = app
        .db
        .query("SELECT day FROM compression_stats LIMIT 1")
        .await[0][0]
        .clone()
        .unwrap();
    let body = app
        .ok_json(&format!("/api/vehicles/{a}/stats?from={today}&to={today}"))
        .await;
    assert_eq!(body["vin"], a.as_str());
    let days = body["days"].as_array().unwrap();
    assert_eq!(days.len(), 1);
    let d = &days[0];
    assert_eq!(d["day"], today.as_str());
    assert_eq!(d["readings"], 30);
    let (total, tx, skipped) = (
        d["fields_total"].as_u64().unwrap(),
        d["fields_transmitted"].as_u64().unwrap(),
        d["fields_skipped"].as_u64().unwrap(),
    );
    assert_eq!(total, 30 * 7);
    assert_eq!(tx + skipped, total);
    let ratio = d["compression_ratio"].as_f64().unwrap();
    assert!((ratio - skipped as f64 / total as f64).abs() < 1e-12);
    let none = app
        .ok_json(&format!(
            "/api/vehicles/{a}/stats?from=2000-01-01&to=2000-12-31"
        ))
        .await;
    assert_eq!(none["days"], json!([]));

    let fleet = app.ok_json("/api/stats").await;
    assert_eq!(fleet["vehicles"], 2);
    assert_eq!(fleet["readings"], 50);
    assert_eq!(fleet["fields_total"], 50 * 7);
    let f = |k: &str| fleet[k].as_u64().unwrap();
    assert_eq!(
        f("fields_transmitted") + f("fields_skipped"),
        f("fields_total")
    );

    for (path, status) in [
        (format!("/api/vehicles/{a}/stats?from=2024-02-30"), 400),
        (
            format!("/api/vehicles/{a}/stats?from=2024-03-02&to=2024-03-01"),
            400,
        ),
        (format!("/api/vehicles/{}/stats", vin(47)), 404),
    ] {
        assert_eq!(app.get(&path).await.status(), status, "{path}");
    }
}

both_stores!(
    vehicles_are_paged_described_and_patched,
    resyncs_are_counted_durably,
    statistics_per_day_and_for_the_fleet,
    a_large_fleet_is_paged_and_its_statistics_stay_bounded,
);

/// Every page of a VIN-ordered list (`limit=1000`), following `next_key` as
/// `param`: the VINs in order, each once.
async fn walk(app: &TestApp, path: &str, param: &str, next_key: &str) -> (Vec<Value>, usize) {
    let (mut items, mut pages) = (Vec::new(), 0);
    let mut next: Option<String> = None;
    loop {
        let url = match &next {
            Some(c) => format!("{path}?limit=1000&{param}={c}"),
            None => format!("{path}?limit=1000"),
        };
        let page = app.ok_json(&url).await;
        pages += 1;
        items.extend(page["vehicles"].as_array().unwrap().iter().cloned());
        match page[next_key].as_str() {
            Some(c) => next = Some(c.to_owned()),
            None => return (items, pages),
        }
    }
}

/// A fleet larger than one page and than what a statistics message lists:
/// `/api/vehicles` and `/api/stats/vehicles` page through every vehicle
/// once; the `compression_stats` message carries the fleet totals, plus
/// only the vehicles a client subscribed to.
async fn a_large_fleet_is_paged_and_its_statistics_stay_bounded(backend: Backend) {
    let db = std::sync::Arc::new(TestDb::new(backend).await);
    let app = spawn_app_with(db, &["--ip-requests-per-s", "100000"]).await;
    const N: u32 = 1050;
    let posts = (1..=N).map(|n| {
        let app = &app;
        async move {
            let mut enc = encoder(&vin(n), n.into());
            let resp = app.post_batch(&batch(&mut enc, 0..1, T0)).await;
            assert_eq!(resp.status(), 200);
        }
    });
    futures_util::stream::iter(posts)
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    let want: Vec<String> = (1..=N).map(vin).collect();

    let (vehicles, pages) = walk(&app, "/api/vehicles", "cursor", "next_cursor").await;
    assert_eq!(pages, 2);
    let got: Vec<&str> = vehicles
        .iter()
        .map(|v| v["vin"].as_str().unwrap())
        .collect();
    assert_eq!(got, want, "every vehicle once, by VIN");

    let (stats, pages) = walk(&app, "/api/stats/vehicles", "after", "next_after").await;
    assert_eq!(pages, 2);
    let got: Vec<&str> = stats.iter().map(|v| v["vin"].as_str().unwrap()).collect();
    assert_eq!(got, want, "every vehicle once, by VIN");
    let s = &stats[4];
    assert_eq!(s["readings"], 1);
    assert_eq!(
        s["fields_total"].as_u64().unwrap(),
        s["fields_transmitted"].as_u64().unwrap() + s["fields_skipped"].as_u64().unwrap()
    );
    let page = app
        .ok_json(&format!("/api/stats/vehicles?limit=2&after={}", vin(N - 2)))
        .await;
    assert_eq!(page["vehicles"][0]["vin"], vin(N - 1).as_str());
    assert_eq!(page["vehicles"][1]["vin"], vin(N).as_str());
    assert_eq!(page["next_after"], Value::Null);
    for bad in ["limit=0", "limit=1001", "limit=x", "after=nope"] {
        let resp = app.get(&format!("/api/stats/vehicles?{bad}")).await;
        assert_eq!(resp.status(), 400, "{bad}");
    }

    // Without a filter: the fleet totals, no vehicle listed.
    const WAIT: std::time::Duration = std::time::Duration::from_secs(10);
    let mut all = app.ws().await;
    let s = all.until(WAIT, "compression_stats", |_| true).await;
    assert_eq!(s["data"]["total_readings"], N);
    assert_eq!(s["data"]["vehicles"], json!({}));

    // Subscribed: the totals and exactly the subscribed vehicles, as they change.
    let mut mine = app.ws().await;
    assert_eq!(mine.next_json(WAIT).await["type"], "history");
    mine.send_json(json!({"type": "subscribe", "vins": [vin(5), vin(7)]}))
        .await;
    let mut enc = encoder(&vin(5), 0x55);
    assert_eq!(
        app.post_batch(&batch(&mut enc, 0..3, T0 + 10_000))
            .await
            .status(),
        200
    );
    let s = mine
        .until(WAIT, "compression_stats", |m| {
            m["data"]["vehicles"][vin(5)]["readings"] == 4
        })
        .await;
    let listed: Vec<&String> = s["data"]["vehicles"].as_object().unwrap().keys().collect();
    assert_eq!(listed, [&vin(5), &vin(7)]);
    assert_eq!(s["data"]["total_readings"], N + 3);
    // The unfiltered client's next tick: totals only.
    let s = all
        .until(WAIT, "compression_stats", |m| {
            m["data"]["total_readings"] == N + 3
        })
        .await;
    assert_eq!(s["data"]["vehicles"], json!({}));
}
