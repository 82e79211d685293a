//! The binary as a user runs it: `report --json` on a real Twizy trip, the
//! help texts, and a SIGTERM during an outage that leaves the batches spooled;
//! and the same command line run in-process through `lockstep_edge::cli::run`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use support::{Fault, spawn_server};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lockstep-edge"))
}

fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata")
        .join(rel)
}

#[test]
fn report_json_on_a_twizy_trip_is_within_tolerance() {
    let out = bin()
        .args(["report", "--format", "twizy", "--json"])
        .arg(testdata("twizy-ev/T3_04_22_2021_1.csv"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let signals = v["signals"].as_object().unwrap();
    assert_eq!(signals.len(), lockstep_edge::sources::CHANNEL_NAMES.len());
    for name in lockstep_edge::sources::CHANNEL_NAMES {
        let s = &signals[name];
        let (err, tol) = (
            s["max_error"].as_f64().unwrap(),
            s["tolerance"].as_f64().unwrap(),
        );
        assert!(err <= tol, "{name}: max error {err} > tolerance {tol}");
        assert!((0.0..=1.0).contains(&s["skipped_fraction"].as_f64().unwrap()));
    }
    assert_eq!(
        signals["power"]["fields"], 0,
        "the Twizy has no power column"
    );
    assert_eq!(signals["speed"]["fields"], 1049);
    let o = &v["overall"];
    for k in [
        "skipped_fraction",
        "bytes_per_reading",
        "raw_protobuf_bytes_per_reading",
        "seed_skipped_fraction",
    ] {
        assert!(o[k].as_f64().is_some(), "overall.{k}");
    }
    assert!(
        o["bytes_per_reading"].as_f64().unwrap()
            < o["raw_protobuf_bytes_per_reading"].as_f64().unwrap()
    );
    assert_eq!(o["all_within_tolerance"], true);
}

#[test]
fn every_subcommand_has_help() {
    for sub in [
        &["--help"][..],
        &["simulate", "--help"],
        &["replay", "--help"],
        &["report", "--help"],
    ] {
        let out = bin().args(sub).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("Usage: lockstep-edge"), "{text}");
    }
    let out = bin().args(["replay", "--help"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for opt in [
        "--format",
        "--speed",
        "--as-fast-as-possible",
        "--server",
        "--spool",
        "--seed-wire",
    ] {
        assert!(text.contains(opt), "replay --help mentions {opt}");
    }
}

#[test]
fn sigterm_during_an_outage_leaves_the_batches_spooled() {
    let dir = tempfile::tempdir().unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let child = bin()
        .args([
            "replay",
            "--format",
            "twizy",
            "--as-fast-as-possible",
            "--grace",
            "0.2",
            "--server",
            &url,
            "--spool",
        ])
        .arg(dir.path())
        .arg(testdata("twizy-ev/T3_04_22_2021_1.csv"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the first batches are spooled, then SIGTERM.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".batch")
        })
        .count()
        == 0
    {
        assert!(Instant::now() < deadline, "nothing spooled");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("a child's pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("stopped before the end"), "{stdout}");
    assert!(stdout.contains("sent first on the next start"), "{stdout}");
    assert!(std::fs::read_dir(dir.path()).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("cursor-")
    }));
}

/// `cli::run` is the whole command line as a library call: another binary
/// runs the logger in its own process with it. The default spool lands under
/// the data directory; a usage error is exit code 2, a refused device 1.
#[test]
fn cli_run_in_process_sends_and_reports_failures_in_the_exit_code() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (url, srv, _stop) = rt.block_on(spawn_server(|_, _| Fault::None));
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap();
    let simulate = |url: &str| {
        lockstep_edge::cli::run([
            "lockstep-edge",
            "simulate",
            "--vehicles",
            "2",
            "--duration",
            "30",
            "--as-fast-as-possible",
            "--rng-seed",
            "5",
            "--grace",
            "0.2",
            "--server",
            url,
            "--data-dir",
            data_dir,
        ])
    };
    assert_eq!(simulate(&url), ExitCode::SUCCESS);
    assert_eq!(srv.inner.lock().unwrap().stored.len(), 60);
    let spool = data.path().join("edge-spool").join("simulate-rng-seed-5");
    assert!(spool.is_dir(), "default spool under the data dir");

    let (refusing, _, _stop) = rt.block_on(spawn_server(|_, _| Fault::Unauthorized));
    assert_eq!(simulate(&refusing), ExitCode::FAILURE);
    assert!(
        lockstep_edge::spool::Spool::open(&spool).unwrap().count() > 0,
        "the refused readings stay spooled"
    );
    assert_eq!(
        lockstep_edge::cli::run(["lockstep-edge", "simulate", "--no-such-flag"]),
        ExitCode::from(2)
    );
}

/// Called from inside a tokio runtime, `cli::run` does not nest runtimes (it
/// would panic): it runs on a thread of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_run_inside_a_runtime_runs_on_its_own_thread() {
    let (url, srv, _stop) = spawn_server(|_, _| Fault::None).await;
    let spool = tempfile::tempdir().unwrap();
    let spool_dir = spool.path().to_str().unwrap().to_owned();
    let code = tokio::task::block_in_place(|| {
        lockstep_edge::cli::run([
            "lockstep-edge",
            "simulate",
            "--duration",
            "20",
            "--as-fast-as-possible",
            "--server",
            &url,
            "--spool",
            &spool_dir,
        ])
    });
    assert_eq!(code, ExitCode::SUCCESS);
    assert_eq!(srv.inner.lock().unwrap().stored.len(), 20);
}
