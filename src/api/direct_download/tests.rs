use std::collections::VecDeque;

use futures_util::stream;
use tonic::codec::{EncodeBody, SingleMessageCompressionOverride};
use tonic::{Code, Request, Response};

use super::*;
use crate::api::{DownloadStream, WatchStream};
use crate::proto::wire::attachment_service_server::AttachmentServiceServer;
use crate::proto::wire::{
    Attachment, ByteRange, DeleteAttachmentRequest, DeleteAttachmentResponse,
    GetDownloadUrlRequest, GetDownloadUrlResponse, ListAttachmentsRequest, ListAttachmentsResponse,
    UpdateAttachmentRequest, UpdateAttachmentResponse, UploadAttachmentRequest,
    UploadAttachmentResponse, WatchAttachmentsRequest,
};

const MAX: usize = 64 * 1024;

type Item = Result<Frame<Bytes>, Status>;

/// A body of the given frames (data, trailers or an error), then its end.
struct Frames(VecDeque<Item>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Item>> {
        Poll::Ready(self.0.pop_front())
    }
}

/// Everything a body carries: its data, then its trailers or its error.
#[derive(Debug, PartialEq)]
struct Carried {
    data: Vec<u8>,
    trailers: Option<http::HeaderMap>,
    error: Option<(Code, String)>,
}

async fn carried<B: Body<Data = Bytes, Error = Status>>(body: B) -> Carried {
    let mut body = std::pin::pin!(body);
    let mut c = Carried {
        data: Vec::new(),
        trailers: None,
        error: None,
    };
    while let Some(f) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        match f {
            Ok(f) => match f.into_data() {
                Ok(d) => c.data.extend_from_slice(&d),
                Err(f) => c.trailers = f.into_trailers().ok(),
            },
            Err(s) => {
                c.error = Some((s.code(), s.message().to_string()));
                break;
            }
        }
    }
    c
}

fn chunk(n: usize) -> DownloadAttachmentResponse {
    DownloadAttachmentResponse {
        payload: Some(Payload::Chunk(Bytes::from(vec![9; n]))),
        range: None,
    }
}

fn first() -> DownloadAttachmentResponse {
    DownloadAttachmentResponse {
        payload: Some(Payload::Metadata(Attachment {
            attachment_id: "a".into(),
            name: "leak.jpg".into(),
            size_bytes: 400_000,
            ..Default::default()
        })),
        range: Some(ByteRange {
            offset: 100,
            length: 399_900,
            total_size: 400_000,
        }),
    }
}

fn detailed(code: Code) -> Status {
    let mut s = Status::with_details(code, "cut: the link broke", Bytes::from_static(b"\x08\x01"));
    s.metadata_mut().insert(
        "x-why",
        tonic::metadata::MetadataValue::from_static("because"),
    );
    s
}

/// Stream contents to compare: the first message, chunks on both sides of
/// the split size, an empty one, and an end or an error.
fn streams() -> Vec<Vec<Result<DownloadAttachmentResponse, Status>>> {
    let messages = vec![
        Ok(first()),
        Ok(chunk(10)),
        Ok(chunk(SPLIT_FROM - 1)),
        Ok(chunk(SPLIT_FROM)),
        Ok(chunk(300_000)),
        Ok(chunk(0)),
    ];
    let mut with_error = messages.clone();
    with_error.push(Err(detailed(Code::DataLoss)));
    vec![
        messages,
        with_error,
        vec![Err(detailed(Code::Unavailable))],
        vec![],
        vec![Ok(first()), Ok(chunk(70_000)), Err(Status::internal(""))],
    ]
}

fn stream_of(items: Vec<Result<DownloadAttachmentResponse, Status>>) -> DownloadStream {
    Box::pin(stream::iter(items))
}

#[tokio::test]
async fn the_body_carries_what_tonic_encodes() {
    for items in streams() {
        let encoder =
            SmallBuffers::<DownloadAttachmentResponse, DownloadAttachmentRequest>::default()
                .encoder();
        let tonic = EncodeBody::new_server(
            encoder,
            stream_of(items.clone()),
            None,
            SingleMessageCompressionOverride::default(),
            None,
        );
        let want = carried(tonic).await;
        let got = carried(DownloadBody::new(stream_of(items))).await;
        assert!(
            got == want,
            "{} data bytes then {:?} {:?}, instead of {} then {:?} {:?}",
            got.data.len(),
            got.trailers,
            got.error,
            want.data.len(),
            want.trailers,
            want.error
        );
    }
}

#[tokio::test]
async fn a_large_chunk_goes_out_uncopied() {
    let c = Bytes::from(vec![3u8; 100_000]);
    let item = DownloadAttachmentResponse {
        payload: Some(Payload::Chunk(c.clone())),
        range: None,
    };
    let mut body = std::pin::pin!(DownloadBody::new(stream_of(vec![Ok(item)])));
    let mut frames = Vec::new();
    while let Some(f) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        if let Ok(d) = f.expect("a frame").into_data() {
            frames.push(d);
        }
    }
    assert_eq!(frames.len(), 2, "its framing, then itself");
    assert_eq!(frames[1].as_ptr(), c.as_ptr(), "the very bytes");
    assert_eq!(frames[0].len(), PREFIX + 1 + 3);
}

/// A handler that answers downloads by work order: 1 streams, 2 fails
/// before the stream, 3 fails in it; it echoes `x-echo` (from the
/// request's headers or trailers) on its answer.
struct Fake;

fn unused<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not in this test"))
}

#[tonic::async_trait]
impl AttachmentService for Fake {
    async fn upload_attachment(
        &self,
        _: Request<tonic::Streaming<UploadAttachmentRequest>>,
    ) -> Result<Response<UploadAttachmentResponse>, Status> {
        unused()
    }
    async fn list_attachments(
        &self,
        _: Request<ListAttachmentsRequest>,
    ) -> Result<Response<ListAttachmentsResponse>, Status> {
        unused()
    }
    async fn get_download_url(
        &self,
        _: Request<GetDownloadUrlRequest>,
    ) -> Result<Response<GetDownloadUrlResponse>, Status> {
        unused()
    }

    type DownloadAttachmentStream = DownloadStream;

    async fn download_attachment(
        &self,
        request: Request<DownloadAttachmentRequest>,
    ) -> Result<Response<DownloadStream>, Status> {
        let echo = request.metadata().get("x-echo").cloned();
        let items = match request.get_ref().work_order_id {
            1 => vec![Ok(first()), Ok(chunk(20_000)), Ok(chunk(5))],
            2 => return Err(detailed(Code::NotFound)),
            _ => vec![Ok(first()), Ok(chunk(9_000)), Err(detailed(Code::DataLoss))],
        };
        let mut r = Response::new(stream_of(items));
        if let Some(v) = echo {
            r.metadata_mut().insert("x-echo", v);
        }
        // Reserved names a handler may not set on the answer.
        r.metadata_mut().insert(
            "grpc-status",
            tonic::metadata::MetadataValue::from_static("5"),
        );
        Ok(r)
    }

    async fn update_attachment(
        &self,
        _: Request<UpdateAttachmentRequest>,
    ) -> Result<Response<UpdateAttachmentResponse>, Status> {
        unused()
    }
    async fn delete_attachment(
        &self,
        _: Request<DeleteAttachmentRequest>,
    ) -> Result<Response<DeleteAttachmentResponse>, Status> {
        unused()
    }

    type WatchAttachmentsStream = WatchStream;

    async fn watch_attachments(
        &self,
        _: Request<WatchAttachmentsRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        unused()
    }
}

fn framed(wo: i64) -> Vec<u8> {
    let m = DownloadAttachmentRequest {
        work_order_id: wo,
        attachment_id: "a".into(),
        offset: 0,
        limit: 0,
    }
    .encode_to_vec();
    let mut out = vec![0];
    out.extend_from_slice(&(m.len() as u32).to_be_bytes());
    out.extend_from_slice(&m);
    out
}

fn data(b: &[u8]) -> Item {
    Ok(Frame::data(Bytes::copy_from_slice(b)))
}

/// A request: headers, then its body's frames.
fn request(
    headers: &[(&'static str, &'static str)],
    frames: &[Item],
) -> http::Request<tonic::body::Body> {
    let copy = frames.iter().map(|f| match f {
        Ok(f) => Ok(match f.data_ref() {
            Some(d) => Frame::data(d.clone()),
            None => Frame::trailers(f.trailers_ref().cloned().unwrap_or_default()),
        }),
        Err(s) => Err(Status::new(s.code(), s.message())),
    });
    let mut r = http::Request::builder()
        .method("POST")
        .uri(format!("http://gateway{PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(tonic::body::Body::new(Frames(copy.collect())))
        .expect("request")
}

/// Every aspect of an answer a caller sees.
async fn answer<S>(svc: &mut S, req: http::Request<tonic::body::Body>) -> (String, Carried)
where
    S: Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = Infallible,
        >,
{
    let r = match svc.call(req).await {
        Ok(r) => r,
        Err(e) => match e {},
    };
    let (parts, body) = r.into_parts();
    let head = format!("{:?} {:?} {:?}", parts.status, parts.version, parts.headers);
    (head, carried(body).await)
}

#[tokio::test]
async fn every_request_is_answered_as_the_generated_service_answers_it() {
    let whole = framed(1);
    let trailers = {
        let mut t = http::HeaderMap::new();
        t.insert("x-echo", http::HeaderValue::from_static("from-trailers"));
        Ok(Frame::trailers(t))
    };
    let too_large = [&[0u8][..], &(MAX as u32 + 1).to_be_bytes()[..]].concat();
    type Case = (Vec<(&'static str, &'static str)>, Vec<Item>);
    let cases: Vec<Case> = vec![
        (vec![], vec![data(&whole)]),
        (
            vec![("x-echo", "from-headers")],
            vec![data(&whole[..3]), data(&whole[3..])],
        ),
        (vec![], vec![data(&whole), trailers]),
        (vec![], whole.iter().map(|b| data(&[*b])).collect()),
        (vec![], vec![data(&framed(2))]),
        (vec![], vec![data(&framed(3))]),
        // No message, half a message, a prefix alone.
        (vec![], vec![]),
        (vec![], vec![data(&whole[..whole.len() - 1])]),
        (vec![], vec![data(&whole[..5])]),
        // Flags and sizes no caller should send.
        (vec![], vec![data(&[1, 0, 0, 0, 0])]),
        (vec![], vec![data(&[7, 0, 0, 0, 0])]),
        (vec![], vec![data(&too_large)]),
        (vec![], vec![data(&[0, 0, 0, 0, 2, 0x08, 0xff])]),
        // A second message: read and dropped, or an error when broken.
        (vec![], vec![data(&[whole.clone(), framed(2)].concat())]),
        (vec![], vec![data(&whole), data(&[1, 0, 0, 0, 0])]),
        (vec![], vec![data(&whole), Err(Status::aborted("reset"))]),
        (vec![], vec![Err(Status::invalid_argument("too large"))]),
        // Compression: none is enabled.
        (vec![("grpc-encoding", "gzip")], vec![data(&whole)]),
        (vec![("grpc-encoding", "identity")], vec![data(&whole)]),
    ];
    let fake = Arc::new(Fake);
    let generated =
        || AttachmentServiceServer::from_arc(Arc::clone(&fake)).max_decoding_message_size(MAX);
    for (i, (headers, frames)) in cases.into_iter().enumerate() {
        let want = answer(&mut generated(), request(&headers, &frames)).await;
        let mut direct = DirectDownloads::new(generated(), Arc::clone(&fake), MAX);
        let got = answer(&mut direct, request(&headers, &frames)).await;
        assert_eq!(got.0, want.0, "case {i}: the head");
        assert!(
            got.1 == want.1,
            "case {i}: {} data bytes then {:?} {:?}, instead of {} then {:?} {:?}",
            got.1.data.len(),
            got.1.trailers,
            got.1.error,
            want.1.data.len(),
            want.1.trailers,
            want.1.error
        );
    }
}
