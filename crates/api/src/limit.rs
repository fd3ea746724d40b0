//! Rate limiting, in process, as token buckets. Per API key: a key that runs dry gets 429 with
//! `Retry-After`; other keys are unaffected. Per client address, for what no key pays for: the
//! public routes (`/pay/*`, the checkout page, its status polling and card form) take a token per
//! request, and every request refused as unauthenticated takes one from a second bucket; once that
//! one is dry, the address's bearer requests get 429 before any key is looked up (a key guesser
//! learns nothing more), until it refills.

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
    buckets: Mutex<HashMap<String, Bucket>>,
}

/// One key's tokens, as of `at`, and the rate it was last checked with.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: u32,
    at: Instant,
    per_s: u32,
    burst: u32,
}

impl Bucket {
    fn per_token(&self) -> Duration {
        Duration::from_secs(1) / self.per_s
    }
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

    /// Takes one token for `key` at the limiter's rate; `Err(wait)` says how long until one is
    /// available.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        self.check_at(key, now, None)
    }

    /// Takes one token for `key` at `rate` (`(per second, burst)`), or at the limiter's own rate
    /// for `None`. A key whose rate changed keeps its tokens, up to the new burst.
    pub fn check_at(&self, key: &str, now: Instant, rate: Option<(u32, u32)>) -> Result<(), Duration> {
        let (per_s, burst) = rate.map_or((self.per_s, self.burst), |(p, b)| (p.max(1), b.max(1)));
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= KEYS_TRACKED_MAX && !buckets.contains_key(key) {
            // A bucket idle for longer than it takes to fill is full: forgetting it changes nothing.
            buckets.retain(|_, b| now.duration_since(b.at) < Duration::from_secs(u64::from(b.burst / b.per_s) + 1));
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket { tokens: burst, at: now, per_s, burst });
        bucket.per_s = per_s;
        bucket.burst = burst;
        bucket.tokens = bucket.tokens.min(burst);
        // Refill whole tokens for the time passed, keeping the remainder of the interval.
        let per_token = bucket.per_token();
        let elapsed = now.duration_since(bucket.at);
        let refill = u32::try_from(elapsed.as_nanos() / per_token.as_nanos().max(1)).unwrap_or(u32::MAX);
        if refill > 0 {
            bucket.tokens = bucket.tokens.saturating_add(refill).min(burst);
            bucket.at = if bucket.tokens == burst { now } else { bucket.at + per_token * refill };
        }
        if bucket.tokens == 0 {
            return Err(per_token.saturating_sub(now.duration_since(bucket.at)).max(Duration::from_millis(1)));
        }
        bucket.tokens -= 1;
        Ok(())
    }

    /// How long until `key` has a token again, when it has none now; takes nothing. Costs no
    /// more than a map lookup, so it can run before anything else is done for a request.
    pub fn empty_for(&self, key: &str, now: Instant) -> Option<Duration> {
        let buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = buckets.get(key)?;
        let per_token = bucket.per_token();
        let elapsed = now.duration_since(bucket.at);
        (bucket.tokens == 0 && elapsed < per_token).then(|| (per_token - elapsed).max(Duration::from_millis(1)))
    }
}

/// Public requests per second one client address may sustain.
pub const PUBLIC_PER_S_DEFAULT: u32 = 10;
/// Public requests one client address may make in a burst.
pub const PUBLIC_BURST_DEFAULT: u32 = 60;
/// Refused (401) requests per second one client address may sustain.
pub const AUTH_FAILURES_PER_S_DEFAULT: u32 = 1;
/// Refused (401) requests one client address may make in a burst.
pub const AUTH_FAILURES_BURST_DEFAULT: u32 = 20;

/// The per-address buckets, and where the client's address comes from.
#[derive(Debug)]
pub struct IpLimiter {
    public: RateLimiter,
    auth_failures: RateLimiter,
    /// Behind a reverse proxy, the header it writes the client's address into (`x-real-ip`, or
    /// `x-forwarded-for`, whose last entry is the one the proxy added). Without it the peer's
    /// address is the client's.
    client_ip_header: Option<axum::http::HeaderName>,
}

impl Default for IpLimiter {
    fn default() -> Self {
        Self::new(None)
    }
}

impl IpLimiter {
    pub fn new(client_ip_header: Option<axum::http::HeaderName>) -> Self {
        Self::with_limits(client_ip_header, (PUBLIC_PER_S_DEFAULT, PUBLIC_BURST_DEFAULT), (AUTH_FAILURES_PER_S_DEFAULT, AUTH_FAILURES_BURST_DEFAULT))
    }

    /// Buckets of the given `(per second, burst)` sizes.
    pub fn with_limits(client_ip_header: Option<axum::http::HeaderName>, public: (u32, u32), auth_failures: (u32, u32)) -> Self {
        Self {
            public: RateLimiter::new(public.0, public.1),
            auth_failures: RateLimiter::new(auth_failures.0, auth_failures.1),
            client_ip_header,
        }
    }

    /// The client's address: the configured header's (last) address when it holds one, else the
    /// peer's. `None` when neither is known (a router served without connection info).
    pub fn client_ip(&self, headers: &axum::http::HeaderMap, peer: Option<std::net::IpAddr>) -> Option<std::net::IpAddr> {
        let from_header = self.client_ip_header.as_ref().and_then(|name| {
            let value = headers.get(name)?.to_str().ok()?;
            value.rsplit(',').next()?.trim().parse().ok()
        });
        from_header.or(peer)
    }
}

/// What [`middleware`] limits: public routes by token, bearer requests by past refusals.
pub async fn middleware(
    axum::extract::State(state): axum::extract::State<super::AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let peer = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0.ip());
    let Some(ip) = state.ip_limiter.client_ip(request.headers(), peer) else {
        return next.run(request).await;
    };
    let key = ip.to_string();
    let now = Instant::now();
    let too_many = |wait: Duration, what: &str| {
        let mut error = super::ApiError::new(axum::http::StatusCode::TOO_MANY_REQUESTS, "rate_limited", format!("too many {what} from this address"));
        error.retry_after_s = Some(wait.as_secs().max(1));
        error.into_response()
    };
    let path = request.uri().path();
    if path == "/pay" || path.starts_with("/pay/") || path.starts_with("/refund/") {
        if let Err(wait) = state.ip_limiter.public.check(&key, now) {
            return too_many(wait, "requests");
        }
        return next.run(request).await;
    }
    // A key offered by bearer header or by the console's sign-in form: refusals count alike.
    let bearer = request.headers().contains_key(axum::http::header::AUTHORIZATION) || path == "/console/login";
    if bearer {
        if let Some(wait) = state.ip_limiter.auth_failures.empty_for(&key, now) {
            return too_many(wait, "refused requests");
        }
    }
    let response = next.run(request).await;
    if response.status() == axum::http::StatusCode::UNAUTHORIZED {
        let _ = state.ip_limiter.auth_failures.check(&key, Instant::now());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_that_ran_dry_waits_without_spending() {
        let limiter = RateLimiter::new(1, 2);
        let t0 = Instant::now();
        assert!(limiter.empty_for("ip", t0).is_none(), "a new address is not dry");
        assert!(limiter.check("ip", t0).is_ok());
        assert!(limiter.check("ip", t0).is_ok());
        let wait = limiter.empty_for("ip", t0).expect("dry");
        assert!(wait <= Duration::from_secs(1));
        // Looking does not spend: after one interval a token is back.
        assert!(limiter.empty_for("ip", t0 + Duration::from_secs(1)).is_none());
    }

    #[test]
    fn the_client_address_comes_from_the_proxy_header_when_configured() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.9, 198.51.100.7".parse().expect("header"));
        let peer = Some("127.0.0.1".parse().expect("ip"));
        assert_eq!(IpLimiter::new(None).client_ip(&headers, peer), peer, "without a header setting, the peer");
        let behind_proxy = IpLimiter::new(Some(axum::http::HeaderName::from_static("x-forwarded-for")));
        assert_eq!(behind_proxy.client_ip(&headers, peer), Some("198.51.100.7".parse().expect("ip")), "the entry the proxy added");
        assert_eq!(behind_proxy.client_ip(&axum::http::HeaderMap::new(), peer), peer, "no header: the peer");
    }

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let limiter = RateLimiter::new(10, 3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.check("k", t0).is_ok());
        }
        let wait = limiter.check("k", t0).expect_err("bucket empty");
        assert!(wait <= Duration::from_millis(100));
        // Another key has its own bucket, and may have its own rate.
        assert!(limiter.check("other", t0).is_ok());
        for _ in 0..4 {
            assert!(limiter.check_at("own", t0, Some((1, 5))).is_ok());
        }
        assert!(limiter.check_at("own", t0, Some((1, 5))).is_ok(), "a burst of five");
        let wait = limiter.check_at("own", t0, Some((1, 5))).expect_err("dry");
        assert!(wait > Duration::from_millis(100), "refilled at one per second: {wait:?}");
        // After one interval, one more request.
        assert!(limiter.check("k", t0 + Duration::from_millis(100)).is_ok());
        assert!(limiter.check("k", t0 + Duration::from_millis(100)).is_err());
    }
}
