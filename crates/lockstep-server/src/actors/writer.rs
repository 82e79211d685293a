//! The batching writer: an actor that owns the store's write path.
//!
//! Request handlers [`WriterHandle::submit`] their decoded rows with a
//! oneshot reply over a bounded channel (full = the handler waits: that is
//! the back-pressure). The writer takes whatever is queued, up to a row cap,
//! merges it into ONE [`WriteBatch`] (statistics summed per vehicle and day),
//! commits, answers every waiter, and only then publishes the committed
//! readings to the hub and advances the in-memory statistics.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::actors::health::{HealthHandle, Observation};
use crate::actors::hub::{Hub, HubEvent};
use crate::actors::stats::StatsBook;
use crate::metrics::Metrics;
use crate::model::{Counters, SessionRecord, TelemetryRow, epoch_day, now_ms};
use crate::store::{StatsDelta, Store, StoreError, WriteBatch};

/// What one request writes.
pub struct WriteRequest {
    pub vin: Arc<str>,
    pub rows: Vec<TelemetryRow>,
    pub session: SessionRecord,
    pub counters: Counters,
    /// Messages to publish once committed (empty when nobody listens).
    pub events: Vec<HubEvent>,
}

type Reply = oneshot::Sender<Result<(), StoreError>>;

/// Cheap handle to the writer.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<(WriteRequest, Reply)>,
    pending: Arc<AtomicUsize>,
    commits: watch::Receiver<u64>,
}

impl WriterHandle {
    /// Queues the request and waits until it is committed (or failed).
    pub async fn submit(&self, req: WriteRequest) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        let n = req.rows.len();
        self.pending.fetch_add(n, Ordering::Relaxed);
        if self.tx.send((req, tx)).await.is_err() {
            self.pending.fetch_sub(n, Ordering::Relaxed);
            return Err(StoreError::Closed("the server is shutting down".into()));
        }
        rx.await.unwrap_or_else(|_| {
            Err(StoreError::Closed(
                "the writer stopped before committing".into(),
            ))
        })
    }

    /// Counts successful commits: `changed()` wakes the downstream sinks
    /// without polling the store.
    pub fn commits(&self) -> watch::Receiver<u64> {
        self.commits.clone()
    }

    /// Readings queued or being committed.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }
}

/// The writer actor.
pub struct Writer {
    rx: mpsc::Receiver<(WriteRequest, Reply)>,
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    stats: Arc<StatsBook>,
    health: HealthHandle,
    pending: Arc<AtomicUsize>,
    max_rows: usize,
    commits: watch::Sender<u64>,
    metrics: Metrics,
}

impl Writer {
    pub fn new(
        store: Arc<dyn Store>,
        hub: Arc<Hub>,
        stats: Arc<StatsBook>,
        health: HealthHandle,
        queue: usize,
        max_rows: usize,
        metrics: Metrics,
    ) -> (Self, WriterHandle) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let pending = Arc::new(AtomicUsize::new(0));
        let (commits, commits_rx) = watch::channel(0);
        let w = Self {
            commits,
            rx,
            store,
            hub,
            stats,
            health,
            pending: pending.clone(),
            max_rows: max_rows.max(1),
            metrics,
        };
        (
            w,
            WriterHandle {
                tx,
                pending,
                commits: commits_rx,
            },
        )
    }

    /// Runs until `stop`, then commits what is still queued and returns.
    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            let first = tokio::select! {
                biased;
                r = self.rx.recv() => match r {
                    Some(r) => r,
                    None => break,
                },
                () = stop.cancelled() => break,
            };
            let batch = self.gather(first);
            self.commit(batch).await;
        }
        // Flush: refuse new requests, commit what was accepted into the queue.
        self.rx.close();
        while let Some(first) = self.rx.recv().await {
            let batch = self.gather(first);
            self.commit(batch).await;
        }
        tracing::debug!("The writer flushed its queue and stopped.");
    }

    /// Readings per wire form (seed, batch) and non-null fields per channel
    /// (not transmitted, transmitted), for the metrics.
    fn count(&self, rows: &[crate::model::TelemetryRow]) -> ([u64; 2], Vec<[u64; 2]>) {
        let mut per_form = [0u64; 2];
        let mut fields: Vec<[u64; 2]> = Vec::new();
        for r in rows {
            per_form[usize::from(r.session_id != crate::model::SEED_SESSION)] += 1;
            if fields.len() < r.values.len() {
                fields.resize(r.values.len(), [0; 2]);
            }
            for (i, v) in r.values.iter().enumerate() {
                if v.is_some() {
                    fields[i][usize::from(r.transmitted & (1 << i) != 0)] += 1;
                }
            }
        }
        (per_form, fields)
    }

    fn gather(&mut self, first: (WriteRequest, Reply)) -> Vec<(WriteRequest, Reply)> {
        let mut rows = first.0.rows.len();
        let mut batch = vec![first];
        while rows < self.max_rows {
            match self.rx.try_recv() {
                Ok(r) => {
                    rows += r.0.rows.len();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        batch
    }

    async fn commit(&self, requests: Vec<(WriteRequest, Reply)>) {
        let now = now_ms();
        let day = epoch_day(now);
        let mut wb = WriteBatch::default();
        let mut seen: HashMap<Arc<str>, ()> = HashMap::new();
        let mut stats: HashMap<Arc<str>, Counters> = HashMap::new();
        let mut sessions: HashMap<(Arc<str>, u64), SessionRecord> = HashMap::new();
        let mut replies = Vec::with_capacity(requests.len());
        let mut events = Vec::new();
        let n_rows: usize = requests.iter().map(|(r, _)| r.rows.len()).sum();
        wb.rows.reserve(n_rows);
        for (r, reply) in requests {
            if seen.insert(r.vin.clone(), ()).is_none() {
                wb.vehicles.push((r.vin.clone(), now));
            }
            stats.entry(r.vin.clone()).or_default().add(&r.counters);
            sessions.insert((r.vin.clone(), r.session.session_id), r.session);
            wb.rows.extend(r.rows);
            events.extend(r.events);
            replies.push(reply);
        }
        wb.sessions = sessions.into_values().collect();
        wb.stats = stats
            .iter()
            .map(|(vin, c)| StatsDelta {
                vin: vin.clone(),
                day,
                counters: *c,
            })
            .collect();

        // Counted only if the commit succeeds; one pass over the rows, off the request path.
        let counts = self.count(&wb.rows);
        let started = std::time::Instant::now();
        let result = self.store.commit(wb).await;
        self.metrics.commit(started.elapsed().as_secs_f64(), n_rows);
        self.pending.fetch_sub(n_rows, Ordering::Relaxed);
        match &result {
            Ok(()) => self.health.report(Observation::Committed).await,
            Err(e) => {
                tracing::error!(error = %e, rows = n_rows, "A batch could not be committed; its requests get an error.");
                self.health.report(Observation::Failed(e.clone())).await;
            }
        }
        for reply in replies {
            let _ = reply.send(result.clone());
        }
        if result.is_ok() {
            let (per_form, fields) = counts;
            self.metrics.readings(0, 0, per_form[0]);
            self.metrics.readings(1, 0, per_form[1]);
            self.metrics.fields(&fields);
            self.stats.add(stats.iter().map(|(vin, c)| (&**vin, c)));
            self.hub
                .publish_committed(events, stats.iter().map(|(vin, c)| (&**vin, c)));
            self.commits.send_modify(|n| *n += 1);
        }
    }
}
