//! Abuse limits: per device readings/requests (429 + Retry-After, nothing
//! stored), per client address on routes without a device identity,
//! WebSockets per address, and the batch size checked before decoding.

use std::sync::Arc;
use std::time::Duration;

use lockstep_proto::Message as _;
use serde_json::Value;

use crate::both_stores;
use crate::helpers::*;

both_stores!(device_over_its_readings_budget_gets_429);

async fn device_over_its_readings_budget_gets_429(backend: Backend) {
    let db = Arc::new(TestDb::new(backend).await);
    // 1 reading/s with a bucket of 20 (one full batch): a second batch of 20
    // needs ~20 s of refill, far more than this test takes.
    let app = spawn_app_with(
        db.clone(),
        &["--device-readings-per-s", "1", "--max-batch-readings", "20"],
    )
    .await;
    let t0 = 1_764_000_000_000;
    let mut enc = encoder(&vin(60), 0x60);
    let b0 = batch(&mut enc, 0..20, t0);
    let b1 = batch(&mut enc, 20..40, t0);
    assert_eq!(app.post_batch(&b0).await.status(), 200);
    let resp = app.post_batch(&b1).await;
    assert_eq!(resp.status(), 429);
    let wait: u32 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&wait), "Retry-After {wait}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "error");
    // Another vehicle has its own budget.
    let mut other = encoder(&vin(61), 0x61);
    assert_eq!(
        app.post_batch(&batch(&mut other, 0..20, t0)).await.status(),
        200
    );
    assert_eq!(
        db.count("SELECT COUNT(*) FROM telemetry_data").await,
        40,
        "the refused batch stored nothing"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_count_is_checked_before_decoding() {
    let app = spawn_app_with(
        Arc::new(TestDb::new(Backend::Sqlite).await),
        &["--max-batch-readings", "100"],
    )
    .await;
    // count = 400,000 and then bytes that are not protobuf at all: a 413
    // (not a 400) shows the count was read before the body was decoded.
    let mut body = lockstep_proto::v1::Batch {
        vehicle_vin: vin(62),
        count: 400_000,
        ..Default::default()
    }
    .encode_to_vec();
    body.extend_from_slice(&[0x0f; 64]);
    let resp = app.post("/api/telemetry", BATCH, body).await;
    assert_eq!(resp.status(), 413);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("400000 readings"),
        "{v}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_address_budget_on_routes_without_a_device() {
    let app = spawn_app_with(
        Arc::new(TestDb::new(Backend::Sqlite).await),
        &["--ip-requests-per-s", "1"],
    )
    .await;
    // A bucket of 2 refilled at 1/s: twenty back-to-back reads hit the limit.
    let mut limited = None;
    for _ in 0..20 {
        let r = app
            .http
            .get(format!("{}/api/vehicles", app.addr))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status(), 200);
    }
    let r = limited.expect("a 429 among twenty requests at 1/s");
    assert!(r.headers().contains_key("retry-after"));
    // Device ingest is limited per device, not per address.
    let seed = lockstep_proto::telemetry::TelemetryReading {
        vehicle_vin: vin(63),
        timestamp: 1_764_000_000_000,
        speed: Some(3.0),
        ..Default::default()
    };
    assert_eq!(app.post_seed(&seed).await.status(), 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_per_address_are_capped() {
    let app = spawn_app_with(
        Arc::new(TestDb::new(Backend::Sqlite).await),
        &["--ws-per-ip", "1"],
    )
    .await;
    let url = format!("ws://127.0.0.1:{}/ws", app.port);
    let mut first = Ws::connect(&url).await;
    first.next_json(Duration::from_secs(10)).await;
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 429),
        other => panic!(
            "a second WebSocket from the address: {:?}",
            other.map(|_| ())
        ),
    }
    drop(first);
    // The slot is freed when the first client's task ends.
    eventually(Duration::from_secs(10), "a WebSocket slot again", || {
        let url = url.clone();
        async move {
            tokio_tungstenite::connect_async(&url)
                .await
                .ok()
                .map(|_| ())
        }
    })
    .await;
    app.stop().await;
}

both_stores!(vehicle_registry_is_bounded_and_state_reloads);

/// At most LOCKSTEP_MAX_VEHICLES vehicles stay in memory however many are
/// seen; an evicted vehicle continues its session and its seed form from the
/// state the store holds (no resync, no duplicate).
async fn vehicle_registry_is_bounded_and_state_reloads(backend: Backend) {
    let db = Arc::new(TestDb::new(backend).await);
    let app = spawn_app_with(
        db.clone(),
        &["--max-vehicles", "32", "--ip-requests-per-s", "0"],
    )
    .await;
    let t0 = 1_764_000_000_000;
    let a = vin(70);
    let mut enc = encoder(&a, 0x70);
    let b0 = batch(&mut enc, 0..20, t0);
    let b1 = batch(&mut enc, 20..40, t0);
    let seed = |v: &str, ts: i64| lockstep_proto::telemetry::TelemetryReading {
        vehicle_vin: v.to_owned(),
        timestamp: ts,
        speed: Some(5.0),
        ..Default::default()
    };
    assert_eq!(app.post_batch(&b0).await.status(), 200);
    assert_eq!(app.post_seed(&seed(&a, t0)).await.status(), 200);
    // 300 other vehicles: every shard (32, one vehicle each) sees several.
    for n in 0..300 {
        assert_eq!(app.post_seed(&seed(&vin(1000 + n), t0)).await.status(), 200);
    }
    let status = app.status().await;
    assert!(
        status["vehicles_in_memory"].as_u64().unwrap() <= 32,
        "{status}"
    );
    assert_eq!(
        app.post_batch(&b1).await.status(),
        200,
        "the session goes on"
    );
    let dup: Value = app.post_seed(&seed(&a, t0)).await.json().await.unwrap();
    assert_eq!(dup["status"], "success");
    assert_eq!(
        db.count(&format!(
            "SELECT COUNT(*) FROM telemetry_data t JOIN vehicles v ON v.id = t.vehicle_id WHERE v.vin = '{a}'"
        ))
        .await,
        41,
        "20 + 20 batch readings and one seed reading, the repeat not stored"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_vehicles_leave_memory() {
    let app = spawn_app_with(
        Arc::new(TestDb::new(Backend::Sqlite).await),
        &["--vehicle-idle-s", "3"],
    )
    .await;
    for n in 0..3 {
        let r = lockstep_proto::telemetry::TelemetryReading {
            vehicle_vin: vin(80 + n),
            timestamp: 1_764_000_000_000,
            speed: Some(1.0),
            ..Default::default()
        };
        assert_eq!(app.post_seed(&r).await.status(), 200);
    }
    assert!(app.status().await["vehicles_in_memory"].as_u64().unwrap() > 0);
    eventually(
        Duration::from_secs(10),
        "the idle vehicles evicted",
        || async { (app.status().await["vehicles_in_memory"] == 0).then_some(()) },
    )
    .await;
    app.stop().await;
}

/// The edge honours 429 + Retry-After and loses nothing: with a budget of
/// 2 requests/s (bursts of 4) its 10 batches are partly refused, kept
/// spooled, resent after the wait, and all 100 readings end up stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_waits_out_429_and_loses_nothing() {
    let app = spawn_app_with(
        Arc::new(TestDb::new(Backend::Sqlite).await),
        &["--device-requests-per-s", "2"],
    )
    .await;
    let server = format!("http://127.0.0.1:{}", app.port);
    let args = ["--batch-readings", "10", "--batch-delay-ms", "2000"];
    assert!(
        run_edge(&server, 100, &args).await,
        "the edge exits cleanly"
    );
    assert_eq!(
        app.db.count("SELECT COUNT(*) FROM telemetry_data").await,
        100
    );
    // The budget was really exceeded: the server answered 429 at least once.
    let metrics = app
        .http
        .get(format!("{server}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    let refused: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("lockstep_requests_total{")
                && l.contains(r#"route="/api/telemetry""#)
                && l.contains(r#"status="429""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(refused >= 1.0, "no 429 was answered:\n{metrics}");
    app.stop().await;
}

const ADMIN: &str = "limits-bootstrap-admin-secret";

/// An HTTP client whose connections come from `ip` (any 127.x.y.z is this machine).
fn client_from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(ip))
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// A token created with the bootstrap admin (from 127.0.0.9, out of the way).
async fn create_token(app: &TestApp, body: Value) -> String {
    let r = client_from([127, 0, 0, 9])
        .post(format!("{}/api/tokens", app.addr))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Repeated bad tokens and logins from one address: 401 up to the budget,
/// then 429 + Retry-After — for a good credential of that address too, which
/// is not even checked — while another address is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_authentications_are_budgeted_per_address() {
    let app = spawn_app_with(
        Arc::new(TestDb::new(Backend::Sqlite).await),
        &[
            "--device-auth",
            "required",
            "--read-auth",
            "required",
            "--admin-token",
            ADMIN,
            "--auth-failures-per-min",
            "3",
        ],
    )
    .await;
    let viewer = create_token(&app, serde_json::json!({"role": "viewer"})).await;
    let device = create_token(&app, serde_json::json!({"vin": vin(81)})).await;
    let bad = "lst_000000000000_0000000000000000000000000000000000000000000000000000000000000000";
    let (attacker, other) = (client_from([127, 0, 0, 1]), client_from([127, 0, 0, 2]));
    let read = |c: &reqwest::Client, tok: &str| {
        c.get(format!("{}/api/vehicles", app.addr))
            .bearer_auth(tok)
            .send()
    };
    for i in 0..3 {
        let r = read(&attacker, bad).await.unwrap();
        assert_eq!(r.status(), 401, "failure {} is within the budget", i + 1);
    }
    let r = read(&attacker, bad).await.unwrap();
    assert_eq!(r.status(), 429, "over the budget");
    let wait: u32 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&wait), "one attempt per 20 s: {wait}");
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("failed authentications"),
        "{body}"
    );
    // While blocked, a valid token from that address is not even checked.
    assert_eq!(read(&attacker, &viewer).await.unwrap().status(), 429);
    let login = |c: &reqwest::Client, tok: &str| {
        c.post(format!("{}/api/login", app.addr))
            .json(&serde_json::json!({ "token": tok }))
            .send()
    };
    assert_eq!(login(&attacker, bad).await.unwrap().status(), 429);
    // Requests without a credential are not blocked.
    assert_eq!(
        attacker
            .get(format!("{}/status", app.addr))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Another address: unaffected, with its own budget (logins and devices count too).
    assert_eq!(read(&other, &viewer).await.unwrap().status(), 200);
    assert_eq!(login(&other, &viewer).await.unwrap().status(), 204);
    assert_eq!(login(&other, bad).await.unwrap().status(), 401);
    let seed = lockstep_proto::telemetry::TelemetryReading {
        vehicle_vin: vin(81),
        timestamp: 1_764_000_000_000,
        speed: Some(3.0),
        ..Default::default()
    };
    let ingest = |tok: &str| {
        other
            .post(format!("{}/api/telemetry", app.addr))
            .bearer_auth(tok)
            .header("content-type", SEED)
            .body(seed.encode_to_vec())
            .send()
    };
    assert_eq!(ingest(bad).await.unwrap().status(), 401);
    assert_eq!(ingest(&device).await.unwrap().status(), 200);
    assert_eq!(
        read(&other, bad).await.unwrap().status(),
        401,
        "third failure"
    );
    assert_eq!(read(&other, bad).await.unwrap().status(), 429, "fourth");
    assert_eq!(ingest(&device).await.unwrap().status(), 429);
    assert_eq!(
        app.db.count("SELECT count(*) FROM telemetry_data").await,
        1,
        "only the good device's reading"
    );
    app.stop().await;
}

/// Opens `/ws` from `ip` with extra headers; `Err(status)` when refused.
async fn ws_from(port: u16, ip: [u8; 4], header: (&str, &str)) -> Result<Ws, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(std::net::SocketAddr::from((ip, 0))).unwrap();
    let tcp = socket
        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap();
    let mut req = format!("ws://127.0.0.1:{port}/ws")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        axum::http::HeaderName::from_bytes(header.0.as_bytes()).unwrap(),
        header.1.parse().unwrap(),
    );
    match tokio_tungstenite::client_async(req, tokio_tungstenite::MaybeTlsStream::Plain(tcp)).await
    {
        Ok((stream, _)) => Ok(Ws { stream }),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("WebSocket: {e}"),
    }
}

/// One viewer token holds at most LOCKSTEP_WS_PER_CREDENTIAL sockets, from
/// however many addresses, web sessions opened with it included; another
/// token is not affected; a closed socket frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_per_credential_are_capped() {
    let app = spawn_app_with(
        Arc::new(TestDb::new(Backend::Sqlite).await),
        &[
            "--read-auth",
            "required",
            "--admin-token",
            ADMIN,
            "--ws-per-credential",
            "2",
        ],
    )
    .await;
    let viewer = create_token(&app, serde_json::json!({"role": "viewer"})).await;
    let other = create_token(&app, serde_json::json!({"role": "viewer"})).await;
    let bearer = |t: &str| format!("Bearer {t}");
    let auth = bearer(&viewer);
    let mut first = ws_from(app.port, [127, 0, 0, 1], ("authorization", &auth))
        .await
        .expect("a first socket");
    first.next_json(Duration::from_secs(10)).await;
    let _second = ws_from(app.port, [127, 0, 0, 2], ("authorization", &auth))
        .await
        .expect("a second socket, from another address");
    assert_eq!(
        ws_from(app.port, [127, 0, 0, 3], ("authorization", &auth))
            .await
            .err(),
        Some(429),
        "a third socket of the token, from a third address"
    );
    // A web session opened with the same token counts as that token.
    let r = app
        .http
        .post(format!("{}/api/login", app.addr))
        .json(&serde_json::json!({ "token": viewer }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert_eq!(
        ws_from(app.port, [127, 0, 0, 4], ("cookie", &cookie))
            .await
            .err(),
        Some(429)
    );
    // Another token is not affected.
    let other_auth = bearer(&other);
    ws_from(app.port, [127, 0, 0, 1], ("authorization", &other_auth))
        .await
        .expect("another token's socket");
    // Closing one frees its slot (once the server has noticed).
    drop(first);
    let port = app.port;
    eventually(Duration::from_secs(10), "a free slot for the token", || {
        let cookie = cookie.clone();
        async move {
            ws_from(port, [127, 0, 0, 4], ("cookie", &cookie))
                .await
                .ok()
        }
    })
    .await;
    app.stop().await;
}
