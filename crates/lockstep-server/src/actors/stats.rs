//! Compression statistics in memory: lifetime totals per vehicle, loaded from
//! the store at start and advanced by the writer once per committed batch
//! (never per reading). Read by `/status`, `/api/vehicles`-free paths and the
//! once-a-second `compression_stats` WebSocket message.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio_util::sync::CancellationToken;

use crate::actors::hub::{Hub, HubEvent};
use crate::model::{Counters, ratio};
use crate::protocol::{CompressionStats, ServerMsg, Summary, VehicleStats};
use crate::store::VehicleTotals;

/// Lifetime statistics of all vehicles.
#[derive(Default)]
pub struct StatsBook {
    vehicles: Mutex<BTreeMap<String, Counters>>,
    /// Bumped on every change, so the broadcaster knows when to send.
    version: AtomicU64,
}

impl StatsBook {
    pub fn load(totals: Vec<VehicleTotals>) -> Self {
        let book = Self::default();
        {
            let mut v = book.lock();
            for t in totals {
                v.entry(t.vin).or_default().add(&t.counters);
            }
        }
        book
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Counters>> {
        self.vehicles.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds the committed counters of one batch.
    pub fn add<'a>(&self, deltas: impl IntoIterator<Item = (&'a str, &'a Counters)>) {
        let mut v = self.lock();
        for (vin, c) in deltas {
            match v.get_mut(vin) {
                Some(t) => t.add(c),
                None => {
                    v.insert(vin.to_owned(), *c);
                }
            }
        }
        self.version.fetch_add(1, Ordering::Relaxed);
    }

    /// Replaces every total by the store's (after a bridge outage, when
    /// other instances' deltas may have been missed).
    pub fn reset(&self, totals: Vec<VehicleTotals>) {
        let mut fresh = BTreeMap::new();
        for t in totals {
            fresh
                .entry(t.vin)
                .or_insert_with(Counters::default)
                .add(&t.counters);
        }
        *self.lock() = fresh;
        self.version.fetch_add(1, Ordering::Relaxed);
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    pub fn vehicles(&self) -> usize {
        self.lock().len()
    }

    fn total(v: &BTreeMap<String, Counters>) -> Counters {
        v.values().fold(Counters::default(), |mut a, c| {
            a.add(c);
            a
        })
    }

    pub fn summary(&self) -> Summary {
        summary(&Self::total(&self.lock()))
    }

    /// A `compression_stats` WebSocket message.
    pub fn to_msg(&self) -> ServerMsg {
        let v = self.lock();
        let t = Self::total(&v);
        let vehicles = v
            .iter()
            .map(|(vin, c)| {
                (
                    vin.clone(),
                    VehicleStats {
                        readings: c.readings,
                        fields_total: c.fields_total,
                        fields_transmitted: c.fields_transmitted,
                        fields_skipped: c.fields_skipped,
                        bytes_received: c.bytes_received,
                        compression_ratio: ratio(c.fields_skipped, c.fields_total),
                    },
                )
            })
            .collect();
        drop(v);
        ServerMsg::CompressionStats(CompressionStats {
            summary: summary(&t),
            bytes_received: t.bytes_received,
            vehicles,
        })
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

/// Sends `compression_stats` to WebSocket clients at most once a second, when they changed.
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
            hub.publish(HubEvent::new(None, &stats.to_msg()));
        }
    }
}
