//! The binary itself: `--help`, the ENABLE_SUPABASE start-up message,
//! SIGTERM → graceful exit with acknowledged data committed, and SIGKILL →
//! a restart that resumes every session where the last acknowledgement left it.

use std::process::Stdio;
use std::time::Duration;

use lockstep_proto::telemetry::TelemetryReading;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::both_stores;
use crate::helpers::*;

both_stores!(
    sigkill_and_restart_resumes_sessions,
    sigterm_shuts_down_gracefully,
);

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

/// The server binary, running on port 0 with `env`; its port read from its log.
struct Running {
    child: tokio::process::Child,
    port: u16,
}

impl Running {
    async fn start(dir: &std::path::Path, env: &[(&str, String)]) -> Self {
        let mut cmd = server(dir);
        cmd.env("PORT", "0")
            .env("LOCKSTEP_HOST", "127.0.0.1")
            .env("LOCKSTEP_DATA_DIR", dir.join("data"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
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
        Self { child, port }
    }

    async fn post(&self, content_type: &str, body: Vec<u8>) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/api/telemetry", self.port))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap()
    }

    fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id().unwrap() as i32).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
    }
}

async fn sigterm_shuts_down_gracefully(backend: Backend) {
    use lockstep_proto::Message as _;
    let dir = tempfile::tempdir().unwrap();
    // SQLite by default (the file in the data directory), PostgreSQL by DATABASE_URL.
    let db = TestDb::new(backend).await;
    let env = match backend {
        Backend::Sqlite => vec![],
        Backend::Postgres => vec![("DATABASE_URL", db.url())],
    };
    let mut server = Running::start(dir.path(), &env).await;
    let r = TelemetryReading {
        vehicle_vin: vin(50),
        timestamp: 1_764_000_000_000,
        speed: Some(3.0),
        ..Default::default()
    };
    assert_eq!(server.post(SEED, r.encode_to_vec()).await.status(), 200);

    server.signal(rustix::process::Signal::TERM);
    let status = tokio::time::timeout(Duration::from_secs(15), server.child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");

    let sql = "SELECT COUNT(*) FROM telemetry_data";
    let n = match backend {
        Backend::Sqlite => {
            lockstep_testkit::sqlite_query(&dir.path().join("data/lockstep.db"), sql)[0][0]
                .as_deref()
                .unwrap()
                .parse::<i64>()
                .unwrap()
        }
        Backend::Postgres => db.count(sql).await,
    };
    assert_eq!(n, 1);
}

async fn sigkill_and_restart_resumes_sessions(backend: Backend) {
    use lockstep_proto::Message as _;
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new(backend).await;
    let env = [("DATABASE_URL", db.url())];
    let t0 = 1_764_000_000_000;
    let mut enc = encoder(&vin(60), 0x6060);
    let batches: Vec<Vec<u8>> = (0..4)
        .map(|b| batch(&mut enc, b * 25..(b + 1) * 25, t0).encode_to_vec())
        .collect();
    let mut seed = lockstep_codec::SeedPredictor::default();
    let mut seed_reading = |k: usize| {
        let r = drive(k, t0);
        let a = [
            r.values[0].unwrap(),
            r.values[1].unwrap(),
            r.values[2].unwrap(),
            r.values[3].unwrap(),
        ];
        seed.encode(
            &vin(61),
            r.timestamp_ms,
            a,
            lockstep_codec::seed::SEED_TOLERANCES,
        )
        .encode_to_vec()
    };
    let seed_bodies: Vec<Vec<u8>> = (0..20).map(&mut seed_reading).collect();

    let mut first = Running::start(dir.path(), &env).await;
    for b in &batches[..2] {
        assert_eq!(first.post(BATCH, b.clone()).await.status(), 200);
    }
    for s in &seed_bodies[..10] {
        assert_eq!(first.post(SEED, s.clone()).await.status(), 200);
    }
    first.signal(rustix::process::Signal::KILL);
    first.child.wait().await.unwrap();

    // A new process continues both sessions from the committed state: no 409.
    let mut second = Running::start(dir.path(), &env).await;
    let resp = second.post(BATCH, batches[1].clone()).await;
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["duplicate"],
        true,
        "an acknowledged batch stays acknowledged"
    );
    for b in &batches[2..] {
        let resp = second.post(BATCH, b.clone()).await;
        assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    }
    for s in &seed_bodies[10..] {
        assert_eq!(second.post(SEED, s.clone()).await.status(), 200);
    }
    second.signal(rustix::process::Signal::TERM);
    second.child.wait().await.unwrap();

    assert_eq!(db.count("SELECT COUNT(*) FROM telemetry_data").await, 120);
    // The seed predictor resumed exactly: values stay within the seed tolerances after the restart.
    let rows = db.query("SELECT t.ts, t.speed, t.battery, t.power, t.heading FROM telemetry_data t WHERE t.session_id = 0 ORDER BY t.ts").await;
    assert_eq!(rows.len(), 20);
    for (k, row) in rows.iter().enumerate() {
        let r = drive(k, t0);
        for i in 0..4 {
            let stored: f64 = row[1 + i].as_deref().unwrap().parse().unwrap();
            let actual = r.values[i].unwrap();
            assert!(
                (stored - actual).abs() <= lockstep_codec::seed::SEED_TOLERANCES[i] + 1e-9,
                "seed field {i} of reading {k}: {stored} vs {actual}"
            );
        }
    }
}
