//! The Lockstep edge logger as a library: the binary (`main.rs`) only calls
//! [`cli::run`], and tests, benches and other binaries reuse the modules.
//!
//! - [`cli`]: the command line (`cli::run(args) -> ExitCode`);
//! - [`sources`]: recorded drives (Twizy, cycling, generic CSV) → readings, with repairs;
//! - [`sim`]: a deterministic fleet simulator;
//! - [`sender`]: batching, the per-vehicle sender actor with retries, resyncs and
//!   413 splits, the HTTP client (token, TLS) and failover between servers;
//! - [`spool`]: the on-disk spool that makes delivery survive outages and restarts;
//! - [`backoff`]: retry delays;
//! - [`report`]: the codec report (a server-less round trip against baselines);
//! - [`app`]: runs a fleet (simulated or replayed) and summarises it.

pub mod app;
pub mod backoff;
pub mod cli;
pub mod report;
pub mod sender;
pub mod sim;
pub mod sources;
pub mod spool;
