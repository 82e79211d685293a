//! WebSocket fan-out. Every message is serialised ONCE into a cheaply
//! clonable [`Utf8Bytes`] and sent through a `tokio::sync::broadcast` channel
//! whose capacity is each client's queue: a client that falls behind loses
//! the oldest messages (broadcast's `Lagged`), is told how many with
//! `{"type":"lagged","data":{"dropped":N}}`, and never slows the sender or
//! other clients. Drops are counted for `/status`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use tokio::sync::broadcast;

use crate::model::{envelope, now_ms};

/// One message for WebSocket clients.
#[derive(Debug, Clone)]
pub struct HubEvent {
    /// The vehicle, for subscription filters; `None` = for every client.
    pub vin: Option<Arc<str>>,
    pub text: Utf8Bytes,
}

/// The fan-out point.
pub struct Hub {
    tx: broadcast::Sender<HubEvent>,
    clients: AtomicUsize,
    dropped: AtomicU64,
}

#[derive(Serialize)]
struct LogJson<'a> {
    level: &'a str,
    source: &'a str,
    message: &'a str,
    timestamp: i64,
}

/// Level of a `log` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// Counts a connected client while alive.
pub struct ClientGuard<'a>(&'a Hub);

impl Drop for ClientGuard<'_> {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Hub {
    /// `queue` = messages each client may fall behind before the oldest are dropped.
    pub fn new(queue: usize) -> Self {
        let (tx, _) = broadcast::channel(queue.max(1));
        Self {
            tx,
            clients: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    pub fn publish(&self, ev: HubEvent) {
        // No receivers is not an error: nobody is watching.
        let _ = self.tx.send(ev);
    }

    /// Whether anyone would receive a message (skip serialising otherwise).
    pub fn has_clients(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    pub fn subscribe(&self) -> broadcast::Receiver<HubEvent> {
        self.tx.subscribe()
    }

    pub fn client(&self) -> ClientGuard<'_> {
        self.clients.fetch_add(1, Ordering::Relaxed);
        ClientGuard(self)
    }

    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    pub fn note_dropped(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
    }

    /// Messages dropped for slow clients since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Publishes a message for everyone.
    pub fn broadcast_text(&self, text: String) {
        self.publish(HubEvent {
            vin: None,
            text: text.into(),
        });
    }

    /// Publishes `{"type":"log"}`.
    pub fn log(&self, level: Level, source: &str, message: &str) {
        self.broadcast_text(log_json(level, source, message));
    }
}

/// The text of a `{"type":"log"}` message.
pub fn log_json(level: Level, source: &str, message: &str) -> String {
    envelope(
        "log",
        &LogJson {
            level: level.as_str(),
            source,
            message,
            timestamp: now_ms(),
        },
    )
}

/// The text of a `{"type":"lagged"}` message.
pub fn lagged_json(dropped: u64) -> String {
    format!(r#"{{"type":"lagged","data":{{"dropped":{dropped}}}}}"#)
}
