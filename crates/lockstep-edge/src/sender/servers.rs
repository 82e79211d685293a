//! Failover between `--server` URLs, shared by every vehicle of the run.
//!
//! The first URL is preferred. A connection failure or 5xx on the server in
//! use moves the whole fleet to the next one (round robin, so with two servers
//! the next failure goes back to the first); after `failback_after` away from
//! the first, the next request tries the first again. Nothing is lost on the
//! way: a batch is only removed from the spool after a 2xx, and a server that
//! does not know the session answers 409 and gets it again from a keyframe.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, ensure};
use tokio::time::Instant;

/// The servers and which one is in use.
#[derive(Debug)]
pub struct Servers {
    /// `<base>/api/telemetry` per server, in preference order.
    urls: Vec<Arc<str>>,
    failback_after: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    current: usize,
    /// When the fleet moved to `current`.
    since: Instant,
}

impl Servers {
    /// `bases` are base URLs (`http://host:port` or `https://…`).
    pub fn new(bases: &[String], failback_after: Duration) -> Result<Self> {
        ensure!(!bases.is_empty(), "no server URL given (--server)");
        let mut urls = Vec::with_capacity(bases.len());
        for b in bases {
            let b = b.trim().trim_end_matches('/');
            ensure!(
                b.starts_with("http://") || b.starts_with("https://"),
                "the server URL {b:?} does not start with http:// or https://"
            );
            urls.push(format!("{b}/api/telemetry").into());
        }
        Ok(Self {
            urls,
            failback_after,
            state: Mutex::new(State {
                current: 0,
                since: Instant::now(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The server to post to now: its index and telemetry URL.
    pub fn pick(&self) -> (usize, Arc<str>) {
        let mut s = self.lock();
        if s.current != 0 && s.since.elapsed() >= self.failback_after {
            tracing::info!(server = %self.urls[0], "Going back to the first server.");
            s.current = 0;
            s.since = Instant::now();
        }
        (s.current, self.urls[s.current].clone())
    }

    /// The server `index` failed (connection, 5xx): if the fleet still uses
    /// it, move on to the next one. Failures of requests that were sent
    /// before the fleet moved do not move it again.
    pub fn failed(&self, index: usize) {
        if self.urls.len() < 2 {
            return;
        }
        let mut s = self.lock();
        if s.current == index {
            s.current = (index + 1) % self.urls.len();
            s.since = Instant::now();
            tracing::warn!(failed = %self.urls[index], next = %self.urls[s.current], "A server failed; moving to the next one.");
        }
    }

    /// Number of servers.
    pub fn len(&self) -> usize {
        self.urls.len()
    }

    /// Never: there is at least one server.
    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// The index of the server in use.
    pub fn current(&self) -> usize {
        self.lock().current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two(failback_after: Duration) -> Servers {
        Servers::new(&["http://a:1/".into(), "http://b:2".into()], failback_after).unwrap()
    }

    #[test]
    fn moves_on_failure_and_stays_until_the_failback_time() {
        let s = two(Duration::from_secs(3600));
        assert_eq!(s.pick(), (0, "http://a:1/api/telemetry".into()));
        s.failed(0);
        assert_eq!(s.pick().0, 1);
        // A late failure of the first server (a request sent before the move) changes nothing.
        s.failed(0);
        assert_eq!(s.pick().0, 1);
        // The next failure goes round, back to the first.
        s.failed(1);
        assert_eq!(s.pick().0, 0);
    }

    #[test]
    fn goes_back_to_the_first_once_the_failback_time_passed() {
        let s = two(Duration::ZERO);
        s.failed(0);
        assert_eq!(s.current(), 1);
        assert_eq!(s.pick().0, 0);
    }

    #[test]
    fn one_server_stays_and_bad_urls_are_refused() {
        let one = Servers::new(&["http://a:1".into()], Duration::ZERO).unwrap();
        one.failed(0);
        assert_eq!(one.pick().0, 0);
        assert!(Servers::new(&["a:1".into()], Duration::ZERO).is_err());
        assert!(Servers::new(&[], Duration::ZERO).is_err());
    }
}
