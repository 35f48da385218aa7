//! The write records' Lua scripts: each runs whole on the Redis server, so two
//! replicas never both run a write, and a lease lost to expiry is never
//! overwritten by its old holder's outcome.

script!(pub(super) begin_script, BEGIN);
script!(pub(super) epoch_script, EPOCH);
script!(pub(super) renew_script, RENEW);
script!(pub(super) complete_script, COMPLETE);
script!(pub(super) abandon_script, ABANDON);

/// Looks a key up and takes it when free (KEYS: record, epoch, restoring;
/// ARGV: the running value, the lease in ms, then the epoch arguments).
/// Returns the epoch, then `have` and the record, `restoring` (Redis lost its
/// data moments ago and replicas are putting back what they remember), or `go`.
const BEGIN: &str = concat!(
    ensure_epoch!(),
    r"
local e = epoch(KEYS[2], KEYS[3], ARGV[3], ARGV[4])
local cur = redis.call('GET', KEYS[1])
if cur then return {e, 'have', cur} end
if redis.call('EXISTS', KEYS[3]) == 1 then return {e, 'restoring'} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {e, 'go'}"
);

/// The epoch, made when missing (KEYS: epoch, restoring; ARGV: the epoch arguments).
const EPOCH: &str = concat!(
    ensure_epoch!(),
    r"
return epoch(KEYS[1], KEYS[2], ARGV[1], ARGV[2])"
);

/// Extends the lease when the caller still holds it, or takes the key back
/// when it is free (a Redis that lost it while the write ran).
const RENEW: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, string.len(ARGV[1])) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not v then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[2])
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
