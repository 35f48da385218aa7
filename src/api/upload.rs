//! `UploadAttachment`: metadata first, then bytes streamed through to the upstream's
//! multipart body as they arrive, counted and hashed on the way.
//!
//! The upstream request starts only once the metadata is valid and the first byte
//! has arrived, so bad metadata and empty files never reach the upstream. After
//! that, the body ends cleanly only when the caller's stream ended cleanly and every
//! check passed: any other end (error, cancellation, limit, the handler dropped)
//! makes the body fail, which aborts the upstream request mid-body.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tonic::{Code, Status, Streaming};

use super::status::{self, Op, invalid_field};
use super::{AttachmentApi, convert};
use crate::proto::wire::upload_attachment_request::Payload;
use crate::proto::wire::{UploadAttachmentRequest, UploadAttachmentResponse};

/// Chunks queued between the caller's stream and the upstream body: memory per
/// upload stays within a few chunks.
const QUEUED_CHUNKS: usize = 2;

/// A chunk on its way upstream, holding its share of the in-flight byte budget
/// until the HTTP client takes it.
struct Chunk {
    bytes: Bytes,
    _permit: OwnedSemaphorePermit,
}

/// The body handed to the upstream request.
struct UploadBody {
    rx: mpsc::Receiver<Chunk>,
    complete: Arc<AtomicBool>,
    failed: bool,
}

impl Stream for UploadBody {
    type Item = Result<Bytes, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.failed {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(c)) => Poll::Ready(Some(Ok(c.bytes))),
            Poll::Ready(None) if self.complete.load(Ordering::Acquire) => Poll::Ready(None),
            Poll::Ready(None) => {
                self.failed = true;
                Poll::Ready(Some(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "upload abandoned before its last byte",
                ))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Byte count, hash and limits of one upload.
struct Progress {
    received: u64,
    hasher: Sha256,
    limit: u64,
    declared: Option<u64>,
    max_chunk: usize,
}

impl Progress {
    fn accept(&mut self, chunk: &[u8]) -> Result<(), Status> {
        if chunk.len() > self.max_chunk {
            return Err(invalid_field(
                "chunk",
                "CHUNK_TOO_LARGE",
                format!(
                    "a chunk of {} bytes exceeds the limit of {} bytes per message",
                    chunk.len(),
                    self.max_chunk
                ),
            ));
        }
        let total = self.received + chunk.len() as u64;
        if let Some(declared) = self.declared
            && total > declared
        {
            return Err(invalid_field(
                "metadata.size_bytes",
                "SIZE_MISMATCH",
                format!(
                    "declares {declared} bytes, but byte {} arrived",
                    declared + 1
                ),
            ));
        }
        if total > self.limit {
            return Err(invalid_field(
                "chunk",
                "FILE_TOO_LARGE",
                format!(
                    "the file exceeds the limit of {} bytes (byte {} arrived)",
                    self.limit,
                    self.limit + 1
                ),
            ));
        }
        self.hasher.update(chunk);
        self.received = total;
        Ok(())
    }

    fn finish(self) -> Result<(u64, String), Status> {
        if let Some(declared) = self.declared
            && declared != self.received
        {
            return Err(invalid_field(
                "metadata.size_bytes",
                "SIZE_MISMATCH",
                format!(
                    "declares {declared} bytes, but the stream ended after {}",
                    self.received
                ),
            ));
        }
        Ok((self.received, hex::encode(self.hasher.finalize())))
    }
}

/// The next message's payload; a message with neither field is invalid. A message
/// too large for the transport surfaces as INVALID_ARGUMENT naming `chunk`.
async fn next_payload(
    stream: &mut Streaming<UploadAttachmentRequest>,
    max_chunk: usize,
) -> Result<Option<Payload>, Status> {
    match stream.message().await {
        Ok(Some(UploadAttachmentRequest { payload: Some(p) })) => Ok(Some(p)),
        Ok(Some(UploadAttachmentRequest { payload: None })) => Err(invalid_field(
            "payload",
            "REQUIRED",
            "a message carries neither metadata nor chunk",
        )),
        Ok(None) => Ok(None),
        Err(s) if s.code() == Code::OutOfRange => Err(invalid_field(
            "chunk",
            "MESSAGE_TOO_LARGE",
            format!(
                "a message exceeds the server's limit; send chunks of at most {max_chunk} bytes ({})",
                s.message()
            ),
        )),
        Err(s) => Err(s),
    }
}

fn late_metadata() -> Status {
    invalid_field(
        "metadata",
        "DUPLICATE_METADATA",
        "metadata must be sent once, as the first message",
    )
}

impl AttachmentApi {
    /// Waits for room in the in-flight byte budget for `bytes`.
    async fn hold(&self, bytes: Bytes) -> Result<Chunk, Status> {
        let n = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        let permit = Arc::clone(&self.upload_bytes)
            .acquire_many_owned(n)
            .await
            .map_err(|_| Status::unavailable("the gateway is shutting down"))?;
        self.metrics.upload_bytes.inc_by(bytes.len() as u64);
        Ok(Chunk {
            bytes,
            _permit: permit,
        })
    }

    pub(super) async fn upload(
        &self,
        mut stream: Streaming<UploadAttachmentRequest>,
        sent: &AtomicBool,
    ) -> Result<UploadAttachmentResponse, Status> {
        let max_chunk = self.limits.max_chunk_bytes;
        let meta = match next_payload(&mut stream, max_chunk).await? {
            Some(Payload::Metadata(m)) => m,
            Some(Payload::Chunk(_)) => {
                return Err(invalid_field(
                    "metadata",
                    "MISSING_METADATA",
                    "the first message must carry the metadata, not a chunk",
                ));
            }
            None => {
                return Err(invalid_field(
                    "metadata",
                    "MISSING_METADATA",
                    "the stream ended before the metadata message",
                ));
            }
        };
        let caller_id = meta.message_id.clone();
        let attachment = convert::new_attachment(meta, self.limits.max_upload_bytes)?;
        let guard = match self.begin_write("upload", attachment.work_order_id.get(), &caller_id)? {
            Some(super::WriteStart::Replay(super::idempotency::Answer::Upload(r))) => {
                tracing::info!("upload already done under this message_id: answering as before");
                return Ok(r);
            }
            Some(super::WriteStart::Replay(_)) => None,
            Some(super::WriteStart::Go(g)) => Some(g),
            None => None,
        };
        tracing::Span::current().record("work_order_id", attachment.work_order_id.get());
        let mut progress = Progress {
            received: 0,
            hasher: Sha256::new(),
            limit: self.limits.max_upload_bytes,
            declared: attachment.declared_size,
            max_chunk,
        };

        // Nothing goes upstream before the first byte: an empty file is refused here.
        let first = loop {
            match next_payload(&mut stream, max_chunk).await? {
                Some(Payload::Chunk(b)) if b.is_empty() => continue,
                Some(Payload::Chunk(b)) => {
                    progress.accept(&b)?;
                    break b;
                }
                Some(Payload::Metadata(_)) => return Err(late_metadata()),
                None => {
                    return Err(invalid_field(
                        "chunk",
                        "EMPTY_FILE",
                        "the file is empty: no bytes followed the metadata",
                    ));
                }
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
        // Capacity is at least one, and the queue is empty.
        if tx.try_send(first).is_err() {
            return Err(Status::internal("upload queue unavailable"));
        }
        tracing::debug!(
            work_order_id = attachment.work_order_id.get(),
            declared = ?attachment.declared_size,
            "upload: streaming to the upstream"
        );
        let upstream = self.upstream.upload(&attachment, body);
        tokio::pin!(upstream);

        let pump = async {
            loop {
                match next_payload(&mut stream, max_chunk).await? {
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
                    Err(e) => status::from_upstream(&e, Op::Write),
                    Ok(_) => Status::internal("the upstream accepted the upload before its last byte; nothing can be confirmed"),
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
                    status::from_upstream(&e, Op::Write)
                })?;
                let answer = UploadAttachmentResponse {
                    attachment_id: receipt.attachment_id,
                    message_id: receipt
                        .message_id
                        .filter(|m| !m.is_empty())
                        .unwrap_or_else(|| attachment.message_id.as_str().to_string()),
                    size_bytes: size,
                    sha256: sha,
                };
                if let Some(g) = guard {
                    g.complete(super::idempotency::Answer::Upload(answer.clone()));
                }
                Ok(answer)
            }
            Ok(false) => {
                drop(tx);
                match upstream.await {
                    Err(e) => Err(status::from_upstream(&e, Op::Write)),
                    Ok(_) => Err(Status::internal(
                        "the upstream stopped reading the upload but accepted it",
                    )),
                }
            }
            // `tx` drops without `complete`: the body fails and the upstream request
            // is aborted; dropping `upstream` closes its connection too.
            Err(status) => {
                tracing::info!(code = ?status.code(), "upload refused mid-stream; upstream request aborted");
                Err(status)
            }
        }
    }
}
