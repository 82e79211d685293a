//! Abuse limits (GCRA token buckets from the `governor` crate):
//!
//! - per device: requests per second and readings per second. The key is the
//!   VIN of the body — with device credentials the VIN is checked against the
//!   credential first, so it is the authenticated identity;
//! - per client IP: requests per second on the routes that carry no device
//!   identity, and failed authentications ([`Limits::check_ip`] is the one
//!   bucket for both).
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
use std::time::Duration;

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
    /// Open WebSockets per address; an address leaves the map with its last one.
    ws_open: Mutex<HashMap<IpAddr, usize>>,
}

/// One open WebSocket of an address; dropping it frees the slot.
pub struct WsSlot {
    limits: Limits,
    ip: IpAddr,
}

impl Drop for WsSlot {
    fn drop(&mut self) {
        let mut open = self.limits.ws_open();
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
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
                ws_open: Mutex::default(),
            }),
        }
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

    fn ws_open(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.inner.ws_open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A WebSocket slot for `ip`, or `None` when it has `ws_per_ip` open already.
    pub fn ws_slot(&self, ip: IpAddr) -> Option<WsSlot> {
        let mut open = self.ws_open();
        let n = open.entry(ip).or_insert(0);
        if *n >= self.inner.ws_per_ip {
            return None;
        }
        *n += 1;
        Some(WsSlot {
            limits: self.clone(),
            ip,
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
        let slot = limits.ws_slot(ip).expect("a first WebSocket");
        assert!(limits.ws_slot(ip).is_none(), "one per address");
        drop(slot);
        assert!(limits.ws_slot(ip).is_some(), "the slot is free again");
    }
}
