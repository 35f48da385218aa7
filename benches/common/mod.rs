//! What the benchmarks of attachment events share: the gateway binary as its own
//! process, watches, signed notifications posted at a fixed rate and timed to
//! every subscriber.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use attachment_gateway::proto::attachment_service_client::AttachmentServiceClient;
use attachment_gateway::proto::watch_attachments_response::Payload;
use attachment_gateway::proto::{WatchAttachmentsRequest, WatchAttachmentsResponse};
use bytes::Bytes;
use serde_json::json;
use tonic::Streaming;
use tonic::transport::Channel;

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    l.local_addr().expect("addr").port()
}

pub struct Gateway {
    child: Child,
    pub grpc: SocketAddr,
    pub webhook: String,
}

impl Gateway {
    /// `--sandbox` with a webhook port, room for `max_subscribers` watches, and
    /// `env` on top (e.g. a shared Redis).
    pub fn start(max_subscribers: usize, env: &[(&str, String)]) -> Self {
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let hooks: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let e = |k: &str| format!("ATTACHMENT_GATEWAY_{k}");
        let many = max_subscribers.to_string();
        let child = Command::new(env!("CARGO_BIN_EXE_attachment-gateway"))
            .args([
                "--sandbox",
                "--listen",
                &grpc.to_string(),
                "--webhook-listen",
                &hooks.to_string(),
            ])
            .env(e("TELEMETRY__ADMIN_LISTEN"), "127.0.0.1:0")
            .env(e("RATE_LIMIT__PER_CALLER__RPS"), "1000000")
            .env(e("RATE_LIMIT__PER_CALLER__BURST"), "1000000")
            .env(e("EVENTS__MAX_SUBSCRIBERS"), &many)
            .env(e("EVENTS__MAX_SUBSCRIBERS_PER_CALLER"), &many)
            .env(e("LOG__LEVEL"), "error")
            .env("MIMALLOC_ARENA_EAGER_COMMIT", "0")
            .envs(env.iter().map(|(k, v)| (e(k), v.clone())))
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the gateway binary");
        Self {
            child,
            grpc,
            webhook: format!("http://{hooks}{}", attachment_gateway::webhooks::PATH),
        }
    }

    pub fn rss_kib(&self) -> u64 {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        text.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn channel(addr: SocketAddr) -> Channel {
    let endpoint = Channel::from_shared(format!("http://{addr}")).expect("uri");
    for _ in 0..300 {
        if let Ok(c) = endpoint.connect().await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the gateway never accepted a connection");
}

/// Opens `n` watches over `connections` connections; each is read to its first
/// message (the watch is open) before this returns.
pub async fn open_watches(
    addr: SocketAddr,
    n: usize,
    connections: usize,
) -> Vec<Streaming<WatchAttachmentsResponse>> {
    let mut chans = Vec::new();
    for _ in 0..connections.max(1) {
        chans.push(channel(addr).await);
    }
    let mut tasks = Vec::new();
    for i in 0..n {
        let ch = chans[i % chans.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut c = AttachmentServiceClient::new(ch);
            let mut s = c
                .watch_attachments(WatchAttachmentsRequest::default())
                .await
                .expect("watch")
                .into_inner();
            s.message().await.expect("first").expect("heartbeat");
            s
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("join"));
    }
    out
}

pub fn notification(seq: usize, padding: usize) -> Bytes {
    Bytes::from(
        json!({
            "AttachmentId": format!("{:08x}-7425-40de-944b-e07fc1f90ae7", seq),
            "Name": "photo-of-the-leak.jpg", "MimeType": "image/jpeg", "Size": 234256,
            "Subtype": "", "Pad": "x".repeat(padding),
            "Header": {"WorkOrderId": 1001 + (seq % 50), "BranchId": 492042,
                "Sender": {"Name": "Jon Snow", "Phone": "+12025550141", "Type": "CorrigoPro"},
                "Action": "AttachmentAdded", "ActionDate": "2026-12-01T08:28:36.9484279Z",
                "ApiVersion": "1.0", "MessageId": format!("bench-{seq}")}
        })
        .to_string(),
    )
}

pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub struct Run {
    /// ms from just before the POST to the event's arrival, one per (event, subscriber).
    pub delivery_ms: Vec<f64>,
    /// ms from just before the POST to its 2xx.
    pub ack_ms: Vec<f64>,
    pub sent: usize,
    pub seconds: f64,
}

/// Posts `rate`/s for `seconds` to `urls` in turn; with `watches`, times each event's
/// arrival at each of them.
pub async fn run(
    urls: &[String],
    token: &str,
    rate: u64,
    seconds: u64,
    watches: Vec<Streaming<WatchAttachmentsResponse>>,
    base_seq: usize,
) -> Run {
    let total = (rate * seconds) as usize;
    let start = Instant::now();
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let subscribers = watches.len();
    let received = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for mut w in watches {
        let sent_at = Arc::clone(&sent_at);
        let received = Arc::clone(&received);
        readers.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(total);
            while lat.len() < total {
                let Ok(Ok(Some(m))) =
                    tokio::time::timeout(Duration::from_secs(30), w.message()).await
                else {
                    break;
                };
                if let Some(Payload::Event(e)) = m.payload {
                    let at = start.elapsed().as_nanos() as u64;
                    let seq = e
                        .upstream_message_id
                        .strip_prefix("bench-")
                        .and_then(|s| s.parse::<usize>().ok())
                        .map(|s| s - base_seq);
                    if let Some(seq) = seq.filter(|s| *s < total) {
                        let t0 = sent_at[seq].load(Ordering::Acquire);
                        lat.push(at.saturating_sub(t0) as f64 / 1e6);
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            lat
        }));
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .expect("client");
    let auth = format!("Bearer {token}");
    let inflight = Arc::new(tokio::sync::Semaphore::new(64));
    let mut acks = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for seq in 0..total {
        tick.tick().await;
        let permit = Arc::clone(&inflight).acquire_owned().await.expect("permit");
        let body = notification(base_seq + seq, 0);
        let req = http
            .post(&urls[seq % urls.len()])
            .header("authorization", &auth)
            .header("content-type", "application/json; charset=utf-8")
            .header("event-type", "AttachmentAdded")
            .body(body);
        let sent_at = Arc::clone(&sent_at);
        acks.push(tokio::spawn(async move {
            let t0 = start.elapsed().as_nanos() as u64;
            sent_at[seq].store(t0, Ordering::Release);
            let r = req.send().await.expect("post");
            assert!(r.status().is_success(), "{}", r.status());
            drop(permit);
            (start.elapsed().as_nanos() as u64 - t0) as f64 / 1e6
        }));
    }
    let mut ack_ms = Vec::with_capacity(total);
    for a in acks {
        ack_ms.push(a.await.expect("join"));
    }
    let seconds_taken = start.elapsed().as_secs_f64();
    let mut delivery_ms = Vec::with_capacity(total * subscribers);
    for r in readers {
        delivery_ms.extend(r.await.expect("join"));
    }
    delivery_ms.sort_by(f64::total_cmp);
    ack_ms.sort_by(f64::total_cmp);
    Run {
        delivery_ms,
        ack_ms,
        sent: total,
        seconds: seconds_taken,
    }
}

/// A bare HTTP endpoint in this process answering 200 to any POST: what loopback
/// HTTP costs the sender, the floor of the webhook's acknowledgement.
pub async fn bare_endpoint() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let app = axum::Router::new().route("/", axum::routing::post(|_: Bytes| async { "ok" }));
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    format!("http://{addr}/")
}

/// The harness's `main`: `full` under `cargo bench` (which passes `--bench`),
/// else `quick` (as `cargo test --all-targets` runs it), on a multi-threaded
/// runtime.
pub fn run_main<P, F: Future<Output = ()>>(full: P, quick: P, bench: impl FnOnce(P) -> F) {
    let p = if std::env::args().any(|a| a == "--bench") {
        full
    } else {
        quick
    };
    attachment_gateway::upstream::install_crypto_provider();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(bench(p));
}
