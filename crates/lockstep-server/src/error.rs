//! One error type for every handler, mapped to HTTP in one place. 4xx bodies
//! say exactly what was wrong; 5xx bodies hide internals (logged once here).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use lockstep_codec::DecodeError;
use serde_json::{Value, json};

/// Everything a handler can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not what it claims to be.
    #[error("{0}")]
    BadRequest(String),
    /// 403: logger control from a non-loopback peer without the admin token.
    #[error("{0}")]
    Forbidden(String),
    /// 409: the edge must resync (send a keyframe) before this session can continue.
    #[error("{message}")]
    Resync {
        message: String,
        kind: &'static str,
        next_seq: Option<u64>,
    },
    /// 413: the body exceeds the limit.
    #[error("the request body exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// 413: a batch with more readings than the server takes in one request.
    #[error("the batch has {count} readings; send at most {max} per request")]
    TooManyReadings { count: usize, max: usize },
    /// 415: a content type the endpoint does not take.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: the VIN is not 17 valid characters.
    #[error("invalid vehicle_vin: {0}")]
    InvalidVin(String),
    /// 503 + `Retry-After`: the store is unavailable; nothing was acknowledged.
    #[error("the store is unavailable; nothing was stored, retry later")]
    StoreUnavailable { retry_after_s: u32 },
    /// 503 without `Retry-After`: a feature that is not configured (e.g. no logger binary).
    #[error("{0}")]
    NotAvailable(String),
    /// 500: a bug; the message is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::Resync { .. } => StatusCode::CONFLICT,
            ApiError::TooLarge { .. } | ApiError::TooManyReadings { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::InvalidVin(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::StoreUnavailable { .. } | ApiError::NotAvailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Maps a codec error; `next_seq` is the session's expected sequence number if known.
    pub fn from_decode(e: DecodeError, next_seq: Option<u64>) -> Self {
        let kind = match &e {
            DecodeError::Malformed(_) => {
                return ApiError::BadRequest(format!(
                    "the body is not a valid lockstep.v1.Batch: {e}"
                ));
            }
            DecodeError::Vin(v) => return ApiError::InvalidVin(v.to_string()),
            DecodeError::CatalogMismatch { .. } => "catalog_mismatch",
            DecodeError::UnknownSession { .. } => "unknown_session",
            DecodeError::Gap { .. } => "gap",
            DecodeError::Overlap { .. } => "overlap",
            DecodeError::ChecksumMismatch { .. } => "checksum_mismatch",
        };
        let next_seq = match e {
            DecodeError::Gap { expected, .. } | DecodeError::Overlap { expected, .. } => {
                Some(expected)
            }
            DecodeError::UnknownSession { .. } | DecodeError::CatalogMismatch { .. } => None,
            _ => next_seq,
        };
        ApiError::Resync {
            message: format!("{e}; resend from next_seq starting with a keyframe"),
            kind,
            next_seq,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = json!({"status": "error", "error": self.to_string()});
        match &self {
            ApiError::Resync { kind, next_seq, .. } => {
                body["resync_required"] = Value::Bool(true);
                body["kind"] = json!(kind);
                body["next_seq"] = json!(next_seq);
            }
            ApiError::Internal(detail) => tracing::error!(error = %detail, "Internal error."),
            _ => {}
        }
        let mut resp = (status, Json(body)).into_response();
        if let ApiError::StoreUnavailable { retry_after_s } = self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
        }
        resp
    }
}
