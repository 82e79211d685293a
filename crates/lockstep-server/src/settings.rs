//! Settings: command-line flags, each with an environment variable
//! (`.env` is loaded by `main` before parsing). Tests build [`Settings`]
//! with [`Settings::from_args_only`], which ignores the process environment.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{ArgAction, Parser, builder::BoolishValueParser};

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

    /// Address to bind. Loopback by default: set 0.0.0.0 (or an interface's
    /// address) to accept other machines.
    #[arg(
        help_heading = "Network",
        long,
        env = "LOCKSTEP_HOST",
        default_value = "127.0.0.1"
    )]
    pub host: IpAddr,

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

    /// Bearer token that allows logger control from non-loopback peers.
    #[arg(
        help_heading = "Logger control",
        long,
        env = "LOCKSTEP_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<Secret>,

    /// Trust loopback peers for logger control without a token. Turn off when a
    /// reverse proxy on this host forwards remote requests.
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

    /// Connections in the PostgreSQL pool.
    #[arg(
        help_heading = "Store",
        long,
        env = "LOCKSTEP_PG_POOL",
        default_value_t = 8
    )]
    pub pg_pool: usize,

    /// Seconds a client should wait after a 503 (`Retry-After`).
    #[arg(
        help_heading = "Store",
        long,
        env = "LOCKSTEP_RETRY_AFTER_S",
        default_value_t = 2
    )]
    pub retry_after_s: u32,

    /// The edge logger binary started by /logger/start. Default: `lockstep-edge`
    /// next to this binary.
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

    /// Log format: `text` or `json` (filter with RUST_LOG).
    #[arg(help_heading = "Operations", long, env = "LOCKSTEP_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

const AFTER_HELP: &str = "\
Examples:
  lockstep-server                                   SQLite in ./data/lockstep.db, port 8001
  DATABASE_URL=postgres://postgres@127.0.0.1/lockstep lockstep-server
  PORT=9000 LOCKSTEP_ADMIN_TOKEN=s3cret lockstep-server

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
            let mut ports = vec![port, 3000, 5173, 8080];
            ports.dedup();
            ports
                .iter()
                .flat_map(|p| {
                    [
                        format!("http://localhost:{p}"),
                        format!("http://127.0.0.1:{p}"),
                    ]
                })
                .collect()
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

    pub fn logger_grace(&self) -> Duration {
        Duration::from_millis(self.logger_grace_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

/// `postgres://user:password@host/db` → `postgres://user:****@host/db`, for logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:****@{host}"),
        None => url.to_owned(),
    }
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
    fn secrets_do_not_print() {
        let s = parse(&["--admin-token", "hunter2"]);
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(redact_url("postgres://u:pw@h/db"), "postgres://u:****@h/db");
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
