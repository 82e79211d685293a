//! `spawn_app()`, test databases, protobuf builders, a WebSocket client and
//! condition waits with deadlines.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use lockstep_codec::{Catalog, Encoder, EncoderConfig, Reading, Vin};
use lockstep_proto::Message as _;
use lockstep_proto::v1::Batch;
use lockstep_server::{App, Settings};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

pub use lockstep_testkit::{PgDatabase, eventually};
pub const SEED: &str = "application/x-protobuf";
pub const BATCH: &str = "application/x-lockstep-batch";

/// Generates `mod $name { sqlite, postgres }` tests calling `$name(Backend)`.
#[macro_export]
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::helpers::Backend::Postgres).await
            }
        }
    )*};
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database that exists for one test.
pub enum TestDb {
    Sqlite {
        _dir: Arc<tempfile::TempDir>,
        path: PathBuf,
    },
    Postgres(PgDatabase),
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let path = dir.path().join("lockstep.db");
                TestDb::Sqlite {
                    _dir: Arc::new(dir),
                    path,
                }
            }
            Backend::Postgres => TestDb::Postgres(PgDatabase::create("lockstep_test").await),
        }
    }

    pub fn url(&self) -> String {
        match self {
            TestDb::Sqlite { path, .. } => format!("sqlite://{}", path.display()),
            TestDb::Postgres(db) => db.url(),
        }
    }

    /// Runs one SQL query and returns the rows as strings (NULL = None), via
    /// the database's own client — not through the server.
    pub async fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        match self {
            TestDb::Sqlite { path, .. } => lockstep_testkit::sqlite_query(path, sql),
            TestDb::Postgres(db) => lockstep_testkit::pg_query(&db.url(), sql).await,
        }
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.query(sql).await[0][0]
            .as_deref()
            .unwrap()
            .parse()
            .unwrap()
    }
}

/// A running server.
pub struct TestApp {
    pub addr: String,
    pub port: u16,
    pub http: reqwest::Client,
    pub db: Arc<TestDb>,
    pub shutdown: CancellationToken,
    pub handle: Option<JoinHandle<anyhow::Result<()>>>,
    /// LOCKSTEP_DATA_DIR of this server (the logger's spool lives there).
    pub data_dir: Arc<tempfile::TempDir>,
}

pub fn settings(db_url: &str, extra: &[&str]) -> Settings {
    let mut args = vec![
        "lockstep-server",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--database-url",
        db_url,
        "--enable-supabase",
        "false",
    ];
    args.extend_from_slice(extra);
    // Only these flags: nothing from the environment of whoever runs the tests.
    Settings::from_args_only(args).expect("valid test settings")
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(Arc::new(TestDb::new(backend).await), &[]).await
}

/// Spawns a server on `db` with extra command-line flags.
pub async fn spawn_app_with(db: Arc<TestDb>, extra: &[&str]) -> TestApp {
    init_tracing();
    let data_dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let mut args = vec!["--data-dir", data_dir.path().to_str().unwrap()];
    args.extend_from_slice(extra);
    let app = App::build(settings(&db.url(), &args))
        .await
        .expect("the server builds");
    start(app, db, data_dir).await
}

pub async fn start(app: App, db: Arc<TestDb>, data_dir: Arc<tempfile::TempDir>) -> TestApp {
    let port = app.port();
    let shutdown = app.shutdown_token();
    let handle = tokio::spawn(app.run());
    TestApp {
        addr: format!("http://127.0.0.1:{port}"),
        port,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap(),
        db,
        shutdown,
        handle: Some(handle),
        data_dir,
    }
}

pub fn init_tracing() {
    // Quiet unless RUST_LOG asks.
    if let Ok(f) = std::env::var("RUST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(f)
            .with_test_writer()
            .try_init();
    }
}

impl TestApp {
    pub async fn post(&self, path: &str, content_type: &str, body: Vec<u8>) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.addr))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn post_seed(
        &self,
        r: &lockstep_proto::telemetry::TelemetryReading,
    ) -> reqwest::Response {
        self.post("/api/telemetry", SEED, r.encode_to_vec()).await
    }

    pub async fn post_batch(&self, b: &Batch) -> reqwest::Response {
        self.post("/api/telemetry", BATCH, b.encode_to_vec()).await
    }

    pub async fn get_json(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.addr))
            .send()
            .await
            .expect("request")
            .json()
            .await
            .expect("json")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.addr))
            .send()
            .await
            .expect("request")
    }

    /// GET that must answer 200 with JSON.
    pub async fn ok_json(&self, path: &str) -> Value {
        let resp = self.get(path).await;
        assert_eq!(resp.status(), 200, "GET {path}");
        resp.json().await.expect("json")
    }

    /// Posts readings `range` of [`drive`] in batches of at most 200, each acknowledged.
    pub async fn post_readings(&self, enc: &mut Encoder, range: std::ops::Range<usize>, t0: i64) {
        let mut k = range.start;
        while k < range.end {
            let end = (k + 200).min(range.end);
            let resp = self.post_batch(&batch(enc, k..end, t0)).await;
            assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
            k = end;
        }
    }

    pub async fn status(&self) -> Value {
        self.get_json("/status").await
    }

    /// Waits until the store's daily statistics hold every reading the
    /// server counted (`/status`): the writer stores statistics and
    /// `last_seen` once a second, not with every commit. Panics after 10 s.
    pub async fn stats_written(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let counted = self.status().await["compression_stats"]["total_readings"]
                .as_i64()
                .unwrap();
            let stored = self
                .db
                .count("SELECT COALESCE(SUM(readings), 0) FROM compression_stats")
                .await;
            if stored == counted {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "statistics not written: {stored} stored, {counted} counted"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Shuts down and waits for `run` to return.
    pub async fn stop(mut self) -> Arc<TestDb> {
        self.shutdown.cancel();
        let h = self.handle.take().unwrap();
        tokio::time::timeout(Duration::from_secs(15), h)
            .await
            .expect("shutdown within 15 s")
            .unwrap()
            .unwrap();
        self.db.clone()
    }

    pub async fn ws(&self) -> Ws {
        Ws::connect(&format!("ws://127.0.0.1:{}/ws", self.port)).await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A test WebSocket client.
pub struct Ws {
    pub stream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl Ws {
    pub async fn connect(url: &str) -> Self {
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("ws connect");
        Self { stream }
    }

    /// The next text message as JSON; panics after `timeout`.
    pub async fn next_json(&mut self, timeout: Duration) -> Value {
        loop {
            let m = tokio::time::timeout(timeout, self.stream.next())
                .await
                .expect("a WebSocket message in time")
                .expect("open")
                .expect("ok");
            if let Message::Text(t) = m {
                return serde_json::from_str(&t).expect("json");
            }
        }
    }

    /// Reads until a message with `type` = `kind` satisfies `pred`.
    pub async fn until(
        &mut self,
        timeout: Duration,
        kind: &str,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        // What came instead, for the failure message.
        let mut seen: Vec<String> = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let next = tokio::time::timeout(
                left.max(Duration::from_millis(1)),
                self.next_json(Duration::MAX),
            )
            .await;
            let Ok(v) = next else {
                panic!(
                    "no matching {kind:?} message within {timeout:?}; {} others came: {:?}",
                    seen.len(),
                    &seen[seen.len().saturating_sub(10)..]
                );
            };
            if v["type"] == kind && pred(&v) {
                return v;
            }
            let mut text = v.to_string();
            text.truncate(300);
            seen.push(text);
        }
    }

    pub async fn send_json(&mut self, v: Value) {
        self.stream
            .send(Message::Text(v.to_string().into()))
            .await
            .expect("ws send");
    }
}

pub fn catalog() -> Arc<Catalog> {
    Arc::new(Catalog::default_v1())
}

/// Test VINs: valid, distinct.
pub fn vin(n: u32) -> String {
    format!("5YJ3E1EA{n:09}")
}

/// A plausible drive: speed ramps, battery drains, position moves.
pub fn drive(k: usize, t0: i64) -> Reading {
    let t = k as f64;
    let speed = (40.0 + 30.0 * (t / 20.0).sin()).max(0.0);
    let heading = (t * 1.5) % 360.0;
    let lat = 48.85 + t * 1.0e-5;
    let lon = 2.35 + t * 1.5e-5;
    Reading {
        timestamp_ms: t0 + k as i64 * 1000,
        values: vec![
            Some(speed),
            Some(90.0 - t * 0.01),
            Some(10.0 * (t / 7.0).cos()),
            Some(heading),
            Some(lat),
            Some(lon),
            Some(35.0 + (t / 30.0).sin()),
        ],
    }
}

/// An encoder for a new session of `vin`.
pub fn encoder(vin: &str, session: u64) -> Encoder {
    Encoder::new(
        catalog(),
        Vin::parse(vin).unwrap(),
        session,
        EncoderConfig::default(),
    )
}

/// Encodes readings `range` of [`drive`] into one batch.
pub fn batch(enc: &mut Encoder, range: std::ops::Range<usize>, t0: i64) -> Batch {
    for k in range {
        enc.push(&drive(k, t0));
    }
    enc.take_batch().expect("a batch")
}

/// The real `lockstep-edge` (built by `cargo build --workspace --bins`, or
/// named by LOCKSTEP_EDGE_BIN).
pub fn edge_bin() -> PathBuf {
    let bin = std::env::var_os("LOCKSTEP_EDGE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // target/debug/deps/api-… → target/debug/lockstep-edge
            std::env::current_exe()
                .unwrap()
                .parent()
                .unwrap()
                .parent()
                .unwrap()
                .join("lockstep-edge")
        });
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p lockstep-edge` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// Runs the real edge's `simulate` against `server` for one second of one
/// vehicle's readings at `rate` Hz, until it exits — which it does once every
/// reading is acknowledged; returns whether it exited successfully.
pub async fn run_edge(server: &str, rate: u32, extra: &[&str]) -> bool {
    let spool = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(edge_bin());
    let rate = rate.to_string();
    cmd.args(["simulate", "--vehicles", "1", "--duration", "1"])
        .args(["--rate", &rate])
        .args(["--server", server, "--grace", "2", "--request-timeout", "5"])
        .arg("--spool")
        .arg(spool.path())
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let status = tokio::time::timeout(Duration::from_secs(60), cmd.status())
        .await
        .expect("the edge exits")
        .unwrap();
    status.success()
}
