//! Readers that turn recorded drives into [`Reading`]s in the default
//! catalog's channel order (speed km/h, battery %, power kW, heading deg,
//! latitude, longitude, altitude m), repairing what real logs get wrong.
//!
//! Every row of a file becomes exactly one reading; what had to be repaired is
//! counted in a [`RepairReport`] that the replay and the report print.
//!
//! Repairs, in order:
//! - **corrupt dates** (Twizy, e.g. `90/02/2032`): a row whose date does not
//!   parse or is more than a day away from the file's most common date takes
//!   its date from the previous row (its time of day is kept when it moves
//!   forward by at most an hour, else the previous timestamp + 1 s: the logs
//!   are 1 Hz);
//! - **duplicate seconds** (cycling): timestamps must be strictly increasing.
//!   A run of `k` equal timestamps is spread backwards into the gap before it
//!   (a 2 s step followed by a duplicate becomes two 1 s steps); with no gap to
//!   use, each later copy is nudged by +1 ms;
//! - **heading**: none of the recordings has one, so it is derived from
//!   successive GPS fixes (initial great-circle bearing); while the fix does
//!   not move (GPS held, vehicle stopped) the last bearing is held; before
//!   the first movement it is null.

use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use anyhow::{Context, Result, bail};
use lockstep_codec::Reading;

/// Number of channels of the default catalog, in its order.
pub const CHANNELS: usize = 7;
pub const SPEED: usize = 0;
pub const BATTERY: usize = 1;
pub const POWER: usize = 2;
pub const HEADING: usize = 3;
pub const LATITUDE: usize = 4;
pub const LONGITUDE: usize = 5;
pub const ALTITUDE: usize = 6;

/// The channel names of the default catalog, in order (the generic CSV's column names).
pub const CHANNEL_NAMES: [&str; CHANNELS] = lockstep_codec::catalog::DEFAULT_SIGNALS;

/// Fixed epoch of the cycling ride, whose times are relative
/// ("0 days 00:19:59"): 2017-07-14T02:40:00Z, chosen arbitrarily.
pub const CYCLING_EPOCH_MS: i64 = 1_500_000_000_000;

/// The recorded file formats the edge can replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// RSK Twizy EV dataset: `Date,Time,Soc,Speed,Mode,LAT,LON,ALT,...` at 1 Hz.
    Twizy,
    /// Garmin ride export (`cycling.csv.gz`, gzip or plain): semicircles, m/s, W, timedelta.
    Cycling,
    /// Generic CSV: `timestamp_ms` plus any of the catalog's channel names as columns.
    Csv,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Twizy => "twizy",
            Format::Cycling => "cycling",
            Format::Csv => "csv",
        })
    }
}

/// What a reader had to repair in one file.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RepairReport {
    /// Rows read (= readings produced: every row is kept).
    pub rows: usize,
    /// Rows whose date/time was corrupt and was rebuilt from their neighbours.
    pub repaired_timestamps: usize,
    /// Rows whose timestamp equalled the previous row's and was moved.
    pub duplicate_timestamps: usize,
    /// Rows whose timestamp went backwards and was moved forward.
    pub backwards_timestamps: usize,
    /// Rows with a held GPS fix (same position as the row before).
    pub held_positions: usize,
    /// Rows whose GPS fix was impossible (|lat| > 90, |lon| > 180, exactly 0,0, or one
    /// coordinate exactly 0 more than 100 km from the previous fix — a receiver that lost it):
    /// latitude and longitude left null.
    pub invalid_positions: usize,
    /// Rows where a numeric cell was empty or did not parse (left null).
    pub unparsable_cells: usize,
}

impl RepairReport {
    /// Adds another file's counts.
    pub fn merge(&mut self, o: &RepairReport) {
        self.rows += o.rows;
        self.repaired_timestamps += o.repaired_timestamps;
        self.duplicate_timestamps += o.duplicate_timestamps;
        self.backwards_timestamps += o.backwards_timestamps;
        self.held_positions += o.held_positions;
        self.invalid_positions += o.invalid_positions;
        self.unparsable_cells += o.unparsable_cells;
    }
}

impl fmt::Display for RepairReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} rows kept, {} corrupt timestamps repaired, {} duplicate timestamps spread, {} backward timestamps moved, {} held GPS fixes, {} impossible GPS fixes nulled, {} unparsable cells",
            self.rows,
            self.repaired_timestamps,
            self.duplicate_timestamps,
            self.backwards_timestamps,
            self.held_positions,
            self.invalid_positions,
            self.unparsable_cells
        )
    }
}

/// One recorded drive, ready to replay.
#[derive(Debug, Clone)]
pub struct Trip {
    /// File name, for messages and to derive a stable VIN.
    pub name: String,
    pub readings: Vec<Reading>,
    pub repairs: RepairReport,
}

/// Reads one file in `format`.
pub fn load(format: Format, path: &Path) -> Result<Trip> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader =
        open_maybe_gzip(file).with_context(|| format!("cannot read {}", path.display()))?;
    let (readings, repairs) = match format {
        Format::Twizy => parse_twizy(reader),
        Format::Cycling => parse_cycling(reader),
        Format::Csv => parse_csv(reader),
    }
    .with_context(|| format!("cannot parse {} as {format}", path.display()))?;
    Ok(Trip {
        name,
        readings,
        repairs,
    })
}

/// Wraps `r` in a gzip decoder when it starts with the gzip magic bytes.
fn open_maybe_gzip(r: impl Read + 'static) -> std::io::Result<Box<dyn Read>> {
    let mut br = BufReader::new(r);
    let gz = br.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    Ok(if gz {
        Box::new(flate2::read::MultiGzDecoder::new(br))
    } else {
        Box::new(br)
    })
}

fn csv_reader(r: impl Read) -> csv::Reader<impl Read> {
    csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(r)
}

/// Finds a column by case-insensitive name.
fn column(headers: &csv::StringRecord, name: &str) -> Result<usize> {
    headers
        .iter()
        .position(|h| h.eq_ignore_ascii_case(name))
        .with_context(|| {
            format!(
                "no column {name:?} (columns: {})",
                headers.iter().collect::<Vec<_>>().join(",")
            )
        })
}

/// Parses a float cell; empty or unparsable → `None` (counted).
fn num(rec: &csv::StringRecord, i: usize, bad: &mut usize) -> Option<f64> {
    match rec.get(i).map(str::trim) {
        None | Some("") => {
            *bad += 1;
            None
        }
        Some(s) => match s.parse::<f64>() {
            Ok(v) if v.is_finite() => Some(v),
            _ => {
                *bad += 1;
                None
            }
        },
    }
}

/// Twizy CSV: `Date` (M/D/Y), `Time` (H:M:S), `Soc`, `Speed`, `LAT`, `LON`, `ALT`.
/// Local time of the recording is taken as UTC (the files carry no zone).
pub fn parse_twizy(r: impl Read) -> Result<(Vec<Reading>, RepairReport)> {
    let mut rdr = csv_reader(r);
    let h = rdr.headers()?.clone();
    let (c_date, c_time, c_soc, c_speed) = (
        column(&h, "Date")?,
        column(&h, "Time")?,
        column(&h, "Soc")?,
        column(&h, "Speed")?,
    );
    let (c_lat, c_lon, c_alt) = (column(&h, "LAT")?, column(&h, "LON")?, column(&h, "ALT")?);
    let mut rep = RepairReport::default();
    let mut stamps = Vec::new();
    let mut rows = Vec::new();
    for rec in rdr.records() {
        let rec = rec?;
        let date = rec.get(c_date).and_then(parse_mdy);
        let time = rec.get(c_time).and_then(parse_hms);
        stamps.push((date, time));
        let mut v = vec![None; CHANNELS];
        v[SPEED] = num(&rec, c_speed, &mut rep.unparsable_cells);
        v[BATTERY] = num(&rec, c_soc, &mut rep.unparsable_cells);
        v[LATITUDE] = num(&rec, c_lat, &mut rep.unparsable_cells);
        v[LONGITUDE] = num(&rec, c_lon, &mut rep.unparsable_cells);
        v[ALTITUDE] = num(&rec, c_alt, &mut rep.unparsable_cells);
        rows.push(v);
    }
    if rows.is_empty() {
        bail!("no rows");
    }
    let ts = repair_dates(&stamps, &mut rep);
    Ok(finish(ts, rows, rep))
}

/// Cycling CSV (Garmin export): `position_lat`, `position_long` (semicircles),
/// `altitude` (m), `power` (W), `speed` (m/s), `time` (timedelta from the start).
pub fn parse_cycling(r: impl Read) -> Result<(Vec<Reading>, RepairReport)> {
    let mut rdr = csv_reader(r);
    let h = rdr.headers()?.clone();
    let (c_lat, c_lon, c_alt) = (
        column(&h, "position_lat")?,
        column(&h, "position_long")?,
        column(&h, "altitude")?,
    );
    let (c_pow, c_speed, c_time) = (
        column(&h, "power")?,
        column(&h, "speed")?,
        column(&h, "time")?,
    );
    let mut rep = RepairReport::default();
    let mut ts = Vec::new();
    let mut rows = Vec::new();
    let semi = |v: f64| v * 180.0 / 2f64.powi(31);
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec?;
        let t = rec
            .get(c_time)
            .and_then(parse_timedelta_ms)
            .with_context(|| format!("row {}: bad time {:?}", i + 2, rec.get(c_time)))?;
        ts.push(CYCLING_EPOCH_MS + t);
        let mut v = vec![None; CHANNELS];
        v[SPEED] = num(&rec, c_speed, &mut rep.unparsable_cells).map(|ms| ms * 3.6);
        v[POWER] = num(&rec, c_pow, &mut rep.unparsable_cells).map(|w| w / 1000.0);
        v[LATITUDE] = num(&rec, c_lat, &mut rep.unparsable_cells).map(semi);
        v[LONGITUDE] = num(&rec, c_lon, &mut rep.unparsable_cells).map(semi);
        v[ALTITUDE] = num(&rec, c_alt, &mut rep.unparsable_cells);
        rows.push(v);
    }
    if rows.is_empty() {
        bail!("no rows");
    }
    Ok(finish(ts, rows, rep))
}

/// Generic CSV: a `timestamp_ms` column (Unix epoch, ms) and any of
/// [`CHANNEL_NAMES`] as columns (in any order; missing columns are null,
/// empty cells are null, other columns are ignored). A `heading` column is
/// used as is; without one, heading is derived from the positions.
pub fn parse_csv(r: impl Read) -> Result<(Vec<Reading>, RepairReport)> {
    let mut rdr = csv_reader(r);
    let h = rdr.headers()?.clone();
    let c_ts = column(&h, "timestamp_ms")?;
    let cols: Vec<Option<usize>> = CHANNEL_NAMES
        .iter()
        .map(|n| h.iter().position(|x| x.eq_ignore_ascii_case(n)))
        .collect();
    if cols.iter().all(Option::is_none) {
        bail!(
            "no catalog column; expected some of {}",
            CHANNEL_NAMES.join(",")
        );
    }
    let mut rep = RepairReport::default();
    let mut ts = Vec::new();
    let mut rows = Vec::new();
    for (i, rec) in rdr.records().enumerate() {
        let rec = rec?;
        let t = rec
            .get(c_ts)
            .and_then(|s| s.parse::<f64>().ok())
            .with_context(|| format!("row {}: bad timestamp_ms {:?}", i + 2, rec.get(c_ts)))?;
        ts.push(t.round() as i64);
        let mut v = vec![None; CHANNELS];
        for (ch, c) in cols.iter().enumerate() {
            if let Some(c) = c {
                // Empty cells are legitimate nulls in the generic form: don't count them.
                if rec.get(*c).is_some_and(|s| !s.is_empty()) {
                    v[ch] = num(&rec, *c, &mut rep.unparsable_cells);
                }
            }
        }
        rows.push(v);
    }
    if rows.is_empty() {
        bail!("no rows");
    }
    let derive = cols[HEADING].is_none();
    let mut out = finish_inner(ts, rows, rep, derive);
    out.1.held_positions = if derive { out.1.held_positions } else { 0 };
    Ok(out)
}

fn finish(
    ts: Vec<i64>,
    rows: Vec<Vec<Option<f64>>>,
    rep: RepairReport,
) -> (Vec<Reading>, RepairReport) {
    finish_inner(ts, rows, rep, true)
}

/// Makes timestamps strictly increasing, derives heading, builds readings.
fn finish_inner(
    mut ts: Vec<i64>,
    mut rows: Vec<Vec<Option<f64>>>,
    mut rep: RepairReport,
    derive_heading: bool,
) -> (Vec<Reading>, RepairReport) {
    rep.rows = rows.len();
    strictly_increasing(&mut ts, &mut rep);
    rep.held_positions = 0;
    let mut last_fix: Option<(f64, f64)> = None;
    let mut bearing_held: Option<f64> = None;
    for row in rows.iter_mut() {
        if let (Some(la), Some(lo)) = (row[LATITUDE], row[LONGITUDE])
            && (la.abs() > 90.0
                || lo.abs() > 180.0
                || (la == 0.0 && lo == 0.0)
                || ((la == 0.0 || lo == 0.0) && last_fix.is_some_and(|p| far_jump(p, (la, lo)))))
        {
            rep.invalid_positions += 1;
            row[LATITUDE] = None;
            row[LONGITUDE] = None;
        }
        if let (Some(la), Some(lo)) = (row[LATITUDE], row[LONGITUDE]) {
            if let Some((pla, plo)) = last_fix {
                if pla == la && plo == lo {
                    rep.held_positions += 1;
                } else {
                    bearing_held = Some(bearing_deg(pla, plo, la, lo));
                }
            }
            last_fix = Some((la, lo));
        }
        if derive_heading {
            row[HEADING] = bearing_held;
        }
    }
    let readings = ts
        .into_iter()
        .zip(rows)
        .map(|(timestamp_ms, values)| Reading {
            timestamp_ms,
            values,
        })
        .collect();
    (readings, rep)
}

/// Spreads runs of equal timestamps backwards into the gap before them, then
/// forces strict increase (+1 ms) for anything still out of order.
pub fn strictly_increasing(ts: &mut [i64], rep: &mut RepairReport) {
    let mut i = 0;
    while i < ts.len() {
        let mut j = i + 1;
        while j < ts.len() && ts[j] == ts[i] {
            j += 1;
        }
        let k = (j - i) as i64;
        if k > 1 {
            rep.duplicate_timestamps += (k - 1) as usize;
            let s = ts[i];
            if i > 0 && ts[i - 1] < s {
                // Spread the k copies over (prev, s]: step at most 1 s.
                let step = ((s - ts[i - 1]) / k).min(1000);
                for (n, t) in ts[i..j].iter_mut().enumerate() {
                    *t = s - (k - 1 - n as i64) * step;
                }
            }
        }
        i = j;
    }
    for i in 1..ts.len() {
        if ts[i] <= ts[i - 1] {
            if ts[i] < ts[i - 1] {
                rep.backwards_timestamps += 1;
            }
            ts[i] = ts[i - 1] + 1;
        }
    }
}

/// Turns (date, time of day) pairs into timestamps, repairing corrupt dates
/// from the previous row (see the module documentation).
fn repair_dates(stamps: &[(Option<i64>, Option<i64>)], rep: &mut RepairReport) -> Vec<i64> {
    const DAY: i64 = 86_400_000;
    // The file's most common date is the reference for plausibility.
    let mut counts: Vec<(i64, usize)> = Vec::new();
    for d in stamps.iter().filter_map(|s| s.0) {
        match counts.iter_mut().find(|c| c.0 == d) {
            Some(c) => c.1 += 1,
            None => counts.push((d, 1)),
        }
    }
    let modal = counts.iter().max_by_key(|c| c.1).map(|c| c.0);
    let mut out: Vec<i64> = Vec::with_capacity(stamps.len());
    for (i, &(date, time)) in stamps.iter().enumerate() {
        let plausible = matches!((date, modal), (Some(d), Some(m)) if (d - m).abs() <= DAY);
        if let (true, Some(d), Some(t)) = (plausible, date, time) {
            out.push(d + t);
            continue;
        }
        rep.repaired_timestamps += 1;
        let prev = out.last().copied().or_else(|| {
            // First row corrupt: look ahead for the first good one, step back 1 s per row.
            stamps[i..]
                .iter()
                .enumerate()
                .find_map(|(k, s)| match (s.0, s.1, modal) {
                    (Some(d), Some(t), Some(m)) if (d - m).abs() <= DAY => {
                        Some(d + t - (k as i64 + 1) * 1000)
                    }
                    _ => None,
                })
        });
        let repaired = match (prev, time) {
            (Some(p), Some(t)) => {
                let day = p.div_euclid(DAY) * DAY;
                let mut c = day + t;
                if c <= p - DAY / 2 {
                    c += DAY; // past midnight
                }
                if c > p && c - p <= 3_600_000 {
                    c
                } else {
                    p + 1000
                }
            }
            (Some(p), None) => p + 1000,
            (None, Some(t)) => modal.unwrap_or(0) + t,
            (None, None) => i as i64 * 1000,
        };
        out.push(repaired);
    }
    out
}

/// `M/D/Y` → ms of midnight UTC; `None` when not a real date.
pub fn parse_mdy(s: &str) -> Option<i64> {
    let mut it = s.trim().split('/');
    let (m, d, y): (i64, i64, i64) = (
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    );
    if it.next().is_some() || !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return None;
    }
    Some(days_from_civil(y, m, d) * 86_400_000)
}

/// `H:M:S` → ms since midnight.
pub fn parse_hms(s: &str) -> Option<i64> {
    let mut it = s.trim().split(':');
    let (h, m): (i64, i64) = (it.next()?.parse().ok()?, it.next()?.parse().ok()?);
    let sec: f64 = it.next()?.parse().ok()?;
    if it.next().is_some()
        || !(0..24).contains(&h)
        || !(0..60).contains(&m)
        || !(0.0..61.0).contains(&sec)
    {
        return None;
    }
    Some((h * 3600 + m * 60) * 1000 + (sec * 1000.0).round() as i64)
}

/// pandas timedelta text `"0 days 00:19:59"` (optionally with fractional seconds) → ms.
pub fn parse_timedelta_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    let (days, rest) = match s.split_once(" days ").or_else(|| s.split_once(" day ")) {
        Some((d, r)) => (d.trim().parse::<i64>().ok()?, r),
        None => (0, s),
    };
    Some(days * 86_400_000 + parse_hms(rest)?)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Initial great-circle bearing from one fix to another, degrees in [0, 360).
pub fn bearing_deg(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dl = (lon2 - lon1).to_radians();
    let y = dl.sin() * p2.cos();
    let x = p1.cos() * p2.sin() - p1.sin() * p2.cos() * dl.cos();
    let b = y.atan2(x).to_degrees().rem_euclid(360.0);
    if b >= 360.0 { 0.0 } else { b }
}

/// Whether two fixes are more than 100 km apart (equirectangular; only used
/// to spot a zeroed coordinate, so precision does not matter).
fn far_jump(a: (f64, f64), b: (f64, f64)) -> bool {
    let k = 111.32; // km per degree
    let dy = (b.0 - a.0) * k;
    let dx = (b.1 - a.1) * k * a.0.to_radians().cos();
    dx * dx + dy * dy > 100.0 * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn testdata(rel: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../testdata")
            .join(rel)
    }

    #[test]
    fn channel_order_is_the_default_catalogs() {
        let cat = lockstep_codec::Catalog::default_v1();
        let names: Vec<&str> = cat.signals().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, CHANNEL_NAMES);
    }

    #[test]
    fn dates_and_times_parse() {
        assert_eq!(parse_mdy("1/1/1970"), Some(0));
        assert_eq!(parse_mdy("03/29/2021"), Some(1_616_976_000_000));
        assert_eq!(parse_mdy("90/02/2032"), None);
        assert_eq!(parse_mdy("03/00/2000"), None);
        assert_eq!(parse_mdy("2/29/2021"), None);
        assert_eq!(
            parse_hms("11:13:45"),
            Some((11 * 3600 + 13 * 60 + 45) * 1000)
        );
        assert_eq!(parse_timedelta_ms("0 days 00:19:59"), Some(1199 * 1000));
        assert_eq!(parse_timedelta_ms("1 days 00:00:01.5"), Some(86_401_500));
    }

    #[test]
    fn corrupt_dates_are_repaired_from_neighbours() {
        let csv = "Date,Time,Soc,Speed,Mode,LAT,LON,ALT\n\
            03/29/2021,12:08:05,51.6,7.1,D,33.981636,-6.830635,86\n\
            90/02/2032,12:08:06,51.6,7.1,D,33.981636,-6.830635,86\n\
            90/02/2032,12:08:07,51.6,7.1,D,33.982014,-6.829762,86\n\
            03/29/2021,12:08:08,51.6,0,N,33.982040,-6.829744,84\n";
        let (r, rep) = parse_twizy(csv.as_bytes()).unwrap();
        assert_eq!(rep.rows, 4);
        assert_eq!(rep.repaired_timestamps, 2);
        let base = parse_mdy("03/29/2021").unwrap() + parse_hms("12:08:05").unwrap();
        let ts: Vec<i64> = r.iter().map(|x| x.timestamp_ms).collect();
        assert_eq!(ts, vec![base, base + 1000, base + 2000, base + 3000]);
        assert_eq!(rep.held_positions, 1);
        // Heading: null until the fix first moves, then the bearing (north-east here).
        assert_eq!(r[0].values[HEADING], None);
        assert_eq!(r[1].values[HEADING], None);
        let h = r[2].values[HEADING].unwrap();
        assert!((60.0..70.0).contains(&h), "{h}");
        assert_eq!(r[0].values[POWER], None);
        assert_eq!(r[0].values[SPEED], Some(7.1));
    }

    #[test]
    fn repairs_cross_midnight_and_a_corrupt_first_row() {
        let csv = "Date,Time,Soc,Speed,LAT,LON,ALT\n\
            13/13/2021,23:59:58,50,1,34,-6,10\n\
            1/1/2021,23:59:59,50,1,34,-6,10\n\
            90/02/2032,00:00:00,50,1,34,-6,10\n\
            1/2/2021,00:00:01,50,1,34,-6,10\n";
        let (r, rep) = parse_twizy(csv.as_bytes()).unwrap();
        assert_eq!(rep.repaired_timestamps, 2);
        let t0 = parse_mdy("1/1/2021").unwrap() + parse_hms("23:59:58").unwrap();
        let ts: Vec<i64> = r.iter().map(|x| x.timestamp_ms).collect();
        assert_eq!(ts, vec![t0, t0 + 1000, t0 + 2000, t0 + 3000]);
    }

    #[test]
    fn duplicate_seconds_spread_into_the_gap() {
        let mut rep = RepairReport::default();
        let mut ts = vec![0, 1000, 3000, 3000, 4000, 5000, 5000, 5000];
        strictly_increasing(&mut ts, &mut rep);
        assert_eq!(
            ts,
            vec![0, 1000, 2000, 3000, 4000, 5000 - 666, 5000 - 333, 5000]
        );
        assert_eq!(rep.duplicate_timestamps, 3);
        let mut ts = vec![7, 7, 5];
        strictly_increasing(&mut ts, &mut rep);
        assert_eq!(ts, vec![7, 8, 9]);
        assert_eq!(rep.backwards_timestamps, 1);
    }

    #[test]
    fn bearings_point_the_right_way() {
        assert!((bearing_deg(0.0, 0.0, 1.0, 0.0) - 0.0).abs() < 1e-9);
        assert!((bearing_deg(0.0, 0.0, 0.0, 1.0) - 90.0).abs() < 1e-9);
        assert!((bearing_deg(0.0, 0.0, -1.0, 0.0) - 180.0).abs() < 1e-9);
        assert!((bearing_deg(0.0, 0.0, 0.0, -1.0) - 270.0).abs() < 1e-9);
    }

    #[test]
    fn real_twizy_trip_keeps_every_row_and_repairs_the_dates() {
        let trip = load(Format::Twizy, &testdata("twizy-ev/T1_06_30_2021_1.csv")).unwrap();
        assert_eq!(trip.readings.len(), 5200);
        assert_eq!(trip.repairs.rows, 5200);
        assert_eq!(trip.repairs.repaired_timestamps, 34);
        assert!(
            trip.readings
                .windows(2)
                .all(|w| w[1].timestamp_ms > w[0].timestamp_ms)
        );
        // 1 Hz throughout, the repaired rows included.
        assert!(
            trip.readings
                .windows(2)
                .all(|w| w[1].timestamp_ms - w[0].timestamp_ms == 1000)
        );
        assert!(trip.repairs.held_positions > 4000, "{}", trip.repairs);
        assert!(
            trip.readings
                .iter()
                .all(|r| r.values[SPEED].is_some() && r.values[POWER].is_none())
        );
    }

    #[test]
    fn a_zeroed_latitude_is_not_a_fix() {
        // T1_06_30_2021_2.csv has rows with latitude 0.0 and a normal longitude.
        let trip = load(Format::Twizy, &testdata("twizy-ev/T1_06_30_2021_2.csv")).unwrap();
        assert!(trip.repairs.invalid_positions > 0);
        assert!(
            trip.readings
                .iter()
                .all(|r| r.values[LATITUDE].is_none_or(|la| la != 0.0))
        );
    }

    #[test]
    fn impossible_fixes_are_nulled() {
        let trip = load(Format::Twizy, &testdata("twizy-ev/T3_06_07_2021.csv")).unwrap();
        assert_eq!(trip.repairs.invalid_positions, 3);
        let bad: Vec<_> = trip
            .readings
            .iter()
            .filter(|r| r.values[LONGITUDE].is_none())
            .collect();
        assert_eq!(bad.len(), 3);
        assert!(
            bad.iter()
                .all(|r| r.values[LATITUDE].is_none() && r.values[SPEED].is_some())
        );
        assert!(
            trip.readings
                .iter()
                .all(|r| r.values[LONGITUDE].is_none_or(|lo| lo.abs() < 10.0))
        );
    }

    #[test]
    fn real_twizy_trip_with_2032_dates() {
        let trip = load(Format::Twizy, &testdata("twizy-ev/T1_03_29_2021.csv")).unwrap();
        assert_eq!(trip.readings.len(), 6189);
        assert_eq!(trip.repairs.repaired_timestamps, 10);
        assert!(
            trip.readings
                .windows(2)
                .all(|w| w[1].timestamp_ms - w[0].timestamp_ms == 1000)
        );
    }

    #[test]
    fn real_cycling_ride_parses_and_is_strictly_increasing() {
        let trip = load(Format::Cycling, &testdata("cycling/cycling.csv.gz")).unwrap();
        assert_eq!(trip.readings.len(), 4391);
        assert_eq!(trip.repairs.duplicate_timestamps, 63);
        assert!(
            trip.readings
                .windows(2)
                .all(|w| w[1].timestamp_ms > w[0].timestamp_ms)
        );
        let r = &trip.readings[1];
        assert_eq!(r.timestamp_ms, CYCLING_EPOCH_MS + 1000);
        assert!((r.values[SPEED].unwrap() - 1.996 * 3.6).abs() < 1e-9);
        assert!((r.values[POWER].unwrap() - 0.058).abs() < 1e-12);
        let lat = r.values[LATITUDE].unwrap();
        assert!((lat - (-138_827_680.0 * 180.0 / 2f64.powi(31))).abs() < 1e-12);
        assert!(
            trip.readings
                .iter()
                .filter(|r| r.values[HEADING].is_some())
                .count()
                > 4000
        );
        assert!(r.values[BATTERY].is_none());
    }

    #[test]
    fn generic_csv_reads_named_columns() {
        let csv = "timestamp_ms,speed,battery,extra,heading\n1000,10.5,80,x,90\n2000,,79.9,y,\n";
        let (r, rep) = parse_csv(csv.as_bytes()).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(
            r[0].values,
            vec![Some(10.5), Some(80.0), None, Some(90.0), None, None, None]
        );
        assert_eq!(r[1].values[SPEED], None);
        assert_eq!(r[1].values[HEADING], None);
        assert_eq!(rep.unparsable_cells, 0);
        assert!(parse_csv("time,speed\n1,2\n".as_bytes()).is_err());
    }

    proptest::proptest! {
        #[test]
        fn timestamps_always_end_strictly_increasing(steps in proptest::collection::vec(-3000i64..5000, 1..200)) {
            let mut t = 1_000_000i64;
            let mut ts: Vec<i64> = steps.iter().map(|s| { t += (s / 1000) * 1000; t }).collect();
            let before = ts.clone();
            let mut rep = RepairReport::default();
            strictly_increasing(&mut ts, &mut rep);
            proptest::prop_assert_eq!(ts.len(), before.len());
            proptest::prop_assert!(ts.windows(2).all(|w| w[1] > w[0]));
            if before.windows(2).all(|w| w[1] > w[0]) {
                proptest::prop_assert_eq!(ts, before);
            }
        }
    }
}
