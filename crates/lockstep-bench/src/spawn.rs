//! Starting and stopping a `lockstep-server` for one run: a free loopback
//! port, a fresh store (SQLite file in a temporary directory, or a uniquely
//! named PostgreSQL database that is dropped after), its log in a file, and
//! `/status` polled until it answers. Also raises this process's open-file
//! limit, which the child inherits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;
use tokio::process::{Child, Command};

use lockstep_testkit::{PgDatabase, free_port};

use crate::cli::StoreKind;
use crate::store::{StoreAccess, redact};

/// The open-file limit before and after raising it.
#[derive(Debug, Clone, Serialize)]
pub struct FdLimit {
    pub needed: u64,
    pub soft_before: Option<u64>,
    pub hard_before: Option<u64>,
    pub soft_after: Option<u64>,
    pub hard_after: Option<u64>,
    pub note: String,
}

/// Raises `RLIMIT_NOFILE` so `needed` descriptors fit: the soft limit up to
/// the hard one, and the hard one too where the process may (root). Children
/// started after this inherit the limit.
pub fn raise_fd_limit(needed: u64) -> FdLimit {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let before = getrlimit(Resource::Nofile);
    let fits = |l: Option<u64>| l.is_none_or(|v| v >= needed);
    let mut note = if fits(before.current) {
        "already sufficient".to_owned()
    } else if fits(before.maximum) {
        match setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(needed),
                maximum: before.maximum,
            },
        ) {
            Ok(()) => format!("raised the soft limit to {needed}"),
            Err(e) => format!("could not raise the soft limit to {needed}: {e}"),
        }
    } else {
        match setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(needed),
                maximum: Some(needed),
            },
        ) {
            Ok(()) => format!("raised the soft and hard limits to {needed}"),
            Err(e) => {
                let r = setrlimit(
                    Resource::Nofile,
                    Rlimit {
                        current: before.maximum,
                        maximum: before.maximum,
                    },
                );
                format!(
                    "could not raise the hard limit to {needed} ({e}); soft limit set to the hard limit ({r:?})"
                )
            }
        }
    };
    let after = getrlimit(Resource::Nofile);
    if !fits(after.current) {
        note.push_str(&format!(
            "; WARNING: {needed} descriptors needed, {:?} allowed: connections beyond it will fail",
            after.current
        ));
    }
    FdLimit {
        needed,
        soft_before: before.current,
        hard_before: before.maximum,
        soft_after: after.current,
        hard_after: after.maximum,
        note,
    }
}

/// A running server started by the harness (the first instance of a
/// cluster, which owns the store; see [`Spawned::add_instances`]).
pub struct Spawned {
    child: Child,
    pub pid: u32,
    pub addr: SocketAddr,
    pub binary: PathBuf,
    pub store: StoreAccess,
    database_url: String,
    extra_env: Vec<String>,
    /// More instances on the same store, in start order.
    peers: Vec<Peer>,
    pg_db: Option<PgDatabase>,
    dir: tempfile::TempDir,
    keep: bool,
}

/// Another instance of the cluster: its own port, log and data directory.
struct Peer {
    child: Child,
    pid: u32,
    addr: SocketAddr,
}

/// Default binary: `lockstep-server` beside this executable.
pub fn default_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find this executable's path")?;
    let dir = me.parent().context("executable has no directory")?;
    // Tests run from target/<profile>/deps; the binary is one level up.
    for d in [dir, dir.parent().unwrap_or(dir)] {
        let p = d.join("lockstep-server");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "lockstep-server not found next to {} (build it: cargo build -p lockstep-server, or pass --spawn PATH)",
        me.display()
    )
}

impl Spawned {
    /// Starts the server and waits for `/status` (at most 60 s).
    pub async fn start(
        binary: PathBuf,
        store: StoreKind,
        pg_admin_url: &str,
        extra_env: &[String],
        keep: bool,
    ) -> anyhow::Result<Self> {
        if !binary.is_file() {
            bail!(
                "{} does not exist (build it: cargo build -p lockstep-server)",
                binary.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("lockstep-bench-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let (database_url, access, pg_db) = match store {
            StoreKind::Sqlite => {
                let p = dir.path().join("bench.db");
                (
                    format!("sqlite://{}", p.display()),
                    StoreAccess::Sqlite(p),
                    None,
                )
            }
            StoreKind::Postgres => {
                let db = PgDatabase::create_at(pg_admin_url, "lockstep_bench")
                    .await
                    .with_context(|| {
                        format!("cannot create a database at {}", redact(pg_admin_url))
                    })?;
                let url = db.url_at_admin();
                (url.clone(), StoreAccess::Postgres(url), Some(db))
            }
        };
        let (child, addr) = start_process(&binary, dir.path(), &database_url, extra_env)?;
        let pid = child.id().context("the server exited at once")?;
        let mut me = Self {
            child,
            pid,
            addr,
            binary,
            store: access,
            database_url,
            extra_env: extra_env.to_vec(),
            peers: Vec::new(),
            pg_db,
            dir,
            keep,
        };
        if let Err(e) = me.wait_ready(Duration::from_secs(60)).await {
            let tail = me.log_tail(20);
            me.stop().await;
            bail!("{e:#}\n--- server log (last lines) ---\n{tail}");
        }
        Ok(me)
    }

    /// Starts `n` more instances on the same store and environment, each in a
    /// directory of its own (`instance-K/`, with its `server.log`), and waits for each.
    pub async fn add_instances(&mut self, n: u32) -> anyhow::Result<()> {
        for _ in 0..n {
            let k = self.peers.len() + 2;
            let dir = self.dir.path().join(format!("instance-{k}"));
            std::fs::create_dir_all(&dir)?;
            let (mut child, addr) =
                start_process(&self.binary, &dir, &self.database_url, &self.extra_env)?;
            let pid = child.id().context("the server exited at once")?;
            let ready = lockstep_testkit::wait_for_status(addr, Duration::from_secs(60), || {
                child.try_wait().ok().flatten().map(|st| st.to_string())
            })
            .await;
            self.peers.push(Peer { child, pid, addr });
            if let Err(e) = ready {
                let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                bail!(
                    "instance {k}: {e}\n--- its log (last lines) ---\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        Ok(())
    }

    /// Creates a fleet token for every VIN starting with `vin_prefix` on the run's
    /// store (`lockstep-server token create`, as an operator would) and returns it.
    pub async fn create_fleet_token(&self, vin_prefix: &str) -> anyhow::Result<String> {
        let out = Command::new(&self.binary)
            .args(["token", "create", "--vin-prefix", vin_prefix])
            .args(["--label", "lockstep-bench"])
            .current_dir(self.dir.path())
            .env("DATABASE_URL", &self.database_url)
            .env("LOCKSTEP_DATA_DIR", self.dir.path())
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("cannot run {} token create", self.binary.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        match stdout.lines().last().map(str::trim) {
            Some(token) if out.status.success() && token.starts_with("lst_") => {
                Ok(token.to_owned())
            }
            _ => bail!(
                "token create failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }
    }

    /// Every instance's address, the first one first.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        std::iter::once(self.addr)
            .chain(self.peers.iter().map(|p| p.addr))
            .collect()
    }

    /// Every instance's PID, in the order of [`Spawned::addrs`].
    pub fn pids(&self) -> Vec<u32> {
        std::iter::once(self.pid)
            .chain(self.peers.iter().map(|p| p.pid))
            .collect()
    }

    async fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let child = &mut self.child;
        lockstep_testkit::wait_for_status(self.addr, within, || {
            child.try_wait().ok().flatten().map(|st| st.to_string())
        })
        .await
        .map_err(anyhow::Error::msg)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The last `n` lines of the server's log.
    pub fn log_tail(&self, n: usize) -> String {
        let s = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// SIGTERM, up to 15 s for a graceful exit, then SIGKILL; drops the database
    /// (unless --keep). Returns the exit status text.
    /// With more instances, each one's status after the first's, `; `-separated.
    pub async fn stop(mut self) -> String {
        let mut status = stop_child(&mut self.child, self.pid).await;
        for (k, mut p) in std::mem::take(&mut self.peers).into_iter().enumerate() {
            let st = stop_child(&mut p.child, p.pid).await;
            status.push_str(&format!("; instance {}: {st}", k + 2));
        }
        let db = self.pg_db.take();
        if self.keep {
            let dir = std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("temporary directory"),
            );
            let kept = dir.keep();
            eprintln!(
                "kept the server's directory {} and database {:?}",
                kept.display(),
                db.map(PgDatabase::keep)
            );
        }
        // Otherwise the database is dropped with `db`.
        status
    }
}

/// SIGTERM, up to 15 s for a graceful exit, then SIGKILL; the exit status as text.
async fn stop_child(child: &mut Child, pid: u32) -> String {
    if let Ok(Some(st)) = child.try_wait() {
        return format!("had already exited: {st}");
    }
    if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
        Ok(Ok(st)) => st.to_string(),
        _ => {
            let _ = child.kill().await;
            "killed after 15 s without exiting".to_owned()
        }
    }
}

/// Starts one server process on a free loopback port, logging to `dir/server.log`.
fn start_process(
    binary: &std::path::Path,
    dir: &std::path::Path,
    database_url: &str,
    extra_env: &[String],
) -> anyhow::Result<(Child, SocketAddr)> {
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let log = std::fs::File::create(dir.join("server.log"))?;
    let mut cmd = Command::new(binary);
    cmd.current_dir(dir)
        .env("PORT", port.to_string())
        .env("LOCKSTEP_HOST", "127.0.0.1")
        .env("DATABASE_URL", database_url)
        .env("LOCKSTEP_DATA_DIR", dir)
        // A load test measures the server, not its abuse limits: every load
        // generator is one loopback address driving many vehicles flat out.
        .env("LOCKSTEP_DEVICE_REQUESTS_PER_S", "0")
        .env("LOCKSTEP_DEVICE_READINGS_PER_S", "0")
        .env("LOCKSTEP_IP_REQUESTS_PER_S", "0")
        .env("LOCKSTEP_WS_PER_IP", "1000000")
        .env("LOCKSTEP_MAX_CONNECTIONS", "1000000")
        .env(
            "RUST_LOG",
            std::env::var("LOCKSTEP_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    for kv in extra_env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--server-env {kv:?} is not KEY=VALUE"))?;
        cmd.env(k, v);
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    Ok((child, addr))
}

/// Is this a loopback URL? Returns its socket address.
pub fn loopback_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url
        .strip_prefix("http://")
        .context("--url must start with http://")?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h, p.parse::<u16>().context("bad port in --url")?)
        }
        _ => (hostport, 80),
    };
    let ip: std::net::IpAddr = match host {
        "localhost" => [127, 0, 0, 1].into(),
        h => h
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .with_context(|| format!("--url host {h:?} is not an IP address or localhost"))?,
    };
    if !ip.is_loopback() {
        bail!("--url must point at a loopback address (127.0.0.1, ::1, localhost); got {host}");
    }
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback() {
        assert_eq!(loopback_addr("http://127.0.0.1:8001").unwrap().port(), 8001);
        assert!(loopback_addr("http://localhost:9/x").is_ok());
        assert!(loopback_addr("http://10.0.0.1:8001").is_err());
        assert!(loopback_addr("https://127.0.0.1").is_err());
    }

    #[test]
    fn fd_limit_is_reported() {
        let l = raise_fd_limit(64);
        assert!(l.soft_after.is_none_or(|v| v >= 64), "{l:?}");
    }
}
