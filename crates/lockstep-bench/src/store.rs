//! Looks into the server's store: counts committed rows, and measures the
//! machine's raw storage limit on the same table — binary `COPY` into a
//! scratch copy of `telemetry_data` for PostgreSQL, prepared inserts in one
//! transaction (WAL, the server's `synchronous=FULL`) for SQLite.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, bail};
use serde::Serialize;
use tokio_postgres::NoTls;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

/// Where the rows are.
#[derive(Debug, Clone)]
pub enum StoreAccess {
    Sqlite(PathBuf),
    Postgres(String),
}

impl StoreAccess {
    /// From a `DATABASE_URL` as the server takes it.
    pub fn from_url(url: &str) -> anyhow::Result<Self> {
        if let Some(p) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            return Ok(Self::Sqlite(PathBuf::from(p)));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(url.to_owned()));
        }
        bail!("--database-url must be sqlite://PATH or postgres://…")
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }
}

/// The raw storage limit measured after the load.
#[derive(Debug, Clone, Serialize)]
pub struct RawLimit {
    pub method: String,
    pub rows: u64,
    pub seconds: f64,
    pub rows_per_s: f64,
}

async fn pg_connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("cannot connect to {}", redact(url)))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// `postgres://user:secret@host/db` → `postgres://user:****@host/db`.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((u, _)) => format!("{}{u}:****{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Rows in `telemetry_data`.
pub async fn count_rows(store: &StoreAccess) -> anyhow::Result<u64> {
    match store {
        StoreAccess::Postgres(url) => {
            let c = pg_connect(url).await?;
            let n: i64 = c
                .query_one("SELECT count(*) FROM telemetry_data", &[])
                .await
                .context("count telemetry_data")?
                .get(0);
            Ok(n as u64)
        }
        StoreAccess::Sqlite(path) => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
                let conn = rusqlite::Connection::open_with_flags(
                    &path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )
                .with_context(|| format!("cannot open {}", path.display()))?;
                conn.busy_timeout(std::time::Duration::from_secs(10))?;
                let n: i64 = conn
                    .query_row("SELECT count(*) FROM telemetry_data", [], |r| r.get(0))
                    .context("count telemetry_data")?;
                Ok(n as u64)
            })
            .await?
        }
    }
}

/// PIDs of the PostgreSQL processes that work for this database: its client
/// backends (the server's pool) and the shared background processes (WAL
/// writer, checkpointer, …) — not other databases' backends.
pub async fn pg_pids(url: &str) -> anyhow::Result<Vec<u32>> {
    let c = pg_connect(url).await?;
    let rows = c
        .query(
            "SELECT pid FROM pg_stat_activity
             WHERE pid <> pg_backend_pid()
               AND (datname = current_database() OR backend_type <> 'client backend')",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get::<_, i32>(0) as u32).collect())
}

/// Column kinds the generator can fill.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Col {
    Int,
    Float,
    Bool,
    Text,
}

/// A plausible value for column `name` of row `i` (seq and ts unique per vehicle).
fn int_value(name: &str, i: u64, vehicle_ids: &[i64]) -> i64 {
    let nv = vehicle_ids.len().max(1) as u64;
    match name {
        "vehicle_id" => vehicle_ids.get((i % nv) as usize).copied().unwrap_or(1),
        "session_id" => 0x5EED,
        "seq" => i as i64,
        "ts" | "timestamp" => 1_767_225_600_000 + (i / nv) as i64 * 1000,
        "transmitted_mask" => (i % 128) as i64,
        _ => (i % 1000) as i64,
    }
}

fn float_value(col: usize, i: u64) -> f64 {
    let x = i as f64;
    match col % 4 {
        0 => 60.0 + 20.0 * (x / 95.0).sin(),
        1 => 90.0 - 0.000_4 * x,
        2 => 12.0 + 6.0 * (x / 19.0).sin(),
        _ => (x * 0.02) % 360.0,
    }
}

/// Binary COPY (PostgreSQL) or one-transaction prepared inserts (SQLite) of
/// `rows` rows into a scratch copy of `telemetry_data`, dropped after. For
/// PostgreSQL also the server's staging path alone (staging table + `INSERT …
/// SELECT … ON CONFLICT`): its path for large commits until they were copied
/// straight into the table, now its fallback when such a COPY meets a row
/// already stored. It shows what that path costs against plain COPY.
pub async fn raw_limit(
    store: &StoreAccess,
    rows: u64,
) -> anyhow::Result<(RawLimit, Option<RawLimit>)> {
    match store {
        StoreAccess::Postgres(url) => pg_raw_copy(url, rows).await,
        StoreAccess::Sqlite(path) => {
            let path = path.clone();
            Ok((
                tokio::task::spawn_blocking(move || sqlite_raw_insert(&path, rows)).await??,
                None,
            ))
        }
    }
}

async fn pg_raw_copy(url: &str, rows: u64) -> anyhow::Result<(RawLimit, Option<RawLimit>)> {
    let mut c = pg_connect(url).await?;
    let cols = c
        .query(
            "SELECT column_name, data_type FROM information_schema.columns
             WHERE table_name = 'telemetry_data' AND table_schema = current_schema()
               AND is_identity = 'NO' AND column_default IS NULL
             ORDER BY ordinal_position",
            &[],
        )
        .await?;
    let mut names = Vec::new();
    let mut kinds = Vec::new();
    let mut types = Vec::new();
    for r in &cols {
        let (name, ty): (String, String) = (r.get(0), r.get(1));
        let (k, t) = match ty.as_str() {
            "bigint" => (Col::Int, Type::INT8),
            "double precision" => (Col::Float, Type::FLOAT8),
            "boolean" => (Col::Bool, Type::BOOL),
            "text" => (Col::Text, Type::TEXT),
            other => {
                bail!("telemetry_data.{name} has type {other}, which the raw COPY cannot fill")
            }
        };
        names.push(format!("\"{name}\""));
        kinds.push(k);
        types.push(t);
    }
    if names.is_empty() {
        bail!("telemetry_data not found in the store");
    }
    let ids: Vec<i64> = c
        .query("SELECT id FROM vehicles ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .collect();
    let scratch = format!("bench_raw_copy_{}", std::process::id());
    let cols = PgCols {
        names,
        kinds,
        types,
        ids,
    };
    let mut run = async |staged: bool| -> anyhow::Result<f64> {
        c.batch_execute(&format!(
            "DROP TABLE IF EXISTS {scratch}; CREATE TABLE {scratch} (LIKE telemetry_data INCLUDING ALL)"
        ))
        .await?;
        let r = pg_copy(&mut c, &scratch, &cols, rows, staged).await;
        let _ = c
            .batch_execute(&format!("DROP TABLE IF EXISTS {scratch}"))
            .await;
        r
    };
    let plain = run(false)
        .await
        .context("raw COPY into a scratch copy of telemetry_data")?;
    let staged = run(true)
        .await
        .context("staged COPY into a scratch copy of telemetry_data")?;
    let limit = |method: &str, seconds: f64| RawLimit {
        method: method.into(),
        rows,
        seconds,
        rows_per_s: rows as f64 / seconds.max(1e-9),
    };
    Ok((
        limit(
            "binary COPY (BinaryCopyInWriter), one transaction, into CREATE TABLE … (LIKE telemetry_data INCLUDING ALL)",
            plain,
        ),
        Some(limit(
            "the server's staging path alone (its fallback for large commits): binary COPY into a temporary staging table, then INSERT … SELECT … ON CONFLICT DO NOTHING, one transaction",
            staged,
        )),
    ))
}

/// The insertable columns of `telemetry_data` and the vehicle ids to use.
struct PgCols {
    names: Vec<String>,
    kinds: Vec<Col>,
    types: Vec<Type>,
    ids: Vec<i64>,
}

/// Loads `rows` generated rows into `table` in one transaction: directly by
/// binary COPY, or (`staged`) through a temporary table and `INSERT … SELECT
/// … ON CONFLICT DO NOTHING`, the way lockstep-server writes. Returns seconds.
async fn pg_copy(
    c: &mut tokio_postgres::Client,
    table: &str,
    cols: &PgCols,
    rows: u64,
    staged: bool,
) -> anyhow::Result<f64> {
    let names = cols.names.join(", ");
    let t0 = Instant::now();
    let tx = c.transaction().await?;
    let target = if staged {
        tx.batch_execute(&format!(
            "CREATE TEMP TABLE bench_staging ON COMMIT DROP AS SELECT {names} FROM {table} WITH NO DATA"
        ))
        .await?;
        "bench_staging"
    } else {
        table
    };
    let sink = tx
        .copy_in(&format!("COPY {target} ({names}) FROM STDIN BINARY"))
        .await?;
    let writer = BinaryCopyInWriter::new(sink, &cols.types);
    futures_util::pin_mut!(writer);
    let text = String::from("bench");
    for i in 0..rows {
        let ints: Vec<i64> = cols
            .names
            .iter()
            .map(|n| int_value(n.trim_matches('"'), i, &cols.ids))
            .collect();
        let floats: Vec<f64> = (0..cols.names.len()).map(|k| float_value(k, i)).collect();
        let b = i % 100 == 0;
        let row: Vec<&(dyn ToSql + Sync)> = cols
            .kinds
            .iter()
            .enumerate()
            .map(|(k, kind)| -> &(dyn ToSql + Sync) {
                match kind {
                    Col::Int => &ints[k],
                    Col::Float => &floats[k],
                    Col::Bool => &b,
                    Col::Text => &text,
                }
            })
            .collect();
        writer.as_mut().write(&row).await?;
    }
    writer.finish().await?;
    if staged {
        tx.batch_execute(&format!(
            "INSERT INTO {table} ({names}) SELECT {names} FROM bench_staging ON CONFLICT DO NOTHING"
        ))
        .await?;
    }
    tx.commit().await?;
    Ok(t0.elapsed().as_secs_f64())
}

fn sqlite_raw_insert(path: &std::path::Path, rows: u64) -> anyhow::Result<RawLimit> {
    let mut conn = rusqlite::Connection::open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    let ddl: String = conn
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'telemetry_data'",
            [],
            |r| r.get(0),
        )
        .context("telemetry_data not found in the SQLite store")?;
    let scratch = format!("bench_raw_insert_{}", std::process::id());
    let Some(rest) = ddl.strip_prefix("CREATE TABLE telemetry_data") else {
        bail!("unexpected telemetry_data DDL: {ddl}")
    };
    let mut cols: Vec<(String, Col)> = Vec::new();
    {
        let mut st = conn.prepare(
            "SELECT name, type, pk FROM pragma_table_info('telemetry_data') ORDER BY cid",
        )?;
        let mut q = st.query([])?;
        while let Some(r) = q.next()? {
            let (name, ty, pk): (String, String, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
            if pk != 0 {
                continue; // rowid alias, like the server's inserts
            }
            let k = match ty.to_ascii_uppercase().as_str() {
                t if t.contains("INT") => Col::Int,
                t if t.contains("REAL") || t.contains("DOUB") || t.contains("FLOA") => Col::Float,
                t if t.contains("BOOL") => Col::Bool,
                _ => Col::Text,
            };
            cols.push((name, k));
        }
    }
    let ids: Vec<i64> = conn
        .prepare("SELECT id FROM vehicles ORDER BY id")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    conn.execute_batch(&format!(
        "DROP TABLE IF EXISTS {scratch}; CREATE TABLE {scratch}{rest}"
    ))?;
    let names: Vec<String> = cols.iter().map(|(n, _)| format!("\"{n}\"")).collect();
    let marks: Vec<String> = (1..=cols.len()).map(|i| format!("?{i}")).collect();
    let sql = format!(
        "INSERT INTO {scratch} ({}) VALUES ({})",
        names.join(", "),
        marks.join(", ")
    );
    let result = (|| -> anyhow::Result<f64> {
        let t0 = Instant::now();
        let tx = conn.transaction()?;
        {
            let mut st = tx.prepare(&sql)?;
            for i in 0..rows {
                let vals: Vec<rusqlite::types::Value> = cols
                    .iter()
                    .enumerate()
                    .map(|(k, (n, kind))| match kind {
                        Col::Int => rusqlite::types::Value::Integer(int_value(n, i, &ids)),
                        Col::Float => rusqlite::types::Value::Real(float_value(k, i)),
                        Col::Bool => rusqlite::types::Value::Integer(i64::from(i % 100 == 0)),
                        Col::Text => rusqlite::types::Value::Text("bench".into()),
                    })
                    .collect();
                st.execute(rusqlite::params_from_iter(vals))?;
            }
        }
        tx.commit()?;
        Ok(t0.elapsed().as_secs_f64())
    })();
    let _ = conn.execute_batch(&format!("DROP TABLE IF EXISTS {scratch}"));
    let seconds = result.context("raw inserts into a scratch copy of telemetry_data")?;
    Ok(RawLimit {
        method: "prepared INSERTs in one transaction (WAL, synchronous=FULL) into a scratch copy of telemetry_data".into(),
        rows,
        seconds,
        rows_per_s: rows as f64 / seconds.max(1e-9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:pw@h/db"), "postgres://u:****@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }

    #[test]
    fn parses_store_urls() {
        assert!(
            matches!(StoreAccess::from_url("sqlite:///tmp/x.db").unwrap(), StoreAccess::Sqlite(p) if p == std::path::Path::new("/tmp/x.db"))
        );
        assert!(matches!(
            StoreAccess::from_url("postgres://x@h/d").unwrap(),
            StoreAccess::Postgres(_)
        ));
        assert!(StoreAccess::from_url("mysql://x").is_err());
    }
}
