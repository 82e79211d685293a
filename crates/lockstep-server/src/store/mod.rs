//! Persistence behind one object-safe trait, [`Store`], with two backends:
//! [`sqlite`] (embedded default) and [`postgres`].
//!
//! Every write is a [`WriteBatch`] committed in ONE transaction: the rows of
//! many requests, their sessions' codec states and the day's statistics. So a
//! session's state is durable exactly when its rows are, and a restart (even
//! SIGKILL) resumes decoding where the last acknowledged batch left it.
//!
//! Schema notes (both backends): `ts` is Unix epoch milliseconds (BIGINT), as
//! sent by the edge — exact, and the same in both stores; `session_id` holds
//! the 64 bits of the wire's `fixed64` as a signed BIGINT; `transmitted_mask`
//! bit i = catalog channel i transmitted; `vehicles.first_seen/last_seen` are
//! server receipt times in Unix ms; `compression_stats.day` is the UTC day of
//! receipt.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::model::{Counters, SessionRecord, Signals, TelemetryRow};
use crate::settings::StoreConfig;

pub mod deadline;
pub mod pg_partitions;
pub mod pg_tls;
pub mod postgres;
pub mod query;
pub mod rollup;
pub mod sqlite;

pub use query::{
    Bucket, DayStats, HistoryCursor, HistoryQuery, SignalAggregate, VehicleDetail, VehiclePage,
    VehicleProfile,
};

/// A boxed future, so that [`Store`] stays object safe.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a store call failed. Mapped to HTTP once, in `http::error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The store cannot serve now (connection lost, pool exhausted, database
    /// busy); nothing was written, retrying later may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The write contradicts what is stored (a uniqueness or reference rule).
    #[error("store conflict: {0}")]
    Conflict(String),
    /// Stored data cannot be read back as what it must be.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The caller broke the store's contract (a bug), e.g. a row naming a
    /// vehicle that is not in its batch.
    #[error("invalid store request: {0}")]
    Invalid(String),
    /// The server is shutting down and the write path is closed.
    #[error("the store is closing: {0}")]
    Closed(String),
    /// Another writer (another server instance on the same database) advanced
    /// these sessions (VIN, session id) since their states were read: their
    /// version no longer matches. Nothing of the batch was written; the
    /// requests that carry them must reload the state and decode again.
    #[error("{} session state(s) changed by another writer", .0.len())]
    Stale(Vec<(Arc<str>, u64)>),
}

impl StoreError {
    pub fn unavailable(e: impl std::fmt::Display) -> Self {
        Self::Unavailable(e.to_string())
    }

    /// True when retrying later may succeed (answered 503 + `Retry-After`).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Unavailable(_) | Self::Closed(_) | Self::Stale(_)
        )
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as C;
        match &e {
            rusqlite::Error::SqliteFailure(f, _) => match f.code {
                C::ConstraintViolation => Self::Conflict(e.to_string()),
                C::DatabaseCorrupt | C::NotADatabase => Self::Corrupt(e.to_string()),
                _ => Self::Unavailable(e.to_string()),
            },
            rusqlite::Error::FromSqlConversionFailure(..)
            | rusqlite::Error::InvalidColumnType(..)
            | rusqlite::Error::IntegralValueOutOfRange(..) => Self::Corrupt(e.to_string()),
            _ => Self::Unavailable(e.to_string()),
        }
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        // `Display` of a server error says only "db error"; the message is in the source.
        let text = match e.as_db_error() {
            Some(d) => format!("{e}: {}", d.message()),
            None => e.to_string(),
        };
        match e.code().map(|c| c.code()) {
            // Class 23: integrity constraint violation.
            Some(c) if c.starts_with("23") => Self::Conflict(text),
            // Class 22: data exception; XX001/XX002: data or index corrupted.
            Some(c) if c.starts_with("22") || c == "XX001" || c == "XX002" => Self::Corrupt(text),
            _ => Self::Unavailable(text),
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            e => Self::Unavailable(e.to_string()),
        }
    }
}

/// The statistics of one vehicle for one UTC day (days since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsDelta {
    pub vin: Arc<str>,
    pub day: i32,
    pub counters: Counters,
}

/// Everything one transaction writes.
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    /// Distinct VINs the batch names, created when missing with this
    /// receipt time (Unix ms) as first and last seen. An existing vehicle's
    /// `last_seen` is raised only through [`Self::last_seen`] (SQLite also
    /// raises it from here; PostgreSQL does not, which keeps the vehicle
    /// rows out of every commit).
    pub vehicles: Vec<(Arc<str>, i64)>,
    /// Receipt times (Unix ms) to raise vehicles' `last_seen` to; a vehicle
    /// the store does not know is left alone. The writer sends them once a
    /// second with the statistics.
    pub last_seen: Vec<(Arc<str>, i64)>,
    pub rows: Vec<TelemetryRow>,
    /// At most one per (vin, session).
    pub sessions: Vec<SessionRecord>,
    /// At most one per (vin, day).
    pub stats: Vec<StatsDelta>,
    /// Changes of vehicles' model/year (`PATCH /api/vehicles/{vin}`); a VIN
    /// the store does not know is left alone.
    pub profiles: Vec<VehicleProfile>,
    /// Resync answers to add to known vehicles' counters.
    pub resyncs: Vec<(Arc<str>, u64)>,
}

/// A session's stored version, with its state when the caller asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionVersion {
    /// 0: no state stored; every commit of the session adds one.
    pub version: u64,
    /// The stored state, present only when `version` is not the caller's
    /// known version (and is not 0).
    pub state: Option<Vec<u8>>,
}

/// A vehicle as listed by `GET /api/vehicles`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct VehicleSummary {
    pub vin: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// Readings stored (from the statistics).
    pub readings: u64,
    pub model: Option<String>,
    pub year: Option<i32>,
}

/// The lifetime totals of one vehicle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VehicleTotals {
    pub vin: String,
    pub counters: Counters,
}

/// Which backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

/// Persistence of readings, sessions and statistics.
pub trait Store: Send + Sync + 'static {
    fn kind(&self) -> StoreKind;
    /// Commits the batch in one transaction: all of it or nothing.
    fn commit(&self, batch: WriteBatch) -> BoxFut<'_, Result<(), StoreError>>;
    /// The stored codec state of a session (`session_id` 0: the seed predictor).
    fn load_session(
        &self,
        vin: Arc<str>,
        session_id: u64,
    ) -> BoxFut<'_, Result<Option<Vec<u8>>, StoreError>>;
    /// The session's stored version and, only when it differs from `known`
    /// (`None`: nothing cached), its state: one primary-key read that
    /// carries the state only when another writer changed it. Ingest calls
    /// it before decoding against a cached state once other writers are seen.
    fn session_if_changed(
        &self,
        vin: Arc<str>,
        session_id: u64,
        known: Option<u64>,
    ) -> BoxFut<'_, Result<SessionVersion, StoreError>>;
    /// The latest `limit` readings, oldest first.
    /// How many readings of the session with `first <= seq <= last` are stored
    /// (ingest calls a batch a duplicate only if all of it is).
    fn stored_count(
        &self,
        vin: Arc<str>,
        session_id: u64,
        first: u64,
        last: u64,
    ) -> BoxFut<'_, Result<u64, StoreError>>;
    fn recent(&self, limit: usize) -> BoxFut<'_, Result<Vec<TelemetryRow>, StoreError>>;
    /// Vehicles ordered by VIN, after `page.after`, at most `page.limit`.
    fn vehicles(&self, page: VehiclePage) -> BoxFut<'_, Result<Vec<VehicleSummary>, StoreError>>;
    /// One vehicle; `None` if the store does not know the VIN.
    fn vehicle(&self, vin: Arc<str>) -> BoxFut<'_, Result<Option<VehicleDetail>, StoreError>>;
    /// Raw readings of one vehicle in `(ts, session_id, seq)` order, one page;
    /// `None` if the VIN is unknown.
    fn history(&self, q: HistoryQuery)
    -> BoxFut<'_, Result<Option<Vec<TelemetryRow>>, StoreError>>;
    /// How many readings of one vehicle lie in `from <= ts < to`; `None` if unknown.
    fn count_history(
        &self,
        vin: Arc<str>,
        from: i64,
        to: i64,
    ) -> BoxFut<'_, Result<Option<u64>, StoreError>>;
    /// Per-bucket aggregates (epoch-aligned buckets of `step` ms) computed in
    /// the database, only buckets with readings; `None` if the VIN is unknown.
    fn buckets(
        &self,
        vin: Arc<str>,
        from: i64,
        to: i64,
        step: i64,
    ) -> BoxFut<'_, Result<Option<Vec<Bucket>>, StoreError>>;
    /// Daily statistics of one vehicle for epoch days `first..=last`; `None` if unknown.
    fn daily_stats(
        &self,
        vin: Arc<str>,
        first: i32,
        last: i32,
    ) -> BoxFut<'_, Result<Option<Vec<DayStats>>, StoreError>>;
    /// Lifetime statistics per vehicle.
    fn totals(&self) -> BoxFut<'_, Result<Vec<VehicleTotals>, StoreError>>;
    /// A cheap WRITE round trip (one row of `health_probe` rewritten) that
    /// proves the store takes writes — a read alone passes on a full disk.
    fn ping(&self) -> BoxFut<'_, Result<(), StoreError>>;

    // Downstream sinks (see `actors::sinks`): a durable cursor per sink over
    // `telemetry_data.id`, which grows in commit order (see the backends).

    /// Up to `limit` stored readings with a position above `after`, in
    /// position order, each with its position.
    fn readings_after(
        &self,
        after: i64,
        limit: usize,
    ) -> BoxFut<'_, Result<Vec<(i64, TelemetryRow)>, StoreError>>;
    /// How many stored readings have a position above `after` (a sink's lag).
    fn count_after(&self, after: i64) -> BoxFut<'_, Result<u64, StoreError>>;
    /// Takes or renews the lease on sink `lease.sink` for `lease.holder`
    /// until `now_ms + ttl_ms` (a new sink starts at position 0). Returns the
    /// sink's cursor if the caller now holds the lease, `None` if another
    /// holder's lease has not expired.
    fn lease_sink(&self, lease: SinkLease) -> BoxFut<'_, Result<Option<i64>, StoreError>>;
    /// Moves the sink's cursor forward to `position` if `lease.holder` still
    /// holds it; `false` when another holder took the sink over.
    fn advance_sink(&self, lease: SinkLease, position: i64)
    -> BoxFut<'_, Result<bool, StoreError>>;

    /// Storage upkeep (`actors::maintenance`): PostgreSQL creates the day
    /// partitions of `telemetry_data` ahead and moves rows that landed in
    /// the default partition into their day's; with a retention, both stores
    /// remove readings (and rollup minutes) older than its cutoff.
    fn maintain(&self, policy: Maintenance) -> BoxFut<'_, Result<MaintenanceReport, StoreError>>;
}

/// What one maintenance run is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Maintenance {
    /// The present, Unix ms.
    pub now_ms: i64,
    /// Keep the readings of the last this many whole UTC days before today's
    /// (`LOCKSTEP_RETENTION_DAYS`); `None` = keep everything.
    pub retention_days: Option<u32>,
    /// PostgreSQL: day partitions exist from today to this many days ahead.
    pub days_ahead: u32,
}

pub const DAY_MS: i64 = 86_400_000;

impl Maintenance {
    /// Readings with `ts` below this are removed; a UTC day start.
    pub fn cutoff_ms(&self) -> Option<i64> {
        self.retention_days
            .map(|d| self.now_ms - self.now_ms.rem_euclid(DAY_MS) - i64::from(d) * DAY_MS)
    }
}

/// What a maintenance run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MaintenanceReport {
    /// Day partitions created (PostgreSQL).
    pub partitions_created: u64,
    /// Rows moved from the default partition into their day's (PostgreSQL).
    pub rows_moved: u64,
    /// Day partitions dropped by the retention (PostgreSQL).
    pub partitions_dropped: u64,
    /// Rows deleted one by one by the retention (SQLite; PostgreSQL's default partition).
    pub rows_deleted: u64,
    /// Rollup minutes deleted by the retention.
    pub rollup_deleted: u64,
}

/// Who asks for which sink's lease, and for how long.
#[derive(Debug, Clone)]
pub struct SinkLease {
    /// `nats` or `mqtt`.
    pub sink: Arc<str>,
    /// This server instance (unique per process start).
    pub holder: Arc<str>,
    pub now_ms: i64,
    pub ttl_ms: i64,
}

/// Opens the configured store and applies its migrations; `signals` (the
/// catalog's) name the value columns, added to an existing table if missing.
pub async fn open(
    config: &StoreConfig,
    pg_pool: usize,
    signals: &Signals,
) -> anyhow::Result<Arc<dyn Store>> {
    let columns = SignalColumns::new(signals)?;
    Ok(match config {
        StoreConfig::Sqlite(path) => Arc::new(sqlite::SqliteStore::open(path, columns).await?),
        StoreConfig::Postgres(url) => {
            Arc::new(postgres::PgStore::connect(url, pg_pool, columns).await?)
        }
    })
}

/// Columns of `telemetry_data` that are not signals.
const FIXED_COLUMNS: [&str; 7] = [
    "id",
    "vehicle_id",
    "session_id",
    "seq",
    "ts",
    "transmitted_mask",
    "keyframe",
];

/// The value columns of `telemetry_data`, one per catalog signal, in channel
/// order: every SQL text that names them (DDL, insert, COPY, select) is
/// generated here, so adding a signal to the catalog is the whole change.
#[derive(Debug, Clone)]
pub struct SignalColumns {
    signals: Signals,
}

impl SignalColumns {
    /// Checks that every name is a plain lowercase SQL identifier that does
    /// not collide with a fixed column (names are also quoted in SQL).
    pub fn new(signals: &Signals) -> anyhow::Result<Self> {
        anyhow::ensure!(!signals.is_empty(), "the signal catalog is empty");
        anyhow::ensure!(
            signals.len() <= 64,
            "the signal catalog has {} signals; transmitted_mask holds 64",
            signals.len()
        );
        for name in signals.names() {
            let ok = name.len() <= 63
                && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            anyhow::ensure!(
                ok,
                "signal name {name:?} cannot be a column: use lowercase letters, digits and _"
            );
            anyhow::ensure!(
                !FIXED_COLUMNS.contains(&&**name),
                "signal name {name:?} is a reserved column of telemetry_data"
            );
        }
        Ok(Self {
            signals: signals.clone(),
        })
    }

    pub fn len(&self) -> usize {
        self.signals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.signals.is_empty()
    }

    pub fn names(&self) -> &[Arc<str>] {
        self.signals.names()
    }

    /// `"speed", "battery", …`, each prefixed with `alias.` if given.
    pub fn list(&self, alias: Option<&str>) -> String {
        let prefix = alias.map(|a| format!("{a}.")).unwrap_or_default();
        self.names()
            .iter()
            .map(|n| format!("{prefix}\"{n}\""))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The column definitions for `CREATE TABLE`, one `"name" TYPE,` line each.
    pub fn ddl(&self, sql_type: &str) -> String {
        self.names()
            .iter()
            .map(|n| format!("    \"{n}\" {sql_type},\n"))
            .collect()
    }

    /// `ALTER TABLE` statements adding the signals with no column in
    /// `existing` (a catalog that grew), each logged.
    pub fn add_missing(&self, existing: &[String], sql_type: &str) -> Vec<String> {
        self.names()
            .iter()
            .filter(|n| !existing.iter().any(|e| e == &***n))
            .map(|name| {
                tracing::info!(column = %name, "Adding a value column for a new catalog signal.");
                format!("ALTER TABLE telemetry_data ADD COLUMN \"{name}\" {sql_type}")
            })
            .collect()
    }
}

/// Bit-preserving conversions between the wire's u64 and SQL's BIGINT.
pub(crate) fn to_sql_u64(v: u64) -> i64 {
    v as i64
}

/// `first..=last` of u64 sequence numbers as one or two ranges of their
/// BIGINT bit patterns (a range that crosses 2^63 wraps to negative numbers).
pub(crate) fn sql_ranges(first: u64, last: u64) -> Vec<(i64, i64)> {
    let (a, b) = (to_sql_u64(first), to_sql_u64(last));
    if a <= b {
        vec![(a, b)]
    } else {
        vec![(a, i64::MAX), (i64::MIN, b)]
    }
}

pub(crate) fn from_sql_u64(v: i64) -> u64 {
    v as u64
}
