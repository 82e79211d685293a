//! `GET /metrics` (Prometheus text) and the count of every answered request
//! by matched route and status.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::metrics::Snapshot;
use crate::state::AppState;

/// `GET /metrics`.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain")))]
pub async fn metrics(State(app): State<AppState>) -> Response {
    let now = Snapshot {
        ws_clients: app.hub.clients(),
        ws_dropped: app.hub.dropped(),
        store_up: app.health.healthy(),
        logger_running: app.logger.status().running,
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(&now),
    )
        .into_response()
}

/// Counts the answer under the route pattern (`/api/vehicles/{vin}`), never
/// the concrete path, so the label stays low-cardinality (called for every
/// routed request by the router's per-request middleware).
pub fn count_requests(app: &AppState, route: Option<&str>, resp: &Response) {
    app.metrics
        .request(route.unwrap_or("unmatched"), resp.status().as_u16());
}
