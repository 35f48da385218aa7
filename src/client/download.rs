//! Downloads into any writer, as the chunks arrive; a stream that breaks off
//! is opened again from the last byte received (an attachment's content never
//! changes), a bounded number of times in a row.

use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tonic::Code;

use super::builder::{GatewayClient, with_deadline};
use super::error::ClientError;
use super::upload::Progress;
use crate::proto::download_attachment_response::Payload as Down;
use crate::proto::{Attachment, DownloadAttachmentRequest};

/// The longest wait before a broken download is opened again.
const RESUME_MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Whether a download that ended with `e` can be opened again where it broke.
fn resumable(e: &ClientError) -> bool {
    matches!(
        e.code,
        Code::Unavailable
            | Code::Aborted
            | Code::DeadlineExceeded
            | Code::DataLoss
            | Code::Unknown
            | Code::Cancelled
            | Code::Internal
    ) && e.reason.as_deref() != Some("GATEWAY_INTERNAL")
}

/// What a download has got so far.
struct Got {
    /// The file's bytes written, counted from its start.
    at: u64,
    meta: Option<Attachment>,
    /// The whole file's size, once a stream said it.
    total: Option<u64>,
}

impl GatewayClient {
    /// Streams an attachment into `writer`; returns its metadata (from the first
    /// message). A stream that breaks off is opened again from the last byte
    /// received; a download that cannot be completed is an error, never a
    /// short success.
    pub async fn download_to<W>(
        &self,
        work_order_id: i64,
        attachment_id: &str,
        writer: &mut W,
        progress: Option<Progress>,
    ) -> Result<Attachment, ClientError>
    where
        W: AsyncWrite + Unpin,
    {
        self.download_from(work_order_id, attachment_id, 0, writer, progress)
            .await
    }

    /// [`Self::download_to`] from byte `offset` on: the bytes before it are
    /// already written (a partial file being completed).
    pub async fn download_from<W>(
        &self,
        work_order_id: i64,
        attachment_id: &str,
        offset: u64,
        writer: &mut W,
        mut progress: Option<Progress>,
    ) -> Result<Attachment, ClientError>
    where
        W: AsyncWrite + Unpin,
    {
        let mut got = Got {
            at: offset,
            meta: None,
            total: None,
        };
        let mut failures = 0;
        let mut backoff = Duration::from_millis(200);
        loop {
            let before = got.at;
            match self
                .download_once(
                    work_order_id,
                    attachment_id,
                    &mut got,
                    writer,
                    &mut progress,
                )
                .await
            {
                Ok(()) => break,
                Err(e) if resumable(&e) && failures < self.retries() => {
                    // A stream that brought bytes starts the count again.
                    failures = if got.at > before { 1 } else { failures + 1 };
                    let wait = e.retry_after.unwrap_or(backoff).min(RESUME_MAX_BACKOFF);
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(RESUME_MAX_BACKOFF);
                }
                Err(e) => return Err(e),
            }
        }
        writer.flush().await?;
        let meta = got
            .meta
            .ok_or_else(|| ClientError::local(Code::Internal, "the download sent no metadata"))?;
        if let Some(total) = got.total
            && total != got.at
        {
            return Err(ClientError::local(
                Code::DataLoss,
                format!("received {} of {total} bytes", got.at),
            ));
        }
        Ok(meta)
    }

    /// One stream, from `got.at`: its bytes written as they arrive.
    async fn download_once<W>(
        &self,
        work_order_id: i64,
        attachment_id: &str,
        got: &mut Got,
        writer: &mut W,
        progress: &mut Option<Progress>,
    ) -> Result<(), ClientError>
    where
        W: AsyncWrite + Unpin,
    {
        if got.total.is_some_and(|t| got.at >= t) {
            return Ok(());
        }
        let mut c = self.inner.clone();
        let req = with_deadline(
            DownloadAttachmentRequest {
                work_order_id,
                attachment_id: attachment_id.to_string(),
                offset: got.at,
                limit: 0,
            },
            self.timeout * 10,
        );
        let mut stream = c.download_attachment(req).await?.into_inner();
        while let Some(msg) = stream.message().await? {
            if let Some(r) = msg.range {
                if r.offset != got.at {
                    return Err(ClientError::local(
                        Code::Internal,
                        format!(
                            "asked for bytes from {}, got them from {}",
                            got.at, r.offset
                        ),
                    ));
                }
                if r.total_size > 0 {
                    got.total = Some(r.total_size);
                }
            }
            match msg.payload {
                Some(Down::Metadata(m)) => {
                    if got.total.is_none() && m.size_bytes > 0 && got.at == 0 {
                        got.total = Some(m.size_bytes);
                    }
                    if got.meta.is_none() {
                        got.meta = Some(m);
                    }
                }
                Some(Down::Chunk(b)) => {
                    writer.write_all(&b).await?;
                    got.at += b.len() as u64;
                    if let Some(p) = progress.as_mut() {
                        p(got.at, got.total);
                    }
                }
                None => {}
            }
        }
        Ok(())
    }
}
