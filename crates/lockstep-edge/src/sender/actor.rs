//! The task that drives one [`Session`]: produces its readings at their pace,
//! cuts and spools batches, sends the front batch, and handles each answer.
//! One `select!` over the events (cancellation, grace deadline, the answer in
//! flight, the next reading due, the open batch's age, a retry timer), one
//! method per event.

use std::future::Future;
use std::iter::Peekable;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::{Result, bail};
use bytes::Bytes;
use tokio::time::Instant;

use super::{Live, Pace, ReadingSource, Reply, SenderConfig, Session, Shared, Stats, disk};
use crate::backoff::Backoff;

type Inflight = Pin<Box<dyn Future<Output = Reply> + Send>>;

/// One vehicle session's sender (see the module doc of [`super`]).
pub struct SessionActor {
    shared: Shared,
    cfg: Arc<SenderConfig>,
    session: Session,
    vin: String,
    /// Readings still to produce; `None` once exhausted or cancelled.
    source: Option<Peekable<ReadingSource>>,
    pace: Pace,
    /// The request out for the front batch.
    inflight: Option<Inflight>,
    /// No request before this (backoff, `Retry-After`).
    retry_at: Option<Instant>,
    /// End of the grace period, once cancelled.
    deadline: Option<Instant>,
    backoff: Backoff,
    /// Only a session that replays a source moves (and finally clears) the replay cursor.
    cursor: bool,
    resyncs_in_a_row: u32,
}

impl SessionActor {
    pub fn new(
        shared: Shared,
        session: Session,
        source: Option<ReadingSource>,
        pace: Pace,
    ) -> Self {
        let cfg = shared.config.clone();
        Self {
            vin: session.vin().to_string(),
            backoff: Backoff::new(cfg.backoff_base, cfg.backoff_max),
            cursor: cfg.resume_cursor && source.is_some(),
            source: source.map(Iterator::peekable),
            shared,
            cfg,
            session,
            pace,
            inflight: None,
            retry_at: None,
            deadline: None,
            resyncs_in_a_row: 0,
        }
    }

    /// Runs until the source is exhausted and everything is acknowledged, or
    /// until cancellation plus the grace period. An error (catalog mismatch,
    /// 401/403, untrusted certificate, spool I/O) spools the open batch
    /// (when it can) and keeps everything unacknowledged there.
    pub async fn run(mut self) -> Result<Stats> {
        match self.event_loop().await {
            Ok(()) => self.finish(),
            Err(e) => {
                if self.session.open_len() > 0 {
                    let _ = self.cut();
                }
                Err(e)
            }
        }
    }

    async fn event_loop(&mut self) -> Result<()> {
        loop {
            self.send_front_if_ready();
            // A source with nothing (more) to give (e.g. `--duration 0`) is done.
            if self.source.as_mut().is_some_and(|s| s.peek().is_none()) {
                self.source = None;
            }
            if self.source.is_none() && self.session.is_idle() && self.inflight.is_none() {
                break;
            }
            let next_due = self.next_due();
            let cut_at = self
                .session
                .open_since
                .map(|t| t + self.cfg.max_batch_delay);
            let cancelling = self.deadline.is_some();
            tokio::select! {
                biased;
                _ = self.shared.cancel.cancelled(), if !cancelling => self.on_cancel()?,
                _ = sleep_opt(self.deadline) => break,
                reply = maybe(&mut self.inflight) => {
                    self.inflight = None;
                    self.on_reply(reply)?;
                }
                _ = sleep_opt(next_due) => self.on_reading_due()?,
                _ = sleep_opt(cut_at) => self.cut()?,
                _ = sleep_opt(self.retry_at) => {}
            }
        }
        Ok(())
    }

    /// Starts sending the front batch when nothing is in flight and no retry is pending.
    fn send_front_if_ready(&mut self) {
        if self.inflight.is_some() || self.retry_at.is_some_and(|t| t > Instant::now()) {
            return;
        }
        self.retry_at = None;
        let Some(front) = self.session.front() else {
            return;
        };
        let body = Bytes::from(front.body.clone());
        self.session.stats.requests += 1;
        self.session.stats.bytes_posted += body.len() as u64;
        let sh = self.shared.clone();
        let content_type = self.session.content_type();
        self.inflight = Some(Box::pin(async move { sh.post(content_type, body).await }));
    }

    /// When the next reading is due: never while cancelling or while the
    /// vehicle holds as many unacknowledged batches as it may.
    fn next_due(&mut self) -> Option<Instant> {
        if self.deadline.is_some() || self.session.unacked() >= self.cfg.max_unacked_batches {
            return None;
        }
        let r = self.source.as_mut()?.peek()?;
        Some(self.pace.due(r.timestamp_ms))
    }

    /// Readings per batch: the seed form spools and sends each reading alone.
    fn batch_readings(&self) -> usize {
        if self.session.is_seed() {
            1
        } else {
            self.cfg.max_batch_readings
        }
    }

    fn on_cancel(&mut self) -> Result<()> {
        self.deadline = Some(Instant::now() + self.cfg.grace);
        self.source = None;
        self.cut()
    }

    fn on_reading_due(&mut self) -> Result<()> {
        let Some(s) = self.source.as_mut() else {
            return Ok(());
        };
        let Some(r) = s.next() else {
            self.source = None;
            return Ok(());
        };
        let exhausted = s.peek().is_none();
        self.session.push(r);
        Live::add(&self.shared.live.readings, 1);
        if let Some(p) = &self.shared.progress {
            p.inc(1);
        }
        if self.session.open_len() >= self.batch_readings() || exhausted {
            self.cut()?;
        }
        if exhausted {
            self.source = None;
        }
        Ok(())
    }

    /// Cuts the open batch into the spool and, for replays, moves the cursor past it.
    fn cut(&mut self) -> Result<()> {
        let last_ts = self.session.open.last().map(|r| r.timestamp_ms);
        let spool = &self.shared.spool;
        disk(|| {
            self.session.cut(spool)?;
            if let (true, Some(ts)) = (self.cursor, last_ts) {
                spool.set_cursor(&self.vin, ts)?;
            }
            Ok(())
        })
    }

    fn on_reply(&mut self, reply: Reply) -> Result<()> {
        match reply {
            Reply::Ack { duplicate } => self.on_ack(duplicate),
            Reply::Retry {
                after,
                why,
                failover,
            } => {
                // The next attempt goes to another server: the failed one's
                // Retry-After does not apply to it.
                let after = after.filter(|_| !(failover && self.shared.servers.len() > 1));
                self.on_retry(after, &why);
                Ok(())
            }
            Reply::Resync { kind, next_seq } => self.on_resync(&kind, next_seq),
            Reply::TooLarge { message } => self.on_too_large(&message),
            Reply::Fatal { why } => bail!(
                "vehicle {}: {why}; its readings stay in the spool ({})",
                self.vin,
                self.shared.spool.dir().display()
            ),
            Reply::Reject { status, message } => {
                self.reject_front(&format!("HTTP {status}: {message}"))
            }
        }
    }

    fn on_ack(&mut self, duplicate: bool) -> Result<()> {
        if self.backoff.failures() > 0 {
            tracing::info!(vin = %self.vin, failures = self.backoff.failures(), "The server takes batches again.");
        }
        self.backoff.reset();
        self.resyncs_in_a_row = 0;
        self.session.stats.duplicates += u64::from(duplicate);
        let n = self.session.front().map_or(0, |b| b.readings.len() as u64);
        Live::add(&self.shared.live.readings_acked, n);
        disk(|| self.session.acked(&self.shared.spool))
    }

    /// 503, 429, 408, 5xx, no answer: the batch stays spooled and is sent again later.
    fn on_retry(&mut self, after: Option<std::time::Duration>, why: &str) {
        self.session.stats.retries += 1;
        Live::add(&self.shared.live.retries, 1);
        let d = self.backoff.next_delay(after, &mut rand::rng());
        let failures = self.backoff.failures();
        if failures == 1 || failures.is_multiple_of(10) {
            tracing::warn!(vin = %self.vin, failures, retry_in_ms = d.as_millis() as u64, "The server did not take a batch ({why}); retrying.");
        }
        self.retry_at = Some(Instant::now() + d);
    }

    fn on_resync(&mut self, kind: &str, next_seq: Option<u64>) -> Result<()> {
        if kind == "catalog_mismatch" {
            bail!(
                "the server uses a different signal catalog than this edge (catalog hash {:016x}); update the edge or the server so both use the same catalog",
                self.shared.catalog.hash()
            );
        }
        if self.session.is_seed() {
            bail!("the server answered a seed reading with a resync request ({kind})");
        }
        let from = disk(|| self.session.resync(&self.shared.spool, next_seq))?;
        Live::add(&self.shared.live.resyncs, 1);
        tracing::info!(vin = %self.vin, kind = %kind, from_seq = from, "The server asked for a resync; re-sending unacknowledged readings from a keyframe.");
        // A server that keeps asking for resyncs is not hammered.
        self.resyncs_in_a_row += 1;
        if self.resyncs_in_a_row > 2 {
            self.retry_at = Some(Instant::now() + self.backoff.next_delay(None, &mut rand::rng()));
        }
        Ok(())
    }

    /// 413: halves the front batch and sends again; a single reading the
    /// server still finds too large is rejected.
    fn on_too_large(&mut self, message: &str) -> Result<()> {
        if disk(|| self.session.split_front(&self.shared.spool))? {
            let n = self.session.front().map_or(0, |b| b.readings.len());
            tracing::warn!(vin = %self.vin, readings = n, "The server found a batch too large ({message}); sending it in halves.");
            Ok(())
        } else {
            self.reject_front(&format!("HTTP 413: {message}"))
        }
    }

    fn reject_front(&mut self, why: &str) -> Result<()> {
        self.backoff.reset();
        if let Some(b) = disk(|| self.session.reject_front(&self.shared.spool, why))? {
            tracing::error!(vin = %self.vin, first_seq = b.first_seq, readings = b.readings.len(), "The server refused a batch for good ({why}); it was moved to the spool's rejected/ folder.");
        }
        Ok(())
    }

    /// Spools what is still open and returns the counters.
    fn finish(mut self) -> Result<Stats> {
        if self.session.open_len() > 0 {
            self.cut()?;
        }
        if self.cursor && self.session.is_idle() && self.deadline.is_none() {
            self.shared.spool.clear_cursor(&self.vin);
        }
        self.session.stats.left_spooled = self.session.unacked() as u64;
        Ok(self.session.stats)
    }
}

/// Runs one session (see [`SessionActor::run`]).
pub async fn run_session(
    shared: Shared,
    session: Session,
    source: Option<ReadingSource>,
    pace: Pace,
) -> Result<Stats> {
    SessionActor::new(shared, session, source, pace).run().await
}

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
