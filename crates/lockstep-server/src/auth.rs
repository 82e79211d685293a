//! Who may start processes (logger control): loopback peers (unless turned
//! off) or a caller presenting `$LOCKSTEP_ADMIN_TOKEN` as a bearer token.
//! A policy only: the HTTP layer extracts the peer and the token
//! (`http::extract::Operator`).

use std::net::IpAddr;

use crate::settings::Secret;

/// The admin policy.
#[derive(Debug, Clone)]
pub struct AdminPolicy {
    pub token: Option<Secret>,
    pub trust_loopback: bool,
}

impl AdminPolicy {
    /// `bearer`: the token the caller presented, if any.
    pub fn allows(&self, peer: IpAddr, bearer: Option<&str>) -> bool {
        if self.trust_loopback && peer.to_canonical().is_loopback() {
            return true;
        }
        let (Some(token), Some(given)) = (&self.token, bearer) else {
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

    #[test]
    fn loopback_or_token() {
        let p = AdminPolicy {
            token: Some("tok".parse().unwrap()),
            trust_loopback: true,
        };
        let remote: IpAddr = "10.0.0.5".parse().unwrap();
        let local: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert!(p.allows(local, None));
        assert!(!p.allows(remote, None));
        assert!(p.allows(remote, Some("tok")));
        assert!(!p.allows(remote, Some("tok2")));
        let none = AdminPolicy {
            token: None,
            trust_loopback: false,
        };
        assert!(!none.allows(local, None));
    }
}
