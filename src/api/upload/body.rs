//! The body handed to the upstream request: the chunks as they arrive, each
//! holding its share of the in-flight byte budget until the HTTP client takes
//! it. After its last chunk it waits at its **gate**: it ends (and the HTTP
//! client writes the multipart closing boundary, the upload's commit point)
//! only when the gate opens; a gate closed or dropped, or the chunks' sender
//! dropped first, fails the body, which aborts the upstream request mid-body,
//! so nothing is stored.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

/// A chunk on its way upstream, holding its share of the in-flight byte budget
/// until the HTTP client takes it.
pub(super) struct Chunk {
    pub(super) bytes: Bytes,
    pub(super) _permit: OwnedSemaphorePermit,
}

/// The body handed to the upstream request.
pub(super) struct UploadBody {
    rx: mpsc::Receiver<Chunk>,
    /// `true`: the body may end. `false` or dropped: it fails.
    gate: oneshot::Receiver<bool>,
    state: State,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Streaming,
    Ended,
    Failed,
}

/// Opens the gate of an [`UploadBody`]: the upload's commit point.
pub(super) struct Gate(oneshot::Sender<bool>);

impl Gate {
    /// Lets the body end: the upstream gets the whole request.
    pub(super) fn open(self) {
        let _ = self.0.send(true);
    }
}

impl UploadBody {
    pub(super) fn new(rx: mpsc::Receiver<Chunk>) -> (Self, Gate) {
        let (tx, gate) = oneshot::channel();
        (
            Self {
                rx,
                gate,
                state: State::Streaming,
            },
            Gate(tx),
        )
    }

    fn fail(&mut self) -> Poll<Option<Result<Bytes, io::Error>>> {
        self.state = State::Failed;
        Poll::Ready(Some(Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "upload abandoned before its end",
        ))))
    }
}

impl Stream for UploadBody {
    type Item = Result<Bytes, io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.state != State::Streaming {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(c)) => Poll::Ready(Some(Ok(c.bytes))),
            Poll::Ready(None) => match Pin::new(&mut self.gate).poll(cx) {
                Poll::Ready(Ok(true)) => {
                    self.state = State::Ended;
                    Poll::Ready(None)
                }
                Poll::Ready(_) => self.fail(),
                Poll::Pending => Poll::Pending,
            },
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures_util::StreamExt;
    use tokio::sync::Semaphore;

    use super::*;

    async fn chunk(s: &Arc<Semaphore>, b: &'static [u8]) -> Chunk {
        Chunk {
            bytes: Bytes::from_static(b),
            _permit: Arc::clone(s).acquire_many_owned(1).await.unwrap(),
        }
    }

    #[tokio::test]
    async fn the_body_ends_only_through_its_gate() {
        let s = Arc::new(Semaphore::new(10));
        // Opened: the chunks, then the end.
        let (tx, rx) = mpsc::channel(2);
        let (mut body, gate) = UploadBody::new(rx);
        tx.send(chunk(&s, b"ab").await).await.unwrap();
        drop(tx);
        assert_eq!(body.next().await.unwrap().unwrap(), "ab");
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), body.next()).await;
        assert!(
            waiting.is_err(),
            "it waits at the gate after its last chunk"
        );
        gate.open();
        assert!(body.next().await.is_none());
        // Dropped: the body fails after its last chunk.
        let (tx, rx) = mpsc::channel(2);
        let (mut body, gate) = UploadBody::new(rx);
        tx.send(chunk(&s, b"cd").await).await.unwrap();
        drop(tx);
        drop(gate);
        assert_eq!(body.next().await.unwrap().unwrap(), "cd");
        assert!(body.next().await.unwrap().is_err());
        assert!(body.next().await.is_none());
    }
}
