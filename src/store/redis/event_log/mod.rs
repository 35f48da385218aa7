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
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use redis::Value;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use self::tail::{Ring, Shared};
use super::conn::{EPOCH_GRACE, Redis, millis, new_epoch};
use crate::store::error::StoreError;
use crate::store::event_log::{
    Appended, BadCursor, Cursor, EventLog, NewEvent, ReadError, Recorded, Retention,
    format_event_id, parse_event_id,
};

mod scripts;
mod tail;

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

/// The event log in Redis (see the module's documentation).
/// Reads of history from Redis in flight at once, per replica.
const HISTORY_READS: usize = 8;

pub struct RedisEventLog {
    redis: Redis,
    /// Reads of history (past the in-memory ring) in flight at once: a crowd
    /// of watches resuming from old cursors queues here, in order, instead of
    /// in front of every other command on the connection.
    history: tokio::sync::Semaphore,
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
        tokio::spawn(tail::tail(
            Arc::downgrade(&shared),
            redis.clone(),
            Arc::clone(&keys),
        ));
        Ok(Self {
            history: tokio::sync::Semaphore::new(HISTORY_READS),
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
            scripts::head()
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
                let script = scripts::append();
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
        let _permit = self
            .history
            .acquire()
            .await
            .map_err(|_| store_err("the history reads' bound was closed"))?;
        let reply: Vec<Value> = self
            .redis
            .run(async move |mut c| {
                scripts::read()
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
