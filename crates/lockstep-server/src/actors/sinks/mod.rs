//! Downstream sinks: every committed reading, forwarded at least once to
//! NATS JetStream ([`nats`]) and/or an MQTT broker ([`mqtt`]).
//!
//! A sink is an actor driven by a durable cursor over stored rows, not by the
//! ingest path: it reads the readings after its cursor (`telemetry_data.id`,
//! which grows in commit order, see the stores), publishes them, waits for
//! the broker's acknowledgement of every one (JetStream publish ack, MQTT
//! QoS 1 PUBACK) and only then moves its cursor (`sink_cursors`) past them,
//! one batch at a time. So a broker outage loses nothing and never slows
//! ingest: the writer only bumps a counter that wakes the sinks (a slow poll
//! is the fallback), the sink backs off and retries, and its lag (readings
//! stored but not yet acknowledged) grows, visible in `/status` and in the
//! `lockstep_sink_lag_readings` gauge.
//!
//! Duplicates happen (at least once): a batch published, then the server
//! stops or the store fails before the cursor moves, is published again; a
//! batch whose acknowledgements were lost (broker restart) is published
//! again. JetStream drops those within its duplicate window, as each message
//! carries `Nats-Msg-Id: <vin>/<session>/<seq>`; MQTT subscribers see them.
//!
//! Several servers on one database: a sink is driven by one of them at a
//! time, the holder of its lease in `sink_cursors`, renewed every few
//! seconds and taken over by another server once it expires. Moving the
//! cursor checks the holder, so a server that lost the lease cannot move it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::{Metrics, SinkMetrics};
use crate::model::{Signals, TelemetryRow, now_ms};
use crate::protocol::ReadingJson;
use crate::settings::Settings;
use crate::store::{SinkLease, Store};

pub mod mqtt;
pub mod nats;

/// One reading, ready for any broker.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub vin: Arc<str>,
    /// `<vin>/<session as 16 hex digits>/<seq>`: the same reading always gets
    /// the same id, so a broker can drop a republished one.
    pub msg_id: String,
    /// The WebSocket `telemetry` message's `data` (see [`ReadingJson`]).
    pub payload: Bytes,
}

impl Outgoing {
    pub fn new(row: TelemetryRow, signals: &Signals) -> Self {
        let msg_id = format!("{}/{:016x}/{}", row.vin, row.session_id, row.seq);
        let vin = row.vin.clone();
        let json = ReadingJson {
            row,
            signals: signals.clone(),
        };
        let payload = serde_json::to_vec(&json).unwrap_or_default().into();
        Self {
            vin,
            msg_id,
            payload,
        }
    }
}

/// A broker connection that a [`Sink`] publishes through.
pub trait Broker: Send + 'static {
    /// `nats` or `mqtt`: the sink's name in `/status`, metrics and `sink_cursors`.
    const NAME: &'static str;

    /// Publishes every message (connecting first if needed) and returns once
    /// the broker has acknowledged all of them. An error means some may not
    /// have been: the caller publishes the whole batch again later.
    fn publish(&mut self, batch: &[Outgoing]) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Whether the broker connection is up, kept current by the connection
    /// itself (also while a publish waits).
    fn connected(&self) -> Arc<AtomicBool>;
}

/// What `/status` shows of one sink, updated by its actor.
#[derive(Debug, Default)]
pub struct SinkStatus {
    connected: Arc<AtomicBool>,
    active: AtomicBool,
    lag: AtomicU64,
    forwarded: AtomicU64,
    position: AtomicI64,
}

/// `/status` → `sinks.<name>`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct SinkStatusJson {
    /// The broker connection is up.
    pub connected: bool,
    /// Readings stored but not yet acknowledged by the broker.
    pub lag_readings: u64,
    /// Readings this server forwarded (acknowledged) since it started.
    pub forwarded_total: u64,
    /// The cursor: the last forwarded `telemetry_data.id`.
    pub position: i64,
    /// This server drives the sink (holds its lease); with several servers
    /// on one database, exactly one shows `true`.
    pub active: bool,
}

impl SinkStatus {
    fn json(&self) -> SinkStatusJson {
        SinkStatusJson {
            connected: self.connected.load(Ordering::Relaxed),
            lag_readings: self.lag.load(Ordering::Relaxed),
            forwarded_total: self.forwarded.load(Ordering::Relaxed),
            position: self.position.load(Ordering::Relaxed),
            active: self.active.load(Ordering::Relaxed),
        }
    }
}

/// The configured sinks, by name (empty when none is configured).
#[derive(Debug, Clone, Default)]
pub struct Sinks(Arc<Vec<(&'static str, Arc<SinkStatus>)>>);

impl Sinks {
    pub fn status(&self) -> BTreeMap<&'static str, SinkStatusJson> {
        self.0.iter().map(|(n, s)| (*n, s.json())).collect()
    }
}

/// Timing of every sink.
#[derive(Debug, Clone)]
pub struct SinkTiming {
    /// Readings published before waiting for their acknowledgements.
    pub batch: usize,
    /// How long a lease lasts without renewal (renewed at a third of it).
    pub lease: Duration,
    /// Fallback poll when no commit notification comes.
    pub poll: Duration,
    /// Longest wait between retries while the broker or the store fails.
    pub max_backoff: Duration,
}

impl Default for SinkTiming {
    fn default() -> Self {
        Self {
            batch: 500,
            lease: Duration::from_secs(15),
            poll: Duration::from_secs(2),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// What the sinks need from the rest of the server.
pub struct SinkContext {
    pub store: Arc<dyn Store>,
    pub signals: Signals,
    /// Bumped by the writer after each commit.
    pub commits: watch::Receiver<u64>,
    pub stop: CancellationToken,
    /// The server's recorder: each sink registers its families there.
    pub metrics: Metrics,
}

/// Starts a sink actor per configured broker. Fails (before the server
/// binds) on a URL that cannot work, naming the variable.
pub fn start(settings: &Settings, ctx: SinkContext) -> anyhow::Result<Sinks> {
    let holder: Arc<str> =
        format!("{}:{}:{:08x}", hostname(), std::process::id(), rand_u32()).into();
    let timing = SinkTiming {
        batch: settings.sink_batch.max(1),
        lease: Duration::from_millis(settings.sink_lease_ms.max(300)),
        ..SinkTiming::default()
    };
    // Every setting is checked before any sink starts.
    let nats = match &settings.nats_url {
        Some(url) => Some(nats::NatsBroker::new(
            url.expose(),
            &settings.nats_stream,
            &settings.nats_subject,
        )?),
        None => None,
    };
    let mqtt = match &settings.mqtt_url {
        Some(url) => Some(mqtt::MqttBroker::new(
            url.expose(),
            &settings.mqtt_topic,
            &holder,
        )?),
        None => None,
    };
    let mut sinks = Vec::new();
    if let Some(broker) = nats {
        sinks.push(spawn(broker, &ctx, holder.clone(), timing.clone()));
    }
    if let Some(broker) = mqtt {
        sinks.push(spawn(broker, &ctx, holder.clone(), timing.clone()));
    }
    Ok(Sinks(Arc::new(sinks)))
}

fn spawn<B: Broker>(
    broker: B,
    ctx: &SinkContext,
    holder: Arc<str>,
    timing: SinkTiming,
) -> (&'static str, Arc<SinkStatus>) {
    let status = Arc::new(SinkStatus {
        connected: broker.connected(),
        ..SinkStatus::default()
    });
    let sink = Sink {
        broker,
        store: ctx.store.clone(),
        signals: ctx.signals.clone(),
        commits: ctx.commits.clone(),
        status: status.clone(),
        metrics: ctx.metrics.sink(B::NAME),
        holder,
        timing,
    };
    tokio::spawn(sink.run(ctx.stop.clone()));
    (B::NAME, status)
}

/// The actor of one sink.
pub struct Sink<B: Broker> {
    broker: B,
    store: Arc<dyn Store>,
    signals: Signals,
    commits: watch::Receiver<u64>,
    status: Arc<SinkStatus>,
    metrics: SinkMetrics,
    holder: Arc<str>,
    timing: SinkTiming,
}

/// Where the actor stands with its lease.
struct Held {
    cursor: i64,
    renewed: Instant,
}

impl<B: Broker> Sink<B> {
    /// Runs until `stop`. Nothing is lost by stopping at any point: the
    /// cursor only moves past acknowledged readings.
    pub async fn run(mut self, stop: CancellationToken) {
        let name = B::NAME;
        // Renewals happen between waits: no wait may outlast a third of the lease.
        self.timing.poll = self.timing.poll.min(self.timing.lease / 3);
        self.timing.max_backoff = self.timing.max_backoff.min(self.timing.lease / 3);
        let mut held: Option<Held> = None;
        let mut backoff = self.timing.poll.min(Duration::from_millis(200));
        let mut counted: Option<Instant> = None;
        let mut broker_up = true;
        let SinkMetrics {
            lag: lag_gauge,
            connected: connected_gauge,
            forwarded,
            failures,
        } = self.metrics.clone();
        while !stop.is_cancelled() {
            let connected = self.status.connected.load(Ordering::Relaxed);
            connected_gauge.set(if connected { 1.0 } else { 0.0 });

            // 1. Hold the lease (renewed at a third of its length).
            if held
                .as_ref()
                .is_none_or(|h| h.renewed.elapsed() >= self.timing.lease / 3)
            {
                match self.store.lease_sink(self.lease()).await {
                    Ok(Some(cursor)) => {
                        // Our own cursor in memory is never behind the stored one.
                        let cursor = held.as_ref().map_or(cursor, |h| h.cursor.max(cursor));
                        held = Some(Held {
                            cursor,
                            renewed: Instant::now(),
                        });
                        self.status.active.store(true, Ordering::Relaxed);
                        self.status.position.store(cursor, Ordering::Relaxed);
                    }
                    Ok(None) => {
                        // Another server drives this sink; check again later.
                        held = None;
                        self.status.active.store(false, Ordering::Relaxed);
                        sleep_or_stop(self.timing.lease / 3, &stop).await;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(sink = name, error = %e, "A sink cannot take its lease; retrying.");
                        backoff = self.wait_backoff(backoff, &stop).await;
                        continue;
                    }
                }
            }
            let Some(cursor) = held.as_ref().map(|h| h.cursor) else {
                continue;
            };

            // 2. Read what follows the cursor.
            let rows = match self.store.readings_after(cursor, self.timing.batch).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(sink = name, error = %e, "A sink cannot read the store; retrying.");
                    backoff = self.wait_backoff(backoff, &stop).await;
                    continue;
                }
            };
            let Some(last) = rows.last().map(|(id, _)| *id) else {
                self.set_lag(0, &lag_gauge);
                self.wait_for_commit(&stop).await;
                continue;
            };
            let n = rows.len();
            if n < self.timing.batch {
                self.set_lag(n as u64, &lag_gauge);
            } else if counted.is_none_or(|c| c.elapsed() >= Duration::from_secs(1)) {
                // A backlog: count it at most once a second.
                if let Ok(lag) = self.store.count_after(cursor).await {
                    self.set_lag(lag, &lag_gauge);
                }
                counted = Some(Instant::now());
            }

            // 3. Publish and wait for every acknowledgement.
            let batch: Vec<Outgoing> = rows
                .into_iter()
                .map(|(_, row)| Outgoing::new(row, &self.signals))
                .collect();
            let published = tokio::select! {
                r = self.broker.publish(&batch) => r,
                () = stop.cancelled() => break,
            };
            if let Err(e) = published {
                failures.increment(1);
                if broker_up {
                    tracing::warn!(sink = name, error = %e, "A sink cannot publish; retrying with back-off (readings wait in the store).");
                }
                broker_up = false;
                backoff = self.wait_backoff(backoff, &stop).await;
                continue;
            }
            if !broker_up {
                tracing::info!(sink = name, "A sink publishes again.");
                broker_up = true;
            }
            backoff = Duration::from_millis(200);
            forwarded.increment(n as u64);
            self.status.forwarded.fetch_add(n as u64, Ordering::Relaxed);

            // 4. Move the cursor past the acknowledged batch.
            match self.store.advance_sink(self.lease(), last).await {
                Ok(true) => {
                    if let Some(h) = held.as_mut() {
                        h.cursor = last;
                    }
                    self.status.position.store(last, Ordering::Relaxed);
                    let lag = self.status.lag.load(Ordering::Relaxed);
                    self.set_lag(lag.saturating_sub(n as u64), &lag_gauge);
                }
                Ok(false) => {
                    tracing::warn!(
                        sink = name,
                        "Another server took this sink over; it republishes from its cursor."
                    );
                    held = None;
                    self.status.active.store(false, Ordering::Relaxed);
                }
                Err(e) => {
                    // Published but not recorded: kept in memory while we hold the
                    // lease; after a restart the batch is published again.
                    tracing::warn!(sink = name, error = %e, "A sink cannot store its cursor; retrying.");
                    if let Some(h) = held.as_mut() {
                        h.cursor = last;
                    }
                    backoff = self.wait_backoff(backoff, &stop).await;
                }
            }
        }
        tracing::debug!(sink = name, "The sink stopped.");
    }

    fn lease(&self) -> SinkLease {
        SinkLease {
            sink: B::NAME.into(),
            holder: self.holder.clone(),
            now_ms: now_ms(),
            ttl_ms: self.timing.lease.as_millis() as i64,
        }
    }

    fn set_lag(&self, lag: u64, gauge: &metrics::Gauge) {
        self.status.lag.store(lag, Ordering::Relaxed);
        gauge.set(lag as f64);
    }

    /// Sleeps `backoff` (or until stop) and answers the next one, doubled up to the cap.
    fn wait_backoff(
        &self,
        backoff: Duration,
        stop: &CancellationToken,
    ) -> impl Future<Output = Duration> + Send + 'static {
        let (max, stop) = (self.timing.max_backoff, stop.clone());
        async move {
            sleep_or_stop(backoff, &stop).await;
            (backoff * 2).min(max)
        }
    }

    /// Until the writer commits again, the poll interval passes, or stop.
    async fn wait_for_commit(&mut self, stop: &CancellationToken) {
        let poll = self.timing.poll;
        tokio::select! {
            r = self.commits.changed() => {
                if r.is_err() {
                    // The writer is gone (shutting down): poll only.
                    sleep_or_stop(poll, stop).await;
                }
            }
            () = tokio::time::sleep(poll) => {}
            () = stop.cancelled() => {}
        }
    }
}

async fn sleep_or_stop(d: Duration, stop: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = stop.cancelled() => {}
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".into())
}

fn rand_u32() -> u32 {
    // Distinguishes two starts of the same process id; not a secret.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.subsec_nanos() ^ (t.as_secs() as u32).rotate_left(16)
}
