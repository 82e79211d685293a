//! The ingest service: one path for both wire forms, no HTTP in sight.
//! [`IngestService::accept`] takes the form and the body and answers an
//! [`Ack`] once the writer has committed the rows, or an [`IngestError`].
//!
//! - [`Form::Seed`]: one seed `TelemetryReading`, reconstructed with the
//!   vehicle's seed predictor. Timestamps outside a plausible window (Unix
//!   ms from 2000 to a day ahead) are refused. A timestamp at or before the
//!   vehicle's last accepted one is acknowledged only if that reading is
//!   stored (a retry), and refused otherwise: never acknowledged and dropped.
//!   Stored with session 0 and `seq` = timestamp.
//! - [`Form::Batch`]: one `lockstep.v1.Batch`, decoded against the session's
//!   state. A batch before the session's `next_seq` is a duplicate only if
//!   all its readings are stored; otherwise it does not continue the session:
//!   starting with a keyframe it restarts the session there (the sender's
//!   resync), else it is refused with a resync request. So no jump ahead can
//!   turn later genuine readings into "duplicates".
//!
//! The sender's credential ([`Principal`]) is checked first: a device writes
//! only its VINs, and a session belongs to the credential that opened it.
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
use crate::auth::{Auth, Principal};
use crate::metrics::Metrics;
use crate::model::{Counters, SEED_SESSION, SessionRecord, Signals, TelemetryRow};
use crate::protocol::{ReadingJson, ServerMsg};
use crate::services::limits::{Limits, RetryAfter};
use crate::store::{Store, StoreError, WriteBatch};
use crate::vehicles::{VehicleState, Vehicles};
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
    /// The credential may not write this VIN or session; nothing was stored.
    #[error("{0}")]
    Forbidden(String),
    /// A well-formed value that cannot be true (a seed timestamp out of the window).
    #[error("{0}")]
    Implausible(String),
    /// A seed reading older than the vehicle's last one and not stored: refused.
    #[error("{0}")]
    Stale(String),
    /// The edge must resync (send a keyframe) before this session can continue.
    #[error("{message}")]
    Resync {
        message: String,
        /// `catalog_mismatch`, `unknown_session`, `gap`, `overlap`, `checksum_mismatch`
        /// or `not_continuing` (readings before `next_seq` that are not stored).
        kind: &'static str,
        next_seq: Option<u64>,
    },
    /// The device sends faster than its limits; retry after this many seconds.
    #[error("too many requests or readings for this device; retry after {retry_after_s} s")]
    RateLimited { retry_after_s: u32 },
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

/// What bounds ingest: request size, rates, and the vehicles kept in memory.
pub struct Bounds {
    pub max_batch_readings: usize,
    pub limits: Limits,
    pub vehicles: Arc<Vehicles>,
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
    vehicles: Arc<Vehicles>,
    writer: WriterHandle,
    hub: Arc<Hub>,
    health: HealthHandle,
    max_batch_readings: usize,
    auth: Arc<Auth>,
    /// Session owners already confirmed by the store: (VIN, session) → credential.
    owners: std::sync::Mutex<Owners>,
    limits: Limits,
    metrics: Metrics,
}

/// Session owners as the store told them: (VIN, session) → identity; `None`
/// = no owner (written without a credential so far).
type Owners = std::collections::HashMap<(Arc<str>, u64), Option<String>>;

/// Sessions whose owner is cached; beyond this the cache starts over.
const OWNERS_CACHED: usize = 100_000;

/// How often a request decodes again after another server instance advanced
/// its session first; then it gets 503 with `Retry-After` (nothing stored).
const STALE_RETRIES: u32 = 4;

/// Seed timestamps before this (2000-01-01, Unix ms) are refused: seconds, or a broken clock.
pub const SEED_TS_MIN: i64 = 946_684_800_000;
/// Seed timestamps more than this ahead of the server's clock are refused.
pub const SEED_TS_AHEAD_MS: i64 = 24 * 3600 * 1000;

/// Whether a seed timestamp is plausible Unix epoch milliseconds; the error says why not.
pub fn check_seed_timestamp(ts: i64, now_ms: i64) -> Result<(), String> {
    let why = if ts < 0 {
        "is negative"
    } else if ts < SEED_TS_MIN {
        if ts >= SEED_TS_MIN / 1000 && ts <= now_ms.saturating_add(SEED_TS_AHEAD_MS) / 1000 {
            "looks like seconds"
        } else {
            "is before 2000"
        }
    } else if ts > now_ms.saturating_add(SEED_TS_AHEAD_MS) {
        if ts / 1000 <= now_ms.saturating_add(SEED_TS_AHEAD_MS) && ts / 1000 >= SEED_TS_MIN {
            "looks like microseconds"
        } else {
            "is more than a day in the future"
        }
    } else {
        return Ok(());
    };
    Err(format!(
        "timestamp {ts} {why}; send Unix epoch milliseconds between 2000-01-01 and one day after the server's clock"
    ))
}

impl IngestService {
    // Each argument is a distinct handle the service keeps; a struct for them
    // would only rename the list.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        catalog: Arc<Catalog>,
        store: Arc<dyn Store>,
        writer: WriterHandle,
        hub: Arc<Hub>,
        health: HealthHandle,
        bounds: Bounds,
        auth: Arc<Auth>,
        metrics: Metrics,
    ) -> anyhow::Result<Self> {
        let Bounds {
            max_batch_readings,
            limits,
            vehicles,
        } = bounds;
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
                vehicles,
                writer,
                hub,
                health,
                max_batch_readings,
                auth,
                owners: Default::default(),
                limits,
                metrics,
            }),
        })
    }

    /// Decodes, stores and acknowledges one body. Runs on its own task: a
    /// caller that goes away mid-request cannot cancel it between the commit
    /// and the installation of the new codec state, so memory and store
    /// never disagree.
    /// `sender`: the request's credential (a device writes only its VINs).
    pub async fn accept(
        &self,
        form: Form,
        bytes: Bytes,
        sender: Principal,
    ) -> Result<Ack, IngestError> {
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            match form {
                Form::Seed => inner.ingest_seed(&bytes, &sender).await,
                Form::Batch => inner.ingest_batch(&bytes, &sender).await,
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
    /// The device's request and reading budgets (see [`crate::services::limits`]).
    fn within_limits(&self, vin: &Vin, readings: u32) -> Result<(), IngestError> {
        let key: Arc<str> = vin.as_str().into();
        self.limits.check_device(&key, readings).map_err(|RetryAfter(s)| {
            tracing::debug!(vin = %vin.as_str(), retry_after_s = s, "Device over its rate limit.");
            IngestError::RateLimited { retry_after_s: s }
        })
    }

    /// A failed state load on the write path: the health actor decides.
    async fn store_failed(&self, e: StoreError) -> IngestError {
        tracing::debug!(error = %e, "Ingest refused: the store failed.");
        self.health.report(Observation::Failed(e.clone())).await;
        IngestError::Store(e)
    }

    /// Whether `sender` may write the session: a device credential may if it
    /// opened it or is the first to write it (then it owns it); a writer
    /// without a credential (device auth off) only if no credential owns it.
    async fn may_continue(
        &self,
        sender: &Principal,
        vin: &Arc<str>,
        session_id: u64,
    ) -> Result<(), IngestError> {
        let cred = sender.device_credential();
        let key = (vin.clone(), session_id);
        let known = self
            .owners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        let owner = match (known, cred) {
            (Some(Some(o)), _) => Some(o),
            (Some(None), None) => None,
            (_, cred) => {
                let db = &self.auth.db;
                let o = match cred {
                    Some(c) => db.claim_session(vin, session_id, c).await.map(Some),
                    None => db.session_owner(vin, session_id).await,
                };
                let o = match o {
                    Ok(o) => o,
                    Err(e) => return Err(self.store_failed(e).await),
                };
                let mut owners = self.owners.lock().unwrap_or_else(|p| p.into_inner());
                if owners.len() >= OWNERS_CACHED {
                    owners.clear();
                }
                owners.insert(key, o.clone());
                o
            }
        };
        match owner {
            None => Ok(()),
            Some(o) if Some(o.as_str()) == cred => Ok(()),
            Some(_) => {
                tracing::warn!(vin = %vin, session_id = format_args!("{session_id:016x}"), "A writer tried to write a session another credential opened.");
                Err(IngestError::Forbidden(format!(
                    "session {session_id:016x} of {vin} belongs to another credential; start a new session"
                )))
            }
        }
    }

    #[tracing::instrument(name = "ingest_seed", skip_all, fields(vin))]
    async fn ingest_seed(&self, bytes: &[u8], sender: &Principal) -> Result<Ack, IngestError> {
        let reading = TelemetryReading::decode(bytes).map_err(|e| {
            IngestError::Invalid(format!(
                "the body is not a valid telemetry.TelemetryReading: {e}"
            ))
        })?;
        let vin =
            Vin::parse(&reading.vehicle_vin).map_err(|e| IngestError::InvalidVin(e.to_string()))?;
        tracing::Span::current().record("vin", vin.as_str());
        refuse_foreign_vin(sender, &vin)?;
        self.within_limits(&vin, 1)?;
        check_seed_timestamp(reading.timestamp, crate::model::now_ms())
            .map_err(IngestError::Implausible)?;
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

        let mut attempt = 0;
        loop {
            match self.commit_seed(&vin, &reading, bytes.len()).await {
                Err(IngestError::Store(StoreError::Stale(_))) if attempt < STALE_RETRIES => {
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    /// The seed reading decoded against the vehicle's predictor as stored,
    /// committed with a compare-and-set on its version. `Stale`: another
    /// server instance advanced the predictor first (then it is reloaded
    /// and the caller decodes again).
    async fn commit_seed(
        &self,
        vin: &Vin,
        reading: &TelemetryReading,
        body_len: usize,
    ) -> Result<Ack, IngestError> {
        let handle = self.vehicles.get(vin);
        let mut vehicle = handle.lock().await;
        let checked = self.writer.shared() && vehicle.contended();
        let (seed, version) = match vehicle.seed(&*self.store, checked).await {
            Ok((s, v)) => (s.clone(), v),
            Err(e) => return Err(self.store_failed(e).await),
        };
        let mut next = seed.clone();
        let rec = next.predictor.reconstruct(reading);
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
        if let Some(last) = seed.last_ts.filter(|last| reading.timestamp <= *last) {
            // A retry of a stored reading: acknowledge, change nothing. Anything
            // else this old is refused, so it is never acknowledged and dropped.
            let ts = reading.timestamp as u64;
            return match self
                .store
                .stored_count(vehicle.vin.clone(), SEED_SESSION, ts, ts)
                .await
            {
                Ok(1..) => Ok(Ack::new(&counters, None)),
                Ok(0) => Err(IngestError::Stale(format!(
                    "timestamp {} is not after the vehicle's last stored reading ({last}); readings of one vehicle must come in time order",
                    reading.timestamp
                ))),
                Err(e) => Err(self.store_failed(e).await),
            };
        }
        counters.bytes_received = body_len as u64;
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
            vec![self.event(&row, version + 1)]
        } else {
            Vec::new()
        };
        let session = SessionRecord {
            vin: vehicle.vin.clone(),
            session_id: SEED_SESSION,
            next_seq: reading.timestamp as u64,
            state: next.to_bytes(),
            version,
        };
        let vin = vehicle.vin.clone();
        self.submit(&mut vehicle, vin, vec![row], session, counters, events)
            .await?;
        vehicle.install_seed(
            SeedState {
                predictor: next.predictor,
                last_ts: next.last_ts,
            },
            version + 1,
        );
        Ok(Ack::new(&counters, None))
    }

    #[tracing::instrument(name = "ingest_batch", skip_all, fields(vin, session_id))]
    async fn ingest_batch(&self, bytes: &[u8], sender: &Principal) -> Result<Ack, IngestError> {
        let max = self.max_batch_readings;
        // The declared count first: an oversized batch is refused before its
        // arrays are decoded into memory (8 bytes per 1-byte varint).
        if let Some(count) = declared_count(bytes)
            && count as usize > max
        {
            return Err(IngestError::TooManyReadings {
                count: count as usize,
                max,
            });
        }
        let cb = CheckedBatch::parse(&self.catalog, bytes)
            .map_err(|e| IngestError::from_decode(e, None))?;
        if cb.len() > max {
            return Err(IngestError::TooManyReadings {
                count: cb.len(),
                max,
            });
        }
        let span = tracing::Span::current();
        span.record("vin", cb.vin().as_str());
        // A foreign credential is refused before it can spend the VIN's budget.
        refuse_foreign_vin(sender, cb.vin())?;
        self.within_limits(cb.vin(), cb.len() as u32)?;
        span.record(
            "session_id",
            format_args!("{:016x}", cb.session_id()).to_string(),
        );
        let mut attempt = 0;
        loop {
            match self.commit_batch(&cb, bytes.len(), sender).await {
                Err(IngestError::Store(StoreError::Stale(_))) if attempt < STALE_RETRIES => {
                    attempt += 1;
                }
                r => return r,
            }
        }
    }

    /// The batch decoded against its session's state as stored, committed
    /// with a compare-and-set on its version (see [`Self::commit_seed`]).
    async fn commit_batch(
        &self,
        cb: &CheckedBatch,
        body_len: usize,
        sender: &Principal,
    ) -> Result<Ack, IngestError> {
        let handle = self.vehicles.get(cb.vin());
        let mut vehicle = handle.lock().await;
        let vin = vehicle.vin.clone();
        self.may_continue(sender, &vin, cb.session_id()).await?;
        let checked = self.writer.shared() && vehicle.contended();
        let (state, version) = match vehicle
            .session(&*self.store, &self.catalog, cb.session_id(), checked)
            .await
        {
            Ok(s) => s,
            Err(e) => return Err(self.store_failed(e).await),
        };
        let batch_ack = |duplicate| BatchAck {
            session_id: format!("{:016x}", cb.session_id()),
            first_seq: cb.first_seq(),
            last_seq: cb.last_seq(),
            duplicate,
        };
        let next_seq = state.map(|s| s.next_seq());
        let mut state = state;
        if next_seq.is_some_and(|n| cb.last_seq() < n) {
            // Before the session's position: a retry only if all of it is stored.
            let stored = match self
                .store
                .stored_count(vin.clone(), cb.session_id(), cb.first_seq(), cb.last_seq())
                .await
            {
                Ok(n) => n,
                Err(e) => return Err(self.store_failed(e).await),
            };
            if stored < cb.len() as u64 {
                if !cb.starts_with_keyframe() {
                    tracing::info!(
                        stored,
                        "Batch before next_seq is not stored; the edge must resync."
                    );
                    return Err(IngestError::Resync {
                        message: format!(
                            "readings {}..={} come before the session's next_seq {} but are not stored; resend them starting with a keyframe",
                            cb.first_seq(),
                            cb.last_seq(),
                            next_seq.unwrap_or_default()
                        ),
                        kind: "not_continuing",
                        next_seq: None,
                    });
                }
                // The sender's resync: its keyframe restarts the session here.
                tracing::warn!(
                    stored,
                    "A keyframe batch before next_seq restarts the session (the session had jumped ahead)."
                );
                state = None;
            }
        }
        // Refusals are logged (rate-limited) where they become HTTP answers.
        let outcome = match cb.decode(&self.catalog, state) {
            Ok(o) => o,
            Err(e) => {
                if !checked {
                    // Decoded against a cached state without asking the store:
                    // if another instance moved the session on, the batch only
                    // looks like a gap. Ask before refusing.
                    let now = match vehicle
                        .session(&*self.store, &self.catalog, cb.session_id(), true)
                        .await
                    {
                        Ok((_, v)) => v,
                        Err(e) => return Err(self.store_failed(e).await),
                    };
                    if now != version {
                        self.writer.mark_shared();
                        vehicle.mark_contended();
                        self.metrics.stale_session(true);
                        return Err(IngestError::Store(StoreError::Stale(vec![(
                            vin,
                            cb.session_id(),
                        )])));
                    }
                }
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
        let mut counters = Counters {
            bytes_received: body_len as u64,
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
                    events.push(self.event(&row, version + 1));
                }
                row
            })
            .collect();
        let session = SessionRecord {
            vin: vin.clone(),
            session_id: cb.session_id(),
            next_seq: new_state.next_seq(),
            state: new_state.to_bytes(),
            version,
        };
        self.submit(&mut vehicle, vin, rows, session, counters, events)
            .await?;
        vehicle.install(cb.session_id(), new_state, version + 1);
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

    /// The live message of `row`, which the commit storing session version `commit` holds.
    fn event(&self, row: &TelemetryRow, commit: u64) -> HubEvent {
        let msg = ServerMsg::Telemetry(ReadingJson {
            row: row.clone(),
            signals: self.signals.clone(),
        });
        HubEvent::reading(row.vin.clone(), row.session_id, row.seq, commit, &msg)
    }

    /// Commits through the writer. `Stale`: another server instance advanced
    /// the session first, and the vehicle's cached state is forgotten (an
    /// empty list: the batch was given up for another request's stale state,
    /// this one's state stays); the caller decodes again.
    async fn submit(
        &self,
        vehicle: &mut VehicleState,
        vin: Arc<str>,
        rows: Vec<TelemetryRow>,
        session: SessionRecord,
        counters: Counters,
        events: Vec<HubEvent>,
    ) -> Result<(), IngestError> {
        let session_id = session.session_id;
        let r = self
            .writer
            .submit(WriteRequest {
                vin,
                rows,
                session,
                counters,
                events,
            })
            .await;
        if let Err(StoreError::Stale(keys)) = &r {
            self.metrics.stale_session(!keys.is_empty());
            if !keys.is_empty() {
                tracing::debug!("Another server instance advanced the session; decoding again.");
                vehicle.forget(session_id);
            }
        }
        r.map_err(IngestError::Store)
    }
}

/// 403 unless the sender may write `vin` (anonymous senders are the policy's concern).
fn refuse_foreign_vin(sender: &Principal, vin: &Vin) -> Result<(), IngestError> {
    if sender.may_write(vin.as_str()) == Some(false) {
        tracing::warn!(vin = %vin.as_str(), "A device credential tried to write another VIN; nothing stored.");
        return Err(IngestError::Forbidden(format!(
            "this credential may not write VIN {}",
            vin.as_str()
        )));
    }
    Ok(())
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
            super::Bounds {
                max_batch_readings: 100,
                limits: crate::services::limits::Limits::new(crate::services::limits::Rates {
                    device_requests: 0,
                    device_readings: 0,
                    ip_requests: 0,
                    max_batch_readings: 100,
                    ws_per_ip: 1,
                }),
                vehicles: Arc::new(Vehicles::default()),
            },
            Arc::new(Auth::new(
                crate::auth::db::AuthDb::open_sqlite(&dir.join("t.db"))
                    .await
                    .unwrap(),
                crate::auth::AuthConfig {
                    device: crate::auth::Mode::Off,
                    read: crate::auth::Mode::Off,
                    admin_token: None,
                    trust_loopback: false,
                    secure_cookies: false,
                },
            )),
            crate::metrics::Metrics::new(&Signals::from_catalog(&catalog)),
        )
        .unwrap();
        (svc, store, stop)
    }

    const T: i64 = 1_764_000_000_000;

    #[test]
    fn seed_timestamps_must_be_plausible_milliseconds() {
        let now = 1_764_000_000_000;
        assert!(check_seed_timestamp(now, now).is_ok());
        assert!(check_seed_timestamp(SEED_TS_MIN, now).is_ok());
        assert!(check_seed_timestamp(now + SEED_TS_AHEAD_MS, now).is_ok());
        for (ts, why) in [
            (-1, "negative"),
            (now / 1000, "seconds"),
            (now * 1000, "microseconds"),
            (i64::MAX, "future"),
            (500_000_000_000, "before 2000"),
            (now + SEED_TS_AHEAD_MS + 1, "future"),
        ] {
            let e = check_seed_timestamp(ts, now).unwrap_err();
            assert!(e.contains(why), "{ts}: {e}");
        }
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
            .accept(
                Form::Seed,
                reading(T, 50.0).encode_to_vec().into(),
                Principal::Anonymous,
            )
            .await
            .unwrap();
        assert_eq!(ack.status, "success");
        assert_eq!(ack.transmitted_fields, 4);
        // A retry of the same timestamp is acknowledged and not stored twice.
        svc.accept(
            Form::Seed,
            reading(T, 50.0).encode_to_vec().into(),
            Principal::Anonymous,
        )
        .await
        .unwrap();
        let rows = store.recent(10).await.unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].ts_ms, T);

        let err = svc
            .accept(
                Form::Batch,
                Bytes::from_static(b"\xff\xff"),
                Principal::Anonymous,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, IngestError::Invalid(_)), "{err:?}");
        let err = svc
            .accept(
                Form::Seed,
                reading(-1, 1.0).encode_to_vec().into(),
                Principal::Anonymous,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, IngestError::Implausible(_)), "{err:?}");
        stop.cancel();
    }
}

/// The `count` field (5) of an encoded `lockstep.v1.Batch`, read by skipping
/// over every other field without decoding it. Bytes that are not protobuf
/// end the scan: the count seen before them (if any) is returned, and the
/// full decode says what is wrong with the rest.
fn declared_count(mut b: &[u8]) -> Option<u64> {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut count = None;
    while !b.is_empty() {
        let Some(key) = varint(&mut b) else {
            break;
        };
        let skip = match key & 7 {
            0 => match varint(&mut b) {
                Some(v) if key >> 3 == 5 => {
                    count = Some(v);
                    0
                }
                Some(_) => 0,
                None => break,
            },
            1 => 8,
            2 => match varint(&mut b).and_then(|n| usize::try_from(n).ok()) {
                Some(n) => n,
                None => break,
            },
            5 => 4,
            _ => break,
        };
        match b.get(skip..) {
            Some(rest) => b = rest,
            None => break,
        }
    }
    count
}

#[cfg(test)]
mod count_tests {
    use lockstep_proto::Message as _;

    #[test]
    fn declared_count_reads_field_5_only() {
        let batch = lockstep_proto::v1::Batch {
            vehicle_vin: "1HGCM82633A004352".into(),
            session_id: 7,
            count: 400_000,
            timestamp_dod: vec![1; 1000],
            values: vec![-3; 1000],
            state_checksum: Some(9),
            ..Default::default()
        };
        assert_eq!(super::declared_count(&batch.encode_to_vec()), Some(400_000));
        assert_eq!(super::declared_count(&[0x2a, 0xff]), None, "truncated");
        assert_eq!(
            super::declared_count(&[0x28, 0x05, 0x0f, 0x0f]),
            Some(5),
            "the count before bytes that are not protobuf"
        );
    }
}
