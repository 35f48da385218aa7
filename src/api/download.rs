//! `DownloadAttachment`: the gateway asks for the temporary link, fetches it without
//! the bearer token, and streams the bytes on as they arrive (never the whole file
//! in memory). A body that ends early ends the stream with an error status.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::Stream;
use percent_encoding::percent_decode_str;
use reqwest::header::{self, HeaderMap};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::Instrument;

use super::deadline::Bounds;
use super::error::{Error, Op};
use super::runtime::Runtime;
use crate::config::{LimitSettings, RateLimitSettings};
use crate::domain::AttachmentRef;
use crate::limits::Concurrency;
use crate::metrics::Metrics;
use crate::proto::wire::download_attachment_response::Payload;
use crate::proto::wire::{Attachment, DownloadAttachmentResponse};
use crate::upstream::{Upstream, UpstreamError};

/// The messages of a download as the caller receives them.
pub type DownloadStream =
    Pin<Box<dyn Stream<Item = Result<DownloadAttachmentResponse, Status>> + Send + 'static>>;

/// Messages queued toward a slow caller before the upstream read waits.
const QUEUED_MESSAGES: usize = 4;

/// The file name a `Content-Disposition` header gives, if any: `filename*`
/// (RFC 5987, percent-encoded UTF-8) when it reads well, else `filename`.
pub fn content_disposition_filename(value: &str) -> Option<String> {
    let mut plain = None;
    let mut extended = None;
    for param in value.split(';').map(str::trim) {
        let Some((key, val)) = param.split_once('=') else {
            continue;
        };
        let key = key.trim().to_ascii_lowercase();
        let val = val.trim();
        if key == "filename*" {
            // charset'lang'percent-encoded; a malformed one is ignored.
            extended = val
                .splitn(3, '\'')
                .nth(2)
                .map(|encoded| percent_decode_str(encoded).decode_utf8_lossy().into_owned())
                .filter(|s| !s.is_empty());
        } else if key == "filename" {
            plain = Some(val.trim_matches('"').to_string()).filter(|s| !s.is_empty());
        }
    }
    extended.or(plain)
}

fn metadata(target: &AttachmentRef, headers: &HeaderMap, length: Option<u64>) -> Attachment {
    let text = |h: header::HeaderName| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    Attachment {
        attachment_id: target.attachment_id.as_str().to_string(),
        name: text(header::CONTENT_DISPOSITION)
            .and_then(|v| content_disposition_filename(&v))
            .unwrap_or_default(),
        mime_type: text(header::CONTENT_TYPE).unwrap_or_default(),
        size_bytes: length.unwrap_or(0),
        ..Attachment::default()
    }
}

fn chunk_message(b: Bytes) -> DownloadAttachmentResponse {
    DownloadAttachmentResponse {
        payload: Some(Payload::Chunk(b)),
    }
}

/// The download path: what `DownloadAttachment` needs, and nothing else.
pub struct Downloads {
    upstream: Arc<Upstream>,
    bounds: Bounds,
    metrics: Arc<Metrics>,
    chunk_bytes: usize,
    /// Downloads in progress, on this replica and per caller.
    slots: Arc<Concurrency>,
}

impl Downloads {
    /// Downloads sent in chunks of `limits.download_chunk_bytes`, as many at
    /// once as `rate_limit` lets.
    pub fn new(rt: &Runtime, limits: &LimitSettings, rate_limit: &RateLimitSettings) -> Self {
        Self {
            upstream: Arc::clone(&rt.upstream),
            bounds: rt.bounds.clone(),
            metrics: Arc::clone(&rt.metrics),
            chunk_bytes: usize::try_from(limits.download_chunk_bytes).unwrap_or(usize::MAX),
            slots: Concurrency::new(
                "concurrent_downloads",
                "concurrent_downloads_per_caller",
                rate_limit.max_concurrent_downloads as usize,
                rate_limit.max_concurrent_downloads_per_caller as usize,
            ),
        }
    }

    /// Opens the download for `caller`; its bytes then stream to the caller as
    /// they arrive. The download holds a slot until its last byte.
    pub async fn open(
        &self,
        caller: &Arc<str>,
        target: AttachmentRef,
        deadline: Instant,
    ) -> Result<DownloadStream, Error> {
        let slot = self.slots.try_acquire(caller).map_err(|refusal| {
            self.metrics.refused(refusal.limit);
            Error::Limited(refusal)
        })?;
        let link = self
            .bounds
            .run(
                deadline,
                Op::Read,
                "getting a download link",
                self.upstream.download_link(&target, deadline),
            )
            .await?;
        let mut resp = self
            .bounds
            .run(
                deadline,
                Op::Read,
                "opening the download",
                self.upstream.open_download(&link, deadline),
            )
            .await?;
        let length = resp.content_length();
        let first = DownloadAttachmentResponse {
            payload: Some(Payload::Metadata(metadata(&target, resp.headers(), length))),
        };
        let chunk_size = self.chunk_bytes;
        let cut = self.bounds.cut.clone();
        let metrics = Arc::clone(&self.metrics);
        let (tx, rx) = mpsc::channel::<Result<DownloadAttachmentResponse, Status>>(QUEUED_MESSAGES);
        // Capacity is at least one, and the queue is empty.
        let _ = tx.try_send(Ok(first));
        tokio::spawn(
            async move {
                let _slot = slot;
                let mut sent: u64 = 0;
                loop {
                    let read = tokio::select! {
                        r = tokio::time::timeout_at(deadline, resp.chunk()) => r,
                        () = cut.cancelled() => {
                            let e = Error::ShuttingDown { op: Op::Read, nothing_applied: true };
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                    };
                    let next = match read {
                        Err(_) => Err(Error::Deadline {
                            op: Op::Read,
                            what: "the download",
                            nothing_applied: true,
                        }),
                        Ok(Err(e)) => {
                            Err(Error::upstream(UpstreamError::from_reqwest(e), Op::Read))
                        }
                        Ok(Ok(next)) => Ok(next),
                    };
                    match next {
                        Ok(Some(mut bytes)) => {
                            sent += bytes.len() as u64;
                            metrics.download_bytes.inc_by(bytes.len() as u64);
                            while !bytes.is_empty() {
                                let piece = bytes.split_to(bytes.len().min(chunk_size));
                                if tx.send(Ok(chunk_message(piece))).await.is_err() {
                                    // The caller went away: dropping `resp` closes the download.
                                    return;
                                }
                            }
                        }
                        Ok(None) => {
                            if let Some(expected) = length
                                && expected != sent
                            {
                                let e = Error::DownloadTruncated {
                                    received: sent,
                                    expected,
                                };
                                let _ = tx.send(Err(e.into())).await;
                            }
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(sent, code = ?e.code(), "download broke off");
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                    }
                }
            }
            .in_current_span(),
        );
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_disposition_names() {
        assert_eq!(
            content_disposition_filename(r#"attachment; filename="leak photo.jpg""#).as_deref(),
            Some("leak photo.jpg")
        );
        assert_eq!(
            content_disposition_filename(
                "attachment; filename=a.pdf; filename*=UTF-8''r%C3%A9sum%C3%A9.pdf"
            )
            .as_deref(),
            Some("résumé.pdf")
        );
        assert_eq!(content_disposition_filename("inline"), None);
        assert_eq!(
            content_disposition_filename("attachment; filename*=bad"),
            None
        );
        // A malformed filename* does not throw away a good filename before it.
        assert_eq!(
            content_disposition_filename("attachment; filename=\"ok.pdf\"; filename*=bad")
                .as_deref(),
            Some("ok.pdf")
        );
    }
}
