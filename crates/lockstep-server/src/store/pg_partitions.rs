//! Upkeep of PostgreSQL's `telemetry_data`, partitioned by the UTC day of
//! `ts` (see docs/partitions.md): one partition per day, named
//! `telemetry_YYYYMMDD`, covering `[day start, next day start)` in Unix ms,
//! and `telemetry_default` for rows no day partition takes (the server was
//! down past the days created ahead, or timestamps far in the past).
//!
//! A run, in this order:
//! 1. retention: drops the day partitions wholly before the cutoff, deletes
//!    older rows from the default partition and older rollup minutes;
//! 2. for each day held by the default partition and each day from today to
//!    `days_ahead`, creates the day's partition in one short transaction
//!    that locks the table (milliseconds: ingest waits, then goes on):
//!    `CREATE TABLE … (LIKE telemetry_data)`, the day's rows moved out of the
//!    default partition (ids unchanged, so sinks' cursors stay valid),
//!    `ATTACH PARTITION`. Readers see the rows before or after the move,
//!    never twice or missing.
//!
//! Every step is its own transaction under an advisory lock (servers sharing
//! the database take turns) and a lock timeout, so that a step waiting for a
//! long reader gives up instead of queueing ingest behind it; the next run
//! tries again.

use std::collections::BTreeSet;

use deadpool_postgres::Pool;

use super::{DAY_MS, Maintenance, MaintenanceReport, StoreError};
use crate::model::{civil_date, parse_civil_date};

/// Serialises maintenance steps of all servers on one database.
const MAINTENANCE_LOCK: &str = "SELECT pg_advisory_xact_lock(7311209)";
/// How long a step waits for a table lock before giving up until the next run.
const LOCK_TIMEOUT: &str = "SET LOCAL lock_timeout = '2s'";
/// Attaching or dropping a partition adds or removes its foreign key, which
/// locks `vehicles`; a commit locks `vehicles` (its upsert) before the
/// partitions. Taking `vehicles` first here too keeps the order the same,
/// so the two cannot deadlock (a commit waits for the step, at most the
/// lock timeout, instead).
const LOCK_VEHICLES: &str = "LOCK TABLE vehicles IN SHARE ROW EXCLUSIVE MODE";
/// Day partitions are made for timestamps in [1970-01-01, 10000-01-01); the
/// default partition keeps the rest.
const LAST_TS: i64 = 253_402_300_800_000;

/// The partition of the UTC day starting at `day_ms`.
pub fn partition_name(day_ms: i64) -> String {
    let day = (day_ms.div_euclid(DAY_MS)) as i32;
    format!("telemetry_{}", civil_date(day).replace('-', ""))
}

/// The day start of a partition named by [`partition_name`].
fn partition_day(name: &str) -> Option<i64> {
    let d = name.strip_prefix("telemetry_")?;
    if d.len() != 8 || !d.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let day = parse_civil_date(&format!("{}-{}-{}", &d[..4], &d[4..6], &d[6..]))?;
    Some(i64::from(day) * DAY_MS)
}

pub(super) async fn maintain(pool: &Pool, m: Maintenance) -> Result<MaintenanceReport, StoreError> {
    let mut report = MaintenanceReport::default();
    let mut client = pool.get().await.map_err(StoreError::from)?;
    let days = |rows: Vec<tokio_postgres::Row>| -> BTreeSet<i64> {
        rows.iter()
            .filter_map(|r| partition_day(r.get::<_, &str>(0)))
            .collect()
    };
    let existing = days(
        client
            .query(
                "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = 'telemetry_data'::regclass",
                &[],
            )
            .await
            .map_err(StoreError::from)?,
    );

    let cutoff = m.cutoff_ms();
    if let Some(cutoff) = cutoff {
        for &day in existing.iter().filter(|&&d| d + DAY_MS <= cutoff) {
            let tx = client.transaction().await.map_err(StoreError::from)?;
            tx.batch_execute(&format!(
                "{MAINTENANCE_LOCK}; {LOCK_TIMEOUT}; {LOCK_VEHICLES}; DROP TABLE IF EXISTS {}",
                partition_name(day)
            ))
            .await
            .map_err(StoreError::from)?;
            tx.commit().await.map_err(StoreError::from)?;
            report.partitions_dropped += 1;
            tracing::info!(partition = %partition_name(day), "Dropped a partition past the retention.");
        }
        let tx = client.transaction().await.map_err(StoreError::from)?;
        tx.batch_execute(&format!("{MAINTENANCE_LOCK}; {LOCK_TIMEOUT}"))
            .await
            .map_err(StoreError::from)?;
        report.rows_deleted = tx
            .execute("DELETE FROM telemetry_default WHERE ts < $1", &[&cutoff])
            .await
            .map_err(StoreError::from)?;
        report.rollup_deleted = tx
            .execute("DELETE FROM telemetry_rollup WHERE minute < $1", &[&cutoff])
            .await
            .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
    }

    // Days to create: those the default partition holds, and today to the horizon.
    let mut wanted: BTreeSet<i64> = client
        .query(
            "SELECT DISTINCT ts - ts % 86400000 FROM telemetry_default WHERE ts >= 0 AND ts < $1",
            &[&LAST_TS],
        )
        .await
        .map_err(StoreError::from)?
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .collect();
    let today = m.now_ms - m.now_ms.rem_euclid(DAY_MS);
    wanted.extend((0..=i64::from(m.days_ahead)).map(|k| today + k * DAY_MS));
    wanted.retain(|d| !existing.contains(d) && cutoff.is_none_or(|c| *d >= c));
    if wanted.is_empty() {
        return Ok(report);
    }
    let columns: String = client
        .query_one(
            "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute
             WHERE attrelid = 'telemetry_data'::regclass AND attnum > 0 AND NOT attisdropped",
            &[],
        )
        .await
        .map_err(StoreError::from)?
        .get(0);
    for day in wanted {
        let name = partition_name(day);
        let tx = client.transaction().await.map_err(StoreError::from)?;
        tx.batch_execute(&format!("{MAINTENANCE_LOCK}; {LOCK_TIMEOUT}"))
            .await
            .map_err(StoreError::from)?;
        // Another server may have made it since we listed.
        let exists: bool = tx
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
            .await
            .map_err(StoreError::from)?
            .get(0);
        if exists {
            continue;
        }
        // The whole table, briefly: ATTACH alone locks the parent less, so a
        // query planned just before it would look for the moved rows in the
        // default partition only and miss them; with the lock it waits and
        // plans with the new partition. It also keeps rows of the day from
        // arriving in the default partition between the move and the ATTACH.
        tx.batch_execute(&format!(
            "{LOCK_VEHICLES};
             LOCK TABLE telemetry_data IN ACCESS EXCLUSIVE MODE;
             CREATE TABLE {name} (LIKE telemetry_data INCLUDING DEFAULTS)"
        ))
        .await
        .map_err(StoreError::from)?;
        let moved = tx
            .execute(
                &format!(
                    "WITH moved AS (DELETE FROM telemetry_default WHERE ts >= $1 AND ts < $2 RETURNING {columns})
                     INSERT INTO {name} ({columns}) SELECT {columns} FROM moved"
                ),
                &[&day, &(day + DAY_MS)],
            )
            .await
            .map_err(StoreError::from)?;
        tx.batch_execute(&format!(
            "ALTER TABLE telemetry_data ATTACH PARTITION {name} FOR VALUES FROM ({day}) TO ({})",
            day + DAY_MS
        ))
        .await
        .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)?;
        report.partitions_created += 1;
        report.rows_moved += moved;
        if moved > 0 {
            tracing::info!(partition = %name, rows = moved, "Moved rows from the default partition into their day's.");
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_round_trip() {
        assert_eq!(partition_name(0), "telemetry_19700101");
        let day = 20_422 * DAY_MS; // 2025-11-30
        assert_eq!(partition_name(day), "telemetry_20251130");
        assert_eq!(partition_name(day + DAY_MS - 1), "telemetry_20251130");
        assert_eq!(partition_day("telemetry_20251130"), Some(day));
        assert_eq!(partition_day("telemetry_default"), None);
        assert_eq!(partition_day("telemetry_rollup"), None);
    }
}
