//! The lockstep codec, shared by the edge logger and the cloud.
//!
//! Pure: no I/O, no async, no clock. Bytes → [`CheckedBatch`] → reconstructed
//! readings on the cloud; readings → [`Encoder`] → [`Batch`] bytes on the edge.
//! Both run the same integer predictors ([`SessionState`]), so they stay in
//! lockstep on every platform. `docs/protocol.md` specifies every algorithm.
//!
//! [`Batch`]: lockstep_proto::v1::Batch

pub mod catalog;
pub mod decoder;
pub mod encoder;
pub mod fixed;
pub mod seed;
pub mod state;
pub mod vin;

pub use catalog::{Catalog, Model, Signal};
pub use decoder::{
    BatchOutcome, CheckedBatch, DecodeError, DecodedReading, MAX_SEQ_JUMP, UnknownReason,
};
pub use encoder::{Encoder, EncoderConfig, Reading};
pub use seed::{SeedPredictor, SeedReconstruction};
pub use state::{Frame, SessionState};
pub use vin::{Vin, VinError};
