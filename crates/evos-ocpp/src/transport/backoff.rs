//! Reconnect delays. OCPP 1.6 leaves reconnecting to the station; many
//! stations reconnecting at once after a CSMS outage must not arrive
//! together, hence exponential growth with jitter (2.0.1's
//! RetryBackOffWaitMinimum / RetryBackOffRandomRange serve the same end).

use std::time::Duration;

/// Exponential back-off with "equal jitter": the n-th delay is drawn
/// uniformly from `[c/2, c]` where `c = min(max, min · 2ⁿ)`. Unlike full
/// jitter (`[0, c]`) it never retries at once, yet still spreads a fleet
/// over half the window.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    ceiling: Duration,
    rng: fastrand::Rng,
}

impl Backoff {
    /// `max` below `min` is taken as `min`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            ceiling: min,
            rng: fastrand::Rng::new(),
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = ceiling.saturating_mul(2).min(self.max);
        let half = ceiling / 2;
        let span = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(self.rng.u64(0..=span))
    }

    /// Back to `min`, after a connection succeeded.
    pub fn reset(&mut self) {
        self.ceiling = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn grows_to_the_cap_with_jitter_in_bounds_and_resets() {
        let mut b = Backoff::new(S, 60 * S);
        let ceilings = [1, 2, 4, 8, 16, 32, 60, 60, 60];
        for _round in 0..50 {
            for c in ceilings {
                let d = b.next_delay();
                let c = c * S;
                assert!(d >= c / 2 && d <= c, "{d:?} outside [{:?}, {c:?}]", c / 2);
            }
            b.reset();
        }
    }

    #[test]
    fn jitters() {
        let mut b = Backoff::new(10 * S, 10 * S);
        let first = b.next_delay();
        assert!((0..100).any(|_| b.next_delay() != first));
    }

    #[test]
    fn degenerate_bounds() {
        let mut b = Backoff::new(5 * S, S);
        assert!(b.next_delay() <= 5 * S);
        let mut zero = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert_eq!(zero.next_delay(), Duration::ZERO);
        let mut huge = Backoff::new(Duration::MAX / 2, Duration::MAX);
        for _ in 0..5 {
            huge.next_delay();
        }
    }
}
