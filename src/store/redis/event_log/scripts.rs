//! The event log's Lua scripts: each runs whole on the Redis server.

/// Appends (KEYS: stream, epoch, dedupe, bytes, gone, restoring, last; ARGV: a
/// new epoch in case there is none, the dedupe member or '', its TTL in ms, the
/// most dedupe keys, the most events, the most bytes, the longest age in ms, the
/// grace in ms, then a work order and a body per event). Returns the epoch,
/// then 'dup' or 'new' and the ids.
///
/// Each entry names the entry before it (`p`), so a reader knows the chain it
/// follows is whole: one that finds another predecessor than the last entry it
/// read has met a gap (retention dropped entries it never read) or a stream
/// that went back (Redis lost its newest entries). The dedupe key is written
/// last, so an append that fails part-way is not taken for done when the
/// notification comes again.
const APPEND: &str = concat!(
    ensure_epoch!(),
    r"
local e = epoch(KEYS[2], KEYS[6], ARGV[1], ARGV[8])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[2] ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZSCORE', KEYS[3], ARGV[2]) then return {e, 'dup'} end
end
local out = {e, 'new'}
local added = 0
local prev = redis.call('GET', KEYS[7]) or '0-0'
for i = 9, #ARGV, 2 do
  prev = redis.call('XADD', KEYS[1], '*', 'e', e, 'p', prev, 'w', ARGV[i], 'b', ARGV[i + 1])
  out[#out + 1] = prev
  added = added + string.len(ARGV[i + 1])
end
if #out > 2 then redis.call('SET', KEYS[7], prev) end
local bytes = redis.call('INCRBY', KEYS[4], added)
local len = redis.call('XLEN', KEYS[1])
local oldest = now - tonumber(ARGV[7])
local gone = false
for _ = 1, 1000 do
  local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
  if not first then
    -- Nothing held: nothing counted (heals a count that drifted).
    redis.call('SET', KEYS[4], 0)
    break
  end
  local ms = tonumber(string.match(first[1], '^(%d+)')) or 0
  if len > tonumber(ARGV[5]) or bytes > tonumber(ARGV[6]) or ms < oldest then
    local size = 0
    for j = 1, #first[2], 2 do
      if first[2][j] == 'b' then size = string.len(first[2][j + 1]) end
    end
    redis.call('XDEL', KEYS[1], first[1])
    bytes = redis.call('DECRBY', KEYS[4], size)
    len = len - 1
    gone = first[1]
  else
    break
  end
end
if gone then redis.call('SET', KEYS[5], gone) end
if ARGV[2] ~= '' then
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[2])
  local over = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[4])
  if over > 0 then redis.call('ZREMRANGEBYRANK', KEYS[3], 0, over - 1) end
end
return out"
);

/// Reads after a cursor (KEYS: stream, epoch, gone; ARGV: the cursor's epoch,
/// its entry id, how many). Returns 'expired', or 'ok', the newest entry
/// retention dropped, and the entries.
const READ: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return {'expired'} end
local gone = redis.call('GET', KEYS[3]) or '0-0'
if tonumber(ARGV[3]) == 0 then return {'ok', gone, {}} end
return {'ok', gone, redis.call('XRANGE', KEYS[1], '(' .. ARGV[2], '+', 'COUNT', ARGV[3])}";

/// Where the log stands (KEYS: epoch, gone, restoring, last; ARGV: a new epoch
/// in case there is none, the grace in ms): the epoch, the last entry
/// appended, the newest dropped.
const HEAD: &str = concat!(
    ensure_epoch!(),
    r"
local e = epoch(KEYS[1], KEYS[3], ARGV[1], ARGV[2])
return {e, redis.call('GET', KEYS[4]) or '0-0', redis.call('GET', KEYS[2]) or '0-0'}"
);

script!(pub(super) append, APPEND);
script!(pub(super) read, READ);
script!(pub(super) head, HEAD);
