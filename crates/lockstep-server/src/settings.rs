//! Settings: command-line flags, each with an environment variable
//! (`.env` is loaded by `main` before parsing). Tests build [`Settings`]
//! with [`Settings::from_args_only`], which ignores the process environment.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{ArgAction, Parser, builder::BoolishValueParser};

use crate::auth::Mode;
use crate::auth::cli::Command;

/// A value that must never be printed (tokens, keys).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(****)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// The Lockstep cloud server: ingests seed and lockstep telemetry, reconstructs
/// omitted fields, stores readings in SQLite (default) or PostgreSQL, and
/// streams them over WebSocket.
#[derive(Debug, Clone, Parser)]
#[command(name = "lockstep-server", version, about, long_about = None, after_help = AFTER_HELP)]
pub struct Settings {
    /// TCP port to listen on (0 = any free port).
    #[arg(help_heading = "Network", long, env = "PORT", default_value_t = 8001)]
    pub port: u16,

    /// Address to bind. On a loopback address both auth modes default to off (the
    /// quick start); on any other address (e.g. 0.0.0.0) they default to required.
    #[arg(
        help_heading = "Network",
        long,
        env = "LOCKSTEP_HOST",
        default_value = "127.0.0.1"
    )]
    pub host: IpAddr,

    /// Device credentials for telemetry: `required` or `off`. Default: off on a
    /// loopback LOCKSTEP_HOST, required otherwise.
    #[arg(help_heading = "Access", long, env = "LOCKSTEP_DEVICE_AUTH")]
    pub device_auth: Option<Mode>,

    /// Credentials for `/ws` and the read APIs (viewer role and up): `required` or
    /// `off`. Default: off on a loopback LOCKSTEP_HOST, required otherwise.
    #[arg(help_heading = "Access", long, env = "LOCKSTEP_READ_AUTH")]
    pub read_auth: Option<Mode>,

    /// Directory the server's logger may replay recorded files from (canonicalised;
    /// nothing outside it, no device files). Unset: replay through the server is off.
    #[arg(help_heading = "Logger control", long, env = "LOCKSTEP_REPLAY_DIR")]
    pub replay_dir: Option<PathBuf>,

    /// `lockstep-server token …`: manage tokens instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Store: `sqlite://PATH` or `postgres://USER[:PASSWORD]@HOST[:PORT]/DB` (a Supabase
    /// connection string works as is). Default: SQLite file `lockstep.db` in the data directory.
    #[arg(
        help_heading = "Store",
        long,
        env = "DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<Secret>,

    /// Directory for the default SQLite database (created if missing).
    #[arg(
        help_heading = "Store",
        long,
        env = "LOCKSTEP_DATA_DIR",
        default_value = "./data"
    )]
    pub data_dir: PathBuf,

    /// Seed deployment flag: store in Supabase. Needs DATABASE_URL (Supabase's PostgreSQL
    /// connection string) until the REST mode exists.
    #[arg(help_heading = "Store", long, env = "ENABLE_SUPABASE", value_parser = BoolishValueParser::new(), action = ArgAction::Set, default_value = "false")]
    pub enable_supabase: bool,

    /// Seed deployment: Supabase project URL (REST mode, not implemented yet).
    #[arg(help_heading = "Store", long, env = "SUPABASE_URL")]
    pub supabase_url: Option<String>,

    /// Seed deployment: Supabase service key (REST mode, not implemented yet).
    #[arg(
        help_heading = "Store",
        long,
        env = "SUPABASE_SERVICE_KEY",
        hide_env_values = true
    )]
    pub supabase_service_key: Option<Secret>,

    /// Bootstrap admin token (`Authorization: Bearer …`): every role, no store entry needed.
    #[arg(
        help_heading = "Logger control",
        long,
        env = "LOCKSTEP_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<Secret>,

    /// With read auth off, let loopback peers control the logger without a token.
    /// Turn off when a reverse proxy on this host forwards remote requests. With read
    /// auth required, loopback grants nothing.
    #[arg(help_heading = "Logger control", long, env = "LOCKSTEP_TRUST_LOOPBACK", value_parser = BoolishValueParser::new(), action = ArgAction::Set, default_value = "true")]
    pub trust_loopback: bool,

    /// Allowed CORS origins, comma-separated (`*` = any). Default: this server's own
    /// origin and localhost dev ports 3000, 5173, 8080.
    #[arg(
        help_heading = "Network",
        long,
        env = "LOCKSTEP_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,

    /// Largest accepted request body, bytes.
    #[arg(help_heading = "Network", long, env = "LOCKSTEP_BODY_LIMIT", default_value_t = 1024 * 1024)]
    pub body_limit: usize,

    /// Most readings in one lockstep batch (bounds the memory one request can claim).
    #[arg(
        help_heading = "Network",
        long,
        env = "LOCKSTEP_MAX_BATCH_READINGS",
        default_value_t = 10_000
    )]
    pub max_batch_readings: usize,

    /// Readings sent to a new WebSocket client as history.
    #[arg(
        help_heading = "WebSocket",
        long,
        env = "LOCKSTEP_HISTORY",
        default_value_t = 100
    )]
    pub history: usize,

    /// Per-client WebSocket queue, messages; on overflow the oldest are dropped and the
    /// client gets `{"type":"lagged"}`.
    #[arg(
        help_heading = "WebSocket",
        long,
        env = "LOCKSTEP_WS_QUEUE",
        default_value_t = 4096
    )]
    pub ws_queue: usize,

    /// Most readings the writer commits in one transaction.
    #[arg(
        help_heading = "Store",
        long,
        env = "LOCKSTEP_BATCH_ROWS",
        default_value_t = 20_000
    )]
    pub batch_rows: usize,

    /// Requests that may wait for the writer before ingest waits too (back-pressure).
    #[arg(
        help_heading = "Store",
        long,
        env = "LOCKSTEP_WRITER_QUEUE",
        default_value_t = 4096
    )]
    pub writer_queue: usize,

    /// Other server instances write to the same database: check a cached
    /// session state's version before every decode from the start. Without
    /// it, an instance starts checking at the first session it finds
    /// advanced by another (that request decodes again); correctness does
    /// not depend on it (every commit is a compare-and-set).
    #[arg(help_heading = "Store", long, env = "LOCKSTEP_SHARED_STORE", value_parser = BoolishValueParser::new(), action = ArgAction::Set, default_value = "false")]
    pub shared_store: bool,

    /// Connections in the PostgreSQL pool.
    #[arg(
        help_heading = "Store",
        long,
        env = "LOCKSTEP_PG_POOL",
        default_value_t = 8
    )]
    pub pg_pool: usize,

    /// Whole UTC days of readings kept before today's; older readings and
    /// rollup minutes are removed by the maintenance task (PostgreSQL: whole
    /// day partitions dropped; SQLite: deleted in small batches). Unset:
    /// keep everything.
    #[arg(
        help_heading = "Store",
        long,
        env = "LOCKSTEP_RETENTION_DAYS",
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub retention_days: Option<u32>,

    /// Seconds between two runs of the storage maintenance (PostgreSQL day
    /// partitions created ahead, the retention); it also runs at start.
    #[arg(
        help_heading = "Store",
        long,
        env = "LOCKSTEP_MAINTENANCE_S",
        default_value_t = 3600,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub maintenance_s: u64,

    /// Seconds a client should wait after a 503 (`Retry-After`).
    #[arg(
        help_heading = "Store",
        long,
        env = "LOCKSTEP_RETRY_AFTER_S",
        default_value_t = 2
    )]
    pub retry_after_s: u32,

    /// The edge logger binary started by /logger/start. Default: this server
    /// binary's built-in logger (`lockstep-server edge …`).
    #[arg(help_heading = "Logger control", long, env = "LOCKSTEP_EDGE_BIN")]
    pub edge_bin: Option<PathBuf>,

    /// Milliseconds between SIGTERM and SIGKILL when stopping the logger.
    #[arg(
        help_heading = "Logger control",
        long,
        env = "LOCKSTEP_LOGGER_GRACE_MS",
        default_value_t = 5000
    )]
    pub logger_grace_ms: u64,

    /// Milliseconds shutdown waits for in-flight requests and sockets.
    #[arg(
        help_heading = "Operations",
        long,
        env = "LOCKSTEP_SHUTDOWN_GRACE_MS",
        default_value_t = 10_000
    )]
    pub shutdown_grace_ms: u64,

    /// Several instances behind a load balancer: share the live stream
    /// (readings, logger output and status, statistics) and the logger lease
    /// through Redis at this URL (`redis://HOST:PORT`). Unset: one instance,
    /// nothing shared (docs/deploy.md).
    #[arg(
        help_heading = "Cluster",
        long,
        env = "REDIS_URL",
        hide_env_values = true
    )]
    pub redis_url: Option<Secret>,

    /// Prefix of every Redis channel and key this server uses, so that several
    /// clusters (or tests) can share one Redis.
    #[arg(
        help_heading = "Cluster",
        long,
        env = "LOCKSTEP_REDIS_PREFIX",
        default_value = "lockstep"
    )]
    pub redis_prefix: String,

    /// Messages waiting to be published to Redis; when full (Redis slow or
    /// down) new ones are dropped, counted, and remote clients are told of the gap.
    #[arg(
        help_heading = "Cluster",
        long,
        env = "LOCKSTEP_REDIS_QUEUE",
        default_value_t = 8192
    )]
    pub redis_queue: usize,

    /// Milliseconds the cluster's logger lease lasts without renewal: a dead
    /// holder's logger is restarted by another instance after this long.
    #[arg(
        help_heading = "Cluster",
        long,
        env = "LOCKSTEP_LOGGER_LEASE_MS",
        default_value_t = 10_000
    )]
    pub logger_lease_ms: u64,

    /// Forward every stored reading to NATS JetStream at this URL
    /// (`nats://HOST:PORT`, credentials in the URL if needed). Unset: no NATS sink.
    #[arg(
        help_heading = "Downstream sinks",
        long,
        env = "LOCKSTEP_NATS_URL",
        hide_env_values = true
    )]
    pub nats_url: Option<Secret>,

    /// The JetStream stream the NATS sink publishes into (created if missing,
    /// covering `<LOCKSTEP_NATS_SUBJECT>.>`).
    #[arg(
        help_heading = "Downstream sinks",
        long,
        env = "LOCKSTEP_NATS_STREAM",
        default_value = "LOCKSTEP_TELEMETRY"
    )]
    pub nats_stream: String,

    /// Subject prefix of the NATS sink: readings go to `<prefix>.<VIN>`.
    #[arg(
        help_heading = "Downstream sinks",
        long,
        env = "LOCKSTEP_NATS_SUBJECT",
        default_value = "lockstep.telemetry"
    )]
    pub nats_subject: String,

    /// Forward every stored reading to an MQTT broker at this URL
    /// (`mqtt://[USER:PASSWORD@]HOST[:PORT]`, QoS 1). Unset: no MQTT sink.
    #[arg(
        help_heading = "Downstream sinks",
        long,
        env = "LOCKSTEP_MQTT_URL",
        hide_env_values = true
    )]
    pub mqtt_url: Option<Secret>,

    /// Topic prefix of the MQTT sink: readings go to `<prefix>/<VIN>`.
    #[arg(
        help_heading = "Downstream sinks",
        long,
        env = "LOCKSTEP_MQTT_TOPIC",
        default_value = "lockstep/telemetry"
    )]
    pub mqtt_topic: String,

    /// Most readings a sink publishes before it waits for the broker's
    /// acknowledgements and advances its cursor.
    #[arg(
        help_heading = "Downstream sinks",
        long,
        env = "LOCKSTEP_SINK_BATCH",
        default_value_t = 500
    )]
    pub sink_batch: usize,

    /// Milliseconds a server holds a sink without renewing its lease before
    /// another server on the same database may take the sink over.
    #[arg(
        help_heading = "Downstream sinks",
        long,
        env = "LOCKSTEP_SINK_LEASE_MS",
        default_value_t = 15_000
    )]
    pub sink_lease_ms: u64,
    /// PEM certificate chain: with LOCKSTEP_TLS_KEY the server speaks HTTPS/WSS only.
    #[arg(
        help_heading = "TLS",
        long,
        env = "LOCKSTEP_TLS_CERT",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of LOCKSTEP_TLS_CERT.
    #[arg(
        help_heading = "TLS",
        long,
        env = "LOCKSTEP_TLS_KEY",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s): client certificates are requested and, when sent,
    /// must chain to it (clients that authenticate by token may send none).
    #[arg(
        help_heading = "TLS",
        long,
        env = "LOCKSTEP_TLS_CLIENT_CA",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// Open connections at most (HTTP and WebSocket); further ones are closed at once.
    #[arg(
        help_heading = "Limits",
        long,
        env = "LOCKSTEP_MAX_CONNECTIONS",
        default_value_t = 10_000
    )]
    pub max_connections: usize,

    /// Seconds for the TLS handshake and each request head; also closes
    /// keep-alive connections idle that long.
    #[arg(
        help_heading = "Limits",
        long,
        env = "LOCKSTEP_HEADER_TIMEOUT_S",
        default_value_t = 10
    )]
    pub header_timeout_s: u64,

    /// Seconds a request body may pause before the request is abandoned.
    #[arg(
        help_heading = "Limits",
        long,
        env = "LOCKSTEP_BODY_TIMEOUT_S",
        default_value_t = 30
    )]
    pub body_timeout_s: u64,

    /// Milliseconds a store call (a commit, a state load) may take before
    /// ingest answers 503 + Retry-After (a black-holed database).
    #[arg(
        help_heading = "Store",
        long,
        env = "LOCKSTEP_STORE_TIMEOUT_MS",
        default_value_t = 5_000
    )]
    pub store_timeout_ms: u64,

    /// Requests per second per device (VIN); bursts of twice that. 0 = unlimited.
    #[arg(
        help_heading = "Limits",
        long,
        env = "LOCKSTEP_DEVICE_REQUESTS_PER_S",
        default_value_t = 50
    )]
    pub device_requests_per_s: u32,

    /// Readings per second per device (VIN); bursts of twice that, and at least
    /// LOCKSTEP_MAX_BATCH_READINGS. 0 = unlimited.
    #[arg(
        help_heading = "Limits",
        long,
        env = "LOCKSTEP_DEVICE_READINGS_PER_S",
        default_value_t = 5_000
    )]
    pub device_readings_per_s: u32,

    /// Requests per second per client IP on routes without a device identity
    /// (status, vehicles, logger control, WebSocket upgrades), and failed
    /// authentications; bursts of twice that. 0 = unlimited.
    #[arg(
        help_heading = "Limits",
        long,
        env = "LOCKSTEP_IP_REQUESTS_PER_S",
        default_value_t = 50
    )]
    pub ip_requests_per_s: u32,

    /// WebSocket connections open at once per client IP.
    #[arg(
        help_heading = "Limits",
        long,
        env = "LOCKSTEP_WS_PER_IP",
        default_value_t = 64
    )]
    pub ws_per_ip: usize,

    /// WebSocket connections open at once per credential (a token, the web
    /// sessions opened with it, a device certificate), from any number of
    /// addresses. 0 = no cap.
    #[arg(
        help_heading = "Limits",
        long,
        env = "LOCKSTEP_WS_PER_CREDENTIAL",
        default_value_t = 16
    )]
    pub ws_per_credential: usize,

    /// Failed authentications (a bearer token or login that is not valid) per
    /// client IP: that many in a row, then one every 60/N s; beyond it every
    /// request of the address that presents a credential is answered 429 +
    /// Retry-After. 0 = no budget.
    #[arg(
        help_heading = "Limits",
        long,
        env = "LOCKSTEP_AUTH_FAILURES_PER_MIN",
        default_value_t = 10
    )]
    pub auth_failures_per_min: u32,

    /// Seconds a WebSocket client may leave a burst of messages unread (its
    /// socket buffers full) before it is disconnected with close code 1013.
    #[arg(
        help_heading = "WebSocket",
        long,
        env = "LOCKSTEP_WS_SEND_TIMEOUT_S",
        default_value_t = 10
    )]
    pub ws_send_timeout_s: u64,

    /// Milliseconds a WebSocket client's writes are kept apart while messages
    /// stream to it: what arrives in between goes out in the next write. A
    /// message after a quiet spell goes at once; 0 = one write per wake-up
    /// (at most 1000).
    #[arg(
        help_heading = "WebSocket",
        long,
        env = "LOCKSTEP_WS_LINGER_MS",
        default_value_t = 20
    )]
    pub ws_linger_ms: u64,

    /// Vehicles whose decoding state is kept in memory; beyond it the least
    /// recently used is evicted (and reloaded from the store if it returns).
    #[arg(
        help_heading = "Limits",
        long,
        env = "LOCKSTEP_MAX_VEHICLES",
        default_value_t = 100_000
    )]
    pub max_vehicles: usize,

    /// Seconds a vehicle's state stays in memory without requests.
    #[arg(
        help_heading = "Limits",
        long,
        env = "LOCKSTEP_VEHICLE_IDLE_S",
        default_value_t = 900
    )]
    pub vehicle_idle_s: u64,

    /// Threads of the async runtime; 0 = one per core. On a small host
    /// shared with the database, one thread spent 17–26 % less CPU per
    /// delivered WebSocket message but committed up to 26 % fewer readings
    /// per second in the batch form (41 % in one round with three instances;
    /// BENCHMARKS.md, "runtime threads").
    #[arg(
        help_heading = "Operations",
        long,
        env = "LOCKSTEP_WORKER_THREADS",
        default_value_t = 0
    )]
    pub worker_threads: usize,

    /// Log format: `text` or `json` (filter with RUST_LOG).
    #[arg(help_heading = "Operations", long, env = "LOCKSTEP_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

const AFTER_HELP: &str = "\
Examples:
  lockstep-server                                   SQLite in ./data/lockstep.db, port 8001
  DATABASE_URL=postgres://postgres@127.0.0.1/lockstep lockstep-server
  PORT=9000 LOCKSTEP_ADMIN_TOKEN=s3cret lockstep-server
  lockstep-server token create --vin 5YJ3E1EA7KF000001    a device token (last line of stdout)
  lockstep-server token create --role viewer --label ops  a token for people and tools
  lockstep-server token list | lockstep-server token revoke ID

A .env file in the working directory is read first; real environment variables win.";

/// Where readings are stored, resolved from the settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// SQLite database file.
    Sqlite(PathBuf),
    /// PostgreSQL connection string.
    Postgres(String),
}

/// Settings that cannot work; the message names the variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "ENABLE_SUPABASE=true but DATABASE_URL is not set. The Supabase REST mode (SUPABASE_URL{url} + \
         SUPABASE_SERVICE_KEY{key}) is not implemented yet: set DATABASE_URL to the project's PostgreSQL \
         connection string (Supabase dashboard → Project Settings → Database → Connection string), \
         or unset ENABLE_SUPABASE to use the embedded SQLite store."
    )]
    SupabaseWithoutDatabaseUrl {
        url: &'static str,
        key: &'static str,
    },
    #[error(
        "DATABASE_URL must start with sqlite:// or postgres:// (or postgresql://); got a URL starting with {0:?}"
    )]
    DatabaseUrlScheme(String),
    #[error("DATABASE_URL={0:?} names no SQLite file")]
    EmptySqlitePath(String),
    #[error("LOCKSTEP_CORS_ORIGINS: {0:?} is not a valid origin (e.g. http://localhost:3000)")]
    CorsOrigin(String),
}

impl Settings {
    /// Parses command-line arguments only, ignoring every environment variable:
    /// tests and embedders inject configuration without the process environment
    /// leaking in (`args[0]` is the program name).
    pub fn from_args_only<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, FromArgMatches};
        let cmd = Self::command().mut_args(|a| a.env(None));
        Self::from_arg_matches(&cmd.try_get_matches_from(args)?)
    }

    /// Resolves the store from DATABASE_URL, ENABLE_SUPABASE and the data directory.
    pub fn store_config(&self) -> Result<StoreConfig, ConfigError> {
        let Some(url) = &self.database_url else {
            if self.enable_supabase {
                let set = |b: bool| if b { " is set" } else { " is not set" };
                return Err(ConfigError::SupabaseWithoutDatabaseUrl {
                    url: set(self.supabase_url.is_some()),
                    key: set(self.supabase_service_key.is_some()),
                });
            }
            return Ok(StoreConfig::Sqlite(self.data_dir.join("lockstep.db")));
        };
        let url = url.expose();
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if path.is_empty() {
                return Err(ConfigError::EmptySqlitePath(url.to_owned()));
            }
            return Ok(StoreConfig::Sqlite(PathBuf::from(path)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(StoreConfig::Postgres(url.to_owned()));
        }
        let scheme: String = url.chars().take_while(|c| *c != ':').take(20).collect();
        Err(ConfigError::DatabaseUrlScheme(scheme))
    }

    /// The CORS allow-list: configured origins, or this server's own origin and
    /// localhost dev ports. `None` = any origin (`*`).
    pub fn cors_allow_list(&self, port: u16) -> Result<Option<Vec<String>>, ConfigError> {
        if self.cors_origins.iter().any(|o| o.trim() == "*") {
            return Ok(None);
        }
        let origins: Vec<String> = if self.cors_origins.is_empty() {
            self.default_origins(port)
        } else {
            self.cors_origins
                .iter()
                .map(|o| o.trim().trim_end_matches('/').to_owned())
                .filter(|o| !o.is_empty())
                .collect()
        };
        for o in &origins {
            if !(o.starts_with("http://") || o.starts_with("https://"))
                || o.parse::<axum::http::HeaderValue>().is_err()
            {
                return Err(ConfigError::CorsOrigin(o.clone()));
            }
        }
        Ok(Some(origins))
    }

    /// This server's own origin (`https` when it speaks TLS) and the
    /// dashboard's dev ports, on localhost and 127.0.0.1.
    pub fn default_origins(&self, port: u16) -> Vec<String> {
        let own = if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        let mut ports = vec![port, 3000, 5173, 8080];
        ports.dedup();
        let mut origins: Vec<String> = ports
            .iter()
            .flat_map(|p| {
                let scheme = if *p == port { own } else { "http" };
                [
                    format!("{scheme}://localhost:{p}"),
                    format!("{scheme}://127.0.0.1:{p}"),
                ]
            })
            .collect();
        let host = self.host.to_canonical();
        if !host.is_unspecified() && !host.is_loopback() {
            match host {
                IpAddr::V4(ip) => origins.push(format!("{own}://{ip}:{port}")),
                IpAddr::V6(ip) => origins.push(format!("{own}://[{ip}]:{port}")),
            }
        }
        origins
    }

    /// `LOCKSTEP_DEVICE_AUTH`, or its default for the listening address.
    pub fn device_auth_mode(&self) -> Mode {
        self.device_auth.unwrap_or_else(|| self.default_mode())
    }

    /// `LOCKSTEP_READ_AUTH`, or its default for the listening address.
    pub fn read_auth_mode(&self) -> Mode {
        self.read_auth.unwrap_or_else(|| self.default_mode())
    }

    fn default_mode(&self) -> Mode {
        if self.host.to_canonical().is_loopback() {
            Mode::Off
        } else {
            Mode::Required
        }
    }

    pub fn logger_grace(&self) -> Duration {
        Duration::from_millis(self.logger_grace_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// The async runtime's threads, if set (see [`Self::worker_threads`]).
    pub fn runtime_threads(&self) -> Option<usize> {
        (self.worker_threads > 0).then_some(self.worker_threads)
    }

    /// The limits of requests, failed authentications and WebSockets.
    pub fn limits(&self) -> crate::services::limits::Limits {
        crate::services::limits::Limits::new(self.rates())
            .with_auth_failures(self.auth_failures_per_min)
            .with_ws_per_credential(self.ws_per_credential)
    }

    /// The rates of [`crate::services::limits::Limits`].
    pub fn rates(&self) -> crate::services::limits::Rates {
        crate::services::limits::Rates {
            device_requests: self.device_requests_per_s,
            device_readings: self.device_readings_per_s,
            ip_requests: self.ip_requests_per_s,
            max_batch_readings: u32::try_from(self.max_batch_readings).unwrap_or(u32::MAX),
            ws_per_ip: self.ws_per_ip,
        }
    }

    pub fn ws_send_timeout(&self) -> Duration {
        Duration::from_secs(self.ws_send_timeout_s.max(1))
    }

    pub fn ws_linger(&self) -> Duration {
        Duration::from_millis(self.ws_linger_ms.min(1000))
    }

    pub fn store_timeout(&self) -> Duration {
        Duration::from_millis(self.store_timeout_ms.max(1))
    }

    /// The listener's bounds and TLS, from the files named in the settings.
    pub fn listen_config(&self) -> Result<crate::serve::ListenConfig, crate::tls::TlsError> {
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::server_config(
                cert,
                key,
                self.tls_client_ca.as_deref(),
            )?),
            _ => None,
        };
        Ok(crate::serve::ListenConfig {
            max_connections: self.max_connections.max(1),
            header_timeout: Duration::from_secs(self.header_timeout_s.max(1)),
            body_timeout: Duration::from_secs(self.body_timeout_s.max(1)),
            tls,
        })
    }
}

/// A connection string fit for logs: the password and every query parameter's
/// value are masked (`postgres://user:****@host/db?sslmode=****`); a string that is
/// not a URL is masked whole, since it may be a key=value string with a password.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "****".to_owned();
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let rest = match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            if userinfo.contains(':') {
                format!("{user}:****@{host}")
            } else {
                format!("{user}@{host}")
            }
        }
        None => rest.to_owned(),
    };
    let query = query.map_or_else(String::new, |q| {
        let masked: Vec<String> = q
            .split('&')
            .map(|kv| format!("{}=****", kv.split('=').next().unwrap_or("")))
            .collect();
        format!("?{}", masked.join("&"))
    });
    format!("{scheme}://{rest}{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Settings {
        Settings::from_args_only(std::iter::once("lockstep-server").chain(args.iter().copied()))
            .unwrap()
    }

    #[test]
    fn listens_on_loopback_unless_told_otherwise() {
        assert_eq!(parse(&[]).host, IpAddr::from([127, 0, 0, 1]));
        assert!(parse(&["--host", "0.0.0.0"]).host.is_unspecified());
    }

    #[test]
    fn runtime_threads_default_to_the_runtime_s_own_choice() {
        assert_eq!(parse(&[]).runtime_threads(), None);
        assert_eq!(parse(&["--worker-threads", "0"]).runtime_threads(), None);
        assert_eq!(parse(&["--worker-threads", "3"]).runtime_threads(), Some(3));
    }

    #[test]
    fn store_selection() {
        let s = parse(&["--database-url", "sqlite:///tmp/x.db"]);
        assert_eq!(
            s.store_config().unwrap(),
            StoreConfig::Sqlite("/tmp/x.db".into())
        );
        let s = parse(&["--database-url", "postgres://postgres@127.0.0.1/db"]);
        assert!(matches!(
            s.store_config().unwrap(),
            StoreConfig::Postgres(_)
        ));
        let s = parse(&["--database-url", "mysql://x"]);
        assert!(matches!(
            s.store_config(),
            Err(ConfigError::DatabaseUrlScheme(_))
        ));
        assert!(s.store_config().is_err());
        let s = parse(&["--data-dir", "/d"]);
        assert_eq!(
            s.store_config().unwrap(),
            StoreConfig::Sqlite("/d/lockstep.db".into())
        );
    }

    #[test]
    fn supabase_without_url_says_what_is_missing() {
        let s = parse(&[
            "--enable-supabase",
            "true",
            "--supabase-url",
            "https://x.supabase.co",
        ]);
        let msg = s.store_config().unwrap_err().to_string();
        assert!(msg.contains("DATABASE_URL is not set"), "{msg}");
        assert!(msg.contains("SUPABASE_SERVICE_KEY is not set"), "{msg}");
    }

    #[test]
    fn auth_modes_default_by_address() {
        assert_eq!(parse(&[]).read_auth_mode(), Mode::Off);
        assert_eq!(parse(&["--host", "::1"]).device_auth_mode(), Mode::Off);
        assert_eq!(
            parse(&["--host", "0.0.0.0"]).device_auth_mode(),
            Mode::Required
        );
        assert_eq!(
            parse(&["--host", "0.0.0.0"]).read_auth_mode(),
            Mode::Required
        );
        let s = parse(&["--host", "0.0.0.0", "--read-auth", "off"]);
        assert_eq!(
            (s.read_auth_mode(), s.device_auth_mode()),
            (Mode::Off, Mode::Required)
        );
        assert_eq!(
            parse(&["--read-auth", "required"]).read_auth_mode(),
            Mode::Required
        );
    }

    #[test]
    fn secrets_do_not_print() {
        let s = parse(&["--admin-token", "hunter2"]);
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(redact_url("postgres://u:pw@h/db"), "postgres://u:****@h/db");
        assert_eq!(
            redact_url("postgres://u:p@ss@h/db?password=x&sslmode=require"),
            "postgres://u:****@h/db?password=****&sslmode=****"
        );
        assert_eq!(redact_url("host=h password=x"), "****");
    }

    #[test]
    fn cors_defaults_include_own_origin() {
        let s = parse(&[]);
        let list = s.cors_allow_list(8001).unwrap().unwrap();
        assert!(list.contains(&"http://localhost:8001".to_owned()));
        assert!(list.contains(&"http://127.0.0.1:5173".to_owned()));
        assert!(
            parse(&["--cors-origins", "*"])
                .cors_allow_list(1)
                .unwrap()
                .is_none()
        );
        assert!(
            parse(&["--cors-origins", "ftp://x"])
                .cors_allow_list(1)
                .is_err()
        );
    }
}
