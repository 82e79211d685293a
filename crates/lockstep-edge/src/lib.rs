//! The Lockstep edge logger as a library: the binary (`main.rs`) only wires
//! the command line to these modules, and tests and benches reuse them.
//!
//! - [`sources`]: recorded drives (Twizy, cycling, generic CSV) → readings, with repairs;
//! - [`sim`]: a deterministic fleet simulator;
//! - [`sender`]: batching, the HTTP sender with retries and resyncs;
//! - [`spool`]: the on-disk spool that makes delivery survive outages and restarts;
//! - [`backoff`]: retry delays;
//! - [`report`]: the codec report (a server-less round trip against baselines);
//! - [`app`]: runs a fleet (simulated or replayed) and summarises it.

pub mod app;
pub mod backoff;
pub mod report;
pub mod sender;
pub mod sim;
pub mod sources;
pub mod spool;
