//! Cross-site protection: a browser sends `Origin` with every state-changing
//! request and every WebSocket upgrade, so those are refused unless the
//! origin is on the allow-list. A missing `Origin` is a non-browser client
//! (edge, curl) and passes; `null` (sandboxed pages, `file:`, some
//! redirects) never does. Comparing `Origin` with the request's own `Host`
//! would not do: after DNS rebinding both name the attacker's domain, so the
//! list is explicit, and `Host` must be one the server answers to.

use std::net::IpAddr;

use axum::http::{HeaderMap, header};

/// Why a request was refused (403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CrossSite {
    #[error("Origin {0:?} is not allowed to change anything here (LOCKSTEP_CORS_ORIGINS)")]
    Origin(String),
    #[error("Host {0:?} is not a name this server answers to (LOCKSTEP_CORS_ORIGINS)")]
    Host(String),
}

/// The allowed origins, and the host names derived from them.
#[derive(Debug, Clone)]
pub struct OriginPolicy {
    origins: Vec<String>,
    hosts: Vec<String>,
}

/// `http://Name:8001` → `name`; `[::1]:80` → `::1`.
fn host_name(authority: &str) -> String {
    let a = authority.trim().to_ascii_lowercase();
    if let Some(rest) = a.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("").to_owned();
    }
    a.rsplit_once(':')
        .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
        .map_or(a.clone(), |(h, _)| h.to_owned())
}

impl OriginPolicy {
    /// `origins`: `scheme://host[:port]` entries, compared exactly (case-insensitively).
    pub fn new(origins: &[String]) -> Self {
        let origins: Vec<String> = origins
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_ascii_lowercase())
            .collect();
        let mut hosts: Vec<String> = origins
            .iter()
            .filter_map(|o| o.split_once("://").map(|(_, a)| host_name(a)))
            .collect();
        hosts.push("localhost".into());
        hosts.sort();
        hosts.dedup();
        Self { origins, hosts }
    }

    pub fn origins(&self) -> &[String] {
        &self.origins
    }

    /// Whether a request that changes state (or opens a WebSocket) may proceed.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), CrossSite> {
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let origin = origin
            .to_str()
            .unwrap_or("null")
            .trim()
            .to_ascii_lowercase();
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        // The dashboard opened by IP address (a server on 0.0.0.0 knows no names):
        // same origin by an IP literal, which DNS rebinding cannot produce.
        let same_ip_origin = origin.split_once("://").is_some_and(|(_, a)| {
            a == host.to_ascii_lowercase() && host_name(a).parse::<IpAddr>().is_ok()
        });
        if origin == "null" || !(same_ip_origin || self.origins.contains(&origin)) {
            return Err(CrossSite::Origin(origin));
        }
        // With an allowed Origin, Host must be ours too (DNS rebinding).
        let name = host_name(host);
        if name.parse::<IpAddr>().is_ok() || self.hosts.contains(&name) {
            Ok(())
        } else {
            Err(CrossSite::Host(host.to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(origin: Option<&'static str>, host: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static(host));
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_static(o));
        }
        h
    }

    #[test]
    fn origins_and_hosts() {
        let p = OriginPolicy::new(&[
            "http://localhost:8001".into(),
            "https://fleet.example.com/".into(),
        ]);
        assert!(p.check(&headers(None, "evil.example:8001")).is_ok());
        assert!(
            p.check(&headers(Some("http://localhost:8001"), "127.0.0.1:8001"))
                .is_ok()
        );
        assert!(
            p.check(&headers(
                Some("https://FLEET.example.com"),
                "fleet.example.com"
            ))
            .is_ok()
        );
        assert!(p.check(&headers(Some("null"), "localhost:8001")).is_err());
        assert!(
            p.check(&headers(Some("http://evil.example"), "localhost:8001"))
                .is_err()
        );
        assert!(
            p.check(&headers(Some("http://localhost:8002"), "localhost:8001"))
                .is_err()
        );
        // DNS rebinding: the page's own origin is allowed by nobody, and its Host is foreign.
        assert_eq!(
            p.check(&headers(Some("http://localhost:8001"), "rebind.evil:8001")),
            Err(CrossSite::Host("rebind.evil:8001".into()))
        );
        assert!(
            p.check(&headers(Some("http://localhost:8001"), "[::1]:8001"))
                .is_ok()
        );
        // Opened by IP address: the same IP origin passes, another IP or a name does not.
        let ip = |o: &'static str, h: &'static str| p.check(&headers(Some(o), h)).is_ok();
        assert!(ip("http://10.0.0.5:8001", "10.0.0.5:8001"));
        assert!(!ip("http://10.0.0.6:8001", "10.0.0.5:8001"));
        assert!(!ip("http://evil.example:8001", "evil.example:8001"));
    }
}
