//! SQLite backend: WAL mode, one dedicated writer thread that owns the write
//! connection (one transaction per [`WriteBatch`]), and one read connection
//! used from `spawn_blocking` (WAL lets it read while the writer writes).
//! Migrations are tracked in `PRAGMA user_version`.

use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};
use std::thread;

use anyhow::Context as _;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use super::query::{Dialect, ReadSql, bucket_signals, use_rollup};
use super::rollup::{self, MinuteRollup};
use super::{
    BoxFut, Bucket, DayStats, HistoryQuery, Maintenance, MaintenanceReport, SignalColumns,
    SinkLease, Store, StoreError, StoreKind, VehicleDetail, VehiclePage, VehicleSummary,
    VehicleTotals, WriteBatch, from_sql_u64, to_sql_u64,
};
use crate::model::{Counters, TelemetryRow, civil_date};

/// Numbered migrations; `PRAGMA user_version` = how many are applied.
/// `{signal_columns}` stands for the catalog's value columns
/// ([`SignalColumns::ddl`]); later signals are added by [`add_signal_columns`].
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE vehicles (
    id          INTEGER PRIMARY KEY,
    vin         TEXT NOT NULL UNIQUE,
    model       TEXT,
    year        INTEGER,
    first_seen  INTEGER NOT NULL,   -- Unix ms, server receipt
    last_seen   INTEGER NOT NULL
);
CREATE TABLE telemetry_data (
    id                INTEGER PRIMARY KEY,
    vehicle_id        INTEGER NOT NULL REFERENCES vehicles (id),
    session_id        INTEGER NOT NULL,  -- the u64 session id's 64 bits; 0 = seed form
    seq               INTEGER NOT NULL,  -- seed form: the timestamp
    ts                INTEGER NOT NULL,  -- Unix ms, as sent
{signal_columns}    transmitted_mask  INTEGER NOT NULL,  -- bit i = catalog channel i transmitted
    keyframe          INTEGER NOT NULL,
    UNIQUE (vehicle_id, session_id, seq)
);
CREATE TABLE compression_stats (
    vehicle_id          INTEGER NOT NULL REFERENCES vehicles (id),
    day                 TEXT NOT NULL,    -- YYYY-MM-DD, UTC day of receipt
    readings            INTEGER NOT NULL DEFAULT 0,
    fields_total        INTEGER NOT NULL DEFAULT 0,
    fields_transmitted  INTEGER NOT NULL DEFAULT 0,
    fields_skipped      INTEGER NOT NULL DEFAULT 0,
    bytes_received      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (vehicle_id, day)
);
CREATE TABLE sessions (
    vehicle_id  INTEGER NOT NULL REFERENCES vehicles (id),
    session_id  INTEGER NOT NULL,
    next_seq    INTEGER NOT NULL,
    state       BLOB NOT NULL,
    updated_at  INTEGER NOT NULL,       -- Unix ms
    PRIMARY KEY (vehicle_id, session_id)
);
"#,
    r#"
CREATE TABLE sink_cursors (
    sink         TEXT PRIMARY KEY,     -- nats, mqtt
    position     INTEGER NOT NULL,     -- last forwarded telemetry_data.id
    holder       TEXT NOT NULL,        -- the server instance driving the sink
    lease_until  INTEGER NOT NULL,     -- Unix ms; another instance may take over after it
    updated_at   INTEGER NOT NULL      -- Unix ms
);
"#,
    r#"
-- One row, rewritten by the health probe: proves the database takes writes.
CREATE TABLE health_probe (
    id          INTEGER PRIMARY KEY,
    checked_at  INTEGER NOT NULL        -- Unix ms
);
"#,
    r#"
-- Resync answers (409) given to the vehicle's batches.
ALTER TABLE vehicles ADD COLUMN resyncs INTEGER NOT NULL DEFAULT 0;
-- History pages and buckets: one vehicle's range in (ts, session, seq) order.
CREATE INDEX telemetry_vehicle_ts ON telemetry_data (vehicle_id, ts, session_id, seq);
-- The newest keyframe of a vehicle without scanning its rows.
CREATE INDEX telemetry_vehicle_keyframe ON telemetry_data (vehicle_id, ts) WHERE keyframe;
"#,
    r#"
-- One truth per session across server instances: every commit of a session's
-- state adds one, as a compare-and-set on the version it was decoded against.
ALTER TABLE sessions ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
"#,
    r#"
-- Per vehicle and minute (store::rollup), filled from the rows after the migrations.
CREATE TABLE telemetry_rollup (
    vehicle_vin  TEXT NOT NULL,
    minute       INTEGER NOT NULL,  -- Unix ms of the minute start
    count        INTEGER NOT NULL,
{rollup_columns}    PRIMARY KEY (vehicle_vin, minute)
);
"#,
];

type Reply = oneshot::Sender<Result<(), StoreError>>;

/// Work for the writer thread: a batch, or a small write of its own (a sink's
/// cursor), so that every write goes through the one write connection.
enum Job {
    Commit(WriteBatch, Reply),
    Run(Box<dyn FnOnce(&mut Connection) + Send>),
}

/// The SQLite store.
pub struct SqliteStore {
    writer: mpsc::Sender<Job>,
    read: Arc<Mutex<Connection>>,
    sql: Arc<Sql>,
    reads: Arc<ReadSql>,
    /// `telemetry_rollup` existed when the store opened (see [`use_rollup`]).
    has_rollup: bool,
}

/// The statements that name the value columns, generated once.
struct Sql {
    channels: usize,
    insert_telemetry: String,
    recent: String,
    readings_after: String,
    /// One (vehicle, minute) of `telemetry_rollup` ([`rollup::sqlite_upsert`]).
    upsert_rollup: String,
}

impl Sql {
    fn new(cols: &SignalColumns) -> Self {
        let n = cols.len();
        let params: Vec<String> = (1..=n + 6).map(|i| format!("?{i}")).collect();
        Self {
            channels: n,
            upsert_rollup: rollup::sqlite_upsert(cols),
            insert_telemetry: format!(
                "INSERT OR IGNORE INTO telemetry_data
                 (vehicle_id, session_id, seq, ts, {}, transmitted_mask, keyframe)
                 VALUES ({})",
                cols.list(None),
                params.join(", ")
            ),
            recent: format!(
                "SELECT v.vin, t.session_id, t.seq, t.ts, t.transmitted_mask, t.keyframe, {}
                 FROM telemetry_data t JOIN vehicles v ON v.id = t.vehicle_id ORDER BY t.id DESC LIMIT ?1",
                cols.list(Some("t"))
            ),
            // Same columns as `recent`, then the position.
            readings_after: format!(
                "SELECT v.vin, t.session_id, t.seq, t.ts, t.transmitted_mask, t.keyframe, {}, t.id
                 FROM telemetry_data t JOIN vehicles v ON v.id = t.vehicle_id
                 WHERE t.id > ?1 ORDER BY t.id LIMIT ?2",
                cols.list(Some("t"))
            ),
        }
    }
}

fn open_conn(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // WAL + synchronous=FULL: every commit is fsynced, so a 2xx survives power loss too;
    // batching amortises the fsync over many requests.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

fn migrate(conn: &mut Connection, cols: &SignalColumns) -> rusqlite::Result<()> {
    let version: usize =
        conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))? as usize;
    let tx = conn.transaction()?;
    if version < MIGRATIONS.len() {
        for sql in &MIGRATIONS[version..] {
            tx.execute_batch(
                &sql.replace("{signal_columns}", &cols.ddl("REAL"))
                    .replace("{rollup_columns}", &rollup::ddl(cols, Dialect::Sqlite)),
            )?;
        }
        tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)?;
    }
    add_signal_columns(&tx, cols)?;
    rollup_upkeep(&tx, cols)?;
    tx.commit()
}

/// Adds the rollup's columns of new catalog signals, and fills the rollup if
/// it is empty while rows are stored (right after its migration).
fn rollup_upkeep(conn: &Connection, cols: &SignalColumns) -> rusqlite::Result<()> {
    let existing: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('telemetry_rollup')")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for alter in rollup::add_missing(cols, &existing, Dialect::Sqlite) {
        conn.execute_batch(&alter)?;
    }
    if conn.query_row(rollup::NEEDS_REBUILD, [], |r| r.get::<_, bool>(0))? {
        let n = conn.execute(&rollup::rebuild(cols), [])?;
        tracing::info!(
            minutes = n,
            "Filled telemetry_rollup from the stored readings."
        );
    }
    Ok(())
}

/// Adds a column for each catalog signal the table does not have yet.
fn add_signal_columns(conn: &Connection, cols: &SignalColumns) -> rusqlite::Result<()> {
    let existing: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('telemetry_data')")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for alter in cols.add_missing(&existing, "REAL") {
        conn.execute_batch(&alter)?;
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating the directory and file) and migrates the database.
    pub async fn open(path: &Path, cols: SignalColumns) -> anyhow::Result<Self> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || Self::open_blocking(&path, &cols)).await?
    }

    fn open_blocking(path: &Path, cols: &SignalColumns) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
        }
        let mut conn = open_conn(path)
            .with_context(|| format!("cannot open SQLite database {}", path.display()))?;
        migrate(&mut conn, cols).context("cannot apply the SQLite migrations")?;
        let sql = Arc::new(Sql::new(cols));
        let has_rollup: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'telemetry_rollup')",
            [],
            |r| r.get(0),
        )?;
        let read = open_conn(path)?;
        // Unbounded is fine: the async writer actor awaits each commit, so at most one waits here.
        let (tx, rx) = mpsc::channel::<Job>();
        let writer_sql = sql.clone();
        thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                for job in rx {
                    match job {
                        Job::Commit(batch, reply) => {
                            let r = commit(&mut conn, &writer_sql, &batch)
                                .map_err(StoreError::from)
                                .and_then(|r| r);
                            let _ = reply.send(r);
                        }
                        Job::Run(f) => f(&mut conn),
                    }
                }
            })?;
        Ok(Self {
            writer: tx,
            read: Arc::new(Mutex::new(read)),
            sql,
            reads: Arc::new(ReadSql::new(cols, Dialect::Sqlite)),
            has_rollup,
        })
    }

    /// Runs a job on the writer thread and waits for its outcome.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.read.clone();
        tokio::task::spawn_blocking(move || {
            let conn = conn.lock().map_err(|_| {
                StoreError::Unavailable("the SQLite read connection is poisoned".into())
            })?;
            f(&conn).map_err(StoreError::from)
        })
        .await
        .map_err(StoreError::unavailable)?
    }

    /// Runs `f` on the writer thread's connection (between batches).
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        let job = Job::Run(Box::new(move |conn| {
            let _ = tx.send(f(conn).map_err(StoreError::from));
        }));
        let closed = || StoreError::Closed("the SQLite writer thread stopped".into());
        self.writer.send(job).map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// Runs `f` with the vehicle's id; `None` if the VIN is unknown.
    async fn for_vehicle<T: Send + 'static>(
        &self,
        vin: Arc<str>,
        f: impl FnOnce(&Connection, &ReadSql, i64) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<Option<T>, StoreError> {
        let reads = self.reads.clone();
        self.read(move |c| {
            let id: Option<i64> = c
                .prepare_cached(&reads.vehicle_id)?
                .query_row([&*vin], |r| r.get(0))
                .optional()?;
            id.map(|id| f(c, &reads, id)).transpose()
        })
        .await
    }
}

/// One transaction; `Ok(Err(Stale))` when a session's compare-and-set failed
/// (then nothing was written).
fn commit(
    conn: &mut Connection,
    sql: &Sql,
    b: &WriteBatch,
) -> rusqlite::Result<Result<(), StoreError>> {
    let tx = conn.transaction()?;
    let mut ids = std::collections::HashMap::with_capacity(b.vehicles.len());
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO vehicles (vin, first_seen, last_seen) VALUES (?1, ?2, ?2)
             ON CONFLICT (vin) DO UPDATE SET last_seen = max(last_seen, excluded.last_seen)
             RETURNING id",
        )?;
        for (vin, seen) in &b.vehicles {
            let id: i64 = st.query_row(params![&**vin, seen], |r| r.get(0))?;
            ids.insert(vin.clone(), id);
        }
    }
    let id_of = |vin: &Arc<str>| {
        ids.get(vin).copied().ok_or_else(|| {
            rusqlite::Error::InvalidParameterName(format!("vehicle {vin} missing from the batch"))
        })
    };
    // The rows really inserted (not ignored as already stored), for the rollup.
    let mut inserted: Vec<&TelemetryRow> = Vec::with_capacity(b.rows.len());
    {
        let mut st = tx.prepare_cached(&sql.insert_telemetry)?;
        let mut values: Vec<Option<f64>> = vec![None; sql.channels];
        for r in &b.rows {
            for (i, slot) in values.iter_mut().enumerate() {
                *slot = r.values.get(i).copied().flatten();
            }
            let vid = id_of(&r.vin)?;
            let (sid, seq, mask) = (
                to_sql_u64(r.session_id),
                to_sql_u64(r.seq),
                to_sql_u64(r.transmitted),
            );
            let mut p: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(sql.channels + 6);
            p.extend([&vid as &dyn rusqlite::ToSql, &sid, &seq, &r.ts_ms]);
            p.extend(values.iter().map(|v| v as &dyn rusqlite::ToSql));
            p.extend([&mask as &dyn rusqlite::ToSql, &r.keyframe]);
            if st.execute(p.as_slice())? == 1 {
                inserted.push(r);
            }
        }
    }
    upsert_rollup(&tx, sql, &rollup::aggregate(inserted, sql.channels))?;
    {
        // Compare-and-set: a new row is version 1; an existing one is replaced
        // only if it still has the version the state was decoded against.
        let mut st = tx.prepare_cached(
            "INSERT INTO sessions (vehicle_id, session_id, next_seq, state, updated_at, version) VALUES (?1, ?2, ?3, ?4, ?5, ?6 + 1)
             ON CONFLICT (vehicle_id, session_id) DO UPDATE SET
               next_seq = excluded.next_seq, state = excluded.state, updated_at = excluded.updated_at,
               version = excluded.version
             WHERE sessions.version = excluded.version - 1",
        )?;
        let now = crate::model::now_ms();
        let mut stale = Vec::new();
        for s in &b.sessions {
            let n = st.execute(params![
                id_of(&s.vin)?,
                to_sql_u64(s.session_id),
                to_sql_u64(s.next_seq),
                s.state,
                now,
                s.version as i64
            ])?;
            if n == 0 {
                stale.push((s.vin.clone(), s.session_id));
            }
        }
        if !stale.is_empty() {
            // Another writer (another server on this file) advanced them:
            // nothing of the batch is kept (dropping `tx` rolls back).
            return Ok(Err(StoreError::Stale(stale)));
        }
    }
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO compression_stats (vehicle_id, day, readings, fields_total, fields_transmitted, fields_skipped, bytes_received)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (vehicle_id, day) DO UPDATE SET
               readings = readings + excluded.readings,
               fields_total = fields_total + excluded.fields_total,
               fields_transmitted = fields_transmitted + excluded.fields_transmitted,
               fields_skipped = fields_skipped + excluded.fields_skipped,
               bytes_received = bytes_received + excluded.bytes_received",
        )?;
        for s in &b.stats {
            let c = &s.counters;
            st.execute(params![
                id_of(&s.vin)?,
                civil_date(s.day),
                c.readings as i64,
                c.fields_total as i64,
                c.fields_transmitted as i64,
                c.fields_skipped as i64,
                c.bytes_received as i64
            ])?;
        }
    }
    {
        let mut st = tx.prepare_cached(
            "UPDATE vehicles SET
               model = CASE WHEN ?2 THEN ?3 ELSE model END,
               year = CASE WHEN ?4 THEN ?5 ELSE year END
             WHERE vin = ?1",
        )?;
        for p in &b.profiles {
            st.execute(params![
                &*p.vin,
                p.model.is_some(),
                p.model.clone().flatten(),
                p.year.is_some(),
                p.year.flatten()
            ])?;
        }
        let mut st =
            tx.prepare_cached("UPDATE vehicles SET resyncs = resyncs + ?2 WHERE vin = ?1")?;
        for (vin, n) in &b.resyncs {
            st.execute(params![&**vin, *n as i64])?;
        }
        let mut st = tx.prepare_cached(
            "UPDATE vehicles SET last_seen = ?2 WHERE vin = ?1 AND last_seen < ?2",
        )?;
        for (vin, seen) in &b.last_seen {
            st.execute(params![&**vin, seen])?;
        }
    }
    tx.commit().map(Ok)
}

/// The rollup of a commit's rows, one upsert per (vehicle, minute).
fn upsert_rollup(conn: &Connection, sql: &Sql, minutes: &[MinuteRollup]) -> rusqlite::Result<()> {
    let mut st = conn.prepare_cached(&sql.upsert_rollup)?;
    for m in minutes {
        let mut p: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(3 + 4 * sql.channels);
        let vin: &str = &m.vin;
        p.extend([&vin as &dyn rusqlite::ToSql, &m.minute, &m.count]);
        for c in 0..sql.channels {
            p.extend([
                &m.min[c] as &dyn rusqlite::ToSql,
                &m.max[c],
                &m.sum[c],
                &m.n[c],
            ]);
        }
        st.execute(p.as_slice())?;
    }
    Ok(())
}

/// Takes a sink's lease (?1 sink, ?2 holder, ?3 now, ?4 ttl) if it is free,
/// ours, or expired; answers the cursor, or no row if another holder has it.
const LEASE_SINK: &str =
    "INSERT INTO sink_cursors (sink, position, holder, lease_until, updated_at)
     VALUES (?1, 0, ?2, ?3 + ?4, ?3)
     ON CONFLICT (sink) DO UPDATE SET holder = excluded.holder, lease_until = excluded.lease_until
     WHERE sink_cursors.holder = excluded.holder OR sink_cursors.lease_until < ?3
     RETURNING position";

/// A row of [`Sql::recent`]: fixed columns first, then `channels` values.
fn row_to_reading(r: &rusqlite::Row<'_>, channels: usize) -> rusqlite::Result<TelemetryRow> {
    let vin: String = r.get(0)?;
    let values = (0..channels)
        .map(|i| r.get::<_, Option<f64>>(6 + i))
        .collect::<rusqlite::Result<_>>()?;
    Ok(TelemetryRow {
        vin: vin.into(),
        session_id: from_sql_u64(r.get(1)?),
        seq: from_sql_u64(r.get(2)?),
        ts_ms: r.get(3)?,
        values,
        transmitted: from_sql_u64(r.get(4)?),
        keyframe: r.get(5)?,
    })
}

fn counters(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<Counters> {
    let g = |i: usize| r.get::<_, i64>(at + i).map(|v| v.max(0) as u64);
    Ok(Counters {
        readings: g(0)?,
        fields_total: g(1)?,
        fields_transmitted: g(2)?,
        fields_skipped: g(3)?,
        bytes_received: g(4)?,
    })
}

impl Store for SqliteStore {
    fn kind(&self) -> StoreKind {
        StoreKind::Sqlite
    }

    fn commit(&self, batch: WriteBatch) -> BoxFut<'_, Result<(), StoreError>> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            self.writer
                .send(Job::Commit(batch, tx))
                .map_err(|_| StoreError::Closed("the SQLite writer thread stopped".into()))?;
            rx.await
                .map_err(|_| StoreError::Closed("the SQLite writer thread stopped".into()))?
        })
    }

    fn load_session(
        &self,
        vin: Arc<str>,
        session_id: u64,
    ) -> BoxFut<'_, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(self.read(move |c| {
            c.prepare_cached("SELECT s.state FROM sessions s JOIN vehicles v ON v.id = s.vehicle_id WHERE v.vin = ?1 AND s.session_id = ?2")?
                .query_row(params![&*vin, to_sql_u64(session_id)], |r| r.get(0))
                .optional()
        }))
    }

    fn session_if_changed(
        &self,
        vin: Arc<str>,
        session_id: u64,
        known: Option<u64>,
    ) -> BoxFut<'_, Result<super::SessionVersion, StoreError>> {
        Box::pin(self.read(move |c| {
            let known = known.map(|v| v as i64);
            Ok(c.prepare_cached("SELECT s.version, CASE WHEN s.version IS ?3 THEN NULL ELSE s.state END FROM sessions s JOIN vehicles v ON v.id = s.vehicle_id WHERE v.vin = ?1 AND s.session_id = ?2")?
                .query_row(params![&*vin, to_sql_u64(session_id), known], |r| {
                    Ok(super::SessionVersion {
                        version: r.get::<_, i64>(0)? as u64,
                        state: r.get(1)?,
                    })
                })
                .optional()?
                .unwrap_or(super::SessionVersion {
                    version: 0,
                    state: None,
                }))
        }))
    }

    fn stored_count(
        &self,
        vin: Arc<str>,
        session_id: u64,
        first: u64,
        last: u64,
    ) -> BoxFut<'_, Result<u64, StoreError>> {
        Box::pin(self.read(move |c| {
            let mut st = c.prepare_cached("SELECT count(*) FROM telemetry_data t JOIN vehicles v ON v.id = t.vehicle_id WHERE v.vin = ?1 AND t.session_id = ?2 AND t.seq BETWEEN ?3 AND ?4")?;
            let mut n = 0u64;
            for (a, b) in super::sql_ranges(first, last) {
                n += st.query_row(params![&*vin, to_sql_u64(session_id), a, b], |r| r.get::<_, i64>(0))? as u64;
            }
            Ok(n)
        }))
    }

    fn recent(&self, limit: usize) -> BoxFut<'_, Result<Vec<TelemetryRow>, StoreError>> {
        let sql = self.sql.clone();
        Box::pin(self.read(move |c| {
            let mut st = c.prepare_cached(&sql.recent)?;
            let mut rows = st
                .query_map([limit as i64], |r| row_to_reading(r, sql.channels))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            rows.reverse();
            Ok(rows)
        }))
    }

    fn vehicles(&self, page: VehiclePage) -> BoxFut<'_, Result<Vec<VehicleSummary>, StoreError>> {
        let reads = self.reads.clone();
        Box::pin(self.read(move |c| {
            let mut st = c.prepare_cached(&reads.vehicles)?;
            let after = page.after.unwrap_or_default();
            st.query_map(params![after, page.limit as i64], |r| {
                Ok(VehicleSummary {
                    vin: r.get(0)?,
                    first_seen_ms: r.get(1)?,
                    last_seen_ms: r.get(2)?,
                    readings: r.get::<_, i64>(3)?.max(0) as u64,
                    model: r.get(4)?,
                    year: r.get(5)?,
                })
            })?
            .collect()
        }))
    }

    fn vehicle(&self, vin: Arc<str>) -> BoxFut<'_, Result<Option<VehicleDetail>, StoreError>> {
        let reads = self.reads.clone();
        Box::pin(self.read(move |c| {
            c.prepare_cached(&reads.detail)?
                .query_row([&*vin], |r| {
                    let n = |i: usize| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
                    Ok(VehicleDetail {
                        vin: r.get(0)?,
                        model: r.get(1)?,
                        year: r.get(2)?,
                        first_seen_ms: r.get(3)?,
                        last_seen_ms: r.get(4)?,
                        resyncs: n(5)?,
                        readings: n(6)?,
                        sessions: n(7)?,
                        last_keyframe_ms: r.get(8)?,
                    })
                })
                .optional()
        }))
    }

    fn history(
        &self,
        q: HistoryQuery,
    ) -> BoxFut<'_, Result<Option<Vec<TelemetryRow>>, StoreError>> {
        Box::pin(self.for_vehicle(q.vin.clone(), move |c, reads, id| {
            let mut st = c.prepare_cached(&reads.page)?;
            let a = q.after;
            st.query_map(
                params![id, q.from, q.to, a.ts, a.session, a.seq, q.limit as i64],
                |r| {
                    Ok(TelemetryRow {
                        vin: q.vin.clone(),
                        ts_ms: r.get(0)?,
                        session_id: from_sql_u64(r.get(1)?),
                        seq: from_sql_u64(r.get(2)?),
                        transmitted: from_sql_u64(r.get(3)?),
                        keyframe: r.get(4)?,
                        values: (0..reads.channels)
                            .map(|i| r.get::<_, Option<f64>>(5 + i))
                            .collect::<rusqlite::Result<_>>()?,
                    })
                },
            )?
            .collect()
        }))
    }

    fn count_history(
        &self,
        vin: Arc<str>,
        from: i64,
        to: i64,
    ) -> BoxFut<'_, Result<Option<u64>, StoreError>> {
        Box::pin(self.for_vehicle(vin, move |c, reads, id| {
            c.prepare_cached(&reads.count)?
                .query_row(params![id, from, to], |r| r.get::<_, i64>(0))
                .map(|n| n.max(0) as u64)
        }))
    }

    fn buckets(
        &self,
        vin: Arc<str>,
        from: i64,
        to: i64,
        step: i64,
    ) -> BoxFut<'_, Result<Option<Vec<Bucket>>, StoreError>> {
        let rollup = use_rollup(self.has_rollup, from, to, step);
        let key = vin.clone();
        Box::pin(self.for_vehicle(vin, move |c, reads, id| {
            let (sql, first) = if rollup {
                (&reads.rollup_buckets, params![&*key, from, to, step])
            } else {
                (&reads.buckets, params![id, from, to, step])
            };
            let mut st = c.prepare_cached(sql)?;
            st.query_map(first, |r| {
                Ok(Bucket {
                    start: r.get(0)?,
                    count: r.get::<_, Option<i64>>(1)?.unwrap_or(0).max(0) as u64,
                    signals: bucket_signals(reads.channels, |i| {
                        r.get::<_, Option<f64>>(i).ok().flatten()
                    }),
                })
            })?
            .collect()
        }))
    }

    fn daily_stats(
        &self,
        vin: Arc<str>,
        first: i32,
        last: i32,
    ) -> BoxFut<'_, Result<Option<Vec<DayStats>>, StoreError>> {
        Box::pin(self.for_vehicle(vin, move |c, reads, id| {
            let mut st = c.prepare_cached(&reads.days)?;
            st.query_map(params![id, civil_date(first), civil_date(last)], |r| {
                let day: String = r.get(0)?;
                Ok(DayStats {
                    day: crate::model::parse_civil_date(&day).ok_or_else(|| {
                        rusqlite::Error::FromSqlConversionFailure(
                            0,
                            rusqlite::types::Type::Text,
                            format!("not a YYYY-MM-DD day: {day:?}").into(),
                        )
                    })?,
                    counters: counters(r, 1)?,
                })
            })?
            .collect()
        }))
    }

    fn totals(&self) -> BoxFut<'_, Result<Vec<VehicleTotals>, StoreError>> {
        Box::pin(self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT v.vin, SUM(c.readings), SUM(c.fields_total), SUM(c.fields_transmitted), SUM(c.fields_skipped), SUM(c.bytes_received)
                 FROM compression_stats c JOIN vehicles v ON v.id = c.vehicle_id GROUP BY v.vin",
            )?;
            st.query_map([], |r| Ok(VehicleTotals { vin: r.get(0)?, counters: counters(r, 1)? }))?.collect()
        }))
    }

    fn ping(&self) -> BoxFut<'_, Result<(), StoreError>> {
        // Through the writer thread, like a commit: a read alone would pass on a full disk.
        Box::pin(self.write(|c| {
            c.execute(
                "INSERT INTO health_probe (id, checked_at) VALUES (1, ?1)
                 ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
                [crate::model::now_ms()],
            )
            .map(|_| ())
        }))
    }

    // One writer thread commits in order, so `id` grows in commit order.

    fn readings_after(
        &self,
        after: i64,
        limit: usize,
    ) -> BoxFut<'_, Result<Vec<(i64, TelemetryRow)>, StoreError>> {
        let sql = self.sql.clone();
        Box::pin(self.read(move |c| {
            let mut st = c.prepare_cached(&sql.readings_after)?;
            st.query_map(params![after, limit as i64], |r| {
                Ok((r.get(6 + sql.channels)?, row_to_reading(r, sql.channels)?))
            })?
            .collect()
        }))
    }

    fn count_after(&self, after: i64) -> BoxFut<'_, Result<u64, StoreError>> {
        Box::pin(self.read(move |c| {
            c.prepare_cached("SELECT count(*) FROM telemetry_data WHERE id > ?1")?
                .query_row([after], |r| r.get::<_, i64>(0))
                .map(|n| n.max(0) as u64)
        }))
    }

    fn lease_sink(&self, lease: SinkLease) -> BoxFut<'_, Result<Option<i64>, StoreError>> {
        Box::pin(self.write(move |c| {
            c.prepare_cached(LEASE_SINK)?
                .query_row(
                    params![&*lease.sink, &*lease.holder, lease.now_ms, lease.ttl_ms],
                    |r| r.get(0),
                )
                .optional()
        }))
    }

    fn advance_sink(
        &self,
        lease: SinkLease,
        position: i64,
    ) -> BoxFut<'_, Result<bool, StoreError>> {
        Box::pin(self.write(move |c| {
            c.prepare_cached(
                "UPDATE sink_cursors SET position = max(position, ?3), updated_at = ?4
                 WHERE sink = ?1 AND holder = ?2",
            )?
            .execute(params![
                &*lease.sink,
                &*lease.holder,
                position,
                lease.now_ms
            ])
            .map(|n| n == 1)
        }))
    }

    /// Retention only (no partitions here): per vehicle, oldest first, at
    /// most [`RETENTION_BATCH`] rows per transaction on the writer thread,
    /// so the commits queued meanwhile go in between.
    fn maintain(&self, m: Maintenance) -> BoxFut<'_, Result<MaintenanceReport, StoreError>> {
        Box::pin(async move {
            let mut report = MaintenanceReport::default();
            let Some(cutoff) = m.cutoff_ms() else {
                return Ok(report);
            };
            let vehicles: Vec<(i64, String)> = self
                .read(|c| {
                    c.prepare("SELECT id, vin FROM vehicles")?
                        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                        .collect()
                })
                .await?;
            for (id, vin) in vehicles {
                for (sql, key, counter) in [
                    (
                        DELETE_OLD_ROWS,
                        rusqlite::types::Value::Integer(id),
                        &mut report.rows_deleted,
                    ),
                    (
                        DELETE_OLD_MINUTES,
                        rusqlite::types::Value::Text(vin),
                        &mut report.rollup_deleted,
                    ),
                ] {
                    loop {
                        let key = key.clone();
                        let n = self
                            .write(move |c| {
                                c.prepare_cached(sql)?.execute(params![
                                    key,
                                    cutoff,
                                    RETENTION_BATCH as i64
                                ])
                            })
                            .await?;
                        *counter += n as u64;
                        if n < RETENTION_BATCH {
                            break;
                        }
                        tokio::task::yield_now().await;
                    }
                }
            }
            Ok(report)
        })
    }
}

/// Rows deleted per retention transaction (SQLite).
const RETENTION_BATCH: usize = 2_000;

/// ?1 vehicle id, ?2 cutoff, ?3 batch. Through the (vehicle_id, ts) index,
/// oldest first. The newest row of the table is never deleted: SQLite would
/// then reuse ids, and a sink's cursor would skip the new rows.
const DELETE_OLD_ROWS: &str = "DELETE FROM telemetry_data WHERE id IN (
     SELECT id FROM telemetry_data WHERE vehicle_id = ?1 AND ts < ?2
       AND id < (SELECT MAX(id) FROM telemetry_data)
     ORDER BY ts LIMIT ?3)";

/// ?1 VIN, ?2 cutoff, ?3 batch.
const DELETE_OLD_MINUTES: &str = "DELETE FROM telemetry_rollup WHERE rowid IN (
     SELECT rowid FROM telemetry_rollup WHERE vehicle_vin = ?1 AND minute < ?2 LIMIT ?3)";
