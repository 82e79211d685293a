//! Long-lived work, each an actor that owns its receivers and runs until a
//! shutdown token fires: the batching [`writer`], the WebSocket fan-out
//! [`hub`], the [`stats`] book and its broadcaster, the [`logger`] child
//! supervisor, the store's [`health`], the downstream [`sinks`] and the
//! storage [`maintenance`] (partitions, retention).

pub mod health;
pub mod hub;
pub mod logger;
pub mod maintenance;
pub mod sinks;
pub mod stats;
pub mod writer;
