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

/// An attempt that brings fewer bytes than this (and does not finish) counts
/// as one without progress: a link that breaks after every few bytes is not
/// followed byte by byte.
const MIN_PROGRESS: u64 = 256 * 1024;

/// Streams opened for one download at most, whatever their progress.
const MAX_STREAMS: u32 = 100;

/// The reason of an error writing the download locally: never resumed (the
/// bytes counted may not all be on disk).
pub const LOCAL_WRITE_FAILED: &str = "LOCAL_WRITE_FAILED";

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
    ) && !matches!(
        e.reason.as_deref(),
        Some("GATEWAY_INTERNAL" | LOCAL_WRITE_FAILED | "RANGE_NOT_SERVED")
    )
}

fn local_write(e: std::io::Error) -> ClientError {
    let mut err = ClientError::local(Code::Internal, format!("writing the download: {e}"));
    err.reason = Some(LOCAL_WRITE_FAILED.into());
    err
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
        // Attempts in a row that brought no progress, and streams opened.
        let (mut stalled, mut streams) = (0u32, 0u32);
        let mut backoff = Duration::from_millis(200);
        loop {
            let before = got.at;
            streams += 1;
            let e = match self
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
                Err(e) => e,
            };
            if got.at - before >= MIN_PROGRESS {
                stalled = 0;
                backoff = Duration::from_millis(200);
            } else {
                stalled += 1;
            }
            if !resumable(&e) || stalled > self.retries() || streams >= MAX_STREAMS {
                return Err(e);
            }
            // Bytes written before the break must be on their way to disk
            // before more are appended after them.
            writer.flush().await.map_err(local_write)?;
            let wait = e.retry_after.unwrap_or(backoff).min(RESUME_MAX_BACKOFF);
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(RESUME_MAX_BACKOFF);
        }
        writer.flush().await.map_err(local_write)?;
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
            self.timeout.saturating_mul(10),
        );
        let mut stream = c.download_attachment(req).await?.into_inner();
        // Where this stream should end, once its range says.
        let mut end: Option<u64> = None;
        let mut ranged = false;
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
                ranged = true;
                if r.total_size > 0 {
                    got.total = Some(r.total_size);
                }
                end = (r.length > 0)
                    .then(|| r.offset.saturating_add(r.length))
                    .or(got.total);
            }
            match msg.payload {
                Some(Down::Metadata(m)) => {
                    if got.total.is_none() && m.size_bytes > 0 && got.at == 0 {
                        got.total = Some(m.size_bytes);
                        end = end.or(got.total);
                    }
                    if got.meta.is_none() {
                        got.meta = Some(m);
                    }
                }
                Some(Down::Chunk(b)) => {
                    // From an offset, only a gateway that says it serves the
                    // range can be appended to what is there.
                    if got.at > 0 && !ranged {
                        let mut e = ClientError::local(
                            Code::FailedPrecondition,
                            "the gateway does not serve downloads from an offset (an older version?): nothing was appended",
                        );
                        e.reason = Some("RANGE_NOT_SERVED".into());
                        return Err(e);
                    }
                    // Never past the end its range (or the file's size) said:
                    // such bytes are not the file's, and are not written.
                    if let Some(end) = end
                        && got.at.saturating_add(b.len() as u64) > end
                    {
                        let mut e = ClientError::local(
                            Code::OutOfRange,
                            format!(
                                "the stream carried bytes past its end ({end}): nothing more was written"
                            ),
                        );
                        e.reason = Some("RANGE_NOT_SERVED".into());
                        return Err(e);
                    }
                    writer.write_all(&b).await.map_err(local_write)?;
                    got.at += b.len() as u64;
                    if let Some(p) = progress.as_mut() {
                        p(got.at, got.total);
                    }
                }
                None => {}
            }
        }
        // A clean end short of where the range said: a break like any other.
        match end {
            Some(end) if got.at < end => Err(ClientError::local(
                Code::DataLoss,
                format!("the stream ended at byte {} of {end}", got.at),
            )),
            _ => Ok(()),
        }
    }
}
