//! The history every new WebSocket client gets first: the latest stored
//! readings as `history` messages. Read from the store and serialised once
//! per change of the stored readings, then shared by every client that
//! connects until the next change. A thousand dashboards reconnecting after
//! a restart cost one store read, not a thousand, and no client keeps the
//! transient allocations of its own copy (they were most of a client's
//! memory after a full history; BENCHMARKS.md, issue 16 target 4).
//!
//! Nothing committed is missed: a client subscribes to the hub first, then
//! reads the hub's [`Hub::generation`]. A commit bumps the generation before
//! its readings are acknowledged or published, and a cached history serves
//! only clients whose generation it covers (it was read from the store after
//! the generation reached theirs). So a reading is either in the history or
//! published after the subscription; at worst in both, as before the cache.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;

use crate::actors::hub::Hub;
use crate::model::Signals;
use crate::protocol::{ReadingJson, ServerMsg};
use crate::store::Store;

/// Largest `history` message, bytes: the history goes out in chunks, so it
/// does not leave a whole-history-sized write buffer with every client
/// (47.5 KiB per client after a 100-reading history in round 1).
pub const HISTORY_CHUNK: usize = 3 * 1024;

/// A cached history is read again after this long even without a commit
/// here: readings another instance stored whose live copies never arrived
/// (Redis down), rows removed by retention.
const MAX_AGE: Duration = Duration::from_secs(1);

/// The shared history of new WebSocket clients.
pub struct LiveHistory {
    store: Arc<dyn Store>,
    hub: Arc<Hub>,
    signals: Signals,
    /// Readings in the history (`LOCKSTEP_HISTORY`).
    limit: usize,
    /// Held across the store read, so that clients connecting together wait
    /// for one read instead of each making their own.
    cached: tokio::sync::Mutex<Option<Cached>>,
}

struct Cached {
    /// The hub's generation when the store read began.
    generation: u64,
    read_at: Instant,
    chunks: Arc<[Utf8Bytes]>,
}

impl LiveHistory {
    pub fn new(store: Arc<dyn Store>, hub: Arc<Hub>, signals: Signals, limit: usize) -> Self {
        Self {
            store,
            hub,
            signals,
            limit,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// The history for a client that read `seen` from [`Hub::generation`]
    /// after subscribing. A store failure gives an empty history (the client
    /// still gets live readings).
    pub async fn chunks(&self, seen: u64) -> Arc<[Utf8Bytes]> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && c.generation >= seen
            && c.read_at.elapsed() < MAX_AGE
        {
            return c.chunks.clone();
        }
        let generation = self.hub.generation();
        let read_at = Instant::now();
        let rows = self.store.recent(self.limit).await.unwrap_or_else(|e| {
            // Kept like a history for up to MAX_AGE: clients connecting during
            // an outage do not each wait for a read of their own to fail.
            tracing::warn!(error = %e, "History unavailable for new WebSocket clients.");
            Vec::new()
        });
        let chunks = self.serialise(rows);
        *cached = Some(Cached {
            generation,
            read_at,
            chunks: chunks.clone(),
        });
        chunks
    }

    fn serialise(&self, rows: Vec<crate::model::TelemetryRow>) -> Arc<[Utf8Bytes]> {
        let readings: Vec<ReadingJson> = rows
            .into_iter()
            .map(|row| ReadingJson {
                row,
                signals: self.signals.clone(),
            })
            .collect();
        ServerMsg::history_chunks(&readings, HISTORY_CHUNK)
            .into_iter()
            .map(Utf8Bytes::from)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::hub::HubEvent;
    use crate::model::TelemetryRow;
    use crate::settings::StoreConfig;
    use crate::store::WriteBatch;

    const VIN: &str = "5YJ3E1EA7KF000001";

    fn row(seq: u64, channels: usize) -> TelemetryRow {
        TelemetryRow {
            vin: VIN.into(),
            session_id: 7,
            seq,
            ts_ms: 1_764_000_000_000 + seq as i64 * 1000,
            values: vec![Some(seq as f64); channels],
            transmitted: 1,
            keyframe: seq == 0,
        }
    }

    async fn store(dir: &std::path::Path) -> (Arc<dyn Store>, Signals) {
        let signals = Signals::from_catalog(&lockstep_codec::Catalog::default_v1());
        let store = crate::store::open(&StoreConfig::Sqlite(dir.join("live.db")), 1, &signals)
            .await
            .unwrap();
        (store, signals)
    }

    async fn commit(store: &dyn Store, signals: &Signals, seqs: std::ops::Range<u64>) {
        let wb = WriteBatch {
            rows: seqs.map(|s| row(s, signals.len())).collect(),
            vehicles: vec![(VIN.into(), 0)],
            ..WriteBatch::default()
        };
        store.commit(wb).await.unwrap();
    }

    fn seqs(chunks: &[Utf8Bytes]) -> Vec<u64> {
        chunks
            .iter()
            .flat_map(|c| {
                let v: serde_json::Value = serde_json::from_str(c.as_str()).unwrap();
                v["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["seq"].as_u64().unwrap())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[tokio::test]
    async fn one_read_serves_every_client_until_the_next_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (store, signals) = store(dir.path()).await;
        let hub = Arc::new(Hub::new(16));
        commit(&*store, &signals, 0..3).await;
        hub.note_stored();
        let live = LiveHistory::new(store.clone(), hub.clone(), signals.clone(), 100);

        let first = live.chunks(hub.generation()).await;
        assert_eq!(seqs(&first), [0, 1, 2]);
        let second = live.chunks(hub.generation()).await;
        assert!(Arc::ptr_eq(&first, &second), "the same history, read once");

        commit(&*store, &signals, 3..5).await;
        hub.note_stored();
        let third = live.chunks(hub.generation()).await;
        assert_eq!(seqs(&third), [0, 1, 2, 3, 4], "read again after a commit");
    }

    #[tokio::test]
    async fn a_reading_published_from_another_instance_renews_the_history() {
        let dir = tempfile::tempdir().unwrap();
        let (store, signals) = store(dir.path()).await;
        let hub = Arc::new(Hub::new(16));
        let live = LiveHistory::new(store.clone(), hub.clone(), signals.clone(), 100);
        assert_eq!(
            seqs(&live.chunks(hub.generation()).await),
            Vec::<u64>::new()
        );

        // Stored by another instance: no commit here, only its live copy.
        commit(&*store, &signals, 0..1).await;
        let msg = ServerMsg::log(crate::protocol::Level::Info, "test", "reading");
        hub.publish_remote(vec![HubEvent::reading(VIN.into(), 7, 0, 1, &msg)]);
        assert_eq!(seqs(&live.chunks(hub.generation()).await), [0]);
    }
}
