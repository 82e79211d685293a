//! Logger control: `POST /logger/start`, `POST /logger/stop` (the operator
//! group's policy) and `GET /logger/status` (a read).

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::actors::logger::{LoggerStatus, StartRequest, Started, Stopped};
use crate::http::error::ApiError;
use crate::http::extract::require_json;
use crate::state::AppState;

/// `POST /logger/start` with an optional JSON body.
#[utoipa::path(post, path = "/logger/start", tag = "operations",
    request_body(content = Option<crate::protocol::StartRequest>, content_type = "application/json"),
    responses(
        (status = 200, description = "Started: `{\"status\": \"started\", \"pid\": n}`", body = Object),
        (status = 400, description = "Bad options", body = crate::http::openapi::ErrorBody),
        (status = 403, description = "Not an operator", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "Already running", body = Object),
        (status = 503, description = "No logger binary", body = crate::http::openapi::ErrorBody),
    ))]
pub async fn start(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_json(&headers, &body)?;
    let req: StartRequest = if body.iter().all(u8::is_ascii_whitespace) {
        StartRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::BadRequest(format!("the body is not valid logger options: {e}"))
        })?
    };
    Ok(match app.logger.start(req).await? {
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
#[utoipa::path(post, path = "/logger/stop", tag = "operations",
    responses(
        (status = 200, description = "`stopped` or `not_running`", body = Object),
        (status = 403, description = "Not an operator", body = crate::http::openapi::ErrorBody),
    ))]
pub async fn stop(State(app): State<AppState>) -> Response {
    match app.logger.stop().await {
        Stopped::Stopped { exit_code } => {
            Json(json!({"status": "stopped", "exit_code": exit_code})).into_response()
        }
        Stopped::NotRunning => Json(json!({"status": "not_running"})).into_response(),
    }
}

/// `GET /logger/status`.
#[utoipa::path(get, path = "/logger/status", tag = "operations",
    responses((status = 200, description = "The logger child", body = LoggerStatus)))]
pub async fn status(State(app): State<AppState>) -> Json<LoggerStatus> {
    Json(app.logger.status())
}
