//! What the gateway costs against calling the REST API directly.
//!
//! Starts a fast CorrigoPro-shaped sink on loopback (in this process), starts the
//! real gateway binary as its own process pointed at it, and measures each scenario
//! both ways (direct: reqwest to the sink, as a service would without the gateway;
//! via gateway: the tonic client), alternating, over several rounds; prints medians
//! and ratios, and writes the same figures as JSON.
//!
//! `cargo bench --bench gateway` runs the full sizes (see BENCHMARKS.md). Without
//! `--bench` (as `cargo test --all-targets` runs it) it is a quick smoke run with
//! small sizes, so the harness never rots.

mod clients;
mod measure;
mod procs;
mod report;
mod sink;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use attachment_gateway::proto::AttachmentView;
use attachment_gateway::proto::attachment_service_client::AttachmentServiceClient;
use bytes::Bytes;

use crate::clients::{
    connect, direct_download, direct_list, direct_upload, gateway_download, gateway_list,
    gateway_upload,
};
use crate::measure::{Row, median, per_gib, percentile, run_concurrent, sha256_seconds_per_gib};
use crate::procs::{BaselineProcess, GatewayProcess, bench_cpu, grpc_floor_main, relay_main};
use crate::sink::start_sink;

pub(crate) const MIB: usize = 1024 * 1024;

#[derive(Clone, Copy)]
pub(crate) struct Params {
    pub(crate) quick: bool,
    pub(crate) rounds: usize,
    pub(crate) big: usize,
    pub(crate) small: usize,
    pub(crate) small_files: usize,
    pub(crate) concurrency: usize,
    pub(crate) big_concurrency: usize,
    pub(crate) latency_calls: usize,
    pub(crate) unary_calls: usize,
    pub(crate) unary_concurrency: usize,
    pub(crate) chunk: usize,
    pub(crate) list_items: usize,
}

impl Params {
    fn full() -> Self {
        Self {
            quick: false,
            rounds: 5,
            big: 20 * MIB,
            small: MIB,
            small_files: 256,
            concurrency: 32,
            big_concurrency: 32,
            latency_calls: 2000,
            unary_calls: 20_000,
            unary_concurrency: 64,
            chunk: 256 * 1024,
            list_items: 20,
        }
    }

    fn quick() -> Self {
        Self {
            quick: true,
            rounds: 1,
            big: MIB,
            small: 64 * 1024,
            small_files: 16,
            concurrency: 8,
            big_concurrency: 4,
            latency_calls: 50,
            unary_calls: 200,
            unary_concurrency: 16,
            chunk: 256 * 1024,
            list_items: 20,
        }
    }
}

fn main() {
    if let Ok(to) = std::env::var("BENCH_RELAY_TO") {
        return relay_main(&to);
    }
    if std::env::var_os("BENCH_GRPC_FLOOR").is_some() {
        return grpc_floor_main();
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(bench());
}

async fn bench() {
    let full = std::env::args().any(|a| a == "--bench");
    let mut p = if full {
        Params::full()
    } else {
        Params::quick()
    };
    // BENCH_CHUNK=65536: the caller's upload chunk size in bytes (default 256 KiB).
    if let Some(chunk) = std::env::var("BENCH_CHUNK")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|c| (1024..=4 * MIB - 64).contains(c))
    {
        p.chunk = chunk;
    }
    // BENCH_SCENARIOS=1,3 runs only those scenarios (for profiling one path).
    let only: Option<Vec<u32>> = std::env::var("BENCH_SCENARIOS")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect());
    let run = |n: u32| only.as_ref().is_none_or(|o| o.contains(&n));
    attachment_gateway::upstream::install_crypto_provider();
    let (sink_addr, sink) = start_sink(&p).await;
    let gw = GatewayProcess::start(sink_addr);
    eprintln!("gateway process: pid {}", gw.pid());
    let relay = BaselineProcess::start_relay(sink_addr);
    let hop = relay.addr;
    let channel = connect(gw.addr).await;
    let client = AttachmentServiceClient::new(channel.clone());
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .expect("http");
    let big = Bytes::from(vec![42u8; p.big]);
    let small = Bytes::from(vec![43u8; p.small]);
    let mut rows: Vec<Row> = Vec::new();
    let mib = |bytes: f64| bytes / MIB as f64;

    // Warm up both paths (connections, token, allocator).
    for _ in 0..3 {
        direct_upload(&http, sink_addr, small.clone(), p.chunk).await;
        gateway_upload(&mut client.clone(), small.clone(), p.chunk).await;
        direct_list(&http, sink_addr).await;
        gateway_list(&mut client.clone(), AttachmentView::Full).await;
        gateway_list(&mut client.clone(), AttachmentView::Basic).await;
        direct_upload(&http, hop, small.clone(), p.chunk).await;
        direct_list(&http, hop).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let idle_rss_kib = gw.status_kib("VmRSS:");

    let mut upload_cpu = 0.0;
    let mut gw_bytes = 0usize;
    let mut peak_growth_kib = 0u64;
    let mut unary_cpu = 0.0;
    let mut health_p50: Option<(f64, f64)> = None;
    let mut unary_calls = 0usize;
    // CPU of this process (client + sink) per path: what the direct path costs in
    // all, and what the gateway path costs besides the gateway itself.
    let (mut up_bench_direct, mut up_bench_gw, mut up_bytes) = (0.0, 0.0, 0usize);
    let (mut un_bench_direct, mut un_bench_gw, mut un_calls) = (0.0, 0.0, 0usize);
    // The same for the BASIC view's calls (as many as the FULL view's).
    let (mut basic_cpu, mut basic_bench) = (0.0, 0.0);
    // The bare hop's own CPU, for the same work as the gateway's.
    let (mut hop_up_cpu, mut hop_up_bytes, mut hop_un_cpu, mut hop_un_calls) =
        (0.0, 0usize, 0.0, 0usize);
    // Downloads: the gateway's and the relay's own CPU for the same bytes.
    let (mut dl_cpu, mut hop_dl_cpu, mut dl_bytes) = (0.0, 0.0, 0usize);

    // 1. One big upload, one stream.
    if run(1) {
        let (mut d, mut g, mut hops) = (Vec::new(), Vec::new(), Vec::new());
        let cpu0 = gw.cpu_seconds();
        for _ in 0..p.rounds {
            let t = Instant::now();
            let ((), cpu) = bench_cpu(direct_upload(&http, sink_addr, big.clone(), p.chunk)).await;
            d.push(mib(p.big as f64) / t.elapsed().as_secs_f64());
            up_bench_direct += cpu;
            let (t, cpu) = (Instant::now(), relay.cpu_seconds());
            direct_upload(&http, hop, big.clone(), p.chunk).await;
            hops.push(mib(p.big as f64) / t.elapsed().as_secs_f64());
            hop_up_cpu += relay.cpu_seconds() - cpu;
            hop_up_bytes += p.big;
            let t = Instant::now();
            let ((), cpu) =
                bench_cpu(gateway_upload(&mut client.clone(), big.clone(), p.chunk)).await;
            g.push(mib(p.big as f64) / t.elapsed().as_secs_f64());
            up_bench_gw += cpu;
            gw_bytes += p.big;
            up_bytes += p.big;
        }
        upload_cpu += gw.cpu_seconds() - cpu0;
        rows.push(Row {
            scenario: format!("1. upload {} MiB, one stream", p.big / MIB.max(1)),
            unit: "MiB/s",
            direct: median(d),
            gateway: median(g),
            higher_is_better: true,
            hop: Some(median(hops)),
            note: String::new(),
        });
    }

    // 2. Small files at concurrency.
    if run(2) {
        let (mut d, mut g, mut hops) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..p.rounds {
            let (h, s) = (http.clone(), small.clone());
            let secs = run_concurrent(p.small_files, p.concurrency, move |_| {
                let (h, s) = (h.clone(), s.clone());
                async move { direct_upload(&h, sink_addr, s, p.chunk).await }
            })
            .await;
            d.push(p.small_files as f64 / secs);
            let (hc, s) = (http.clone(), small.clone());
            let secs = run_concurrent(p.small_files, p.concurrency, move |_| {
                let (hc, s) = (hc.clone(), s.clone());
                async move { direct_upload(&hc, hop, s, p.chunk).await }
            })
            .await;
            hops.push(p.small_files as f64 / secs);
            let (c, s) = (client.clone(), small.clone());
            let cpu = gw.cpu_seconds();
            let secs = run_concurrent(p.small_files, p.concurrency, move |_| {
                let (mut c, s) = (c.clone(), s.clone());
                async move { gateway_upload(&mut c, s, p.chunk).await }
            })
            .await;
            upload_cpu += gw.cpu_seconds() - cpu;
            gw_bytes += p.small_files * p.small;
            g.push(p.small_files as f64 / secs);
        }
        let (dm, gm) = (median(d), median(g));
        rows.push(Row {
            scenario: format!(
                "2. upload {} KiB files, concurrency {}",
                p.small / 1024,
                p.concurrency
            ),
            unit: "files/s",
            direct: dm,
            gateway: gm,
            higher_is_better: true,
            hop: Some(median(hops)),
            note: format!(
                "{:.0} vs {:.0} MiB/s",
                mib(dm * p.small as f64),
                mib(gm * p.small as f64)
            ),
        });
    }

    // 3. Big files at concurrency, with the gateway's peak RSS.
    if run(3) {
        let (mut d, mut g, mut hops) = (Vec::new(), Vec::new(), Vec::new());
        let rounds3 = p.rounds.min(3);
        for _ in 0..rounds3 {
            let (h, b) = (http.clone(), big.clone());
            let secs = run_concurrent(p.big_concurrency, p.big_concurrency, move |_| {
                let (h, b) = (h.clone(), b.clone());
                async move { direct_upload(&h, sink_addr, b, p.chunk).await }
            })
            .await;
            d.push(mib((p.big_concurrency * p.big) as f64) / secs);
            let (hc, b) = (http.clone(), big.clone());
            let cpu = relay.cpu_seconds();
            let secs = run_concurrent(p.big_concurrency, p.big_concurrency, move |_| {
                let (hc, b) = (hc.clone(), b.clone());
                async move { direct_upload(&hc, hop, b, p.chunk).await }
            })
            .await;
            hop_up_cpu += relay.cpu_seconds() - cpu;
            hop_up_bytes += p.big_concurrency * p.big;
            hops.push(mib((p.big_concurrency * p.big) as f64) / secs);
            gw.reset_peak();
            let before = gw.status_kib("VmRSS:");
            let cpu = gw.cpu_seconds();
            let (c, b) = (client.clone(), big.clone());
            let secs = run_concurrent(p.big_concurrency, p.big_concurrency, move |_| {
                let (mut c, b) = (c.clone(), b.clone());
                async move { gateway_upload(&mut c, b, p.chunk).await }
            })
            .await;
            upload_cpu += gw.cpu_seconds() - cpu;
            gw_bytes += p.big_concurrency * p.big;
            peak_growth_kib = peak_growth_kib.max(gw.status_kib("VmHWM:").saturating_sub(before));
            g.push(mib((p.big_concurrency * p.big) as f64) / secs);
        }
        rows.push(Row {
            scenario: format!(
                "3. upload {} MiB files, concurrency {}",
                p.big / MIB.max(1),
                p.big_concurrency
            ),
            unit: "MiB/s",
            direct: median(d),
            gateway: median(g),
            higher_is_better: true,
            hop: Some(median(hops)),
            note: format!(
                "gateway peak RSS +{:.1} MiB over {:.1} MiB idle",
                peak_growth_kib as f64 / 1024.0,
                idle_rss_kib as f64 / 1024.0
            ),
        });
    }

    // 4. Unary latency at concurrency 1.
    if run(4) {
        let (mut d, mut g, mut hops) = (Vec::new(), Vec::new(), Vec::new());
        let mut g_basic = Vec::new();
        let mut c1 = client.clone();
        // A health check through the same channel: a gRPC round trip through the
        // gateway's layers with no upstream call, to split the added latency.
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let mut checks = Vec::new();
        let floor = BaselineProcess::start_grpc_floor();
        let mut bare =
            tonic_health::pb::health_client::HealthClient::new(connect(floor.addr).await);
        let mut bare_checks = Vec::new();
        for _ in 0..p.latency_calls {
            let t = Instant::now();
            direct_list(&http, sink_addr).await;
            d.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            direct_list(&http, hop).await;
            hops.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            gateway_list(&mut c1, AttachmentView::Full).await;
            g.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            gateway_list(&mut c1, AttachmentView::Basic).await;
            g_basic.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .expect("health check");
            checks.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            bare.check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .expect("bare health check");
            bare_checks.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let (d50, g50, h50) = (median(d.clone()), median(g.clone()), median(hops.clone()));
        let gb50 = median(g_basic);
        rows.push(Row {
            scenario: format!(
                "4. ListAttachments ({} items) p50, concurrency 1, FULL view (the default)",
                p.list_items
            ),
            unit: "ms",
            direct: d50,
            gateway: g50,
            higher_is_better: false,
            hop: Some(h50),
            note: format!("added {:.3} ms (bare hop: {:.3} ms)", g50 - d50, h50 - d50),
        });
        rows.push(Row {
            scenario: "4. ListAttachments p50, concurrency 1, BASIC view".into(),
            unit: "ms",
            direct: d50,
            gateway: gb50,
            higher_is_better: false,
            hop: Some(h50),
            note: format!("added {:.3} ms", gb50 - d50),
        });
        rows.push(Row {
            scenario: "4. ListAttachments p99, concurrency 1, FULL view".into(),
            unit: "ms",
            direct: percentile(d, 0.99),
            gateway: percentile(g, 0.99),
            higher_is_better: false,
            hop: Some(percentile(hops, 0.99)),
            note: String::new(),
        });
        let (c50, b50) = (median(checks), median(bare_checks));
        println!(
            "scenario 4: a health check (a gRPC round trip, no upstream call) takes {c50:.3} ms at p50 through the gateway, {b50:.3} ms through a bare tonic server"
        );
        health_p50 = Some((c50, b50));
    }

    // 5. Unary throughput at concurrency.
    if run(5) {
        let (mut d, mut g, mut hops) = (Vec::new(), Vec::new(), Vec::new());
        let mut g_basic = Vec::new();
        for _ in 0..p.rounds {
            let h = http.clone();
            let (secs, cpu) = bench_cpu(run_concurrent(
                p.unary_calls,
                p.unary_concurrency,
                move |_| {
                    let h = h.clone();
                    async move { direct_list(&h, sink_addr).await }
                },
            ))
            .await;
            d.push(p.unary_calls as f64 / secs);
            un_bench_direct += cpu;
            let hc = http.clone();
            let cpu = relay.cpu_seconds();
            let secs = run_concurrent(p.unary_calls, p.unary_concurrency, move |_| {
                let hc = hc.clone();
                async move { direct_list(&hc, hop).await }
            })
            .await;
            hop_un_cpu += relay.cpu_seconds() - cpu;
            hop_un_calls += p.unary_calls;
            hops.push(p.unary_calls as f64 / secs);
            for view in [AttachmentView::Full, AttachmentView::Basic] {
                let c = client.clone();
                let gw_cpu = gw.cpu_seconds();
                let (secs, cpu) = bench_cpu(run_concurrent(
                    p.unary_calls,
                    p.unary_concurrency,
                    move |_| {
                        let mut c = c.clone();
                        async move { gateway_list(&mut c, view).await }
                    },
                ))
                .await;
                let gw_cpu = gw.cpu_seconds() - gw_cpu;
                if view == AttachmentView::Full {
                    unary_cpu += gw_cpu;
                    un_bench_gw += cpu;
                    unary_calls += p.unary_calls;
                    un_calls += p.unary_calls;
                    g.push(p.unary_calls as f64 / secs);
                } else {
                    basic_cpu += gw_cpu;
                    basic_bench += cpu;
                    g_basic.push(p.unary_calls as f64 / secs);
                }
            }
        }
        let (d, hops) = (median(d), median(hops));
        rows.push(Row {
            scenario: format!(
                "5. ListAttachments, concurrency {}, FULL view (the default)",
                p.unary_concurrency
            ),
            unit: "req/s",
            direct: d,
            gateway: median(g),
            higher_is_better: true,
            hop: Some(hops),
            note: String::new(),
        });
        rows.push(Row {
            scenario: format!(
                "5. ListAttachments, concurrency {}, BASIC view",
                p.unary_concurrency
            ),
            unit: "req/s",
            direct: d,
            gateway: median(g_basic),
            higher_is_better: true,
            hop: Some(hops),
            note: "the typed fields only".into(),
        });
    }

    // 6. Download.
    if run(6) {
        let (mut d, mut g, mut hops) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..p.rounds {
            let t = Instant::now();
            assert_eq!(direct_download(&http, sink_addr).await, p.big);
            d.push(mib(p.big as f64) / t.elapsed().as_secs_f64());
            let (t, cpu) = (Instant::now(), relay.cpu_seconds());
            assert_eq!(direct_download(&http, hop).await, p.big);
            hops.push(mib(p.big as f64) / t.elapsed().as_secs_f64());
            hop_dl_cpu += relay.cpu_seconds() - cpu;
            let (t, cpu) = (Instant::now(), gw.cpu_seconds());
            assert_eq!(gateway_download(&mut client.clone()).await, p.big);
            g.push(mib(p.big as f64) / t.elapsed().as_secs_f64());
            dl_cpu += gw.cpu_seconds() - cpu;
            dl_bytes += p.big;
        }
        rows.push(Row {
            scenario: format!("6. download {} MiB", p.big / MIB.max(1)),
            unit: "MiB/s",
            direct: median(d),
            gateway: median(g),
            higher_is_better: true,
            hop: Some(median(hops)),
            note: String::new(),
        });
    }

    // 7. CPU cost of the gateway process.
    let gib = gw_bytes as f64 / (1024.0 * MIB as f64);
    let cpu_per_gib = if gib > 0.0 {
        upload_cpu / gib
    } else {
        f64::NAN
    };
    let cpu_per_10k = if unary_calls > 0 {
        unary_cpu / unary_calls as f64 * 10_000.0
    } else {
        f64::NAN
    };
    let basic_cpu_per_10k = if unary_calls > 0 {
        basic_cpu / unary_calls as f64 * 10_000.0
    } else {
        f64::NAN
    };

    // Where the CPU goes: the direct path's whole cost (client + sink) against the
    // gateway path's cost outside the gateway. If the second alone exceeds what
    // the target ratio allows, no gateway could meet the target on this machine.
    // /proc counts CPU in 10 ms ticks: a quick run may be too short to see any.
    let measurable = |a: f64, b: f64| a > 0.0 && b > 0.0;
    if up_bytes > 0 && !measurable(up_bench_direct, up_bench_gw) {
        println!("client + sink CPU for scenario 1: too short to measure (10 ms ticks)");
    }
    if up_bytes > 0 && measurable(up_bench_direct, up_bench_gw) {
        let per_gib = |s: f64| s / (up_bytes as f64 / (1024.0 * MIB as f64));
        rows.push(Row {
            scenario: "7. client + sink CPU per GiB uploaded (scenario 1)".into(),
            unit: "s",
            direct: per_gib(up_bench_direct),
            gateway: per_gib(up_bench_gw),
            higher_is_better: false,
            hop: None,
            note: "the bench process: the caller's side and the upstream's; the gateway's own CPU is apart".into(),
        });
    }
    if un_calls > 0 && !measurable(un_bench_direct, un_bench_gw) {
        println!("client + sink CPU for scenario 5: too short to measure (10 ms ticks)");
    }
    if un_calls > 0 && measurable(un_bench_direct, un_bench_gw) {
        let per_10k = |s: f64| s / un_calls as f64 * 10_000.0;
        rows.push(Row {
            scenario: "7. client + sink CPU per 10k unary calls (scenario 5, FULL view)".into(),
            unit: "s",
            direct: per_10k(un_bench_direct),
            gateway: per_10k(un_bench_gw),
            higher_is_better: false,
            hop: None,
            note: "the bench process; the gateway's own CPU is apart".into(),
        });
        if basic_bench > 0.0 {
            rows.push(Row {
                scenario: "7. client + sink CPU per 10k unary calls (scenario 5, BASIC view)"
                    .into(),
                unit: "s",
                direct: per_10k(un_bench_direct),
                gateway: per_10k(basic_bench),
                higher_is_better: false,
                hop: None,
                note: "the bench process; the gateway's own CPU is apart".into(),
            });
        }
    }

    // Report.
    let hop_per_gib = if hop_up_bytes > 0 {
        hop_up_cpu / (hop_up_bytes as f64 / (1024.0 * MIB as f64))
    } else {
        f64::NAN
    };
    let hop_per_10k = if hop_un_calls > 0 {
        hop_un_cpu / hop_un_calls as f64 * 10_000.0
    } else {
        f64::NAN
    };
    // SHA-256 alone, as the upload path hashes (same implementation, the
    // caller's chunk size), on this machine in this run: the part of the
    // upload's CPU no relay pays.
    let sha256_per_gib = sha256_seconds_per_gib(if p.quick { 16 } else { 256 }, p.chunk).await;
    let figures = report::Figures {
        gib,
        cpu_per_gib,
        cpu_per_10k,
        basic_cpu_per_10k,
        unary_calls,
        hop_per_gib,
        hop_per_10k,
        peak_growth_kib,
        idle_rss_kib,
        sink_bytes_in: sink.bytes_in.load(Ordering::Relaxed),
        health_p50,
        dl_per_gib: per_gib(dl_cpu, dl_bytes),
        hop_dl_per_gib: per_gib(hop_dl_cpu, dl_bytes),
        sha256_per_gib,
    };
    report::print(&p, &rows, &figures);
    report::write_json(&p, &rows, &figures);
    // Sanity: the harness measured something real.
    assert!(rows.iter().all(|r| r.direct.is_finite()
        && r.gateway.is_finite()
        && r.direct > 0.0
        && r.gateway > 0.0));
    assert!(
        rows.iter()
            .filter_map(|r| r.hop)
            .all(|h| h.is_finite() && h > 0.0)
    );
    drop(gw);
    drop(relay);
}
