//! The convenience client: file upload and streamed download against the sandbox,
//! and retries only where the gateway says a retry is safe.

use std::time::Duration;

use crate::common::*;
use attachment_gateway::client::{GatewayClient, NewUpload, guess_mime};
use attachment_gateway::proto::{AttachmentView, DocumentType, MessageVisibility};
use serde_json::json;
use tonic::Code;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[tokio::test]
async fn upload_file_and_download_to_round_trip() {
    let h = with_sandbox().await;
    let client = GatewayClient::builder(format!("http://{}", h.gateway.addr))
        .chunk_bytes(64 * 1024)
        .connect()
        .await
        .expect("connect");
    let dir = tempfile::Builder::new()
        .prefix("ag-client-")
        .tempdir()
        .expect("scratch dir");
    let file = dir.path().join("boiler room.png");
    let data = pattern(1_000_003, 4);
    std::fs::write(&file, &data).expect("write");

    let mut meta = NewUpload::new(1002, "Client Library");
    meta.document_type = DocumentType::Picture;
    let r = client.upload_file(&file, meta).await.expect("upload");
    assert_eq!(
        (r.size_bytes, r.sha256.as_str()),
        (data.len() as u64, sha256_hex(&data).as_str())
    );
    let stored = &h.sandbox.attachments(1002)[0];
    assert_eq!(stored.name, "boiler room.png", "the file's own name");
    assert_eq!(stored.mime_type, "image/png", "guessed from the extension");
    assert_eq!(
        stored.message_id.len(),
        36,
        "the client sets one id for every try"
    );

    let listed = client.list(1002).await.expect("list");
    assert_eq!(listed.len(), 1);
    assert!(listed[0].upstream.is_some(), "list() is the FULL view");
    let basic = client
        .list_with_view(1002, AttachmentView::Basic)
        .await
        .expect("list, basic view");
    assert_eq!(
        (basic[0].upstream.as_ref(), &basic[0].attachment_id),
        (None, &r.attachment_id)
    );
    let mut out = Vec::new();
    let m = client
        .download_to(1002, &r.attachment_id, &mut out, None)
        .await
        .expect("download");
    assert_eq!(out, data);
    assert_eq!(m.size_bytes, data.len() as u64);

    client
        .update(
            1002,
            &r.attachment_id,
            "boiler.png",
            DocumentType::Misc,
            MessageVisibility::All,
        )
        .await
        .expect("update");
    client.delete(1002, &r.attachment_id).await.expect("delete");
    let err = client
        .delete(1002, &r.attachment_id)
        .await
        .expect_err("gone");
    assert_eq!(err.code, Code::NotFound);
    assert!(!err.is_retryable());
    assert_eq!(guess_mime("X.JPEG"), "image/jpeg");
}

#[tokio::test]
async fn retries_only_what_the_gateway_calls_safe() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "t", "expires_in": 1199})),
        )
        .mount(&server)
        .await;
    // A read: 503 once (the gateway says retry in 0 s... via Retry-After), then 200.
    Mock::given(method("GET"))
        .and(path("/Direct/api/attachments"))
        .respond_with(ResponseTemplate::new(503).insert_header("Retry-After", "0"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/Direct/api/attachments"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .with_priority(2)
        .mount(&server)
        .await;
    // A write that fails with 503: it may have been applied, so no retry.
    Mock::given(method("DELETE"))
        .respond_with(ResponseTemplate::new(503))
        .expect(1)
        .mount(&server)
        .await;
    let gw = Gateway::start(settings_for(&server.uri())).await;
    let client = GatewayClient::builder(format!("http://{}", gw.addr))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .expect("connect");
    let list = client.list(1).await.expect("the read was retried");
    assert!(list.is_empty());
    let err = client.delete(1, "abc").await.expect_err("503");
    assert_eq!(err.code, Code::Unavailable);
    assert!(!err.retry_safe, "a failed write may have happened");
    assert!(!err.is_retryable());
    server.verify().await; // exactly one DELETE reached the upstream
}
