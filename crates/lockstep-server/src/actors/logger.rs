//! Logger orchestration: a supervisor actor that starts `lockstep-edge` as a
//! child process pointed at this server, streams every line it prints to the
//! WebSocket (`{"type":"log","data":{"source":"logger",…}}`) and to tracing,
//! and stops it with SIGTERM, then SIGKILL after a grace period — also when
//! the server shuts down, so the child is never orphaned.
//!
//! The child runs in its own process group: a Ctrl-C in the server's
//! terminal reaches only the server, which then stops the child in order.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use futures_util::future::BoxFuture;

use crate::actors::hub::{Hub, HubEvent, Level};
use crate::auth::{Auth, Scope};
use crate::model::now_ms;
use crate::protocol::ServerMsg;
pub use crate::protocol::{LoggerStatus, StartRequest};

impl StartRequest {
    /// The edge's command line (without the binary), or what is wrong.
    pub fn args(&self, server_url: &str) -> Result<Vec<String>, String> {
        let mut a = Vec::new();
        let replay = self.replay.as_deref().unwrap_or_default();
        if !replay.is_empty() {
            if self.vehicles.is_some() || self.rate.is_some() || self.seed.is_some() {
                return Err("give either replay files or vehicles/rate/seed, not both".into());
            }
            let format = self
                .format
                .as_deref()
                .ok_or("replay needs a format: twizy, cycling or csv")?;
            if !matches!(format, "twizy" | "cycling" | "csv") {
                return Err(format!(
                    "format {format:?} is not one of twizy, cycling, csv"
                ));
            }
            if let Some(f) = replay.iter().find(|f| f.is_empty() || f.starts_with('-')) {
                return Err(format!("replay file {f:?} is not a file name"));
            }
            a.extend(["replay".into(), "--format".into(), format.into()]);
            a.extend(replay.iter().cloned());
            match (self.speed, self.as_fast_as_possible) {
                (Some(_), true) => return Err("give speed or as_fast_as_possible, not both".into()),
                (Some(s), false) if !(s.is_finite() && s > 0.0) => {
                    return Err("speed must be a positive number".into());
                }
                (Some(s), false) => a.extend(["--speed".into(), s.to_string()]),
                (None, true) => a.push("--as-fast-as-possible".into()),
                (None, false) => {}
            }
        } else {
            if self.format.is_some() || self.speed.is_some() {
                return Err("format and speed apply to replay only; give replay files".into());
            }
            let vehicles = self.vehicles.unwrap_or(1);
            if !(1..=10_000).contains(&vehicles) {
                return Err("vehicles must be between 1 and 10000".into());
            }
            let rate = self.rate.unwrap_or(1.0);
            if !(rate.is_finite() && rate > 0.0 && rate <= 1000.0) {
                return Err("rate must be a number of readings per second in (0, 1000]".into());
            }
            a.extend([
                "simulate".into(),
                "--vehicles".into(),
                vehicles.to_string(),
                "--rate".into(),
                rate.to_string(),
            ]);
            if let Some(k) = self.seed {
                a.extend(["--seed".into(), k.to_string()]);
            }
            if self.as_fast_as_possible {
                a.push("--as-fast-as-possible".into());
            }
        }
        if let Some(d) = self.duration_s {
            if !(d.is_finite() && d > 0.0) {
                return Err("duration_s must be a positive number of seconds".into());
            }
            a.extend(["--duration".into(), d.to_string()]);
        }
        a.extend(["--server".into(), server_url.into()]);
        Ok(a)
    }

    /// [`Self::args`] with the replay files resolved inside the replay
    /// directory, plus `--spool DIR` when the server names one.
    fn command_line(&self, config: &LoggerConfig) -> Result<Vec<String>, String> {
        let mut confined = self.clone();
        if let Some(files) = &self.replay {
            confined.replay = Some(
                files
                    .iter()
                    .map(|f| {
                        crate::sandbox::resolve_replay(config.replay_dir.as_deref(), f)
                            .map(|p| p.display().to_string())
                    })
                    .collect::<Result<_, _>>()?,
            );
        } else {
            let load = f64::from(self.vehicles.unwrap_or(1)) * self.rate.unwrap_or(1.0);
            if load > crate::sandbox::MAX_SIM_READINGS_PER_S {
                return Err(format!(
                    "vehicles × rate is {load} readings per second; the server's logger simulates at most {}",
                    crate::sandbox::MAX_SIM_READINGS_PER_S
                ));
            }
        }
        let mut a = confined.args(&config.server_url)?;
        // A server killed outright cannot stop its child: the child watches.
        a.push("--exit-with-parent".into());
        if let Some(dir) = &config.spool {
            a.extend(["--spool".into(), dir.display().to_string()]);
        }
        if let Some(ca) = &config.ca_cert {
            a.extend(["--ca-cert".into(), ca.display().to_string()]);
        }
        Ok(a)
    }

    /// The VIN prefix the child writes (its credential's scope): the
    /// simulator's `LKS`, or `LKR` for replays (see `lockstep-edge`'s `sim`).
    fn vin_prefix(&self) -> &'static str {
        if self.replay.as_ref().is_some_and(|r| !r.is_empty()) {
            "LKR"
        } else {
            "LKS"
        }
    }
}

/// Result of a start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    Started { pid: u32 },
    AlreadyRunning { pid: u32 },
}

/// Result of a stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stopped {
    Stopped { exit_code: Option<i32> },
    NotRunning,
}

/// Why a start failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LoggerError {
    /// The options are invalid (400).
    #[error("{0}")]
    BadRequest(String),
    /// The logger cannot run here (503): binary missing, spawn failed, shutting down.
    #[error("{0}")]
    Unavailable(String),
}

enum Cmd {
    Start(StartRequest, oneshot::Sender<Result<Started, LoggerError>>),
    Stop(oneshot::Sender<Stopped>),
}

/// One logger for several instances (see `logger_lease`): start, stop and
/// status go through it when attached; `local` is this instance's supervisor.
pub trait ClusterControl: Send + Sync {
    fn start<'a>(
        &'a self,
        local: &'a LoggerHandle,
        req: StartRequest,
    ) -> BoxFuture<'a, Result<Started, LoggerError>>;
    fn stop<'a>(&'a self, local: &'a LoggerHandle) -> BoxFuture<'a, Stopped>;
    /// The cluster's logger status (what the lease holder last wrote).
    fn status(&self, local: &LoggerHandle) -> LoggerStatus;
}

/// Cheap handle to the supervisor.
#[derive(Clone)]
pub struct LoggerHandle {
    tx: mpsc::Sender<Cmd>,
    status: Arc<Mutex<LoggerStatus>>,
    cluster: Arc<OnceLock<Arc<dyn ClusterControl>>>,
}

impl LoggerHandle {
    /// Makes start, stop and status the cluster's (once, at start).
    pub fn attach_cluster(&self, cluster: Arc<dyn ClusterControl>) {
        let _ = self.cluster.set(cluster);
    }

    /// Starts the logger: the cluster's if attached, else this instance's child.
    pub async fn start(&self, req: StartRequest) -> Result<Started, LoggerError> {
        match self.cluster.get() {
            Some(c) => c.start(self, req).await,
            None => self.start_local(req).await,
        }
    }

    /// Stops the logger: the cluster's if attached, else this instance's child.
    pub async fn stop(&self) -> Stopped {
        match self.cluster.get() {
            Some(c) => c.stop(self).await,
            None => self.stop_local().await,
        }
    }

    /// The logger's status: the cluster's if attached, else this instance's child's.
    pub fn status(&self) -> LoggerStatus {
        match self.cluster.get() {
            Some(c) => c.status(self),
            None => self.local_status(),
        }
    }

    /// Starts this instance's child.
    pub async fn start_local(&self, req: StartRequest) -> Result<Started, LoggerError> {
        let (tx, rx) = oneshot::channel();
        let gone = || LoggerError::Unavailable("the server is shutting down".into());
        self.tx
            .send(Cmd::Start(req, tx))
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }

    /// Stops this instance's child.
    pub async fn stop_local(&self) -> Stopped {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Cmd::Stop(tx)).await.is_err() {
            return Stopped::NotRunning;
        }
        rx.await.unwrap_or(Stopped::NotRunning)
    }

    /// This instance's child.
    pub fn local_status(&self) -> LoggerStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Where and how to run the child.
#[derive(Debug, Clone)]
pub struct LoggerConfig {
    /// `None` = `lockstep-edge` next to the current executable.
    pub bin: Option<PathBuf>,
    pub grace: Duration,
    /// This server's URL, passed as `--server`.
    pub server_url: String,
    /// With HTTPS: the server's certificate file, which the child trusts (`--ca-cert`).
    pub ca_cert: Option<PathBuf>,
    /// The child's spool directory (`--spool`), so it does not land in the server's working directory.
    pub spool: Option<PathBuf>,
    /// `LOCKSTEP_REPLAY_DIR`, canonical; `None` = replay through the server is off.
    pub replay_dir: Option<PathBuf>,
}

impl LoggerConfig {
    /// The program and the arguments that precede the edge's own: the
    /// configured binary as is, or else this server binary's `edge` subcommand
    /// (always present and always the same version as the server).
    fn program(&self) -> Result<(PathBuf, Vec<String>), LoggerError> {
        match &self.bin {
            Some(p) if p.is_file() => Ok((p.clone(), Vec::new())),
            Some(p) => Err(LoggerError::Unavailable(format!(
                "the logger binary {} (LOCKSTEP_EDGE_BIN) does not exist; unset LOCKSTEP_EDGE_BIN to use the server's built-in logger",
                p.display()
            ))),
            None => std::env::current_exe()
                .map(|exe| (exe, vec!["edge".to_owned()]))
                .map_err(|e| {
                    LoggerError::Unavailable(format!(
                        "cannot locate the server binary to start its built-in logger ({e}); set LOCKSTEP_EDGE_BIN to a lockstep-edge binary"
                    ))
                }),
        }
    }
}

struct Running {
    pid: u32,
    started: Instant,
    exit: oneshot::Receiver<Option<i32>>,
    /// The run's fleet token, revoked when the run ends.
    token_id: String,
}

/// How long the spawned logger's credential lives.
const CHILD_TOKEN_TTL: Duration = Duration::from_secs(6 * 3600);

/// The supervisor actor.
pub struct Supervisor {
    rx: mpsc::Receiver<Cmd>,
    status: Arc<Mutex<LoggerStatus>>,
    hub: Arc<Hub>,
    config: LoggerConfig,
    running: Option<Running>,
    /// Issues the child's scoped, short-lived credential.
    auth: Arc<Auth>,
}

impl Supervisor {
    pub fn new(config: LoggerConfig, hub: Arc<Hub>, auth: Arc<Auth>) -> (Self, LoggerHandle) {
        let (tx, rx) = mpsc::channel(16);
        let status = Arc::new(Mutex::new(LoggerStatus::default()));
        (
            Self {
                rx,
                status: status.clone(),
                hub,
                config,
                running: None,
                auth,
            },
            LoggerHandle {
                tx,
                status,
                cluster: Arc::default(),
            },
        )
    }

    /// Runs until `shutdown` (the first step of the server's shutdown, while
    /// HTTP still serves); then stops the child (if any) and returns.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                cmd = self.rx.recv() => match cmd {
                    Some(Cmd::Start(req, reply)) => {
                        let r = self.start(&req).await;
                        if let Err(e) = &r {
                            // The caller gets 400/503; the operator's log says why.
                            tracing::warn!(error = %e, "The logger was not started.");
                            self.hub.log_operators(Level::Error, "server", &format!("Logger not started: {e}"));
                        }
                        let _ = reply.send(r);
                    }
                    Some(Cmd::Stop(reply)) => {
                        let r = self.stop().await;
                        let _ = reply.send(r);
                    }
                    None => break,
                },
                code = exited(&mut self.running) => {
                    if let Some(r) = self.running.take() {
                        self.finished(&r, code).await;
                    }
                }
                () = shutdown.cancelled() => break,
            }
        }
        if self.running.is_some() {
            tracing::info!("Stopping the logger before shutdown.");
            self.stop().await;
        }
    }

    fn set_status(&self, f: impl FnOnce(&mut LoggerStatus)) {
        let snapshot = {
            let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut s);
            s.clone()
        };
        // The logger is the cluster's: every instance's clients hear of it.
        self.hub
            .publish(HubEvent::shared(&ServerMsg::Logger(snapshot)));
    }

    async fn start(&mut self, req: &StartRequest) -> Result<Started, LoggerError> {
        if let Some(r) = &self.running {
            return Ok(Started::AlreadyRunning { pid: r.pid });
        }
        let args = req
            .command_line(&self.config)
            .map_err(LoggerError::BadRequest)?;
        let (bin, prefix) = self.config.program()?;
        let args: Vec<String> = prefix.into_iter().chain(args).collect();
        // A credential for this run only: the simulator's (or replayer's) VINs, for hours.
        let (info, token) = self
            .auth
            .create_token(
                Scope::VinPrefix(req.vin_prefix().into()),
                "spawned logger",
                Some(CHILD_TOKEN_TTL),
            )
            .await
            .map_err(|e| {
                LoggerError::Unavailable(format!("cannot issue the logger's credential: {e}"))
            })?;
        let mut cmd = tokio::process::Command::new(&bin);
        // A clean environment: the server's secrets (admin token, DATABASE_URL, keys) stay here.
        cmd.env_clear();
        for name in crate::sandbox::CHILD_ENV {
            if let Some(v) = std::env::var_os(name) {
                cmd.env(name, v);
            }
        }
        cmd.env("LOCKSTEP_DEVICE_TOKEN", &token);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                let _ = self.auth.revoke(&info.public_id).await;
                return Err(LoggerError::Unavailable(format!(
                    "cannot start {}: {e}",
                    bin.display()
                )));
            }
        };
        let pid = child.id().unwrap_or(0);
        if let Some(out) = child.stdout.take() {
            tokio::spawn(pump(out, "stdout", self.hub.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(pump(err, "stderr", self.hub.clone()));
        }
        let (exit_tx, exit_rx) = oneshot::channel();
        tokio::spawn(async move {
            let code = child.wait().await.ok().and_then(|s| s.code());
            let _ = exit_tx.send(code);
        });
        let line = format!(
            "Logger started (pid {pid}): {} {}",
            bin.display(),
            args.join(" ")
        );
        tracing::info!(pid, "{line}");
        self.hub.log_operators(Level::Info, "server", &line);
        self.running = Some(Running {
            pid,
            started: Instant::now(),
            exit: exit_rx,
            token_id: info.public_id,
        });
        self.set_status(|s| {
            s.running = true;
            s.pid = Some(pid);
            s.started_at_ms = Some(now_ms());
        });
        Ok(Started::Started { pid })
    }

    async fn stop(&mut self) -> Stopped {
        let Some(mut r) = self.running.take() else {
            return Stopped::NotRunning;
        };
        signal(r.pid, rustix::process::Signal::TERM);
        let code = match tokio::time::timeout(self.config.grace, &mut r.exit).await {
            Ok(code) => code.unwrap_or(None),
            Err(_) => {
                tracing::warn!(pid = r.pid, "The logger ignored SIGTERM; sending SIGKILL.");
                signal(r.pid, rustix::process::Signal::KILL);
                (&mut r.exit).await.unwrap_or(None)
            }
        };
        self.finished(&r, code).await;
        Stopped::Stopped { exit_code: code }
    }

    async fn finished(&self, r: &Running, code: Option<i32>) {
        if let Err(e) = self.auth.revoke(&r.token_id).await {
            tracing::warn!(error = %e, "The finished logger's credential could not be revoked; it expires by itself.");
        }
        let run_s = r.started.elapsed().as_secs_f64();
        let code_text = code.map_or_else(|| "by a signal".to_owned(), |c| format!("with code {c}"));
        let line = format!(
            "Logger (pid {}) exited {code_text} after {run_s:.1} s.",
            r.pid
        );
        let level = if code == Some(0) {
            Level::Info
        } else {
            Level::Warn
        };
        tracing::info!(pid = r.pid, exit_code = ?code, run_s, "{line}");
        self.hub.log_shared(level, "server", &line);
        self.set_status(|s| {
            s.running = false;
            s.pid = None;
            s.last_exit_code = code;
            s.last_run_s = Some(run_s);
        });
    }
}

/// Resolves when the running child exits (never when none runs).
async fn exited(running: &mut Option<Running>) -> Option<i32> {
    match running {
        Some(r) => (&mut r.exit).await.unwrap_or(None),
        None => std::future::pending().await,
    }
}

/// Signals the child's process group (the child and anything it started).
fn signal(pid: u32, sig: rustix::process::Signal) {
    let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    if let Err(e) = rustix::process::kill_process_group(p, sig) {
        tracing::debug!(pid, error = %e, "Signalling the logger failed (it may have exited).");
    }
}

/// Longest logger line forwarded, bytes; the rest of a longer line is dropped.
const MAX_LINE: usize = 4096;

/// Forwards each line of a child stream to tracing and to operators'
/// WebSockets. Reads in bounded pieces: a child printing without newlines
/// (or a replay of `/dev/zero`) cannot grow the server's memory.
async fn pump(stream: impl AsyncRead + Unpin, name: &'static str, hub: Arc<Hub>) {
    let mut reader = BufReader::with_capacity(MAX_LINE, stream);
    let mut line = Vec::with_capacity(MAX_LINE);
    let mut skipping = false;
    loop {
        let chunk = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(c) => c,
        };
        let (part, newline) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (&chunk[..i], Some(i)),
            None => (chunk, None),
        };
        if !skipping {
            let room = MAX_LINE - line.len();
            line.extend_from_slice(&part[..part.len().min(room)]);
        }
        let used = newline.map_or(part.len(), |i| i + 1);
        reader.consume(used);
        if newline.is_some() || line.len() >= MAX_LINE {
            if !skipping {
                forward(&line, name, &hub);
            }
            line.clear();
            // A line longer than MAX_LINE: drop the rest of it.
            skipping = newline.is_none();
        }
    }
    if !skipping {
        forward(&line, name, &hub);
    }
}

fn forward(bytes: &[u8], name: &str, hub: &Hub) {
    let text = String::from_utf8_lossy(bytes);
    let line = text.trim_end();
    if line.is_empty() {
        return;
    }
    let level = if line.contains("ERROR") {
        Level::Error
    } else if line.contains("WARN") {
        Level::Warn
    } else {
        Level::Info
    };
    tracing::info!(target: "lockstep_server::logger::child", stream = name, "{line}");
    hub.log_operators(level, "logger", line);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child printing megabytes without a newline (a replay of /dev/zero)
    /// gets one line of at most MAX_LINE bytes forwarded, the rest dropped.
    #[tokio::test]
    async fn output_lines_are_bounded() {
        use tokio::io::AsyncReadExt as _;
        let hub = Arc::new(Hub::new(16));
        let (mut operator, _) = hub.subscribe_with_logs(true);
        let endless = tokio::io::repeat(b'z').take(8 * 1024 * 1024);
        let tail = &b"\nnext line\n"[..];
        pump(endless.chain(tail), "stdout", hub.clone()).await;
        let mut out = Vec::new();
        while out.len() < 2 {
            assert!(operator.recv(&mut out, 10).await);
        }
        let first: serde_json::Value = serde_json::from_str(out[0].as_str()).unwrap();
        let line = first["data"]["message"].as_str().unwrap();
        assert_eq!(line.len(), MAX_LINE);
        assert!(out[1].as_str().contains("next line"));
    }

    #[test]
    fn command_lines() {
        let url = "http://127.0.0.1:1";
        let sim = StartRequest {
            vehicles: Some(3),
            rate: Some(2.0),
            duration_s: Some(5.0),
            ..Default::default()
        };
        assert_eq!(
            sim.args(url).unwrap().join(" "),
            "simulate --vehicles 3 --rate 2 --duration 5 --server http://127.0.0.1:1"
        );
        let rep = StartRequest {
            replay: Some(vec!["a.csv".into()]),
            format: Some("csv".into()),
            speed: Some(10.0),
            ..Default::default()
        };
        assert_eq!(
            rep.args(url).unwrap().join(" "),
            "replay --format csv a.csv --speed 10 --server http://127.0.0.1:1"
        );
        assert!(
            StartRequest {
                vehicles: Some(0),
                ..Default::default()
            }
            .args(url)
            .is_err()
        );
        assert!(
            StartRequest {
                replay: Some(vec!["a".into()]),
                ..Default::default()
            }
            .args(url)
            .is_err()
        );
        assert!(
            StartRequest {
                rate: Some(f64::NAN),
                ..Default::default()
            }
            .args(url)
            .is_err()
        );
    }
}
