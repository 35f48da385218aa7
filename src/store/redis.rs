//! The Redis backend of the shared state: one connection manager per process
//! (it reconnects by itself), every command bounded by `shared_state.command_timeout`.
//!
//! Write records ([`RedisWrites`]) are one string key per write,
//! `<prefix>w:<sha256 of the key's fields>`:
//! - while a write runs, `r|<lease token>|<fingerprint>` with a TTL of the lease,
//!   renewed by the running replica (a replica killed mid-write leaves a key that
//!   expires, after which a retry proceeds);
//! - once done, `d|<fingerprint>|<outcome as JSON>` with the idempotency TTL.
//!
//! Every transition is one `SET NX` or one Lua script, so two replicas never
//! both run a write, and a lease lost to expiry is never overwritten by its old
//! holder's outcome when another replica took the key since.

use std::time::Duration;

use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};

use super::StoreError;
use super::writes::{Begin, Fingerprint, LeaseToken, Outcome, WriteKey, WriteStore};

/// A connection to the shared Redis.
#[derive(Clone)]
pub struct Redis {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
}

impl Redis {
    /// Connects (within `timeout`); `password`, when given, replaces one in the URL.
    pub async fn connect(
        url: &str,
        password: Option<String>,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let mut info: redis::ConnectionInfo = url
            .parse()
            .map_err(|e: redis::RedisError| StoreError(format!("shared_state.redis_url: {e}")))?;
        if let Some(p) = password {
            let settings = info.redis_settings().clone().set_password(p);
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info).map_err(|e| StoreError(e.to_string()))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let conn = tokio::time::timeout(
            timeout * 4,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| StoreError("connecting to Redis timed out".into()))?
        .map_err(|e| StoreError(format!("cannot connect to Redis: {e}")))?;
        Ok(Self {
            conn,
            prefix: prefix.to_string(),
            timeout,
        })
    }

    /// Runs `cmd`, bounded by the command timeout.
    async fn run<T: redis::FromRedisValue>(
        &self,
        f: impl AsyncFnOnce(ConnectionManager) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, f(self.conn.clone())).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError(format!("Redis: {e}"))),
            Err(_) => Err(StoreError("Redis did not answer in time".into())),
        }
    }
}

/// A script, hashed once (its SHA-1 names it to `EVALSHA`), not on every call.
macro_rules! script {
    ($fn_name:ident, $src:ident) => {
        fn $fn_name() -> &'static redis::Script {
            static S: std::sync::LazyLock<redis::Script> =
                std::sync::LazyLock::new(|| redis::Script::new($src));
            &S
        }
    };
}
script!(renew_script, RENEW);
script!(complete_script, COMPLETE);
script!(abandon_script, ABANDON);
script!(gcra_script, GCRA);

/// Write records in Redis, shared by every replica.
pub struct RedisWrites {
    redis: Redis,
}

impl RedisWrites {
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    fn key(&self, k: &WriteKey) -> String {
        let mut h = Sha256::new();
        for f in [
            k.caller.as_bytes(),
            k.call.as_bytes(),
            &k.work_order_id.to_le_bytes(),
            k.message_id.as_bytes(),
        ] {
            h.update((f.len() as u64).to_le_bytes());
            h.update(f);
        }
        format!("{}w:{}", self.redis.prefix, hex::encode(h.finalize()))
    }
}

fn running(token: LeaseToken, fp: Fingerprint) -> String {
    format!("r|{:032x}|{}", token.0, hex::encode(fp.0))
}

fn holder(token: LeaseToken) -> String {
    format!("r|{:032x}|", token.0)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn fingerprint(hex_fp: &str) -> Result<Fingerprint, StoreError> {
    let bytes =
        hex::decode(hex_fp).map_err(|_| StoreError("a write record is malformed".into()))?;
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| StoreError("a write record is malformed".into()))?;
    Ok(Fingerprint(arr))
}

/// Reads a stored record.
fn parse(v: &str) -> Result<Begin, StoreError> {
    let bad = || StoreError("a write record is malformed".into());
    let mut parts = v.splitn(3, '|');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("r"), Some(_token), Some(fp)) => Ok(Begin::Running {
            fingerprint: fingerprint(fp)?,
        }),
        (Some("d"), Some(fp), Some(outcome)) => Ok(Begin::Done {
            fingerprint: fingerprint(fp)?,
            outcome: serde_json::from_str(outcome).map_err(|_| bad())?,
        }),
        _ => Err(bad()),
    }
}

/// Extends the lease when the caller still holds it.
const RENEW: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, string.len(ARGV[1])) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0";

/// Stores the outcome unless another replica holds the key now.
const COMPLETE: &str = r"
local v = redis.call('GET', KEYS[1])
if (not v) or string.sub(v, 1, string.len(ARGV[1])) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0";

/// Drops the lease when the caller still holds it.
const ABANDON: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, string.len(ARGV[1])) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0";

#[tonic::async_trait]
impl WriteStore for RedisWrites {
    async fn begin(
        &self,
        key: &WriteKey,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<Begin, StoreError> {
        let k = self.key(key);
        // Twice at most: a record that expires between the SET and the GET.
        for _ in 0..2 {
            let token = LeaseToken(uuid::Uuid::new_v4().as_u128());
            let value = running(token, fingerprint);
            let (k1, v1, ms) = (k.clone(), value, millis(lease));
            let taken: Option<String> = self
                .redis
                .run(async move |mut c| {
                    redis::cmd("SET")
                        .arg(&k1)
                        .arg(&v1)
                        .arg("NX")
                        .arg("PX")
                        .arg(ms)
                        .query_async(&mut c)
                        .await
                })
                .await?;
            if taken.is_some() {
                return Ok(Begin::Go(token));
            }
            let k2 = k.clone();
            let current: Option<String> = self
                .redis
                .run(async move |mut c| redis::cmd("GET").arg(&k2).query_async(&mut c).await)
                .await?;
            if let Some(v) = current {
                return parse(&v);
            }
        }
        Err(StoreError(
            "a write record changed under the gateway twice".into(),
        ))
    }

    async fn renew(
        &self,
        key: &WriteKey,
        token: LeaseToken,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let (k, h, ms) = (self.key(key), holder(token), millis(lease));
        let n: i64 = self
            .redis
            .run(async move |mut c| {
                renew_script()
                    .key(&k)
                    .arg(&h)
                    .arg(ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(n == 1)
    }

    async fn complete(
        &self,
        key: &WriteKey,
        token: LeaseToken,
        fingerprint: Fingerprint,
        outcome: &Outcome,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(outcome).map_err(|e| StoreError(e.to_string()))?;
        let value = format!("d|{}|{json}", hex::encode(fingerprint.0));
        let (k, h, ms) = (self.key(key), holder(token), millis(ttl));
        let n: i64 = self
            .redis
            .run(async move |mut c| {
                complete_script()
                    .key(&k)
                    .arg(&h)
                    .arg(&value)
                    .arg(ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        if n == 0 {
            tracing::warn!(
                "a write's lease was taken by another replica before it completed: its outcome is not stored"
            );
        }
        Ok(())
    }

    async fn abandon(&self, key: &WriteKey, token: LeaseToken) -> Result<(), StoreError> {
        let (k, h) = (self.key(key), holder(token));
        let _: i64 = self
            .redis
            .run(async move |mut c| abandon_script().key(&k).arg(&h).invoke_async(&mut c).await)
            .await?;
        Ok(())
    }

    fn leases_expire(&self) -> bool {
        true
    }
}

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

    /// Starts (or extends) the shared cool-down.
    pub async fn cool(&self, d: Duration) -> Result<(), StoreError> {
        let (k, ms) = (self.cool_key.clone(), millis(d));
        let _: () = self
            .redis
            .run(async move |mut c| {
                redis::cmd("SET")
                    .arg(&k)
                    .arg(1)
                    .arg("PX")
                    .arg(ms)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }
}
