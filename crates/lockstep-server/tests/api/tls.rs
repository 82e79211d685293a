//! HTTPS/WSS with certificates made in the test (rcgen), mutual TLS (the
//! names of a verified client certificate reach the request as `PeerCert`),
//! and the listener's bounds: a connection cap and closing silent sockets.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use futures_util::StreamExt;
use lockstep_server::http::peer::PeerCert;
use lockstep_server::serve::{ListenConfig, ListenStats, serve};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

/// A CA and certificates it signs.
struct Ca {
    cert: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            cert,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A leaf for `names` (the first is also the CN); returns (cert, key).
    fn issue(&self, names: &[&str]) -> (rcgen::Certificate, rcgen::KeyPair) {
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, names[0]);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert, key)
    }

    fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    lockstep_server::tls::provider()
}

/// A client trusting `ca`, optionally presenting a certificate.
fn client_config(
    ca: &Ca,
    identity: Option<&(rcgen::Certificate, rcgen::KeyPair)>,
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    match identity {
        None => b.with_no_client_auth(),
        Some((cert, key)) => b
            .with_client_auth_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap(),
    }
}

fn https_client(config: rustls::ClientConfig) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// Writes PEM files for the server: (cert, key, client CA) paths.
fn server_files(dir: &std::path::Path, server_ca: &Ca, client_ca: &Ca) -> [std::path::PathBuf; 3] {
    let (cert, key) = server_ca.issue(&["localhost", "127.0.0.1"]);
    let paths = [
        dir.join("server.pem"),
        dir.join("server.key"),
        dir.join("clients-ca.pem"),
    ];
    std::fs::write(&paths[0], cert.pem() + &server_ca.cert.pem()).unwrap();
    std::fs::write(&paths[1], key.serialize_pem()).unwrap();
    std::fs::write(&paths[2], client_ca.cert.pem()).unwrap();
    paths
}

/// A server with HTTPS (certificate from `server_ca`, naming localhost) and
/// the extra flags, on a fresh SQLite store; `client_ca` = with mutual TLS.
async fn tls_app(
    dir: &std::path::Path,
    server_ca: &Ca,
    client_ca: Option<&Ca>,
    extra: &[&str],
) -> TestApp {
    let other = Ca::new("unused device CA");
    let [cert, key, cas] = server_files(dir, server_ca, client_ca.unwrap_or(&other));
    let mut args = vec![
        "--tls-cert".to_owned(),
        cert.display().to_string(),
        "--tls-key".to_owned(),
        key.display().to_string(),
    ];
    if client_ca.is_some() {
        args.extend(["--tls-client-ca".to_owned(), cas.display().to_string()]);
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    spawn_app_with(Arc::new(TestDb::new(Backend::Sqlite).await), &args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_and_wss_serve_the_app() {
    let server_ca = Ca::new("Lockstep test server CA");
    let client_ca = Ca::new("Lockstep test device CA");
    let dir = tempfile::tempdir().unwrap();
    let app = tls_app(dir.path(), &server_ca, Some(&client_ca), &[]).await;
    let base = format!("https://localhost:{}", app.port);

    // A client without a certificate (token clients) is served.
    let http = https_client(client_config(&server_ca, None));
    let status: serde_json::Value = http
        .get(format!("{base}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["status"], "healthy");

    // Plain HTTP on the TLS port gets no answer.
    assert!(
        app.http
            .get(format!("http://127.0.0.1:{}/status", app.port))
            .send()
            .await
            .is_err()
    );
    // A client that does not trust the server's CA refuses it.
    let other = Ca::new("someone else");
    assert!(
        https_client(client_config(&other, None))
            .get(format!("{base}/status"))
            .send()
            .await
            .is_err()
    );

    // WSS: the upgrade works through TLS and the first message arrives.
    let tcp = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client_config(&server_ca, None)))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut ws, resp) =
        tokio_tungstenite::client_async(format!("wss://localhost:{}/ws", app.port), tls)
            .await
            .expect("the WebSocket upgrade over TLS");
    assert_eq!(resp.status(), 101);
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a first message")
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(v["type"], "history");
    app.stop().await;
}

/// The listener with a router that echoes what it knows of the peer.
async fn echo_listener(config: ListenConfig) -> (u16, Arc<ListenStats>, CancellationToken) {
    let router = Router::new()
        .route(
            "/echo",
            axum::routing::post(|body: String| async move { body }),
        )
        .route(
            "/whoami",
            get(
                |ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
                 cert: Option<axum::Extension<PeerCert>>| async move {
                    let names = cert.map(|c| c.0.names).unwrap_or_default();
                    format!("{} {}", peer.ip(), names.join(","))
                },
            ),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stats = Arc::new(ListenStats::default());
    let stop = CancellationToken::new();
    tokio::spawn(serve(listener, router, config, stats.clone(), stop.clone()));
    (port, stats, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_names_reach_the_request() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("device CA");
    let dir = tempfile::tempdir().unwrap();
    let [cert, key, cas] = server_files(dir.path(), &server_ca, &client_ca);
    let tls = lockstep_server::tls::server_config(&cert, &key, Some(&cas)).unwrap();
    let (port, _, stop) = echo_listener(ListenConfig {
        max_connections: 100,
        header_timeout: Duration::from_secs(10),
        body_timeout: Duration::from_secs(10),
        tls: Some(tls),
    })
    .await;
    let url = format!("https://localhost:{port}/whoami");
    let device = client_ca.issue(&["1HGCM82633A004352", "edge-7.fleet.example"]);
    let whoami = |identity| {
        let client = https_client(client_config(&server_ca, identity));
        let url = url.clone();
        async move { client.get(&url).send().await.unwrap().text().await.unwrap() }
    };
    assert_eq!(
        whoami(Some(&device)).await,
        "127.0.0.1 1HGCM82633A004352,edge-7.fleet.example"
    );
    assert_eq!(
        whoami(None).await,
        "127.0.0.1 ",
        "no certificate, no PeerCert"
    );

    // A certificate from a CA the server does not trust is refused in the handshake.
    let stranger = Ca::new("rogue CA").issue(&["1HGCM82633A004352"]);
    assert!(
        https_client(client_config(&server_ca, Some(&stranger)))
            .get(&url)
            .send()
            .await
            .is_err()
    );
    stop.cancel();
}

/// Reads until EOF or error; `true` if the server closed the socket.
async fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return true,
            Ok(_) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_are_closed_and_connections_capped() {
    let (port, stats, stop) = echo_listener(ListenConfig {
        max_connections: 3,
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        tls: None,
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    // The cap is reached once the server has accepted the three.
    let mut extra = eventually(Duration::from_secs(10), "a refused connection", || async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let _ = s
            .write_all(b"GET /whoami HTTP/1.1\r\nhost: x\r\n\r\n")
            .await;
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => Some(s),
            _ => None,
        }
    })
    .await;
    assert!(closed_by_server(&mut extra).await);
    assert!(stats.refused.load(std::sync::atomic::Ordering::Relaxed) >= 1);

    // The silent ones are closed by the header timeout (1 s), well within 10 s.
    for s in &mut silent {
        let closed = tokio::time::timeout(Duration::from_secs(10), closed_by_server(s)).await;
        assert_eq!(closed, Ok(true), "a silent socket is closed by the server");
    }
    // Their slots are free again.
    let body = eventually(Duration::from_secs(10), "a served request", || async {
        let resp = reqwest::get(format!("http://127.0.0.1:{port}/whoami"))
            .await
            .ok()?;
        resp.text().await.ok()
    })
    .await;
    assert!(body.starts_with("127.0.0.1"), "{body}");

    // A body that stalls is abandoned: the connection does not stay open.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    slow.write_all(b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nabc")
        .await
        .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), closed_by_server(&mut slow)).await;
    assert_eq!(closed, Ok(true));
    stop.cancel();
}

/// The edge verifies the server against a custom CA (`--ca-cert`; the system
/// roots do not know the test CA, so nothing would be sent without it) and
/// presents a device certificate (`--client-cert/--client-key`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_sends_over_https_trusting_a_custom_ca() {
    let server_ca = Ca::new("server CA");
    let client_ca = Ca::new("device CA");
    let dir = tempfile::tempdir().unwrap();
    let ca_pem = dir.path().join("server-ca.pem");
    std::fs::write(&ca_pem, server_ca.cert.pem()).unwrap();
    let (dev, dev_key) = client_ca.issue(&["edge-1.fleet.example"]);
    let (dev_pem, dev_key_pem) = (dir.path().join("dev.pem"), dir.path().join("dev.key"));
    std::fs::write(&dev_pem, dev.pem()).unwrap();
    std::fs::write(&dev_key_pem, dev_key.serialize_pem()).unwrap();
    let app = tls_app(dir.path(), &server_ca, Some(&client_ca), &[]).await;
    let server = format!("https://localhost:{}", app.port);

    assert!(
        run_edge(
            &server,
            20,
            &[
                "--ca-cert",
                ca_pem.to_str().unwrap(),
                "--client-cert",
                dev_pem.to_str().unwrap(),
                "--client-key",
                dev_key_pem.to_str().unwrap(),
            ],
        )
        .await,
        "the edge exits cleanly"
    );
    assert_eq!(
        app.db.count("SELECT COUNT(*) FROM telemetry_data").await,
        20
    );
    app.stop().await;
}

/// The logger the server spawns reaches it over HTTPS, trusting the server's
/// certificate file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_spawned_logger_reaches_an_https_server() {
    let server_ca = Ca::new("server CA");
    let dir = tempfile::tempdir().unwrap();
    let edge = edge_bin();
    let app = tls_app(
        dir.path(),
        &server_ca,
        None,
        &["--edge-bin", edge.to_str().unwrap()],
    )
    .await;
    let http = https_client(client_config(&server_ca, None));
    let resp = http
        .post(format!("https://localhost:{}/logger/start", app.port))
        .json(&serde_json::json!({"vehicles": 1, "rate": 20, "duration_s": 1, "seed": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    eventually(Duration::from_secs(30), "the logger's readings", || async {
        (app.db.count("SELECT COUNT(*) FROM telemetry_data").await == 20).then_some(())
    })
    .await;
    app.stop().await;
}

const ADMIN: &str = "tls-bootstrap-admin-secret";
const T0: i64 = 1_764_547_200_000;

/// Posts one seed-form reading of `vin` through `http` (no token).
async fn seed_as(http: &reqwest::Client, base: &str, vin: &str, ts: i64) -> u16 {
    use lockstep_proto::Message as _;
    let r = lockstep_proto::telemetry::TelemetryReading {
        vehicle_vin: vin.to_owned(),
        timestamp: ts,
        speed: Some(42.0),
        battery: Some(80.0),
        ..Default::default()
    };
    http.post(format!("{base}/api/telemetry"))
        .header("content-type", SEED)
        .body(r.encode_to_vec())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Posts a lockstep batch through `http` (no token).
async fn batch_via(http: &reqwest::Client, base: &str, b: &lockstep_proto::v1::Batch) -> u16 {
    use lockstep_proto::Message as _;
    http.post(format!("{base}/api/v1/batch"))
        .header("content-type", BATCH)
        .body(b.encode_to_vec())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn stored_for(app: &TestApp, vin: &str) -> i64 {
    app.db
        .count(&format!(
            "SELECT count(*) FROM telemetry_data t JOIN vehicles v ON v.id = t.vehicle_id WHERE v.vin = '{vin}'"
        ))
        .await
}

/// Mutual TLS as a device credential: a certificate from the device CA that
/// names a VIN (CN or DNS SAN) writes that VIN with no token and nothing
/// else; without a certificate or token, device auth required answers 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_a_device_credential_for_its_vins() {
    let server_ca = Ca::new("server CA");
    let device_ca = Ca::new("device CA");
    let dir = tempfile::tempdir().unwrap();
    let app = tls_app(
        dir.path(),
        &server_ca,
        Some(&device_ca),
        &[
            "--device-auth",
            "required",
            "--read-auth",
            "required",
            "--admin-token",
            ADMIN,
        ],
    )
    .await;
    let base = format!("https://localhost:{}", app.port);
    let (a, b, c, d) = (vin(71), vin(72), vin(73), vin(74));

    // A certificate for A (CN and SAN).
    let cert_a = device_ca.issue(&[&a]);
    let dev_a = https_client(client_config(&server_ca, Some(&cert_a)));
    assert_eq!(seed_as(&dev_a, &base, &a, T0).await, 200, "A writes A");
    assert_eq!(
        seed_as(&dev_a, &base, &b, T0).await,
        403,
        "A may not write B"
    );
    let mut enc = encoder(&a, 5);
    assert_eq!(
        batch_via(&dev_a, &base, &batch(&mut enc, 0..3, T0)).await,
        200
    );
    let mut enc_b = encoder(&b, 5);
    assert_eq!(
        batch_via(&dev_a, &base, &batch(&mut enc_b, 0..3, T0)).await,
        403,
        "a batch of B over A's certificate"
    );
    // A device certificate is no person: reads need a viewer.
    let r = dev_a
        .get(format!("{base}/api/vehicles"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // No certificate and no token: 401.
    let anonymous = https_client(client_config(&server_ca, None));
    assert_eq!(seed_as(&anonymous, &base, &a, T0 + 1000).await, 401);
    // A certificate that names no VIN proves nothing: 401 as well.
    let edge = device_ca.issue(&["edge-9.fleet.example"]);
    let named = https_client(client_config(&server_ca, Some(&edge)));
    assert_eq!(seed_as(&named, &base, &a, T0 + 2000).await, 401);

    // A certificate naming two VINs (CN, then a SAN in lower case) writes both, no third.
    let lower_d = d.to_ascii_lowercase();
    let cert_cd = device_ca.issue(&[&c, &lower_d]);
    let dev_cd = https_client(client_config(&server_ca, Some(&cert_cd)));
    assert_eq!(seed_as(&dev_cd, &base, &c, T0).await, 200);
    assert_eq!(seed_as(&dev_cd, &base, &d, T0).await, 200);
    assert_eq!(seed_as(&dev_cd, &base, &a, T0 + 3000).await, 403);

    // A token still works beside certificates (bearer first).
    let resp = admin_post(&base, &server_ca, serde_json::json!({"vin": b})).await;
    let tok_b = resp["token"].as_str().unwrap().to_owned();
    let r = dev_a
        .post(format!("{base}/api/telemetry"))
        .bearer_auth(&tok_b)
        .header("content-type", SEED)
        .body({
            use lockstep_proto::Message as _;
            lockstep_proto::telemetry::TelemetryReading {
                vehicle_vin: b.clone(),
                timestamp: T0,
                speed: Some(1.0),
                ..Default::default()
            }
            .encode_to_vec()
        })
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "B's token over A's certificate writes B");

    assert_eq!(stored_for(&app, &a).await, 1 + 3);
    assert_eq!(stored_for(&app, &b).await, 1, "only what B's token wrote");
    assert_eq!(stored_for(&app, &c).await, 1);
    assert_eq!(stored_for(&app, &d).await, 1);
    app.stop().await;
}

/// Creates a token with the bootstrap admin over HTTPS; returns the JSON answer.
async fn admin_post(base: &str, server_ca: &Ca, body: serde_json::Value) -> serde_json::Value {
    let r = https_client(client_config(server_ca, None))
        .post(format!("{base}/api/tokens"))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json().await.unwrap()
}

/// Under TLS the dashboard's session cookie is `Secure` (besides HttpOnly and
/// SameSite=Strict), and the server's own https origin may log in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cookie_is_secure_under_tls() {
    let server_ca = Ca::new("server CA");
    let dir = tempfile::tempdir().unwrap();
    let app = tls_app(
        dir.path(),
        &server_ca,
        None,
        &["--read-auth", "required", "--admin-token", ADMIN],
    )
    .await;
    let base = format!("https://localhost:{}", app.port);
    let viewer =
        admin_post(&base, &server_ca, serde_json::json!({"role": "viewer"})).await["token"]
            .as_str()
            .unwrap()
            .to_owned();
    let http = https_client(client_config(&server_ca, None));
    let r = http
        .post(format!("{base}/api/login"))
        .header("origin", &base)
        .json(&serde_json::json!({ "token": viewer }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "the dashboard's own https origin logs in");
    let set = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    let attrs: Vec<&str> = set.split(';').map(str::trim).collect();
    for want in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
        assert!(attrs.contains(&want), "{want} in {set}");
    }
    let cookie = attrs[0].to_owned();
    assert!(cookie.starts_with("lockstep_session="), "{set}");
    let r = http
        .get(format!("{base}/api/vehicles"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the cookie authenticates over TLS");
    let r = http
        .post(format!("{base}/api/logout"))
        .header("origin", &base)
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let cleared = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cleared.contains("Max-Age=0") && cleared.contains("Secure"),
        "{cleared}"
    );
    app.stop().await;
}
