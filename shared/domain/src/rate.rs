//! Pacing: permits spaced out to a rate, across the refreshes of one sweep.

use std::time::Duration;
use tokio::sync::Mutex;

/// Spaces out permits to at most `per_second`.
pub struct RateLimiter {
    next: Mutex<tokio::time::Instant>,
    period: Duration,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> Self {
        Self {
            next: Mutex::new(tokio::time::Instant::now()),
            period: Duration::from_secs(1) / per_second.max(1),
        }
    }

    /// Waits for the next permit.
    pub async fn acquire(&self) {
        let at = {
            let mut next = self.next.lock().await;
            let at = (*next).max(tokio::time::Instant::now());
            *next = at + self.period;
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rate_limiter_spaces_permits() {
        let l = RateLimiter::new(50);
        let start = tokio::time::Instant::now();
        for _ in 0..11 {
            l.acquire().await;
        }
        // Ten gaps of 20 ms: never faster than the rate (slower is fine).
        let waited = start.elapsed();
        assert!(waited >= Duration::from_millis(199), "{waited:?}");
    }
}
