//! PostgreSQL backend: a deadpool pool of tokio-postgres connections; a batch
//! is one transaction that upserts vehicles, sessions and statistics with
//! `unnest` arrays (one statement each, whatever the batch size) and loads
//! telemetry rows with binary `COPY` into a temporary staging table, then
//! `INSERT … ON CONFLICT DO NOTHING` (COPY itself cannot skip duplicates,
//! and a retried batch whose first commit's answer was lost must not fail).
//! Migrations are tracked in `schema_migrations`.
//!
//! When the database goes away, pool checkouts and statements fail fast
//! (connect and wait timeouts), the caller answers 503, and broken
//! connections are dropped by the pool's recycling, so it recovers by itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{NoTls, Row};

use super::{
    BoxFut, Store, StoreError, StoreKind, VehicleSummary, VehicleTotals, WriteBatch, from_sql_u64,
    to_sql_u64, values_from,
};
use crate::model::{Counters, TelemetryRow};

/// Numbered migrations, applied in order; `schema_migrations` lists the applied ones.
const MIGRATIONS: &[&str] = &[r#"
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
    speed             DOUBLE PRECISION,
    battery           DOUBLE PRECISION,
    power             DOUBLE PRECISION,
    heading           DOUBLE PRECISION,
    latitude          DOUBLE PRECISION,
    longitude         DOUBLE PRECISION,
    altitude          DOUBLE PRECISION,
    transmitted_mask  BIGINT NOT NULL,  -- bit i = catalog channel i transmitted
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
"#];

const TELEMETRY_COLUMNS: &str = "vehicle_id, session_id, seq, ts, speed, battery, power, heading, latitude, longitude, altitude, transmitted_mask, keyframe";

const COPY_TYPES: [Type; 13] = [
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::INT8,
    Type::BOOL,
];

/// The PostgreSQL store.
pub struct PgStore {
    pool: Pool,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::new(e)
}

impl PgStore {
    /// Builds the pool, checks the connection and applies the migrations.
    pub async fn connect(url: &str, pool_size: usize) -> anyhow::Result<Self> {
        let mut cfg: tokio_postgres::Config = url
            .parse()
            .context("DATABASE_URL is not a valid PostgreSQL connection string")?;
        // No TLS connector is built in yet: `prefer` (the default) connects in clear text,
        // `require` must fail at once with a message rather than deep in the pool.
        anyhow::ensure!(
            cfg.get_ssl_mode() != tokio_postgres::config::SslMode::Require,
            "DATABASE_URL asks for sslmode=require, but this build connects to PostgreSQL without TLS; \
             remove sslmode=require (or use a local TLS-terminating proxy)"
        );
        cfg.connect_timeout(Duration::from_secs(3));
        if cfg.get_application_name().is_none() {
            cfg.application_name("lockstep-server");
        }
        let mgr = Manager::from_config(
            cfg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(pool_size.max(2))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(3)))
            .recycle_timeout(Some(Duration::from_secs(2)))
            .build()
            .context("cannot build the PostgreSQL pool")?;
        let store = Self { pool };
        store
            .migrate()
            .await
            .context("cannot reach PostgreSQL or apply the migrations")?;
        Ok(store)
    }

    async fn migrate(&self) -> anyhow::Result<()> {
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
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
            tx.batch_execute(sql)
                .await
                .with_context(|| format!("migration {}", i + 1))?;
            tx.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)",
                &[&(i as i32 + 1)],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn commit_batch(&self, b: WriteBatch) -> Result<(), StoreError> {
        let mut client = self.pool.get().await.map_err(err)?;
        let tx = client.transaction().await.map_err(err)?;

        let vins: Vec<&str> = b.vehicles.iter().map(|(v, _)| &**v).collect();
        let seen: Vec<i64> = b.vehicles.iter().map(|(_, s)| *s).collect();
        let upsert = tx
            .prepare_cached(
                "INSERT INTO vehicles (vin, first_seen, last_seen) SELECT v, s, s FROM unnest($1::text[], $2::int8[]) AS t(v, s)
                 ON CONFLICT (vin) DO UPDATE SET last_seen = GREATEST(vehicles.last_seen, EXCLUDED.last_seen)
                 RETURNING id, vin",
            )
            .await
            .map_err(err)?;
        let ids: HashMap<String, i64> = tx
            .query(&upsert, &[&vins, &seen])
            .await
            .map_err(err)?
            .into_iter()
            .map(|r| (r.get(1), r.get(0)))
            .collect();
        let id_of = |vin: &str| {
            ids.get(vin)
                .copied()
                .ok_or_else(|| err(format!("vehicle {vin} missing from the batch")))
        };

        if !b.rows.is_empty() {
            // Per connection, emptied at every commit (and by a rollback).
            tx.batch_execute(&format!(
                "CREATE TEMP TABLE IF NOT EXISTS telemetry_staging ON COMMIT DELETE ROWS
                 AS SELECT {TELEMETRY_COLUMNS} FROM telemetry_data WITH NO DATA"
            ))
            .await
            .map_err(err)?;
            let sink = tx
                .copy_in(&format!(
                    "COPY telemetry_staging ({TELEMETRY_COLUMNS}) FROM STDIN BINARY"
                ))
                .await
                .map_err(err)?;
            let writer = BinaryCopyInWriter::new(sink, &COPY_TYPES);
            pin_mut!(writer);
            for r in &b.rows {
                let (vid, sid, seq, mask) = (
                    id_of(&r.vin)?,
                    to_sql_u64(r.session_id),
                    to_sql_u64(r.seq),
                    to_sql_u64(r.transmitted),
                );
                let v = &r.values;
                let row: [&(dyn ToSql + Sync); 13] = [
                    &vid,
                    &sid,
                    &seq,
                    &r.ts_ms,
                    &v[0],
                    &v[1],
                    &v[2],
                    &v[3],
                    &v[4],
                    &v[5],
                    &v[6],
                    &mask,
                    &r.keyframe,
                ];
                writer.as_mut().write(&row).await.map_err(err)?;
            }
            writer.finish().await.map_err(err)?;
            tx.batch_execute(&format!(
                "INSERT INTO telemetry_data ({TELEMETRY_COLUMNS}) SELECT {TELEMETRY_COLUMNS} FROM telemetry_staging
                 ON CONFLICT (vehicle_id, session_id, seq) DO NOTHING"
            ))
            .await
            .map_err(err)?;
        }

        if !b.sessions.is_empty() {
            let now = crate::model::now_ms();
            let mut vid = Vec::with_capacity(b.sessions.len());
            let mut sid = Vec::with_capacity(b.sessions.len());
            let mut next = Vec::with_capacity(b.sessions.len());
            let mut state: Vec<&[u8]> = Vec::with_capacity(b.sessions.len());
            for s in &b.sessions {
                vid.push(id_of(&s.vin)?);
                sid.push(to_sql_u64(s.session_id));
                next.push(to_sql_u64(s.next_seq));
                state.push(&s.state);
            }
            let st = tx
                .prepare_cached(
                    "INSERT INTO sessions (vehicle_id, session_id, next_seq, state, updated_at)
                     SELECT v, s, n, st, $5 FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::bytea[]) AS t(v, s, n, st)
                     ON CONFLICT (vehicle_id, session_id) DO UPDATE SET
                       next_seq = EXCLUDED.next_seq, state = EXCLUDED.state, updated_at = EXCLUDED.updated_at",
                )
                .await
                .map_err(err)?;
            tx.execute(&st, &[&vid, &sid, &next, &state, &now])
                .await
                .map_err(err)?;
        }

        if !b.stats.is_empty() {
            let mut cols: [Vec<i64>; 6] = Default::default();
            let mut days = Vec::with_capacity(b.stats.len());
            for s in &b.stats {
                let c = &s.counters;
                for (col, v) in cols.iter_mut().zip([
                    id_of(&s.vin)?,
                    c.readings as i64,
                    c.fields_total as i64,
                    c.fields_transmitted as i64,
                    c.fields_skipped as i64,
                    c.bytes_received as i64,
                ]) {
                    col.push(v);
                }
                days.push(s.day);
            }
            let st = tx
                .prepare_cached(
                    "INSERT INTO compression_stats (vehicle_id, day, readings, fields_total, fields_transmitted, fields_skipped, bytes_received)
                     SELECT v, DATE '1970-01-01' + d, r, ft, fx, fs, b
                     FROM unnest($1::int8[], $2::int4[], $3::int8[], $4::int8[], $5::int8[], $6::int8[], $7::int8[]) AS t(v, d, r, ft, fx, fs, b)
                     ON CONFLICT (vehicle_id, day) DO UPDATE SET
                       readings = compression_stats.readings + EXCLUDED.readings,
                       fields_total = compression_stats.fields_total + EXCLUDED.fields_total,
                       fields_transmitted = compression_stats.fields_transmitted + EXCLUDED.fields_transmitted,
                       fields_skipped = compression_stats.fields_skipped + EXCLUDED.fields_skipped,
                       bytes_received = compression_stats.bytes_received + EXCLUDED.bytes_received",
                )
                .await
                .map_err(err)?;
            tx.execute(
                &st,
                &[
                    &cols[0], &days, &cols[1], &cols[2], &cols[3], &cols[4], &cols[5],
                ],
            )
            .await
            .map_err(err)?;
        }
        tx.commit().await.map_err(err)
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let client = self.pool.get().await.map_err(err)?;
        let st = client.prepare_cached(sql).await.map_err(err)?;
        client.query(&st, params).await.map_err(err)
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
        Box::pin(self.commit_batch(batch))
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

    fn recent(&self, limit: usize) -> BoxFut<'_, Result<Vec<TelemetryRow>, StoreError>> {
        Box::pin(async move {
            let rows = self
                .query(
                    "SELECT v.vin, t.session_id, t.seq, t.ts, t.speed, t.battery, t.power, t.heading, t.latitude, t.longitude, t.altitude,
                            t.transmitted_mask, t.keyframe
                     FROM telemetry_data t JOIN vehicles v ON v.id = t.vehicle_id ORDER BY t.id DESC LIMIT $1",
                    &[&(limit as i64)],
                )
                .await?;
            Ok(rows
                .iter()
                .rev()
                .map(|r| TelemetryRow {
                    vin: r.get::<_, String>(0).into(),
                    session_id: from_sql_u64(r.get(1)),
                    seq: from_sql_u64(r.get(2)),
                    ts_ms: r.get(3),
                    values: values_from(|i| r.get(4 + i)),
                    transmitted: from_sql_u64(r.get(11)),
                    keyframe: r.get(12),
                })
                .collect())
        })
    }

    fn vehicles(&self) -> BoxFut<'_, Result<Vec<VehicleSummary>, StoreError>> {
        Box::pin(async move {
            let rows = self
                .query(
                    "SELECT v.vin, v.first_seen, v.last_seen, COALESCE(SUM(c.readings), 0)::int8
                     FROM vehicles v LEFT JOIN compression_stats c ON c.vehicle_id = v.id GROUP BY v.id ORDER BY v.vin",
                    &[],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| VehicleSummary {
                    vin: r.get(0),
                    first_seen_ms: r.get(1),
                    last_seen_ms: r.get(2),
                    readings: r.get::<_, i64>(3).max(0) as u64,
                })
                .collect())
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
            let client = self.pool.get().await.map_err(err)?;
            client.simple_query("SELECT 1").await.map_err(err)?;
            Ok(())
        })
    }
}
