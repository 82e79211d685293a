//! The dashboard's login: `GET /api/session`, `POST /api/login` (a token
//! traded for an HttpOnly, SameSite=Strict session cookie, `Secure` under
//! TLS) and `POST /api/logout`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::policy::CredentialRefused;
use super::service::{Auth, AuthError, Mode, Principal, Role, SESSION_COOKIE, cookie};

/// `GET /api/session`.
#[derive(Debug, Serialize)]
pub struct SessionJson {
    pub authenticated: bool,
    pub role: Option<Role>,
    pub read_auth: Mode,
}

fn error(status: StatusCode, msg: &str) -> Response {
    (status, Json(json!({"status": "error", "error": msg}))).into_response()
}

fn unavailable() -> Response {
    let mut r = error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the store is unavailable; retry later",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(2));
    r
}

/// Whether the body is declared JSON (`application/json`, parameters allowed).
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

pub async fn session(
    State(auth): State<Arc<Auth>>,
    Extension(principal): Extension<Principal>,
) -> Json<SessionJson> {
    Json(SessionJson {
        authenticated: !matches!(principal, Principal::Anonymous),
        role: principal.role(),
        read_auth: auth.config.read,
    })
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

pub async fn login(State(auth): State<Arc<Auth>>, headers: HeaderMap, body: Bytes) -> Response {
    if !is_json(&headers) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send the token as JSON: Content-Type application/json, {\"token\": \"…\"}",
        );
    }
    let Ok(Login { token }) = serde_json::from_slice::<Login>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "the body must be {\"token\": \"…\"}",
        );
    };
    match auth.login(&token).await {
        Ok(Some((value, role))) => {
            tracing::info!(role = role.as_str(), "Web session opened.");
            let mut r = StatusCode::NO_CONTENT.into_response();
            if let Ok(v) = HeaderValue::from_str(&auth.set_cookie(Some(&value))) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Ok(None) => error(
            StatusCode::UNAUTHORIZED,
            "a device token cannot open a dashboard session; use a viewer, operator or admin token",
        ),
        Err(AuthError::BadToken) => {
            let mut r = error(StatusCode::UNAUTHORIZED, &AuthError::BadToken.to_string());
            r.extensions_mut().insert(CredentialRefused);
            r
        }
        Err(AuthError::Store(e)) => {
            tracing::warn!(error = %e, "Login failed: the store is unavailable.");
            unavailable()
        }
    }
}

pub async fn logout(State(auth): State<Arc<Auth>>, headers: HeaderMap) -> Response {
    if let Some(value) = cookie(&headers, SESSION_COOKIE)
        && let Err(e) = auth.logout(value).await
    {
        tracing::warn!(error = %e, "Logout failed: the store is unavailable.");
        return unavailable();
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    if let Ok(v) = HeaderValue::from_str(&auth.set_cookie(None)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}
