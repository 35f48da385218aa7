//! The circuit breaker toward the upstream.

use std::time::Duration;

use tokio::time::Instant;

use super::Refusal;

/// Fails calls fast while the upstream is down: after `threshold` consecutive
/// failures the circuit opens for `open_for`; then one probe call goes through,
/// and its outcome closes the circuit or opens it again.
pub struct CircuitBreaker {
    threshold: u32,
    open_for: Duration,
    state: std::sync::Mutex<BreakerState>,
}

#[derive(Debug, Default)]
struct BreakerState {
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

impl CircuitBreaker {
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            open_for,
            state: std::sync::Mutex::new(BreakerState::default()),
        }
    }

    /// Whether a call may go now; `Err` carries when to try again.
    pub fn allow(&self) -> Result<(), Refusal> {
        let Ok(mut s) = self.state.lock() else {
            return Ok(());
        };
        let Some(until) = s.open_until else {
            return Ok(());
        };
        let now = Instant::now();
        if now < until {
            return Err(Refusal {
                limit: "upstream_circuit_open",
                subject: "upstream".into(),
                description: format!(
                    "the upstream failed {} times in a row; calls fail fast until a probe succeeds",
                    self.threshold
                ),
                retry_after: until - now,
            });
        }
        if s.probing {
            return Err(Refusal {
                limit: "upstream_circuit_open",
                subject: "upstream".into(),
                description: "a probe call to the recovering upstream is under way".into(),
                retry_after: Duration::from_millis(200),
            });
        }
        s.probing = true;
        Ok(())
    }

    /// Forgets a call that ended without an outcome (it was cancelled).
    pub fn release(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.probing = false;
        }
    }

    /// Records a call's outcome.
    pub fn record(&self, ok: bool) {
        let Ok(mut s) = self.state.lock() else { return };
        s.probing = false;
        if ok {
            if s.open_until.is_some() {
                tracing::info!("the upstream answered again: circuit closed");
            }
            *s = BreakerState::default();
            return;
        }
        s.failures += 1;
        if s.failures >= self.threshold || s.open_until.is_some() {
            if s.open_until.is_none_or(|u| u <= Instant::now()) {
                tracing::warn!(failures = s.failures, open_for = ?self.open_for, "the upstream keeps failing: circuit open");
            }
            s.open_until = Some(Instant::now() + self.open_for);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_the_threshold_and_probes_its_way_back() {
        let b = CircuitBreaker::new(3, Duration::from_secs(5));
        for _ in 0..2 {
            b.allow().unwrap();
            b.record(false);
        }
        b.allow().unwrap();
        b.record(true); // a success resets the count
        for _ in 0..3 {
            b.allow().unwrap();
            b.record(false);
        }
        let r = b.allow().unwrap_err();
        assert_eq!(
            (r.limit, r.retry_after),
            ("upstream_circuit_open", Duration::from_secs(5))
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        b.allow().unwrap(); // the probe
        assert!(b.allow().is_err(), "one probe at a time");
        b.record(false); // the probe failed: open again
        assert!(b.allow().is_err());
        tokio::time::advance(Duration::from_secs(5)).await;
        b.allow().unwrap();
        b.record(true);
        b.allow().unwrap();
        b.allow().unwrap();
    }
}
