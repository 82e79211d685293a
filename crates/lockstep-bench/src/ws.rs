//! WebSocket clients of `/ws`: subscribers that count every telemetry
//! message (every Nth one also times it from the reading's timestamp, the
//! wall clock at send) and mostly idle clients that only hold a connection.
//!
//! Each client is one task; all stop on one signal. A group is "connected"
//! when every client has its `history` message (or has failed), within a deadline.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::load::latency_histogram;

/// Counters shared by the clients of one group.
#[derive(Debug, Default)]
pub struct Counters {
    pub connected: AtomicU64,
    pub connect_errors: AtomicU64,
    pub history: AtomicU64,
    pub telemetry: AtomicU64,
    pub lagged_msgs: AtomicU64,
    pub lagged_dropped: AtomicU64,
    pub other: AtomicU64,
    /// Clients whose connection ended before the stop signal.
    pub closed_early: AtomicU64,
}

/// What a client reports when it stops.
pub struct ClientEnd {
    /// Delivery latency, µs (timed clients only).
    pub latency_us: Option<Histogram<u64>>,
    /// The part of `latency_us` for readings of vehicles outside
    /// [`ClientSpec::local_vins`] (timed clients with that set only).
    pub remote_us: Option<Histogram<u64>>,
    /// Timestamps later than the receipt time (clock or clamping artefacts).
    pub negative: u64,
    pub open_at_stop: bool,
}

/// A group of clients.
pub struct Group {
    pub counters: Arc<Counters>,
    pub requested: u64,
    pub connect_seconds: f64,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<ClientEnd>>,
}

/// How one client behaves.
#[derive(Clone)]
pub struct ClientSpec {
    /// Sent as `{"type":"subscribe","vins":[..]}` after connecting; `None` = all vehicles.
    pub vins: Option<Vec<String>>,
    pub timed: bool,
    /// Connect here instead of the group's address (another instance of a cluster).
    pub addr: Option<SocketAddr>,
    /// The vehicles ingested by the instance this client is connected to: the
    /// readings of every other vehicle crossed instances, and are timed apart too.
    pub local_vins: Option<Arc<HashSet<String>>>,
}

/// What a stopped group gathered.
pub struct Stopped {
    pub counters: Arc<Counters>,
    /// Delivery latency of every timed message, µs.
    pub latency_us: Histogram<u64>,
    /// Of which the messages of vehicles ingested by another instance.
    pub remote_us: Histogram<u64>,
    pub negative: u64,
    pub open: u64,
}

impl Group {
    /// Connects `n` clients (at most `parallel` handshakes at a time) and
    /// waits until each has its history message or failed, or `deadline` passed.
    pub async fn connect(
        addr: SocketAddr,
        n: u64,
        spec: impl Fn(u64) -> ClientSpec,
        parallel: usize,
        deadline: Duration,
    ) -> Self {
        let counters = Arc::new(Counters::default());
        let (stop, stop_rx) = watch::channel(false);
        let gate = Arc::new(Semaphore::new(parallel.max(1)));
        let t0 = Instant::now();
        let mut tasks = Vec::with_capacity(n as usize);
        for i in 0..n {
            let (c, rx, gate, spec) = (counters.clone(), stop_rx.clone(), gate.clone(), spec(i));
            tasks.push(tokio::spawn(client(addr, spec, c, rx, gate)));
        }
        let end = t0 + deadline;
        while Instant::now() < end {
            let done = counters.connected.load(Ordering::Relaxed)
                + counters.connect_errors.load(Ordering::Relaxed);
            if done >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            counters,
            requested: n,
            connect_seconds: t0.elapsed().as_secs_f64(),
            stop,
            tasks,
        }
    }

    /// Telemetry messages received so far.
    pub fn telemetry(&self) -> u64 {
        self.counters.telemetry.load(Ordering::Relaxed)
    }

    /// Waits until the telemetry count reaches `expected` or stops growing for `quiet`, at most `max`.
    pub async fn settle(&self, expected: u64, quiet: Duration, max: Duration) {
        let end = Instant::now() + max;
        let mut last = self.telemetry();
        let mut since = Instant::now();
        while Instant::now() < end && self.telemetry() < expected {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = self.telemetry();
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() >= quiet {
                break;
            }
        }
    }

    /// Stops every client and gathers their latency histograms.
    pub async fn stop(self) -> Stopped {
        let _ = self.stop.send(true);
        let (mut latency_us, mut remote_us) = (latency_histogram(), latency_histogram());
        let (mut negative, mut open) = (0, 0);
        for t in self.tasks {
            if let Ok(end) = t.await {
                if let Some(h) = end.latency_us {
                    let _ = latency_us.add(&h);
                }
                if let Some(h) = end.remote_us {
                    let _ = remote_us.add(&h);
                }
                negative += end.negative;
                open += u64::from(end.open_at_stop);
            }
        }
        Stopped {
            counters: self.counters,
            latency_us,
            remote_us,
            negative,
            open,
        }
    }
}

fn config() -> WebSocketConfig {
    // Small buffers: thousands of clients live in this process.
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
}

async fn client(
    addr: SocketAddr,
    spec: ClientSpec,
    c: Arc<Counters>,
    mut stop: watch::Receiver<bool>,
    gate: Arc<Semaphore>,
) -> ClientEnd {
    let mut end = ClientEnd {
        latency_us: spec.timed.then(latency_histogram),
        remote_us: (spec.timed && spec.local_vins.is_some()).then(latency_histogram),
        negative: 0,
        open_at_stop: false,
    };
    let permit = gate.acquire_owned().await;
    let addr = spec.addr.unwrap_or(addr);
    let url = format!("ws://{addr}/ws");
    let connect = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(url.as_str(), tcp, Some(config()))
                .await
                .map_err(|e| e.to_string())?;
        if let Some(vins) = &spec.vins {
            let msg = serde_json::json!({"type": "subscribe", "vins": vins}).to_string();
            ws.send(Message::text(msg))
                .await
                .map_err(|e| e.to_string())?;
        }
        // The server greets every client with its history.
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    if kind(t.as_str()) == "history" {
                        c.history.fetch_add(1, Ordering::Relaxed);
                        return Ok(ws);
                    }
                    c.other.fetch_add(1, Ordering::Relaxed);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("closed before the history message".to_owned()),
            }
        }
    };
    let mut ws = match tokio::time::timeout(Duration::from_secs(30), connect).await {
        Ok(Ok(ws)) => {
            c.connected.fetch_add(1, Ordering::Relaxed);
            ws
        }
        _ => {
            c.connect_errors.fetch_add(1, Ordering::Relaxed);
            return end;
        }
    };
    drop(permit);
    // The stop signal is polled only when no message is ready: polling it
    // takes the watch's lock, which a thousand clients would otherwise take
    // for every message, and this process shares the machine with the server.
    let stopped = stop.changed();
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            biased;
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let s = t.as_str();
                    match kind(s) {
                        "telemetry" => {
                            c.telemetry.fetch_add(1, Ordering::Relaxed);
                            if let (Some(h), Some(ts)) = (end.latency_us.as_mut(), field_i64(s, "\"timestamp\"")) {
                                let now_us = crate::load::unix_ms() as i128 * 1000 + i128::from(sub_ms_us());
                                let d = now_us - i128::from(ts) * 1000;
                                if d < 0 {
                                    end.negative += 1;
                                } else {
                                    h.saturating_record(d.max(1) as u64);
                                    if let (Some(r), Some(local)) = (end.remote_us.as_mut(), &spec.local_vins)
                                        && field_str(s, "\"vehicle_vin\"").is_some_and(|v| !local.contains(v))
                                    {
                                        r.saturating_record(d.max(1) as u64);
                                    }
                                }
                            }
                        }
                        "lagged" => {
                            c.lagged_msgs.fetch_add(1, Ordering::Relaxed);
                            c.lagged_dropped.fetch_add(field_i64(s, "\"dropped\"").unwrap_or(0).max(0) as u64, Ordering::Relaxed);
                        }
                        _ => {
                            c.other.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    c.closed_early.fetch_add(1, Ordering::Relaxed);
                    return end;
                }
                Some(Ok(_)) => {}
            },
            _ = &mut stopped => {
                end.open_at_stop = true;
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                return end;
            }
        }
    }
}

/// Microseconds within the current millisecond of the wall clock.
fn sub_ms_us() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_micros() % 1000)
        .unwrap_or(0)
}

/// The text after `quoted_key` (e.g. `"type"`) and its colon, JSON whitespace allowed.
fn after_key<'a>(s: &'a str, quoted_key: &str) -> Option<&'a str> {
    // `str::find` builds a two-way searcher per call: the largest entry in
    // the subscribers' profile at ~600,000 messages a second.
    let at = memchr::memmem::find(s.as_bytes(), quoted_key.as_bytes())?;
    let rest = &s[at + quoted_key.len()..];
    rest.trim_start().strip_prefix(':').map(str::trim_start)
}

/// The `"type"` of a server message, found without parsing the JSON.
pub fn kind(s: &str) -> &str {
    after_key(s, "\"type\"")
        .and_then(|r| r.strip_prefix('"'))
        .and_then(|r| r.split('"').next())
        .unwrap_or("")
}

/// The string value of the first `quoted_key` in `s` (no escapes: VINs and names).
pub fn field_str<'a>(s: &'a str, quoted_key: &str) -> Option<&'a str> {
    after_key(s, quoted_key)?
        .strip_prefix('"')?
        .split('"')
        .next()
}

/// The integer value of the first `quoted_key` (e.g. `"timestamp"`) in `s`.
pub fn field_i64(s: &str, quoted_key: &str) -> Option<i64> {
    let rest = after_key(s, quoted_key)?;
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_type_and_fields() {
        let m = r#"{"type":"telemetry","data":{"timestamp":1700000000123,"vehicle_vin":"X","speed":1.5}}"#;
        assert_eq!(kind(m), "telemetry");
        assert_eq!(field_i64(m, "\"timestamp\""), Some(1_700_000_000_123));
        assert_eq!(field_str(m, "\"vehicle_vin\""), Some("X"));
        assert_eq!(field_str(m, "\"speed\""), None);
        let l = r#"{"type":"lagged","data":{"dropped": 17}}"#;
        assert_eq!(kind(l), "lagged");
        assert_eq!(field_i64(l, "\"dropped\""), Some(17));
        assert_eq!(kind("{}"), "");
        assert_eq!(kind(r#"{"type": "history", "data": []}"#), "history");
    }
}
