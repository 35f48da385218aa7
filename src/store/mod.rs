//! State that replicas must share to act as one gateway, behind one interface per
//! use, each with an in-process backend (the default, for one replica).
//!
//! - [`writes`]: writes remembered by the caller's message id (idempotency);
//! - [`event_log`]: the log of attachment events that watches read.
//!
//! [`redis`] holds the shared backends of both (and the shared quotas);
//! [`Stores::open`] picks the backends the settings ask for.

pub mod error;
pub mod event_log;
pub mod redis;
pub mod writes;

use std::sync::Arc;
use std::time::Duration;

pub use self::error::StoreError;
use self::event_log::{MemoryEventLog, Retention, SharedLog};
use self::redis::{FailureHook, Redis, RedisEventLog, RedisWrites, SetupError};
use self::writes::{MemoryWrites, WriteStore};
use crate::config::SharedStateSettings;

/// The state of one gateway: in the Redis that `shared_state` names, shared
/// with every replica, else in this process.
pub struct Stores {
    /// The connection, for the shared quotas too; none without Redis.
    pub redis: Option<Redis>,
    /// Writes remembered by message id, for `idempotency_ttl`.
    pub writes: Arc<dyn WriteStore>,
    /// The event log, kept as `retention` says.
    pub log: SharedLog,
}

impl Stores {
    /// Connects to Redis when the settings name one, and opens the write
    /// records and the event log there (else in this process). Each Redis
    /// command that fails is told to `on_failure`.
    pub async fn open(
        s: &SharedStateSettings,
        idempotency_ttl: Duration,
        retention: Retention,
        on_failure: FailureHook,
    ) -> Result<Self, SetupError> {
        let Some(redis) = redis::connect(s, on_failure).await? else {
            return Ok(Self {
                redis: None,
                writes: Arc::new(MemoryWrites::new(idempotency_ttl)),
                log: Arc::new(MemoryEventLog::new(retention)),
            });
        };
        let writes = RedisWrites::start(redis.for_use("write_records")).await?;
        // Notices a Redis that lost its data even with no write under way.
        crate::periodic::every(&writes, Duration::from_secs(1), |w| async move {
            w.check_epoch().await
        });
        // The event log on a connection of its own: resuming watches pull
        // history in bulk, and must not hold up the write records and quotas.
        let log = RedisEventLog::start(redis.own_connection("event_log").await?, retention).await?;
        Ok(Self {
            redis: Some(redis),
            writes,
            log: Arc::new(log),
        })
    }
}
