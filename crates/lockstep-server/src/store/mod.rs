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

use crate::model::{Counters, SessionRecord, TelemetryRow};
use crate::settings::StoreConfig;

pub mod pg_tls;
pub mod postgres;
pub mod sqlite;

/// A boxed future, so that [`Store`] stays object safe.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The store cannot serve now; callers answer 503 and retry later.
#[derive(Debug, Clone, thiserror::Error)]
#[error("store unavailable: {0}")]
pub struct StoreError(pub String);

impl StoreError {
    pub fn new(e: impl std::fmt::Display) -> Self {
        Self(e.to_string())
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
    /// Distinct VINs with the receipt time (Unix ms) to record as seen.
    pub vehicles: Vec<(Arc<str>, i64)>,
    pub rows: Vec<TelemetryRow>,
    /// At most one per (vin, session).
    pub sessions: Vec<SessionRecord>,
    /// At most one per (vin, day).
    pub stats: Vec<StatsDelta>,
}

/// A vehicle as listed by `GET /api/vehicles`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VehicleSummary {
    pub vin: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// Readings stored (from the statistics).
    pub readings: u64,
}

/// The lifetime totals of one vehicle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VehicleTotals {
    pub vin: String,
    pub counters: Counters,
}

/// Which backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
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
    /// The latest `limit` readings, oldest first.
    fn recent(&self, limit: usize) -> BoxFut<'_, Result<Vec<TelemetryRow>, StoreError>>;
    fn vehicles(&self) -> BoxFut<'_, Result<Vec<VehicleSummary>, StoreError>>;
    /// Lifetime statistics per vehicle.
    fn totals(&self) -> BoxFut<'_, Result<Vec<VehicleTotals>, StoreError>>;
    /// A cheap round trip that proves the store answers.
    fn ping(&self) -> BoxFut<'_, Result<(), StoreError>>;
}

/// Opens the configured store and applies its migrations.
pub async fn open(config: &StoreConfig, pg_pool: usize) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match config {
        StoreConfig::Sqlite(path) => Arc::new(sqlite::SqliteStore::open(path).await?),
        StoreConfig::Postgres(url) => Arc::new(postgres::PgStore::connect(url, pg_pool).await?),
    })
}

/// Bit-preserving conversions between the wire's u64 and SQL's BIGINT.
pub(crate) fn to_sql_u64(v: u64) -> i64 {
    v as i64
}

pub(crate) fn from_sql_u64(v: i64) -> u64 {
    v as u64
}

/// Array of the value columns from nullable column reads.
pub(crate) fn values_from(
    get: impl FnMut(usize) -> Option<f64>,
) -> [Option<f64>; crate::model::CHANNELS] {
    std::array::from_fn(get)
}
