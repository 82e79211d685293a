//! `lockstep-bench history`: the read side. Starts a server, loads one
//! vehicle-day (86,400 readings, one a second, through the lockstep ingest
//! path), then times `GET /api/vehicles/{vin}/telemetry` as a client sees it:
//! the day downsampled to 1,000 buckets (`step=86400`), a raw page of 10,000
//! readings (at the start of the day and from noon), and the whole day as
//! CSV. Then it shows the plan the database uses for a page and for the
//! buckets (`EXPLAIN QUERY PLAN` / `EXPLAIN (ANALYZE, BUFFERS)`) and times
//! the same requests once more without the `(vehicle_id, ts, …)` index, to
//! measure what the index buys.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use clap::Parser;
use lockstep_codec::{Catalog, Encoder, EncoderConfig, Reading, Vin};
use lockstep_server::model::Signals;
use lockstep_server::store::SignalColumns;
use lockstep_server::store::query::{Dialect, ReadSql};
use prost::Message as _;
use serde::Serialize;

use crate::cli::StoreKind;
use crate::http::Conn;
use crate::spawn::{Spawned, default_binary};
use crate::store::StoreAccess;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "lockstep-bench history",
    about = "Times the history API on one vehicle-day (86,400 readings).",
    after_help = "Example:\n  lockstep-bench history --store postgres --out bench/results/history-postgres.json"
)]
pub struct HistoryArgs {
    /// Store of the spawned server (a fresh SQLite file or PostgreSQL database).
    #[arg(long, value_enum, default_value_t = StoreKind::Sqlite)]
    pub store: StoreKind,
    /// The lockstep-server binary; default: beside this executable.
    #[arg(long)]
    pub server: Option<PathBuf>,
    /// Where a fresh PostgreSQL database is created (and dropped after).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub pg_admin_url: String,
    /// Timed repetitions of each request (the median and the best are reported).
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub repeats: u32,
    /// Also write the JSON report here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// 2025-11-25T00:00:00Z: the day that is loaded.
const DAY_START: i64 = 1_764_028_800_000;
const DAY_MS: i64 = 86_400_000;
const READINGS: usize = 86_400;
const VIN: &str = "5YJ3E1EA000000001";
const INDEX: &str = "telemetry_vehicle_ts";

#[derive(Debug, Serialize)]
pub struct HistoryReport {
    pub store: StoreKind,
    pub readings: usize,
    pub load_seconds: f64,
    pub loadavg_before: [f64; 3],
    pub loadavg_after: [f64; 3],
    pub with_index: Vec<Timing>,
    pub without_index: Vec<Timing>,
    /// The database's plan for a page and for the buckets, with the index.
    pub plans: Vec<Plan>,
}

#[derive(Debug, Serialize)]
pub struct Timing {
    pub name: &'static str,
    pub path: String,
    /// Items in the answer (buckets, readings or CSV lines).
    pub items: usize,
    pub bytes: usize,
    pub best_ms: f64,
    pub median_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Plan {
    pub query: &'static str,
    pub lines: Vec<String>,
}

pub async fn run(args: HistoryArgs) -> anyhow::Result<HistoryReport> {
    let binary = match &args.server {
        Some(p) => p.clone(),
        None => default_binary()?,
    };
    let server = Spawned::start(binary, args.store, &args.pg_admin_url, &[], false).await?;
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

async fn measure(server: &Spawned, args: &HistoryArgs) -> anyhow::Result<HistoryReport> {
    let timeout = Duration::from_secs(120);
    let mut conn = Conn::connect(server.addr, timeout).await?;
    let loadavg_before = crate::procfs::loadavg();
    let load_seconds = load_day(&mut conn, timeout).await?;

    let requests = [
        (
            "day_in_1000_buckets",
            format!(
                "/api/vehicles/{VIN}/telemetry?from={DAY_START}&to={}&step=86400",
                DAY_START + DAY_MS
            ),
            1_000,
        ),
        (
            "raw_page_10000_day_start",
            format!(
                "/api/vehicles/{VIN}/telemetry?from={DAY_START}&to={}&limit=10000",
                DAY_START + DAY_MS
            ),
            10_000,
        ),
        (
            "raw_page_10000_from_noon",
            format!(
                "/api/vehicles/{VIN}/telemetry?from={}&to={}&limit=10000",
                DAY_START + DAY_MS / 2,
                DAY_START + DAY_MS
            ),
            10_000,
        ),
        (
            "csv_whole_day",
            format!(
                "/api/vehicles/{VIN}/telemetry?from={DAY_START}&to={}&format=csv",
                DAY_START + DAY_MS
            ),
            READINGS + 1,
        ),
    ];
    let mut with_index = Vec::new();
    for (name, path, items) in &requests {
        with_index.push(time(&mut conn, name, path, *items, args.repeats, timeout).await?);
    }
    let plans = plans(&server.store).await?;
    set_index(&server.store, false).await?;
    let mut without_index = Vec::new();
    for (name, path, items) in &requests {
        without_index.push(time(&mut conn, name, path, *items, args.repeats, timeout).await?);
    }
    set_index(&server.store, true).await?;
    Ok(HistoryReport {
        store: args.store,
        readings: READINGS,
        load_seconds,
        loadavg_before,
        loadavg_after: crate::procfs::loadavg(),
        with_index,
        without_index,
        plans,
    })
}

/// One reading a second for a day, in lockstep batches of 1,000.
async fn load_day(conn: &mut Conn, timeout: Duration) -> anyhow::Result<f64> {
    let catalog = std::sync::Arc::new(Catalog::default_v1());
    let mut enc = Encoder::new(catalog, Vin::parse(VIN)?, 0x5eed, EncoderConfig::default());
    let started = Instant::now();
    for chunk in (0..READINGS).collect::<Vec<_>>().chunks(1_000) {
        for &k in chunk {
            let t = k as f64;
            enc.push(&Reading {
                timestamp_ms: DAY_START + k as i64 * 1000,
                values: vec![
                    Some((60.0 + 40.0 * (t / 600.0).sin()).max(0.0)),
                    Some(95.0 - 60.0 * t / READINGS as f64),
                    Some(20.0 * (t / 90.0).cos()),
                    Some((t * 0.05) % 360.0),
                    Some(48.85 + 0.1 * (t / 5_000.0).sin()),
                    Some(2.35 + 0.1 * (t / 7_000.0).cos()),
                    Some(35.0 + 10.0 * (t / 3_000.0).sin()),
                ],
            });
        }
        let batch = enc.take_batch().context("a batch")?;
        let a = conn
            .request(
                "POST",
                "/api/telemetry",
                Some("application/x-lockstep-batch"),
                Bytes::from(batch.encode_to_vec()),
                timeout,
            )
            .await?;
        ensure!(
            a.status.is_success(),
            "ingest answered {}: {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        );
    }
    Ok(started.elapsed().as_secs_f64())
}

async fn time(
    conn: &mut Conn,
    name: &'static str,
    path: &str,
    items: usize,
    repeats: u32,
    timeout: Duration,
) -> anyhow::Result<Timing> {
    let mut ms = Vec::new();
    let mut bytes = 0;
    for _ in 0..repeats {
        let t = Instant::now();
        let a = conn
            .request("GET", path, None, Bytes::new(), timeout)
            .await?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        if !a.status.is_success() {
            bail!(
                "GET {path} answered {}: {}",
                a.status,
                String::from_utf8_lossy(&a.body)
            );
        }
        let got = if name.starts_with("csv") {
            a.body.iter().filter(|&&b| b == b'\n').count()
        } else {
            let v: serde_json::Value = serde_json::from_slice(&a.body)?;
            v["buckets"]
                .as_array()
                .or(v["readings"].as_array())
                .map_or(0, Vec::len)
        };
        ensure!(got == items, "GET {path}: {got} items, expected {items}");
        bytes = a.body.len();
    }
    ms.sort_by(f64::total_cmp);
    Ok(Timing {
        name,
        path: path.to_owned(),
        items,
        bytes,
        best_ms: ms[0],
        median_ms: ms[ms.len() / 2],
    })
}

/// The statements the server runs, with the benchmark's values bound.
fn statements(d: Dialect) -> anyhow::Result<ReadSql> {
    let cols = SignalColumns::new(&Signals::from_catalog(&Catalog::default_v1()))?;
    Ok(ReadSql::new(&cols, d))
}

async fn plans(store: &StoreAccess) -> anyhow::Result<Vec<Plan>> {
    let (from, to) = (DAY_START + DAY_MS / 2, DAY_START + DAY_MS);
    match store {
        StoreAccess::Sqlite(path) => {
            let sql = statements(Dialect::Sqlite)?;
            let conn = rusqlite::Connection::open(path)?;
            let id: i64 = conn.query_row("SELECT id FROM vehicles WHERE vin = ?1", [VIN], |r| {
                r.get(0)
            })?;
            let plan = |query: &'static str, text: &str, params: &[i64]| -> anyhow::Result<Plan> {
                let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {text}"))?;
                let lines = st
                    .query_map(rusqlite::params_from_iter(params.iter()), |r| {
                        r.get::<_, String>(3)
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Plan { query, lines })
            };
            Ok(vec![
                plan(
                    "page",
                    &sql.page,
                    &[id, from, to, i64::MIN, i64::MIN, i64::MIN, 10_001],
                )?,
                plan("buckets", &sql.buckets, &[id, DAY_START, to, 86_400])?,
            ])
        }
        StoreAccess::Postgres(url) => {
            let sql = statements(Dialect::Postgres)?;
            let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            c.batch_execute("ANALYZE telemetry_data").await?;
            let id: i64 = c
                .query_one("SELECT id FROM vehicles WHERE vin = $1", &[&VIN])
                .await?
                .get(0);
            let mut out = Vec::new();
            for (query, text, args) in [
                (
                    "page",
                    &sql.page,
                    format!("{id}, {from}, {to}, {m}, {m}, {m}, 10001", m = i64::MIN),
                ),
                (
                    "buckets",
                    &sql.buckets,
                    format!("{id}, {DAY_START}, {to}, 86400"),
                ),
            ] {
                c.batch_execute(&format!("PREPARE bench_{query} AS {text}"))
                    .await?;
                let rows = c
                    .simple_query(&format!(
                        "EXPLAIN (ANALYZE, BUFFERS) EXECUTE bench_{query}({args})"
                    ))
                    .await?;
                let lines = rows
                    .into_iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                        _ => None,
                    })
                    .collect();
                out.push(Plan { query, lines });
            }
            Ok(out)
        }
    }
}

/// Drops or recreates the history index (the migration's definition).
async fn set_index(store: &StoreAccess, present: bool) -> anyhow::Result<()> {
    let sql = if present {
        format!("CREATE INDEX {INDEX} ON telemetry_data (vehicle_id, ts, session_id, seq)")
    } else {
        format!("DROP INDEX {INDEX}")
    };
    match store {
        StoreAccess::Sqlite(path) => {
            let conn = rusqlite::Connection::open(path)?;
            conn.busy_timeout(Duration::from_secs(10))?;
            conn.execute_batch(&sql)?;
        }
        StoreAccess::Postgres(url) => {
            let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
            tokio::spawn(conn);
            c.batch_execute(&sql).await?;
            c.batch_execute("ANALYZE telemetry_data").await?;
        }
    }
    Ok(())
}

/// A Markdown table of the timings.
pub fn table(r: &HistoryReport) -> String {
    let mut s = format!(
        "history on {:?}: {} readings loaded in {:.1} s; loadavg {:?} -> {:?}\n\n| request | items | bytes | median ms | best ms | median ms without index |\n|---|---:|---:|---:|---:|---:|\n",
        r.store, r.readings, r.load_seconds, r.loadavg_before, r.loadavg_after
    );
    for (a, b) in r.with_index.iter().zip(&r.without_index) {
        s += &format!(
            "| {} | {} | {} | {:.1} | {:.1} | {:.1} |\n",
            a.name, a.items, a.bytes, a.median_ms, a.best_ms, b.median_ms
        );
    }
    for p in &r.plans {
        s += &format!("\n{} plan:\n    {}\n", p.query, p.lines.join("\n    "));
    }
    s
}
