//! One typed settings struct, layered: defaults < TOML file (`--config`) < environment
//! (`ATTACHMENT_GATEWAY_`, nested keys joined by `__`) < command-line flags.
//!
//! Invalid settings fail at start with a message naming the setting.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::domain::DEFAULT_MAX_UPLOAD_BYTES;
use crate::secret::Secret;

/// The prefix of every environment variable the gateway reads.
pub const ENV_PREFIX: &str = "ATTACHMENT_GATEWAY_";

/// Settings read from the environment as plain strings, never parsed: credentials
/// and identifiers whose every character counts (keys as figment names them).
const VERBATIM_ENV: &[&str] = &["upstream__client_id", "upstream__client_secret"];

/// The largest upload limit the gateway accepts as a setting (the upstream's is 20 MB).
pub const MAX_UPLOAD_LIMIT: u64 = 1024 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, garde::Validate)]
#[serde(default, deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct Settings {
    /// Where the gRPC server listens.
    pub listen: SocketAddr,
    #[garde(dive)]
    pub upstream: UpstreamSettings,
    #[garde(dive)]
    pub limits: LimitSettings,
    #[garde(dive)]
    pub server: ServerSettings,
    pub tls: TlsSettings,
    #[garde(dive)]
    pub auth: AuthSettings,
    #[garde(dive)]
    pub rate_limit: RateLimitSettings,
    pub telemetry: TelemetrySettings,
    pub log: LogSettings,
    pub sandbox: SandboxSettings,
    #[garde(dive)]
    pub events: EventSettings,
    #[garde(dive)]
    pub webhooks: WebhookSettings,
    #[garde(dive)]
    pub shared_state: SharedStateSettings,
    /// Which settings were given explicitly (file, environment or flag) rather
    /// than left at their defaults. Not a setting itself.
    #[serde(skip)]
    pub explicit: Explicit,
}

/// Settings whose handling depends on whether the operator set them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Explicit {
    /// `telemetry.admin_listen`: with `--sandbox`, a default address that is
    /// taken gives way to a free port; an explicit one must be bound.
    pub admin_listen: bool,
    /// Any `webhooks.*` setting other than `listen`: with `--sandbox`, the
    /// emulator's certificate is trusted only when none was given.
    pub webhooks_verification: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            upstream: UpstreamSettings::default(),
            limits: LimitSettings::default(),
            server: ServerSettings::default(),
            tls: TlsSettings::default(),
            auth: AuthSettings::default(),
            rate_limit: RateLimitSettings::default(),
            telemetry: TelemetrySettings::default(),
            log: LogSettings::default(),
            sandbox: SandboxSettings::default(),
            events: EventSettings::default(),
            webhooks: WebhookSettings::default(),
            shared_state: SharedStateSettings::default(),
            explicit: Explicit::default(),
        }
    }
}

/// TLS on the gRPC listener. With `client_ca_file`, clients must present a
/// certificate signed by that CA (mTLS), and its SAN becomes the caller's identity.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
}

impl TlsSettings {
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }

    pub fn mtls(&self) -> bool {
        self.client_ca_file.is_some()
    }
}

/// Inbound authentication (who calls) and authorization (read/write scopes).
#[derive(Debug, Clone, Default, Serialize, Deserialize, garde::Validate)]
#[serde(default, deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct AuthSettings {
    /// Serve callers without credentials (all scopes). Only with `--sandbox` or
    /// this set; a warning is logged at start.
    pub allow_unauthenticated: bool,
    /// Serve reflection without credentials. Default: only in sandbox mode.
    pub public_reflection: Option<bool>,
    #[garde(dive)]
    pub jwt: JwtSettings,
    #[garde(dive)]
    pub api_keys: ApiKeySettings,
    pub mtls: MtlsSettings,
    #[garde(dive)]
    pub failed_attempts: FailedAttemptSettings,
}

/// Budgets of failed authentications (bad tokens, unknown API keys). Past one,
/// credentials that did not verify recently are refused without a check.
#[derive(Debug, Clone, Serialize, Deserialize, garde::Validate)]
#[serde(default, deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct FailedAttemptSettings {
    /// From one source address.
    #[garde(dive)]
    pub per_source: Rate,
    /// From everywhere, on this replica.
    #[garde(dive)]
    pub total: Rate,
}

impl Default for FailedAttemptSettings {
    fn default() -> Self {
        Self {
            per_source: Rate { rps: 2, burst: 20 },
            total: Rate {
                rps: 50,
                burst: 200,
            },
        }
    }
}

/// JWT bearer tokens checked against a JWKS (e.g. Kubernetes projected
/// service-account tokens: RS256/ES256).
#[derive(Debug, Clone, Serialize, Deserialize, garde::Validate)]
#[serde(default, deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct JwtSettings {
    pub enabled: bool,
    /// A JWKS file (reloaded when it changes).
    pub jwks_file: Option<PathBuf>,
    /// A JWKS URL (HTTPS; plain HTTP only on loopback), fetched and cached.
    pub jwks_url: Option<String>,
    /// Extra CA (PEM) trusted for the JWKS URL, e.g. the cluster's CA for
    /// `https://kubernetes.default.svc/openid/v1/jwks`.
    pub jwks_ca_file: Option<PathBuf>,
    /// A bearer token file sent with the JWKS request (read at each fetch), e.g.
    /// the gateway's own service-account token.
    pub jwks_token_file: Option<PathBuf>,
    /// How often the JWKS is fetched (or the file checked) again.
    #[serde(with = "humantime_serde")]
    #[garde(custom(at_least_a_second))]
    pub jwks_refresh: Duration,
    /// Accepted `iss` values. Required when JWT is on, unless `allow_any_issuer`.
    pub issuers: Vec<String>,
    /// Accepted `aud` values. Required when JWT is on, unless `allow_any_audience`:
    /// without it, any token the issuer minted for another service (say, any
    /// service-account token of the cluster) would be accepted.
    pub audiences: Vec<String>,
    /// Accept tokens of any issuer (no `iss` check). A warning is logged at start.
    pub allow_any_issuer: bool,
    /// Accept tokens minted for any audience (no `aud` check). A warning is logged
    /// at start.
    pub allow_any_audience: bool,
    /// After a token names a key (`kid`) not in the set, the JWKS is fetched again
    /// at once, but not sooner than this after the previous such fetch ended.
    #[serde(with = "humantime_serde")]
    #[garde(custom(at_least_a_second))]
    pub unknown_kid_refresh_interval: Duration,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Scopes given to every valid token that carries no `scope`/`scp` claim.
    pub default_scopes: Vec<String>,
    /// Scopes by `sub` (e.g. `system:serviceaccount:billing:billing-api`); they
    /// replace the token's own and the default.
    pub subject_scopes: BTreeMap<String, Vec<String>>,
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            jwks_file: None,
            jwks_url: None,
            jwks_ca_file: None,
            jwks_token_file: None,
            jwks_refresh: Duration::from_secs(300),
            issuers: Vec::new(),
            audiences: Vec::new(),
            allow_any_issuer: false,
            allow_any_audience: false,
            unknown_kid_refresh_interval: Duration::from_secs(30),
            leeway: Duration::from_secs(30),
            default_scopes: Vec::new(),
            subject_scopes: BTreeMap::new(),
        }
    }
}

/// Static API keys, stored as SHA-256 hashes in a TOML file.
#[derive(Debug, Clone, Serialize, Deserialize, garde::Validate)]
#[serde(default, deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct ApiKeySettings {
    pub file: Option<PathBuf>,
    /// How often the file is checked for changes.
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub reload_interval: Duration,
    /// When the file becomes unreadable or invalid, how long the last good keys
    /// stay in force; then every API key is refused until the file is fixed.
    #[serde(with = "humantime_serde")]
    pub max_stale: Duration,
}

impl Default for ApiKeySettings {
    fn default() -> Self {
        Self {
            file: None,
            reload_interval: Duration::from_secs(10),
            max_stale: Duration::from_secs(60),
        }
    }
}

/// Scopes of mTLS callers, by the identity in their certificate's SAN (a URI such
/// as a SPIFFE id, else the first DNS name).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MtlsSettings {
    pub default_scopes: Vec<String>,
    pub identities: BTreeMap<String, Vec<String>>,
}

/// A request rate: `rps` per second, bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, garde::Validate)]
#[serde(deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct Rate {
    #[garde(range(min = 1))]
    pub rps: u32,
    #[garde(range(min = 1))]
    pub burst: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, garde::Validate)]
#[serde(default, deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct RateLimitSettings {
    /// Each caller's request rate (all connections together).
    #[garde(dive)]
    pub per_caller: Rate,
    /// Rates for named callers, replacing `per_caller`, keyed by the caller's kind
    /// and name: `api_key:billing`, `jwt:system:serviceaccount:ns:sa`,
    /// `mtls:spiffe://…`.
    #[garde(dive)]
    pub overrides: BTreeMap<String, Rate>,
    /// All requests toward the upstream, from every caller, on this replica.
    #[garde(dive)]
    pub upstream: Rate,
    /// How long a call may wait for the upstream budget before it is refused.
    #[serde(with = "humantime_serde")]
    pub upstream_max_wait: Duration,
    /// Uploads in progress at once; more are refused at once.
    #[garde(range(min = 1))]
    pub max_concurrent_uploads: u32,
    /// Uploads in progress at once for one caller.
    #[garde(range(min = 1))]
    pub max_concurrent_uploads_per_caller: u32,
    /// Downloads in progress at once; more are refused at once.
    #[garde(range(min = 1))]
    pub max_concurrent_downloads: u32,
    /// Downloads in progress at once for one caller.
    #[garde(range(min = 1))]
    pub max_concurrent_downloads_per_caller: u32,
    /// Upload bytes held in memory at once, over all uploads; a caller past it
    /// waits (HTTP/2 flow control holds it back).
    #[garde(range(max = u64::from(u32::MAX)))]
    pub max_inflight_upload_bytes: u64,
    /// Consecutive upstream 503s that start a cool-down (a 429 starts one at once).
    pub cool_down_after_503s: u32,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            per_caller: Rate {
                rps: 100,
                burst: 200,
            },
            overrides: BTreeMap::new(),
            upstream: Rate { rps: 50, burst: 50 },
            upstream_max_wait: Duration::from_millis(500),
            max_concurrent_uploads: 64,
            max_concurrent_uploads_per_caller: 8,
            max_concurrent_downloads: 256,
            max_concurrent_downloads_per_caller: 16,
            max_inflight_upload_bytes: 256 * 1024 * 1024,
            cool_down_after_503s: 3,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// The admin HTTP listener: Prometheus `/metrics`. Unset: no admin port.
    pub admin_listen: Option<SocketAddr>,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, garde::Validate)]
#[serde(default, deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct UpstreamSettings {
    /// The Direct API's base URL; `/api/attachments` is appended.
    pub base_url: String,
    /// The OAuth 2.0 token endpoint (client credentials grant).
    pub token_url: String,
    pub client_id: String,
    /// The client secret; prefer `client_secret_file` (a mounted Kubernetes secret).
    pub client_secret: Secret,
    pub client_secret_file: Option<PathBuf>,
    /// TCP + TLS connect timeout toward the upstream.
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub connect_timeout: Duration,
    /// Bound of a unary call when the caller sets no shorter gRPC deadline.
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub request_timeout: Duration,
    /// Bound of an upload or download stream when the caller sets no shorter deadline.
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub transfer_timeout: Duration,
    /// Refresh the access token this long before it expires.
    #[serde(with = "humantime_serde")]
    pub token_refresh_margin: Duration,
    /// Bound of one token request (connect to last byte). Every call that needs a
    /// new token waits for the one request under way, so it must end.
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub token_timeout: Duration,
    /// The query parameter of `GET /api/attachments` that names the work order.
    pub work_order_query_param: String,
    /// The most bytes read from one upstream answer (list, link, token).
    #[garde(range(min = 1024))]
    pub max_response_bytes: u64,
    /// Hosts download links may lead to, exactly or as `*.suffix` (e.g.
    /// `*.blob.core.windows.net`); empty: any host with a public address.
    pub download_hosts: Vec<String>,
    /// Let download links lead to loopback, private, link-local and other
    /// non-public addresses. Off: such a link (or redirect, or DNS answer) is
    /// refused. The sandbox turns it on for its own loopback storage.
    pub allow_private_download_addresses: bool,
    /// Let download links be plain http. The sandbox turns it on.
    pub allow_http_downloads: bool,
    /// Let `base_url` and `token_url` be plain http to a host other than loopback
    /// (the client secret and tokens travel there). A warning is logged at start.
    pub allow_plain_http: bool,
    /// Idle upstream connections are closed after this long.
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub pool_idle_timeout: Duration,
    /// Tries of a read (list, link, the link's bytes) on a transient failure:
    /// connection errors, 502/503/504 (a 429 goes back to the caller with its
    /// Retry-After, and cools every call down). 1 turns retries off.
    #[garde(range(min = 1, max = 10))]
    pub read_attempts: u32,
    /// Retries may add at most this fraction of the requests (retry budget).
    #[garde(range(min = 0.0, max = 1.0))]
    pub retry_budget_ratio: f64,
    /// Consecutive upstream failures (connection errors, timeouts, 5xx) that open
    /// the circuit: calls then fail fast until a probe succeeds.
    #[garde(range(min = 1))]
    pub circuit_failure_threshold: u32,
    /// How long the circuit stays open before one probe call is let through.
    #[serde(with = "humantime_serde")]
    pub circuit_open_for: Duration,
    /// How long a completed write is remembered by its caller-given message id,
    /// so that a retry after a lost answer gets the same answer, not a second write.
    #[serde(with = "humantime_serde")]
    pub idempotency_ttl: Duration,
    /// While a write with a caller message id runs, it holds its id for this long,
    /// renewed as it goes; a replica that dies mid-write frees the id when the
    /// lease expires (shared state only: in one process the lease lives with the
    /// write).
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub idempotency_lease: Duration,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        Self {
            base_url: "https://am-api.corrigopro.com/Direct".into(),
            token_url: "https://oauth-pro-v2.corrigo.com/OAuth/Token".into(),
            client_id: String::new(),
            client_secret: Secret::default(),
            client_secret_file: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            transfer_timeout: Duration::from_secs(600),
            token_refresh_margin: Duration::from_secs(120),
            token_timeout: Duration::from_secs(10),
            work_order_query_param: "workOrderId".into(),
            max_response_bytes: 16 * 1024 * 1024,
            download_hosts: Vec::new(),
            allow_private_download_addresses: false,
            allow_http_downloads: false,
            allow_plain_http: false,
            pool_idle_timeout: Duration::from_secs(60),
            read_attempts: 3,
            retry_budget_ratio: 0.2,
            circuit_failure_threshold: 5,
            circuit_open_for: Duration::from_secs(5),
            idempotency_ttl: Duration::from_secs(600),
            idempotency_lease: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, garde::Validate)]
#[serde(default, deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct LimitSettings {
    /// The largest file accepted, in bytes (the upstream's own limit: 20 MiB).
    #[garde(range(min = 1, max = MAX_UPLOAD_LIMIT))]
    pub max_upload_bytes: u64,
    /// The largest `chunk` in one upload message, in bytes.
    #[garde(range(min = 1024 * 1024, max = 64 * 1024 * 1024))]
    pub max_chunk_bytes: u64,
    /// The size of the `chunk` messages of a download, in bytes.
    #[garde(range(min = 1024, max = 4 * 1024 * 1024))]
    pub download_chunk_bytes: u64,
    /// The largest request message of every method, but upload chunks (unary
    /// requests, health, an upload's metadata), in bytes.
    #[garde(range(min = 1024, max = 1024 * 1024))]
    pub max_request_message_bytes: u64,
    /// How long an upload stream may take to send its metadata message; no slot
    /// is held meanwhile.
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub upload_first_message_timeout: Duration,
    /// How long an upload stream may go without a message once it has started.
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub upload_idle_timeout: Duration,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            max_chunk_bytes: 4 * 1024 * 1024,
            download_chunk_bytes: 256 * 1024,
            max_request_message_bytes: 16 * 1024,
            upload_first_message_timeout: Duration::from_secs(10),
            upload_idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Upper bound for `server.worker_threads` (a typo guard, not a tuning hint).
pub const MAX_WORKER_THREADS: usize = 512;

#[derive(Debug, Clone, Serialize, Deserialize, garde::Validate)]
#[serde(default, deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct ServerSettings {
    /// After SIGTERM, health says NOT_SERVING for this long before the listener closes
    /// (so load balancers stop sending new calls).
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// After the listener closes, in-flight calls get this long to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Connections are closed (gracefully) after this age, so clients reconnect and
    /// spread over replicas. Unset: never.
    #[serde(with = "humantime_serde")]
    pub max_connection_age: Option<Duration>,
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub http2_keepalive_interval: Duration,
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub http2_keepalive_timeout: Duration,
    /// Concurrent streams (calls) per client connection.
    #[garde(range(min = 1))]
    pub max_concurrent_streams: u32,
    /// Client connections open at once; more are closed as soon as accepted.
    /// With `http2_connection_window`, it bounds the memory callers can fill
    /// before the gateway has read a message: their product.
    #[garde(range(min = 1))]
    pub max_connections: u32,
    /// Bytes a caller may send on one call before the gateway reads them (HTTP/2
    /// stream window).
    #[garde(range(min = 65_535, max = 16 * 1024 * 1024))]
    pub http2_stream_window: u32,
    /// Bytes a caller may send on all calls of one connection before the gateway
    /// reads them (HTTP/2 connection window).
    #[garde(range(min = self.http2_stream_window, max = 64 * 1024 * 1024))]
    pub http2_connection_window: u32,
    /// A new connection must finish its TLS handshake and send its first bytes
    /// within this (the admin port's request headers too).
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub handshake_timeout: Duration,
    /// A connection that reads and writes nothing for this long is closed
    /// (HTTP/2 keepalive pings count: keep it above `http2_keepalive_interval`).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Serve gRPC server reflection (v1 and v1alpha).
    pub reflection: bool,
    /// Runtime worker threads. 0: one per CPU the process may use (the cgroup's CPU
    /// quota counts). Set it to the container's CPU limit when the pod has none, so
    /// a small pod on a large node does not run a thread per node core.
    #[garde(range(max = MAX_WORKER_THREADS))]
    pub worker_threads: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            drain_delay: Duration::ZERO,
            shutdown_grace: Duration::from_secs(30),
            max_connection_age: None,
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(10),
            max_concurrent_streams: 256,
            max_connections: 256,
            http2_stream_window: 1024 * 1024,
            http2_connection_window: 2 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            reflection: true,
            worker_threads: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `attachment_gateway=debug,info`; `RUST_LOG`
    /// wins when set.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxSettings {
    /// Start the embedded CorrigoPro emulator and use it as the upstream.
    pub enabled: bool,
    /// Where the emulator listens (loopback; port 0 picks a free port).
    pub listen: SocketAddr,
    /// How long the emulator's download links work.
    #[serde(with = "humantime_serde")]
    pub link_ttl: Duration,
    /// How long the emulator's access tokens live.
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// How long a "minute" of the emulator's notification retry schedule (5, 10,
    /// 20, 40, 60 minutes, then hourly) lasts.
    #[serde(with = "humantime_serde")]
    pub notification_retry_minute: Duration,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            link_ttl: crate::domain::DOWNLOAD_LINK_TTL,
            token_ttl: Duration::from_secs(1199),
            notification_retry_minute: Duration::from_secs(1),
        }
    }
}

/// The event log and `WatchAttachments` subscribers.
#[derive(Debug, Clone, Serialize, Deserialize, garde::Validate)]
#[serde(default, deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct EventSettings {
    /// Events the in-process log keeps at most (the oldest go first).
    #[garde(range(min = 1, max = 10_000_000))]
    pub max_events: u32,
    /// Bytes of recorded events the in-process log keeps at most (the oldest go
    /// first): bounds the log whatever the notifications' size.
    #[garde(range(min = 1024 * 1024))]
    pub max_bytes: u64,
    /// Events older than this are dropped from the in-process log.
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub max_age: Duration,
    /// A watch with no event for this long gets a heartbeat (keeps idle streams
    /// alive through proxies, and carries the cursor).
    #[serde(with = "humantime_serde")]
    #[garde(custom(at_least_a_second))]
    pub heartbeat_interval: Duration,
    /// Messages buffered toward one subscriber.
    #[garde(range(min = 1, max = 4096))]
    pub subscriber_buffer: u32,
    /// A subscriber whose buffer stays full this long is ended (ABORTED, with the
    /// event id to resume after).
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub subscriber_stall_timeout: Duration,
    /// Open watches at most, in all.
    #[garde(range(min = 1))]
    pub max_subscribers: u32,
    /// Open watches at most, per caller.
    #[garde(range(min = 1))]
    pub max_subscribers_per_caller: u32,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            max_events: 100_000,
            max_bytes: 128 * 1024 * 1024,
            max_age: Duration::from_secs(24 * 3600),
            heartbeat_interval: Duration::from_secs(15),
            subscriber_buffer: 64,
            subscriber_stall_timeout: Duration::from_secs(30),
            max_subscribers: 10_000,
            max_subscribers_per_caller: 1_000,
        }
    }
}

/// How webhook requests prove they come from CorrigoPro.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WebhookVerify {
    /// CorrigoPro's signed token, checked against `webhooks.certificate_file`.
    SignedToken,
    /// The bearer value equals the content of `webhooks.shared_secret_file`
    /// (for a proxy of the operator's in front).
    SharedSecret,
    /// No check at all (warned at start): only behind something that checks.
    None,
}

/// What a signed token's signature covers (unconfirmed upstream; see README).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignedPart {
    /// Each of the others, the one that verified last first.
    Auto,
    /// The `<data>` part as sent (its base64url text).
    DataText,
    /// The bytes `<data>` decodes to.
    DataBytes,
}

/// The signature algorithm of signed tokens (unconfirmed upstream; see README).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignatureAlgorithm {
    /// RSA with SHA-256 and with SHA-512 (never SHA-1 unless named), the one
    /// that verified last first.
    Auto,
    RsaSha256,
    RsaSha512,
    /// Legacy; only if CorrigoPro turns out to use it.
    RsaSha1,
}

/// The webhook listener: CorrigoPro's notifications in.
#[derive(Debug, Clone, Serialize, Deserialize, garde::Validate)]
#[serde(default, deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct WebhookSettings {
    /// Where the webhook listener listens (path `/webhooks/corrigopro`); off when unset.
    pub listen: Option<SocketAddr>,
    pub verify: WebhookVerify,
    /// CorrigoPro's certificate (PEM), for `verify = "signed-token"`.
    pub certificate_file: Option<PathBuf>,
    /// The expected bearer value, for `verify = "shared-secret"`.
    pub shared_secret_file: Option<PathBuf>,
    /// The audience (`Aud` claim) a signed token must name.
    pub audience: String,
    /// The name claim a signed token must carry: CorrigoPro's identifier of
    /// this integration. Unset: a token signed for any integration verifies
    /// (warned at start; the first verified name is logged).
    #[garde(custom(expected_name_rule))]
    pub expected_name: Option<String>,
    pub signed_part: SignedPart,
    pub signature_algorithm: SignatureAlgorithm,
    /// Tolerance on `.issued` / `.expires`, for clocks that disagree (at most 1h).
    #[serde(with = "humantime_serde")]
    #[garde(custom(at_most_an_hour))]
    pub clock_skew: Duration,
    /// Failed credential checks allowed (per source address and in all) before
    /// requests are refused (429) without a check.
    #[garde(dive)]
    pub failed_checks: Rate,
    /// A request body larger than this is refused (413).
    #[garde(range(min = 1024, max = 16 * 1024 * 1024))]
    pub max_body_bytes: u64,
    /// Headers must arrive within this.
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub header_timeout: Duration,
    /// The whole request (body included) must arrive within this.
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub body_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub idle_timeout: Duration,
    /// Open connections at most; more wait in the kernel's backlog.
    #[garde(range(min = 1))]
    pub max_connections: u32,
    /// Where notifications that are not about attachments go, unchanged (their
    /// outcome is CorrigoPro's answer). Unset: they are acknowledged and counted.
    pub forward_url: Option<String>,
    /// How long a forward may take.
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub forward_timeout: Duration,
    /// A redelivered notification (same `Header.MessageId`) within this is
    /// acknowledged and recorded once. Covers CorrigoPro's retries (~8.3 days).
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub dedupe_ttl: Duration,
    /// Message ids remembered at most (the oldest go first).
    #[garde(range(min = 1))]
    pub max_dedupe_keys: u32,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            listen: None,
            verify: WebhookVerify::SignedToken,
            certificate_file: None,
            shared_secret_file: None,
            audience: "CorrigoProDirect".into(),
            expected_name: None,
            signed_part: SignedPart::Auto,
            signature_algorithm: SignatureAlgorithm::Auto,
            clock_skew: Duration::from_secs(300),
            failed_checks: Rate {
                rps: 1000,
                burst: 2000,
            },
            max_body_bytes: 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            max_connections: 256,
            forward_url: None,
            forward_timeout: Duration::from_secs(10),
            dedupe_ttl: Duration::from_secs(9 * 24 * 3600),
            max_dedupe_keys: 200_000,
        }
    }
}

/// State replicas share (write records by message id, quotas, the event log).
/// Unset: each process keeps its own, which is right for one replica only.
#[derive(Debug, Clone, Serialize, Deserialize, garde::Validate)]
#[serde(default, deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct SharedStateSettings {
    /// `redis://host:port/db` or `rediss://…` (TLS). A password in it is
    /// redacted wherever it is shown; prefer `password_file`.
    pub redis_url: Option<String>,
    /// A file holding the Redis password (a mounted Kubernetes Secret).
    pub password_file: Option<PathBuf>,
    /// With `rediss://`: the PEM CA certificate(s) the server's must chain to,
    /// instead of the system's roots (a private CA in the cluster).
    pub ca_file: Option<PathBuf>,
    /// Prefixed to every key, so several deployments can share one Redis.
    pub key_prefix: String,
    /// Each Redis command (and connecting) is bounded by this.
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub command_timeout: Duration,
}

impl Default for SharedStateSettings {
    fn default() -> Self {
        Self {
            redis_url: None,
            password_file: None,
            ca_file: None,
            key_prefix: "attachment-gateway:".into(),
            command_timeout: Duration::from_millis(500),
        }
    }
}

/// A setting that cannot be used, named.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid settings: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("invalid setting `{setting}`: {reason}")]
    Invalid {
        setting: std::borrow::Cow<'static, str>,
        reason: String,
    },
}

fn invalid(setting: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        setting: setting.into(),
        reason: reason.into(),
    }
}

/// An expected name claim: not blank, at most 256 characters.
fn expected_name_rule(n: &Option<String>, _: &()) -> garde::Result {
    match n {
        Some(n) if n.trim().is_empty() => Err(garde::Error::new("must not be blank when set")),
        Some(n) if n.chars().count() > 256 => {
            Err(garde::Error::new("must be at most 256 characters"))
        }
        _ => Ok(()),
    }
}

/// A duration that must be greater than zero.
fn nonzero(d: &Duration, _: &()) -> garde::Result {
    if d.is_zero() {
        return Err(garde::Error::new("must be greater than 0"));
    }
    Ok(())
}

/// A duration of at most one hour.
fn at_most_an_hour(d: &Duration, _: &()) -> garde::Result {
    if *d > Duration::from_secs(3600) {
        return Err(garde::Error::new("must be at most 1h"));
    }
    Ok(())
}

/// A duration of at least one second.
fn at_least_a_second(d: &Duration, _: &()) -> garde::Result {
    if *d < Duration::from_secs(1) {
        return Err(garde::Error::new("must be at least 1s"));
    }
    Ok(())
}

/// Command-line values that override every other layer, when given.
#[derive(Debug, Default, Clone, Serialize)]
pub struct FlagOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream_base_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_listen: Option<SocketAddr>,
    pub sandbox: bool,
}

impl Settings {
    /// Loads the layers in order, reads the secret file, and validates the result.
    pub fn load(config_file: Option<&Path>, flags: &FlagOverrides) -> Result<Self, ConfigError> {
        // Everything the operator gave, without the defaults: it tells which
        // settings were set explicitly.
        let mut given = Figment::new();
        if let Some(path) = config_file {
            if !path.is_file() {
                return Err(invalid(
                    "--config",
                    format!("{} is not a readable file", path.display()),
                ));
            }
            given = given.merge(Toml::file(path));
        }
        // Strings taken verbatim from the environment: figment would read `0042` as
        // the number 42 and `{a=1}` as a table (and a type error would print the
        // value, a secret among them).
        given = given.merge(Env::prefixed(ENV_PREFIX).split("__").ignore(VERBATIM_ENV));
        for key in VERBATIM_ENV {
            let var = format!("{ENV_PREFIX}{}", key.to_ascii_uppercase());
            if let Some(value) = std::env::var_os(&var) {
                let Some(value) = value.to_str().map(str::to_string) else {
                    return Err(invalid("environment", format!("{var} is not valid UTF-8")));
                };
                given = given.merge(Serialized::default(&key.replace("__", "."), value));
            }
        }
        if let Some(listen) = flags.listen {
            given = given.merge(Serialized::default("listen", listen));
        }
        if let Some(url) = &flags.upstream_base_url {
            given = given.merge(Serialized::default("upstream.base_url", url));
        }
        if let Some(admin) = flags.admin_listen {
            given = given.merge(Serialized::default("telemetry.admin_listen", admin));
        }
        if let Some(addr) = flags.webhook_listen {
            given = given.merge(Serialized::default("webhooks.listen", addr));
        }
        if let Some(format) = flags.log_format {
            given = given.merge(Serialized::default("log.format", format));
        }
        if flags.sandbox {
            given = given.merge(Serialized::default("sandbox.enabled", true));
        }
        let explicit = Explicit {
            admin_listen: given.contains("telemetry.admin_listen"),
            webhooks_verification: [
                "webhooks.verify",
                "webhooks.certificate_file",
                "webhooks.shared_secret_file",
            ]
            .iter()
            .any(|k| given.contains(k)),
        };
        let fig = Figment::from(Serialized::defaults(Settings::default())).merge(given);
        let mut settings: Settings = fig.extract().map_err(Box::new)?;
        settings.explicit = explicit;
        settings.resolve_secret_file()?;
        settings.validate()?;
        Ok(settings)
    }

    fn resolve_secret_file(&mut self) -> Result<(), ConfigError> {
        let Some(path) = &self.upstream.client_secret_file else {
            return Ok(());
        };
        if self.sandbox.enabled {
            // The sandbox brings its own credentials; the file is not needed.
            return Ok(());
        }
        if !self.upstream.client_secret.is_empty() {
            return Err(invalid(
                "upstream.client_secret_file",
                "set either upstream.client_secret or upstream.client_secret_file, not both",
            ));
        }
        let text = std::fs::read_to_string(path).map_err(|e| {
            invalid(
                "upstream.client_secret_file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        self.upstream.client_secret = Secret::new(text.trim_end_matches(['\r', '\n']));
        Ok(())
    }

    /// Checks every setting that could make the gateway misbehave later.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // The ranges declared on the fields first; then what ties settings
        // together, and what needs more than a range.
        if let Err(report) = garde::Validate::validate(self) {
            let (path, error) = report
                .iter()
                .next()
                .map(|(p, e)| (p.to_string(), e.to_string()))
                .unwrap_or_default();
            return Err(ConfigError::Invalid {
                setting: path.into(),
                reason: error,
            });
        }
        check_url("upstream.base_url", &self.upstream.base_url)?;
        check_url("upstream.token_url", &self.upstream.token_url)?;
        for (setting, value) in [
            ("upstream.base_url", &self.upstream.base_url),
            ("upstream.token_url", &self.upstream.token_url),
        ] {
            if !self.upstream.allow_plain_http && !secure_or_loopback(value) {
                return Err(invalid(
                    setting,
                    "plain http to a host other than loopback: the client secret and tokens would travel in clear; use https, or set upstream.allow_plain_http = true",
                ));
            }
        }
        for h in &self.upstream.download_hosts {
            let name = h.trim().strip_prefix("*.").unwrap_or(h.trim());
            if name.is_empty() || name.contains(['/', ':', '*', ' ']) {
                return Err(invalid(
                    "upstream.download_hosts",
                    format!("`{h}` is not a host name or `*.suffix`"),
                ));
            }
        }
        if !self.sandbox.enabled {
            if self.upstream.client_id.trim().is_empty() {
                return Err(invalid(
                    "upstream.client_id",
                    format!(
                        "required (set {ENV_PREFIX}UPSTREAM__CLIENT_ID), or run with --sandbox"
                    ),
                ));
            }
            if self.upstream.client_secret.is_empty() {
                return Err(invalid(
                    "upstream.client_secret",
                    format!(
                        "required (set {ENV_PREFIX}UPSTREAM__CLIENT_SECRET_FILE or {ENV_PREFIX}UPSTREAM__CLIENT_SECRET), or run with --sandbox"
                    ),
                ));
            }
        }
        let q = &self.upstream.work_order_query_param;
        if q.is_empty() || !q.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(invalid(
                "upstream.work_order_query_param",
                "must be a non-empty name of letters, digits and `_`",
            ));
        }
        let l = &self.limits;
        if self.server.idle_timeout <= self.server.http2_keepalive_interval {
            return Err(invalid(
                "server.idle_timeout",
                "must be longer than server.http2_keepalive_interval (keepalive pings keep live connections from idling)",
            ));
        }
        if self.sandbox.enabled && !self.sandbox.listen.ip().is_loopback() {
            return Err(invalid(
                "sandbox.listen",
                "the sandbox listens on loopback only",
            ));
        }
        self.validate_auth()?;
        let r = &self.rate_limit;
        for key in r.overrides.keys() {
            let kind_ok = key.split_once(':').is_some_and(|(kind, name)| {
                matches!(kind, "api_key" | "jwt" | "mtls") && !name.is_empty()
            });
            if !kind_ok {
                return Err(invalid(
                    "rate_limit.overrides",
                    format!(
                        "`{key}` must name the caller with its kind: `api_key:NAME`, `jwt:SUBJECT` or `mtls:IDENTITY` (callers of different kinds may share a name)"
                    ),
                ));
            }
        }
        if r.max_inflight_upload_bytes < l.max_chunk_bytes {
            return Err(invalid(
                "rate_limit.max_inflight_upload_bytes",
                "must be at least limits.max_chunk_bytes",
            ));
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err(invalid(
                "tls.cert_file",
                "tls.cert_file and tls.key_file go together",
            ));
        }
        if self.tls.mtls() && !self.tls.enabled() {
            return Err(invalid(
                "tls.client_ca_file",
                "mTLS needs tls.cert_file and tls.key_file",
            ));
        }
        self.validate_webhooks()?;
        if let Some(url) = &self.shared_state.redis_url {
            let scheme = url.split_once("://").map(|(s, _)| s);
            if !matches!(scheme, Some("redis" | "rediss")) {
                return Err(invalid(
                    "shared_state.redis_url",
                    "must be a redis:// or rediss:// URL",
                ));
            }
            if self.shared_state.ca_file.is_some() && scheme != Some("rediss") {
                return Err(invalid(
                    "shared_state.ca_file",
                    "a CA is for TLS: use a rediss:// URL",
                ));
            }
        } else if self.shared_state.ca_file.is_some() {
            return Err(invalid(
                "shared_state.ca_file",
                "needs shared_state.redis_url (rediss://)",
            ));
        }
        if self.events.max_subscribers_per_caller > self.events.max_subscribers {
            return Err(invalid(
                "events.max_subscribers_per_caller",
                "must be at most events.max_subscribers",
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(invalid("log.level", e.to_string()));
        }
        Ok(())
    }

    fn validate_webhooks(&self) -> Result<(), ConfigError> {
        let w = &self.webhooks;
        if let Some(url) = &w.forward_url {
            let u = reqwest::Url::parse(url)
                .map_err(|e| invalid("webhooks.forward_url", e.to_string()))?;
            if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
                return Err(invalid(
                    "webhooks.forward_url",
                    "must be an http:// or https:// URL",
                ));
            }
        }
        if w.audience.trim().is_empty() {
            return Err(invalid("webhooks.audience", "must not be empty"));
        }
        if w.listen.is_none() && !self.sandbox.enabled {
            return Ok(());
        }
        // The sandbox trusts its own emulator unless told how to verify.
        let sandbox_trust = self.sandbox.enabled && !self.explicit.webhooks_verification;
        match w.verify {
            WebhookVerify::SignedToken if w.certificate_file.is_none() && !sandbox_trust => {
                Err(invalid(
                    "webhooks.certificate_file",
                    "webhooks.verify = \"signed-token\" needs CorrigoPro's certificate (PEM), downloaded from the integration's settings page",
                ))
            }
            WebhookVerify::SharedSecret if w.shared_secret_file.is_none() => Err(invalid(
                "webhooks.shared_secret_file",
                "webhooks.verify = \"shared-secret\" needs the file that holds the secret",
            )),
            _ => Ok(()),
        }
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        let a = &self.auth;
        let scopes = a
            .jwt
            .default_scopes
            .iter()
            .chain(a.jwt.subject_scopes.values().flatten())
            .chain(a.mtls.default_scopes.iter())
            .chain(a.mtls.identities.values().flatten());
        for s in scopes {
            if crate::scopes::Scopes::parse(s).is_none() {
                return Err(invalid(
                    "auth",
                    format!("unknown scope `{s}` (known: attachments.read, attachments.write)"),
                ));
            }
        }
        if a.jwt.enabled {
            match (&a.jwt.jwks_file, &a.jwt.jwks_url) {
                (None, None) => {
                    return Err(invalid(
                        "auth.jwt.jwks_file",
                        "JWT auth needs auth.jwt.jwks_file or auth.jwt.jwks_url",
                    ));
                }
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "auth.jwt.jwks_url",
                        "set auth.jwt.jwks_file or auth.jwt.jwks_url, not both",
                    ));
                }
                (None, Some(url)) => {
                    let u = reqwest::Url::parse(url)
                        .map_err(|e| invalid("auth.jwt.jwks_url", e.to_string()))?;
                    let loopback =
                        matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
                    if u.scheme() != "https" && !(u.scheme() == "http" && loopback) {
                        return Err(invalid(
                            "auth.jwt.jwks_url",
                            "must be https:// (http:// only on loopback)",
                        ));
                    }
                }
                (Some(_), None) => {}
            }
            if a.jwt.issuers.is_empty() && !a.jwt.allow_any_issuer {
                return Err(invalid(
                    "auth.jwt.issuers",
                    "JWT auth needs the accepted issuers (e.g. the cluster's service-account issuer); set auth.jwt.allow_any_issuer = true to accept any",
                ));
            }
            if a.jwt.audiences.is_empty() && !a.jwt.allow_any_audience {
                return Err(invalid(
                    "auth.jwt.audiences",
                    "JWT auth needs the accepted audiences (callers project tokens for this gateway's audience); set auth.jwt.allow_any_audience = true to accept tokens minted for any service",
                ));
            }
        }
        let any_mode = a.jwt.enabled || a.api_keys.file.is_some() || self.tls.mtls();
        if !any_mode && !a.allow_unauthenticated && !self.sandbox.enabled {
            return Err(invalid(
                "auth",
                "no authentication is configured: enable auth.jwt, auth.api_keys.file or mTLS (tls.client_ca_file), or set auth.allow_unauthenticated = true",
            ));
        }
        Ok(())
    }

    /// Whether calls without credentials are served (and given every scope).
    pub fn unauthenticated_allowed(&self) -> bool {
        self.auth.allow_unauthenticated
            || (self.sandbox.enabled
                && !self.auth.jwt.enabled
                && self.auth.api_keys.file.is_none()
                && !self.tls.mtls())
    }

    /// Whether reflection is served without credentials.
    pub fn reflection_public(&self) -> bool {
        self.auth.public_reflection.unwrap_or(self.sandbox.enabled)
    }

    /// The TOML the settings amount to, secrets redacted (`--check-config` prints it):
    /// secret values, and any credentials a URL carries.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        let mut shown = self.clone();
        shown.upstream.base_url = redact_url(&shown.upstream.base_url);
        shown.upstream.token_url = redact_url(&shown.upstream.token_url);
        if let Some(u) = shown.shared_state.redis_url.as_mut() {
            *u = redact_url(u);
        }
        if let Some(u) = &mut shown.auth.jwt.jwks_url {
            *u = redact_url(u);
        }
        toml::to_string_pretty(&shown)
    }
}

/// A URL fit for a log line or `--check-config`: user and password replaced, query
/// and fragment dropped (they may carry credentials too).
pub fn redact_url(value: &str) -> String {
    let Ok(mut url) = reqwest::Url::parse(value) else {
        return "<not a valid URL>".into();
    };
    let had_credentials = !url.username().is_empty() || url.password().is_some();
    if had_credentials {
        let _ = url.set_username("");
        let _ = url.set_password(None);
    }
    url.set_query(None);
    url.set_fragment(None);
    let text = url.to_string();
    match (had_credentials, text.split_once("://")) {
        (true, Some((scheme, rest))) => format!("{scheme}://<redacted>@{rest}"),
        _ => text,
    }
}

/// Whether a URL is https, or http to a loopback host.
fn secure_or_loopback(value: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(value) else {
        return true; // check_url reports it
    };
    if url.scheme() != "http" {
        return true;
    }
    let host = url.host_str().unwrap_or_default();
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn check_url(setting: &'static str, value: &str) -> Result<(), ConfigError> {
    let url = reqwest::Url::parse(value).map_err(|e| invalid(setting, format!("{e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(setting, "must be an http:// or https:// URL"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(setting, "must not carry a query or fragment"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_credentials_unless_sandbox() {
        let s = Settings::default();
        let err = s.validate().unwrap_err().to_string();
        assert!(err.contains("upstream.client_id"), "{err}");
        let mut s = Settings::default();
        s.sandbox.enabled = true;
        s.validate().unwrap();
    }

    #[test]
    fn bad_values_name_their_setting() {
        let mut s = Settings::default();
        s.sandbox.enabled = true;
        s.upstream.base_url = "ftp://x".into();
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("upstream.base_url")
        );
        let mut s = Settings::default();
        s.sandbox.enabled = true;
        s.limits.max_upload_bytes = 0;
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("limits.max_upload_bytes")
        );
        let mut s = Settings::default();
        s.sandbox.enabled = true;
        s.server.worker_threads = 100_000;
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("server.worker_threads")
        );
        s.server.worker_threads = 2;
        s.validate().unwrap();
    }
}
