//! Uploads: from a file (retried with one message id when the gateway says
//! nothing was stored) or any reader, cut into chunks as HTTP/2 flow control
//! lets them go, with the metadata first.

use std::path::Path;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt};
use tonic::Code;

use super::builder::{GatewayClient, with_deadline};
use super::error::ClientError;
use crate::proto::upload_attachment_request::Payload as Up;
use crate::proto::{
    DocumentType, MessageVisibility, Person, UploadAttachmentRequest, UploadAttachmentResponse,
    UploadMetadata,
};

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
    /// The file's SHA-256 (lowercase hex): the gateway stores nothing unless
    /// the bytes it receives have it. `upload_file` computes it when empty.
    pub expected_sha256: String,
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
            expected_sha256: String::new(),
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
                expected_sha256: meta.expected_sha256.clone(),
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
        if meta.expected_sha256.is_empty() {
            // Read once more before sending: the gateway then stores the file
            // only if every byte it got is the file's.
            meta.expected_sha256 = file_sha256(path).await?;
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

/// A file's SHA-256, lowercase hex.
pub async fn file_sha256(path: &Path) -> Result<String, ClientError> {
    use sha2::Digest;
    let (mut file, _) = open_file(path).await?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .await
            .map_err(|e| ClientError::local_file(path, &e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// A chunk of bytes, for callers building their own upload streams.
pub fn chunk(b: Bytes) -> UploadAttachmentRequest {
    UploadAttachmentRequest {
        payload: Some(Up::Chunk(b)),
    }
}
