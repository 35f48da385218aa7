//! `DownloadAttachment`: the gateway asks for the temporary link, fetches it without
//! the bearer token, and streams the bytes on as they arrive (never the whole file
//! in memory). A body that ends early ends the stream with an error status.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::Stream;
use percent_encoding::percent_decode_str;
use reqwest::header::{self, HeaderMap};
use tokio::time::Instant;
use tonic::Status;

use super::deadline::Bounds;
use super::error::{Error, Op};
use super::runtime::Runtime;
use crate::config::{LimitSettings, RateLimitSettings};
use crate::domain::AttachmentRef;
use crate::limits::Concurrency;
use crate::metrics::Metrics;
use crate::proto::wire::download_attachment_response::Payload;
use crate::proto::wire::{Attachment, ByteRange, DownloadAttachmentResponse};
use crate::upstream::{Upstream, UpstreamError};

/// The messages of a download as the caller receives them.
pub type DownloadStream =
    Pin<Box<dyn Stream<Item = Result<DownloadAttachmentResponse, Status>> + Send + 'static>>;

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

/// Which bytes of the file a download serves, as the link host's answer says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Served {
    /// Bytes of the body to drop first (a host that ignored the `Range`).
    pub skip: u64,
    /// The file's offset of the first byte sent.
    pub offset: u64,
    /// Bytes sent at most (`None`: to the end of the body).
    pub limit: Option<u64>,
    /// Bytes the body holds, when the host says (`Content-Length`).
    pub body_length: Option<u64>,
    /// The whole file's size, when the host says.
    pub total: Option<u64>,
    /// Bytes the caller asked for (to the end of the file) when the host
    /// served a shorter range: the stream ends DATA_LOSS after them, and
    /// the caller resumes (never a short success).
    pub wanted: Option<u64>,
}

/// `Content-Range: bytes <first>-<last>/<total or *>`.
fn content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (span, total) = rest.split_once('/')?;
    let (first, last) = span.split_once('-')?;
    let (first, last) = (first.trim().parse().ok()?, last.trim().parse().ok()?);
    // `*` is an unknown total; anything else must be a number.
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    (first <= last).then_some((first, last, total))
}

/// What the answer to a download asked from `offset`, at most `limit` bytes
/// (0: to the end), serves: a 206 says its range; a 200 is the whole file
/// (the host ignored the range), whose first `offset` bytes the gateway drops.
pub(crate) fn served(
    status: reqwest::StatusCode,
    headers: &HeaderMap,
    body_length: Option<u64>,
    offset: u64,
    limit: u64,
) -> Result<Served, UpstreamError> {
    let limit = (limit > 0).then_some(limit);
    if status == reqwest::StatusCode::PARTIAL_CONTENT {
        let (first, last, total) = headers
            .get(header::CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(content_range)
            .ok_or_else(|| {
                UpstreamError::Protocol(
                    "a partial download without a readable Content-Range".into(),
                )
            })?;
        let lie = |what: String| Err(UpstreamError::Protocol(what));
        // The range must start at or before the offset, reach it, lie within
        // the total it states, and be the body's length when one is stated.
        if first > offset || last < offset {
            return lie(format!(
                "the link host served bytes {first}-{last}, which do not start at {offset}"
            ));
        }
        if total.is_some_and(|t| last >= t) {
            return lie(format!(
                "the link host served bytes {first}-{last} of a file it says is shorter"
            ));
        }
        let Some(span) = (last - first).checked_add(1) else {
            return lie("the link host's Content-Range is out of bounds".into());
        };
        if body_length.is_some_and(|b| b != span) {
            return lie(format!(
                "the link host's Content-Length is not the {span} bytes its Content-Range states"
            ));
        }
        // `last >= offset`: at least one byte from the offset on.
        let have = last - offset + 1;
        // Asked to the end, served less of a file of known size.
        let wanted = match (limit, total) {
            (None, Some(t)) if last + 1 < t => Some(t - offset),
            _ => None,
        };
        return Ok(Served {
            skip: offset - first,
            offset,
            limit: Some(limit.map_or(have, |l| l.min(have))),
            body_length: Some(span),
            total,
            wanted,
        });
    }
    // The whole file: its length is its size.
    if let Some(size) = body_length
        && offset > 0
        && offset >= size
    {
        return Err(UpstreamError::RangeNotSatisfiable { size: Some(size) });
    }
    Ok(Served {
        skip: offset,
        offset,
        limit,
        body_length,
        total: body_length,
        wanted: None,
    })
}

impl Served {
    /// How many bytes the stream carries, when known.
    fn length(&self) -> Option<u64> {
        let rest = self
            .total
            .map(|t| t.saturating_sub(self.offset))
            .or_else(|| self.body_length.map(|b| b.saturating_sub(self.skip)));
        // Unknown when the rest of the file is: a limit alone is an upper bound.
        rest.map(|r| match self.wanted {
            Some(w) => w,
            None => self.limit.map_or(r, |l| r.min(l)),
        })
    }
}

fn metadata(target: &AttachmentRef, headers: &HeaderMap, total: Option<u64>) -> Attachment {
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
        size_bytes: total.unwrap_or(0),
        ..Attachment::default()
    }
}

fn chunk_message(b: Bytes) -> DownloadAttachmentResponse {
    DownloadAttachmentResponse {
        payload: Some(Payload::Chunk(b)),
        range: None,
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

    /// Opens the download for `caller`, from `offset`, at most `limit` bytes
    /// (0: to the end); its bytes then stream to the caller as the caller's
    /// side asks for them. The download holds a slot until its last byte.
    pub async fn open(
        &self,
        caller: &Arc<str>,
        target: AttachmentRef,
        (offset, limit): (u64, u64),
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
        let range = (offset > 0 || limit > 0).then_some((offset, Some(limit)));
        let resp = self
            .bounds
            .run(
                deadline,
                Op::Read,
                "opening the download",
                self.upstream.open_download(&link, deadline, range),
            )
            .await?;
        let served = served(
            resp.status(),
            resp.headers(),
            resp.content_length(),
            offset,
            limit,
        )
        .map_err(|e| Error::upstream(e, Op::Read))?;
        let first = DownloadAttachmentResponse {
            payload: Some(Payload::Metadata(metadata(
                &target,
                resp.headers(),
                served.total,
            ))),
            range: Some(ByteRange {
                offset: served.offset,
                length: served.length().unwrap_or(0),
                total_size: served.total.unwrap_or(0),
            }),
        };
        Ok(Box::pin(Pump {
            first: Some(first),
            body: Box::pin(resp.bytes_stream()),
            piece: Bytes::new(),
            chunk_size: self.chunk_bytes,
            received: 0,
            sent: 0,
            offset,
            skip: served.skip,
            left: served.limit,
            wanted: served.wanted,
            body_length: served.body_length,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            cut: Box::pin(self.bounds.cut.clone().cancelled_owned()),
            metrics: Arc::clone(&self.metrics),
            span: tracing::Span::current(),
            done: false,
            _slot: slot,
        }))
    }
}

/// A download's messages, read from the link as the caller's side asks for
/// them: the reads run in the task that writes the caller's HTTP/2 stream, not
/// in a task of their own behind a queue (each chunk wakes one task fewer);
/// the link's socket and hyper's read buffer still read ahead.
struct Pump {
    first: Option<DownloadAttachmentResponse>,
    body: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    /// What is left of the last read, handed on `chunk_size` bytes at a time.
    piece: Bytes,
    chunk_size: usize,
    /// Bytes read from the body.
    received: u64,
    /// Bytes handed on to the caller.
    sent: u64,
    /// The offset the caller asked for.
    offset: u64,
    /// Bytes still to drop from the body's start.
    skip: u64,
    /// Bytes still to send, when limited.
    left: Option<u64>,
    /// Bytes the caller asked for, when the host served fewer (see [`Served`]).
    wanted: Option<u64>,
    body_length: Option<u64>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    cut: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    metrics: Arc<Metrics>,
    /// The call's span, for what is logged after the handler returned.
    span: tracing::Span,
    done: bool,
    /// The download's slot, held to its last byte.
    _slot: crate::limits::Slot,
}

impl Pump {
    fn fail(&mut self, e: Error) -> Poll<Option<Result<DownloadAttachmentResponse, Status>>> {
        self.done = true;
        Poll::Ready(Some(Err(e.into())))
    }

    /// Takes what of `bytes` is to be sent: past the bytes to skip, within the
    /// limit (reaching it ends the download).
    fn keep(&mut self, mut bytes: Bytes) -> Bytes {
        if self.skip > 0 {
            let drop = usize::try_from(self.skip)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            bytes = bytes.split_off(drop);
            self.skip -= drop as u64;
        }
        if let Some(left) = self.left.as_mut() {
            let n = usize::try_from(*left)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            bytes.truncate(n);
            *left -= n as u64;
            if *left == 0 && self.wanted.is_none() {
                self.done = true;
            }
        }
        bytes
    }
}

impl Stream for Pump {
    type Item = Result<DownloadAttachmentResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(first)));
        }
        loop {
            if !this.piece.is_empty() {
                let n = this.piece.len().min(this.chunk_size);
                return Poll::Ready(Some(Ok(chunk_message(this.piece.split_to(n)))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            if this.cut.as_mut().poll(cx).is_ready() {
                return this.fail(Error::ShuttingDown {
                    op: Op::Read,
                    nothing_applied: true,
                });
            }
            if this.deadline.as_mut().poll(cx).is_ready() {
                return this.fail(Error::Deadline {
                    op: Op::Read,
                    what: "the download",
                    nothing_applied: true,
                });
            }
            match ready!(this.body.as_mut().poll_next(cx)) {
                Some(Ok(bytes)) => {
                    this.received += bytes.len() as u64;
                    let kept = this.keep(bytes);
                    this.sent += kept.len() as u64;
                    this.metrics.download_bytes.inc_by(kept.len() as u64);
                    this.piece = kept;
                }
                Some(Err(e)) => {
                    let e = Error::upstream(UpstreamError::from_reqwest(e), Op::Read);
                    let received = this.received;
                    this.span.in_scope(|| {
                        tracing::warn!(received, code = ?e.code(), "download broke off");
                    });
                    return this.fail(e);
                }
                None => {
                    // Shorter than its stated length (a 206 always states
                    // one): broken off, whatever was skipped or sent.
                    if let Some(expected) = this.body_length
                        && expected != this.received
                    {
                        let received = this.received;
                        return this.fail(Error::DownloadTruncated { received, expected });
                    }
                    // A whole file (of no stated length) that ends at or
                    // before the offset asked for: the offset is past its end.
                    if this.skip > 0 || (this.offset > 0 && this.sent == 0) {
                        let size = Some(this.received);
                        return this.fail(Error::upstream(
                            UpstreamError::RangeNotSatisfiable { size },
                            Op::Read,
                        ));
                    }
                    // A range short of the end the caller asked for.
                    if let Some(expected) = this.wanted {
                        let received = this.sent;
                        return this.fail(Error::DownloadTruncated { received, expected });
                    }
                    this.done = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        h
    }

    #[test]
    fn a_partial_answer_serves_its_content_range() {
        use reqwest::StatusCode as S;
        let h = headers(&[("content-range", "bytes 100-199/1000")]);
        let s = served(S::PARTIAL_CONTENT, &h, Some(100), 100, 0).expect("served");
        assert_eq!(
            s,
            Served {
                skip: 0,
                offset: 100,
                limit: Some(100),
                body_length: Some(100),
                total: Some(1000),
                // Asked to the end: the 100 bytes, then DOWNLOAD_TRUNCATED.
                wanted: Some(900),
            }
        );
        assert_eq!(s.length(), Some(900));
        let s = served(S::PARTIAL_CONTENT, &h, Some(100), 100, 100).expect("served");
        assert_eq!(
            (s.limit, s.wanted, s.length()),
            (Some(100), None, Some(100))
        );
        // A host that starts earlier than asked: the difference is dropped.
        let h = headers(&[("content-range", "bytes 0-999/*")]);
        let s = served(S::PARTIAL_CONTENT, &h, None, 10, 5).expect("served");
        assert_eq!((s.skip, s.limit, s.total), (10, Some(5), None));
        assert_eq!(s.length(), Some(5));
        // A range that does not reach the offset, starts later, overflows,
        // passes its own total or disagrees with the body's length: lies.
        for (range, length, offset) in [
            ("bytes 20-999/1000", None, 10),
            ("bytes 0-9/1000", None, 10),
            ("bytes 0-8/1000", None, 10),
            ("bytes 0-18446744073709551615/*", None, 10),
            ("bytes 0-1000/1000", None, 10),
            ("bytes 0-999/1000", Some(999), 10),
        ] {
            let h = headers(&[("content-range", range)]);
            assert!(
                served(S::PARTIAL_CONTENT, &h, length, offset, 0).is_err(),
                "{range} {length:?}"
            );
        }
        for bad in [
            "",
            "bytes */1000",
            "bytes 9-3/10",
            "items 0-1/2",
            "bytes 0-9/abc",
        ] {
            let h = headers(&[("content-range", bad)]);
            assert!(served(S::PARTIAL_CONTENT, &h, None, 0, 0).is_err(), "{bad}");
        }
        assert!(served(S::PARTIAL_CONTENT, &HeaderMap::new(), None, 0, 0).is_err());
    }

    #[test]
    fn a_whole_file_answer_is_skipped_to_the_offset() {
        use reqwest::StatusCode as S;
        let s = served(S::OK, &HeaderMap::new(), Some(1000), 300, 0).expect("served");
        assert_eq!(
            (s.skip, s.offset, s.limit, s.total),
            (300, 300, None, Some(1000))
        );
        assert_eq!(s.length(), Some(700));
        let s = served(S::OK, &HeaderMap::new(), Some(1000), 300, 50).expect("served");
        assert_eq!(s.length(), Some(50));
        assert!(matches!(
            served(S::OK, &HeaderMap::new(), Some(1000), 1000, 0),
            Err(UpstreamError::RangeNotSatisfiable { size: Some(1000) })
        ));
        // No stated length: the body's end tells, and a limit alone does not
        // say how many bytes come.
        let s = served(S::OK, &HeaderMap::new(), None, 300, 0).expect("served");
        assert_eq!((s.skip, s.length()), (300, None));
        let s = served(S::OK, &HeaderMap::new(), None, 300, 50).expect("served");
        assert_eq!(s.length(), None);
    }

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
