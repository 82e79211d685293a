//! Reading stored data back: history pages, buckets, CSV export, vehicles
//! and statistics. Parameters arrive as text (from a query string or a
//! GraphQL argument) and are checked here, so every front end refuses the
//! same things with the same messages. No HTTP types.
//!
//! Limits (documented in the OpenAPI text and the README):
//! - a raw page holds at most [`MAX_LIMIT`] readings (default [`DEFAULT_LIMIT`]);
//! - `step` may produce at most [`MAX_BUCKETS`] buckets over the range;
//! - a CSV export covers at most [`MAX_CSV_ROWS`] readings; it is streamed in
//!   pages of [`CSV_PAGE`], so the server holds one page at a time.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use crate::actors::stats::{StatsBook, VehicleStatsPage};
use crate::model::{Counters, Signals, TelemetryRow, civil_date, parse_civil_date};
use crate::store::{
    Bucket, HistoryCursor, HistoryQuery, Store, StoreError, VehicleDetail, VehiclePage,
    VehicleProfile, VehicleSummary, WriteBatch,
};

pub const DEFAULT_LIMIT: usize = 1_000;
pub const MAX_LIMIT: usize = 10_000;
pub const MAX_BUCKETS: i64 = 10_000;
pub const MAX_CSV_ROWS: u64 = 1_000_000;
pub const CSV_PAGE: usize = 10_000;
pub const DEFAULT_VEHICLES: usize = 100;
pub const MAX_VEHICLES: usize = 1_000;
pub const MAX_MODEL_CHARS: usize = 64;
pub const YEARS: std::ops::RangeInclusive<i32> = 1900..=2100;

/// Why a read was refused.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// A query parameter is missing or malformed (400).
    #[error("{0}")]
    BadRequest(String),
    /// A body field is out of bounds (422).
    #[error("{0}")]
    Invalid(String),
    /// The path's VIN is not a valid VIN (422).
    #[error("invalid vehicle_vin: {0}")]
    InvalidVin(String),
    /// No such vehicle (404).
    #[error("no vehicle {0} is stored")]
    UnknownVehicle(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

type Result<T> = std::result::Result<T, QueryError>;

/// Checks a VIN from a path or argument.
pub fn parse_vin(s: &str) -> Result<Arc<str>> {
    lockstep_codec::Vin::parse(s)
        .map(|v| Arc::from(v.as_str()))
        .map_err(|e| QueryError::InvalidVin(format!("{s:?}: {e}")))
}

fn bad(m: impl Into<String>) -> QueryError {
    QueryError::BadRequest(m.into())
}

fn int_param(p: &HashMap<String, String>, name: &str) -> Result<Option<i64>> {
    p.get(name)
        .map(|v| {
            v.trim()
                .parse::<i64>()
                .map_err(|_| bad(format!("{name} must be an integer, got {v:?}")))
        })
        .transpose()
}

/// The output of `GET /api/vehicles/{vin}/telemetry`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
}

/// Checked parameters of a history request.
#[derive(Debug, Clone)]
pub struct HistoryParams {
    /// Inclusive, Unix ms.
    pub from: i64,
    /// Exclusive, Unix ms.
    pub to: i64,
    pub limit: usize,
    pub after: HistoryCursor,
    pub step: Option<i64>,
    pub format: Format,
}

impl HistoryParams {
    /// `from` and `to` (required, `from < to`), `limit` (1..=10,000),
    /// `cursor` (from a previous page), `step` (ms, > 0), `format` (`json`|`csv`).
    pub fn parse(p: &HashMap<String, String>) -> Result<Self> {
        let from = int_param(p, "from")?.ok_or_else(|| bad("from (Unix ms) is required"))?;
        let to = int_param(p, "to")?.ok_or_else(|| bad("to (Unix ms) is required"))?;
        if from >= to {
            return Err(bad(format!(
                "from ({from}) must be less than to ({to}); to is exclusive"
            )));
        }
        let limit = match int_param(p, "limit")? {
            None => DEFAULT_LIMIT,
            Some(n) if n >= 1 && n <= MAX_LIMIT as i64 => n as usize,
            Some(n) => return Err(bad(format!("limit must be 1..={MAX_LIMIT}, got {n}"))),
        };
        let after = match p.get("cursor") {
            None => HistoryCursor::START,
            Some(c) => decode_history_cursor(c)?,
        };
        let step = match int_param(p, "step")? {
            None => None,
            Some(s) if s >= 1 => Some(s),
            Some(s) => {
                return Err(bad(format!(
                    "step must be a positive number of ms, got {s}"
                )));
            }
        };
        let format = match p.get("format").map(String::as_str) {
            None | Some("json") => Format::Json,
            Some("csv") => Format::Csv,
            Some(f) => return Err(bad(format!("format must be json or csv, got {f:?}"))),
        };
        if step.is_some() && format == Format::Csv {
            return Err(bad("format=csv exports raw readings; drop step or format"));
        }
        if let Some(step) = step {
            // Epoch-aligned buckets touched by [from, to).
            let buckets = (to - 1).div_euclid(step) - from.div_euclid(step) + 1;
            if buckets > MAX_BUCKETS {
                return Err(bad(format!(
                    "step {step} ms gives {buckets} buckets over this range; at most {MAX_BUCKETS}: use a larger step or a narrower range"
                )));
            }
        }
        Ok(Self {
            from,
            to,
            limit,
            after,
            step,
            format,
        })
    }
}

/// Hex of `ts.session.seq`: opaque to clients, stable across restarts.
pub fn encode_history_cursor(c: HistoryCursor) -> String {
    hex(&format!("{}.{}.{}", c.ts, c.session, c.seq))
}

fn decode_history_cursor(s: &str) -> Result<HistoryCursor> {
    let err = || bad(format!("cursor {s:?} is not a cursor this server returned"));
    let text = unhex(s).ok_or_else(err)?;
    let mut it = text.split('.').map(str::parse::<i64>);
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(Ok(ts)), Some(Ok(session)), Some(Ok(seq)), None) => {
            Ok(HistoryCursor { ts, session, seq })
        }
        _ => Err(err()),
    }
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) || s.len() > 256 {
        return None;
    }
    let bytes = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// One raw reading of a history page.
pub struct HistoryReading<'a> {
    row: &'a TelemetryRow,
    signals: &'a Signals,
}

impl Serialize for HistoryReading<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let names = self.signals.names();
        let mut m = s.serialize_map(Some(names.len() + 2))?;
        m.serialize_entry("timestamp", &self.row.ts_ms)?;
        let mut transmitted = Vec::new();
        for (i, name) in names.iter().enumerate() {
            m.serialize_entry(&**name, &self.row.values.get(i).copied().flatten())?;
            if self.row.transmitted & (1 << i) != 0 {
                transmitted.push(&**name);
            }
        }
        m.serialize_entry("transmitted", &transmitted)?;
        m.end()
    }
}

/// `{"vin", "readings": […], "next_cursor"}`.
pub struct HistoryPage {
    pub vin: Arc<str>,
    pub rows: Vec<TelemetryRow>,
    pub next_cursor: Option<String>,
    pub signals: Signals,
}

impl Serialize for HistoryPage {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("vin", &*self.vin)?;
        let readings: Vec<HistoryReading<'_>> = self
            .rows
            .iter()
            .map(|row| HistoryReading {
                row,
                signals: &self.signals,
            })
            .collect();
        m.serialize_entry("readings", &readings)?;
        m.serialize_entry("next_cursor", &self.next_cursor)?;
        m.end()
    }
}

/// `{"vin", "step", "buckets": [{"timestamp", "count", "<signal>": {"min","max","mean"}|null}]}`.
pub struct BucketPage {
    pub vin: Arc<str>,
    pub step: i64,
    pub buckets: Vec<Bucket>,
    pub signals: Signals,
}

struct BucketJson<'a> {
    b: &'a Bucket,
    signals: &'a Signals,
}

#[derive(Serialize)]
struct AggregateJson {
    min: f64,
    max: f64,
    mean: f64,
}

impl Serialize for BucketJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let names = self.signals.names();
        let mut m = s.serialize_map(Some(names.len() + 2))?;
        m.serialize_entry("timestamp", &self.b.start)?;
        m.serialize_entry("count", &self.b.count)?;
        for (i, name) in names.iter().enumerate() {
            let a = self.b.signals.get(i).copied().flatten();
            m.serialize_entry(
                &**name,
                &a.map(|a| AggregateJson {
                    min: a.min,
                    max: a.max,
                    mean: a.mean,
                }),
            )?;
        }
        m.end()
    }
}

impl Serialize for BucketPage {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(3))?;
        m.serialize_entry("vin", &*self.vin)?;
        m.serialize_entry("step", &self.step)?;
        let buckets: Vec<BucketJson<'_>> = self
            .buckets
            .iter()
            .map(|b| BucketJson {
                b,
                signals: &self.signals,
            })
            .collect();
        m.serialize_entry("buckets", &buckets)?;
        m.end()
    }
}

/// `GET /api/vehicles` page.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VehicleList {
    pub vehicles: Vec<VehicleSummary>,
    pub next_cursor: Option<String>,
}

/// `GET /api/vehicles/{vin}`: the store's detail as is.
pub type VehicleJson = VehicleDetail;

/// The body of `PATCH /api/vehicles/{vin}`: an absent field is left as is,
/// `null` clears it.
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VehiclePatch {
    /// At most 64 characters; null clears.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, max_length = 64)]
    pub model: Option<Option<String>>,
    /// 1900..=2100; null clears.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i32>, minimum = 1900, maximum = 2100)]
    pub year: Option<Option<i32>>,
}

/// A field that is present (possibly `null`) becomes `Some(..)`.
fn present<'de, D, T>(d: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    <Option<T> as serde::Deserialize>::deserialize(d).map(Some)
}

impl VehiclePatch {
    pub fn check(&self) -> Result<()> {
        if let Some(Some(m)) = &self.model {
            let n = m.chars().count();
            if n > MAX_MODEL_CHARS {
                return Err(QueryError::Invalid(format!(
                    "model has {n} characters; at most {MAX_MODEL_CHARS}"
                )));
            }
        }
        if let Some(Some(y)) = self.year
            && !YEARS.contains(&y)
        {
            return Err(QueryError::Invalid(format!(
                "year must be {}..={}, got {y}",
                YEARS.start(),
                YEARS.end()
            )));
        }
        Ok(())
    }
}

/// One day of `GET /api/vehicles/{vin}/stats`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DayJson {
    pub day: String,
    pub readings: u64,
    pub fields_total: u64,
    pub fields_transmitted: u64,
    pub fields_skipped: u64,
    pub compression_ratio: f64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DailyStats {
    pub vin: String,
    pub days: Vec<DayJson>,
}

/// `GET /api/stats`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FleetStats {
    pub vehicles: u64,
    pub readings: u64,
    pub fields_total: u64,
    pub fields_transmitted: u64,
    pub fields_skipped: u64,
    pub compression_ratio: f64,
}

/// The read side of the store, with the request limits applied.
#[derive(Clone)]
pub struct QueryService {
    store: Arc<dyn Store>,
    signals: Signals,
}

impl QueryService {
    pub fn new(store: Arc<dyn Store>, signals: Signals) -> Self {
        Self { store, signals }
    }

    pub fn signals(&self) -> &Signals {
        &self.signals
    }

    /// One page of raw readings.
    pub async fn history(&self, vin: Arc<str>, p: &HistoryParams) -> Result<HistoryPage> {
        let q = HistoryQuery {
            vin: vin.clone(),
            from: p.from,
            to: p.to,
            after: p.after,
            limit: p.limit + 1,
        };
        let mut rows = self
            .store
            .history(q)
            .await?
            .ok_or_else(|| QueryError::UnknownVehicle(vin.to_string()))?;
        let next_cursor = if rows.len() > p.limit {
            rows.truncate(p.limit);
            rows.last().map(|r| encode_history_cursor(cursor_of(r)))
        } else {
            None
        };
        Ok(HistoryPage {
            vin,
            rows,
            next_cursor,
            signals: self.signals.clone(),
        })
    }

    /// Buckets of `step` ms computed by the database.
    pub async fn buckets(&self, vin: Arc<str>, p: &HistoryParams, step: i64) -> Result<BucketPage> {
        let buckets = self
            .store
            .buckets(vin.clone(), p.from, p.to, step)
            .await?
            .ok_or_else(|| QueryError::UnknownVehicle(vin.to_string()))?;
        Ok(BucketPage {
            vin,
            step,
            buckets,
            signals: self.signals.clone(),
        })
    }

    /// The CSV export of `from <= ts < to`: checks the vehicle and the size
    /// first (so errors are proper answers), then streams page by page.
    pub async fn csv(
        &self,
        vin: Arc<str>,
        p: &HistoryParams,
    ) -> Result<impl Stream<Item = std::result::Result<Bytes, StoreError>> + Send + 'static> {
        let n = self
            .store
            .count_history(vin.clone(), p.from, p.to)
            .await?
            .ok_or_else(|| QueryError::UnknownVehicle(vin.to_string()))?;
        if n > MAX_CSV_ROWS {
            return Err(bad(format!(
                "the range holds {n} readings; a CSV export takes at most {MAX_CSV_ROWS}: narrow the range or use step"
            )));
        }
        let header = {
            let mut h = String::from("timestamp,session_id,seq");
            for name in self.signals.names() {
                h.push(',');
                h.push_str(name);
            }
            h.push_str(",transmitted\n");
            h
        };
        struct State {
            store: Arc<dyn Store>,
            signals: Signals,
            q: HistoryQuery,
            header: Option<String>,
            done: bool,
        }
        let state = State {
            store: self.store.clone(),
            signals: self.signals.clone(),
            q: HistoryQuery {
                vin,
                from: p.from,
                to: p.to,
                after: HistoryCursor::START,
                limit: CSV_PAGE,
            },
            header: Some(header),
            done: false,
        };
        Ok(futures_util::stream::try_unfold(
            state,
            |mut st| async move {
                if let Some(h) = st.header.take() {
                    return Ok(Some((Bytes::from(h), st)));
                }
                if st.done {
                    return Ok(None);
                }
                let rows = st.store.history(st.q.clone()).await?.unwrap_or_default();
                st.done = rows.len() < st.q.limit;
                let Some(last) = rows.last() else {
                    return Ok(None);
                };
                st.q.after = cursor_of(last);
                let mut out = String::with_capacity(rows.len() * 96);
                for r in &rows {
                    csv_line(&mut out, r, &st.signals);
                }
                Ok(Some((Bytes::from(out), st)))
            },
        ))
    }

    pub async fn vehicles(&self, limit: Option<i64>, cursor: Option<&str>) -> Result<VehicleList> {
        let limit = match limit {
            None => DEFAULT_VEHICLES,
            Some(n) if n >= 1 && n <= MAX_VEHICLES as i64 => n as usize,
            Some(n) => return Err(bad(format!("limit must be 1..={MAX_VEHICLES}, got {n}"))),
        };
        let after = cursor
            .map(|c| {
                unhex(c).ok_or_else(|| {
                    bad(format!("cursor {c:?} is not a cursor this server returned"))
                })
            })
            .transpose()?;
        let mut vehicles = self
            .store
            .vehicles(VehiclePage {
                after,
                limit: limit + 1,
            })
            .await?;
        let next_cursor = if vehicles.len() > limit {
            vehicles.truncate(limit);
            vehicles.last().map(|v| hex(&v.vin))
        } else {
            None
        };
        Ok(VehicleList {
            vehicles,
            next_cursor,
        })
    }

    /// `GET /api/stats/vehicles?after=VIN&limit=N` from the statistics in
    /// memory (the same figures as the WebSocket `compression_stats`).
    pub fn vehicle_stats_from_params(
        stats: &StatsBook,
        p: &HashMap<String, String>,
    ) -> Result<VehicleStatsPage> {
        let limit = match int_param(p, "limit")? {
            None => DEFAULT_VEHICLES,
            Some(n) if n >= 1 && n <= MAX_VEHICLES as i64 => n as usize,
            Some(n) => return Err(bad(format!("limit must be 1..={MAX_VEHICLES}, got {n}"))),
        };
        let after = p
            .get("after")
            .map(|a| {
                lockstep_codec::Vin::parse(a)
                    .map_err(|e| bad(format!("after must be a VIN, got {a:?}: {e}")))
            })
            .transpose()?;
        Ok(stats.page(after.as_ref().map(|v| v.as_str()), limit))
    }

    /// `limit`/`cursor` from a query string.
    pub async fn vehicles_from_params(&self, p: &HashMap<String, String>) -> Result<VehicleList> {
        self.vehicles(int_param(p, "limit")?, p.get("cursor").map(String::as_str))
            .await
    }

    pub async fn vehicle(&self, vin: Arc<str>) -> Result<VehicleJson> {
        self.store
            .vehicle(vin.clone())
            .await?
            .ok_or_else(|| QueryError::UnknownVehicle(vin.to_string()))
    }

    /// Applies a checked patch (one transaction through the store's write
    /// path) and returns the vehicle as stored after it.
    pub async fn patch_vehicle(&self, vin: Arc<str>, patch: VehiclePatch) -> Result<VehicleJson> {
        patch.check()?;
        // 404 before writing: the update of an unknown VIN would do nothing.
        self.vehicle(vin.clone()).await?;
        self.store
            .commit(WriteBatch {
                profiles: vec![VehicleProfile {
                    vin: vin.clone(),
                    model: patch.model,
                    year: patch.year,
                }],
                ..WriteBatch::default()
            })
            .await?;
        self.vehicle(vin).await
    }

    /// `from`/`to` as `YYYY-MM-DD` (inclusive; default: every stored day).
    pub async fn daily_stats(
        &self,
        vin: Arc<str>,
        p: &HashMap<String, String>,
    ) -> Result<DailyStats> {
        let day = |name: &str, default: i32| -> Result<i32> {
            match p.get(name) {
                None => Ok(default),
                Some(s) => parse_civil_date(s)
                    .ok_or_else(|| bad(format!("{name} must be a date YYYY-MM-DD, got {s:?}"))),
            }
        };
        // Defaults every store can hold as a date (PostgreSQL refuses
        // 1970-01-01 ± i32::MAX days): statistics are kept per day of receipt,
        // never before 1970, and 9999-12-31 is epoch day 2,932,896.
        let (first, last) = (day("from", 0)?, day("to", 2_932_896)?);
        if first > last {
            return Err(bad("from must not be after to"));
        }
        let days = self
            .store
            .daily_stats(vin.clone(), first, last)
            .await?
            .ok_or_else(|| QueryError::UnknownVehicle(vin.to_string()))?;
        Ok(DailyStats {
            vin: vin.to_string(),
            days: days
                .into_iter()
                .map(|d| DayJson {
                    day: civil_date(d.day),
                    readings: d.counters.readings,
                    fields_total: d.counters.fields_total,
                    fields_transmitted: d.counters.fields_transmitted,
                    fields_skipped: d.counters.fields_skipped,
                    compression_ratio: d.counters.ratio(),
                })
                .collect(),
        })
    }

    /// Totals over every vehicle, from the stored daily statistics.
    pub async fn fleet_stats(&self) -> Result<FleetStats> {
        let totals = self.store.totals().await?;
        let mut c = Counters::default();
        for t in &totals {
            c.add(&t.counters);
        }
        Ok(FleetStats {
            vehicles: totals.len() as u64,
            readings: c.readings,
            fields_total: c.fields_total,
            fields_transmitted: c.fields_transmitted,
            fields_skipped: c.fields_skipped,
            compression_ratio: c.ratio(),
        })
    }
}

fn cursor_of(r: &TelemetryRow) -> HistoryCursor {
    HistoryCursor {
        ts: r.ts_ms,
        session: r.session_id as i64,
        seq: r.seq as i64,
    }
}

/// One CSV line: empty fields for nulls, transmitted signals joined by `|`.
fn csv_line(out: &mut String, r: &TelemetryRow, signals: &Signals) {
    use std::fmt::Write as _;
    let _ = write!(out, "{},{:016x},{}", r.ts_ms, r.session_id, r.seq);
    for i in 0..signals.len() {
        out.push(',');
        if let Some(v) = r.values.get(i).copied().flatten() {
            let _ = write!(out, "{v}");
        }
    }
    out.push(',');
    let mut first = true;
    for (i, name) in signals.names().iter().enumerate() {
        if r.transmitted & (1 << i) != 0 {
            if !first {
                out.push('|');
            }
            out.push_str(name);
            first = false;
        }
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        let c = HistoryCursor {
            ts: 1_700_000_000_123,
            session: -5,
            seq: 42,
        };
        assert_eq!(decode_history_cursor(&encode_history_cursor(c)).unwrap(), c);
        for bad in ["", "zz", "31", "312e322e", "312e322e332e34"] {
            assert!(decode_history_cursor(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn history_parameters_are_checked() {
        let ok = HistoryParams::parse(&params(&[("from", "0"), ("to", "1000")])).unwrap();
        assert_eq!(
            (ok.limit, ok.step, ok.format),
            (DEFAULT_LIMIT, None, Format::Json)
        );
        let refused = [
            vec![("to", "1")],
            vec![("from", "1")],
            vec![("from", "5"), ("to", "5")],
            vec![("from", "x"), ("to", "5")],
            vec![("from", "0"), ("to", "5"), ("limit", "0")],
            vec![("from", "0"), ("to", "5"), ("limit", "10001")],
            vec![("from", "0"), ("to", "5"), ("step", "0")],
            vec![("from", "0"), ("to", "5"), ("format", "xml")],
            vec![("from", "0"), ("to", "5"), ("step", "1"), ("format", "csv")],
            // 10,001 one-ms buckets.
            vec![("from", "0"), ("to", "10001"), ("step", "1")],
        ];
        for kv in refused {
            assert!(HistoryParams::parse(&params(&kv)).is_err(), "{kv:?}");
        }
        let most = HistoryParams::parse(&params(&[("from", "0"), ("to", "10000"), ("step", "1")]));
        assert!(most.is_ok(), "exactly 10,000 buckets");
    }

    #[test]
    fn patches_are_bounded() {
        let long = VehiclePatch {
            model: Some(Some("x".repeat(65))),
            year: None,
        };
        assert!(long.check().is_err());
        let old = VehiclePatch {
            model: None,
            year: Some(Some(1899)),
        };
        assert!(old.check().is_err());
        let fine = VehiclePatch {
            model: Some(Some("é".repeat(64))),
            year: Some(Some(2100)),
        };
        assert!(fine.check().is_ok());
    }
}
