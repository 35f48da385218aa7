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
            webhooks: None,
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

/// A ListAttachments request padded with an unknown field.
#[derive(Clone, PartialEq, prost::Message)]
struct PaddedList {
    #[prost(int64, tag = "1")]
    work_order_id: i64,
    #[prost(bytes = "vec", tag = "99")]
    pad: Vec<u8>,
}

/// Health and unary requests are small: a 1 MiB one is refused, not decoded.
#[tokio::test]
async fn large_unary_and_health_requests_are_refused() {
    let h = with_sandbox().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", h.gateway.addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .max_encoding_message_size(8 * 1024 * 1024);
    let err = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "x".repeat(1024 * 1024),
        })
        .await
        .expect_err("a 1 MiB health check");
    assert_invalid(&err, "request", "MESSAGE_TOO_LARGE");
    let mut grpc =
        tonic::client::Grpc::new(channel.clone()).max_encoding_message_size(8 * 1024 * 1024);
    grpc.ready().await.expect("ready");
    let codec: tonic_prost::ProstCodec<
        PaddedList,
        attachment_gateway::proto::ListAttachmentsResponse,
    > = tonic_prost::ProstCodec::default();
    let err = grpc
        .unary(
            tonic::Request::new(PaddedList {
                work_order_id: 1001,
                pad: vec![0; 1024 * 1024],
            }),
            http::uri::PathAndQuery::from_static(
                "/corrigopro.attachments.v1.AttachmentService/ListAttachments",
            ),
            codec,
        )
        .await
        .expect_err("a 1 MiB list request");
    assert_invalid(&err, "request", "MESSAGE_TOO_LARGE");
    assert_details(&err);
    assert_eq!(h.sandbox.stats().api_requests, 0, "nothing went upstream");
    // A small one is served.
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health");
}

/// Opens `streams` HTTP/2 streams to `path` on one connection, each declaring a
/// 4 MiB message (after `first`, when given) and sending 900 KiB of it, then
/// holding still. Returns what keeps them open.
async fn stall(
    addr: std::net::SocketAddr,
    path: &str,
    first: Option<Vec<u8>>,
    streams: usize,
) -> Vec<Box<dyn std::any::Any + Send>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(4 * 1024 * 1024)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .expect("h2 handshake");
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut held: Vec<Box<dyn std::any::Any + Send>> = vec![Box::new(AbortOnDrop(conn))];
    for _ in 0..streams {
        let mut client = match client.clone().ready().await {
            Ok(c) => c,
            Err(_) => break,
        };
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://{addr}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("request");
        let Ok((resp, mut send)) = client.send_request(req, false) else {
            break;
        };
        let mut body = Vec::new();
        if let Some(m) = &first {
            body.push(0u8);
            body.extend_from_slice(&(m.len() as u32).to_be_bytes());
            body.extend_from_slice(m);
        }
        body.push(0u8);
        body.extend_from_slice(&(4u32 * 1024 * 1024).to_be_bytes());
        body.extend(std::iter::repeat_n(7u8, 900 * 1024));
        send.reserve_capacity(body.len());
        let _ = send.send_data(bytes::Bytes::from(body), false);
        held.push(Box::new((resp, send)));
    }
    held
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The gateway process's resident memory, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Many streams that declare large messages, send part of them and stall, from a
/// caller the gateway has not even authenticated: memory stays bounded (each is
/// refused at its prefix, or holds one of a few upload slots) and other callers
/// are served.
#[tokio::test]
async fn stalled_streams_declaring_large_messages_pin_no_memory() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_attachment-gateway"))
        .args([
            "--sandbox",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .env_remove("RUST_LOG")
        .env("ATTACHMENT_GATEWAY_LOG__LEVEL", "error")
        // As the container image and the chart run it.
        .env("MIMALLOC_ARENA_EAGER_COMMIT", "0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let addr: std::net::SocketAddr = tokio::task::spawn_blocking(move || {
        let lines = BufReader::new(stdout).lines();
        for line in lines.map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("attachment-gateway (sandbox) serving gRPC on ") {
                return rest.trim().parse().expect("addr");
            }
        }
        panic!("no banner");
    })
    .await
    .expect("join");
    let pid = child.id();
    let mut c = connect(addr).await;
    let list = || ListAttachmentsRequest {
        work_order_id: 1001,
        ..Default::default()
    };
    c.list_attachments(list()).await.expect("warm up");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(pid);
    let svc = "/corrigopro.attachments.v1.AttachmentService";
    let meta = {
        use prost::Message;
        attachment_gateway::proto::UploadAttachmentRequest {
            payload: Some(
                attachment_gateway::proto::upload_attachment_request::Payload::Metadata(metadata(
                    1001,
                    "stall.bin",
                )),
            ),
        }
        .encode_to_vec()
    };
    // Four connections of 100 streams each: what a connection can hold before the
    // gateway reads it is its HTTP/2 window (2 MiB by default), so the bound is
    // server.max_connections x server.http2_connection_window.
    let mut held = Vec::new();
    held.extend(stall(addr, &format!("{svc}/ListAttachments"), None, 100).await);
    held.extend(stall(addr, "/grpc.health.v1.Health/Check", None, 100).await);
    held.extend(stall(addr, &format!("{svc}/UploadAttachment"), None, 100).await);
    held.extend(
        stall(
            addr,
            &format!("{svc}/UploadAttachment"),
            Some(meta.clone()),
            100,
        )
        .await,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.list_attachments(list())
        .await
        .expect("other callers are served");
    let after = rss_kib(pid);
    let _ = child.kill();
    let _ = child.wait();
    let grown_mib = after.saturating_sub(before) / 1024;
    println!("RSS {before} KiB -> {after} KiB (+{grown_mib} MiB) with 400 stalled streams");
    // 400 streams x 900 KiB sent would be ~350 MiB held (the decoder reserved
    // each declared 4 MiB). Now the refused ones hold nothing but what their
    // connection's window let through, and the uploads past their metadata hold
    // at most 8 slots (the anonymous caller's) x one chunk (measured: +29 MiB).
    assert!(grown_mib < 40, "RSS grew by {grown_mib} MiB");
    drop(held);
}

/// Reads from `s` until it is closed (EOF or error), for at most `within`.
async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 1024];
    let until = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(until, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Connections are capped, and one that says nothing (no TLS handshake, no
/// HTTP/2 preface, no request headers on the admin port) is closed after the
/// handshake timeout; real callers are served afterwards.
#[tokio::test]
async fn silent_connections_are_capped_and_timed_out_on_every_port() {
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
    s.upstream = sandbox.upstream_settings(&s.upstream);
    s.server.max_connections = 20;
    s.server.handshake_timeout = Duration::from_millis(700);
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
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut over = tokio::net::TcpStream::connect(addr).await.expect("connect");
    assert!(
        closed_within(&mut over, Duration::from_millis(300)).await,
        "past the cap, a connection is closed at once"
    );
    for s in &mut silent {
        assert!(
            closed_within(s, Duration::from_secs(2)).await,
            "a silent connection is closed after the handshake timeout"
        );
    }
    // The admin port: request headers that never end.
    let mut slow = tokio::net::TcpStream::connect(admin_addr)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut slow, b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    assert!(
        closed_within(&mut slow, Duration::from_secs(2)).await,
        "headers that never end are cut"
    );
    connect(addr)
        .await
        .list_attachments(ListAttachmentsRequest {
            work_order_id: 1001,
            ..Default::default()
        })
        .await
        .expect("a real caller is served");
    let text = reqwest::get(format!("http://{admin_addr}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains(r#"attachment_gateway_connections_refused_total{listener="grpc"} 1"#),
        "{text}"
    );
    serving.abort();
}

/// With TLS on, a connection that never completes its handshake is closed after
/// the handshake timeout, and a real TLS caller is served.
#[tokio::test]
async fn a_tls_handshake_that_never_ends_is_cut() {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let dir = scratch("tls-hs");
    let (cert_file, key_file) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_file, cert.pem()).expect("write");
    std::fs::write(&key_file, key.serialize_pem()).expect("write");
    let sandbox = attachment_gateway::sandbox::Sandbox::start(Default::default())
        .await
        .expect("sandbox");
    let mut s = base_settings();
    s.upstream = sandbox.upstream_settings(&s.upstream);
    s.tls.cert_file = Some(cert_file);
    s.tls.key_file = Some(key_file);
    s.server.handshake_timeout = Duration::from_millis(700);
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = grpc.local_addr().expect("addr");
    let serving = tokio::spawn(attachment_gateway::server::serve(
        s,
        grpc,
        std::future::pending(),
    ));
    let mut silent = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // Half a record header, then nothing.
    tokio::io::AsyncWriteExt::write_all(&mut silent, &[0x16, 0x03])
        .await
        .expect("write");
    assert!(closed_within(&mut silent, Duration::from_secs(2)).await);
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(cert.pem()))
        .domain_name("localhost");
    let channel = tonic::transport::Channel::from_shared(format!("https://{addr}"))
        .expect("uri")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("a real TLS caller connects");
    attachment_gateway::proto::attachment_service_client::AttachmentServiceClient::new(channel)
        .list_attachments(ListAttachmentsRequest {
            work_order_id: 1001,
            ..Default::default()
        })
        .await
        .expect("and is served");
    serving.abort();
}

/// Opens one gRPC call to `path` over a raw HTTP/2 connection of its own:
/// the response to come, the request stream to send on, and the connection's
/// task (aborted when dropped).
async fn open_raw_call(
    addr: std::net::SocketAddr,
    path: &str,
) -> (
    h2::client::ResponseFuture,
    h2::SendStream<bytes::Bytes>,
    AbortOnDrop,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(8 * 1024 * 1024)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .expect("h2 handshake");
    let conn = AbortOnDrop(tokio::spawn(async move {
        let _ = conn.await;
    }));
    let mut client = client.ready().await.expect("ready");
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (resp, send) = client.send_request(req, false).expect("send");
    (resp, send, conn)
}

/// Sends `body` as one gRPC call to `path` over raw HTTP/2, in DATA frames of
/// the given sizes (the last frame takes what is left), then ends the stream;
/// answers the status and the response's data.
async fn raw_call(
    addr: std::net::SocketAddr,
    path: &str,
    body: &[u8],
    frames: &[usize],
) -> (Option<String>, Vec<u8>) {
    let (resp, mut send, _conn) = open_raw_call(addr, path).await;
    let mut at = 0;
    let sizes = frames.iter().copied().chain(std::iter::repeat(usize::MAX));
    for size in sizes {
        if at == body.len() {
            break;
        }
        let n = size.min(body.len() - at);
        send.reserve_capacity(n);
        while send.capacity() < n {
            match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(_)) => {}
                _ => break,
            }
        }
        let chunk = bytes::Bytes::copy_from_slice(&body[at..at + n]);
        if send.send_data(chunk, false).is_err() {
            break;
        }
        at += n;
    }
    let _ = send.send_data(bytes::Bytes::new(), true);
    let resp = resp.await.expect("response");
    let status = resp
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap_or("?").to_string());
    let mut body_in = resp.into_body();
    let mut data = Vec::new();
    while let Some(d) = body_in.data().await {
        let d = d.expect("data");
        let _ = body_in.flow_control().release_capacity(d.len());
        data.extend_from_slice(&d);
    }
    let trailers = body_in.trailers().await.ok().flatten();
    let status = status.or_else(|| {
        trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .map(|v| v.to_str().unwrap_or("?").to_string())
    });
    (status, data)
}

fn grpc_framed(m: &impl prost::Message) -> Vec<u8> {
    let body = m.encode_to_vec();
    let mut out = vec![0];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// An upload whose messages come cut at odd places (a byte a frame, frames
/// ending inside a prefix, inside a chunk's key and length, and large frames
/// across chunks) is the same file: the gateway reads its messages off the
/// frames, whatever their cuts.
#[tokio::test]
async fn an_upload_in_oddly_cut_frames_is_the_same_file() {
    use prost::Message;
    let h = with_sandbox().await;
    let path = "/corrigopro.attachments.v1.AttachmentService/UploadAttachment";
    let (a, b) = (pattern(300_000, 3), pattern(70_001, 5));
    let body = [
        grpc_framed(&meta_msg(metadata(1001, "cut.bin"))),
        grpc_framed(&chunk_msg(a.clone())),
        grpc_framed(&chunk_msg(b.clone())),
    ]
    .concat();
    let meta_len = grpc_framed(&meta_msg(metadata(1001, "cut.bin"))).len();
    let cuts: Vec<Vec<usize>> = vec![
        // A byte a frame through the metadata and the first chunk's head.
        [vec![1; meta_len + 9], vec![20_000; 40]].concat(),
        // Inside the first chunk's prefix, then large frames across both.
        vec![meta_len + 3, 4, 65_536, 131_072, 7, 200_000],
        // Everything in one frame.
        vec![usize::MAX],
    ];
    let whole = [a, b].concat();
    for frames in cuts {
        let (status, data) = raw_call(h.gateway.addr, path, &body, &frames).await;
        assert_eq!(status.as_deref(), Some("0"), "{frames:?}");
        let r = attachment_gateway::proto::UploadAttachmentResponse::decode(&data[5..])
            .expect("a response");
        assert_eq!(
            (r.size_bytes, r.sha256),
            (whole.len() as u64, sha256_hex(&whole))
        );
    }
}

/// An upload stream that ends inside a message, right after a chunk's prefix
/// or inside its bytes, is no whole file: refused, nothing stored.
#[tokio::test]
async fn an_upload_cut_inside_a_message_stores_nothing() {
    let h = with_sandbox().await;
    let path = "/corrigopro.attachments.v1.AttachmentService/UploadAttachment";
    let head = [
        grpc_framed(&meta_msg(metadata(1001, "cut.bin"))),
        grpc_framed(&chunk_msg(pattern(1000, 1))),
    ]
    .concat();
    let next = grpc_framed(&chunk_msg(pattern(50_000, 2)));
    for cut_at in [5, 5 + 3, 30_000] {
        let body = [&head[..], &next[..cut_at]].concat();
        let (status, _) = raw_call(h.gateway.addr, path, &body, &[]).await;
        assert_eq!(status.as_deref(), Some("13"), "cut at {cut_at}");
    }
    nothing_stored(&h.sandbox).await;
}

/// An upload whose caller resets its stream right after a whole chunk, with
/// NO_ERROR or CANCEL (which hyper hands on as a body's clean end), is no
/// whole file: nothing is stored. Only the caller's END_STREAM ends an upload.
#[tokio::test]
async fn an_upload_reset_at_a_message_boundary_stores_nothing() {
    let h = with_sandbox().await;
    let path = "/corrigopro.attachments.v1.AttachmentService/UploadAttachment";
    let body = [
        grpc_framed(&meta_msg(metadata(1001, "reset.bin"))),
        grpc_framed(&chunk_msg(pattern(20_000, 1))),
    ]
    .concat();
    for reason in [h2::Reason::NO_ERROR, h2::Reason::CANCEL] {
        let (_resp, mut send, _conn) = open_raw_call(h.gateway.addr, path).await;
        send.reserve_capacity(body.len());
        while send.capacity() < body.len() {
            match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(_)) => {}
                _ => break,
            }
        }
        send.send_data(bytes::Bytes::copy_from_slice(&body), false)
            .expect("data");
        // The gateway has the whole chunk (the upstream body is under way),
        // then the caller resets instead of ending its stream.
        tokio::time::sleep(Duration::from_millis(300)).await;
        send.send_reset(reason);
        tokio::time::sleep(Duration::from_millis(700)).await;
        nothing_stored(&h.sandbox).await;
    }
}
