//! Every figure of a run: the JSON written by `--json` (every key always
//! present, `null` where a figure does not apply) and the human table.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cli::{Args, Spread};
use crate::spawn::FdLimit;
use crate::store::RawLimit;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub label: Option<String>,
    pub started_unix_ms: i64,
    pub machine: Machine,
    pub config: Args,
    pub server: ServerInfo,
    pub fd_limit: FdLimit,
    pub load: LoadReport,
    /// HTTP 2xx answers: time from sending the request to the whole answer.
    pub ack_latency_ms: Latency,
    /// Errors by kind: `http_<status>`, `connect`, `timeout`, `io`, `ws_connect`, …
    pub errors: BTreeMap<String, u64>,
    pub errors_total: u64,
    pub ws: WsReport,
    pub idle_ws: IdleReport,
    pub server_proc: ProcReport,
    pub postgres_proc: CpuReport,
    pub bench_proc: CpuReport,
    pub raw_limit: Option<RawLimit>,
    /// readings/s committed ÷ raw limit rows/s.
    pub ingest_over_raw: Option<f64>,
    /// PostgreSQL: the same rows through the server's staging path alone (staging
    /// table + `INSERT … SELECT … ON CONFLICT`; its fallback for large commits),
    /// without HTTP or the server.
    pub server_sql_limit: Option<RawLimit>,
    /// readings/s committed ÷ server SQL path rows/s.
    pub ingest_over_server_sql: Option<f64>,
    /// `GET /status` after the load.
    pub server_status: serde_json::Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub mem_total_mib: u64,
    pub loadavg_start: [f64; 3],
    pub loadavg_end: [f64; 3],
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerInfo {
    pub spawned: bool,
    pub binary: Option<String>,
    pub pid: Option<u32>,
    /// Every instance (one unless `--instances`); `server_proc` sums them.
    pub instances: Vec<InstanceReport>,
    /// How the load spread over the instances (`null` with one).
    pub spread: Option<Spread>,
    pub url: String,
    pub store: Option<String>,
    pub exit: Option<String>,
}

/// One instance of a cluster.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceReport {
    pub pid: u32,
    pub url: String,
    /// CPU seconds during the load.
    pub cpu_s: Option<f64>,
    /// RSS at the end of the load.
    pub rss_kib: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub form: String,
    pub readings_per_request: u32,
    pub vehicles: u32,
    pub connections: u32,
    /// Offered readings/s; `null` = closed loop.
    pub rate_offered: Option<f64>,
    /// First request sent → last 2xx received.
    pub window_s: f64,
    pub requests_ok: u64,
    pub readings_sent: u64,
    pub readings_acked: u64,
    /// Rows added to `telemetry_data` (counted in the store), if the store was reachable.
    pub readings_committed: Option<u64>,
    /// Committed (or, without store access, acked) readings per second of the window.
    pub readings_per_s: f64,
    pub readings_per_s_acked: f64,
    pub requests_per_s: f64,
    pub bytes_sent: u64,
    pub bytes_per_reading: f64,
    pub fields_total: u64,
    pub fields_transmitted: u64,
    /// Share of non-null field values the edge did not send.
    pub skipped_fraction: f64,
    /// Readings whose timestamp was moved past the wall clock.
    pub timestamps_clamped: u64,
    pub retries: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
}

impl Latency {
    /// "p50 …  p99 …  p999 …  max …", as every latency line of the table prints it.
    fn quantiles(&self) -> String {
        format!(
            "p50 {}  p99 {}  p999 {}  max {}",
            opt(self.p50, 2),
            opt(self.p99, 2),
            opt(self.p999, 2),
            opt(self.max, 2)
        )
    }

    /// From a histogram of microseconds.
    pub fn from_us(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |v: u64| Some(v as f64 / 1000.0);
        Self {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: Some(h.mean() / 1000.0),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct WsReport {
    pub clients: u64,
    pub per_vehicle: bool,
    pub connected: u64,
    pub connect_errors: u64,
    pub timed_clients: u64,
    /// Telemetry messages received by all subscribers.
    pub delivered: u64,
    /// Acked readings × subscribers that should get them.
    pub expected: u64,
    pub fraction_delivered: Option<f64>,
    pub msgs_per_s: f64,
    /// Receipt time − the reading's timestamp (wall clock ms at send; +0..1 ms of truncation).
    pub latency_ms: Latency,
    /// Of `latency_ms`, the readings ingested by another instance than the
    /// subscriber's (a cluster under `--spread connection`; empty otherwise).
    pub latency_cross_instance_ms: Latency,
    pub negative_latency: u64,
    pub lagged_msgs: u64,
    pub lagged_dropped: u64,
    pub closed_early: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct IdleReport {
    pub requested: u64,
    pub connected: u64,
    pub connect_errors: u64,
    pub connect_s: f64,
    pub open_at_end: u64,
    pub closed_early: u64,
    pub msgs_received: u64,
    pub server_rss_before_kib: Option<u64>,
    pub server_rss_after_kib: Option<u64>,
    pub server_kib_per_client: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcReport {
    pub cpu_s: Option<f64>,
    pub cpu_us_per_reading: Option<f64>,
    /// CPU seconds ÷ window, in % of one core.
    pub cpu_pct_of_core: Option<f64>,
    /// The kernel's share of `cpu_s` (stime: syscalls, wake-ups).
    pub sys_s: Option<f64>,
    /// Right after start-up (or before the run), before any client connected.
    pub rss_idle_kib: Option<u64>,
    /// After the WebSocket clients (idle and subscribers) connected.
    pub rss_after_ws_kib: Option<u64>,
    /// Highest sampled RSS (every 100 ms) during the load.
    pub rss_peak_kib: Option<u64>,
    /// The kernel's high-water mark (VmHWM) over the process's life.
    pub vm_hwm_kib: Option<u64>,
    pub rss_end_kib: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CpuReport {
    pub cpu_s: Option<f64>,
    pub cpu_us_per_reading: Option<f64>,
}

fn n0(v: f64) -> String {
    let s = format!("{:.0}", v);
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

fn mib(k: Option<u64>) -> String {
    k.map_or("-".into(), |k| format!("{:.1}", k as f64 / 1024.0))
}

impl Report {
    /// The human table.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let l = &self.load;
        let w = |t: &mut String, k: &str, v: String| {
            let _ = writeln!(t, "  {k:<24} {v}");
        };
        let _ = writeln!(
            t,
            "lockstep-bench{}: {} form{}, store {}, {} vehicles, {} connections, {}",
            self.label
                .as_deref()
                .map(|s| format!(" [{s}]"))
                .unwrap_or_default(),
            l.form,
            if l.readings_per_request > 1 {
                format!(" (batch {})", l.readings_per_request)
            } else {
                String::new()
            },
            self.server.store.as_deref().unwrap_or("?"),
            l.vehicles,
            l.connections,
            l.rate_offered.map_or("closed loop".into(), |r| format!(
                "offered {} readings/s",
                n0(r)
            ))
        );
        w(
            &mut t,
            "readings committed",
            match l.readings_committed {
                Some(c) => format!(
                    "{} (counted in telemetry_data; acked {}) in {:.2} s",
                    n0(c as f64),
                    n0(l.readings_acked as f64),
                    l.window_s
                ),
                None => format!(
                    "not counted (no store access); acked {} in {:.2} s",
                    n0(l.readings_acked as f64),
                    l.window_s
                ),
            },
        );
        w(
            &mut t,
            "readings/s",
            format!(
                "{}   (requests/s {})",
                n0(l.readings_per_s),
                n0(l.requests_per_s)
            ),
        );
        let a = &self.ack_latency_ms;
        w(&mut t, "ack latency ms", a.quantiles());
        let s = &self.server_proc;
        w(
            &mut t,
            "server CPU",
            format!(
                "{} s = {} µs/reading ({} % of one core; {} s of it in the kernel)",
                opt(s.cpu_s, 2),
                opt(s.cpu_us_per_reading, 1),
                opt(s.cpu_pct_of_core, 0),
                opt(s.sys_s, 2)
            ),
        );
        if self.postgres_proc.cpu_s.is_some() {
            w(
                &mut t,
                "PostgreSQL CPU",
                format!(
                    "{} s = {} µs/reading",
                    opt(self.postgres_proc.cpu_s, 2),
                    opt(self.postgres_proc.cpu_us_per_reading, 1)
                ),
            );
        }
        w(
            &mut t,
            "bench CPU",
            format!(
                "{} s = {} µs/reading",
                opt(self.bench_proc.cpu_s, 2),
                opt(self.bench_proc.cpu_us_per_reading, 1)
            ),
        );
        if self.server.instances.len() > 1 {
            w(
                &mut t,
                "instances",
                format!(
                    "{} ({} spread; Redis bridge): CPU s {}",
                    self.server.instances.len(),
                    match self.server.spread {
                        Some(Spread::Request) => "per-request",
                        _ => "per-connection",
                    },
                    self.server
                        .instances
                        .iter()
                        .map(|i| opt(i.cpu_s, 2))
                        .collect::<Vec<_>>()
                        .join(" / ")
                ),
            );
        }
        w(
            &mut t,
            "server RSS MiB",
            format!(
                "idle {}  after WS {}  peak {} (VmHWM {})  end {}",
                mib(s.rss_idle_kib),
                mib(s.rss_after_ws_kib),
                mib(s.rss_peak_kib),
                mib(s.vm_hwm_kib),
                mib(s.rss_end_kib)
            ),
        );
        w(
            &mut t,
            "wire",
            format!(
                "{:.1} bytes/reading, {:.1} % of fields skipped by the edge",
                l.bytes_per_reading,
                100.0 * l.skipped_fraction
            ),
        );
        let ws = &self.ws;
        if ws.clients > 0 {
            w(
                &mut t,
                "WebSocket subscribers",
                format!(
                    "{} ({}), {} connected; delivered {} of {} ({} %), {} msg/s",
                    ws.clients,
                    if ws.per_vehicle {
                        "one vehicle each"
                    } else {
                        "all vehicles"
                    },
                    ws.connected,
                    n0(ws.delivered as f64),
                    n0(ws.expected as f64),
                    opt(ws.fraction_delivered.map(|f| f * 100.0), 2),
                    n0(ws.msgs_per_s)
                ),
            );
            w(
                &mut t,
                "WS delivery latency ms",
                format!(
                    "{}  ({} timed msgs on {} clients; lagged {} msgs, {} dropped)",
                    ws.latency_ms.quantiles(),
                    n0(ws.latency_ms.count as f64),
                    ws.timed_clients,
                    ws.lagged_msgs,
                    ws.lagged_dropped
                ),
            );
            let x = &ws.latency_cross_instance_ms;
            if x.count > 0 {
                w(
                    &mut t,
                    "  of which cross-instance",
                    format!(
                        "{}  ({} timed msgs ingested by another instance)",
                        x.quantiles(),
                        n0(x.count as f64)
                    ),
                );
            }
        }
        let i = &self.idle_ws;
        if i.requested > 0 {
            w(
                &mut t,
                "idle WebSocket clients",
                format!(
                    "{} requested, {} connected in {:.1} s, {} still open at the end; server RSS {} → {} MiB = {} KiB/client",
                    i.requested,
                    i.connected,
                    i.connect_s,
                    i.open_at_end,
                    mib(i.server_rss_before_kib),
                    mib(i.server_rss_after_kib),
                    opt(i.server_kib_per_client, 1)
                ),
            );
        }
        w(
            &mut t,
            "errors",
            if self.errors.is_empty() {
                "none".into()
            } else {
                self.errors
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        );
        match &self.raw_limit {
            Some(r) => w(
                &mut t,
                "raw storage limit",
                format!(
                    "{} rows in {:.2} s = {} rows/s; ingest/raw = {}  [{}]",
                    n0(r.rows as f64),
                    r.seconds,
                    n0(r.rows_per_s),
                    opt(self.ingest_over_raw, 3),
                    r.method
                ),
            ),
            None => w(&mut t, "raw storage limit", "not measured".into()),
        }
        if let Some(r) = &self.server_sql_limit {
            w(
                &mut t,
                "staging path alone",
                format!(
                    "{} rows in {:.2} s = {} rows/s; ingest/that = {}  [{}]",
                    n0(r.rows as f64),
                    r.seconds,
                    n0(r.rows_per_s),
                    opt(self.ingest_over_server_sql, 3),
                    r.method
                ),
            );
        }
        w(
            &mut t,
            "machine",
            format!(
                "{} cores, {} MiB; load average {:.2} → {:.2}; fd limit {:?} ({})",
                self.machine.nproc,
                self.machine.mem_total_mib,
                self.machine.loadavg_start[0],
                self.machine.loadavg_end[0],
                self.fd_limit.soft_after,
                self.fd_limit.note
            ),
        );
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands() {
        assert_eq!(n0(1234567.4), "1,234,567");
        assert_eq!(n0(999.0), "999");
        assert_eq!(n0(-1000.0), "-1,000");
    }
}
