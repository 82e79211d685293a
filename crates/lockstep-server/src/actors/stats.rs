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
//! Once a second [`broadcast`] publishes the unfiltered message (serialised
//! once) on a `watch` channel; every WebSocket client task wakes on it and
//! sends that text, or composes its own message when it has a filter.

use std::collections::{BTreeMap, HashSet};
use std::ops::Bound;
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

/// Lifetime statistics of all vehicles.
pub struct StatsBook {
    book: Mutex<Book>,
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

    /// Replaces every total by the store's (after a bridge outage, when
    /// other instances' deltas may have been missed).
    pub fn reset(&self, totals: Vec<VehicleTotals>) {
        let mut fresh = Book::default();
        for t in totals {
            fresh.total.add(&t.counters);
            fresh
                .vehicles
                .entry(t.vin.into_boxed_str())
                .or_default()
                .add(&t.counters);
        }
        *self.lock() = fresh;
        self.version.fetch_add(1, Ordering::Relaxed);
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
