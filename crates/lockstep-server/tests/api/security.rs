//! Identity, roles and the attacks of the security issue, black-box: every
//! route of the real router against every kind of caller, spoofing and
//! revocation, the forward-jump hijack, keyframe takeover, seed timestamp
//! poisoning, cross-site requests and WebSocket upgrades, and the confinement
//! of the logger the server spawns. Nothing acknowledged is ever lost.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use lockstep_proto::Message as _;
use lockstep_proto::telemetry::TelemetryReading;
use lockstep_server::auth::policy::Policy;
use serde_json::{Value, json};

use crate::both_stores;
use crate::helpers::*;

both_stores!(
    every_route_against_every_caller,
    device_tokens_write_only_their_vin,
    forward_jump_cannot_turn_genuine_batches_into_duplicates,
    seed_timestamps_outside_the_window_are_refused,
);

const ADMIN: &str = "bootstrap-admin-secret-value";
const T0: i64 = 1_764_547_200_000; // 2025-12-01, inside the plausible window

/// A server with both auth modes required (listening on loopback, which must not matter).
async fn secured(backend: Backend, extra: &[&str]) -> TestApp {
    let db = Arc::new(TestDb::new(backend).await);
    let mut args = vec![
        "--device-auth",
        "required",
        "--read-auth",
        "required",
        "--admin-token",
        ADMIN,
        // The matrix sends hundreds of requests from one address.
        "--ip-requests-per-s",
        "0",
    ];
    args.extend_from_slice(extra);
    spawn_app_with(db, &args).await
}

/// Creates a token through the admin API; returns the `lst_…` string and its id.
async fn token(app: &TestApp, body: Value) -> (String, String) {
    let resp = app
        .http
        .post(format!("{}/api/tokens", app.addr))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "token creation");
    let v: Value = resp.json().await.unwrap();
    (
        v["token"].as_str().unwrap().to_owned(),
        v["id"].as_str().unwrap().to_owned(),
    )
}

fn seed(vin: &str, ts: i64) -> TelemetryReading {
    TelemetryReading {
        vehicle_vin: vin.to_owned(),
        timestamp: ts,
        speed: Some(50.0),
        battery: Some(80.0),
        ..Default::default()
    }
}

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (u16, String) {
    let mut req = app
        .http
        .request(method, format!("{}{path}", app.addr))
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(c) = content_type {
        req = req.header("content-type", c);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// Posts a lockstep batch with a bearer token.
async fn batch_as(app: &TestApp, token: &str, b: &lockstep_proto::v1::Batch) -> (u16, String) {
    send(
        app,
        Method::POST,
        "/api/v1/batch",
        Some(token),
        Some(BATCH),
        b.encode_to_vec(),
    )
    .await
}

/// The request each route gets in the matrix; a route without one fails the test.
fn sample(method: &Method, path: &str, vin_a: &str) -> (String, Option<&'static str>, Vec<u8>) {
    let path = path.replace("{vin}", vin_a).replace("{id}", "000000000000");
    match (method.as_str(), path.as_str()) {
        ("POST", "/api/telemetry") => (path, Some(SEED), seed(vin_a, T0).encode_to_vec()),
        ("POST", "/api/v1/batch") => {
            let mut enc = encoder(vin_a, 77);
            let b = batch(&mut enc, 0..2, T0);
            (path, Some(BATCH), b.encode_to_vec())
        }
        // Invalid options: authorised callers get 400 and no process is spawned.
        ("POST", "/logger/start") => (
            path,
            Some("application/json"),
            br#"{"vehicles":0}"#.to_vec(),
        ),
        ("POST", "/api/tokens") => (
            path,
            Some("application/json"),
            br#"{"vin_prefix":"ZZZ"}"#.to_vec(),
        ),
        ("POST", p) if p.starts_with("/api/tokens/") => (path, None, Vec::new()),
        ("POST", "/api/login") => (path, Some("application/json"), br#"{"token":"x"}"#.to_vec()),
        ("POST", _) => (path, None, Vec::new()),
        ("GET", _) => (path, None, Vec::new()),
        ("PATCH", p) if p.starts_with("/api/vehicles/") => (
            path,
            Some("application/json"),
            br#"{"model":"Twizy"}"#.to_vec(),
        ),
        (m, p) => panic!("no sample request for {m} {p}: add one to the matrix"),
    }
}

/// Whether `caller` passes `policy` with both modes required.
fn allowed(policy: Policy, caller: &str) -> bool {
    match policy {
        Policy::Public => true,
        Policy::Ingest => caller == "device A",
        Policy::Read => matches!(caller, "viewer" | "operator" | "admin"),
        Policy::Operate => matches!(caller, "operator" | "admin"),
        Policy::Admin => caller == "admin",
    }
}

async fn every_route_against_every_caller(backend: Backend) {
    let app = secured(backend, &[]).await;
    let (a, b) = (vin(1), vin(2));
    let (tok_a, _) = token(&app, json!({"vin": a})).await;
    let (tok_b, _) = token(&app, json!({"vin": b})).await;
    let (viewer, _) = token(&app, json!({"role": "viewer"})).await;
    let (operator, _) = token(&app, json!({"role": "operator"})).await;
    let callers: Vec<(&str, Option<&str>)> = vec![
        ("none", None),
        ("device A", Some(&tok_a)),
        ("device B", Some(&tok_b)),
        ("viewer", Some(&viewer)),
        ("operator", Some(&operator)),
        ("admin", Some(ADMIN)),
    ];
    let table = lockstep_server::http::policy_table();
    assert!(table.len() >= 12, "the router's table: {table:?}");
    let mut seen = HashMap::new();
    for (method, path, policy) in &table {
        assert!(
            seen.insert((method.clone(), *path), policy).is_none(),
            "{method} {path} is listed twice"
        );
        for (caller, tok) in &callers {
            let (p, ct, body) = sample(method, path, &a);
            let (code, text) = send(&app, method.clone(), &p, *tok, ct, body).await;
            if *policy == Policy::Public {
                // Public handlers answer for themselves (a bad login is their own 401).
                assert_ne!(code, 403, "{caller} on {method} {path}: {text}");
            } else if allowed(*policy, caller) {
                assert!(
                    code != 401 && code != 403,
                    "{caller} on {method} {path} ({policy:?}) was refused: {code} {text}"
                );
            } else {
                let want = if *caller == "none" { 401 } else { 403 };
                assert_eq!(
                    code, want,
                    "{caller} on {method} {path} ({policy:?}): {text}"
                );
            }
            assert!(
                !text.contains(ADMIN),
                "{method} {path} leaked the admin token"
            );
        }
    }
    // A wrong token is 401 everywhere a credential is checked, even on public routes' peers.
    let (code, _) = send(
        &app,
        Method::GET,
        "/api/vehicles",
        Some("lst_000000000000_00"),
        None,
        vec![],
    )
    .await;
    assert_eq!(code, 401);
    let status = app.get_json("/status").await.to_string();
    assert!(!status.contains(ADMIN) && !status.contains(&tok_a[17..]));
    // Device B wrote nothing for A; device A's one seed reading is stored once.
    let stored = app
        .db
        .count(&format!(
            "SELECT count(*) FROM telemetry_data t JOIN vehicles v ON v.id = t.vehicle_id WHERE v.vin = '{a}'"
        ))
        .await;
    assert_eq!(
        stored,
        1 + 2,
        "device A's seed reading and its batch of two"
    );
}

async fn device_tokens_write_only_their_vin(backend: Backend) {
    let app = secured(backend, &[]).await;
    let (a, b) = (vin(11), vin(12));
    let (tok_a, id_a) = token(&app, json!({"vin": a})).await;
    let (fleet, _) = token(&app, json!({"vin_prefix": "5YJ3E1EA0000000"})).await;
    let post_seed = |tok: Option<String>, v: String, ts: i64| {
        let app = &app;
        async move {
            send(
                app,
                Method::POST,
                "/api/telemetry",
                tok.as_deref(),
                Some(SEED),
                seed(&v, ts).encode_to_vec(),
            )
            .await
            .0
        }
    };
    assert_eq!(post_seed(Some(tok_a.clone()), a.clone(), T0).await, 200);
    assert_eq!(
        post_seed(Some(tok_a.clone()), b.clone(), T0).await,
        403,
        "A's token for B"
    );
    assert_eq!(post_seed(None, b.clone(), T0).await, 401, "no token");
    // The same id, one secret character changed.
    let flipped = if &tok_a[17..18] == "0" { "1" } else { "0" };
    let wrong = format!("{}{flipped}{}", &tok_a[..17], &tok_a[18..]);
    assert_eq!(
        post_seed(Some(wrong), a.clone(), T0 + 1000).await,
        401,
        "wrong secret"
    );
    // A batch for B signed by A.
    let mut enc = encoder(&b, 5);
    let bb = batch(&mut enc, 0..3, T0);
    let (code, _) = batch_as(&app, &tok_a, &bb).await;
    assert_eq!(code, 403);
    // Keyframe takeover: the fleet token may write A, but not A's session opened by A's token.
    let mut enc = encoder(&a, 9);
    let first = batch(&mut enc, 0..3, T0);
    let (code, _) = batch_as(&app, &tok_a, &first).await;
    assert_eq!(code, 200);
    enc.rewind(3);
    let takeover = batch(&mut enc, 3..4, T0);
    let (code, text) = batch_as(&app, &fleet, &takeover).await;
    assert_eq!(code, 403, "{text}");
    let (code, _) = batch_as(&app, &tok_a, &takeover).await;
    assert_eq!(code, 200, "the owner continues");
    let b_rows = app
        .db
        .count(&format!("SELECT count(*) FROM vehicles WHERE vin = '{b}'"))
        .await;
    assert_eq!(b_rows, 0, "nothing was stored for B");

    // Revocation reaches the server within seconds (its cache lives 3 s).
    let (code, _) = send(
        &app,
        Method::POST,
        &format!("/api/tokens/{id_a}/revoke"),
        Some(ADMIN),
        None,
        vec![],
    )
    .await;
    assert_eq!(code, 204);
    let mut ts = T0 + 10_000;
    eventually(
        Duration::from_secs(10),
        "the revoked token to be refused",
        || {
            ts += 1000;
            let f = post_seed(Some(tok_a.clone()), a.clone(), ts);
            async move { (f.await == 401).then_some(()) }
        },
    )
    .await;
}

/// The hijack of the issue: a batch far ahead in a victim's session used to
/// make every later genuine batch a "duplicate" (acknowledged, not stored,
/// deleted from the edge's spool). Now the genuine edge is asked to resync and
/// everything it sent is stored. Auth off: a buggy edge can do this too.
async fn forward_jump_cannot_turn_genuine_batches_into_duplicates(backend: Backend) {
    let app = spawn_app(backend).await;
    let v = vin(21);
    let mut genuine = encoder(&v, 42);
    let r = app.post_batch(&batch(&mut genuine, 0..10, T0)).await;
    assert_eq!(r.status(), 200);

    let mut attacker = encoder(&v, 42);
    attacker.rewind(1 << 40);
    let jump = batch(&mut attacker, 0..1, T0 + 500);
    let r = app.post_batch(&jump).await;
    // Refused by the decoder's bound, or accepted as a keyframe: either way nothing genuine is lost.
    assert!(matches!(r.status().as_u16(), 200 | 409), "{}", r.status());

    let next = batch(&mut genuine, 10..20, T0);
    let r = app.post_batch(&next).await;
    let body: Value = r.json().await.unwrap();
    assert_ne!(
        body["duplicate"], true,
        "a genuine batch called a duplicate: {body}"
    );
    if body["resync_required"] == true {
        // What lockstep-edge does: re-encode from the first unacknowledged reading with a keyframe.
        genuine.rewind(10);
        let again = batch(&mut genuine, 10..20, T0);
        let r = app.post_batch(&again).await;
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], "success", "{body}");
        assert_eq!(body["duplicate"], false, "{body}");
    }
    let stored = app
        .db
        .count("SELECT count(*) FROM telemetry_data WHERE session_id = 42 AND seq < 20")
        .await;
    assert_eq!(stored, 20, "every genuine reading is stored");
    // A real retry of a stored batch is still a duplicate, and stores nothing twice.
    let mut replay = encoder(&v, 42);
    let r = app.post_batch(&batch(&mut replay, 0..10, T0)).await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["duplicate"], true, "{body}");
}

async fn seed_timestamps_outside_the_window_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let v = vin(31);
    for (ts, what) in [
        (i64::MAX, "i64::MAX"),
        (T0 * 1000, "microseconds"),
        (T0 / 1000, "seconds"),
        (900_000_000_000, "1998"),
        (
            lockstep_server::model::now_ms() + 3 * 86_400_000,
            "three days ahead",
        ),
    ] {
        let r = app.post_seed(&seed(&v, ts)).await;
        assert_eq!(r.status(), 422, "{what}");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("timestamp"),
            "{body}"
        );
    }
    // The genuine reading is stored; its retry is acknowledged and stored once.
    assert_eq!(app.post_seed(&seed(&v, T0)).await.status(), 200);
    assert_eq!(app.post_seed(&seed(&v, T0)).await.status(), 200);
    // An older reading that is not stored is refused, not acknowledged and dropped.
    let r = app.post_seed(&seed(&v, T0 - 1000)).await;
    assert_eq!(r.status(), 409);
    assert_eq!(app.post_seed(&seed(&v, T0 + 1000)).await.status(), 200);
    let stored = app.db.count("SELECT count(*) FROM telemetry_data").await;
    assert_eq!(stored, 2);
}

/// CSRF and DNS rebinding against logger control and the WebSocket, with
/// auth off (the quick start): Origin and Host checks are always on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_requests_and_websockets_are_refused() {
    let app = spawn_app(Backend::Sqlite).await;
    let url = format!("{}/logger/start", app.addr);
    let own = format!("http://127.0.0.1:{}", app.port);
    let cases: [(&str, Option<&str>, Option<&str>, u16); 5] = [
        ("text/plain", None, None, 415),
        ("application/json", Some("null"), None, 403),
        ("application/json", Some("http://evil.example"), None, 403),
        ("text/plain", Some("http://evil.example"), None, 403),
        // DNS rebinding: the attacker's name resolves here; Host gives it away.
        (
            "application/json",
            Some(own.as_str()),
            Some("rebind.evil.example"),
            403,
        ),
    ];
    for (ct, origin, host, want) in cases {
        let mut req = app
            .http
            .post(&url)
            .header("content-type", ct)
            .body(r#"{"vehicles":1}"#);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        if let Some(h) = host {
            req = req.header("host", format!("{h}:{}", app.port));
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), want, "{ct} {origin:?} {host:?}");
    }
    // Login is a state change too.
    let r = app
        .http
        .post(format!("{}/api/login", app.addr))
        .header("origin", "null")
        .json(&json!({"token": ADMIN}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(app.status().await["logger"]["running"], false);

    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let ws_url = format!("ws://127.0.0.1:{}/ws", app.port);
    let mut req = ws_url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("origin", "http://evil.example".parse().unwrap());
    let err = tokio_tungstenite::connect_async(req).await.unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    let mut req = ws_url.as_str().into_client_request().unwrap();
    req.headers_mut().insert("origin", own.parse().unwrap());
    tokio_tungstenite::connect_async(req)
        .await
        .expect("the server's own origin may open the WebSocket");
}

/// The dashboard's login: a token for an HttpOnly, SameSite=Strict cookie that
/// then authenticates reads and the WebSocket; logout ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_login_trades_a_token_for_a_session_cookie() {
    let app = secured(Backend::Sqlite, &[]).await;
    let (viewer, _) = token(&app, json!({"role": "viewer"})).await;
    let session = app.get_json("/api/session").await;
    assert_eq!(
        session,
        json!({"authenticated": false, "role": null, "read_auth": "required"})
    );
    let login = |body: Value| {
        app.http
            .post(format!("{}/api/login", app.addr))
            .json(&body)
            .send()
    };
    let r = login(json!({"token": "lst_000000000000_00"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "error");
    let r = login(json!({"token": viewer})).await.unwrap();
    assert_eq!(r.status(), 204);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    for part in ["lockstep_session=", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(part), "{set}");
    }
    assert!(!set.contains("Secure"), "no TLS here: {set}");
    let cookie = set.split(';').next().unwrap().to_owned();
    let get = |path: &str| {
        app.http
            .get(format!("{}{path}", app.addr))
            .header("cookie", &cookie)
            .send()
    };
    let s: Value = get("/api/session").await.unwrap().json().await.unwrap();
    assert_eq!(
        s,
        json!({"authenticated": true, "role": "viewer", "read_auth": "required"})
    );
    assert_eq!(get("/api/vehicles").await.unwrap().status(), 200);
    assert_eq!(
        app.get_json("/api/vehicles").await["status"],
        "error",
        "no cookie: 401"
    );
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://127.0.0.1:{}/ws", app.port)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    tokio_tungstenite::connect_async(req)
        .await
        .expect("the cookie opens the WebSocket");
    let r = app
        .http
        .post(format!("{}/api/logout", app.addr))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(get("/api/vehicles").await.unwrap().status(), 401);
}

/// The token CLI against the server's store, the token as the last line of stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_cli_creates_lists_and_revokes() {
    let db = Arc::new(TestDb::new(Backend::Postgres).await);
    let bin = env!("CARGO_BIN_EXE_lockstep-server");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .env_clear()
            .env("DATABASE_URL", db.url())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let v = vin(41);
    let out = run(&["token", "create", "--vin", &v, "--label", "car"]);
    let tok = out.lines().last().unwrap().to_owned();
    assert!(tok.starts_with("lst_"), "{out}");
    let app = spawn_app_with(db.clone(), &["--device-auth", "required"]).await;
    let post = |t: &str, ts: i64| {
        app.http
            .post(format!("{}/api/telemetry", app.addr))
            .bearer_auth(t)
            .header("content-type", SEED)
            .body(seed(&v, ts).encode_to_vec())
            .send()
    };
    assert_eq!(post(&tok, T0).await.unwrap().status(), 200);
    let list = run(&["token", "list"]);
    assert!(
        list.contains(&v) && list.contains("car") && !list.contains(&tok[17..]),
        "{list}"
    );
    let id = &tok[4..16];
    run(&["token", "revoke", id]);
    let mut ts = T0;
    eventually(
        Duration::from_secs(10),
        "the revoked token to be refused",
        || {
            ts += 1000;
            let f = post(&tok, ts);
            async move { (f.await.unwrap().status() == 401).then_some(()) }
        },
    )
    .await;
}

/// The logger the server spawns: replays only inside LOCKSTEP_REPLAY_DIR, a
/// clean environment with a scoped token, output to operators only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spawned_logger_is_confined() {
    let dir = tempfile::tempdir().unwrap();
    let replays = dir.path().join("replays");
    std::fs::create_dir(&replays).unwrap();
    std::fs::write(replays.join("trip.csv"), "t\n").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", replays.join("passwd.csv")).unwrap();
    // A stand-in edge that prints its environment.
    let bin = dir.path().join("edge.sh");
    std::fs::write(&bin, "#!/bin/sh\nenv\necho ENV-DONE\nsleep 30\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let app = secured(
        Backend::Sqlite,
        &[
            "--edge-bin",
            bin.to_str().unwrap(),
            "--replay-dir",
            replays.to_str().unwrap(),
            "--logger-grace-ms",
            "200",
        ],
    )
    .await;
    let (operator, _) = token(&app, json!({"role": "operator"})).await;
    let (viewer, _) = token(&app, json!({"role": "viewer"})).await;
    let start = |body: Value| {
        app.http
            .post(format!("{}/logger/start", app.addr))
            .bearer_auth(&operator)
            .json(&body)
            .send()
    };
    for bad in [
        "../edge.sh",
        "/proc/self/environ",
        "/etc/passwd",
        "/dev/zero",
        "passwd.csv",
    ] {
        let r = start(json!({"replay": [bad], "format": "csv"}))
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
    }
    let r = start(json!({"vehicles": 1000, "rate": 1000}))
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "vehicles × rate is bounded");

    let ws = |t: String| async move {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut req = format!("ws://127.0.0.1:{}/ws", app.port)
            .into_client_request()
            .unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
        Ws {
            stream: tokio_tungstenite::connect_async(req).await.unwrap().0,
        }
    };
    let mut op_ws = ws(operator.clone()).await;
    let mut viewer_ws = ws(viewer.clone()).await;
    let r = start(json!({"replay": ["trip.csv"], "format": "csv"}))
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let mut env = Vec::new();
    loop {
        let m = op_ws
            .until(Duration::from_secs(10), "log", |m| {
                m["data"]["source"] == "logger"
            })
            .await;
        let line = m["data"]["message"].as_str().unwrap().to_owned();
        if line == "ENV-DONE" {
            break;
        }
        env.push(line);
    }
    let names: Vec<&str> = env.iter().filter_map(|l| l.split('=').next()).collect();
    // What the child may see, and what sh itself sets.
    let allowed = lockstep_server::sandbox::CHILD_ENV.iter().chain(&[
        "LOCKSTEP_DEVICE_TOKEN",
        "PWD",
        "SHLVL",
        "_",
    ]);
    let allowed: Vec<&str> = allowed.copied().collect();
    for n in &names {
        assert!(allowed.contains(n), "the child inherited {n}: {env:?}");
    }
    assert!(names.contains(&"LOCKSTEP_DEVICE_TOKEN"), "{env:?}");
    assert!(!env.iter().any(|l| l.contains(ADMIN)));
    // The viewer saw no logger output.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(300);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(
        deadline,
        futures_util::StreamExt::next(&mut viewer_ws.stream),
    )
    .await
    {
        let text = m.into_text().unwrap_or_default();
        assert!(
            !text.contains("\"source\":\"logger\""),
            "a viewer got logger output: {text}"
        );
    }
    let r = app
        .http
        .post(format!("{}/logger/stop", app.addr))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// Two instances on one PostgreSQL database: a login on one is a session on
/// the other, and a revocation on one reaches the other within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_sharing_a_database_share_tokens_and_sessions() {
    let one = secured(Backend::Postgres, &[]).await;
    let two = spawn_app_with(
        one.db.clone(),
        &["--read-auth", "required", "--admin-token", ADMIN],
    )
    .await;
    let (viewer, id) = token(&one, json!({"role": "viewer"})).await;
    let r = two
        .http
        .post(format!("{}/api/login", two.addr))
        .json(&json!({"token": viewer}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let read = |app: &TestApp| {
        app.http
            .get(format!("{}/api/vehicles", app.addr))
            .header("cookie", &cookie)
            .send()
    };
    assert_eq!(
        read(&one).await.unwrap().status(),
        200,
        "a session opened on two"
    );
    let (code, _) = send(
        &one,
        Method::POST,
        &format!("/api/tokens/{id}/revoke"),
        Some(ADMIN),
        None,
        vec![],
    )
    .await;
    assert_eq!(code, 204);
    eventually(
        Duration::from_secs(10),
        "two to end the revoked token's session",
        || async { (read(&two).await.unwrap().status() == 401).then_some(()) },
    )
    .await;
}

/// With device auth off (the quick start), a writer without a credential still
/// cannot take over a session a device credential opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_writers_cannot_take_over_an_owned_session() {
    let db = Arc::new(TestDb::new(Backend::Sqlite).await);
    let app = spawn_app_with(db, &["--admin-token", ADMIN]).await;
    let a = vin(51);
    let (tok_a, _) = token(&app, json!({"vin": a})).await;
    let mut enc = encoder(&a, 12);
    let (code, _) = batch_as(&app, &tok_a, &batch(&mut enc, 0..3, T0)).await;
    assert_eq!(code, 200);
    enc.rewind(3);
    let takeover = batch(&mut enc, 3..4, T0);
    let r = app.post_batch(&takeover).await;
    assert_eq!(r.status(), 403);
    // Its own sessions stay open to it.
    let mut own = encoder(&a, 13);
    assert_eq!(
        app.post_batch(&batch(&mut own, 0..3, T0)).await.status(),
        200
    );
    let stored = app
        .db
        .count("SELECT count(*) FROM telemetry_data WHERE session_id = 12")
        .await;
    assert_eq!(stored, 3);
}
