//! The `AttachmentService` adapter: proto in, validated domain types to the upstream
//! client, proto (or a `Status` made in [`status`]) out.

pub mod convert;
mod download;
pub mod idempotency;
pub mod status;
mod upload;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::Stream;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

use self::status::Op;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::proto::wire::attachment_service_server::AttachmentService;
use crate::proto::wire::{
    DeleteAttachmentRequest, DeleteAttachmentResponse, DownloadAttachmentRequest,
    DownloadAttachmentResponse, GetDownloadUrlRequest, GetDownloadUrlResponse,
    ListAttachmentsRequest, ListAttachmentsResponse, UpdateAttachmentRequest,
    UpdateAttachmentResponse, UploadAttachmentRequest, UploadAttachmentResponse,
};
use crate::upstream::{Upstream, UpstreamError, message_id_or};

/// The limits and timeouts the adapter enforces.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    pub max_upload_bytes: u64,
    pub max_chunk_bytes: usize,
    pub download_chunk_bytes: usize,
    pub request_timeout: Duration,
    pub transfer_timeout: Duration,
    pub max_concurrent_uploads: usize,
    pub max_inflight_upload_bytes: usize,
    pub idempotency_ttl: Duration,
}

impl ApiLimits {
    pub fn from_settings(s: &Settings) -> Self {
        Self {
            max_upload_bytes: s.limits.max_upload_bytes,
            max_chunk_bytes: usize::try_from(s.limits.max_chunk_bytes).unwrap_or(usize::MAX),
            download_chunk_bytes: usize::try_from(s.limits.download_chunk_bytes)
                .unwrap_or(usize::MAX),
            request_timeout: s.upstream.request_timeout,
            transfer_timeout: s.upstream.transfer_timeout,
            max_concurrent_uploads: s.rate_limit.max_concurrent_uploads as usize,
            max_inflight_upload_bytes: usize::try_from(s.rate_limit.max_inflight_upload_bytes)
                .unwrap_or(usize::MAX),
            idempotency_ttl: s.upstream.idempotency_ttl,
        }
    }
}

#[derive(Clone)]
pub struct AttachmentApi {
    upstream: Arc<Upstream>,
    limits: Arc<ApiLimits>,
    /// Cancelled when the shutdown grace period is over: calls still running end
    /// with UNAVAILABLE (and their upstream requests are aborted).
    cut: CancellationToken,
    metrics: Arc<Metrics>,
    /// One permit per upload in progress.
    upload_slots: Arc<Semaphore>,
    /// One permit per upload byte held in memory.
    upload_bytes: Arc<Semaphore>,
    /// Completed writes by the caller's message id.
    writes: Arc<idempotency::WriteRecord>,
}

impl AttachmentApi {
    pub fn new(
        upstream: Arc<Upstream>,
        limits: ApiLimits,
        cut: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            upstream,
            upload_slots: Arc::new(Semaphore::new(limits.max_concurrent_uploads)),
            upload_bytes: Arc::new(Semaphore::new(
                limits.max_inflight_upload_bytes.min(Semaphore::MAX_PERMITS),
            )),
            writes: idempotency::WriteRecord::new(limits.idempotency_ttl),
            limits: Arc::new(limits),
            cut,
            metrics,
        }
    }

    /// Runs a metadata write (update, delete) once per caller message id: a retry
    /// of a completed write gets the first answer.
    #[allow(clippy::too_many_arguments)]
    async fn write_once(
        &self,
        call: &'static str,
        work_order_id: i64,
        caller_id: &str,
        sent_id: &crate::domain::MessageId,
        deadline: Instant,
        what: &str,
        fut: impl Future<Output = Result<Option<String>, UpstreamError>>,
    ) -> Result<String, Status> {
        let guard = match self.begin_write(call, work_order_id, caller_id)? {
            Some(WriteStart::Replay(idempotency::Answer::MessageId(m))) => return Ok(m),
            Some(WriteStart::Go(g)) => Some(g),
            _ => None,
        };
        let id = self.call(deadline, Op::Write, what, fut).await?;
        let message_id = message_id_or(id, sent_id);
        if let Some(g) = guard {
            g.complete(idempotency::Answer::MessageId(message_id.clone()));
        }
        Ok(message_id)
    }

    /// Starts a write remembered by the caller's message id (when it sent one).
    fn begin_write(
        &self,
        call: &'static str,
        work_order_id: i64,
        caller_message_id: &str,
    ) -> Result<Option<WriteStart>, Status> {
        use idempotency::{Begin, Key};
        if caller_message_id.is_empty() {
            return Ok(None);
        }
        match self.writes.begin(Key {
            call,
            work_order_id,
            message_id: caller_message_id.to_string(),
        }) {
            Begin::Replay(answer) => Ok(Some(WriteStart::Replay(answer))),
            Begin::Running => Err(status::write_in_progress()),
            Begin::Go(guard) => Ok(Some(WriteStart::Go(guard))),
        }
    }

    /// Runs one upstream call within the deadline, mapping its failure.
    async fn call<T>(
        &self,
        deadline: Instant,
        op: Op,
        what: &str,
        fut: impl Future<Output = Result<T, UpstreamError>>,
    ) -> Result<T, Status> {
        let result = tokio::select! {
            r = tokio::time::timeout_at(deadline, fut) => r,
            () = self.cut.cancelled() => return Err(status::shutting_down(op, false)),
        };
        match result {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, call = what, "upstream call failed");
                Err(status::from_upstream(&e, op))
            }
            Err(_) => {
                tracing::warn!(call = what, "deadline passed during the upstream call");
                Err(status::deadline_exceeded(op, what, false))
            }
        }
    }
}

/// How a remembered write starts.
pub(crate) enum WriteStart {
    Replay(idempotency::Answer),
    Go(idempotency::Guard),
}

/// Puts the work order on the call's span, so every log line of the call has it.
fn record_work_order(id: i64) {
    tracing::Span::current().record("work_order_id", id);
}

/// Counts an upload in progress while alive.
struct InFlight<'a>(&'a Metrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.uploads_in_flight.dec();
    }
}

/// When a call must be over: the caller's `grpc-timeout`, capped by the gateway's
/// own timeout. A caller's deadline is shortened by a small margin so that the
/// caller gets the gateway's DEADLINE_EXCEEDED (with details) rather than the
/// transport cutting the call first.
pub fn deadline(metadata: &MetadataMap, default: Duration) -> Instant {
    let now = Instant::now();
    match metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
    {
        Some(t) if t < default => {
            let margin = (t / 20).min(Duration::from_millis(20));
            now + t.saturating_sub(margin)
        }
        _ => now + default,
    }
}

/// Parses the `grpc-timeout` header: up to 8 digits and a unit (H, M, S, m, u, n).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

pub type DownloadStream =
    Pin<Box<dyn Stream<Item = Result<DownloadAttachmentResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl AttachmentService for AttachmentApi {
    async fn upload_attachment(
        &self,
        request: Request<Streaming<UploadAttachmentRequest>>,
    ) -> Result<Response<UploadAttachmentResponse>, Status> {
        let deadline = deadline(request.metadata(), self.limits.transfer_timeout);
        let Ok(_slot) = Arc::clone(&self.upload_slots).try_acquire_owned() else {
            let refusal = crate::limits::Refusal {
                limit: "concurrent_uploads",
                subject: "gateway".into(),
                description: format!(
                    "at most {} uploads at once on this replica",
                    self.limits.max_concurrent_uploads
                ),
                retry_after: Duration::from_secs(1),
            };
            self.metrics.refused(refusal.limit);
            return Err(status::resource_exhausted(&refusal));
        };
        self.metrics.uploads_in_flight.inc();
        let _in_flight = InFlight(&self.metrics);
        let stream = request.into_inner();
        // Set once the whole body went upstream: from then on, stopping the call
        // cannot tell whether the attachment was stored.
        let sent = AtomicBool::new(false);
        // On deadline or shutdown the upload future is dropped, which aborts its
        // upstream request mid-body unless the body was complete.
        tokio::select! {
            r = tokio::time::timeout_at(deadline, self.upload(stream, &sent)) => match r {
                Ok(r) => r.map(Response::new),
                Err(_) => Err(status::deadline_exceeded(
                    Op::Write,
                    "the upload",
                    !sent.load(Ordering::Acquire),
                )),
            },
            () = self.cut.cancelled() => Err(status::shutting_down(Op::Write, !sent.load(Ordering::Acquire))),
        }
    }

    async fn list_attachments(
        &self,
        request: Request<ListAttachmentsRequest>,
    ) -> Result<Response<ListAttachmentsResponse>, Status> {
        let deadline = deadline(request.metadata(), self.limits.request_timeout);
        let (wo, view) = convert::list_request(request.get_ref())?;
        record_work_order(wo.get());
        let items = self
            .call(
                deadline,
                Op::Read,
                "listing attachments",
                self.upstream.list(wo, view, deadline),
            )
            .await?;
        Ok(Response::new(ListAttachmentsResponse {
            attachments: items
                .into_iter()
                .map(|a| convert::attachment(a, view))
                .collect(),
        }))
    }

    async fn get_download_url(
        &self,
        request: Request<GetDownloadUrlRequest>,
    ) -> Result<Response<GetDownloadUrlResponse>, Status> {
        let deadline = deadline(request.metadata(), self.limits.request_timeout);
        let r = request.into_inner();
        let target = convert::attachment_ref(r.work_order_id, &r.attachment_id)?;
        record_work_order(r.work_order_id);
        let link = self
            .call(
                deadline,
                Op::Read,
                "getting a download link",
                self.upstream.download_link(&target, deadline),
            )
            .await?;
        Ok(Response::new(GetDownloadUrlResponse {
            url: link.url.expose().to_string(),
            expire_time: Some(prost_types::Timestamp::from(link.expires_at)),
        }))
    }

    type DownloadAttachmentStream = DownloadStream;

    async fn download_attachment(
        &self,
        request: Request<DownloadAttachmentRequest>,
    ) -> Result<Response<Self::DownloadAttachmentStream>, Status> {
        let deadline = deadline(request.metadata(), self.limits.transfer_timeout);
        let r = request.into_inner();
        let target = convert::attachment_ref(r.work_order_id, &r.attachment_id)?;
        record_work_order(r.work_order_id);
        self.download(target, deadline).await.map(Response::new)
    }

    async fn update_attachment(
        &self,
        request: Request<UpdateAttachmentRequest>,
    ) -> Result<Response<UpdateAttachmentResponse>, Status> {
        let deadline = deadline(request.metadata(), self.limits.request_timeout);
        let r = request.into_inner();
        let caller_id = r.message_id.clone();
        let u = convert::update(r)?;
        let wo = u.target.work_order_id.get();
        record_work_order(wo);
        let fut = self.upstream.update(&u);
        let message_id = self
            .write_once(
                "update",
                wo,
                &caller_id,
                &u.message_id,
                deadline,
                "updating the attachment",
                fut,
            )
            .await?;
        Ok(Response::new(UpdateAttachmentResponse { message_id }))
    }

    async fn delete_attachment(
        &self,
        request: Request<DeleteAttachmentRequest>,
    ) -> Result<Response<DeleteAttachmentResponse>, Status> {
        let deadline = deadline(request.metadata(), self.limits.request_timeout);
        let r = request.into_inner();
        let caller_id = r.message_id.clone();
        let d = convert::removal(r)?;
        let wo = d.target.work_order_id.get();
        record_work_order(wo);
        let fut = self.upstream.delete(&d);
        let message_id = self
            .write_once(
                "delete",
                wo,
                &caller_id,
                &d.message_id,
                deadline,
                "deleting the attachment",
                fut,
            )
            .await?;
        Ok(Response::new(DeleteAttachmentResponse { message_id }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "S", "5", "5x", "123456789S", "-1S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }
}
