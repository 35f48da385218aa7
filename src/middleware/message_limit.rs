//! The size of each request message, bounded per method before the gRPC decoder
//! sees it. The decoder reserves a message's declared length as soon as its
//! 5-byte prefix arrives; a caller (authenticated or not) that declares 4 MiB and
//! sends part of it would pin that memory per stream. This layer reads the prefix
//! of every message as the body passes and fails the body, with a status saying
//! which limit, when a declared length is over the method's limit: the decoder
//! never sees the prefix. Unary requests, health and the upload's first message
//! (its metadata) are small; only upload chunks get the chunk limit.
//!
//! A body that fails (the caller reset its stream) fails with ABORTED, never
//! CANCELLED: the decoder would read a cancelled request stream as complete.
//!
//! An upload's checked body is set aside in the request's extensions
//! ([`RawBody`]) for its handler, which reads the messages off it without
//! tonic's decode buffer (`proto::frames`); tonic gets an empty body.
//!
//! A frame that holds a large message's prefix and then (some of) its bytes is
//! handed on in two pieces, cut just after the prefix. tonic's decoder reserves
//! the declared length as soon as it has read a prefix: with the message's bytes
//! already in its buffer, that reservation reallocates the buffer and copies
//! them a second time; with the buffer empty, it only allocates. Both pieces are
//! slices of the frame: the cut copies nothing.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use tonic::Status;
use tower::{Layer, Service};

use crate::api::Error;
use crate::config::LimitSettings;
use crate::methods::{self, RequestSize};
use crate::proto::frames::{MESSAGE_OVERHEAD, RawBody};

/// Messages from this size up are handed on apart from their prefix.
const CUT_FROM: usize = 16 * 1024;

/// The largest messages accepted.
#[derive(Debug, Clone, Copy)]
pub struct MessageLimits {
    /// Every message of every method, but upload chunks.
    pub small: usize,
    /// An upload chunk message (the chunk and its framing).
    pub chunk: usize,
}

impl From<&LimitSettings> for MessageLimits {
    fn from(s: &LimitSettings) -> Self {
        Self {
            small: usize::try_from(s.max_request_message_bytes).unwrap_or(usize::MAX),
            chunk: usize::try_from(s.max_chunk_bytes)
                .unwrap_or(usize::MAX)
                .saturating_add(MESSAGE_OVERHEAD),
        }
    }
}

#[derive(Clone)]
pub struct MessageLimitLayer {
    limits: MessageLimits,
}

impl MessageLimitLayer {
    pub fn new(limits: MessageLimits) -> Self {
        Self { limits }
    }
}

impl<S> Layer<S> for MessageLimitLayer {
    type Service = MessageLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageLimitService {
            inner,
            limits: self.limits,
        }
    }
}

#[derive(Clone)]
pub struct MessageLimitService<S> {
    inner: S,
    limits: MessageLimits,
}

impl<S, B> Service<http::Request<B>> for MessageLimitService<S>
where
    S: Service<http::Request<tonic::body::Body>>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = methods::method(req.uri().path());
        let (first, rest) = match method.request {
            RequestSize::Small => (self.limits.small, self.limits.small),
            RequestSize::Upload => (self.limits.small, self.limits.chunk),
        };
        let upload = method.request == RequestSize::Upload;
        let (mut head, inner) = req.into_parts();
        let checked = tonic::body::Body::new(Checked {
            inner: Box::pin(inner),
            first,
            rest,
            upload,
            messages: 0,
            prefix: [0; 5],
            have: 0,
            remaining: 0,
            failed: false,
            held: None,
        });
        if upload {
            // The upload handler reads the messages off the body itself, without
            // tonic's decode buffer (see `proto::frames`); tonic gets an empty one.
            head.extensions.insert(RawBody::new(checked));
            return self
                .inner
                .call(http::Request::from_parts(head, tonic::body::Body::empty()));
        }
        self.inner.call(http::Request::from_parts(head, checked))
    }
}

/// A request body whose messages' declared lengths are checked as it passes.
struct Checked<B> {
    inner: Pin<Box<B>>,
    first: usize,
    rest: usize,
    upload: bool,
    /// Messages whose prefix was read.
    messages: u64,
    prefix: [u8; 5],
    /// Bytes of the current prefix read so far.
    have: usize,
    /// Bytes of the current message still to come.
    remaining: u64,
    failed: bool,
    /// The part of the last frame after a cut, handed on next.
    held: Option<Bytes>,
}

impl<B> Checked<B> {
    /// Walks `data` through the framing; an error once a prefix declares too much.
    /// Stops just after the prefix of a large message whose bytes follow in
    /// `data`, and says where: `data` is to be cut there.
    fn check(&mut self, mut data: &[u8]) -> Result<Option<usize>, Status> {
        let whole = data.len();
        while !data.is_empty() {
            if self.remaining > 0 {
                let skip = (self.remaining.min(data.len() as u64)) as usize;
                self.remaining -= skip as u64;
                data.advance(skip);
                continue;
            }
            let take = (5 - self.have).min(data.len());
            self.prefix[self.have..self.have + take].copy_from_slice(&data[..take]);
            self.have += take;
            data.advance(take);
            if self.have < 5 {
                break;
            }
            self.have = 0;
            let len = u32::from_be_bytes([
                self.prefix[1],
                self.prefix[2],
                self.prefix[3],
                self.prefix[4],
            ]) as usize;
            let limit = if self.messages == 0 {
                self.first
            } else {
                self.rest
            };
            if len > limit {
                let field = match (self.upload, self.messages) {
                    (true, 0) => "metadata",
                    (true, _) => "chunk",
                    (false, _) => "request",
                };
                return Err(Error::invalid(
                    field,
                    "MESSAGE_TOO_LARGE",
                    format!(
                        "a message of {len} bytes exceeds this method's limit of {limit} bytes{}",
                        if self.upload && self.messages > 0 {
                            "; send smaller chunks"
                        } else {
                            ""
                        }
                    ),
                )
                .into());
            }
            self.messages += 1;
            self.remaining = len as u64;
            if len >= CUT_FROM && !data.is_empty() {
                return Ok(Some(whole - data.len()));
            }
        }
        Ok(None)
    }

    /// Checks `data` and hands it on, or its first piece if it is to be cut.
    fn pass(&mut self, data: Bytes) -> Result<Bytes, Status> {
        match self.check(&data)? {
            Some(at) => {
                let mut data = data;
                self.held = Some(data.split_off(at));
                Ok(data)
            }
            None => Ok(data),
        }
    }
}

impl<B> Body for Checked<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Data = Bytes;
    type Error = tonic::codegen::StdError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        if let Some(held) = self.held.take() {
            return Poll::Ready(Some(match self.pass(held) {
                Ok(data) => Ok(Frame::data(data)),
                Err(status) => {
                    self.failed = true;
                    Err(Box::new(status))
                }
            }));
        }
        let polled = self.inner.as_mut().poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => match self.pass(data) {
                    Ok(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
                    Err(status) => {
                        self.failed = true;
                        Poll::Ready(Some(Err(Box::new(status))))
                    }
                },
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            Poll::Ready(Some(Err(e))) => {
                // The caller reset its stream (a cancelled call, a dropped
                // connection) or the connection failed. The gRPC decoder reads a
                // request stream reset with CANCEL as its normal end, which would
                // let a handler take a cut-off upload for a whole one: it sees a
                // status of another code instead, and the upload is abandoned.
                let e: tonic::codegen::StdError = e.into();
                self.failed = true;
                Poll::Ready(Some(Err(Box::new(crate::api::error::caller_reset(e)))))
            }
            // hyper ends a request body cleanly when the caller resets its
            // stream with NO_ERROR or CANCEL: only a stream whose end the
            // caller sent (END_STREAM) ended; any other end is a reset, and
            // an upload cut at a message boundary is not a whole one.
            Poll::Ready(None) if !self.inner.is_end_stream() => {
                self.failed = true;
                Poll::Ready(Some(Err(Box::new(crate::api::error::caller_reset(
                    "the stream was reset",
                )))))
            }
            other => other.map(|o| o.map(|r| r.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || (self.held.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.inner.size_hint();
        if let Some(held) = &self.held {
            let n = held.len() as u64;
            if let Some(upper) = hint.upper() {
                hint.set_upper(upper + n);
            }
            hint.set_lower(hint.lower() + n);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body that gives one whole message, then fails as a reset stream does.
    struct ResetAfterOne {
        sent: bool,
    }

    impl Body for ResetAfterOne {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            if self.sent {
                return Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "stream reset",
                ))));
            }
            self.sent = true;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&[
                0, 0, 0, 0, 1, 7,
            ])))))
        }
    }

    /// A body of the given frames, then its end.
    struct Frames(std::collections::VecDeque<Bytes>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }

        // Its end is the caller's (as END_STREAM is).
        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    fn message(len: usize, fill: u8) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&(len as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(fill, len));
        m
    }

    #[tokio::test]
    async fn large_messages_are_handed_on_apart_from_their_prefix() {
        let small = message(10, 1);
        let big = message(CUT_FROM, 2);
        let big2 = message(CUT_FROM + 3, 3);
        // One frame: a small message, a large one, and the start of another.
        let mut first = small.clone();
        first.extend_from_slice(&big);
        first.extend_from_slice(&big2[..100]);
        let frames = vec![Bytes::from(first), Bytes::copy_from_slice(&big2[100..])];
        let mut body = Checked {
            inner: Box::pin(Frames(frames.into())),
            first: 1 << 20,
            rest: 1 << 20,
            upload: true,
            messages: 0,
            prefix: [0; 5],
            have: 0,
            remaining: 0,
            failed: false,
            held: None,
        };
        let mut pieces = Vec::new();
        while let Some(f) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            pieces.push(f.expect("a frame").into_data().expect("data"));
        }
        let lens: Vec<usize> = pieces.iter().map(Bytes::len).collect();
        assert_eq!(
            lens,
            [small.len() + 5, CUT_FROM + 5, 95, big2.len() - 100],
            "cut after each large message's prefix"
        );
        let mut all = small;
        all.extend_from_slice(&big);
        all.extend_from_slice(&big2);
        assert_eq!(pieces.concat(), all, "the bytes as they came");
        assert_eq!(body.messages, 3);
    }

    #[tokio::test]
    async fn a_reset_stream_fails_as_aborted_not_cancelled() {
        let mut body = Checked {
            inner: Box::pin(ResetAfterOne { sent: false }),
            first: 100,
            rest: 100,
            upload: true,
            messages: 0,
            prefix: [0; 5],
            have: 0,
            remaining: 0,
            failed: false,
            held: None,
        };
        let mut next = async || std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        assert!(next().await.expect("a frame").is_ok());
        let err = next().await.expect("an error").expect_err("the reset");
        let status = err.downcast::<Status>().expect("a status");
        assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
        assert!(next().await.is_none(), "nothing after");
    }
}
