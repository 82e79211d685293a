//! Sends readings to the cloud: per vehicle session an [`Encoder`] (or the
//! seed predictor), batches cut by size or age, spooled to disk before they
//! are posted, removed when acknowledged; retries with backoff; resyncs on 409.
//!
//! One task per vehicle session ([`actor::SessionActor`]). A session keeps at
//! most one request in flight (batches of a session must arrive in sequence
//! order); the number of requests in flight over all vehicles is bounded by a
//! semaphore. While a request is out (or waits to be retried) the vehicle
//! keeps producing readings, which are cut into batches and spooled, up to
//! `max_unacked_batches`; beyond that the vehicle pauses (its readings are
//! produced late, never dropped).
//!
//! Answers: 2xx removes the batch from the spool. 503, 429, 408, other 5xx
//! and network errors are retried (backoff with jitter, `Retry-After`
//! honoured); a connection failure or 5xx also moves to the next `--server`
//! ([`servers::Servers`]). On a 409 with `resync_required` the session
//! rewinds its encoder to the first unacknowledged sequence number (or to the
//! server's `next_seq`, if that is later: those readings are already stored)
//! and encodes the unacknowledged readings again, starting with a keyframe. A
//! `catalog_mismatch` is fatal, so are 401/403 (the device is not allowed:
//! retrying cannot help) and an untrusted TLS certificate. A 413 splits the
//! batch in halves and sends them again, down to single readings. Other 4xx
//! answers to a single reading (or a batch that cannot be split) mean it can
//! never be accepted: it is moved to `rejected/` in the spool and the session
//! goes on.
//!
//! The seed wire form (`seed_wire`) goes the same way with one reading per
//! spool file and per POST (session id 0, the reading's timestamp as its
//! sequence number: what the server stores for seed readings).
//!
//! Cancellation (SIGTERM/SIGINT) stops production, cuts the open batch into
//! the spool and keeps sending until everything is acknowledged or the grace
//! period ends; whatever is left stays spooled for the next start.

pub mod actor;
pub mod client;
pub mod servers;
pub mod session;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use indicatif::ProgressBar;
use lockstep_codec::{Catalog, Reading};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use actor::{SessionActor, run_session};
pub use servers::Servers;
pub use session::Session;

use crate::spool::{Spool, SpooledBatch};

/// The device token: printed as `***` so a logged config never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceToken(String);

impl DeviceToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The token itself, for the `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for DeviceToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeviceToken(***)")
    }
}

/// Certificate files for https:// servers (PEM); all optional.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// A CA to trust besides the system's (a private CA or a self-signed server).
    pub ca_cert: Option<PathBuf>,
    /// The client certificate for mutual TLS (with `client_key`).
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// How the sender behaves (everything a test may want to change).
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// Base URLs of the servers, e.g. `http://127.0.0.1:8001`: the first is
    /// preferred, the others take over on connection failures and 5xx.
    pub servers: Vec<String>,
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
    /// After failing over, go back to the first server once this long has passed.
    pub failback_after: Duration,
    /// Send the seed form (one `TelemetryReading` per POST) instead of batches.
    pub seed_wire: bool,
    /// Replays: keep a per-VIN cursor in the spool so a restart resumes.
    pub resume_cursor: bool,
    /// Device token: `Authorization: Bearer <token>` on every request.
    pub token: Option<DeviceToken>,
    pub tls: TlsFiles,
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            servers: vec!["http://127.0.0.1:8001".into()],
            max_batch_readings: 60,
            max_batch_delay: Duration::from_secs(2),
            grace: Duration::from_secs(3),
            max_in_flight: 32,
            max_unacked_batches: 1000,
            request_timeout: Duration::from_secs(10),
            backoff_base: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            failback_after: Duration::from_secs(60),
            seed_wire: false,
            resume_cursor: false,
            token: None,
            tls: TlsFiles::default(),
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
    /// Failed attempts that were retried (503, 429, network errors, timeouts, ...).
    pub retries: u64,
    /// 409 resync answers handled.
    pub resyncs: u64,
    /// 413 answers handled by splitting the batch.
    pub splits: u64,
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
        self.splits += o.splits;
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
    /// Try again later (503, 429, 408, 5xx, network error, timeout).
    Retry {
        after: Option<Duration>,
        why: String,
        /// The server failed (connection, 5xx), rather than asked us to slow
        /// down (429, 408): try the next server.
        failover: bool,
    },
    /// 409 with `resync_required`.
    Resync {
        kind: String,
        next_seq: Option<u64>,
    },
    /// 413: the body is too large for the server; smaller batches may pass.
    TooLarge {
        message: String,
    },
    /// Retrying cannot help and no batch of this stream will pass (401/403,
    /// an untrusted certificate): the run stops, the spool keeps everything.
    Fatal {
        why: String,
    },
    /// Other 4xx: this request can never succeed.
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

    /// Reads a counter.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
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
    /// The servers, and which one is in use.
    pub servers: Arc<Servers>,
    client: reqwest::Client,
    in_flight: Arc<Semaphore>,
}

impl Shared {
    /// Builds the HTTP client (token, TLS files) and checks the server URLs:
    /// a bad setting fails here, before anything is produced.
    pub fn new(
        config: SenderConfig,
        catalog: Arc<Catalog>,
        spool: Spool,
        cancel: CancellationToken,
        progress: Option<ProgressBar>,
    ) -> Result<Self> {
        let client = client::build(&config).context("cannot build the HTTP client")?;
        let servers = Arc::new(Servers::new(&config.servers, config.failback_after)?);
        let in_flight = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
        Ok(Self {
            config: Arc::new(config),
            catalog,
            spool,
            cancel,
            progress,
            live: Arc::default(),
            servers,
            client,
            in_flight,
        })
    }

    /// Posts one body to the server in use and classifies the answer; a
    /// connection failure or 5xx moves on to the next server.
    pub async fn post(&self, content_type: &'static str, body: Bytes) -> Reply {
        let _permit = self.in_flight.acquire().await;
        let (index, url) = self.servers.pick();
        let res = self
            .client
            .post(&*url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body)
            .send()
            .await;
        let reply = match res {
            Ok(resp) => client::classify(resp).await,
            Err(e) => client::classify_error(&url, &e),
        };
        if let Reply::Retry { failover: true, .. } = reply {
            self.servers.failed(index);
        }
        reply
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
    pub fn due(&self, ts: i64) -> Instant {
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

/// Runs blocking spool I/O (write + fdatasync, ~1 ms) without stalling the
/// other tasks of a multi-threaded runtime.
fn disk<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Sends every batch left in the spool by an earlier run, session by session
/// (concurrently), before anything new. Returns the merged stats.
pub async fn drain_spool(shared: &Shared) -> Result<Stats> {
    let (batches, bad) = disk(|| shared.spool.load_all())?;
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
            disk(|| shared.spool.reject(&b, "encoded with another catalog"))?;
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
    join_sessions(shared, &mut set, &mut stats).await?;
    Ok(stats)
}

/// Waits for every session task, merging their stats into `stats`. The
/// first fatal error (catalog mismatch, 401/403, untrusted certificate, spool
/// I/O) cancels the others (their spools are kept) and is returned.
pub async fn join_sessions(
    shared: &Shared,
    set: &mut tokio::task::JoinSet<Result<Stats>>,
    stats: &mut Stats,
) -> Result<()> {
    let mut first_err = None;
    while let Some(res) = set.join_next().await {
        match res.context("a vehicle task panicked").and_then(|r| r) {
            Ok(s) => stats.merge(&s),
            Err(e) => {
                shared.cancel.cancel();
                first_err.get_or_insert(e);
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}
