//! Command-line flags. Every loop the harness runs is bounded by these: a
//! duration or a count, a request timeout, and a hard stop after both.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use serde::Serialize;

/// Which store the spawned server uses (or the `--url` server uses, for counting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

/// How the load spreads over the instances of a cluster (`--instances`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Spread {
    /// Each connection stays on one instance (connection i → instance i mod N), as a
    /// load balancer with sticky upstream connections: every vehicle is ingested by one instance.
    Connection,
    /// Each vehicle's consecutive requests go to the next instance, as nginx's per-request
    /// round robin: every request finds its vehicle's cached state stale and reloads it.
    Request,
}

/// Which wire form the load uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Form {
    /// One seed `TelemetryReading` per POST (application/x-protobuf).
    Seed,
    /// `lockstep.v1.Batch` of `--batch` readings per POST (application/x-lockstep-batch).
    Lockstep,
}

#[derive(Debug, Clone, Parser, Serialize)]
#[command(
    name = "lockstep-bench",
    version,
    about = "Load generator and benchmark for lockstep-server (loopback only).",
    after_help = "Examples:
  lockstep-bench --spawn --store postgres --form seed --vehicles 10 --connections 10 --duration 20
  lockstep-bench --spawn --store sqlite --form lockstep --batch 100 --vehicles 50 --connections 10 --count 500000
  lockstep-bench --spawn --store postgres --form seed --rate 1000 --ws-clients 1000 --duration 15
  lockstep-bench --spawn --store sqlite --rate 100 --idle-ws-clients 10000 --duration 10
  lockstep-bench --spawn --store postgres --instances 3 --form lockstep --batch 10 --rate 3000 --ws-clients 6 --ws-latency-every 1
  lockstep-bench --url http://127.0.0.1:8001 --server-pid 1234 --database-url postgres://postgres@127.0.0.1/lockstep"
)]
pub struct Args {
    /// Drive a running server at this URL (must be loopback).
    #[arg(long, conflicts_with = "spawn")]
    pub url: Option<String>,

    /// Start a lockstep-server for this run and stop it after. Optional path to
    /// the binary; default: `lockstep-server` next to this executable.
    #[arg(long, num_args = 0..=1, value_name = "PATH")]
    pub spawn: Option<Option<PathBuf>>,

    /// Spawned servers (a cluster on one PostgreSQL database, joined by Redis: see
    /// --redis-url). The load spreads over them by --spread; the WebSocket
    /// subscribers are dealt round the instances (subscriber i → instance i mod N), and
    /// their latency is split into readings ingested by their own instance and by another.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=8))]
    pub instances: u32,

    /// How the load spreads over the instances.
    #[arg(long, value_enum, default_value_t = Spread::Connection)]
    pub spread: Spread,

    /// Redis for the spawned servers (`REDIS_URL`, with a prefix unique to the run).
    /// Default with --instances > 1: redis://127.0.0.1:6379; with one instance, none
    /// unless given (give it to measure one instance in cluster mode). `none`: no Redis
    /// even with several instances (independent servers on one database: a control
    /// for what the bridge costs; keep each vehicle on one instance, --spread connection).
    #[arg(long)]
    pub redis_url: Option<String>,

    /// Store of the spawned server: a fresh SQLite file in a temporary directory, or a
    /// fresh uniquely named PostgreSQL database (created on --pg-admin-url's server, dropped after).
    #[arg(long, value_enum, default_value_t = StoreKind::Sqlite)]
    pub store: StoreKind,

    /// Wire form of the load.
    #[arg(long, value_enum, default_value_t = Form::Seed)]
    pub form: Form,

    /// Readings per batch (lockstep form).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch: u32,

    /// Vehicles (VINs 5YJ3E1EA000000001, …); each has at most one request in flight.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub vehicles: u32,

    /// HTTP/1.1 connections; each serves its share of the vehicles in turn (at most --vehicles).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connections: u32,

    /// Seconds of load (ignored with --count).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,

    /// Send this many readings in total instead of running for --duration.
    #[arg(long)]
    pub count: Option<u64>,

    /// Offered readings/s over all vehicles (open loop); 0 = closed loop, as fast as acks come.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,

    /// WebSocket subscribers connected before the load; each should receive every reading.
    #[arg(long, default_value_t = 0)]
    pub ws_clients: u32,

    /// Connect the subscribers to this other instance of the cluster (loopback
    /// URL) instead of the one under load: the latency is then the
    /// cross-instance delivery through Redis (docs/deploy.md).
    #[arg(long, value_name = "URL")]
    pub ws_url: Option<String>,

    /// Each WebSocket subscriber subscribes to one vehicle (client i → vehicle i mod V).
    #[arg(long)]
    pub ws_per_vehicle: bool,

    /// Subscribers 0, N, 2N, … time every message (the others only count).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub ws_latency_every: u32,

    /// Mostly idle WebSocket connections held open during the run (subscribed to a VIN
    /// that sends nothing). The open-file limit is raised for them.
    #[arg(long, default_value_t = 0)]
    pub idle_ws_clients: u32,

    /// With --url: the server's store, to count committed rows
    /// (sqlite://PATH or postgres://…). Without it the rows are not counted.
    #[arg(long)]
    pub database_url: Option<String>,

    /// With --url: the server's PID, for CPU and RSS from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,

    /// PostgreSQL server where --spawn --store postgres creates its database.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub pg_admin_url: String,

    /// Skip the raw storage limit (COPY / one-transaction inserts) after the load.
    #[arg(long)]
    pub no_raw_limit: bool,

    /// Seconds before a request counts as timed out.
    #[arg(long, default_value_t = 10.0)]
    pub request_timeout: f64,

    /// Seed of the synthetic signals.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// Number of the first vehicle's VIN.
    #[arg(long, default_value_t = 1)]
    pub vin_offset: u64,

    /// Make the spawned servers require device credentials (`LOCKSTEP_DEVICE_AUTH=required`)
    /// and send a fleet token for the bench's VINs (`token create --vin-prefix 5YJ3E1EA`,
    /// made on the run's store) with every telemetry request: the cost of the check.
    #[arg(long, conflicts_with = "url")]
    pub device_auth: bool,

    /// With --url: the device or fleet token sent as `Authorization: Bearer` with every
    /// telemetry request (a server with `LOCKSTEP_DEVICE_AUTH=required` needs one).
    #[arg(
        long,
        env = "LOCKSTEP_BENCH_DEVICE_TOKEN",
        hide_env_values = true,
        requires = "url"
    )]
    #[serde(skip)]
    pub device_token: Option<String>,

    /// Extra environment for the spawned server (repeatable), e.g. LOCKSTEP_BATCH_ROWS=5000.
    #[arg(long = "server-env", value_name = "KEY=VALUE")]
    pub server_env: Vec<String>,

    /// Write every figure as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Name of the scenario, printed and written to the JSON.
    #[arg(long)]
    pub label: Option<String>,

    /// Keep the spawned server's database (SQLite directory / PostgreSQL database) and log.
    #[arg(long)]
    pub keep: bool,
}

impl Args {
    /// Readings per request for the chosen form.
    pub fn readings_per_request(&self) -> u32 {
        match self.form {
            Form::Seed => 1,
            Form::Lockstep => self.batch,
        }
    }
}
