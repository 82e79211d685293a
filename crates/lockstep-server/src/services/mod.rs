//! Use cases behind the HTTP layer, free of HTTP types so that they can be
//! driven and tested directly: [`ingest`] (both wire forms, one path) and
//! [`query`] (history, vehicles and statistics read back, with their limits),
//! [`live`] (the history new WebSocket clients get first).

pub mod ingest;
pub mod limits;
pub mod live;
pub mod query;
