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
#[utoipa::path(get, path = "/api/vehicles/{vin}/telemetry", tag = "history",
    description = "Stored readings of one vehicle with `from <= timestamp < to`, ascending. \
Without `step`: pages of raw readings (`HistoryPage`); pass `next_cursor` back as `cursor` (stable while readings arrive). \
With `step`: one entry per epoch-aligned bucket of `step` ms that holds readings (`BucketPage`), computed in the database; at most 10,000 buckets. \
`format=csv`: the whole range as CSV, streamed; at most 1,000,000 readings.",
    params(
        ("vin" = String, Path, description = "17-character VIN", pattern = "^[A-HJ-NPR-Z0-9]{17}$"),
        ("from" = i64, Query, description = "Unix ms, inclusive"),
        ("to" = i64, Query, description = "Unix ms, exclusive; greater than from"),
        ("limit" = Option<u32>, Query, description = "Readings per page, 1..=10000, default 1000", minimum = 1, maximum = 10000),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
        ("step" = Option<i64>, Query, description = "Bucket width in ms (>= 1)", minimum = 1),
        ("format" = Option<String>, Query, description = "json (default) or csv"),
    ),
    responses(
        (status = 200, description = "A page, buckets, or CSV", content(
            (crate::http::openapi::HistoryAnswer = "application/json"),
            (String = "text/csv"),
        )),
        (status = 400, description = "A missing or malformed parameter, too many buckets, or a CSV range over the maximum", body = crate::http::openapi::ErrorBody),
        (status = 404, description = "Unknown VIN", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "Not a valid VIN", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "Store unavailable", body = crate::http::openapi::ErrorBody),
    ))]
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
