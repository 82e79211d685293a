//! `GET /status` and the JSON 404 of unknown paths.

use axum::Json;
use axum::extract::State;
use std::collections::BTreeMap;

use serde::Serialize;

use crate::actors::logger::LoggerStatus;
use crate::actors::sinks::SinkStatusJson;
use crate::http::error::ApiError;
use crate::protocol::Summary;
use crate::state::AppState;
use crate::store::StoreKind;

#[derive(Serialize, utoipa::ToSchema)]
pub struct StatusJson {
    pub status: &'static str,
    pub compression_stats: Summary,
    pub supabase_enabled: bool,
    pub store: StoreJson,
    pub vehicles: usize,
    pub ws_clients: usize,
    pub uptime_s: u64,
    pub logger: LoggerStatus,
    /// WebSocket messages dropped for slow clients since start.
    pub ws_dropped_messages: u64,
    /// The configured downstream sinks by name (`nats`, `mqtt`); `{}` when none.
    pub sinks: BTreeMap<&'static str, SinkStatusJson>,
    /// Vehicles whose decoding state is in memory (bounded by LOCKSTEP_MAX_VEHICLES).
    pub vehicles_in_memory: usize,
    /// WebSocket clients disconnected (close code 1013) because they did not read.
    pub ws_slow_disconnects: u64,
    /// With `REDIS_URL`: the bridge to the other instances (`null` without).
    /// Its being down makes `status` `degraded` (ingest goes on).
    pub cluster: Option<crate::actors::bridge::ClusterStatusJson>,
    /// Readings not delivered to this instance's clients because they were a
    /// copy, or an earlier commit of their vehicle session that came after the
    /// one-second hold (cluster only).
    pub ws_out_of_order: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct StoreJson {
    pub kind: StoreKind,
    pub healthy: bool,
    pub pending_batch: usize,
}

#[utoipa::path(get, path = "/status", tag = "operations",
    responses((status = 200, description = "Health and counters", body = StatusJson)))]
/// `GET /status`: never touches the store (health comes from the health actor), so it answers even when the store hangs.
pub async fn status(State(app): State<AppState>) -> Json<StatusJson> {
    let healthy = app.health.healthy();
    let cluster = app.bridge.as_ref().map(|b| b.status());
    let bridged = cluster.as_ref().is_none_or(|c| c.redis_connected);
    Json(StatusJson {
        status: if healthy && bridged {
            "healthy"
        } else {
            "degraded"
        },
        cluster,
        ws_out_of_order: app.hub.out_of_order(),
        compression_stats: app.stats.summary(),
        // Only when ENABLE_SUPABASE made the server store in (Supabase's) PostgreSQL.
        supabase_enabled: app.settings.enable_supabase && app.store.kind() == StoreKind::Postgres,
        store: StoreJson {
            kind: app.store.kind(),
            healthy,
            pending_batch: app.writer.pending(),
        },
        vehicles: app.stats.vehicles(),
        ws_clients: app.hub.clients(),
        uptime_s: app.started.elapsed().as_secs(),
        logger: app.logger.status(),
        ws_dropped_messages: app.hub.dropped(),
        sinks: app.sinks.status(),
        ws_slow_disconnects: app.hub.slow_disconnects(),
        vehicles_in_memory: app.vehicles.len(),
    })
}

/// Unknown paths: JSON like every other error.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}
