//! Extractors shared by the handlers: the request body under a byte limit,
//! the media type, JSON-only bodies, and the operator check of the WebSocket.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use futures_util::StreamExt;

use crate::auth::Principal;
use crate::auth::policy::{Policy, decide};
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

/// Whether the caller may control the logger (the operator policy, see
/// [`crate::auth::policy`]); read by the WebSocket, which refuses logger
/// commands per message rather than per connection, and sends the logger's
/// output only to operators.
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
        let principal = parts
            .extensions
            .get::<Principal>()
            .ok_or_else(|| ApiError::Internal("no principal: the route has no policy".into()))?;
        let loopback = peer.ip().to_canonical().is_loopback();
        Ok(Self {
            allowed: decide(&app.auth, Policy::Operate, principal, loopback).is_ok(),
            peer,
        })
    }
}

/// 415 unless the body is declared `application/json` (a cross-site form or
/// `text/plain` post cannot declare it without a CORS preflight). An empty
/// body without `Content-Type` passes: nothing to misread.
pub fn require_json(headers: &HeaderMap, body: &[u8]) -> Result<(), ApiError> {
    let declared = headers.contains_key(header::CONTENT_TYPE);
    if crate::auth::web::is_json(headers) || (!declared && body.is_empty()) {
        Ok(())
    } else {
        Err(unsupported(content_type(headers), "application/json"))
    }
}
