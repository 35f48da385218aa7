//! Watches: attachment events from a cursor, opened again by themselves after
//! a disconnect or a stall, from the last cursor seen.

use std::time::Duration;

use futures_util::Stream;
use tonic::{Code, Request, Streaming};

use super::builder::{GatewayClient, Inner};
use super::error::ClientError;
use crate::proto::watch_attachments_response::Payload as Watch;
use crate::proto::{AttachmentEvent, Heartbeat, WatchAttachmentsRequest};

/// What a watch yields.
// Events are nearly every item: boxing them would allocate per event to shrink
// the rare heartbeats and resumptions.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Watched {
    /// An attachment event. Its `event_id` is the cursor to resume after.
    Event(AttachmentEvent),
    /// Nothing happened for a while (the first message of every watch is one,
    /// with the watch's starting cursor). `last_event_id` is the cursor to resume
    /// after, even when the filter left every event out.
    Heartbeat(Heartbeat),
    /// The watch broke off (`reason`) and is being opened again after
    /// `after_event_id`: nothing is lost, nothing comes twice.
    Resuming {
        after_event_id: String,
        reason: ClientError,
    },
}

/// Whether a watch that ended with `e` can be opened again from its cursor.
fn watch_resumable(e: &ClientError) -> bool {
    matches!(
        e.code,
        Code::Unavailable
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
    )
}

/// The longest wait between attempts to open a watch again.
const WATCH_MAX_BACKOFF: Duration = Duration::from_secs(10);

struct WatchState {
    client: Inner,
    work_order_ids: Vec<i64>,
    cursor: String,
    stream: Option<Streaming<crate::proto::WatchAttachmentsResponse>>,
    backoff: Duration,
    done: bool,
}

impl WatchState {
    /// After a failure: ends the watch (yielding `e`) or waits and opens it again.
    async fn failed(&mut self, e: ClientError) -> Option<Result<Watched, ClientError>> {
        self.stream = None;
        if !watch_resumable(&e) {
            self.done = true;
            return Some(Err(e));
        }
        let wait = e.retry_after.unwrap_or(self.backoff).min(WATCH_MAX_BACKOFF);
        tokio::time::sleep(wait).await;
        self.backoff = (self.backoff * 2).min(WATCH_MAX_BACKOFF);
        Some(Ok(Watched::Resuming {
            after_event_id: self.cursor.clone(),
            reason: e,
        }))
    }

    async fn next(&mut self) -> Option<Result<Watched, ClientError>> {
        loop {
            if self.done {
                return None;
            }
            let Some(stream) = self.stream.as_mut() else {
                // No deadline: a watch lasts as long as its caller wants.
                let req = Request::new(WatchAttachmentsRequest {
                    work_order_ids: self.work_order_ids.clone(),
                    after_event_id: self.cursor.clone(),
                });
                match self.client.watch_attachments(req).await {
                    Ok(r) => {
                        self.stream = Some(r.into_inner());
                        continue;
                    }
                    Err(s) => return self.failed(s.into()).await,
                }
            };
            match stream.message().await {
                Ok(Some(msg)) => {
                    self.backoff = Duration::from_millis(200);
                    match msg.payload {
                        Some(Watch::Event(e)) => {
                            self.cursor.clone_from(&e.event_id);
                            return Some(Ok(Watched::Event(e)));
                        }
                        Some(Watch::Heartbeat(h)) => {
                            if !h.last_event_id.is_empty() {
                                self.cursor.clone_from(&h.last_event_id);
                            }
                            return Some(Ok(Watched::Heartbeat(h)));
                        }
                        None => continue,
                    }
                }
                // A watch that ends without a status was cut somewhere between.
                Ok(None) => {
                    let mut e =
                        ClientError::local(Code::Unavailable, "the watch ended without a status");
                    e.retry_safe = true;
                    return self.failed(e).await;
                }
                Err(s) => return self.failed(s.into()).await,
            }
        }
    }
}

impl GatewayClient {
    /// Watches attachment events: of `work_order_ids` (empty: all), after
    /// `after_event_id` (none: from now). The stream opens the watch again by
    /// itself after a disconnect or a stall, from the last cursor it saw, and
    /// yields [`Watched::Resuming`] when it does; it ends with an error that no
    /// retry can fix (e.g. OUT_OF_RANGE: the cursor is older than the events the
    /// gateway keeps; resync with `list`).
    pub fn watch(
        &self,
        work_order_ids: Vec<i64>,
        after_event_id: Option<String>,
    ) -> impl Stream<Item = Result<Watched, ClientError>> + Send + 'static {
        let state = WatchState {
            client: self.inner.clone(),
            work_order_ids,
            cursor: after_event_id.unwrap_or_default(),
            stream: None,
            backoff: Duration::from_millis(200),
            done: false,
        };
        futures_util::stream::unfold(state, |mut st| async move {
            let item = st.next().await?;
            Some((item, st))
        })
    }
}
