//! `telemetry_rollup`: per vehicle and minute, the reading count and per
//! signal min, max, sum and number of values, maintained in the same
//! transaction as the rows it summarises (both backends). Long-range bucket
//! queries read it instead of the raw rows (see [`super::query::use_rollup`]).
//!
//! A batch is aggregated here, in Rust, into one row per (vehicle, minute),
//! and the store sends one upsert for all of them: the cost per commit is one
//! statement, whatever the number of readings. The aggregate must cover
//! exactly the rows the commit stored, so a store calls [`aggregate`] only on
//! rows it knows were inserted (not skipped as already stored).
//!
//! Columns (generated from the catalog, like `telemetry_data`'s):
//! `vehicle_vin`, `minute` (Unix ms of the minute start), `count`, and per
//! signal `<name>_min`, `<name>_max` (NULL when the minute had no value),
//! `<name>_sum` and `<name>_n` (0 when none). The mean over any set of
//! minutes is `SUM(<name>_sum) / SUM(<name>_n)`.

use std::collections::HashMap;
use std::sync::Arc;

use super::SignalColumns;
use super::query::Dialect;
use crate::model::TelemetryRow;

pub const MINUTE_MS: i64 = 60_000;

/// The start of the minute holding `ts` (also for negative timestamps).
pub fn minute_of(ts: i64) -> i64 {
    ts - ts.rem_euclid(MINUTE_MS)
}

/// One (vehicle, minute) of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct MinuteRollup {
    pub vin: Arc<str>,
    pub minute: i64,
    pub count: i64,
    /// Per catalog channel.
    pub min: Vec<Option<f64>>,
    pub max: Vec<Option<f64>>,
    pub sum: Vec<f64>,
    pub n: Vec<i64>,
}

/// The rows of a batch grouped by (vehicle, minute), in order of first appearance.
pub fn aggregate<'a>(
    rows: impl IntoIterator<Item = &'a TelemetryRow>,
    channels: usize,
) -> Vec<MinuteRollup> {
    let mut at: HashMap<(&'a str, i64), usize> = HashMap::new();
    let mut out: Vec<MinuteRollup> = Vec::new();
    for r in rows {
        let minute = minute_of(r.ts_ms);
        let i = *at.entry((&*r.vin, minute)).or_insert_with(|| {
            out.push(MinuteRollup {
                vin: r.vin.clone(),
                minute,
                count: 0,
                min: vec![None; channels],
                max: vec![None; channels],
                sum: vec![0.0; channels],
                n: vec![0; channels],
            });
            out.len() - 1
        });
        let m = &mut out[i];
        m.count += 1;
        for (c, v) in r.values.iter().take(channels).enumerate() {
            let Some(v) = *v else { continue };
            m.min[c] = Some(m.min[c].map_or(v, |x| x.min(v)));
            m.max[c] = Some(m.max[c].map_or(v, |x| x.max(v)));
            m.sum[c] += v;
            m.n[c] += 1;
        }
    }
    out
}

/// The aggregates as one array per column, for PostgreSQL's `unnest`.
pub struct RollupColumns<'a> {
    pub vin: Vec<&'a str>,
    pub minute: Vec<i64>,
    pub count: Vec<i64>,
    /// Per channel: min, max, sum, n.
    pub min: Vec<Vec<Option<f64>>>,
    pub max: Vec<Vec<Option<f64>>>,
    pub sum: Vec<Vec<f64>>,
    pub n: Vec<Vec<i64>>,
}

impl<'a> RollupColumns<'a> {
    pub fn new(minutes: &'a [MinuteRollup], channels: usize) -> Self {
        Self {
            vin: minutes.iter().map(|m| &*m.vin).collect(),
            minute: minutes.iter().map(|m| m.minute).collect(),
            count: minutes.iter().map(|m| m.count).collect(),
            min: (0..channels)
                .map(|c| minutes.iter().map(|m| m.min[c]).collect())
                .collect(),
            max: (0..channels)
                .map(|c| minutes.iter().map(|m| m.max[c]).collect())
                .collect(),
            sum: (0..channels)
                .map(|c| minutes.iter().map(|m| m.sum[c]).collect())
                .collect(),
            n: (0..channels)
                .map(|c| minutes.iter().map(|m| m.n[c]).collect())
                .collect(),
        }
    }
}

/// The four columns of one signal with their SQL types.
fn signal_columns(name: &str, float: &str, int: &str) -> [(String, String); 4] {
    [
        (format!("{name}_min"), float.to_owned()),
        (format!("{name}_max"), float.to_owned()),
        (format!("{name}_sum"), format!("{float} NOT NULL DEFAULT 0")),
        (format!("{name}_n"), format!("{int} NOT NULL DEFAULT 0")),
    ]
}

fn types(d: Dialect) -> (&'static str, &'static str) {
    match d {
        Dialect::Sqlite => ("REAL", "INTEGER"),
        Dialect::Postgres => ("DOUBLE PRECISION", "BIGINT"),
    }
}

/// The signal column definitions for `CREATE TABLE telemetry_rollup`, one
/// `"name_min" TYPE,` line each (the `{rollup_columns}` of the migrations).
pub fn ddl(cols: &SignalColumns, d: Dialect) -> String {
    let (float, int) = types(d);
    cols.names()
        .iter()
        .flat_map(|n| signal_columns(n, float, int))
        .map(|(c, t)| format!("    \"{c}\" {t},\n"))
        .collect()
}

/// `ALTER TABLE` statements adding the columns of signals the rollup does not
/// have yet (`existing`: its column names).
pub fn add_missing(cols: &SignalColumns, existing: &[String], d: Dialect) -> Vec<String> {
    let (float, int) = types(d);
    cols.names()
        .iter()
        .flat_map(|n| signal_columns(n, float, int))
        .filter(|(c, _)| !existing.iter().any(|e| e == c))
        .map(|(c, t)| format!("ALTER TABLE telemetry_rollup ADD COLUMN \"{c}\" {t}"))
        .collect()
}

/// `a, b` of the signal columns of the rollup, in [`MinuteRollup`] order:
/// per signal min, max, sum, n.
fn column_list(cols: &SignalColumns) -> String {
    cols.names()
        .iter()
        .map(|n| format!("\"{n}_min\", \"{n}_max\", \"{n}_sum\", \"{n}_n\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `DO UPDATE SET` that merges a new (vehicle, minute) into a stored one.
fn merge(cols: &SignalColumns, d: Dialect) -> String {
    // PostgreSQL's LEAST/GREATEST skip NULLs; SQLite's min/max return NULL
    // if an argument is NULL, hence the COALESCE (harmless on PostgreSQL).
    let (least, greatest) = match d {
        Dialect::Sqlite => ("min", "max"),
        Dialect::Postgres => ("LEAST", "GREATEST"),
    };
    let mut set = vec!["count = telemetry_rollup.count + excluded.count".to_owned()];
    for n in cols.names() {
        for (c, f) in [("min", least), ("max", greatest)] {
            set.push(format!(
                "\"{n}_{c}\" = COALESCE({f}(telemetry_rollup.\"{n}_{c}\", excluded.\"{n}_{c}\"), telemetry_rollup.\"{n}_{c}\", excluded.\"{n}_{c}\")"
            ));
        }
        for c in ["sum", "n"] {
            set.push(format!(
                "\"{n}_{c}\" = telemetry_rollup.\"{n}_{c}\" + excluded.\"{n}_{c}\""
            ));
        }
    }
    format!(
        "ON CONFLICT (vehicle_vin, minute) DO UPDATE SET {}",
        set.join(", ")
    )
}

/// PostgreSQL: one statement for all the minutes of a batch. Params: $1 VINs,
/// $2 minutes, $3 counts, then per signal min, max, sum, n arrays.
pub fn pg_upsert(cols: &SignalColumns) -> String {
    let mut params = vec![
        "$1::text[]".to_owned(),
        "$2::int8[]".to_owned(),
        "$3::int8[]".to_owned(),
    ];
    for i in 0..cols.len() {
        let at = 4 + 4 * i;
        params.extend([
            format!("${}::float8[]", at),
            format!("${}::float8[]", at + 1),
            format!("${}::float8[]", at + 2),
            format!("${}::int8[]", at + 3),
        ]);
    }
    format!(
        "INSERT INTO telemetry_rollup (vehicle_vin, minute, count, {list})
         SELECT * FROM unnest({params})
         {merge}",
        list = column_list(cols),
        params = params.join(", "),
        merge = merge(cols, Dialect::Postgres),
    )
}

/// SQLite: one (vehicle, minute) per execution. Params: ?1 VIN, ?2 minute,
/// ?3 count, then per signal min, max, sum, n.
pub fn sqlite_upsert(cols: &SignalColumns) -> String {
    let params: Vec<String> = (1..=3 + 4 * cols.len()).map(|i| format!("?{i}")).collect();
    format!(
        "INSERT INTO telemetry_rollup (vehicle_vin, minute, count, {list})
         VALUES ({params})
         {merge}",
        list = column_list(cols),
        params = params.join(", "),
        merge = merge(cols, Dialect::Sqlite),
    )
}

/// Fills an empty rollup from every stored row (after the migration that
/// creates it, or an import of rows that bypassed the commit path).
pub fn rebuild(cols: &SignalColumns) -> String {
    let minute = format!("t.ts - (((t.ts % {MINUTE_MS}) + {MINUTE_MS}) % {MINUTE_MS})");
    let aggregates = cols
        .names()
        .iter()
        .map(|n| {
            format!("MIN(t.\"{n}\"), MAX(t.\"{n}\"), COALESCE(SUM(t.\"{n}\"), 0), COUNT(t.\"{n}\")")
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO telemetry_rollup (vehicle_vin, minute, count, {list})
         SELECT v.vin, {minute} AS m, COUNT(*), {aggregates}
         FROM telemetry_data t JOIN vehicles v ON v.id = t.vehicle_id
         GROUP BY v.vin, m",
        list = column_list(cols),
    )
}

/// True if the rollup is empty while readings are stored: it must be rebuilt.
pub const NEEDS_REBUILD: &str =
    "SELECT NOT EXISTS (SELECT 1 FROM telemetry_rollup) AND EXISTS (SELECT 1 FROM telemetry_data)";

#[cfg(test)]
mod tests {
    use super::*;

    fn row(vin: &Arc<str>, ts: i64, values: Vec<Option<f64>>) -> TelemetryRow {
        TelemetryRow {
            vin: vin.clone(),
            session_id: 1,
            seq: ts as u64,
            ts_ms: ts,
            values,
            transmitted: 0,
            keyframe: false,
        }
    }

    #[test]
    fn a_batch_becomes_one_row_per_vehicle_and_minute() {
        let (a, b): (Arc<str>, Arc<str>) = ("A".into(), "B".into());
        let rows = [
            row(&a, 60_000, vec![Some(2.0), None]),
            row(&a, 119_999, vec![Some(-1.0), None]),
            row(&b, 60_001, vec![Some(5.0), Some(1.0)]),
            row(&a, 120_000, vec![None, Some(3.0)]),
            row(&a, -1, vec![Some(7.0), None]),
        ];
        let m = aggregate(&rows, 2);
        assert_eq!(m.len(), 4);
        assert_eq!((m[0].minute, m[0].count), (60_000, 2));
        assert_eq!(m[0].min, [Some(-1.0), None]);
        assert_eq!(m[0].max, [Some(2.0), None]);
        assert_eq!((m[0].sum[0], m[0].n[0], m[0].n[1]), (1.0, 2, 0));
        assert_eq!((&*m[1].vin, m[1].count), ("B", 1));
        assert_eq!((m[2].minute, m[2].n.clone()), (120_000, vec![0, 1]));
        assert_eq!(m[3].minute, -60_000, "floored, not truncated");
    }
}
