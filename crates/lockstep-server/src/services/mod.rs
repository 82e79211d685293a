//! Use cases behind the HTTP layer, free of HTTP types so that they can be
//! driven and tested directly: [`ingest`] (both wire forms, one path).

pub mod ingest;
pub mod limits;
