//! A request budget shared by every replica: GCRA in Lua on the Redis server's clock.

use std::time::Duration;

use super::conn::{Redis, millis};
use crate::store::error::StoreError;

/// What the shared quota says of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Sent now.
    Go,
    /// The budget has a slot this much later.
    Wait(Duration),
    /// The upstream asked to slow down (a 429 or repeated 503s seen by any
    /// replica): nothing goes for this long.
    Cooling(Duration),
}

/// GCRA over the time of the Redis server (replicas' clocks disagree), with the
/// shared cool-down checked in the same round trip. ARGV: the emission interval
/// and the burst tolerance, in microseconds. Returns 0 (go), a positive wait or a
/// negative cool-down, in microseconds.
const GCRA: &str = r"
local cool = redis.call('PTTL', KEYS[2])
if cool > 0 then return -cool * 1000 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > tau then return tat - now - tau end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.floor((new_tat - now) / 1000) + 1000)
return 0";

script!(gcra_script, GCRA);

/// Starts the cool-down, or extends it; never shortens it: a `Retry-After: 120`
/// is not cut to a second by a later 503 streak (KEYS: the cool-down; ARGV: its
/// length in ms).
const COOL: &str = r"
local left = redis.call('PTTL', KEYS[1])
if left < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], 1, 'PX', ARGV[1])
  return 1
end
return 0";

script!(cool_script, COOL);

/// A request budget shared by every replica (the upstream's quota).
pub struct RedisQuota {
    redis: Redis,
    rate_key: String,
    cool_key: String,
    interval_us: u64,
    tau_us: u64,
}

impl RedisQuota {
    /// `rps` requests a second, bursts of `burst`, under `name`.
    pub fn new(redis: Redis, name: &str, rps: u32, burst: u32) -> Self {
        let interval_us = 1_000_000 / u64::from(rps.max(1));
        Self {
            rate_key: format!("{}q:{name}", redis.prefix),
            cool_key: format!("{}cool:{name}", redis.prefix),
            interval_us,
            tau_us: interval_us.saturating_mul(u64::from(burst.max(1)) - 1),
            redis,
        }
    }

    pub async fn take(&self) -> Result<Take, StoreError> {
        let (k1, k2, i, t) = (
            self.rate_key.clone(),
            self.cool_key.clone(),
            self.interval_us,
            self.tau_us,
        );
        let v: i64 = self
            .redis
            .run(async move |mut c| {
                gcra_script()
                    .key(&k1)
                    .key(&k2)
                    .arg(i)
                    .arg(t)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(match v {
            0 => Take::Go,
            w if w > 0 => Take::Wait(Duration::from_micros(w.unsigned_abs())),
            c => Take::Cooling(Duration::from_micros(c.unsigned_abs())),
        })
    }

    /// Starts (or extends, never shortens) the shared cool-down.
    pub async fn cool(&self, d: Duration) -> Result<(), StoreError> {
        let (k, ms) = (self.cool_key.clone(), millis(d));
        let _: i64 = self
            .redis
            .run(async move |mut c| cool_script().key(&k).arg(ms).invoke_async(&mut c).await)
            .await?;
        Ok(())
    }
}
