//! The REST endpoints other than ingest: `/status`, `/api/vehicles` and
//! logger control.

use std::net::SocketAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use crate::app::AppState;
use crate::error::ApiError;
use crate::logger::{LoggerError, LoggerStatus, StartRequest, Started, Stopped};
use crate::stats::Summary;
use crate::store::{StoreKind, VehicleSummary};

#[derive(Serialize)]
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
}

#[derive(Serialize)]
pub struct StoreJson {
    pub kind: StoreKind,
    pub healthy: bool,
    pub pending_batch: usize,
}

/// `GET /status`: never touches the store (health comes from the writer and
/// the background ping), so it answers even when the store hangs.
pub async fn status(State(app): State<AppState>) -> Json<StatusJson> {
    let healthy = app.health.healthy();
    Json(StatusJson {
        status: if healthy { "healthy" } else { "degraded" },
        compression_stats: app.stats.summary(),
        supabase_enabled: app.settings.enable_supabase,
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
    })
}

/// `GET /api/vehicles`.
pub async fn vehicles(State(app): State<AppState>) -> Result<Json<Vec<VehicleSummary>>, ApiError> {
    app.store
        .vehicles()
        .await
        .map(Json)
        .map_err(|e| app.unavailable(e))
}

fn authorize(app: &AppState, peer: SocketAddr, headers: &HeaderMap) -> Result<(), ApiError> {
    if app.admin.allows(peer, headers) {
        Ok(())
    } else {
        tracing::warn!(%peer, "Logger control refused.");
        Err(ApiError::Forbidden("logger control is allowed from loopback or with Authorization: Bearer <LOCKSTEP_ADMIN_TOKEN>".into()))
    }
}

fn logger_error(e: LoggerError) -> ApiError {
    match e {
        LoggerError::BadRequest(m) => ApiError::BadRequest(m),
        LoggerError::Unavailable(m) => ApiError::NotAvailable(m),
    }
}

/// `POST /logger/start` with an optional JSON body.
pub async fn logger_start(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&app, peer, &headers)?;
    let req: StartRequest = if body.iter().all(u8::is_ascii_whitespace) {
        StartRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::BadRequest(format!("the body is not valid logger options: {e}"))
        })?
    };
    Ok(match app.logger.start(req).await.map_err(logger_error)? {
        Started::Started { pid } => (
            StatusCode::OK,
            Json(json!({"status": "started", "pid": pid})),
        )
            .into_response(),
        Started::AlreadyRunning { pid } => (
            StatusCode::CONFLICT,
            Json(json!({"status": "already_running", "pid": pid})),
        )
            .into_response(),
    })
}

/// `POST /logger/stop`.
pub async fn logger_stop(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&app, peer, &headers)?;
    Ok(match app.logger.stop().await {
        Stopped::Stopped { exit_code } => {
            Json(json!({"status": "stopped", "exit_code": exit_code})).into_response()
        }
        Stopped::NotRunning => Json(json!({"status": "not_running"})).into_response(),
    })
}

/// `GET /logger/status`.
pub async fn logger_status(State(app): State<AppState>) -> Json<LoggerStatus> {
    Json(app.logger.status())
}

/// Unknown paths: JSON like every other error.
pub async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"status": "error", "error": "no such endpoint"})),
    )
        .into_response()
}
