//! Watching attachment events through the generated client: open a watch, read
//! its next message or event, and make sure nothing but heartbeats comes.

use std::time::Duration;

use attachment_gateway::proto::watch_attachments_response::Payload;
use attachment_gateway::proto::{
    AttachmentEvent, WatchAttachmentsRequest, WatchAttachmentsResponse,
};
use tonic::Streaming;

use super::Client;

pub type Watch = Streaming<WatchAttachmentsResponse>;

/// Opens a watch and reads its first message (a heartbeat with its cursor).
pub async fn watch(c: &mut Client, work_order_ids: Vec<i64>, after: &str) -> (Watch, String) {
    let mut w = c
        .watch_attachments(WatchAttachmentsRequest {
            work_order_ids,
            after_event_id: after.to_string(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = next_message(&mut w).await;
    let Some(Payload::Heartbeat(h)) = first.payload else {
        panic!("a watch starts with a heartbeat: {first:?}")
    };
    assert!(
        !h.last_event_id.is_empty(),
        "the first heartbeat has the cursor"
    );
    (w, h.last_event_id)
}

pub async fn next_message(w: &mut Watch) -> WatchAttachmentsResponse {
    tokio::time::timeout(Duration::from_secs(10), w.message())
        .await
        .expect("a message in time")
        .expect("no error")
        .expect("the watch went on")
}

/// The next event, skipping heartbeats.
pub async fn next_event(w: &mut Watch) -> AttachmentEvent {
    loop {
        if let Some(Payload::Event(e)) = next_message(w).await.payload {
            return e;
        }
    }
}

/// Nothing but heartbeats for `d`.
pub async fn no_event_for(w: &mut Watch, d: Duration) {
    let until = tokio::time::Instant::now() + d;
    while let Ok(m) = tokio::time::timeout_at(until, w.message()).await {
        let m = m.expect("no error").expect("the watch went on");
        if let Some(Payload::Event(e)) = m.payload {
            panic!("no event expected, got {e:?}");
        }
    }
}
