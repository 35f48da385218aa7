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

/// A call the breaker let through; hand it back with its outcome, or release it.
#[derive(Debug)]
#[must_use]
pub struct Permit {
    /// The one call let through to probe a recovering upstream.
    probe: bool,
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
    pub fn allow(&self) -> Result<Permit, Refusal> {
        let ordinary = Permit { probe: false };
        let Ok(mut s) = self.state.lock() else {
            return Ok(ordinary);
        };
        let Some(until) = s.open_until else {
            return Ok(ordinary);
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
        Ok(Permit { probe: true })
    }

    /// Forgets a call that ended without an outcome (it was cancelled). Only the
    /// probe's release lets another probe through: an ordinary call that started
    /// before the circuit opened must not.
    pub fn release(&self, permit: Permit) {
        if permit.probe
            && let Ok(mut s) = self.state.lock()
        {
            s.probing = false;
        }
    }

    /// Records a call's outcome.
    pub fn record(&self, permit: Permit, ok: bool) {
        let Ok(mut s) = self.state.lock() else { return };
        if permit.probe {
            s.probing = false;
        }
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
            let p = b.allow().unwrap();
            b.record(p, false);
        }
        let p = b.allow().unwrap();
        b.record(p, true); // a success resets the count
        for _ in 0..3 {
            let p = b.allow().unwrap();
            b.record(p, false);
        }
        let r = b.allow().unwrap_err();
        assert_eq!(
            (r.limit, r.retry_after),
            ("upstream_circuit_open", Duration::from_secs(5))
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        let probe = b.allow().unwrap();
        assert!(b.allow().is_err(), "one probe at a time");
        b.record(probe, false); // the probe failed: open again
        assert!(b.allow().is_err());
        tokio::time::advance(Duration::from_secs(5)).await;
        let probe = b.allow().unwrap();
        b.record(probe, true);
        let _ = b.allow().unwrap();
        let _ = b.allow().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_ordinary_call_lets_no_second_probe_through() {
        let b = CircuitBreaker::new(1, Duration::from_secs(5));
        let early = b.allow().unwrap(); // under way before the circuit opens
        let p = b.allow().unwrap();
        b.record(p, false); // open
        tokio::time::advance(Duration::from_secs(5)).await;
        let probe = b.allow().unwrap();
        b.release(early); // the early call is cancelled
        assert!(
            b.allow().is_err(),
            "still one probe at a time while the first probe runs"
        );
        b.release(probe); // the probe itself is cancelled: the next call probes
        let _ = b.allow().unwrap();
    }
}
