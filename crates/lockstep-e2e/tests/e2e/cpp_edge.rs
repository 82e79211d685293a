//! The codec from C++ (`examples/cpp-edge` on the C ABI of
//! `crates/lockstep-codec-c`): the conformance runner reproduces every
//! vector, and the C++ edge replays a recorded Twizy trip into the real
//! server — exactly once and within tolerance, across a server SIGKILL and
//! restart and an edge SIGKILL and restart on its spool.
//!
//! The programs are built here (`cargo build -p lockstep-codec-c`, then
//! `make`), once per run under a file lock; g++, libcurl and nlohmann-json
//! come from Debian (`examples/cpp-edge/ci.sh` installs them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use lockstep_codec::Reading;
use lockstep_codec::catalog::DEFAULT_SIGNALS;

use crate::harness::*;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Builds the static library and the C++ programs for this test binary's
/// profile; returns the directory holding the programs.
fn cpp_programs() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        // target/<profile>/deps/e2e-… → target/<profile>
        let exe = std::env::current_exe().expect("current exe");
        let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
        let target = profile_dir.parent().expect("target dir");
        let profile = profile_dir.file_name().unwrap().to_str().unwrap();
        let out = target.join("cpp-edge").join(profile);
        std::fs::create_dir_all(&out).unwrap();
        // Test processes run in parallel: one builds, the others wait and find it done.
        let lock = std::fs::File::create(out.join(".lock")).unwrap();
        lock.lock().expect("lock the C++ build");
        let run = |cmd: &mut Command, what: &str| {
            let o = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(
                o.status.success(),
                "{what} failed ({}); examples/cpp-edge/ci.sh installs g++, libcurl and nlohmann-json\n{}{}",
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
        };
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .current_dir(workspace())
            .args(["build", "-q", "-p", "lockstep-codec-c", "--target-dir"])
            .arg(target);
        match profile {
            "debug" => {}
            "release" => {
                cargo.arg("--release");
            }
            p => {
                cargo.args(["--profile", p]);
            }
        }
        run(&mut cargo, "cargo build -p lockstep-codec-c");
        run(
            Command::new("make")
                .arg("-s")
                .arg("-C")
                .arg(workspace().join("examples/cpp-edge"))
                .arg(format!("BUILD={}", out.display()))
                .arg(format!("LOCKSTEP_LIB_DIR={}", profile_dir.display()))
                // Not the benchmark: the tests do not run it.
                .arg(out.join("lockstep-cpp-edge"))
                .arg(out.join("lockstep-cpp-conformance"))
                .arg(out.join("hello-c")),
            "make -C examples/cpp-edge",
        );
        out
    })
}

/// Every `*.json` vector under the codec's conformance folder (all versions),
/// reproduced byte for byte and value for value by the C++ runner; and the
/// header compiles as strict C99 (`hello.c`), whose loop runs.
#[test]
fn cpp_conformance_runner_reproduces_every_vector() {
    let hello = Command::new(cpp_programs().join("hello-c"))
        .output()
        .unwrap();
    assert!(
        hello.status.success() && String::from_utf8_lossy(&hello.stdout).contains("10 batches"),
        "hello-c: {hello:?}"
    );
    let dir = workspace().join("crates/lockstep-codec/conformance");
    let mut vectors = 0;
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "json") {
                vectors += 1;
            }
        }
    }
    assert!(vectors >= 4, "the v1 vectors are there");
    let o = Command::new(cpp_programs().join("lockstep-cpp-conformance"))
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    println!("{text}");
    assert!(o.status.success(), "C++ conformance failed:\n{text}");
    assert_eq!(
        text.lines().filter(|l| l.starts_with("ok ")).count(),
        vectors,
        "one passing line per vector file:\n{text}"
    );
}

/// The readings as a generic CSV (`timestamp_ms` and the catalog's columns;
/// Rust's shortest round-trip formatting, so C++ reads back the same doubles).
fn write_generic_csv(readings: &[Reading], path: &Path) {
    let mut s = format!("timestamp_ms,{}\n", DEFAULT_SIGNALS.join(","));
    for r in readings {
        s += &r.timestamp_ms.to_string();
        for v in &r.values {
            s.push(',');
            if let Some(v) = v {
                s += &v.to_string();
            }
        }
        s.push('\n');
    }
    std::fs::write(path, s).unwrap();
}

/// [`SHORT_TRIP`] as the C++ edge replays it: its VIN and readings, the
/// generic CSV of them and an empty spool folder, in a temp dir; the C++
/// programs built.
struct Replay {
    vin: String,
    trip: lockstep_edge::sources::Trip,
    csv: PathBuf,
    spool: PathBuf,
    _work: tempfile::TempDir,
}

impl Replay {
    fn new() -> Self {
        let (vin, trip) = expected_trip(SHORT_TRIP);
        let work = tempfile::tempdir().unwrap();
        let csv = work.path().join("trip.csv");
        write_generic_csv(&trip.readings, &csv);
        let spool = work.path().join("spool");
        std::fs::create_dir_all(&spool).unwrap();
        cpp_programs();
        Self {
            vin,
            trip,
            csv,
            spool,
            _work: work,
        }
    }
}

/// 1049 s of recording at 100× ≈ 10.5 s, batches of 20: rows arrive steadily.
const PACED: [&str; 4] = ["--batch", "20", "--speed", "100"];

/// A `lockstep-cpp-edge` process with its output in files.
struct CppEdge {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl CppEdge {
    /// Replays `r` into `server` with `args` (e.g. [`PACED`]) and `r`'s spool.
    fn start(server: &str, r: &Replay, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = |n: &str| std::fs::File::create(dir.path().join(n)).unwrap();
        let child = Command::new(cpp_programs().join("lockstep-cpp-edge"))
            .args(["--server", server, "--vin", &r.vin])
            .args(args)
            .arg("--spool")
            .arg(&r.spool)
            .arg(&r.csv)
            .stdin(Stdio::null())
            .stdout(file("stdout"))
            .stderr(file("stderr"))
            .spawn()
            .expect("spawn lockstep-cpp-edge");
        Self {
            dir,
            child: Some(child),
        }
    }

    fn output(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    fn kill(&mut self) {
        let mut c = self.child.take().expect("running");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    async fn finish(&mut self) -> Summary {
        let mut c = self.child.take().expect("running");
        let st = wait_exit(&mut c, Duration::from_secs(90)).await;
        let out = || format!("{}\n{}", self.output("stdout"), self.output("stderr"));
        let st = st.unwrap_or_else(|| {
            let _ = c.kill();
            let _ = c.wait();
            panic!("lockstep-cpp-edge did not finish in 90 s:\n{}", out())
        });
        assert!(st.success(), "lockstep-cpp-edge failed ({st}):\n{}", out());
        Summary::parse(&self.output("stdout"))
    }
}

impl Drop for CppEdge {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- lockstep-cpp-edge ----\n{}\n{}",
                self.output("stdout"),
                self.output("stderr")
            );
        }
    }
}

/// The C++ edge replays a Twizy trip; the server is SIGKILLed at 300 stored
/// readings and restarted, the edge is SIGKILLed at 600 and a new one takes
/// over its spool (saved encoder state + unacknowledged batch). Every reading
/// stored exactly once, each value within its tolerance of the recording.
async fn cpp_edge_replay_survives_kills(db: Db) {
    let r = Replay::new();
    let total = r.trip.readings.len() as i64;

    let mut server = Server::start(&db.url(), &[]).await;
    let mut edge = CppEdge::start(&server.base(), &r, &PACED);
    wait_for_readings(&db, 300).await;
    server.kill();
    let at_kill = db.readings().await;
    assert!(at_kill < total, "the replay finished before the kill");
    eventually(
        Duration::from_secs(20),
        "the C++ edge to see the server gone",
        || async { edge.output("stderr").contains("retrying").then_some(()) },
    )
    .await;
    assert_eq!(db.readings().await, at_kill, "nothing stored while down");
    server.spawn().await;

    wait_for_readings(&db, 600).await;
    edge.kill();
    let at_edge_kill = db.readings().await;
    assert!(
        at_edge_kill < total,
        "the replay finished before the edge kill"
    );
    let first_stderr = edge.output("stderr");
    let mut second = CppEdge::start(&server.base(), &r, &PACED);
    let summary = second.finish().await;
    println!("{}", summary.text);
    println!(
        "C++ edge: server killed at {at_kill} rows, edge killed at {at_edge_kill}; \
         first edge retried {} times; final {} of {total}",
        first_stderr.matches("retrying").count(),
        db.readings().await
    );
    assert!(
        first_stderr.matches("retrying").count() >= 1,
        "{first_stderr}"
    );
    assert!(
        summary.text.contains("resumed "),
        "the second edge resumed from the spool"
    );
    assert!(summary.produced < total as u64, "it did not start over");
    assert_trip_stored(&db, &r.vin, &r.trip).await;
    assert_eq!(db.readings().await, total);
    assert!(
        !r.spool.join("edge.spool").exists(),
        "the spool is empty at the end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpp_edge_replay_on_sqlite_survives_server_and_edge_kills() {
    let dir = tempfile::tempdir().unwrap();
    cpp_edge_replay_survives_kills(Db::sqlite(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpp_edge_replay_on_postgres_survives_server_and_edge_kills() {
    cpp_edge_replay_survives_kills(Db::postgres().await).await;
}

/// The cloud lost the session (here: the edge's spool is taken to a server on
/// another, empty database): the resumed C++ edge's next batch is refused with
/// 409 `unknown_session`, the edge rewinds to that batch's first reading and
/// sends again from a keyframe, and everything from there lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpp_edge_resyncs_when_the_server_lost_its_session() {
    let r = Replay::new();

    let (first_dir, second_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first_db = Db::sqlite(first_dir.path());
    let first = Server::start(&first_db.url(), &[]).await;
    let mut edge = CppEdge::start(&first.base(), &r, &PACED);
    wait_for_readings(&first_db, 200).await;
    edge.kill();
    drop(first);

    let db = Db::sqlite(second_dir.path());
    let server = Server::start(&db.url(), &[]).await;
    let mut second = CppEdge::start(&server.base(), &r, &PACED);
    let summary = second.finish().await;
    println!("{}", summary.text);
    let stderr = second.output("stderr");
    let from: usize = stderr
        .split("re-sending from seq ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the edge resynced:\n{stderr}"));
    println!("C++ edge resync: unknown_session, re-sent from seq {from}");
    assert!(stderr.contains("(unknown_session)"), "{stderr}");
    assert_eq!(summary.resyncs, 1);
    assert!(from > 0 && from < r.trip.readings.len());
    let stored = db.rows_of(&r.vin).await;
    assert_exactly_once_within_tolerance(&r.trip.readings[from..], &stored);
    assert_eq!(db.readings().await, (r.trip.readings.len() - from) as i64);
}

/// PostgreSQL cut off behind a proxy: the server answers 503 with
/// `Retry-After: 2`, the C++ edge waits exactly that long between attempts,
/// and once the database is back the trip lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpp_edge_honours_retry_after() {
    let db = Db::postgres().await;
    let r = Replay::new();

    let proxy = Proxy::start(PG_ADDR.to_owned()).await;
    let server = Server::start(&db.url_via(&proxy.addr), &["--retry-after-s", "2"]).await;
    let mut edge = CppEdge::start(&server.base(), &r, &PACED);
    wait_for_readings(&db, 200).await;
    proxy.close();
    // Backoff alone would wait 125–250 ms after a first failure: 2000 ms is the header.
    eventually(
        Duration::from_secs(30),
        "two 503s answered with Retry-After: 2",
        || async {
            let e = edge.output("stderr");
            (e.matches("HTTP 503").count() >= 2 && e.contains("retrying in 2000 ms")).then_some(())
        },
    )
    .await;
    proxy.reopen();
    let summary = edge.finish().await;
    println!("{}", summary.text);
    assert!(summary.retries >= 2);
    assert_eq!(summary.acknowledged, r.trip.readings.len() as u64);
    assert_trip_stored(&db, &r.vin, &r.trip).await;
}

/// `--seed-wire`: the form loggers send today, one `TelemetryReading` per POST
/// through the C ABI's seed predictor. Every reading stored once, every recorded
/// value within the seed tolerance, and none the recording lacks invented.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpp_edge_seed_wire_replay_on_postgres() {
    let db = Db::postgres().await;
    let r = Replay::new();
    let server = Server::start(&db.url(), &[]).await;
    let mut edge = CppEdge::start(&server.base(), &r, &["--seed-wire"]);
    let summary = edge.finish().await;
    println!("{}", summary.text);
    assert!(summary.text.contains("seed wire form"));
    assert_eq!(summary.acknowledged, r.trip.readings.len() as u64);
    let check = check_seed_rows(&r.trip.readings, &db.rows_of(&r.vin).await);
    assert!(
        check.out_of_tolerance.is_empty(),
        "{:?}",
        check.out_of_tolerance
    );
    assert!(check.invented.is_empty(), "{:?}", check.invented);
}
