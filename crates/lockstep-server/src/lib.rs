//! The Lockstep cloud server as a library: [`App::build`] binds the listener
//! and wires the actors, [`App::run`] serves until shutdown. `main.rs` only
//! reads settings and signals.
//!
//! Layers, each importing only those below it:
//! - [`http`]: router, thin handlers, extractors, the one `ApiError`;
//! - [`services`]: use cases without HTTP types ([`services::ingest`]);
//! - [`actors`]: the writer, hub, stats, logger supervisor and store health;
//! - [`store`]: the `Store` trait with SQLite and PostgreSQL backends;
//! - leaves: [`model`], [`protocol`] (the WebSocket messages), [`settings`],
//!   [`auth`] (identity, roles, access policies), [`sandbox`] (what the
//!   spawned logger may touch), [`vehicles`]
//!   [`metrics`] (this server's Prometheus recorder),
//!   [`auth`] (the admin policy), [`vehicles`]
//!   (per-vehicle codec state registry).
//!
//! [`app`] wires them; [`state::AppState`] is what handlers get.
//!
//! Request path of a reading: the ingest service decodes it under the
//! vehicle's lock ([`vehicles`]), hands the rows to the batching writer,
//! which commits many requests in one transaction of the [`store`], answers
//! every waiter, then publishes the committed readings to the WebSocket hub.

pub mod actors;
pub mod app;
pub mod auth;
pub mod http;
pub mod metrics;
pub mod model;
pub mod protocol;
pub mod sandbox;
pub mod serve;
pub mod services;
pub mod settings;
pub mod state;
pub mod store;
pub mod tls;
pub mod vehicles;

pub use app::App;
pub use settings::{ConfigError, Settings, StoreConfig};
pub use state::AppState;
