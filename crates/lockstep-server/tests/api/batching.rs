//! The writer's contract, observed through a store wrapper: many concurrent
//! requests share few commits, and a failing commit gives 503 with nothing
//! acknowledged (also for SQLite, where an outage cannot be staged from outside).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use lockstep_server::model::TelemetryRow;
use lockstep_server::store::{
    self, BoxFut, Bucket, DayStats, HistoryQuery, SinkLease, Store, StoreError, StoreKind,
    VehicleDetail, VehiclePage, VehicleSummary, VehicleTotals, WriteBatch,
};
use lockstep_server::{App, StoreConfig};
use serde_json::Value;

use crate::both_stores;
use crate::helpers::*;

both_stores!(
    concurrent_requests_share_commits,
    a_failed_commit_is_503_and_the_retry_succeeds,
);

/// Counts commits, makes each take a while, and fails them on demand.
struct Instrumented {
    inner: Arc<dyn Store>,
    commits: AtomicUsize,
    fail: AtomicBool,
    /// Fails `vehicles()` only (a read endpoint), leaving writes and pings alone.
    fail_reads: AtomicBool,
    delay: Duration,
}

impl Store for Instrumented {
    fn kind(&self) -> StoreKind {
        self.inner.kind()
    }
    fn commit(&self, batch: WriteBatch) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            if self.fail.load(Ordering::SeqCst) {
                return Err(StoreError::unavailable("injected failure"));
            }
            self.commits.fetch_add(1, Ordering::SeqCst);
            self.inner.commit(batch).await
        })
    }
    fn load_session(
        &self,
        vin: Arc<str>,
        session_id: u64,
    ) -> BoxFut<'_, Result<Option<Vec<u8>>, StoreError>> {
        self.inner.load_session(vin, session_id)
    }
    fn session_if_changed(
        &self,
        vin: Arc<str>,
        session_id: u64,
        known: Option<u64>,
    ) -> BoxFut<'_, Result<store::SessionVersion, StoreError>> {
        self.inner.session_if_changed(vin, session_id, known)
    }
    fn stored_count(
        &self,
        vin: Arc<str>,
        session_id: u64,
        first: u64,
        last: u64,
    ) -> BoxFut<'_, Result<u64, StoreError>> {
        self.inner.stored_count(vin, session_id, first, last)
    }
    fn recent(&self, limit: usize) -> BoxFut<'_, Result<Vec<TelemetryRow>, StoreError>> {
        self.inner.recent(limit)
    }
    fn vehicles(&self, page: VehiclePage) -> BoxFut<'_, Result<Vec<VehicleSummary>, StoreError>> {
        if self.fail_reads.load(Ordering::SeqCst) {
            return Box::pin(async { Err(StoreError::unavailable("injected read failure")) });
        }
        self.inner.vehicles(page)
    }
    fn vehicle(&self, vin: Arc<str>) -> BoxFut<'_, Result<Option<VehicleDetail>, StoreError>> {
        self.inner.vehicle(vin)
    }
    fn history(
        &self,
        q: HistoryQuery,
    ) -> BoxFut<'_, Result<Option<Vec<TelemetryRow>>, StoreError>> {
        self.inner.history(q)
    }
    fn count_history(
        &self,
        vin: Arc<str>,
        from: i64,
        to: i64,
    ) -> BoxFut<'_, Result<Option<u64>, StoreError>> {
        self.inner.count_history(vin, from, to)
    }
    fn buckets(
        &self,
        vin: Arc<str>,
        from: i64,
        to: i64,
        step: i64,
    ) -> BoxFut<'_, Result<Option<Vec<Bucket>>, StoreError>> {
        self.inner.buckets(vin, from, to, step)
    }
    fn daily_stats(
        &self,
        vin: Arc<str>,
        first: i32,
        last: i32,
    ) -> BoxFut<'_, Result<Option<Vec<DayStats>>, StoreError>> {
        self.inner.daily_stats(vin, first, last)
    }
    fn totals(&self) -> BoxFut<'_, Result<Vec<VehicleTotals>, StoreError>> {
        self.inner.totals()
    }
    fn ping(&self) -> BoxFut<'_, Result<(), StoreError>> {
        if self.fail.load(Ordering::SeqCst) {
            return Box::pin(async { Err(StoreError::unavailable("injected failure")) });
        }
        self.inner.ping()
    }
    fn readings_after(
        &self,
        after: i64,
        limit: usize,
    ) -> BoxFut<'_, Result<Vec<(i64, lockstep_server::model::TelemetryRow)>, StoreError>> {
        self.inner.readings_after(after, limit)
    }
    fn count_after(&self, after: i64) -> BoxFut<'_, Result<u64, StoreError>> {
        self.inner.count_after(after)
    }
    fn lease_sink(&self, lease: SinkLease) -> BoxFut<'_, Result<Option<i64>, StoreError>> {
        self.inner.lease_sink(lease)
    }
    fn advance_sink(
        &self,
        lease: SinkLease,
        position: i64,
    ) -> BoxFut<'_, Result<bool, StoreError>> {
        self.inner.advance_sink(lease, position)
    }
    fn maintain(
        &self,
        policy: lockstep_server::store::Maintenance,
    ) -> BoxFut<'_, Result<lockstep_server::store::MaintenanceReport, StoreError>> {
        self.inner.maintain(policy)
    }
}

async fn instrumented_app(backend: Backend) -> (TestApp, Arc<Instrumented>) {
    let db = Arc::new(TestDb::new(backend).await);
    let config = match &*db {
        TestDb::Sqlite { path, .. } => StoreConfig::Sqlite(path.clone()),
        TestDb::Postgres(pg) => StoreConfig::Postgres(pg.url()),
    };
    let inner = store::open(
        &config,
        2,
        &lockstep_server::model::Signals::from_catalog(&catalog()),
    )
    .await
    .unwrap();
    let st = Arc::new(Instrumented {
        inner,
        commits: AtomicUsize::new(0),
        fail: AtomicBool::new(false),
        fail_reads: AtomicBool::new(false),
        delay: Duration::from_millis(40),
    });
    let data_dir = Arc::new(tempfile::tempdir().unwrap());
    let s = settings(
        &db.url(),
        &["--data-dir", data_dir.path().to_str().unwrap()],
    );
    let app = App::build_with_store(s, st.clone()).await.unwrap();
    (start(app, db, data_dir).await, st)
}

async fn concurrent_requests_share_commits(backend: Backend) {
    let (app, st) = instrumented_app(backend).await;
    let n = 40u32;
    let mut tasks = Vec::new();
    for v in 0..n {
        let http = app.http.clone();
        let url = format!("{}/api/telemetry", app.addr);
        let body = {
            use lockstep_proto::Message as _;
            batch(&mut encoder(&vin(100 + v), 1), 0..10, 1_764_000_000_000).encode_to_vec()
        };
        tasks.push(tokio::spawn(async move {
            http.post(url)
                .header("content-type", BATCH)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let commits = st.commits.load(Ordering::SeqCst);
    assert!(
        commits < n as usize / 2,
        "{n} concurrent requests took {commits} commits"
    );
    assert_eq!(
        app.db.count("SELECT COUNT(*) FROM telemetry_data").await,
        400
    );
    app.stats_written().await;
    assert_eq!(
        app.db.count("SELECT COUNT(*) FROM compression_stats").await,
        n as i64
    );
}

async fn a_failed_commit_is_503_and_the_retry_succeeds(backend: Backend) {
    let (app, st) = instrumented_app(backend).await;
    let mut enc = encoder(&vin(200), 5);
    let b0 = batch(&mut enc, 0..10, 1_764_000_000_000);
    let b1 = batch(&mut enc, 10..20, 1_764_000_000_000);
    assert_eq!(app.post_batch(&b0).await.status(), 200);
    st.fail.store(true, Ordering::SeqCst);
    let resp = app.post_batch(&b1).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "2");
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("nothing was stored")
    );
    assert_eq!(app.status().await["status"], "degraded");
    st.fail.store(false, Ordering::SeqCst);
    let resp = app.post_batch(&b1).await;
    assert_eq!(
        resp.status(),
        200,
        "the session state was not advanced by the failed commit"
    );
    assert_eq!(resp.json::<Value>().await.unwrap()["duplicate"], false);
    assert_eq!(
        app.db.count("SELECT COUNT(*) FROM telemetry_data").await,
        20
    );
    eventually(Duration::from_secs(10), "a healthy status", || async {
        (app.status().await["status"] == "healthy").then_some(())
    })
    .await;
}

/// A failing read endpoint answers 503 but leaves the store's health (and so
/// ingest) alone: only the write path reports to the health actor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_read_does_not_mark_ingest_down() {
    let (app, st) = instrumented_app(Backend::Sqlite).await;
    st.fail_reads.store(true, Ordering::SeqCst);
    let resp = app
        .http
        .get(format!("{}/api/vehicles", app.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "2");
    let status = app.status().await;
    assert_eq!(status["status"], "healthy");
    assert_eq!(status["store"]["healthy"], true);
    let mut enc = encoder(&vin(300), 7);
    assert_eq!(
        app.post_batch(&batch(&mut enc, 0..5, 1_764_000_000_000))
            .await
            .status(),
        200
    );
}
