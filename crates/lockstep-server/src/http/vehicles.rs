//! Vehicles and statistics: `GET /api/vehicles` (paged), `GET|PATCH
//! /api/vehicles/{vin}`, `GET /api/vehicles/{vin}/stats`, `GET /api/stats`,
//! `GET /api/stats/vehicles` (paged).
//! A store failure answers 503 but does not touch the store's health (only
//! the write path does).

use std::collections::HashMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;

use crate::actors::stats::VehicleStatsPage;
use crate::http::error::ApiError;
use crate::http::extract::{content_type, read_body, unsupported};
use crate::services::query::{
    DailyStats, FleetStats, QueryService, VehicleJson, VehicleList, VehiclePatch, parse_vin,
};
use crate::state::AppState;

/// `GET /api/vehicles?limit=N&cursor=C`.
#[utoipa::path(get, path = "/api/vehicles", tag = "vehicles",
    params(
        ("limit" = Option<u32>, Query, description = "1..=1000, default 100", minimum = 1, maximum = 1000),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
    ),
    responses(
        (status = 200, description = "Vehicles ordered by VIN", body = VehicleList),
        (status = 400, description = "Bad limit or cursor", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "Store unavailable", body = crate::http::openapi::ErrorBody),
    ))]
pub async fn list(
    State(app): State<AppState>,
    Query(p): Query<HashMap<String, String>>,
) -> Result<Json<VehicleList>, ApiError> {
    Ok(Json(app.query.vehicles_from_params(&p).await?))
}

/// `GET /api/vehicles/{vin}`.
#[utoipa::path(get, path = "/api/vehicles/{vin}", tag = "vehicles",
    params(("vin" = String, Path, description = "17-character VIN", pattern = "^[A-HJ-NPR-Z0-9]{17}$")),
    responses(
        (status = 200, description = "The vehicle", body = VehicleJson),
        (status = 404, description = "Unknown VIN", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "Not a valid VIN", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "Store unavailable", body = crate::http::openapi::ErrorBody),
    ))]
pub async fn get_one(
    State(app): State<AppState>,
    Path(vin): Path<String>,
) -> Result<Json<VehicleJson>, ApiError> {
    Ok(Json(app.query.vehicle(parse_vin(&vin)?).await?))
}

/// `PATCH /api/vehicles/{vin}` with `{"model": str|null, "year": int|null}`.
#[utoipa::path(patch, path = "/api/vehicles/{vin}", tag = "vehicles",
    params(("vin" = String, Path, description = "17-character VIN", pattern = "^[A-HJ-NPR-Z0-9]{17}$")),
    request_body(content = VehiclePatch, content_type = "application/json",
        description = "An absent field is left as is; null clears it"),
    responses(
        (status = 200, description = "The vehicle after the change", body = VehicleJson),
        (status = 404, description = "Unknown VIN", body = crate::http::openapi::ErrorBody),
        (status = 413, description = "Body over 4 KiB", body = crate::http::openapi::ErrorBody),
        (status = 415, description = "Not application/json", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "Not a valid VIN, or a field out of bounds", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "Store unavailable", body = crate::http::openapi::ErrorBody),
    ))]
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
#[utoipa::path(get, path = "/api/vehicles/{vin}/stats", tag = "vehicles",
    params(
        ("vin" = String, Path, description = "17-character VIN", pattern = "^[A-HJ-NPR-Z0-9]{17}$"),
        ("from" = Option<String>, Query, description = "First UTC day, YYYY-MM-DD (inclusive)", format = Date),
        ("to" = Option<String>, Query, description = "Last UTC day, YYYY-MM-DD (inclusive)", format = Date),
    ),
    responses(
        (status = 200, description = "Daily compression statistics (UTC day of receipt)", body = DailyStats),
        (status = 400, description = "Bad date", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "Unknown VIN", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "Not a valid VIN", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "Store unavailable", body = crate::http::openapi::ErrorBody),
    ))]
pub async fn daily_stats(
    State(app): State<AppState>,
    Path(vin): Path<String>,
    Query(p): Query<HashMap<String, String>>,
) -> Result<Json<DailyStats>, ApiError> {
    Ok(Json(app.query.daily_stats(parse_vin(&vin)?, &p).await?))
}

/// `GET /api/stats`.
#[utoipa::path(get, path = "/api/stats", tag = "vehicles",
    responses(
        (status = 200, description = "Fleet totals", body = FleetStats),
        (status = 503, description = "Store unavailable", body = crate::http::openapi::ErrorBody),
    ))]
pub async fn fleet_stats(State(app): State<AppState>) -> Result<Json<FleetStats>, ApiError> {
    Ok(Json(app.query.fleet_stats().await?))
}

/// `GET /api/stats/vehicles?after=VIN&limit=N`.
#[utoipa::path(get, path = "/api/stats/vehicles", tag = "vehicles",
    params(
        ("after" = Option<String>, Query, description = "next_after of the previous page (a VIN); absent: from the first VIN", pattern = "^[A-HJ-NPR-Z0-9]{17}$"),
        ("limit" = Option<u32>, Query, description = "1..=1000, default 100", minimum = 1, maximum = 1000),
    ),
    responses(
        (status = 200, description = "Lifetime compression statistics per vehicle, ordered by VIN (the figures of the WebSocket compression_stats message)", body = VehicleStatsPage),
        (status = 400, description = "Bad limit, or after is not a VIN", body = crate::http::openapi::ErrorBody),
    ))]
pub async fn vehicle_stats(
    State(app): State<AppState>,
    Query(p): Query<HashMap<String, String>>,
) -> Result<Json<VehicleStatsPage>, ApiError> {
    Ok(Json(QueryService::vehicle_stats_from_params(
        &app.stats, &p,
    )?))
}
