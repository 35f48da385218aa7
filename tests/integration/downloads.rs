//! Ranged and resumable downloads: the gateway asks the link host for the
//! range, skips the bytes itself when the host ignores it, says which range it
//! serves, and answers OUT_OF_RANGE (with the size) past the end; the client
//! library opens a broken download again from its last byte.

use std::time::Duration;

use crate::common::link_host::{Cut, LinkHost};
use crate::common::*;
use attachment_gateway::client::{GatewayClient, NewUpload};
use attachment_gateway::proto::download_attachment_response::Payload as Down;
use attachment_gateway::proto::{ByteRange, DownloadAttachmentRequest};
use tonic::Code;

/// A download's first message's range and its bytes, or its status.
async fn ranged(
    client: &mut Client,
    work_order_id: i64,
    attachment_id: &str,
    offset: u64,
    limit: u64,
) -> Result<(ByteRange, Vec<u8>), tonic::Status> {
    let mut s = client
        .download_attachment(DownloadAttachmentRequest {
            work_order_id,
            attachment_id: attachment_id.into(),
            offset,
            limit,
        })
        .await?
        .into_inner();
    let first = s.message().await?.expect("a first message");
    assert!(
        matches!(first.payload, Some(Down::Metadata(_))),
        "metadata first"
    );
    let range = first.range.expect("the first message says its range");
    let mut bytes = Vec::new();
    while let Some(m) = s.message().await? {
        assert!(m.range.is_none(), "only the first message has a range");
        match m.payload {
            Some(Down::Chunk(b)) => bytes.extend_from_slice(&b),
            other => panic!("a chunk, not {other:?}"),
        }
    }
    Ok((range, bytes))
}

fn byte_range(offset: u64, length: u64, total_size: u64) -> ByteRange {
    ByteRange {
        offset,
        length,
        total_size,
    }
}

#[track_caller]
fn assert_past_end(s: &tonic::Status, size: Option<&str>) {
    assert_eq!(s.code(), Code::OutOfRange, "{s:?}");
    assert_eq!(error_reason(s), "OFFSET_PAST_END");
    assert_details(s);
    assert_eq!(
        error_metadata(s).get("size_bytes").map(String::as_str),
        size,
        "{s:?}"
    );
}

#[tokio::test]
async fn the_sandbox_link_host_serves_ranges() {
    let h = with_sandbox().await;
    let mut c = h.gateway.client();
    let data = pattern(300_000, 7);
    let msgs = upload_messages(metadata(1001, "ranged.bin"), &data, 64 * 1024);
    let id = c
        .upload_attachment(tokio_stream::iter(msgs))
        .await
        .expect("upload")
        .into_inner()
        .attachment_id;
    let total = data.len() as u64;

    let (r, b) = ranged(&mut c, 1001, &id, 0, 0).await.expect("whole");
    assert_eq!((r, b.as_slice()), (byte_range(0, total, total), &data[..]));
    let (r, b) = ranged(&mut c, 1001, &id, 1000, 5000).await.expect("middle");
    assert_eq!(
        (r, b.as_slice()),
        (byte_range(1000, 5000, total), &data[1000..6000])
    );
    let (r, b) = ranged(&mut c, 1001, &id, total - 10, 0)
        .await
        .expect("tail");
    assert_eq!(
        (r, b.as_slice()),
        (byte_range(total - 10, 10, total), &data[data.len() - 10..])
    );
    // A limit past the end: to the end.
    let (r, b) = ranged(&mut c, 1001, &id, total - 3, 1_000_000)
        .await
        .expect("limit past the end");
    assert_eq!((r, b.len()), (byte_range(total - 3, 3, total), 3));
    // An offset at or past the end: OUT_OF_RANGE with the size.
    for offset in [total, total + 1, u64::MAX] {
        let e = ranged(&mut c, 1001, &id, offset, 0)
            .await
            .expect_err("past the end");
        assert_past_end(&e, Some("300000"));
    }
}

#[tokio::test]
async fn a_host_that_ignores_ranges_is_skipped_to_the_offset_by_the_gateway() {
    let data = pattern(200_000, 3);
    let host = LinkHost::start(data.clone(), false).await;
    let gw = Gateway::start(settings_for(&host.uri)).await;
    let mut c = gw.client();
    let total = data.len() as u64;

    let (r, b) = ranged(&mut c, 7, "x", 100_001, 5000).await.expect("range");
    assert_eq!(
        (r, b.as_slice()),
        (byte_range(100_001, 5000, total), &data[100_001..105_001])
    );
    assert_eq!(
        host.ranges_asked(),
        vec![Some("bytes=100001-105000".to_string())],
        "the gateway asked for the range"
    );
    let (r, b) = ranged(&mut c, 7, "x", 150_000, 0)
        .await
        .expect("to the end");
    assert_eq!(
        (r, b.as_slice()),
        (byte_range(150_000, 50_000, total), &data[150_000..])
    );
    let e = ranged(&mut c, 7, "x", total, 0)
        .await
        .expect_err("past the end");
    assert_past_end(&e, Some("200000"));

    // Without a stated length the gateway learns the size at the body's end.
    host.set_chunked(true);
    let (r, b) = ranged(&mut c, 7, "x", 199_990, 0).await.expect("chunked");
    assert_eq!(
        (r.offset, r.total_size, b.as_slice()),
        (199_990, 0, &data[199_990..])
    );
    for offset in [total, total + 5] {
        let e = ranged(&mut c, 7, "x", offset, 0)
            .await
            .expect_err("at or past the end, chunked");
        assert_past_end(&e, Some("200000"));
    }
}

#[tokio::test]
async fn a_host_that_answers_416_gives_out_of_range_with_its_size() {
    let data = pattern(10_000, 1);
    let host = LinkHost::start(data, true).await;
    let gw = Gateway::start(settings_for(&host.uri)).await;
    let mut c = gw.client();
    let e = ranged(&mut c, 7, "x", 10_000, 0)
        .await
        .expect_err("past the end");
    assert_past_end(&e, Some("10000"));
    assert_eq!(host.ranges_asked(), vec![Some("bytes=10000-".to_string())]);
    // A range inside: the host's 206 is passed on as the range it says.
    let (r, b) = ranged(&mut c, 7, "x", 9_000, 0).await.expect("tail");
    assert_eq!((r, b.len()), (byte_range(9_000, 1_000, 10_000), 1_000));
}

/// A range that ends before its stated end is broken off, not "past the
/// end": DATA_LOSS, which a caller resumes, even when the host closes the
/// connection as if the body were whole.
#[tokio::test]
async fn a_range_cut_short_is_data_loss_not_past_the_end() {
    let data = pattern(10_000, 4);
    let host = LinkHost::start(data, true).await;
    host.set_close_delimited();
    let gw = Gateway::start(settings_for(&host.uri)).await;
    let mut c = gw.client();
    for cut in [0, 100] {
        host.cut_next([Cut::After(cut)]);
        let e = ranged(&mut c, 7, "x", 500, 0)
            .await
            .expect_err("broken off");
        assert_eq!(e.code(), Code::DataLoss, "cut after {cut}: {e:?}");
        assert_eq!(error_reason(&e), "DOWNLOAD_TRUNCATED");
    }
}

/// A host that serves less than the rest of the file asked for: the bytes it
/// served, then DATA_LOSS (never a short success); the client library goes on
/// from there to the whole file.
#[tokio::test]
async fn a_host_that_caps_its_ranges_is_resumed_to_the_end() {
    let data = pattern(1_000_000, 5);
    let host = LinkHost::start(data.clone(), true).await;
    host.cap_ranges(300_000);
    let gw = Gateway::start(settings_for(&host.uri)).await;
    let mut c = gw.client();
    let e = ranged(&mut c, 7, "x", 100, 0)
        .await
        .expect_err("short of the end");
    assert_eq!(e.code(), Code::DataLoss, "{e:?}");
    assert_eq!(error_reason(&e), "DOWNLOAD_TRUNCATED");
    // Asked with a limit within the cap: served whole.
    let (r, b) = ranged(&mut c, 7, "x", 100, 1_000).await.expect("within");
    assert_eq!(
        (r, b.as_slice()),
        (byte_range(100, 1_000, 1_000_000), &data[100..1_100])
    );
    let client = client_for(&gw, 2).await;
    let mut out = Vec::new();
    host.cut_next([Cut::After(100_000)]);
    client
        .download_to(7, "x", &mut out, None)
        .await
        .expect("resumed to the end");
    assert!(out == data, "the bytes, whole and in order");
}

async fn client_for(gw: &Gateway, retries: u32) -> GatewayClient {
    GatewayClient::builder(format!("http://{}", gw.addr))
        .retries(retries)
        .connect()
        .await
        .expect("connect")
}

/// A stream that breaks off is opened again from the last byte received, by
/// the client library, whether the host serves ranges or the gateway skips.
#[tokio::test]
async fn the_client_resumes_a_broken_download_from_its_last_byte() {
    for honour_ranges in [true, false] {
        let data = pattern(1_000_000, 9);
        let host = LinkHost::start(data.clone(), honour_ranges).await;
        let gw = Gateway::start(settings_for(&host.uri)).await;
        let client = client_for(&gw, 2).await;
        // Cut after 300 000, 500 000 and 500 001 bytes of the file (a host
        // that ignores ranges sends the file from its start each time).
        host.cut_next(if honour_ranges {
            [Cut::After(300_000), Cut::After(200_000), Cut::After(1)]
        } else {
            [
                Cut::After(300_000),
                Cut::After(500_000),
                Cut::After(500_001),
            ]
        });
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = std::sync::Arc::clone(&seen);
        let progress: attachment_gateway::client::Progress =
            Box::new(move |at, total| log.lock().expect("lock").push((at, total)));
        let mut out = Vec::new();
        let meta = client
            .download_to(7, "x", &mut out, Some(progress))
            .await
            .expect("resumed to the end");
        assert!(out == data, "the bytes, whole and in order");
        assert_eq!(meta.size_bytes, 1_000_000);
        let seen = seen.lock().expect("lock").clone();
        assert!(
            seen.windows(2).all(|w| w[0].0 < w[1].0),
            "progress only goes forward"
        );
        assert_eq!(seen.last(), Some(&(1_000_000, Some(1_000_000))));
        assert_eq!(
            host.ranges_asked(),
            vec![
                None,
                Some("bytes=300000-".to_string()),
                Some("bytes=500000-".to_string()),
                Some("bytes=500001-".to_string()),
            ],
            "each attempt from the last byte received (ranges honoured: {honour_ranges})"
        );
    }
}

/// Attempts that bring no byte are bounded: the download ends with an error,
/// never a short success, and the bytes received stay written.
#[tokio::test]
async fn the_client_gives_up_when_attempts_bring_nothing() {
    let data = pattern(500_000, 2);
    let host = LinkHost::start(data.clone(), true).await;
    let gw = Gateway::start(settings_for(&host.uri)).await;
    let client = client_for(&gw, 2).await;
    host.cut_next([
        Cut::After(100_000),
        Cut::After(0),
        Cut::After(0),
        Cut::After(0),
    ]);
    let mut out = Vec::new();
    let started = std::time::Instant::now();
    let e = client
        .download_to(7, "x", &mut out, None)
        .await
        .expect_err("nothing more comes");
    assert!(
        matches!(e.code, Code::Unavailable | Code::DataLoss),
        "{e:?}"
    );
    assert_eq!(out.as_slice(), &data[..100_000], "what came is kept");
    assert_eq!(
        host.ranges_asked().len(),
        3,
        "the first attempt and two more"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // From there, a later call completes it.
    host.heal();
    client
        .download_from(7, "x", 100_000, &mut out, None)
        .await
        .expect("completed");
    assert!(out == data);
}

/// The client library's ranged entry point against the sandbox, and an offset
/// past the end through it.
#[tokio::test]
async fn download_from_an_offset_through_the_client_library() {
    let h = with_sandbox().await;
    let client = client_for(&h.gateway, 2).await;
    let dir = scratch("dl-from");
    let file = dir.path().join("part.bin");
    let data = pattern(123_457, 5);
    std::fs::write(&file, &data).expect("write");
    let up = client
        .upload_file(&file, NewUpload::new(1001, "Ranged"))
        .await
        .expect("upload");
    let mut out = data[..1000].to_vec();
    let m = client
        .download_from(1001, &up.attachment_id, 1000, &mut out, None)
        .await
        .expect("the rest");
    assert!(out == data);
    assert_eq!(m.size_bytes, data.len() as u64);
    let e = client
        .download_from(1001, &up.attachment_id, data.len() as u64, &mut out, None)
        .await
        .expect_err("nothing past the end");
    assert_eq!(
        (e.code, e.reason.as_deref()),
        (Code::OutOfRange, Some("OFFSET_PAST_END"))
    );
    assert_eq!(e.detail("size_bytes"), Some("123457"));
}
