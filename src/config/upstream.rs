//! The `upstream` section: the CorrigoPro Direct API, its credentials and the client's bounds.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::checks::{ConfigError, https_or_loopback, invalid, nonzero};
use crate::secret::Secret;

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

impl UpstreamSettings {
    /// The URLs, the download hosts and the query parameter.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (setting, value) in [
            ("upstream.base_url", &self.base_url),
            ("upstream.token_url", &self.token_url),
        ] {
            let plain_http = Some(("upstream.allow_plain_http", self.allow_plain_http));
            let url = https_or_loopback(setting, value, plain_http)?;
            if url.query().is_some() || url.fragment().is_some() {
                return Err(invalid(setting, "must not carry a query or fragment"));
            }
        }
        for h in &self.download_hosts {
            let name = h.trim().strip_prefix("*.").unwrap_or(h.trim());
            if name.is_empty() || name.contains(['/', ':', '*', ' ']) {
                return Err(invalid(
                    "upstream.download_hosts",
                    format!("`{h}` is not a host name or `*.suffix`"),
                ));
            }
        }
        let q = &self.work_order_query_param;
        if q.is_empty() || !q.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(invalid(
                "upstream.work_order_query_param",
                "must be a non-empty name of letters, digits and `_`",
            ));
        }
        Ok(())
    }
}
