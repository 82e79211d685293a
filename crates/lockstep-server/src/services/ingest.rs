//! The ingest service: one path for both wire forms, no HTTP in sight.
//! [`IngestService::accept`] takes the form and the body and answers an
//! [`Ack`] once the writer has committed the rows, or an [`IngestError`].
//!
//! - [`Form::Seed`]: one seed `TelemetryReading`, reconstructed with the
//!   vehicle's seed predictor. A timestamp at or before the vehicle's last
//!   accepted one is a duplicate: acknowledged, not stored. Stored with
//!   session 0 and `seq` = timestamp.
//! - [`Form::Batch`]: one `lockstep.v1.Batch`, decoded against the session's
//!   state.
//!
//! Both run under the vehicle's lock from state lookup to commit. Failed
//! state loads are reported to the health actor (the write path depends on
//! them); the writer reports its own commits.

use std::sync::Arc;

use bytes::Bytes;
use lockstep_codec::{BatchOutcome, Catalog, CheckedBatch, DecodeError, Vin};
use lockstep_proto::Message;
use lockstep_proto::telemetry::TelemetryReading;
use serde::Serialize;

use crate::actors::health::{HealthHandle, Observation};
use crate::actors::hub::{Hub, HubEvent};
use crate::actors::writer::{WriteRequest, WriterHandle};
use crate::metrics::Metrics;
use crate::model::{Counters, SEED_SESSION, SessionRecord, Signals, TelemetryRow};
use crate::protocol::{ReadingJson, ServerMsg};
use crate::store::{Store, StoreError, WriteBatch};
use crate::vehicles::Vehicles;
use lockstep_codec::seed::SeedState;

/// Which wire form a body is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// One seed `telemetry.TelemetryReading` (`application/x-protobuf`).
    Seed,
    /// One `lockstep.v1.Batch` (`application/x-lockstep-batch`).
    Batch,
}

/// Why a body was not accepted.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    /// The body is not a valid message of its form, or a field is out of range.
    #[error("{0}")]
    Invalid(String),
    /// The VIN is not 17 valid characters.
    #[error("invalid vehicle_vin: {0}")]
    InvalidVin(String),
    /// A batch with more readings than the server takes in one request.
    #[error("the batch has {count} readings; send at most {max} per request")]
    TooManyReadings { count: usize, max: usize },
    /// The edge must resync (send a keyframe) before this session can continue.
    #[error("{message}")]
    Resync {
        message: String,
        /// `catalog_mismatch`, `unknown_session`, `gap`, `overlap` or `checksum_mismatch`.
        kind: &'static str,
        next_seq: Option<u64>,
    },
    /// The store failed; nothing was acknowledged.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bug (e.g. the ingest task panicked).
    #[error("{0}")]
    Internal(String),
}

impl IngestError {
    /// Maps a codec error; `next_seq` is the session's expected sequence number if known.
    pub fn from_decode(e: DecodeError, next_seq: Option<u64>) -> Self {
        let kind = match &e {
            DecodeError::Malformed(_) => {
                return IngestError::Invalid(format!(
                    "the body is not a valid lockstep.v1.Batch: {e}"
                ));
            }
            DecodeError::Vin(v) => return IngestError::InvalidVin(v.to_string()),
            DecodeError::CatalogMismatch { .. } => "catalog_mismatch",
            DecodeError::UnknownSession { .. } => "unknown_session",
            DecodeError::Gap { .. } => "gap",
            DecodeError::Overlap { .. } => "overlap",
            DecodeError::ChecksumMismatch { .. } => "checksum_mismatch",
        };
        let next_seq = match e {
            DecodeError::Gap { expected, .. } | DecodeError::Overlap { expected, .. } => {
                Some(expected)
            }
            DecodeError::UnknownSession { .. } | DecodeError::CatalogMismatch { .. } => None,
            _ => next_seq,
        };
        IngestError::Resync {
            message: format!("{e}; resend from next_seq starting with a keyframe"),
            kind,
            next_seq,
        }
    }
}

/// The success body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Ack {
    pub status: &'static str,
    pub compression_ratio: f64,
    pub transmitted_fields: u64,
    pub skipped_fields: u64,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchAck>,
}

/// What the lockstep form adds to [`Ack`].
#[derive(Debug, Serialize, utoipa::ToSchema)]
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

/// Everything ingest needs: cheap handles, cloned per request.
#[derive(Clone)]
pub struct IngestService {
    inner: Arc<Inner>,
}

struct Inner {
    catalog: Arc<Catalog>,
    /// JSON names of the values in `telemetry` messages.
    signals: Signals,
    /// Catalog channel of each seed field (speed, battery, power, heading).
    seed_channels: [usize; 4],
    store: Arc<dyn Store>,
    vehicles: Vehicles,
    writer: WriterHandle,
    hub: Arc<Hub>,
    health: HealthHandle,
    max_batch_readings: usize,
    metrics: Metrics,
}

impl IngestService {
    pub fn new(
        catalog: Arc<Catalog>,
        store: Arc<dyn Store>,
        writer: WriterHandle,
        hub: Arc<Hub>,
        health: HealthHandle,
        max_batch_readings: usize,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let seed_channels = lockstep_codec::seed::SEED_FIELDS
            .map(|f| catalog.index_of(f))
            .into_iter()
            .zip(lockstep_codec::seed::SEED_FIELDS)
            .map(|(i, f)| i.ok_or_else(|| anyhow::anyhow!("the catalog has no {f} channel")))
            .collect::<anyhow::Result<Vec<_>>>()?
            .try_into()
            .map_err(|_| anyhow::anyhow!("four seed fields"))?;
        Ok(Self {
            inner: Arc::new(Inner {
                signals: Signals::from_catalog(&catalog),
                catalog,
                seed_channels,
                store,
                vehicles: Vehicles::default(),
                writer,
                hub,
                health,
                max_batch_readings,
                metrics,
            }),
        })
    }

    /// Decodes, stores and acknowledges one body. Runs on its own task: a
    /// caller that goes away mid-request cannot cancel it between the commit
    /// and the installation of the new codec state, so memory and store
    /// never disagree.
    pub async fn accept(&self, form: Form, bytes: Bytes) -> Result<Ack, IngestError> {
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            match form {
                Form::Seed => inner.ingest_seed(&bytes).await,
                Form::Batch => inner.ingest_batch(&bytes).await,
            }
        });
        match task.await {
            Ok(r) => r,
            Err(e) => Err(IngestError::Internal(format!(
                "the ingest task failed: {e}"
            ))),
        }
    }
}

impl Inner {
    /// A failed state load on the write path: the health actor decides.
    async fn store_failed(&self, e: StoreError) -> IngestError {
        tracing::debug!(error = %e, "Ingest refused: the store failed.");
        self.health.report(Observation::Failed(e.clone())).await;
        IngestError::Store(e)
    }

    #[tracing::instrument(name = "ingest_seed", skip_all, fields(vin))]
    async fn ingest_seed(&self, bytes: &[u8]) -> Result<Ack, IngestError> {
        let reading = TelemetryReading::decode(bytes).map_err(|e| {
            IngestError::Invalid(format!(
                "the body is not a valid telemetry.TelemetryReading: {e}"
            ))
        })?;
        let vin =
            Vin::parse(&reading.vehicle_vin).map_err(|e| IngestError::InvalidVin(e.to_string()))?;
        tracing::Span::current().record("vin", vin.as_str());
        if reading.timestamp < 0 {
            return Err(IngestError::Invalid(format!(
                "timestamp {} is negative; send Unix epoch milliseconds",
                reading.timestamp
            )));
        }
        if let Some((i, _)) = lockstep_codec::seed::seed_values(&reading)
            .iter()
            .enumerate()
            .find(|(_, v)| v.is_some_and(|x| !x.is_finite()))
        {
            return Err(IngestError::Invalid(format!(
                "field {} is not a finite number",
                lockstep_codec::seed::SEED_FIELDS[i]
            )));
        }

        let handle = self.vehicles.get(&vin);
        let mut vehicle = handle.lock().await;
        let seed = match vehicle.seed(&*self.store).await {
            Ok(s) => s.clone(),
            Err(e) => return Err(self.store_failed(e).await),
        };
        let mut next = seed.clone();
        let rec = next.predictor.reconstruct(&reading);
        let mut values = vec![None; self.catalog.len()];
        let mut transmitted = 0u64;
        for (i, name) in lockstep_codec::seed::SEED_FIELDS.iter().enumerate() {
            let ch = self.seed_channels[i];
            values[ch] = rec.values[i];
            if rec.transmitted & (1 << i) != 0 {
                transmitted |= 1 << ch;
            }
            debug_assert_eq!(self.catalog.signals()[ch].name, *name);
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
        let events = if self.hub.has_clients() {
            vec![self.event(&row)]
        } else {
            Vec::new()
        };
        let session = SessionRecord {
            vin: vehicle.vin.clone(),
            session_id: SEED_SESSION,
            next_seq: reading.timestamp as u64,
            state: next.to_bytes(),
        };
        self.submit(vehicle.vin.clone(), vec![row], session, counters, events)
            .await?;
        vehicle.install_seed(SeedState {
            predictor: next.predictor,
            last_ts: next.last_ts,
        });
        Ok(Ack::new(&counters, None))
    }

    #[tracing::instrument(name = "ingest_batch", skip_all, fields(vin, session_id))]
    async fn ingest_batch(&self, bytes: &[u8]) -> Result<Ack, IngestError> {
        let cb = CheckedBatch::parse(&self.catalog, bytes)
            .map_err(|e| IngestError::from_decode(e, None))?;
        let max = self.max_batch_readings;
        if cb.len() > max {
            return Err(IngestError::TooManyReadings {
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

        let handle = self.vehicles.get(cb.vin());
        let mut vehicle = handle.lock().await;
        let state = match vehicle
            .session(&*self.store, &self.catalog, cb.session_id())
            .await
        {
            Ok(s) => s,
            Err(e) => return Err(self.store_failed(e).await),
        };
        let next_seq = state.map(|s| s.next_seq());
        // Refusals are logged (rate-limited) where they become HTTP answers.
        let outcome = match cb.decode(&self.catalog, state) {
            Ok(o) => o,
            Err(e) => {
                let e = IngestError::from_decode(e, next_seq);
                if let IngestError::Resync { kind, .. } = &e {
                    self.metrics.resync(kind);
                    self.metrics.readings(1, 2, cb.len() as u64);
                    self.count_resync(vehicle.vin.clone()).await;
                }
                return Err(e);
            }
        };
        let (readings, new_state) = match outcome {
            BatchOutcome::Duplicate => {
                self.metrics.readings(1, 1, cb.len() as u64);
                return Ok(Ack::new(&Counters::default(), Some(batch_ack(true))));
            }
            BatchOutcome::Fresh { readings, state } => (readings, state),
        };
        let vin = vehicle.vin.clone();
        let mut counters = Counters {
            bytes_received: bytes.len() as u64,
            ..Counters::default()
        };
        let with_events = self.hub.has_clients();
        let mut events = Vec::with_capacity(if with_events { readings.len() } else { 0 });
        let rows: Vec<TelemetryRow> = readings
            .into_iter()
            .map(|r| {
                let values = r.values;
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
                    events.push(self.event(&row));
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
        self.submit(vin, rows, session, counters, events).await?;
        vehicle.install(cb.session_id(), new_state);
        Ok(Ack::new(&counters, Some(batch_ack(false))))
    }

    /// Adds one to the vehicle's stored resync counter (a vehicle the store
    /// does not know yet is not counted). Rare, so it is its own small
    /// transaction; a failure is logged and does not change the 409.
    async fn count_resync(&self, vin: Arc<str>) {
        let batch = WriteBatch {
            resyncs: vec![(vin, 1)],
            ..WriteBatch::default()
        };
        if let Err(e) = self.store.commit(batch).await {
            tracing::warn!(error = %e, "A resync could not be counted.");
        }
    }

    fn event(&self, row: &TelemetryRow) -> HubEvent {
        let msg = ServerMsg::Telemetry(ReadingJson {
            row: row.clone(),
            signals: self.signals.clone(),
        });
        HubEvent::new(Some(row.vin.clone()), &msg)
    }

    async fn submit(
        &self,
        vin: Arc<str>,
        rows: Vec<TelemetryRow>,
        session: SessionRecord,
        counters: Counters,
        events: Vec<HubEvent>,
    ) -> Result<(), IngestError> {
        self.writer
            .submit(WriteRequest {
                vin,
                rows,
                session,
                counters,
                events,
            })
            .await
            .map_err(IngestError::Store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::health::Health;
    use crate::actors::stats::StatsBook;
    use crate::actors::writer::Writer;
    use crate::settings::StoreConfig;
    use tokio_util::sync::CancellationToken;

    /// The service on a real SQLite store with its writer and health actor,
    /// no HTTP anywhere.
    async fn service(dir: &std::path::Path) -> (IngestService, Arc<dyn Store>, CancellationToken) {
        let catalog = Arc::new(Catalog::default_v1());
        let store = crate::store::open(
            &StoreConfig::Sqlite(dir.join("t.db")),
            1,
            &Signals::from_catalog(&catalog),
        )
        .await
        .unwrap();
        let hub = Arc::new(Hub::new(16));
        let stop = CancellationToken::new();
        let (health, health_handle) = Health::new(store.clone(), hub.clone());
        tokio::spawn(health.run(stop.clone()));
        let (writer, writer_handle) = Writer::new(
            store.clone(),
            hub.clone(),
            Arc::new(StatsBook::default()),
            health_handle.clone(),
            8,
            1000,
            crate::metrics::Metrics::new(&Signals::from_catalog(&catalog)),
        );
        tokio::spawn(writer.run(stop.clone()));
        let svc = IngestService::new(
            catalog.clone(),
            store.clone(),
            writer_handle,
            hub,
            health_handle,
            100,
            crate::metrics::Metrics::new(&Signals::from_catalog(&catalog)),
        )
        .unwrap();
        (svc, store, stop)
    }

    #[tokio::test]
    async fn accepts_the_seed_form_without_http() {
        let dir = tempfile::tempdir().unwrap();
        let (svc, store, stop) = service(dir.path()).await;
        let reading = |ts: i64, speed: f64| TelemetryReading {
            vehicle_vin: "1HGCM82633A004352".into(),
            timestamp: ts,
            speed: Some(speed),
            battery: Some(80.0),
            power: Some(3.5),
            heading: Some(90.0),
        };
        let ack = svc
            .accept(Form::Seed, reading(1_000, 50.0).encode_to_vec().into())
            .await
            .unwrap();
        assert_eq!(ack.status, "success");
        assert_eq!(ack.transmitted_fields, 4);
        // A retry of the same timestamp is acknowledged and not stored twice.
        svc.accept(Form::Seed, reading(1_000, 50.0).encode_to_vec().into())
            .await
            .unwrap();
        let rows = store.recent(10).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].ts_ms, 1_000);

        let err = svc
            .accept(Form::Batch, Bytes::from_static(b"\xff\xff"))
            .await
            .unwrap_err();
        assert!(matches!(err, IngestError::Invalid(_)), "{err:?}");
        let err = svc
            .accept(Form::Seed, reading(-1, 1.0).encode_to_vec().into())
            .await
            .unwrap_err();
        assert!(matches!(err, IngestError::Invalid(_)), "{err:?}");
        stop.cancel();
    }
}
