//! A token bucket per caller identity, shared by all of the caller's connections.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use governor::RateLimiter;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};

use super::{Refusal, TokioClock, quota};
use crate::config::{Rate, RateLimitSettings};
use crate::store::redis::{Redis, RedisQuota, Take};

type Keyed =
    RateLimiter<Arc<str>, DefaultKeyedStateStore<Arc<str>>, TokioClock, NoOpMiddleware<Duration>>;
type Direct = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// A token bucket per caller identity.
pub struct CallerLimits {
    clock: TokioClock,
    default_rate: Rate,
    default: Keyed,
    overrides: HashMap<String, (Rate, Direct)>,
    /// Each caller's budget across every replica, when they share state; the
    /// local bucket above stays as the first, cheap filter.
    shared: Option<Redis>,
    last_fallback_log: std::sync::Mutex<Option<tokio::time::Instant>>,
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
            shared: None,
            last_fallback_log: std::sync::Mutex::new(None),
        }
    }

    /// Shares each caller's budget with every replica through Redis.
    pub fn shared(mut self, redis: Redis) -> Self {
        self.shared = Some(redis);
        self
    }

    /// The rates of `rate_limit`, shared through `redis` by every replica
    /// when there is one.
    pub fn with_redis(s: &RateLimitSettings, redis: Option<&Redis>) -> Self {
        let limits = Self::new(s);
        match redis {
            Some(r) => limits.shared(r.for_use("caller_rate")),
            None => limits,
        }
    }

    fn rate_of(&self, key: &str) -> Rate {
        self.overrides
            .get(key)
            .map_or(self.default_rate, |(rate, _)| *rate)
    }

    /// [`check`](Self::check), then the caller's budget across replicas when
    /// shared. While Redis cannot answer, the local bucket alone applies.
    pub async fn check_everywhere(&self, key: &Arc<str>) -> Result<(), Refusal> {
        self.check(key)?;
        let Some(redis) = &self.shared else {
            return Ok(());
        };
        let rate = self.rate_of(key);
        let name = {
            use sha2::Digest;
            format!(
                "caller:{}",
                hex::encode(&sha2::Sha256::digest(key.as_bytes())[..16])
            )
        };
        let q = RedisQuota::new(redis.clone(), &name, rate.rps, rate.burst);
        match q.take().await {
            Ok(Take::Go) | Ok(Take::Cooling(_)) => Ok(()),
            Ok(Take::Wait(wait)) => Err(Refusal {
                limit: "per_caller_rate",
                subject: format!("caller:{key}"),
                description: format!(
                    "at most {} requests/s (bursts of {}) per caller, across every replica",
                    rate.rps, rate.burst
                ),
                retry_after: wait,
            }),
            Err(e) => {
                let now = tokio::time::Instant::now();
                if let Ok(mut last) = self.last_fallback_log.lock()
                    && last.is_none_or(|t| now.duration_since(t) > Duration::from_secs(10))
                {
                    *last = Some(now);
                    tracing::warn!(error = %e, "the shared per-caller budgets are unavailable: this replica's own apply meanwhile");
                }
                Ok(())
            }
        }
    }

    /// Takes one request from a caller's bucket. `key` names the caller with its
    /// kind (`api_key:billing`, `jwt:billing`, `mtls:…`), so callers of different
    /// kinds that share a name never share a bucket or an override.
    pub fn check(&self, key: &Arc<str>) -> Result<(), Refusal> {
        let (rate, result) = match self.overrides.get(&**key) {
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
        assert!(l.check(&a).is_ok());
        assert!(l.check(&a).is_ok());
        let r = l.check(&a).unwrap_err();
        assert_eq!(r.limit, "per_caller_rate");
        assert_eq!(r.retry_after, Duration::from_millis(500));
        assert!(l.check(&b).is_ok(), "callers have separate buckets");
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!(l.check(&a).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn overrides_replace_the_default_rate() {
        let mut s = settings();
        s.overrides
            .insert("jwt:vip".into(), Rate { rps: 100, burst: 5 });
        let l = CallerLimits::new(&s);
        let k: Arc<str> = "jwt:vip".into();
        for _ in 0..5 {
            assert!(l.check(&k).is_ok());
        }
        assert!(l.check(&k).is_err());
        // The same name of another kind is another caller, at the default rate.
        let other: Arc<str> = "api_key:vip".into();
        assert!(l.check(&other).is_ok() && l.check(&other).is_ok());
        assert!(l.check(&other).is_err());
    }
}
