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

use super::{
    BoxFut, Store, StoreError, StoreKind, VehicleSummary, VehicleTotals, WriteBatch, from_sql_u64,
    to_sql_u64,
};
use crate::model::{Counters, TelemetryRow, civil_date};

/// Numbered migrations; `PRAGMA user_version` = how many are applied.
const MIGRATIONS: &[&str] = &[r#"
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
    speed             REAL,
    battery           REAL,
    power             REAL,
    heading           REAL,
    latitude          REAL,
    longitude         REAL,
    altitude          REAL,
    transmitted_mask  INTEGER NOT NULL,  -- bit i = catalog channel i transmitted
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
"#];

type Reply = oneshot::Sender<Result<(), StoreError>>;

/// The SQLite store.
pub struct SqliteStore {
    writer: mpsc::Sender<(WriteBatch, Reply)>,
    read: Arc<Mutex<Connection>>,
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

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: usize =
        conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))? as usize;
    if version >= MIGRATIONS.len() {
        return Ok(());
    }
    let tx = conn.transaction()?;
    for sql in &MIGRATIONS[version..] {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)?;
    tx.commit()
}

impl SqliteStore {
    /// Opens (creating the directory and file) and migrates the database.
    pub async fn open(path: &Path) -> anyhow::Result<Self> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || Self::open_blocking(&path)).await?
    }

    fn open_blocking(path: &Path) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
        }
        let mut conn = open_conn(path)
            .with_context(|| format!("cannot open SQLite database {}", path.display()))?;
        migrate(&mut conn).context("cannot apply the SQLite migrations")?;
        let read = open_conn(path)?;
        // Unbounded is fine: the async writer actor awaits each commit, so at most one waits here.
        let (tx, rx) = mpsc::channel::<(WriteBatch, Reply)>();
        thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || {
                for (batch, reply) in rx {
                    let r = commit(&mut conn, &batch).map_err(StoreError::from);
                    let _ = reply.send(r);
                }
            })?;
        Ok(Self {
            writer: tx,
            read: Arc::new(Mutex::new(read)),
        })
    }

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
}

fn commit(conn: &mut Connection, b: &WriteBatch) -> rusqlite::Result<()> {
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
    {
        let mut st = tx.prepare_cached(
            "INSERT OR IGNORE INTO telemetry_data
             (vehicle_id, session_id, seq, ts, speed, battery, power, heading, latitude, longitude, altitude, transmitted_mask, keyframe)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )?;
        for r in &b.rows {
            let v = r.values;
            st.execute(params![
                id_of(&r.vin)?,
                to_sql_u64(r.session_id),
                to_sql_u64(r.seq),
                r.ts_ms,
                v[0],
                v[1],
                v[2],
                v[3],
                v[4],
                v[5],
                v[6],
                to_sql_u64(r.transmitted),
                r.keyframe
            ])?;
        }
    }
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO sessions (vehicle_id, session_id, next_seq, state, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (vehicle_id, session_id) DO UPDATE SET
               next_seq = excluded.next_seq, state = excluded.state, updated_at = excluded.updated_at",
        )?;
        let now = crate::model::now_ms();
        for s in &b.sessions {
            st.execute(params![
                id_of(&s.vin)?,
                to_sql_u64(s.session_id),
                to_sql_u64(s.next_seq),
                s.state,
                now
            ])?;
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
    tx.commit()
}

fn row_to_reading(r: &rusqlite::Row<'_>) -> rusqlite::Result<TelemetryRow> {
    let vin: String = r.get(0)?;
    let mut values = [None; crate::model::CHANNELS];
    for (i, v) in values.iter_mut().enumerate() {
        *v = r.get::<_, Option<f64>>(4 + i)?;
    }
    Ok(TelemetryRow {
        vin: vin.into(),
        session_id: from_sql_u64(r.get(1)?),
        seq: from_sql_u64(r.get(2)?),
        ts_ms: r.get(3)?,
        values,
        transmitted: from_sql_u64(r.get(11)?),
        keyframe: r.get(12)?,
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
                .send((batch, tx))
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

    fn recent(&self, limit: usize) -> BoxFut<'_, Result<Vec<TelemetryRow>, StoreError>> {
        Box::pin(self.read(move |c| {
            let mut st = c.prepare_cached(
                "SELECT v.vin, t.session_id, t.seq, t.ts, t.speed, t.battery, t.power, t.heading, t.latitude, t.longitude, t.altitude,
                        t.transmitted_mask, t.keyframe
                 FROM telemetry_data t JOIN vehicles v ON v.id = t.vehicle_id ORDER BY t.id DESC LIMIT ?1",
            )?;
            let mut rows = st.query_map([limit as i64], row_to_reading)?.collect::<rusqlite::Result<Vec<_>>>()?;
            rows.reverse();
            Ok(rows)
        }))
    }

    fn vehicles(&self) -> BoxFut<'_, Result<Vec<VehicleSummary>, StoreError>> {
        Box::pin(self.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT v.vin, v.first_seen, v.last_seen, COALESCE(SUM(c.readings), 0)
                 FROM vehicles v LEFT JOIN compression_stats c ON c.vehicle_id = v.id GROUP BY v.id ORDER BY v.vin",
            )?;
            st.query_map([], |r| {
                Ok(VehicleSummary { vin: r.get(0)?, first_seen_ms: r.get(1)?, last_seen_ms: r.get(2)?, readings: r.get::<_, i64>(3)?.max(0) as u64 })
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
        Box::pin(self.read(|c| c.query_row("SELECT 1", [], |_| Ok(()))))
    }
}
