//! The login rate limit: at most `max_failures` failed logins per e-mail address and per client
//! address within a sliding window. A success does not reset the client address's count, so one
//! known account cannot be used to keep guessing others.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed logins kept per key, in memory. A restart clears them.
pub struct LoginLimiter {
    max_failures: usize,
    window: Duration,
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl LoginLimiter {
    pub fn new(max_failures: usize, window: Duration) -> Self {
        Self {
            max_failures,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn keys(email: &str, client: Option<IpAddr>) -> Vec<String> {
        let mut keys = vec![format!("email:{email}")];
        if let Some(ip) = client {
            keys.push(format!("ip:{ip}"));
        }
        keys
    }

    /// Returns how long the caller must wait before trying again, or `None` when a login
    /// attempt is allowed now.
    pub fn retry_after(
        &self,
        email: &str,
        client: Option<IpAddr>,
        now: Instant,
    ) -> Option<Duration> {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let mut wait = None;
        for key in Self::keys(email, client) {
            let Some(times) = failures.get_mut(&key) else {
                continue;
            };
            times.retain(|t| now.duration_since(*t) < self.window);
            if times.len() >= self.max_failures {
                let oldest = times[times.len() - self.max_failures];
                let remaining = self.window - now.duration_since(oldest);
                wait = Some(wait.map_or(remaining, |w: Duration| w.max(remaining)));
            }
        }
        wait
    }

    pub fn record_failure(&self, email: &str, client: Option<IpAddr>, now: Instant) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        // Bound memory under a flood of distinct e-mail addresses.
        if failures.len() > 100_000 {
            failures.retain(|_, times| times.iter().any(|t| now.duration_since(*t) < self.window));
        }
        for key in Self::keys(email, client) {
            failures.entry(key).or_default().push(now);
        }
    }

    /// Forgets the failures of an e-mail address after its owner logged in.
    pub fn record_success(&self, email: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        failures.remove(&format!("email:{email}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_applies_per_email_and_per_client() {
        let limiter = LoginLimiter::new(3, Duration::from_secs(60));
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.retry_after("a@x.io", Some(ip), start), None);
            limiter.record_failure("a@x.io", Some(ip), start);
        }
        let wait = limiter.retry_after("a@x.io", None, start).unwrap();
        assert_eq!(wait, Duration::from_secs(60));
        // Another address from the same client is limited too.
        assert!(limiter.retry_after("b@x.io", Some(ip), start).is_some());
        // The window slides.
        let later = start + Duration::from_secs(61);
        assert_eq!(limiter.retry_after("a@x.io", Some(ip), later), None);
    }
}
