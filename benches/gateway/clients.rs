//! The callers: the direct REST client (to the sink, or through the relay) and
//! the gateway's tonic client, one call each.

use std::net::SocketAddr;
use std::time::Duration;

use attachment_gateway::proto::attachment_service_client::AttachmentServiceClient;
use attachment_gateway::proto::download_attachment_response::Payload as Down;
use attachment_gateway::proto::upload_attachment_request::Payload;
use attachment_gateway::proto::{
    AttachmentView, DownloadAttachmentRequest, ListAttachmentsRequest, Person,
    UploadAttachmentRequest, UploadMetadata,
};
use bytes::Bytes;
use futures_util::StreamExt;
use tonic::transport::Channel;

pub(crate) type Client = AttachmentServiceClient<Channel>;

pub(crate) async fn connect(addr: SocketAddr) -> Channel {
    // As the crate's `GatewayClient` connects: DATA frames up to 512 KiB each way.
    let ep = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .tcp_nodelay(true)
        .max_frame_size(512 * 1024);
    for _ in 0..200 {
        if let Ok(ch) = ep.connect().await {
            return ch;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the gateway never came up");
}

pub(crate) fn file_stream(
    data: Bytes,
    chunk: usize,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    let n = data.len().div_ceil(chunk);
    futures_util::stream::iter(
        (0..n).map(move |i| Ok(data.slice(i * chunk..((i + 1) * chunk).min(data.len())))),
    )
}

pub(crate) async fn direct_upload(
    http: &reqwest::Client,
    sink: SocketAddr,
    data: Bytes,
    chunk: usize,
) {
    let len = data.len() as u64;
    let part = reqwest::multipart::Part::stream_with_length(
        reqwest::Body::wrap_stream(file_stream(data, chunk)),
        len,
    )
    .file_name("bench.bin")
    .mime_str("application/octet-stream")
    .expect("mime");
    let form = reqwest::multipart::Form::new()
        .text("WorkOrderId", "1001")
        .text("Name", "bench.bin")
        .text("MimeType", "application/octet-stream")
        .text("PerformedBy.Name", "Bench")
        .text("MessageId", "bench-message")
        .part("File", part);
    let resp = http
        .post(format!("http://{sink}/Direct/api/attachments"))
        .bearer_auth("bench-token")
        .multipart(form)
        .send()
        .await
        .expect("direct upload");
    assert_eq!(resp.status(), 200);
    let _ = resp.bytes().await;
}

pub(crate) async fn gateway_upload(c: &mut Client, data: Bytes, chunk: usize) {
    let meta = UploadMetadata {
        work_order_id: 1001,
        name: "bench.bin".into(),
        mime_type: "application/octet-stream".into(),
        performed_by: Some(Person {
            name: "Bench".into(),
            phone: String::new(),
        }),
        size_bytes: data.len() as u64,
        ..Default::default()
    };
    let first = futures_util::stream::once(async move {
        UploadAttachmentRequest {
            payload: Some(Payload::Metadata(meta)),
        }
    });
    let chunks = file_stream(data, chunk).map(|b| UploadAttachmentRequest {
        payload: Some(Payload::Chunk(b.expect("slice"))),
    });
    c.upload_attachment(first.chain(chunks))
        .await
        .expect("gateway upload");
}

pub(crate) async fn direct_list(http: &reqwest::Client, sink: SocketAddr) {
    let r = http
        .get(format!("http://{sink}/Direct/api/attachments"))
        .query(&[("workOrderId", 1001)])
        .bearer_auth("bench-token")
        .send()
        .await
        .expect("list");
    let v: serde_json::Value = r.json().await.expect("json");
    assert!(v.is_array());
}

pub(crate) async fn gateway_list(c: &mut Client, view: AttachmentView) {
    let r = c
        .list_attachments(ListAttachmentsRequest {
            work_order_id: 1001,
            view: view as i32,
        })
        .await
        .expect("list");
    assert!(!r.into_inner().attachments.is_empty());
}

pub(crate) async fn direct_download(http: &reqwest::Client, sink: SocketAddr) -> usize {
    let mut r = http
        .get(format!("http://{sink}/files/big?sig=x"))
        .send()
        .await
        .expect("get");
    let mut n = 0;
    while let Some(c) = r.chunk().await.expect("chunk") {
        n += c.len();
    }
    n
}

pub(crate) async fn gateway_download(c: &mut Client) -> usize {
    let mut s = c
        .download_attachment(DownloadAttachmentRequest {
            work_order_id: 1001,
            attachment_id: "a".into(),
            ..Default::default()
        })
        .await
        .expect("download")
        .into_inner();
    let mut n = 0;
    while let Some(m) = s.message().await.expect("msg") {
        if let Some(Down::Chunk(b)) = m.payload {
            n += b.len();
        }
    }
    n
}
