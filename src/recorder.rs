//! Attachment events as the gateway records them: from its own writes (which
//! CorrigoPro does not notify) and from CorrigoPro's notifications, encoded once
//! into the event log.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use prost::Message;

use crate::metrics::Metrics;
use crate::proto::{Attachment, AttachmentEvent, AttachmentEventType, EventSource};
use crate::store::error::StoreError;
use crate::store::event_log::{Appended, NewEvent, SharedLog};

/// How long a gateway write waits for its event to be recorded: the write is
/// done either way, so its caller is not held up for long by a slow log.
const RECORD_TIMEOUT: Duration = Duration::from_secs(2);

pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

/// A gateway write's event, and how it is deduplicated.
#[derive(Debug, Clone)]
pub struct GatewayEvent {
    pub kind: AttachmentEventType,
    pub work_order_id: i64,
    pub attachment: Attachment,
    pub caller: Arc<str>,
    pub message_id: String,
    /// The write's key (or, without one, its generated message id): a write's
    /// event is appended at most once under it.
    pub dedupe: String,
}

/// Records events into the log, counting them.
#[derive(Clone)]
pub struct Recorder {
    log: SharedLog,
    metrics: Arc<Metrics>,
}

impl Recorder {
    pub fn new(log: SharedLog, metrics: Arc<Metrics>) -> Self {
        Self { log, metrics }
    }

    pub fn log(&self) -> &SharedLog {
        &self.log
    }

    /// Records `events` together, unless `dedupe` was seen already.
    pub async fn record(
        &self,
        events: Vec<AttachmentEvent>,
        dedupe: Option<&str>,
    ) -> Result<Appended, StoreError> {
        let source = if events
            .first()
            .is_some_and(|e| e.source == EventSource::Gateway as i32)
        {
            "gateway"
        } else {
            "corrigopro"
        };
        let n = events.len() as u64;
        let new = events
            .into_iter()
            .map(|e| NewEvent {
                work_order_id: e.work_order_id,
                body: Bytes::from(e.encode_to_vec()),
            })
            .collect();
        let appended = self.log.append(new, dedupe).await;
        match &appended {
            Ok(Appended::New(_)) => self.metrics.events_recorded(source, n),
            Ok(Appended::Duplicate) => {}
            Err(_) => self.metrics.event_record_failed(source),
        }
        appended
    }

    /// Records a write of this gateway that the upstream accepted, at most
    /// once per `e.dedupe`, within a bound of its own; the caller decides
    /// what to do when the log fails.
    pub async fn gateway_write(&self, e: &GatewayEvent) -> Result<(), StoreError> {
        let now = timestamp(SystemTime::now());
        let event = AttachmentEvent {
            event_id: String::new(),
            r#type: e.kind as i32,
            work_order_id: e.work_order_id,
            attachment: Some(e.attachment.clone()),
            source: EventSource::Gateway as i32,
            caller: e.caller.to_string(),
            sender: None,
            occurred_at: Some(now),
            received_at: Some(now),
            upstream_message_id: e.message_id.clone(),
        };
        match tokio::time::timeout(RECORD_TIMEOUT, self.record(vec![event], Some(&e.dedupe))).await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(err),
            Err(_) => {
                self.metrics.event_record_failed("gateway");
                Err(StoreError("recording the event timed out".into()))
            }
        }
    }
}
