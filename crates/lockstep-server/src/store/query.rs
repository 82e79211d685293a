//! Read-side types and SQL shared by both backends: history pages (keyset
//! paging on `(ts, session_id, seq)`), buckets computed in the database,
//! vehicle detail and daily statistics. Every statement that names a value
//! column is generated here from [`SignalColumns`], with the backend's
//! placeholder style, so SQLite and PostgreSQL run the same text.
//!
//! Buckets are aligned to the Unix epoch (a bucket of `step` ms starts at a
//! multiple of `step`), so the same bucket has the same bounds whatever the
//! requested range, and minute buckets line up with `telemetry_rollup`.

use std::sync::Arc;

use super::SignalColumns;
use crate::model::Counters;

/// Where a history page resumes: the last row served, in the page order
/// `(ts, session_id, seq)` (session as stored: the signed BIGINT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryCursor {
    pub ts: i64,
    pub session: i64,
    pub seq: i64,
}

impl HistoryCursor {
    /// Before every row.
    pub const START: Self = Self {
        ts: i64::MIN,
        session: i64::MIN,
        seq: i64::MIN,
    };
}

/// One page of raw readings of one vehicle, `from <= ts < to`, after `after`.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    pub vin: Arc<str>,
    pub from: i64,
    pub to: i64,
    pub after: HistoryCursor,
    pub limit: usize,
}

/// Aggregates of one signal over a bucket; `None` when it had no value there.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SignalAggregate {
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

/// One bucket of [`Store::buckets`](super::Store::buckets).
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    /// Bucket start, Unix ms (a multiple of the step).
    pub start: i64,
    /// Readings in the bucket.
    pub count: u64,
    /// Per catalog channel.
    pub signals: Vec<Option<SignalAggregate>>,
}

/// A vehicle as `GET /api/vehicles/{vin}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[schema(as = VehicleJson)]
pub struct VehicleDetail {
    pub vin: String,
    pub model: Option<String>,
    pub year: Option<i32>,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub readings: u64,
    /// Lockstep sessions stored for the vehicle (the seed form's is not counted).
    pub sessions: u64,
    /// Resync answers (409) given to the vehicle's batches.
    pub resyncs: u64,
    /// Timestamp of the newest stored keyframe reading.
    pub last_keyframe_ms: Option<i64>,
}

/// A change of a vehicle's descriptive fields; `None` = leave as is,
/// `Some(None)` = clear.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VehicleProfile {
    pub vin: Arc<str>,
    pub model: Option<Option<String>>,
    pub year: Option<Option<i32>>,
}

/// The statistics of one vehicle for one UTC day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayStats {
    /// Days since the epoch.
    pub day: i32,
    pub counters: Counters,
}

/// A page of vehicles after `after` (by VIN).
#[derive(Debug, Clone)]
pub struct VehiclePage {
    pub after: Option<String>,
    pub limit: usize,
}

/// Placeholder style of a backend.
#[derive(Debug, Clone, Copy)]
pub enum Dialect {
    /// `?1`
    Sqlite,
    /// `$1` with casts where PostgreSQL cannot infer the type.
    Postgres,
}

impl Dialect {
    fn p(self, i: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{i}"),
            Dialect::Postgres => format!("${i}"),
        }
    }

    /// A BIGINT parameter (cast on PostgreSQL, where arithmetic needs the type).
    fn int(self, i: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{i}"),
            Dialect::Postgres => format!("${i}::int8"),
        }
    }
}

/// The read statements, generated once per store from the catalog.
#[derive(Debug, Clone)]
pub struct ReadSql {
    pub channels: usize,
    /// Params: vehicle id, from, to, after ts, after session, after seq, limit.
    /// Columns: ts, session_id, seq, transmitted_mask, keyframe, values….
    pub page: String,
    /// Params: vehicle id, from, to, step. Columns: bucket, count, then
    /// min, max, mean per channel.
    pub buckets: String,
    /// Params: VIN, from, to, step (from, to and step minute-aligned).
    /// Same columns as [`Self::buckets`], from `telemetry_rollup`.
    pub rollup_buckets: String,
    /// Params: vehicle id, from, to. Column: count.
    pub count: String,
    /// Params: VIN. Column: id.
    pub vehicle_id: String,
    /// Params: VIN. Columns as [`detail_from_row`] reads them.
    pub detail: String,
    /// Params: after VIN ('' = from the start), limit.
    /// Columns: vin, first_seen, last_seen, readings, model, year.
    pub vehicles: String,
    /// Params: vehicle id, first day, last day (inclusive). Columns: day, counters….
    pub days: String,
}

impl ReadSql {
    pub fn new(cols: &SignalColumns, d: Dialect) -> Self {
        let p = |i| d.p(i);
        let aggregates = |alias: &str| {
            cols.names()
                .iter()
                .map(|n| {
                    format!(
                        "MIN({alias}\"{n}\"), MAX({alias}\"{n}\"), AVG({alias}\"{n}\")",
                        alias = alias
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let rollup_aggregates = cols
            .names()
            .iter()
            .map(|n| {
                format!(
                    "MIN(\"{n}_min\"), MAX(\"{n}_max\"), SUM(\"{n}_sum\") / NULLIF(SUM(\"{n}_n\"), 0)"
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let step = d.int(4);
        // Floor to a multiple of the step, also for negative timestamps.
        let bucket = |col: &str| format!("{col} - ((({col} % {step}) + {step}) % {step})");
        let (day_col, day_first, day_last) = match d {
            Dialect::Sqlite => ("day".to_owned(), "?2".to_owned(), "?3".to_owned()),
            Dialect::Postgres => (
                "(day - DATE '1970-01-01')".to_owned(),
                "DATE '1970-01-01' + $2::int4".to_owned(),
                "DATE '1970-01-01' + $3::int4".to_owned(),
            ),
        };
        let readings_type = match d {
            Dialect::Sqlite => "",
            Dialect::Postgres => "::int8",
        };
        Self {
            channels: cols.len(),
            // The 4-tuple comparison starts with the index's leading column,
            // so both databases seek the (vehicle_id, ts, session_id, seq)
            // index to the cursor and read forward; `ts < to` stops the scan.
            page: format!(
                "SELECT ts, session_id, seq, transmitted_mask, keyframe, {cols}
                 FROM telemetry_data
                 WHERE vehicle_id = {p1} AND ts >= {p2} AND ts < {p3}
                   AND (vehicle_id, ts, session_id, seq) > ({p1}, {p4}, {p5}, {p6})
                 ORDER BY vehicle_id, ts, session_id, seq
                 LIMIT {p7}",
                cols = cols.list(None),
                p1 = p(1),
                p2 = p(2),
                p3 = p(3),
                p4 = p(4),
                p5 = p(5),
                p6 = p(6),
                p7 = p(7),
            ),
            buckets: format!(
                "SELECT {b} AS bucket, COUNT(*){readings_type}, {agg}
                 FROM telemetry_data
                 WHERE vehicle_id = {p1} AND ts >= {p2} AND ts < {p3}
                 GROUP BY bucket ORDER BY bucket",
                b = bucket("ts"),
                agg = aggregates(""),
                p1 = p(1),
                p2 = p(2),
                p3 = p(3),
            ),
            rollup_buckets: format!(
                "SELECT {b} AS bucket, SUM(count){readings_type}, {rollup_aggregates}
                 FROM telemetry_rollup
                 WHERE vehicle_vin = {p1} AND minute >= {p2} AND minute < {p3}
                 GROUP BY bucket ORDER BY bucket",
                b = bucket("minute"),
                p1 = p(1),
                p2 = p(2),
                p3 = p(3),
            ),
            count: format!(
                "SELECT COUNT(*){readings_type} FROM telemetry_data
                 WHERE vehicle_id = {p1} AND ts >= {p2} AND ts < {p3}",
                p1 = p(1),
                p2 = p(2),
                p3 = p(3),
            ),
            vehicle_id: format!("SELECT id FROM vehicles WHERE vin = {}", p(1)),
            detail: format!(
                "SELECT v.vin, v.model, v.year, v.first_seen, v.last_seen, v.resyncs,
                   (SELECT COALESCE(SUM(c.readings), 0){readings_type} FROM compression_stats c WHERE c.vehicle_id = v.id),
                   (SELECT COUNT(*){readings_type} FROM sessions s WHERE s.vehicle_id = v.id AND s.session_id <> 0),
                   (SELECT MAX(t.ts) FROM telemetry_data t WHERE t.vehicle_id = v.id AND t.keyframe)
                 FROM vehicles v WHERE v.vin = {}",
                p(1)
            ),
            vehicles: format!(
                "SELECT v.vin, v.first_seen, v.last_seen,
                   (SELECT COALESCE(SUM(c.readings), 0){readings_type} FROM compression_stats c WHERE c.vehicle_id = v.id),
                   v.model, v.year
                 FROM vehicles v WHERE v.vin > {} ORDER BY v.vin LIMIT {}",
                p(1),
                p(2)
            ),
            days: format!(
                "SELECT {day_col}, readings, fields_total, fields_transmitted, fields_skipped, bytes_received
                 FROM compression_stats
                 WHERE vehicle_id = {p1} AND day >= {day_first} AND day <= {day_last}
                 ORDER BY day",
                p1 = p(1),
            ),
        }
    }
}

/// Bucket aggregates from a row of [`ReadSql::buckets`] given a getter of
/// nullable doubles by column index.
pub fn bucket_signals(
    channels: usize,
    mut get: impl FnMut(usize) -> Option<f64>,
) -> Vec<Option<SignalAggregate>> {
    (0..channels)
        .map(|i| {
            let at = 2 + 3 * i;
            match (get(at), get(at + 1), get(at + 2)) {
                (Some(min), Some(max), Some(mean)) => Some(SignalAggregate { min, max, mean }),
                _ => None,
            }
        })
        .collect()
}

/// Whether a bucket query may read `telemetry_rollup` instead of the raw
/// rows: the table exists and the step and range are whole minutes. This is
/// the one switch between the two sources.
pub fn use_rollup(has_rollup: bool, from: i64, to: i64, step: i64) -> bool {
    const MINUTE: i64 = 60_000;
    has_rollup && step % MINUTE == 0 && from % MINUTE == 0 && to % MINUTE == 0
}
