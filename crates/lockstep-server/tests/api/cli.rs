//! The binary itself: `--help`, the ENABLE_SUPABASE start-up message, and
//! SIGTERM → graceful exit with acknowledged data committed.

use std::process::Stdio;
use std::time::Duration;

use lockstep_proto::telemetry::TelemetryReading;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::helpers::*;

const BIN: &str = env!("CARGO_BIN_EXE_lockstep-server");

/// A command with none of the server's variables inherited, in an empty directory (no .env).
fn server(dir: &std::path::Path) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NO_COLOR", "1")
        .kill_on_drop(true);
    c
}

#[tokio::test]
async fn help_reads_well() {
    let dir = tempfile::tempdir().unwrap();
    let out = server(dir.path()).arg("--help").output().await.unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "DATABASE_URL",
        "LOCKSTEP_DATA_DIR",
        "PORT",
        "ENABLE_SUPABASE",
        "LOCKSTEP_ADMIN_TOKEN",
        "LOCKSTEP_CORS_ORIGINS",
        "LOCKSTEP_EDGE_BIN",
        "[default: 8001]",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
}

#[tokio::test]
async fn supabase_without_database_url_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        server(dir.path())
            .env("ENABLE_SUPABASE", "true")
            .env("SUPABASE_URL", "https://x.supabase.co")
            .output(),
    )
    .await
    .expect("exits at once")
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("DATABASE_URL is not set") && err.contains("SUPABASE_SERVICE_KEY is not set"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = server(dir.path())
        .env("PORT", "0")
        .env("LOCKSTEP_HOST", "127.0.0.1")
        .env("LOCKSTEP_DATA_DIR", dir.path().join("data"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let port: u16 = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.split("Listening on http://127.0.0.1:").nth(1) {
                return rest
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse()
                    .unwrap();
            }
        }
        panic!("the server exited before listening")
    })
    .await
    .expect("listening in time");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let http = reqwest::Client::new();
    use lockstep_proto::Message as _;
    let r = TelemetryReading {
        vehicle_vin: vin(50),
        timestamp: 1_764_000_000_000,
        speed: Some(3.0),
        ..Default::default()
    };
    let resp = http
        .post(format!("http://127.0.0.1:{port}/api/telemetry"))
        .header("content-type", SEED)
        .body(r.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");

    let conn = rusqlite::Connection::open(dir.path().join("data/lockstep.db")).unwrap();
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM telemetry_data", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 1);
}
