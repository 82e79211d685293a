//! The HTTP load: `C` workers, each with its own connection and its share of
//! the vehicles, sending in turn — so every vehicle has at most one request
//! in flight and its readings arrive in order. Closed loop (next request when
//! the previous is answered) or open loop at a total offered rate.
//!
//! Bounded: no new request starts after the deadline (or once `--count`
//! readings are claimed) nor after the hard stop; each request has a timeout
//! and at most [`MAX_ATTEMPTS`] tries.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use lockstep_proto::{CONTENT_TYPE_BATCH, CONTENT_TYPE_SEED};

use crate::cli::{Form, Spread};
use crate::fleet::Vehicle;
use crate::http::Conn;

/// Tries per request body (the first send and the retries after a broken
/// connection, a timeout or a 503).
pub const MAX_ATTEMPTS: u32 = 5;

/// What to send and when to stop.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The instances; one unless a cluster is measured.
    pub addrs: Vec<SocketAddr>,
    pub spread: Spread,
    pub form: Form,
    pub batch: u32,
    pub connections: u32,
    /// No new request after this (duration mode).
    pub deadline: Option<Instant>,
    /// Total readings (count mode).
    pub count: Option<u64>,
    /// Offered readings/s over all workers; 0 = closed loop.
    pub rate: f64,
    pub timeout: Duration,
    /// Device or fleet token for `Authorization: Bearer`, if the server wants one.
    pub device_token: Option<String>,
    /// Nothing new starts after this, whatever the mode.
    pub hard_stop: Instant,
}

/// What the load saw.
pub struct Outcome {
    pub vehicles: Vec<Vehicle>,
    pub requests_ok: u64,
    pub readings_acked: u64,
    pub readings_sent: u64,
    /// Ack latency of 2xx answers, µs.
    pub ack_us: Histogram<u64>,
    pub errors: BTreeMap<String, u64>,
    pub retries: u64,
    pub fields_total: u64,
    pub fields_transmitted: u64,
    pub bytes_sent: u64,
    pub first_send: Option<Instant>,
    pub last_ack: Option<Instant>,
}

impl Outcome {
    fn new(vehicles: Vec<Vehicle>) -> Self {
        Self {
            vehicles,
            requests_ok: 0,
            readings_acked: 0,
            readings_sent: 0,
            ack_us: latency_histogram(),
            errors: BTreeMap::new(),
            retries: 0,
            fields_total: 0,
            fields_transmitted: 0,
            bytes_sent: 0,
            first_send: None,
            last_ack: None,
        }
    }

    fn err(&mut self, kind: &str) {
        *self.errors.entry(kind.to_owned()).or_default() += 1;
    }

    fn merge(&mut self, o: Outcome) {
        self.vehicles.extend(o.vehicles);
        self.requests_ok += o.requests_ok;
        self.readings_acked += o.readings_acked;
        self.readings_sent += o.readings_sent;
        let _ = self.ack_us.add(&o.ack_us);
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.retries += o.retries;
        self.fields_total += o.fields_total;
        self.fields_transmitted += o.fields_transmitted;
        self.bytes_sent += o.bytes_sent;
        self.first_send = min_opt(self.first_send, o.first_send);
        self.last_ack = self.last_ack.max(o.last_ack);
    }
}

fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A histogram of 1 µs .. 10 min with 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Unix time, ms.
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The instance that ingests vehicle `index` under [`Spread::Connection`]
/// (vehicle → worker as in [`run`], worker → instance round the cluster).
pub fn home_instance(index: usize, connections: u32, vehicles: usize, instances: usize) -> usize {
    let workers = (connections as usize).clamp(1, vehicles.max(1));
    (index % workers) % instances.max(1)
}

/// Runs the load to completion; vehicles come back in index order with their ack counts.
pub async fn run(plan: Plan, vehicles: Vec<Vehicle>) -> Outcome {
    let workers = (plan.connections as usize).clamp(1, vehicles.len().max(1));
    let mut shares: Vec<Vec<Vehicle>> = (0..workers).map(|_| Vec::new()).collect();
    for v in vehicles {
        let w = v.index % workers;
        shares[w].push(v);
    }
    let plan = Arc::new(plan);
    let remaining = Arc::new(AtomicU64::new(plan.count.unwrap_or(u64::MAX)));
    let start = Instant::now();
    let per_worker_rate = plan.rate / workers as f64;
    let mut tasks = Vec::with_capacity(workers);
    for (w, share) in shares.into_iter().enumerate() {
        let (plan, remaining) = (plan.clone(), remaining.clone());
        tasks.push(tokio::spawn(worker(
            plan,
            w,
            share,
            remaining,
            start,
            per_worker_rate,
        )));
    }
    let mut total = Outcome::new(Vec::new());
    for t in tasks {
        match t.await {
            Ok(o) => total.merge(o),
            Err(e) => total.err(&format!("worker_panic: {e}")),
        }
    }
    total.vehicles.sort_by_key(|v| v.index);
    total
}

/// Claims up to `want` readings from the shared count.
fn claim(remaining: &AtomicU64, want: u64) -> u64 {
    let mut got = 0;
    let _ = remaining.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
        got = r.min(want);
        Some(r - got)
    });
    got
}

async fn worker(
    plan: Arc<Plan>,
    w: usize,
    vehicles: Vec<Vehicle>,
    remaining: Arc<AtomicU64>,
    start: Instant,
    rate: f64,
) -> Outcome {
    let mut out = Outcome::new(vehicles);
    if out.vehicles.is_empty() {
        return out;
    }
    let content_type = match plan.form {
        Form::Seed => CONTENT_TYPE_SEED,
        Form::Lockstep => CONTENT_TYPE_BATCH,
    };
    let per_request = match plan.form {
        Form::Seed => 1,
        Form::Lockstep => u64::from(plan.batch),
    };
    // One connection per instance this worker talks to (one under Spread::Connection).
    let n_inst = plan.addrs.len().max(1);
    let mut conns: Vec<Option<Conn>> = (0..n_inst).map(|_| None).collect();
    let mut sent_by_vehicle = vec![0usize; out.vehicles.len()];
    let mut next_at = start;
    let mut turn = 0usize;
    loop {
        let past = |t: Instant| plan.deadline.is_some_and(|d| t >= d) || t >= plan.hard_stop;
        if past(Instant::now()) {
            break;
        }
        let n = if plan.count.is_some() {
            claim(&remaining, per_request)
        } else {
            per_request
        };
        if n == 0 {
            break;
        }
        if rate > 0.0 {
            if next_at > Instant::now() {
                tokio::time::sleep_until(next_at.into()).await;
                if past(Instant::now()) {
                    break;
                }
            }
            next_at += Duration::from_secs_f64(n as f64 / rate);
            // After a stall, do not fire the whole backlog at once.
            let now = Instant::now();
            if next_at + Duration::from_secs(1) < now {
                next_at = now;
            }
        }
        let vi = turn % out.vehicles.len();
        turn += 1;
        let inst = match plan.spread {
            Spread::Connection => w % n_inst,
            Spread::Request => (sent_by_vehicle[vi] + out.vehicles[vi].index) % n_inst,
        };
        sent_by_vehicle[vi] += 1;
        let conn = &mut conns[inst];
        let body = out.vehicles[vi].next_body(n as u32, unix_ms());
        out.readings_sent += n;
        out.fields_total += body.fields_total;
        out.fields_transmitted += body.fields_transmitted;
        for attempt in 1..=MAX_ATTEMPTS {
            if attempt > 1 {
                out.retries += 1;
            }
            if conn.is_none() {
                let connected = Conn::connect(plan.addrs[inst], plan.timeout)
                    .await
                    .and_then(|c| c.with_bearer(plan.device_token.as_deref()));
                match connected {
                    Ok(c) => *conn = Some(c),
                    Err(e) => {
                        out.err(e.kind());
                        if Instant::now() >= plan.hard_stop {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            let t0 = Instant::now();
            out.first_send = min_opt(out.first_send, Some(t0));
            out.bytes_sent += body.bytes.len() as u64;
            match c
                .request(
                    "POST",
                    "/api/telemetry",
                    Some(content_type),
                    body.bytes.clone(),
                    plan.timeout,
                )
                .await
            {
                Err(e) => {
                    out.err(e.kind());
                    *conn = None;
                }
                Ok(a) if a.status.is_success() => {
                    let now = Instant::now();
                    out.ack_us
                        .saturating_record((now - t0).as_micros().max(1) as u64);
                    out.requests_ok += 1;
                    out.readings_acked += n;
                    out.vehicles[vi].acked += n;
                    out.last_ack = Some(now);
                    break;
                }
                Ok(a) => {
                    out.err(&format!("http_{}", a.status.as_u16()));
                    match a.status.as_u16() {
                        503 => {
                            let wait = a.retry_after_s.map_or(Duration::from_millis(100), |s| {
                                Duration::from_secs(s).min(Duration::from_secs(1))
                            });
                            tokio::time::sleep(wait).await;
                        }
                        409 => {
                            out.vehicles[vi].new_session();
                            break;
                        }
                        _ => break,
                    }
                }
            }
        }
    }
    out
}
