//! Write records in Redis (see the module above for the layout): the store
//! itself here; a record's key and value in `record`, the Lua scripts in
//! `scripts`, and the records this replica remembers (and puts back into a
//! Redis that lost them) in `mirror`.

mod mirror;
mod record;
mod scripts;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use self::mirror::{Mirror, put_back};
use self::record::{committed, done, holder, parse, running, token_hex};
use self::scripts::{
    abandon_script, begin_script, commit_script, complete_script, epoch_script, give_up_script,
    renew_script, take_over_script,
};
use super::conn::{EPOCH_GRACE, Redis, millis, new_epoch, replace_epoch};
use crate::store::error::StoreError;
use crate::store::writes::{
    Begin, Fingerprint, LeaseToken, Outcome, Pending as PendingOutcome, WriteKey, WriteStore,
};

/// Write records in Redis, shared by every replica. Each replica also keeps
/// the records it wrote (bounded) and puts them back into a Redis that lost
/// its data, so a retry of a write any replica still remembers never runs
/// twice; for [`EPOCH_GRACE`] after such a loss, a write whose record
/// nobody has put back yet is refused (retry-safe) rather than run.
pub struct RedisWrites {
    redis: Redis,
    epoch_key: String,
    restoring_key: String,
    /// The shared state's epoch as this replica last saw it.
    known: Mutex<Option<String>>,
    mirror: Mutex<Mirror>,
    /// Itself, for the restore task.
    me: std::sync::Weak<Self>,
    /// A restore is under way (one at a time).
    restoring: std::sync::atomic::AtomicBool,
    /// Leases left by failed begins being released (bounded).
    releases: Arc<tokio::sync::Semaphore>,
}

/// Leases of failed begins released at once, at most; past that they expire.
const MAX_RELEASES: usize = 256;

/// Releases a lease a `begin` may have left when the begin did not finish
/// (failed, or cut off by the caller's deadline while its command was sent).
struct Pending<'a> {
    writes: &'a RedisWrites,
    key: String,
    token: LeaseToken,
    lease: Duration,
    armed: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.writes
                .release_later(std::mem::take(&mut self.key), self.token, self.lease);
        }
    }
}

impl RedisWrites {
    /// Opens the write records (Redis must answer); the epoch is made now if
    /// the Redis is new, without a grace period (there is nothing to put back).
    pub async fn start(redis: Redis) -> Result<Arc<Self>, StoreError> {
        let epoch_key = format!("{}epoch", redis.prefix);
        let k = epoch_key.clone();
        let found: Option<String> = redis
            .run(async move |mut c| redis::cmd("GET").arg(&k).query_async(&mut c).await)
            .await?;
        if found.is_none() {
            // A new Redis (or one that lost its data moments ago, before any
            // running replica noticed: they make a new epoch with a grace period
            // within a second, and put their records back).
            let (k, cand) = (epoch_key.clone(), new_epoch());
            let _: () = redis
                .run(async move |mut c| {
                    redis::cmd("SET")
                        .arg(&k)
                        .arg(&cand)
                        .arg("NX")
                        .query_async(&mut c)
                        .await
                })
                .await?;
        }
        let w = Arc::new_cyclic(|me| Self {
            restoring_key: format!("{}restoring", redis.prefix),
            epoch_key,
            redis,
            known: Mutex::new(None),
            mirror: Mutex::new(Mirror::default()),
            me: me.clone(),
            restoring: std::sync::atomic::AtomicBool::new(false),
            releases: Arc::new(tokio::sync::Semaphore::new(MAX_RELEASES)),
        });
        w.check_epoch().await;
        Ok(w)
    }

    fn key(&self, k: &WriteKey) -> String {
        record::key(&self.redis.prefix, k)
    }
}

impl RedisWrites {
    fn mirror(&self) -> std::sync::MutexGuard<'_, Mirror> {
        self.mirror.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes the epoch Redis answered with; another than the one known means
    /// Redis lost its data: this replica puts back what it remembers.
    fn saw_epoch(&self, epoch: &str) {
        let changed = {
            let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            match known.as_deref() {
                Some(k) if k == epoch => false,
                Some(_) => {
                    *known = Some(epoch.to_string());
                    true
                }
                None => {
                    *known = Some(epoch.to_string());
                    false
                }
            }
        };
        if changed && let Some(me) = self.me.upgrade() {
            tracing::warn!(
                "Redis lost the shared state (a restart without its data, or a failover): putting back the write records this replica remembers"
            );
            tokio::spawn(async move { me.restore().await });
        }
    }

    /// Puts this replica's live records back, one restore at a time.
    async fn restore(&self) {
        use std::sync::atomic::Ordering;
        if self.restoring.swap(true, Ordering::AcqRel) {
            return;
        }
        let live = self.mirror().live();
        if !live.is_empty() {
            put_back(&self.redis, &self.restoring_key, &live).await;
        }
        self.restoring.store(false, Ordering::Release);
    }

    /// Runs `script`, which replaces the record `who` holds with `value`
    /// (KEYS: the record; ARGV: who, the value, its lifetime in ms; 1 when it
    /// did), and remembers `value` once Redis has it.
    async fn replace(
        &self,
        script: &'static redis::Script,
        k: String,
        who: String,
        value: String,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let (k1, v, ms) = (k.clone(), value.clone(), millis(ttl));
        let n: i64 = self
            .redis
            .run(async move |mut c| {
                script
                    .key(&k1)
                    .arg(&who)
                    .arg(&v)
                    .arg(ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        if n == 1 {
            self.mirror().put(&k, value, ttl);
        }
        Ok(n == 1)
    }

    /// Drops, once Redis answers, a lease a failed `begin` may have left (only
    /// if it is still that lease), trying for up to a lease's length; at most
    /// `MAX_RELEASES` at once (past that, such leases expire by themselves).
    fn release_later(&self, key: String, token: LeaseToken, lease: Duration) {
        let Ok(permit) = Arc::clone(&self.releases).try_acquire_owned() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let redis = self.redis.clone();
        rt.spawn(async move {
            let _permit = permit;
            let h = token_hex(token);
            let until = tokio::time::Instant::now() + lease;
            let mut wait = Duration::from_millis(250);
            while tokio::time::Instant::now() < until {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
                let (k, h) = (key.clone(), h.clone());
                let released: Result<i64, _> = redis
                    .run(async move |mut c| {
                        abandon_script().key(&k).arg(&h).invoke_async(&mut c).await
                    })
                    .await;
                if released.is_ok() {
                    return;
                }
            }
        });
    }

    /// Checks the epoch (every second): a replica that sees Redis lost its data
    /// puts its records back even when no write comes its way.
    pub async fn check_epoch(&self) {
        let (e, r, cand, grace) = (
            self.epoch_key.clone(),
            self.restoring_key.clone(),
            new_epoch(),
            millis(EPOCH_GRACE),
        );
        let epoch: Result<String, _> = self
            .redis
            .run(async move |mut c| {
                epoch_script()
                    .key(&e)
                    .key(&r)
                    .arg(&cand)
                    .arg(grace)
                    .invoke_async(&mut c)
                    .await
            })
            .await;
        let Ok(epoch) = epoch else { return };
        self.saw_epoch(&epoch);
        // A loss that left the epoch (a failover to a replica that lacked the
        // newest writes, a restart from an older snapshot) shows as a record
        // this replica stored, still live, gone from Redis.
        let canary = self.mirror().newest_done();
        let Some((k, left)) = canary else { return };
        if left < Duration::from_secs(3) {
            return;
        }
        let k1 = k.clone();
        let exists: Result<i64, _> = self
            .redis
            .run(async move |mut c| redis::cmd("EXISTS").arg(&k1).query_async(&mut c).await)
            .await;
        if matches!(exists, Ok(0)) {
            tracing::warn!(
                "a write record this replica stored is gone from Redis (a failover or a restart from an older snapshot): starting a new epoch so replicas put theirs back"
            );
            if let Ok(now) = replace_epoch(&self.redis, &epoch).await {
                self.saw_epoch(&now);
            }
        }
    }
}

#[tonic::async_trait]
impl WriteStore for RedisWrites {
    async fn begin(
        &self,
        key: &WriteKey,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<Begin, StoreError> {
        let k = self.key(key);
        let token = LeaseToken(uuid::Uuid::new_v4().as_u128());
        let value = running(token, fingerprint);
        let (k1, v1, ms, e, r, cand, grace) = (
            k.clone(),
            value.clone(),
            millis(lease),
            self.epoch_key.clone(),
            self.restoring_key.clone(),
            new_epoch(),
            millis(EPOCH_GRACE),
        );
        let mut pending = Pending {
            writes: self,
            key: k.clone(),
            token,
            lease,
            armed: true,
        };
        let answer: Vec<String> = match self
            .redis
            .run(async move |mut c| {
                begin_script()
                    .key(&k1)
                    .key(&e)
                    .key(&r)
                    .arg(&v1)
                    .arg(ms)
                    .arg(&cand)
                    .arg(grace)
                    .invoke_async(&mut c)
                    .await
            })
            .await
        {
            Ok(a) => a,
            // The command may still run once Redis answers again (a paused or
            // slow Redis reads it from its socket later), leaving a lease nobody
            // holds that would refuse every retry until it expires: `pending`
            // releases it (as it does when the caller's deadline cuts this off).
            Err(e) => return Err(e),
        };
        pending.armed = false;
        let mut answer = answer.into_iter();
        if let Some(epoch) = answer.next() {
            self.saw_epoch(&epoch);
        }
        let remembered = self.mirror().get(&k);
        match (answer.next().as_deref(), answer.next(), remembered) {
            (Some("have"), Some(v), _) => parse(&v),
            // Free in Redis but remembered here: Redis lost it. The record
            // goes back (over the lease just taken) and answers.
            (Some("go") | Some("restoring"), _, Some((v, left))) => {
                let (k2, v2, ms) = (k.clone(), v.clone(), millis(left));
                self.redis
                    .run(async move |mut c| {
                        redis::cmd("SET")
                            .arg(&k2)
                            .arg(&v2)
                            .arg("PX")
                            .arg(ms)
                            .query_async::<()>(&mut c)
                            .await
                    })
                    .await?;
                parse(&v)
            }
            (Some("go"), _, None) => {
                self.mirror().put(&k, value, lease);
                Ok(Begin::Go(token))
            }
            (Some("restoring"), _, None) => Err(StoreError(
                "Redis lost its data moments ago; replicas are putting their write records back"
                    .into(),
            )),
            _ => Err(StoreError("a write record is malformed".into())),
        }
    }

    async fn renew(
        &self,
        key: &WriteKey,
        token: LeaseToken,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let k = self.key(key);
        let (k1, h, ms) = (k.clone(), holder(token), millis(lease));
        let n: i64 = self
            .redis
            .run(async move |mut c| {
                renew_script()
                    .key(&k1)
                    .arg(&h)
                    .arg(ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        if n == 1 {
            // Unless the write completed meanwhile (its outcome replaces this).
            self.mirror()
                .put_unless_done(&k, running(token, fingerprint), lease);
        }
        Ok(n == 1)
    }

    async fn commit(
        &self,
        key: &WriteKey,
        token: LeaseToken,
        fingerprint: Fingerprint,
        pending: &PendingOutcome,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let value = committed(token, fingerprint, pending)?;
        self.replace(commit_script(), self.key(key), holder(token), value, ttl)
            .await
    }

    async fn complete(
        &self,
        key: &WriteKey,
        token: LeaseToken,
        fingerprint: Fingerprint,
        outcome: &Outcome,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        // Remembered only once Redis has it: an outcome Redis never got is not
        // mistaken later for one Redis lost.
        let value = done(fingerprint, outcome)?;
        self.replace(
            complete_script(),
            self.key(key),
            token_hex(token),
            value,
            ttl,
        )
        .await
    }

    async fn give_up(
        &self,
        key: &WriteKey,
        token: LeaseToken,
        fingerprint: Fingerprint,
        pending: &PendingOutcome,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let value = committed(token, fingerprint, pending)?;
        self.replace(
            give_up_script(),
            self.key(key),
            token_hex(token),
            value,
            ttl,
        )
        .await
    }

    async fn take_over(
        &self,
        key: &WriteKey,
        token: LeaseToken,
        fingerprint: Fingerprint,
        lease: Duration,
    ) -> Result<Option<LeaseToken>, StoreError> {
        let new = LeaseToken::new();
        let value = running(new, fingerprint);
        let taken = self
            .replace(
                take_over_script(),
                self.key(key),
                token_hex(token),
                value,
                lease,
            )
            .await?;
        Ok(taken.then_some(new))
    }

    async fn abandon(&self, key: &WriteKey, token: LeaseToken) -> Result<(), StoreError> {
        let k = self.key(key);
        let t = token_hex(token);
        // Forgotten first (a record dropped must not be put back should Redis
        // lose its data), but only when this token holds it: a late abandon
        // by an attempt a retry took over leaves the retry's record alone.
        self.mirror().forget_held(&k, &t);
        let _: i64 = self
            .redis
            .run(async move |mut c| abandon_script().key(&k).arg(&t).invoke_async(&mut c).await)
            .await?;
        Ok(())
    }

    fn leases_expire(&self) -> bool {
        true
    }
}
