//! Domain types shared by ingest, the writer, the store and the hub.

use std::sync::Arc;

use serde::Serialize;

/// The catalog's signal names in channel order: the one source of the
/// `telemetry_data` value columns (both stores) and of the JSON field names
/// of a reading. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signals(Arc<[Arc<str>]>);

impl Signals {
    pub fn from_catalog(catalog: &lockstep_codec::Catalog) -> Self {
        Self(
            catalog
                .signals()
                .iter()
                .map(|s| Arc::from(s.name.as_str()))
                .collect(),
        )
    }

    pub fn names(&self) -> &[Arc<str>] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.0.iter().position(|n| &**n == name)
    }
}

/// `session_id` of readings that arrived in the seed wire form.
pub const SEED_SESSION: u64 = 0;

/// `session_id` of readings imported from the original server's PostgreSQL
/// tables (their `seq` is the original row id, so every row is kept even
/// where timestamps repeat).
pub const IMPORTED_SESSION: u64 = 1;

/// One reconstructed reading as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryRow {
    pub vin: Arc<str>,
    /// Random per edge session; 0 for the seed form. Stored as the BIGINT with
    /// the same 64 bits.
    pub session_id: u64,
    /// Sequence number within the session; the timestamp for the seed form.
    pub seq: u64,
    /// Unix epoch milliseconds, as sent.
    pub ts_ms: i64,
    /// Per catalog channel ([`Signals`]), in its unit; `None` = null.
    pub values: Vec<Option<f64>>,
    /// Bit i set = channel i was transmitted (else reconstructed or null).
    pub transmitted: u64,
    pub keyframe: bool,
}

/// A session's codec state, committed with its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub vin: Arc<str>,
    pub session_id: u64,
    pub next_seq: u64,
    pub state: Vec<u8>,
    /// The stored version this state was decoded against (0: none stored).
    /// The commit stores `version + 1` only if the stored version is still
    /// this one (compare-and-set), else the batch fails with
    /// `StoreError::Stale` naming the session.
    pub version: u64,
}

/// Counters of one request, added to the vehicle's row of the day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub readings: u64,
    pub fields_total: u64,
    pub fields_transmitted: u64,
    pub fields_skipped: u64,
    pub bytes_received: u64,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.readings += o.readings;
        self.fields_total += o.fields_total;
        self.fields_transmitted += o.fields_transmitted;
        self.fields_skipped += o.fields_skipped;
        self.bytes_received += o.bytes_received;
    }

    /// Skipped fields / non-null fields, 0..1.
    pub fn ratio(&self) -> f64 {
        ratio(self.fields_skipped, self.fields_total)
    }

    /// Counts one reading's fields: non-null values are either transmitted or skipped.
    pub fn count_reading(&mut self, values: &[Option<f64>], transmitted: u64) {
        self.readings += 1;
        for (i, v) in values.iter().enumerate() {
            if v.is_some() {
                self.fields_total += 1;
                if transmitted & (1 << i) != 0 {
                    self.fields_transmitted += 1;
                } else {
                    self.fields_skipped += 1;
                }
            }
        }
    }
}

pub fn ratio(skipped: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        skipped as f64 / total as f64
    }
}

/// Days since 1970-01-01 (UTC) of a Unix-ms instant.
pub fn epoch_day(ms: i64) -> i32 {
    ms.div_euclid(86_400_000) as i32
}

/// `YYYY-MM-DD` of an epoch day (proleptic Gregorian, H. Hinnant's civil_from_days).
pub fn civil_date(day: i32) -> String {
    let z = i64::from(day) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// The epoch day of a `YYYY-MM-DD` date (H. Hinnant's days_from_civil);
/// `None` unless it is a valid calendar date in years 0000..=9999.
pub fn parse_civil_date(s: &str) -> Option<i32> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        s.get(r.clone())
            .filter(|t| t.bytes().all(|c| c.is_ascii_digit()))?
            .parse()
            .ok()
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in_month = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&m) || d < 1 || d > days_in_month[(m - 1) as usize] {
        return None;
    }
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146_097 + doe - 719_468) as i32)
}

/// Wall clock, Unix ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(epoch_day(1_709_251_200_000)), "2024-03-01");
        assert_eq!(civil_date(-1), "1969-12-31");
    }

    #[test]
    fn civil_dates_parse_back() {
        for day in [0, 1, 365, 19_783, 20_000, 2_932_896] {
            assert_eq!(parse_civil_date(&civil_date(day)), Some(day), "day {day}");
        }
        assert_eq!(parse_civil_date("2024-02-29"), Some(19_782));
        for bad in [
            "2023-02-29",
            "2024-13-01",
            "2024-00-10",
            "2024-1-01",
            "+024-01-01",
            "",
        ] {
            assert_eq!(parse_civil_date(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn counters_split_fields() {
        let mut c = Counters::default();
        c.count_reading(&[Some(1.0), None, Some(2.0)], 0b001);
        assert_eq!(
            (
                c.readings,
                c.fields_total,
                c.fields_transmitted,
                c.fields_skipped
            ),
            (1, 2, 1, 1)
        );
        assert_eq!(c.ratio(), 0.5);
    }
}
