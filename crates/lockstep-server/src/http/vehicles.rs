//! Vehicles and statistics: `GET /api/vehicles` (paged), `GET|PATCH
//! /api/vehicles/{vin}`, `GET /api/vehicles/{vin}/stats`, `GET /api/stats`.
//! A store failure answers 503 but does not touch the store's health (only
//! the write path does).

use std::collections::HashMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;

use crate::http::error::ApiError;
use crate::http::extract::{content_type, read_body, unsupported};
use crate::services::query::{
    DailyStats, FleetStats, VehicleJson, VehicleList, VehiclePatch, parse_vin,
};
use crate::state::AppState;

/// `GET /api/vehicles?limit=N&cursor=C`.
pub async fn list(
    State(app): State<AppState>,
    Query(p): Query<HashMap<String, String>>,
) -> Result<Json<VehicleList>, ApiError> {
    Ok(Json(app.query.vehicles_from_params(&p).await?))
}

/// `GET /api/vehicles/{vin}`.
pub async fn get_one(
    State(app): State<AppState>,
    Path(vin): Path<String>,
) -> Result<Json<VehicleJson>, ApiError> {
    Ok(Json(app.query.vehicle(parse_vin(&vin)?).await?))
}

/// `PATCH /api/vehicles/{vin}` with `{"model": str|null, "year": int|null}`.
pub async fn patch(
    State(app): State<AppState>,
    Path(vin): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<VehicleJson>, ApiError> {
    let vin = parse_vin(&vin)?;
    if content_type(&headers).as_deref() != Some("application/json") {
        return Err(unsupported(content_type(&headers), "application/json"));
    }
    // A patch is a few dozen bytes; 4 KiB leaves room and bounds the parse.
    let bytes = read_body(&headers, body, 4096).await?;
    let patch: VehiclePatch = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::Unprocessable(format!("the body is not a vehicle patch: {e}")))?;
    Ok(Json(app.query.patch_vehicle(vin, patch).await?))
}

/// `GET /api/vehicles/{vin}/stats?from=YYYY-MM-DD&to=YYYY-MM-DD`.
pub async fn daily_stats(
    State(app): State<AppState>,
    Path(vin): Path<String>,
    Query(p): Query<HashMap<String, String>>,
) -> Result<Json<DailyStats>, ApiError> {
    Ok(Json(app.query.daily_stats(parse_vin(&vin)?, &p).await?))
}

/// `GET /api/stats`.
pub async fn fleet_stats(State(app): State<AppState>) -> Result<Json<FleetStats>, ApiError> {
    Ok(Json(app.query.fleet_stats().await?))
}
