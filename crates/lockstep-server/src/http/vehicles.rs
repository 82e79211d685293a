//! `GET /api/vehicles`: the vehicles the store knows. A store failure answers
//! 503 but does not touch the store's health (only the write path does).

use axum::Json;
use axum::extract::State;

use crate::http::error::ApiError;
use crate::state::AppState;
use crate::store::VehicleSummary;

/// `GET /api/vehicles`.
pub async fn list(State(app): State<AppState>) -> Result<Json<Vec<VehicleSummary>>, ApiError> {
    Ok(Json(app.store.vehicles().await?))
}
