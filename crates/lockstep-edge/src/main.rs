//! `lockstep-edge`: the command line. Parses arguments, wires signals and the
//! progress bar, and hands over to the library.

use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use lockstep_codec::Catalog;
use lockstep_edge::app::{self, Fleet};
use lockstep_edge::report;
use lockstep_edge::sender::{SenderConfig, Shared};
use lockstep_edge::sources::{self, Format};
use lockstep_edge::spool::Spool;
use tokio_util::sync::CancellationToken;

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
    /// same --seed gives the same fleet. Readings are stamped with the wall clock.
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
    /// Base URL of the Lockstep server.
    #[arg(long, env = "LOCKSTEP_SERVER", default_value = "http://127.0.0.1:8001")]
    server: String,
    /// Spool directory: unacknowledged batches live here, and are sent first on the next start.
    #[arg(long, env = "LOCKSTEP_SPOOL_DIR", default_value = "./spool")]
    spool: PathBuf,
    /// Send the seed wire form (one `TelemetryReading` per POST, application/x-protobuf)
    /// with the seed predictor, instead of lockstep batches. Not spooled.
    #[arg(long)]
    seed_wire: bool,
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
    /// PEM CA certificate(s) an https:// server must chain to, instead of the
    /// system's roots (a private CA or a self-signed server).
    #[arg(long, env = "LOCKSTEP_CA_CERT", value_name = "PEM")]
    ca_cert: Option<PathBuf>,
    /// PEM certificate of this device for servers that ask for one (mutual TLS).
    #[arg(
        long,
        env = "LOCKSTEP_CLIENT_CERT",
        value_name = "PEM",
        requires = "client_key"
    )]
    client_cert: Option<PathBuf>,
    /// PEM private key of --client-cert.
    #[arg(
        long,
        env = "LOCKSTEP_CLIENT_KEY",
        value_name = "PEM",
        requires = "client_cert"
    )]
    client_key: Option<PathBuf>,
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
    /// Random seed of the fleet (same seed, same vehicles and drives).
    #[arg(long, default_value_t = 1, value_name = "K")]
    seed: u64,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LOCKSTEP_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(|| LogWriter)
        .with_ansi(ansi)
        .with_target(false)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lockstep-edge: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Report(a) => {
            let trips = load_all(a.format, &a.files)?;
            let r = report::analyse(Arc::new(Catalog::default_v1()), &trips, a.batch)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", report::render_text(&r));
            }
            Ok(())
        }
        Command::Simulate(a) => {
            if a.vehicles == 0 || a.rate.is_nan() || a.rate <= 0.0 || a.rate > 1000.0 {
                bail!("--vehicles must be at least 1 and --rate between 0 and 1000 Hz");
            }
            let fleet = Fleet::Simulate {
                vehicles: a.vehicles,
                rate_hz: a.rate,
                duration_s: a.duration,
                seed: a.seed,
            };
            send(a.send, fleet, a.as_fast_as_possible, 1.0, false, None)
        }
        Command::Replay(a) => {
            if a.speed.is_nan() || a.speed <= 0.0 {
                bail!("--speed must be positive");
            }
            let trips = load_all(a.format, &a.files)?;
            for t in &trips {
                tracing::info!(file = %t.name, vin = %lockstep_edge::sim::replay_vin(&t.name), "Loaded a drive: {}.", t.repairs);
            }
            let fleet = Fleet::Replay {
                trips,
                retime: a.retime,
            };
            let stop_after = a
                .duration
                .filter(|d| d.is_finite() && *d >= 0.0)
                .map(Duration::from_secs_f64);
            send(
                a.send,
                fleet,
                a.as_fast_as_possible,
                a.speed,
                !a.no_resume,
                stop_after,
            )
        }
    }
}

fn load_all(format: Format, files: &[PathBuf]) -> Result<Vec<sources::Trip>> {
    files.iter().map(|f| sources::load(format, f)).collect()
}

fn send(
    a: SendArgs,
    fleet: Fleet,
    asap: bool,
    speed: f64,
    resume: bool,
    stop_after: Option<Duration>,
) -> Result<()> {
    let config = SenderConfig {
        server: a.server,
        max_batch_readings: a.batch_readings.max(1),
        max_batch_delay: Duration::from_millis(a.batch_delay_ms),
        grace: Duration::from_secs_f64(a.grace.max(0.0)),
        max_in_flight: a.max_in_flight.max(1),
        max_unacked_batches: if asap { 4 } else { 1000 },
        request_timeout: Duration::from_secs_f64(a.request_timeout.max(0.1)),
        seed_wire: a.seed_wire,
        resume_cursor: resume,
        ca_cert: a.ca_cert,
        client_cert: a.client_cert.zip(a.client_key),
        ..SenderConfig::default()
    };
    let spool = Spool::open(&a.spool)?;
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
        if let Some(d) = stop_after {
            let c = cancel.clone();
            tokio::spawn(async move {
                tokio::time::sleep(d).await;
                tracing::info!("--duration reached: flushing what can be sent within the grace period; the rest stays spooled.");
                c.cancel();
            });
        }
        let shared = Shared::new(config, Arc::new(Catalog::default_v1()), spool, cancel, progress.clone())?;
        tracing::info!(server = %shared.config.server, spool = %shared.spool.dir().display(), "Starting.");
        let summary = app::run(shared, fleet, asap, speed).await;
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
