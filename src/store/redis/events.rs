//! The event log on a Redis stream, shared by every replica.
//!
//! Keys under the prefix:
//! - `ev:s`, the stream: one entry per event (`e` its epoch, `w` its work
//!   order, `b` its encoded body), ids given by Redis (`<ms>-<seq>`, ordered);
//! - `epoch`: the shared state's epoch, made when missing. A Redis that lost
//!   its data has lost this key too, so the log gets another epoch and cursors
//!   of before are refused (OUT_OF_RANGE: resync) instead of silently skipping
//!   what was lost;
//! - `ev:d`: dedupe keys (a sorted set scored by expiry), bounded in number;
//! - `ev:bytes`, `ev:gone`: the bytes of the bodies held, and the newest entry
//!   retention dropped (a cursor older than it has missed events).
//!
//! An append is one Lua script: the dedupe check, the entries, and retention by
//! count, bytes and age (on the server's clock), so a notification is recorded
//! once or not at all. Reading is by one tail task per replica (`XREAD BLOCK`
//! on a connection of its own) into a bounded ring of recent events that every
//! watch on the replica reads; a watch further behind reads Redis directly.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use redis::Value;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::{EPOCH_GRACE, Redis, millis, new_epoch};
use crate::store::StoreError;
use crate::store::events::{
    Appended, BadCursor, Cursor, EventLog, NewEvent, ReadError, Recorded, Retention,
    format_event_id, parse_event_id,
};

/// How long the tail's `XREAD` waits for new entries.
const BLOCK: Duration = Duration::from_secs(1);
/// How often the tail checks the epoch and the stream's head (Redis losing its
/// data between two reads).
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// The pause before the tail tries again after Redis failed.
const RETRY: Duration = Duration::from_millis(250);
/// Entries the tail reads at a time.
const READ_COUNT: usize = 512;
/// The recent events each replica holds for its watches.
const RING_EVENTS: usize = 4096;
const RING_BYTES: usize = 8 << 20;

/// A stream entry id.
type Pos = (u64, u64);

fn parse_pos(id: &str) -> Option<Pos> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

fn pos_id(p: Pos) -> String {
    format!("{}-{}", p.0, p.1)
}

fn store_err(what: &str) -> StoreError {
    StoreError(format!("the event stream in Redis is malformed: {what}"))
}

struct Keys {
    stream: String,
    epoch: String,
    dedupe: String,
    bytes: String,
    gone: String,
    restoring: String,
    last: String,
}

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

/// Replaces the epoch if it is still `ARGV[1]` (KEYS: epoch); returns the epoch.
const NEW_EPOCH: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) end
return redis.call('GET', KEYS[1])";

script!(append_script, APPEND);
script!(read_script, READ);
script!(head_script, HEAD);
script!(new_epoch_script, NEW_EPOCH);

/// One event held in the ring.
struct Held {
    at: Pos,
    work_order_id: i64,
    body: Bytes,
}

/// The recent events of the current epoch: every event after `start` up to
/// `last` is in `entries` (the ring is contiguous), while `healthy`.
struct Ring {
    epoch: String,
    start: Pos,
    /// The last entry of the chain the ring follows.
    last: Pos,
    /// Where the tail reads on from (past `last` when it passed over entries
    /// that are not the log's own).
    read_from: Pos,
    entries: VecDeque<Held>,
    bytes: usize,
    /// False while the tail cannot read Redis (or must check where it stands):
    /// reads then go to Redis, which says what is wrong.
    healthy: bool,
}

impl Ring {
    fn reset(&mut self, epoch: String, head: Pos) {
        self.epoch = epoch;
        self.start = head;
        self.last = head;
        self.read_from = head;
        self.entries.clear();
        self.bytes = 0;
        self.healthy = true;
    }

    fn push(&mut self, h: Held) {
        self.last = h.at;
        self.read_from = h.at;
        self.bytes += h.body.len();
        self.entries.push_back(h);
        while self.entries.len() > RING_EVENTS || self.bytes > RING_BYTES {
            match self.entries.pop_front() {
                Some(old) => {
                    self.bytes -= old.body.len();
                    self.start = old.at;
                }
                None => break,
            }
        }
    }
}

struct Shared {
    ring: Mutex<Ring>,
    notify: watch::Sender<u64>,
}

impl Shared {
    fn ring(&self) -> Result<std::sync::MutexGuard<'_, Ring>, StoreError> {
        self.ring
            .lock()
            .map_err(|_| StoreError("the event ring is poisoned".into()))
    }

    fn changed(&self) {
        self.notify.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn down(&self, why: &StoreError, redis: &Redis) {
        redis.failed();
        let was = self
            .ring()
            .map(|mut r| std::mem::replace(&mut r.healthy, false));
        if was.unwrap_or(false) {
            tracing::warn!(error = %why, "the event log's tail cannot read Redis: watches on this replica are interrupted until it can");
            self.changed();
        }
    }
}

/// The event log in Redis (see the module's documentation).
pub struct RedisEventLog {
    redis: Redis,
    keys: Arc<Keys>,
    retention: Retention,
    shared: Arc<Shared>,
}

impl RedisEventLog {
    /// Opens the log (Redis must answer) and starts this replica's tail.
    pub async fn start(redis: Redis, retention: Retention) -> Result<Self, StoreError> {
        let p = &redis.prefix;
        let keys = Arc::new(Keys {
            stream: format!("{p}ev:s"),
            epoch: format!("{p}epoch"),
            dedupe: format!("{p}ev:d"),
            bytes: format!("{p}ev:bytes"),
            gone: format!("{p}ev:gone"),
            restoring: format!("{p}restoring"),
            last: format!("{p}ev:last"),
        });
        let (epoch, last, _) = head(&redis, &keys).await?;
        let shared = Arc::new(Shared {
            ring: Mutex::new(Ring {
                epoch,
                start: last,
                last,
                read_from: last,
                entries: VecDeque::new(),
                bytes: 0,
                healthy: true,
            }),
            notify: watch::channel(0).0,
        });
        tokio::spawn(tail(
            Arc::downgrade(&shared),
            redis.clone(),
            Arc::clone(&keys),
        ));
        Ok(Self {
            redis,
            keys,
            retention,
            shared,
        })
    }

    fn recorded(epoch: &str, at: Pos, work_order_id: i64, body: Bytes) -> Recorded {
        Recorded {
            id: format_event_id(&Cursor {
                epoch: epoch.to_string(),
                at,
            }),
            work_order_id,
            body,
        }
    }

    /// From the ring, when it covers the cursor.
    fn ring_read(&self, after: &Cursor, max: usize) -> Option<Vec<Recorded>> {
        let r = self.shared.ring().ok()?;
        if !r.healthy || after.epoch != r.epoch || after.at < r.start {
            return None;
        }
        let from = r.entries.partition_point(|h| h.at <= after.at);
        Some(
            r.entries
                .iter()
                .skip(from)
                .take(max)
                .map(|h| Self::recorded(&r.epoch, h.at, h.work_order_id, h.body.clone()))
                .collect(),
        )
    }
}

/// The epoch, the stream's last id and the newest id retention dropped.
async fn head(redis: &Redis, keys: &Keys) -> Result<(String, Pos, Pos), StoreError> {
    let (e, g, r, l, cand) = (
        keys.epoch.clone(),
        keys.gone.clone(),
        keys.restoring.clone(),
        keys.last.clone(),
        new_epoch(),
    );
    let (epoch, last, gone): (String, String, String) = redis
        .run(async move |mut c| {
            head_script()
                .key(&e)
                .key(&g)
                .key(&r)
                .key(&l)
                .arg(&cand)
                .arg(millis(EPOCH_GRACE))
                .invoke_async(&mut c)
                .await
        })
        .await?;
    let last = parse_pos(&last).ok_or_else(|| store_err("a last id"))?;
    let gone = parse_pos(&gone).ok_or_else(|| store_err("a dropped id"))?;
    Ok((valid_epoch(epoch)?, last, gone))
}

/// An epoch as event ids can carry it (Redis is shared: its keys may hold
/// anything).
fn valid_epoch(e: String) -> Result<String, StoreError> {
    if e.is_empty() || e.len() > 32 || !e.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(store_err("the epoch"));
    }
    Ok(e)
}

/// A stream entry as Redis gives it: its id and its fields and values.
type RawEntry = (String, Vec<Vec<u8>>);

/// Entries as Redis gives them: `[[id, [field, value, …]], …]`.
fn entries(v: Value) -> Result<Vec<RawEntry>, StoreError> {
    redis::from_redis_value(v).map_err(|e| store_err(&e.to_string()))
}

/// An entry as the log wrote it.
struct Fields {
    epoch: Vec<u8>,
    /// The entry before it.
    prev: Pos,
    work_order_id: i64,
    body: Bytes,
}

fn fields(f: Vec<Vec<u8>>) -> Option<Fields> {
    let (mut epoch, mut prev, mut wo, mut body) = (None, None, None, None);
    let mut it = f.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        match k.as_slice() {
            b"e" => epoch = Some(v),
            b"p" => prev = std::str::from_utf8(&v).ok().and_then(parse_pos),
            b"w" => wo = std::str::from_utf8(&v).ok().and_then(|s| s.parse().ok()),
            b"b" => body = Some(Bytes::from(v)),
            _ => {}
        }
    }
    Some(Fields {
        epoch: epoch?,
        prev: prev?,
        work_order_id: wo?,
        body: body?,
    })
}

/// This replica's reader of the stream: fills the ring, wakes the watches.
async fn tail(shared: Weak<Shared>, redis: Redis, keys: Arc<Keys>) {
    let mut conn: Option<redis::aio::MultiplexedConnection> = None;
    let mut checked = tokio::time::Instant::now();
    loop {
        let Some(s) = shared.upgrade() else { return };
        let needs_check =
            !s.ring().map(|r| r.healthy).unwrap_or(false) || checked.elapsed() >= CHECK_EVERY;
        if needs_check {
            match sync(&s, &redis, &keys).await {
                Ok(()) => checked = tokio::time::Instant::now(),
                Err(e) => {
                    s.down(&e, &redis);
                    drop(s);
                    conn = None;
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
        }
        let from = match s.ring() {
            Ok(r) => pos_id(r.read_from),
            Err(_) => return,
        };
        drop(s);
        let c = match &mut conn {
            Some(c) => c,
            None => match redis.dedicated(BLOCK).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    if let Some(s) = shared.upgrade() {
                        s.down(&e, &redis);
                    }
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            },
        };
        let read = tokio::time::timeout(
            BLOCK + redis.timeout,
            redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&keys.stream)
                .arg(&from)
                .query_async::<Value>(c),
        )
        .await;
        let Some(s) = shared.upgrade() else { return };
        let reply = match read {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                s.down(&StoreError(format!("Redis: {e}")), &redis);
                conn = None;
                tokio::time::sleep(RETRY).await;
                continue;
            }
            Err(_) => {
                s.down(&StoreError("Redis did not answer in time".into()), &redis);
                conn = None;
                continue;
            }
        };
        match take(&s, reply) {
            Ok(Took::Fine) => {}
            Ok(Took::WentBack) => {
                let epoch = s.ring().map(|r| r.epoch.clone()).unwrap_or_default();
                drop(s);
                if let Err(e) = new_epoch_after_loss(&redis, &keys, &epoch).await
                    && let Some(s) = shared.upgrade()
                {
                    s.down(&e, &redis);
                }
            }
            Err(e) => {
                s.down(&e, &redis);
                drop(s);
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

/// What the tail found in a read.
#[derive(Debug, PartialEq, Eq)]
enum Took {
    Fine,
    /// The stream no longer holds entries the ring read: Redis lost them.
    WentBack,
}

/// Puts what `XREAD` gave into the ring, following the chain of entries.
fn take(s: &Shared, reply: Value) -> Result<Took, StoreError> {
    if matches!(reply, Value::Nil) {
        return Ok(Took::Fine);
    }
    let streams: Vec<(String, Value)> =
        redis::from_redis_value(reply).map_err(|e| store_err(&e.to_string()))?;
    let mut any = false;
    let mut took = Took::Fine;
    let mut r = s.ring()?;
    'all: for (_, v) in streams {
        for (id, f) in entries(v)? {
            let Some(at) = parse_pos(&id) else { continue };
            if at <= r.read_from {
                continue;
            }
            let Some(f) = fields(f) else {
                // Not the log's own (written by something else): passed over,
                // outside the chain.
                tracing::warn!(
                    id,
                    "an entry of the event stream is not the gateway's: passed over"
                );
                r.read_from = at;
                continue;
            };
            if f.epoch != r.epoch.as_bytes() {
                // Redis lost its data and the log began again under another
                // epoch since the last check: find where it stands first.
                r.healthy = false;
                break 'all;
            }
            if f.prev < r.last {
                // Entries this ring read are no longer in the chain.
                r.healthy = false;
                took = Took::WentBack;
                break 'all;
            }
            if f.prev > r.last {
                // Retention dropped entries before the tail read them: the ring
                // vouches only for what follows (readers further back go to
                // Redis, which knows what was dropped).
                r.entries.clear();
                r.bytes = 0;
                r.start = f.prev;
            }
            r.push(Held {
                at,
                work_order_id: f.work_order_id,
                body: f.body,
            });
            any = true;
        }
    }
    let unhealthy = !r.healthy;
    drop(r);
    if any || unhealthy {
        s.changed();
    }
    Ok(took)
}

/// Starts another epoch if it is still `old` (Redis lost events that were
/// acknowledged: every cursor of before is refused, never silently past a gap).
async fn new_epoch_after_loss(redis: &Redis, keys: &Keys, old: &str) -> Result<(), StoreError> {
    let (k, old, new) = (keys.epoch.clone(), old.to_string(), new_epoch());
    let _: Option<String> = redis
        .run(async move |mut c| {
            new_epoch_script()
                .key(&k)
                .arg(&old)
                .arg(&new)
                .invoke_async(&mut c)
                .await
        })
        .await?;
    tracing::warn!(
        "the event stream in Redis lost its newest events (a restart without them, or a failover): cursors of before are refused as expired"
    );
    Ok(())
}

/// Checks where the log stands against what the ring holds, and makes the ring
/// right again: another epoch (Redis lost its data), a stream whose head went
/// back (Redis lost its last writes: a new epoch, so nobody skips them
/// silently), or events dropped by retention while the tail could not read.
async fn sync(s: &Shared, redis: &Redis, keys: &Keys) -> Result<(), StoreError> {
    let (mut epoch, mut last, gone) = head(redis, keys).await?;
    let (known_epoch, known_last) = {
        let r = s.ring()?;
        (r.epoch.clone(), r.last)
    };
    if epoch == known_epoch && last < known_last {
        new_epoch_after_loss(redis, keys, &epoch).await?;
        (epoch, last, _) = head(redis, keys).await?;
    }
    let mut r = s.ring()?;
    let was_healthy = r.healthy;
    let mut reset = true;
    if epoch != r.epoch {
        tracing::warn!(
            "the event log in Redis has another epoch (Redis lost its data, or it is new): cursors of before are refused as expired"
        );
        r.reset(epoch, last);
    } else if gone > r.last {
        // Events the ring never held were dropped: it cannot be contiguous.
        r.reset(epoch, last);
    } else {
        r.healthy = true;
        reset = false;
    }
    drop(r);
    if !was_healthy {
        tracing::info!("the event log's tail reads Redis again");
    }
    if reset || !was_healthy {
        s.changed();
    }
    Ok(())
}

#[tonic::async_trait]
impl EventLog for RedisEventLog {
    async fn append(
        &self,
        events: Vec<NewEvent>,
        dedupe: Option<&str>,
    ) -> Result<Appended, StoreError> {
        let member = dedupe
            .map(|k| hex::encode(&Sha256::digest(k.as_bytes())[..16]))
            .unwrap_or_default();
        let keys = Arc::clone(&self.keys);
        let ret = self.retention;
        let candidate = new_epoch();
        let out: Vec<String> = self
            .redis
            .run(async move |mut c| {
                let script = append_script();
                let mut inv = script.prepare_invoke();
                inv.key(&keys.stream)
                    .key(&keys.epoch)
                    .key(&keys.dedupe)
                    .key(&keys.bytes)
                    .key(&keys.gone)
                    .key(&keys.restoring)
                    .key(&keys.last)
                    .arg(&candidate)
                    .arg(&member)
                    .arg(millis(ret.dedupe_ttl))
                    .arg(ret.max_dedupe_keys.max(1))
                    .arg(ret.max_events.max(1))
                    .arg(ret.max_bytes.max(1))
                    .arg(millis(ret.max_age))
                    .arg(millis(EPOCH_GRACE));
                for e in &events {
                    inv.arg(e.work_order_id).arg(e.body.as_ref());
                }
                inv.invoke_async(&mut c).await
            })
            .await?;
        let mut out = out.into_iter();
        let epoch = valid_epoch(out.next().ok_or_else(|| store_err("an append's answer"))?)?;
        match out.next().as_deref() {
            Some("dup") => Ok(Appended::Duplicate),
            Some("new") => out
                .map(|id| {
                    parse_pos(&id)
                        .map(|at| {
                            format_event_id(&Cursor {
                                epoch: epoch.clone(),
                                at,
                            })
                        })
                        .ok_or_else(|| store_err("an entry id"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Appended::New),
            _ => Err(store_err("an append's answer")),
        }
    }

    async fn read(&self, after: &Cursor, max: usize) -> Result<Vec<Recorded>, ReadError> {
        if max > 0
            && let Some(events) = self.ring_read(after, max)
        {
            return Ok(events);
        }
        let (s, e, g) = (
            self.keys.stream.clone(),
            self.keys.epoch.clone(),
            self.keys.gone.clone(),
        );
        let (epoch, from) = (after.epoch.clone(), pos_id(after.at));
        let reply: Vec<Value> = self
            .redis
            .run(async move |mut c| {
                read_script()
                    .key(&s)
                    .key(&e)
                    .key(&g)
                    .arg(&epoch)
                    .arg(&from)
                    .arg(max)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        let mut reply = reply.into_iter();
        let status: String = reply
            .next()
            .map(redis::from_redis_value)
            .transpose()
            .map_err(|e| store_err(&e.to_string()))?
            .unwrap_or_default();
        if status == "expired" {
            return Err(ReadError::OutOfRange);
        }
        let gone: String = reply
            .next()
            .map(redis::from_redis_value)
            .transpose()
            .map_err(|e| store_err(&e.to_string()))?
            .ok_or_else(|| store_err("a read's answer"))?;
        let gone = parse_pos(&gone).ok_or_else(|| store_err("a dropped id"))?;
        if gone > after.at {
            // Events after the cursor were dropped by retention.
            return Err(ReadError::OutOfRange);
        }
        let mut out = Vec::new();
        for (id, f) in entries(reply.next().unwrap_or(Value::Array(Vec::new())))? {
            let at = parse_pos(&id).ok_or_else(|| store_err("an entry id"))?;
            let Some(f) = fields(f) else {
                // Not the log's own: passed over, as the tail does.
                continue;
            };
            if f.epoch != after.epoch.as_bytes() {
                // An entry of another epoch after this cursor: the cursor was
                // not one this epoch gave.
                return Err(ReadError::OutOfRange);
            }
            out.push(Self::recorded(&after.epoch, at, f.work_order_id, f.body));
        }
        Ok(out)
    }

    async fn head(&self) -> Result<Cursor, StoreError> {
        let (epoch, at, _) = head(&self.redis, &self.keys).await?;
        Ok(Cursor { epoch, at })
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.shared.notify.subscribe()
    }

    fn cursor(&self, event_id: &str) -> Result<Cursor, BadCursor> {
        parse_event_id(event_id)
    }

    fn event_id(&self, cursor: &Cursor) -> String {
        format_event_id(cursor)
    }

    fn behind(&self, cursor: &Cursor) -> Option<u64> {
        let r = self.shared.ring().ok()?;
        if !r.healthy || cursor.epoch != r.epoch || cursor.at < r.start {
            return None;
        }
        let from = r.entries.partition_point(|h| h.at <= cursor.at);
        Some((r.entries.len() - from) as u64)
    }
}
