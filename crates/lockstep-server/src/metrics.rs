//! Prometheus metrics, modelled on fleet-telemetry's families, served at
//! `/metrics`. Each [`App`](crate::App) owns its own recorder (no global
//! one), so servers started side by side in one process (the tests) count
//! separately and a test can check exact deltas.
//!
//! Hot-path cost: handles are registered once ([`Metrics::new`]) and bumped
//! with one atomic add per batch (never per reading); the route × status
//! counter is registered on first use and then found in a small map. Gauges
//! that mirror state the server already keeps (WebSocket clients, store
//! health, logger) are read when `/metrics` is rendered, not maintained.
//!
//! Families: `lockstep_readings_total{form,outcome}`,
//! `lockstep_fields_total{signal,transmitted}`,
//! `lockstep_requests_total{route,status}`, `lockstep_commit_seconds` and
//! `lockstep_commit_rows` (histograms), `lockstep_ws_clients`,
//! `lockstep_ws_messages_total`, `lockstep_ws_dropped_total`,
//! `lockstep_resyncs_total{kind}`, `lockstep_session_retries_total{cause}`,
//! `lockstep_store_up`,
//! `lockstep_logger_running`, `lockstep_build_info{version}`, the
//! downstream sinks' `lockstep_sink_lag_readings{sink}`,
//! `lockstep_sink_connected{sink}`,
//! `lockstep_sink_forwarded_readings_total{sink}` and
//! `lockstep_sink_publish_failures_total{sink}` (registered per configured
//! sink, [`Metrics::sink`]), and `process_*` (resident memory, CPU seconds,
//! open fds, start time).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use metrics::{Counter, Gauge, Histogram, Label, Recorder as _, with_local_recorder};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};

use crate::model::Signals;

/// The wire form of a request, as the `form` label spells it.
pub const FORMS: [&str; 2] = ["seed", "batch"];
/// `outcome` label values: stored, duplicate (already stored, acknowledged
/// again), refused (the request was answered 4xx/5xx; its readings are
/// counted when the body said how many).
pub const OUTCOMES: [&str; 3] = ["stored", "duplicate", "refused"];
/// Resync kinds (the 409 answers' `kind`).
pub const RESYNC_KINDS: [&str; 5] = [
    "catalog_mismatch",
    "unknown_session",
    "gap",
    "overlap",
    "checksum_mismatch",
];

/// One server's metrics: its recorder and the handles registered in it.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    recorder: PrometheusRecorder,
    h: Handles,
    /// `lockstep_requests_total` handles by route pattern, then status: registered
    /// on a route's first answer with that status, then bumped like the others.
    /// Bounded: the routes are the router's patterns (and "unmatched").
    requests: RwLock<HashMap<String, Vec<(u16, Counter)>>>,
}

/// Handles registered in the recorder once.
struct Handles {
    /// [form][outcome].
    readings: Vec<Vec<Counter>>,
    /// Per channel: [not transmitted, transmitted].
    fields: Vec<[Counter; 2]>,
    resyncs: Vec<Counter>,
    /// [stale, batch]: see [`Metrics::stale_session`].
    session_retries: [Counter; 2],
    commit_seconds: Histogram,
    commit_rows: Histogram,
    ws_messages: Counter,
}

impl Metrics {
    pub fn new(signals: &Signals) -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("lockstep_commit_seconds".into()),
                &[
                    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ],
            )
            .and_then(|b| {
                b.set_buckets_for_metric(
                    Matcher::Full("lockstep_commit_rows".into()),
                    &[
                        1.0, 10.0, 50.0, 100.0, 500.0, 1_000.0, 5_000.0, 10_000.0, 50_000.0,
                    ],
                )
            })
            .expect("bucket lists are not empty")
            .build_recorder();
        let h = with_local_recorder(&recorder, || {
            metrics::describe_counter!(
                "lockstep_readings_total",
                "Readings received, by wire form and outcome."
            );
            metrics::describe_counter!(
                "lockstep_fields_total",
                "Stored non-null field values, by signal and whether they were transmitted."
            );
            metrics::describe_counter!(
                "lockstep_requests_total",
                "HTTP requests answered, by route and status."
            );
            metrics::describe_histogram!(
                "lockstep_commit_seconds",
                metrics::Unit::Seconds,
                "Duration of one store transaction of the writer."
            );
            metrics::describe_histogram!(
                "lockstep_commit_rows",
                metrics::Unit::Count,
                "Readings per store transaction of the writer."
            );
            metrics::describe_counter!(
                "lockstep_resyncs_total",
                "Batches answered 409 (the edge must resync), by kind."
            );
            metrics::describe_counter!(
                "lockstep_session_retries_total",
                "Requests decoded again because another server instance advanced their session first (cause=stale), or because the batch they were in was given up for another request's (cause=batch)."
            );
            metrics::describe_gauge!("lockstep_ws_clients", "Connected WebSocket clients.");
            metrics::describe_counter!(
                "lockstep_ws_messages_total",
                "Messages written to WebSocket clients."
            );
            metrics::describe_counter!(
                "lockstep_ws_dropped_total",
                "Messages dropped for WebSocket clients that were too slow."
            );
            metrics::describe_gauge!("lockstep_store_up", "1 when the store accepts writes.");
            metrics::describe_gauge!("lockstep_logger_running", "1 while the logger child runs.");
            Handles {
                readings: FORMS
                    .iter()
                    .map(|f| {
                        OUTCOMES
                            .iter()
                            .map(|o| {
                                metrics::counter!("lockstep_readings_total", "form" => *f, "outcome" => *o)
                            })
                            .collect()
                    })
                    .collect(),
                fields: signals
                    .names()
                    .iter()
                    .map(|n| {
                        let n = n.to_string();
                        [
                            metrics::counter!("lockstep_fields_total", "signal" => n.clone(), "transmitted" => "false"),
                            metrics::counter!("lockstep_fields_total", "signal" => n, "transmitted" => "true"),
                        ]
                    })
                    .collect(),
                resyncs: RESYNC_KINDS
                    .iter()
                    .map(|k| metrics::counter!("lockstep_resyncs_total", "kind" => *k))
                    .collect(),
                session_retries: ["stale", "batch"].map(
                    |c| metrics::counter!("lockstep_session_retries_total", "cause" => c),
                ),
                commit_seconds: metrics::histogram!("lockstep_commit_seconds"),
                commit_rows: metrics::histogram!("lockstep_commit_rows"),
                ws_messages: metrics::counter!("lockstep_ws_messages_total"),
            }
        });
        Self {
            inner: Arc::new(Inner {
                recorder,
                h,
                requests: RwLock::default(),
            }),
        }
    }

    /// Readings of one request: `form` 0 = seed, 1 = batch; `outcome` an index of [`OUTCOMES`].
    pub fn readings(&self, form: usize, outcome: usize, n: u64) {
        if n > 0 {
            self.inner.h.readings[form][outcome].increment(n);
        }
    }

    /// Per-channel field counts of one request: `[not transmitted, transmitted]`.
    pub fn fields(&self, counts: &[[u64; 2]]) {
        for (c, n) in self.inner.h.fields.iter().zip(counts) {
            for t in 0..2 {
                if n[t] > 0 {
                    c[t].increment(n[t]);
                }
            }
        }
    }

    pub fn resync(&self, kind: &str) {
        if let Some(i) = RESYNC_KINDS.iter().position(|k| *k == kind) {
            self.inner.h.resyncs[i].increment(1);
        }
    }

    /// A request that decodes again: its own session was advanced by
    /// another instance (`own`), or its batch was given up for another's.
    pub fn stale_session(&self, own: bool) {
        self.inner.h.session_retries[usize::from(!own)].increment(1);
    }

    /// One writer transaction.
    pub fn commit(&self, seconds: f64, rows: usize) {
        self.inner.h.commit_seconds.record(seconds);
        self.inner.h.commit_rows.record(rows as f64);
    }

    pub fn ws_messages(&self, n: usize) {
        self.inner.h.ws_messages.increment(n as u64);
    }

    /// One answered HTTP request (`route`: the matched route pattern).
    pub fn request(&self, route: &str, status: u16) {
        let cached = |m: &HashMap<String, Vec<(u16, Counter)>>| {
            m.get(route)
                .and_then(|v| v.iter().find(|(s, _)| *s == status))
                .map(|(_, c)| c.clone())
        };
        let known = cached(
            &self
                .inner
                .requests
                .read()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let counter = known.unwrap_or_else(|| {
            let mut m = self
                .inner
                .requests
                .write()
                .unwrap_or_else(|p| p.into_inner());
            cached(&m).unwrap_or_else(|| {
                let c = self.register_request(route, status);
                m.entry(route.to_owned())
                    .or_default()
                    .push((status, c.clone()));
                c
            })
        });
        counter.increment(1);
    }

    fn register_request(&self, route: &str, status: u16) -> Counter {
        let key = metrics::Key::from_parts(
            "lockstep_requests_total",
            vec![
                Label::new("route", route.to_owned()),
                Label::new("status", status.to_string()),
            ],
        );
        let meta = metrics::Metadata::new(module_path!(), metrics::Level::INFO, None);
        self.inner.recorder.register_counter(&key, &meta)
    }

    /// The Prometheus text, with the gauges of `now` set first.
    pub fn render(&self, now: &Snapshot) -> String {
        let r = &self.inner.recorder;
        with_local_recorder(r, || {
            metrics::gauge!("lockstep_ws_clients").set(now.ws_clients as f64);
            metrics::counter!("lockstep_ws_dropped_total").absolute(now.ws_dropped);
            metrics::gauge!("lockstep_store_up").set(f64::from(u8::from(now.store_up)));
            metrics::gauge!("lockstep_logger_running").set(f64::from(u8::from(now.logger_running)));
            metrics::gauge!("lockstep_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        });
        let mut text = r.handle().render();
        text.push_str(&process_metrics());
        text
    }
}

/// The handles of one downstream sink, registered in its server's recorder.
#[derive(Clone)]
pub struct SinkMetrics {
    /// Readings stored but not yet acknowledged by the broker.
    pub lag: Gauge,
    /// 1 while the broker connection is up.
    pub connected: Gauge,
    /// Readings published and acknowledged.
    pub forwarded: Counter,
    /// Batches whose publication failed (published again later).
    pub failures: Counter,
}

impl Metrics {
    /// Registers the families of the sink `name` (`nats`, `mqtt`); all four
    /// series show from the start (lag and failures at 0).
    pub fn sink(&self, name: &'static str) -> SinkMetrics {
        with_local_recorder(&self.inner.recorder, || {
            metrics::describe_gauge!(
                "lockstep_sink_lag_readings",
                "Readings stored but not yet acknowledged by the sink's broker."
            );
            metrics::describe_gauge!(
                "lockstep_sink_connected",
                "1 while the sink's broker connection is up."
            );
            metrics::describe_counter!(
                "lockstep_sink_forwarded_readings_total",
                "Readings the sink published and its broker acknowledged."
            );
            metrics::describe_counter!(
                "lockstep_sink_publish_failures_total",
                "Batches the sink failed to publish (published again later)."
            );
            let m = SinkMetrics {
                lag: metrics::gauge!("lockstep_sink_lag_readings", "sink" => name),
                connected: metrics::gauge!("lockstep_sink_connected", "sink" => name),
                forwarded: metrics::counter!("lockstep_sink_forwarded_readings_total", "sink" => name),
                failures: metrics::counter!("lockstep_sink_publish_failures_total", "sink" => name),
            };
            m.lag.set(0.0);
            m.connected.set(0.0);
            m.forwarded.increment(0);
            m.failures.increment(0);
            m
        })
    }
}

/// State read at render time.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    pub ws_clients: usize,
    pub ws_dropped: u64,
    pub store_up: bool,
    pub logger_running: bool,
}

/// `process_*` from /proc (Linux; empty elsewhere).
fn process_metrics() -> String {
    let mut out = String::new();
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return out;
    };
    // Fields after the parenthesised command name.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let page = rustix::param::page_size() as f64;
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // stat fields (1-based) 14 utime, 15 stime, 22 starttime, 24 rss; `f[0]` is field 3.
    let cpu = (num(11) + num(12)) / ticks;
    let rss = num(21) * page;
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("btime ")
                    .and_then(|v| v.trim().parse::<f64>().ok())
            })
        })
        .unwrap_or(0.0);
    let start = boot + num(19) / ticks;
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    use std::fmt::Write as _;
    let _ = write!(
        out,
        "# HELP process_cpu_seconds_total User and system CPU time spent in seconds.\n\
         # TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {cpu}\n\
         # HELP process_resident_memory_bytes Resident memory size in bytes.\n\
         # TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes {rss}\n\
         # HELP process_open_fds Number of open file descriptors.\n\
         # TYPE process_open_fds gauge\nprocess_open_fds {fds}\n\
         # HELP process_start_time_seconds Start time of the process since the Unix epoch in seconds.\n\
         # TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {start}\n"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(text: &str, series: &str) -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn request_counters_are_kept_apart_by_route_and_status() {
        let m = Metrics::new(&Signals::from_catalog(
            &lockstep_codec::Catalog::default_v1(),
        ));
        for _ in 0..3 {
            m.request("/api/telemetry", 200);
        }
        m.request("/api/telemetry", 401);
        m.request("/api/vehicles", 200);
        m.request("/api/telemetry", 200);
        let text = m.render(&Snapshot {
            ws_clients: 0,
            ws_dropped: 0,
            store_up: true,
            logger_running: false,
        });
        let series = |route: &str, status: u16| {
            count(
                &text,
                &format!("lockstep_requests_total{{route=\"{route}\",status=\"{status}\"}}"),
            )
        };
        assert_eq!(series("/api/telemetry", 200), Some(4), "{text}");
        assert_eq!(series("/api/telemetry", 401), Some(1), "{text}");
        assert_eq!(series("/api/vehicles", 200), Some(1), "{text}");
        assert_eq!(series("/api/vehicles", 401), None, "{text}");
    }
}
