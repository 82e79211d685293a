//! The Redis bridge: one live stream across several instances on one database
//! (`REDIS_URL`). Each instance publishes what its hub marks `shared` —
//! committed readings, the logger's output and status — and the statistics of
//! each committed batch, on one Redis pub/sub channel
//! (`{LOCKSTEP_REDIS_PREFIX}:stream`); every instance subscribes and hands
//! the other instances' messages to its own hub, which stays the one place
//! that serialises and queues for clients.
//!
//! Delivery semantics (docs/deploy.md says the same for operators):
//! - **At most once, and exactly once while Redis is up.** Each instance
//!   numbers the messages it publishes; a receiver drops its own echoes and
//!   any number it has seen, and tells its clients of a hole with a `gap`
//!   message (`reason: dropped`, `missed`: how many).
//! - **In commit order per vehicle.** Readings carry `(session_id, seq)` and
//!   the session version their commit stored (one more per commit). The hub
//!   holds a reading whose commit follows one it has not received (two
//!   instances committed consecutive batches and the second came first) until
//!   that one comes, at most [`hub::HOLD`]; then it delivers what it held and
//!   clients get `gap` (`reason: dropped`, `missed: null`). A reading older
//!   than one delivered is not delivered, and clients get `gap` with
//!   `reason: late`.
//! - **Redis down:** ingest and same-instance fan-out go on; `/status` says
//!   `degraded`; clients get one `gap` (`reason: bridge_down`, `missed: null`);
//!   the bridge reconnects with backoff (100 ms doubling to 2 s). Outgoing
//!   messages wait in a bounded queue (`LOCKSTEP_REDIS_QUEUE` frames): when it
//!   is full new ones are dropped and counted, and receivers see the hole;
//!   what was queued during an outage is dropped at reconnection (counted),
//!   so other instances never get stale messages. Nothing is replayed: pub/sub
//!   keeps no history. After reconnecting, the statistics are reloaded from
//!   the store (other instances' deltas were missed); a batch committed while
//!   that reload runs may be counted twice or not at all until the next one.
//!
//! Frame on the wire (UTF-8): a header line `{"o":origin,"c":first,"k":"e"|"s"}`
//! where `c` numbers the frame's first message in its origin's sequence,
//! then for `e` one line of event header (`{"v":vin,"q":[session,seq],"w":commit,"op":bool,"log":bool}`)
//! and one line of client JSON per event; for `s` one line of statistics
//! deltas. Client JSON never holds a raw newline (serde escapes them).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::actors::hub::{self, Hub, HubEvent, Level, Relay};
use crate::actors::stats::StatsBook;
use crate::model::Counters;
use crate::protocol::GapReason;
use crate::store::Store;

/// First pause before reconnecting; doubled up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A Redis call slower than this counts as a failure.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Frames sent in one pipelined round trip.
const PIPELINE: usize = 256;
/// Origins (instances) whose sequence a receiver remembers; past it the
/// memory is cleared (an instance restart makes a new origin).
const MAX_ORIGINS: usize = 4096;

/// Where the bridge connects.
#[derive(Clone)]
pub struct BridgeConfig {
    /// `redis://…` (may hold a password: never logged).
    pub url: String,
    /// Channel and key prefix.
    pub prefix: String,
    /// Frames waiting to be published.
    pub queue: usize,
}

/// The bridge's counters and state, shared by its tasks, the hub (as its
/// [`Relay`]) and `/status`.
pub struct BridgeHandle {
    /// This instance's id in the stream (random, new at every start).
    origin: String,
    tx: mpsc::Sender<Vec<u8>>,
    /// Next message number of this origin.
    next: Mutex<u64>,
    publisher_up: AtomicBool,
    subscriber_up: AtomicBool,
    /// Frames published, received from other instances, dropped before
    /// publishing (queue full or publish failed).
    published: AtomicU64,
    received: AtomicU64,
    dropped: AtomicU64,
    /// Messages of other instances known to be lost (holes in their numbering).
    missed: AtomicU64,
    /// Last message number seen per origin (one past it).
    origins: Mutex<HashMap<String, u64>>,
    prefix: String,
}

/// `/status` → `cluster`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ClusterStatusJson {
    /// This instance's id in the shared stream.
    pub instance: String,
    /// Publishing to and subscribed at Redis.
    pub redis_connected: bool,
    /// Frames (one per committed batch or log line) published to Redis.
    pub frames_published: u64,
    /// Frames received from other instances.
    pub frames_received: u64,
    /// Frames dropped here before reaching Redis (queue full, publish failed).
    pub frames_dropped: u64,
    /// Messages of other instances known to be lost on the way.
    pub messages_missed: u64,
}

#[derive(Serialize, Deserialize)]
struct FrameHeader {
    /// Origin.
    o: String,
    /// Number of the frame's first message.
    c: u64,
    /// `e` = events, `s` = statistics.
    k: char,
}

#[derive(Serialize, Deserialize)]
struct EventHeader {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    v: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    q: Option<(u64, u64)>,
    /// The session version the reading's commit stored (the hub's order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    w: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    op: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    log: bool,
}

impl BridgeHandle {
    pub fn status(&self) -> ClusterStatusJson {
        ClusterStatusJson {
            instance: self.origin.clone(),
            redis_connected: self.connected(),
            frames_published: self.published.load(Ordering::Relaxed),
            frames_received: self.received.load(Ordering::Relaxed),
            frames_dropped: self.dropped.load(Ordering::Relaxed),
            messages_missed: self.missed.load(Ordering::Relaxed),
        }
    }

    /// Both directions work.
    pub fn connected(&self) -> bool {
        self.publisher_up.load(Ordering::Relaxed) && self.subscriber_up.load(Ordering::Relaxed)
    }

    /// This instance's id.
    pub fn instance(&self) -> &str {
        &self.origin
    }

    /// The key or channel `name` under the configured prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// Numbers `count` messages and queues the frame `build` makes with the
    /// first number; a full queue drops it (counted; receivers see the hole).
    fn send(&self, count: u64, build: impl FnOnce(u64) -> Vec<u8>) {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let first = *next;
        *next += count;
        // Queued under the lock: frames leave in number order.
        if self.tx.try_send(build(first)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn header(&self, first: u64, kind: char) -> Vec<u8> {
        let mut out = serde_json::to_vec(&FrameHeader {
            o: self.origin.clone(),
            c: first,
            k: kind,
        })
        .unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// Handles one frame from Redis: own echoes and repeats are ignored, holes
    /// become a `gap`, events go to the hub, statistics to the book.
    fn receive(&self, frame: &[u8], hub: &Hub, stats: &StatsBook) {
        let mut lines = frame.split(|b| *b == b'\n');
        let Some(Ok(h)) = lines.next().map(serde_json::from_slice::<FrameHeader>) else {
            tracing::warn!("A malformed frame on the Redis channel was ignored.");
            return;
        };
        if h.o == self.origin {
            return;
        }
        let body: Vec<&[u8]> = lines.collect();
        let count = match h.k {
            'e' => (body.len() / 2) as u64,
            _ => 1,
        };
        let missed = {
            let mut origins = self.origins.lock().unwrap_or_else(|p| p.into_inner());
            if origins.len() >= MAX_ORIGINS && !origins.contains_key(&h.o) {
                origins.clear();
            }
            let end = h.c + count;
            match origins.get_mut(&h.o) {
                // Seen already.
                Some(last) if h.c < *last => return,
                Some(last) => {
                    let missed = h.c - *last;
                    *last = end;
                    missed
                }
                None => {
                    origins.insert(h.o.clone(), end);
                    0
                }
            }
        };
        self.received.fetch_add(1, Ordering::Relaxed);
        if missed > 0 {
            self.missed.fetch_add(missed, Ordering::Relaxed);
            tracing::debug!(
                missed,
                origin = %h.o,
                "Messages of another instance were lost on the way."
            );
            hub.gap(Some(missed), GapReason::Dropped);
        }
        match h.k {
            'e' => {
                let mut events = Vec::with_capacity(body.len() / 2);
                for pair in body.chunks_exact(2) {
                    let (Ok(eh), Ok(text)) = (
                        serde_json::from_slice::<EventHeader>(pair[0]),
                        std::str::from_utf8(pair[1]),
                    ) else {
                        continue;
                    };
                    events.push(HubEvent {
                        vin: eh.v.map(Into::into),
                        text: text.to_owned().into(),
                        operators_only: eh.op,
                        order: eh.q,
                        commit: eh.w,
                        shared: false,
                        is_log: eh.log,
                    });
                }
                hub.publish_remote(events);
            }
            's' => {
                let Some(Ok(deltas)) = body
                    .first()
                    .map(|b| serde_json::from_slice::<Vec<(String, [u64; 5])>>(b))
                else {
                    return;
                };
                let counters: Vec<(String, Counters)> = deltas
                    .into_iter()
                    .map(|(vin, c)| {
                        (
                            vin,
                            Counters {
                                readings: c[0],
                                fields_total: c[1],
                                fields_transmitted: c[2],
                                fields_skipped: c[3],
                                bytes_received: c[4],
                            },
                        )
                    })
                    .collect();
                stats.add(counters.iter().map(|(v, c)| (v.as_str(), c)));
            }
            _ => {}
        }
    }
}

impl Relay for BridgeHandle {
    fn events(&self, events: &[&HubEvent]) {
        self.send(events.len() as u64, |first| {
            let mut out = self.header(first, 'e');
            for ev in events {
                let h = EventHeader {
                    v: ev.vin.as_deref().map(str::to_owned),
                    q: ev.order,
                    w: ev.commit,
                    op: ev.operators_only,
                    log: ev.is_log,
                };
                out.extend(serde_json::to_vec(&h).unwrap_or_default());
                out.push(b'\n');
                out.extend(ev.text.as_str().as_bytes());
                out.push(b'\n');
            }
            out.pop();
            out
        });
    }

    fn stats(&self, deltas: &[(&str, &Counters)]) {
        if deltas.is_empty() {
            return;
        }
        self.send(1, |first| {
            let mut out = self.header(first, 's');
            let rows: Vec<(&str, [u64; 5])> = deltas
                .iter()
                .map(|(vin, c)| {
                    (
                        *vin,
                        [
                            c.readings,
                            c.fields_total,
                            c.fields_transmitted,
                            c.fields_skipped,
                            c.bytes_received,
                        ],
                    )
                })
                .collect();
            out.extend(serde_json::to_vec(&rows).unwrap_or_default());
            out
        });
    }
}

/// The bridge's two tasks: a publisher draining the bounded queue to Redis,
/// a subscriber handing other instances' frames to the hub.
pub struct Bridge {
    client: redis::Client,
    handle: Arc<BridgeHandle>,
    rx: mpsc::Receiver<Vec<u8>>,
    hub: Arc<Hub>,
    stats: Arc<StatsBook>,
    store: Arc<dyn Store>,
}

impl Bridge {
    /// Checks the URL (nothing connects yet: an unreachable Redis at start is
    /// an outage like any other, not a reason to refuse to start).
    pub fn new(
        config: BridgeConfig,
        hub: Arc<Hub>,
        stats: Arc<StatsBook>,
        store: Arc<dyn Store>,
    ) -> anyhow::Result<(Self, Arc<BridgeHandle>)> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| anyhow::anyhow!("REDIS_URL is not a valid Redis URL: {e}"))?;
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        let handle = Arc::new(BridgeHandle {
            origin: format!("{:016x}", rand_u64()),
            tx,
            next: Mutex::new(0),
            publisher_up: AtomicBool::new(false),
            subscriber_up: AtomicBool::new(false),
            published: AtomicU64::new(0),
            received: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            missed: AtomicU64::new(0),
            origins: Mutex::default(),
            prefix: config.prefix,
        });
        Ok((
            Self {
                client,
                handle: handle.clone(),
                rx,
                hub,
                stats,
                store,
            },
            handle,
        ))
    }

    /// The Redis client (the logger lease uses it too).
    pub fn client(&self) -> redis::Client {
        self.client.clone()
    }

    /// Runs both tasks until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let Self {
            client,
            handle,
            rx,
            hub,
            stats,
            store,
        } = self;
        let publisher = publish(
            client.clone(),
            handle.clone(),
            rx,
            hub.clone(),
            stop.clone(),
        );
        let holds = release_held(hub.clone(), stop.clone());
        let subscriber = subscribe(client, handle, hub, stats, store, stop);
        tokio::join!(publisher, subscriber, holds);
    }
}

/// Delivers readings the hub held for an earlier commit that did not come
/// within [`hub::HOLD`] (its instance died before publishing, or Redis lost it).
async fn release_held(hub: Arc<Hub>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(hub::HOLD / 5);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => hub.release_held(),
        }
    }
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    u64::from_le_bytes(b)
}

/// Sleeps `backoff` (unless stopped) and doubles it; false = stopped.
async fn pause(backoff: &mut Duration, stop: &CancellationToken) -> bool {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(BACKOFF_MAX);
    tokio::select! {
        () = tokio::time::sleep(wait) => true,
        () = stop.cancelled() => false,
    }
}

/// Records a direction's state; says so (log and `gap`) when the bridge as a
/// whole goes down or comes back.
fn set_up(handle: &BridgeHandle, flag: &AtomicBool, up: bool, hub: &Hub) {
    let before = handle.connected();
    flag.store(up, Ordering::Relaxed);
    let after = handle.connected();
    if before && !after {
        let msg = "The Redis bridge is down: other instances' messages do not reach this instance's clients until it returns.";
        tracing::warn!("{msg}");
        hub.log(Level::Warn, "server", msg);
        hub.gap(None, GapReason::BridgeDown);
    } else if !before && after {
        tracing::info!("The Redis bridge is up.");
        hub.log(Level::Info, "server", "The Redis bridge is up.");
    }
}

async fn publish(
    client: redis::Client,
    handle: Arc<BridgeHandle>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    hub: Arc<Hub>,
    stop: CancellationToken,
) {
    let channel = handle.key("stream");
    let mut backoff = BACKOFF_MIN;
    let mut frames: Vec<Vec<u8>> = Vec::with_capacity(PIPELINE);
    loop {
        let conn = tokio::select! {
            () = stop.cancelled() => return,
            c = tokio::time::timeout(CALL_TIMEOUT, client.get_multiplexed_async_connection()) => c,
        };
        let mut conn = match conn {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "Cannot connect to Redis to publish.");
                set_up(&handle, &handle.publisher_up, false, &hub);
                if !pause(&mut backoff, &stop).await {
                    return;
                }
                continue;
            }
            Err(_) => {
                set_up(&handle, &handle.publisher_up, false, &hub);
                if !pause(&mut backoff, &stop).await {
                    return;
                }
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        if !handle.publisher_up.load(Ordering::Relaxed) {
            // Frames queued while Redis was away are stale: the receivers
            // reloaded (or will reload) the statistics from the store, and
            // their clients were told of the gap. Drop them, counted.
            let mut stale = 0u64;
            while rx.try_recv().is_ok() {
                stale += 1;
            }
            handle.dropped.fetch_add(stale, Ordering::Relaxed);
        }
        set_up(&handle, &handle.publisher_up, true, &hub);
        loop {
            if frames.is_empty() {
                tokio::select! {
                    f = rx.recv() => match f {
                        Some(f) => frames.push(f),
                        None => return,
                    },
                    () = stop.cancelled() => return,
                }
            }
            while frames.len() < PIPELINE {
                match rx.try_recv() {
                    Ok(f) => frames.push(f),
                    Err(_) => break,
                }
            }
            let mut sent = publish_frames(&mut conn, &channel, &frames).await;
            if sent.is_err() {
                // A connection that died while idle (Redis restarted) fails
                // its first use: one fresh connection before counting a loss.
                if let Ok(Ok(c)) =
                    tokio::time::timeout(CALL_TIMEOUT, client.get_multiplexed_async_connection())
                        .await
                {
                    conn = c;
                    sent = publish_frames(&mut conn, &channel, &frames).await;
                }
            }
            let n = frames.len() as u64;
            frames.clear();
            match sent {
                Ok(()) => {
                    handle.published.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "Publishing to Redis failed.");
                    // Lost: receivers see the hole in the numbering.
                    handle.dropped.fetch_add(n, Ordering::Relaxed);
                    set_up(&handle, &handle.publisher_up, false, &hub);
                    break;
                }
            }
        }
        if !pause(&mut backoff, &stop).await {
            return;
        }
    }
}

/// One pipeline of PUBLISH commands, bounded in time.
async fn publish_frames(
    conn: &mut redis::aio::MultiplexedConnection,
    channel: &str,
    frames: &[Vec<u8>],
) -> Result<(), String> {
    let mut pipe = redis::pipe();
    for f in frames {
        pipe.cmd("PUBLISH").arg(channel).arg(f.as_slice()).ignore();
    }
    match tokio::time::timeout(CALL_TIMEOUT, pipe.query_async::<()>(conn)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

async fn subscribe(
    client: redis::Client,
    handle: Arc<BridgeHandle>,
    hub: Arc<Hub>,
    stats: Arc<StatsBook>,
    store: Arc<dyn Store>,
    stop: CancellationToken,
) {
    let channel = handle.key("stream");
    let mut backoff = BACKOFF_MIN;
    let mut outage = false;
    loop {
        let connect = async {
            let mut ps = client.get_async_pubsub().await?;
            ps.subscribe(&channel).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        let ps = tokio::select! {
            () = stop.cancelled() => return,
            c = tokio::time::timeout(CALL_TIMEOUT, connect) => c,
        };
        let mut ps = match ps {
            Ok(Ok(ps)) => ps,
            other => {
                if let Ok(Err(e)) = other {
                    tracing::debug!(error = %e, "Cannot subscribe at Redis.");
                }
                outage = true;
                set_up(&handle, &handle.subscriber_up, false, &hub);
                if !pause(&mut backoff, &stop).await {
                    return;
                }
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        set_up(&handle, &handle.subscriber_up, true, &hub);
        if outage {
            // Other instances' statistics deltas may have been missed: the store has the truth.
            match stats.reload(store.totals()).await {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "The statistics could not be reloaded after the Redis outage.")
                }
            }
        }
        {
            let mut messages = ps.on_message();
            loop {
                tokio::select! {
                    m = messages.next() => match m {
                        Some(m) => handle.receive(m.get_payload_bytes(), &hub, &stats),
                        None => break,
                    },
                    () = stop.cancelled() => return,
                }
            }
        }
        outage = true;
        set_up(&handle, &handle.subscriber_up, false, &hub);
        if !pause(&mut backoff, &stop).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Signals;
    use crate::settings::StoreConfig;

    async fn bridge(dir: &std::path::Path, hub: Arc<Hub>) -> Bridge {
        let signals = Signals::from_catalog(&lockstep_codec::Catalog::default_v1());
        let db = dir.join(format!("{:x}.db", rand_u64()));
        let store = crate::store::open(&StoreConfig::Sqlite(db), 1, &signals)
            .await
            .unwrap();
        let config = BridgeConfig {
            url: "redis://127.0.0.1:1".into(),
            prefix: "test".into(),
            queue: 16,
        };
        let stats = Arc::new(StatsBook::load(Vec::new()));
        Bridge::new(config, hub, stats, store).unwrap().0
    }

    fn reading(vin: &str, seq: u64, commit: u64, text: &str) -> HubEvent {
        HubEvent {
            vin: Some(vin.into()),
            text: text.to_owned().into(),
            operators_only: false,
            order: Some((7, seq)),
            commit: Some(commit),
            shared: true,
            is_log: false,
        }
    }

    /// Everything queued for clients of `hub` now.
    async fn delivered(sub: &mut hub::Subscription) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(true) =
            tokio::time::timeout(Duration::from_millis(50), sub.recv(&mut out, 64)).await
        {}
        out.iter().map(|t| t.as_str().to_owned()).collect()
    }

    #[tokio::test]
    async fn frames_reach_other_instances_once_and_holes_are_told() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = bridge(dir.path(), Arc::new(Hub::new(64))).await;
        let b_hub = Arc::new(Hub::new(64));
        let b = bridge(dir.path(), b_hub.clone()).await;
        let mut sub = b_hub.subscribe();
        let texts = [r#"{"n":"a\nb"}"#, r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#];
        let evs: Vec<HubEvent> = (0u64..4)
            .map(|i| reading("5YJ3E1EA7KF000001", i, i.max(1), texts[i as usize]))
            .collect();
        a.handle.events(&[&evs[0], &evs[1]]);
        a.handle.events(&[&evs[2]]);
        a.handle.events(&[&evs[3]]);
        let frames: Vec<Vec<u8>> = std::iter::from_fn(|| a.rx.try_recv().ok()).collect();
        assert_eq!(frames.len(), 3);

        // Its own echo: nothing for its clients, nothing counted.
        let a_sub_hub = Arc::new(Hub::new(64));
        let echo = bridge(dir.path(), a_sub_hub.clone()).await;
        let own = BridgeHandle {
            origin: a.handle.origin.clone(),
            ..Arc::try_unwrap(echo.handle).ok().unwrap()
        };
        let mut a_sub = a_sub_hub.subscribe();
        own.receive(&frames[0], &a_sub_hub, &b.stats);
        assert!(delivered(&mut a_sub).await.is_empty());
        assert_eq!(own.status().frames_received, 0);

        // Another instance: every text as sent, a repeat ignored.
        b.handle.receive(&frames[0], &b_hub, &b.stats);
        b.handle.receive(&frames[0], &b_hub, &b.stats);
        assert_eq!(delivered(&mut sub).await, texts[..2]);
        // The second frame (commit 2) lost on the way: clients hear of the
        // hole at once; the third (commit 3) waits for it, then comes.
        b.handle.receive(&frames[2], &b_hub, &b.stats);
        let got = delivered(&mut sub).await;
        assert_eq!(b.handle.status().messages_missed, 1);
        assert_eq!(b.handle.status().frames_received, 2);
        assert!(got.iter().any(|t| t.contains(r#""missed":1"#)), "{got:?}");
        assert!(!got.contains(&texts[3].to_owned()), "held: {got:?}");
        tokio::time::sleep(hub::HOLD).await;
        b_hub.release_held();
        assert!(delivered(&mut sub).await.contains(&texts[3].to_owned()));
    }
}
