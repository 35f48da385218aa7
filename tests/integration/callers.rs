//! Callers hurting each other: the record of writes is per caller and per request,
//! and no caller can hold every upload or download slot. Real callers with API keys
//! against the sandbox, over loopback.

use std::time::Duration;

use crate::common::*;
use attachment_gateway::config::Settings;
use attachment_gateway::proto::{
    DeleteAttachmentRequest, DownloadAttachmentRequest, ListAttachmentsRequest,
    UploadAttachmentRequest,
};
use attachment_gateway::sandbox::Sandbox;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request};

const KEYS: &[(&str, &str, &[&str])] = &[
    (
        "svc-one",
        "key-one",
        &["attachments.read", "attachments.write"],
    ),
    (
        "svc-two",
        "key-two",
        &["attachments.read", "attachments.write"],
    ),
];

/// A sandbox and a gateway whose callers are `svc-one` and `svc-two` (API keys).
async fn two_callers(tweak: impl FnOnce(&mut Settings)) -> (Sandbox, Gateway, tempfile::TempDir) {
    let dir = scratch("callers");
    let file = dir.path().join("keys.toml");
    write_keys(&file, KEYS);
    let sandbox = Sandbox::start(Default::default()).await.expect("sandbox");
    let mut s = base_settings();
    s.auth.allow_unauthenticated = false;
    s.auth.api_keys.file = Some(file);
    s.upstream = sandbox.upstream_settings(&s.upstream);
    tweak(&mut s);
    (sandbox, Gateway::start(s).await, dir)
}

fn as_caller<T>(key: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("x-api-key", MetadataValue::try_from(key).expect("ascii"));
    r
}

fn upload(
    key: &str,
    name: &str,
    message_id: &str,
    data: &[u8],
) -> Request<tokio_stream::Iter<std::vec::IntoIter<UploadAttachmentRequest>>> {
    let mut m = metadata(1005, name);
    m.message_id = message_id.into();
    as_caller(key, tokio_stream::iter(upload_messages(m, data, 4096)))
}

#[tokio::test]
async fn the_same_message_id_from_two_callers_is_two_uploads() {
    let (sb, gw, _dir) = two_callers(|_| {}).await;
    let mut c = gw.client();
    let one = c
        .upload_attachment(upload(
            "key-one",
            "invoice-42.pdf",
            "invoice-42",
            b"one's file",
        ))
        .await
        .expect("svc-one")
        .into_inner();
    let two = c
        .upload_attachment(upload(
            "key-two",
            "invoice-42.pdf",
            "invoice-42",
            b"two's file",
        ))
        .await
        .expect("svc-two")
        .into_inner();
    assert_ne!(
        one.attachment_id, two.attachment_id,
        "each caller gets its own receipt"
    );
    assert_eq!(two.sha256, sha256_hex(b"two's file"));
    let stored = sb.attachments(1005);
    assert_eq!(stored.len(), 2, "both uploads stored");
}

#[tokio::test]
async fn a_message_id_reused_for_another_file_is_refused_and_the_same_file_replayed() {
    let (sb, gw, _dir) = two_callers(|_| {}).await;
    let mut c = gw.client();
    let first = c
        .upload_attachment(upload("key-one", "report.pdf", "report-7", b"version 1"))
        .await
        .expect("first")
        .into_inner();
    // A retry of the same file: the first answer, nothing new upstream.
    let again = c
        .upload_attachment(upload("key-one", "report.pdf", "report-7", b"version 1"))
        .await
        .expect("replay")
        .into_inner();
    assert_eq!(again, first);
    // Another file (same name, other bytes) under the same id: refused.
    let err = c
        .upload_attachment(upload("key-one", "report.pdf", "report-7", b"version 2"))
        .await
        .expect_err("another file under a used id");
    assert_invalid(&err, "metadata.message_id", "MESSAGE_ID_REUSED");
    assert_details(&err);
    // Other metadata under the same id: refused too.
    let err = c
        .upload_attachment(upload("key-one", "other.pdf", "report-7", b"version 1"))
        .await
        .expect_err("another name under a used id");
    assert_invalid(&err, "metadata.message_id", "MESSAGE_ID_REUSED");
    assert_eq!(
        sb.attachments(1005).len(),
        1,
        "only the first upload is stored"
    );
}

#[tokio::test]
async fn a_delete_message_id_reused_for_another_attachment_is_refused() {
    let (sb, gw, _dir) = two_callers(|_| {}).await;
    let mut c = gw.client();
    let a = c
        .upload_attachment(upload("key-one", "a.txt", "", b"a"))
        .await
        .expect("a")
        .into_inner();
    let b = c
        .upload_attachment(upload("key-one", "b.txt", "", b"b"))
        .await
        .expect("b")
        .into_inner();
    let delete = |id: &str| {
        as_caller(
            "key-one",
            DeleteAttachmentRequest {
                work_order_id: 1005,
                attachment_id: id.into(),
                message_id: "cleanup-1".into(),
            },
        )
    };
    let first = c
        .delete_attachment(delete(&a.attachment_id))
        .await
        .expect("delete a")
        .into_inner();
    let replay = c
        .delete_attachment(delete(&a.attachment_id))
        .await
        .expect("a retried delete gets the first answer, not NOT_FOUND")
        .into_inner();
    assert_eq!(replay, first);
    let err = c
        .delete_attachment(delete(&b.attachment_id))
        .await
        .expect_err("delete of b with a's message id");
    assert_invalid(&err, "message_id", "MESSAGE_ID_REUSED");
    let left: Vec<String> = sb
        .attachments(1005)
        .into_iter()
        .map(|x| x.attachment_id)
        .collect();
    assert_eq!(left, vec![b.attachment_id], "b is still there");
}

/// An upload stream that says nothing holds no slot, and is ended quickly.
#[tokio::test]
async fn an_upload_that_sends_nothing_holds_no_slot_and_ends_soon() {
    let (_sb, gw, _dir) = two_callers(|s| {
        s.rate_limit.max_concurrent_uploads = 1;
        s.limits.upload_first_message_timeout = Duration::from_millis(500);
    })
    .await;
    let (silent_tx, silent_rx) = mpsc::channel::<UploadAttachmentRequest>(1);
    let mut c = gw.client();
    let silent = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let r = c
            .upload_attachment(as_caller("key-one", ReceiverStream::new(silent_rx)))
            .await;
        (r, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    gw.client()
        .upload_attachment(upload("key-two", "meanwhile.txt", "", b"served"))
        .await
        .expect("the only slot is free while the silent stream waits");
    let (r, took) = silent.await.expect("task");
    let err = r.expect_err("nothing sent");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert_eq!(error_reason(&err), "STREAM_IDLE");
    assert!(took < Duration::from_secs(3), "{took:?}");
    drop(silent_tx);
}

/// One caller cannot hold every upload slot.
#[tokio::test]
async fn one_caller_cannot_hold_every_upload_slot() {
    let (_sb, gw, _dir) = two_callers(|s| {
        s.rate_limit.max_concurrent_uploads = 4;
        s.rate_limit.max_concurrent_uploads_per_caller = 2;
    })
    .await;
    let mut holders = Vec::new();
    let mut calls = Vec::new();
    for i in 0..2 {
        let (tx, rx) = mpsc::channel(2);
        tx.send(meta_msg(metadata(1005, &format!("held{i}.bin"))))
            .await
            .expect("send");
        let mut c = gw.client();
        calls.push(tokio::spawn(async move {
            c.upload_attachment(as_caller("key-one", ReceiverStream::new(rx)))
                .await
        }));
        holders.push(tx);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = gw
        .client()
        .upload_attachment(upload("key-one", "third.txt", "", b"x"))
        .await
        .expect_err("svc-one's third upload");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(
        error_metadata(&err).get("limit").map(String::as_str),
        Some("concurrent_uploads_per_caller")
    );
    gw.client()
        .upload_attachment(upload("key-two", "other.txt", "", b"y"))
        .await
        .expect("svc-two still uploads");
    drop(holders);
    for c in calls {
        let _ = c.await;
    }
}

/// Downloads are bounded per caller and for the replica.
#[tokio::test]
async fn downloads_are_bounded_per_caller_and_in_all() {
    let (_sb, gw, _dir) = two_callers(|s| {
        s.rate_limit.max_concurrent_downloads = 3;
        s.rate_limit.max_concurrent_downloads_per_caller = 2;
    })
    .await;
    let mut c = gw.client();
    // A file large enough that a download not read by its caller stays open.
    let big = pattern(8 * 1024 * 1024, 1);
    let up = c
        .upload_attachment(upload("key-one", "big.bin", "", &big))
        .await
        .expect("upload")
        .into_inner();
    let download = |key: &str| {
        as_caller(
            key,
            DownloadAttachmentRequest {
                work_order_id: 1005,
                attachment_id: up.attachment_id.clone(),
                ..Default::default()
            },
        )
    };
    // Opened and never read: each holds its slot.
    let mut open = Vec::new();
    for _ in 0..2 {
        open.push(
            c.download_attachment(download("key-one"))
                .await
                .expect("opened"),
        );
    }
    let err = c
        .download_attachment(download("key-one"))
        .await
        .expect_err("svc-one's third download");
    assert_eq!(
        error_metadata(&err).get("limit").map(String::as_str),
        Some("concurrent_downloads_per_caller"),
        "{err:?}"
    );
    open.push(
        c.download_attachment(download("key-two"))
            .await
            .expect("svc-two's first"),
    );
    let err = c
        .download_attachment(download("key-two"))
        .await
        .expect_err("the replica's bound");
    assert_eq!(
        error_metadata(&err).get("limit").map(String::as_str),
        Some("concurrent_downloads")
    );
    assert_details(&err);
    // Finished downloads give their slots back.
    drop(open);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut s = c
        .download_attachment(download("key-two"))
        .await
        .expect("a slot again")
        .into_inner();
    let mut n = 0usize;
    while let Some(m) = s.message().await.expect("bytes") {
        if let Some(attachment_gateway::proto::download_attachment_response::Payload::Chunk(b)) =
            m.payload
        {
            n += b.len();
        }
    }
    assert_eq!(n, big.len());
    let _ = c
        .list_attachments(as_caller(
            "key-one",
            ListAttachmentsRequest {
                work_order_id: 1005,
                ..Default::default()
            },
        ))
        .await
        .expect("unary calls are not bounded by these");
}
