//! Storage upkeep on a timer: at start and every `LOCKSTEP_MAINTENANCE_S`
//! seconds it asks the store to create PostgreSQL's day partitions ahead,
//! move rows out of the default partition, and apply the retention
//! (`LOCKSTEP_RETENTION_DAYS`) — see [`Store::maintain`] and
//! docs/partitions.md. A failed run is logged and retried at the next tick;
//! ingest never waits for it (rows without a day partition land in the
//! default one).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::{Maintenance, MaintenanceReport, Store};

/// Day partitions exist from today to this many days ahead: a server down
/// for up to a week comes back to partitions waiting for its rows.
pub const DAYS_AHEAD: u32 = 7;

pub struct Maintainer {
    store: Arc<dyn Store>,
    every: Duration,
    retention_days: Option<u32>,
}

impl Maintainer {
    pub fn new(store: Arc<dyn Store>, every: Duration, retention_days: Option<u32>) -> Self {
        Self {
            store,
            every,
            retention_days,
        }
    }

    /// One run now.
    pub async fn run_once(&self) -> Result<MaintenanceReport, crate::store::StoreError> {
        self.store
            .maintain(Maintenance {
                now_ms: crate::model::now_ms(),
                retention_days: self.retention_days,
                days_ahead: DAYS_AHEAD,
            })
            .await
    }

    /// Runs at start, then every `every`, until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let run = tokio::select! {
                r = self.run_once() => r,
                () = stop.cancelled() => return,
            };
            match run {
                Ok(r) if r == MaintenanceReport::default() => {
                    tracing::debug!("Storage maintenance: nothing to do.");
                }
                Ok(r) => tracing::info!(
                    partitions_created = r.partitions_created,
                    rows_moved = r.rows_moved,
                    partitions_dropped = r.partitions_dropped,
                    rows_deleted = r.rows_deleted,
                    rollup_deleted = r.rollup_deleted,
                    "Storage maintenance done."
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "Storage maintenance failed; it runs again at the next tick.")
                }
            }
        }
    }
}
