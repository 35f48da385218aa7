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

mod builder;
mod download;
mod error;
mod upload;
mod watch;

pub use self::builder::{ClientBuilder, Credentials, DEFAULT_CHUNK_BYTES, GatewayClient};
pub use self::download::LOCAL_WRITE_FAILED;
pub use self::error::ClientError;
pub use self::upload::{NewUpload, Progress, chunk, guess_mime};
pub use self::watch::Watched;
use crate::proto::{
    Attachment, AttachmentView, DeleteAttachmentRequest, DocumentType, GetDownloadUrlRequest,
    GetDownloadUrlResponse, ListAttachmentsRequest, MessageVisibility, UpdateAttachmentRequest,
};

/// The unary calls: each one [`GatewayClient::unary`] call, retried while the
/// gateway says a retry is safe.
impl GatewayClient {
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
        let request = || ListAttachmentsRequest {
            work_order_id,
            view: view as i32,
        };
        let listed = self.unary(
            request,
            |mut c, r| async move { c.list_attachments(r).await },
        );
        Ok(listed.await?.attachments)
    }

    pub async fn download_url(
        &self,
        work_order_id: i64,
        attachment_id: &str,
    ) -> Result<GetDownloadUrlResponse, ClientError> {
        let request = || GetDownloadUrlRequest {
            work_order_id,
            attachment_id: attachment_id.to_string(),
        };
        self.unary(
            request,
            |mut c, r| async move { c.get_download_url(r).await },
        )
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
        let request = || UpdateAttachmentRequest {
            work_order_id,
            attachment_id: attachment_id.to_string(),
            name: name.to_string(),
            document_type: document_type as i32,
            message_visibility: visibility as i32,
            message_id: message_id.clone(),
        };
        let updated = self.unary(
            request,
            |mut c, r| async move { c.update_attachment(r).await },
        );
        Ok(updated.await?.message_id)
    }

    pub async fn delete(
        &self,
        work_order_id: i64,
        attachment_id: &str,
    ) -> Result<String, ClientError> {
        let message_id = uuid::Uuid::new_v4().to_string();
        let request = || DeleteAttachmentRequest {
            work_order_id,
            attachment_id: attachment_id.to_string(),
            message_id: message_id.clone(),
        };
        let deleted = self.unary(
            request,
            |mut c, r| async move { c.delete_attachment(r).await },
        );
        Ok(deleted.await?.message_id)
    }
}
