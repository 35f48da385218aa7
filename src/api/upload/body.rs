//! The body handed to the upstream request: the chunks as they arrive, each
//! holding its share of the in-flight byte budget until the HTTP client takes
//! it. It ends cleanly only once the upload is complete; any other end fails
//! it, which aborts the upstream request mid-body.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::{OwnedSemaphorePermit, mpsc};

/// A chunk on its way upstream, holding its share of the in-flight byte budget
/// until the HTTP client takes it.
pub(super) struct Chunk {
    pub(super) bytes: Bytes,
    pub(super) _permit: OwnedSemaphorePermit,
}

/// The body handed to the upstream request.
pub(super) struct UploadBody {
    pub(super) rx: mpsc::Receiver<Chunk>,
    pub(super) complete: Arc<AtomicBool>,
    pub(super) failed: bool,
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
