//! `UploadAttachment`: metadata first, then bytes streamed through to the upstream's
//! multipart body as they arrive, counted and hashed on the way.
//!
//! The upstream request starts only once the metadata is valid and the first byte
//! has arrived, so bad metadata and empty files never reach the upstream. After
//! that, the body ends cleanly only when the caller's stream ended cleanly and every
//! check passed: any other end (error, cancellation, limit, the handler dropped)
//! makes the body fail, which aborts the upstream request mid-body.

mod again;
mod body;
mod progress;
mod send;
mod stream;

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio::time::timeout;
use tonic::Code;

use self::again::Reconciled;
use self::body::Chunk;
pub use self::stream::UploadStream;
use super::convert;
use super::deadline::Bounds;
use super::error::{Error, Op};
use super::runtime::Runtime;
use super::writes::{Start, Writes};
use crate::config::{LimitSettings, RateLimitSettings};
use crate::domain::{NewAttachment, UpstreamName};
use crate::limits::Concurrency;
use crate::metrics::{Counted, Metrics};
use crate::proto::wire::upload_attachment_request::Payload;
use crate::proto::wire::{UploadAttachmentRequest, UploadAttachmentResponse};
use crate::store::writes::{Fingerprint, WriteKey};
use crate::upstream::Upstream;

/// The next message's payload; a message with neither field is invalid. A message
/// too large for the transport surfaces as INVALID_ARGUMENT naming `chunk`.
async fn next_payload(
    stream: &mut UploadStream,
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

/// How far an upload got, for what its caller is told when it is cut.
#[derive(Default)]
pub(super) struct Phase(AtomicU8);

const BEFORE_COMMIT: u8 = 0;
/// Sent whole; a retry with the same message id gets its outcome.
const COMMITTED_KEYED: u8 = 1;
/// Sent whole, with no message id of the caller's: nothing to retry by.
const COMMITTED: u8 = 2;

impl Phase {
    pub(super) fn committed(&self, keyed: bool) {
        let v = if keyed { COMMITTED_KEYED } else { COMMITTED };
        self.0.store(v, Ordering::Release);
    }

    /// The error of an upload cut by `why` (a deadline, or the shutdown).
    fn cut(&self, deadline: bool) -> Error {
        let why = if deadline {
            "the deadline passed"
        } else {
            "the gateway is shutting down"
        };
        match (self.0.load(Ordering::Acquire), deadline) {
            (COMMITTED_KEYED, _) => Error::OutcomePending { why, deadline },
            (phase, true) => Error::Deadline {
                op: Op::Write,
                what: "the upload",
                nothing_applied: phase == BEFORE_COMMIT,
            },
            (phase, false) => Error::ShuttingDown {
                op: Op::Write,
                nothing_applied: phase == BEFORE_COMMIT,
            },
        }
    }
}

/// Who uploads what, as the record of writes and the event know it.
pub(super) struct Named {
    pub(super) caller: Arc<str>,
    pub(super) key: Option<WriteKey>,
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

    /// Runs one upload for `caller`: its caller's part within `deadline` and
    /// the shutdown cut. Cut before its commit point, the upstream request is
    /// aborted mid-body (nothing stored); after it, the upload runs to its end
    /// in a task of its own (see `writes`).
    pub async fn run(
        &self,
        caller: Arc<str>,
        stream: UploadStream,
        deadline: Instant,
    ) -> Result<UploadAttachmentResponse, Error> {
        let phase = Phase::default();
        tokio::select! {
            r = tokio::time::timeout_at(deadline, self.upload(caller, stream, &phase)) => match r {
                Ok(r) => r,
                Err(_) => Err(phase.cut(true)),
            },
            () = self.bounds.cut.cancelled() => Err(phase.cut(false)),
        }
    }

    /// The largest chunk accepted.
    pub fn max_chunk_bytes(&self) -> usize {
        self.limits.max_chunk_bytes
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
    async fn next(&self, stream: &mut UploadStream) -> Result<Option<Payload>, Error> {
        let idle = self.limits.idle_timeout;
        self.next_within(stream, idle, "the next upload message")
            .await
    }

    /// The next message, within `wait`: else the stream is idle, waiting for `what`.
    async fn next_within(
        &self,
        stream: &mut UploadStream,
        wait: Duration,
        what: &'static str,
    ) -> Result<Option<Payload>, Error> {
        timeout(wait, next_payload(stream, self.limits.max_chunk_bytes))
            .await
            .map_err(|_| Error::StreamIdle { waited: wait, what })?
    }

    /// The upload, start to end: its metadata, a slot, the record of writes,
    /// then the bytes (or, for a write seen before, its answer).
    async fn upload(
        &self,
        caller: Arc<str>,
        mut stream: UploadStream,
        phase: &Phase,
    ) -> Result<UploadAttachmentResponse, Error> {
        let (attachment, caller_message_id) = self.metadata(&mut stream).await?;
        tracing::Span::current().record("work_order_id", attachment.work_order_id.get());
        let _slot = self.slots.try_acquire(&caller).map_err(|refusal| {
            self.metrics.refused(refusal.limit);
            Error::Limited(refusal)
        })?;
        let _in_flight = Counted::new(&self.metrics.uploads_in_flight);
        let key = (!caller_message_id.is_empty()).then(|| WriteKey {
            caller: Arc::clone(&caller),
            call: "upload",
            work_order_id: attachment.work_order_id.get(),
            message_id: caller_message_id,
        });
        let named = Named { caller, key };
        let (guard, listed_before) = match self
            .writes
            .begin(
                named.key.clone(),
                fingerprint(&attachment),
                "metadata.message_id",
            )
            .await?
        {
            Start::Replay(outcome) => {
                return self.replay(stream, &attachment, outcome, &named).await;
            }
            Start::Unsettled(u) => {
                match self.reconcile(&mut stream, &attachment, u, &named).await? {
                    Reconciled::Answer(r) => return Ok(r),
                    Reconciled::RunAgain(g, before) => (Some(*g), before),
                }
            }
            Start::Go(g) => (g, None),
        };
        self.send(stream, attachment, guard, listed_before, named, phase)
            .await
    }

    /// The first message, which must be the metadata and arrive soon (no slot is
    /// held meanwhile), validated; with the message id the caller gave, if any.
    async fn metadata(&self, stream: &mut UploadStream) -> Result<(NewAttachment, String), Error> {
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
}

fn empty_file() -> Error {
    Error::invalid(
        "chunk",
        "EMPTY_FILE",
        "the file is empty: no bytes followed the metadata",
    )
}
