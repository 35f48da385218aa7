//! What sharing state through Redis costs, against the same measure with
//! per-process state in the same run:
//! - a write's p50: uploads of 1 KiB with a message id, one at a time (the lease,
//!   the outcome and the shared upstream budget are Redis round trips), and a
//!   ListAttachments p50 (one round trip: the upstream budget);
//! - events through Redis: notifications posted at a fixed rate, spread over the
//!   webhook ports of 3 replicas, to 100 subscribers spread over the same 3
//!   replicas; the baselines are one gateway with its in-process log, and the
//!   same one gateway with its log in Redis.
//!
//! Starts its own `redis-server` on a free loopback port (Debian's package, which
//! the README's test command installs; `REDIS_SERVER` names another binary) and
//! the gateway binary as separate processes (`--sandbox`). `cargo bench --bench
//! shared_state` runs the full sizes (see BENCHMARKS.md); without `--bench` (as
//! `cargo test --all-targets` runs it) it is a quick smoke run. Nothing is
//! asserted on timings.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use attachment_gateway::proto::attachment_service_client::AttachmentServiceClient;
use attachment_gateway::proto::upload_attachment_request::Payload;
use attachment_gateway::proto::{
    ListAttachmentsRequest, Person, UploadAttachmentRequest, UploadMetadata,
};
use attachment_gateway::sandbox::NOTIFIER_KEY_PEM;
use attachment_gateway::sandbox::notifier::{AUDIENCE, Signer};

mod common;
use common::*;

#[derive(Clone, Copy)]
struct Params {
    quick: bool,
    writes: usize,
    lists: usize,
    rate: u64,
    seconds: u64,
    subscribers: usize,
}

impl Params {
    fn full() -> Self {
        Self {
            quick: false,
            writes: 1000,
            lists: 2000,
            rate: 1000,
            seconds: 10,
            subscribers: 100,
        }
    }

    fn quick() -> Self {
        Self {
            quick: true,
            writes: 20,
            lists: 50,
            rate: 100,
            seconds: 1,
            subscribers: 10,
        }
    }
}

/// A `redis-server` of this run's own; killed when dropped.
struct RedisProc {
    child: Child,
    port: u16,
}

impl RedisProc {
    fn start() -> Option<Self> {
        let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let port = free_port();
        let child = Command::new(&bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let r = Self { child, port };
        for _ in 0..250 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(r);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Redis's `used_memory`, in bytes.
    fn used_memory(&self) -> u64 {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "INFO", "memory"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        out.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The settings every gateway here gets: no rate limit in the way.
fn env(redis: Option<&str>) -> Vec<(&'static str, String)> {
    let mut e = vec![
        ("RATE_LIMIT__UPSTREAM__RPS", "1000000".to_string()),
        ("RATE_LIMIT__UPSTREAM__BURST", "1000000".to_string()),
    ];
    if let Some(url) = redis {
        e.push(("SHARED_STATE__REDIS_URL", url.to_string()));
    }
    e
}

fn upload(i: usize, tag: &str) -> Vec<UploadAttachmentRequest> {
    let meta = UploadMetadata {
        work_order_id: 1001,
        name: format!("bench-{i}.txt"),
        mime_type: "text/plain".into(),
        message_id: format!("bench-{tag}-{i}"),
        performed_by: Some(Person {
            name: "Ana Tech".into(),
            phone: "+1 202 555 0141".into(),
        }),
        ..UploadMetadata::default()
    };
    vec![
        UploadAttachmentRequest {
            payload: Some(Payload::Metadata(meta)),
        },
        UploadAttachmentRequest {
            payload: Some(Payload::Chunk(vec![b'x'; 1024].into())),
        },
    ]
}

/// p50 of `n` uploads (each with a message id) and of `lists` list calls, one
/// at a time, in ms.
async fn unary(gw: &Gateway, n: usize, lists: usize, tag: &str) -> (f64, f64) {
    let mut c = AttachmentServiceClient::new(channel(gw.grpc).await);
    // Warm: the connection, the token, the first record.
    for i in 0..5 {
        c.upload_attachment(futures_util::stream::iter(upload(i, &format!("{tag}w"))))
            .await
            .expect("upload");
    }
    let mut up = Vec::with_capacity(n);
    for i in 0..n {
        let msgs = upload(i, tag);
        let t = Instant::now();
        c.upload_attachment(futures_util::stream::iter(msgs))
            .await
            .expect("upload");
        up.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut ls = Vec::with_capacity(lists);
    for _ in 0..lists {
        let t = Instant::now();
        c.list_attachments(ListAttachmentsRequest {
            work_order_id: 1002,
            view: 1,
        })
        .await
        .expect("list");
        ls.push(t.elapsed().as_secs_f64() * 1e3);
    }
    up.sort_by(f64::total_cmp);
    ls.sort_by(f64::total_cmp);
    (percentile(&up, 0.5), percentile(&ls, 0.5))
}

fn main() {
    run_main(Params::full(), Params::quick(), bench);
}

async fn bench(p: Params) {
    let Some(redis) = RedisProc::start() else {
        println!(
            "# shared state: no redis-server to run (the README's test command installs it): skipped"
        );
        return;
    };
    println!(
        "# shared state ({} mode)",
        if p.quick { "quick" } else { "full" }
    );
    let url = redis.url();
    let subs = p.subscribers * 2;

    // 1. What Redis adds to a write and to a read: two alternating pairs.
    let mut rows = Vec::new();
    for round in 0..2 {
        for shared in [false, true] {
            let gw = Gateway::start(subs, &env(shared.then_some(url.as_str())));
            let (up, list) = unary(&gw, p.writes, p.lists, &format!("r{round}{shared}")).await;
            rows.push((shared, up, list));
        }
    }
    for (shared, up, list) in &rows {
        println!(
            "{:<22} upload 1 KiB with a message id p50 {up:>6.3} ms   ListAttachments p50 {list:>6.3} ms",
            if *shared {
                "shared through Redis"
            } else {
                "per-process state"
            }
        );
    }
    let med = |shared: bool, f: fn(&(bool, f64, f64)) -> f64| {
        let mut v: Vec<f64> = rows.iter().filter(|r| r.0 == shared).map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (lu, ll) = (med(false, |r| r.1), med(false, |r| r.2));
    let (ru, rl) = (med(true, |r| r.1), med(true, |r| r.2));
    println!(
        "Redis adds: upload p50 +{:.3} ms ({:.2}x), ListAttachments p50 +{:.3} ms ({:.2}x)",
        ru - lu,
        ru / lu,
        rl - ll,
        rl / ll
    );

    // 2. Events: one in-process gateway (baseline), then 3 replicas and Redis.
    let token = Signer::from_pem(NOTIFIER_KEY_PEM)
        .expect("key")
        .token(AUDIENCE, SystemTime::now(), Duration::from_secs(1200), true)
        .expect("token");
    let one = Gateway::start(subs, &env(None));
    drop(open_watches(one.grpc, 1, 1).await);
    let base = run(
        std::slice::from_ref(&one.webhook),
        &token,
        p.rate,
        p.seconds,
        open_watches(one.grpc, p.subscribers, 10).await,
        0,
    )
    .await;
    drop(one);
    // The same one gateway with its log in Redis: what Redis costs alone.
    let one = Gateway::start(subs, &env(Some(&url)));
    drop(open_watches(one.grpc, 1, 1).await);
    let one_redis = run(
        std::slice::from_ref(&one.webhook),
        &token,
        p.rate,
        p.seconds,
        open_watches(one.grpc, p.subscribers, 10).await,
        500_000,
    )
    .await;
    drop(one);
    let replicas: Vec<Gateway> = (0..3)
        .map(|_| Gateway::start(subs, &env(Some(&url))))
        .collect();
    let mut watches = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        drop(open_watches(r.grpc, 1, 1).await);
        let n = p.subscribers / 3 + usize::from(i < p.subscribers % 3);
        watches.extend(open_watches(r.grpc, n, 4).await);
    }
    let hooks: Vec<String> = replicas.iter().map(|r| r.webhook.clone()).collect();
    let mem_before = redis.used_memory();
    let shared = run(&hooks, &token, p.rate, p.seconds, watches, 1_000_000).await;
    let mem_after = redis.used_memory();
    let pr = |name: &str, r: &Run| {
        println!(
            "{name:<44} sent {:>6} in {:>5.2} s ({:>6.0}/s)  ack p50 {:>6.2} ms p99 {:>6.2} ms  delivery p50 {:>6.2} ms p99 {:>6.2} ms ({} deliveries, {} missing)",
            r.sent,
            r.seconds,
            r.sent as f64 / r.seconds,
            percentile(&r.ack_ms, 0.5),
            percentile(&r.ack_ms, 0.99),
            percentile(&r.delivery_ms, 0.5),
            percentile(&r.delivery_ms, 0.99),
            r.delivery_ms.len(),
            (r.sent * p.subscribers).saturating_sub(r.delivery_ms.len()),
        );
    };
    pr(
        &format!("1 gateway, in-process log, {} subscribers", p.subscribers),
        &base,
    );
    pr(
        &format!("1 gateway, Redis, {} subscribers", p.subscribers),
        &one_redis,
    );
    pr(
        &format!("3 replicas, Redis, {} subscribers spread", p.subscribers),
        &shared,
    );
    println!(
        "ratios 1 gateway Redis/in-process: ack p50 {:.2}, delivery p50 {:.2}, p99 {:.2}",
        percentile(&one_redis.ack_ms, 0.5) / percentile(&base.ack_ms, 0.5),
        percentile(&one_redis.delivery_ms, 0.5) / percentile(&base.delivery_ms, 0.5),
        percentile(&one_redis.delivery_ms, 0.99) / percentile(&base.delivery_ms, 0.99),
    );
    println!(
        "ratios 3 replicas Redis/1 gateway in-process: ack p50 {:.2}, delivery p50 {:.2}, p99 {:.2}; events/s to every subscriber: {:.0}",
        percentile(&shared.ack_ms, 0.5) / percentile(&base.ack_ms, 0.5),
        percentile(&shared.delivery_ms, 0.5) / percentile(&base.delivery_ms, 0.5),
        percentile(&shared.delivery_ms, 0.99) / percentile(&base.delivery_ms, 0.99),
        shared.delivery_ms.len() as f64 / p.subscribers as f64 / shared.seconds,
    );
    println!(
        "Redis memory for {} events and their dedupe keys: +{:.1} MiB, {:.0} B per recorded notification",
        shared.sent,
        mem_after.saturating_sub(mem_before) as f64 / (1 << 20) as f64,
        mem_after.saturating_sub(mem_before) as f64 / shared.sent as f64,
    );
}
