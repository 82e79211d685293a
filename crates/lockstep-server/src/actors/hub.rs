//! WebSocket fan-out. Every message is serialised ONCE into a cheaply
//! clonable [`Utf8Bytes`] and routed by VIN:
//!
//! - clients without a filter read a `tokio::sync::broadcast` firehose of
//!   every message, in publication order;
//! - clients with a VIN filter have a [`Mailbox`] that the hub fills with the
//!   messages without a VIN (logs, statistics, logger state) and those of the
//!   VINs they asked for, so a reading wakes only the clients that want it.
//!
//! Either way a client's queue holds at most `queue` messages: one that falls
//! behind loses the oldest ones, is told how many with
//! `ServerMsg::Lagged`, and never slows the sender or
//! other clients. Drops are counted for `/status`.
//!
//! With several instances (`REDIS_URL`), a [`Relay`] (the Redis bridge) is
//! attached: events marked `shared` are handed to it in publication order,
//! and events from other instances come back through [`Hub::publish_remote`].
//! Readings then pass a per-vehicle order check ([`Hub`]'s sequencer). Each
//! reading names the session version its commit stored, and a session's
//! commits advance it by one, whichever instance made them: a reading whose
//! commit follows one not seen yet (published by another instance and still
//! on its way) is held until that one arrives, at most [`HOLD`]; one that is
//! not after the last delivered is a duplicate or came late, is not
//! delivered, and clients get a `gap` message for the late ones and for a
//! commit that never came. Without a relay nothing of this runs.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{Notify, broadcast};

use crate::model::Counters;
pub use crate::protocol::Level;
use crate::protocol::{GapReason, ServerMsg};

/// `log` messages kept for clients that connect later.
pub const LOG_BACKLOG: usize = 100;

/// One message for WebSocket clients.
#[derive(Debug, Clone)]
pub struct HubEvent {
    /// The vehicle, for subscription filters; `None` = for every client.
    pub vin: Option<Arc<str>>,
    pub text: Utf8Bytes,
    /// Only for clients allowed to control the logger (its output may name
    /// files and settings a viewer has no business seeing).
    pub operators_only: bool,
    /// A reading's `(session_id, seq)`: its place in its vehicle's order.
    pub order: Option<(u64, u64)>,
    /// The session version the reading's commit stored (one more per commit
    /// of the session); `None` from an instance that does not say.
    pub commit: Option<u64>,
    /// For every instance's clients (readings, logger output and status),
    /// not only this one's: handed to the [`Relay`] when one is attached.
    pub shared: bool,
    /// A `log` line: kept in the backlog for clients that connect later.
    pub is_log: bool,
}

impl HubEvent {
    /// Serialises the message once.
    pub fn new(vin: Option<Arc<str>>, msg: &ServerMsg) -> Self {
        Self {
            vin,
            text: msg.to_text().into(),
            operators_only: false,
            order: None,
            commit: None,
            shared: false,
            is_log: false,
        }
    }

    /// A committed reading of `vin` (shared with other instances); `commit`:
    /// the session version its commit stored.
    pub fn reading(vin: Arc<str>, session_id: u64, seq: u64, commit: u64, msg: &ServerMsg) -> Self {
        Self {
            order: Some((session_id, seq)),
            commit: Some(commit),
            shared: true,
            ..Self::new(Some(vin), msg)
        }
    }

    /// A message for every instance's clients.
    pub fn shared(msg: &ServerMsg) -> Self {
        Self {
            shared: true,
            ..Self::new(None, msg)
        }
    }
}

/// Carries this instance's shared events to the other instances (the Redis
/// bridge). Called under the hub's routing lock, in publication order: it
/// must not block (queue, and count what does not fit).
pub trait Relay: Send + Sync {
    /// Shared events just published here.
    fn events(&self, events: &[&HubEvent]);
    /// Statistics of one committed batch, per vehicle.
    fn stats(&self, deltas: &[(&str, &Counters)]);
}

/// Most vehicles whose last delivered position the sequencer remembers; past
/// it the memory is cleared (a duplicate could then pass once).
const SEQUENCER_VEHICLES: usize = 100_000;

/// How long readings wait for an earlier commit of their session that
/// another instance published and this one has not received yet. After it
/// they are delivered, clients are told of the hole (`gap`, `dropped`), and
/// the missing commit, should it still come, is late.
pub const HOLD: Duration = Duration::from_secs(1);

/// Most readings held at once (all vehicles); past it a vehicle's held
/// readings are delivered at once instead of waiting.
const HELD_MAX: usize = 10_000;

/// Where a vehicle's delivered stream stands.
#[derive(Clone, Copy)]
struct Position {
    session: u64,
    seq: u64,
    commit: Option<u64>,
}

/// One vehicle's order: the last delivered reading, those waiting for an
/// earlier commit, by (commit, seq), and the last commits given up waiting for.
struct VehicleOrder {
    last: Position,
    held: BTreeMap<(u64, u64), HubEvent>,
    skipped: VecDeque<u64>,
    /// The commit of the first reading of the session seen here: nothing
    /// before it was delivered, so an earlier one is late, not a copy.
    first: Option<u64>,
}

/// Commits given up waiting for that a vehicle remembers (to tell a late one from a copy).
const SKIPPED_KEPT: usize = 16;

/// What the sequencer decided for one reading.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Deliver,
    /// Waits for an earlier commit.
    Hold,
    /// A copy of one delivered already.
    Repeat,
    /// Older than one delivered already.
    Late,
}

impl Position {
    fn of(ev: &HubEvent) -> Option<Self> {
        let (session, seq) = ev.order?;
        Some(Self {
            session,
            seq,
            commit: ev.commit,
        })
    }
}

impl VehicleOrder {
    fn new(last: Position) -> Self {
        Self {
            last,
            held: BTreeMap::new(),
            skipped: VecDeque::new(),
            first: last.commit,
        }
    }

    /// Whether `next` (same session) may follow the last delivered reading now.
    fn verdict(&self, next: &Position) -> Verdict {
        match (self.last.commit, next.commit) {
            (Some(c), Some(n)) if n > c + 1 => Verdict::Hold,
            (Some(c), Some(n)) if n == c + 1 => Verdict::Deliver,
            (Some(c), Some(n)) if n < c => {
                if self.skipped.contains(&n) || self.first.is_some_and(|f| n < f) {
                    Verdict::Late
                } else {
                    Verdict::Repeat
                }
            }
            // The same commit (or an instance that does not say): by seq.
            _ if next.seq > self.last.seq => Verdict::Deliver,
            _ if next.seq == self.last.seq => Verdict::Repeat,
            (Some(_), Some(_)) => Verdict::Repeat,
            _ => Verdict::Late,
        }
    }

    /// Remembers the commits missing before the held readings, which are
    /// about to be delivered without them.
    fn skip_to_held(&mut self) {
        let Some(mut expect) = self.last.commit.map(|c| c + 1) else {
            return;
        };
        for &(c, _) in self.held.keys() {
            // A vehicle's skipped commits are few; never walk a huge jump.
            for missing in expect..c.min(expect + SKIPPED_KEPT as u64) {
                if self.skipped.len() >= SKIPPED_KEPT {
                    self.skipped.pop_front();
                }
                self.skipped.push_back(missing);
            }
            expect = expect.max(c + 1);
        }
    }
}

/// Readings the sequencer let through, in delivery order, and what it kept back.
#[derive(Default)]
struct Admitted {
    events: Vec<HubEvent>,
    repeats: u64,
    late: u64,
    /// Vehicles whose held readings were let through without the commit they waited for.
    expired: u64,
}

/// Per vehicle, the `(session_id, seq, commit)` of the last reading delivered
/// and the readings waiting for an earlier commit.
#[derive(Default)]
struct Sequencer {
    vehicles: HashMap<Arc<str>, VehicleOrder>,
    /// Vehicles with held readings, since when.
    holding: HashMap<Arc<str>, Instant>,
    held: usize,
}

impl Sequencer {
    /// Passes `events` in order; readings come out in their vehicle's order.
    /// The readings of one commit come in one call, so held ones that follow
    /// are let through after the whole call, not after its first reading.
    fn admit_all(&mut self, events: Vec<HubEvent>, now: Instant) -> Admitted {
        let mut out = Admitted::default();
        let mut moved: Vec<Arc<str>> = Vec::new();
        for ev in events {
            if let Some(vin) = self.admit(ev, now, &mut out)
                && !moved.contains(&vin)
            {
                moved.push(vin);
            }
        }
        for vin in &moved {
            self.drain(vin, &mut out);
        }
        out
    }

    /// Returns the vehicle whose order moved on while it holds readings.
    fn admit(&mut self, ev: HubEvent, now: Instant, out: &mut Admitted) -> Option<Arc<str>> {
        let (Some(vin), Some(pos)) = (ev.vin.clone(), Position::of(&ev)) else {
            out.events.push(ev);
            return None;
        };
        let Some(v) = self.vehicles.get_mut(&*vin) else {
            if self.vehicles.len() >= SEQUENCER_VEHICLES {
                self.release_all(out);
                self.vehicles.clear();
            }
            self.vehicles.insert(vin, VehicleOrder::new(pos));
            out.events.push(ev);
            return None;
        };
        if pos.session != v.last.session {
            // A new session of the vehicle starts a new order.
            let held = std::mem::take(&mut v.held);
            self.held -= held.len();
            self.holding.remove(&*vin);
            out.events.extend(held.into_values());
            *v = VehicleOrder::new(pos);
            out.events.push(ev);
            return None;
        }
        match v.verdict(&pos) {
            Verdict::Deliver => {
                v.last = pos;
                out.events.push(ev);
                return (!v.held.is_empty()).then_some(vin);
            }
            Verdict::Hold => {
                let key = (pos.commit.unwrap_or_default(), pos.seq);
                if v.held.insert(key, ev).is_none() {
                    self.held += 1;
                }
                self.holding.entry(vin.clone()).or_insert(now);
                if self.held > HELD_MAX {
                    self.release(&vin, out);
                }
            }
            Verdict::Repeat => out.repeats += 1,
            Verdict::Late => out.late += 1,
        }
        None
    }

    /// Lets through the held readings of `vin` that now follow in order.
    fn drain(&mut self, vin: &Arc<str>, out: &mut Admitted) {
        let Some(v) = self.vehicles.get_mut(vin) else {
            return;
        };
        while let Some(pos) = v.held.values().next().and_then(Position::of) {
            let verdict = v.verdict(&pos);
            if verdict == Verdict::Hold {
                break;
            }
            let Some((_, ev)) = v.held.pop_first() else {
                break;
            };
            self.held -= 1;
            match verdict {
                Verdict::Deliver => {
                    v.last = pos;
                    out.events.push(ev);
                }
                Verdict::Repeat => out.repeats += 1,
                Verdict::Late | Verdict::Hold => out.late += 1,
            }
        }
        if v.held.is_empty() {
            self.holding.remove(vin);
        }
    }

    /// Lets through every held reading of `vin`, in order, without waiting
    /// longer for the commit before them.
    fn release(&mut self, vin: &Arc<str>, out: &mut Admitted) {
        self.holding.remove(vin);
        let Some(v) = self.vehicles.get_mut(vin) else {
            return;
        };
        v.skip_to_held();
        let held = std::mem::take(&mut v.held);
        if let Some(last) = held.values().next_back().and_then(Position::of) {
            v.last = last;
        }
        self.held -= held.len();
        out.expired += 1;
        out.events.extend(held.into_values());
    }

    fn release_all(&mut self, out: &mut Admitted) {
        let vins: Vec<Arc<str>> = self.holding.keys().cloned().collect();
        for vin in vins {
            self.release(&vin, out);
        }
    }

    /// Lets through the readings held since `HOLD` before `now`.
    fn release_expired(&mut self, now: Instant) -> Admitted {
        let mut out = Admitted::default();
        let due: Vec<Arc<str>> = self
            .holding
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= HOLD)
            .map(|(vin, _)| vin.clone())
            .collect();
        for vin in due {
            self.release(&vin, &mut out);
        }
        out
    }
}

/// The fan-out point.
pub struct Hub {
    /// Every message, for clients without a filter. Sent under the `routes`
    /// lock, so a client changing its filter sees each message exactly once.
    all: broadcast::Sender<HubEvent>,
    routes: Mutex<Routes>,
    queue: usize,
    clients: AtomicUsize,
    dropped: AtomicU64,
    slow_disconnects: AtomicU64,
    /// The last [`LOG_BACKLOG`] `log` messages, changed under the `routes`
    /// lock so that a new client sees each exactly once (backlog or live).
    logs: Mutex<VecDeque<HubEvent>>,
    /// The bridge to other instances, if any (set once at start).
    relay: OnceLock<Arc<dyn Relay>>,
    /// Orders readings per vehicle across instances (used only with a relay).
    sequencer: Mutex<Sequencer>,
    /// Readings not delivered because they repeated or came late (relay only).
    out_of_order: AtomicU64,
    /// Changes to the stored readings seen here (see [`Self::generation`]).
    generation: AtomicU64,
}

/// The clients with a VIN filter.
#[derive(Default)]
struct Routes {
    next_id: u64,
    /// All of them: they get the messages without a VIN.
    filtered: HashMap<u64, Arc<Mailbox>>,
    /// VIN → the ones that asked for it. A VIN nobody asks for has no entry.
    by_vin: HashMap<Arc<str>, HashMap<u64, Arc<Mailbox>>>,
}

impl Routes {
    fn add(&mut self, id: u64, mailbox: &Arc<Mailbox>, vins: &HashSet<String>) {
        self.filtered.insert(id, mailbox.clone());
        for vin in vins {
            match self.by_vin.get_mut(vin.as_str()) {
                Some(m) => {
                    m.insert(id, mailbox.clone());
                }
                None => {
                    self.by_vin
                        .insert(vin.as_str().into(), HashMap::from([(id, mailbox.clone())]));
                }
            }
        }
    }

    fn remove(&mut self, id: u64, vins: &HashSet<String>) {
        self.filtered.remove(&id);
        for vin in vins {
            if let Some(m) = self.by_vin.get_mut(vin.as_str()) {
                m.remove(&id);
                if m.is_empty() {
                    self.by_vin.remove(vin.as_str());
                }
            }
        }
    }
}

/// A filtered client's bounded queue (drop-oldest, like the firehose's).
pub struct Mailbox {
    state: Mutex<MailboxState>,
    ready: Notify,
    cap: usize,
}

#[derive(Default)]
struct MailboxState {
    queue: VecDeque<HubEvent>,
    /// Dropped since the client last read.
    dropped: u64,
}

impl Mailbox {
    fn lock(&self) -> MutexGuard<'_, MailboxState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `ev`; true if the oldest message was dropped to make room.
    fn push(&self, ev: &HubEvent) -> bool {
        let dropped = {
            let mut st = self.lock();
            let full = st.queue.len() >= self.cap;
            if full {
                st.queue.pop_front();
                st.dropped += 1;
            }
            st.queue.push_back(ev.clone());
            full
        };
        // Stores a permit if the client is busy: a burst wakes it once.
        self.ready.notify_one();
        dropped
    }

    /// Moves up to `max` queued messages that pass `vins` into `out` (a lag
    /// first becomes `lagged`); true if it moved anything.
    fn take(
        &self,
        hub: &Hub,
        vins: &HashSet<String>,
        operator: bool,
        out: &mut Vec<Utf8Bytes>,
        max: usize,
    ) -> bool {
        let start = out.len();
        let mut st = self.lock();
        if st.dropped > 0 {
            let n = std::mem::take(&mut st.dropped);
            out.push(hub.lagged(n));
        }
        // Bounded by the queue's capacity.
        while out.len() - start < max {
            let Some(ev) = st.queue.pop_front() else {
                break;
            };
            if passes(&ev, vins, operator) {
                out.push(ev.text);
            }
        }
        if st.queue.is_empty() && st.queue.capacity() > 64 {
            // A burst is over: do not keep its memory for an idle client.
            st.queue = VecDeque::new();
        }
        out.len() > start
    }
}

/// Whether a client subscribed to `vins` (empty = all) gets `ev`.
fn passes(ev: &HubEvent, vins: &HashSet<String>, operator: bool) -> bool {
    if ev.operators_only && !operator {
        return false;
    }
    match &ev.vin {
        Some(vin) => vins.is_empty() || vins.contains(&**vin),
        None => true,
    }
}

/// What one client receives from the hub; created by [`Hub::subscribe`]
/// (everything), narrowed by [`Subscription::set_filter`].
pub struct Subscription {
    hub: Arc<Hub>,
    feed: Feed,
    /// Receives operator-only messages too.
    operator: bool,
}

enum Feed {
    All(broadcast::Receiver<HubEvent>),
    Vins {
        id: u64,
        mailbox: Arc<Mailbox>,
        vins: HashSet<String>,
    },
}

impl Subscription {
    /// Waits until something is queued, then moves up to `max` messages into
    /// `out` (a lag becomes a `lagged` message). Cancel-safe. `false` = the
    /// hub is gone.
    pub async fn recv(&mut self, out: &mut Vec<Utf8Bytes>, max: usize) -> bool {
        let operator = self.operator;
        let none = HashSet::new();
        match &mut self.feed {
            Feed::All(rx) => {
                loop {
                    match rx.recv().await {
                        Ok(ev) if passes(&ev, &none, operator) => out.push(ev.text),
                        // Not for this client (operators only): wait for the next.
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(n)) => out.push(self.hub.lagged(n)),
                        Err(broadcast::error::RecvError::Closed) => return false,
                    }
                    break;
                }
                // What is already queued goes with it (no await from here on).
                for _ in 1..max {
                    match rx.try_recv() {
                        Ok(ev) if passes(&ev, &none, operator) => out.push(ev.text),
                        Ok(_) => {}
                        Err(broadcast::error::TryRecvError::Lagged(n)) => {
                            out.push(self.hub.lagged(n))
                        }
                        Err(_) => break,
                    }
                }
                true
            }
            Feed::Vins { mailbox, vins, .. } => loop {
                if mailbox.take(&self.hub, vins, operator, out, max) {
                    return true;
                }
                mailbox.ready.notified().await;
            },
        }
    }

    /// The VINs this subscription is narrowed to; empty = every vehicle.
    pub fn vins(&self) -> &HashSet<String> {
        static NONE: std::sync::OnceLock<HashSet<String>> = std::sync::OnceLock::new();
        match &self.feed {
            Feed::All(_) => NONE.get_or_init(HashSet::new),
            Feed::Vins { vins, .. } => vins,
        }
    }

    /// Changes the VIN filter (empty = everything). Messages queued under the
    /// old filter that pass the new one are moved into `out`, so none is lost
    /// or repeated by the switch; a newly added VIN's messages come from now on.
    pub fn set_filter(&mut self, vins: HashSet<String>, out: &mut Vec<Utf8Bytes>) {
        let hub = self.hub.clone();
        let operator = self.operator;
        // Publishing waits meanwhile, so nothing slips between the old and the new feed.
        let mut routes = hub.routes();
        match &mut self.feed {
            Feed::All(_) if vins.is_empty() => {}
            Feed::All(rx) => {
                loop {
                    match rx.try_recv() {
                        Ok(ev) if passes(&ev, &vins, operator) => out.push(ev.text),
                        Ok(_) => {}
                        Err(broadcast::error::TryRecvError::Lagged(n)) => out.push(hub.lagged(n)),
                        Err(_) => break,
                    }
                }
                routes.next_id += 1;
                let id = routes.next_id;
                let mailbox = hub.mailbox();
                routes.add(id, &mailbox, &vins);
                self.feed = Feed::Vins { id, mailbox, vins };
            }
            Feed::Vins {
                id,
                mailbox,
                vins: old,
            } => {
                routes.remove(*id, old);
                if vins.is_empty() {
                    let rx = hub.all.subscribe();
                    mailbox.take(&hub, &vins, operator, out, usize::MAX);
                    self.feed = Feed::All(rx);
                } else {
                    // What is queued is filtered when taken, by the new filter.
                    routes.add(*id, mailbox, &vins);
                    *old = vins;
                }
            }
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Feed::Vins { id, vins, .. } = &self.feed {
            self.hub.routes().remove(*id, vins);
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

/// [`ClientGuard`] for a consumer that outlives a borrow (a GraphQL subscription stream).
pub struct OwnedClientGuard(Arc<Hub>);

impl Drop for OwnedClientGuard {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Hub {
    /// `queue` = messages each client may fall behind before the oldest are dropped.
    pub fn new(queue: usize) -> Self {
        let queue = queue.max(1);
        let (all, _) = broadcast::channel(queue);
        Self {
            all,
            routes: Mutex::default(),
            queue,
            clients: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
            slow_disconnects: AtomicU64::new(0),
            logs: Mutex::default(),
            relay: OnceLock::new(),
            sequencer: Mutex::default(),
            out_of_order: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        }
    }

    /// Grows with every commit here ([`Self::note_stored`]) and every batch
    /// of readings another instance published, before its acknowledgement
    /// or publication. A client that subscribed and then
    /// read `g` misses nothing from a store read begun at generation `g` or
    /// later (the WebSocket history cache, `services::live`).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// A commit here stored readings: called before they are acknowledged
    /// or published.
    pub fn note_stored(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Attaches the bridge to other instances; from now on shared events go
    /// to it too, and readings are ordered per vehicle. Once only.
    pub fn attach_relay(&self, relay: Arc<dyn Relay>) {
        let _ = self.relay.set(relay);
    }

    /// Whether a relay is attached (another instance's clients may listen).
    pub fn relayed(&self) -> bool {
        self.relay.get().is_some()
    }

    /// Readings not delivered since start because another copy or a later
    /// reading of the same vehicle session came first.
    pub fn out_of_order(&self) -> u64 {
        self.out_of_order.load(Ordering::Relaxed)
    }

    /// Tells other instances this instance's statistics per vehicle, once
    /// they are stored.
    pub fn relay_stats(&self, stats: &HashMap<&str, Counters>) {
        if let Some(relay) = self.relay.get() {
            let deltas: Vec<(&str, &Counters)> = stats.iter().map(|(v, c)| (*v, c)).collect();
            relay.stats(&deltas);
        }
    }

    /// Publishes events that another instance published (never relayed back);
    /// `log` lines join the backlog.
    pub fn publish_remote(&self, events: Vec<HubEvent>) {
        // Stored by another instance: before anyone here can see it, so a
        // client that connects after it was delivered reads a newer history.
        if events.iter().any(|ev| ev.order.is_some()) {
            self.note_stored();
        }
        let routes = self.routes();
        for ev in events.iter().filter(|ev| ev.is_log) {
            self.keep_log(ev);
        }
        self.deliver_locked(&routes, events);
    }

    /// Tells every client that messages from other instances were lost
    /// (`missed`: how many, when known).
    pub fn gap(&self, missed: Option<u64>, reason: GapReason) {
        tracing::debug!(?missed, ?reason, "Clients are told of a gap in the stream.");
        self.publish_locked(
            &self.routes(),
            [HubEvent::new(None, &ServerMsg::Gap { missed, reason })],
        );
    }

    fn routes(&self) -> MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn mailbox(&self) -> Arc<Mailbox> {
        Arc::new(Mailbox {
            state: Mutex::default(),
            ready: Notify::new(),
            cap: self.queue,
        })
    }

    /// The `lagged` message of a lag (counted when the messages were dropped).
    fn lagged(&self, n: u64) -> Utf8Bytes {
        tracing::debug!(
            dropped = n,
            "A slow WebSocket client lost its oldest messages."
        );
        ServerMsg::Lagged { dropped: n }.to_text().into()
    }

    pub fn publish(&self, ev: HubEvent) {
        self.publish_all([ev]);
    }

    /// Publishes in order, taking the routing lock once.
    pub fn publish_all(&self, events: impl IntoIterator<Item = HubEvent>) {
        let routes = self.routes();
        match self.relay.get() {
            None => self.publish_locked(&routes, events),
            Some(relay) => {
                let events: Vec<HubEvent> = events.into_iter().collect();
                let shared: Vec<&HubEvent> = events.iter().filter(|e| e.shared).collect();
                if !shared.is_empty() {
                    relay.events(&shared);
                }
                self.deliver_locked(&routes, events);
            }
        }
    }

    /// With a relay: passes readings through the sequencer, then publishes.
    fn deliver_locked(&self, routes: &Routes, events: Vec<HubEvent>) {
        let admitted = self
            .sequencer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit_all(events, Instant::now());
        self.publish_admitted(routes, admitted);
    }

    /// Delivers the readings held longer than [`HOLD`] for an earlier commit
    /// that has not come (the bridge calls it a few times a second).
    pub fn release_held(&self) {
        let routes = self.routes();
        let admitted = self
            .sequencer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .release_expired(Instant::now());
        self.publish_admitted(&routes, admitted);
    }

    fn publish_admitted(&self, routes: &Routes, a: Admitted) {
        let skipped = a.repeats + a.late;
        if skipped > 0 {
            self.out_of_order.fetch_add(skipped, Ordering::Relaxed);
        }
        if a.expired > 0 {
            tracing::debug!(
                vehicles = a.expired,
                "Readings were delivered without an earlier commit that did not arrive."
            );
            self.publish_locked(
                routes,
                [HubEvent::new(
                    None,
                    &ServerMsg::Gap {
                        missed: None,
                        reason: GapReason::Dropped,
                    },
                )],
            );
        }
        self.publish_locked(routes, a.events);
        if a.late > 0 {
            self.publish_locked(
                routes,
                [HubEvent::new(
                    None,
                    &ServerMsg::Gap {
                        missed: Some(a.late),
                        reason: GapReason::Late,
                    },
                )],
            );
        }
    }

    /// Drops are counted here, as they happen — not when the slow client
    /// next reads, which a client that stopped reading never does.
    fn publish_locked(&self, routes: &Routes, events: impl IntoIterator<Item = HubEvent>) {
        let mut dropped = 0u64;
        for ev in events {
            match &ev.vin {
                None => routes
                    .filtered
                    .values()
                    .for_each(|m| dropped += u64::from(m.push(&ev))),
                Some(vin) => {
                    if let Some(m) = routes.by_vin.get(&**vin) {
                        m.values().for_each(|m| dropped += u64::from(m.push(&ev)));
                    }
                }
            }
            // A full firehose queue evicts its oldest message, which at least
            // one client has not read yet (a read message leaves the queue
            // once every client has it): one drop per evicted message.
            // (tokio rounds the capacity up to a power of two.)
            if self.all.receiver_count() > 0 && self.all.len() >= self.queue.next_power_of_two() {
                dropped += 1;
            }
            // No receivers is not an error: nobody is watching.
            let _ = self.all.send(ev);
        }
        if dropped > 0 {
            self.note_dropped(dropped);
        }
    }

    /// Whether anyone would receive a message (skip serialising otherwise):
    /// a client here, or — with a relay — possibly on another instance.
    pub fn has_clients(&self) -> bool {
        self.clients() > 0 || self.relayed()
    }

    /// A subscription to every message, from now on.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        self.subscribe_as(false)
    }

    /// Like [`Self::subscribe`], also receiving operator-only messages when `operator`.
    pub fn subscribe_as(self: &Arc<Self>, operator: bool) -> Subscription {
        Subscription {
            hub: self.clone(),
            feed: Feed::All(self.all.subscribe()),
            operator,
        }
    }

    pub fn client(&self) -> ClientGuard<'_> {
        self.clients.fetch_add(1, Ordering::Relaxed);
        ClientGuard(self)
    }

    pub fn owned_client(self: &Arc<Self>) -> OwnedClientGuard {
        self.clients.fetch_add(1, Ordering::Relaxed);
        OwnedClientGuard(self.clone())
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

    /// Counts a client disconnected because it did not read.
    pub fn note_slow_disconnect(&self) {
        self.slow_disconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// Clients disconnected since start because they did not read (close code 1013).
    pub fn slow_disconnects(&self) -> u64 {
        self.slow_disconnects.load(Ordering::Relaxed)
    }

    /// Publishes a message for everyone.
    pub fn broadcast(&self, msg: &ServerMsg) {
        self.publish(HubEvent::new(None, msg));
    }

    /// Publishes a `log` message and keeps it for clients that connect later.
    pub fn log(&self, level: Level, source: &str, message: &str) {
        self.log_event(HubEvent::new(None, &ServerMsg::log(level, source, message)));
    }

    /// Like [`Self::log`], for operators only (the spawned logger's output),
    /// and shared with other instances' operators.
    pub fn log_operators(&self, level: Level, source: &str, message: &str) {
        self.log_event(HubEvent {
            operators_only: true,
            shared: true,
            ..HubEvent::new(None, &ServerMsg::log(level, source, message))
        });
    }

    /// Like [`Self::log`], shared with other instances' clients (the logger's
    /// own lifecycle lines: the logger is the cluster's).
    pub fn log_shared(&self, level: Level, source: &str, message: &str) {
        self.log_event(HubEvent {
            shared: true,
            ..HubEvent::new(None, &ServerMsg::log(level, source, message))
        });
    }

    fn log_event(&self, mut ev: HubEvent) {
        ev.is_log = true;
        let routes = self.routes();
        self.keep_log(&ev);
        if ev.shared
            && let Some(relay) = self.relay.get()
        {
            relay.events(&[&ev]);
        }
        self.publish_locked(&routes, [ev]);
    }

    /// Adds a `log` line to the backlog (call under the routing lock).
    fn keep_log(&self, ev: &HubEvent) {
        let mut logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        if logs.len() >= LOG_BACKLOG {
            logs.pop_front();
        }
        logs.push_back(ev.clone());
    }

    /// A subscription to every message from now on, and the `log` backlog
    /// up to now: together they hold each log message exactly once.
    /// `operator`: the client also gets operator-only messages.
    pub fn subscribe_with_logs(self: &Arc<Self>, operator: bool) -> (Subscription, Vec<Utf8Bytes>) {
        let _routes = self.routes();
        let sub = self.subscribe_as(operator);
        let logs = self.logs.lock().unwrap_or_else(|p| p.into_inner());
        let none = HashSet::new();
        let backlog = logs
            .iter()
            .filter(|ev| passes(ev, &none, operator))
            .map(|ev| ev.text.clone())
            .collect();
        (sub, backlog)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::{Just, Strategy as _};

    use super::*;

    fn ev(vin: Option<&str>, text: &str) -> HubEvent {
        HubEvent {
            vin: vin.map(Into::into),
            text: text.to_owned().into(),
            operators_only: false,
            order: None,
            commit: None,
            shared: false,
            is_log: false,
        }
    }

    #[tokio::test]
    async fn operator_only_messages_reach_operators_only() {
        let hub = Arc::new(Hub::new(16));
        hub.log_operators(Level::Info, "logger", "SECRET=1");
        hub.log(Level::Info, "server", "hello");
        let (mut viewer, backlog) = hub.subscribe_with_logs(false);
        assert_eq!(backlog.len(), 1);
        assert!(!backlog[0].as_str().contains("SECRET"));
        let (mut operator, backlog) = hub.subscribe_with_logs(true);
        assert_eq!(backlog.len(), 2);
        hub.log_operators(Level::Info, "logger", "SECRET=2");
        hub.publish(ev(None, "after"));
        let mut out = Vec::new();
        assert!(viewer.recv(&mut out, 10).await);
        assert_eq!(
            out.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
            ["after"]
        );
        out.clear();
        assert!(operator.recv(&mut out, 10).await);
        assert_eq!(out.len(), 2, "{out:?}");
        // Filtered clients too.
        let mut filtered = hub.subscribe_as(false);
        filtered.set_filter(vins(&["A"]), &mut out);
        hub.log_operators(Level::Info, "logger", "SECRET=3");
        hub.publish(ev(None, "later"));
        out.clear();
        assert!(filtered.recv(&mut out, 10).await);
        assert_eq!(
            out.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
            ["later"]
        );
    }

    fn vins(v: &[&str]) -> HashSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Everything queued for `sub` now, as text.
    async fn take(sub: &mut Subscription) -> Vec<String> {
        let mut out = Vec::new();
        let mut texts = Vec::new();
        while tokio::time::timeout(
            std::time::Duration::from_millis(20),
            sub.recv(&mut out, 1000),
        )
        .await
        .is_ok_and(|open| open)
        {
            texts.extend(out.drain(..).map(|t| t.as_str().to_owned()));
        }
        texts
    }

    #[tokio::test]
    async fn routes_by_vin_and_keeps_order() {
        let hub = Arc::new(Hub::new(16));
        let mut all = hub.subscribe();
        let mut a = hub.subscribe();
        let mut out = Vec::new();
        a.set_filter(vins(&["A"]), &mut out);
        assert!(out.is_empty());
        hub.publish_all([
            ev(Some("A"), "a1"),
            ev(Some("B"), "b1"),
            ev(None, "log"),
            ev(Some("A"), "a2"),
        ]);
        assert_eq!(take(&mut all).await, ["a1", "b1", "log", "a2"]);
        assert_eq!(take(&mut a).await, ["a1", "log", "a2"]);
        drop(a);
        let routes = hub.routes();
        assert!(routes.by_vin.is_empty() && routes.filtered.is_empty());
    }

    #[tokio::test]
    async fn a_full_mailbox_drops_the_oldest_and_says_so() {
        let hub = Arc::new(Hub::new(3));
        let mut a = hub.subscribe();
        a.set_filter(vins(&["A"]), &mut Vec::new());
        hub.publish_all((1..=5).map(|i| ev(Some("A"), &format!("a{i}"))));
        assert_eq!(
            hub.dropped(),
            2,
            "counted when dropped, before the client reads"
        );
        assert_eq!(
            take(&mut a).await,
            [
                ServerMsg::Lagged { dropped: 2 }.to_text().as_str(),
                "a3",
                "a4",
                "a5"
            ]
        );
        assert_eq!(hub.dropped(), 2);
    }

    #[tokio::test]
    async fn firehose_drops_are_counted_when_they_happen() {
        let hub = Arc::new(Hub::new(4));
        let mut all = hub.subscribe();
        hub.publish_all((1..=6).map(|i| ev(Some("A"), &format!("a{i}"))));
        assert_eq!(hub.dropped(), 2, "before the client reads");
        assert_eq!(
            take(&mut all).await,
            [
                ServerMsg::Lagged { dropped: 2 }.to_text().as_str(),
                "a3",
                "a4",
                "a5",
                "a6"
            ]
        );
        assert_eq!(hub.dropped(), 2, "reading does not count them again");
    }

    #[tokio::test]
    async fn switching_filters_loses_and_repeats_nothing() {
        let hub = Arc::new(Hub::new(16));
        let mut c = hub.subscribe();
        let mut out = Vec::new();
        hub.publish_all([ev(Some("A"), "a1"), ev(Some("B"), "b1")]);
        // Queued under "all", filtered by the new filter.
        c.set_filter(vins(&["A"]), &mut out);
        hub.publish_all([ev(Some("A"), "a2"), ev(Some("B"), "b2")]);
        c.set_filter(vins(&["A", "B"]), &mut out);
        hub.publish_all([ev(Some("B"), "b3")]);
        c.set_filter(HashSet::new(), &mut out);
        hub.publish_all([ev(Some("C"), "c1")]);
        let mut got: Vec<String> = out.iter().map(|t| t.as_str().to_owned()).collect();
        got.extend(take(&mut c).await);
        // A client gets a vehicle's messages from the moment it asks for them
        // (b2 came while it asked for A only).
        assert_eq!(got, ["a1", "a2", "b3", "c1"]);
        assert!(hub.routes().filtered.is_empty());
    }

    struct Recorder(Mutex<Vec<String>>);

    impl Relay for Recorder {
        fn events(&self, events: &[&HubEvent]) {
            let mut r = self.0.lock().unwrap();
            r.extend(events.iter().map(|e| e.text.as_str().to_owned()));
        }
        fn stats(&self, _: &[(&str, &Counters)]) {}
    }

    fn reading(vin: &str, session: u64, seq: u64) -> HubEvent {
        HubEvent {
            order: Some((session, seq)),
            shared: true,
            ..ev(Some(vin), &format!("{vin}{seq}"))
        }
    }

    #[tokio::test]
    async fn with_a_relay_readings_are_ordered_per_vehicle_and_shared_once() {
        let hub = Arc::new(Hub::new(16));
        let relay = Arc::new(Recorder(Mutex::default()));
        hub.attach_relay(relay.clone());
        let mut all = hub.subscribe();
        hub.publish_all([reading("A", 1, 1), reading("A", 1, 2)]);
        // From another instance: a repeat, a late one, the next, another vehicle.
        hub.publish_remote(vec![
            reading("A", 1, 2),
            reading("A", 1, 1),
            reading("A", 1, 3),
            reading("B", 7, 1),
        ]);
        // A new session of A starts a new order.
        hub.publish_all([reading("A", 2, 1)]);
        let late = ServerMsg::Gap {
            missed: Some(1),
            reason: GapReason::Late,
        }
        .to_text();
        assert_eq!(
            take(&mut all).await,
            ["A1", "A2", "A3", "B1", late.as_str(), "A1"]
        );
        assert_eq!(hub.out_of_order(), 2);
        // Only local events went to the relay, each once.
        assert_eq!(*relay.0.lock().unwrap(), ["A1", "A2", "A1"]);
    }

    /// A reading of `vin`'s session 1 stored by commit `commit` (one per commit).
    fn committed(vin: &str, commit: u64) -> HubEvent {
        HubEvent {
            commit: Some(commit),
            ..reading(vin, 1, commit * 10)
        }
    }

    fn texts(events: &[HubEvent]) -> Vec<&str> {
        events.iter().map(|e| e.text.as_str()).collect()
    }

    #[tokio::test]
    async fn a_commit_published_after_the_next_one_is_waited_for() {
        let hub = Arc::new(Hub::new(16));
        hub.attach_relay(Arc::new(Recorder(Mutex::default())));
        let mut all = hub.subscribe();
        hub.publish_all([committed("A", 1)]);
        // Commit 3 (made here) before commit 2 (made on another instance, still on its way).
        hub.publish_all([committed("A", 3), committed("B", 1)]);
        hub.publish_remote(vec![committed("A", 2), committed("A", 2)]);
        assert_eq!(take(&mut all).await, ["A10", "B10", "A20", "A30"]);
        assert_eq!(hub.out_of_order(), 1, "the repeated copy");
    }

    #[test]
    fn held_readings_go_out_after_the_hold_and_the_missing_commit_is_late() {
        let t0 = Instant::now();
        let mut seq = Sequencer::default();
        let a = seq.admit_all(vec![committed("A", 1), committed("A", 3)], t0);
        assert_eq!(texts(&a.events), ["A10"]);
        assert!(
            seq.release_expired(t0 + HOLD / 2).events.is_empty(),
            "still waiting for commit 2"
        );
        let a = seq.release_expired(t0 + HOLD);
        assert_eq!((texts(&a.events), a.expired), (vec!["A30"], 1));
        let a = seq.admit_all(vec![committed("A", 2), committed("A", 4)], t0 + HOLD);
        assert_eq!((texts(&a.events), a.late), (vec!["A40"], 1));
        assert_eq!(seq.held, 0);
    }

    #[test]
    fn a_commit_before_the_first_one_seen_is_late_not_a_copy() {
        let mut s = Sequencer::default();
        let a = s.admit_all(vec![committed("A", 5), committed("A", 4)], Instant::now());
        assert_eq!((texts(&a.events), a.late, a.repeats), (vec!["A50"], 1, 0));
        let a = s.admit_all(vec![committed("A", 5)], Instant::now());
        assert_eq!((a.events.len(), a.late, a.repeats), (0, 0, 1));
    }

    #[test]
    fn the_readings_of_one_commit_go_out_together_in_seq_order() {
        let at = |commit: u64, seq: u64| HubEvent {
            commit: Some(commit),
            ..reading("A", 1, seq)
        };
        let mut s = Sequencer::default();
        let a = s.admit_all(
            vec![at(1, 1), at(3, 5), at(3, 6), at(2, 3), at(2, 4), at(4, 7)],
            Instant::now(),
        );
        assert_eq!(texts(&a.events), ["A1", "A3", "A4", "A5", "A6", "A7"]);
        assert_eq!((a.repeats, a.late, s.held), (0, 0, 0));
    }

    proptest::proptest! {
        /// Commits of one session handed over in any order, some of them
        /// twice, each at most `HOLD` late, come out once each and in commit order.
        #[test]
        fn any_arrival_order_within_the_hold_is_delivered_in_commit_order(
            order in Just((1..=40u64).collect::<Vec<_>>()).prop_shuffle(),
            copies in proptest::collection::vec(0..40usize, 0..10),
        ) {
            let t0 = Instant::now();
            let mut s = Sequencer::default();
            // The first commit opens the vehicle's order (a client sees the stream from there).
            let mut out = texts(&s.admit_all(vec![committed("A", 0)], t0).events)
                .into_iter().map(str::to_owned).collect::<Vec<_>>();
            let mut arrivals: Vec<u64> = order.clone();
            for c in &copies {
                arrivals.insert(*c % arrivals.len(), order[*c % order.len()]);
            }
            for c in arrivals {
                let a = s.admit_all(vec![committed("A", c)], t0);
                out.extend(a.events.iter().map(|e| e.text.as_str().to_owned()));
            }
            let want: Vec<String> = (0..=40u64).map(|c| format!("A{}", c * 10)).collect();
            proptest::prop_assert_eq!(out, want);
            proptest::prop_assert_eq!(s.held, 0);
        }
    }

    #[tokio::test]
    async fn new_clients_get_the_log_backlog_once() {
        let hub = Arc::new(Hub::new(16));
        for i in 0..LOG_BACKLOG + 5 {
            hub.log(Level::Info, "server", &format!("line {i}"));
        }
        let (mut sub, backlog) = hub.subscribe_with_logs(false);
        assert_eq!(backlog.len(), LOG_BACKLOG);
        assert!(backlog[0].as_str().contains("\"line 5\""));
        assert!(
            backlog[LOG_BACKLOG - 1]
                .as_str()
                .contains(&format!("\"line {}\"", LOG_BACKLOG + 4))
        );
        hub.log(Level::Warn, "server", "after");
        let live = take(&mut sub).await;
        assert_eq!(live.len(), 1);
        assert!(live[0].contains("\"after\"") && live[0].contains("\"type\":\"log\""));
    }
}
