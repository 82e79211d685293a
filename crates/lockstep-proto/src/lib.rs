//! The wire contract of Lockstep, generated from `proto/` at build time.
//!
//! - [`telemetry::TelemetryReading`]: the seed wire form, byte-compatible with
//!   existing edge loggers (one reading per POST).
//! - [`v1::Batch`]: the lockstep form, a batch of readings of one vehicle
//!   session with sequence numbers, keyframes and a state checksum.
//!
//! These types stay at the boundary: the codec converts them into domain types.

/// The seed wire form (package `telemetry`).
pub mod telemetry {
    include!(concat!(env!("OUT_DIR"), "/telemetry.rs"));
}

/// The lockstep wire form, version 1 (package `lockstep.v1`).
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/lockstep.v1.rs"));
}

pub use prost::Message;

/// Content type of the seed form (one `TelemetryReading`).
pub const CONTENT_TYPE_SEED: &str = "application/x-protobuf";
/// Content type of the lockstep form (one `v1::Batch`).
pub const CONTENT_TYPE_BATCH: &str = "application/x-lockstep-batch";
