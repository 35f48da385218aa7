//! Rate limits and load bounds: a token bucket per caller (shared by all of the
//! caller's connections), a budget toward the upstream shared by every caller with
//! a cool-down after a 429 or repeated 503s, and bounds on uploads in progress.
//! All of it runs on tokio's clock, so tests can pause time.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use crate::config::{Rate, RateLimitSettings};

/// governor's clock, read from tokio's (so `tokio::time::pause` drives it).
#[derive(Clone, Debug)]
pub struct TokioClock {
    origin: Instant,
}

impl Default for TokioClock {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

type Keyed =
    RateLimiter<Arc<str>, DefaultKeyedStateStore<Arc<str>>, TokioClock, NoOpMiddleware<Duration>>;
type Direct = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// Which limit refused a call, and when a retry can succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Stable name of the limit: `per_caller_rate`, `upstream_rate`,
    /// `upstream_cool_down`, `concurrent_uploads`.
    pub limit: &'static str,
    /// What the limit applies to, e.g. `caller:jwt:billing`.
    pub subject: String,
    pub description: String,
    pub retry_after: Duration,
}

fn quota(r: Rate) -> Quota {
    let rps = NonZeroU32::new(r.rps).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(r.burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rps).allow_burst(burst)
}

/// A token bucket per caller identity.
pub struct CallerLimits {
    clock: TokioClock,
    default_rate: Rate,
    default: Keyed,
    overrides: HashMap<String, (Rate, Direct)>,
}

impl CallerLimits {
    pub fn new(s: &RateLimitSettings) -> Self {
        let clock = TokioClock::default();
        Self {
            default_rate: s.per_caller,
            default: RateLimiter::new(
                quota(s.per_caller),
                DefaultKeyedStateStore::default(),
                clock.clone(),
            ),
            overrides: s
                .overrides
                .iter()
                .map(|(k, r)| {
                    (
                        k.clone(),
                        (*r, RateLimiter::direct_with_clock(quota(*r), clock.clone())),
                    )
                })
                .collect(),
            clock,
        }
    }

    /// Takes one request from `caller`'s bucket (`id` is the bare identity, `key`
    /// also names the auth method).
    pub fn check(&self, id: &str, key: &Arc<str>) -> Result<(), Refusal> {
        let (rate, result) = match self.overrides.get(id) {
            Some((rate, limiter)) => (*rate, limiter.check()),
            None => (self.default_rate, self.default.check_key(key)),
        };
        result.map_err(|not_until| Refusal {
            limit: "per_caller_rate",
            subject: format!("caller:{key}"),
            description: format!(
                "at most {} requests/s (bursts of {}) per caller",
                rate.rps, rate.burst
            ),
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
    }

    /// Drops the buckets of callers that are full again (bounded memory).
    pub fn forget_idle(&self) {
        self.default.retain_recent();
    }
}

/// The budget of requests toward the upstream, shared by every call.
pub struct UpstreamBudget {
    clock: TokioClock,
    rate: Rate,
    limiter: Direct,
    max_wait: Duration,
    cool_until: std::sync::Mutex<Option<Instant>>,
    consecutive_503: AtomicU32,
    threshold_503: u32,
}

impl UpstreamBudget {
    pub fn new(s: &RateLimitSettings) -> Self {
        let clock = TokioClock::default();
        Self {
            rate: s.upstream,
            limiter: RateLimiter::direct_with_clock(quota(s.upstream), clock.clone()),
            clock,
            max_wait: s.upstream_max_wait,
            cool_until: std::sync::Mutex::new(None),
            consecutive_503: AtomicU32::new(0),
            threshold_503: s.cool_down_after_503s.max(1),
        }
    }

    fn cooling(&self) -> Option<Duration> {
        let until = (*self.cool_until.lock().ok()?)?;
        let now = Instant::now();
        (until > now).then(|| until - now)
    }

    /// Waits (at most `upstream_max_wait`) for a slot in the budget, or refuses.
    pub async fn acquire(&self) -> Result<(), Refusal> {
        if let Some(left) = self.cooling() {
            return Err(Refusal {
                limit: "upstream_cool_down",
                subject: "upstream".into(),
                description: "the upstream asked the gateway to slow down (429 or repeated 503); all calls wait".into(),
                retry_after: left,
            });
        }
        let deadline = Instant::now() + self.max_wait;
        loop {
            match self.limiter.check() {
                Ok(()) => return Ok(()),
                Err(not_until) => {
                    let wait = not_until.wait_time_from(self.clock.now());
                    if Instant::now() + wait > deadline {
                        return Err(Refusal {
                            limit: "upstream_rate",
                            subject: "upstream".into(),
                            description: format!(
                                "at most {} upstream requests/s (bursts of {}) from this replica",
                                self.rate.rps, self.rate.burst
                            ),
                            retry_after: wait,
                        });
                    }
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Learns from an upstream answer: a 429 starts a cool-down at once (its
    /// `Retry-After`, else 1 s); so do `cool_down_after_503s` 503s in a row.
    pub fn observe(&self, status: u16, retry_after: Option<Duration>) {
        let cool = |d: Duration| {
            if let Ok(mut g) = self.cool_until.lock() {
                let until = Instant::now() + d.min(Duration::from_secs(300));
                if g.is_none_or(|u| u < until) {
                    *g = Some(until);
                }
            }
            tracing::warn!(status, cool_down = ?d, "the upstream asked to slow down: cooling down");
        };
        match status {
            429 => cool(retry_after.unwrap_or(Duration::from_secs(1))),
            503 => {
                let n = self.consecutive_503.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= self.threshold_503 {
                    self.consecutive_503.store(0, Ordering::Relaxed);
                    cool(retry_after.unwrap_or(Duration::from_secs(1)));
                }
            }
            _ => self.consecutive_503.store(0, Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RateLimitSettings {
        RateLimitSettings {
            per_caller: Rate { rps: 2, burst: 2 },
            upstream: Rate { rps: 10, burst: 1 },
            upstream_max_wait: Duration::from_millis(150),
            cool_down_after_503s: 2,
            ..RateLimitSettings::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn per_caller_bucket_refills_with_time() {
        let l = CallerLimits::new(&settings());
        let a: Arc<str> = "api_key:a".into();
        let b: Arc<str> = "api_key:b".into();
        assert!(l.check("a", &a).is_ok());
        assert!(l.check("a", &a).is_ok());
        let r = l.check("a", &a).unwrap_err();
        assert_eq!(r.limit, "per_caller_rate");
        assert_eq!(r.retry_after, Duration::from_millis(500));
        assert!(l.check("b", &b).is_ok(), "callers have separate buckets");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(l.check("a", &a).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn overrides_replace_the_default_rate() {
        let mut s = settings();
        s.overrides
            .insert("vip".into(), Rate { rps: 100, burst: 5 });
        let l = CallerLimits::new(&s);
        let k: Arc<str> = "jwt:vip".into();
        for _ in 0..5 {
            assert!(l.check("vip", &k).is_ok());
        }
        assert!(l.check("vip", &k).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn upstream_budget_waits_briefly_then_refuses() {
        let b = UpstreamBudget::new(&settings());
        let t0 = Instant::now();
        b.acquire().await.unwrap();
        b.acquire().await.unwrap(); // waited 100 ms for the next slot
        assert_eq!(t0.elapsed(), Duration::from_millis(100));
        // Three at once: the third would wait 200 ms > 150 ms: refused.
        let (x, y) = tokio::join!(b.acquire(), b.acquire());
        let refused: Vec<_> = [x, y].into_iter().filter_map(Result::err).collect();
        assert_eq!(refused.len(), 1, "one waits for its slot, one is refused");
        assert_eq!(refused[0].limit, "upstream_rate");
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_or_repeated_503s_cool_everyone_down() {
        let b = UpstreamBudget::new(&settings());
        b.observe(429, Some(Duration::from_secs(3)));
        let r = b.acquire().await.unwrap_err();
        assert_eq!(
            (r.limit, r.retry_after),
            ("upstream_cool_down", Duration::from_secs(3))
        );
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(b.acquire().await.is_ok());
        b.observe(503, None);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.acquire().await.is_ok(), "one 503 is not enough");
        b.observe(503, None);
        assert_eq!(b.acquire().await.unwrap_err().limit, "upstream_cool_down");
        tokio::time::advance(Duration::from_secs(1)).await;
        b.observe(200, None);
        b.observe(503, None);
        assert!(b.acquire().await.is_ok(), "a success resets the 503 count");
    }
}

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

/// Caps retries to a fraction of requests, so retries never multiply an outage:
/// each first attempt earns `ratio` of a retry (up to 10 saved), each retry
/// spends one.
pub struct RetryBudget {
    ratio_milli: u64,
    milli: std::sync::atomic::AtomicU64,
}

impl RetryBudget {
    const CAP_MILLI: u64 = 10_000;

    pub fn new(ratio: f64) -> Self {
        Self {
            ratio_milli: (ratio.clamp(0.0, 1.0) * 1000.0) as u64,
            // Start with a few retries in hand.
            milli: std::sync::atomic::AtomicU64::new(3_000),
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
mod breaker_tests {
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
