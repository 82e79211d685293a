//! Abuse limits (GCRA token buckets from the `governor` crate):
//!
//! - per device: requests per second and readings per second. The key is the
//!   VIN of the body — with device credentials the VIN is checked against the
//!   credential first, so it is the authenticated identity;
//! - per client IP: requests per second on the routes that carry no device
//!   identity ([`Limits::check_ip`]);
//! - per client IP, failed authentications (a bearer token or a login that
//!   is not valid): an address may fail `N` times in a row, then one attempt
//!   every `60/N` s ([`Limits::auth_failed`]); while it is over that budget,
//!   every request of it that presents a credential is refused before the
//!   credential is checked ([`Limits::auth_blocked`]), so guessing tokens
//!   learns nothing, while other addresses are not affected;
//! - WebSockets open at once per client IP and per credential (a viewer
//!   token cannot hold more than `N` sockets from however many addresses).
//!
//! A refusal says how long to wait (`Retry-After`, whole seconds, at least 1);
//! the edge keeps the readings spooled and resends after that. A rate of 0
//! turns a limit off. Buckets of keys idle for a while are forgotten by
//! [`Limits::forget_idle`], which the app calls periodically, so the maps do
//! not grow with every VIN or address ever seen.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

/// A refusal: try again after this many seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryAfter(pub u32);

/// The configured rates, per second; 0 = unlimited.
#[derive(Debug, Clone, Copy)]
pub struct Rates {
    pub device_requests: u32,
    pub device_readings: u32,
    pub ip_requests: u32,
    /// Readings one request may carry: the readings bucket holds at least that many.
    pub max_batch_readings: u32,
    /// WebSocket connections open at once per client IP.
    pub ws_per_ip: usize,
}

/// The limiters; cheap to clone.
#[derive(Clone)]
pub struct Limits {
    inner: Arc<Inner>,
}

struct Inner {
    device_requests: Option<DefaultKeyedRateLimiter<Arc<str>>>,
    device_readings: Option<DefaultKeyedRateLimiter<Arc<str>>>,
    ip: Option<DefaultKeyedRateLimiter<IpAddr>>,
    clock: DefaultClock,
    ws_per_ip: usize,
    /// WebSockets open at once per credential (`usize::MAX` = no cap).
    ws_per_credential: usize,
    /// Open WebSockets per address and per credential; a key leaves the map
    /// with its last socket.
    ws_open: Mutex<HashMap<WsKey, usize>>,
    /// Failed authentications per address (`None` = no budget).
    auth_failures: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Addresses over their failure budget, until when.
    auth_blocked: Mutex<HashMap<IpAddr, Instant>>,
}

/// What a WebSocket slot is counted under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum WsKey {
    Ip(IpAddr),
    Credential(Arc<str>),
}

/// Why a WebSocket was refused: the cap that is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsFull {
    /// `LOCKSTEP_WS_PER_IP` sockets from this address are open.
    PerIp(usize),
    /// `LOCKSTEP_WS_PER_CREDENTIAL` sockets of this credential are open.
    PerCredential(usize),
}

/// One open WebSocket of an address (and of a credential, if it had one);
/// dropping it frees the slots.
pub struct WsSlot {
    limits: Limits,
    keys: Vec<WsKey>,
}

impl Drop for WsSlot {
    fn drop(&mut self) {
        let mut open = self.limits.ws_open();
        for key in &self.keys {
            if let Some(n) = open.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    open.remove(key);
                }
            }
        }
    }
}

/// A quota of `per_s` a second with a burst of `burst` (both at least 1).
fn quota(per_s: u32, burst: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(per_s)?;
    let burst = NonZeroU32::new(burst.max(per_s)).unwrap_or(rate);
    Some(Quota::per_second(rate).allow_burst(burst))
}

impl Limits {
    pub fn new(r: Rates) -> Self {
        Self {
            inner: Arc::new(Inner {
                // A burst of two seconds' worth: an edge catching up after an outage
                // sends back to back, then settles at the rate.
                device_requests: quota(r.device_requests, r.device_requests.saturating_mul(2))
                    .map(DefaultKeyedRateLimiter::keyed),
                device_readings: quota(
                    r.device_readings,
                    r.device_readings
                        .saturating_mul(2)
                        .max(r.max_batch_readings),
                )
                .map(DefaultKeyedRateLimiter::keyed),
                ip: quota(r.ip_requests, r.ip_requests.saturating_mul(2))
                    .map(DefaultKeyedRateLimiter::keyed),
                clock: DefaultClock::default(),
                ws_per_ip: r.ws_per_ip.max(1),
                ws_per_credential: usize::MAX,
                ws_open: Mutex::default(),
                auth_failures: None,
                auth_blocked: Mutex::default(),
            }),
        }
    }

    fn configure(&mut self) -> &mut Inner {
        Arc::get_mut(&mut self.inner).expect("limits are configured before they are shared")
    }

    /// At most `n` WebSockets open at once per credential (0 = no cap).
    pub fn with_ws_per_credential(mut self, n: usize) -> Self {
        self.configure().ws_per_credential = if n == 0 { usize::MAX } else { n };
        self
    }

    /// A budget of `per_min` failed authentications per address: that many
    /// in a row, then one every `60 / per_min` seconds (0 = no budget).
    pub fn with_auth_failures(mut self, per_min: u32) -> Self {
        self.configure().auth_failures = NonZeroU32::new(per_min)
            .map(|n| DefaultKeyedRateLimiter::keyed(Quota::per_minute(n).allow_burst(n)));
        self
    }

    fn retry_after(
        &self,
        not_until: &governor::NotUntil<<DefaultClock as governor::clock::Clock>::Instant>,
    ) -> RetryAfter {
        let wait = not_until.wait_time_from(self.inner.clock.now());
        RetryAfter(wait.as_secs_f64().ceil().clamp(1.0, 3600.0) as u32)
    }

    /// One request of device `key` carrying `readings` readings.
    pub fn check_device(&self, key: &Arc<str>, readings: u32) -> Result<(), RetryAfter> {
        if let Some(l) = &self.inner.device_requests
            && let Err(n) = l.check_key(key)
        {
            return Err(self.retry_after(&n));
        }
        if let Some(l) = &self.inner.device_readings
            && let Some(n) = NonZeroU32::new(readings)
        {
            match l.check_key_n(key, n) {
                Ok(Ok(())) => {}
                Ok(Err(not_until)) => return Err(self.retry_after(&not_until)),
                // More than the bucket ever holds (bigger than a full burst):
                // the batch-size limit refuses such a body before this point.
                Err(_) => return Err(RetryAfter(1)),
            }
        }
        Ok(())
    }

    /// One request (or one failed authentication) from `ip`.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), RetryAfter> {
        match &self.inner.ip {
            Some(l) => l.check_key(&ip).map_err(|n| self.retry_after(&n)),
            None => Ok(()),
        }
    }

    fn blocked(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Instant>> {
        self.inner
            .auth_blocked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Refused while `ip` is over its budget of failed authentications: a
    /// request of it that presents a credential is answered 429 before the
    /// credential is checked.
    pub fn auth_blocked(&self, ip: IpAddr) -> Result<(), RetryAfter> {
        if self.inner.auth_failures.is_none() {
            return Ok(());
        }
        let mut blocked = self.blocked();
        let Some(until) = blocked.get(&ip).copied() else {
            return Ok(());
        };
        let now = Instant::now();
        if until <= now {
            blocked.remove(&ip);
            return Ok(());
        }
        Err(RetryAfter(
            (until - now).as_secs_f64().ceil().clamp(1.0, 3600.0) as u32,
        ))
    }

    /// One failed authentication from `ip`; `Err` once the address is over its
    /// budget (it stays blocked until the bucket holds an attempt again).
    pub fn auth_failed(&self, ip: IpAddr) -> Result<(), RetryAfter> {
        let Some(l) = &self.inner.auth_failures else {
            return Ok(());
        };
        match l.check_key(&ip) {
            Ok(()) => Ok(()),
            Err(n) => {
                let wait = n.wait_time_from(self.inner.clock.now());
                self.blocked().insert(ip, Instant::now() + wait);
                Err(self.retry_after(&n))
            }
        }
    }

    fn ws_open(&self) -> std::sync::MutexGuard<'_, HashMap<WsKey, usize>> {
        self.inner.ws_open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A WebSocket slot for `ip` and, if the caller has one, its `credential`
    /// (a stable name of the token, not the secret); refused when either has
    /// its cap open already.
    pub fn ws_slot(&self, ip: IpAddr, credential: Option<&str>) -> Result<WsSlot, WsFull> {
        let mut open = self.ws_open();
        let by_ip = WsKey::Ip(ip);
        if open.get(&by_ip).copied().unwrap_or(0) >= self.inner.ws_per_ip {
            return Err(WsFull::PerIp(self.inner.ws_per_ip));
        }
        let mut keys = vec![by_ip];
        if let Some(c) = credential {
            let by_cred = WsKey::Credential(c.into());
            if open.get(&by_cred).copied().unwrap_or(0) >= self.inner.ws_per_credential {
                return Err(WsFull::PerCredential(self.inner.ws_per_credential));
            }
            keys.push(by_cred);
        }
        for k in &keys {
            *open.entry(k.clone()).or_insert(0) += 1;
        }
        Ok(WsSlot {
            limits: self.clone(),
            keys,
        })
    }

    /// Forgets buckets that are full again (their keys were idle long enough).
    pub fn forget_idle(&self) {
        if let Some(l) = &self.inner.device_requests {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.inner.device_readings {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.inner.ip {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.inner.auth_failures {
            l.retain_recent();
            l.shrink_to_fit();
        }
        let now = Instant::now();
        self.blocked().retain(|_, until| *until > now);
    }

    /// Calls [`Self::forget_idle`] every `every` until `stop`.
    pub async fn run_housekeeping(
        self,
        every: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.forget_idle(),
                () = stop.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_buckets_are_per_key_and_say_when_to_retry() {
        let limits = Limits::new(Rates {
            device_requests: 2,
            device_readings: 100,
            ip_requests: 0,
            max_batch_readings: 150,
            ws_per_ip: 1,
        });
        let a: Arc<str> = "1HGCM82633A004352".into();
        let b: Arc<str> = "1HGCM82633A004353".into();
        // Burst of readings: max(2 × 100, 150) = 200.
        assert_eq!(limits.check_device(&a, 150), Ok(()));
        assert!(
            limits.check_device(&a, 100).is_err(),
            "the readings bucket is empty"
        );
        assert_eq!(
            limits.check_device(&b, 1),
            Ok(()),
            "another device is not affected"
        );
        // Requests: burst 4 at 2/s.
        for _ in 0..3 {
            let _ = limits.check_device(&b, 1);
        }
        let RetryAfter(s) = limits.check_device(&b, 1).unwrap_err();
        assert!((1..=2).contains(&s), "{s}");
        let ip = "127.0.0.1".parse().unwrap();
        assert!(limits.check_ip(ip).is_ok(), "0 = off");
        let slot = limits.ws_slot(ip, None).expect("a first WebSocket");
        assert_eq!(
            limits.ws_slot(ip, None).err(),
            Some(WsFull::PerIp(1)),
            "one per address"
        );
        drop(slot);
        assert!(limits.ws_slot(ip, None).is_ok(), "the slot is free again");
    }

    #[test]
    fn websockets_are_capped_per_credential_across_addresses() {
        let limits = Limits::new(Rates {
            device_requests: 0,
            device_readings: 0,
            ip_requests: 0,
            max_batch_readings: 1,
            ws_per_ip: 10,
        })
        .with_ws_per_credential(2);
        let ip = |n: u8| IpAddr::from([127, 0, 0, n]);
        let a = limits.ws_slot(ip(1), Some("token:a")).unwrap();
        let _b = limits.ws_slot(ip(2), Some("token:a")).unwrap();
        assert_eq!(
            limits.ws_slot(ip(3), Some("token:a")).err(),
            Some(WsFull::PerCredential(2))
        );
        assert!(
            limits.ws_slot(ip(3), Some("token:b")).is_ok(),
            "another token"
        );
        assert!(
            limits.ws_slot(ip(3), None).is_ok(),
            "no credential: per address only"
        );
        drop(a);
        assert!(limits.ws_slot(ip(3), Some("token:a")).is_ok(), "freed");
    }

    #[test]
    fn failed_authentications_block_an_address_not_others() {
        let limits = Limits::new(Rates {
            device_requests: 0,
            device_readings: 0,
            ip_requests: 0,
            max_batch_readings: 1,
            ws_per_ip: 1,
        })
        .with_auth_failures(3);
        let (bad, good) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        for _ in 0..3 {
            assert_eq!(limits.auth_failed(bad), Ok(()));
            assert_eq!(limits.auth_blocked(bad), Ok(()));
        }
        let RetryAfter(s) = limits.auth_failed(bad).unwrap_err();
        assert!((1..=20).contains(&s), "one attempt every 20 s: {s}");
        assert!(limits.auth_blocked(bad).is_err(), "blocked before checking");
        assert_eq!(limits.auth_blocked(good), Ok(()));
        assert_eq!(limits.auth_failed(good), Ok(()));
        let off = Limits::new(Rates {
            device_requests: 0,
            device_readings: 0,
            ip_requests: 0,
            max_batch_readings: 1,
            ws_per_ip: 1,
        });
        for _ in 0..100 {
            assert_eq!(off.auth_failed(bad), Ok(()), "0 = no budget");
        }
    }
}
