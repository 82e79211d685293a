//! A deadline on every store call. A database that stops answering without
//! closing the connection (black-holed by a network fault) would otherwise
//! keep a commit waiting for as long as TCP retransmits — minutes — and
//! every ingest request behind it. With the deadline the call fails as
//! [`StoreError::Unavailable`], so ingest answers 503 + `Retry-After` within
//! seconds and the edge keeps its readings spooled.
//!
//! A commit that times out may still complete in the database afterwards.
//! That is safe: the request was not acknowledged, so the edge resends the
//! same readings, and both stores skip rows already stored.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::{
    BoxFut, Bucket, DayStats, HistoryQuery, Maintenance, MaintenanceReport, SinkLease, Store,
    StoreError, StoreKind, VehicleDetail, VehiclePage, VehicleSummary, VehicleTotals, WriteBatch,
};
use crate::model::TelemetryRow;

/// Wraps a store so that no call outlives `limit`.
pub fn with_deadline(inner: Arc<dyn Store>, limit: Duration) -> Arc<dyn Store> {
    Arc::new(Deadline { inner, limit })
}

struct Deadline {
    inner: Arc<dyn Store>,
    limit: Duration,
}

impl Deadline {
    async fn within<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.limit, call).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!(
                "the store did not answer a {what} within {} ms (LOCKSTEP_STORE_TIMEOUT_MS)",
                self.limit.as_millis()
            ))),
        }
    }
}

impl Store for Deadline {
    fn kind(&self) -> StoreKind {
        self.inner.kind()
    }

    fn commit(&self, batch: WriteBatch) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(self.within("commit", self.inner.commit(batch)))
    }

    fn load_session(
        &self,
        vin: Arc<str>,
        session_id: u64,
    ) -> BoxFut<'_, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(self.within("state load", self.inner.load_session(vin, session_id)))
    }

    fn session_if_changed(
        &self,
        vin: Arc<str>,
        session_id: u64,
        known: Option<u64>,
    ) -> BoxFut<'_, Result<super::SessionVersion, StoreError>> {
        Box::pin(self.within(
            "state version read",
            self.inner.session_if_changed(vin, session_id, known),
        ))
    }

    fn recent(&self, limit: usize) -> BoxFut<'_, Result<Vec<TelemetryRow>, StoreError>> {
        Box::pin(self.within("history read", self.inner.recent(limit)))
    }

    fn vehicles(&self, page: VehiclePage) -> BoxFut<'_, Result<Vec<VehicleSummary>, StoreError>> {
        Box::pin(self.within("vehicle list", self.inner.vehicles(page)))
    }

    fn vehicle(&self, vin: Arc<str>) -> BoxFut<'_, Result<Option<VehicleDetail>, StoreError>> {
        Box::pin(self.within("vehicle read", self.inner.vehicle(vin)))
    }

    fn history(
        &self,
        q: HistoryQuery,
    ) -> BoxFut<'_, Result<Option<Vec<TelemetryRow>>, StoreError>> {
        Box::pin(self.within("history read", self.inner.history(q)))
    }

    fn count_history(
        &self,
        vin: Arc<str>,
        from: i64,
        to: i64,
    ) -> BoxFut<'_, Result<Option<u64>, StoreError>> {
        Box::pin(self.within("history count", self.inner.count_history(vin, from, to)))
    }

    fn buckets(
        &self,
        vin: Arc<str>,
        from: i64,
        to: i64,
        step: i64,
    ) -> BoxFut<'_, Result<Option<Vec<Bucket>>, StoreError>> {
        Box::pin(self.within("bucket read", self.inner.buckets(vin, from, to, step)))
    }

    fn daily_stats(
        &self,
        vin: Arc<str>,
        first: i32,
        last: i32,
    ) -> BoxFut<'_, Result<Option<Vec<DayStats>>, StoreError>> {
        Box::pin(self.within("statistics read", self.inner.daily_stats(vin, first, last)))
    }

    fn totals(&self) -> BoxFut<'_, Result<Vec<VehicleTotals>, StoreError>> {
        Box::pin(self.within("statistics read", self.inner.totals()))
    }

    fn ping(&self) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(self.within("ping", self.inner.ping()))
    }

    fn stored_count(
        &self,
        vin: Arc<str>,
        session_id: u64,
        first: u64,
        last: u64,
    ) -> BoxFut<'_, Result<u64, StoreError>> {
        Box::pin(self.within(
            "stored count",
            self.inner.stored_count(vin, session_id, first, last),
        ))
    }

    fn readings_after(
        &self,
        after: i64,
        limit: usize,
    ) -> BoxFut<'_, Result<Vec<(i64, TelemetryRow)>, StoreError>> {
        Box::pin(self.within("sink read", self.inner.readings_after(after, limit)))
    }

    fn count_after(&self, after: i64) -> BoxFut<'_, Result<u64, StoreError>> {
        Box::pin(self.within("sink lag", self.inner.count_after(after)))
    }

    fn lease_sink(&self, lease: SinkLease) -> BoxFut<'_, Result<Option<i64>, StoreError>> {
        Box::pin(self.within("sink lease", self.inner.lease_sink(lease)))
    }

    fn advance_sink(
        &self,
        lease: SinkLease,
        position: i64,
    ) -> BoxFut<'_, Result<bool, StoreError>> {
        Box::pin(self.within("sink cursor", self.inner.advance_sink(lease, position)))
    }

    // No deadline around the whole run: it is background work made of many
    // short transactions (each bounded by the store's own lock timeout), and
    // abandoning it midway only rolls back the step in progress.
    fn maintain(&self, policy: Maintenance) -> BoxFut<'_, Result<MaintenanceReport, StoreError>> {
        self.inner.maintain(policy)
    }
}
