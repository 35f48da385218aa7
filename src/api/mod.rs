//! The `AttachmentService` adapter: proto in, validated domain types to the upstream
//! client, proto out; every failure an [`Error`], made a `Status` once, in
//! [`error`]. Each path has the type it needs: [`upload::Uploads`],
//! [`download::Downloads`], [`writes::Writes`] (updates and deletes remembered by
//! message id); lists and links are one upstream call each.

pub mod convert;
pub mod deadline;
mod direct_download;
mod download;
pub mod error;
mod reconcile;
mod runtime;
mod upload;
mod watch;
pub mod writes;

use std::sync::Arc;

use tonic::{Request, Response, Status, Streaming};

pub use self::deadline::Bounds;
use self::deadline::deadline;
pub use self::direct_download::DirectDownloads;
pub use self::download::{DownloadStream, Downloads};
pub use self::error::{Error, Op};
pub use self::runtime::Runtime;
pub use self::upload::{UploadLimits, UploadStream, Uploads};
pub use self::watch::{WatchLimits, WatchStream, Watches};
use self::writes::{Call, MetadataWrite, Writes};
use crate::auth::Caller;
use crate::config::UpstreamSettings;
use crate::domain::{AttachmentRemoval, AttachmentUpdate, UpstreamName};
use crate::proto::frames::RawBody;
use crate::proto::wire::attachment_service_server::AttachmentService;
use crate::proto::wire::{
    DeleteAttachmentRequest, DeleteAttachmentResponse, DownloadAttachmentRequest,
    GetDownloadUrlRequest, GetDownloadUrlResponse, ListAttachmentsRequest, ListAttachmentsResponse,
    UpdateAttachmentRequest, UpdateAttachmentResponse, UploadAttachmentRequest,
    UploadAttachmentResponse, WatchAttachmentsRequest,
};
use crate::proto::{Attachment, AttachmentEventType};
use crate::store::writes::{Attempt, Fingerprint, UpdateAttempt, WriteKey};

/// The timeouts of calls that set no shorter deadline.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Unary calls.
    pub request: std::time::Duration,
    /// Uploads and downloads.
    pub transfer: std::time::Duration,
}

impl From<&UpstreamSettings> for Timeouts {
    fn from(s: &UpstreamSettings) -> Self {
        Self {
            request: s.request_timeout,
            transfer: s.transfer_timeout,
        }
    }
}

/// The paths of the service, each with what it needs.
pub struct Paths {
    pub writes: Writes,
    pub uploads: Uploads,
    pub downloads: Downloads,
    pub watches: Watches,
}

pub struct AttachmentApi {
    rt: Runtime,
    timeouts: Timeouts,
    paths: Paths,
}

impl AttachmentApi {
    pub fn new(rt: Runtime, timeouts: Timeouts, paths: Paths) -> Self {
        Self {
            rt,
            timeouts,
            paths,
        }
    }
}

/// The caller of a request, with its kind (`api_key:billing`), as authentication
/// put it in the request's extensions.
fn caller<T>(request: &Request<T>) -> Arc<str> {
    request
        .extensions()
        .get::<Caller>()
        .map(|c| Arc::from(c.to_string()))
        // Every attachment call passes authentication, which always sets it.
        .unwrap_or_else(|| Arc::from("unknown:unknown"))
}

/// The record key of a write the caller named with a message id.
fn write_key(
    caller: Arc<str>,
    call: &'static str,
    work_order_id: i64,
    caller_message_id: String,
) -> Option<WriteKey> {
    (!caller_message_id.is_empty()).then_some(WriteKey {
        caller,
        call,
        work_order_id,
        message_id: caller_message_id,
    })
}

/// What makes an update this update.
fn update_fingerprint(u: &AttachmentUpdate) -> Fingerprint {
    Fingerprint::of(&[
        u.target.attachment_id.as_str().as_bytes(),
        u.name.as_str().as_bytes(),
        u.document_type
            .map(|d| d.upstream_name())
            .unwrap_or("")
            .as_bytes(),
        u.visibility
            .map(|v| v.upstream_name())
            .unwrap_or("")
            .as_bytes(),
    ])
}

/// What makes a delete this delete.
fn delete_fingerprint(d: &AttachmentRemoval) -> Fingerprint {
    Fingerprint::of(&[d.target.attachment_id.as_str().as_bytes()])
}

/// Puts the work order on the call's span, so every log line of the call has it.
fn record_work_order(id: i64) {
    tracing::Span::current().record("work_order_id", id);
}

#[tonic::async_trait]
impl AttachmentService for AttachmentApi {
    async fn upload_attachment(
        &self,
        request: Request<Streaming<UploadAttachmentRequest>>,
    ) -> Result<Response<UploadAttachmentResponse>, Status> {
        let deadline = deadline(
            request.metadata(),
            request.extensions().get(),
            self.timeouts.transfer,
        );
        let caller = caller(&request);
        // The body the message limit layer set aside, read without tonic's
        // decode buffer; else tonic's stream.
        let raw = request
            .extensions()
            .get::<RawBody>()
            .and_then(RawBody::take);
        let stream = match raw {
            Some(body) => UploadStream::frames(body, self.paths.uploads.max_chunk_bytes()),
            None => UploadStream::Tonic(request.into_inner()),
        };
        let r = self.paths.uploads.run(caller, stream, deadline).await?;
        Ok(Response::new(r))
    }

    async fn list_attachments(
        &self,
        request: Request<ListAttachmentsRequest>,
    ) -> Result<Response<ListAttachmentsResponse>, Status> {
        let deadline = deadline(
            request.metadata(),
            request.extensions().get(),
            self.timeouts.request,
        );
        let (wo, view) = convert::list_request(request.get_ref())?;
        record_work_order(wo.get());
        let items = self
            .rt
            .bounds
            .run(
                deadline,
                Op::Read,
                "listing attachments",
                self.rt.upstream.list(wo, view, deadline),
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
        let deadline = deadline(
            request.metadata(),
            request.extensions().get(),
            self.timeouts.request,
        );
        let r = request.into_inner();
        let target = convert::attachment_ref(r.work_order_id, &r.attachment_id)?;
        record_work_order(r.work_order_id);
        let link = self
            .rt
            .bounds
            .run(
                deadline,
                Op::Read,
                "getting a download link",
                self.rt.upstream.download_link(&target, deadline),
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
        let deadline = deadline(
            request.metadata(),
            request.extensions().get(),
            self.timeouts.transfer,
        );
        let caller = caller(&request);
        let r = request.into_inner();
        let target = convert::attachment_ref(r.work_order_id, &r.attachment_id)?;
        record_work_order(r.work_order_id);
        Ok(Response::new(
            self.paths
                .downloads
                .open(&caller, target, (r.offset, r.limit), deadline)
                .await?,
        ))
    }

    async fn update_attachment(
        &self,
        request: Request<UpdateAttachmentRequest>,
    ) -> Result<Response<UpdateAttachmentResponse>, Status> {
        let deadline = deadline(
            request.metadata(),
            request.extensions().get(),
            self.timeouts.request,
        );
        let caller = caller(&request);
        let r = request.into_inner();
        let caller_message_id = r.message_id.clone();
        let u = convert::update(r)?;
        record_work_order(u.target.work_order_id.get());
        let upstream = Arc::clone(&self.rt.upstream);
        let run_u = u.clone();
        let write = MetadataWrite {
            call: Call::Update,
            key: write_key(
                Arc::clone(&caller),
                "update",
                u.target.work_order_id.get(),
                caller_message_id,
            ),
            fingerprint: update_fingerprint(&u),
            message_id: u.message_id.clone(),
            work_order: u.target.work_order_id,
            attempt: Attempt::Update(UpdateAttempt {
                attachment_id: u.target.attachment_id.as_str().to_string(),
                name: u.name.as_str().to_string(),
                document_type: u.document_type.map(|d| d.upstream_name().to_string()),
            }),
            kind: AttachmentEventType::Updated,
            attachment: Attachment {
                attachment_id: u.target.attachment_id.as_str().to_string(),
                name: u.name.as_str().to_string(),
                document_type: u.document_type.map_or(0, |d| d as i32),
                ..Attachment::default()
            },
            caller,
        };
        let run = Box::pin(async move { upstream.update(&run_u).await });
        let message_id = self
            .paths
            .writes
            .metadata_write(&self.rt.bounds, write, run, deadline)
            .await?
            .value;
        Ok(Response::new(UpdateAttachmentResponse { message_id }))
    }

    async fn delete_attachment(
        &self,
        request: Request<DeleteAttachmentRequest>,
    ) -> Result<Response<DeleteAttachmentResponse>, Status> {
        let deadline = deadline(
            request.metadata(),
            request.extensions().get(),
            self.timeouts.request,
        );
        let caller = caller(&request);
        let r = request.into_inner();
        let caller_message_id = r.message_id.clone();
        let d = convert::removal(r)?;
        record_work_order(d.target.work_order_id.get());
        let upstream = Arc::clone(&self.rt.upstream);
        let run_d = d.clone();
        let write = MetadataWrite {
            call: Call::Delete,
            key: write_key(
                Arc::clone(&caller),
                "delete",
                d.target.work_order_id.get(),
                caller_message_id,
            ),
            fingerprint: delete_fingerprint(&d),
            message_id: d.message_id.clone(),
            work_order: d.target.work_order_id,
            attempt: Attempt::Delete {
                attachment_id: d.target.attachment_id.as_str().to_string(),
            },
            kind: AttachmentEventType::Removed,
            attachment: Attachment {
                attachment_id: d.target.attachment_id.as_str().to_string(),
                ..Attachment::default()
            },
            caller,
        };
        let run = Box::pin(async move { upstream.delete(&run_d).await });
        let message_id = self
            .paths
            .writes
            .metadata_write(&self.rt.bounds, write, run, deadline)
            .await?
            .value;
        Ok(Response::new(DeleteAttachmentResponse { message_id }))
    }

    type WatchAttachmentsStream = WatchStream;

    async fn watch_attachments(
        &self,
        request: Request<WatchAttachmentsRequest>,
    ) -> Result<Response<Self::WatchAttachmentsStream>, Status> {
        let caller = caller(&request);
        let stream = self
            .paths
            .watches
            .open(&caller, request.into_inner())
            .await?;
        Ok(Response::new(stream))
    }
}
