//! `GET /metrics` (Prometheus text) and the layer that counts every answered
//! request by matched route and status.

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
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
/// the concrete path, so the label stays low-cardinality.
pub async fn count_requests(
    State(app): State<AppState>,
    matched: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    let resp = next.run(req).await;
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    app.metrics.request(route, resp.status().as_u16());
    resp
}
