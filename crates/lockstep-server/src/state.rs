//! [`AppState`]: the cheap clonable handles every HTTP handler gets.

use std::sync::Arc;
use std::time::Instant;

use lockstep_codec::Catalog;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::actors::health::HealthHandle;
use crate::actors::hub::Hub;
use crate::actors::logger::LoggerHandle;
use crate::actors::sinks::Sinks;
use crate::actors::stats::StatsBook;
use crate::actors::writer::WriterHandle;
use crate::auth::Auth;
use crate::auth::origin::OriginPolicy;
use crate::metrics::Metrics;
use crate::model::Signals;
use crate::services::ingest::IngestService;
use crate::services::limits::Limits;
use crate::services::live::LiveHistory;
use crate::services::query::QueryService;
use crate::settings::Settings;
use crate::store::Store;

/// Shared by every handler. Cloned for every extractor and middleware layer
/// of every request, so it is one `Arc`: cloning the [`Handles`] themselves
/// would be some thirty reference-count updates each time (they showed in
/// the profile of the seed form, one reading per request).
#[derive(Clone)]
pub struct AppState(Arc<Handles>);

impl AppState {
    pub fn new(handles: Handles) -> Self {
        Self(Arc::new(handles))
    }
}

impl std::ops::Deref for AppState {
    type Target = Handles;

    fn deref(&self) -> &Handles {
        &self.0
    }
}

/// Every service and actor handle the HTTP layer uses.
pub struct Handles {
    pub settings: Arc<Settings>,
    /// The signal catalog the server decodes and stores with.
    pub catalog: Arc<Catalog>,
    /// The catalog's signal names: value columns and JSON field names.
    pub signals: Signals,
    /// For reads; writes go through [`Self::ingest`] and the writer.
    pub store: Arc<dyn Store>,
    /// Both wire forms: decode, commit, acknowledge.
    pub ingest: IngestService,
    /// Reads: history, vehicles, statistics.
    pub query: QueryService,
    /// The history new WebSocket clients get first.
    pub live_history: LiveHistory,
    /// For `/status` (`pending_batch`).
    pub writer: WriterHandle,
    pub hub: Arc<Hub>,
    pub stats: Arc<StatsBook>,
    /// Read-only here: the health actor alone decides it.
    pub health: HealthHandle,
    pub logger: LoggerHandle,
    /// The Redis bridge to other instances (`REDIS_URL`), if configured.
    pub bridge: Option<Arc<crate::actors::bridge::BridgeHandle>>,
    /// Credentials, roles and web sessions.
    pub auth: Arc<Auth>,
    /// Origins allowed to change state and open WebSockets.
    pub origins: Arc<OriginPolicy>,
    /// The downstream sinks' status, for `/status`.
    pub sinks: Sinks,
    /// Rate limits per device and per client address, WebSockets per address.
    pub limits: Limits,
    /// The per-vehicle decoding state in memory (for `/status`).
    pub vehicles: Arc<crate::vehicles::Vehicles>,
    /// This server's Prometheus metrics (`/metrics`).
    pub metrics: Metrics,
    pub started: Instant,
    /// Fires on shutdown: WebSocket tasks close, the server stops accepting.
    pub shutdown: CancellationToken,
    /// WebSocket tasks, awaited (with a deadline) at shutdown.
    pub tasks: TaskTracker,
}

impl axum::extract::FromRef<AppState> for Arc<Auth> {
    fn from_ref(app: &AppState) -> Self {
        app.auth.clone()
    }
}
