//! Write records in Redis (see the module above for the layout).

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{Redis, millis};
use crate::store::StoreError;
use crate::store::writes::{Begin, Fingerprint, LeaseToken, Outcome, WriteKey, WriteStore};

script!(renew_script, RENEW);
script!(complete_script, COMPLETE);
script!(abandon_script, ABANDON);

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
