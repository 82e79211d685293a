//! Long-lived work, each an actor that owns its receivers and runs until a
//! shutdown token fires: the batching [`writer`], the WebSocket fan-out
//! [`hub`], the [`stats`] book and its broadcaster, the [`logger`] child
//! supervisor and its cluster lease, the store's [`health`], the downstream
//! [`sinks`], the storage [`maintenance`] (partitions, retention) and the
//! Redis [`bridge`] that joins several instances' live streams.

pub mod bridge;
pub mod health;
pub mod hub;
pub mod logger;
pub mod logger_lease;
pub mod maintenance;
pub mod sinks;
pub mod stats;
pub mod writer;
