//! The write records' Lua scripts: each runs whole on the Redis server, so two
//! replicas never both run a write, and a lease lost to expiry is never
//! overwritten by its old holder's outcome.

script!(pub(super) begin_script, BEGIN);
script!(pub(super) epoch_script, EPOCH);
script!(pub(super) renew_script, RENEW);
script!(pub(super) complete_script, COMPLETE);
script!(pub(super) abandon_script, ABANDON);
script!(pub(super) commit_script, COMMIT);
script!(pub(super) give_up_script, GIVE_UP);
script!(pub(super) take_over_script, TAKE_OVER);

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

/// Extends the lease when the caller still holds it (KEYS: record; ARGV: the
/// running value's prefix `r|<token>|`, the lease in ms). Never takes a key
/// that is not held: a renewal that arrives after the key was given up (or
/// taken by another replica) changes nothing.
const RENEW: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, string.len(ARGV[1])) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0";

/// The commit point: turns the caller's live lease into the committed record
/// (KEYS: record; ARGV: `r|<token>|`, the committed value, the TTL in ms); 0,
/// and nothing changed, when the lease is not the caller's (any more).
const COMMIT: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, string.len(ARGV[1])) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0";

/// Stores the outcome in place of the record the token holds, running or
/// committed, or of nothing (a record Redis lost) (KEYS: record; ARGV: the
/// token, the done value, the TTL in ms); 0 when another holds the key.
const COMPLETE: &str = r"
local v = redis.call('GET', KEYS[1])
local r = 'r|' .. ARGV[1] .. '|'
local c = 'c|' .. ARGV[1] .. '|'
if (not v) or string.sub(v, 1, string.len(r)) == r or string.sub(v, 1, string.len(c)) == c then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0";

/// The holder lost the answer of a committed write: its record says so,
/// keeping its expiry (KEYS: record; ARGV: the token, the new committed value,
/// the TTL in ms for a record Redis lost).
const GIVE_UP: &str = r"
local v = redis.call('GET', KEYS[1])
local c = 'c|' .. ARGV[1] .. '|'
if v and string.sub(v, 1, string.len(c)) == c then
  redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
  return 1
end
if not v then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0";

/// A retry that found a committed write provably not applied runs it again:
/// the committed record becomes its lease (KEYS: record; ARGV: the committed
/// record's token, the new running value, the lease in ms).
const TAKE_OVER: &str = r"
local v = redis.call('GET', KEYS[1])
local c = 'c|' .. ARGV[1] .. '|'
if v and string.sub(v, 1, string.len(c)) == c then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0";

/// Drops the record the token holds, running or committed (KEYS: record;
/// ARGV: the token).
const ABANDON: &str = r"
local v = redis.call('GET', KEYS[1])
local r = 'r|' .. ARGV[1] .. '|'
local c = 'c|' .. ARGV[1] .. '|'
if v and (string.sub(v, 1, string.len(r)) == r or string.sub(v, 1, string.len(c)) == c) then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0";
