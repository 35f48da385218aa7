//! Hostile callers: 100k one-byte chunks, headers past the server's limit, and many
//! upload streams that send nothing. The gateway answers each with a clear status,
//! stays up, and stores nothing partial.

use std::time::{Duration, Instant};

use crate::common::*;
use attachment_gateway::proto::ListAttachmentsRequest;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

#[tokio::test]
async fn a_hundred_thousand_one_byte_chunks() {
    let h = with_sandbox().await;
    let data = pattern(100_000, 9);
    let r = h
        .gateway
        .client()
        .upload_attachment(tokio_stream::iter(upload_messages(
            metadata(1001, "dust.bin"),
            &data,
            1,
        )))
        .await
        .expect("many tiny chunks are still a file")
        .into_inner();
    assert_eq!((r.size_bytes, r.sha256), (100_000, sha256_hex(&data)));
}

#[tokio::test]
async fn headers_past_the_limit_are_refused_and_the_gateway_stays_up() {
    let h = with_sandbox().await;
    let mut c = h.gateway.client();
    let mut req = tonic::Request::new(ListAttachmentsRequest {
        work_order_id: 1001,
        ..Default::default()
    });
    req.metadata_mut()
        .insert("x-padding", "a".repeat(64 * 1024).parse().expect("ascii"));
    let err = c
        .list_attachments(req)
        .await
        .expect_err("64 KiB of headers");
    assert_ne!(err.code(), Code::Ok);
    assert_eq!(
        h.sandbox.stats().api_requests,
        0,
        "nothing reached the upstream"
    );
    // A fresh connection works.
    connect(h.gateway.addr)
        .await
        .list_attachments(ListAttachmentsRequest {
            work_order_id: 1001,
            ..Default::default()
        })
        .await
        .expect("still serving");
}

#[tokio::test]
async fn idle_upload_streams_are_bounded_and_cut_by_their_deadline() {
    let h = with_sandbox_and(Default::default(), |s| {
        s.rate_limit.max_concurrent_uploads = 8
    })
    .await;
    let mut holders = Vec::new();
    let mut calls = Vec::new();
    for i in 0..20 {
        let (tx, rx) = mpsc::channel(2);
        let mut c = h.gateway.client();
        calls.push(tokio::spawn(async move {
            let mut req = tonic::Request::new(ReceiverStream::new(rx));
            req.set_timeout(Duration::from_secs(2));
            let started = Instant::now();
            (c.upload_attachment(req).await, started.elapsed())
        }));
        tx.send(meta_msg(metadata(1001, &format!("idle{i}.bin"))))
            .await
            .expect("send");
        holders.push(tx); // never sends a byte, never ends
    }
    let mut refused_fast = 0;
    let mut cut = 0;
    for call in calls {
        let (r, took) = call.await.expect("task");
        let err = r.expect_err("no idle upload succeeds");
        match err.code() {
            Code::ResourceExhausted => {
                assert!(
                    took < Duration::from_millis(1500),
                    "refused at once, not queued"
                );
                refused_fast += 1;
            }
            Code::DeadlineExceeded => cut += 1,
            other => panic!("unexpected {other:?}: {err:?}"),
        }
    }
    assert_eq!(
        (cut, refused_fast),
        (8, 12),
        "8 held a slot until their deadline, 12 were refused"
    );
    assert_eq!(
        h.sandbox.stats().uploads_started,
        0,
        "an upload with no byte never reaches the upstream"
    );
    drop(holders);
}

#[tokio::test]
async fn many_connections_at_once_do_not_starve_real_callers() {
    let h = with_sandbox().await;
    let addr = h.gateway.addr;
    // 200 connections that never speak HTTP/2, held open.
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    // 50 more real clients, each on its own connection, all served.
    let mut calls = Vec::new();
    for _ in 0..50 {
        calls.push(tokio::spawn(async move {
            let mut c = connect(addr).await;
            let mut req = tonic::Request::new(ListAttachmentsRequest {
                work_order_id: 1001,
                ..Default::default()
            });
            req.set_timeout(Duration::from_secs(10));
            c.list_attachments(req)
                .await
                .map(|r| r.into_inner().attachments.len())
        }));
    }
    for call in calls {
        assert_eq!(call.await.expect("task").expect("served"), 1);
    }
    drop(idle);
}

/// Calls `path` with an empty message, without credentials, on `channel`.
async fn call_path(channel: tonic::transport::Channel, path: String) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(e) = grpc.ready().await {
        return tonic::Status::unavailable(e.to_string());
    }
    let path = http::uri::PathAndQuery::from_maybe_shared(path).expect("path");
    let codec: tonic_prost::ProstCodec<ListAttachmentsRequest, ListAttachmentsRequest> =
        tonic_prost::ProstCodec::default();
    match grpc
        .unary(
            tonic::Request::new(ListAttachmentsRequest::default()),
            path,
            codec,
        )
        .await
    {
        Ok(_) => tonic::Status::ok(""),
        Err(s) => s,
    }
}

/// Unauthenticated calls to random paths add no label value, span name or series:
/// the metrics page stays the same size however many arrive.
#[tokio::test]
async fn random_paths_before_auth_do_not_grow_the_metrics() {
    let dir = scratch("labels");
    let keys = dir.path().join("keys.toml");
    write_keys(&keys, &[("svc", "key-svc", &["attachments.read"])]);
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let admin_addr = admin.local_addr().expect("addr");
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = grpc.local_addr().expect("addr");
    let sandbox = attachment_gateway::sandbox::Sandbox::start(Default::default())
        .await
        .expect("sandbox");
    let mut s = base_settings();
    s.auth.allow_unauthenticated = false;
    s.auth.api_keys.file = Some(keys);
    s.upstream = sandbox.upstream_settings(&s.upstream);
    let serving = tokio::spawn(attachment_gateway::server::serve_with(
        s,
        attachment_gateway::server::Listeners {
            grpc,
            admin: Some(admin),
        },
        std::sync::Arc::new(attachment_gateway::metrics::Metrics::new()),
        std::future::pending(),
    ));
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let metrics = || async {
        reqwest::get(format!("http://{admin_addr}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    };
    let flood = |n: usize, seed: u64| {
        let channel = channel.clone();
        async move {
            let mut rng = fastrand::Rng::with_seed(seed);
            for _ in 0..n {
                let path = format!(
                    "/x{}/{}",
                    rng.u64(..),
                    (0..12).map(|_| rng.alphanumeric()).collect::<String>()
                );
                let st = call_path(channel.clone(), path).await;
                assert_eq!(st.code(), Code::Unauthenticated, "{st:?}");
            }
        }
    };
    flood(10, 1).await;
    let before = metrics().await;
    flood(2000, 2).await;
    let after = metrics().await;
    let series = |text: &str| {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                l.rsplit_once(' ')
                    .map(|(k, _)| k.to_string())
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(series(&before), series(&after), "no new series");
    assert!(
        after.len() <= before.len() + 64,
        "{} -> {} bytes",
        before.len(),
        after.len()
    );
    assert!(after.contains(r#"method="unknown""#), "{after}");
    assert!(!after.contains("/x"), "no path reaches a label");
    serving.abort();
}
