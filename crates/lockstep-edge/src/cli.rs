//! The command line as a library entry point: [`run`] parses arguments, wires
//! logging, signals and the progress bar, and hands over to the other modules.
//! `main.rs` only calls it, and another binary can run the edge logger in its
//! own process (e.g. a server that re-executes itself as the logger) with
//! `lockstep_edge::cli::run(["lockstep-edge", "simulate", ...])`.

use std::ffi::OsString;
use std::io::{IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use lockstep_codec::Catalog;
use tokio_util::sync::CancellationToken;

use crate::app::{self, Fleet};
use crate::report;
use crate::sender::{DeviceToken, SenderConfig, Shared, TlsFiles};
use crate::sources::{self, Format};
use crate::spool::Spool;

/// The Lockstep edge logger: simulates or replays vehicles, compresses their
/// telemetry with the lockstep codec and sends it to a Lockstep server without
/// losing any of it (every batch is spooled to disk until acknowledged).
#[derive(Parser, Debug)]
#[command(
    name = "lockstep-edge",
    version,
    propagate_version = true,
    after_help = "Examples:\n  lockstep-edge simulate --vehicles 10 --rate 1 --duration 600\n  lockstep-edge replay --format twizy testdata/twizy-ev/T3_04_22_2021_1.csv --speed 10\n  lockstep-edge report --format cycling testdata/cycling/cycling.csv.gz --json"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Simulate a fleet of vehicles with plausible physics and send its telemetry.
    ///
    /// Each vehicle stops, accelerates, cruises and brakes; power follows from
    /// speed and acceleration (negative when regenerating), the battery drains
    /// with the integral of power, heading and position move with speed. The
    /// same --rng-seed gives the same fleet. Readings are stamped with the wall clock.
    Simulate(SimulateArgs),
    /// Replay recorded drives, one vehicle per file, and send their telemetry.
    ///
    /// Every row is kept; corrupt timestamps are repaired from their neighbours,
    /// duplicate seconds are spread, heading is derived from GPS positions. The
    /// summary says what was repaired. A replay interrupted by a signal resumes
    /// after the readings it already spooled when started again.
    Replay(ReplayArgs),
    /// Measure the codec on recorded drives, without a server.
    ///
    /// Encodes every file with the lockstep encoder and decodes the batches
    /// from their bytes, then prints per signal: fields skipped, the largest
    /// error of a decoded value against the recorded (quantised) one, and the
    /// same skip figures for the seed predictor and for holding the last sent
    /// value; and bytes per reading for lockstep batches, raw protobuf,
    /// the seed wire form and gzip'd JSON.
    Report(ReportArgs),
}

/// Options of every sending subcommand.
#[derive(Args, Debug)]
struct SendArgs {
    /// Base URL of the Lockstep server (http:// or https://). Repeat it for
    /// failover: the edge moves to the next URL on a connection failure or a
    /// 5xx answer, and back to the first after a minute elsewhere. The
    /// environment variable takes a comma-separated list.
    #[arg(
        long = "server",
        env = "LOCKSTEP_SERVER",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8001",
        value_name = "URL"
    )]
    servers: Vec<String>,
    /// Spool directory: unacknowledged batches live here, and are sent first on the next start.
    /// Default: <data dir>/edge-spool/<run> (e.g. `simulate-rng-seed-1`, `replay-<file>`).
    #[arg(long, env = "LOCKSTEP_SPOOL_DIR", value_name = "DIR")]
    spool: Option<PathBuf>,
    /// Data directory holding the default spool (the server's data directory default).
    #[arg(
        long,
        env = "LOCKSTEP_DATA_DIR",
        default_value = "./data",
        value_name = "DIR"
    )]
    data_dir: PathBuf,
    /// Send the seed wire form (one `TelemetryReading` per POST, application/x-protobuf)
    /// with the seed predictor, instead of lockstep batches. Spooled like batches.
    #[arg(long)]
    seed_wire: bool,
    /// Device token, sent as `Authorization: Bearer TOKEN` on every request.
    #[arg(long, env = "LOCKSTEP_DEVICE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM file of a CA certificate to trust for https:// servers, besides the system's.
    #[arg(long, env = "LOCKSTEP_CA_CERT", value_name = "PEM")]
    ca_cert: Option<PathBuf>,
    /// PEM file of the client certificate for mutual TLS (with --client-key).
    #[arg(
        long,
        env = "LOCKSTEP_CLIENT_CERT",
        value_name = "PEM",
        requires = "client_key"
    )]
    client_cert: Option<PathBuf>,
    /// PEM file of the private key of --client-cert.
    #[arg(
        long,
        env = "LOCKSTEP_CLIENT_KEY",
        value_name = "PEM",
        requires = "client_cert"
    )]
    client_key: Option<PathBuf>,
    /// Cut a batch after this many readings.
    #[arg(long, default_value_t = 60, value_name = "N")]
    batch_readings: usize,
    /// Cut a batch when its oldest reading waited this long (milliseconds).
    #[arg(long, default_value_t = 2000, value_name = "MS")]
    batch_delay_ms: u64,
    /// Requests in flight at most, over all vehicles.
    #[arg(long, default_value_t = 32, value_name = "N")]
    max_in_flight: usize,
    /// After SIGTERM/SIGINT, keep sending for this long (seconds); the rest stays spooled.
    #[arg(long, default_value_t = 3.0, value_name = "S")]
    grace: f64,
    /// Timeout of one request (seconds).
    #[arg(long, default_value_t = 10.0, value_name = "S")]
    request_timeout: f64,
    /// Stop as on SIGTERM when the parent process goes away. lockstep-server
    /// passes it, so a server that is killed (even SIGKILL) leaves no orphan.
    #[arg(long)]
    exit_with_parent: bool,
}

#[derive(Args, Debug)]
struct SimulateArgs {
    /// Number of vehicles.
    #[arg(long, default_value_t = 1, value_name = "N")]
    vehicles: usize,
    /// Readings per second per vehicle.
    #[arg(long, default_value_t = 1.0, value_name = "HZ")]
    rate: f64,
    /// Stop after this many seconds of readings (default: run until stopped).
    #[arg(long, value_name = "S")]
    duration: Option<f64>,
    /// Random-number seed of the simulated fleet (same rng seed, same vehicles and drives).
    /// `--seed` is an older spelling, still accepted.
    #[arg(long, alias = "seed", default_value_t = 1, value_name = "K")]
    rng_seed: u64,
    /// Produce readings as fast as the server takes them instead of in real time.
    #[arg(long)]
    as_fast_as_possible: bool,
    #[command(flatten)]
    send: SendArgs,
}

#[derive(Args, Debug)]
struct ReplayArgs {
    /// Format of the files.
    #[arg(long, value_enum)]
    format: Format,
    /// Recorded drives (one vehicle each).
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Replay at this multiple of the recorded pace.
    #[arg(
        long,
        default_value_t = 1.0,
        value_name = "X",
        conflicts_with = "as_fast_as_possible"
    )]
    speed: f64,
    /// Ignore the recorded pace: send as fast as the server acknowledges.
    #[arg(long)]
    as_fast_as_possible: bool,
    /// Stamp the first reading of each drive with the current time (keeps the spacing).
    #[arg(long)]
    retime: bool,
    /// Start from the beginning even if the spool holds a cursor from an interrupted replay.
    #[arg(long)]
    no_resume: bool,
    /// Stop after this many seconds (wall clock) as if signalled: flush, leave the rest
    /// spooled; the next replay of the same files resumes where this one stopped.
    #[arg(long, value_name = "S")]
    duration: Option<f64>,
    #[command(flatten)]
    send: SendArgs,
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// Format of the files.
    #[arg(long, value_enum)]
    format: Format,
    /// Recorded drives (each one is its own session).
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
    /// Print one JSON object (keys `signals`, `overall`, ...) instead of a table.
    #[arg(long)]
    json: bool,
    /// Readings per lockstep batch (bytes per reading depend on it).
    #[arg(long, default_value_t = 60, value_name = "N")]
    batch: usize,
}

/// Runs the edge logger with `args` (the first item is the program name, as
/// in `std::env::args_os()`) and returns the process exit code: 0 when the
/// run finished or was stopped (signal, `--duration`), 1 on a fatal error,
/// 2 on a usage error (`--help` and `--version` print and return 0).
///
/// Synchronous: sending builds its own multi-threaded tokio runtime, so call
/// it from a plain thread (a `main`). Called from inside a runtime, it runs on
/// a fresh thread of its own instead of nesting runtimes. It installs a global
/// `tracing` subscriber (logs to stderr, filter `LOCKSTEP_LOG`) unless the
/// process already has one, and, while sending, handles SIGTERM and SIGINT.
pub fn run<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    init_logging();
    let outcome = if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| {
            s.spawn(|| dispatch(cli))
                .join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("the edge logger thread panicked")))
        })
    } else {
        dispatch(cli)
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockstep-edge: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    let ansi = std::io::stderr().is_terminal();
    // `try_init`: a host process may have installed its own subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOCKSTEP_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(|| LogWriter)
        .with_ansi(ansi)
        .with_target(false)
        .try_init();
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Report(a) => {
            let trips = load_all(a.format, &a.files)?;
            let r = report::analyse(Arc::new(Catalog::default_v1()), &trips, a.batch)?;
            let text = if a.json {
                serde_json::to_string_pretty(&r)? + "\n"
            } else {
                report::render_text(&r)
            };
            let _ = std::io::stdout().write_all(text.as_bytes());
            Ok(())
        }
        Command::Simulate(a) => {
            if a.vehicles == 0 || a.rate.is_nan() || a.rate <= 0.0 || a.rate > 1000.0 {
                bail!("--vehicles must be at least 1 and --rate between 0 and 1000 Hz");
            }
            let run_name = format!("simulate-rng-seed-{}", a.rng_seed);
            let fleet = Fleet::Simulate {
                vehicles: a.vehicles,
                rate_hz: a.rate,
                duration_s: a.duration,
                rng_seed: a.rng_seed,
            };
            let pacing = Pacing {
                asap: a.as_fast_as_possible,
                speed: 1.0,
                resume: false,
                stop_after: None,
            };
            send(a.send, &run_name, fleet, pacing)
        }
        Command::Replay(a) => {
            if a.speed.is_nan() || a.speed <= 0.0 {
                bail!("--speed must be positive");
            }
            let trips = load_all(a.format, &a.files)?;
            for t in &trips {
                tracing::info!(file = %t.name, vin = %crate::sim::replay_vin(&t.name), "Loaded a drive: {}.", t.repairs);
            }
            let run_name = replay_run_name(&trips);
            let fleet = Fleet::Replay {
                trips,
                retime: a.retime,
            };
            let pacing = Pacing {
                asap: a.as_fast_as_possible,
                speed: a.speed,
                resume: !a.no_resume,
                stop_after: a
                    .duration
                    .filter(|d| d.is_finite() && *d >= 0.0)
                    .map(Duration::from_secs_f64),
            };
            send(a.send, &run_name, fleet, pacing)
        }
    }
}

fn load_all(format: Format, files: &[PathBuf]) -> Result<Vec<sources::Trip>> {
    files.iter().map(|f| sources::load(format, f)).collect()
}

/// Keeps a file name to characters that are safe in a directory name anywhere.
fn path_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The run's name in the default spool path: `replay-<file>` for one drive,
/// `replay-<first file>-and-<n>-more-<hash of all names>` for several.
fn replay_run_name(trips: &[sources::Trip]) -> String {
    let first = trips.first().map_or("none", |t| t.name.as_str());
    if trips.len() <= 1 {
        return format!("replay-{}", path_safe(first));
    }
    let all: Vec<&str> = trips.iter().map(|t| t.name.as_str()).collect();
    let hash = lockstep_codec::catalog::fnv1a64(all.join("\n").as_bytes());
    format!(
        "replay-{}-and-{}-more-{:08x}",
        path_safe(first),
        trips.len() - 1,
        hash as u32
    )
}

/// The spool directory: `--spool` (or LOCKSTEP_SPOOL_DIR) when given, else
/// `<data dir>/edge-spool/<run name>`, so a run never writes into the
/// working directory and a run of the same drives (or rng seed) resumes.
fn spool_dir(explicit: Option<&Path>, data_dir: &Path, run_name: &str) -> PathBuf {
    explicit.map_or_else(
        || data_dir.join("edge-spool").join(run_name),
        Path::to_path_buf,
    )
}

/// How a fleet is paced and stopped (the subcommand's options).
struct Pacing {
    asap: bool,
    speed: f64,
    resume: bool,
    stop_after: Option<Duration>,
}

fn sender_config(a: &SendArgs, pacing: &Pacing) -> SenderConfig {
    SenderConfig {
        servers: a.servers.iter().map(|s| s.trim().to_owned()).collect(),
        max_batch_readings: a.batch_readings.max(1),
        max_batch_delay: Duration::from_millis(a.batch_delay_ms),
        grace: Duration::from_secs_f64(a.grace.max(0.0)),
        max_in_flight: a.max_in_flight.max(1),
        max_unacked_batches: if pacing.asap { 4 } else { 1000 },
        request_timeout: Duration::from_secs_f64(a.request_timeout.max(0.1)),
        seed_wire: a.seed_wire,
        resume_cursor: pacing.resume,
        token: a
            .token
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(DeviceToken::new),
        tls: TlsFiles {
            ca_cert: a.ca_cert.clone(),
            client_cert: a.client_cert.clone(),
            client_key: a.client_key.clone(),
        },
        ..SenderConfig::default()
    }
}

fn send(a: SendArgs, run_name: &str, fleet: Fleet, pacing: Pacing) -> Result<()> {
    let config = sender_config(&a, &pacing);
    let spool = Spool::open(spool_dir(a.spool.as_deref(), &a.data_dir, run_name))?;
    let progress = std::io::stderr().is_terminal().then(|| {
        let pb = match fleet.total_readings() {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::new_spinner(),
        };
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} readings ({per_sec})",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let _ = PROGRESS.set(pb.clone());
        pb
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let cancel = CancellationToken::new();
        tokio::spawn(stop_on_signal(cancel.clone()));
        if a.exit_with_parent {
            tokio::spawn(stop_when_orphaned(cancel.clone()));
        }
        if let Some(d) = pacing.stop_after {
            let c = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                tracing::info!("--duration reached: flushing what can be sent within the grace period; the rest stays spooled.");
                c.cancel();
            });
        }
        let shared = Shared::new(config, Arc::new(Catalog::default_v1()), spool, cancel, progress.clone())?;
        tracing::info!(server = %shared.config.servers.join(", "), spool = %shared.spool.dir().display(), "Starting.");
        let summary = app::run(shared, fleet, pacing.asap, pacing.speed).await;
        if let Some(pb) = progress {
            pb.finish_and_clear();
        }
        let summary = summary?;
        // Not println!: with the parent gone, stdout may be a broken pipe,
        // and the summary is not worth a panic.
        let _ = writeln!(std::io::stdout(), "{summary}");
        Ok(())
    })
}

/// The progress bar, once there is one: log lines are written around it.
static PROGRESS: std::sync::OnceLock<indicatif::ProgressBar> = std::sync::OnceLock::new();

/// Writes log lines to stderr, hiding the progress bar meanwhile so they do not garble it.
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match PROGRESS.get() {
            Some(pb) if !pb.is_finished() => pb.suspend(|| std::io::stderr().write(buf)),
            _ => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Cancels when the parent process changes (it died; we were re-parented).
/// Polling `getppid` is portable and needs no unsafe `pre_exec` hook.
async fn stop_when_orphaned(cancel: CancellationToken) {
    let parent = rustix::process::getppid();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        if rustix::process::getppid() != parent {
            cancel.cancel();
            tracing::warn!(
                "The parent process is gone: flushing what can be sent within the grace period; the rest stays spooled."
            );
            return;
        }
    }
}

/// Cancels on the first SIGTERM or SIGINT.
async fn stop_on_signal(cancel: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::warn!(
                "Cannot listen for signals; stop with SIGKILL (the spool keeps unsent batches)."
            );
            return;
        };
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(
            "{name} received: flushing what can be sent within the grace period; the rest stays spooled."
        );
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    cancel.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("lockstep-edge").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn the_old_seed_flag_still_sets_the_rng_seed() {
        for flag in ["--seed", "--rng-seed"] {
            let Command::Simulate(a) = parse(&["simulate", flag, "7"]).command else {
                panic!("simulate");
            };
            assert_eq!(a.rng_seed, 7);
        }
    }

    #[test]
    fn servers_repeat_and_the_spool_defaults_under_the_data_dir() {
        let Command::Replay(a) = parse(&[
            "replay",
            "--format",
            "csv",
            "x.csv",
            "--server",
            "http://a:1",
            "--server",
            "https://b:2",
            "--data-dir",
            "/d",
        ])
        .command
        else {
            panic!("replay");
        };
        assert_eq!(a.send.servers, ["http://a:1", "https://b:2"]);
        assert_eq!(
            spool_dir(a.send.spool.as_deref(), &a.send.data_dir, "replay-x.csv"),
            Path::new("/d/edge-spool/replay-x.csv")
        );
        assert_eq!(
            spool_dir(Some(Path::new("/s")), &a.send.data_dir, "replay-x.csv"),
            Path::new("/s")
        );
    }

    #[test]
    fn the_token_reaches_the_config_but_never_its_debug_output() {
        let Command::Simulate(a) = parse(&["simulate", "--token", "s3cret-t0ken"]).command else {
            panic!("simulate");
        };
        let pacing = Pacing {
            asap: true,
            speed: 1.0,
            resume: false,
            stop_after: None,
        };
        let cfg = sender_config(&a.send, &pacing);
        assert_eq!(
            cfg.token.as_ref().map(DeviceToken::expose),
            Some("s3cret-t0ken")
        );
        assert!(!format!("{cfg:?}").contains("s3cret"), "{cfg:?}");
    }

    #[test]
    fn run_names_are_path_safe_and_distinct() {
        let trip = |name: &str| sources::Trip {
            name: name.into(),
            readings: Vec::new(),
            repairs: Default::default(),
        };
        assert_eq!(
            replay_run_name(&[trip("T3 04/22.csv")]),
            "replay-T3_04_22.csv"
        );
        let two = replay_run_name(&[trip("a.csv"), trip("b.csv")]);
        let other = replay_run_name(&[trip("a.csv"), trip("c.csv")]);
        assert!(two.starts_with("replay-a.csv-and-1-more-"), "{two}");
        assert_ne!(two, other);
    }
}
