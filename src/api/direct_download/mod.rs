//! `DownloadAttachment` answered outside tonic's encoder, so a chunk's bytes are
//! never copied on their way to the caller.
//!
//! tonic encodes each message into a buffer of its own (`EncodeBuf` takes no
//! `Bytes` without copying it), so every downloaded byte was copied once in user
//! space between the link's body and the HTTP/2 frames. Here a chunk goes out as
//! two DATA frames: its few bytes of framing (the gRPC prefix, the field's key
//! and length), then the chunk itself, the very `Bytes` hyper read from the link.
//! The bytes on the wire are the same messages as prost encodes them.
//!
//! Everything else is tonic's `server_streaming`, step for step: the request
//! message is read with tonic's own decoder (its limits, its errors, the body
//! read to its end and its trailers merged into the metadata), a compressed
//! request is refused as tonic refuses it with no compression enabled, an error
//! before the stream is a trailers-only answer (`Status::into_http`), and the
//! stream ends with its status in trailers (`grpc-status` 0, or the error's
//! status mid-stream). The route sits in front of the generated service: every
//! other method goes to it unchanged; the layers run before both.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::Stream;
use http_body::{Body, Frame};
use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, Streaming};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::server::NamedService;
use tower::Service;

use crate::proto::codec::SmallBuffers;
use crate::proto::wire::attachment_service_server::AttachmentService;
use crate::proto::wire::download_attachment_response::Payload;
use crate::proto::wire::{DownloadAttachmentRequest, DownloadAttachmentResponse};

/// The method answered here.
pub const PATH: &str = "/corrigopro.attachments.v1.AttachmentService/DownloadAttachment";

/// Chunks from this size up go out without a copy; smaller ones are encoded
/// whole (a copy is cheaper than a frame).
const SPLIT_FROM: usize = 8 * 1024;

/// The `chunk` field of `DownloadAttachmentResponse`: number 2, length-delimited.
const CHUNK_KEY: u8 = (2 << 3) | 2;

/// The gRPC prefix: a compression flag and the length.
const PREFIX: usize = 5;

/// Headers a handler's metadata may not set on the answer (tonic's list).
const RESERVED: [&str; 5] = [
    "te",
    "content-type",
    "grpc-message",
    "grpc-message-type",
    "grpc-status",
];

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send + 'static>>;

/// The generated service `S`, with `DownloadAttachment` answered here by `api`.
pub struct DirectDownloads<S, A> {
    inner: S,
    api: Arc<A>,
    /// The largest request message read (the generated service's setting).
    max_request: usize,
}

impl<S: Clone, A> Clone for DirectDownloads<S, A> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            api: Arc::clone(&self.api),
            max_request: self.max_request,
        }
    }
}

impl<S, A> DirectDownloads<S, A> {
    /// `inner`, with downloads answered by `api`, whose request messages are
    /// read up to `max_request` bytes (as `inner` is configured).
    pub fn new(inner: S, api: Arc<A>, max_request: usize) -> Self {
        Self {
            inner,
            api,
            max_request,
        }
    }
}

impl<S: NamedService, A> NamedService for DirectDownloads<S, A> {
    const NAME: &'static str = S::NAME;
}

impl<S, A, St> Service<http::Request<tonic::body::Body>> for DirectDownloads<S, A>
where
    S: Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
    A: AttachmentService<DownloadAttachmentStream = St>,
    St: Stream<Item = Result<DownloadAttachmentResponse, Status>> + Send + Unpin + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if req.uri().path() != PATH {
            return Box::pin(self.inner.call(req));
        }
        let (api, max) = (Arc::clone(&self.api), self.max_request);
        Box::pin(async move { Ok(download(&*api, req, max).await) })
    }
}

/// What tonic's `server_streaming` does for the method, with [`DownloadBody`]
/// as the encoder.
async fn download<A, St>(
    api: &A,
    req: http::Request<tonic::body::Body>,
    max_request: usize,
) -> http::Response<tonic::body::Body>
where
    A: AttachmentService<DownloadAttachmentStream = St>,
    St: Stream<Item = Result<DownloadAttachmentResponse, Status>> + Send + Unpin + 'static,
{
    let request = match request(req, max_request).await {
        Ok(r) => r,
        Err(status) => return status.into_http(),
    };
    match api.download_attachment(request).await {
        Err(status) => status.into_http(),
        Ok(response) => {
            let (metadata, stream, extensions) = response.into_parts();
            let mut headers = metadata.into_headers();
            for name in RESERVED {
                headers.remove(name);
            }
            headers.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            let mut r = http::Response::new(tonic::body::Body::new(DownloadBody::new(stream)));
            *r.version_mut() = http::Version::HTTP_2;
            *r.headers_mut() = headers;
            *r.extensions_mut() = extensions;
            r
        }
    }
}

/// The request as tonic's `map_request_unary` reads it: one message with
/// tonic's decoder, the body read to its end, its trailers merged.
async fn request(
    req: http::Request<tonic::body::Body>,
    max: usize,
) -> Result<tonic::Request<DownloadAttachmentRequest>, Status> {
    if let Some(enc) = req.headers().get("grpc-encoding")
        && enc.as_bytes() != b"identity"
    {
        // As tonic refuses a compressed request with no compression enabled.
        let name = match std::str::from_utf8(enc.as_bytes()) {
            Ok(s) => s.to_string(),
            Err(_) => format!("{:?}", enc.as_bytes()),
        };
        let mut status = Status::unimplemented(format!(
            "Content is compressed with `{name}` which isn't supported"
        ));
        status.metadata_mut().insert(
            "grpc-accept-encoding",
            MetadataValue::from_static("identity"),
        );
        return Err(status);
    }
    let (parts, body) = req.into_parts();
    let mut codec =
        SmallBuffers::<DownloadAttachmentResponse, DownloadAttachmentRequest>::default();
    let mut stream = Streaming::new_request(codec.decoder(), body, None, Some(max));
    let message = stream
        .message()
        .await?
        .ok_or_else(|| Status::internal("Missing request message."))?;
    let mut headers = parts.headers;
    if let Some(trailers) = stream.trailers().await? {
        headers.extend(trailers.into_headers());
    }
    Ok(tonic::Request::from_parts(
        MetadataMap::from_headers(headers),
        parts.extensions,
        message,
    ))
}

/// A download's messages as gRPC frames; a large chunk as its framing, then
/// itself. Ends with the call's status in trailers, as tonic's encoder does.
pub struct DownloadBody<St> {
    stream: St,
    /// A chunk whose framing went out last.
    next: Option<Bytes>,
    done: bool,
}

impl<St> DownloadBody<St> {
    pub fn new(stream: St) -> Self {
        Self {
            stream,
            next: None,
            done: false,
        }
    }
}

/// The prefix of a message of `len` bytes, as tonic writes it (no compression).
fn put_prefix(b: &mut BytesMut, len: usize) -> Result<(), Status> {
    let len = u32::try_from(len).map_err(|_| {
        Status::resource_exhausted(format!(
            "Cannot return body with more than 4GB of data but got {len} bytes"
        ))
    })?;
    b.put_u8(0);
    b.put_u32(len);
    Ok(())
}

/// The gRPC prefix, key and length of a message that is only a chunk of `len`
/// bytes: what goes before the chunk itself.
fn chunk_framing(len: usize) -> Result<Bytes, Status> {
    let len_len = prost::encoding::encoded_len_varint(len as u64);
    let mut b = BytesMut::with_capacity(PREFIX + 1 + len_len);
    put_prefix(&mut b, 1 + len_len + len)?;
    b.put_u8(CHUNK_KEY);
    prost::encoding::encode_varint(len as u64, &mut b);
    Ok(b.freeze())
}

/// A whole message, framed.
fn encoded(m: &DownloadAttachmentResponse) -> Result<Bytes, Status> {
    let len = m.encoded_len();
    let mut b = BytesMut::with_capacity(PREFIX + len);
    put_prefix(&mut b, len)?;
    m.encode(&mut b)
        .map_err(|e| Status::internal(format!("Error encoding: {e}")))?;
    Ok(b.freeze())
}

/// The trailers carrying `status`, as tonic writes them.
fn trailers(status: &Status) -> Result<http::HeaderMap, Status> {
    let mut map = http::HeaderMap::with_capacity(3 + status.metadata().len());
    status.add_header(&mut map)?;
    Ok(map)
}

impl<St> DownloadBody<St> {
    /// The end: the trailers of `status`.
    fn end(&mut self, status: &Status) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        self.done = true;
        Poll::Ready(Some(trailers(status).map(Frame::trailers)))
    }
}

impl<St> Body for DownloadBody<St>
where
    St: Stream<Item = Result<DownloadAttachmentResponse, Status>> + Unpin,
{
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if let Some(chunk) = self.next.take() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        let framed = match ready!(Pin::new(&mut self.stream).poll_next(cx)) {
            Some(Ok(DownloadAttachmentResponse {
                payload: Some(Payload::Chunk(chunk)),
                range: None,
            })) if chunk.len() >= SPLIT_FROM => {
                let framing = chunk_framing(chunk.len());
                if framing.is_ok() {
                    self.next = Some(chunk);
                }
                framing
            }
            Some(Ok(m)) => encoded(&m),
            Some(Err(status)) => return self.end(&status),
            None => return self.end(&Status::ok("")),
        };
        match framed {
            Ok(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
            // As tonic's encoder: the status in trailers.
            Err(status) => self.end(&status),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.next.is_none()
    }
}

#[cfg(test)]
mod tests;
