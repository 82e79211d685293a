//! Identity and access: who is calling ([`service`]: tokens, web sessions,
//! client certificates → [`Principal`]), what each route group requires
//! ([`policy`]), cross-site protection ([`origin`]), the tokens themselves
//! ([`token`]) and where they are kept ([`db`]); the dashboard's login
//! ([`web`]) and the `token` subcommand ([`cli`]). See `docs/security.md`.

pub mod cli;
pub mod db;
pub mod origin;
pub mod policy;
pub mod service;
pub mod token;
pub mod web;

pub use service::{Auth, AuthConfig, Mode, PeerIdentity, Principal, Role, Scope};
