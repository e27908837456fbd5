//! Opt-in fixed-window rate limit for the partner endpoints.

use axum::http::{HeaderMap, HeaderValue};

/// Counts partner requests per UTC minute.
// NOTE: Braze documents 250,000 requests per hour per workspace for these
// endpoints. The emulator counts all workspaces together in one-minute windows,
// so that tests can reach the limit quickly.
#[derive(Debug, Clone)]
pub(crate) struct RateLimiter {
    limit: u32,
    window_start: i64,
    used: u32,
}

/// The outcome of one check, with the values of the rate-limit headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateStatus {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// End of the current window in UTC epoch seconds.
    pub reset: i64,
}

impl RateLimiter {
    pub fn new(limit: u32) -> Self {
        RateLimiter {
            limit,
            window_start: i64::MIN,
            used: 0,
        }
    }

    /// Counts one request at `now` (UTC epoch seconds) if the window has room.
    pub fn check(&mut self, now: i64) -> RateStatus {
        let window_start = now - now.rem_euclid(60);
        if window_start != self.window_start {
            self.window_start = window_start;
            self.used = 0;
        }
        let allowed = self.used < self.limit;
        if allowed {
            self.used += 1;
        }
        RateStatus {
            allowed,
            limit: self.limit,
            remaining: self.limit - self.used,
            reset: window_start + 60,
        }
    }

    pub fn reset(&mut self) {
        self.window_start = i64::MIN;
        self.used = 0;
    }
}

impl RateStatus {
    /// Sets the `x-ratelimit-*` headers that Braze documents for its REST API.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        headers.insert("x-ratelimit-limit", HeaderValue::from(self.limit));
        headers.insert("x-ratelimit-remaining", HeaderValue::from(self.remaining));
        headers.insert("x-ratelimit-reset", HeaderValue::from(self.reset));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_rejects_after_limit_within_window() {
        let mut limiter = RateLimiter::new(2);
        let first = limiter.check(1_700_000_010);
        let second = limiter.check(1_700_000_020);
        let third = limiter.check(1_700_000_030);
        assert!(first.allowed);
        assert_eq!(first.remaining, 1);
        assert!(second.allowed);
        assert_eq!(second.remaining, 0);
        assert!(!third.allowed);
        assert_eq!(third.remaining, 0);
    }

    #[test]
    fn check_reports_window_end_as_reset() {
        let mut limiter = RateLimiter::new(1);
        // 1_699_999_980 is a multiple of 60, so the window ends 60 s later.
        assert_eq!(limiter.check(1_700_000_000).reset, 1_700_000_040);
    }

    #[test]
    fn check_starts_new_window_each_minute() {
        let mut limiter = RateLimiter::new(1);
        assert!(limiter.check(1_700_000_000).allowed);
        assert!(!limiter.check(1_700_000_030).allowed);
        assert!(limiter.check(1_700_000_040).allowed);
    }
}
