//! Each replica's tail: one task reading the stream (`XREAD BLOCK` on a
//! connection of its own) into a bounded ring of recent events that every
//! watch on the replica reads, following the chain of entries so that a gap
//! or a stream that went back is never read past.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use redis::Value;
use tokio::sync::watch;

use super::{Keys, Pos, entries, fields, head, parse_pos, pos_id, store_err};
use crate::store::error::StoreError;
use crate::store::redis::conn::{Redis, replace_epoch};

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

/// One event held in the ring.
pub(super) struct Held {
    pub(super) at: Pos,
    pub(super) work_order_id: i64,
    pub(super) body: Bytes,
}

/// The recent events of the current epoch: every event after `start` up to
/// `last` is in `entries` (the ring is contiguous), while `healthy`.
pub(super) struct Ring {
    pub(super) epoch: String,
    pub(super) start: Pos,
    /// The last entry of the chain the ring follows.
    pub(super) last: Pos,
    /// Where the tail reads on from (past `last` when it passed over entries
    /// that are not the log's own).
    pub(super) read_from: Pos,
    pub(super) entries: VecDeque<Held>,
    pub(super) bytes: usize,
    /// False while the tail cannot read Redis (or must check where it stands):
    /// reads then go to Redis, which says what is wrong.
    pub(super) healthy: bool,
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

pub(super) struct Shared {
    pub(super) ring: Mutex<Ring>,
    pub(super) notify: watch::Sender<u64>,
}

impl Shared {
    pub(super) fn ring(&self) -> Result<std::sync::MutexGuard<'_, Ring>, StoreError> {
        self.ring
            .lock()
            .map_err(|_| StoreError("the event ring is poisoned".into()))
    }

    pub(super) fn changed(&self) {
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

/// This replica's reader of the stream: fills the ring, wakes the watches.
pub(super) async fn tail(shared: Weak<Shared>, redis: Redis, keys: Arc<Keys>) {
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
                if let Err(e) = new_epoch_after_loss(&redis, &epoch).await
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
/// acknowledged: every cursor of before is refused, never silently past a gap;
/// and the replicas put back the write records they remember).
async fn new_epoch_after_loss(redis: &Redis, old: &str) -> Result<(), StoreError> {
    replace_epoch(redis, old).await?;
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
        new_epoch_after_loss(redis, &epoch).await?;
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
