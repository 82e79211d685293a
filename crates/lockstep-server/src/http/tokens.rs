//! Token administration over HTTP (the admin group): `GET /api/tokens`,
//! `POST /api/tokens` (the token is in the answer, once), and
//! `POST /api/tokens/{id}/revoke`. The same as `lockstep-server token …`.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::auth::Scope;
use crate::auth::db::TokenInfo;
use crate::http::error::ApiError;
use crate::http::extract::require_json;
use crate::state::AppState;

/// Body of `POST /api/tokens`: exactly one of `vin`, `vin_prefix`, `role`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    vin: Option<String>,
    vin_prefix: Option<String>,
    role: Option<String>,
    #[serde(default)]
    label: String,
    expires_in_hours: Option<f64>,
}

impl CreateToken {
    fn scope(&self) -> Result<Scope, ApiError> {
        Scope::from_parts(
            self.vin.as_deref(),
            self.vin_prefix.as_deref(),
            self.role.as_deref(),
        )
        .map_err(ApiError::BadRequest)
    }
}

/// `GET /api/tokens`: every token without its secret.
pub async fn list(State(app): State<AppState>) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    Ok(Json(app.auth.db.tokens().await?))
}

/// `POST /api/tokens` → 201 `{"id", "token", "scope", "expires_at_ms"}`.
pub async fn create(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_json(&headers, &body)?;
    let req: CreateToken = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not a token request: {e}")))?;
    let scope = req.scope()?;
    let expires = match req.expires_in_hours {
        Some(h) if !(h.is_finite() && h > 0.0 && h < 1e6) => {
            return Err(ApiError::BadRequest(
                "expires_in_hours must be a positive number".into(),
            ));
        }
        h => h.map(|h| Duration::from_secs_f64(h * 3600.0)),
    };
    let (info, token) = app.auth.create_token(scope, &req.label, expires).await?;
    tracing::info!(id = %info.public_id, "Token created over HTTP.");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": info.public_id,
            "token": token,
            "scope": info.scope,
            "expires_at_ms": info.expires_at_ms,
        })),
    )
        .into_response())
}

/// `POST /api/tokens/{id}/revoke` → 204, or 404 for an unknown id.
pub async fn revoke(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if app.auth.revoke(&id).await? {
        tracing::info!(%id, "Token revoked over HTTP.");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no token with id {id:?}")))
    }
}
