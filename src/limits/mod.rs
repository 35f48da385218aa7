//! Rate limits and load bounds, one mechanism per file:
//!
//! - [`caller`]: a token bucket per caller identity (shared by all of the caller's
//!   connections);
//! - [`upstream_budget`]: the budget of requests toward the upstream, shared by
//!   every caller, with a cool-down after a 429 or repeated 503s;
//! - [`breaker`]: the circuit breaker that fails calls fast while the upstream is
//!   down;
//! - [`retry_budget`]: the cap on retries as a fraction of requests;
//! - [`concurrency`]: uploads and downloads in progress, per replica and per
//!   caller.
//!
//! All of it runs on tokio's clock, so tests can pause time.

mod breaker;
mod caller;
mod concurrency;
mod retry_budget;
mod upstream_budget;

use std::num::NonZeroU32;
use std::time::Duration;

use governor::Quota;
use governor::clock::Clock;
use tokio::time::Instant;

pub use self::breaker::{CircuitBreaker, Permit};
pub use self::caller::CallerLimits;
pub use self::concurrency::{Concurrency, Slot};
pub use self::retry_budget::RetryBudget;
pub use self::upstream_budget::UpstreamBudget;
use crate::config::Rate;

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

/// What the caller is told: which limit, why, and when to retry.
impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "refused by the `{}` limit: {}; retry in {} ms",
            self.limit,
            self.description,
            self.retry_after.as_millis()
        )
    }
}

pub(crate) fn quota(r: Rate) -> Quota {
    let rps = NonZeroU32::new(r.rps).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(r.burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(rps).allow_burst(burst)
}
