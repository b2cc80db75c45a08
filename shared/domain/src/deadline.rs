//! The invocation's deadline, passed down so no work starts that cannot
//! finish in the time left.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// When the invocation must have answered; `None`: unknown (in-process
/// tests, or a local emulator).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Deadline(Option<Instant>);

impl Deadline {
    /// No deadline known.
    pub const NONE: Deadline = Deadline(None);

    /// From the Lambda context's deadline (milliseconds since the epoch).
    /// A deadline already past when the handler starts is no real one:
    /// `cargo lambda watch` sends a constant 600,000 (which is 1970), so it
    /// is taken as unknown.
    pub fn from_epoch_ms(deadline_ms: u64) -> Self {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        match deadline_ms.checked_sub(now_ms) {
            Some(left) if left > 0 => Deadline(Some(Instant::now() + Duration::from_millis(left))),
            _ => Deadline(None),
        }
    }

    /// A deadline `left` from now.
    pub fn after(left: Duration) -> Self {
        Deadline(Some(Instant::now() + left))
    }

    /// Time left; `None` when unknown.
    pub fn left(&self) -> Option<Duration> {
        self.0.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Whether `work` still fits in the time left (always, when unknown).
    pub fn fits(&self, work: Duration) -> bool {
        self.left().is_none_or(|left| left >= work)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_in_the_past_is_unknown_and_a_future_one_counts_down() {
        assert_eq!(Deadline::from_epoch_ms(600_000), Deadline::NONE);
        assert!(Deadline::NONE.fits(Duration::from_secs(3600)));
        let d = Deadline::after(Duration::from_secs(30));
        assert!(d.fits(Duration::from_secs(10)));
        assert!(!d.fits(Duration::from_secs(31)));
        let far = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
            + 60_000;
        assert!(Deadline::from_epoch_ms(far).left().is_some());
    }
}
