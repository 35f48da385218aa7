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

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use attachment_gateway::proto::attachment_service_client::AttachmentServiceClient;
use attachment_gateway::proto::download_attachment_response::Payload as Down;
use attachment_gateway::proto::upload_attachment_request::Payload;
use attachment_gateway::proto::{
    AttachmentView, DownloadAttachmentRequest, ListAttachmentsRequest, Person,
    UploadAttachmentRequest, UploadMetadata,
};
use axum::extract::{Multipart, State};
use axum::routing::{get, post};
use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::json;
use tokio::net::TcpListener;
use tonic::transport::Channel;

const MIB: usize = 1024 * 1024;

#[derive(Clone, Copy)]
struct Params {
    quick: bool,
    rounds: usize,
    big: usize,
    small: usize,
    small_files: usize,
    concurrency: usize,
    big_concurrency: usize,
    latency_calls: usize,
    unary_calls: usize,
    unary_concurrency: usize,
    chunk: usize,
    list_items: usize,
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

// ---------------------------------------------------------------- the sink

#[derive(Clone)]
struct Sink {
    list: Bytes,
    file: Bytes,
    base: Arc<String>,
    bytes_in: Arc<AtomicU64>,
}

async fn sink_token() -> axum::Json<serde_json::Value> {
    axum::Json(json!({"access_token": "bench-token", "token_type": "bearer", "expires_in": 1199}))
}

async fn sink_upload(State(s): State<Sink>, mut mp: Multipart) -> axum::response::Response {
    use axum::response::IntoResponse;
    let mut n = 0u64;
    loop {
        match mp.next_field().await {
            Ok(Some(mut f)) => loop {
                match f.chunk().await {
                    Ok(Some(c)) => n += c.len() as u64,
                    Ok(None) => break,
                    Err(_) => {
                        return (axum::http::StatusCode::BAD_REQUEST, "broken").into_response();
                    }
                }
            },
            Ok(None) => break,
            Err(_) => return (axum::http::StatusCode::BAD_REQUEST, "broken").into_response(),
        }
    }
    s.bytes_in.fetch_add(n, Ordering::Relaxed);
    axum::Json(
        json!({"AttachmentId": "00000000-0000-0000-0000-000000000001", "MessageId": "bench"}),
    )
    .into_response()
}

async fn sink_list(State(s): State<Sink>) -> ([(axum::http::HeaderName, &'static str); 1], Bytes) {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        s.list.clone(),
    )
}

async fn sink_link(State(s): State<Sink>) -> axum::Json<serde_json::Value> {
    axum::Json(json!({"Url": format!("{}/files/big?sig=x", s.base)}))
}

async fn sink_file(State(s): State<Sink>) -> ([(axum::http::HeaderName, &'static str); 1], Bytes) {
    (
        [(axum::http::header::CONTENT_TYPE, "application/octet-stream")],
        s.file.clone(),
    )
}

async fn start_sink(p: &Params) -> (SocketAddr, Sink) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
    let addr = listener.local_addr().expect("addr");
    let items: Vec<_> = (0..p.list_items)
        .map(|i| {
            json!({"AttachmentId": format!("3f2b8c1e-5d4a-4e7b-9c61-{i:012}"), "Name": format!("photo-{i}.jpg"),
                   "MimeType": "image/jpeg", "Size": 123_456 + i, "DocumentType": "Picture", "Subtype": "Picture",
                   "CreatedDate": "2026-11-28T10:00:00Z", "PerformedBy": {"Name": "Ana Tech", "Phone": null}})
        })
        .collect();
    let sink = Sink {
        list: Bytes::from(serde_json::to_vec(&items).expect("json")),
        file: Bytes::from(vec![7u8; p.big]),
        base: Arc::new(format!("http://{addr}")),
        bytes_in: Arc::new(AtomicU64::new(0)),
    };
    let app = axum::Router::new()
        .route("/oauth/token", post(sink_token))
        .route("/Direct/api/attachments", get(sink_list).post(sink_upload))
        .route("/Direct/api/attachments/downloadUrl", get(sink_link))
        .route("/files/big", get(sink_file))
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(sink.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, sink)
}

// ---------------------------------------------------------------- the gateway process

struct GatewayProcess {
    child: Child,
    addr: SocketAddr,
}

impl GatewayProcess {
    fn start(sink: SocketAddr) -> Self {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
            l.local_addr().expect("addr").port()
        };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let e = |k: &str| format!("ATTACHMENT_GATEWAY_{k}");
        let child = Command::new(env!("CARGO_BIN_EXE_attachment-gateway"))
            .args(["--listen", &addr.to_string()])
            .env(e("UPSTREAM__BASE_URL"), format!("http://{sink}/Direct"))
            .env(
                e("UPSTREAM__TOKEN_URL"),
                format!("http://{sink}/oauth/token"),
            )
            .env(e("UPSTREAM__CLIENT_ID"), "bench")
            .env(e("UPSTREAM__CLIENT_SECRET"), "bench-secret")
            .env(e("AUTH__ALLOW_UNAUTHENTICATED"), "true")
            // The sink's download links are loopback http.
            .env(e("UPSTREAM__ALLOW_PRIVATE_DOWNLOAD_ADDRESSES"), "true")
            .env(e("UPSTREAM__ALLOW_HTTP_DOWNLOADS"), "true")
            .env(e("TELEMETRY__ADMIN_LISTEN"), "127.0.0.1:0")
            .env(e("RATE_LIMIT__PER_CALLER__RPS"), "1000000")
            .env(e("RATE_LIMIT__PER_CALLER__BURST"), "1000000")
            .env(e("RATE_LIMIT__UPSTREAM__RPS"), "1000000")
            .env(e("RATE_LIMIT__UPSTREAM__BURST"), "1000000")
            .env(e("RATE_LIMIT__MAX_CONCURRENT_UPLOADS"), "1024")
            .env(e("RATE_LIMIT__MAX_CONCURRENT_UPLOADS_PER_CALLER"), "1024")
            .env(e("RATE_LIMIT__MAX_CONCURRENT_DOWNLOADS"), "1024")
            .env(e("RATE_LIMIT__MAX_CONCURRENT_DOWNLOADS_PER_CALLER"), "1024")
            .env(
                e("RATE_LIMIT__MAX_INFLIGHT_UPLOAD_BYTES"),
                (1024 * MIB).to_string(),
            )
            .env(e("LOG__LEVEL"), "warn")
            // As the container image and the chart run it.
            .env("MIMALLOC_ARENA_EAGER_COMMIT", "0")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the gateway binary");
        Self { child, addr }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn status_kib(&self, field: &str) -> u64 {
        let text =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        text.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Resets VmHWM (peak RSS) to the current RSS.
    fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5");
    }

    /// User + system CPU seconds so far.
    fn cpu_seconds(&self) -> f64 {
        proc_cpu_seconds(&self.pid().to_string())
    }
}

/// User + system CPU seconds of a process so far (`self` for this one), from
/// /proc/<pid>/stat (clock ticks of 1/100 s).
fn proc_cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds spent by this process (the client and the sink) over `f`.
async fn bench_cpu<F: std::future::Future>(f: F) -> (F::Output, f64) {
    let before = proc_cpu_seconds("self");
    let out = f.await;
    (out, proc_cpu_seconds("self") - before)
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- the bare hop

/// A baseline server: this bench binary re-run as its own process, which prints
/// its address and serves until killed. Two kinds:
/// - the cheapest extra hop there is, a TCP relay (`BENCH_RELAY_TO`) that copies
///   bytes between the caller and the sink and understands nothing: the direct
///   client's requests through it measure what any proxy on this machine costs
///   before doing any work of its own;
/// - a bare tonic server (`BENCH_GRPC_FLOOR`): what one gRPC round trip costs.
struct BaselineProcess {
    child: Child,
    addr: SocketAddr,
}

impl BaselineProcess {
    fn start_relay(sink: SocketAddr) -> Self {
        Self::start_mode("BENCH_RELAY_TO", &sink.to_string())
    }

    /// A bare tonic server (the health service alone, no layers) in its own
    /// process: the floor for a gRPC round trip on this machine.
    fn start_grpc_floor() -> Self {
        Self::start_mode("BENCH_GRPC_FLOOR", "1")
    }

    fn start_mode(var: &str, value: &str) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(std::env::current_exe().expect("own path"))
            .env(var, value)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the relay");
        let mut line = String::new();
        let out = child.stdout.take().expect("relay stdout");
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .expect("relay address");
        let addr = line.trim().parse().expect("relay prints its address");
        Self { child, addr }
    }

    fn cpu_seconds(&self) -> f64 {
        proc_cpu_seconds(&self.child.id().to_string())
    }
}

impl Drop for BaselineProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bare gRPC server process: tonic's defaults, 512 KiB frames as the gateway.
fn grpc_floor_main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        println!("{}", listener.local_addr().expect("addr"));
        let (_reporter, health) = tonic_health::server::health_reporter();
        let _ = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .max_frame_size(512 * 1024)
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
}

/// The relay process: as many runtime workers as the gateway runs by default (one
/// per CPU), 256 KiB copy buffers, no Nagle delay either way.
fn relay_main(to: &str) {
    let to: SocketAddr = to.parse().expect("BENCH_RELAY_TO is an address");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        println!("{}", listener.local_addr().expect("addr"));
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await else {
                    return;
                };
                let _ = inbound.set_nodelay(true);
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional_with_sizes(
                    &mut inbound,
                    &mut outbound,
                    256 * 1024,
                    256 * 1024,
                )
                .await;
            });
        }
    });
}

// ---------------------------------------------------------------- clients

type Client = AttachmentServiceClient<Channel>;

async fn connect(addr: SocketAddr) -> Channel {
    // As the crate's `GatewayClient` connects: DATA frames up to 512 KiB each way.
    let ep = Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .tcp_nodelay(true)
        .max_frame_size(512 * 1024);
    for _ in 0..200 {
        if let Ok(ch) = ep.connect().await {
            return ch;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the gateway never came up");
}

fn file_stream(
    data: Bytes,
    chunk: usize,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    let n = data.len().div_ceil(chunk);
    futures_util::stream::iter(
        (0..n).map(move |i| Ok(data.slice(i * chunk..((i + 1) * chunk).min(data.len())))),
    )
}

async fn direct_upload(http: &reqwest::Client, sink: SocketAddr, data: Bytes, chunk: usize) {
    let len = data.len() as u64;
    let part = reqwest::multipart::Part::stream_with_length(
        reqwest::Body::wrap_stream(file_stream(data, chunk)),
        len,
    )
    .file_name("bench.bin")
    .mime_str("application/octet-stream")
    .expect("mime");
    let form = reqwest::multipart::Form::new()
        .text("WorkOrderId", "1001")
        .text("Name", "bench.bin")
        .text("MimeType", "application/octet-stream")
        .text("PerformedBy.Name", "Bench")
        .text("MessageId", "bench-message")
        .part("File", part);
    let resp = http
        .post(format!("http://{sink}/Direct/api/attachments"))
        .bearer_auth("bench-token")
        .multipart(form)
        .send()
        .await
        .expect("direct upload");
    assert_eq!(resp.status(), 200);
    let _ = resp.bytes().await;
}

async fn gateway_upload(c: &mut Client, data: Bytes, chunk: usize) {
    let meta = UploadMetadata {
        work_order_id: 1001,
        name: "bench.bin".into(),
        mime_type: "application/octet-stream".into(),
        performed_by: Some(Person {
            name: "Bench".into(),
            phone: String::new(),
        }),
        size_bytes: data.len() as u64,
        ..Default::default()
    };
    let first = futures_util::stream::once(async move {
        UploadAttachmentRequest {
            payload: Some(Payload::Metadata(meta)),
        }
    });
    let chunks = file_stream(data, chunk).map(|b| UploadAttachmentRequest {
        payload: Some(Payload::Chunk(b.expect("slice"))),
    });
    c.upload_attachment(first.chain(chunks))
        .await
        .expect("gateway upload");
}

async fn direct_list(http: &reqwest::Client, sink: SocketAddr) {
    let r = http
        .get(format!("http://{sink}/Direct/api/attachments"))
        .query(&[("workOrderId", 1001)])
        .bearer_auth("bench-token")
        .send()
        .await
        .expect("list");
    let v: serde_json::Value = r.json().await.expect("json");
    assert!(v.is_array());
}

async fn gateway_list(c: &mut Client, view: AttachmentView) {
    let r = c
        .list_attachments(ListAttachmentsRequest {
            work_order_id: 1001,
            view: view as i32,
        })
        .await
        .expect("list");
    assert!(!r.into_inner().attachments.is_empty());
}

async fn direct_download(http: &reqwest::Client, sink: SocketAddr) -> usize {
    let mut r = http
        .get(format!("http://{sink}/files/big?sig=x"))
        .send()
        .await
        .expect("get");
    let mut n = 0;
    while let Some(c) = r.chunk().await.expect("chunk") {
        n += c.len();
    }
    n
}

async fn gateway_download(c: &mut Client) -> usize {
    let mut s = c
        .download_attachment(DownloadAttachmentRequest {
            work_order_id: 1001,
            attachment_id: "a".into(),
            ..Default::default()
        })
        .await
        .expect("download")
        .into_inner();
    let mut n = 0;
    while let Some(m) = s.message().await.expect("msg") {
        if let Some(Down::Chunk(b)) = m.payload {
            n += b.len();
        }
    }
    n
}

// ---------------------------------------------------------------- measuring

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

struct Row {
    scenario: String,
    unit: &'static str,
    direct: f64,
    gateway: f64,
    higher_is_better: bool,
    /// The same work as `direct`, through the bare TCP relay.
    hop: Option<f64>,
    note: String,
}

impl Row {
    fn ratio(&self) -> f64 {
        self.gateway / self.direct
    }
}

async fn run_concurrent<F, Fut>(n: usize, concurrency: usize, f: F) -> f64
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let start = Instant::now();
    let mut stream = futures_util::stream::iter((0..n).map(|i| tokio::spawn(f(i))))
        .buffer_unordered(concurrency);
    while let Some(r) = stream.next().await {
        r.expect("task");
    }
    start.elapsed().as_secs_f64()
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
            let secs = run_concurrent(p.big_concurrency, p.big_concurrency, move |_| {
                let (hc, b) = (hc.clone(), b.clone());
                async move { direct_upload(&hc, hop, b, p.chunk).await }
            })
            .await;
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
            let t = Instant::now();
            assert_eq!(direct_download(&http, hop).await, p.big);
            hops.push(mib(p.big as f64) / t.elapsed().as_secs_f64());
            let t = Instant::now();
            assert_eq!(gateway_download(&mut client.clone()).await, p.big);
            g.push(mib(p.big as f64) / t.elapsed().as_secs_f64());
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
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!(
        "\nattachment-gateway benchmark ({} mode; {cores} cores; client + sink in one process, gateway in its own; {} rounds, medians)\n",
        if p.quick { "quick" } else { "full" },
        p.rounds
    );
    println!(
        "| scenario | unit | direct | via gateway | gateway/direct | via a bare TCP hop | hop/direct | gateway/hop | note |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---|");
    for r in &rows {
        // gateway/hop: how close the gateway comes to the cheapest extra hop.
        let (hop, hop_ratio, of_floor) = match r.hop {
            Some(h) => (
                format!("{h:.2}"),
                format!("{:.2}", h / r.direct),
                format!("{:.2}", r.gateway / h),
            ),
            None => (String::new(), String::new(), String::new()),
        };
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2}{} | {hop} | {hop_ratio} | {of_floor} | {} |",
            r.scenario,
            r.unit,
            r.direct,
            r.gateway,
            r.ratio(),
            if r.higher_is_better {
                ""
            } else {
                " (lower is better)"
            },
            r.note
        );
    }
    println!(
        "| 7. gateway CPU per GiB uploaded | s | | {cpu_per_gib:.2} | | {gib:.2} GiB through the gateway |"
    );
    println!(
        "| 7. gateway CPU per 10k unary calls, FULL view | s | | {cpu_per_10k:.2} | | {unary_calls} calls |"
    );
    println!(
        "| 7. gateway CPU per 10k unary calls, BASIC view | s | | {basic_cpu_per_10k:.2} | | {unary_calls} calls |"
    );
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
    // /proc counts CPU in 10 ms ticks: a quick run may be too short to see any.
    let ticks = |v: f64| {
        if v > 0.0 {
            format!("{v:.2}")
        } else {
            "too short to measure".to_string()
        }
    };
    println!(
        "| 7. bare hop's own CPU per GiB uploaded (scenario 1) | s | | | | {} | | the relay process |",
        ticks(hop_per_gib)
    );
    println!(
        "| 7. bare hop's own CPU per 10k unary calls (scenario 5) | s | | | | {} | | the relay process |",
        ticks(hop_per_10k)
    );
    println!(
        "\npeak RSS growth (32 concurrent big uploads): {:.1} MiB; sink received {:.0} MiB",
        peak_growth_kib as f64 / 1024.0,
        mib(sink.bytes_in.load(Ordering::Relaxed) as f64)
    );

    let json = json!({
        "mode": if p.quick { "quick" } else { "full" },
        "cores": cores,
        "params": {"rounds": p.rounds, "big_bytes": p.big, "small_bytes": p.small, "small_files": p.small_files,
                   "concurrency": p.concurrency, "big_concurrency": p.big_concurrency, "latency_calls": p.latency_calls,
                   "unary_calls": p.unary_calls, "unary_concurrency": p.unary_concurrency, "chunk_bytes": p.chunk,
                   "list_items": p.list_items},
        "scenarios": rows.iter().map(|r| json!({"scenario": r.scenario, "unit": r.unit, "direct": r.direct,
            "gateway": r.gateway, "ratio": r.ratio(), "bare_hop": r.hop,
            "bare_hop_ratio": r.hop.map(|h| h / r.direct), "gateway_vs_bare_hop": r.hop.map(|h| r.gateway / h),
            "note": r.note})).collect::<Vec<_>>(),
        "gateway_cpu_seconds_per_gib_uploaded": cpu_per_gib,
        "gateway_cpu_seconds_per_10k_unary": cpu_per_10k,
        "gateway_cpu_seconds_per_10k_unary_basic_view": basic_cpu_per_10k,
        "gateway_peak_rss_growth_mib": peak_growth_kib as f64 / 1024.0,
        "gateway_idle_rss_mib": idle_rss_kib as f64 / 1024.0,
        "bare_hop_cpu_seconds_per_gib_uploaded": hop_per_gib,
        "bare_hop_cpu_seconds_per_10k_unary": hop_per_10k,
        "gateway_health_check_p50_ms": health_p50.map(|h| h.0),
        "bare_tonic_health_check_p50_ms": health_p50.map(|h| h.1),
    });
    let out = std::env::var("BENCH_OUT").unwrap_or_else(|_| {
        format!(
            "{}/target/bench-{}.json",
            env!("CARGO_MANIFEST_DIR"),
            if p.quick { "quick" } else { "full" }
        )
    });
    if let Err(e) = std::fs::write(&out, serde_json::to_string_pretty(&json).expect("json")) {
        eprintln!("cannot write {out}: {e}");
    } else {
        println!("figures written to {out}");
    }
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
