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
    // The attachment is still listed: a delete answered 503 did not come true.
    Mock::given(method("GET"))
        .and(path("/Direct/api/attachments"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!([{"AttachmentId": "abc", "Name": "a.txt"}])),
        )
        .with_priority(2)
        .mount(&server)
        .await;
    // A write that fails with 503 may have been applied: the gateway asks the
    // upstream (the list), keeps the outcome unknown under the write's message
    // id, and says a retry with the same id is safe (the retry reconciles
    // first). The client retries, always with the one message id.
    Mock::given(method("DELETE"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    let gw = Gateway::start(settings_for(&server.uri())).await;
    let client = GatewayClient::builder(format!("http://{}", gw.addr))
        .timeout(Duration::from_secs(5))
        .retries(2)
        .connect()
        .await
        .expect("connect");
    let list = client.list(1).await.expect("the read was retried");
    assert_eq!(list.len(), 1);
    let err = client.delete(1, "abc").await.expect_err("503");
    assert_eq!(err.code, Code::Unavailable);
    assert_eq!(err.reason.as_deref(), Some("OUTCOME_UNKNOWN"));
    assert!(err.retry_safe, "retrying with the same message id is safe");
    let deletes: Vec<String> = server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.method.as_str() == "DELETE")
        .map(|r| {
            let body = String::from_utf8_lossy(&r.body).to_string();
            let i = body.find("name=\"MessageId\"").expect("MessageId field");
            body[i..]
                .lines()
                .nth(2)
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .collect();
    assert_eq!(deletes.len(), 3, "the first try and two retries");
    assert!(deletes.iter().all(|m| *m == deletes[0]), "{deletes:?}");
}

/// A reader that yields `good` bytes, then fails.
struct FailsAfter {
    good: usize,
    done: usize,
}

impl tokio::io::AsyncRead for FailsAfter {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.done >= self.good {
            return std::task::Poll::Ready(Err(std::io::Error::other("disk read error")));
        }
        let n = (self.good - self.done).min(buf.remaining()).min(10_000);
        buf.put_slice(&vec![9u8; n]);
        self.done += n;
        std::task::Poll::Ready(Ok(()))
    }
}

/// A read error mid-upload cancels the call: the gateway stores nothing, and the
/// caller gets the error, never a receipt for the prefix.
#[tokio::test]
async fn a_read_error_aborts_the_upload_and_stores_nothing() {
    let h = with_sandbox().await;
    let client = GatewayClient::builder(format!("http://{}", h.gateway.addr))
        .chunk_bytes(16 * 1024)
        .connect()
        .await
        .expect("connect");
    let mut meta = NewUpload::new(1002, "Reader");
    meta.name = "half.bin".into();
    let err = client
        .upload_reader(
            FailsAfter {
                good: 100_000,
                done: 0,
            },
            None,
            meta,
            None,
        )
        .await
        .expect_err("a read error is not a complete file");
    assert!(err.message.contains("disk read error"), "{err:?}");
    assert!(!err.is_retryable());
    nothing_stored(&h.sandbox).await;
    assert!(h.sandbox.attachments(1002).is_empty());
}

/// Uploading with progress retries like `upload_file`, with one message id for
/// every try (the CLI behaves the same whether stderr is a terminal or not).
#[tokio::test]
async fn upload_with_progress_retries_with_one_message_id() {
    // The upstream answers the first upload 429 (nothing stored, safe to retry),
    // then accepts it.
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "t", "expires_in": 1199})),
        )
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/Direct/api/attachments"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "0"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/Direct/api/attachments"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"AttachmentId": "a-1", "MessageId": "m"})),
        )
        .with_priority(2)
        .mount(&server)
        .await;
    let gw = Gateway::start(settings_for(&server.uri())).await;
    let client = GatewayClient::builder(format!("http://{}", gw.addr))
        .connect()
        .await
        .expect("connect");
    let dir = scratch("progress");
    let file = dir.path().join("p.bin");
    std::fs::write(&file, pattern(50_000, 1)).expect("write");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = std::sync::Arc::clone(&seen);
    let r = client
        .upload_file_with_progress(
            &file,
            NewUpload::new(1, "P"),
            Box::new(move |done, total| s.lock().unwrap().push((done, total))),
        )
        .await
        .expect("retried after the 429");
    assert_eq!(r.attachment_id, "a-1");
    let ids: Vec<String> = server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        // The uploads (the GETs list what the work order held before).
        .filter(|r| r.method.as_str() == "POST" && r.url.path() == "/Direct/api/attachments")
        .map(|r| {
            let body = String::from_utf8_lossy(&r.body).to_string();
            let i = body.find("name=\"MessageId\"").expect("MessageId field");
            body[i..]
                .lines()
                .nth(2)
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), 2, "two tries");
    assert_eq!(ids[0], ids[1], "one message id for both tries");
    assert!(
        seen.lock()
            .unwrap()
            .iter()
            .any(|(d, t)| *d == 50_000 && *t == Some(50_000)),
        "progress reached the end"
    );
}
