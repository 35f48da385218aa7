//! Bad input gets INVALID_ARGUMENT naming the field, and nothing reaches the upstream.

use crate::common::*;
use attachment_gateway::proto::{
    DeleteAttachmentRequest, DownloadAttachmentRequest, GetDownloadUrlRequest,
    ListAttachmentsRequest, Person, UpdateAttachmentRequest, UploadAttachmentRequest,
    UploadMetadata,
};
use tonic::Code;

async fn upload(c: &mut Client, msgs: Vec<UploadAttachmentRequest>) -> Result<(), tonic::Status> {
    c.upload_attachment(tokio_stream::iter(msgs))
        .await
        .map(|_| ())
}

#[tokio::test]
async fn metadata_fields_are_checked_before_any_upstream_byte() {
    let h = with_sandbox().await;
    let mut c = h.gateway.client();
    let ok = || metadata(1001, "photo.jpg");
    let cases: Vec<(UploadMetadata, &str, &str)> = vec![
        (
            UploadMetadata {
                work_order_id: 0,
                ..ok()
            },
            "metadata.work_order_id",
            "OUT_OF_RANGE",
        ),
        (
            UploadMetadata {
                work_order_id: -3,
                ..ok()
            },
            "metadata.work_order_id",
            "OUT_OF_RANGE",
        ),
        (
            UploadMetadata {
                name: String::new(),
                ..ok()
            },
            "metadata.name",
            "REQUIRED",
        ),
        (
            UploadMetadata {
                name: "photo".into(),
                ..ok()
            },
            "metadata.name",
            "MISSING_EXTENSION",
        ),
        (
            UploadMetadata {
                name: "../etc/passwd.txt".into(),
                ..ok()
            },
            "metadata.name",
            "INVALID_CHARACTERS",
        ),
        (
            UploadMetadata {
                name: "a\u{7}b.jpg".into(),
                ..ok()
            },
            "metadata.name",
            "INVALID_CHARACTERS",
        ),
        (
            UploadMetadata {
                name: format!("{}.jpg", "n".repeat(252)),
                ..ok()
            },
            "metadata.name",
            "TOO_LONG",
        ),
        (
            UploadMetadata {
                mime_type: String::new(),
                ..ok()
            },
            "metadata.mime_type",
            "REQUIRED",
        ),
        (
            UploadMetadata {
                mime_type: "jpeg".into(),
                ..ok()
            },
            "metadata.mime_type",
            "INVALID_FORMAT",
        ),
        (
            UploadMetadata {
                performed_by: None,
                ..ok()
            },
            "metadata.performed_by.name",
            "REQUIRED",
        ),
        (
            UploadMetadata {
                performed_by: Some(Person {
                    name: "x".repeat(101),
                    phone: String::new(),
                }),
                ..ok()
            },
            "metadata.performed_by.name",
            "TOO_LONG",
        ),
        (
            UploadMetadata {
                performed_by: Some(Person {
                    name: "Ana".into(),
                    phone: "5".repeat(33),
                }),
                ..ok()
            },
            "metadata.performed_by.phone",
            "TOO_LONG",
        ),
        (
            UploadMetadata {
                message_id: "m".repeat(37),
                ..ok()
            },
            "metadata.message_id",
            "TOO_LONG",
        ),
        (
            UploadMetadata {
                message_id: "has space".into(),
                ..ok()
            },
            "metadata.message_id",
            "INVALID_CHARACTERS",
        ),
        (
            UploadMetadata {
                document_type: 42,
                ..ok()
            },
            "metadata.document_type",
            "UNKNOWN_ENUM_VALUE",
        ),
        (
            UploadMetadata {
                message_visibility: -1,
                ..ok()
            },
            "metadata.message_visibility",
            "UNKNOWN_ENUM_VALUE",
        ),
        (
            UploadMetadata {
                size_bytes: 20 * 1024 * 1024 + 1,
                ..ok()
            },
            "metadata.size_bytes",
            "FILE_TOO_LARGE",
        ),
    ];
    for (m, field, reason) in cases {
        let err = upload(&mut c, vec![meta_msg(m), chunk_msg(&b"data"[..])])
            .await
            .expect_err(field);
        assert_invalid(&err, field, reason);
    }
    // Limits themselves are accepted: 100-char name, 36-char message id.
    let edge = UploadMetadata {
        performed_by: Some(Person {
            name: "p".repeat(100),
            phone: "5".repeat(32),
        }),
        message_id: "m".repeat(36),
        ..ok()
    };
    upload(&mut c, vec![meta_msg(edge), chunk_msg(&b"data"[..])])
        .await
        .expect("values at their limits are accepted");
    let st = h.sandbox.stats();
    assert_eq!(
        st.uploads_started, 1,
        "only the valid upload reached the upstream"
    );
}

#[tokio::test]
async fn every_bad_field_is_reported_at_once() {
    let h = with_sandbox().await;
    let mut c = h.gateway.client();
    let m = UploadMetadata {
        work_order_id: 0,
        name: "noext".into(),
        mime_type: String::new(),
        performed_by: None,
        ..UploadMetadata::default()
    };
    let err = upload(&mut c, vec![meta_msg(m), chunk_msg(&b"x"[..])])
        .await
        .expect_err("bad");
    let fields: Vec<String> = violations(&err).into_iter().map(|(f, _)| f).collect();
    assert_eq!(
        fields,
        [
            "metadata.work_order_id",
            "metadata.name",
            "metadata.mime_type",
            "metadata.performed_by.name"
        ]
    );
}

#[tokio::test]
async fn stream_shape_errors() {
    let h = with_sandbox().await;
    let mut c = h.gateway.client();
    let m = || meta_msg(metadata(1001, "photo.jpg"));

    let err = upload(&mut c, vec![]).await.expect_err("no messages");
    assert_invalid(&err, "metadata", "MISSING_METADATA");

    let err = upload(&mut c, vec![chunk_msg(&b"abc"[..]), m()])
        .await
        .expect_err("chunk first");
    assert_invalid(&err, "metadata", "MISSING_METADATA");

    let err = upload(&mut c, vec![m(), m(), chunk_msg(&b"abc"[..])])
        .await
        .expect_err("two metadata");
    assert_invalid(&err, "metadata", "DUPLICATE_METADATA");

    let err = upload(&mut c, vec![m()]).await.expect_err("empty file");
    assert_invalid(&err, "chunk", "EMPTY_FILE");

    let err = upload(
        &mut c,
        vec![
            m(),
            chunk_msg(Vec::<u8>::new()),
            chunk_msg(Vec::<u8>::new()),
        ],
    )
    .await
    .expect_err("only empty chunks");
    assert_invalid(&err, "chunk", "EMPTY_FILE");

    let err = upload(&mut c, vec![m(), UploadAttachmentRequest { payload: None }])
        .await
        .expect_err("empty message");
    assert_invalid(&err, "payload", "REQUIRED");

    assert_eq!(
        h.sandbox.stats().uploads_started,
        0,
        "none of these reached the upstream"
    );

    // Metadata after bytes have started flowing: refused, and the upstream request aborted.
    let err = upload(&mut c, vec![m(), chunk_msg(&b"abc"[..]), m()])
        .await
        .expect_err("late metadata");
    assert_invalid(&err, "metadata", "DUPLICATE_METADATA");
    nothing_stored(&h.sandbox).await;
    assert_eq!(
        h.sandbox.attachments(1001).len(),
        1,
        "only the seeded attachment"
    );
}

#[tokio::test]
async fn oversize_is_refused_at_the_byte_that_crosses_the_limit() {
    let h = with_sandbox_and(Default::default(), |s| s.limits.max_upload_bytes = 100_000).await;
    let mut c = h.gateway.client();
    // 100,000 bytes in 10 kB chunks, then one more byte.
    let mut msgs = upload_messages(metadata(1001, "big.bin"), &pattern(100_000, 1), 10_000);
    msgs.push(chunk_msg(&b"!"[..]));
    let err = upload(&mut c, msgs).await.expect_err("over the limit");
    assert_invalid(&err, "chunk", "FILE_TOO_LARGE");
    assert!(err.message().contains("byte 100001"), "{}", err.message());
    nothing_stored(&h.sandbox).await;
    assert_eq!(
        h.sandbox.attachments(1001).len(),
        1,
        "nothing partial stored"
    );
}

#[tokio::test]
async fn declared_size_must_match_the_stream() {
    let h = with_sandbox().await;
    let mut c = h.gateway.client();
    // Fewer bytes than declared.
    let mut m = metadata(1001, "short.bin");
    m.size_bytes = 1000;
    let err = upload(&mut c, upload_messages(m, &pattern(999, 2), 100))
        .await
        .expect_err("short");
    assert_invalid(&err, "metadata.size_bytes", "SIZE_MISMATCH");
    // More bytes than declared: refused at byte 1001.
    let mut m = metadata(1001, "long.bin");
    m.size_bytes = 1000;
    let err = upload(&mut c, upload_messages(m, &pattern(1001, 2), 100))
        .await
        .expect_err("long");
    assert_invalid(&err, "metadata.size_bytes", "SIZE_MISMATCH");
    assert!(err.message().contains("byte 1001"), "{}", err.message());
    nothing_stored(&h.sandbox).await;
}

#[tokio::test]
async fn a_message_above_the_transport_limit_names_the_chunk() {
    let h = with_sandbox_and(Default::default(), |s| {
        s.limits.max_chunk_bytes = 1024 * 1024
    })
    .await;
    let mut c = h.gateway.client();
    let err = upload(
        &mut c,
        vec![
            meta_msg(metadata(1001, "huge-chunk.bin")),
            chunk_msg(pattern(2 * 1024 * 1024, 1)),
        ],
    )
    .await
    .expect_err("2 MiB message over a 1 MiB chunk limit");
    assert_invalid(&err, "chunk", "MESSAGE_TOO_LARGE");
    nothing_stored(&h.sandbox).await;
}

#[tokio::test]
async fn unary_requests_are_validated() {
    let h = with_sandbox().await;
    let mut c = h.gateway.client();
    let err = c
        .list_attachments(ListAttachmentsRequest {
            work_order_id: 0,
            ..Default::default()
        })
        .await
        .expect_err("wo");
    assert_invalid(&err, "work_order_id", "OUT_OF_RANGE");

    let err = c
        .list_attachments(ListAttachmentsRequest {
            work_order_id: 1001,
            view: 9,
        })
        .await
        .expect_err("view");
    assert_invalid(&err, "view", "UNKNOWN_ENUM_VALUE");
    // Every bad field at once.
    let err = c
        .list_attachments(ListAttachmentsRequest {
            work_order_id: -1,
            view: -2,
        })
        .await
        .expect_err("both");
    assert_invalid(&err, "work_order_id", "OUT_OF_RANGE");
    assert_invalid(&err, "view", "UNKNOWN_ENUM_VALUE");

    let err = c
        .get_download_url(GetDownloadUrlRequest {
            work_order_id: 1001,
            attachment_id: String::new(),
        })
        .await
        .expect_err("id");
    assert_invalid(&err, "attachment_id", "REQUIRED");

    let err = c
        .download_attachment(DownloadAttachmentRequest {
            work_order_id: 1001,
            attachment_id: "a".repeat(37),
            ..Default::default()
        })
        .await
        .expect_err("id");
    assert_invalid(&err, "attachment_id", "TOO_LONG");

    let err = c
        .update_attachment(UpdateAttachmentRequest {
            work_order_id: 1001,
            attachment_id: "x y".into(),
            name: "noext".into(),
            document_type: 99,
            message_visibility: 0,
            message_id: String::new(),
        })
        .await
        .expect_err("update");
    assert_eq!(err.code(), Code::InvalidArgument);
    let fields: Vec<String> = violations(&err).into_iter().map(|(f, _)| f).collect();
    assert_eq!(fields, ["attachment_id", "name", "document_type"]);

    let err = c
        .delete_attachment(DeleteAttachmentRequest {
            work_order_id: -1,
            attachment_id: "abc".into(),
            message_id: "m".repeat(40),
        })
        .await
        .expect_err("delete");
    let fields: Vec<String> = violations(&err).into_iter().map(|(f, _)| f).collect();
    assert_eq!(fields, ["work_order_id", "message_id"]);
    assert_eq!(
        h.sandbox.stats().api_requests,
        0,
        "nothing reached the upstream"
    );
}
