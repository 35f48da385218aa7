//! `WatchAttachments`: a subscriber reads the event log from its cursor, through
//! a task of its own that feeds a small bounded buffer. The log is the only copy
//! of the events: a subscriber holds its cursor and at most its buffer, so an idle
//! one costs little and a slow one costs no more; one that stops reading for
//! longer than the stall timeout is ended with its resume cursor.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::error::Error;
use super::runtime::Runtime;
use crate::config::EventSettings;
use crate::domain::FieldError;
use crate::limits::{Concurrency, Slot};
use crate::metrics::Metrics;
use crate::proto::raw_event::RawEvent;
use crate::proto::wire::watch_attachments_response::Payload;
use crate::proto::wire::{Heartbeat, WatchAttachmentsRequest, WatchAttachmentsResponse};
use crate::store::event_log::{Cursor, ReadError, SharedLog};

/// The messages of a watch as the caller receives them.
pub type WatchStream =
    Pin<Box<dyn Stream<Item = Result<WatchAttachmentsResponse, Status>> + Send + 'static>>;

/// The most work orders one watch may filter on.
pub const MAX_WORK_ORDERS: usize = 1000;
/// Events read from the log at a time.
const BATCH: usize = 64;

/// The bounds of watches.
#[derive(Debug, Clone, Copy)]
pub struct WatchLimits {
    /// A heartbeat is sent after this long without an event.
    pub heartbeat: Duration,
    /// Messages buffered toward one subscriber.
    pub buffer: usize,
    /// A subscriber whose buffer stays full this long is ended.
    pub stall_timeout: Duration,
}

impl From<&EventSettings> for WatchLimits {
    fn from(s: &EventSettings) -> Self {
        Self {
            heartbeat: s.heartbeat_interval,
            buffer: s.subscriber_buffer as usize,
            stall_timeout: s.subscriber_stall_timeout,
        }
    }
}

/// The watch path: what `WatchAttachments` needs, and nothing else.
pub struct Watches {
    log: SharedLog,
    limits: WatchLimits,
    slots: Arc<Concurrency>,
    metrics: Arc<Metrics>,
    /// Fires as the gateway closes its listener: watches end then.
    cut: CancellationToken,
}

/// Counts a watch while it is open.
struct Open {
    metrics: Arc<Metrics>,
    _slot: Slot,
}

impl Drop for Open {
    fn drop(&mut self) {
        self.metrics.event_subscribers.dec();
    }
}

impl Watches {
    /// Watches of the event log the runtime records into, bounded by the
    /// `events` section; they end as the gateway closes its listener.
    pub fn new(rt: &Runtime, s: &EventSettings) -> Self {
        Self {
            log: Arc::clone(rt.recorder.log()),
            limits: WatchLimits::from(s),
            slots: Concurrency::new(
                "concurrent_watches",
                "concurrent_watches_per_caller",
                s.max_subscribers as usize,
                s.max_subscribers_per_caller as usize,
            ),
            metrics: Arc::clone(&rt.metrics),
            cut: rt.bounds.closing.clone(),
        }
    }

    /// Opens a watch for `caller`: checks the request and the cursor (so a stale
    /// cursor is refused at once), then streams.
    pub async fn open(
        &self,
        caller: &Arc<str>,
        req: WatchAttachmentsRequest,
    ) -> Result<WatchStream, Error> {
        let mut violations = crate::domain::Violations::new();
        if req.work_order_ids.len() > MAX_WORK_ORDERS {
            violations.push(
                "work_order_ids",
                FieldError::new(
                    "TOO_MANY",
                    format!("at most {MAX_WORK_ORDERS} work orders per watch"),
                ),
            );
        }
        if let Some(bad) = req.work_order_ids.iter().find(|id| **id <= 0) {
            violations.push(
                "work_order_ids",
                FieldError::new("OUT_OF_RANGE", format!("must be greater than 0, got {bad}")),
            );
        }
        let cursor = if req.after_event_id.is_empty() {
            None
        } else {
            match self.log.cursor(&req.after_event_id) {
                Ok(c) => Some(c),
                Err(_) => {
                    violations.push(
                        "after_event_id",
                        FieldError::new(
                            "INVALID_FORMAT",
                            "not an event id of this gateway (an `event_id` or a heartbeat's `last_event_id`)",
                        ),
                    );
                    None
                }
            }
        };
        if !violations.is_empty() {
            return Err(Error::Invalid(violations.into_vec()));
        }
        let slot = self.slots.try_acquire(caller).map_err(|refusal| {
            self.metrics.refused(refusal.limit);
            Error::Limited(refusal)
        })?;
        let cursor = match cursor {
            Some(c) => {
                // Refuse a cursor past retention now, not after the stream began.
                match self.log.read(&c, 0).await {
                    Ok(_) => {
                        // A cursor past the head was never given out: reading
                        // from it would skip the events up to it.
                        let head = self
                            .log
                            .head()
                            .await
                            .map_err(|e| Error::EventLogUnavailable(e.0))?;
                        if c.epoch == head.epoch && c.at > head.at {
                            let mut v = crate::domain::Violations::new();
                            v.push(
                                "after_event_id",
                                FieldError::new(
                                    "OUT_OF_RANGE",
                                    "after the newest event: not an event id this gateway gave",
                                ),
                            );
                            return Err(Error::Invalid(v.into_vec()));
                        }
                        c
                    }
                    Err(ReadError::OutOfRange) => {
                        self.metrics.watch_ended("cursor_expired");
                        return Err(Error::CursorExpired);
                    }
                    Err(ReadError::Store(e)) => return Err(Error::EventLogUnavailable(e.0)),
                }
            }
            None => self
                .log
                .head()
                .await
                .map_err(|e| Error::EventLogUnavailable(e.0))?,
        };
        self.metrics.event_subscribers.inc();
        let open = Open {
            metrics: Arc::clone(&self.metrics),
            _slot: slot,
        };
        let (tx, rx) = mpsc::channel(self.limits.buffer.max(1));
        let last = Arc::new(std::sync::Mutex::new(None));
        let filter: HashSet<i64> = req.work_order_ids.into_iter().collect();
        let feed = Feed {
            log: Arc::clone(&self.log),
            limits: self.limits,
            metrics: Arc::clone(&self.metrics),
            filter,
            cursor,
            tx,
            last: Arc::clone(&last),
            cut: self.cut.clone(),
        };
        tokio::spawn(feed.run());
        Ok(Box::pin(Buffered {
            rx: ReceiverStream::new(rx),
            last,
            _open: open,
        }))
    }
}

/// One subscriber's reader: from the log to its buffer.
struct Feed {
    log: SharedLog,
    limits: WatchLimits,
    metrics: Arc<Metrics>,
    filter: HashSet<i64>,
    /// The last event passed (sent, or left out by the filter).
    cursor: Cursor,
    tx: mpsc::Sender<Result<WatchAttachmentsResponse, Status>>,
    /// The status the watch ends with, delivered after whatever is buffered.
    last: Arc<std::sync::Mutex<Option<Status>>>,
    cut: CancellationToken,
}

/// A subscriber's side: its buffer, then the status the watch ended with (a watch
/// that ends cleanly would read as complete, so it never does).
struct Buffered {
    rx: ReceiverStream<Result<WatchAttachmentsResponse, Status>>,
    last: Arc<std::sync::Mutex<Option<Status>>>,
    /// The watch's slot and count: held until the caller's stream ends, not
    /// only while the feed runs (a stalled caller still holds its buffer).
    _open: Open,
}

impl Stream for Buffered {
    type Item = Result<WatchAttachmentsResponse, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        match Pin::new(&mut self.rx).poll_next(cx) {
            std::task::Poll::Ready(None) => {
                std::task::Poll::Ready(self.last.lock().ok().and_then(|mut l| l.take()).map(Err))
            }
            other => other,
        }
    }
}

enum Sent {
    Yes,
    /// The subscriber went away.
    Gone,
    /// The buffer stayed full past the stall timeout.
    Stalled,
    /// The gateway is shutting down.
    Cut,
}

impl Feed {
    async fn send(&self, msg: Result<WatchAttachmentsResponse, Status>) -> Sent {
        tokio::select! {
            sent = tokio::time::timeout(self.limits.stall_timeout, self.tx.send(msg)) => match sent {
                Ok(Ok(())) => Sent::Yes,
                Ok(Err(_)) => Sent::Gone,
                Err(_) => Sent::Stalled,
            },
            // Shutdown does not wait for a caller that stopped reading.
            () = self.cut.cancelled() => Sent::Cut,
        }
    }

    /// The gateway is shutting down: the watch ends saying so (never as a
    /// clean end, which would read as complete), after what is buffered.
    async fn shutting_down(&self) {
        self.end(Error::ShuttingDown {
            op: super::Op::Read,
            nothing_applied: true,
        })
        .await;
    }

    /// Ends the watch with `e`, after what is buffered.
    async fn end(&self, e: Error) {
        if let Ok(mut l) = self.last.lock() {
            *l = Some(e.into());
        }
    }

    /// A heartbeat with the watch's cursor (valid even before the log's first
    /// event, so a watch opened "from now" can resume without a gap).
    fn heartbeat(&self) -> WatchAttachmentsResponse {
        WatchAttachmentsResponse {
            payload: Some(Payload::Heartbeat(Heartbeat {
                time: Some(prost_types::Timestamp::from(SystemTime::now())),
                last_event_id: self.log.event_id(&self.cursor),
            })),
        }
    }

    async fn run(mut self) {
        let mut changes = self.log.changes();
        // The first message says where the watch starts.
        match self.send(Ok(self.heartbeat())).await {
            Sent::Yes => {}
            Sent::Gone => return,
            Sent::Stalled => return self.stalled().await,
            Sent::Cut => return self.shutting_down().await,
        }
        let mut quiet_since = tokio::time::Instant::now();
        loop {
            if self.tx.is_closed() {
                return;
            }
            let batch = match self.log.read(&self.cursor, BATCH).await {
                Ok(b) => b,
                Err(ReadError::OutOfRange) => {
                    self.metrics.watch_ended("cursor_expired");
                    return self.end(Error::CursorExpired).await;
                }
                Err(ReadError::Store(e)) => {
                    self.metrics.watch_ended("interrupted");
                    let resume = self.log.event_id(&self.cursor);
                    return self
                        .end(Error::WatchInterrupted {
                            resume_after: resume,
                            why: e.0,
                        })
                        .await;
                }
            };
            if let Some(behind) = self.log.behind(&self.cursor) {
                self.metrics.event_subscriber_lag.observe(behind as f64);
            }
            if batch.is_empty() {
                let wait = self.limits.heartbeat.saturating_sub(quiet_since.elapsed());
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() {
                            // The log is gone: the gateway is stopping.
                            return self.shutting_down().await;
                        }
                        continue;
                    }
                    () = tokio::time::sleep(wait) => {}
                    () = self.cut.cancelled() => return self.shutting_down().await,
                    () = self.tx.closed() => return,
                }
                match self.send(Ok(self.heartbeat())).await {
                    Sent::Yes => quiet_since = tokio::time::Instant::now(),
                    Sent::Gone => return,
                    Sent::Stalled => return self.stalled().await,
                    Sent::Cut => return self.shutting_down().await,
                }
                continue;
            }
            for e in batch {
                let Ok(next) = self.log.cursor(&e.id) else {
                    continue;
                };
                if self.filter.is_empty() || self.filter.contains(&e.work_order_id) {
                    let msg = WatchAttachmentsResponse {
                        payload: Some(Payload::Event(RawEvent {
                            event_id: e.id,
                            body: e.body,
                        })),
                    };
                    match self.send(Ok(msg)).await {
                        Sent::Yes => {
                            self.metrics.events_delivered.inc();
                            quiet_since = tokio::time::Instant::now();
                        }
                        Sent::Gone => return,
                        Sent::Stalled => return self.stalled().await,
                        Sent::Cut => return self.shutting_down().await,
                    }
                }
                self.cursor = next;
            }
        }
    }

    /// The subscriber stopped reading: end it, saying where to resume.
    async fn stalled(&self) {
        let resume = self.log.event_id(&self.cursor);
        tracing::info!(resume_after = %resume, "a watch stopped reading: ended");
        self.metrics.watch_ended("stalled");
        self.end(Error::SubscriberStalled {
            resume_after: resume,
        })
        .await;
    }
}
