//! The budget of requests toward the upstream, shared by every call, with a
//! cool-down after a 429 or repeated 503s.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use governor::RateLimiter;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use tokio::time::Instant;

use super::{Refusal, TokioClock, quota};
use crate::config::{Rate, RateLimitSettings};
use crate::store::redis::{Redis, RedisQuota, Take};

type Direct = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// The budget of requests toward the upstream, shared by every call.
pub struct UpstreamBudget {
    clock: TokioClock,
    rate: Rate,
    limiter: Direct,
    max_wait: Duration,
    cool_until: std::sync::Mutex<Option<Instant>>,
    consecutive_503: AtomicU32,
    threshold_503: u32,
    /// The deployment's budget in Redis, when replicas share state; the local
    /// limiter is then the fallback while Redis cannot answer.
    shared: Option<std::sync::Arc<RedisQuota>>,
    /// When the last "falling back to the local budget" line was logged.
    last_fallback_log: std::sync::Mutex<Option<Instant>>,
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
            shared: None,
            last_fallback_log: std::sync::Mutex::new(None),
        }
    }

    /// Shares the budget (and the cool-down) with every replica through Redis.
    pub fn shared(mut self, quota: RedisQuota) -> Self {
        self.shared = Some(std::sync::Arc::new(quota));
        self
    }

    /// The budget of `rate_limit.upstream`, shared through `redis` by every
    /// replica when there is one.
    pub fn with_redis(s: &RateLimitSettings, redis: Option<&Redis>) -> Self {
        let budget = Self::new(s);
        match redis {
            Some(r) => budget.shared(RedisQuota::new(
                r.for_use("upstream_budget"),
                "upstream",
                s.upstream.rps,
                s.upstream.burst,
            )),
            None => budget,
        }
    }

    fn cooling_refusal(left: Duration) -> Refusal {
        Refusal {
            limit: "upstream_cool_down",
            subject: "upstream".into(),
            description:
                "the upstream asked the gateway to slow down (429 or repeated 503); all calls wait"
                    .into(),
            retry_after: left,
        }
    }

    fn rate_refusal(&self, wait: Duration, whose: &str) -> Refusal {
        Refusal {
            limit: "upstream_rate",
            subject: "upstream".into(),
            description: format!(
                "at most {} upstream requests/s (bursts of {}) from {whose}",
                self.rate.rps, self.rate.burst
            ),
            retry_after: wait,
        }
    }

    /// The shared budget: `None` when Redis cannot answer (the caller falls back
    /// to the local budget).
    async fn acquire_shared(
        &self,
        q: &RedisQuota,
        deadline: Instant,
    ) -> Option<Result<(), Refusal>> {
        loop {
            match q.take().await {
                Ok(Take::Go) => return Some(Ok(())),
                Ok(Take::Cooling(left)) => return Some(Err(Self::cooling_refusal(left))),
                Ok(Take::Wait(wait)) => {
                    if Instant::now() + wait > deadline {
                        return Some(Err(self.rate_refusal(wait, "the whole deployment")));
                    }
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    let now = Instant::now();
                    if let Ok(mut last) = self.last_fallback_log.lock()
                        && last.is_none_or(|t| now.duration_since(t) > Duration::from_secs(10))
                    {
                        *last = Some(now);
                        tracing::warn!(error = %e, "the shared upstream budget is unavailable: this replica's own budget applies meanwhile");
                    }
                    return None;
                }
            }
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
            return Err(Self::cooling_refusal(left));
        }
        let deadline = Instant::now() + self.max_wait;
        if let Some(q) = &self.shared
            && let Some(r) = self.acquire_shared(q, deadline).await
        {
            return r;
        }
        loop {
            match self.limiter.check() {
                Ok(()) => return Ok(()),
                Err(not_until) => {
                    let wait = not_until.wait_time_from(self.clock.now());
                    if Instant::now() + wait > deadline {
                        return Err(self.rate_refusal(wait, "this replica"));
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
            // Every replica cools down, not only the one that was told.
            if let Some(q) = &self.shared {
                let q = std::sync::Arc::clone(q);
                tokio::spawn(async move {
                    if let Err(e) = q.cool(d.min(Duration::from_secs(300))).await {
                        tracing::warn!(error = %e, "cannot share the cool-down");
                    }
                });
            }
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
