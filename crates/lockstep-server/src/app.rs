//! Start-up and shutdown: [`App::build`] opens the store, starts the actors
//! (writer, logger supervisor, statistics broadcaster, store health) and
//! binds the listener; [`App::run`] serves until the shutdown token fires,
//! then drains in order: stop the logger child (HTTP still serving, so it can
//! send what it holds), stop accepting and finish in-flight requests, close
//! WebSockets with a Close frame, flush the writer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use lockstep_codec::Catalog;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::actors::bridge::{Bridge, BridgeConfig};
use crate::actors::health::Health;
use crate::actors::hub::{Hub, Level};
use crate::actors::logger::{LoggerConfig, Supervisor};
use crate::actors::logger_lease::ClusterLogger;
use crate::actors::maintenance::Maintainer;
use crate::actors::sinks::{self, SinkContext};
use crate::actors::stats::{self, StatsBook};
use crate::actors::writer::Writer;
use crate::auth::db::AuthDb;
use crate::auth::origin::OriginPolicy;
use crate::auth::{Auth, AuthConfig};
use crate::metrics::Metrics;
use crate::model::Signals;
use crate::serve::{self, ListenConfig, ListenStats};
use crate::services::ingest::{Bounds, IngestService};
use crate::services::live::LiveHistory;
use crate::services::query::QueryService;
use crate::settings::{Settings, StoreConfig, redact_url};
use crate::state::AppState;
use crate::store::{self, Store};
use crate::vehicles::Vehicles;

/// A built server: listener bound, actors running, not yet serving.
pub struct App {
    listener: TcpListener,
    listen: ListenConfig,
    listen_stats: Arc<ListenStats>,
    addr: SocketAddr,
    router: Router,
    state: AppState,
    writer_stop: CancellationToken,
    writer: JoinHandle<()>,
    /// Stops the logger supervisor (and its child) — first, at shutdown.
    logger_stop: CancellationToken,
    logger: JoinHandle<()>,
    background: CancellationToken,
}

impl App {
    /// Opens the store (applying migrations), starts the actors and binds the listener.
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        Self::build_with_catalog(settings, Catalog::default_v1()).await
    }

    /// Like [`Self::build`] with another signal catalog: the store gets a
    /// value column per signal (added if missing), clients a JSON field each.
    pub async fn build_with_catalog(settings: Settings, catalog: Catalog) -> anyhow::Result<Self> {
        let store_config = settings.store_config()?;
        match &store_config {
            StoreConfig::Sqlite(p) => {
                tracing::info!(path = %p.display(), "Using the SQLite store.")
            }
            StoreConfig::Postgres(u) => {
                tracing::info!(url = %redact_url(u), "Using the PostgreSQL store.")
            }
        }
        let signals = Signals::from_catalog(&catalog);
        let store = store::open(&store_config, settings.pg_pool, &signals).await?;
        Self::assemble(settings, catalog, store).await
    }

    /// Like [`Self::build`] with a given store (tests inject failing stores
    /// here), opened for the default catalog.
    pub async fn build_with_store(
        settings: Settings,
        store: Arc<dyn Store>,
    ) -> anyhow::Result<Self> {
        Self::assemble(settings, Catalog::default_v1(), store).await
    }

    async fn assemble(
        settings: Settings,
        catalog: Catalog,
        store: Arc<dyn Store>,
    ) -> anyhow::Result<Self> {
        // Every store call below (startup reads included) ends within the deadline.
        let store = store::deadline::with_deadline(store, settings.store_timeout());
        let catalog = Arc::new(catalog);
        let signals = Signals::from_catalog(&catalog);
        let listener = TcpListener::bind((settings.host, settings.port))
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {}:{} (PORT)",
                    settings.host, settings.port
                )
            })?;
        let addr = listener.local_addr()?;
        let listen = settings.listen_config()?;
        let cors = settings.cors_allow_list(addr.port())?;
        // `*` opens CORS for reads only: state changes still need a listed origin.
        let origins = OriginPolicy::new(&match &cors {
            Some(list) => list.clone(),
            None => settings.default_origins(addr.port()),
        });
        let replay_dir = crate::sandbox::replay_dir(settings.replay_dir.as_deref())?;
        let auth = Arc::new(Auth::new(
            AuthDb::open(&settings.store_config()?)
                .await
                .context("cannot open the token tables")?,
            AuthConfig {
                device: settings.device_auth_mode(),
                read: settings.read_auth_mode(),
                admin_token: settings.admin_token.clone(),
                trust_loopback: settings.trust_loopback,
                // The session cookie only travels over TLS when the server speaks it.
                secure_cookies: settings.tls_cert.is_some(),
            },
        ));
        tracing::info!(
            device_auth = ?auth.config.device,
            read_auth = ?auth.config.read,
            "Access: device auth {:?}, read auth {:?} (docs/security.md).",
            auth.config.device,
            auth.config.read
        );

        let totals = store
            .totals()
            .await
            .context("cannot read the statistics from the store")?;
        let stats = Arc::new(StatsBook::load(totals));
        let hub = Arc::new(Hub::new(settings.ws_queue));
        let background = CancellationToken::new();
        let bridge = match &settings.redis_url {
            None => None,
            Some(url) => {
                let (bridge, handle) = Bridge::new(
                    BridgeConfig {
                        url: url.expose().to_owned(),
                        prefix: settings.redis_prefix.clone(),
                        queue: settings.redis_queue,
                    },
                    hub.clone(),
                    stats.clone(),
                    store.clone(),
                )?;
                hub.attach_relay(handle.clone());
                let client = bridge.client();
                tracing::info!(
                    instance = handle.instance(),
                    prefix = %settings.redis_prefix,
                    "Sharing the live stream with other instances through Redis."
                );
                Some((bridge, handle, client))
            }
        };
        let (health, health_handle) = Health::new(store.clone(), hub.clone());

        let metrics = Metrics::new(&signals);
        let (writer, writer_handle) = Writer::new(
            store.clone(),
            hub.clone(),
            stats.clone(),
            health_handle.clone(),
            settings.writer_queue,
            settings.batch_rows,
            metrics.clone(),
        );
        // Instances joined through Redis share their store: check versions from the start.
        if settings.shared_store || settings.redis_url.is_some() {
            writer_handle.mark_shared();
        }
        let limits = settings.limits();
        let idle = Duration::from_secs(settings.vehicle_idle_s.max(1));
        let vehicles = Arc::new(Vehicles::new(settings.max_vehicles, idle));
        let ingest = IngestService::new(
            catalog.clone(),
            store.clone(),
            writer_handle.clone(),
            hub.clone(),
            health_handle.clone(),
            Bounds {
                max_batch_readings: settings.max_batch_readings,
                limits: limits.clone(),
                vehicles: vehicles.clone(),
            },
            auth.clone(),
            metrics.clone(),
        )?;
        // Checked before anything starts; they run until `background` stops.
        let sinks = sinks::start(
            &settings,
            SinkContext {
                store: store.clone(),
                signals: signals.clone(),
                commits: writer_handle.commits(),
                stop: background.clone(),
                metrics: metrics.clone(),
            },
        )?;
        // Nothing fails after this point: start the actors.
        let (bridge, redis_client) = match bridge {
            Some((b, handle, client)) => {
                tokio::spawn(b.run(background.clone()));
                (Some(handle), Some(client))
            }
            None => (None, None),
        };
        tokio::spawn(health.run(background.clone()));
        tokio::spawn(sweep_vehicles(
            vehicles.clone(),
            idle.min(Duration::from_secs(60)),
            background.clone(),
        ));
        tokio::spawn(
            limits
                .clone()
                .run_housekeeping(Duration::from_secs(60), background.clone()),
        );
        tokio::spawn(
            Maintainer::new(
                store.clone(),
                Duration::from_secs(settings.maintenance_s),
                settings.retention_days,
            )
            .run(background.clone()),
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
        // With HTTPS the child connects by name (certificates name hosts, rarely
        // 127.0.0.1) and trusts the server's own certificate file: it must name
        // `localhost` and hold the CA (or be self-signed) for a loopback server.
        let (server_url, ca_cert) = match &listen.tls {
            None => (format!("http://{host}:{}", addr.port()), None),
            Some(_) => {
                let name = if settings.host.is_loopback() || settings.host.is_unspecified() {
                    "localhost".to_owned()
                } else {
                    host
                };
                (
                    format!("https://{name}:{}", addr.port()),
                    settings.tls_cert.clone(),
                )
            }
        };
        let logger_config = LoggerConfig {
            bin: settings.edge_bin.clone(),
            grace: settings.logger_grace(),
            server_url,
            ca_cert,
            spool: Some(settings.data_dir.join("edge-spool")),
            replay_dir,
        };
        let (supervisor, logger) = Supervisor::new(logger_config, hub.clone(), auth.clone());
        let shutdown = CancellationToken::new();
        let logger_stop = CancellationToken::new();
        let logger_task = tokio::spawn(supervisor.run(logger_stop.clone()));
        if let (Some(client), Some(b)) = (redis_client, &bridge) {
            // One logger for all instances: start/stop/status through the lease.
            let cluster = Arc::new(ClusterLogger::new(
                client,
                b.instance(),
                &settings.redis_prefix,
                Duration::from_millis(settings.logger_lease_ms),
                settings.logger_grace(),
            ));
            logger.attach_cluster(cluster.clone());
            tokio::spawn(cluster.run(logger.clone(), logger_stop.clone()));
        }

        tokio::spawn(stats::broadcast(
            stats.clone(),
            hub.clone(),
            background.clone(),
        ));

        let query = QueryService::new(store.clone(), signals.clone());
        let live_history = LiveHistory::new(
            store.clone(),
            hub.clone(),
            signals.clone(),
            settings.history,
        );
        let state = AppState::new(crate::state::Handles {
            live_history,
            auth,
            origins: Arc::new(origins),
            limits,
            vehicles,
            settings: Arc::new(settings),
            catalog,
            signals,
            store,
            ingest,
            query,
            metrics,
            writer: writer_handle,
            hub,
            stats,
            health: health_handle,
            logger,
            bridge,
            sinks,
            started: Instant::now(),
            shutdown,
            tasks: TaskTracker::new(),
        });
        let router = crate::http::router(state.clone(), cors);
        Ok(Self {
            listener,
            listen,
            listen_stats: Arc::new(ListenStats::default()),
            addr,
            router,
            state,
            writer_stop,
            writer: writer_task,
            logger_stop,
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

    /// The listener's counters (connections refused at the cap).
    pub fn listen_stats(&self) -> Arc<ListenStats> {
        self.listen_stats.clone()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until the shutdown token fires, then drains (see the module doc).
    pub async fn run(self) -> anyhow::Result<()> {
        let Self {
            listener,
            listen,
            listen_stats,
            addr,
            router,
            state,
            writer_stop,
            logger_stop,
            logger,
            writer,
            background,
        } = self;
        let scheme = if listen.tls.is_some() {
            "https"
        } else {
            "http"
        };
        tracing::info!(%addr, "Listening on {scheme}://{addr}");
        state.hub.log(Level::Info, "server", "server started");
        let shutdown = state.shutdown.clone();
        let grace = state.settings.shutdown_grace();
        // The logger child stops first, while HTTP still serves: on SIGTERM it
        // sends what it holds (its spool) to this server before exiting.
        let http_stop = CancellationToken::new();
        let logger_done = tokio::spawn({
            let (shutdown, http_stop) = (shutdown.clone(), http_stop.clone());
            async move {
                shutdown.cancelled().await;
                logger_stop.cancel();
                let _ = logger.await;
                http_stop.cancel();
            }
        });
        let serve = serve::serve(listener, router, listen, listen_stats, http_stop.clone());
        let deadline = async {
            http_stop.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            () = serve => {}
            () = deadline => tracing::warn!("In-flight requests did not finish within the shutdown grace period; closing them."),
        }
        shutdown.cancel(); // also when serve ended on its own
        let _ = logger_done.await;
        tracing::info!("Shutting down: logger stopped, HTTP closed, flushing the writer.");
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
        background.cancel();
        tracing::info!("Shutdown complete.");
        Ok(())
    }
}

/// Evicts idle vehicles from memory every `every` until `stop`.
async fn sweep_vehicles(vehicles: Arc<Vehicles>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let n = vehicles.evict_idle();
                if n > 0 {
                    tracing::debug!(evicted = n, "Idle vehicles left memory.");
                }
            }
            () = stop.cancelled() => return,
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
