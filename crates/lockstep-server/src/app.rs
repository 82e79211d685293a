//! Start-up and shutdown: [`App::build`] opens the store, starts the actors
//! (writer, logger supervisor, statistics broadcaster, health probe) and
//! binds the listener; [`App::run`] serves until the shutdown token fires,
//! then drains in order: stop accepting and finish in-flight requests, close
//! WebSockets with a Close frame, flush the writer, stop the logger child.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, header};
use axum::routing::{get, post};
use lockstep_codec::Catalog;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

use crate::auth::AdminPolicy;
use crate::error::ApiError;
use crate::hub::{Hub, HubEvent, Level};
use crate::logger::{LoggerConfig, LoggerHandle, Supervisor};
use crate::model::COLUMNS;
use crate::settings::{Settings, redact_url};
use crate::stats::StatsBook;
use crate::store::{self, Store, StoreError};
use crate::vehicles::Vehicles;
use crate::writer::{Health, Writer, WriterHandle};
use crate::{StoreConfig, ingest, routes, ws};

/// Cheap clonable handles shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub catalog: Arc<Catalog>,
    /// Catalog channel of each seed field (speed, battery, power, heading).
    pub seed_channels: [usize; 4],
    pub store: Arc<dyn Store>,
    pub writer: WriterHandle,
    pub vehicles: Arc<Vehicles>,
    pub hub: Arc<Hub>,
    pub stats: Arc<StatsBook>,
    pub health: Arc<Health>,
    pub logger: LoggerHandle,
    pub admin: AdminPolicy,
    pub started: Instant,
    /// Fires on shutdown: WebSocket tasks close, the server stops accepting.
    pub shutdown: CancellationToken,
    /// WebSocket tasks, awaited (with a deadline) at shutdown.
    pub tasks: TaskTracker,
}

impl AppState {
    /// The 503 answer for a store error.
    pub fn unavailable(&self, e: StoreError) -> ApiError {
        // Debug: the writer and the health probe log the outage once, not per request.
        tracing::debug!(error = %e, "Answering 503: the store is unavailable.");
        if self.health.set(false) {
            tracing::error!(error = %e, "The store is unavailable: ingest answers 503 until it returns.");
            self.hub.log(
                Level::Error,
                "server",
                "The store is unavailable: ingest answers 503 until it returns.",
            );
        }
        ApiError::StoreUnavailable {
            retry_after_s: self.settings.retry_after_s,
        }
    }
}

/// A built server: listener bound, actors running, not yet serving.
pub struct App {
    listener: TcpListener,
    addr: SocketAddr,
    router: Router,
    state: AppState,
    writer_stop: CancellationToken,
    writer: JoinHandle<()>,
    logger: JoinHandle<()>,
    background: CancellationToken,
}

impl App {
    /// Opens the store (applying migrations), starts the actors and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let store_config = settings.store_config()?;
        match &store_config {
            StoreConfig::Sqlite(p) => {
                tracing::info!(path = %p.display(), "Using the SQLite store.")
            }
            StoreConfig::Postgres(u) => {
                tracing::info!(url = %redact_url(u), "Using the PostgreSQL store.")
            }
        }
        let store = store::open(&store_config, settings.pg_pool).await?;
        Self::build_with_store(settings, store).await
    }

    /// Like [`Self::build`] with a given store (tests inject failing stores here).
    pub async fn build_with_store(
        settings: Settings,
        store: Arc<dyn Store>,
    ) -> anyhow::Result<Self> {
        let catalog = Arc::new(Catalog::default_v1());
        let names: Vec<&str> = catalog.signals().iter().map(|s| s.name.as_str()).collect();
        anyhow::ensure!(
            names == COLUMNS,
            "the signal catalog {names:?} does not match the store columns {COLUMNS:?}"
        );
        let seed_channels = lockstep_codec::seed::SEED_FIELDS
            .map(|f| {
                catalog
                    .index_of(f)
                    .ok_or_else(|| anyhow::anyhow!("the catalog has no {f} channel"))
            })
            .into_iter()
            .collect::<anyhow::Result<Vec<_>>>()?
            .try_into()
            .map_err(|_| anyhow::anyhow!("four seed fields"))?;

        let listener = TcpListener::bind((settings.host, settings.port))
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {}:{} (PORT)",
                    settings.host, settings.port
                )
            })?;
        let addr = listener.local_addr()?;
        let cors = settings.cors_allow_list(addr.port())?;

        let totals = store
            .totals()
            .await
            .context("cannot read the statistics from the store")?;
        let stats = Arc::new(StatsBook::load(totals));
        let hub = Arc::new(Hub::new(settings.ws_queue));
        let health = Arc::new(Health::default());
        let background = CancellationToken::new();

        let (writer, writer_handle) = Writer::new(
            store.clone(),
            hub.clone(),
            stats.clone(),
            health.clone(),
            settings.writer_queue,
            settings.batch_rows,
        );
        let writer_stop = CancellationToken::new();
        let writer_task = tokio::spawn(writer.run(writer_stop.clone()));

        let host = if settings.host.is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            settings.host.to_string()
        };
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let logger_config = LoggerConfig {
            bin: settings.edge_bin.clone(),
            grace: settings.logger_grace(),
            server_url: format!("http://{host}:{}", addr.port()),
            spool: Some(settings.data_dir.join("edge-spool")),
        };
        let (supervisor, logger) = Supervisor::new(logger_config, hub.clone());
        let shutdown = CancellationToken::new();
        let logger_task = tokio::spawn(supervisor.run(shutdown.clone()));

        tokio::spawn(stats_broadcaster(
            stats.clone(),
            hub.clone(),
            background.clone(),
        ));
        tokio::spawn(health_probe(
            store.clone(),
            health.clone(),
            hub.clone(),
            background.clone(),
        ));

        let state = AppState {
            admin: AdminPolicy {
                token: settings.admin_token.clone(),
                trust_loopback: settings.trust_loopback,
            },
            settings: Arc::new(settings),
            catalog,
            seed_channels,
            store,
            writer: writer_handle,
            vehicles: Arc::new(Vehicles::default()),
            hub,
            stats,
            health,
            logger,
            started: Instant::now(),
            shutdown,
            tasks: TaskTracker::new(),
        };
        let router = router(state.clone(), cors);
        Ok(Self {
            listener,
            addr,
            router,
            state,
            writer_stop,
            writer: writer_task,
            logger: logger_task,
            background,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cancel it to shut the server down (what SIGINT/SIGTERM do in `main`).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.shutdown.clone()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until the shutdown token fires, then drains (see the module doc).
    pub async fn run(self) -> anyhow::Result<()> {
        let Self {
            listener,
            addr,
            router,
            state,
            writer_stop,
            writer,
            logger,
            background,
        } = self;
        tracing::info!(%addr, "Listening on http://{addr}");
        state.hub.log(Level::Info, "server", "server started");
        let shutdown = state.shutdown.clone();
        let grace = state.settings.shutdown_grace();
        let serve = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let deadline = async {
            shutdown.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            r = serve => r.context("the HTTP server failed")?,
            () = deadline => tracing::warn!("In-flight requests did not finish within the shutdown grace period; closing them."),
        }
        shutdown.cancel(); // also when serve ended on its own
        tracing::info!("Shutting down: HTTP closed, flushing the writer and stopping the logger.");
        state.tasks.close();
        if tokio::time::timeout(Duration::from_secs(2), state.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("Some WebSocket clients did not close in time.");
        }
        writer_stop.cancel();
        if tokio::time::timeout(grace, writer).await.is_err() {
            tracing::error!("The writer did not flush within the shutdown grace period.");
        }
        let _ = logger.await;
        background.cancel();
        tracing::info!("Shutdown complete.");
        Ok(())
    }
}

fn router(state: AppState, cors: Option<Vec<String>>) -> Router {
    let origins = match cors {
        None => AllowOrigin::any(),
        Some(list) => AllowOrigin::list(list.iter().filter_map(|o| HeaderValue::from_str(o).ok())),
    };
    let cors = CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION]);
    let body_limit = state.settings.body_limit;
    Router::new()
        .route("/api/telemetry", post(ingest::post_telemetry))
        .route("/api/v1/batch", post(ingest::post_batch))
        .route("/api/vehicles", get(routes::vehicles))
        .route("/status", get(routes::status))
        .route("/logger/start", post(routes::logger_start))
        .route("/logger/stop", post(routes::logger_stop))
        .route("/logger/status", get(routes::logger_status))
        .route("/ws", get(ws::ws_handler))
        .fallback(routes::not_found)
        // The embedded web dashboard (`/`, `/assets/…`), owned by the dashboard engineer.
        .merge(crate::dashboard::router())
        // Ingest reads its body itself (413 as JSON); this bounds every other extractor.
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(cors)
        // One span per request (debug level: enable with RUST_LOG=tower_http=debug).
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Sends `compression_stats` at most once a second, when they changed.
async fn stats_broadcaster(stats: Arc<StatsBook>, hub: Arc<Hub>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = stats.version();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let v = stats.version();
        if v != sent && hub.has_clients() {
            sent = v;
            hub.publish(HubEvent {
                vin: None,
                text: stats.to_json().into(),
            });
        }
    }
}

/// Pings the store: every second while unhealthy, every 5 s otherwise.
async fn health_probe(
    store: Arc<dyn Store>,
    health: Arc<Health>,
    hub: Arc<Hub>,
    stop: CancellationToken,
) {
    loop {
        let pause = if health.healthy() {
            Duration::from_secs(5)
        } else {
            Duration::from_secs(1)
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stop.cancelled() => return,
        }
        let ok = match tokio::time::timeout(Duration::from_secs(3), store.ping()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "Store ping failed.");
                false
            }
            Err(_) => false,
        };
        if health.set(ok) {
            let msg = if ok {
                "The store is reachable again."
            } else {
                "The store is unreachable."
            };
            tracing::warn!("{msg}");
            hub.log(if ok { Level::Info } else { Level::Error }, "server", msg);
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received."),
        () = term => tracing::info!("SIGTERM received."),
    }
}
