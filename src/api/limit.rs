//! Per-key rate limiting: a token bucket per API key, in process. A key that runs dry gets 429
//! with `Retry-After`; other keys are unaffected.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Requests per second a key may sustain.
pub const REQUESTS_PER_S_DEFAULT: u32 = 50;
/// Requests a key may make in a burst.
pub const BURST_DEFAULT: u32 = 100;
/// Most keys tracked; idle buckets are forgotten beyond this.
pub const KEYS_TRACKED_MAX: usize = 100_000;

#[derive(Debug)]
pub struct RateLimiter {
    per_s: u32,
    burst: u32,
    buckets: Mutex<HashMap<String, (u32, Instant)>>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new(REQUESTS_PER_S_DEFAULT, BURST_DEFAULT)
    }
}

impl RateLimiter {
    pub fn new(per_s: u32, burst: u32) -> Self {
        Self { per_s: per_s.max(1), burst: burst.max(1), buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one token for `key`; `Err(wait)` says how long until one is available.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= KEYS_TRACKED_MAX && !buckets.contains_key(key) {
            let idle = Duration::from_secs(u64::from(self.burst / self.per_s) + 1);
            buckets.retain(|_, (_, at)| now.duration_since(*at) < idle);
        }
        let (tokens, at) = buckets.entry(key.to_owned()).or_insert((self.burst, now));
        // Refill whole tokens for the time passed, keeping the remainder of the interval.
        let per_token = Duration::from_secs(1) / self.per_s;
        let elapsed = now.duration_since(*at);
        let refill = u32::try_from(elapsed.as_nanos() / per_token.as_nanos().max(1)).unwrap_or(u32::MAX);
        if refill > 0 {
            *tokens = tokens.saturating_add(refill).min(self.burst);
            *at = if *tokens == self.burst { now } else { *at + per_token * refill };
        }
        if *tokens == 0 {
            return Err(per_token.saturating_sub(now.duration_since(*at)).max(Duration::from_millis(1)));
        }
        *tokens -= 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let limiter = RateLimiter::new(10, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check("k", t0).is_ok());
        }
        let wait = limiter.check("k", t0).expect_err("bucket empty");
        assert!(wait <= Duration::from_millis(100));
        // Another key has its own bucket.
        assert!(limiter.check("other", t0).is_ok());
        // After one interval, one more request.
        assert!(limiter.check("k", t0 + Duration::from_millis(100)).is_ok());
        assert!(limiter.check("k", t0 + Duration::from_millis(100)).is_err());
    }
}
