//! `GET /api/vehicles/{vin}/telemetry`: a page of raw readings, buckets
//! (`step`), or a CSV export streamed page by page (`format=csv`).

use std::collections::HashMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::http::error::ApiError;
use crate::services::query::{Format, HistoryParams, parse_vin};
use crate::state::AppState;

/// `GET /api/vehicles/{vin}/telemetry?from=MS&to=MS[&limit=N][&cursor=C][&step=MS][&format=csv]`.
pub async fn telemetry(
    State(app): State<AppState>,
    Path(vin): Path<String>,
    Query(p): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let vin = parse_vin(&vin)?;
    let params = HistoryParams::parse(&p)?;
    if let Some(step) = params.step {
        return Ok(Json(app.query.buckets(vin, &params, step).await?).into_response());
    }
    match params.format {
        Format::Json => Ok(Json(app.query.history(vin, &params).await?).into_response()),
        Format::Csv => {
            let name = format!(
                "attachment; filename=\"{vin}-{}-{}.csv\"",
                params.from, params.to
            );
            let stream = app.query.csv(vin, &params).await?;
            Ok((
                [
                    (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                    (header::CONTENT_DISPOSITION, name),
                ],
                Body::from_stream(stream),
            )
                .into_response())
        }
    }
}
