//! A cap on retries, as a fraction of requests.

use std::sync::atomic::{AtomicU64, Ordering};

/// Caps retries to a fraction of requests, so retries never multiply an outage:
/// each first attempt earns `ratio` of a retry (up to 10 saved), each retry
/// spends one.
pub struct RetryBudget {
    ratio_milli: u64,
    milli: AtomicU64,
}

impl RetryBudget {
    const CAP_MILLI: u64 = 10_000;

    pub fn new(ratio: f64) -> Self {
        Self {
            ratio_milli: (ratio.clamp(0.0, 1.0) * 1000.0) as u64,
            // Start with a few retries in hand.
            milli: AtomicU64::new(3_000),
        }
    }

    pub fn deposit(&self) {
        let _ = self
            .milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                Some((m + self.ratio_milli).min(Self::CAP_MILLI))
            });
    }

    pub fn withdraw(&self) -> bool {
        self.milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                m.checked_sub(1000)
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_budget_is_a_fraction_of_requests() {
        let r = RetryBudget::new(0.5);
        assert!(r.withdraw() && r.withdraw() && r.withdraw());
        assert!(!r.withdraw(), "the starting allowance is spent");
        r.deposit();
        assert!(!r.withdraw(), "half a retry per request");
        r.deposit();
        assert!(r.withdraw());
    }
}
