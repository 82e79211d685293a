//! The batching writer: an actor that owns the store's write path.
//!
//! Request handlers [`WriterHandle::submit`] their decoded rows with a
//! oneshot reply over a bounded channel (full = the handler waits: that is
//! the back-pressure). The writer takes whatever is queued, up to a row cap,
//! merges it into ONE [`WriteBatch`], commits, answers every waiter, and
//! only then publishes the committed readings to the hub and advances the
//! in-memory statistics.
//!
//! The daily statistics and the vehicles' `last_seen` are not written with
//! every batch: the writer sums them in the [`StatsBook`] and writes them
//! once a second in a transaction of their own, and once more when it stops.
//! Per-commit upserts of the same few rows were most of a small commit's
//! cost (BENCHMARKS.md, issue 16).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::actors::health::{HealthHandle, Observation};
use crate::actors::hub::{Hub, HubEvent};
use crate::actors::stats::{StatsBook, Unflushed};
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

/// How long the writer waits at most for the requests a group commit
/// expects (see [`Writer::wait_for_peers`]); the ack latency it can add.
const GROUP_WAIT: std::time::Duration = std::time::Duration::from_micros(1500);

/// How often the statistics and receipt times are written.
const STATS_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

type Reply = oneshot::Sender<Result<(), StoreError>>;

/// Cheap handle to the writer.
#[derive(Clone)]
pub struct WriterHandle {
    tx: mpsc::Sender<(WriteRequest, Reply)>,
    pending: Arc<AtomicUsize>,
    commits: watch::Receiver<u64>,
    shared: Arc<AtomicBool>,
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

    /// Whether other writers (server instances) commit to the same
    /// sessions: then ingest checks a cached state's version before decoding.
    /// Set at the first stale session seen (or from the start with
    /// `LOCKSTEP_SHARED_STORE`); it stays set.
    pub fn shared(&self) -> bool {
        self.shared.load(Ordering::Relaxed)
    }

    /// Records that another writer changed a session.
    pub fn mark_shared(&self) {
        if !self.shared.swap(true, Ordering::Relaxed) {
            tracing::info!(
                "Another server instance writes the same sessions: sessions are checked before decoding from now on."
            );
        }
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
    /// Other writers (server instances) commit to the same sessions: set at
    /// the first stale session seen, here or by ingest's version check.
    shared: Arc<AtomicBool>,
    /// Requests in the last commit (see [`Self::wait_for_peers`]).
    last_requests: usize,
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
        let shared = Arc::new(AtomicBool::new(false));
        let w = Self {
            shared: shared.clone(),
            commits,
            rx,
            store,
            hub,
            stats,
            health,
            pending: pending.clone(),
            max_rows: max_rows.max(1),
            metrics,
            last_requests: 1,
        };
        (
            w,
            WriterHandle {
                tx,
                pending,
                commits: commits_rx,
                shared,
            },
        )
    }

    /// Runs until `stop`, then commits what is still queued, writes the
    /// statistics and returns.
    pub async fn run(mut self, stop: CancellationToken) {
        let mut flush = tokio::time::interval(STATS_FLUSH);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                biased;
                r = self.rx.recv() => match r {
                    Some(r) => r,
                    None => break,
                },
                _ = flush.tick() => {
                    self.flush_stats(false).await;
                    continue;
                }
                () = stop.cancelled() => break,
            };
            let mut batch = self.gather(first);
            self.wait_for_peers(&mut batch).await;
            self.commit(batch).await;
        }
        // Refuse new requests, commit what was accepted into the queue.
        self.rx.close();
        while let Some(first) = self.rx.recv().await {
            let batch = self.gather(first);
            self.commit(batch).await;
        }
        self.flush_stats(true).await;
        tracing::debug!("The writer flushed its queue and stopped.");
    }

    /// Writes the statistics and receipt times committed since the last
    /// flush; other instances learn the deltas once they are stored. A
    /// failure keeps them for the next tick. Only the `last` flush (at
    /// shutdown) waits for a statistics reload in progress.
    async fn flush_stats(&self, last: bool) {
        let store = &self.store;
        let write = |u: &Unflushed| store.commit(stats_batch(u));
        let written = if last {
            self.stats.flush(write).await
        } else {
            self.stats.try_flush(write).await
        };
        match written {
            Ok(Some(u)) => self.hub.relay_stats(&u.per_vehicle()),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "The statistics could not be written; they are kept for the next attempt.");
            }
        }
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

    /// Group commit: when the last commit held more requests than are
    /// queued now, the clients it answered are likely sending their next
    /// ones; waits up to [`GROUP_WAIT`] for as many, so that a closed loop of
    /// N clients commits N requests at a time instead of one or two. A lone
    /// client (last commit of one request) never waits.
    async fn wait_for_peers(&mut self, batch: &mut Vec<(WriteRequest, Reply)>) {
        let expected = self.last_requests;
        let mut rows: usize = batch.iter().map(|(r, _)| r.rows.len()).sum();
        if batch.len() >= expected || rows >= self.max_rows {
            self.last_requests = batch.len();
            return;
        }
        let deadline = tokio::time::Instant::now() + GROUP_WAIT;
        while batch.len() < expected && rows < self.max_rows {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(r)) => {
                    rows += r.0.rows.len();
                    batch.push(r);
                }
                Ok(None) | Err(_) => break,
            }
        }
        self.last_requests = batch.len();
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
        let mut pending: Vec<Pending> = Vec::with_capacity(requests.len());
        let n_rows: usize = requests.iter().map(|(r, _)| r.rows.len()).sum();
        wb.rows.reserve(n_rows);
        for (r, reply) in requests {
            pending.push(Pending {
                key: (r.vin.clone(), r.session.session_id),
                counters: r.counters,
                events: r.events,
                reply,
            });
            wb.sessions.push(r.session);
            wb.rows.extend(r.rows);
        }
        // One request per (vehicle, session) is in flight (the vehicle's lock
        // is held from decode to reply); should two meet, the later state wins.
        let mut seen = std::collections::HashSet::new();
        let mut sessions = std::mem::take(&mut wb.sessions);
        sessions.reverse();
        sessions.retain(|s| seen.insert((s.vin.clone(), s.session_id)));
        sessions.reverse();
        wb.sessions = sessions;
        let mut stats = summarise(&pending, &mut wb, now);

        // Counted only if the commit succeeds; one pass over the rows, off the request path.
        let mut result;
        loop {
            let counts = self.count(&wb.rows);
            let rows = wb.rows.len();
            // A copy to retry without stale requests, once other writers were
            // seen; a lone instance does not pay for it (see below).
            let retry = self.shared.load(Ordering::Relaxed).then(|| wb.clone());
            let started = std::time::Instant::now();
            result = self.store.commit(std::mem::take(&mut wb)).await;
            self.metrics.commit(started.elapsed().as_secs_f64(), rows);
            let Err(StoreError::Stale(stale)) = &result else {
                if result.is_ok() {
                    let (per_form, fields) = counts;
                    self.metrics.readings(0, 0, per_form[0]);
                    self.metrics.readings(1, 0, per_form[1]);
                    self.metrics.fields(&fields);
                }
                break;
            };
            // Another instance advanced these sessions: their requests reload
            // and decode again; the others are committed without them.
            self.shared.store(true, Ordering::Relaxed);
            let stale: std::collections::HashSet<(Arc<str>, u64)> = stale.iter().cloned().collect();
            let Some(copy) = retry else {
                // The first conflict this instance sees, with no copy of the
                // batch: every request submits again (the stale ones after
                // reloading), from now on with copies.
                tracing::info!(
                    "Another server instance writes the same sessions: sessions are checked before decoding from now on."
                );
                for p in pending.drain(..) {
                    let mine = stale.contains(&p.key);
                    let _ = p.reply.send(Err(StoreError::Stale(if mine {
                        vec![p.key]
                    } else {
                        Vec::new()
                    })));
                }
                stats.clear();
                result = Ok(());
                break;
            };
            wb = copy;
            let before = pending.len();
            let (gone, kept): (Vec<_>, Vec<_>) =
                pending.into_iter().partition(|p| stale.contains(&p.key));
            pending = kept;
            tracing::debug!(
                stale = gone.len(),
                kept = pending.len(),
                "Sessions changed by another writer; committing the batch without them."
            );
            for p in gone {
                let _ = p.reply.send(Err(StoreError::Stale(vec![p.key])));
            }
            if pending.len() == before {
                // The store named sessions none of these requests carry: a bug; fail them all.
                result = Err(StoreError::Invalid(
                    "the store reported stale sessions the batch does not hold".into(),
                ));
                break;
            }
            wb.rows
                .retain(|r| !stale.contains(&(r.vin.clone(), r.session_id)));
            wb.sessions
                .retain(|s| !stale.contains(&(s.vin.clone(), s.session_id)));
            stats = summarise(&pending, &mut wb, now);
            if pending.is_empty() {
                result = Ok(());
                break;
            }
        }
        self.pending.fetch_sub(n_rows, Ordering::Relaxed);
        match &result {
            Ok(()) => self.health.report(Observation::Committed).await,
            Err(e) => {
                tracing::error!(error = %e, rows = n_rows, "A batch could not be committed; its requests get an error.");
                self.health.report(Observation::Failed(e.clone())).await;
            }
        }
        if result.is_ok() {
            // Before the acknowledgements: a client that connects once its
            // reading is acknowledged must find it in its history.
            self.hub.note_stored();
        }
        let mut events = Vec::new();
        for p in pending {
            events.extend(p.events);
            let _ = p.reply.send(result.clone());
        }
        if result.is_ok() {
            self.stats.committed(&stats, day, now);
            self.hub.publish_all(events);
            self.commits.send_modify(|n| *n += 1);
        }
    }
}

/// A request in the writer's batch, after its rows and session moved into
/// the [`WriteBatch`].
struct Pending {
    /// (VIN, session): which rows and session state are the request's.
    key: (Arc<str>, u64),
    counters: Counters,
    events: Vec<HubEvent>,
    reply: Reply,
}

/// Sets the batch's vehicles from its requests (created when missing);
/// returns the statistics per vehicle.
fn summarise(pending: &[Pending], wb: &mut WriteBatch, now: i64) -> HashMap<Arc<str>, Counters> {
    let mut stats: HashMap<Arc<str>, Counters> = HashMap::new();
    wb.vehicles.clear();
    for p in pending {
        let c = stats.entry(p.key.0.clone()).or_insert_with(|| {
            wb.vehicles.push((p.key.0.clone(), now));
            Counters::default()
        });
        c.add(&p.counters);
    }
    stats
}

/// The transaction of one statistics flush.
fn stats_batch(u: &Unflushed) -> WriteBatch {
    let seen: Vec<(Arc<str>, i64)> = u.seen.iter().map(|(v, t)| (v.clone(), *t)).collect();
    WriteBatch {
        vehicles: seen.clone(),
        last_seen: seen,
        stats: u
            .stats
            .iter()
            .map(|((vin, day), c)| StatsDelta {
                vin: vin.clone(),
                day: *day,
                counters: *c,
            })
            .collect(),
        ..WriteBatch::default()
    }
}
