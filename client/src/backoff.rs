//! Reconnect pacing.

use std::time::Duration;

/// Exponential back-off with jitter between reconnect attempts: attempt `n` waits
/// between half and all of `min * 2^n`, capped at `max`. The client paces its own
/// reconnects with it; it is public for other reconnecting loops (the broker's MQTT
/// bridge) to pace theirs the same way.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `min`; never waits longer than `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// Attempts made since the last [`Backoff::reset`].
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The delay before the next attempt: `min * 2^attempt`, capped at `max`, then
    /// jittered down by up to half so that many clients cut off together do not all
    /// come back in the same instant.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self
            .min
            .saturating_mul(1u32.checked_shl(self.attempt).unwrap_or(u32::MAX));
        self.attempt = self.attempt.saturating_add(1);
        let capped = exp.min(self.max);
        let jitter = capped.mul_f64(fastrand::f64() * 0.5);
        capped - jitter
    }

    /// After a successful connection: start again from `min`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut last_cap = Duration::ZERO;
        for attempt in 0..40 {
            let d = b.next_delay();
            let cap = Duration::from_millis(100)
                .saturating_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
                .min(Duration::from_secs(2));
            assert!(
                d <= cap && d >= cap / 2,
                "attempt {attempt}: {d:?} vs {cap:?}"
            );
            assert!(cap >= last_cap);
            last_cap = cap;
        }
        assert_eq!(b.attempts(), 40);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
        let mut huge = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..100 {
            assert!(huge.next_delay() <= Duration::from_secs(30));
        }
    }
}
