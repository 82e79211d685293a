//! `lockstep-bench fleet`: a large fleet (issue 16, target 5). Starts a
//! server, connects dashboards (half without a filter, half subscribed to
//! the probe vehicles), then grows the fleet step by step (by default to
//! 1,000, 10,000 and 50,000 VINs, each registered with one seed reading).
//! After each step a fixed probe load runs (a few vehicles at a fixed rate)
//! and the table shows, per fleet size: server RSS, probe ack latency, the
//! size of the `compression_stats` messages the dashboards received, and
//! the time to walk every page of `/api/vehicles` and `/api/stats/vehicles`
//! (checking that the walk sees every vehicle once). Flat columns = the
//! server's per-second and per-message work does not grow with the fleet.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use clap::Parser;
use futures_util::{SinkExt as _, StreamExt as _};
use lockstep_codec::Catalog;
use serde::Serialize;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::{Form, StoreKind};
use crate::fleet::{Vehicle, vin_of};
use crate::http::Conn;
use crate::load::{latency_histogram, unix_ms};
use crate::report::Latency;
use crate::spawn::{Spawned, default_binary};

#[derive(Debug, Clone, Parser)]
#[command(
    name = "lockstep-bench fleet",
    about = "Grows a fleet to 50,000 VINs with dashboards connected; shows RSS, ingest latency and message sizes per fleet size.",
    after_help = "Example:\n  lockstep-bench fleet --store postgres --out bench/results/fleet-50k-postgres.json"
)]
pub struct FleetArgs {
    /// Store of the spawned server (a fresh SQLite file or PostgreSQL database).
    #[arg(long, value_enum, default_value_t = StoreKind::Sqlite)]
    pub store: StoreKind,
    /// The lockstep-server binary; default: beside this executable.
    #[arg(long)]
    pub server: Option<PathBuf>,
    /// Where a fresh PostgreSQL database is created (and dropped after).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub pg_admin_url: String,
    /// Fleet sizes to measure at, ascending.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,50000")]
    pub steps: Vec<u64>,
    /// Dashboards connected during the whole run; half subscribe to the probe vehicles.
    #[arg(long, default_value_t = 20)]
    pub dashboards: u32,
    /// Vehicles of the probe load (the first VINs of the fleet).
    #[arg(long, default_value_t = 10)]
    pub probe_vehicles: u32,
    /// Probe readings/s over all probe vehicles (seed form, one per POST).
    #[arg(long, default_value_t = 100.0)]
    pub probe_rate: f64,
    /// Seconds of probe load per step.
    #[arg(long, default_value_t = 5.0)]
    pub probe_seconds: f64,
    /// HTTP connections registering new VINs.
    #[arg(long, default_value_t = 16)]
    pub register_connections: u32,
    /// Also write the JSON report here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Keep the server's database (SQLite directory / PostgreSQL database) for a look afterwards.
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Serialize)]
pub struct FleetReport {
    pub store: StoreKind,
    pub dashboards: u32,
    pub probe_vehicles: u32,
    pub probe_rate: f64,
    pub probe_seconds: f64,
    pub rss_idle_kib: u64,
    pub steps: Vec<Step>,
}

#[derive(Debug, Serialize)]
pub struct Step {
    pub vehicles: u64,
    pub register_seconds: f64,
    pub register_per_s: f64,
    /// Server RSS after the probe, and the peak while registering and probing.
    pub rss_kib: u64,
    pub rss_peak_kib: u64,
    pub probe_acked: u64,
    pub probe_errors: u64,
    pub probe_ack_ms: Latency,
    /// `compression_stats` messages the dashboards received during the step, largest bytes.
    pub stats_msgs_unfiltered: u64,
    pub stats_max_bytes_unfiltered: u64,
    pub stats_msgs_subscribed: u64,
    pub stats_max_bytes_subscribed: u64,
    /// Every page of `GET /api/vehicles?limit=1000` / `GET /api/stats/vehicles?limit=1000`.
    pub vehicles_pages: u64,
    pub vehicles_walk_ms: f64,
    pub vehicles_page_max_bytes: u64,
    pub stats_pages: u64,
    pub stats_walk_ms: f64,
    pub stats_page_max_bytes: u64,
    pub loadavg_before: [f64; 3],
    pub loadavg_after: [f64; 3],
}

/// What one dashboard group saw since the last reset.
#[derive(Default)]
struct Seen {
    msgs: AtomicU64,
    max_bytes: AtomicU64,
    connected: AtomicU64,
}

impl Seen {
    fn take(&self) -> (u64, u64) {
        (
            self.msgs.swap(0, Ordering::Relaxed),
            self.max_bytes.swap(0, Ordering::Relaxed),
        )
    }
}

pub async fn run(args: FleetArgs) -> anyhow::Result<FleetReport> {
    ensure!(
        args.steps.windows(2).all(|w| w[0] < w[1]) && !args.steps.is_empty(),
        "--steps must ascend"
    );
    ensure!(
        u64::from(args.probe_vehicles) <= args.steps[0],
        "--probe-vehicles must not exceed the first step"
    );
    let binary = match &args.server {
        Some(p) => p.clone(),
        None => default_binary()?,
    };
    let env = [
        "LOCKSTEP_IP_REQUESTS_PER_S=100000".to_owned(),
        // The per-device budget would throttle the probe vehicles, not the server.
        "LOCKSTEP_DEVICE_REQUESTS_PER_S=100000".to_owned(),
        format!("LOCKSTEP_WS_PER_IP={}", args.dashboards + 8),
        "RUST_LOG=warn".to_owned(),
    ];
    let server = Spawned::start(binary, args.store, &args.pg_admin_url, &env, args.keep).await?;
    let result = measure(&server, &args).await;
    let tail = server.log_tail(20);
    server.stop().await;
    let report = result.with_context(|| format!("server log (last lines):\n{tail}"))?;
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    if let Some(out) = &args.out {
        std::fs::write(out, format!("{text}\n"))
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    eprintln!("{}", table(&report));
    Ok(report)
}

async fn measure(server: &Spawned, args: &FleetArgs) -> anyhow::Result<FleetReport> {
    let timeout = Duration::from_secs(30);
    let rss_idle_kib = crate::procfs::rss_kib(server.pid).unwrap_or(0);
    let probe_vins: Vec<String> = (1..=u64::from(args.probe_vehicles)).map(vin_of).collect();
    let (stop, stop_rx) = watch::channel(false);
    let unfiltered = Arc::new(Seen::default());
    let subscribed = Arc::new(Seen::default());
    let mut tasks = Vec::new();
    for i in 0..args.dashboards {
        let (seen, vins) = if i % 2 == 0 {
            (unfiltered.clone(), None)
        } else {
            (subscribed.clone(), Some(probe_vins.clone()))
        };
        tasks.push(tokio::spawn(dashboard(
            server.addr,
            vins,
            seen,
            stop_rx.clone(),
        )));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while unfiltered.connected.load(Ordering::Relaxed)
        + subscribed.connected.load(Ordering::Relaxed)
        < u64::from(args.dashboards)
    {
        ensure!(Instant::now() < deadline, "dashboards did not connect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let catalog = Arc::new(Catalog::default_v1());
    let mut probes: Vec<Vehicle> = (1..=u64::from(args.probe_vehicles))
        .map(|n| Vehicle::new(n as usize, n, Form::Seed, catalog.clone(), 1))
        .collect();
    let mut registered = 0u64;
    let mut steps = Vec::new();
    for &target in &args.steps {
        let loadavg_before = crate::procfs::loadavg();
        let sampler = crate::procfs::RssSampler::start(vec![server.pid]);
        let t = Instant::now();
        register(
            server.addr,
            &catalog,
            registered + 1..=target,
            args.register_connections,
            timeout,
        )
        .await?;
        let register_seconds = t.elapsed().as_secs_f64();
        let new = target - registered;
        registered = target;
        // Statistics of the registration are not the probe's.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        unfiltered.take();
        subscribed.take();
        let (acked, errors, hist) = probe(server.addr, &mut probes, args, timeout).await?;
        // One more tick so the probe's statistics reach the dashboards.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (um, ub) = unfiltered.take();
        let (sm, sb) = subscribed.take();
        let rss_peak_kib = sampler.finish().await;
        let rss_kib = crate::procfs::rss_kib(server.pid).unwrap_or(0);
        let (vp, vms, vmax) = walk(
            server.addr,
            "/api/vehicles",
            "cursor",
            "next_cursor",
            target,
            timeout,
        )
        .await?;
        let (sp, sms, smax) = walk(
            server.addr,
            "/api/stats/vehicles",
            "after",
            "next_after",
            target,
            timeout,
        )
        .await?;
        steps.push(Step {
            vehicles: target,
            register_seconds,
            register_per_s: new as f64 / register_seconds,
            rss_kib,
            rss_peak_kib,
            probe_acked: acked,
            probe_errors: errors,
            probe_ack_ms: Latency::from_us(&hist),
            stats_msgs_unfiltered: um,
            stats_max_bytes_unfiltered: ub,
            stats_msgs_subscribed: sm,
            stats_max_bytes_subscribed: sb,
            vehicles_pages: vp,
            vehicles_walk_ms: vms,
            vehicles_page_max_bytes: vmax,
            stats_pages: sp,
            stats_walk_ms: sms,
            stats_page_max_bytes: smax,
            loadavg_before,
            loadavg_after: crate::procfs::loadavg(),
        });
        eprintln!("{}", table_row(steps.last().expect("just pushed")));
    }
    let _ = stop.send(true);
    for t in tasks {
        let _ = t.await;
    }
    Ok(FleetReport {
        store: args.store,
        dashboards: args.dashboards,
        probe_vehicles: args.probe_vehicles,
        probe_rate: args.probe_rate,
        probe_seconds: args.probe_seconds,
        rss_idle_kib,
        steps,
    })
}

/// One seed reading for each VIN of `range`, over `connections` connections.
async fn register(
    addr: SocketAddr,
    catalog: &Arc<Catalog>,
    range: std::ops::RangeInclusive<u64>,
    connections: u32,
    timeout: Duration,
) -> anyhow::Result<()> {
    let (start, end) = (*range.start(), *range.end());
    let next = Arc::new(AtomicU64::new(start));
    let mut workers = Vec::new();
    for _ in 0..connections.max(1) {
        let (next, catalog) = (next.clone(), catalog.clone());
        workers.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr, timeout).await?;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n > end {
                    return anyhow::Ok(());
                }
                let mut v = Vehicle::new(n as usize, n, Form::Seed, catalog.clone(), 1);
                let body = v.next_body(1, unix_ms());
                let a = conn
                    .request(
                        "POST",
                        "/api/telemetry",
                        Some("application/x-protobuf"),
                        body.bytes,
                        timeout,
                    )
                    .await?;
                ensure!(
                    a.status.is_success(),
                    "registering {} answered {}: {}",
                    vin_of(n),
                    a.status,
                    String::from_utf8_lossy(&a.body)
                );
            }
        }));
    }
    for w in workers {
        w.await??;
    }
    Ok(())
}

/// The probe vehicles at `probe_rate` in total, each with one request in flight.
async fn probe(
    addr: SocketAddr,
    probes: &mut [Vehicle],
    args: &FleetArgs,
    timeout: Duration,
) -> anyhow::Result<(u64, u64, hdrhistogram::Histogram<u64>)> {
    let per_vehicle = Duration::from_secs_f64(probes.len() as f64 / args.probe_rate.max(0.001));
    let end = Instant::now() + Duration::from_secs_f64(args.probe_seconds);
    let mut tasks = Vec::new();
    for v in probes.iter_mut() {
        // Vehicles move into the task and back, keeping their codec state.
        let mut v = std::mem::replace(
            v,
            Vehicle::new(0, 0, Form::Seed, Arc::new(Catalog::default_v1()), 1),
        );
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr, timeout).await?;
            let mut hist = latency_histogram();
            let (mut acked, mut errors) = (0u64, 0u64);
            let mut tick = tokio::time::interval(per_vehicle);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while Instant::now() < end {
                tick.tick().await;
                let body = v.next_body(1, unix_ms());
                let t = Instant::now();
                match conn
                    .request(
                        "POST",
                        "/api/telemetry",
                        Some("application/x-protobuf"),
                        body.bytes,
                        timeout,
                    )
                    .await
                {
                    Ok(a) if a.status.is_success() => {
                        hist.saturating_record(t.elapsed().as_micros().max(1) as u64);
                        acked += 1;
                    }
                    Ok(_) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        conn = Conn::connect(addr, timeout).await?;
                    }
                }
            }
            anyhow::Ok((v, acked, errors, hist))
        }));
    }
    let (mut acked, mut errors, mut hist) = (0, 0, latency_histogram());
    for (slot, t) in probes.iter_mut().zip(tasks) {
        let (v, a, e, h) = t.await??;
        *slot = v;
        acked += a;
        errors += e;
        let _ = hist.add(&h);
    }
    Ok((acked, errors, hist))
}

/// Walks every page of a VIN-ordered list; checks it sees `expected`
/// vehicles, each once, in order. Pages, ms, largest page in bytes.
async fn walk(
    addr: SocketAddr,
    path: &str,
    param: &str,
    next_key: &str,
    expected: u64,
    timeout: Duration,
) -> anyhow::Result<(u64, f64, u64)> {
    let mut conn = Conn::connect(addr, timeout).await?;
    let (mut pages, mut seen, mut max_bytes) = (0u64, 0u64, 0u64);
    let mut last: Option<String> = None;
    let mut next: Option<String> = None;
    let t = Instant::now();
    loop {
        let url = match &next {
            Some(c) => format!("{path}?limit=1000&{param}={c}"),
            None => format!("{path}?limit=1000"),
        };
        let a = conn
            .request("GET", &url, None, Bytes::new(), timeout)
            .await?;
        if !a.status.is_success() {
            bail!("GET {url} answered {}", a.status);
        }
        pages += 1;
        max_bytes = max_bytes.max(a.body.len() as u64);
        let v: serde_json::Value = serde_json::from_slice(&a.body)?;
        for item in v["vehicles"].as_array().context("no vehicles array")? {
            let vin = item["vin"].as_str().context("no vin")?.to_owned();
            ensure!(
                last.as_ref().is_none_or(|l| *l < vin),
                "{path}: {vin} out of order or repeated"
            );
            last = Some(vin);
            seen += 1;
        }
        match v[next_key].as_str() {
            Some(c) => next = Some(c.to_owned()),
            None => break,
        }
    }
    let ms = t.elapsed().as_secs_f64() * 1e3;
    ensure!(
        seen == expected,
        "{path}: walked {seen} vehicles, expected {expected}"
    );
    Ok((pages, ms, max_bytes))
}

/// A dashboard: connects, subscribes (or not), and measures `compression_stats` messages.
async fn dashboard(
    addr: SocketAddr,
    vins: Option<Vec<String>>,
    seen: Arc<Seen>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await?;
    if let Some(vins) = vins {
        let msg = serde_json::json!({"type": "subscribe", "vins": vins}).to_string();
        ws.send(Message::text(msg)).await?;
    }
    seen.connected.fetch_add(1, Ordering::Relaxed);
    loop {
        tokio::select! {
            _ = stop.changed() => {
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                return Ok(());
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if crate::ws::kind(t.as_str()) == "compression_stats" {
                        seen.msgs.fetch_add(1, Ordering::Relaxed);
                        seen.max_bytes.fetch_max(t.len() as u64, Ordering::Relaxed);
                    }
                }
                Some(Ok(_)) => {}
                _ => bail!("a dashboard's connection ended early"),
            }
        }
    }
}

fn table_row(s: &Step) -> String {
    format!(
        "| {} | {:.1} ({:.0}/s) | {:.1} / {:.1} | {} / {} | {:.2} / {:.2} / {:.2} | {} × ≤{} B | {} × ≤{} B | {} pages, {:.0} ms, ≤{} B | {} pages, {:.0} ms, ≤{} B | {:.2} → {:.2} |",
        s.vehicles,
        s.register_seconds,
        s.register_per_s,
        s.rss_kib as f64 / 1024.0,
        s.rss_peak_kib as f64 / 1024.0,
        s.probe_acked,
        s.probe_errors,
        s.probe_ack_ms.p50.unwrap_or(f64::NAN),
        s.probe_ack_ms.p99.unwrap_or(f64::NAN),
        s.probe_ack_ms.max.unwrap_or(f64::NAN),
        s.stats_msgs_unfiltered,
        s.stats_max_bytes_unfiltered,
        s.stats_msgs_subscribed,
        s.stats_max_bytes_subscribed,
        s.vehicles_pages,
        s.vehicles_walk_ms,
        s.vehicles_page_max_bytes,
        s.stats_pages,
        s.stats_walk_ms,
        s.stats_page_max_bytes,
        s.loadavg_before[0],
        s.loadavg_after[0],
    )
}

/// A Markdown table of the steps.
pub fn table(r: &FleetReport) -> String {
    let mut s = format!(
        "fleet on {:?}: {} dashboards (half unfiltered, half subscribed to the {} probe vehicles), probe {} readings/s for {} s; RSS idle {:.1} MiB\n\n\
| vehicles | register s (VINs/s) | RSS after / peak MiB | probe acked / errors | probe ack p50 / p99 / max ms | stats msgs unfiltered | stats msgs subscribed | /api/vehicles walk | /api/stats/vehicles walk | load 1m |\n|---|---|---|---|---|---|---|---|---|---|\n",
        r.store,
        r.dashboards,
        r.probe_vehicles,
        r.probe_rate,
        r.probe_seconds,
        r.rss_idle_kib as f64 / 1024.0
    );
    for st in &r.steps {
        s += &table_row(st);
        s += "\n";
    }
    s
}
