//! The Redis backend of the shared state, one file per use, over one connection
//! (`conn`: a connection manager per process that reconnects by itself, every
//! command bounded by `shared_state.command_timeout`).
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
//!
//! The shared state has an epoch (`<prefix>epoch`). A Redis that lost its data
//! lost the epoch too; whoever finds it missing makes another and marks a grace
//! period (`<prefix>restoring`, [`EPOCH_GRACE`]) in which each replica puts back
//! the write records it remembers and a write with no record is refused
//! (retry-safe) instead of run; event cursors of the old epoch are refused as
//! expired.
//!
//! Quotas ([`RedisQuota`]) are GCRA in Lua on the server's clock; the event log
//! ([`RedisEventLog`]) is a stream read by one tail task per replica.

/// A script, hashed once (its SHA-1 names it to `EVALSHA`), not on every call.
macro_rules! script {
    ($vis:vis $fn_name:ident, $src:ident) => {
        $vis fn $fn_name() -> &'static redis::Script {
            static S: std::sync::LazyLock<redis::Script> =
                std::sync::LazyLock::new(|| redis::Script::new($src));
            &S
        }
    };
}

/// A Lua function making the shared state's epoch when it is missing:
/// `epoch(epoch key, restoring key, a new epoch, grace ms)`. A missing epoch at
/// run time means Redis lost its data: the restoring key then marks the grace
/// period in which replicas put back what they remember.
macro_rules! ensure_epoch {
    () => {
        r"
local function epoch(k, r, cand, grace)
  local e = redis.call('GET', k)
  if not e then
    redis.call('SET', k, cand)
    redis.call('SET', r, '1', 'PX', grace)
    e = cand
  end
  return e
end
"
    };
}

mod conn;
mod event_log;
mod quota;
mod setup;
mod writes;

pub use conn::{EPOCH_GRACE, FailureHook, Redis};
pub use event_log::RedisEventLog;
pub use quota::{RedisQuota, Take};
pub use setup::{SetupError, connect};
pub use writes::RedisWrites;
