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

both_stores!(queries_read_vehicles_telemetry_buckets_and_stats);

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
