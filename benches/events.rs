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

use std::time::{Duration, Instant, SystemTime};

use attachment_gateway::sandbox::NOTIFIER_KEY_PEM;
use attachment_gateway::sandbox::notifier::{AUDIENCE, Signer};

mod common;
use common::*;

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

fn main() {
    run_main(Params::full(), Params::quick(), bench);
}

async fn bench(p: Params) {
    let gw = Gateway::start(p.idle_subscribers * 2, &[]);
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
        &[bare_endpoint().await],
        &token,
        p.rate,
        p.seconds,
        Vec::new(),
        0,
    )
    .await;
    let one = run(
        std::slice::from_ref(&gw.webhook),
        &token,
        p.rate,
        p.seconds,
        open_watches(gw.grpc, 1, 1).await,
        1_000_000,
    )
    .await;
    let many = run(
        std::slice::from_ref(&gw.webhook),
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
    let gw = Gateway::start(p.idle_subscribers * 2, &[]);
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
    let fan = run(
        std::slice::from_ref(&gw.webhook),
        &token,
        1,
        1,
        idle,
        3_000_000,
    )
    .await;
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
    let gw = Gateway::start(p.idle_subscribers * 2, &[]);
    drop(open_watches(gw.grpc, 1, 1).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = gw.rss_kib();
    let sample = notification(0, 0).len();
    let rate = if p.quick { 500 } else { 4000 };
    let n = p.retained_events;
    let r = run(
        std::slice::from_ref(&gw.webhook),
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
