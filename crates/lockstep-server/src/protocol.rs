//! The WebSocket contract: [`ServerMsg`], the one type every sender uses
//! (`{"type": …, "data": …}`), and [`ClientMsg`], what clients may send.
//!
//! `tests/golden/ws_messages.json` holds one example of every server message;
//! the test below checks the Rust side against it and the dashboard's
//! `test/golden.test.ts` runs each through its parser. A change here that the
//! golden file does not show fails the build's tests on both sides.
//! Regenerate after a deliberate change with
//! `LOCKSTEP_BLESS=1 cargo nextest run -p lockstep-server -E 'test(golden)'`.

use std::collections::BTreeMap;

use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};

use crate::model::{Signals, TelemetryRow};

/// Everything the server sends over `/ws`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum ServerMsg {
    /// Right after connecting: the latest stored readings, oldest first, in
    /// one or more consecutive messages of a few KiB each (so no client's
    /// write buffer grows to the size of the whole history).
    History(Vec<ReadingJson>),
    /// One committed reading.
    Telemetry(ReadingJson),
    /// Lifetime statistics, at connect and at most once a second when they change.
    CompressionStats(CompressionStats),
    /// A log line of the server or the logger child.
    Log(LogEntry),
    /// The logger child's status, on every change (same shape as `GET /logger/status`).
    Logger(LoggerStatus),
    /// The client was too slow: this many messages were dropped for it.
    Lagged { dropped: u64 },
    /// Messages from other instances were lost on the way (Redis unreachable,
    /// a full queue, a reading that came after a later one): `missed` is how
    /// many when known, `null` when not (an outage of the bridge).
    Gap {
        missed: Option<u64>,
        reason: GapReason,
    },
}

/// Why a `gap` message was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    /// The connection to Redis was lost; messages of other instances in the
    /// meantime are not coming.
    BridgeDown,
    /// Another instance's messages were dropped (its queue to Redis was full
    /// or a publish failed).
    Dropped,
    /// A reading arrived after a later one of the same vehicle session had
    /// been delivered, and was not delivered.
    Late,
}

impl ServerMsg {
    /// Every `type` tag, in declaration order.
    pub const KINDS: [&'static str; 7] = [
        "history",
        "telemetry",
        "compression_stats",
        "log",
        "logger",
        "lagged",
        "gap",
    ];

    /// The `type` tag (exhaustive: a new variant must be named here and in [`Self::KINDS`]).
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMsg::History(_) => "history",
            ServerMsg::Telemetry(_) => "telemetry",
            ServerMsg::CompressionStats(_) => "compression_stats",
            ServerMsg::Log(_) => "log",
            ServerMsg::Logger(_) => "logger",
            ServerMsg::Lagged { .. } => "lagged",
            ServerMsg::Gap { .. } => "gap",
        }
    }

    /// The JSON text, serialised once per message however many clients get it.
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| {
            tracing::error!(error = %e, kind = self.kind(), "A WebSocket message could not be serialised.");
            format!(r#"{{"type":"{}","data":null}}"#, self.kind())
        })
    }

    /// The history as `history` messages of at most about `max_bytes` each
    /// (one reading larger than that goes alone), oldest first; always at
    /// least one message, empty when there is no history. Each text equals
    /// `ServerMsg::History(chunk).to_text()`; each reading is serialised once.
    pub fn history_chunks(readings: &[ReadingJson], max_bytes: usize) -> Vec<String> {
        const HEAD: &str = r#"{"type":"history","data":["#;
        const TAIL: &str = "]}";
        let mut out = Vec::new();
        let mut text = String::from(HEAD);
        for r in readings {
            let one = serde_json::to_string(r).unwrap_or_else(|e| {
                tracing::error!(error = %e, "A history reading could not be serialised.");
                "null".to_owned()
            });
            let empty = text.len() == HEAD.len();
            if !empty && text.len() + 1 + one.len() + TAIL.len() > max_bytes {
                text.push_str(TAIL);
                out.push(std::mem::replace(&mut text, String::from(HEAD)));
            } else if !empty {
                text.push(',');
            }
            text.push_str(&one);
        }
        text.push_str(TAIL);
        out.push(text);
        out
    }

    /// A `log` message stamped now.
    pub fn log(level: Level, source: &str, message: &str) -> Self {
        ServerMsg::Log(LogEntry {
            level,
            source: source.to_owned(),
            message: message.to_owned(),
            timestamp: crate::model::now_ms(),
        })
    }
}

/// What clients may send.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// Only readings of these VINs from now on (empty or missing: all).
    Subscribe {
        #[serde(default)]
        vins: Option<Vec<String>>,
    },
    StartLogger(StartRequest),
    StopLogger,
}

/// A reading as clients see it: `timestamp`, `vehicle_vin`, one field per
/// catalog signal (named as in the catalog), `transmitted` and
/// `predicted_fields` (signal names), `session_id` (16 hex digits), `seq`.
#[derive(Debug, Clone)]
pub struct ReadingJson {
    pub row: TelemetryRow,
    pub signals: Signals,
}

/// Documented as the catalog-driven `LiveReading` component (see `http::openapi`).
impl utoipa::PartialSchema for ReadingJson {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::Ref::from_schema_name("LiveReading").into()
    }
}

impl utoipa::ToSchema for ReadingJson {
    fn name() -> std::borrow::Cow<'static, str> {
        "LiveReading".into()
    }
}

impl Serialize for ReadingJson {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = &self.row;
        let names = self.signals.names();
        let mut m = s.serialize_map(Some(names.len() + 6))?;
        m.serialize_entry("timestamp", &r.ts_ms)?;
        m.serialize_entry("vehicle_vin", &*r.vin)?;
        let mut transmitted = Vec::new();
        let mut predicted = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let v = r.values.get(i).copied().flatten();
            m.serialize_entry(&**name, &v)?;
            if r.transmitted & (1 << i) != 0 {
                transmitted.push(&**name);
            } else if v.is_some() {
                predicted.push(&**name);
            }
        }
        m.serialize_entry("transmitted", &transmitted)?;
        m.serialize_entry("predicted_fields", &predicted)?;
        m.serialize_entry("session_id", &format!("{:016x}", r.session_id))?;
        m.serialize_entry("seq", &r.seq)?;
        m.end()
    }
}

/// Severity of a [`LogEntry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// `data` of a `log` message.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LogEntry {
    pub level: Level,
    /// `server` or `logger` (the child's output).
    pub source: String,
    pub message: String,
    /// Unix ms.
    pub timestamp: i64,
}

/// `/status` → `compression_stats` (and the head of the WS message): counts
/// of readings and of field values.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Summary {
    /// Readings stored.
    pub total_readings: u64,
    /// Non-null field values stored (= transmitted + skipped).
    pub fields_total: u64,
    /// Field values that travelled on the wire.
    pub transmitted_readings: u64,
    /// Field values the server reconstructed.
    pub skipped_readings: u64,
    /// Skipped / non-null field values, 0..1.
    pub compression_ratio: f64,
}

/// `data` of a `compression_stats` message.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct CompressionStats {
    #[serde(flatten)]
    pub summary: Summary,
    pub bytes_received: u64,
    pub vehicles: BTreeMap<String, VehicleStats>,
}

/// One vehicle's lifetime statistics.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, utoipa::ToSchema)]
pub struct VehicleStats {
    pub readings: u64,
    pub fields_total: u64,
    pub fields_transmitted: u64,
    pub fields_skipped: u64,
    pub bytes_received: u64,
    pub compression_ratio: f64,
}

/// The logger child's status (`GET /logger/status`, WS `logger`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct LoggerStatus {
    pub running: bool,
    pub pid: Option<u32>,
    pub started_at_ms: Option<i64>,
    pub last_exit_code: Option<i32>,
    pub last_run_s: Option<f64>,
}

/// Logger options: `POST /logger/start` body and WS `start_logger`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, utoipa::ToSchema)]
pub struct StartRequest {
    /// Simulated vehicles (simulate mode; default 1).
    pub vehicles: Option<u32>,
    /// Readings per second per vehicle (default 1).
    pub rate: Option<f64>,
    /// Stop after this many seconds (default: run until stopped).
    pub duration_s: Option<f64>,
    /// Recorded files to replay (replay mode, with `format`).
    pub replay: Option<Vec<String>>,
    /// `twizy`, `cycling` or `csv`.
    pub format: Option<String>,
    /// Replay speed factor.
    pub speed: Option<f64>,
    /// Simulation seed.
    pub seed: Option<u64>,
    /// Send as fast as the server acknowledges instead of in real time.
    #[serde(default)]
    pub as_fast_as_possible: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// One example of every message, with fixed values.
    fn examples() -> Vec<ServerMsg> {
        let signals = Signals::from_catalog(&lockstep_codec::Catalog::default_v1());
        let row = TelemetryRow {
            vin: Arc::from("1HGCM82633A004352"),
            session_id: 0x0123_4567_89ab_cdef,
            seq: 42,
            ts_ms: 1_764_000_000_000,
            values: vec![
                Some(50.5),
                Some(80.0),
                Some(-3.25),
                Some(90.0),
                Some(52.52),
                Some(13.405),
                None,
            ],
            transmitted: 0b0000_0101,
            keyframe: false,
        };
        let reading = ReadingJson { row, signals };
        let summary = Summary {
            total_readings: 10,
            fields_total: 60,
            transmitted_readings: 25,
            skipped_readings: 35,
            compression_ratio: 35.0 / 60.0,
        };
        let msgs = vec![
            ServerMsg::History(vec![reading.clone()]),
            ServerMsg::Telemetry(reading),
            ServerMsg::CompressionStats(CompressionStats {
                summary,
                bytes_received: 1234,
                vehicles: BTreeMap::from([(
                    "1HGCM82633A004352".to_owned(),
                    VehicleStats {
                        readings: 10,
                        fields_total: 60,
                        fields_transmitted: 25,
                        fields_skipped: 35,
                        bytes_received: 1234,
                        compression_ratio: 35.0 / 60.0,
                    },
                )]),
            }),
            ServerMsg::Log(LogEntry {
                level: Level::Warn,
                source: "server".into(),
                message: "The store is unreachable.".into(),
                timestamp: 1_764_000_000_500,
            }),
            ServerMsg::Logger(LoggerStatus {
                running: true,
                pid: Some(4242),
                started_at_ms: Some(1_764_000_000_000),
                last_exit_code: None,
                last_run_s: None,
            }),
            ServerMsg::Lagged { dropped: 7 },
            ServerMsg::Gap {
                missed: Some(3),
                reason: GapReason::Dropped,
            },
        ];
        // Every variant once, in order: a new variant must get an example.
        let kinds: Vec<&str> = msgs.iter().map(ServerMsg::kind).collect();
        assert_eq!(kinds, ServerMsg::KINDS);
        msgs
    }

    #[test]
    fn golden_ws_messages() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/ws_messages.json");
        let ours: Vec<serde_json::Value> = examples()
            .iter()
            .map(|m| serde_json::from_str(&m.to_text()).unwrap())
            .collect();
        if std::env::var_os("LOCKSTEP_BLESS").is_some() {
            let text = serde_json::to_string_pretty(&ours).unwrap() + "\n";
            std::fs::write(path, text).unwrap();
        }
        let golden: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(golden.len(), ours.len(), "one golden message per variant");
        for (g, o) in golden.iter().zip(&ours) {
            assert_eq!(g, o, "golden message differs");
        }
    }

    #[test]
    fn history_chunks_are_history_messages_in_order() {
        let ServerMsg::History(one) = examples().remove(0) else {
            unreachable!()
        };
        let readings: Vec<ReadingJson> = (0..10)
            .map(|i| {
                let mut r = one[0].clone();
                r.row.seq = i;
                r
            })
            .collect();
        let whole = ServerMsg::History(readings.clone()).to_text();
        let size = ServerMsg::History(readings[..1].to_vec()).to_text().len();
        for max in [1, size, 3 * size + 2, whole.len(), usize::MAX] {
            let chunks = ServerMsg::history_chunks(&readings, max);
            let mut at = 0;
            for c in &chunks {
                assert!(c.len() <= max.max(size), "{} > {max}", c.len());
                let v: serde_json::Value = serde_json::from_str(c).unwrap();
                let n = v["data"].as_array().unwrap().len();
                assert!(n >= 1);
                assert_eq!(
                    c,
                    &ServerMsg::History(readings[at..at + n].to_vec()).to_text()
                );
                at += n;
            }
            assert_eq!(
                at,
                readings.len(),
                "every reading once, in order (max {max})"
            );
        }
        assert_eq!(ServerMsg::history_chunks(&readings, usize::MAX), [whole]);
        assert_eq!(
            ServerMsg::history_chunks(&[], 100),
            [ServerMsg::History(Vec::new()).to_text()]
        );
    }

    #[test]
    fn client_messages_parse() {
        let m: ClientMsg =
            serde_json::from_str(r#"{"type":"subscribe","vins":["1HGCM82633A004352"]}"#).unwrap();
        assert!(matches!(m, ClientMsg::Subscribe { vins: Some(v) } if v.len() == 1));
        let m: ClientMsg = serde_json::from_str(r#"{"type":"start_logger","vehicles":2}"#).unwrap();
        assert!(matches!(m, ClientMsg::StartLogger(r) if r.vehicles == Some(2)));
        assert!(serde_json::from_str::<ClientMsg>(r#"{"type":"nope"}"#).is_err());
    }
}
