//! What an attempt's result means and when the next one is due. Pure functions, no I/O.

use chrono::{DateTime, Duration, Utc};

/// The first retry waits this long; each further one twice as long as the one before.
pub const BACKOFF_INITIAL_MS: i64 = 10_000;
/// No wait between two attempts is longer than this.
pub const BACKOFF_MAX_MS: i64 = 3_600_000;
/// Jitter adds up to this many thousandths of the wait, so endpoints that failed together do not
/// all come back at the same instant.
pub const BACKOFF_JITTER_PERMILLE_MAX: i64 = 200;
/// A delivery is retried for this long after its first attempt, then abandoned.
pub const RETRY_WINDOW_MS: i64 = 24 * 3_600_000;
/// A hard bound on attempts per delivery, whatever the window allows.
pub const ATTEMPTS_MAX: u32 = 64;
/// A `Retry-After` longer than this is not honoured beyond it.
pub const RETRY_AFTER_MS_MAX: i64 = BACKOFF_MAX_MS;

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A 2xx answer.
    Delivered,
    /// Worth trying again: 5xx, 408, 429, or no answer at all (connection error, timeout).
    Retry,
    /// Any other answer (3xx, 4xx): the receiver refused it, and will again.
    Failed,
}

/// Judges an attempt by its status code; `None` when no response came.
pub fn classify(status: Option<u16>) -> Verdict {
    match status {
        None => Verdict::Retry,
        Some(200..=299) => Verdict::Delivered,
        Some(408 | 429 | 500..=599) => Verdict::Retry,
        Some(_) => Verdict::Failed,
    }
}

/// The wait after the `attempt`-th attempt (1-based) failed: `BACKOFF_INITIAL_MS` doubling, capped
/// at `BACKOFF_MAX_MS`, plus `jitter_permille` (clamped to `0..=BACKOFF_JITTER_PERMILLE_MAX`)
/// thousandths of it.
pub fn backoff(attempt: u32, jitter_permille: i64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(30);
    let base = BACKOFF_INITIAL_MS.saturating_mul(1_i64 << doublings).min(BACKOFF_MAX_MS);
    let jitter = base * jitter_permille.clamp(0, BACKOFF_JITTER_PERMILLE_MAX) / 1000;
    Duration::milliseconds(base + jitter)
}

/// What follows a failed attempt that deserves a retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    RetryAt(DateTime<Utc>),
    Abandon,
}

/// When to try again after the `attempt`-th attempt failed at `now`, for a delivery first tried at
/// `first_attempt_at`: the backoff (or a longer `Retry-After`, bounded), never past the end of the
/// retry window, so the last attempt lands on it; abandoned once the window is over or
/// `ATTEMPTS_MAX` is reached.
pub fn next_attempt(
    attempt: u32,
    first_attempt_at: DateTime<Utc>,
    now: DateTime<Utc>,
    retry_after: Option<Duration>,
    jitter_permille: i64,
) -> Next {
    let window_end = first_attempt_at + Duration::milliseconds(RETRY_WINDOW_MS);
    if attempt >= ATTEMPTS_MAX || now >= window_end {
        return Next::Abandon;
    }
    let mut wait = backoff(attempt, jitter_permille);
    if let Some(asked) = retry_after {
        wait = wait.max(asked.min(Duration::milliseconds(RETRY_AFTER_MS_MAX)));
    }
    Next::RetryAt((now + wait).min(window_end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn only_5xx_408_429_and_no_answer_are_retried() {
        assert_eq!(classify(Some(200)), Verdict::Delivered);
        assert_eq!(classify(Some(204)), Verdict::Delivered);
        for retry in [None, Some(408), Some(429), Some(500), Some(502), Some(503), Some(599)] {
            assert_eq!(classify(retry), Verdict::Retry, "{retry:?}");
        }
        for fail in [Some(301), Some(302), Some(400), Some(401), Some(404), Some(410), Some(422), Some(100)] {
            assert_eq!(classify(fail), Verdict::Failed, "{fail:?}");
        }
    }

    #[test]
    fn backoff_doubles_from_ten_seconds_with_bounded_jitter_and_a_cap() {
        assert_eq!(backoff(1, 0), Duration::seconds(10));
        assert_eq!(backoff(2, 0), Duration::seconds(20));
        assert_eq!(backoff(3, 0), Duration::seconds(40));
        assert_eq!(backoff(2, BACKOFF_JITTER_PERMILLE_MAX), Duration::seconds(24));
        assert_eq!(backoff(2, 10_000), Duration::seconds(24), "jitter is clamped");
        assert_eq!(backoff(20, 0), Duration::milliseconds(BACKOFF_MAX_MS));
        assert_eq!(backoff(u32::MAX, 0), Duration::milliseconds(BACKOFF_MAX_MS));
        assert_eq!(backoff(0, 0), Duration::seconds(10));
    }

    #[test]
    fn retries_end_at_the_window_and_then_abandon() {
        let first = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("time");
        assert_eq!(next_attempt(1, first, first, None, 0), Next::RetryAt(first + Duration::seconds(10)));
        let late = first + Duration::hours(23) + Duration::minutes(30);
        assert_eq!(next_attempt(15, first, late, None, 0), Next::RetryAt(first + Duration::hours(24)));
        assert_eq!(next_attempt(16, first, first + Duration::hours(24), None, 0), Next::Abandon);
        assert_eq!(next_attempt(ATTEMPTS_MAX, first, first, None, 0), Next::Abandon);
        // Retry-After is honoured when longer than the backoff, up to its bound.
        assert_eq!(
            next_attempt(1, first, first, Some(Duration::seconds(120)), 0),
            Next::RetryAt(first + Duration::seconds(120))
        );
        assert_eq!(
            next_attempt(1, first, first, Some(Duration::days(3)), 0),
            Next::RetryAt(first + Duration::milliseconds(RETRY_AFTER_MS_MAX))
        );
        // Total attempts over the window stay well under the hard bound.
        let (mut now, mut attempt) = (first, 1);
        while let Next::RetryAt(at) = next_attempt(attempt, first, now, None, BACKOFF_JITTER_PERMILLE_MAX) {
            assert!(at > now);
            now = at;
            attempt += 1;
        }
        assert!(attempt < ATTEMPTS_MAX, "{attempt}");
        assert_eq!(now, first + Duration::hours(24));
    }
}
