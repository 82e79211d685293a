//! The pieces every end-to-end test needs: the real binaries, free ports,
//! throw-away databases, a server process that can be killed and restarted,
//! an edge process whose output is kept, condition waits with deadlines, and
//! the comparison of stored rows with what the edge replayed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lockstep_codec::{Catalog, Reading};
use lockstep_edge::sources::{self, Format, Trip};
use tokio::time::Instant;

pub use lockstep_testkit::{PG_ADDR, PgDatabase, Proxy, eventually, free_port};

/// The shortest recorded Twizy trip (1049 rows at 1 Hz).
pub const SHORT_TRIP: &str = "T3_04_22_2021_1.csv";

/// Replay pace for tests that interrupt a replay: [`SHORT_TRIP`] at 100× takes
/// ≈ 10.5 s, cut into batches of 20 readings, so rows arrive steadily.
pub const PACE_100: [&str; 6] = [
    "--speed",
    "100",
    "--batch-readings",
    "20",
    "--batch-delay-ms",
    "200",
];

/// ≈ 5 s at 200× in batches of 10: a request is in flight much of the time.
pub const PACE_200: [&str; 6] = [
    "--speed",
    "200",
    "--batch-readings",
    "10",
    "--batch-delay-ms",
    "100",
];

/// A Twizy trip with corrupt dates (5200 rows, 34 timestamps rebuilt by the edge).
pub const REPAIRED_TRIP: &str = "T1_06_30_2021_1.csv";

/// A binary of this workspace, next to the test executable's directory
/// (`target/debug/deps/e2e-…` → `target/debug/NAME`). Fails when it is missing,
/// or older than a Rust source it is built from (the test would exercise old
/// code): `cargo nextest run -p lockstep-e2e` does not rebuild other crates' binaries.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from target/<profile>/deps");
    let bin = dir.join(name);
    let built = std::fs::metadata(&bin).and_then(|m| m.modified());
    let Ok(built) = built else {
        panic!(
            "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
            bin.display()
        )
    };
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // The server carries the edge (its built-in logger), so its sources count too.
    for krate in [name, "lockstep-edge", "lockstep-codec", "lockstep-proto"] {
        if let Some((newest, path)) = newest_source(&crates.join(krate)) {
            assert!(
                newest <= built,
                "{} is older than {}: run `cargo build --workspace --bins` first (scripts/test.sh does)",
                bin.display(),
                path.display()
            );
        }
    }
    bin
}

/// The most recently modified `.rs`/`.proto`/`Cargo.toml` file of a crate
/// (outside its `tests/`).
fn newest_source(dir: &Path) -> Option<(std::time::SystemTime, PathBuf)> {
    let mut newest: Option<(std::time::SystemTime, PathBuf)> = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                // Tests and benches are not part of the binaries.
                if path
                    .file_name()
                    .is_some_and(|n| n != "tests" && n != "benches" && n != "examples")
                {
                    stack.push(path);
                }
                continue;
            }
            // Not Cargo.toml: a dev-dependency edit does not relink the binary.
            let source = path.extension().is_some_and(|e| e == "rs" || e == "proto");
            if let (true, Ok(t)) = (source, meta.modified())
                && newest.as_ref().is_none_or(|(n, _)| t > *n)
            {
                newest = Some((t, path));
            }
        }
    }
    newest
}

pub fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(rel)
}

// ---------------------------------------------------------------- stores

/// The database one test writes to: a fresh SQLite file, or a fresh
/// PostgreSQL database on 127.0.0.1:5432 that is dropped when this is dropped.
pub enum Db {
    Sqlite {
        path: PathBuf,
    },
    Postgres(PgDatabase),
    /// The `postgres` database of a private cluster the test owns at `addr`
    /// (host:port; see `chaos`).
    Private {
        addr: String,
    },
}

impl Db {
    pub fn sqlite(dir: &Path) -> Self {
        Db::Sqlite {
            path: dir.join("lockstep.db"),
        }
    }

    pub async fn postgres() -> Self {
        Db::Postgres(PgDatabase::create("lockstep_e2e").await)
    }

    /// The URL the server is given (`via` = another host:port for PostgreSQL, e.g. a proxy).
    pub fn url_via(&self, via: &str) -> String {
        match self {
            Db::Sqlite { path } => format!("sqlite://{}", path.display()),
            Db::Postgres(db) => db.url_via(via),
            Db::Private { .. } => format!("postgres://postgres@{via}/postgres"),
        }
    }

    pub fn url(&self) -> String {
        match self {
            Db::Private { addr } => self.url_via(addr),
            _ => self.url_via(PG_ADDR),
        }
    }

    /// One SQL query through the database's own client (never the server);
    /// every value as text, NULL as `None`.
    pub async fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        match self {
            Db::Sqlite { path } => lockstep_testkit::sqlite_query(path, sql),
            Db::Postgres(db) => lockstep_testkit::pg_query(&db.url(), sql).await,
            Db::Private { .. } => lockstep_testkit::pg_query(&self.url(), sql).await,
        }
    }

    /// A single integer result (`SELECT COUNT(*) …`).
    pub async fn count(&self, sql: &str) -> i64 {
        self.query(sql).await[0][0]
            .as_deref()
            .expect("a non-null count")
            .parse()
            .expect("an integer")
    }

    pub async fn readings(&self) -> i64 {
        self.count("SELECT COUNT(*) FROM telemetry_data").await
    }

    /// The stored readings of one vehicle, in timestamp order.
    pub async fn rows_of(&self, vin: &str) -> Vec<StoredRow> {
        let sql = format!(
            "SELECT t.session_id, t.seq, t.ts, t.speed, t.battery, t.power, t.heading, \
                    t.latitude, t.longitude, t.altitude \
             FROM telemetry_data t JOIN vehicles v ON v.id = t.vehicle_id \
             WHERE v.vin = '{vin}' ORDER BY t.ts, t.session_id, t.seq"
        );
        self.query(&sql)
            .await
            .into_iter()
            .map(|r| {
                let int = |i: usize| r[i].as_deref().unwrap().parse::<i64>().unwrap();
                StoredRow {
                    session_id: int(0),
                    seq: int(1),
                    ts: int(2),
                    values: (3..10)
                        .map(|i| r[i].as_deref().map(|s| s.parse::<f64>().unwrap()))
                        .collect(),
                }
            })
            .collect()
    }
}

/// One row of `telemetry_data`.
#[derive(Debug, Clone)]
pub struct StoredRow {
    pub session_id: i64,
    pub seq: i64,
    pub ts: i64,
    /// Catalog channel order.
    pub values: Vec<Option<f64>>,
}

/// Waits until the store holds at least `n` readings (30 s at most).
pub async fn wait_for_readings(db: &Db, n: i64) {
    eventually(
        Duration::from_secs(30),
        &format!("{n} readings committed"),
        || async { (db.readings().await >= n).then_some(()) },
    )
    .await;
}

// --------------------------------------------------------------- processes

/// Sends a signal to a child we spawned (by its PID only).
pub fn signal(child: &Child, sig: rustix::process::Signal) {
    let _ = rustix::process::kill_process(rustix::process::Pid::from_child(child), sig);
}

/// Waits for a child to exit, at most `timeout`.
pub async fn wait_exit(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return Some(st);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn log_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("log file")
}

/// A `lockstep-server` process on a fixed port. Its stdout and stderr go to
/// `server.log` in its data directory (kept across restarts).
pub struct Server {
    pub port: u16,
    pub db_url: String,
    pub dir: tempfile::TempDir,
    pub http: reqwest::Client,
    child: Option<Child>,
    extra: Vec<String>,
    log_filter: String,
}

impl Server {
    /// Starts a server on a free port with `db_url`, and waits until it answers.
    pub async fn start(db_url: &str, extra: &[&str]) -> Self {
        let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
        Self::start_logging(db_url, extra, &filter).await
    }

    /// [`Server::start`] with its `RUST_LOG` filter (for tests that read its log).
    pub async fn start_logging(db_url: &str, extra: &[&str], log_filter: &str) -> Self {
        let mut s = Server {
            port: free_port(),
            db_url: db_url.to_owned(),
            dir: tempfile::tempdir().expect("temp dir"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            log_filter: log_filter.to_owned(),
        };
        s.spawn().await;
        s
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// (Re)starts the process on the same port, database and data directory.
    pub async fn spawn(&mut self) {
        assert!(self.child.is_none(), "the server is already running");
        let data = self.dir.path().join("data");
        let child = Command::new(binary("lockstep-server"))
            // Nothing from the environment of whoever runs the tests (DATABASE_URL, PORT, …),
            // and a working directory without a `.env`.
            .env_clear()
            .env("RUST_LOG", &self.log_filter)
            .current_dir(self.dir.path())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--database-url", &self.db_url])
            .args(["--data-dir", data.to_str().unwrap()])
            .args(["--enable-supabase", "false"])
            // No --edge-bin: the logger is the server's built-in one
            // (`lockstep-server edge …`), as on a fresh clone.
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log_file(&self.log_path()))
            .stderr(log_file(&self.log_path()))
            .spawn()
            .expect("spawn lockstep-server");
        self.child = Some(child);
        let addr = ([127, 0, 0, 1], self.port).into();
        let child = self.child.as_mut().unwrap();
        let ready = lockstep_testkit::wait_for_status(addr, Duration::from_secs(30), || {
            child.try_wait().unwrap().map(|st| st.to_string())
        })
        .await;
        if let Err(e) = ready {
            if self.child.as_mut().unwrap().try_wait().unwrap().is_some() {
                self.child = None;
            }
            panic!("{e}; its log:\n{}", self.log());
        }
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("the server runs");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }

    /// SIGTERM, and wait for a graceful exit (which stops its logger child).
    pub async fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("the server runs");
        signal(&child, rustix::process::Signal::TERM);
        match wait_exit(&mut child, Duration::from_secs(20)).await {
            Some(st) => st,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "lockstep-server did not stop within 20 s of SIGTERM; its log:\n{}",
                    self.log()
                );
            }
        }
    }

    /// `GET /status`; `None` while the server does not answer.
    pub async fn status(&self) -> Option<serde_json::Value> {
        self.get_json("/status").await
    }

    /// `GET /logger/status`; `None` while the server does not answer.
    pub async fn logger_status(&self) -> Option<serde_json::Value> {
        self.get_json("/logger/status").await
    }

    async fn get_json(&self, path: &str) -> Option<serde_json::Value> {
        let r = self
            .http
            .get(format!("{}{path}", self.base()))
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Gracefully, so a logger child is not orphaned; then by force.
            signal(&child, rustix::process::Signal::TERM);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() {
                if std::time::Instant::now() >= deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if std::thread::panicking() {
            eprintln!("---- lockstep-server log ----\n{}", self.log());
        }
    }
}

/// A `lockstep-edge` process; stdout (the summary) and stderr (logs) go to files.
pub struct Edge {
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Edge {
    /// `lockstep-edge replay --format twizy testdata/twizy-ev/FILE --server URL ARGS…`
    /// with a spool of its own.
    pub fn replay(server: &str, file: &str, args: &[&str]) -> Self {
        Self::replay_spooled(server, file, None, args)
    }

    /// The same with the spool in `spool` (`None`: in this edge's own temp dir),
    /// so a second edge can take over what a killed one left.
    pub fn replay_spooled(server: &str, file: &str, spool: Option<&Path>, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = testdata(&format!("twizy-ev/{file}"));
        let spool = spool.map_or_else(|| dir.path().join("spool"), Path::to_path_buf);
        let child = Command::new(binary("lockstep-edge"))
            .env_clear()
            .current_dir(dir.path())
            .args(["replay", "--format", "twizy", path.to_str().unwrap()])
            .args(["--server", server, "--spool", spool.to_str().unwrap()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(log_file(&dir.path().join("stdout")))
            .stderr(log_file(&dir.path().join("stderr")))
            .spawn()
            .expect("spawn lockstep-edge");
        Edge {
            dir,
            child: Some(child),
        }
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("the edge runs");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }

    /// Whether the process has ended (it is still reaped by [`Edge::finish`]).
    pub fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// Waits for the edge to finish; panics (with its output) unless it exits 0 in time.
    pub async fn finish(&mut self, timeout: Duration) -> Summary {
        let child = self.child.as_mut().expect("the edge runs");
        let st = wait_exit(child, timeout).await;
        self.child = None;
        let st = st.unwrap_or_else(|| {
            panic!(
                "lockstep-edge did not finish within {timeout:?}; stdout:\n{}\nstderr:\n{}",
                self.stdout(),
                self.stderr()
            )
        });
        assert!(
            st.success(),
            "lockstep-edge failed ({st}); stdout:\n{}\nstderr:\n{}",
            self.stdout(),
            self.stderr()
        );
        Summary::parse(&self.stdout())
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- lockstep-edge stdout ----\n{}\n---- lockstep-edge stderr ----\n{}",
                self.stdout(),
                self.stderr()
            );
        }
    }
}

/// The numbers of the edge's exit summary (see `lockstep_edge::app::Summary`).
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub text: String,
    pub produced: u64,
    pub acknowledged: u64,
    pub retries: u64,
    pub resyncs: u64,
    pub duplicates: u64,
    pub rejected: u64,
    pub spool_left: u64,
}

impl Summary {
    /// Parses the summary block printed on stdout; panics if a line is missing.
    pub fn parse(text: &str) -> Self {
        let start = text
            .find("lockstep-edge summary")
            .unwrap_or_else(|| panic!("no summary in the edge's output:\n{text}"));
        let text = &text[start..];
        let line = |prefix: &str| {
            text.lines()
                .map(str::trim)
                .find_map(|l| l.strip_prefix(prefix))
                .unwrap_or_else(|| panic!("no {prefix:?} line in the summary:\n{text}"))
                .to_owned()
        };
        // "12 produced, 12 acknowledged" → [12, 12]
        let numbers = |s: &str| -> Vec<u64> {
            s.split(|c: char| !c.is_ascii_digit())
                .filter(|w| !w.is_empty())
                .map(|w| w.parse().unwrap())
                .collect()
        };
        let readings = numbers(&line("readings: "));
        let retries = numbers(&line("retries: "));
        let spool = numbers(&line("spool: "));
        Summary {
            text: text.trim_end().to_owned(),
            produced: readings[0],
            acknowledged: readings[1],
            retries: retries[0],
            resyncs: retries[1],
            duplicates: retries[2],
            rejected: retries[3],
            spool_left: spool[0],
        }
    }
}

// ------------------------------------------------------------------- proxy

// ------------------------------------------------------------ expectations

/// What the edge replays for `file`: its VIN and readings, computed by the
/// edge's own library (same reader, same timestamp repair, same derived heading).
pub fn expected_trip(file: &str) -> (String, Trip) {
    let path = testdata(&format!("twizy-ev/{file}"));
    let trip = sources::load(Format::Twizy, &path).expect("the trip loads");
    // Independently of the reader: one reading per data row of the CSV.
    let text = std::fs::read_to_string(&path).unwrap();
    let data_rows = text
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .count();
    assert_eq!(trip.readings.len(), data_rows, "one reading per CSV row");
    let vin = lockstep_edge::sim::replay_vin(&trip.name)
        .as_str()
        .to_owned();
    (vin, trip)
}

/// Asserts that the store holds `trip` (as replayed for `vin`) exactly once and
/// within tolerance, and nothing else.
pub async fn assert_trip_stored(db: &Db, vin: &str, trip: &Trip) {
    assert_trips_stored(db, &[(vin.to_owned(), trip.clone())]).await;
}

/// [`assert_trip_stored`] for several vehicles: each trip exactly once under
/// its VIN, and nothing else in the store.
pub async fn assert_trips_stored(db: &Db, trips: &[(String, Trip)]) {
    let mut total = 0;
    for (vin, trip) in trips {
        let stored = db.rows_of(vin).await;
        assert_exactly_once_within_tolerance(&trip.readings, &stored);
        total += stored.len() as i64;
    }
    assert_eq!(db.readings().await, total, "nothing but these vehicles");
}

/// Asserts that `stored` holds every reading of `expected` exactly once (by
/// the timestamp the edge assigned), no (session, seq) twice, and every value
/// within the catalog tolerance (position as a 2-D distance, heading on the
/// circle). Nulls must stay null and values must stay values. An impossible GPS
/// fix (|lat| > 90° or |lon| > 180°, e.g. lon 1555.6333 in `T3_06_07_2021.csv`)
/// must be stored as null: the edge's reader nulls it (finding F2), and the
/// codec would too.
pub fn assert_exactly_once_within_tolerance(expected: &[Reading], stored: &[StoredRow]) {
    let catalog = Catalog::default_v1();
    let tol: Vec<f64> = catalog.signals().iter().map(|s| s.tolerance()).collect();
    let name = |ch: usize| catalog.signals()[ch].name.clone();
    use lockstep_edge::sources::{HEADING, LATITUDE, LONGITUDE};

    let mut keys = std::collections::HashSet::new();
    for r in stored {
        assert!(
            keys.insert((r.session_id, r.seq)),
            "(session {:016x}, seq {}) stored twice",
            r.session_id,
            r.seq
        );
    }
    let mut by_ts: HashMap<i64, Vec<&StoredRow>> = HashMap::new();
    for r in stored {
        by_ts.entry(r.ts).or_default().push(r);
    }
    let missing = expected
        .iter()
        .filter(|e| !by_ts.contains_key(&e.timestamp_ms))
        .count();
    let twice = by_ts.values().filter(|v| v.len() > 1).count();
    assert!(
        missing == 0 && twice == 0 && stored.len() == expected.len(),
        "expected {} readings exactly once; stored {}: {missing} missing, {twice} timestamps stored more than once",
        expected.len(),
        stored.len()
    );

    let mut worst = vec![0.0f64; tol.len()];
    for e in expected {
        let s = by_ts[&e.timestamp_ms][0];
        for ch in 0..tol.len() {
            if ch == LATITUDE || ch == LONGITUDE {
                continue;
            }
            match (e.values[ch], s.values[ch]) {
                (None, None) => {}
                (Some(want), Some(got)) => {
                    let err = if ch == HEADING {
                        let d = (got - want).rem_euclid(360.0);
                        d.min(360.0 - d)
                    } else {
                        (got - want).abs()
                    };
                    worst[ch] = worst[ch].max(err);
                    assert!(
                        err <= tol[ch] + 1e-9,
                        "{} at ts {} (seq {}): stored {got}, recorded {want}, error {err} > tolerance {}",
                        name(ch),
                        e.timestamp_ms,
                        s.seq,
                        tol[ch]
                    );
                }
                (want, got) => panic!(
                    "{} at ts {} (seq {}): recorded {want:?}, stored {got:?}",
                    name(ch),
                    e.timestamp_ms,
                    s.seq
                ),
            }
        }
        let recorded = match (e.values[LATITUDE], e.values[LONGITUDE]) {
            (Some(la), Some(lo)) if la.abs() > 90.0 || lo.abs() > 180.0 => (None, None),
            fix => fix,
        };
        match (recorded, (s.values[LATITUDE], s.values[LONGITUDE])) {
            ((None, None), (None, None)) => {}
            ((Some(la), Some(lo)), (Some(sla), Some(slo))) => {
                let d = metres(la, lo, sla, slo);
                worst[LATITUDE] = worst[LATITUDE].max(d);
                assert!(
                    d <= tol[LATITUDE] + 1e-6,
                    "position at ts {}: stored ({sla}, {slo}), recorded ({la}, {lo}): {d:.3} m > {} m",
                    e.timestamp_ms,
                    tol[LATITUDE]
                );
            }
            (want, got) => panic!(
                "position at ts {}: recorded {want:?}, stored {got:?}",
                e.timestamp_ms
            ),
        }
    }
    let report: Vec<String> = (0..tol.len())
        .filter(|&ch| ch != LONGITUDE)
        .map(|ch| {
            let n = if ch == LATITUDE {
                "position".to_owned()
            } else {
                name(ch)
            };
            format!("{n} {}/{}", worst[ch], tol[ch])
        })
        .collect();
    println!(
        "{} readings exactly once; worst error/tolerance: {}",
        expected.len(),
        report.join(", ")
    );
}

/// What a seed-form replay stored, compared with what the edge replayed.
pub struct SeedCheck {
    /// Recorded values (speed, battery, power, heading) stored with an error
    /// above the seed tolerance: (field, ts, recorded, stored).
    pub out_of_tolerance: Vec<(String, i64, f64, Option<f64>)>,
    /// Values absent from the recording (e.g. the Twizy's power) that were
    /// stored as a number: (field, ts, stored).
    pub invented: Vec<(String, i64, f64)>,
}

/// Asserts that the seed form stored every reading exactly once (session 0,
/// seq = timestamp) and reports how the seed fields compare (see [`SeedCheck`]).
pub fn check_seed_rows(expected: &[Reading], stored: &[StoredRow]) -> SeedCheck {
    use lockstep_codec::seed::{SEED_FIELDS, SEED_TOLERANCES};
    let catalog = Catalog::default_v1();
    let by_ts: HashMap<i64, &StoredRow> = stored.iter().map(|r| (r.ts, r)).collect();
    assert!(
        stored.iter().all(|r| r.session_id == 0 && r.seq == r.ts),
        "seed readings are stored with session 0 and seq = timestamp"
    );
    let missing = expected
        .iter()
        .filter(|e| !by_ts.contains_key(&e.timestamp_ms))
        .count();
    assert!(
        missing == 0 && by_ts.len() == stored.len() && stored.len() == expected.len(),
        "expected {} readings exactly once; stored {} ({} distinct timestamps), {missing} missing",
        expected.len(),
        stored.len(),
        by_ts.len()
    );
    let mut check = SeedCheck {
        out_of_tolerance: Vec::new(),
        invented: Vec::new(),
    };
    for e in expected {
        let s = by_ts[&e.timestamp_ms];
        for (field, tol) in SEED_FIELDS.iter().zip(SEED_TOLERANCES) {
            let ch = catalog.index_of(field).expect("a catalog channel");
            match (e.values[ch], s.values[ch]) {
                (Some(want), Some(got)) if (got - want).abs() <= tol + 1e-9 => {}
                (Some(want), got) => {
                    check
                        .out_of_tolerance
                        .push((field.to_string(), e.timestamp_ms, want, got))
                }
                (None, Some(got)) => check
                    .invented
                    .push((field.to_string(), e.timestamp_ms, got)),
                (None, None) => {}
            }
        }
    }
    check
}

/// Great-circle (haversine) distance in metres.
pub fn metres(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    const R: f64 = 6_371_008.8;
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let (dp, dl) = ((lat2 - lat1).to_radians(), (lon2 - lon1).to_radians());
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * R * a.sqrt().asin()
}
