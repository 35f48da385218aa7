//! Every RPC's happy path, through the generated client, against the sandbox.

use std::time::{Duration, SystemTime};

use crate::common::*;
use attachment_gateway::proto::download_attachment_response::Payload as Down;
use attachment_gateway::proto::{
    Attachment, AttachmentView, DeleteAttachmentRequest, DocumentType, DownloadAttachmentRequest,
    GetDownloadUrlRequest, ListAttachmentsRequest, MessageVisibility, UpdateAttachmentRequest,
};
use tonic::Code;

#[tokio::test]
async fn upload_list_download_update_delete() {
    let h = with_sandbox().await;
    let mut c = h.gateway.client();
    let data = pattern(300_000, 7);

    // Upload, chunked without a declared size.
    let mut m = metadata(1002, "boiler-after.jpg");
    m.mime_type = "image/jpeg".into();
    m.document_type = DocumentType::Picture as i32;
    m.message_visibility = MessageVisibility::CruOnly as i32;
    m.message_id = "msg-upload-1".into();
    let up = c
        .upload_attachment(tokio_stream::iter(upload_messages(m, &data, 64 * 1024)))
        .await
        .expect("upload")
        .into_inner();
    assert_eq!(up.size_bytes, data.len() as u64);
    assert_eq!(up.sha256, sha256_hex(&data));
    assert_eq!(up.message_id, "msg-upload-1");
    assert!(!up.attachment_id.is_empty());

    // The upstream got the exact fields and bytes.
    let stored = h.sandbox.attachments(1002);
    assert_eq!(stored.len(), 1);
    let s = &stored[0];
    assert_eq!(s.attachment_id, up.attachment_id);
    assert_eq!(s.name, "boiler-after.jpg");
    assert_eq!(s.mime_type, "image/jpeg");
    assert_eq!(s.document_type.as_deref(), Some("Picture"));
    assert_eq!(s.visibility, "CruOnly");
    assert_eq!(s.performed_by_name, "Ana Tech");
    assert_eq!(s.performed_by_phone.as_deref(), Some("+1 202 555 0141"));
    assert_eq!(s.message_id, "msg-upload-1");
    assert_eq!(&s.bytes[..], &data[..]);

    // List.
    let list = c
        .list_attachments(ListAttachmentsRequest {
            work_order_id: 1002,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.attachments.len(), 1);
    let a = &list.attachments[0];
    assert_eq!(a.attachment_id, up.attachment_id);
    assert_eq!(a.name, "boiler-after.jpg");
    assert_eq!(a.mime_type, "image/jpeg");
    assert_eq!(a.size_bytes, data.len() as u64);
    assert_eq!(a.document_type, DocumentType::Picture as i32);
    let raw = a.upstream.as_ref().expect("raw upstream object");
    assert!(
        raw.fields.contains_key("CreatedDate"),
        "unknown fields are kept"
    );

    // The views: FULL is what an unset view gives; BASIC the same typed fields
    // without the upstream object.
    let listed = |view: AttachmentView| {
        let mut c = c.clone();
        async move {
            c.list_attachments(ListAttachmentsRequest {
                work_order_id: 1002,
                view: view as i32,
            })
            .await
            .expect("list")
            .into_inner()
            .attachments
        }
    };
    assert_eq!(listed(AttachmentView::Full).await, list.attachments);
    let basic = listed(AttachmentView::Basic).await;
    assert_eq!(basic.len(), 1);
    assert_eq!(basic[0].upstream, None);
    assert_eq!(
        basic[0],
        Attachment {
            upstream: None,
            ..a.clone()
        }
    );

    // Download link: expires about 15 minutes from now.
    let link = c
        .get_download_url(GetDownloadUrlRequest {
            work_order_id: 1002,
            attachment_id: up.attachment_id.clone(),
        })
        .await
        .expect("link")
        .into_inner();
    assert!(link.url.starts_with("http://127.0.0.1:"));
    let expire = link.expire_time.expect("expire_time");
    let expire = SystemTime::UNIX_EPOCH + Duration::from_secs(expire.seconds as u64);
    let left = expire
        .duration_since(SystemTime::now())
        .expect("in the future");
    assert!(
        left > Duration::from_secs(14 * 60) && left <= Duration::from_secs(15 * 60),
        "{left:?}"
    );

    // Download stream: metadata first, then the exact bytes.
    let mut stream = c
        .download_attachment(DownloadAttachmentRequest {
            work_order_id: 1002,
            attachment_id: up.attachment_id.clone(),
            ..Default::default()
        })
        .await
        .expect("download")
        .into_inner();
    let first = stream.message().await.expect("first").expect("some");
    let Some(Down::Metadata(meta)) = first.payload else {
        panic!("first message is not metadata");
    };
    assert_eq!(meta.name, "boiler-after.jpg");
    assert_eq!(meta.mime_type, "image/jpeg");
    assert_eq!(meta.size_bytes, data.len() as u64);
    let mut got = Vec::new();
    let mut chunks = 0;
    while let Some(msg) = stream.message().await.expect("chunk") {
        let Some(Down::Chunk(b)) = msg.payload else {
            panic!("metadata after the first message");
        };
        assert!(b.len() <= 256 * 1024);
        got.extend_from_slice(&b);
        chunks += 1;
    }
    assert_eq!(got, data);
    assert!(chunks >= 2, "300 kB arrive in several chunks");
    let st = h.sandbox.stats();
    assert_eq!(st.downloads, 1);
    assert_eq!(
        st.downloads_with_credentials, 0,
        "the bearer token never goes to the download host"
    );

    // Update the metadata.
    let upd = c
        .update_attachment(UpdateAttachmentRequest {
            work_order_id: 1002,
            attachment_id: up.attachment_id.clone(),
            name: "boiler-fixed.jpg".into(),
            document_type: DocumentType::Misc as i32,
            message_visibility: MessageVisibility::All as i32,
            message_id: String::new(),
        })
        .await
        .expect("update")
        .into_inner();
    assert_eq!(upd.message_id.len(), 36, "a generated UUID");
    let s = &h.sandbox.attachments(1002)[0];
    assert_eq!(s.name, "boiler-fixed.jpg");
    assert_eq!(s.document_type.as_deref(), Some("Misc"));
    assert_eq!(s.visibility, "All");

    // Delete, then it is gone, and a second delete is NOT_FOUND.
    let del = c
        .delete_attachment(DeleteAttachmentRequest {
            work_order_id: 1002,
            attachment_id: up.attachment_id.clone(),
            message_id: "msg-del".into(),
        })
        .await
        .expect("delete")
        .into_inner();
    assert_eq!(del.message_id, "msg-del");
    assert!(h.sandbox.attachments(1002).is_empty());
    let again = c
        .delete_attachment(DeleteAttachmentRequest {
            work_order_id: 1002,
            attachment_id: up.attachment_id.clone(),
            message_id: String::new(),
        })
        .await
        .expect_err("already deleted");
    assert_eq!(again.code(), Code::NotFound);
    assert_eq!(error_reason(&again), "RELATED_ENTITY_NOT_FOUND");
    assert_eq!(
        error_metadata(&again)
            .get("upstream_code")
            .map(String::as_str),
        Some("3003")
    );
}

#[tokio::test]
async fn declared_size_upload_and_the_exact_limit() {
    let h = with_sandbox_and(Default::default(), |s| {
        s.limits.max_upload_bytes = 1_000_000
    })
    .await;
    let mut c = h.gateway.client();
    let data = pattern(1_000_000, 3);
    let mut m = metadata(1001, "exactly-the-limit.bin");
    m.size_bytes = data.len() as u64;
    let up = c
        .upload_attachment(tokio_stream::iter(upload_messages(m, &data, 1024 * 1024)))
        .await
        .expect("an upload of exactly the limit is accepted")
        .into_inner();
    assert_eq!(up.size_bytes, 1_000_000);
    let stored = h.sandbox.attachments(1001);
    let s = stored
        .iter()
        .find(|a| a.attachment_id == up.attachment_id)
        .expect("stored");
    assert_eq!(&s.bytes[..], &data[..]);
    assert_eq!(
        up.message_id.len(),
        36,
        "generated when the caller sent none"
    );
}

#[tokio::test]
async fn one_mebibyte_chunks_and_a_full_twenty_mebibyte_file() {
    let h = with_sandbox().await;
    let mut c = h.gateway.client();
    let data = pattern(20 * 1024 * 1024, 11);
    let up = c
        .upload_attachment(tokio_stream::iter(upload_messages(
            metadata(1005, "site-survey.pdf"),
            &data,
            1024 * 1024,
        )))
        .await
        .expect("20 MiB upload")
        .into_inner();
    assert_eq!(up.size_bytes, data.len() as u64);
    assert_eq!(up.sha256, sha256_hex(&data));
}

#[tokio::test]
async fn concurrent_uploads_all_land_intact() {
    let h = with_sandbox().await;
    let mut tasks = Vec::new();
    for i in 0..16u8 {
        let mut c = h.gateway.client();
        tasks.push(tokio::spawn(async move {
            let data = pattern(50_000 + usize::from(i) * 1000, i);
            let up = c
                .upload_attachment(tokio_stream::iter(upload_messages(
                    metadata(1001, &format!("photo-{i}.jpg")),
                    &data,
                    8 * 1024,
                )))
                .await
                .expect("upload")
                .into_inner();
            (up, data)
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("task"));
    }
    let stored = h.sandbox.attachments(1001);
    for (up, data) in &results {
        let s = stored
            .iter()
            .find(|a| a.attachment_id == up.attachment_id)
            .expect("stored once");
        assert_eq!(&s.bytes[..], &data[..]);
        assert_eq!(up.sha256, sha256_hex(data));
    }
    // The seeded attachment plus the 16 new ones, none twice.
    assert_eq!(stored.len(), 17);
    assert_eq!(
        h.sandbox.stats().token_requests,
        1,
        "one token serves every call"
    );
}

#[tokio::test]
async fn rejected_and_recalled_work_orders_refuse_uploads() {
    let h = with_sandbox().await;
    let mut c = h.gateway.client();
    for wo in [1003, 1004] {
        let err = c
            .upload_attachment(tokio_stream::iter(upload_messages(
                metadata(wo, "late.jpg"),
                b"bytes",
                1024,
            )))
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert_eq!(error_reason(&err), "WORK_ORDER_STATE_INVALID");
        assert!(err.message().contains("status"), "{}", err.message());
        assert!(h.sandbox.attachments(wo).is_empty());
    }
}

#[tokio::test]
async fn unknown_work_order_and_attachment() {
    let h = with_sandbox().await;
    let mut c = h.gateway.client();
    let err = c
        .list_attachments(ListAttachmentsRequest {
            work_order_id: 999_999,
            ..Default::default()
        })
        .await
        .expect_err("no such work order");
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(
        error_metadata(&err)
            .get("upstream_code")
            .map(String::as_str),
        Some("3005")
    );
    let err = c
        .get_download_url(GetDownloadUrlRequest {
            work_order_id: 1001,
            attachment_id: "00000000-0000-0000-0000-000000000000".into(),
        })
        .await
        .expect_err("no such attachment");
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn an_expired_link_is_refused_by_the_download_host() {
    let cfg = attachment_gateway::sandbox::SandboxConfig {
        link_ttl: Duration::from_secs(1),
        ..Default::default()
    };
    let h = with_sandbox_and(cfg, |_| {}).await;
    let mut c = h.gateway.client();
    let link = c
        .get_download_url(GetDownloadUrlRequest {
            work_order_id: 1001,
            attachment_id: "3f2b8c1e-5d4a-4e7b-9c61-0a1b2c3d4e5f".into(),
        })
        .await
        .expect("link")
        .into_inner();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let resp = reqwest::get(&link.url).await.expect("GET");
    assert_eq!(resp.status(), 403, "the sandbox's links expire");
    // DownloadAttachment always asks for a fresh link, so it still works.
    let mut s = c
        .download_attachment(DownloadAttachmentRequest {
            work_order_id: 1001,
            attachment_id: "3f2b8c1e-5d4a-4e7b-9c61-0a1b2c3d4e5f".into(),
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
    assert_eq!(n, 56);
}
