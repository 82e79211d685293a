//! The Lockstep cloud server as a library: [`App::build`] binds the listener
//! and wires the actors, [`App::run`] serves until shutdown. `main.rs` only
//! reads settings and signals.
//!
//! Request path of a reading: `ingest` decodes it under the vehicle's lock
//! ([`vehicles`]), hands the rows to the batching [`writer`], which commits
//! many requests in one transaction of the [`store`], answers every waiter,
//! then publishes the committed readings to the WebSocket [`hub`].

pub mod app;
pub mod auth;
pub mod dashboard;
pub mod error;
pub mod hub;
pub mod ingest;
pub mod logger;
pub mod model;
pub mod peer;
pub mod routes;
pub mod serve;
pub mod settings;
pub mod stats;
pub mod store;
pub mod tls;
pub mod vehicles;
pub mod writer;
pub mod ws;

pub use app::{App, AppState};
pub use settings::{ConfigError, Settings, StoreConfig};
