//! Downloads into any writer, as the chunks arrive.

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tonic::Code;

use super::builder::{GatewayClient, with_deadline};
use super::error::ClientError;
use super::upload::Progress;
use crate::proto::download_attachment_response::Payload as Down;
use crate::proto::{Attachment, DownloadAttachmentRequest};

impl GatewayClient {
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
