//! Shared harness: a real gateway on a loopback port, a real upstream (the sandbox
//! or a wiremock server), and the generated tonic client.

#![allow(dead_code)]

pub mod link_host;
pub mod lossy;
pub mod notify;
pub mod proxy;
pub mod redis;
pub mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use attachment_gateway::config::Settings;
use attachment_gateway::proto::attachment_service_client::AttachmentServiceClient;
use attachment_gateway::proto::upload_attachment_request::Payload;
use attachment_gateway::proto::{Person, UploadAttachmentRequest, UploadMetadata};
use attachment_gateway::sandbox::{Sandbox, SandboxConfig};
use attachment_gateway::secret::Secret;
use attachment_gateway::server;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt;

pub type Client = AttachmentServiceClient<Channel>;

pub struct Gateway {
    pub addr: SocketAddr,
    pub client: Client,
    stop: Option<oneshot::Sender<()>>,
    pub join: Option<JoinHandle<Result<(), server::ServeError>>>,
}

impl Gateway {
    pub async fn start(settings: Settings) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let join = tokio::spawn(server::serve(settings, listener, async move {
            let _ = stopped.await;
        }));
        let client = connect(addr).await;
        Self {
            addr,
            client,
            stop: Some(stop),
            join: Some(join),
        }
    }

    /// Starts a gateway on the listeners given, with these metrics.
    pub async fn start_with(
        settings: Settings,
        listeners: server::Listeners,
        metrics: std::sync::Arc<attachment_gateway::metrics::Metrics>,
    ) -> Self {
        let addr = listeners.grpc.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let join = tokio::spawn(server::serve_with(
            settings,
            listeners,
            metrics,
            async move {
                let _ = stopped.await;
            },
        ));
        let client = connect(addr).await;
        Self {
            addr,
            client,
            stop: Some(stop),
            join: Some(join),
        }
    }

    /// Sends the shutdown signal (as SIGTERM would).
    pub fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown();
        if let Some(j) = self.join.take() {
            j.abort();
        }
    }
}

pub async fn connect(addr: SocketAddr) -> Client {
    let endpoint = Channel::from_shared(format!("http://{addr}")).expect("uri");
    for _ in 0..100 {
        if let Ok(ch) = endpoint.connect().await {
            return AttachmentServiceClient::new(ch)
                .max_decoding_message_size(64 * 1024 * 1024)
                .max_encoding_message_size(64 * 1024 * 1024);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("gateway at {addr} never accepted a connection");
}

/// Settings for tests: sandbox off, short timeouts.
/// A number from the environment (a test's seed or size), else `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

pub fn base_settings() -> Settings {
    let mut s = Settings::default();
    s.upstream.request_timeout = Duration::from_secs(10);
    s.upstream.transfer_timeout = Duration::from_secs(60);
    s.server.shutdown_grace = Duration::from_secs(5);
    // These tests are about the gateway's calls; auth has tests of its own.
    s.auth.allow_unauthenticated = true;
    // One anonymous caller makes every call here: the per-caller bounds are the
    // replica's (hostile::* tests them).
    s.rate_limit.max_concurrent_uploads_per_caller = s.rate_limit.max_concurrent_uploads;
    s.rate_limit.max_concurrent_downloads_per_caller = s.rate_limit.max_concurrent_downloads;
    s.telemetry.admin_listen = None;
    s
}

/// A sandbox upstream and a gateway in front of it.
pub struct SandboxedGateway {
    pub sandbox: Sandbox,
    pub gateway: Gateway,
}

pub async fn with_sandbox() -> SandboxedGateway {
    with_sandbox_and(SandboxConfig::default(), |_| {}).await
}

pub async fn with_sandbox_and(
    cfg: SandboxConfig,
    tweak: impl FnOnce(&mut Settings),
) -> SandboxedGateway {
    let sandbox = Sandbox::start(cfg).await.expect("sandbox");
    let mut s = base_settings();
    s.upstream = sandbox.upstream_settings(&s.upstream);
    tweak(&mut s);
    let gateway = Gateway::start(s).await;
    SandboxedGateway { sandbox, gateway }
}

/// A sandbox upstream, a gateway with its webhook listener, the sandbox
/// delivering its notifications there, and the gateway's metrics.
pub struct Hooked {
    pub sandbox: Sandbox,
    pub gateway: Gateway,
    /// The webhook URL (`http://…/webhooks/corrigopro`).
    pub webhook_url: String,
    pub metrics: std::sync::Arc<attachment_gateway::metrics::Metrics>,
    /// The Redis the event log is in, when `EVENTS_ON_REDIS=1` (the events
    /// suite run again against the shared log).
    pub redis: Option<redis::RedisServer>,
}

impl Hooked {
    /// The webhook listener's `host:port`, for raw connections.
    pub fn webhook_addr(&self) -> String {
        self.webhook_url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .expect("addr")
            .to_string()
    }
}

pub async fn with_webhooks(tweak: impl FnOnce(&mut Settings)) -> Hooked {
    with_webhooks_and(SandboxConfig::default(), tweak).await
}

pub async fn with_webhooks_and(cfg: SandboxConfig, tweak: impl FnOnce(&mut Settings)) -> Hooked {
    attachment_gateway::upstream::install_crypto_provider();
    let sandbox = Sandbox::start(cfg).await.expect("sandbox");
    let mut s = base_settings();
    s.upstream = sandbox.upstream_settings(&s.upstream);
    // Sandbox mode's defaults: the emulator's certificate is trusted.
    s.sandbox.enabled = true;
    let redis = std::env::var("EVENTS_ON_REDIS")
        .is_ok_and(|v| v == "1")
        .then(redis::RedisServer::start);
    if let Some(r) = &redis {
        s.shared_state.redis_url = Some(r.url());
    }
    tweak(&mut s);
    let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let hooks = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let webhook_url = format!(
        "http://{}{}",
        hooks.local_addr().expect("addr"),
        attachment_gateway::webhooks::PATH
    );
    sandbox.deliver_to(webhook_url.clone());
    let metrics = std::sync::Arc::new(attachment_gateway::metrics::Metrics::new());
    let gateway = Gateway::start_with(
        s,
        server::Listeners {
            grpc,
            admin: None,
            webhooks: Some(hooks),
        },
        std::sync::Arc::clone(&metrics),
    )
    .await;
    if let Some(r) = &redis {
        // The log really is in Redis: its epoch key is made as the gateway starts.
        let made = || {
            let out = std::process::Command::new("redis-cli")
                .args([
                    "-p",
                    &r.port.to_string(),
                    "EXISTS",
                    "attachment-gateway:epoch",
                ])
                .output()
                .expect("redis-cli");
            String::from_utf8_lossy(&out.stdout).trim() == "1"
        };
        let t = std::time::Instant::now();
        while !made() {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "the event log is in Redis"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Hooked {
        sandbox,
        gateway,
        webhook_url,
        metrics,
        redis,
    }
}

/// Settings pointing at a wiremock server (`/Direct` API, `/oauth/token`).
pub fn settings_for(uri: &str) -> Settings {
    let mut s = base_settings();
    s.upstream.base_url = format!("{uri}/Direct");
    s.upstream.token_url = format!("{uri}/oauth/token");
    s.upstream.client_id = "test-client".into();
    s.upstream.client_secret = Secret::new("test-secret-value");
    // wiremock's download links are loopback http.
    s.upstream.allow_private_download_addresses = true;
    s.upstream.allow_http_downloads = true;
    s
}

pub fn metadata(work_order_id: i64, name: &str) -> UploadMetadata {
    UploadMetadata {
        work_order_id,
        name: name.into(),
        mime_type: "application/octet-stream".into(),
        performed_by: Some(Person {
            name: "Ana Tech".into(),
            phone: "+1 202 555 0141".into(),
        }),
        ..UploadMetadata::default()
    }
}

pub fn meta_msg(m: UploadMetadata) -> UploadAttachmentRequest {
    UploadAttachmentRequest {
        payload: Some(Payload::Metadata(m)),
    }
}

pub fn chunk_msg(b: impl Into<bytes::Bytes>) -> UploadAttachmentRequest {
    UploadAttachmentRequest {
        payload: Some(Payload::Chunk(b.into())),
    }
}

/// Metadata then `data` in chunks of `chunk` bytes.
pub fn upload_messages(
    m: UploadMetadata,
    data: &[u8],
    chunk: usize,
) -> Vec<UploadAttachmentRequest> {
    let mut v = vec![meta_msg(m)];
    v.extend(
        data.chunks(chunk)
            .map(|c| chunk_msg(bytes::Bytes::copy_from_slice(c))),
    );
    v
}

/// Deterministic test bytes.
pub fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// The field violations of a status, as (field, reason).
pub fn violations(s: &Status) -> Vec<(String, String)> {
    s.get_error_details()
        .bad_request()
        .map(|b| {
            b.field_violations
                .iter()
                .map(|v| (v.field.clone(), v.reason.clone()))
                .collect()
        })
        .unwrap_or_default()
}

pub fn error_reason(s: &Status) -> String {
    s.get_error_details()
        .error_info()
        .map(|e| e.reason.clone())
        .unwrap_or_default()
}

pub fn error_metadata(s: &Status) -> HashMap<String, String> {
    s.get_error_details()
        .error_info()
        .map(|e| e.metadata.clone())
        .unwrap_or_default()
}

pub fn retry_delay(s: &Status) -> Option<Duration> {
    s.get_error_details()
        .retry_info()
        .and_then(|r| r.retry_delay)
}

#[track_caller]
pub fn assert_invalid(s: &Status, field: &str, reason: &str) {
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    let v = violations(s);
    assert!(
        v.iter().any(|(f, r)| f == field && r == reason),
        "expected violation {field}/{reason}, got {v:?} ({})",
        s.message()
    );
}

/// Polls `f` until it is true, for at most 5 s.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..250 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Waits until every upload the sandbox saw start was aborted or rejected, and
/// checks none was stored.
pub async fn nothing_stored(sandbox: &Sandbox) {
    eventually(
        "every started upstream upload ended without storing",
        || {
            let s = sandbox.stats();
            s.uploads_started == s.uploads_aborted + s.uploads_rejected
        },
    )
    .await;
    assert_eq!(sandbox.stats().uploads_stored, 0, "{:?}", sandbox.stats());
}

/// A hand-rolled HTTP/1.1 server on loopback for answers no well-behaved server
/// gives (an answer before the request body ended, a body cut short): each
/// connection's request head is read, then `answer` is written as is and the
/// connection closed. Returns the base URL.
pub async fn raw_http_server(answer: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = sock.write_all(&answer).await;
                let _ = sock.flush().await;
                // Let the answer go before the close.
                tokio::time::sleep(Duration::from_millis(100)).await;
            });
        }
    });
    format!("http://{addr}")
}

/// Asserts a status carries the gateway's ErrorInfo with `retry_safe`.
#[track_caller]
pub fn assert_details(s: &Status) {
    let info = s
        .get_error_details()
        .error_info()
        .cloned()
        .unwrap_or_else(|| panic!("no ErrorInfo: {s:?}"));
    assert_eq!(info.domain, "attachment-gateway.corrigopro.com", "{s:?}");
    assert!(
        matches!(
            info.metadata.get("retry_safe").map(String::as_str),
            Some("true" | "unknown")
        ),
        "{s:?}"
    );
}

/// A scratch directory, removed when the returned guard drops.
pub fn scratch(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("ag-auth-{name}-"))
        .tempdir()
        .expect("scratch dir")
}

/// Writes an API key file: (caller, key, scopes) per key.
pub fn write_keys(path: &std::path::Path, keys: &[(&str, &str, &[&str])]) {
    let mut text = String::new();
    for (caller, key, scopes) in keys {
        let scopes: Vec<String> = scopes.iter().map(|s| format!("\"{s}\"")).collect();
        text.push_str(&format!(
            "[[keys]]\ncaller = \"{caller}\"\nsha256 = \"{}\"\nscopes = [{}]\n\n",
            attachment_gateway::auth::hash_key(key),
            scopes.join(", ")
        ));
    }
    std::fs::write(path, text).expect("write keys");
}

/// Every upload the upstream saw start ended stored, rejected or aborted.
pub async fn nothing_half_done(sandbox: &Sandbox) {
    eventually("every upstream upload ended", || {
        let s = sandbox.stats();
        s.uploads_started == s.uploads_stored + s.uploads_rejected + s.uploads_aborted
    })
    .await;
}
