//! One error type for every handler, mapped to HTTP in one place. Each layer
//! has its own error ([`IngestError`], [`StoreError`], [`LoggerError`]);
//! handlers use `?` and the `From` impls here decide the status. 4xx bodies
//! say exactly what was wrong; 5xx bodies hide internals (logged once here).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::actors::logger::LoggerError;
use crate::services::ingest::IngestError;
use crate::services::query::QueryError;
use crate::store::StoreError;

/// Everything a handler can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the body is not what it claims to be.
    #[error("{0}")]
    BadRequest(String),
    /// 403: a credential that does not allow this (another VIN, another's session).
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such endpoint or resource.
    #[error("{0}")]
    NotFound(String),
    /// 409: the edge must resync (send a keyframe) before this session can continue.
    #[error("{message}")]
    Resync {
        message: String,
        kind: &'static str,
        next_seq: Option<u64>,
    },
    /// 409: the request contradicts what is stored.
    #[error("{0}")]
    Conflict(String),
    /// 413: the body exceeds the limit.
    #[error("the request body exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// 413: a batch with more readings than the server takes in one request.
    #[error("the batch has {count} readings; send at most {max} per request")]
    TooManyReadings { count: usize, max: usize },
    /// 415: a content type the endpoint does not take.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: a well-formed value that cannot be true (e.g. a seed timestamp out of the window).
    #[error("{0}")]
    Unprocessable(String),
    /// 422: the VIN is not 17 valid characters.
    #[error("invalid vehicle_vin: {0}")]
    InvalidVin(String),
    /// 429 + `Retry-After`: the device (or client address) is over its rate
    /// limit; nothing was stored, the edge resends after the wait.
    #[error("{message}")]
    TooManyRequests { message: String, retry_after_s: u32 },
    /// 503 + `Retry-After` (`LOCKSTEP_RETRY_AFTER_S`, set by the router's
    /// layer): the store is unavailable; nothing was acknowledged.
    #[error("the store is unavailable; nothing was stored, retry later")]
    StoreUnavailable,
    /// 503 without `Retry-After`: a feature that is not configured (e.g. no logger binary).
    #[error("{0}")]
    NotAvailable(String),
    /// 500: a bug or corrupt data; the detail is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

/// Marks a response that needs `Retry-After`; the router fills in the
/// configured seconds (see `http::set_retry_after`).
#[derive(Debug, Clone, Copy)]
pub struct NeedsRetryAfter;

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Resync { .. } | ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::TooLarge { .. } | ApiError::TooManyReadings { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::InvalidVin(_) | ApiError::Unprocessable(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::StoreUnavailable | ApiError::NotAvailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) | StoreError::Closed(_) | StoreError::Stale(_) => {
                // Debug: the health actor logs an outage once, not per request.
                tracing::debug!(error = %e, "Answering 503: the store is unavailable.");
                ApiError::StoreUnavailable
            }
            StoreError::Conflict(m) => ApiError::Conflict(format!("store conflict: {m}")),
            StoreError::Corrupt(_) | StoreError::Invalid(_) => ApiError::Internal(e.to_string()),
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Invalid(m) => ApiError::BadRequest(m),
            IngestError::InvalidVin(v) => ApiError::InvalidVin(v),
            IngestError::TooManyReadings { count, max } => ApiError::TooManyReadings { count, max },
            IngestError::Forbidden(m) => ApiError::Forbidden(m),
            IngestError::Implausible(m) => ApiError::Unprocessable(m),
            IngestError::Stale(m) => ApiError::Conflict(m),
            IngestError::Resync {
                message,
                kind,
                next_seq,
            } => ApiError::Resync {
                message,
                kind,
                next_seq,
            },
            IngestError::RateLimited { retry_after_s } => ApiError::TooManyRequests {
                message: e_msg(retry_after_s),
                retry_after_s,
            },
            IngestError::Store(e) => e.into(),
            IngestError::Internal(m) => ApiError::Internal(m),
        }
    }
}

fn e_msg(retry_after_s: u32) -> String {
    format!(
        "rate limit exceeded for this device; nothing was stored, retry after {retry_after_s} s"
    )
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::BadRequest(m) => ApiError::BadRequest(m),
            QueryError::Invalid(m) => ApiError::Unprocessable(m),
            QueryError::InvalidVin(v) => ApiError::InvalidVin(v),
            e @ QueryError::UnknownVehicle(_) => ApiError::NotFound(e.to_string()),
            QueryError::Store(e) => e.into(),
        }
    }
}

impl From<LoggerError> for ApiError {
    fn from(e: LoggerError) -> Self {
        match e {
            LoggerError::BadRequest(m) => ApiError::BadRequest(m),
            LoggerError::Unavailable(m) => ApiError::NotAvailable(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_client_error() {
            log_rejection(status, &self.to_string());
        }
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
        match self {
            ApiError::StoreUnavailable => {
                resp.extensions_mut().insert(NeedsRetryAfter);
            }
            ApiError::TooManyRequests { retry_after_s, .. } => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
            }
            _ => {}
        }
        resp
    }
}

/// Sets `Retry-After` on responses marked [`NeedsRetryAfter`].
pub fn apply_retry_after(resp: &mut Response, seconds: u32) {
    if resp.extensions_mut().remove::<NeedsRetryAfter>().is_some() {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
}

/// At most one rejection line per this period; the next says how many were not logged.
const REJECT_LOG_EVERY: Duration = Duration::from_secs(5);

/// Rate limit of the rejection log (one per process: it guards the log, not clients).
#[derive(Debug, Default)]
struct RejectLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RejectLog {
    /// `Some(n)`: log now, `n` rejections went unlogged since the last line.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.duration_since(t) < REJECT_LOG_EVERY => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

static REJECTS: Mutex<RejectLog> = Mutex::new(RejectLog {
    last: None,
    suppressed: 0,
});

/// A rejected request is logged with its reason, rate-limited.
fn log_rejection(status: StatusCode, reason: &str) {
    let admitted = REJECTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .admit(Instant::now());
    if let Some(unlogged) = admitted {
        tracing::warn!(
            status = status.as_u16(),
            unlogged_since_last = unlogged,
            "Request rejected: {reason}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_are_logged_at_most_once_per_period_with_a_count() {
        let mut log = RejectLog::default();
        let t0 = Instant::now();
        assert_eq!(log.admit(t0), Some(0));
        assert_eq!(log.admit(t0 + Duration::from_secs(1)), None);
        assert_eq!(log.admit(t0 + Duration::from_secs(2)), None);
        assert_eq!(log.admit(t0 + REJECT_LOG_EVERY), Some(2));
        assert_eq!(log.admit(t0 + REJECT_LOG_EVERY * 3), Some(0));
    }

    #[test]
    fn store_errors_map_once() {
        let e: ApiError = StoreError::unavailable("down").into();
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        let e: ApiError = StoreError::Conflict("dup".into()).into();
        assert_eq!(e.status(), StatusCode::CONFLICT);
        let e: ApiError = StoreError::Corrupt("bad".into()).into();
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let e: ApiError = IngestError::Store(StoreError::Closed("bye".into())).into();
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
