//! `POST /api/telemetry` (and `POST /api/v1/batch`): both wire forms.
//!
//! - `application/x-protobuf` on `/api/telemetry`: one seed `TelemetryReading`,
//!   reconstructed with the vehicle's seed predictor. A timestamp at or before
//!   the vehicle's last accepted one is a duplicate: acknowledged, not stored.
//!   Stored with session 0 and `seq` = timestamp.
//! - `application/x-lockstep-batch` (or `/api/v1/batch` with either protobuf
//!   type): one `lockstep.v1.Batch`, decoded against the session's state.
//!
//! Both run under the vehicle's lock from state lookup to commit, and answer
//! 2xx only once the writer has committed the rows.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use futures_util::StreamExt;
use lockstep_codec::{BatchOutcome, CheckedBatch, Vin};
use lockstep_proto::telemetry::TelemetryReading;
use lockstep_proto::{CONTENT_TYPE_BATCH, CONTENT_TYPE_SEED, Message};
use serde::Serialize;

use crate::app::AppState;
use crate::error::ApiError;
use crate::hub::HubEvent;
use crate::model::{
    CHANNELS, Counters, ReadingJson, SEED_SESSION, SessionRecord, TelemetryRow, envelope,
};
use crate::vehicles::SeedState;
use crate::writer::WriteRequest;

/// The success body.
#[derive(Debug, Serialize)]
pub struct Ack {
    pub status: &'static str,
    pub compression_ratio: f64,
    pub transmitted_fields: u64,
    pub skipped_fields: u64,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchAck>,
}

/// What the lockstep form adds to [`Ack`].
#[derive(Debug, Serialize)]
pub struct BatchAck {
    pub session_id: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub duplicate: bool,
}

impl Ack {
    fn new(c: &Counters, batch: Option<BatchAck>) -> Self {
        Self {
            status: "success",
            compression_ratio: c.ratio(),
            transmitted_fields: c.fields_transmitted,
            skipped_fields: c.fields_skipped,
            batch,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    Seed,
    Batch,
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(
        v.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase(),
    )
}

fn unsupported(got: Option<String>, accepted: &str) -> ApiError {
    let got = got.map_or_else(
        || "no Content-Type".to_owned(),
        |g| format!("Content-Type {g:?}"),
    );
    ApiError::UnsupportedMediaType(format!("unsupported media type: {got}; send {accepted}"))
}

/// `POST /api/telemetry`.
pub async fn post_telemetry(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Ack>, ApiError> {
    let form = match content_type(&headers).as_deref() {
        Some(CONTENT_TYPE_SEED) => Form::Seed,
        Some(CONTENT_TYPE_BATCH) => Form::Batch,
        _ => {
            return Err(unsupported(
                content_type(&headers),
                "application/x-protobuf (one telemetry.TelemetryReading) or application/x-lockstep-batch (one lockstep.v1.Batch)",
            ));
        }
    };
    let bytes = read_body(&headers, body, app.settings.body_limit).await?;
    detached(app, bytes, form).await
}

/// Runs the ingest on its own task: a client that disconnects mid-request
/// cannot cancel it between the commit and the installation of the new codec
/// state, so memory and store never disagree.
async fn detached(app: AppState, bytes: bytes::Bytes, form: Form) -> Result<Json<Ack>, ApiError> {
    let task = tokio::spawn(async move {
        match form {
            Form::Seed => ingest_seed(&app, &bytes).await,
            Form::Batch => ingest_batch(&app, &bytes).await,
        }
    });
    match task.await {
        Ok(r) => r.map(Json),
        Err(e) => Err(ApiError::Internal(format!("the ingest task failed: {e}"))),
    }
}

/// `POST /api/v1/batch`: the lockstep form under either protobuf content type.
pub async fn post_batch(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Ack>, ApiError> {
    match content_type(&headers).as_deref() {
        Some(CONTENT_TYPE_SEED | CONTENT_TYPE_BATCH) => {}
        _ => {
            return Err(unsupported(
                content_type(&headers),
                "application/x-lockstep-batch (one lockstep.v1.Batch)",
            ));
        }
    }
    let bytes = read_body(&headers, body, app.settings.body_limit).await?;
    detached(app, bytes, Form::Batch).await
}

/// Reads the body, refusing more than `limit` bytes without buffering them.
async fn read_body(
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

#[tracing::instrument(name = "ingest_seed", skip_all, fields(vin))]
async fn ingest_seed(app: &AppState, bytes: &[u8]) -> Result<Ack, ApiError> {
    let reading = TelemetryReading::decode(bytes).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body is not a valid telemetry.TelemetryReading: {e}"
        ))
    })?;
    let vin = Vin::parse(&reading.vehicle_vin).map_err(|e| ApiError::InvalidVin(e.to_string()))?;
    tracing::Span::current().record("vin", vin.as_str());
    if reading.timestamp < 0 {
        return Err(ApiError::BadRequest(format!(
            "timestamp {} is negative; send Unix epoch milliseconds",
            reading.timestamp
        )));
    }
    if let Some((i, _)) = lockstep_codec::seed::seed_values(&reading)
        .iter()
        .enumerate()
        .find(|(_, v)| v.is_some_and(|x| !x.is_finite()))
    {
        return Err(ApiError::BadRequest(format!(
            "field {} is not a finite number",
            lockstep_codec::seed::SEED_FIELDS[i]
        )));
    }

    let handle = app.vehicles.get(&vin);
    let mut vehicle = handle.lock().await;
    let seed = vehicle
        .seed(&*app.store)
        .await
        .map_err(|e| app.unavailable(e))?
        .clone();
    let mut next = seed.clone();
    let rec = next.predictor.reconstruct(&reading);
    let mut values = [None; CHANNELS];
    let mut transmitted = 0u64;
    for (i, name) in lockstep_codec::seed::SEED_FIELDS.iter().enumerate() {
        let ch = app.seed_channels[i];
        values[ch] = rec.values[i];
        if rec.transmitted & (1 << i) != 0 {
            transmitted |= 1 << ch;
        }
        debug_assert_eq!(crate::model::COLUMNS[ch], *name);
    }
    let mut counters = Counters::default();
    counters.count_reading(&values, transmitted);
    if seed.last_ts.is_some_and(|last| reading.timestamp <= last) {
        // A retry of a reading already stored (or older): acknowledge, change nothing.
        return Ok(Ack::new(&counters, None));
    }
    counters.bytes_received = bytes.len() as u64;
    next.last_ts = Some(reading.timestamp);
    let row = TelemetryRow {
        vin: vehicle.vin.clone(),
        session_id: SEED_SESSION,
        seq: reading.timestamp as u64,
        ts_ms: reading.timestamp,
        values,
        transmitted,
        keyframe: false,
    };
    let events = if app.hub.has_clients() {
        vec![event(&row)]
    } else {
        Vec::new()
    };
    let session = SessionRecord {
        vin: vehicle.vin.clone(),
        session_id: SEED_SESSION,
        next_seq: reading.timestamp as u64,
        state: next.to_bytes(),
    };
    submit(
        app,
        vehicle.vin.clone(),
        vec![row],
        session,
        counters,
        events,
    )
    .await?;
    vehicle.install_seed(SeedState {
        predictor: next.predictor,
        last_ts: next.last_ts,
    });
    Ok(Ack::new(&counters, None))
}

#[tracing::instrument(name = "ingest_batch", skip_all, fields(vin, session_id))]
async fn ingest_batch(app: &AppState, bytes: &[u8]) -> Result<Ack, ApiError> {
    let cb =
        CheckedBatch::parse(&app.catalog, bytes).map_err(|e| ApiError::from_decode(e, None))?;
    let max = app.settings.max_batch_readings;
    if cb.len() > max {
        return Err(ApiError::TooManyReadings {
            count: cb.len(),
            max,
        });
    }
    let span = tracing::Span::current();
    span.record("vin", cb.vin().as_str());
    span.record(
        "session_id",
        format_args!("{:016x}", cb.session_id()).to_string(),
    );
    let batch_ack = |duplicate| BatchAck {
        session_id: format!("{:016x}", cb.session_id()),
        first_seq: cb.first_seq(),
        last_seq: cb.last_seq(),
        duplicate,
    };

    let handle = app.vehicles.get(cb.vin());
    let mut vehicle = handle.lock().await;
    let state = vehicle
        .session(&*app.store, &app.catalog, cb.session_id())
        .await
        .map_err(|e| app.unavailable(e))?;
    let next_seq = state.map(|s| s.next_seq());
    let outcome = cb.decode(&app.catalog, state).map_err(|e| {
        tracing::info!(error = %e, "Batch refused; the edge must resync.");
        ApiError::from_decode(e, next_seq)
    })?;
    let (readings, new_state) = match outcome {
        BatchOutcome::Duplicate => {
            return Ok(Ack::new(&Counters::default(), Some(batch_ack(true))));
        }
        BatchOutcome::Fresh { readings, state } => (readings, state),
    };
    let vin = vehicle.vin.clone();
    let mut counters = Counters {
        bytes_received: bytes.len() as u64,
        ..Counters::default()
    };
    let with_events = app.hub.has_clients();
    let mut events = Vec::with_capacity(if with_events { readings.len() } else { 0 });
    let rows: Vec<TelemetryRow> = readings
        .into_iter()
        .map(|r| {
            let mut values = [None; CHANNELS];
            for (slot, v) in values.iter_mut().zip(r.values) {
                *slot = v;
            }
            counters.count_reading(&values, r.transmitted);
            let row = TelemetryRow {
                vin: vin.clone(),
                session_id: cb.session_id(),
                seq: r.seq,
                ts_ms: r.timestamp_ms,
                values,
                transmitted: r.transmitted,
                keyframe: r.keyframe,
            };
            if with_events {
                events.push(event(&row));
            }
            row
        })
        .collect();
    let session = SessionRecord {
        vin: vin.clone(),
        session_id: cb.session_id(),
        next_seq: new_state.next_seq(),
        state: new_state.to_bytes(),
    };
    submit(app, vin, rows, session, counters, events).await?;
    vehicle.install(cb.session_id(), new_state);
    Ok(Ack::new(&counters, Some(batch_ack(false))))
}

fn event(row: &TelemetryRow) -> HubEvent {
    HubEvent {
        vin: Some(row.vin.clone()),
        text: envelope("telemetry", &ReadingJson::from(row)).into(),
    }
}

async fn submit(
    app: &AppState,
    vin: Arc<str>,
    rows: Vec<TelemetryRow>,
    session: SessionRecord,
    counters: Counters,
    events: Vec<HubEvent>,
) -> Result<(), ApiError> {
    app.writer
        .submit(WriteRequest {
            vin,
            rows,
            session,
            counters,
            events,
        })
        .await
        .map_err(|e| app.unavailable(e))
}
