//! Every row of the upstream error table, token handling, deadlines and fault shapes,
//! against a wiremock upstream on loopback.

use std::time::Duration;

use crate::common::*;
use attachment_gateway::api::error::{BY_HTTP_STATUS, BY_UPSTREAM_CODE};
use attachment_gateway::proto::download_attachment_response::Payload as Down;
use attachment_gateway::proto::{
    DownloadAttachmentRequest, GetDownloadUrlRequest, ListAttachmentsRequest,
};
use serde_json::json;
use tonic::{Code, Request};
use wiremock::matchers::{body_string_contains, header, header_exists, method, path, query_param};
use wiremock::{Mock, MockServer, Request as WmRequest, ResponseTemplate};

async fn mock_token(server: &MockServer, token: &str) {
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .and(body_string_contains("grant_type=client_credentials"))
        .and(body_string_contains("client_id=test-client"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "access_token": token, "token_type": "bearer", "expires_in": 1199
        })))
        .mount(server)
        .await;
}

fn list(wo: i64) -> Request<ListAttachmentsRequest> {
    Request::new(ListAttachmentsRequest {
        work_order_id: wo,
        ..Default::default()
    })
}

#[tokio::test]
async fn every_upstream_code_row() {
    let server = MockServer::start().await;
    mock_token(&server, "tok").await;
    let gw = Gateway::start(settings_for(&server.uri())).await;
    let mut c = gw.client();
    for (i, (code, grpc, reason)) in BY_UPSTREAM_CODE.iter().enumerate() {
        let wo = 100 + i as i64;
        Mock::given(method("GET"))
            .and(path("/Direct/api/attachments"))
            .and(query_param("workOrderId", wo.to_string()))
            .respond_with(ResponseTemplate::new(400).set_body_json(json!({
                "Code": code,
                "Message": format!("upstream says {code}"),
                "ValidationErrors": [{"Type": "Validation", "Field": "PerformedBy.Name", "Message": "too long"}],
                "MessageId": "up-msg-1"
            })))
            .mount(&server)
            .await;
        let err = c.list_attachments(list(wo)).await.expect_err("error");
        assert_eq!(err.code(), *grpc, "code {code}: {err:?}");
        assert_eq!(error_reason(&err), *reason);
        let meta = error_metadata(&err);
        assert_eq!(meta.get("upstream_code"), Some(&code.to_string()));
        assert_eq!(
            meta.get("upstream_message"),
            Some(&format!("upstream says {code}"))
        );
        assert_eq!(
            meta.get("upstream_message_id").map(String::as_str),
            Some("up-msg-1")
        );
        assert!(err.message().contains(&format!("upstream says {code}")));
        // ValidationErrors travel as BadRequest, named by the proto field.
        assert_eq!(
            violations(&err),
            vec![(
                "performed_by.name".to_string(),
                "UPSTREAM_VALIDATION_FAILED".to_string()
            )]
        );
    }
}

#[tokio::test]
async fn every_http_status_row() {
    // A fresh upstream and gateway per row: retries, the cool-down and the circuit
    // breaker remember earlier answers, which is their job, not this table's.
    let mut rows: Vec<(u16, Code, &str)> = BY_HTTP_STATUS.to_vec();
    // Statuses outside the table fall back by class.
    rows.extend([
        (418u16, Code::FailedPrecondition, "UPSTREAM_REJECTED"),
        (507, Code::Unavailable, "UPSTREAM_FAILED"),
        (302, Code::Internal, "UPSTREAM_UNEXPECTED_STATUS"),
    ]);
    for (status, grpc, reason) in rows {
        if status == 401 {
            continue; // covered by the token tests below
        }
        let server = MockServer::start().await;
        mock_token(&server, "tok").await;
        let mut resp =
            ResponseTemplate::new(status).insert_header("Location", "http://127.0.0.1:1/elsewhere");
        if status == 429 || status == 503 {
            resp = resp.insert_header("Retry-After", "7");
        }
        Mock::given(method("GET"))
            .and(path("/Direct/api/attachments"))
            .respond_with(resp)
            .mount(&server)
            .await;
        let gw = Gateway::start(settings_for(&server.uri())).await;
        let err = gw
            .client()
            .list_attachments(list(1))
            .await
            .expect_err("error");
        assert_eq!(err.code(), grpc, "HTTP {status}: {err:?}");
        assert_eq!(error_reason(&err), reason, "HTTP {status}");
        assert_eq!(
            error_metadata(&err).get("http_status"),
            Some(&status.to_string())
        );
        if status == 429 || status == 503 {
            assert_eq!(
                retry_delay(&err),
                Some(Duration::from_secs(7)),
                "Retry-After becomes RetryInfo"
            );
        }
    }
}

#[tokio::test]
async fn a_429_cools_every_call_down_without_hitting_the_upstream() {
    let server = MockServer::start().await;
    mock_token(&server, "tok").await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "30"))
        .expect(1)
        .mount(&server)
        .await;
    let gw = Gateway::start(settings_for(&server.uri())).await;
    let mut c = gw.client();
    let first = c.list_attachments(list(1)).await.expect_err("429");
    assert_eq!(first.code(), Code::ResourceExhausted);
    assert_eq!(error_reason(&first), "UPSTREAM_RATE_LIMITED");
    for wo in 2..6 {
        let err = c
            .list_attachments(list(wo))
            .await
            .expect_err("cooling down");
        assert_eq!(err.code(), Code::ResourceExhausted);
        assert_eq!(
            error_metadata(&err).get("limit").map(String::as_str),
            Some("upstream_cool_down")
        );
        let quota = tonic_types::StatusExt::get_error_details(&err)
            .quota_failure()
            .cloned()
            .expect("QuotaFailure");
        assert_eq!(quota.violations[0].subject, "upstream");
        let delay = retry_delay(&err).expect("RetryInfo");
        assert!(
            delay > Duration::from_secs(28) && delay <= Duration::from_secs(30),
            "{delay:?}"
        );
    }
    server.verify().await; // the upstream saw one request, not five
}

#[tokio::test]
async fn rate_limit_without_retry_after_still_hints() {
    let server = MockServer::start().await;
    mock_token(&server, "tok").await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(429))
        .mount(&server)
        .await;
    let gw = Gateway::start(settings_for(&server.uri())).await;
    let err = gw
        .client()
        .list_attachments(list(1))
        .await
        .expect_err("429");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(retry_delay(&err), Some(Duration::from_secs(1)));
}

#[tokio::test]
async fn malformed_and_huge_error_bodies_are_bounded() {
    let server = MockServer::start().await;
    mock_token(&server, "tok").await;
    Mock::given(method("GET"))
        .and(query_param("workOrderId", "1"))
        .respond_with(ResponseTemplate::new(400).set_body_string("<html>not json</html>"))
        .mount(&server)
        .await;
    let huge = format!(
        r#"{{"Code":3000,"Message":"{}"}}"#,
        "x".repeat(10 * 1024 * 1024)
    );
    Mock::given(method("GET"))
        .and(query_param("workOrderId", "2"))
        .respond_with(ResponseTemplate::new(400).set_body_string(huge))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(query_param("workOrderId", "3"))
        .respond_with(ResponseTemplate::new(200).set_body_string("{truncated"))
        .mount(&server)
        .await;
    let gw = Gateway::start(settings_for(&server.uri())).await;
    let mut c = gw.client();

    let err = c.list_attachments(list(1)).await.expect_err("html");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        error_metadata(&err)
            .get("upstream_message")
            .map(String::as_str),
        Some("<html>not json</html>")
    );

    // 10 MB error body: only a bounded prefix is read (not JSON then), status by HTTP code.
    let err = c.list_attachments(list(2)).await.expect_err("huge");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().len() < 4096,
        "message stays small: {}",
        err.message().len()
    );

    let err = c.list_attachments(list(3)).await.expect_err("bad json");
    assert_eq!(err.code(), Code::Internal);
    assert_eq!(error_reason(&err), "UPSTREAM_BAD_ANSWER");
}

#[tokio::test]
async fn tolerant_list_shapes() {
    let server = MockServer::start().await;
    mock_token(&server, "tok").await;
    Mock::given(method("GET"))
        .and(query_param("workOrderId", "5"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "Attachments": [
                {"attachmentId": "a-1", "name": "x.pdf", "mimeType": "application/pdf", "size": "12",
                 "DocumentType": "ServiceContract", "Subtype": "Contract", "Brand": {"new": true}},
                {"Id": "a-2"},
                {"NoId": true}
            ],
            "Count": 3
        })))
        .mount(&server)
        .await;
    let gw = Gateway::start(settings_for(&server.uri())).await;
    let r = gw
        .client()
        .list_attachments(list(5))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(r.attachments.len(), 2, "entries without an id are skipped");
    let a = &r.attachments[0];
    assert_eq!(
        (a.attachment_id.as_str(), a.size_bytes, a.subtype.as_str()),
        ("a-1", 12, "Contract")
    );
    assert_eq!(
        a.document_type,
        attachment_gateway::proto::DocumentType::ServiceContract as i32
    );
    assert!(
        a.upstream
            .as_ref()
            .expect("raw")
            .fields
            .contains_key("Brand")
    );
    assert_eq!(r.attachments[1].name, "");
}

#[tokio::test]
async fn a_401_refreshes_the_token_once_and_retries() {
    let server = MockServer::start().await;
    // First token "old", then "new".
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "old", "expires_in": 1199})),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "new", "expires_in": 1199})),
        )
        .with_priority(2)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(header("authorization", "Bearer old"))
        .respond_with(ResponseTemplate::new(401))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(header("authorization", "Bearer new"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .expect(2)
        .mount(&server)
        .await;
    let gw = Gateway::start(settings_for(&server.uri())).await;
    let mut c = gw.client();
    let r = c
        .list_attachments(list(1))
        .await
        .expect("retried with a new token");
    assert!(r.into_inner().attachments.is_empty());
    c.list_attachments(list(1))
        .await
        .expect("the new token is cached");
    server.verify().await;
}

#[tokio::test]
async fn a_401_that_survives_a_refresh_is_the_gateways_problem() {
    let server = MockServer::start().await;
    mock_token(&server, "tok").await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(401))
        .expect(2)
        .mount(&server)
        .await;
    let gw = Gateway::start(settings_for(&server.uri())).await;
    let err = gw
        .client()
        .list_attachments(list(1))
        .await
        .expect_err("401");
    assert_eq!(err.code(), Code::Internal, "never UNAUTHENTICATED: {err:?}");
    assert_eq!(error_reason(&err), "GATEWAY_CREDENTIALS_REJECTED");
}

#[tokio::test]
async fn the_token_endpoint_refusing_credentials_is_internal() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(ResponseTemplate::new(400).set_body_json(json!({"error": "invalid_client"})))
        .mount(&server)
        .await;
    let gw = Gateway::start(settings_for(&server.uri())).await;
    let err = gw
        .client()
        .list_attachments(list(1))
        .await
        .expect_err("refused");
    assert_eq!(err.code(), Code::Internal);
    assert_eq!(error_reason(&err), "GATEWAY_CREDENTIALS_REJECTED");
    assert!(!err.message().contains("test-secret-value"));
}

#[tokio::test]
async fn token_endpoint_garbage_and_outage() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(ResponseTemplate::new(200).set_body_string("<html>login</html>"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(ResponseTemplate::new(503))
        .with_priority(2)
        .mount(&server)
        .await;
    let gw = Gateway::start(settings_for(&server.uri())).await;
    let mut c = gw.client();
    let err = c.list_attachments(list(1)).await.expect_err("garbage");
    assert_eq!(err.code(), Code::Internal);
    assert_eq!(error_reason(&err), "UPSTREAM_BAD_ANSWER");
    let err = c.list_attachments(list(1)).await.expect_err("down");
    assert_eq!(err.code(), Code::Unavailable);
}

#[tokio::test]
async fn one_token_request_however_many_calls_wait() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/oauth/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"access_token": "tok", "expires_in": 1199}))
                .set_delay(Duration::from_millis(300)),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(header("authorization", "Bearer tok"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
        .expect(40)
        .mount(&server)
        .await;
    let gw = Gateway::start(settings_for(&server.uri())).await;
    let calls: Vec<_> = (0..40)
        .map(|_| {
            let mut c = gw.client();
            tokio::spawn(async move { c.list_attachments(list(1)).await })
        })
        .collect();
    for call in calls {
        call.await.expect("task").expect("list");
    }
    server.verify().await;
}

#[tokio::test]
async fn the_callers_deadline_bounds_the_upstream_call() {
    let server = MockServer::start().await;
    mock_token(&server, "tok").await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!([]))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&server)
        .await;
    let gw = Gateway::start(settings_for(&server.uri())).await;
    let mut req = list(1);
    req.set_timeout(Duration::from_millis(400));
    let started = std::time::Instant::now();
    let err = gw
        .client()
        .list_attachments(req)
        .await
        .expect_err("deadline");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert_eq!(
        error_reason(&err),
        "DEADLINE_EXCEEDED",
        "the gateway's own status, with details"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn the_gateways_default_timeout_applies_without_a_deadline() {
    let server = MockServer::start().await;
    mock_token(&server, "tok").await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!([]))
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&server)
        .await;
    let mut s = settings_for(&server.uri());
    s.upstream.request_timeout = Duration::from_millis(300);
    let gw = Gateway::start(s).await;
    let err = gw
        .client()
        .list_attachments(list(1))
        .await
        .expect_err("timeout");
    assert_eq!(err.code(), Code::DeadlineExceeded);
}

#[tokio::test]
async fn an_unreachable_upstream_is_unavailable() {
    // A port that was just free: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let gw = Gateway::start(settings_for(&format!("http://127.0.0.1:{port}"))).await;
    let err = gw
        .client()
        .list_attachments(list(1))
        .await
        .expect_err("down");
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(error_reason(&err), "UPSTREAM_UNREACHABLE");
    assert!(retry_delay(&err).is_some());
}

#[tokio::test]
async fn the_download_host_never_gets_the_bearer_token() {
    let server = MockServer::start().await;
    mock_token(&server, "secret-bearer").await;
    let file_url = format!("{}/blob/abc?sig=s3cr3t-signature", server.uri());
    Mock::given(method("GET"))
        .and(path("/Direct/api/attachments/downloadUrl"))
        .and(query_param("AttachmentId", "abc"))
        .and(query_param("WorkOrderId", "7"))
        .and(header("authorization", "Bearer secret-bearer"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!(file_url)))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/blob/abc"))
        .and(header_exists("authorization"))
        .respond_with(ResponseTemplate::new(400))
        .expect(0)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/blob/abc"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("Content-Type", "application/pdf")
                .insert_header(
                    "Content-Disposition",
                    "attachment; filename=\"invoice 7.pdf\"",
                )
                .set_body_bytes(pattern(1_000_000, 9)),
        )
        .expect(1)
        .mount(&server)
        .await;
    let gw = Gateway::start(settings_for(&server.uri())).await;
    let mut c = gw.client();
    let link = c
        .get_download_url(GetDownloadUrlRequest {
            work_order_id: 7,
            attachment_id: "abc".into(),
        })
        .await
        .expect("link")
        .into_inner();
    assert_eq!(link.url, file_url, "a bare JSON string answer is accepted");
    let mut s = c
        .download_attachment(DownloadAttachmentRequest {
            work_order_id: 7,
            attachment_id: "abc".into(),
            ..Default::default()
        })
        .await
        .expect("download")
        .into_inner();
    let Some(Down::Metadata(m)) = s.message().await.expect("m").expect("some").payload else {
        panic!("metadata first");
    };
    assert_eq!(
        (m.name.as_str(), m.mime_type.as_str(), m.size_bytes),
        ("invoice 7.pdf", "application/pdf", 1_000_000)
    );
    let mut got = Vec::new();
    while let Some(msg) = s.message().await.expect("chunk") {
        if let Some(Down::Chunk(b)) = msg.payload {
            got.extend_from_slice(&b);
        }
    }
    assert_eq!(got, pattern(1_000_000, 9));
    server.verify().await;
}

#[tokio::test]
async fn a_download_that_breaks_off_ends_with_an_error() {
    let server = MockServer::start().await;
    mock_token(&server, "tok").await;
    let file_url = format!("{}/blob/x", server.uri());
    Mock::given(method("GET"))
        .and(path("/Direct/api/attachments/downloadUrl"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"DownloadUrl": file_url})))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/blob/x"))
        .respond_with(ResponseTemplate::new(404).set_body_string("gone"))
        .mount(&server)
        .await;
    let gw = Gateway::start(settings_for(&server.uri())).await;
    let err = gw
        .client()
        .download_attachment(DownloadAttachmentRequest {
            work_order_id: 7,
            attachment_id: "x".into(),
            ..Default::default()
        })
        .await
        .expect_err("404 from storage");
    assert_eq!(err.code(), Code::NotFound);
}

/// The error paths of the two streaming calls end with a status that carries
/// ErrorInfo and `retry_safe`, like every other.
#[tokio::test]
async fn streaming_error_paths_carry_details() {
    // The upstream answers an upload before its last byte.
    let tokens = MockServer::start().await;
    mock_token(&tokens, "tok").await;
    let early = raw_http_server(
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 21\r\nconnection: close\r\n\r\n{\"AttachmentId\": \"x\"}"
            .to_vec(),
    )
    .await;
    let mut s = settings_for(&tokens.uri());
    s.upstream.base_url = format!("{early}/Direct");
    let gw = Gateway::start(s).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(meta_msg(metadata(1, "a.bin"))).await.expect("send");
    tx.send(chunk_msg(vec![1u8; 1000])).await.expect("send");
    let err = gw
        .client()
        .upload_attachment(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect_err("answered before the last byte");
    drop(tx);
    assert_eq!(err.code(), Code::Internal, "{err:?}");
    assert_eq!(error_reason(&err), "UPSTREAM_ANSWERED_EARLY");
    assert_eq!(
        error_metadata(&err).get("retry_safe").map(String::as_str),
        Some("unknown")
    );

    // A download whose body breaks off after part of its bytes.
    let server = MockServer::start().await;
    mock_token(&server, "tok").await;
    let mut cut = b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: 100000\r\n\r\n".to_vec();
    cut.extend(std::iter::repeat_n(7u8, 1000));
    let blob = raw_http_server(cut).await;
    Mock::given(method("GET"))
        .and(path("/Direct/api/attachments/downloadUrl"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"DownloadUrl": format!("{blob}/f")})),
        )
        .mount(&server)
        .await;
    let gw = Gateway::start(settings_for(&server.uri())).await;
    let mut stream = gw
        .client()
        .download_attachment(DownloadAttachmentRequest {
            work_order_id: 7,
            attachment_id: "x".into(),
            ..Default::default()
        })
        .await
        .expect("the download starts")
        .into_inner();
    let err = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("a download cut short must not end cleanly"),
            Err(e) => break e,
        }
    };
    assert_ne!(err.code(), Code::Ok);
    assert_details(&err);
}

#[tokio::test]
async fn an_upload_refused_for_its_token_says_retry_is_safe() {
    let server = MockServer::start().await;
    mock_token(&server, "tok").await;
    Mock::given(method("POST"))
        .and(path("/Direct/api/attachments"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&server)
        .await;
    let gw = Gateway::start(settings_for(&server.uri())).await;
    let err = gw
        .client()
        .upload_attachment(tokio_stream::iter(upload_messages(
            metadata(1, "a.txt"),
            b"hello",
            5,
        )))
        .await
        .expect_err("401");
    assert_eq!(err.code(), Code::Unavailable);
    assert_eq!(error_reason(&err), "UPSTREAM_TOKEN_REFRESHED");
    assert_eq!(
        error_metadata(&err).get("retry_safe").map(String::as_str),
        Some("true")
    );
    assert_eq!(retry_delay(&err), Some(Duration::ZERO));
}

#[tokio::test]
async fn upload_form_fields_are_the_upstreams() {
    let server = MockServer::start().await;
    mock_token(&server, "tok").await;
    Mock::given(method("POST"))
        .and(path("/Direct/api/attachments"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"AttachmentId": "new-id", "MessageId": "m-1"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let gw = Gateway::start(settings_for(&server.uri())).await;
    let mut m = metadata(42, "invoice.pdf");
    m.mime_type = "application/pdf".into();
    m.document_type = attachment_gateway::proto::DocumentType::InvoicePrintout as i32;
    m.message_visibility = attachment_gateway::proto::MessageVisibility::CruLeads as i32;
    m.message_id = "m-1".into();
    m.size_bytes = 5;
    let r = gw
        .client()
        .upload_attachment(tokio_stream::iter(upload_messages(m, b"%PDF-", 5)))
        .await
        .expect("upload")
        .into_inner();
    assert_eq!(r.attachment_id, "new-id");
    let reqs: Vec<WmRequest> = server.received_requests().await.expect("recorded");
    let post = reqs
        .iter()
        .find(|r| r.method.as_str() == "POST" && r.url.path() == "/Direct/api/attachments")
        .expect("post");
    let ct = post
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(ct.starts_with("multipart/form-data; boundary="), "{ct}");
    assert!(
        post.headers.get("content-length").is_some(),
        "declared size: Content-Length sent"
    );
    let body = String::from_utf8_lossy(&post.body);
    for (name, value) in [
        ("WorkOrderId", "42"),
        ("Name", "invoice.pdf"),
        ("MimeType", "application/pdf"),
        ("PerformedBy.Name", "Ana Tech"),
        ("PerformedBy.Phone", "+1 202 555 0141"),
        ("DocumentType", "InvoicePrintout"),
        ("MessageVisibility", "CruLeads"),
        ("MessageId", "m-1"),
    ] {
        let needle = format!("name=\"{name}\"\r\n\r\n{value}\r\n");
        assert!(body.contains(&needle), "missing {name}={value} in\n{body}");
    }
    assert!(
        body.contains("name=\"File\"; filename=\"invoice.pdf\""),
        "{body}"
    );
    assert!(
        body.contains("Content-Type: application/pdf\r\n\r\n%PDF-\r\n"),
        "{body}"
    );
}

/// The upstream's answers are outside data too: an unusual HTTP status is
/// counted by its class, not as a label value of its own.
#[tokio::test]
async fn odd_upstream_statuses_are_counted_by_class() {
    let server = MockServer::start().await;
    mock_token(&server, "tok").await;
    for (wo, status) in [("1", 452u16), ("2", 499), ("3", 598)] {
        Mock::given(method("GET"))
            .and(path("/Direct/api/attachments"))
            .and(wiremock::matchers::query_param("workOrderId", wo))
            .respond_with(ResponseTemplate::new(status))
            .mount(&server)
            .await;
    }
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let admin_addr = admin.local_addr().expect("addr");
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = grpc.local_addr().expect("addr");
    let mut s = settings_for(&server.uri());
    s.upstream.read_attempts = 1;
    let serving = tokio::spawn(attachment_gateway::server::serve_with(
        s,
        attachment_gateway::server::Listeners {
            grpc,
            admin: Some(admin),
            webhooks: None,
        },
        std::sync::Arc::new(attachment_gateway::metrics::Metrics::new()),
        std::future::pending(),
    ));
    let mut c = connect(addr).await;
    for wo in 1..=3 {
        let _ = c.list_attachments(list(wo)).await;
    }
    let text = reqwest::get(format!("http://{admin_addr}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains(r#"status="4xx""#) && text.contains(r#"status="5xx""#),
        "{text}"
    );
    for odd in ["452", "499", "598"] {
        assert!(!text.contains(&format!(r#"status="{odd}""#)), "{text}");
    }
    serving.abort();
}

/// A download link is outside data: it must not lead the gateway to loopback,
/// private or metadata addresses, to plain http, or outside the allowlist, on
/// any hop; nothing is fetched from where it may not go.
#[tokio::test]
async fn download_links_are_held_to_the_link_policy() {
    let server = MockServer::start().await;
    mock_token(&server, "tok").await;
    let port = server.address().port();
    let link = |wo: &str, url: String| {
        Mock::given(method("GET"))
            .and(path("/Direct/api/attachments/downloadUrl"))
            .and(wiremock::matchers::query_param("WorkOrderId", wo))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"DownloadUrl": url})))
    };
    link("1", format!("http://127.0.0.1:{port}/blob"))
        .mount(&server)
        .await;
    link("2", format!("http://localhost:{port}/blob"))
        .mount(&server)
        .await;
    link("3", format!("http://127.0.0.1:{port}/hop"))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/hop"))
        .respond_with(
            ResponseTemplate::new(302)
                .insert_header("location", format!("http://localhost:{port}/blob")),
        )
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/blob"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(b"internal secrets".to_vec()))
        .mount(&server)
        .await;
    let download = |gw: &Gateway, wo: i64| {
        let mut c = gw.client();
        async move {
            let mut s = c
                .download_attachment(DownloadAttachmentRequest {
                    work_order_id: wo,
                    attachment_id: "x".into(),
                    ..Default::default()
                })
                .await?
                .into_inner();
            let mut n = 0;
            while let Some(m) = s.message().await? {
                if let Some(
                    attachment_gateway::proto::download_attachment_response::Payload::Chunk(b),
                ) = m.payload
                {
                    n += b.len();
                }
            }
            Ok::<usize, tonic::Status>(n)
        }
    };
    let blob_fetches = || async {
        server
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .filter(|r| r.url.path() == "/blob")
            .count()
    };
    let refused = |r: Result<usize, tonic::Status>, what: &str| {
        let err = r.expect_err(what);
        assert_eq!(err.code(), Code::FailedPrecondition, "{what}: {err:?}");
        assert_eq!(error_reason(&err), "DOWNLOAD_LINK_REFUSED", "{what}");
        assert!(!err.message().contains("/blob"), "the link is never quoted");
    };

    // The defaults: https to public addresses only.
    let mut s = settings_for(&server.uri());
    s.upstream.allow_private_download_addresses = false;
    s.upstream.allow_http_downloads = false;
    let gw = Gateway::start(s).await;
    refused(download(&gw, 1).await, "plain http to loopback");
    // Plain http allowed, private addresses not: a name that resolves to loopback.
    let mut s = settings_for(&server.uri());
    s.upstream.allow_private_download_addresses = false;
    let gw = Gateway::start(s).await;
    refused(download(&gw, 1).await, "a loopback literal");
    refused(download(&gw, 2).await, "a name resolving to loopback");
    assert_eq!(blob_fetches().await, 0, "nothing was fetched");
    // An allowlist is held on every redirect hop.
    let mut s = settings_for(&server.uri());
    s.upstream.download_hosts = vec!["127.0.0.1".into()];
    let gw = Gateway::start(s).await;
    refused(download(&gw, 3).await, "a hop outside the allowlist");
    assert_eq!(blob_fetches().await, 0, "the hop was not followed");
    assert_eq!(download(&gw, 1).await.expect("an allowed host"), 16);
}

#[test]
fn plain_http_upstreams_must_be_loopback_unless_allowed() {
    let mut s = attachment_gateway::config::Settings::default();
    s.sandbox.enabled = true;
    s.upstream.base_url = "http://api.example.test/Direct".into();
    let err = s.validate().expect_err("plain http").to_string();
    assert!(
        err.contains("upstream.base_url") && err.contains("allow_plain_http"),
        "{err}"
    );
    s.upstream.base_url = "http://127.0.0.1:8080/Direct".into();
    s.upstream.token_url = "http://[::1]:8080/token".into();
    s.validate().expect("loopback");
    s.upstream.token_url = "http://auth.example.test/token".into();
    assert!(s.validate().is_err());
    s.upstream.allow_plain_http = true;
    s.validate().expect("said explicitly");
}

#[tokio::test]
async fn a_download_hosts_error_answer_is_not_passed_on() {
    let server = MockServer::start().await;
    mock_token(&server, "secret-bearer").await;
    let file_url = format!("{}/blob/abc?sig=s3cr3t-signature", server.uri());
    Mock::given(method("GET"))
        .and(path("/Direct/api/attachments/downloadUrl"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!(file_url)))
        .mount(&server)
        .await;
    // A storage host's error quotes the signed request.
    Mock::given(method("GET"))
        .and(path("/blob/abc"))
        .respond_with(ResponseTemplate::new(403).set_body_string(
            "<Error><Code>SignatureDoesNotMatch</Code><AWSAccessKeyId>AKIAEXAMPLE</AWSAccessKeyId>\
             <StringToSign>GET /blob/abc s3cr3t-signature</StringToSign></Error>",
        ))
        .mount(&server)
        .await;
    let gw = Gateway::start(settings_for(&server.uri())).await;
    let err = gw
        .client()
        .download_attachment(DownloadAttachmentRequest {
            work_order_id: 7,
            attachment_id: "abc".into(),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    // Classified by its status, as any upstream answer.
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(
        error_metadata(&err).get("http_status").map(String::as_str),
        Some("403")
    );
    let everything = format!("{err:?}");
    for secret in ["AKIAEXAMPLE", "s3cr3t-signature", "StringToSign"] {
        assert!(
            !everything.contains(secret),
            "{secret} passed on: {everything}"
        );
    }
}
