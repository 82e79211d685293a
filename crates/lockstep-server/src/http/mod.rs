//! The HTTP layer: the router (every route, listed in [`router`]), thin
//! handlers per resource, shared extractors and the one [`error::ApiError`].
//! Handlers call services and actor handles; nothing below imports this
//! module.
//!
//! Routes are grouped by who may call them, so that a policy (auth, rate
//! limit, body limit) can be layered on one group without touching the
//! others:
//! - [`device_ingest`]: vehicles and edge loggers sending readings;
//! - [`reads`]: clients reading stored data and the live stream (and
//!   [`graphql`], the same reads as GraphQL);
//! - [`operator`]: logger control (loopback or the admin token today);
//! - [`admin`]: server administration (`PATCH /api/vehicles/{vin}`);
//! - [`public`]: health/status, `/metrics`, the API description and the
//!   embedded dashboard.

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::{from_fn_with_state, map_response_with_state};
use axum::response::Response;
use axum::routing::{get, patch, post};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::trace::TraceLayer;

use crate::model::Signals;
use crate::state::AppState;

pub mod dashboard;
pub mod error;
pub mod extract;
pub mod graphql;
pub mod history;
pub mod logger;
pub mod metrics;
pub mod openapi;
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
        .allow_methods([Method::GET, Method::POST, Method::PATCH])
        .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION]);
    let body_limit = state.settings.body_limit;
    Router::new()
        .merge(device_ingest())
        .merge(reads(&state))
        .merge(operator())
        .merge(admin())
        .merge(public(&state.signals))
        .route_layer(from_fn_with_state(state.clone(), metrics::count_requests))
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
pub fn reads(state: &AppState) -> Router<AppState> {
    Router::new()
        .merge(graphql::router(state))
        .route("/api/vehicles", get(vehicles::list))
        .route("/api/vehicles/{vin}", get(vehicles::get_one))
        .route("/api/vehicles/{vin}/telemetry", get(history::telemetry))
        .route("/api/vehicles/{vin}/stats", get(vehicles::daily_stats))
        .route("/api/stats", get(vehicles::fleet_stats))
        .route("/logger/status", get(logger::status))
        .route("/ws", get(ws::upgrade))
}

/// Starting and stopping the logger child.
pub fn operator() -> Router<AppState> {
    Router::new()
        .route("/logger/start", post(logger::start))
        .route("/logger/stop", post(logger::stop))
}

/// Server administration: changing vehicles' descriptive fields.
pub fn admin() -> Router<AppState> {
    Router::new().route("/api/vehicles/{vin}", patch(vehicles::patch))
}

/// Health/status, the API description (`/openapi.json`, `/docs`) and the
/// embedded dashboard (`/`, `/assets/…`).
pub fn public(signals: &Signals) -> Router<AppState> {
    Router::new()
        .route("/status", get(status::status))
        .route("/metrics", get(metrics::metrics))
        .merge(openapi::router(signals))
        .merge(dashboard::router())
}

/// Fills `Retry-After` on 503s of an unavailable store from the settings.
async fn set_retry_after(State(app): State<AppState>, mut resp: Response) -> Response {
    error::apply_retry_after(&mut resp, app.settings.retry_after_s);
    resp
}
