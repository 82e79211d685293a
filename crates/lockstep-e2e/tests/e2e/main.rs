//! End-to-end tests: the real `lockstep-server` and `lockstep-edge` binaries
//! (built by `cargo build --workspace --bins`; a missing one fails the test),
//! each test on its own free port, temp directories and database (a fresh
//! SQLite file, or a fresh PostgreSQL database on 127.0.0.1:5432 dropped at
//! the end). Processes are only ever signalled by the PIDs these tests spawned.
//!
//! - [`logger`]: the server starts and stops the edge over the WebSocket;
//! - [`replay`]: a recorded Twizy trip lands exactly once, within tolerance —
//!   plainly, and across a SIGKILL + restart of the server;
//! - [`chaos`]: both wire forms replayed while server instances are SIGKILLed
//!   and PostgreSQL crashes, is black-holed and reset; a chaos seed reproduces it;
//! - [`cpp_edge`]: the C++ example edge on the codec's C ABI: conformance
//!   vectors from C++, a Twizy trip across server and edge SIGKILLs;
//! - [`outage`]: PostgreSQL cut off behind a proxy mid-replay: 503s, backoff, catch-up;
//! - [`cluster`]: three instances on one PostgreSQL behind a real nginx (both wire
//!   forms, one instance SIGKILLed), and the edge's failover between two servers;
//! - [`headline`]: the README's compression headline on the recorded Twizy trips.

mod harness;
mod observer;

mod chaos;
mod cluster;
mod cpp_edge;
mod headline;
mod logger;
mod outage;
mod replay;
