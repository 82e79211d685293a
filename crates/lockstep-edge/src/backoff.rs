//! Retry delays: exponential backoff with jitter, or the server's `Retry-After`.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with "equal jitter": the n-th consecutive failure waits
/// a uniformly random time in `[d/2, d]` where `d = min(max, base · 2^n)`, so
/// a fleet that failed together does not retry together. A `Retry-After` from
/// the server replaces the exponential delay (plus up to 10 % jitter, at most 1 s).
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(250), Duration::from_secs(30))
    }
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max: max.max(base),
            failures: 0,
        }
    }

    /// Consecutive failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Call after a success: the next failure starts from `base` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The delay before the next attempt after a failure.
    pub fn next_delay(&mut self, retry_after: Option<Duration>, rng: &mut impl Rng) -> Duration {
        let n = self.failures.min(20);
        self.failures = self.failures.saturating_add(1);
        if let Some(ra) = retry_after {
            let jitter_ms = (ra.as_millis() as u64 / 10).min(1000);
            return ra + Duration::from_millis(rng.random_range(0..=jitter_ms));
        }
        let d = self.base.saturating_mul(1u32 << n).min(self.max);
        let half = d / 2;
        half + Duration::from_micros(rng.random_range(0..=(d - half).as_micros() as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn grows_exponentially_with_jitter_up_to_the_cap() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut delays = Vec::new();
        for _ in 0..8 {
            delays.push(b.next_delay(None, &mut rng));
        }
        let bounds = [100u64, 200, 400, 800, 1600, 2000, 2000, 2000];
        for (d, hi) in delays.iter().zip(bounds) {
            let ms = d.as_millis() as u64;
            assert!(ms >= hi / 2 && ms <= hi, "{ms} not in [{}, {hi}]", hi / 2);
        }
        assert_eq!(b.failures(), 8);
        b.reset();
        assert!(b.next_delay(None, &mut rng) <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_differs_between_vehicles() {
        let mut b1 = Backoff::default();
        let mut b2 = Backoff::default();
        let (mut r1, mut r2) = (StdRng::seed_from_u64(1), StdRng::seed_from_u64(2));
        let d1: Vec<_> = (0..5).map(|_| b1.next_delay(None, &mut r1)).collect();
        let d2: Vec<_> = (0..5).map(|_| b2.next_delay(None, &mut r2)).collect();
        assert_ne!(d1, d2);
    }

    #[test]
    fn retry_after_wins() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut b = Backoff::default();
        for _ in 0..10 {
            let d = b.next_delay(Some(Duration::from_secs(3)), &mut rng);
            assert!(
                d >= Duration::from_secs(3) && d <= Duration::from_millis(3300),
                "{d:?}"
            );
        }
    }
}
