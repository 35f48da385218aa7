//! The processes measured beside the bench: the gateway binary, and the
//! baselines (a bare TCP relay, a bare tonic server), with their CPU time.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use tokio::net::TcpListener;

use crate::MIB;

pub(crate) struct GatewayProcess {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
}

impl GatewayProcess {
    pub(crate) fn start(sink: SocketAddr) -> Self {
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

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn status_kib(&self, field: &str) -> u64 {
        let text =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        text.lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// Resets VmHWM (peak RSS) to the current RSS.
    pub(crate) fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5");
    }

    /// User + system CPU seconds so far.
    pub(crate) fn cpu_seconds(&self) -> f64 {
        proc_cpu_seconds(&self.pid().to_string())
    }
}

/// User + system CPU seconds of a process so far (`self` for this one), from
/// /proc/<pid>/stat (clock ticks of 1/100 s).
pub(crate) fn proc_cpu_seconds(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds spent by this process (the client and the sink) over `f`.
pub(crate) async fn bench_cpu<F: std::future::Future>(f: F) -> (F::Output, f64) {
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
pub(crate) struct BaselineProcess {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
}

impl BaselineProcess {
    pub(crate) fn start_relay(sink: SocketAddr) -> Self {
        Self::start_mode("BENCH_RELAY_TO", &sink.to_string())
    }

    /// A bare tonic server (the health service alone, no layers) in its own
    /// process: the floor for a gRPC round trip on this machine.
    pub(crate) fn start_grpc_floor() -> Self {
        Self::start_mode("BENCH_GRPC_FLOOR", "1")
    }

    pub(crate) fn start_mode(var: &str, value: &str) -> Self {
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

    pub(crate) fn cpu_seconds(&self) -> f64 {
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
pub(crate) fn grpc_floor_main() {
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
pub(crate) fn relay_main(to: &str) {
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
