//! The connection to the shared Redis: one connection manager per process (it
//! reconnects by itself), every command bounded by `shared_state.command_timeout`
//! and counted when it fails; and what the uses share (epochs, milliseconds).

use std::time::Duration;

use redis::aio::ConnectionManager;

use crate::store::error::StoreError;

/// Told of each command to Redis that failed or timed out, with the use it
/// served (`write_records`, `upstream_budget`, `caller_rate`, `event_log`).
pub type FailureHook = std::sync::Arc<dyn Fn(&'static str) + Send + Sync>;

/// A connection to the shared Redis.
#[derive(Clone)]
pub struct Redis {
    client: redis::Client,
    conn: ConnectionManager,
    pub(super) prefix: String,
    pub(super) timeout: Duration,
    on_failure: Option<FailureHook>,
    /// What this handle's commands are for (see [`FailureHook`]).
    purpose: &'static str,
}

impl Redis {
    /// Connects (within `timeout`); `password`, when given, replaces one in the URL.
    pub async fn connect(
        url: &str,
        password: Option<String>,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        Self::connect_with_ca(url, password, None, prefix, timeout).await
    }

    /// As [`Self::connect`]; with `rediss://`, `ca_pem` (PEM certificates) is
    /// what the server's certificate must chain to instead of the system roots.
    pub async fn connect_with_ca(
        url: &str,
        password: Option<String>,
        ca_pem: Option<Vec<u8>>,
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
        // Small commands, several in flight on one connection: without
        // TCP_NODELAY (off by default in the client) Nagle's algorithm holds a
        // command back until the previous one is acknowledged.
        let tcp = info.tcp_settings().clone().set_nodelay(true);
        info = info.set_tcp_settings(tcp);
        let client = match ca_pem {
            Some(ca) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca),
                },
            ),
            None => redis::Client::open(info),
        }
        .map_err(|e| StoreError(format!("shared_state: {e}")))?;
        // One plain attempt first: the manager retries a failing connection until
        // its timeout, which would hide why (a refused certificate or password).
        let probe = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        let mut first = tokio::time::timeout(
            timeout * 2,
            client.get_multiplexed_async_connection_with_config(&probe),
        )
        .await
        .map_err(|_| StoreError("connecting to Redis timed out".into()))?
        .map_err(|e| StoreError(format!("cannot connect to Redis: {e}")))?;
        let _: () = tokio::time::timeout(timeout, redis::cmd("PING").query_async(&mut first))
            .await
            .map_err(|_| StoreError("Redis did not answer PING in time".into()))?
            .map_err(|e| StoreError(format!("Redis refused PING: {e}")))?;
        drop(first);
        let conn = manager(&client, timeout).await?;
        Ok(Self {
            client,
            conn,
            prefix: prefix.to_string(),
            timeout,
            on_failure: None,
            purpose: "shared_state",
        })
    }

    /// Warns when Redis may evict keys (a `maxmemory-policy` other than
    /// `noeviction`): an evicted write record runs a write twice, an evicted
    /// epoch expires every cursor. Managed services that refuse `CONFIG` are
    /// left to their documentation.
    pub async fn warn_unless_noeviction(&self) {
        let policy: Result<Vec<String>, _> = self
            .run(async move |mut c| {
                redis::cmd("CONFIG")
                    .arg("GET")
                    .arg("maxmemory-policy")
                    .query_async(&mut c)
                    .await
            })
            .await;
        match policy.ok().and_then(|v| v.into_iter().nth(1)) {
            Some(p) if p == "noeviction" => {}
            Some(p) => tracing::warn!(
                maxmemory_policy = %p,
                "the shared Redis may evict keys: set maxmemory-policy to noeviction (an evicted write record lets a retried write run twice; an evicted event log key expires every watch's cursor)"
            ),
            None => tracing::info!(
                "cannot read the shared Redis's maxmemory-policy (CONFIG refused): it must be noeviction"
            ),
        }
    }

    /// This connection, telling `hook` of each failed command.
    pub fn with_failure_hook(mut self, hook: FailureHook) -> Self {
        self.on_failure = Some(hook);
        self
    }

    /// A handle on a connection of its own (the same server and settings),
    /// whose failures count for `purpose`: a use that moves much data (the
    /// event log's history, read by every resuming watch) does not queue the
    /// small commands of another (write records, quotas) behind it.
    pub async fn own_connection(&self, purpose: &'static str) -> Result<Self, StoreError> {
        Ok(Self {
            conn: manager(&self.client, self.timeout).await?,
            purpose,
            ..self.clone()
        })
    }

    /// A handle (on the same connection) whose failures count for `purpose`.
    pub fn for_use(&self, purpose: &'static str) -> Self {
        Self {
            purpose,
            ..self.clone()
        }
    }

    pub(super) fn failed(&self) {
        if let Some(h) = &self.on_failure {
            h(self.purpose);
        }
    }

    /// Runs `cmd`, bounded by the command timeout.
    pub(super) async fn run<T: redis::FromRedisValue>(
        &self,
        f: impl AsyncFnOnce(ConnectionManager) -> redis::RedisResult<T>,
    ) -> Result<T, StoreError> {
        let r = match tokio::time::timeout(self.timeout, f(self.conn.clone())).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError(format!("Redis: {e}"))),
            Err(_) => Err(StoreError("Redis did not answer in time".into())),
        };
        if r.is_err() {
            self.failed();
        }
        r
    }

    /// A connection of its own, for a command that blocks (`XREAD BLOCK`) and
    /// would hold up every other command on the shared one; its answers may
    /// take `block` longer than the command timeout.
    pub(super) async fn dedicated(
        &self,
        block: Duration,
    ) -> Result<redis::aio::MultiplexedConnection, StoreError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(block + self.timeout));
        tokio::time::timeout(
            self.timeout * 2,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| StoreError("connecting to Redis timed out".into()))?
        .map_err(|e| StoreError(format!("cannot connect to Redis: {e}")))
    }
}

/// A connection manager (it reconnects by itself), every command bounded.
async fn manager(
    client: &redis::Client,
    timeout: Duration,
) -> Result<ConnectionManager, StoreError> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    tokio::time::timeout(
        timeout * 4,
        ConnectionManager::new_with_config(client.clone(), config),
    )
    .await
    .map_err(|_| StoreError("connecting to Redis timed out".into()))?
    .map_err(|e| StoreError(format!("cannot connect to Redis: {e}")))
}

/// After Redis lost its data, how long write records nobody has put back yet
/// are refused rather than run: longer than replicas take to notice (each
/// checks every second) and put their records back.
pub const EPOCH_GRACE: Duration = Duration::from_secs(5);

/// A new epoch's name.
pub(super) fn new_epoch() -> String {
    format!("{:x}", uuid::Uuid::new_v4().as_u128() as u64)
}

/// Milliseconds for `PX`/`PEXPIRE` (at least 1: 0 is an error to Redis).
pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Replaces the epoch if it is still `ARGV[1]` with `ARGV[2]`, and starts the
/// grace period (KEYS: epoch, restoring; ARGV[3]: the grace in ms): Redis lost
/// data that was acknowledged. Returns the epoch now.
const REPLACE_EPOCH: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
end
return redis.call('GET', KEYS[1])";

script!(replace_epoch_script, REPLACE_EPOCH);

/// Starts another epoch if it is still `old`, with the grace period in which
/// replicas put back the write records they remember: for when a use finds
/// Redis lost acknowledged data while the epoch survived (a failover, or a
/// restart from an older snapshot). Returns the epoch now.
pub(super) async fn replace_epoch(redis: &Redis, old: &str) -> Result<String, StoreError> {
    let (k, r, old, new, grace) = (
        format!("{}epoch", redis.prefix),
        format!("{}restoring", redis.prefix),
        old.to_string(),
        new_epoch(),
        millis(EPOCH_GRACE),
    );
    redis
        .run(async move |mut c| {
            replace_epoch_script()
                .key(&k)
                .key(&r)
                .arg(&old)
                .arg(&new)
                .arg(grace)
                .invoke_async(&mut c)
                .await
        })
        .await
}
