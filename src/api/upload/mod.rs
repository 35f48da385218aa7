//! `UploadAttachment`: metadata first, then bytes streamed through to the upstream's
//! multipart body as they arrive, counted and hashed on the way.
//!
//! The upstream request starts only once the metadata is valid and the first byte
//! has arrived, so bad metadata and empty files never reach the upstream. After
//! that, the body ends cleanly only when the caller's stream ended cleanly and every
//! check passed: any other end (error, cancellation, limit, the handler dropped)
//! makes the body fail, which aborts the upstream request mid-body.

mod body;
mod progress;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio::time::timeout;
use tonic::{Code, Streaming};

use self::body::{Chunk, UploadBody};
use self::progress::Progress;
use super::convert;
use super::deadline::Bounds;
use super::error::{Error, Op};
use super::runtime::Runtime;
use super::writes::{Start, Writes};
use crate::config::{LimitSettings, RateLimitSettings};
use crate::domain::{NewAttachment, UpstreamName};
use crate::limits::Concurrency;
use crate::metrics::Metrics;
use crate::proto::wire::upload_attachment_request::Payload;
use crate::proto::wire::{UploadAttachmentRequest, UploadAttachmentResponse};
use crate::recorder::Recorder;
use crate::store::writes::{Fingerprint, Outcome, WriteKey};
use crate::upstream::Upstream;

/// Chunks queued between the caller's stream and the upstream body: memory per
/// upload stays within a few chunks.
const QUEUED_CHUNKS: usize = 2;

/// The next message's payload; a message with neither field is invalid. A message
/// too large for the transport surfaces as INVALID_ARGUMENT naming `chunk`.
async fn next_payload(
    stream: &mut Streaming<UploadAttachmentRequest>,
    max_chunk: usize,
) -> Result<Option<Payload>, Error> {
    match stream.message().await {
        Ok(Some(UploadAttachmentRequest { payload: Some(p) })) => Ok(Some(p)),
        Ok(Some(UploadAttachmentRequest { payload: None })) => Err(Error::invalid(
            "payload",
            "REQUIRED",
            "a message carries neither metadata nor chunk",
        )),
        Ok(None) => Ok(None),
        Err(s) if s.code() == Code::OutOfRange => Err(Error::invalid(
            "chunk",
            "MESSAGE_TOO_LARGE",
            format!(
                "a message exceeds the server's limit; send chunks of at most {max_chunk} bytes ({})",
                s.message()
            ),
        )),
        Err(s) => Err(Error::Stream(s)),
    }
}

fn late_metadata() -> Error {
    Error::invalid(
        "metadata",
        "DUPLICATE_METADATA",
        "metadata must be sent once, as the first message",
    )
}

/// The limits an upload is held to.
#[derive(Debug, Clone)]
pub struct UploadLimits {
    pub max_upload_bytes: u64,
    pub max_chunk_bytes: usize,
    pub max_inflight_upload_bytes: usize,
    /// How long the metadata message may take to arrive.
    pub first_message_timeout: Duration,
    /// How long the stream may go without a message once the upload is under way.
    pub idle_timeout: Duration,
}

impl UploadLimits {
    /// The sizes and timeouts of `limits`; the bytes in memory at once, of
    /// every upload together, of `rate_limit`.
    pub fn new(limits: &LimitSettings, rate_limit: &RateLimitSettings) -> Self {
        Self {
            max_upload_bytes: limits.max_upload_bytes,
            max_chunk_bytes: usize::try_from(limits.max_chunk_bytes).unwrap_or(usize::MAX),
            max_inflight_upload_bytes: usize::try_from(rate_limit.max_inflight_upload_bytes)
                .unwrap_or(usize::MAX),
            first_message_timeout: limits.upload_first_message_timeout,
            idle_timeout: limits.upload_idle_timeout,
        }
    }
}

/// Counts an upload in progress while alive.
struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.uploads_in_flight.dec();
    }
}

/// The upload path: what `UploadAttachment` needs, and nothing else.
pub struct Uploads {
    upstream: Arc<Upstream>,
    limits: UploadLimits,
    bounds: Bounds,
    writes: Writes,
    metrics: Arc<Metrics>,
    /// Uploads in progress, on this replica and per caller.
    slots: Arc<Concurrency>,
    /// One permit per upload byte held in memory.
    bytes: Arc<Semaphore>,
    /// Records each upload as an event.
    recorder: Recorder,
}

/// An upload's digest for the record of writes: every metadata field that makes
/// it this upload (the bytes are compared separately, by their SHA-256).
fn fingerprint(a: &NewAttachment) -> Fingerprint {
    Fingerprint::of(&[
        a.work_order_id.get().to_string().as_bytes(),
        a.name.as_str().as_bytes(),
        a.mime_type.as_str().as_bytes(),
        a.document_type
            .map(|d| d.upstream_name())
            .unwrap_or("")
            .as_bytes(),
        a.visibility
            .map(|v| v.upstream_name())
            .unwrap_or("")
            .as_bytes(),
        a.performed_by.get_name().as_bytes(),
        a.performed_by.get_phone().unwrap_or("").as_bytes(),
    ])
}

impl Uploads {
    /// Uploads held to `limits` and to the concurrency and memory bounds of
    /// `rate_limit`, remembered in `writes`.
    pub fn new(
        rt: &Runtime,
        limits: &LimitSettings,
        rate_limit: &RateLimitSettings,
        writes: Writes,
    ) -> Self {
        let limits = UploadLimits::new(limits, rate_limit);
        Self {
            upstream: Arc::clone(&rt.upstream),
            recorder: rt.recorder.clone(),
            bytes: Arc::new(Semaphore::new(
                limits.max_inflight_upload_bytes.min(Semaphore::MAX_PERMITS),
            )),
            slots: Concurrency::new(
                "concurrent_uploads",
                "concurrent_uploads_per_caller",
                rate_limit.max_concurrent_uploads as usize,
                rate_limit.max_concurrent_uploads_per_caller as usize,
            ),
            limits,
            bounds: rt.bounds.clone(),
            writes,
            metrics: Arc::clone(&rt.metrics),
        }
    }

    /// Runs one upload for `caller` to its end: within `deadline` and the shutdown
    /// cut; a call stopped by either aborts its upstream request mid-body unless
    /// the body was complete.
    pub async fn run(
        &self,
        caller: Arc<str>,
        stream: Streaming<UploadAttachmentRequest>,
        deadline: Instant,
    ) -> Result<UploadAttachmentResponse, Error> {
        // Set once the whole body went upstream: from then on, stopping the call
        // cannot tell whether the attachment was stored.
        let sent = AtomicBool::new(false);
        tokio::select! {
            r = tokio::time::timeout_at(deadline, self.upload(caller, stream, &sent)) => match r {
                Ok(r) => r,
                Err(_) => Err(Error::Deadline {
                    op: Op::Write,
                    what: "the upload",
                    nothing_applied: !sent.load(Ordering::Acquire),
                }),
            },
            () = self.bounds.cut.cancelled() => Err(Error::ShuttingDown {
                op: Op::Write,
                nothing_applied: !sent.load(Ordering::Acquire),
            }),
        }
    }

    /// Waits for room in the in-flight byte budget for `bytes`.
    async fn hold(&self, bytes: Bytes) -> Result<Chunk, Error> {
        // A chunk is at most `max_chunk_bytes` (64 MiB at most), below u32::MAX.
        let n = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        let permit = Arc::clone(&self.bytes)
            .acquire_many_owned(n)
            .await
            .map_err(|_| Error::Internal("the upload byte budget was closed"))?;
        self.metrics.upload_bytes.inc_by(bytes.len() as u64);
        Ok(Chunk {
            bytes,
            _permit: permit,
        })
    }

    /// The next message, within the idle timeout.
    async fn next(
        &self,
        stream: &mut Streaming<UploadAttachmentRequest>,
    ) -> Result<Option<Payload>, Error> {
        let idle = self.limits.idle_timeout;
        self.next_within(stream, idle, "the next upload message")
            .await
    }

    /// The next message, within `wait`: else the stream is idle, waiting for `what`.
    async fn next_within(
        &self,
        stream: &mut Streaming<UploadAttachmentRequest>,
        wait: Duration,
        what: &'static str,
    ) -> Result<Option<Payload>, Error> {
        timeout(wait, next_payload(stream, self.limits.max_chunk_bytes))
            .await
            .map_err(|_| Error::StreamIdle { waited: wait, what })?
    }

    /// The upload, start to end: its metadata, a slot, the record of writes, then
    /// the bytes (or, for a write already done, the comparison of its bytes).
    async fn upload(
        &self,
        caller: Arc<str>,
        mut stream: Streaming<UploadAttachmentRequest>,
        sent: &AtomicBool,
    ) -> Result<UploadAttachmentResponse, Error> {
        let (attachment, caller_message_id) = self.metadata(&mut stream).await?;
        tracing::Span::current().record("work_order_id", attachment.work_order_id.get());
        let _slot = self.slots.try_acquire(&caller).map_err(|refusal| {
            self.metrics.refused(refusal.limit);
            Error::Limited(refusal)
        })?;
        self.metrics.uploads_in_flight.inc();
        let _in_flight = InFlight(&self.metrics);
        let caller_id = caller.to_string();
        let key = (!caller_message_id.is_empty()).then(|| WriteKey {
            caller,
            call: "upload",
            work_order_id: attachment.work_order_id.get(),
            message_id: caller_message_id,
        });
        let guard = match self
            .writes
            .begin(key, fingerprint(&attachment), "metadata.message_id")
            .await?
        {
            Start::Replay(outcome) => return self.replay(stream, &attachment, outcome).await,
            Start::Go(g) => g,
        };
        let answer = self.forward(stream, &attachment, sent).await?;
        let added = crate::proto::Attachment {
            attachment_id: answer.attachment_id.clone(),
            name: attachment.name.as_str().to_string(),
            mime_type: attachment.mime_type.as_str().to_string(),
            size_bytes: answer.size_bytes,
            document_type: attachment.document_type.map_or(0, |d| d as i32),
            ..Default::default()
        };
        // The record first: it is what makes a retry get this answer, and the
        // event may wait on a slow log.
        if let Some(g) = guard {
            g.complete(Outcome::Upload {
                attachment_id: answer.attachment_id.clone(),
                message_id: answer.message_id.clone(),
                size_bytes: answer.size_bytes,
                sha256: answer.sha256.clone(),
            })
            .await;
        }
        self.recorder
            .gateway_write(
                crate::proto::AttachmentEventType::Added,
                attachment.work_order_id.get(),
                added,
                &caller_id,
                &answer.message_id,
            )
            .await;
        Ok(answer)
    }

    /// The first message, which must be the metadata and arrive soon (no slot is
    /// held meanwhile), validated; with the message id the caller gave, if any.
    async fn metadata(
        &self,
        stream: &mut Streaming<UploadAttachmentRequest>,
    ) -> Result<(NewAttachment, String), Error> {
        let wait = self.limits.first_message_timeout;
        let first = self
            .next_within(stream, wait, "the metadata message")
            .await?;
        let meta = match first {
            Some(Payload::Metadata(m)) => m,
            Some(Payload::Chunk(_)) => {
                return Err(Error::invalid(
                    "metadata",
                    "MISSING_METADATA",
                    "the first message must carry the metadata, not a chunk",
                ));
            }
            None => {
                return Err(Error::invalid(
                    "metadata",
                    "MISSING_METADATA",
                    "the stream ended before the metadata message",
                ));
            }
        };
        let caller_message_id = meta.message_id.clone();
        let attachment = convert::new_attachment(meta, self.limits.max_upload_bytes)?;
        Ok((attachment, caller_message_id))
    }

    /// Streams the bytes into the upstream's multipart body as they arrive, and
    /// answers with the upstream's receipt, the size and the SHA-256.
    async fn forward(
        &self,
        mut stream: Streaming<UploadAttachmentRequest>,
        attachment: &NewAttachment,
        sent: &AtomicBool,
    ) -> Result<UploadAttachmentResponse, Error> {
        let max_chunk = self.limits.max_chunk_bytes;
        let mut progress = Progress::new(
            self.limits.max_upload_bytes,
            max_chunk,
            attachment.declared_size,
        );

        // Nothing goes upstream before the first byte: an empty file is refused here.
        let first = loop {
            match self.next(&mut stream).await? {
                Some(Payload::Chunk(b)) if b.is_empty() => continue,
                Some(Payload::Chunk(b)) => {
                    progress.accept(&b)?;
                    break b;
                }
                Some(Payload::Metadata(_)) => return Err(late_metadata()),
                None => return Err(empty_file()),
            }
        };

        let first = self.hold(first).await?;
        let (tx, rx) = mpsc::channel::<Chunk>(QUEUED_CHUNKS);
        let complete = Arc::new(AtomicBool::new(false));
        let body = UploadBody {
            rx,
            complete: Arc::clone(&complete),
            failed: false,
        };
        // Capacity is at least one, and the queue is empty: this cannot fail.
        let _ = tx.try_send(first);
        tracing::debug!(
            work_order_id = attachment.work_order_id.get(),
            declared = ?attachment.declared_size,
            "upload: streaming to the upstream"
        );
        let upstream = self.upstream.upload(attachment, body);
        tokio::pin!(upstream);

        let pump = async {
            loop {
                match self.next(&mut stream).await? {
                    Some(Payload::Chunk(b)) => {
                        if b.is_empty() {
                            continue;
                        }
                        progress.accept(&b)?;
                        let chunk = self.hold(b).await?;
                        if tx.send(chunk).await.is_err() {
                            // The upstream stopped reading: its answer says why.
                            return Ok(false);
                        }
                    }
                    Some(Payload::Metadata(_)) => return Err(late_metadata()),
                    None => return Ok(true),
                }
            }
        };

        let outcome = tokio::select! {
            r = pump => r,
            r = &mut upstream => {
                // The upstream answered before the caller's stream ended.
                return Err(match r {
                    Err(e) => Error::upstream(e, Op::Write),
                    Ok(_) => Error::UploadUnconfirmed,
                });
            }
        };
        match outcome {
            Ok(true) => {
                let (size, sha) = progress.finish()?;
                tracing::Span::current().record("upload.bytes", size);
                complete.store(true, Ordering::Release);
                sent.store(true, Ordering::Release);
                drop(tx);
                let receipt = upstream.await.map_err(|e| {
                    tracing::warn!(error = %e, "upload failed upstream");
                    Error::upstream(e, Op::Write)
                })?;
                Ok(UploadAttachmentResponse {
                    attachment_id: receipt.attachment_id,
                    message_id: receipt
                        .message_id
                        .filter(|m| !m.is_empty())
                        .unwrap_or_else(|| attachment.message_id.as_str().to_string()),
                    size_bytes: size,
                    sha256: sha,
                })
            }
            Ok(false) => {
                drop(tx);
                match upstream.await {
                    Err(e) => Err(Error::upstream(e, Op::Write)),
                    Ok(_) => Err(Error::UploadUnconfirmed),
                }
            }
            // `tx` drops without `complete`: the body fails and the upstream request
            // is aborted; dropping `upstream` closes its connection too.
            Err(e) => {
                tracing::info!(code = ?e.code(), "upload refused mid-stream; upstream request aborted");
                Err(e)
            }
        }
    }

    /// The same caller sent an upload with this message id and the same metadata
    /// before, and it was stored. The bytes are read again (the caller sends them)
    /// and compared with what was stored: the same file gets the first answer; a
    /// different file under the same id is refused. Nothing goes upstream.
    async fn replay(
        &self,
        mut stream: Streaming<UploadAttachmentRequest>,
        attachment: &NewAttachment,
        outcome: Outcome,
    ) -> Result<UploadAttachmentResponse, Error> {
        let Outcome::Upload {
            attachment_id,
            message_id,
            size_bytes,
            sha256,
        } = outcome
        else {
            return Err(Error::Internal("the write record answered another call"));
        };
        let mut progress = Progress::new(
            self.limits.max_upload_bytes,
            self.limits.max_chunk_bytes,
            attachment.declared_size,
        );
        loop {
            match self.next(&mut stream).await? {
                Some(Payload::Chunk(b)) => progress.accept(&b)?,
                Some(Payload::Metadata(_)) => return Err(late_metadata()),
                None => break,
            }
        }
        if progress.received == 0 {
            return Err(empty_file());
        }
        let (size, sha) = progress.finish()?;
        if (size, sha.as_str()) != (size_bytes, sha256.as_str()) {
            tracing::info!("a message_id reused for another file: refused");
            return Err(Error::MessageIdReused {
                field: "metadata.message_id",
            });
        }
        tracing::info!("upload already done under this message_id: answering as before");
        Ok(UploadAttachmentResponse {
            attachment_id,
            message_id,
            size_bytes,
            sha256,
        })
    }
}

fn empty_file() -> Error {
    Error::invalid(
        "chunk",
        "EMPTY_FILE",
        "the file is empty: no bytes followed the metadata",
    )
}
