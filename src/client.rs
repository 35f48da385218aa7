//! A typed convenience client over the generated stubs: channel setup (TLS, bearer
//! token or API key, a deadline per call), uploads from a file or any `AsyncRead`
//! chunked at the right size with back-pressure, downloads into any `AsyncWrite`,
//! the unary calls, and errors that say whether a retry is safe.
//!
//! ```no_run
//! # async fn demo() -> Result<(), attachment_gateway::client::ClientError> {
//! use attachment_gateway::client::{GatewayClient, NewUpload};
//! let client = GatewayClient::builder("http://127.0.0.1:50051")
//!     .api_key("my-key")
//!     .connect()
//!     .await?;
//! let receipt = client
//!     .upload_file("photo.jpg", NewUpload::new(1001, "Ana Tech"))
//!     .await?;
//! println!("{} ({} bytes, sha256 {})", receipt.attachment_id, receipt.size_bytes, receipt.sha256);
//! # Ok(()) }
//! ```

use std::path::Path;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

use crate::proto::attachment_service_client::AttachmentServiceClient;
use crate::proto::download_attachment_response::Payload as Down;
use crate::proto::error_info::{RETRY_SAFE, RetrySafe};
use crate::proto::upload_attachment_request::Payload as Up;
use crate::proto::watch_attachments_response::Payload as Watch;
use crate::proto::{
    Attachment, AttachmentView, DeleteAttachmentRequest, DocumentType, DownloadAttachmentRequest,
    GetDownloadUrlRequest, GetDownloadUrlResponse, ListAttachmentsRequest, MessageVisibility,
    Person, UpdateAttachmentRequest, UploadAttachmentRequest, UploadAttachmentResponse,
    UploadMetadata,
};
use crate::proto::{AttachmentEvent, Heartbeat, WatchAttachmentsRequest};
use tonic::Streaming;

/// The chunk size uploads are cut into (the gateway accepts up to 4 MiB).
pub const DEFAULT_CHUNK_BYTES: usize = 256 * 1024;

/// What a failed call tells its caller.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ClientError {
    pub code: Code,
    pub message: String,
    /// `ErrorInfo.reason`, e.g. `WORK_ORDER_STATE_INVALID`.
    pub reason: Option<String>,
    /// Whether repeating the call cannot do harm, per the gateway.
    pub retry_safe: bool,
    /// When a retry can succeed, per the gateway's RetryInfo.
    pub retry_after: Option<Duration>,
    /// The fields the gateway named (BadRequest), as (field, description).
    pub field_violations: Vec<(String, String)>,
}

impl ClientError {
    /// Whether a retry is worth it: the gateway said it is safe and the code is
    /// one that passes (UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ABORTED).
    pub fn is_retryable(&self) -> bool {
        self.retry_safe
            && matches!(
                self.code,
                Code::Unavailable
                    | Code::ResourceExhausted
                    | Code::DeadlineExceeded
                    | Code::Aborted
            )
    }

    pub fn local(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            reason: None,
            retry_safe: false,
            retry_after: None,
            field_violations: Vec::new(),
        }
    }
}

impl From<Status> for ClientError {
    fn from(s: Status) -> Self {
        let d = s.get_error_details();
        let info = d.error_info();
        let retry_safe = info
            .and_then(|i| i.metadata.get(RETRY_SAFE))
            .map(|v| RetrySafe::parse(v) == Some(RetrySafe::Yes))
            // A transport failure before the gateway answered: nothing was done.
            .unwrap_or(s.code() == Code::Unavailable && info.is_none());
        Self {
            code: s.code(),
            message: s.message().to_string(),
            reason: info.map(|i| i.reason.clone()),
            retry_safe,
            retry_after: d.retry_info().and_then(|r| r.retry_delay),
            field_violations: d
                .bad_request()
                .map(|b| {
                    b.field_violations
                        .iter()
                        .map(|v| (v.field.clone(), v.description.clone()))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}

impl ClientError {
    /// A local file the caller named cannot be used: the caller's bad input
    /// (INVALID_ARGUMENT), with the path in the message.
    pub fn local_file(path: &Path, e: &std::io::Error) -> Self {
        Self::local(
            Code::InvalidArgument,
            format!("cannot read {}: {e}", path.display()),
        )
    }
}

impl From<tonic::transport::Error> for ClientError {
    fn from(e: tonic::transport::Error) -> Self {
        let mut err = Self::local(Code::Unavailable, format!("cannot connect: {e}"));
        err.retry_safe = true;
        err
    }
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        Self::local(Code::Internal, format!("local I/O: {e}"))
    }
}

/// Adds the credential to every call.
#[derive(Clone)]
pub struct Credentials {
    header: Option<(&'static str, AsciiMetadataValue)>,
}

impl Interceptor for Credentials {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some((k, v)) = &self.header {
            req.metadata_mut().insert(*k, v.clone());
        }
        Ok(req)
    }
}

type Inner = AttachmentServiceClient<InterceptedService<Channel, Credentials>>;

/// Builds a [`GatewayClient`].
pub struct ClientBuilder {
    uri: String,
    tls: Option<ClientTlsConfig>,
    header: Option<(&'static str, String)>,
    timeout: Duration,
    chunk_bytes: usize,
    retries: u32,
}

impl ClientBuilder {
    /// Sends `authorization: Bearer <token>` (a JWT or an API key).
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.header = Some(("authorization", format!("Bearer {}", token.into())));
        self
    }

    /// Sends `x-api-key: <key>`.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.header = Some(("x-api-key", key.into()));
        self
    }

    /// TLS, trusting `ca_pem` (and presenting `identity` for mTLS).
    pub fn tls(
        mut self,
        ca_pem: Option<Vec<u8>>,
        identity: Option<(Vec<u8>, Vec<u8>)>,
        domain: Option<String>,
    ) -> Self {
        let mut tls = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        if let Some(d) = domain {
            tls = tls.domain_name(d);
        }
        self.tls = Some(tls);
        self
    }

    /// The deadline of each unary call (uploads and downloads get 10× this).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    pub fn chunk_bytes(mut self, n: usize) -> Self {
        self.chunk_bytes = n.clamp(1024, 4 * 1024 * 1024);
        self
    }

    /// How often a call the gateway calls safe to retry is retried (default 2).
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    pub async fn connect(self) -> Result<GatewayClient, ClientError> {
        let mut ep = Endpoint::from_shared(self.uri.clone())
            .map_err(|e| ClientError::local(Code::InvalidArgument, format!("bad address: {e}")))?
            .tcp_nodelay(true)
            // Downloads arrive in DATA frames up to 512 KiB instead of HTTP/2's
            // 16 KiB default: a 256 KiB chunk with its framing fits one frame.
            .max_frame_size(512 * 1024)
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(30));
        if let Some(tls) = self.tls {
            ep = ep.tls_config(tls)?;
        }
        let channel = ep.connect().await?;
        let header = match self.header {
            Some((k, v)) => Some((
                k,
                MetadataValue::try_from(v.as_str()).map_err(|_| {
                    ClientError::local(Code::InvalidArgument, "the credential is not ASCII")
                })?,
            )),
            None => None,
        };
        let inner = AttachmentServiceClient::with_interceptor(channel, Credentials { header })
            .max_decoding_message_size(16 * 1024 * 1024);
        Ok(GatewayClient {
            inner,
            timeout: self.timeout,
            chunk_bytes: self.chunk_bytes,
            retries: self.retries,
        })
    }
}

/// What to upload with: the metadata besides the bytes.
#[derive(Debug, Clone)]
pub struct NewUpload {
    pub work_order_id: i64,
    /// The file name with extension; from the path when uploading a file and empty.
    pub name: String,
    /// The media type; guessed from the name's extension when empty.
    pub mime_type: String,
    pub performed_by: String,
    pub phone: String,
    pub document_type: DocumentType,
    pub visibility: MessageVisibility,
    /// Empty: the gateway generates one. Set it to make retries recognizable.
    pub message_id: String,
}

impl NewUpload {
    pub fn new(work_order_id: i64, performed_by: impl Into<String>) -> Self {
        Self {
            work_order_id,
            name: String::new(),
            mime_type: String::new(),
            performed_by: performed_by.into(),
            phone: String::new(),
            document_type: DocumentType::Unspecified,
            visibility: MessageVisibility::Unspecified,
            message_id: String::new(),
        }
    }
}

/// The media type of a file name, by its extension (the shared MIME-info
/// table); `application/octet-stream` when unknown.
pub fn guess_mime(name: &str) -> String {
    mime_guess::from_path(name)
        .first_or_octet_stream()
        .essence_str()
        .to_string()
}

/// Progress of a transfer: bytes done so far and the total when known.
pub type Progress = Box<dyn FnMut(u64, Option<u64>) + Send>;

/// A connected client.
#[derive(Clone)]
pub struct GatewayClient {
    inner: Inner,
    timeout: Duration,
    chunk_bytes: usize,
    retries: u32,
}

fn with_deadline<T>(msg: T, t: Duration) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(t);
    r
}

/// Reads `reader` in chunks as the upload stream is polled (back-pressure: the
/// next read happens only when HTTP/2 flow control lets the last chunk go). A read
/// error is sent on `failed` and the stream then never ends: a stream that ends
/// is a complete file to the gateway, so the call must be cancelled instead.
fn chunks<R: AsyncRead + Unpin + Send + 'static>(
    reader: R,
    chunk: usize,
    failed: tokio::sync::oneshot::Sender<std::io::Error>,
) -> impl Stream<Item = UploadAttachmentRequest> + Send {
    futures_util::stream::unfold(
        (reader, false, Some(failed)),
        move |(mut r, ended, mut failed)| async move {
            if ended {
                return None;
            }
            let mut buf = BytesMut::with_capacity(chunk);
            while buf.len() < chunk {
                match r.read_buf(&mut buf).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        if let Some(tx) = failed.take() {
                            let _ = tx.send(e);
                        }
                        // Never end: the caller cancels the call.
                        std::future::pending::<()>().await;
                    }
                }
            }
            if buf.is_empty() {
                return None;
            }
            let ended = buf.len() < chunk;
            let msg = UploadAttachmentRequest {
                payload: Some(Up::Chunk(buf.freeze())),
            };
            Some((msg, (r, ended, failed)))
        },
    )
}

impl GatewayClient {
    pub fn builder(uri: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            uri: uri.into(),
            tls: None,
            header: None,
            timeout: Duration::from_secs(30),
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            retries: 2,
        }
    }

    /// The generated client, for anything this wrapper does not cover.
    pub fn raw(&self) -> Inner {
        self.inner.clone()
    }

    /// Runs a call again while the gateway says a retry is safe, at most
    /// `retries` more times, waiting its RetryInfo delay (else 200 ms, doubling).
    async fn retrying<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let mut backoff = Duration::from_millis(200);
        let mut left = self.retries;
        loop {
            match call().await {
                Err(e) if left > 0 && e.is_retryable() => {
                    left -= 1;
                    tokio::time::sleep(
                        e.retry_after
                            .unwrap_or(backoff)
                            .min(Duration::from_secs(10)),
                    )
                    .await;
                    backoff *= 2;
                }
                other => return other,
            }
        }
    }

    /// Lists a work order's attachments with the FULL view: the typed fields and
    /// each attachment's whole upstream object (`Attachment.upstream`).
    pub async fn list(&self, work_order_id: i64) -> Result<Vec<Attachment>, ClientError> {
        self.list_with_view(work_order_id, AttachmentView::Full)
            .await
    }

    /// Lists a work order's attachments with the given view. BASIC leaves
    /// `Attachment.upstream` unset, which makes the call much cheaper for the
    /// gateway and the caller (see BENCHMARKS.md).
    pub async fn list_with_view(
        &self,
        work_order_id: i64,
        view: AttachmentView,
    ) -> Result<Vec<Attachment>, ClientError> {
        self.retrying(|| {
            let mut c = self.inner.clone();
            let req = with_deadline(
                ListAttachmentsRequest {
                    work_order_id,
                    view: view as i32,
                },
                self.timeout,
            );
            async move { Ok(c.list_attachments(req).await?.into_inner().attachments) }
        })
        .await
    }

    pub async fn download_url(
        &self,
        work_order_id: i64,
        attachment_id: &str,
    ) -> Result<GetDownloadUrlResponse, ClientError> {
        self.retrying(|| {
            let mut c = self.inner.clone();
            let req = with_deadline(
                GetDownloadUrlRequest {
                    work_order_id,
                    attachment_id: attachment_id.to_string(),
                },
                self.timeout,
            );
            async move { Ok(c.get_download_url(req).await?.into_inner()) }
        })
        .await
    }

    pub async fn update(
        &self,
        work_order_id: i64,
        attachment_id: &str,
        name: &str,
        document_type: DocumentType,
        visibility: MessageVisibility,
    ) -> Result<String, ClientError> {
        // One message id for every try, so a retried update is recognizable upstream.
        let message_id = uuid::Uuid::new_v4().to_string();
        self.retrying(|| {
            let mut c = self.inner.clone();
            let req = with_deadline(
                UpdateAttachmentRequest {
                    work_order_id,
                    attachment_id: attachment_id.to_string(),
                    name: name.to_string(),
                    document_type: document_type as i32,
                    message_visibility: visibility as i32,
                    message_id: message_id.clone(),
                },
                self.timeout,
            );
            async move { Ok(c.update_attachment(req).await?.into_inner().message_id) }
        })
        .await
    }

    pub async fn delete(
        &self,
        work_order_id: i64,
        attachment_id: &str,
    ) -> Result<String, ClientError> {
        let message_id = uuid::Uuid::new_v4().to_string();
        self.retrying(|| {
            let mut c = self.inner.clone();
            let req = with_deadline(
                DeleteAttachmentRequest {
                    work_order_id,
                    attachment_id: attachment_id.to_string(),
                    message_id: message_id.clone(),
                },
                self.timeout,
            );
            async move { Ok(c.delete_attachment(req).await?.into_inner().message_id) }
        })
        .await
    }

    /// Uploads from any reader; `size` (when known) is declared, so a short read
    /// is refused rather than stored. Not retried: the reader cannot be rewound.
    pub async fn upload_reader<R>(
        &self,
        reader: R,
        size: Option<u64>,
        meta: NewUpload,
        progress: Option<Progress>,
    ) -> Result<UploadAttachmentResponse, ClientError>
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        if meta.name.is_empty() {
            return Err(ClientError::local(
                Code::InvalidArgument,
                "the upload needs a file name",
            ));
        }
        let mime = if meta.mime_type.is_empty() {
            guess_mime(&meta.name)
        } else {
            meta.mime_type.clone()
        };
        let first = UploadAttachmentRequest {
            payload: Some(Up::Metadata(UploadMetadata {
                work_order_id: meta.work_order_id,
                name: meta.name.clone(),
                mime_type: mime,
                document_type: meta.document_type as i32,
                message_visibility: meta.visibility as i32,
                performed_by: Some(Person {
                    name: meta.performed_by.clone(),
                    phone: meta.phone.clone(),
                }),
                message_id: meta.message_id.clone(),
                size_bytes: size.unwrap_or(0),
            })),
        };
        let mut progress = progress;
        let mut sent = 0u64;
        let (failed_tx, failed_rx) = tokio::sync::oneshot::channel();
        let body = futures_util::stream::once(async move { first }).chain(
            chunks(reader, self.chunk_bytes, failed_tx).map(move |m| {
                if let (Some(p), Some(Up::Chunk(b))) = (progress.as_mut(), m.payload.as_ref()) {
                    sent += b.len() as u64;
                    p(sent, size);
                }
                m
            }),
        );
        let mut c = self.inner.clone();
        let req = with_deadline(body, self.timeout * 10);
        // A read error cancels the call (dropping it resets the stream), so the
        // gateway aborts its upstream request and stores nothing.
        tokio::select! {
            r = c.upload_attachment(req) => Ok(r?.into_inner()),
            Ok(e) = failed_rx => Err(ClientError::local(
                Code::Aborted,
                format!("reading the file failed, so the upload was cancelled and nothing was stored: {e}"),
            )),
        }
    }

    /// Uploads a file. The name defaults to the file's, the media type to its
    /// extension's; the size is declared. Retried (the file is read again) when
    /// the gateway says nothing was stored, with one message id for every try.
    pub async fn upload_file(
        &self,
        path: impl AsRef<Path>,
        meta: NewUpload,
    ) -> Result<UploadAttachmentResponse, ClientError> {
        self.upload_file_inner(path.as_ref(), meta, None).await
    }

    /// [`Self::upload_file`], reporting progress (from zero again on a retry).
    pub async fn upload_file_with_progress(
        &self,
        path: impl AsRef<Path>,
        meta: NewUpload,
        progress: Progress,
    ) -> Result<UploadAttachmentResponse, ClientError> {
        self.upload_file_inner(path.as_ref(), meta, Some(progress))
            .await
    }

    async fn upload_file_inner(
        &self,
        path: &Path,
        mut meta: NewUpload,
        progress: Option<Progress>,
    ) -> Result<UploadAttachmentResponse, ClientError> {
        if meta.name.is_empty() {
            meta.name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
        }
        if meta.message_id.is_empty() {
            meta.message_id = uuid::Uuid::new_v4().to_string();
        }
        let progress = progress.map(|p| std::sync::Arc::new(std::sync::Mutex::new(p)));
        self.retrying(|| {
            let meta = meta.clone();
            let progress = progress.clone().map(|shared| -> Progress {
                Box::new(move |done, total| {
                    if let Ok(mut p) = shared.lock() {
                        p(done, total);
                    }
                })
            });
            async move {
                let (file, size) = open_file(path).await?;
                self.upload_reader(file, Some(size), meta, progress).await
            }
        })
        .await
    }

    /// Streams an attachment into `writer`; returns its metadata (from the first
    /// message). A download that breaks off is an error, never a short success.
    pub async fn download_to<W>(
        &self,
        work_order_id: i64,
        attachment_id: &str,
        writer: &mut W,
        mut progress: Option<Progress>,
    ) -> Result<Attachment, ClientError>
    where
        W: AsyncWrite + Unpin,
    {
        let mut c = self.inner.clone();
        let req = with_deadline(
            DownloadAttachmentRequest {
                work_order_id,
                attachment_id: attachment_id.to_string(),
            },
            self.timeout * 10,
        );
        let mut stream = c.download_attachment(req).await?.into_inner();
        let mut meta = None;
        let mut done = 0u64;
        while let Some(msg) = stream.message().await? {
            match msg.payload {
                Some(Down::Metadata(m)) => meta = Some(m),
                Some(Down::Chunk(b)) => {
                    writer.write_all(&b).await?;
                    done += b.len() as u64;
                    if let Some(p) = progress.as_mut() {
                        p(done, meta.as_ref().map(|m| m.size_bytes).filter(|n| *n > 0));
                    }
                }
                None => {}
            }
        }
        writer.flush().await?;
        let meta = meta
            .ok_or_else(|| ClientError::local(Code::Internal, "the download sent no metadata"))?;
        if meta.size_bytes > 0 && meta.size_bytes != done {
            return Err(ClientError::local(
                Code::DataLoss,
                format!("received {done} of {} bytes", meta.size_bytes),
            ));
        }
        Ok(meta)
    }
}

/// Opens a file to upload, with its size; a file that cannot be opened (missing,
/// unreadable, a folder) is the caller's bad input, named by its path.
async fn open_file(path: &Path) -> Result<(tokio::fs::File, u64), ClientError> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| ClientError::local_file(path, &e))?;
    let meta = file
        .metadata()
        .await
        .map_err(|e| ClientError::local_file(path, &e))?;
    if !meta.is_file() {
        return Err(ClientError::local(
            Code::InvalidArgument,
            format!("cannot read {}: not a regular file", path.display()),
        ));
    }
    Ok((file, meta.len()))
}

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

/// A chunk of bytes, for callers building their own upload streams.
pub fn chunk(b: Bytes) -> UploadAttachmentRequest {
    UploadAttachmentRequest {
        payload: Some(Up::Chunk(b)),
    }
}
