//! Who may start processes (logger control): loopback peers (unless turned
//! off) or a request with `Authorization: Bearer $LOCKSTEP_ADMIN_TOKEN`.

pub mod cli;
pub mod db;
pub mod origin;
pub mod policy;
pub mod service;
pub mod token;
pub mod web;

pub use service::{Auth, AuthConfig, Mode, PeerIdentity, Principal, Role, Scope};

use std::net::SocketAddr;

use axum::http::{HeaderMap, header};

use crate::settings::Secret;

/// The admin policy.
#[derive(Debug, Clone)]
pub struct AdminPolicy {
    pub token: Option<Secret>,
    pub trust_loopback: bool,
}

impl AdminPolicy {
    pub fn allows(&self, peer: SocketAddr, headers: &HeaderMap) -> bool {
        let ip = peer.ip().to_canonical();
        if self.trust_loopback && ip.is_loopback() {
            return true;
        }
        let Some(token) = &self.token else {
            return false;
        };
        let Some(given) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        constant_time_eq(given.trim().as_bytes(), token.expose().as_bytes())
    }
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn loopback_or_token() {
        let p = AdminPolicy {
            token: Some("tok".parse().unwrap()),
            trust_loopback: true,
        };
        let remote: SocketAddr = "10.0.0.5:1234".parse().unwrap();
        let local: SocketAddr = "[::ffff:127.0.0.1]:1".parse().unwrap();
        let mut h = HeaderMap::new();
        assert!(p.allows(local, &h));
        assert!(!p.allows(remote, &h));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer tok"),
        );
        assert!(p.allows(remote, &h));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer tok2"),
        );
        assert!(!p.allows(remote, &h));
        let none = AdminPolicy {
            token: None,
            trust_loopback: false,
        };
        assert!(!none.allows(local, &HeaderMap::new()));
    }
}
