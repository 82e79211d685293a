//! `lockstep-bench`: a load generator and benchmark harness for
//! `lockstep-server`, speaking the real wire forms (seed protobuf, one
//! reading per POST; lockstep batches) and the real WebSocket feed, on
//! loopback only.
//!
//! One run: (start a server on a fresh store) → connect idle WebSocket
//! clients and subscribers → drive the HTTP load → let deliveries settle →
//! count the rows committed in the store → measure the raw storage limit on
//! the same table → stop the server, drop its database → print the table and
//! write the JSON. Server CPU and RSS come from `/proc`.

pub mod big_fleet;
pub mod cli;
pub mod fleet;
pub mod history;
pub mod http;
pub mod load;
pub mod procfs;
pub mod report;
pub mod spawn;
pub mod store;
pub mod subscribers;
pub mod ws;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use lockstep_codec::Catalog;

pub use cli::{Args, Form, Spread, StoreKind};
use report::{
    CpuReport, IdleReport, Latency, LoadReport, Machine, ProcReport, Report, ServerInfo, WsReport,
};
use spawn::Spawned;
use store::StoreAccess;

/// Runs one benchmark, prints the table, writes the JSON; the report is returned too.
pub async fn run(args: Args) -> anyhow::Result<Report> {
    if args.url.is_none() && args.spawn.is_none() {
        bail!("pass --spawn (start a server) or --url URL (drive a running one)");
    }
    if !(args.duration > 0.0 && args.duration <= 3600.0) && args.count.is_none() {
        bail!("--duration must be in (0, 3600] seconds");
    }
    if args.request_timeout <= 0.0 || args.rate < 0.0 {
        bail!("--request-timeout must be positive and --rate not negative");
    }
    if args.instances > 1 && (args.spawn.is_none() || args.store != StoreKind::Postgres) {
        bail!(
            "--instances > 1 needs --spawn and --store postgres (the instances share one database)"
        );
    }
    if args.redis_url.as_deref() == Some("none")
        && args.instances > 1
        && args.spread == cli::Spread::Request
    {
        bail!(
            "--redis-url none starts independent servers: each vehicle must stay on one (--spread connection)"
        );
    }
    if args.ws_url.is_some() && args.instances > 1 {
        bail!(
            "--ws-url drives a cluster started elsewhere; with --instances the subscribers are dealt round the instances"
        );
    }
    let needed = u64::from(args.connections) * u64::from(args.instances)
        + u64::from(args.ws_clients)
        + u64::from(args.idle_ws_clients)
        + 256;
    let fd_limit = spawn::raise_fd_limit(needed);

    let mut device_token = args.device_token.clone();
    let spawned = match &args.spawn {
        Some(p) => {
            let bin = match p {
                Some(p) => p.clone(),
                None => spawn::default_binary()?,
            };
            let mut s = Spawned::start(
                bin,
                args.store,
                &args.pg_admin_url,
                &cluster_env(&args),
                args.keep,
            )
            .await?;
            if let Err(e) = s.add_instances(args.instances - 1).await {
                s.stop().await;
                return Err(e);
            }
            if args.device_auth {
                let token = match refuses_anonymous_telemetry(s.addr).await {
                    Ok(()) => s.create_fleet_token(fleet::VIN_PREFIX).await,
                    Err(e) => Err(e),
                };
                match token {
                    Ok(t) => device_token = Some(t),
                    Err(e) => {
                        s.stop().await;
                        return Err(e);
                    }
                }
            }
            Some(s)
        }
        None => None,
    };
    let (addrs, pids, store, url) = match &spawned {
        Some(s) => (
            s.addrs(),
            s.pids(),
            Some(s.store.clone()),
            format!("http://{}", s.addr),
        ),
        None => {
            let url = args.url.clone().unwrap_or_default();
            let addr = spawn::loopback_addr(&url)?;
            let store = args
                .database_url
                .as_deref()
                .map(StoreAccess::from_url)
                .transpose()?;
            (
                vec![addr],
                args.server_pid.into_iter().collect(),
                store,
                url,
            )
        }
    };
    let ctx = Ctx {
        addr: addrs[0],
        addrs,
        pids,
        store,
        url,
        fd_limit,
        binary: spawned.as_ref().map(|s| s.binary.clone()),
        device_token,
    };
    let result = tokio::select! {
        r = measure(&args, &ctx) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let exit = match spawned {
        Some(s) => {
            let tail = if result.is_err() {
                s.log_tail(15)
            } else {
                String::new()
            };
            let st = s.stop().await;
            if !tail.is_empty() {
                eprintln!("--- server log (last lines) ---\n{tail}");
            }
            Some(st)
        }
        None => None,
    };
    let mut report = result?;
    report.server.exit = exit;
    print!("{}", report.table());
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(report)
}

/// The spawned servers' environment: the run's `--server-env`, and for a
/// cluster its Redis with a prefix of its own (so runs never hear each other).
/// With `--device-auth` the run measures the token check only if the server
/// really makes it: a telemetry request without a token must get 401.
async fn refuses_anonymous_telemetry(addr: SocketAddr) -> anyhow::Result<()> {
    let timeout = Duration::from_secs(5);
    let mut c = http::Conn::connect(addr, timeout).await?;
    let a = c
        .request(
            "POST",
            "/api/telemetry",
            Some("application/x-protobuf"),
            bytes::Bytes::new(),
            timeout,
        )
        .await?;
    if a.status != hyper::StatusCode::UNAUTHORIZED {
        bail!(
            "--device-auth: the server answered {} to telemetry without a token, not 401",
            a.status
        );
    }
    Ok(())
}

fn cluster_env(args: &Args) -> Vec<String> {
    let mut env = args.server_env.clone();
    if args.device_auth {
        env.push("LOCKSTEP_DEVICE_AUTH=required".to_owned());
    }
    let redis = args
        .redis_url
        .clone()
        .or_else(|| (args.instances > 1).then(|| "redis://127.0.0.1:6379".to_owned()))
        .filter(|r| r != "none");
    if let Some(r) = redis {
        env.push(format!("REDIS_URL={r}"));
        env.push(format!(
            "LOCKSTEP_REDIS_PREFIX=lockstep-bench-{}-{}",
            std::process::id(),
            load::unix_ms()
        ));
    }
    env
}

struct Ctx {
    /// The first instance: the one idle clients, `/status` and `--ws-url`-less
    /// single-instance runs use.
    addr: SocketAddr,
    addrs: Vec<SocketAddr>,
    /// Every instance's PID (none when driving a server whose PID is not given).
    pids: Vec<u32>,
    store: Option<StoreAccess>,
    url: String,
    fd_limit: spawn::FdLimit,
    binary: Option<PathBuf>,
    /// Sent with every telemetry request (`--device-auth`, `--device-token`).
    device_token: Option<String>,
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

async fn measure(args: &Args, ctx: &Ctx) -> anyhow::Result<Report> {
    let started_unix_ms = load::unix_ms();
    let loadavg_start = procfs::loadavg();
    let pids = ctx.pids.clone();
    let has_pid = !pids.is_empty();
    let rss = || has_pid.then(|| procfs::rss_sum_kib(&pids)).flatten();
    let cpu_sum = || -> Option<f64> {
        has_pid
            .then(|| pids.iter().map(|&p| procfs::cpu_seconds(p)).sum())
            .flatten()
    };
    let user_sys_sum = || -> Option<(f64, f64)> {
        has_pid
            .then(|| {
                pids.iter()
                    .map(|&p| procfs::user_sys_seconds(p))
                    .try_fold((0.0, 0.0), |a, x| x.map(|x| (a.0 + x.0, a.1 + x.1)))
            })
            .flatten()
    };
    // Let a freshly started server finish its start-up allocations.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_idle = rss();

    let rows_before = match &ctx.store {
        Some(s) => Some(store::count_rows(s).await?),
        None => None,
    };

    // 1. Mostly idle WebSocket clients, subscribed to a VIN nobody sends.
    let idle_deadline = Duration::from_secs(30 + u64::from(args.idle_ws_clients) / 200);
    let idle = if args.idle_ws_clients > 0 {
        let spec = |_| ws::ClientSpec {
            vins: Some(vec![fleet::IDLE_VIN.to_owned()]),
            timed: false,
            addr: None,
            local_vins: None,
        };
        Some(
            ws::Group::connect(
                ctx.addr,
                u64::from(args.idle_ws_clients),
                spec,
                256,
                idle_deadline,
            )
            .await,
        )
    } else {
        None
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_after_idle = rss();

    // 2. Subscribers.
    let vins: Vec<String> = (0..u64::from(args.vehicles))
        .map(|i| fleet::vin_of(args.vin_offset + i))
        .collect();
    let subs = if args.ws_clients > 0 {
        let every = u64::from(args.ws_latency_every);
        let per_vehicle = args.ws_per_vehicle;
        let vins = vins.clone();
        // A cluster: subscriber i on instance i mod N; under Spread::Connection
        // each instance's own vehicles are known, so the rest is cross-instance.
        let n = ctx.addrs.len();
        let homes: Vec<Arc<std::collections::HashSet<String>>> = (0..n)
            .map(|k| {
                Arc::new(
                    vins.iter()
                        .enumerate()
                        .filter(|(i, _)| {
                            load::home_instance(*i, args.connections, vins.len(), n) == k
                        })
                        .map(|(_, v)| v.clone())
                        .collect(),
                )
            })
            .collect();
        let split = n > 1 && args.spread == Spread::Connection;
        let addrs = ctx.addrs.clone();
        let spec = move |i: u64| {
            let k = (i % n as u64) as usize;
            ws::ClientSpec {
                vins: per_vehicle.then(|| vec![vins[(i % vins.len() as u64) as usize].clone()]),
                timed: i.is_multiple_of(every),
                addr: (n > 1).then(|| addrs[k]),
                local_vins: split.then(|| homes[k].clone()),
            }
        };
        let ws_addr = match &args.ws_url {
            Some(u) => spawn::loopback_addr(u)?,
            None => ctx.addr,
        };
        let g = ws::Group::connect(
            ws_addr,
            u64::from(args.ws_clients),
            spec,
            256,
            Duration::from_secs(60),
        )
        .await;
        // Let the server apply the subscriptions before the first reading.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Some(g)
    } else {
        None
    };
    let rss_after_ws = rss();

    // 3. The load.
    let catalog = Arc::new(Catalog::default_v1());
    let vehicles: Vec<fleet::Vehicle> = (0..args.vehicles as usize)
        .map(|i| {
            fleet::Vehicle::new(
                i,
                args.vin_offset + i as u64,
                args.form,
                catalog.clone(),
                args.seed,
            )
        })
        .collect();
    // PostgreSQL CPU: this database's backends and the background processes, not other databases'.
    let pg_url = match &ctx.store {
        Some(StoreAccess::Postgres(u)) => Some(u.clone()),
        _ => None,
    };
    let pg_pids_before = match &pg_url {
        Some(u) => store::pg_pids(u).await.unwrap_or_default(),
        None => Vec::new(),
    };
    let pg_cpu0 = procfs::cpu_of(&pg_pids_before);
    let timeout = Duration::from_secs_f64(args.request_timeout);
    let start = Instant::now();
    let run_for = if args.count.is_some() {
        Duration::from_secs(3600)
    } else {
        Duration::from_secs_f64(args.duration)
    };
    let plan = load::Plan {
        addrs: ctx.addrs.clone(),
        spread: args.spread,
        form: args.form,
        batch: args.batch,
        connections: args.connections.min(args.vehicles),
        deadline: args.count.is_none().then(|| start + run_for),
        count: args.count,
        rate: args.rate,
        timeout,
        device_token: ctx.device_token.clone(),
        hard_stop: start + run_for + Duration::from_secs(5),
    };
    let cpu0 = (cpu_sum(), procfs::self_cpu_seconds(), user_sys_sum());
    let inst_cpu0: Vec<Option<f64>> = pids.iter().map(|&p| procfs::cpu_seconds(p)).collect();
    let sampler = has_pid.then(|| procfs::RssSampler::start(pids.clone()));
    let out = load::run(plan, vehicles).await;
    let window_s = match (out.first_send, out.last_ack) {
        (Some(a), Some(b)) if b > a => (b - a).as_secs_f64(),
        _ => start.elapsed().as_secs_f64(),
    };

    // 4. Deliveries still in flight.
    let per_vehicle_acked: Vec<u64> = out.vehicles.iter().map(|v| v.acked).collect();
    let expected = if args.ws_clients == 0 {
        0
    } else if args.ws_per_vehicle {
        (0..u64::from(args.ws_clients))
            .map(|i| per_vehicle_acked[(i % per_vehicle_acked.len() as u64) as usize])
            .sum()
    } else {
        out.readings_acked * u64::from(args.ws_clients)
    };
    if let Some(g) = &subs {
        g.settle(expected, Duration::from_secs(1), Duration::from_secs(10))
            .await;
    }
    let cpu1 = (cpu_sum(), procfs::self_cpu_seconds(), user_sys_sum());
    let instances: Vec<report::InstanceReport> = pids
        .iter()
        .zip(&ctx.addrs)
        .zip(&inst_cpu0)
        .map(|((&pid, addr), c0)| report::InstanceReport {
            pid,
            url: format!("http://{addr}"),
            cpu_s: c0.zip(procfs::cpu_seconds(pid)).map(|(a, b)| b - a),
            rss_kib: procfs::rss_kib(pid),
        })
        .collect();
    let pg_cpu = match &pg_url {
        Some(u) => {
            // Backends opened during the load count from zero.
            let mut pids = store::pg_pids(u).await.unwrap_or_default();
            pids.extend(pg_pids_before.iter().copied());
            pids.sort_unstable();
            pids.dedup();
            let after = procfs::cpu_of(&pids);
            Some(
                after
                    .iter()
                    .map(|(p, c)| c - pg_cpu0.get(p).copied().unwrap_or(0.0))
                    .sum::<f64>(),
            )
        }
        None => None,
    };
    let rss_peak = match sampler {
        Some(s) => Some(s.finish().await),
        None => None,
    };
    let loadavg_end = procfs::loadavg();

    let mut errors = out.errors.clone();
    let mut add_err = |k: &str, v: u64| {
        if v > 0 {
            *errors.entry(k.to_owned()).or_default() += v;
        }
    };
    use std::sync::atomic::Ordering::Relaxed;
    let ws_report = match subs {
        Some(g) => {
            let (clients, timed) = (
                g.requested,
                g.requested.div_ceil(u64::from(args.ws_latency_every)),
            );
            let ws::Stopped {
                counters: c,
                latency_us: hist,
                remote_us,
                negative,
                ..
            } = g.stop().await;
            let delivered = c.telemetry.load(Relaxed);
            add_err("ws_connect", c.connect_errors.load(Relaxed));
            add_err("ws_closed_early", c.closed_early.load(Relaxed));
            WsReport {
                clients,
                per_vehicle: args.ws_per_vehicle,
                connected: c.connected.load(Relaxed),
                connect_errors: c.connect_errors.load(Relaxed),
                timed_clients: timed,
                delivered,
                expected,
                fraction_delivered: ratio(delivered as f64, expected as f64),
                msgs_per_s: delivered as f64 / window_s,
                latency_ms: Latency::from_us(&hist),
                latency_cross_instance_ms: Latency::from_us(&remote_us),
                negative_latency: negative,
                lagged_msgs: c.lagged_msgs.load(Relaxed),
                lagged_dropped: c.lagged_dropped.load(Relaxed),
                closed_early: c.closed_early.load(Relaxed),
            }
        }
        None => WsReport::default(),
    };
    let idle_report = match idle {
        Some(g) => {
            let (requested, connect_s) = (g.requested, g.connect_seconds);
            let ws::Stopped {
                counters: c, open, ..
            } = g.stop().await;
            let connected = c.connected.load(Relaxed);
            add_err("idle_ws_connect", c.connect_errors.load(Relaxed));
            add_err("idle_ws_closed_early", c.closed_early.load(Relaxed));
            let per_client = match (rss_idle, rss_after_idle) {
                (Some(a), Some(b)) if connected > 0 => {
                    Some((b as f64 - a as f64) / connected as f64)
                }
                _ => None,
            };
            IdleReport {
                requested,
                connected,
                connect_errors: c.connect_errors.load(Relaxed),
                connect_s,
                open_at_end: open,
                closed_early: c.closed_early.load(Relaxed),
                msgs_received: c.history.load(Relaxed)
                    + c.telemetry.load(Relaxed)
                    + c.other.load(Relaxed),
                server_rss_before_kib: rss_idle,
                server_rss_after_kib: rss_after_idle,
                server_kib_per_client: per_client,
            }
        }
        None => IdleReport::default(),
    };
    let rss_end = rss();
    let vm_hwm = has_pid
        .then(|| {
            pids.iter()
                .map(|&p| procfs::status_kib(p, "VmHWM"))
                .sum::<Option<u64>>()
        })
        .flatten();

    // 5. Committed rows, server status, raw limit.
    let committed = match (&ctx.store, rows_before) {
        (Some(s), Some(b)) => Some(store::count_rows(s).await?.saturating_sub(b)),
        _ => None,
    };
    let readings = committed.unwrap_or(out.readings_acked);
    let server_status = match http::get_json(ctx.addr, "/status", Duration::from_secs(5)).await {
        Ok((_, v)) => v,
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    };
    let readings_per_s = readings as f64 / window_s;
    let (raw_limit, server_sql_limit) = match (&ctx.store, args.no_raw_limit) {
        (Some(s), false) if readings > 0 => {
            let (raw, staged) = store::raw_limit(s, readings.max(1000))
                .await
                .context("raw storage limit")?;
            (Some(raw), staged)
        }
        _ => (None, None),
    };
    let ingest_over_raw = raw_limit
        .as_ref()
        .and_then(|r| ratio(readings_per_s, r.rows_per_s));
    let ingest_over_server_sql = server_sql_limit
        .as_ref()
        .and_then(|r| ratio(readings_per_s, r.rows_per_s));

    let per_reading = |cpu: Option<f64>| cpu.and_then(|c| ratio(c * 1e6, readings as f64));
    let server_cpu = cpu0.0.zip(cpu1.0).map(|(a, b)| b - a);
    let server_sys = cpu0.2.zip(cpu1.2).map(|(a, b)| b.1 - a.1);
    let bench_cpu = Some(cpu1.1 - cpu0.1);
    let errors_total = errors.values().sum();
    Ok(Report {
        label: args.label.clone(),
        started_unix_ms,
        machine: Machine {
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            mem_total_mib: procfs::mem_total_mib(),
            loadavg_start,
            loadavg_end,
        },
        config: args.clone(),
        server: ServerInfo {
            spawned: args.spawn.is_some(),
            binary: ctx.binary.as_ref().map(|b| b.display().to_string()),
            pid: pids.first().copied(),
            instances,
            spread: (pids.len() > 1).then_some(args.spread),
            url: ctx.url.clone(),
            store: ctx.store.as_ref().map(|s| s.kind().to_owned()),
            exit: None,
        },
        fd_limit: ctx.fd_limit.clone(),
        load: LoadReport {
            form: format!("{:?}", args.form).to_lowercase(),
            readings_per_request: args.readings_per_request(),
            vehicles: args.vehicles,
            connections: args.connections.min(args.vehicles),
            rate_offered: (args.rate > 0.0).then_some(args.rate),
            window_s,
            requests_ok: out.requests_ok,
            readings_sent: out.readings_sent,
            readings_acked: out.readings_acked,
            readings_committed: committed,
            readings_per_s,
            readings_per_s_acked: out.readings_acked as f64 / window_s,
            requests_per_s: out.requests_ok as f64 / window_s,
            bytes_sent: out.bytes_sent,
            bytes_per_reading: ratio(out.bytes_sent as f64, out.readings_sent as f64)
                .unwrap_or(0.0),
            fields_total: out.fields_total,
            fields_transmitted: out.fields_transmitted,
            skipped_fraction: ratio(
                (out.fields_total - out.fields_transmitted) as f64,
                out.fields_total as f64,
            )
            .unwrap_or(0.0),
            timestamps_clamped: out.vehicles.iter().map(|v| v.clamped).sum(),
            retries: out.retries,
        },
        ack_latency_ms: Latency::from_us(&out.ack_us),
        errors,
        errors_total,
        ws: ws_report,
        idle_ws: idle_report,
        server_proc: ProcReport {
            cpu_s: server_cpu,
            cpu_us_per_reading: per_reading(server_cpu),
            cpu_pct_of_core: server_cpu.map(|c| 100.0 * c / window_s),
            sys_s: server_sys,
            rss_idle_kib: rss_idle,
            rss_after_ws_kib: rss_after_ws,
            rss_peak_kib: rss_peak,
            vm_hwm_kib: vm_hwm,
            rss_end_kib: rss_end,
        },
        postgres_proc: CpuReport {
            cpu_s: pg_cpu,
            cpu_us_per_reading: per_reading(pg_cpu),
        },
        bench_proc: CpuReport {
            cpu_s: bench_cpu,
            cpu_us_per_reading: per_reading(bench_cpu),
        },
        raw_limit,
        server_sql_limit,
        ingest_over_server_sql,
        ingest_over_raw,
        server_status,
    })
}
