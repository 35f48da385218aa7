//! The log of attachment events: CorrigoPro's notifications and the gateway's own
//! writes, in the order they were recorded, read by subscribers from a cursor.
//!
//! The log holds each event as its encoded protobuf body (without its id, which
//! the log assigns), so a backend stores bytes and a subscriber sends them on as
//! they are. Appends carry an optional dedupe key (a notification's
//! `Header.MessageId`): a key seen within its TTL appends nothing, so a
//! redelivered notification is recorded once.
//!
//! An event id is opaque to callers and ordered. It names the log's epoch too: a
//! log that lost its events (the in-process one after a restart) has another
//! epoch, so an old cursor is refused (OUT_OF_RANGE: resync) instead of silently
//! skipping what was lost.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use super::error::StoreError;
use crate::config::{EventSettings, WebhookSettings};

/// An event to append: its work order (for subscribers' filters) and its body.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub work_order_id: i64,
    pub body: Bytes,
}

/// An event as recorded.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub id: String,
    pub work_order_id: i64,
    pub body: Bytes,
}

/// A position in the log: after this event (or before the first, `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub epoch: String,
    /// The last event passed: its position in the log (`(0, 0)`: none yet). The
    /// in-process log numbers events `(0, 1)`, `(0, 2)`…; a Redis stream names
    /// them by its entry ids, `(milliseconds, sequence)`.
    pub at: (u64, u64),
}

/// What an append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Recorded, under these ids.
    New(Vec<String>),
    /// The dedupe key was seen within its TTL: nothing recorded.
    Duplicate,
}

/// Why a read gave no events.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    /// The cursor is older than what the log retains, or from a log that lost its
    /// events: the subscriber must resync.
    #[error("the cursor is older than the events retained")]
    OutOfRange,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A cursor that is not one of this log's.
#[derive(Debug, Clone, thiserror::Error)]
#[error("not an event id of this gateway")]
pub struct BadCursor;

#[tonic::async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Appends `events` together (all or none), unless `dedupe` was seen within
    /// the dedupe TTL.
    async fn append(
        &self,
        events: Vec<NewEvent>,
        dedupe: Option<&str>,
    ) -> Result<Appended, StoreError>;

    /// At most `max` events after `after`, oldest first.
    async fn read(&self, after: &Cursor, max: usize) -> Result<Vec<Recorded>, ReadError>;

    /// Where "now" is: after the newest event.
    async fn head(&self) -> Result<Cursor, StoreError>;

    /// Changes (to a counter) whenever events are appended: subscribers wait on it.
    fn changes(&self) -> watch::Receiver<u64>;

    /// The cursor an event id names.
    fn cursor(&self, event_id: &str) -> Result<Cursor, BadCursor>;

    /// The event id a cursor names.
    fn event_id(&self, cursor: &Cursor) -> String;

    /// How many events this replica knows of after `cursor` (for the lag
    /// metric), without asking a shared store; `None` when it cannot tell.
    fn behind(&self, cursor: &Cursor) -> Option<u64>;
}

/// How much the in-process log keeps.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Events kept at most; the oldest go first.
    pub max_events: usize,
    /// Bytes of event bodies kept at most; the oldest go first.
    pub max_bytes: usize,
    /// Events older than this go.
    pub max_age: Duration,
    /// How long a dedupe key is remembered (the upstream's redelivery horizon).
    pub dedupe_ttl: Duration,
    /// Dedupe keys kept at most; the oldest go first.
    pub max_dedupe_keys: usize,
}

impl Retention {
    /// The retention of `events`; the dedupe horizon of `webhooks` (how long
    /// CorrigoPro may deliver a notification again).
    pub fn new(events: &EventSettings, webhooks: &WebhookSettings) -> Self {
        Self {
            max_events: events.max_events as usize,
            max_bytes: usize::try_from(events.max_bytes).unwrap_or(usize::MAX),
            max_age: events.max_age,
            dedupe_ttl: webhooks.dedupe_ttl,
            max_dedupe_keys: webhooks.max_dedupe_keys as usize,
        }
    }
}

struct Entry {
    seq: u64,
    at: Instant,
    work_order_id: i64,
    body: Bytes,
}

struct Inner {
    events: VecDeque<Entry>,
    /// The bytes of the bodies in `events`.
    bytes: usize,
    /// The sequence number the next event gets (the first is 1).
    next_seq: u64,
    dedupe: HashMap<String, Instant>,
    dedupe_order: VecDeque<(Instant, String)>,
}

/// The in-process log: the default, for one replica. A restart loses it (and
/// starts a new epoch, so old cursors are refused, not misread).
pub struct MemoryEventLog {
    epoch: String,
    retention: Retention,
    inner: Mutex<Inner>,
    notify: watch::Sender<u64>,
}

impl MemoryEventLog {
    pub fn new(retention: Retention) -> Self {
        Self {
            epoch: format!("{:x}", uuid::Uuid::new_v4().as_u128() as u64),
            retention,
            inner: Mutex::new(Inner {
                events: VecDeque::new(),
                bytes: 0,
                next_seq: 1,
                dedupe: HashMap::new(),
                dedupe_order: VecDeque::new(),
            }),
            notify: watch::channel(0).0,
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>, StoreError> {
        self.inner
            .lock()
            .map_err(|_| StoreError("the in-process event log is poisoned".into()))
    }

    fn trim(&self, g: &mut Inner) {
        let now = Instant::now();
        while g.events.len() > self.retention.max_events
            || g.bytes > self.retention.max_bytes
            || g.events
                .front()
                .is_some_and(|e| now.duration_since(e.at) > self.retention.max_age)
        {
            match g.events.pop_front() {
                Some(e) => g.bytes = g.bytes.saturating_sub(e.body.len()),
                None => break,
            }
        }
        while g.dedupe_order.len() > self.retention.max_dedupe_keys
            || g.dedupe_order
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > self.retention.dedupe_ttl)
        {
            if let Some((t, k)) = g.dedupe_order.pop_front()
                && g.dedupe.get(&k) == Some(&t)
            {
                g.dedupe.remove(&k);
            }
        }
    }

    /// Events held now (for metrics and tests).
    pub fn len(&self) -> usize {
        self.lock().map(|g| g.events.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[tonic::async_trait]
impl EventLog for MemoryEventLog {
    async fn append(
        &self,
        events: Vec<NewEvent>,
        dedupe: Option<&str>,
    ) -> Result<Appended, StoreError> {
        let ids = {
            let mut g = self.lock()?;
            self.trim(&mut g);
            let now = Instant::now();
            if let Some(key) = dedupe {
                if g.dedupe.contains_key(key) {
                    return Ok(Appended::Duplicate);
                }
                g.dedupe.insert(key.to_string(), now);
                g.dedupe_order.push_back((now, key.to_string()));
            }
            let mut ids = Vec::with_capacity(events.len());
            for e in events {
                let seq = g.next_seq;
                g.next_seq += 1;
                ids.push(self.event_id(&Cursor {
                    epoch: self.epoch.clone(),
                    at: (0, seq),
                }));
                g.bytes = g.bytes.saturating_add(e.body.len());
                g.events.push_back(Entry {
                    seq,
                    at: now,
                    work_order_id: e.work_order_id,
                    body: e.body,
                });
            }
            self.trim(&mut g);
            ids
        };
        self.notify.send_modify(|n| *n = n.wrapping_add(1));
        Ok(Appended::New(ids))
    }

    async fn read(&self, after: &Cursor, max: usize) -> Result<Vec<Recorded>, ReadError> {
        if after.epoch != self.epoch {
            return Err(ReadError::OutOfRange);
        }
        let mut g = self.lock()?;
        self.trim(&mut g);
        let first = g.events.front().map_or(g.next_seq, |e| e.seq);
        if after.at.0 != 0 {
            // Not one of this log's positions.
            return Err(ReadError::OutOfRange);
        }
        let seq = after.at.1;
        // A cursor is outside data: no arithmetic on it may overflow.
        let next = seq.saturating_add(1);
        if next < first {
            // Events after the cursor were dropped.
            return Err(ReadError::OutOfRange);
        }
        if seq >= g.next_seq {
            // A cursor from the future: nothing yet.
            return Ok(Vec::new());
        }
        let from = usize::try_from(next - first).unwrap_or(usize::MAX);
        Ok(g.events
            .iter()
            .skip(from)
            .take(max)
            .map(|e| Recorded {
                id: format_event_id(&Cursor {
                    epoch: self.epoch.clone(),
                    at: (0, e.seq),
                }),
                work_order_id: e.work_order_id,
                body: e.body.clone(),
            })
            .collect())
    }

    async fn head(&self) -> Result<Cursor, StoreError> {
        let g = self.lock()?;
        Ok(Cursor {
            epoch: self.epoch.clone(),
            at: (0, g.next_seq - 1),
        })
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }

    fn cursor(&self, event_id: &str) -> Result<Cursor, BadCursor> {
        parse_event_id(event_id)
    }

    fn event_id(&self, cursor: &Cursor) -> String {
        format_event_id(cursor)
    }

    fn behind(&self, cursor: &Cursor) -> Option<u64> {
        let g = self.lock().ok()?;
        Some((g.next_seq - 1).saturating_sub(cursor.at.1))
    }
}

/// Reads an event id: `<epoch>-<seq>` (the in-process log) or
/// `<epoch>-<ms>-<seq>` (a Redis stream's entry id). Either log reads the
/// other's ids as another epoch's, so a cursor kept across a change of backend
/// is refused as expired (resync), not as malformed.
pub fn parse_event_id(event_id: &str) -> Result<Cursor, BadCursor> {
    if event_id.len() > 96 {
        return Err(BadCursor);
    }
    let mut parts = event_id.split('-');
    let epoch = parts.next().ok_or(BadCursor)?;
    if epoch.is_empty() || epoch.len() > 32 || !epoch.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(BadCursor);
    }
    let num = |p: Option<&str>| -> Result<u64, BadCursor> {
        let p = p.ok_or(BadCursor)?;
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BadCursor);
        }
        p.parse().map_err(|_| BadCursor)
    };
    let first = num(parts.next())?;
    let at = match parts.next() {
        None => (0, first),
        second => (first, num(second)?),
    };
    if parts.next().is_some() {
        return Err(BadCursor);
    }
    Ok(Cursor {
        epoch: epoch.to_string(),
        at,
    })
}

/// The event id of a cursor (see [`parse_event_id`]).
pub fn format_event_id(c: &Cursor) -> String {
    match c.at {
        (0, seq) => format!("{}-{seq}", c.epoch),
        (ms, seq) => format!("{}-{ms}-{seq}", c.epoch),
    }
}

/// Shared ownership of any log.
pub type SharedLog = Arc<dyn EventLog>;

#[cfg(test)]
mod tests {
    use super::*;

    fn log(max_events: usize) -> MemoryEventLog {
        MemoryEventLog::new(Retention {
            max_events,
            max_bytes: usize::MAX,
            max_age: Duration::from_secs(3600),
            dedupe_ttl: Duration::from_secs(60),
            max_dedupe_keys: 100,
        })
    }

    fn ev(wo: i64) -> NewEvent {
        NewEvent {
            work_order_id: wo,
            body: Bytes::from(format!("event of {wo}")),
        }
    }

    #[tokio::test]
    async fn reads_after_a_cursor_in_order_and_dedupes() {
        let l = log(100);
        let start = l.head().await.unwrap();
        let Appended::New(ids) = l.append(vec![ev(1), ev(2)], Some("m1")).await.unwrap() else {
            panic!("new")
        };
        assert_eq!(ids.len(), 2);
        assert_eq!(
            l.append(vec![ev(9)], Some("m1")).await.unwrap(),
            Appended::Duplicate
        );
        l.append(vec![ev(3)], None).await.unwrap();
        let all = l.read(&start, 10).await.unwrap();
        assert_eq!(
            all.iter().map(|r| r.work_order_id).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        let after_first = l.cursor(&all[0].id).unwrap();
        let rest = l.read(&after_first, 10).await.unwrap();
        assert_eq!(rest.len(), 2);
        assert!(
            l.read(&l.head().await.unwrap(), 10)
                .await
                .unwrap()
                .is_empty()
        );
    }

    #[tokio::test]
    async fn a_cursor_past_retention_or_of_another_epoch_is_out_of_range() {
        let l = log(2);
        let start = l.head().await.unwrap();
        for wo in 1..=5 {
            l.append(vec![ev(wo)], None).await.unwrap();
        }
        assert!(matches!(
            l.read(&start, 10).await,
            Err(ReadError::OutOfRange)
        ));
        let other = log(2);
        let foreign = other.head().await.unwrap();
        assert!(matches!(
            l.read(&foreign, 10).await,
            Err(ReadError::OutOfRange)
        ));
        assert!(l.cursor("nonsense").is_err());
        // The largest cursor parses and reads as "nothing yet", without overflow.
        let far = l.cursor(&format!("{}-{}", start.epoch, u64::MAX)).unwrap();
        assert!(l.read(&far, 10).await.unwrap().is_empty());
        assert!(l.cursor("zz-1").is_err());
        for bad in ["ab-", "ab--1", "ab-+1", "ab-1-2-3", "-1", "ab-1-", "ab- 1"] {
            assert!(l.cursor(bad).is_err(), "{bad}");
        }
        // A Redis stream's id is another epoch's here: expired, not malformed.
        let redis_id = l
            .cursor(&format!("{}-1796144917806-0", start.epoch))
            .unwrap();
        assert_eq!(redis_id.at, (1796144917806, 0));
        assert_eq!(
            l.event_id(&redis_id),
            format!("{}-1796144917806-0", start.epoch)
        );
        assert!(matches!(
            l.read(&redis_id, 10).await,
            Err(ReadError::OutOfRange)
        ));
    }
}
