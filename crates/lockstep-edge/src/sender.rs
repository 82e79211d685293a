//! Sends readings to the cloud: per vehicle session an [`Encoder`], batches
//! cut by size or age, spooled to disk before they are posted, removed when
//! acknowledged; retries with backoff; resyncs on 409.
//!
//! One task per vehicle session. A session keeps at most one request in
//! flight (batches of a session must arrive in sequence order); the number of
//! requests in flight over all vehicles is bounded by a semaphore. While a
//! request is out (or waits to be retried) the vehicle keeps producing
//! readings, which are cut into batches and spooled, up to
//! `max_unacked_batches`; beyond that the vehicle pauses (its readings are
//! produced late, never dropped).
//!
//! On a 409 with `resync_required` the session rewinds its encoder to the
//! first unacknowledged sequence number (or to the server's `next_seq`, if
//! that is later: those readings are already stored) and encodes the
//! unacknowledged readings again, starting with a keyframe. A
//! `catalog_mismatch` is fatal. Other 4xx answers mean the batch can never
//! be accepted: it is moved to `rejected/` in the spool and the session goes on.
//!
//! Cancellation (SIGTERM/SIGINT) stops production, cuts the open batch into
//! the spool and keeps sending until everything is acknowledged or the grace
//! period ends; whatever is left stays spooled for the next start.

use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use indicatif::ProgressBar;
use lockstep_codec::seed::SeedPredictor;
use lockstep_codec::{Catalog, Encoder, EncoderConfig, Reading, Vin};
use lockstep_proto::{CONTENT_TYPE_BATCH, CONTENT_TYPE_SEED};
use prost::Message;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::spool::{Spool, SpooledBatch};

/// How the sender behaves (everything a test may want to change).
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// Base URL of the server, e.g. `http://127.0.0.1:8001`.
    pub server: String,
    /// Cut a batch at this many readings.
    pub max_batch_readings: usize,
    /// Cut a batch when its first reading is this old (wall clock).
    pub max_batch_delay: Duration,
    /// After cancellation, keep sending for this long.
    pub grace: Duration,
    /// Requests in flight over all vehicles.
    pub max_in_flight: usize,
    /// Unacknowledged batches a vehicle may hold before it pauses.
    pub max_unacked_batches: usize,
    pub request_timeout: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Send the seed form (one `TelemetryReading` per POST) instead of batches.
    pub seed_wire: bool,
    /// Replays: keep a per-VIN cursor in the spool so a restart resumes.
    pub resume_cursor: bool,
    /// PEM CA certificate(s) an `https://` server must chain to, instead of
    /// the system's roots (a private CA or a self-signed server).
    pub ca_cert: Option<PathBuf>,
    /// PEM certificate chain and private key of this device, presented to a
    /// server that asks for client certificates (mutual TLS).
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            server: "http://127.0.0.1:8001".into(),
            max_batch_readings: 60,
            max_batch_delay: Duration::from_secs(2),
            grace: Duration::from_secs(3),
            max_in_flight: 32,
            max_unacked_batches: 1000,
            request_timeout: Duration::from_secs(10),
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            seed_wire: false,
            resume_cursor: false,
            ca_cert: None,
            client_cert: None,
        }
    }
}

/// Counters of one vehicle (or, merged, of the run).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Readings produced (and encoded).
    pub readings: u64,
    /// Non-null fields of those readings.
    pub fields: u64,
    /// Fields the encoder transmitted (first encoding; resyncs not counted).
    pub fields_transmitted: u64,
    /// Batches (or seed readings) acknowledged.
    pub acked: u64,
    /// Readings acknowledged.
    pub readings_acked: u64,
    /// Body bytes of acknowledged requests.
    pub bytes_acked: u64,
    /// Body bytes of every request posted, retries included.
    pub bytes_posted: u64,
    pub requests: u64,
    /// Failed attempts that were retried (503, network errors, timeouts, ...).
    pub retries: u64,
    /// 409 resync answers handled.
    pub resyncs: u64,
    /// Acknowledged as duplicates (already stored).
    pub duplicates: u64,
    /// Batches refused for good and moved to `rejected/`.
    pub rejected: u64,
    /// Batches of this run left in the spool at exit.
    pub left_spooled: u64,
}

impl Stats {
    pub fn merge(&mut self, o: &Stats) {
        self.readings += o.readings;
        self.fields += o.fields;
        self.fields_transmitted += o.fields_transmitted;
        self.acked += o.acked;
        self.readings_acked += o.readings_acked;
        self.bytes_acked += o.bytes_acked;
        self.bytes_posted += o.bytes_posted;
        self.requests += o.requests;
        self.retries += o.retries;
        self.resyncs += o.resyncs;
        self.duplicates += o.duplicates;
        self.rejected += o.rejected;
        self.left_spooled += o.left_spooled;
    }

    /// Share of non-null fields not transmitted.
    pub fn skipped_fraction(&self) -> f64 {
        if self.fields == 0 {
            0.0
        } else {
            1.0 - self.fields_transmitted as f64 / self.fields as f64
        }
    }
}

/// What the server answered, classified.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Ack {
        duplicate: bool,
    },
    /// Try again later (503, 429, 5xx, network error, timeout).
    Retry {
        after: Option<Duration>,
        why: String,
    },
    /// 409 with `resync_required`.
    Resync {
        kind: String,
        next_seq: Option<u64>,
    },
    /// 4xx: this request can never succeed.
    Reject {
        status: u16,
        message: String,
    },
}

/// Run-wide counters, updated by every vehicle task (relaxed atomics: for display only).
#[derive(Debug, Default)]
pub struct Live {
    pub readings: AtomicU64,
    pub readings_acked: AtomicU64,
    pub retries: AtomicU64,
    pub resyncs: AtomicU64,
}

impl Live {
    fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
}

/// Handles shared by every vehicle task.
#[derive(Clone)]
pub struct Shared {
    pub config: Arc<SenderConfig>,
    pub catalog: Arc<Catalog>,
    pub spool: Spool,
    pub cancel: CancellationToken,
    pub progress: Option<ProgressBar>,
    /// Run-wide counters for periodic progress lines.
    pub live: Arc<Live>,
    client: reqwest::Client,
    url: Arc<str>,
    in_flight: Arc<Semaphore>,
}

impl Shared {
    pub fn new(
        config: SenderConfig,
        catalog: Arc<Catalog>,
        spool: Spool,
        cancel: CancellationToken,
        progress: Option<ProgressBar>,
    ) -> Result<Self> {
        let mut builder = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .user_agent(concat!("lockstep-edge/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("--ca-cert {}: cannot read", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("--ca-cert {}: not PEM certificates", path.display()))?;
            builder = builder.tls_certs_only(certs);
        }
        if let Some((cert, key)) = &config.client_cert {
            let mut pem = std::fs::read(cert)
                .with_context(|| format!("--client-cert {}: cannot read", cert.display()))?;
            pem.extend(
                std::fs::read(key)
                    .with_context(|| format!("--client-key {}: cannot read", key.display()))?,
            );
            builder = builder.identity(
                reqwest::Identity::from_pem(&pem)
                    .context("--client-cert/--client-key do not form a usable identity")?,
            );
        }
        let client = builder.build().context("cannot build the HTTP client")?;
        let url: Arc<str> = format!("{}/api/telemetry", config.server.trim_end_matches('/')).into();
        let in_flight = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
        Ok(Self {
            config: Arc::new(config),
            catalog,
            spool,
            cancel,
            progress,
            live: Arc::default(),
            client,
            url,
            in_flight,
        })
    }

    /// Posts one body and classifies the answer.
    pub async fn post(&self, content_type: &'static str, body: Bytes) -> Reply {
        let _permit = self.in_flight.acquire().await;
        let res = self
            .client
            .post(&*self.url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await;
        let resp = match res {
            Ok(r) => r,
            Err(e) => {
                return Reply::Retry {
                    after: None,
                    why: format!("request failed: {e}"),
                };
            }
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = resp.text().await.unwrap_or_default();
        let json: serde_json::Value =
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        let message = json
            .get("error")
            .and_then(|e| e.as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| text.chars().take(200).collect());
        match status.as_u16() {
            200..=299 => Reply::Ack {
                duplicate: json
                    .get("duplicate")
                    .and_then(|d| d.as_bool())
                    .unwrap_or(false),
            },
            409 if json.get("resync_required").and_then(|v| v.as_bool()) == Some(true) => {
                Reply::Resync {
                    kind: json
                        .get("kind")
                        .and_then(|k| k.as_str())
                        .unwrap_or("unknown")
                        .to_owned(),
                    next_seq: json.get("next_seq").and_then(|n| n.as_u64()),
                }
            }
            408 | 429 | 500..=599 => Reply::Retry {
                after: retry_after,
                why: format!("HTTP {status}: {message}"),
            },
            s => Reply::Reject { status: s, message },
        }
    }
}

/// When readings are due.
#[derive(Debug, Clone, Copy)]
pub enum Pace {
    /// As fast as the server acknowledges.
    Asap,
    /// Reading with timestamp `t` is due at `start + (t - first_ts) / speed`.
    Scaled {
        start: Instant,
        first_ts: i64,
        speed: f64,
    },
}

impl Pace {
    fn due(&self, ts: i64) -> Instant {
        match *self {
            Pace::Asap => Instant::now(),
            Pace::Scaled {
                start,
                first_ts,
                speed,
            } => {
                start
                    + Duration::from_secs_f64(
                        ((ts - first_ts).max(0) as f64 / 1000.0) / speed.max(1e-9),
                    )
            }
        }
    }
}

/// Readings of one vehicle, produced lazily.
pub type ReadingSource = Box<dyn Iterator<Item = Reading> + Send>;

/// One vehicle session: its encoder, its unacknowledged batches and the
/// readings of the batch being filled.
pub struct Session {
    enc: Encoder,
    unacked: VecDeque<SpooledBatch>,
    open: Vec<Reading>,
    open_since: Option<Instant>,
    pub stats: Stats,
}

impl Session {
    /// A new session with a random non-zero id.
    pub fn new(catalog: Arc<Catalog>, vin: Vin) -> Self {
        let session_id = loop {
            let id: u64 = rand::random();
            if id != 0 {
                break id;
            }
        };
        Self::with_id(catalog, vin, session_id)
    }

    pub fn with_id(catalog: Arc<Catalog>, vin: Vin, session_id: u64) -> Self {
        Self {
            enc: Encoder::new(catalog, vin, session_id, EncoderConfig::default()),
            unacked: VecDeque::new(),
            open: Vec::new(),
            open_since: None,
            stats: Stats::default(),
        }
    }

    /// A session that only has to deliver batches found in the spool.
    pub fn recovered(catalog: Arc<Catalog>, batches: Vec<SpooledBatch>) -> Result<Self> {
        let first = batches.first().context("no batches")?;
        let vin = Vin::parse(&first.vin).with_context(|| format!("spooled VIN {:?}", first.vin))?;
        let mut s = Self::with_id(catalog, vin, first.session_id);
        if let Some(last) = batches.last() {
            s.enc.rewind(last.end_seq());
        }
        s.unacked = batches.into();
        Ok(s)
    }

    pub fn vin(&self) -> &Vin {
        self.enc.vin()
    }

    pub fn session_id(&self) -> u64 {
        self.enc.session_id()
    }

    /// Nothing left to send.
    pub fn is_idle(&self) -> bool {
        self.unacked.is_empty() && self.open.is_empty()
    }

    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// Adds one reading to the open batch; it is encoded when the batch is cut.
    pub fn push(&mut self, r: Reading) {
        let present = r
            .values
            .iter()
            .filter(|v| v.is_some_and(f64::is_finite))
            .count() as u64;
        self.stats.readings += 1;
        self.stats.fields += present;
        if self.open.is_empty() {
            self.open_since = Some(Instant::now());
        }
        self.open.push(r);
    }

    /// Encodes the open readings and spools them as one batch. Encoding at
    /// the cut lets each reading see the rest of its batch (lookahead: held
    /// values are sent as the middle of what follows), at no extra latency.
    pub fn cut(&mut self, spool: &Spool) -> Result<Option<&SpooledBatch>> {
        self.cut_counting(spool, true)
    }

    fn cut_counting(&mut self, spool: &Spool, count: bool) -> Result<Option<&SpooledBatch>> {
        for (j, r) in self.open.iter().enumerate() {
            let frame = self.enc.push_with_lookahead(r, &self.open[j + 1..]);
            if count {
                self.stats.fields_transmitted += u64::from(frame.transmitted.count_ones());
            }
        }
        let Some(batch) = self.enc.take_batch() else {
            return Ok(None);
        };
        let sb = SpooledBatch {
            vin: batch.vehicle_vin.clone(),
            session_id: batch.session_id,
            first_seq: batch.first_seq,
            catalog_hash: batch.catalog_hash,
            readings: std::mem::take(&mut self.open),
            body: batch.encode_to_vec(),
        };
        self.open_since = None;
        spool.write(&sb)?;
        self.unacked.push_back(sb);
        Ok(self.unacked.back())
    }

    /// The front batch was acknowledged.
    pub fn acked(&mut self, spool: &Spool) -> Result<()> {
        if let Some(b) = self.unacked.pop_front() {
            spool.remove(&b)?;
            self.stats.acked += 1;
            self.stats.readings_acked += b.readings.len() as u64;
            self.stats.bytes_acked += b.body.len() as u64;
        }
        Ok(())
    }

    /// Re-encodes everything unacknowledged from a keyframe (see the module doc).
    /// Returns the sequence number it restarted from.
    pub fn resync(&mut self, spool: &Spool, server_next: Option<u64>) -> Result<u64> {
        // Open readings are not encoded yet: the encoder ends where they begin.
        let end = self.enc.next_seq();
        let first_unacked = self.unacked.front().map_or(end, |b| b.first_seq);
        let start = match server_next {
            Some(n) if n > first_unacked && n <= end => n,
            _ => first_unacked,
        };
        let old: Vec<SpooledBatch> = self.unacked.drain(..).collect();
        let open = std::mem::take(&mut self.open);
        self.enc.rewind(start);
        for b in &old {
            let skip = start.saturating_sub(b.first_seq) as usize;
            self.open = b.readings.iter().skip(skip).cloned().collect();
            // Write the new file before removing the old one: a crash in
            // between leaves both, and the server answers the older one as a duplicate.
            let new_name = self
                .cut_counting(spool, false)?
                .map(SpooledBatch::file_name);
            if new_name.as_deref() != Some(&b.file_name()) {
                spool.remove(b)?;
            }
        }
        self.open = open;
        if !self.open.is_empty() {
            self.open_since = Some(Instant::now());
        }
        self.stats.resyncs += 1;
        Ok(start)
    }
}

/// Runs blocking spool I/O (write + fdatasync, ~1 ms) without stalling the
/// other tasks of a multi-threaded runtime.
fn disk<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Cuts the open batch into the spool and, for replays, moves the cursor past it.
fn cut_marking(session: &mut Session, spool: &Spool, cursor: bool) -> Result<()> {
    let last_ts = session.open.last().map(|r| r.timestamp_ms);
    session.cut(spool)?;
    if let (true, Some(ts)) = (cursor, last_ts) {
        spool.set_cursor(session.vin().as_str(), ts)?;
    }
    Ok(())
}

type Inflight = Pin<Box<dyn Future<Output = Reply> + Send>>;

async fn maybe(f: &mut Option<Inflight>) -> Reply {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

async fn sleep_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Runs one session until its source is exhausted and everything is
/// acknowledged, or until cancellation plus the grace period.
pub async fn run_session(
    shared: Shared,
    mut session: Session,
    source: Option<ReadingSource>,
    pace: Pace,
) -> Result<Stats> {
    let cfg = shared.config.clone();
    let spool = &shared.spool;
    let vin = session.vin().to_string();
    let mut source = source.map(|s| s.peekable());
    let mut inflight: Option<Inflight> = None;
    let mut retry_at: Option<Instant> = None;
    let mut deadline: Option<Instant> = None;
    let mut backoff = Backoff::new(cfg.backoff_base, cfg.backoff_max);
    let mut finished_source = source.is_none();
    // Only a session that replays a source moves (and finally clears) the replay cursor.
    let cursor = cfg.resume_cursor && source.is_some();
    let mut resyncs_in_a_row = 0u32;
    loop {
        // Start sending the front batch when nothing is in flight and no retry is pending.
        if inflight.is_none() && retry_at.is_none_or(|t| t <= Instant::now()) {
            retry_at = None;
            if let Some(front) = session.unacked.front() {
                let body = Bytes::from(front.body.clone());
                session.stats.requests += 1;
                session.stats.bytes_posted += body.len() as u64;
                let sh = shared.clone();
                inflight = Some(Box::pin(
                    async move { sh.post(CONTENT_TYPE_BATCH, body).await },
                ));
            }
        }
        if finished_source && session.is_idle() && inflight.is_none() {
            break;
        }
        let cancelling = deadline.is_some();
        let next_due = match source.as_mut().and_then(|s| s.peek()) {
            Some(r) if !cancelling && session.unacked() < cfg.max_unacked_batches => {
                Some(pace.due(r.timestamp_ms))
            }
            _ => None,
        };
        let cut_at = session.open_since.map(|t| t + cfg.max_batch_delay);
        tokio::select! {
            biased;
            _ = shared.cancel.cancelled(), if !cancelling => {
                deadline = Some(Instant::now() + cfg.grace);
                source = None;
                finished_source = true;
                disk(|| cut_marking(&mut session, spool, cursor))?;
            }
            _ = sleep_opt(deadline) => break,
            reply = maybe(&mut inflight) => {
                inflight = None;
                match reply {
                    Reply::Ack { duplicate } => {
                        if backoff.failures() > 0 {
                            tracing::info!(vin = %vin, failures = backoff.failures(), "The server takes batches again.");
                        }
                        backoff.reset();
                        resyncs_in_a_row = 0;
                        session.stats.duplicates += u64::from(duplicate);
                        Live::add(&shared.live.readings_acked, session.unacked.front().map_or(0, |b| b.readings.len() as u64));
                        disk(|| session.acked(spool))?;
                    }
                    Reply::Retry { after, why } => {
                        session.stats.retries += 1;
                        Live::add(&shared.live.retries, 1);
                        let d = backoff.next_delay(after, &mut rand::rng());
                        if backoff.failures() == 1 || backoff.failures().is_multiple_of(10) {
                            tracing::warn!(vin = %vin, failures = backoff.failures(), retry_in_ms = d.as_millis() as u64, "The server did not take a batch ({why}); retrying.");
                        }
                        retry_at = Some(Instant::now() + d);
                    }
                    Reply::Resync { kind, next_seq } => {
                        if kind == "catalog_mismatch" {
                            bail!("the server uses a different signal catalog than this edge (catalog hash {:016x}); update the edge or the server so both use the same catalog", shared.catalog.hash());
                        }
                        let from = disk(|| session.resync(spool, next_seq))?;
                        Live::add(&shared.live.resyncs, 1);
                        tracing::info!(vin = %vin, kind = %kind, from_seq = from, "The server asked for a resync; re-sending unacknowledged readings from a keyframe.");
                        // A server that keeps asking for resyncs is not hammered.
                        resyncs_in_a_row += 1;
                        if resyncs_in_a_row > 2 {
                            retry_at = Some(Instant::now() + backoff.next_delay(None, &mut rand::rng()));
                        }
                    }
                    Reply::Reject { status, message } => {
                        backoff.reset();
                        if let Some(b) = session.unacked.pop_front() {
                            tracing::error!(vin = %vin, status, first_seq = b.first_seq, "The server refused a batch for good ({message}); it was moved to the spool's rejected/ folder.");
                            disk(|| spool.reject(&b, &format!("HTTP {status}: {message}")))?;
                            session.stats.rejected += 1;
                        }
                    }
                }
            }
            _ = sleep_opt(next_due) => {
                let s = source.as_mut().expect("due only with a source");
                let r = s.next().expect("peeked");
                session.push(r);
                Live::add(&shared.live.readings, 1);
                if let Some(p) = &shared.progress {
                    p.inc(1);
                }
                let exhausted = s.peek().is_none();
                if session.open.len() >= cfg.max_batch_readings || exhausted {
                    disk(|| cut_marking(&mut session, spool, cursor))?;
                }
                if exhausted {
                    source = None;
                    finished_source = true;
                }
            }
            _ = sleep_opt(cut_at) => disk(|| cut_marking(&mut session, spool, cursor))?,
            _ = sleep_opt(retry_at) => {}
        }
    }
    // Cancelled with a batch still open (cut failed earlier or readings after cut): spool it.
    if !session.open.is_empty() {
        disk(|| cut_marking(&mut session, spool, cursor))?;
    }
    if cursor && session.is_idle() && deadline.is_none() {
        spool.clear_cursor(&vin);
    }
    session.stats.left_spooled = session.unacked.len() as u64;
    Ok(session.stats)
}

/// Seed wire form: one `TelemetryReading` per POST, encoded with the seed
/// predictor (speed, battery, power, heading only). Each reading is retried
/// until acknowledged; no spool (the seed protocol has no sequence numbers to
/// resume from; the reading in hand is retried in memory). A field the source
/// does not have is left out (`SeedPredictor::encode_partial`): the cloud stores
/// null while that field was never sent, its prediction afterwards — the seed
/// form cannot say "no value" once a field has state.
pub async fn run_seed(
    shared: Shared,
    vin: Vin,
    source: ReadingSource,
    pace: Pace,
) -> Result<Stats> {
    let mut stats = Stats::default();
    let mut pred = SeedPredictor::default();
    let tolerances: [f64; 4] = std::array::from_fn(|i| {
        shared
            .catalog
            .signals()
            .get(i)
            .map_or(1.0, |s| s.tolerance())
    });
    let mut backoff = Backoff::new(shared.config.backoff_base, shared.config.backoff_max);
    'readings: for r in source {
        tokio::select! {
            _ = shared.cancel.cancelled() => break,
            _ = tokio::time::sleep_until(pace.due(r.timestamp_ms)) => {}
        }
        let actual: [Option<f64>; 4] = std::array::from_fn(|i| r.values.get(i).copied().flatten());
        let msg = pred.encode_partial(vin.as_str(), r.timestamp_ms, actual, tolerances);
        stats.readings += 1;
        stats.fields += r.values.iter().take(4).filter(|v| v.is_some()).count() as u64;
        stats.fields_transmitted += [msg.speed, msg.battery, msg.power, msg.heading]
            .iter()
            .filter(|v| v.is_some())
            .count() as u64;
        Live::add(&shared.live.readings, 1);
        if let Some(p) = &shared.progress {
            p.inc(1);
        }
        let body = Bytes::from(msg.encode_to_vec());
        loop {
            stats.requests += 1;
            stats.bytes_posted += body.len() as u64;
            let reply = tokio::select! {
                _ = shared.cancel.cancelled() => break 'readings,
                reply = shared.post(CONTENT_TYPE_SEED, body.clone()) => reply,
            };
            match reply {
                Reply::Ack { duplicate } => {
                    backoff.reset();
                    stats.acked += 1;
                    stats.readings_acked += 1;
                    Live::add(&shared.live.readings_acked, 1);
                    stats.duplicates += u64::from(duplicate);
                    stats.bytes_acked += body.len() as u64;
                    break;
                }
                Reply::Retry { after, why } => {
                    stats.retries += 1;
                    Live::add(&shared.live.retries, 1);
                    let d = backoff.next_delay(after, &mut rand::rng());
                    if backoff.failures() == 1 {
                        tracing::warn!(vin = %vin, "The server did not take a seed reading ({why}); retrying.");
                    }
                    tokio::select! {
                        _ = shared.cancel.cancelled() => break 'readings,
                        _ = tokio::time::sleep(d) => {}
                    }
                }
                Reply::Resync { kind, .. } => {
                    return Err(anyhow!(
                        "the server answered a seed reading with a resync request ({kind})"
                    ));
                }
                Reply::Reject { status, message } => {
                    stats.rejected += 1;
                    tracing::error!(vin = %vin, status, "The server refused a seed reading ({message}); skipping it.");
                    break;
                }
            }
        }
    }
    Ok(stats)
}

/// Sends every batch left in the spool by an earlier run, session by session
/// (concurrently), before anything new. Returns the merged stats.
pub async fn drain_spool(shared: &Shared) -> Result<Stats> {
    let (batches, bad) = shared.spool.load_all()?;
    for b in &bad {
        tracing::warn!("A spool file could not be read and was moved to corrupt/: {b}");
    }
    let mut stats = Stats::default();
    if batches.is_empty() {
        return Ok(stats);
    }
    let mut groups: Vec<Vec<SpooledBatch>> = Vec::new();
    for b in batches {
        if b.catalog_hash != shared.catalog.hash() {
            tracing::warn!(vin = %b.vin, "A spooled batch was encoded with another catalog ({:016x}); it was moved to rejected/.", b.catalog_hash);
            shared.spool.reject(&b, "encoded with another catalog")?;
            stats.rejected += 1;
            continue;
        }
        match groups.last_mut() {
            Some(g) if g[0].vin == b.vin && g[0].session_id == b.session_id => g.push(b),
            _ => groups.push(vec![b]),
        }
    }
    let n: usize = groups.iter().map(Vec::len).sum();
    tracing::info!(
        batches = n,
        sessions = groups.len(),
        "Sending batches left in the spool by an earlier run first."
    );
    let mut set = tokio::task::JoinSet::new();
    for g in groups {
        let session = Session::recovered(shared.catalog.clone(), g)?;
        set.spawn(run_session(shared.clone(), session, None, Pace::Asap));
    }
    while let Some(r) = set.join_next().await {
        stats.merge(&r.context("spool task panicked")??);
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::Vehicle;
    use lockstep_codec::{BatchOutcome, CheckedBatch};

    fn session_with_batches(spool: &Spool) -> (Session, Vec<Reading>) {
        let catalog = Arc::new(Catalog::default_v1());
        let mut v = Vehicle::new(3, 0, 1_000_000, 1000);
        let mut s = Session::with_id(catalog, v.vin.clone(), 77);
        let readings: Vec<Reading> = (0..55).map(|_| v.next_reading()).collect();
        for (i, r) in readings.iter().enumerate() {
            s.push(r.clone());
            if i % 10 == 9 {
                s.cut(spool).unwrap();
            }
        }
        (s, readings)
    }

    /// Decodes the session's unacknowledged batches from scratch (a server without state).
    fn decode_all(s: &Session) -> Vec<(u64, i64)> {
        let catalog = Catalog::default_v1();
        let mut state = None;
        let mut out = Vec::new();
        for b in &s.unacked {
            let cb = CheckedBatch::parse(&catalog, &b.body).unwrap();
            match cb.decode(&catalog, state.as_ref()).unwrap() {
                BatchOutcome::Fresh {
                    readings,
                    state: st,
                } => {
                    out.extend(readings.iter().map(|r| (r.seq, r.timestamp_ms)));
                    state = Some(st);
                }
                BatchOutcome::Duplicate => panic!("duplicate"),
            }
        }
        out
    }

    #[test]
    fn resync_restarts_from_the_first_unacknowledged_reading_with_a_keyframe() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let (mut s, readings) = session_with_batches(&spool);
        assert_eq!((s.unacked(), s.open.len(), spool.count()), (5, 5, 5));
        s.acked(&spool).unwrap();
        s.acked(&spool).unwrap();
        assert_eq!(spool.count(), 3);

        assert_eq!(s.resync(&spool, None).unwrap(), 20);
        assert_eq!(
            s.unacked
                .iter()
                .map(|b| (b.first_seq, b.readings.len()))
                .collect::<Vec<_>>(),
            vec![(20, 10), (30, 10), (40, 10)]
        );
        assert_eq!(s.open.len(), 5, "the open readings are kept");
        assert_eq!(spool.count(), 3, "spool files replaced, not added");
        let front = CheckedBatch::parse(&Catalog::default_v1(), &s.unacked[0].body).unwrap();
        assert!(front.starts_with_keyframe());
        // A server without state accepts them, and every reading keeps its seq and timestamp.
        let got = decode_all(&s);
        assert_eq!(
            got,
            (20..50)
                .map(|q| (q, readings[q as usize].timestamp_ms))
                .collect::<Vec<_>>()
        );
        // The open batch continues the sequence.
        s.cut(&spool).unwrap();
        assert_eq!(s.unacked.back().unwrap().first_seq, 50);
        assert_eq!(decode_all(&s).len(), 35);
    }

    #[test]
    fn resync_after_an_overlap_skips_what_the_server_already_has() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let (mut s, _) = session_with_batches(&spool);
        s.acked(&spool).unwrap();
        // The server stored up to seq 24 (an acknowledgement got lost) and expects 25.
        assert_eq!(s.resync(&spool, Some(25)).unwrap(), 25);
        assert_eq!(
            s.unacked
                .iter()
                .map(|b| (b.first_seq, b.readings.len()))
                .collect::<Vec<_>>(),
            vec![(25, 5), (30, 10), (40, 10)]
        );
        assert_eq!(spool.load_all().unwrap().0.len(), 3);
        assert_eq!(decode_all(&s).first().unwrap().0, 25);
        // A server `next_seq` behind ours (a gap: it lost readings we consider acknowledged)
        // cannot be honoured: restart from our first unacknowledged reading.
        assert_eq!(s.resync(&spool, Some(3)).unwrap(), 25);
    }
}
