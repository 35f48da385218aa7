//! Failed authentication is not free: failures are counted per source address and
//! in total, as token buckets, and past either budget new credentials are refused
//! without being checked (a signature check or a key lookup is work an attacker
//! should not get for free). Credentials that verified recently are not held up
//! (see [`super::cache`]): behind a service mesh every caller may come from the
//! same sidecar address, and one attacker there must not lock everyone out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Rate;
use crate::limits::Refusal;

/// The most source addresses tracked; past it, only the total budget applies to
/// new sources (memory stays bounded whatever the number of addresses).
const MAX_SOURCES: usize = 4096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: Rate) -> Self {
        Self {
            tokens: f64::from(rate.burst),
            at: Instant::now(),
        }
    }

    fn refill(&mut self, rate: Rate) {
        let now = Instant::now();
        let add = now.duration_since(self.at).as_secs_f64() * f64::from(rate.rps);
        self.tokens = (self.tokens + add).min(f64::from(rate.burst));
        self.at = now;
    }

    /// How long until a token is there (zero when one is).
    fn wait(&self, rate: Rate) -> Duration {
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / f64::from(rate.rps.max(1)))
        }
    }
}

pub struct FailureThrottle {
    per_source: Rate,
    total: Rate,
    state: Mutex<State>,
}

struct State {
    total: Bucket,
    sources: HashMap<IpAddr, Bucket>,
}

impl FailureThrottle {
    pub fn new(per_source: Rate, total: Rate) -> Self {
        Self {
            per_source,
            total,
            state: Mutex::new(State {
                total: Bucket::full(total),
                sources: HashMap::new(),
            }),
        }
    }

    /// Whether a credential not seen to verify recently may be checked now.
    pub fn check(&self, peer: Option<IpAddr>) -> Result<(), Refusal> {
        let Ok(mut s) = self.state.lock() else {
            return Ok(());
        };
        s.total.refill(self.total);
        let wait = s.total.wait(self.total);
        if !wait.is_zero() {
            return Err(Refusal {
                limit: "failed_auth",
                subject: "gateway".into(),
                description: format!(
                    "too many failed authentications on this replica (at most {}/s, bursts of {}); new credentials are not checked until then",
                    self.total.rps, self.total.burst
                ),
                retry_after: wait,
            });
        }
        if let Some(ip) = peer
            && let Some(b) = s.sources.get_mut(&ip)
        {
            b.refill(self.per_source);
            let wait = b.wait(self.per_source);
            if !wait.is_zero() {
                return Err(Refusal {
                    limit: "failed_auth_per_source",
                    subject: format!("source:{ip}"),
                    description: format!(
                        "too many failed authentications from this address (at most {}/s, bursts of {}); new credentials are not checked until then",
                        self.per_source.rps, self.per_source.burst
                    ),
                    retry_after: wait,
                });
            }
        }
        Ok(())
    }

    /// Counts a failed authentication from `peer`.
    pub fn failed(&self, peer: Option<IpAddr>) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        s.total.refill(self.total);
        s.total.tokens = (s.total.tokens - 1.0).max(-1.0);
        let Some(ip) = peer else { return };
        if !s.sources.contains_key(&ip) && s.sources.len() >= MAX_SOURCES {
            // Forget the sources whose budget is whole again.
            let rate = self.per_source;
            s.sources.retain(|_, b| {
                b.refill(rate);
                b.tokens < f64::from(rate.burst)
            });
            if s.sources.len() >= MAX_SOURCES {
                return;
            }
        }
        let b = s
            .sources
            .entry(ip)
            .or_insert_with(|| Bucket::full(self.per_source));
        b.refill(self.per_source);
        b.tokens = (b.tokens - 1.0).max(-1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failures_spend_the_sources_budget_and_the_total() {
        let t = FailureThrottle::new(Rate { rps: 1, burst: 3 }, Rate { rps: 10, burst: 5 });
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            t.check(Some(a)).unwrap();
            t.failed(Some(a));
        }
        let r = t.check(Some(a)).unwrap_err();
        assert_eq!(r.limit, "failed_auth_per_source");
        assert_eq!(r.retry_after, Duration::from_secs(1));
        t.check(Some(b)).unwrap();
        t.failed(Some(b));
        t.failed(Some(b));
        assert_eq!(
            t.check(Some(b)).unwrap_err().limit,
            "failed_auth",
            "5 in all"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        t.check(Some(a)).unwrap();
    }
}
