//! Extractors shared by the handlers: the request body under a byte limit,
//! the media type, and the operator check of logger control.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use futures_util::StreamExt;

use crate::http::error::ApiError;
use crate::state::AppState;

/// The media type of `Content-Type` (lowercase, parameters dropped).
pub fn content_type(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

/// 415 naming what came and what is accepted.
pub fn unsupported(got: Option<String>, accepted: &str) -> ApiError {
    let got = got.map_or_else(
        || "no Content-Type".to_owned(),
        |g| format!("Content-Type {g:?}"),
    );
    ApiError::UnsupportedMediaType(format!("unsupported media type: {got}; send {accepted}"))
}

/// Reads the body, refusing more than `limit` bytes without buffering them
/// (413 as JSON, before the whole body has arrived when it is declared).
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::TooLarge { limit });
    }
    let mut buf = bytes::BytesMut::with_capacity(declared.map_or(0, |n| n as usize));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::BadRequest(format!("the request body could not be read: {e}"))
        })?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// The bearer token of `Authorization`, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Whether the caller may control the logger (see [`crate::auth`]); read by
/// the WebSocket, which refuses per message rather than per connection.
#[derive(Debug, Clone, Copy)]
pub struct Operator {
    pub allowed: bool,
    pub peer: SocketAddr,
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let ConnectInfo(peer) = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .copied()
            .ok_or_else(|| ApiError::Internal("no peer address on the request".into()))?;
        Ok(Self {
            allowed: app.admin.allows(peer.ip(), bearer(&parts.headers)),
            peer,
        })
    }
}

/// An [`Operator`] that must be allowed: 403 otherwise.
#[derive(Debug, Clone, Copy)]
pub struct RequireOperator;

impl FromRequestParts<AppState> for RequireOperator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let op = Operator::from_request_parts(parts, app).await?;
        if op.allowed {
            Ok(Self)
        } else {
            // Logged (rate-limited) with the other rejections.
            Err(ApiError::Forbidden(
                "logger control is allowed from loopback or with Authorization: Bearer <LOCKSTEP_ADMIN_TOKEN>".into(),
            ))
        }
    }
}
