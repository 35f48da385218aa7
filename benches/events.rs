//! Attachment events: webhook-to-subscriber latency, what idle watches cost, and
//! what a recorded event costs in memory.
//!
//! Starts the real gateway binary as its own process (`--sandbox`, so it trusts
//! the sandbox's signing certificate, with a webhook port), signs notifications
//! with the sandbox's key in this process (one token, as CorrigoPro's live 20
//! minutes), posts them to the webhook port at a fixed rate, and times each one
//! from just before its POST to its arrival at every subscriber (tonic clients in
//! this process). Baselines in the same run: the same POSTs to a bare HTTP
//! endpoint in this process (what loopback HTTP costs the sender), and the same
//! path with one subscriber instead of many.
//!
//! `cargo bench --bench events` runs the full sizes (see BENCHMARKS.md); without
//! `--bench` (as `cargo test --all-targets` runs it) it is a quick smoke run, so
//! the harness never rots. Nothing is asserted on timings.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use attachment_gateway::proto::attachment_service_client::AttachmentServiceClient;
use attachment_gateway::proto::watch_attachments_response::Payload;
use attachment_gateway::proto::{WatchAttachmentsRequest, WatchAttachmentsResponse};
use attachment_gateway::sandbox::NOTIFIER_KEY_PEM;
use attachment_gateway::sandbox::notifier::{AUDIENCE, Signer};
use bytes::Bytes;
use serde_json::json;
use tonic::Streaming;
use tonic::transport::Channel;

#[derive(Clone, Copy)]
struct Params {
    quick: bool,
    rate: u64,
    seconds: u64,
    subscribers: usize,
    idle_subscribers: usize,
    retained_events: usize,
}

impl Params {
    fn full() -> Self {
        Self {
            quick: false,
            rate: 1000,
            seconds: 10,
            subscribers: 100,
            idle_subscribers: 10_000,
            retained_events: 20_000,
        }
    }

    fn quick() -> Self {
        Self {
            quick: true,
            rate: 200,
            seconds: 1,
            subscribers: 10,
            idle_subscribers: 300,
            retained_events: 500,
        }
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    l.local_addr().expect("addr").port()
}

struct Gateway {
    child: Child,
    grpc: SocketAddr,
    webhook: String,
}

impl Gateway {
    fn start(p: Params) -> Self {
        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let hooks: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let e = |k: &str| format!("ATTACHMENT_GATEWAY_{k}");
        let many = (p.idle_subscribers * 2).to_string();
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
            .env(e("LOG__LEVEL"), "warn")
            .env("MIMALLOC_ARENA_EAGER_COMMIT", "0")
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

    fn rss_kib(&self) -> u64 {
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

async fn channel(addr: SocketAddr) -> Channel {
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
async fn open_watches(
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

fn notification(seq: usize, padding: usize) -> Bytes {
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

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

struct Run {
    /// ms from just before the POST to the event's arrival, one per (event, subscriber).
    delivery_ms: Vec<f64>,
    /// ms from just before the POST to its 2xx.
    ack_ms: Vec<f64>,
    sent: usize,
    seconds: f64,
}

/// Posts `rate`/s for `seconds` to `url`; with `watches`, times each event's
/// arrival at each of them.
async fn run(
    url: &str,
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
            .post(url)
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
async fn bare_endpoint() -> String {
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

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let p = if full {
        Params::full()
    } else {
        Params::quick()
    };
    attachment_gateway::upstream::install_crypto_provider();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(bench(p));
}

async fn bench(p: Params) {
    let gw = Gateway::start(p);
    let token = Signer::from_pem(NOTIFIER_KEY_PEM)
        .expect("key")
        .token(AUDIENCE, SystemTime::now(), Duration::from_secs(1200), true)
        .expect("token");
    // The gateway is up once a watch opens.
    drop(open_watches(gw.grpc, 1, 1).await);

    println!(
        "# attachment events ({} mode): {} notifications/s for {} s",
        if p.quick { "quick" } else { "full" },
        p.rate,
        p.seconds
    );
    let floor = run(
        &bare_endpoint().await,
        &token,
        p.rate,
        p.seconds,
        Vec::new(),
        0,
    )
    .await;
    let one = run(
        &gw.webhook,
        &token,
        p.rate,
        p.seconds,
        open_watches(gw.grpc, 1, 1).await,
        1_000_000,
    )
    .await;
    let many = run(
        &gw.webhook,
        &token,
        p.rate,
        p.seconds,
        open_watches(gw.grpc, p.subscribers, 10).await,
        2_000_000,
    )
    .await;
    let pr = |name: &str, r: &Run| {
        println!(
            "{name:<34} sent {:>6} in {:>5.2} s ({:>6.0}/s)  ack p50 {:>6.2} ms p99 {:>6.2} ms  delivery p50 {:>6.2} ms p99 {:>6.2} ms max {:>7.2} ms ({} deliveries)",
            r.sent,
            r.seconds,
            r.sent as f64 / r.seconds,
            percentile(&r.ack_ms, 0.5),
            percentile(&r.ack_ms, 0.99),
            percentile(&r.delivery_ms, 0.5),
            percentile(&r.delivery_ms, 0.99),
            r.delivery_ms.last().copied().unwrap_or(f64::NAN),
            r.delivery_ms.len(),
        );
    };
    pr("bare HTTP endpoint (floor)", &floor);
    pr("gateway, 1 subscriber", &one);
    pr(&format!("gateway, {} subscribers", p.subscribers), &many);
    println!(
        "ratios: ack p50 gateway/floor {:.2}; delivery p50 {}/1 subscribers {:.2}, p99 {:.2}",
        percentile(&many.ack_ms, 0.5) / percentile(&floor.ack_ms, 0.5),
        p.subscribers,
        percentile(&many.delivery_ms, 0.5) / percentile(&one.delivery_ms, 0.5),
        percentile(&many.delivery_ms, 0.99) / percentile(&one.delivery_ms, 0.99),
    );
    let lost = (many.sent * p.subscribers).saturating_sub(many.delivery_ms.len());
    println!("deliveries missing: {lost}");

    drop(gw);

    // Idle watches, on a fresh gateway: its RSS with none, then with many, open.
    let gw = Gateway::start(p);
    drop(open_watches(gw.grpc, 1, 1).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = gw.rss_kib();
    let t = Instant::now();
    let idle = open_watches(
        gw.grpc,
        p.idle_subscribers,
        p.idle_subscribers.div_ceil(100),
    )
    .await;
    let opened_in = t.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = gw.rss_kib();
    println!(
        "{} idle watches over {} connections: RSS {} -> {} KiB (+{:.1} MiB, {:.2} KiB per watch), opened in {:.2} s",
        p.idle_subscribers,
        p.idle_subscribers.div_ceil(100),
        before,
        after,
        after.saturating_sub(before) as f64 / 1024.0,
        after.saturating_sub(before) as f64 / p.idle_subscribers as f64,
        opened_in.as_secs_f64()
    );
    // One event to every idle watch: how long the last one waits.
    let fan = run(&gw.webhook, &token, 1, 1, idle, 3_000_000).await;
    println!(
        "one event to {} watches: delivery p50 {:.1} ms, p99 {:.1} ms, last {:.1} ms",
        p.idle_subscribers,
        percentile(&fan.delivery_ms, 0.5),
        percentile(&fan.delivery_ms, 0.99),
        fan.delivery_ms.last().copied().unwrap_or(f64::NAN)
    );

    drop(gw);

    // What a retained event costs, on a fresh gateway: RSS growth over many
    // recorded events (no subscriber), typical notification size.
    let gw = Gateway::start(p);
    drop(open_watches(gw.grpc, 1, 1).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = gw.rss_kib();
    let sample = notification(0, 0).len();
    let rate = if p.quick { 500 } else { 4000 };
    let n = p.retained_events;
    let r = run(
        &gw.webhook,
        &token,
        rate,
        (n as u64).div_ceil(rate),
        Vec::new(),
        4_000_000,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = gw.rss_kib();
    println!(
        "{} events recorded ({} B notifications, accepted at {:.0}/s): RSS +{:.1} MiB, {:.0} B per event (log entry + dedupe key); RSS before {} KiB",
        r.sent,
        sample,
        r.sent as f64 / r.seconds,
        after.saturating_sub(before) as f64 / 1024.0,
        after.saturating_sub(before) as f64 * 1024.0 / r.sent as f64,
        before
    );
}
