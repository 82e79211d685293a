//! The HTTP layer: the router (every route, listed in [`router`]), thin
//! handlers per resource, shared extractors and the one [`error::ApiError`].
//! Handlers call services and actor handles; nothing below imports this
//! module.
//!
//! Routes are grouped by who may call them, so that a policy (auth, rate
//! limit, body limit) can be layered on one group without touching the
//! others:
//! - [`device_ingest`]: vehicles and edge loggers sending readings;
//! - [`reads`]: clients reading stored data and the live stream;
//! - [`operator`]: logger control (loopback or the admin token today);
//! - [`admin`]: server administration (none yet);
//! - [`public`]: health/status and the embedded dashboard.

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::{Next, from_fn_with_state, map_response_with_state};
use axum::response::Response;
use axum::routing::{get, post};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

use crate::state::AppState;

pub mod dashboard;
pub mod error;
pub mod extract;
pub mod logger;
pub mod peer;
pub mod status;
pub mod telemetry;
pub mod vehicles;
pub mod ws;

/// The whole HTTP surface. `cors`: allowed origins, `None` = any.
pub fn router(state: AppState, cors: Option<Vec<String>>) -> Router {
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
        .merge(device_ingest())
        // Routes without a device identity: a budget per client address.
        .merge(reads().route_layer(from_fn_with_state(state.clone(), per_ip_limit)))
        .merge(operator().route_layer(from_fn_with_state(state.clone(), per_ip_limit)))
        .merge(admin())
        .merge(public().route_layer(from_fn_with_state(state.clone(), per_ip_limit)))
        .fallback(status::not_found)
        // Ingest reads its body itself (413 as JSON); this bounds every other extractor.
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(map_response_with_state(state.clone(), set_retry_after))
        .layer(cors)
        // One span per request (debug level: enable with RUST_LOG=tower_http=debug).
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// Readings from vehicles and edge loggers.
pub fn device_ingest() -> Router<AppState> {
    Router::new()
        .route("/api/telemetry", post(telemetry::post_telemetry))
        .route("/api/v1/batch", post(telemetry::post_batch))
}

/// Stored data and the live stream (`/ws` checks logger commands per message).
pub fn reads() -> Router<AppState> {
    Router::new()
        .route("/api/vehicles", get(vehicles::list))
        .route("/logger/status", get(logger::status))
        .route("/ws", get(ws::upgrade))
}

/// Starting and stopping the logger child.
pub fn operator() -> Router<AppState> {
    Router::new()
        .route("/logger/start", post(logger::start))
        .route("/logger/stop", post(logger::stop))
}

/// Server administration; no routes yet.
pub fn admin() -> Router<AppState> {
    Router::new()
}

/// Health/status and the embedded dashboard (`/`, `/assets/…`).
pub fn public() -> Router<AppState> {
    Router::new()
        .route("/status", get(status::status))
        .merge(dashboard::router())
}

/// 429 + `Retry-After` when the client address is over `LOCKSTEP_IP_REQUESTS_PER_S`.
async fn per_ip_limit(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    match app.limits.check_ip(peer.ip()) {
        Ok(()) => next.run(req).await,
        Err(crate::services::limits::RetryAfter(s)) => {
            use axum::response::IntoResponse as _;
            error::ApiError::TooManyRequests {
                message: format!("too many requests from this address; retry after {s} s"),
                retry_after_s: s,
            }
            .into_response()
        }
    }
}

/// Fills `Retry-After` on 503s of an unavailable store from the settings.
async fn set_retry_after(State(app): State<AppState>, mut resp: Response) -> Response {
    error::apply_retry_after(&mut resp, app.settings.retry_after_s);
    resp
}
