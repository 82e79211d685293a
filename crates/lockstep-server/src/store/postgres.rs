//! PostgreSQL backend: a deadpool pool of tokio-postgres connections; a batch
//! is one transaction that upserts vehicles, sessions and statistics with
//! `unnest` arrays (one prepared statement each, whatever the batch size).
//! Telemetry rows of a small batch go in the same way, pipelined with the
//! upserts; a large batch loads them with binary `COPY` straight into
//! `telemetry_data`. COPY cannot skip duplicates: the codec state under the
//! vehicle's lock already refuses them, but a retried batch whose first
//! commit's answer was lost must not fail, so if the COPY meets a row that is
//! already stored (unique violation) the transaction is rolled back and the
//! batch is redone through a temporary staging table and
//! `INSERT … ON CONFLICT DO NOTHING`.
//! Migrations are tracked in `schema_migrations`.
//!
//! When the database goes away, pool checkouts and statements fail fast
//! (connect and wait timeouts), the caller answers 503, and broken
//! connections are dropped by the pool's recycling, so it recovers by itself.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::pin_mut;
use tokio_postgres::Row;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};

use super::query::{Dialect, ReadSql, bucket_signals, use_rollup};
use super::rollup::{self, MinuteRollup, RollupColumns};
use super::{
    BoxFut, Bucket, DayStats, HistoryQuery, Maintenance, MaintenanceReport, SignalColumns,
    SinkLease, Store, StoreError, StoreKind, VehicleDetail, VehiclePage, VehicleSummary,
    VehicleTotals, WriteBatch, from_sql_u64, to_sql_u64,
};
use crate::model::{Counters, TelemetryRow};

/// Numbered migrations, applied in order; `schema_migrations` lists the applied ones.
/// `{signal_columns}` stands for the catalog's value columns
/// ([`SignalColumns::ddl`]); later signals are added by `add_signal_columns`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE vehicles (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    vin         TEXT NOT NULL UNIQUE,
    model       TEXT,
    year        INTEGER,
    first_seen  BIGINT NOT NULL,  -- Unix ms, server receipt
    last_seen   BIGINT NOT NULL
);
CREATE TABLE telemetry_data (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    vehicle_id        BIGINT NOT NULL REFERENCES vehicles (id),
    session_id        BIGINT NOT NULL,  -- the u64 session id's 64 bits; 0 = seed form
    seq               BIGINT NOT NULL,  -- seed form: the timestamp
    ts                BIGINT NOT NULL,  -- Unix ms, as sent
{signal_columns}    transmitted_mask  BIGINT NOT NULL,  -- bit i = catalog channel i transmitted
    keyframe          BOOLEAN NOT NULL,
    UNIQUE (vehicle_id, session_id, seq)
);
CREATE TABLE compression_stats (
    vehicle_id          BIGINT NOT NULL REFERENCES vehicles (id),
    day                 DATE NOT NULL,  -- UTC day of receipt
    readings            BIGINT NOT NULL DEFAULT 0,
    fields_total        BIGINT NOT NULL DEFAULT 0,
    fields_transmitted  BIGINT NOT NULL DEFAULT 0,
    fields_skipped      BIGINT NOT NULL DEFAULT 0,
    bytes_received      BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (vehicle_id, day)
);
CREATE TABLE sessions (
    vehicle_id  BIGINT NOT NULL REFERENCES vehicles (id),
    session_id  BIGINT NOT NULL,
    next_seq    BIGINT NOT NULL,
    state       BYTEA NOT NULL,
    updated_at  BIGINT NOT NULL,  -- Unix ms
    PRIMARY KEY (vehicle_id, session_id)
);
"#,
    r#"
CREATE TABLE sink_cursors (
    sink         TEXT PRIMARY KEY,  -- nats, mqtt
    position     BIGINT NOT NULL,   -- last forwarded telemetry_data.id
    holder       TEXT NOT NULL,     -- the server instance driving the sink
    lease_until  BIGINT NOT NULL,   -- Unix ms; another instance may take over after it
    updated_at   BIGINT NOT NULL    -- Unix ms
);
"#,
    r#"
-- One row, rewritten by the health probe: proves the database takes writes.
CREATE TABLE health_probe (
    id          INTEGER PRIMARY KEY,
    checked_at  BIGINT NOT NULL  -- Unix ms
);
"#,
    r#"
-- Resync answers (409) given to the vehicle's batches.
ALTER TABLE vehicles ADD COLUMN resyncs BIGINT NOT NULL DEFAULT 0;
-- History pages and buckets: one vehicle's range in (ts, session, seq) order.
CREATE INDEX telemetry_vehicle_ts ON telemetry_data (vehicle_id, ts, session_id, seq);
-- The newest keyframe of a vehicle without scanning its rows.
CREATE INDEX telemetry_vehicle_keyframe ON telemetry_data (vehicle_id, ts) WHERE keyframe;
"#,
    r#"
-- One truth per session across server instances: every commit of a session's
-- state adds one, as a compare-and-set on the version it was decoded against.
ALTER TABLE sessions ADD COLUMN version BIGINT NOT NULL DEFAULT 1;
"#,
    r#"
-- telemetry_data partitioned by the UTC day of `ts` (docs/partitions.md).
-- Every row is copied with its id; the maintenance task creates the days
-- ahead and moves rows that land in the default partition into their day's.
-- A unique index of a partitioned table must hold the partition key, so the
-- duplicate check is on (vehicle, session, seq, ts): a retried reading has
-- the same ts, and the seed form's seq is its ts.
ALTER TABLE telemetry_data RENAME TO telemetry_unpartitioned;
CREATE TABLE telemetry_data (LIKE telemetry_unpartitioned INCLUDING DEFAULTS INCLUDING IDENTITY)
    PARTITION BY RANGE (ts);
CREATE TABLE telemetry_default PARTITION OF telemetry_data DEFAULT;
DO $$
DECLARE d BIGINT;
BEGIN
    FOR d IN SELECT DISTINCT ts - ts % 86400000 FROM telemetry_unpartitioned
             WHERE ts >= 0 AND ts < 253402300800000 LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF telemetry_data FOR VALUES FROM (%s) TO (%s)',
            'telemetry_' || to_char(to_timestamp(d / 1000) AT TIME ZONE 'UTC', 'YYYYMMDD'),
            d, d + 86400000);
    END LOOP;
END $$;
INSERT INTO telemetry_data OVERRIDING SYSTEM VALUE SELECT * FROM telemetry_unpartitioned ORDER BY id;
SELECT setval(pg_get_serial_sequence('telemetry_data', 'id'),
              COALESCE((SELECT MAX(id) FROM telemetry_unpartitioned), 0) + 1, false);
DROP TABLE telemetry_unpartitioned;
ALTER TABLE telemetry_data ADD FOREIGN KEY (vehicle_id) REFERENCES vehicles (id);
ALTER TABLE telemetry_data ADD CONSTRAINT telemetry_dedupe UNIQUE (vehicle_id, session_id, seq, ts);
-- Downstream sinks read in id order (no longer a primary key: it would have to hold ts).
CREATE INDEX telemetry_id ON telemetry_data (id);
CREATE INDEX telemetry_vehicle_ts ON telemetry_data (vehicle_id, ts, session_id, seq);
CREATE INDEX telemetry_vehicle_keyframe ON telemetry_data (vehicle_id, ts) WHERE keyframe;
-- Per vehicle and minute (store::rollup), filled from the rows after the migrations.
CREATE TABLE telemetry_rollup (
    vehicle_vin  TEXT NOT NULL,
    minute       BIGINT NOT NULL,  -- Unix ms of the minute start
    count        BIGINT NOT NULL,
{rollup_columns}    PRIMARY KEY (vehicle_vin, minute)
);
"#,
    r#"
-- Readings no longer check their vehicle row one by one: the foreign key
-- ran a lookup and a row lock on `vehicles` for every inserted reading, 40 to
-- 55 % of an insert (BENCHMARKS.md). Vehicles are never deleted, and every
-- commit takes its rows' vehicle ids from `vehicles` in its own transaction.
ALTER TABLE telemetry_data DROP CONSTRAINT IF EXISTS telemetry_data_vehicle_id_fkey;
"#,
];

/// The statements that name the value columns, generated once from the catalog.
struct Sql {
    channels: usize,
    /// Column list of COPY and of the staging table.
    copy_columns: String,
    copy_types: Vec<Type>,
    insert_telemetry: String,
    recent: String,
    readings_after: String,
    /// One `telemetry_rollup` upsert per commit ([`rollup::pg_upsert`]).
    upsert_rollup: String,
}

impl Sql {
    fn new(cols: &SignalColumns) -> Self {
        let n = cols.len();
        let copy_columns = format!(
            "vehicle_id, session_id, seq, ts, {}, transmitted_mask, keyframe",
            cols.list(None)
        );
        let mut copy_types = vec![Type::INT8; 4];
        copy_types.extend(std::iter::repeat_n(Type::FLOAT8, n));
        copy_types.extend([Type::INT8, Type::BOOL]);
        // unnest($1 vins, $2 sessions, $3 seqs, $4 ts, $5.. values, mask, keyframe)
        let value_params: Vec<String> = (0..n).map(|i| format!("${}::float8[]", 5 + i)).collect();
        let value_names: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
        let insert_telemetry = format!(
            "INSERT INTO telemetry_data ({copy_columns})
     SELECT v.id, t.s, t.q, t.ts, {vals}, t.m, t.k
     FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[], {params}, ${m}::int8[], ${k}::bool[])
          WITH ORDINALITY AS t(vin, s, q, ts, {names}, m, k, ord)
     JOIN vehicles v ON v.vin = t.vin
     ORDER BY t.ord
     ON CONFLICT (vehicle_id, session_id, seq, ts) DO NOTHING",
            vals = value_names
                .iter()
                .map(|c| format!("t.{c}"))
                .collect::<Vec<_>>()
                .join(", "),
            params = value_params.join(", "),
            names = value_names.join(", "),
            m = 5 + n,
            k = 6 + n,
        );
        let recent = format!(
            "SELECT v.vin, t.session_id, t.seq, t.ts, t.transmitted_mask, t.keyframe, {}
             FROM telemetry_data t JOIN vehicles v ON v.id = t.vehicle_id ORDER BY t.id DESC LIMIT $1",
            cols.list(Some("t"))
        );
        // Same columns as `recent`, then the position.
        let readings_after = format!(
            "SELECT v.vin, t.session_id, t.seq, t.ts, t.transmitted_mask, t.keyframe, {}, t.id
             FROM telemetry_data t JOIN vehicles v ON v.id = t.vehicle_id
             WHERE t.id > $1 ORDER BY t.id LIMIT $2",
            cols.list(Some("t"))
        );
        Self {
            readings_after,
            upsert_rollup: rollup::pg_upsert(cols),
            channels: n,
            copy_columns,
            copy_types,
            insert_telemetry,
            recent,
        }
    }
}

/// The PostgreSQL store.
pub struct PgStore {
    pool: Pool,
    sql: Sql,
    reads: ReadSql,
    /// `telemetry_rollup` existed when the store opened (see [`use_rollup`]).
    has_rollup: bool,
    analyzer: Arc<VehiclesAnalyzer>,
    known: KnownVins,
}

/// The VINs whose `vehicles` row this store has committed, so that a small
/// commit does not ask PostgreSQL to create them again (an `INSERT … ON
/// CONFLICT DO NOTHING` per commit was ~5 % of PostgreSQL's time per reading
/// in the seed form). The server never deletes a vehicle; if one is deleted
/// behind its back, the rows insert (joined by VIN) comes up short and the
/// commit is redone through the staging path, which creates it again.
#[derive(Default)]
struct KnownVins(std::sync::Mutex<HashSet<Arc<str>>>);

impl KnownVins {
    /// Past this many the set is cleared (each VIN is then created once more).
    const MAX: usize = 100_000;

    /// `vehicles` without the ones known to exist.
    fn unknown<'a>(&self, vehicles: &'a [(Arc<str>, i64)]) -> (Vec<&'a str>, Vec<i64>) {
        let known = self.0.lock().unwrap_or_else(|p| p.into_inner());
        vehicle_columns(vehicles.iter().filter(|(v, _)| !known.contains(v)))
    }

    /// After a commit: `vehicles` exist.
    fn remember(&self, vehicles: &[(Arc<str>, i64)]) {
        let mut known = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() + vehicles.len() > Self::MAX {
            known.clear();
        }
        known.extend(vehicles.iter().map(|(v, _)| v.clone()));
    }
}

/// The VIN and time (Unix ms) columns of `(vin, time)` pairs, as the
/// vehicles statements take them.
fn vehicle_columns<'a>(
    vehicles: impl Iterator<Item = &'a (Arc<str>, i64)>,
) -> (Vec<&'a str>, Vec<i64>) {
    vehicles.map(|(v, t)| (&**v, *t)).unzip()
}

/// Keeps the planner's view of `vehicles` current as the fleet grows.
///
/// The commit statements join `vehicles` by VIN and are prepared once per
/// pooled connection; PostgreSQL caches a generic plan for them. A plan made
/// while the table held a few rows scans it sequentially, and without an
/// `ANALYZE` it is never replanned: on a server without autovacuum (this
/// machine's) ingest latency grew with the fleet, 7 ms → 69 ms from 1,000 to
/// 50,000 vehicles, every commit reading the whole table. So, at most every
/// [`Self::EVERY`], after a commit: when `vehicles` changed by more than
/// autovacuum's analyze threshold (50 rows + 10 %) since its last analyze,
/// `ANALYZE vehicles` on a pooled connection, off the commit path. The
/// analyze invalidates the cached plans, which are then made again with the
/// table's real size.
#[derive(Default)]
struct VehiclesAnalyzer {
    last: std::sync::Mutex<Option<std::time::Instant>>,
    running: Arc<std::sync::atomic::AtomicBool>,
}

impl VehiclesAnalyzer {
    const EVERY: Duration = Duration::from_secs(5);

    fn after_commit(&self, pool: &Pool) {
        use std::sync::atomic::Ordering;
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < Self::EVERY) {
                return;
            }
            *last = Some(std::time::Instant::now());
        }
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let (pool, running) = (pool.clone(), self.running.clone());
        tokio::spawn(async move {
            if let Err(e) = Self::analyze_if_grown(&pool).await {
                tracing::debug!(error = %e, "The vehicles table could not be analysed.");
            }
            running.store(false, Ordering::Release);
        });
    }

    async fn analyze_if_grown(pool: &Pool) -> anyhow::Result<()> {
        let client = pool.get().await?;
        let row = client
            .query_one(
                "SELECT c.reltuples::float8, COALESCE(s.n_mod_since_analyze, 0)::float8
                 FROM pg_class c LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
                 WHERE c.oid = 'vehicles'::regclass",
                &[],
            )
            .await?;
        let (tuples, changed): (f64, f64) = (row.get(0), row.get(1));
        if changed > 50.0 + 0.1 * tuples.max(0.0) {
            client.batch_execute("ANALYZE vehicles").await?;
            tracing::debug!(changed, "Analysed the vehicles table.");
        }
        Ok(())
    }
}

fn invalid(e: impl std::fmt::Display) -> StoreError {
    StoreError::Invalid(e.to_string())
}

/// A pool for `url` (connections are made on first use); the store and the
/// auth tables (`auth::db`) share this set-up.
pub fn build_pool(url: &str, pool_size: usize) -> anyhow::Result<Pool> {
    // sslmode / sslrootcert are taken out of the URL with libpq's meaning (store::pg_tls).
    let (url, tls) = super::pg_tls::split_url(url)?;
    let mut cfg: tokio_postgres::Config = url
        .parse()
        .context("DATABASE_URL is not a valid PostgreSQL connection string")?;
    cfg.ssl_mode(tls.pg_mode());
    let connector = tls.connector()?;
    cfg.connect_timeout(Duration::from_secs(3));
    if cfg.get_application_name().is_none() {
        cfg.application_name("lockstep-server");
    }
    let mgr = Manager::from_config(
        cfg,
        connector,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(pool_size.max(2))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(Duration::from_secs(5)))
        .create_timeout(Some(Duration::from_secs(3)))
        .recycle_timeout(Some(Duration::from_secs(2)))
        .build()
        .context("cannot build the PostgreSQL pool")
}

impl PgStore {
    /// Builds the pool, checks the connection and applies the migrations.
    pub async fn connect(url: &str, pool_size: usize, cols: SignalColumns) -> anyhow::Result<Self> {
        let mut store = Self {
            pool: build_pool(url, pool_size)?,
            sql: Sql::new(&cols),
            reads: ReadSql::new(&cols, Dialect::Postgres),
            has_rollup: false,
            analyzer: Arc::default(),
            known: KnownVins::default(),
        };
        store
            .migrate(&cols)
            .await
            .context("cannot reach PostgreSQL or apply the migrations")?;
        store.has_rollup = store
            .query("SELECT to_regclass('telemetry_rollup') IS NOT NULL", &[])
            .await?[0]
            .get(0);
        Ok(store)
    }

    async fn migrate(&self, cols: &SignalColumns) -> anyhow::Result<()> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // Serialise concurrent starts on the same database.
        tx.execute("SELECT pg_advisory_xact_lock(7311207)", &[])
            .await?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
            .await?;
        let applied: i32 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                &[],
            )
            .await?
            .get(0);
        let original = applied == 0 && original::set_aside(&tx).await?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
            let sql = sql
                .replace("{signal_columns}", &cols.ddl("DOUBLE PRECISION"))
                .replace("{rollup_columns}", &rollup::ddl(cols, Dialect::Postgres));
            tx.batch_execute(&sql)
                .await
                .with_context(|| format!("migration {}", i + 1))?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[&(i as i32 + 1)],
            )
            .await?;
        }
        add_signal_columns(&tx, cols).await?;
        if original {
            original::import(&tx, cols).await?;
        }
        rollup_upkeep(&tx, cols).await?;
        tx.commit().await?;
        Ok(())
    }

    /// One transaction. Small batches: BEGIN, then the insert of vehicles
    /// not known to exist ([`KnownVins`]), the telemetry insert and the sessions upsert pipelined
    /// (sent together, answered in order), then COMMIT: three round trips.
    /// The writer sends statistics and `last_seen` in a batch of their own
    /// once a second (see [`WriteBatch::last_seen`]).
    /// Large batches load their rows with binary COPY (see [`SMALL_BATCH`]),
    /// straight into the table; if a row is already there, once more through
    /// the staging table (see [`CopyInto`]).
    /// The rollup of the rows is upserted in the same transaction (one
    /// statement, see [`rollup`]); a small batch with a row already stored
    /// takes the staging path too, which tells which rows were inserted.
    async fn commit_batch(&self, b: WriteBatch) -> Result<(), StoreError> {
        check_vins(&b)?;
        match self.commit_with(&b, CopyInto::Table).await? {
            Copied::Stored | Copied::Only(_) => Ok(()),
            Copied::Duplicate => {
                tracing::warn!(
                    rows = b.rows.len(),
                    "a row of the batch is already stored (or its vehicle is gone); redoing the batch through the staging table"
                );
                match self.commit_with(&b, CopyInto::Staging).await? {
                    Copied::Stored | Copied::Only(_) => Ok(()),
                    Copied::Duplicate => Err(StoreError::Conflict(
                        "the staging path reported a duplicate".into(),
                    )),
                }
            }
        }
    }

    /// One attempt at [`Self::commit_batch`]. `Copied::Duplicate` (only with
    /// [`CopyInto::Table`]) means the transaction was rolled back.
    async fn commit_with(&self, b: &WriteBatch, into: CopyInto) -> Result<Copied, StoreError> {
        let mut client = self.pool.get().await.map_err(StoreError::from)?;
        let tx = client.transaction().await.map_err(StoreError::from)?;
        let small = b.rows.len() <= SMALL_BATCH && into == CopyInto::Table;
        // Commits of several servers on one database take turns, so that
        // `telemetry_data.id` grows in commit order (see [`COMMIT_ORDER_LOCK`]);
        // a commit without rows (statistics) need not wait. A small commit
        // sends the lock at the head of its pipeline instead (one round trip fewer).
        let with_rows = !b.rows.is_empty();
        if !small {
            take_order_lock(&tx, with_rows)
                .await
                .map_err(StoreError::from)?;
        }
        // Prepared once per connection, then taken from its cache.
        let (vehicles_st, telemetry_st, sessions_st, stats_st, rollup_st) =
            futures_util::try_join!(
                // A small commit only creates missing vehicles; touching
                // `last_seen` on every commit would rewrite each vehicle's
                // row every time (see [`WriteBatch::last_seen`]).
                tx.prepare_cached(if small {
                    INSERT_VEHICLES
                } else {
                    UPSERT_VEHICLES
                }),
                tx.prepare_cached(&self.sql.insert_telemetry),
                tx.prepare_cached(UPSERT_SESSIONS),
                tx.prepare_cached(UPSERT_STATS),
                tx.prepare_cached(&self.sql.upsert_rollup),
            )
            .map_err(StoreError::from)?;
        let channels = self.sql.channels;

        let sessions = SessionColumns::new(b);
        let stats = StatsColumns::new(b);
        let now = crate::model::now_ms();
        // Empty parts send nothing. Every statement finds its vehicle by VIN, so
        // none waits for the vehicles upsert's answer; the server runs them in order.
        let upsert_sessions = async {
            if sessions.vin.is_empty() {
                return Ok(0);
            }
            tx.execute(
                &sessions_st,
                &[
                    &sessions.vin,
                    &sessions.session,
                    &sessions.next,
                    &sessions.state,
                    &now,
                    &sessions.version,
                ],
            )
            .await
        };
        let upsert_stats = async {
            if stats.vin.is_empty() {
                return Ok(0);
            }
            let c = &stats.counts;
            tx.execute(
                &stats_st,
                &[&stats.vin, &stats.day, &c[0], &c[1], &c[2], &c[3], &c[4]],
            )
            .await
        };

        let sessions_written = if small {
            let rows = RowColumns::new(&b.rows, self.sql.channels);
            let insert_rows = async {
                if b.rows.is_empty() {
                    return Ok(0);
                }
                let mut p: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(rows.values.len() + 6);
                p.extend([
                    &rows.vin as &(dyn ToSql + Sync),
                    &rows.session,
                    &rows.seq,
                    &rows.ts,
                ]);
                p.extend(rows.values.iter().map(|v| v as &(dyn ToSql + Sync)));
                p.extend([&rows.mask as &(dyn ToSql + Sync), &rows.keyframe]);
                tx.execute(&telemetry_st, &p).await
            };
            // Only vehicles not known to exist; a commit without rows (whose
            // count would not notice a deleted vehicle) creates all of them.
            let (new_vins, new_seen) = if b.rows.is_empty() {
                vehicle_columns(b.vehicles.iter())
            } else {
                self.known.unknown(&b.vehicles)
            };
            let create_vehicles = async {
                if new_vins.is_empty() {
                    return Ok(0);
                }
                tx.execute(&vehicles_st, &[&new_vins, &new_seen]).await
            };
            // Sent in the same pipeline: if a row turns out to be stored
            // already, the transaction is rolled back and redone.
            let minutes = rollup::aggregate(&b.rows, channels);
            // The lock first: tokio-postgres sends a request when its future is
            // first polled, `try_join!` polls in argument order, and PostgreSQL
            // runs a pipeline in the order it arrives.
            let (_, _, inserted, n, _, _) = futures_util::try_join!(
                take_order_lock(&tx, with_rows),
                create_vehicles,
                insert_rows,
                upsert_sessions,
                upsert_stats,
                upsert_rollup(&tx, &rollup_st, &minutes, channels),
            )
            .map_err(StoreError::from)?;
            if inserted != b.rows.len() as u64 {
                tx.rollback().await.map_err(StoreError::from)?;
                return Ok(Copied::Duplicate);
            }
            n
        } else {
            let (vins, seen) = vehicle_columns(b.vehicles.iter());
            let ids: HashMap<String, i64> = tx
                .query(&vehicles_st, &[&vins, &seen])
                .await
                .map_err(StoreError::from)?
                .into_iter()
                .map(|r| (r.get(1), r.get(0)))
                .collect();
            let minutes = match copy_rows(&tx, &self.sql, &b.rows, &ids, into).await? {
                Copied::Duplicate => {
                    // The upserts were never polled; they only borrow `tx`.
                    drop((upsert_sessions, upsert_stats));
                    tx.rollback().await.map_err(StoreError::from)?;
                    return Ok(Copied::Duplicate);
                }
                Copied::Stored => rollup::aggregate(&b.rows, channels),
                Copied::Only(keys) => rollup::aggregate(
                    b.rows.iter().filter(|r| {
                        keys.contains(&(
                            ids.get(&*r.vin).copied().unwrap_or_default(),
                            to_sql_u64(r.session_id),
                            to_sql_u64(r.seq),
                            r.ts_ms,
                        ))
                    }),
                    channels,
                ),
            };
            futures_util::try_join!(
                upsert_sessions,
                upsert_stats,
                upsert_rollup(&tx, &rollup_st, &minutes, channels)
            )
            .map_err(StoreError::from)?
            .0
        };
        if sessions_written != b.sessions.len() as u64 {
            // Another writer advanced a session: none of this batch is kept.
            tx.rollback().await.map_err(StoreError::from)?;
            return Err(StoreError::Stale(stale_sessions(&client, b).await?));
        }
        for p in &b.profiles {
            tx.execute(
                "UPDATE vehicles SET
                   model = CASE WHEN $2 THEN $3 ELSE model END,
                   year = CASE WHEN $4 THEN $5 ELSE year END
                 WHERE vin = $1",
                &[
                    &&*p.vin,
                    &p.model.is_some(),
                    &p.model.clone().flatten(),
                    &p.year.is_some(),
                    &p.year.flatten(),
                ],
            )
            .await
            .map_err(StoreError::from)?;
        }
        for (vin, n) in &b.resyncs {
            tx.execute(
                "UPDATE vehicles SET resyncs = resyncs + $2 WHERE vin = $1",
                &[&&**vin, &(*n as i64)],
            )
            .await
            .map_err(StoreError::from)?;
        }
        if !b.last_seen.is_empty() {
            let (vins, seen) = vehicle_columns(b.last_seen.iter());
            tx.execute(TOUCH_VEHICLES, &[&vins, &seen])
                .await
                .map_err(StoreError::from)?;
        }
        tx.commit().await.map_err(StoreError::from)?;
        self.known.remember(&b.vehicles);
        Ok(Copied::Stored)
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let client = self.pool.get().await.map_err(StoreError::from)?;
        let st = client.prepare_cached(sql).await.map_err(StoreError::from)?;
        client.query(&st, params).await.map_err(StoreError::from)
    }

    /// The vehicle's id; `None` if the VIN is unknown.
    async fn vehicle_id(&self, vin: &str) -> Result<Option<i64>, StoreError> {
        Ok(self
            .query(&self.reads.vehicle_id, &[&vin])
            .await?
            .first()
            .map(|r| r.get(0)))
    }
}

/// [`COMMIT_ORDER_LOCK`], for a commit that writes rows.
async fn take_order_lock(
    tx: &deadpool_postgres::Transaction<'_>,
    with_rows: bool,
) -> Result<(), tokio_postgres::Error> {
    if with_rows {
        tx.batch_execute(COMMIT_ORDER_LOCK).await?;
    }
    Ok(())
}

/// The rollup of a commit's rows: one statement ([`rollup::pg_upsert`]).
async fn upsert_rollup(
    tx: &deadpool_postgres::Transaction<'_>,
    st: &tokio_postgres::Statement,
    minutes: &[MinuteRollup],
    channels: usize,
) -> Result<u64, tokio_postgres::Error> {
    if minutes.is_empty() {
        return Ok(0);
    }
    let c = RollupColumns::new(minutes, channels);
    let mut p: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(3 + 4 * channels);
    p.extend([&c.vin as &(dyn ToSql + Sync), &c.minute, &c.count]);
    for i in 0..channels {
        p.extend([
            &c.min[i] as &(dyn ToSql + Sync),
            &c.max[i],
            &c.sum[i],
            &c.n[i],
        ]);
    }
    tx.execute(st, &p).await
}

/// Taken by every commit before it inserts, held until it ends. An identity
/// value is drawn at insert but becomes visible at commit, so two concurrent
/// transactions could otherwise commit out of `id` order, and a reader (a
/// downstream sink's cursor over `id`) that saw the later one first would
/// skip the earlier one's rows for ever. With the lock, a commit draws its
/// ids only after the previous one is visible. One server's writer commits
/// one batch at a time anyway, so the lock is only ever contended between
/// servers sharing the database.
const COMMIT_ORDER_LOCK: &str = "SELECT pg_advisory_xact_lock(7311208)";

/// Takes a sink's lease ($1 sink, $2 holder, $3 now, $4 ttl) if it is free,
/// ours, or expired; answers the cursor, or no row if another holder has it.
const LEASE_SINK: &str =
    "INSERT INTO sink_cursors (sink, position, holder, lease_until, updated_at)
     VALUES ($1, 0, $2, $3::int8 + $4::int8, $3::int8)
     ON CONFLICT (sink) DO UPDATE SET holder = EXCLUDED.holder, lease_until = EXCLUDED.lease_until
     WHERE sink_cursors.holder = EXCLUDED.holder OR sink_cursors.lease_until < $3
     RETURNING position";

/// Batches of at most this many rows are inserted with one prepared
/// `INSERT … SELECT FROM unnest(…)`, pipelined with the other statements (in
/// array order, so `id` keeps the order of arrival, as with COPY).
/// Larger ones go through binary COPY (straight into the table, see
/// [`CopyInto`]), which costs more round trips but less per row.
const SMALL_BATCH: usize = 256;

const UPSERT_VEHICLES: &str = "INSERT INTO vehicles (vin, first_seen, last_seen) SELECT v, s, s FROM unnest($1::text[], $2::int8[]) AS t(v, s)
     ON CONFLICT (vin) DO UPDATE SET last_seen = GREATEST(vehicles.last_seen, EXCLUDED.last_seen)
     RETURNING id, vin";

/// Creates the vehicles not stored yet; existing rows are not touched.
const INSERT_VEHICLES: &str = "INSERT INTO vehicles (vin, first_seen, last_seen) SELECT v, s, s FROM unnest($1::text[], $2::int8[]) AS t(v, s)
     ON CONFLICT (vin) DO NOTHING";

/// Raises `last_seen` ([`WriteBatch::last_seen`]); rows already later are not rewritten.
const TOUCH_VEHICLES: &str = "UPDATE vehicles v SET last_seen = t.s
     FROM unnest($1::text[], $2::int8[]) AS t(vin, s)
     WHERE v.vin = t.vin AND v.last_seen < t.s";

/// The sessions' compare-and-set: ($6) the version each state was decoded
/// against; a new row is stored as version 1, an existing one is replaced
/// only if it still has that version (and gets one more). The affected-row
/// count says whether every session was written (see [`stale_sessions`]).
const UPSERT_SESSIONS: &str =
    "INSERT INTO sessions (vehicle_id, session_id, next_seq, state, updated_at, version)
     SELECT v.id, t.s, t.n, t.st, $5::int8, t.ver + 1
     FROM unnest($1::text[], $2::int8[], $3::int8[], $4::bytea[], $6::int8[]) AS t(vin, s, n, st, ver)
     JOIN vehicles v ON v.vin = t.vin
     ON CONFLICT (vehicle_id, session_id) DO UPDATE SET
       next_seq = EXCLUDED.next_seq, state = EXCLUDED.state, updated_at = EXCLUDED.updated_at,
       version = EXCLUDED.version
     WHERE sessions.version = EXCLUDED.version - 1";

/// The stored versions of ($1, $2) sessions, 0 for none (a failed
/// compare-and-set only: finds which sessions another writer advanced).
const SESSION_VERSIONS: &str = "SELECT t.vin, t.s, COALESCE(s.version, 0)
     FROM unnest($1::text[], $2::int8[]) AS t(vin, s)
     LEFT JOIN vehicles v ON v.vin = t.vin
     LEFT JOIN sessions s ON s.vehicle_id = v.id AND s.session_id = t.s";

/// A session's version and, when it is not the caller's ($3), its state.
const SESSION_IF_CHANGED: &str =
    "SELECT s.version, CASE WHEN s.version IS DISTINCT FROM $3::int8 THEN s.state END
     FROM sessions s JOIN vehicles v ON v.id = s.vehicle_id WHERE v.vin = $1 AND s.session_id = $2";

const UPSERT_STATS: &str = "INSERT INTO compression_stats (vehicle_id, day, readings, fields_total, fields_transmitted, fields_skipped, bytes_received)
     SELECT v.id, DATE '1970-01-01' + t.d, t.r, t.ft, t.fx, t.fs, t.b
     FROM unnest($1::text[], $2::int4[], $3::int8[], $4::int8[], $5::int8[], $6::int8[], $7::int8[]) AS t(vin, d, r, ft, fx, fs, b)
     JOIN vehicles v ON v.vin = t.vin
     ON CONFLICT (vehicle_id, day) DO UPDATE SET
       readings = compression_stats.readings + EXCLUDED.readings,
       fields_total = compression_stats.fields_total + EXCLUDED.fields_total,
       fields_transmitted = compression_stats.fields_transmitted + EXCLUDED.fields_transmitted,
       fields_skipped = compression_stats.fields_skipped + EXCLUDED.fields_skipped,
       bytes_received = compression_stats.bytes_received + EXCLUDED.bytes_received";

/// The sessions of `b` whose stored version is no longer the one they were
/// decoded against (after a failed compare-and-set, outside its transaction:
/// versions only grow, so a session found stale here was stale then).
async fn stale_sessions(
    client: &deadpool_postgres::Client,
    b: &WriteBatch,
) -> Result<Vec<(Arc<str>, u64)>, StoreError> {
    let vins: Vec<&str> = b.sessions.iter().map(|s| &*s.vin).collect();
    let ids: Vec<i64> = b
        .sessions
        .iter()
        .map(|s| to_sql_u64(s.session_id))
        .collect();
    let st = client
        .prepare_cached(SESSION_VERSIONS)
        .await
        .map_err(StoreError::from)?;
    let rows = client
        .query(&st, &[&vins, &ids])
        .await
        .map_err(StoreError::from)?;
    let stored: HashMap<(String, i64), i64> = rows
        .into_iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();
    let stale: Vec<(Arc<str>, u64)> = b
        .sessions
        .iter()
        .filter(|s| {
            stored.get(&(s.vin.to_string(), to_sql_u64(s.session_id))) != Some(&(s.version as i64))
        })
        .map(|s| (s.vin.clone(), s.session_id))
        .collect();
    if stale.is_empty() {
        // The compare-and-set failed but every version matches now: a
        // session row vanished and came back; let the caller retry.
        return Err(StoreError::Unavailable(
            "a session compare-and-set failed without a stale session".into(),
        ));
    }
    Ok(stale)
}

/// Every row, session and statistic must name a vehicle of the batch: the
/// statements find vehicles by VIN, and a missing one would drop data silently.
fn check_vins(b: &WriteBatch) -> Result<(), StoreError> {
    let known: std::collections::HashSet<&str> = b.vehicles.iter().map(|(v, _)| &**v).collect();
    let named = (b.rows.iter().map(|r| &*r.vin))
        .chain(b.sessions.iter().map(|s| &*s.vin))
        .chain(b.stats.iter().map(|s| &*s.vin));
    for vin in named {
        if !known.contains(vin) {
            return Err(invalid(format!("vehicle {vin} missing from the batch")));
        }
    }
    Ok(())
}

/// Telemetry rows as one array per column, for `unnest`.
struct RowColumns<'a> {
    vin: Vec<&'a str>,
    session: Vec<i64>,
    seq: Vec<i64>,
    ts: Vec<i64>,
    /// One array per catalog channel.
    values: Vec<Vec<Option<f64>>>,
    mask: Vec<i64>,
    keyframe: Vec<bool>,
}

impl<'a> RowColumns<'a> {
    fn new(rows: &'a [TelemetryRow], channels: usize) -> Self {
        let n = rows.len();
        let mut c = Self {
            vin: Vec::with_capacity(n),
            session: Vec::with_capacity(n),
            seq: Vec::with_capacity(n),
            ts: Vec::with_capacity(n),
            values: (0..channels).map(|_| Vec::with_capacity(n)).collect(),
            mask: Vec::with_capacity(n),
            keyframe: Vec::with_capacity(n),
        };
        for r in rows {
            c.vin.push(&r.vin);
            c.session.push(to_sql_u64(r.session_id));
            c.seq.push(to_sql_u64(r.seq));
            c.ts.push(r.ts_ms);
            for (i, col) in c.values.iter_mut().enumerate() {
                col.push(r.values.get(i).copied().flatten());
            }
            c.mask.push(to_sql_u64(r.transmitted));
            c.keyframe.push(r.keyframe);
        }
        c
    }
}

/// Session states as one array per column.
struct SessionColumns<'a> {
    vin: Vec<&'a str>,
    session: Vec<i64>,
    next: Vec<i64>,
    state: Vec<&'a [u8]>,
    /// The version each state was decoded against.
    version: Vec<i64>,
}

impl<'a> SessionColumns<'a> {
    fn new(b: &'a WriteBatch) -> Self {
        Self {
            vin: b.sessions.iter().map(|s| &*s.vin).collect(),
            session: b
                .sessions
                .iter()
                .map(|s| to_sql_u64(s.session_id))
                .collect(),
            next: b.sessions.iter().map(|s| to_sql_u64(s.next_seq)).collect(),
            state: b.sessions.iter().map(|s| &s.state[..]).collect(),
            version: b.sessions.iter().map(|s| s.version as i64).collect(),
        }
    }
}

/// Statistics deltas as one array per column.
struct StatsColumns<'a> {
    vin: Vec<&'a str>,
    day: Vec<i32>,
    /// readings, fields total, transmitted, skipped, bytes received.
    counts: [Vec<i64>; 5],
}

impl<'a> StatsColumns<'a> {
    fn new(b: &'a WriteBatch) -> Self {
        let mut counts: [Vec<i64>; 5] = Default::default();
        for s in &b.stats {
            let c = &s.counters;
            for (col, v) in counts.iter_mut().zip([
                c.readings,
                c.fields_total,
                c.fields_transmitted,
                c.fields_skipped,
                c.bytes_received,
            ]) {
                col.push(v as i64);
            }
        }
        Self {
            vin: b.stats.iter().map(|s| &*s.vin).collect(),
            day: b.stats.iter().map(|s| s.day).collect(),
            counts,
        }
    }
}

/// Where a large batch's rows are copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CopyInto {
    /// Straight into `telemetry_data`: one statement, no second pass over the
    /// rows. Fails with a unique violation if one of them is already stored.
    Table,
    /// Into a per-connection staging table (emptied at every commit and by a
    /// rollback), then one `INSERT … ON CONFLICT DO NOTHING`: skips the rows
    /// already stored, at about half the speed of [`CopyInto::Table`].
    Staging,
}

/// A database that already holds the original (Python/Supabase) server's
/// tables: `vehicles`, `telemetry_data`, `compression_stats` as in its
/// `schema.sql`. At the first start they move, untouched, into the schema
/// `lockstep_legacy`; Lockstep's tables are created and filled from them in
/// the same transaction:
/// - vehicles keep their ids; `first_seen` = `created_at`, `last_seen` = the
///   latest reading's `created_at`;
/// - every reading becomes a row of session [`IMPORTED_SESSION`] with `seq`
///   = its original id, `ts` = its `"timestamp"`, the values of the columns
///   the catalog also has, and `transmitted_mask` = non-null fields not in
///   `predicted_fields`;
/// - `compression_stats` is recomputed per vehicle and UTC day of receipt
///   from those readings (the original counted per day for all vehicles, so
///   its rows stay in `lockstep_legacy.compression_stats` only).
///
/// Nothing is dropped: `DROP SCHEMA lockstep_legacy CASCADE` once satisfied.
mod original {
    use super::SignalColumns;
    use crate::model::IMPORTED_SESSION;
    use crate::store::to_sql_u64;

    const TABLES: [&str; 3] = ["vehicles", "telemetry_data", "compression_stats"];

    async fn columns(
        tx: &deadpool_postgres::Transaction<'_>,
        schema: &str,
        table: &str,
    ) -> anyhow::Result<Vec<String>> {
        Ok(tx
            .query(
                "SELECT column_name::text FROM information_schema.columns
                 WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
                &[&schema, &table],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// Moves the original tables aside if this is such a database; true if so.
    pub(super) async fn set_aside(tx: &deadpool_postgres::Transaction<'_>) -> anyhow::Result<bool> {
        let schema: String = tx
            .query_one("SELECT current_schema()::text", &[])
            .await?
            .get(0);
        let vehicles = columns(tx, &schema, "vehicles").await?;
        // The original `vehicles` has `created_at`; Lockstep's has `first_seen`.
        let has = |c: &str| vehicles.iter().any(|v| v == c);
        if !has("created_at") || has("first_seen") {
            return Ok(false);
        }
        tracing::warn!(
            "This database holds the original server's tables: moving them into schema lockstep_legacy and importing their rows."
        );
        tx.batch_execute("CREATE SCHEMA IF NOT EXISTS lockstep_legacy")
            .await?;
        for table in TABLES {
            if !columns(tx, &schema, table).await?.is_empty() {
                tx.batch_execute(&format!(
                    "ALTER TABLE \"{schema}\".{table} SET SCHEMA lockstep_legacy"
                ))
                .await?;
            }
        }
        Ok(true)
    }

    /// Fills Lockstep's (new, empty) tables from `lockstep_legacy`.
    pub(super) async fn import(
        tx: &deadpool_postgres::Transaction<'_>,
        cols: &SignalColumns,
    ) -> anyhow::Result<()> {
        let ms = |e: &str| format!("(EXTRACT(EPOCH FROM {e}) * 1000)::bigint");
        let legacy = columns(tx, "lockstep_legacy", "telemetry_data").await?;
        let has_predicted = legacy.iter().any(|c| c == "predicted_fields");
        // Channels the catalog and the original table both have.
        let shared: Vec<(usize, &str)> = cols
            .names()
            .iter()
            .enumerate()
            .map(|(i, n)| (i, &**n))
            .filter(|(_, n)| legacy.iter().any(|c| c == n))
            .collect();
        let sent = |n: &str| {
            if has_predicted {
                format!("t.\"{n}\" IS NOT NULL AND NOT ('{n}' = ANY(t.predicted_fields))")
            } else {
                format!("t.\"{n}\" IS NOT NULL")
            }
        };
        let sum = |parts: Vec<String>| {
            if parts.is_empty() {
                "0".to_owned()
            } else {
                parts.join(" + ")
            }
        };
        let mask = sum(shared
            .iter()
            .map(|(i, n)| format!("(CASE WHEN {} THEN 1::bigint << {i} ELSE 0 END)", sent(n)))
            .collect());
        let non_null = sum(shared
            .iter()
            .map(|(_, n)| format!("(CASE WHEN t.\"{n}\" IS NOT NULL THEN 1 ELSE 0 END)"))
            .collect());
        let transmitted = sum(shared
            .iter()
            .map(|(_, n)| format!("(CASE WHEN {} THEN 1 ELSE 0 END)", sent(n)))
            .collect());
        let names: Vec<String> = shared.iter().map(|(_, n)| format!("\"{n}\"")).collect();
        let values: Vec<String> = shared.iter().map(|(_, n)| format!("t.\"{n}\"")).collect();
        let (names, values) = if shared.is_empty() {
            (String::new(), String::new())
        } else {
            (
                format!("{}, ", names.join(", ")),
                format!("{}, ", values.join(", ")),
            )
        };
        let has_telemetry = !legacy.is_empty();
        let last_seen = if has_telemetry {
            format!(
                "GREATEST({}, COALESCE((SELECT {} FROM lockstep_legacy.telemetry_data t WHERE t.vehicle_id = v.id), 0))",
                ms("v.created_at"),
                ms("MAX(t.created_at)")
            )
        } else {
            ms("v.created_at")
        };
        let vehicles = tx
            .execute(
                &format!(
                    "INSERT INTO vehicles (id, vin, model, year, first_seen, last_seen) OVERRIDING SYSTEM VALUE
                     SELECT v.id, v.vin, v.model, v.year, {}, {last_seen}
                     FROM lockstep_legacy.vehicles v ORDER BY v.id",
                    ms("v.created_at")
                ),
                &[],
            )
            .await?;
        tx.batch_execute(
            "SELECT setval(pg_get_serial_sequence('vehicles', 'id'), COALESCE((SELECT MAX(id) FROM vehicles), 0) + 1, false)",
        )
        .await?;
        let mut readings = 0;
        if has_telemetry {
            readings = tx
                .execute(
                    &format!(
                        "INSERT INTO telemetry_data (vehicle_id, session_id, seq, ts, {names}transmitted_mask, keyframe)
                         SELECT t.vehicle_id, $1, t.id, {}, {values}{mask}, false
                         FROM lockstep_legacy.telemetry_data t ORDER BY t.id",
                        ms("t.\"timestamp\"")
                    ),
                    &[&to_sql_u64(IMPORTED_SESSION)],
                )
                .await?;
            tx.batch_execute(&format!(
                "INSERT INTO compression_stats (vehicle_id, day, readings, fields_total, fields_transmitted, fields_skipped, bytes_received)
                 SELECT t.vehicle_id, (t.created_at AT TIME ZONE 'UTC')::date, COUNT(*),
                        SUM({non_null}), SUM({transmitted}), SUM({non_null}) - SUM({transmitted}), 0
                 FROM lockstep_legacy.telemetry_data t
                 GROUP BY t.vehicle_id, (t.created_at AT TIME ZONE 'UTC')::date"
            ))
            .await?;
        }
        tracing::warn!(
            vehicles,
            readings,
            "Imported the original server's rows; its tables stay in schema lockstep_legacy."
        );
        Ok(())
    }
}

/// Adds a column for each catalog signal the table does not have yet.
async fn add_signal_columns(
    tx: &deadpool_postgres::Transaction<'_>,
    cols: &SignalColumns,
) -> anyhow::Result<()> {
    let existing: Vec<String> = tx
        .query(
            "SELECT column_name::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = 'telemetry_data'",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for alter in cols.add_missing(&existing, "DOUBLE PRECISION") {
        tx.batch_execute(&alter).await?;
    }
    Ok(())
}

/// Adds the rollup's columns of new catalog signals, and fills the rollup if
/// it is empty while rows are stored (right after its migration, or after
/// the original server's rows were imported).
async fn rollup_upkeep(
    tx: &deadpool_postgres::Transaction<'_>,
    cols: &SignalColumns,
) -> anyhow::Result<()> {
    let existing: Vec<String> = tx
        .query(
            "SELECT column_name::text FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name = 'telemetry_rollup'",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for alter in rollup::add_missing(cols, &existing, Dialect::Postgres) {
        tx.batch_execute(&alter).await?;
    }
    if tx.query_one(rollup::NEEDS_REBUILD, &[]).await?.get(0) {
        let n = tx.execute(&rollup::rebuild(cols), &[]).await?;
        tracing::info!(
            minutes = n,
            "Filled telemetry_rollup from the stored readings."
        );
    }
    Ok(())
}

/// (vehicle id, session, seq, ts) of a stored row: its unique key.
type RowKey = (i64, i64, i64, i64);

/// What an insert attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Copied {
    /// Every row of the batch was inserted.
    Stored,
    /// [`CopyInto::Staging`]: only these rows were inserted, the others were
    /// already stored.
    Only(std::collections::HashSet<RowKey>),
    /// [`CopyInto::Table`] met a row already stored; the transaction is
    /// aborted or must be rolled back.
    Duplicate,
}

/// Large batches: binary COPY, see [`CopyInto`].
async fn copy_rows(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &Sql,
    rows: &[TelemetryRow],
    ids: &HashMap<String, i64>,
    into: CopyInto,
) -> Result<Copied, StoreError> {
    let vids = rows
        .iter()
        .map(|r| {
            ids.get(&*r.vin)
                .copied()
                .ok_or_else(|| invalid(format!("vehicle {} missing from the batch", r.vin)))
        })
        .collect::<Result<Vec<i64>, _>>()?;
    let table = match into {
        CopyInto::Table => "telemetry_data",
        CopyInto::Staging => {
            tx.batch_execute(&format!(
                "CREATE TEMP TABLE IF NOT EXISTS telemetry_staging ON COMMIT DELETE ROWS
                 AS SELECT {} FROM telemetry_data WITH NO DATA",
                sql.copy_columns
            ))
            .await
            .map_err(StoreError::from)?;
            "telemetry_staging"
        }
    };
    let copied = write_copy(tx, sql, table, rows, &vids).await;
    match copied {
        Ok(_) => {}
        Err(e) if into == CopyInto::Table && e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            return Ok(Copied::Duplicate);
        }
        Err(e) => return Err(e.into()),
    }
    if into == CopyInto::Staging {
        let insert = format!(
            "INSERT INTO telemetry_data ({c}) SELECT {c} FROM telemetry_staging
             ON CONFLICT (vehicle_id, session_id, seq, ts) DO NOTHING
             RETURNING vehicle_id, session_id, seq, ts",
            c = sql.copy_columns
        );
        // The rows really inserted, for the rollup.
        let keys = tx
            .query(&insert, &[])
            .await
            .map_err(StoreError::from)?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        return Ok(Copied::Only(keys));
    }
    Ok(Copied::Stored)
}

/// Binary COPY of `rows` (vehicle ids in `vids`) into `table`; the rows keep
/// their order, so `id` follows the order of arrival.
async fn write_copy(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &Sql,
    table: &str,
    rows: &[TelemetryRow],
    vids: &[i64],
) -> Result<u64, tokio_postgres::Error> {
    let sink = tx
        .copy_in(&format!(
            "COPY {table} ({}) FROM STDIN BINARY",
            sql.copy_columns
        ))
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &sql.copy_types);
    let mut values: Vec<Option<f64>> = vec![None; sql.channels];
    pin_mut!(writer);
    for (r, &vid) in rows.iter().zip(vids) {
        let (sid, seq, mask) = (
            to_sql_u64(r.session_id),
            to_sql_u64(r.seq),
            to_sql_u64(r.transmitted),
        );
        for (i, slot) in values.iter_mut().enumerate() {
            *slot = r.values.get(i).copied().flatten();
        }
        let mut row: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(sql.channels + 6);
        row.extend([&vid as &(dyn ToSql + Sync), &sid, &seq, &r.ts_ms]);
        row.extend(values.iter().map(|v| v as &(dyn ToSql + Sync)));
        row.extend([&mask as &(dyn ToSql + Sync), &r.keyframe]);
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await
}

/// A row of `Sql::recent` or `Sql::readings_after`: fixed columns first, then `channels` values.
fn row_to_reading(r: &Row, channels: usize) -> TelemetryRow {
    TelemetryRow {
        vin: r.get::<_, String>(0).into(),
        session_id: from_sql_u64(r.get(1)),
        seq: from_sql_u64(r.get(2)),
        ts_ms: r.get(3),
        values: (0..channels).map(|i| r.get(6 + i)).collect(),
        transmitted: from_sql_u64(r.get(4)),
        keyframe: r.get(5),
    }
}

fn counters(r: &Row, at: usize) -> Counters {
    let g = |i: usize| r.get::<_, i64>(at + i).max(0) as u64;
    Counters {
        readings: g(0),
        fields_total: g(1),
        fields_transmitted: g(2),
        fields_skipped: g(3),
        bytes_received: g(4),
    }
}

impl Store for PgStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Postgres
    }

    fn commit(&self, batch: WriteBatch) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.commit_batch(batch).await?;
            self.analyzer.after_commit(&self.pool);
            Ok(())
        })
    }

    fn load_session(
        &self,
        vin: Arc<str>,
        session_id: u64,
    ) -> BoxFut<'_, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(async move {
            let rows = self
                .query(
                    "SELECT s.state FROM sessions s JOIN vehicles v ON v.id = s.vehicle_id WHERE v.vin = $1 AND s.session_id = $2",
                    &[&&*vin, &to_sql_u64(session_id)],
                )
                .await?;
            Ok(rows.first().map(|r| r.get(0)))
        })
    }

    fn session_if_changed(
        &self,
        vin: Arc<str>,
        session_id: u64,
        known: Option<u64>,
    ) -> BoxFut<'_, Result<super::SessionVersion, StoreError>> {
        Box::pin(async move {
            let known = known.map(|v| v as i64);
            let rows = self
                .query(
                    SESSION_IF_CHANGED,
                    &[&&*vin, &to_sql_u64(session_id), &known],
                )
                .await?;
            Ok(rows
                .first()
                .map(|r| super::SessionVersion {
                    version: r.get::<_, i64>(0) as u64,
                    state: r.get(1),
                })
                .unwrap_or(super::SessionVersion {
                    version: 0,
                    state: None,
                }))
        })
    }

    fn stored_count(
        &self,
        vin: Arc<str>,
        session_id: u64,
        first: u64,
        last: u64,
    ) -> BoxFut<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let mut n = 0u64;
            for (a, b) in super::sql_ranges(first, last) {
                let rows = self
                    .query(
                        "SELECT count(*) FROM telemetry_data t JOIN vehicles v ON v.id = t.vehicle_id WHERE v.vin = $1 AND t.session_id = $2 AND t.seq BETWEEN $3 AND $4",
                        &[&&*vin, &to_sql_u64(session_id), &a, &b],
                    )
                    .await?;
                n += rows.first().map_or(0, |r| r.get::<_, i64>(0)) as u64;
            }
            Ok(n)
        })
    }

    fn recent(&self, limit: usize) -> BoxFut<'_, Result<Vec<TelemetryRow>, StoreError>> {
        Box::pin(async move {
            let rows = self.query(&self.sql.recent, &[&(limit as i64)]).await?;
            let n = self.sql.channels;
            Ok(rows.iter().rev().map(|r| row_to_reading(r, n)).collect())
        })
    }

    fn vehicles(&self, page: VehiclePage) -> BoxFut<'_, Result<Vec<VehicleSummary>, StoreError>> {
        Box::pin(async move {
            let after = page.after.unwrap_or_default();
            let rows = self
                .query(&self.reads.vehicles, &[&after, &(page.limit as i64)])
                .await?;
            Ok(rows
                .iter()
                .map(|r| VehicleSummary {
                    vin: r.get(0),
                    first_seen_ms: r.get(1),
                    last_seen_ms: r.get(2),
                    readings: r.get::<_, i64>(3).max(0) as u64,
                    model: r.get(4),
                    year: r.get(5),
                })
                .collect())
        })
    }

    fn vehicle(&self, vin: Arc<str>) -> BoxFut<'_, Result<Option<VehicleDetail>, StoreError>> {
        Box::pin(async move {
            let rows = self.query(&self.reads.detail, &[&&*vin]).await?;
            Ok(rows.first().map(|r| {
                let n = |i: usize| r.get::<_, i64>(i).max(0) as u64;
                VehicleDetail {
                    vin: r.get(0),
                    model: r.get(1),
                    year: r.get(2),
                    first_seen_ms: r.get(3),
                    last_seen_ms: r.get(4),
                    resyncs: n(5),
                    readings: n(6),
                    sessions: n(7),
                    last_keyframe_ms: r.get(8),
                }
            }))
        })
    }

    fn history(
        &self,
        q: HistoryQuery,
    ) -> BoxFut<'_, Result<Option<Vec<TelemetryRow>>, StoreError>> {
        Box::pin(async move {
            let Some(id) = self.vehicle_id(&q.vin).await? else {
                return Ok(None);
            };
            let a = q.after;
            let rows = self
                .query(
                    &self.reads.page,
                    &[
                        &id,
                        &q.from,
                        &q.to,
                        &a.ts,
                        &a.session,
                        &a.seq,
                        &(q.limit as i64),
                    ],
                )
                .await?;
            let n = self.reads.channels;
            Ok(Some(
                rows.iter()
                    .map(|r| TelemetryRow {
                        vin: q.vin.clone(),
                        ts_ms: r.get(0),
                        session_id: from_sql_u64(r.get(1)),
                        seq: from_sql_u64(r.get(2)),
                        transmitted: from_sql_u64(r.get(3)),
                        keyframe: r.get(4),
                        values: (0..n).map(|i| r.get(5 + i)).collect(),
                    })
                    .collect(),
            ))
        })
    }

    fn count_history(
        &self,
        vin: Arc<str>,
        from: i64,
        to: i64,
    ) -> BoxFut<'_, Result<Option<u64>, StoreError>> {
        Box::pin(async move {
            let Some(id) = self.vehicle_id(&vin).await? else {
                return Ok(None);
            };
            let rows = self.query(&self.reads.count, &[&id, &from, &to]).await?;
            Ok(Some(rows[0].get::<_, i64>(0).max(0) as u64))
        })
    }

    fn buckets(
        &self,
        vin: Arc<str>,
        from: i64,
        to: i64,
        step: i64,
    ) -> BoxFut<'_, Result<Option<Vec<Bucket>>, StoreError>> {
        Box::pin(async move {
            let Some(id) = self.vehicle_id(&vin).await? else {
                return Ok(None);
            };
            let rows = if use_rollup(self.has_rollup, from, to, step) {
                self.query(&self.reads.rollup_buckets, &[&&*vin, &from, &to, &step])
                    .await?
            } else {
                self.query(&self.reads.buckets, &[&id, &from, &to, &step])
                    .await?
            };
            let n = self.reads.channels;
            Ok(Some(
                rows.iter()
                    .map(|r| Bucket {
                        start: r.get(0),
                        count: r.get::<_, Option<i64>>(1).unwrap_or(0).max(0) as u64,
                        signals: bucket_signals(n, |i| r.get(i)),
                    })
                    .collect(),
            ))
        })
    }

    fn daily_stats(
        &self,
        vin: Arc<str>,
        first: i32,
        last: i32,
    ) -> BoxFut<'_, Result<Option<Vec<DayStats>>, StoreError>> {
        Box::pin(async move {
            let Some(id) = self.vehicle_id(&vin).await? else {
                return Ok(None);
            };
            let rows = self.query(&self.reads.days, &[&id, &first, &last]).await?;
            Ok(Some(
                rows.iter()
                    .map(|r| DayStats {
                        day: r.get(0),
                        counters: counters(r, 1),
                    })
                    .collect(),
            ))
        })
    }

    fn totals(&self) -> BoxFut<'_, Result<Vec<VehicleTotals>, StoreError>> {
        Box::pin(async move {
            let rows = self
                .query(
                    "SELECT v.vin, SUM(c.readings)::int8, SUM(c.fields_total)::int8, SUM(c.fields_transmitted)::int8,
                            SUM(c.fields_skipped)::int8, SUM(c.bytes_received)::int8
                     FROM compression_stats c JOIN vehicles v ON v.id = c.vehicle_id GROUP BY v.vin",
                    &[],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| VehicleTotals {
                    vin: r.get(0),
                    counters: counters(r, 1),
                })
                .collect())
        })
    }

    fn ping(&self) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(async move {
            // A write, not `SELECT 1`: a database that answers but cannot
            // write (full disk, read-only) must not look healthy.
            let client = self.pool.get().await.map_err(StoreError::from)?;
            client
                .execute(
                    "INSERT INTO health_probe (id, checked_at) VALUES (1, $1)
                     ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
                    &[&crate::model::now_ms()],
                )
                .await
                .map_err(StoreError::from)?;
            Ok(())
        })
    }

    fn readings_after(
        &self,
        after: i64,
        limit: usize,
    ) -> BoxFut<'_, Result<Vec<(i64, TelemetryRow)>, StoreError>> {
        Box::pin(async move {
            let rows = self
                .query(&self.sql.readings_after, &[&after, &(limit as i64)])
                .await?;
            let n = self.sql.channels;
            Ok(rows
                .iter()
                .map(|r| (r.get(6 + n), row_to_reading(r, n)))
                .collect())
        })
    }

    fn count_after(&self, after: i64) -> BoxFut<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let rows = self
                .query(
                    "SELECT count(*) FROM telemetry_data WHERE id > $1",
                    &[&after],
                )
                .await?;
            Ok(rows[0].get::<_, i64>(0).max(0) as u64)
        })
    }

    fn lease_sink(&self, lease: SinkLease) -> BoxFut<'_, Result<Option<i64>, StoreError>> {
        Box::pin(async move {
            let rows = self
                .query(
                    LEASE_SINK,
                    &[&&*lease.sink, &&*lease.holder, &lease.now_ms, &lease.ttl_ms],
                )
                .await?;
            Ok(rows.first().map(|r| r.get(0)))
        })
    }

    fn advance_sink(
        &self,
        lease: SinkLease,
        position: i64,
    ) -> BoxFut<'_, Result<bool, StoreError>> {
        Box::pin(async move {
            let client = self.pool.get().await.map_err(StoreError::from)?;
            let n = client
                .execute(
                    "UPDATE sink_cursors SET position = GREATEST(position, $3), updated_at = $4
                     WHERE sink = $1 AND holder = $2",
                    &[&&*lease.sink, &&*lease.holder, &position, &lease.now_ms],
                )
                .await
                .map_err(StoreError::from)?;
            Ok(n == 1)
        })
    }

    fn maintain(&self, policy: Maintenance) -> BoxFut<'_, Result<MaintenanceReport, StoreError>> {
        Box::pin(super::pg_partitions::maintain(&self.pool, policy))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Signals;

    const ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

    /// One vehicle, session 7, the given sequence numbers; every value is `seq + offset`.
    fn batch(vin: &Arc<str>, seqs: std::ops::Range<u64>, offset: f64) -> WriteBatch {
        WriteBatch {
            vehicles: vec![(vin.clone(), 1_700_000_000_000)],
            rows: seqs
                .map(|q| TelemetryRow {
                    vin: vin.clone(),
                    session_id: 7,
                    seq: q,
                    ts_ms: 1_700_000_000_000 + q as i64,
                    values: vec![Some(q as f64 + offset); 7],
                    transmitted: 1,
                    keyframe: q == 0,
                })
                .collect(),
            sessions: vec![],
            stats: vec![],
            ..Default::default()
        }
    }

    /// Runs `test` on a store in a database of its own, dropped afterwards.
    async fn with_store<F, Fut>(test: F)
    where
        F: FnOnce(PgStore) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let name = format!(
            "lockstep_pgstore_{}_{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let (admin, conn) = tokio_postgres::connect(ADMIN, tokio_postgres::NoTls)
            .await
            .expect("PostgreSQL must run at 127.0.0.1:5432 (user postgres, trust auth)");
        tokio::spawn(conn);
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("CREATE DATABASE");
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        let outcome = tokio::spawn(async move {
            let cols = SignalColumns::new(&Signals::from_catalog(
                &lockstep_codec::Catalog::default_v1(),
            ))
            .unwrap();
            test(PgStore::connect(&url, 2, cols).await.expect("connect")).await;
        })
        .await;
        let _ = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await;
        if let Err(e) = outcome {
            std::panic::resume_unwind(e.into_panic());
        }
    }

    /// A large batch normally goes straight into the table by COPY; one that
    /// holds a row already stored (a retried commit) must fall back to the
    /// staging path and store every other row once, leaving the stored row as it was.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_batch_with_a_stored_row_is_stored_exactly_once() {
        with_store(|store| async move {
            let vin: Arc<str> = Arc::from("5YJ3E1EA000000001");
            const { assert!(SMALL_BATCH < 300, "the batches must take the COPY path") };
            store
                .commit_batch(batch(&vin, 0..300, 0.0))
                .await
                .expect("first batch");
            // Seq 299 is already stored: the direct COPY fails, the staging path skips it.
            store
                .commit_batch(batch(&vin, 299..600, 1000.0))
                .await
                .expect("overlapping batch");
            // And the same batch again, entirely stored already: nothing changes.
            store
                .commit_batch(batch(&vin, 299..600, 2000.0))
                .await
                .expect("repeated batch");
            let r = &store
                .query(
                    "SELECT count(*), count(DISTINCT seq), min(seq), max(seq),
                            (SELECT speed FROM telemetry_data WHERE seq = 299),
                            (SELECT speed FROM telemetry_data WHERE seq = 300)
                     FROM telemetry_data",
                    &[],
                )
                .await
                .expect("query")[0];
            assert_eq!(r.get::<_, i64>(0), 600, "rows stored");
            assert_eq!(r.get::<_, i64>(1), 600, "distinct seq");
            assert_eq!((r.get::<_, i64>(2), r.get::<_, i64>(3)), (0, 599));
            assert_eq!(
                r.get::<_, Option<f64>>(4),
                Some(299.0),
                "the stored row stays"
            );
            assert_eq!(
                r.get::<_, Option<f64>>(5),
                Some(1300.0),
                "from the 2nd batch"
            );
            // The rollup counts each stored row once, with the stored values.
            let r = &store
                .query(
                    "SELECT (SELECT SUM(count)::int8 FROM telemetry_rollup),
                            (SELECT SUM(speed_n)::int8 FROM telemetry_rollup),
                            (SELECT SUM(speed_sum) FROM telemetry_rollup),
                            (SELECT SUM(speed) FROM telemetry_data),
                            (SELECT MAX(speed_max) FROM telemetry_rollup)",
                    &[],
                )
                .await
                .expect("query")[0];
            assert_eq!(r.get::<_, i64>(0), 600, "rollup count");
            assert_eq!(r.get::<_, i64>(1), 600, "rollup values");
            assert_eq!(r.get::<_, f64>(2), r.get::<_, f64>(3), "rollup sum");
            assert_eq!(r.get::<_, f64>(4), 1599.0, "rollup max");
            // A small batch with a stored row (the pipelined insert) is redone
            // through the staging path: the rollup counts only the new row.
            store
                .commit_batch(batch(&vin, 598..601, 3000.0))
                .await
                .expect("small overlapping batch");
            let n: i64 = store
                .query("SELECT SUM(count)::int8 FROM telemetry_rollup", &[])
                .await
                .expect("query")[0]
                .get(0);
            assert_eq!(n, 601, "rollup count after the small batch");
            // The connections are usable after the rollback.
            store.ping().await.expect("ping");
        })
        .await;
    }

    /// A VIN is known (its vehicle not created again) only once a commit
    /// holding it has succeeded: not before, not after a rolled-back one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_vehicle_is_known_only_after_its_commit() {
        with_store(|store| async move {
            let (a, b): (Arc<str>, Arc<str>) =
                ("5YJ3E1EA000000003".into(), "5YJ3E1EA000000004".into());
            let known = |vin: &Arc<str>| store.known.unknown(&[(vin.clone(), 0)]).0.is_empty();
            let session = |vin: &Arc<str>, version| crate::model::SessionRecord {
                vin: vin.clone(),
                session_id: 7,
                next_seq: 3,
                state: vec![1],
                version,
            };
            let with_sessions = |vin: &Arc<str>, sessions| WriteBatch {
                sessions,
                ..batch(vin, 0..3, 0.0)
            };
            assert!(!known(&a));
            store
                .commit_batch(with_sessions(&a, vec![session(&a, 0)]))
                .await
                .expect("first commit of a");
            assert!(known(&a));
            // a's session is at version 1 now: this commit's compare-and-set fails.
            let mut both = with_sessions(&b, vec![session(&a, 0), session(&b, 0)]);
            both.vehicles.push((a.clone(), 1_700_000_000_000));
            let stale = store.commit_batch(both).await;
            assert!(matches!(stale, Err(StoreError::Stale(_))), "{stale:?}");
            assert!(!known(&b), "b's vehicle was rolled back");
            store
                .commit_batch(with_sessions(&b, vec![session(&b, 0)]))
                .await
                .expect("commit of b");
            assert!(known(&b));
        })
        .await;
    }

    /// A small commit does not create a vehicle it knows exists; if the
    /// vehicle was deleted behind the store's back, the next commit still
    /// stores every row under a vehicle that exists again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_vehicle_deleted_behind_the_store_is_created_again() {
        with_store(|store| async move {
            let vin: Arc<str> = Arc::from("5YJ3E1EA000000002");
            let count = |sql: &'static str| {
                let store = &store;
                async move { store.query(sql, &[]).await.expect("query")[0].get::<_, i64>(0) }
            };
            // The second commit finds the vehicle known and does not create it.
            for seqs in [0..3, 3..6] {
                store
                    .commit_batch(batch(&vin, seqs, 0.0))
                    .await
                    .expect("batch");
            }
            assert_eq!(count("SELECT count(*) FROM vehicles").await, 1);
            store
                .query(
                    "WITH t AS (DELETE FROM telemetry_data), r AS (DELETE FROM telemetry_rollup),
                          s AS (DELETE FROM sessions), c AS (DELETE FROM compression_stats)
                     DELETE FROM vehicles RETURNING id",
                    &[],
                )
                .await
                .expect("delete the vehicle");
            assert_eq!(count("SELECT count(*) FROM vehicles").await, 0);
            store
                .commit_batch(batch(&vin, 6..9, 0.0))
                .await
                .expect("batch after the deletion");
            assert_eq!(count("SELECT count(*) FROM vehicles").await, 1);
            assert_eq!(
                count(
                    "SELECT count(*) FROM telemetry_data t JOIN vehicles v ON v.id = t.vehicle_id
                     WHERE v.vin = '5YJ3E1EA000000002' AND t.seq BETWEEN 6 AND 8"
                )
                .await,
                3,
                "every row under the vehicle that exists again"
            );
            assert_eq!(count("SELECT count(*) FROM telemetry_data").await, 3);
        })
        .await;
    }
}
