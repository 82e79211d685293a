//! `lockstep-bench subscribers`: WebSocket subscribers in a process of their
//! own (issue 16, target 4), so the server's CPU share is visible apart from
//! the clients' and the load generator's. Connects `--clients` subscribers
//! to every vehicle, prints `ready` on stdout, counts `telemetry` messages
//! (every `--latency-every`-th client also times them from the reading's
//! timestamp) for `--duration` seconds and until the count stops growing
//! for 2 s, then prints one JSON line with what they received and the
//! process's own CPU. `bench/ws-subscribers-split.sh` runs it beside a load.

use std::io::Write as _;
use std::time::Duration;

use clap::Parser;
use serde::Serialize;

use crate::report::Latency;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "lockstep-bench subscribers",
    about = "WebSocket subscribers in their own process; prints `ready`, then one JSON line."
)]
pub struct SubscribersArgs {
    /// The server (loopback).
    #[arg(long)]
    pub url: String,
    /// Subscribers (all vehicles each).
    #[arg(long, default_value_t = 1000)]
    pub clients: u64,
    /// Clients 0, N, 2N, … time every message.
    #[arg(long, default_value_t = 10)]
    pub latency_every: u64,
    /// Seconds to stay connected before settling.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
}

#[derive(Debug, Serialize)]
pub struct SubscribersReport {
    pub clients: u64,
    pub connected: u64,
    pub connect_errors: u64,
    pub connect_s: f64,
    pub telemetry: u64,
    pub latency_ms: Latency,
    pub negative_latency: u64,
    pub lagged_msgs: u64,
    pub lagged_dropped: u64,
    pub closed_early: u64,
    pub cpu_s: f64,
}

pub async fn run(args: SubscribersArgs) -> anyhow::Result<SubscribersReport> {
    use std::sync::atomic::Ordering::Relaxed;
    let addr = crate::spawn::loopback_addr(&args.url)?;
    crate::spawn::raise_fd_limit(args.clients + 256);
    let every = args.latency_every.max(1);
    let spec = move |i: u64| crate::ws::ClientSpec {
        vins: None,
        timed: i.is_multiple_of(every),
        addr: None,
        local_vins: None,
    };
    let cpu0 = crate::procfs::self_cpu_seconds();
    let g = crate::ws::Group::connect(addr, args.clients, spec, 256, Duration::from_secs(60)).await;
    let connect_s = g.connect_seconds;
    println!("ready");
    std::io::stdout().flush()?;
    tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
    g.settle(u64::MAX, Duration::from_secs(2), Duration::from_secs(30))
        .await;
    let crate::ws::Stopped {
        counters: c,
        latency_us: hist,
        negative,
        ..
    } = g.stop().await;
    let report = SubscribersReport {
        clients: args.clients,
        connected: c.connected.load(Relaxed),
        connect_errors: c.connect_errors.load(Relaxed),
        connect_s,
        telemetry: c.telemetry.load(Relaxed),
        latency_ms: Latency::from_us(&hist),
        negative_latency: negative,
        lagged_msgs: c.lagged_msgs.load(Relaxed),
        lagged_dropped: c.lagged_dropped.load(Relaxed),
        closed_early: c.closed_early.load(Relaxed),
        cpu_s: crate::procfs::self_cpu_seconds() - cpu0,
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(report)
}
