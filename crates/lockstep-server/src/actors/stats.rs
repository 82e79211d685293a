//! Compression statistics in memory: lifetime totals per vehicle, loaded from
//! the store at start and advanced by the writer once per committed batch
//! (never per reading). Read by `/status`, `GET /api/stats/vehicles` (paged
//! by VIN) and the once-a-second `compression_stats` WebSocket message.
//!
//! Bounded for a large fleet (issue 16, 50,000 vehicles):
//! - memory is one small entry per vehicle (a boxed VIN and five counters,
//!   about 100 bytes with the tree's share), and the fleet totals are kept
//!   beside them, so no per-second work walks the fleet;
//! - the `compression_stats` message carries the fleet totals plus the
//!   vehicles the client subscribed to (at most `MAX_SUBSCRIBED_VINS`); a
//!   client without a filter gets every vehicle only while the fleet has at
//!   most [`LIST_ALL_MAX`] of them, and the totals alone beyond that. Other
//!   per-vehicle figures come from the paged API.
//!
//! The book also keeps this instance's statistics that are committed with
//! their rows but not yet in the store's daily table ([`Unflushed`]): the
//! writer adds them at commit and writes them once a second (one
//! statement per second instead of one per commit). A crash (SIGKILL) loses
//! at most that second of statistics, never a row; the store's daily
//! statistics then count slightly fewer readings than `telemetry_data`
//! holds.
//!
//! Once a second [`broadcast`] publishes the unfiltered message (serialised
//! once) on a `watch` channel; every WebSocket client task wakes on it and
//! sends that text, or composes its own message when it has a filter.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::actors::hub::Hub;
use crate::model::{Counters, ratio};
use crate::protocol::{CompressionStats, ServerMsg, Summary, VehicleStats};
use crate::store::VehicleTotals;

/// A client without a VIN filter gets every vehicle's figures while the
/// fleet has at most this many vehicles; beyond it, the fleet totals only.
pub const LIST_ALL_MAX: usize = 100;

/// Largest page of `GET /api/stats/vehicles`.
pub const PAGE_MAX: usize = 1000;

/// Per-vehicle counters and their sum.
#[derive(Default)]
struct Book {
    vehicles: BTreeMap<Box<str>, Counters>,
    total: Counters,
}

/// Statistics and receipt times this instance committed that the store's
/// `compression_stats` and `vehicles.last_seen` do not have yet.
#[derive(Debug, Default)]
pub struct Unflushed {
    /// Per (VIN, UTC day of receipt).
    pub stats: HashMap<(Arc<str>, i32), Counters>,
    /// Latest receipt time (Unix ms) per VIN.
    pub seen: HashMap<Arc<str>, i64>,
}

impl Unflushed {
    pub fn is_empty(&self) -> bool {
        self.stats.is_empty() && self.seen.is_empty()
    }

    fn merge(&mut self, o: Unflushed) {
        for (k, c) in o.stats {
            self.stats.entry(k).or_default().add(&c);
        }
        for (vin, t) in o.seen {
            let e = self.seen.entry(vin).or_insert(t);
            *e = (*e).max(t);
        }
    }

    /// The counters per VIN, every day summed (what the book holds).
    pub fn per_vehicle(&self) -> HashMap<&str, Counters> {
        let mut m: HashMap<&str, Counters> = HashMap::with_capacity(self.stats.len());
        for ((vin, _), c) in &self.stats {
            m.entry(&**vin).or_default().add(c);
        }
        m
    }
}

/// Lifetime statistics of all vehicles.
pub struct StatsBook {
    book: Mutex<Book>,
    unflushed: Mutex<Unflushed>,
    /// Held while the unflushed statistics are written and while the book is
    /// reloaded from the store, so a reload counts each delta exactly once:
    /// either in the store's totals or in [`Unflushed`].
    flush_gate: tokio::sync::Mutex<()>,
    /// Bumped on every change, so the broadcaster knows when to send.
    version: AtomicU64,
    /// The unfiltered `compression_stats` text of the last tick; a change
    /// wakes every WebSocket client once.
    tick: watch::Sender<Utf8Bytes>,
}

impl Default for StatsBook {
    fn default() -> Self {
        Self {
            book: Mutex::default(),
            unflushed: Mutex::default(),
            flush_gate: tokio::sync::Mutex::new(()),
            version: AtomicU64::new(0),
            tick: watch::Sender::new(Utf8Bytes::from_static("")),
        }
    }
}

/// One vehicle's row of `GET /api/stats/vehicles`.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct VehicleStatsRow {
    pub vin: String,
    #[serde(flatten)]
    pub stats: VehicleStats,
}

/// `GET /api/stats/vehicles`: vehicles ordered by VIN.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct VehicleStatsPage {
    pub vehicles: Vec<VehicleStatsRow>,
    /// Pass as `after` for the next page; `null` on the last page.
    pub next_after: Option<String>,
}

fn vehicle_stats(c: &Counters) -> VehicleStats {
    VehicleStats {
        readings: c.readings,
        fields_total: c.fields_total,
        fields_transmitted: c.fields_transmitted,
        fields_skipped: c.fields_skipped,
        bytes_received: c.bytes_received,
        compression_ratio: ratio(c.fields_skipped, c.fields_total),
    }
}

impl StatsBook {
    pub fn load(totals: Vec<VehicleTotals>) -> Self {
        let book = Self::default();
        book.add(totals.iter().map(|t| (t.vin.as_str(), &t.counters)));
        book
    }

    fn lock(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the committed counters of one batch.
    pub fn add<'a>(&self, deltas: impl IntoIterator<Item = (&'a str, &'a Counters)>) {
        let mut b = self.lock();
        for (vin, c) in deltas {
            b.total.add(c);
            match b.vehicles.get_mut(vin) {
                Some(t) => t.add(c),
                None => {
                    b.vehicles.insert(vin.into(), *c);
                }
            }
        }
        drop(b);
        self.version.fetch_add(1, Ordering::Relaxed);
    }

    fn unflushed(&self) -> MutexGuard<'_, Unflushed> {
        self.unflushed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds this instance's committed counters (UTC day `day`, received at
    /// `now` ms): to the book at once, to the store at the next [`Self::flush`].
    pub fn committed(&self, deltas: &HashMap<Arc<str>, Counters>, day: i32, now: i64) {
        self.add(deltas.iter().map(|(vin, c)| (&**vin, c)));
        let mut u = self.unflushed();
        for (vin, c) in deltas {
            u.stats.entry((vin.clone(), day)).or_default().add(c);
            u.seen.insert(vin.clone(), now);
        }
    }

    /// Hands the unflushed statistics to `write` (one store transaction);
    /// answers them once written, `None` when there was nothing to write. On
    /// failure they are kept for the next call. Waits for a [`Self::reload`]
    /// in progress (the writer's last flush at shutdown).
    pub async fn flush<F, Fut, E>(&self, write: F) -> Result<Option<Unflushed>, E>
    where
        F: FnOnce(&Unflushed) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let gate = self.flush_gate.lock().await;
        self.flush_gated(gate, write).await
    }

    /// [`Self::flush`], unless a [`Self::reload`] is reading the store's
    /// totals: then `None` at once and the statistics wait for the next
    /// call. The writer flushes this way every second, so its commits never
    /// queue behind a reload of the whole fleet.
    pub async fn try_flush<F, Fut, E>(&self, write: F) -> Result<Option<Unflushed>, E>
    where
        F: FnOnce(&Unflushed) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        match self.flush_gate.try_lock() {
            Ok(gate) => self.flush_gated(gate, write).await,
            Err(_) => Ok(None),
        }
    }

    async fn flush_gated<F, Fut, E>(
        &self,
        _gate: tokio::sync::MutexGuard<'_, ()>,
        write: F,
    ) -> Result<Option<Unflushed>, E>
    where
        F: FnOnce(&Unflushed) -> Fut,
        Fut: Future<Output = Result<(), E>>,
    {
        let taken = std::mem::take(&mut *self.unflushed());
        if taken.is_empty() {
            return Ok(None);
        }
        match write(&taken).await {
            Ok(()) => Ok(Some(taken)),
            Err(e) => {
                self.unflushed().merge(taken);
                Err(e)
            }
        }
    }

    /// Replaces every total by the store's (after a bridge outage, when
    /// other instances' deltas may have been missed) plus this instance's
    /// unflushed statistics. No flush runs between the read and the
    /// replacement.
    pub async fn reload<E>(
        &self,
        totals: impl Future<Output = Result<Vec<VehicleTotals>, E>>,
    ) -> Result<(), E> {
        let _gate = self.flush_gate.lock().await;
        let totals = totals.await?;
        let mut fresh = Book::default();
        for t in totals {
            fresh.total.add(&t.counters);
            fresh
                .vehicles
                .entry(t.vin.into_boxed_str())
                .or_default()
                .add(&t.counters);
        }
        {
            let u = self.unflushed();
            for (vin, c) in u.per_vehicle() {
                fresh.total.add(&c);
                fresh.vehicles.entry(vin.into()).or_default().add(&c);
            }
        }
        *self.lock() = fresh;
        self.version.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    pub fn vehicles(&self) -> usize {
        self.lock().vehicles.len()
    }

    pub fn summary(&self) -> Summary {
        summary(&self.lock().total)
    }

    /// The `compression_stats` message for a client subscribed to `vins`
    /// (empty: every vehicle): the fleet totals, plus the subscribed
    /// vehicles that have statistics, or every vehicle of a fleet of at most
    /// [`LIST_ALL_MAX`] for a client without a filter.
    pub fn to_msg(&self, vins: &HashSet<String>) -> ServerMsg {
        let b = self.lock();
        let vehicles = if vins.is_empty() {
            if b.vehicles.len() <= LIST_ALL_MAX {
                b.vehicles
                    .iter()
                    .map(|(vin, c)| (vin.to_string(), vehicle_stats(c)))
                    .collect()
            } else {
                BTreeMap::new()
            }
        } else {
            vins.iter()
                .filter_map(|vin| {
                    let c = b.vehicles.get(vin.as_str())?;
                    Some((vin.clone(), vehicle_stats(c)))
                })
                .collect()
        };
        let total = b.total;
        drop(b);
        ServerMsg::CompressionStats(CompressionStats {
            summary: summary(&total),
            bytes_received: total.bytes_received,
            vehicles,
        })
    }

    /// Up to `limit` vehicles (at most [`PAGE_MAX`]) after `after`, by VIN.
    pub fn page(&self, after: Option<&str>, limit: usize) -> VehicleStatsPage {
        let limit = limit.clamp(1, PAGE_MAX);
        let b = self.lock();
        let from = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        let mut it = b
            .vehicles
            .range::<str, _>((from, Bound::Unbounded))
            .map(|(vin, c)| VehicleStatsRow {
                vin: vin.to_string(),
                stats: vehicle_stats(c),
            });
        let vehicles: Vec<_> = it.by_ref().take(limit).collect();
        let more = it.next().is_some();
        VehicleStatsPage {
            next_after: more
                .then(|| vehicles.last().map(|r| r.vin.clone()))
                .flatten(),
            vehicles,
        }
    }

    /// Wakes on every published tick (see [`broadcast`]); the value is the
    /// unfiltered message. The current value counts as seen.
    pub fn ticks(&self) -> watch::Receiver<Utf8Bytes> {
        self.tick.subscribe()
    }
}

/// Readings are readings; transmitted and skipped count field values (the
/// seed's names), and the ratio is skipped / non-null field values.
fn summary(t: &Counters) -> Summary {
    Summary {
        total_readings: t.readings,
        fields_total: t.fields_total,
        transmitted_readings: t.fields_transmitted,
        skipped_readings: t.fields_skipped,
        compression_ratio: t.ratio(),
    }
}

/// Publishes a `compression_stats` tick at most once a second, when the
/// statistics changed and a WebSocket client is connected.
pub async fn broadcast(
    stats: std::sync::Arc<StatsBook>,
    hub: std::sync::Arc<Hub>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = stats.version();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let v = stats.version();
        if v != sent && hub.has_clients() {
            sent = v;
            let text = stats.to_msg(&HashSet::new()).to_text();
            stats.tick.send_replace(text.into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(readings: u64) -> Counters {
        Counters {
            readings,
            fields_total: 6 * readings,
            fields_transmitted: 2 * readings,
            fields_skipped: 4 * readings,
            bytes_received: 10 * readings,
        }
    }

    fn vin(n: usize) -> String {
        format!("5YJ3E1EA{n:09}")
    }

    #[test]
    fn messages_carry_the_totals_and_only_the_subscribed_vehicles() {
        let book = StatsBook::default();
        let vins: Vec<String> = (0..LIST_ALL_MAX + 1).map(vin).collect();
        let one = c(1);
        book.add(vins[..LIST_ALL_MAX].iter().map(|v| (v.as_str(), &one)));
        let all = |m: ServerMsg| match m {
            ServerMsg::CompressionStats(s) => s,
            _ => unreachable!(),
        };
        let s = all(book.to_msg(&HashSet::new()));
        assert_eq!(s.vehicles.len(), LIST_ALL_MAX, "a small fleet is listed");
        assert_eq!(s.summary.total_readings, LIST_ALL_MAX as u64);

        book.add([(vins[LIST_ALL_MAX].as_str(), &c(5))]);
        let s = all(book.to_msg(&HashSet::new()));
        assert!(s.vehicles.is_empty(), "a large fleet: totals only");
        assert_eq!(s.summary.total_readings, LIST_ALL_MAX as u64 + 5);
        assert_eq!(s.bytes_received, 10 * (LIST_ALL_MAX as u64 + 5));

        let mine = HashSet::from([vins[3].clone(), vin(999_999)]);
        let s = all(book.to_msg(&mine));
        assert_eq!(s.vehicles.keys().collect::<Vec<_>>(), [&vins[3]]);
        assert_eq!(s.vehicles[&vins[3]].readings, 1);
        assert_eq!(s.summary.total_readings, LIST_ALL_MAX as u64 + 5);
    }

    #[tokio::test]
    async fn unflushed_statistics_are_written_once_and_kept_on_failure() {
        let book = StatsBook::default();
        let (a, b): (Arc<str>, Arc<str>) = (vin(1).into(), vin(2).into());
        book.committed(&HashMap::from([(a.clone(), c(3))]), 20_000, 1_000);
        book.committed(
            &HashMap::from([(a.clone(), c(2)), (b.clone(), c(1))]),
            20_001,
            2_000,
        );
        assert_eq!(book.summary().total_readings, 6, "counted at commit");

        let failed: Result<_, &str> = book.flush(|_| async { Err("store down") }).await;
        assert!(failed.is_err());
        let written = book
            .flush(|u| {
                let per_day: u64 = u.stats.values().map(|c| c.readings).sum();
                assert_eq!(per_day, 6, "kept after the failure, not doubled");
                async { Ok::<_, ()>(()) }
            })
            .await
            .unwrap()
            .expect("something to write");
        assert_eq!(written.stats[&(a.clone(), 20_000)].readings, 3);
        assert_eq!(written.stats[&(a.clone(), 20_001)].readings, 2);
        assert_eq!(written.seen[&a], 2_000);
        assert_eq!(written.seen[&b], 2_000);
        assert!(
            book.flush(|_| async { Ok::<_, ()>(()) })
                .await
                .unwrap()
                .is_none()
        );

        // A reload takes the store's totals plus what is not written yet.
        book.committed(&HashMap::from([(b.clone(), c(4))]), 20_001, 3_000);
        let stored = vec![VehicleTotals {
            vin: vin(1),
            counters: c(5),
        }];
        book.reload(async { Ok::<_, ()>(stored) }).await.unwrap();
        assert_eq!(book.summary().total_readings, 9);
        assert_eq!(book.page(None, 10).vehicles.len(), 2);
    }

    #[tokio::test]
    async fn a_periodic_flush_does_not_wait_for_a_reload() {
        let book = Arc::new(StatsBook::default());
        let a: Arc<str> = vin(1).into();
        book.committed(&HashMap::from([(a.clone(), c(3))]), 20_000, 1_000);
        let (release, totals) = tokio::sync::oneshot::channel::<Vec<VehicleTotals>>();
        let reloading = tokio::spawn({
            let book = book.clone();
            async move {
                book.reload(async { totals.await.map_err(|_| ()) })
                    .await
                    .unwrap()
            }
        });
        // The reload now holds the gate, waiting for the store.
        while book.flush_gate.try_lock().is_ok() {
            tokio::task::yield_now().await;
        }
        let skipped = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            book.try_flush(|_| async { panic!("written during a reload") as Result<(), ()> }),
        )
        .await
        .expect("try_flush waited for the reload")
        .unwrap();
        assert!(skipped.is_none(), "skipped, not waited for");
        release.send(Vec::new()).unwrap();
        reloading.await.unwrap();
        assert_eq!(book.summary().total_readings, 3, "kept for the reload");
        let written = book
            .try_flush(|_| async { Ok::<_, ()>(()) })
            .await
            .unwrap()
            .expect("written once the reload is done");
        assert_eq!(written.stats[&(a, 20_000)].readings, 3);
    }

    #[test]
    fn pages_follow_the_vins_without_gaps_or_repeats() {
        let book = StatsBook::default();
        let vins: Vec<String> = (0..25).rev().map(vin).collect();
        let one = c(1);
        book.add(vins.iter().map(|v| (v.as_str(), &one)));
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let p = book.page(after.as_deref(), 10);
            assert!(p.vehicles.len() <= 10);
            seen.extend(p.vehicles.iter().map(|r| r.vin.clone()));
            match p.next_after {
                Some(a) => after = Some(a),
                None => break,
            }
        }
        let mut want = vins.clone();
        want.sort();
        assert_eq!(seen, want);
        assert!(book.page(Some(&vin(24)), 10).vehicles.is_empty());
        assert_eq!(book.page(None, 25).next_after, None);
    }
}
