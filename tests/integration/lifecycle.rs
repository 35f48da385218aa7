//! Uploads that end badly leave nothing upstream: caller cancellation at several
//! points, and shutdown (drain, finish within the grace period, cut after it).

use std::time::Duration;

use crate::common::*;
use attachment_gateway::proto::UploadAttachmentRequest;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Starts an upload fed by a channel; returns the sender and the call's task.
fn start_upload(
    mut c: Client,
) -> (
    mpsc::Sender<UploadAttachmentRequest>,
    tokio::task::JoinHandle<
        Result<tonic::Response<attachment_gateway::proto::UploadAttachmentResponse>, tonic::Status>,
    >,
) {
    let (tx, rx) = mpsc::channel(16);
    let call = tokio::spawn(async move { c.upload_attachment(ReceiverStream::new(rx)).await });
    (tx, call)
}

#[tokio::test]
async fn caller_cancellation_at_any_point_leaves_no_attachment() {
    let h = with_sandbox().await;
    // Chunks of 64 KiB sent before cancelling (the file would be 8 chunks), with a
    // declared size (Content-Length upstream) and without (chunked upstream).
    let points = [
        (1usize, true),
        (4, true),
        (8, true),
        (1, false),
        (4, false),
        (8, false),
    ];
    for (round, (sent_before_cancel, declared)) in points.into_iter().enumerate() {
        let (tx, call) = start_upload(h.gateway.client());
        let mut m = metadata(1002, &format!("cancelled-{sent_before_cancel}.bin"));
        if declared {
            m.size_bytes = 8 * 64 * 1024;
        }
        tx.send(meta_msg(m)).await.expect("send");
        for i in 0..sent_before_cancel {
            tx.send(chunk_msg(pattern(64 * 1024, i as u8)))
                .await
                .expect("send");
        }
        let want = round as u64 + 1;
        eventually("the upstream request started", || {
            h.sandbox.stats().uploads_started == want
        })
        .await;
        // The caller goes away without closing its stream (RST_STREAM).
        call.abort();
        eventually("the upstream request was aborted", || {
            h.sandbox.stats().uploads_aborted == want
        })
        .await;
        drop(tx);
    }
    assert!(
        h.sandbox.attachments(1002).is_empty(),
        "no truncated attachment"
    );
    assert_eq!(h.sandbox.stats().uploads_stored, 0);
}

async fn health(addr: std::net::SocketAddr) -> Result<i32, tonic::Status> {
    let ch = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    HealthClient::new(ch)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|r| r.into_inner().status)
}

#[tokio::test]
async fn shutdown_drains_then_lets_in_flight_uploads_finish() {
    let mut h = with_sandbox_and(Default::default(), |s| {
        s.server.drain_delay = Duration::from_millis(600);
        s.server.shutdown_grace = Duration::from_secs(10);
    })
    .await;
    let addr = h.gateway.addr;
    assert_eq!(
        health(addr).await.expect("health"),
        ServingStatus::Serving as i32
    );
    let health_conn = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");

    let data = pattern(10 * 64 * 1024, 5);
    let (tx, call) = start_upload(h.gateway.client());
    tx.send(meta_msg(metadata(1001, "in-flight.bin")))
        .await
        .expect("send");
    for c in data[..5 * 64 * 1024].chunks(64 * 1024) {
        tx.send(chunk_msg(c.to_vec())).await.expect("send");
    }
    eventually("upload under way", || {
        h.sandbox.stats().uploads_started == 1
    })
    .await;

    h.gateway.shutdown();
    // During the drain delay, health says NOT_SERVING on an existing connection.
    let mut hc = HealthClient::new(health_conn);
    let mut not_serving = false;
    for _ in 0..20 {
        let st = hc
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("health");
        if st.into_inner().status == ServingStatus::NotServing as i32 {
            not_serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(not_serving, "health turned NOT_SERVING");

    // The in-flight upload still completes.
    for c in data[5 * 64 * 1024..].chunks(64 * 1024) {
        tx.send(chunk_msg(c.to_vec())).await.expect("send");
    }
    drop(tx);
    let up = call
        .await
        .expect("task")
        .expect("in-flight upload finished")
        .into_inner();
    assert_eq!(up.sha256, sha256_hex(&data));
    let join = h.gateway.join.take().expect("join");
    tokio::time::timeout(Duration::from_secs(10), join)
        .await
        .expect("server stopped")
        .expect("task")
        .expect("clean stop");
    // New calls are refused once the listener is closed.
    assert!(health(addr).await.is_err(), "nothing listens any more");
}

#[tokio::test]
async fn uploads_still_running_after_the_grace_period_are_cut_cleanly() {
    let mut h = with_sandbox_and(Default::default(), |s| {
        s.server.shutdown_grace = Duration::from_millis(300);
    })
    .await;
    let (tx, call) = start_upload(h.gateway.client());
    tx.send(meta_msg(metadata(1001, "too-slow.bin")))
        .await
        .expect("send");
    tx.send(chunk_msg(pattern(64 * 1024, 1)))
        .await
        .expect("send");
    eventually("upload under way", || {
        h.sandbox.stats().uploads_started == 1
    })
    .await;
    h.gateway.shutdown();
    let err = tokio::time::timeout(Duration::from_secs(5), call)
        .await
        .expect("the call ended")
        .expect("task")
        .expect_err("cut");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert_eq!(error_reason(&err), "GATEWAY_SHUTTING_DOWN");
    assert_eq!(
        error_metadata(&err).get("retry_safe").map(String::as_str),
        Some("true")
    );
    nothing_stored(&h.sandbox).await;
    let join = h.gateway.join.take().expect("join");
    tokio::time::timeout(Duration::from_secs(5), join)
        .await
        .expect("server stopped")
        .expect("task")
        .expect("clean stop");
    drop(tx);
}

#[tokio::test]
async fn an_upload_past_its_deadline_is_aborted_upstream() {
    let h = with_sandbox().await;
    let (tx, rx) = mpsc::channel(16);
    let mut c = h.gateway.client();
    let call = tokio::spawn(async move {
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        req.set_timeout(Duration::from_millis(700));
        c.upload_attachment(req).await
    });
    tx.send(meta_msg(metadata(1001, "slow.bin")))
        .await
        .expect("send");
    tx.send(chunk_msg(pattern(1000, 1))).await.expect("send");
    let err = call.await.expect("task").expect_err("deadline");
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert_eq!(
        error_metadata(&err).get("retry_safe").map(String::as_str),
        Some("true")
    );
    nothing_stored(&h.sandbox).await;
    drop(tx);
}

/// The probes are plain HTTP on the admin port, so they work whatever the gRPC
/// port asks (here mTLS, which the kubelet's gRPC probe cannot speak): `/livez`
/// stays 200 while draining, `/readyz` turns 503 as soon as the drain starts.
#[tokio::test]
async fn probes_on_the_admin_port_work_with_mtls_and_follow_the_drain() {
    attachment_gateway::upstream::install_crypto_provider();
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().expect("key");
    let server_cert = CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .signed_by(&server_key, &issuer)
        .expect("cert");
    let dir = scratch("probes");
    let file = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let sandbox = attachment_gateway::sandbox::Sandbox::start(Default::default())
        .await
        .expect("sandbox");
    let mut s = base_settings();
    s.upstream = sandbox.upstream_settings(&s.upstream);
    s.tls.cert_file = Some(file("tls.crt", server_cert.pem()));
    s.tls.key_file = Some(file("tls.key", server_key.serialize_pem()));
    s.tls.client_ca_file = Some(file("ca.crt", ca.pem()));
    s.server.drain_delay = Duration::from_millis(1500);
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let admin_addr = admin.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(attachment_gateway::server::serve_with(
        s,
        attachment_gateway::server::Listeners {
            grpc,
            admin: Some(admin),
            webhooks: None,
        },
        std::sync::Arc::new(attachment_gateway::metrics::Metrics::new()),
        async move {
            let _ = stopped.await;
        },
    ));
    let status = |path: &'static str| async move {
        for _ in 0..50 {
            if let Ok(r) = reqwest::get(format!("http://{admin_addr}{path}")).await {
                return r.status().as_u16();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("no answer on {path}");
    };
    assert_eq!(status("/livez").await, 200);
    assert_eq!(status("/readyz").await, 200);
    let _ = stop.send(());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(status("/readyz").await, 503, "draining: not ready");
    assert_eq!(status("/livez").await, 200, "draining: still alive");
    serving.abort();
}

/// One gRPC message: its 5-byte prefix and its bytes.
fn framed(m: &UploadAttachmentRequest) -> Vec<u8> {
    use prost::Message;
    let body = m.encode_to_vec();
    let mut out = vec![0u8];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// A caller that sent whole messages and then reset its stream (RST_STREAM
/// CANCEL, as a cancelled call or a dropped connection does) has cancelled: its
/// upload must not be taken as complete. (The gRPC decoder alone reads a
/// cancelled request stream as its end.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_after_whole_messages_cancels_the_upload() {
    let h = with_sandbox().await;
    for declared in [false, true] {
        let before = h.sandbox.stats();
        let tcp = tokio::net::TcpStream::connect(h.gateway.addr)
            .await
            .expect("connect");
        let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
        let conn = tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut client = client.ready().await.expect("ready");
        let req = http::Request::builder()
            .method("POST")
            .uri(format!(
                "http://{}/corrigopro.attachments.v1.AttachmentService/UploadAttachment",
                h.gateway.addr
            ))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("request");
        let (_resp, mut send) = client.send_request(req, false).expect("send");
        let mut m = metadata(1002, "reset.bin");
        m.message_id = format!("reset-{declared}");
        if declared {
            m.size_bytes = 2 * 1024;
        }
        let mut body = framed(&meta_msg(m));
        // The whole file, in whole messages: only the end of the stream is missing.
        body.extend(framed(&chunk_msg(pattern(1024, 1))));
        body.extend(framed(&chunk_msg(pattern(1024, 2))));
        send.send_data(bytes::Bytes::from(body), false)
            .expect("data");
        eventually("the upstream request started", || {
            h.sandbox.stats().uploads_started > before.uploads_started
        })
        .await;
        send.send_reset(h2::Reason::CANCEL);
        eventually("the upstream request was aborted", || {
            h.sandbox.stats().uploads_aborted > before.uploads_aborted
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            h.sandbox.attachments(1002).is_empty(),
            "nothing stored for a cancelled upload (declared size: {declared})"
        );
        conn.abort();
    }
}
