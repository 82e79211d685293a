//! Device ingest: `POST /api/telemetry` (either wire form, chosen by
//! `Content-Type`) and `POST /api/v1/batch` (the lockstep form under either
//! protobuf type). The handlers only pick the form and read the body; the
//! ingest service does the rest.

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, State};
use axum::http::HeaderMap;
use lockstep_proto::{CONTENT_TYPE_BATCH, CONTENT_TYPE_SEED};

use crate::auth::Principal;
use crate::http::error::ApiError;
use crate::http::extract::{content_type, read_body, unsupported};
use crate::services::ingest::{Ack, Form};
use crate::state::AppState;

/// `POST /api/telemetry`.
#[utoipa::path(post, path = "/api/telemetry", tag = "ingest",
    request_body(description = "One telemetry.TelemetryReading (application/x-protobuf) or one lockstep.v1.Batch (application/x-lockstep-batch)",
        content(
            (crate::http::openapi::ProtobufBody = "application/x-protobuf"),
            (crate::http::openapi::ProtobufBody = "application/x-lockstep-batch"),
        )),
    responses(
        (status = 200, description = "Stored", body = Ack),
        (status = 400, description = "Not a valid message", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "Resync: resend from next_seq starting with a keyframe", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "Body or batch too large", body = crate::http::openapi::ErrorBody),
        (status = 415, description = "Unsupported Content-Type", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "Invalid VIN", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "Store unavailable (Retry-After)", body = crate::http::openapi::ErrorBody),
    ))]
pub async fn post_telemetry(
    State(app): State<AppState>,
    Extension(sender): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Ack>, ApiError> {
    let form = match content_type(&headers).as_deref() {
        Some(CONTENT_TYPE_SEED) => Form::Seed,
        Some(CONTENT_TYPE_BATCH) => Form::Batch,
        _ => {
            return Err(unsupported(
                content_type(&headers),
                "application/x-protobuf (one telemetry.TelemetryReading) or application/x-lockstep-batch (one lockstep.v1.Batch)",
            ));
        }
    };
    let bytes = read_body(&headers, body, app.settings.body_limit).await?;
    Ok(Json(app.ingest.accept(form, bytes, sender).await?))
}

/// `POST /api/v1/batch`.
#[utoipa::path(post, path = "/api/v1/batch", tag = "ingest",
    request_body(description = "One lockstep.v1.Batch", content(
        (crate::http::openapi::ProtobufBody = "application/x-lockstep-batch"),
        (crate::http::openapi::ProtobufBody = "application/x-protobuf"),
    )),
    responses(
        (status = 200, description = "Stored", body = Ack),
        (status = 400, description = "Not a valid message", body = crate::http::openapi::ErrorBody),
        (status = 409, description = "Resync", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "Body or batch too large", body = crate::http::openapi::ErrorBody),
        (status = 415, description = "Unsupported Content-Type", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "Invalid VIN", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "Store unavailable (Retry-After)", body = crate::http::openapi::ErrorBody),
    ))]
pub async fn post_batch(
    State(app): State<AppState>,
    Extension(sender): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Ack>, ApiError> {
    match content_type(&headers).as_deref() {
        Some(CONTENT_TYPE_SEED | CONTENT_TYPE_BATCH) => {}
        _ => {
            return Err(unsupported(
                content_type(&headers),
                "application/x-lockstep-batch (one lockstep.v1.Batch)",
            ));
        }
    }
    let bytes = read_body(&headers, body, app.settings.body_limit).await?;
    Ok(Json(app.ingest.accept(Form::Batch, bytes, sender).await?))
}
