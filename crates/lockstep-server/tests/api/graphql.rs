//! GraphQL at `/graphql`: queries share the REST limits and answers; the
//! `telemetry` subscription (graphql-transport-ws) receives live readings
//! from the same hub as `/ws`; depth is bounded.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::both_stores;
use crate::helpers::*;

const T0: i64 = 1_764_000_000_000;

async fn graphql(app: &TestApp, query: &str) -> Value {
    let resp = app
        .http
        .post(format!("{}/graphql", app.addr))
        .json(&json!({ "query": query }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

async fn queries_read_vehicles_telemetry_buckets_and_stats(backend: Backend) {
    let app = spawn_app(backend).await;
    let v = vin(51);
    app.post_readings(&mut encoder(&v, 8), 0..30, T0).await;
    app.stats_written().await;
    let q = format!(
        r#"{{
          vehicles(limit: 10) {{ vehicles {{ vin readings model }} nextCursor }}
          telemetry(vin: "{v}", from: {T0}, to: {to}, limit: 20) {{
            vin readings {{ timestamp values {{ name value }} transmitted }} nextCursor
          }}
          buckets(vin: "{v}", from: {T0}, to: {to}, step: 10000) {{ timestamp count signals {{ name min max mean }} }}
          stats {{ vehicles readings fieldsTotal }}
        }}"#,
        to = T0 + 30_000
    );
    let body = graphql(&app, &q).await;
    assert_eq!(body.get("errors"), None, "{body}");
    let d = &body["data"];
    assert_eq!(d["vehicles"]["vehicles"][0]["vin"], v.as_str());
    assert_eq!(d["vehicles"]["vehicles"][0]["readings"], 30);
    let page = &d["telemetry"];
    assert_eq!(page["readings"].as_array().unwrap().len(), 20);
    assert_eq!(page["readings"][3]["timestamp"], T0 + 3000);
    assert_eq!(page["readings"][0]["values"][0]["name"], "speed");
    assert!(page["nextCursor"].is_string());
    // The REST page holds the same values.
    let rest = app
        .ok_json(&format!(
            "/api/vehicles/{v}/telemetry?from={T0}&to={}&limit=20",
            T0 + 30_000
        ))
        .await;
    assert_eq!(
        page["readings"][5]["values"][0]["value"],
        rest["readings"][5]["speed"]
    );
    let buckets = d["buckets"].as_array().unwrap();
    assert_eq!(
        buckets
            .iter()
            .map(|b| b["count"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [10, 10, 10]
    );
    assert_eq!(d["stats"]["readings"], 30);

    let missing = graphql(
        &app,
        &format!(
            r#"{{ telemetry(vin: "{}", from: 0, to: 10) {{ vin }} }}"#,
            vin(59)
        ),
    )
    .await;
    assert_eq!(
        missing["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{missing}"
    );
    let bad = graphql(
        &app,
        &format!(r#"{{ telemetry(vin: "{v}", from: 10, to: 10) {{ vin }} }}"#),
    )
    .await;
    assert_eq!(
        bad["errors"][0]["extensions"]["code"], "BAD_REQUEST",
        "{bad}"
    );
}

both_stores!(
    queries_read_vehicles_telemetry_buckets_and_stats,
    vehicle_detail_and_daily_stats_match_rest
);

/// `vehicle(vin)` and `dailyStats(vin, from, to)` answer what
/// `GET /api/vehicles/{vin}` and `GET /api/vehicles/{vin}/stats` answer, with
/// the same errors.
async fn vehicle_detail_and_daily_stats_match_rest(backend: Backend) {
    let app = spawn_app(backend).await;
    let v = vin(53);
    let mut enc = encoder(&v, 9);
    app.post_readings(&mut enc, 0..30, T0).await;
    // A gap: one resync answered, counted in the vehicle's health.
    let _lost = batch(&mut enc, 30..35, T0);
    assert_eq!(
        app.post_batch(&batch(&mut enc, 35..40, T0)).await.status(),
        409
    );
    app.stats_written().await;
    let q = format!(
        r#"{{
          vehicle(vin: "{v}") {{ vin model year firstSeenMs lastSeenMs readings sessions resyncs lastKeyframeMs }}
          dailyStats(vin: "{v}") {{ vin days {{ day readings fieldsTotal fieldsTransmitted fieldsSkipped compressionRatio }} }}
        }}"#
    );
    let body = graphql(&app, &q).await;
    assert_eq!(body.get("errors"), None, "{body}");
    let d = &body["data"];
    let rest = app.ok_json(&format!("/api/vehicles/{v}")).await;
    let g = &d["vehicle"];
    for (gql, json) in [
        ("vin", "vin"),
        ("model", "model"),
        ("year", "year"),
        ("firstSeenMs", "first_seen_ms"),
        ("lastSeenMs", "last_seen_ms"),
        ("readings", "readings"),
        ("sessions", "sessions"),
        ("resyncs", "resyncs"),
        ("lastKeyframeMs", "last_keyframe_ms"),
    ] {
        assert_eq!(g[gql], rest[json], "{gql}: {g} vs {rest}");
    }
    assert_eq!(g["readings"], 30);
    assert_eq!(g["resyncs"], 1);
    let rest_stats = app.ok_json(&format!("/api/vehicles/{v}/stats")).await;
    let days = d["dailyStats"]["days"].as_array().unwrap();
    let rest_days = rest_stats["days"].as_array().unwrap();
    assert_eq!(days.len(), rest_days.len());
    assert!(!days.is_empty());
    for (g, r) in days.iter().zip(rest_days) {
        assert_eq!(g["day"], r["day"]);
        assert_eq!(g["readings"], r["readings"]);
        assert_eq!(g["fieldsTotal"], r["fields_total"]);
        assert_eq!(g["fieldsTransmitted"], r["fields_transmitted"]);
        assert_eq!(g["fieldsSkipped"], r["fields_skipped"]);
        assert_eq!(g["compressionRatio"], r["compression_ratio"]);
    }
    let total: u64 = days.iter().map(|d| d["readings"].as_u64().unwrap()).sum();
    assert_eq!(total, 30);
    // A range: the days within it only (none before 2000-01-02).
    let day = days[0]["day"].as_str().unwrap();
    let one = graphql(
        &app,
        &format!(
            r#"{{ dailyStats(vin: "{v}", from: "{day}", to: "{day}") {{ days {{ day }} }} }}"#
        ),
    )
    .await;
    assert_eq!(one["data"]["dailyStats"]["days"][0]["day"], day, "{one}");
    let none = graphql(
        &app,
        &format!(r#"{{ dailyStats(vin: "{v}", to: "2000-01-01") {{ days {{ day }} }} }}"#),
    )
    .await;
    assert_eq!(none["data"]["dailyStats"]["days"], json!([]), "{none}");

    // The REST errors, as codes.
    let code = async |q: String| {
        let b = graphql(&app, &q).await;
        b["errors"][0]["extensions"]["code"].clone()
    };
    assert_eq!(
        code(format!(r#"{{ vehicle(vin: "{}") {{ vin }} }}"#, vin(58))).await,
        "NOT_FOUND"
    );
    assert_eq!(
        code(r#"{ vehicle(vin: "not-a-vin") { vin } }"#.to_owned()).await,
        "INVALID"
    );
    assert_eq!(
        code(format!(
            r#"{{ dailyStats(vin: "{v}", from: "yesterday") {{ vin }} }}"#
        ))
        .await,
        "BAD_REQUEST"
    );
    assert_eq!(
        code(format!(r#"{{ dailyStats(vin: "{}") {{ vin }} }}"#, vin(58))).await,
        "NOT_FOUND"
    );
}

/// The complexity bound: a list counts its selection once per row it may
/// return, so one full page of readings (10,000) is allowed and three are
/// refused before anything is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_complex_queries_are_refused() {
    let app = spawn_app(Backend::Sqlite).await;
    let v = vin(54);
    app.post_readings(&mut encoder(&v, 4), 0..5, T0).await;
    let page = |alias: &str| {
        format!(
            r#"{alias}: telemetry(vin: "{v}", from: {T0}, to: {to}, limit: 10000) {{ readings {{ timestamp values {{ name value }} transmitted }} }}"#,
            to = T0 + 10_000
        )
    };
    let one = graphql(&app, &format!("{{ {} }}", page("a"))).await;
    assert_eq!(one.get("errors"), None, "{one}");
    assert_eq!(one["data"]["a"]["readings"].as_array().unwrap().len(), 5);
    let three = graphql(
        &app,
        &format!("{{ {} {} {} }}", page("a"), page("b"), page("c")),
    )
    .await;
    let msg = three["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("too complex"), "{three}");
    assert_eq!(three.get("data").and_then(|d| d.get("a")), None, "{three}");
    // Buckets count per bucket of the range: 100,000 one-second buckets are refused…
    let many = graphql(
        &app,
        &format!(
            r#"{{ buckets(vin: "{v}", from: {T0}, to: {to}, step: 1000) {{ timestamp count signals {{ name min max mean }} }} }}"#,
            to = T0 + 100_000_000
        ),
    )
    .await;
    assert!(
        many["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("too complex"),
        "{many}"
    );
    // …a thousand are not.
    let some = graphql(
        &app,
        &format!(
            r#"{{ buckets(vin: "{v}", from: {T0}, to: {to}, step: 1000) {{ timestamp count }} }}"#,
            to = T0 + 1_000_000
        ),
    )
    .await;
    assert_eq!(some.get("errors"), None, "{some}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_deep_queries_are_refused() {
    let app = spawn_app(Backend::Sqlite).await;
    let deep = "{ __schema { types { fields { type { ofType { ofType { ofType { ofType { name } } } } } } } } }";
    let body = graphql(&app, deep).await;
    let msg = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(msg.contains("nested too deep"), "{body}");
    // A body that is no GraphQL request: the API's JSON error, not bare text.
    let resp = app
        .http
        .post(format!("{}/graphql", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let e: Value = resp.json().await.unwrap();
    assert_eq!(e["status"], "error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_receives_live_readings() {
    let app = spawn_app(Backend::Sqlite).await;
    let v = vin(52);
    let mut req = format!("ws://127.0.0.1:{}/graphql", app.port)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "graphql-transport-ws".parse().unwrap(),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.expect("ws");
    assert_eq!(
        resp.headers()["sec-websocket-protocol"],
        "graphql-transport-ws"
    );
    let send = |v: Value| Message::Text(v.to_string().into());
    ws.send(send(json!({"type": "connection_init"})))
        .await
        .unwrap();
    let next_text = async |ws: &mut tokio_tungstenite::WebSocketStream<_>,
                           within: Duration|
           -> Option<Value> {
        loop {
            match tokio::time::timeout(within, ws.next()).await {
                Err(_) => return None,
                Ok(Some(Ok(Message::Text(t)))) => return Some(serde_json::from_str(&t).unwrap()),
                Ok(Some(Ok(_))) => continue,
                Ok(other) => panic!("socket ended: {other:?}"),
            }
        }
    };
    let ack = next_text(&mut ws, Duration::from_secs(10)).await.unwrap();
    assert_eq!(ack["type"], "connection_ack");
    ws.send(send(json!({
        "id": "1", "type": "subscribe",
        "payload": {"query": format!(r#"subscription {{ telemetry(vins: ["{v}"]) }}"#)}
    })))
    .await
    .unwrap();
    // The subscription starts asynchronously: send one reading at a time
    // until one arrives (bounded), then check it is what was sent.
    let mut enc = encoder(&v, 21);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut k = 0;
    let got = loop {
        assert!(tokio::time::Instant::now() < deadline, "no reading arrived");
        app.post_readings(&mut enc, k..k + 1, T0).await;
        k += 1;
        if let Some(m) = next_text(&mut ws, Duration::from_millis(300)).await {
            break m;
        }
    };
    assert_eq!(got["type"], "next", "{got}");
    assert_eq!(got["id"], "1");
    let reading = &got["payload"]["data"]["telemetry"];
    assert_eq!(reading["vehicle_vin"], v.as_str());
    let ts = reading["timestamp"].as_i64().unwrap();
    assert!((T0..T0 + k as i64 * 1000).contains(&ts), "{reading}");
    assert!(reading["speed"].is_f64());
}
